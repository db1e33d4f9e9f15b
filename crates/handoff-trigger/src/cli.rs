//! The command line (clap derive), kept in the library so tests can check it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::Options;
use crate::handoff::{Reloader, default_handoff_bin};
use crate::rpmlock::DEFAULT_RPM_LOCK;
use handoff_common::duration::parse as parse_duration;

/// Roll a handoff app over once a new release has settled in its install directory.
///
/// Waits until the directory holding VERSION_FILE (the app's package.json) has seen no change for
/// --settle and no rpm transaction holds the rpm lock, checks that VERSION_FILE is a valid JSON
/// object, then runs `handoff reload --if-changed`. A run where the app is not running or there is
/// no VERSION_FILE exits 0.
#[derive(Debug, Parser)]
#[command(
    name = "handoff-trigger",
    version,
    args_override_self = true,
    after_help = format!("Exit status:\n{}", handoff_common::exit::table_text())
)]
pub struct Cli {
    /// The release's version file, e.g. /opt/APP/package.json; its directory is watched.
    #[arg(value_name = "VERSION_FILE", required_unless_present = "write_man")]
    pub version_file: Option<PathBuf>,

    /// Write the man page (handoff-trigger.1) into DIR and exit; used by packaging.
    #[arg(long, value_name = "DIR", hide = true)]
    pub write_man: Option<PathBuf>,

    /// Quiet period: the install has settled when nothing changed in the directory for this long.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration, env = "HANDOFF_TRIGGER_SETTLE")]
    pub settle: Duration,

    /// Give up (exit 75) when the install has not settled after this long (a long rpm
    /// transaction counts: the lock is held throughout).
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// rpm's database lock; the install has not settled while a transaction holds it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_RPM_LOCK, env = "HANDOFF_TRIGGER_RPM_LOCK")]
    pub rpm_lock: PathBuf,

    /// Do not look at the rpm lock.
    #[arg(long)]
    pub no_rpm_lock: bool,

    /// Watch only the directory itself, not the tree below it.
    #[arg(long)]
    pub shallow: bool,

    /// A directory whose changes do not count (the app's own logs/, run/ ...); relative to the
    /// watched directory. Repeatable.
    #[arg(long = "exclude", value_name = "DIR")]
    pub excludes: Vec<PathBuf>,

    /// Keep running and handle every release (for hosts or containers without .path units).
    #[arg(long)]
    pub watch: bool,

    /// handoff's control socket (default: handoff's own default).
    #[arg(
        long,
        value_name = "PATH",
        env = "HANDOFF_CONTROL",
        conflicts_with = "app"
    )]
    pub control: Option<PathBuf>,

    /// The app of the handoff@APP units: its control socket is /run/handoff-APP/control.sock.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,

    /// The handoff binary (default: `handoff` next to this binary, else from PATH).
    #[arg(long, value_name = "PATH", env = "HANDOFF_BIN")]
    pub handoff: Option<PathBuf>,

    /// Kill `handoff reload` (exit 75) when it has not finished after this long.
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub reload_timeout: Duration,

    /// While handoff's control socket exists but nobody answers on it (handoff starting or
    /// restarting), ask again for up to this long before giving up (exit 69).
    #[arg(long, value_name = "DUR", default_value = "90s", value_parser = parse_duration, env = "HANDOFF_TRIGGER_WAIT_RUNNING")]
    pub wait_running: Duration,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Cli {
    /// Validated options; relative paths are taken relative to `cwd`.
    pub fn into_options(self, cwd: &std::path::Path) -> Result<Options, String> {
        let given = self.version_file.ok_or("VERSION_FILE is required")?;
        let version_file = cwd.join(&given);
        if version_file.file_name().is_none() || version_file.parent().is_none() {
            return Err(format!(
                "VERSION_FILE {} must name a file, e.g. /opt/app/package.json",
                given.display()
            ));
        }
        Ok(Options {
            version_file,
            settle: self.settle,
            max_wait: self.max_wait,
            rpm_lock: (!self.no_rpm_lock).then_some(self.rpm_lock),
            recursive: !self.shallow,
            excludes: self.excludes,
            watch: self.watch,
            reloader: Reloader {
                bin: self.handoff.unwrap_or_else(default_handoff_bin),
                control: self
                    .control
                    .map(|c| cwd.join(c))
                    .or_else(|| self.app.as_deref().map(handoff_common::paths::app_control)),
                timeout: self.reload_timeout,
                wait_running: self.wait_running,
            },
            poll: Duration::from_millis(200),
        })
    }
}

/// Writes `handoff-trigger.1` into `dir` (from the same definition as `--help`).
pub fn write_man_page(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("handoff-trigger.1");
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(Cli::command());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    // The one exit table of both binaries (handoff_common::exit), as in handoff(1).
    let esc = |t: &str| t.replace('\\', "\\\\").replace('-', "\\-");
    let mut extra = String::from(
        ".SH EXAMPLES\n.TP\n\\fBhandoff\\-trigger \\-\\-app shop /opt/shop/package.json\\fR\n\
         What handoff\\-trigger@shop.service runs when the .path unit sees a change.\n\
         .SH \"EXIT STATUS\"\n",
    );
    for (code, meaning) in handoff_common::exit::TABLE {
        extra.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", esc(meaning)));
    }
    extra.push_str(".SH \"SEE ALSO\"\nhandoff(1), handoff\\-reload(1), systemd.path(5)\n");
    out.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut out)?;
    std::fs::write(&path, out)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from([
            "handoff-trigger",
            "--handoff",
            "/x/handoff",
            "app/package.json",
        ])
        .unwrap();
        let o = cli.into_options(std::path::Path::new("/opt")).unwrap();
        assert_eq!(o.version_file, PathBuf::from("/opt/app/package.json"));
        assert_eq!(o.settle, Duration::from_secs(1));
        assert_eq!(
            o.rpm_lock.as_deref(),
            Some(std::path::Path::new(DEFAULT_RPM_LOCK))
        );
        assert!(o.recursive && !o.watch);
        assert_eq!(o.reloader.bin, PathBuf::from("/x/handoff"));
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "handoff-trigger",
            "--settle",
            "250ms",
            "--no-rpm-lock",
            "--shallow",
            "--watch",
            "--exclude",
            "logs",
            "--control",
            "/run/handoff-app/control.sock",
            "/opt/app/package.json",
        ])
        .unwrap();
        let o = cli.into_options(std::path::Path::new("/")).unwrap();
        assert_eq!(o.settle, Duration::from_millis(250));
        assert!(o.rpm_lock.is_none() && !o.recursive && o.watch);
        assert_eq!(o.excludes, vec![PathBuf::from("logs")]);
        assert_eq!(
            o.reloader.control,
            Some(PathBuf::from("/run/handoff-app/control.sock"))
        );
    }

    #[test]
    fn app_names_the_units_socket_and_the_hints() {
        let cli =
            Cli::try_parse_from(["handoff-trigger", "--app", "shop", "/opt/shop/package.json"])
                .unwrap();
        let o = cli.into_options(std::path::Path::new("/")).unwrap();
        assert_eq!(
            o.reloader.control,
            Some(PathBuf::from("/run/handoff-shop/control.sock"))
        );
        assert_eq!(
            o.reloader.command_line("status"),
            "handoff status --app shop"
        );
        let e = crate::error::TriggerError::RolledBack {
            code: 1,
            status: o.reloader.command_line("status"),
            unit: o.reloader.unit(),
        };
        assert!(e.to_string().contains("`handoff status --app shop`"), "{e}");
        assert!(e.to_string().contains("journalctl -u handoff@shop"), "{e}");
    }

    #[test]
    fn bad_duration_is_a_usage_error() {
        let e = Cli::try_parse_from([
            "handoff-trigger",
            "--settle",
            "soon",
            "/opt/app/package.json",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
