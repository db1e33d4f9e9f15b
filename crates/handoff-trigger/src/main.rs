//! `handoff-trigger`: parse, set up logging, run, map the outcome to an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use handoff_trigger::cli::Cli;
use handoff_trigger::error::{EXIT_SOFTWARE, EXIT_USAGE};

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under systemd the journal adds timestamps; don't print them twice.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().with_ansi(false).init();
    } else {
        fmt.init();
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { EXIT_USAGE as u8 } else { 0 });
        }
    };
    if let Some(dir) = &cli.write_man {
        return match handoff_trigger::cli::write_man_page(dir) {
            Ok(p) => {
                println!("{}", p.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "handoff-trigger: writing the man page to {}: {e}",
                    dir.display()
                );
                ExitCode::from(EXIT_SOFTWARE as u8)
            }
        };
    }
    init_logging(cli.verbose);
    let opts = match std::env::current_dir()
        .context("cannot determine the current directory")
        .and_then(|cwd| cli.into_options(&cwd).map_err(anyhow::Error::msg))
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    match handoff_trigger::run(&opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            // already logged where it happened; repeat the one line that matters last
            tracing::error!("giving up: {e}");
            let code = e.exit_code();
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_SOFTWARE as u8))
        }
    }
}
