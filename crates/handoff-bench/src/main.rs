//! `handoff-bench`: the command line. The work is in the library (`commands`).

use clap::Parser;

fn main() {
    handoff_bench::cleanup::install();
    let cli = handoff_bench::commands::Cli::parse();
    match handoff_bench::commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("handoff-bench: {e:#}");
            std::process::exit(2);
        }
    }
}
