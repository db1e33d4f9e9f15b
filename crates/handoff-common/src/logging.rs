//! Logs go to stderr through `tracing`. Under journald (`JOURNAL_STREAM` set) there is no
//! timestamp and no colour, because the journal adds its own; `RUST_LOG` or `-v` set the level.

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journald && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
