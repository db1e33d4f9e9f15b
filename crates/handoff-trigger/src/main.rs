//! `handoff-trigger`: parse, set up logging, run, map the outcome to an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use handoff_trigger::cli::Cli;
use handoff_trigger::error::{EXIT_SOFTWARE, EXIT_USAGE};

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
    handoff_common::logging::init(cli.verbose);
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
            // Logged once, where it happened (run logs every error it decides on).
            if !e.logged_by_run() {
                tracing::error!("{e}");
            }
            let code = e.exit_code();
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_SOFTWARE as u8))
        }
    }
}
