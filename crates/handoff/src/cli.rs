//! The command line (clap derive). Kept in the library so tests can check it and the man page
//! can be generated from it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::sys::signal::Signal;

use crate::config::{self, ListenSpec, Options, ReadyMode};
use crate::duration;

#[derive(Debug, Parser)]
#[command(
    name = "handoff",
    version,
    about = "Zero-downtime rollovers of worker processes on sockets that never close",
    disable_help_subcommand = true,
    after_help = exit_help()
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Sub {
    /// Run the supervisor: hold the sockets, start workers, roll them over on reload.
    Run(RunArgs),
    /// Roll over to a new generation and wait for the outcome (exit 0 served, 1 rolled back).
    #[command(after_help = exit_help())]
    Reload(ReloadArgs),
    /// Roll over to N workers with the settings in force, until a reload reads the config
    /// file again (exit codes as reload).
    #[command(after_help = exit_help())]
    Scale(ScaleArgs),
    /// Replace worker N gracefully: a new one starts beside it, and once it is ready the old
    /// one is drained (not counted as a crash; exit codes as reload).
    #[command(after_help = exit_help())]
    RestartWorker(RestartWorkerArgs),
    /// Show generations, workers (memory and CPU of each worker's process tree, sampled now;
    /// restarts, crashes and last exit of its slot) and the last rollover.
    #[command(after_help = exit_help())]
    Status(StatusArgs),
    /// Replace the running handoff by the binary now installed at the path it was started
    /// from (after a package upgrade), keeping its pid, sockets and workers: no worker is
    /// signalled. Waits for a running rollover to end first. Exit 0 once the new binary
    /// answers with the same handoff pid and worker pids; otherwise the old handoff still
    /// runs, unchanged.
    #[command(after_help = exit_help())]
    Reexec(ReexecArgs),
    /// The pre-flight of `handoff reexec`: read a state from stdin, check this binary can
    /// restore it, answer the handshake (internal: the running handoff runs it).
    #[command(hide = true, name = "__check-state")]
    CheckState,
    /// Write the man pages (handoff.1, handoff-run.1, ...) into DIR (for packagers).
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// The exit codes, for `--help` (one table for both binaries: `handoff_common::exit`).
pub fn exit_help() -> String {
    format!("Exit status:\n{}", crate::exit::table_text())
}

/// Roff for the sections clap does not write: EXIT STATUS, FILES, CONFIGURATION, EXAMPLES,
/// SEE ALSO. `page` is `handoff` or `handoff-SUB`.
pub fn man_sections(page: &str) -> String {
    fn esc(t: &str) -> String {
        t.replace('\\', "\\\\").replace('-', "\\-")
    }
    let mut r = String::new();
    let sub = page.strip_prefix("handoff-").unwrap_or("");
    let examples: &[(&str, &str)] = match sub {
        "run" => &[
            (
                "handoff run --listen 127.0.0.1:8080 --workers 2 -- node server.js",
                "Bind the port itself and run two workers.",
            ),
            (
                "handoff run --config /etc/handoff/shop.toml",
                "What handoff@shop.service runs (socket-activated by handoff@shop.socket).",
            ),
        ],
        "reload" => &[
            (
                "handoff reload --app shop",
                "Roll shop over; exit 0 when the new generation serves.",
            ),
            (
                "handoff reload --app shop --if-changed",
                "Only when /opt/shop/package.json changed since the running generation started.",
            ),
        ],
        "reexec" => &[
            (
                "handoff reexec --app shop",
                "After upgrading the handoff package: shop's handoff runs the new binary, same pid, same workers.",
            ),
            (
                "systemctl kill -s USR2 --kill-whom=main handoff@shop",
                "The same, by signal (no answer: see handoff status).",
            ),
        ],
        "status" => &[
            (
                "handoff status --app shop",
                "Generations, a row per worker (memory, CPU, restarts, last exit), the last rollover.",
            ),
            ("handoff status --app shop --json", "The same, for scripts."),
        ],
        "" => &[
            (
                "systemctl start handoff@shop.socket handoff@shop.service",
                "Start the app under systemd.",
            ),
            (
                "systemctl reload handoff@shop",
                "Roll over (runs handoff reload --app shop).",
            ),
            (
                "journalctl -u handoff@shop -t node@w1",
                "Follow worker 1 across generations.",
            ),
            (
                "journalctl -u handoff@shop -p warning",
                "What went wrong: rollbacks, kills, crashes.",
            ),
        ],
        _ => &[],
    };
    if !examples.is_empty() {
        r.push_str(".SH EXAMPLES\n");
        for (cmd, what) in examples {
            r.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", esc(cmd), esc(what)));
        }
    }
    if sub == "run" || sub.is_empty() {
        r.push_str(&format!(
            ".SH CONFIGURATION\nEvery option of \\fBhandoff run\\fR can be given in a TOML file \
             (\\fB\\-\\-config\\fR FILE), with underscores for dashes; flags override the file:\n\
             .PP\n.nf\n{}\n.fi\n",
            esc(
                "listen = [\"http=127.0.0.1:8080\"]\nworkers = 2\nready_timeout = \"60s\"\n\
                 drain_timeout = \"10s\"\nversion_file = \"/opt/shop/package.json\"\n\
                 user = \"shop\"\nstatus_group = \"wheel\"\ncommand = [\"node\", \"server.js\"]"
            )
        ));
    }
    if sub != "completions" && sub != "man" {
        r.push_str(&format!(
            ".SH FILES\n.TP\n{}\nConfig file of handoff@APP.service.\n.TP\n{}\n\
             Control socket of handoff@APP (mode 0600: reload and status, for root).\n.TP\n{}\n\
             Read\\-only status socket (mode 0660, group \\fBstatus_group\\fR), when configured.\n\
             .TP\n{}\nThe workers' notify sockets.\n",
            esc("/etc/handoff/APP.toml"),
            esc("/run/handoff-APP/control.sock"),
            esc("/run/handoff-APP/status.sock"),
            esc("/run/handoff-APP/notify/"),
        ));
        r.push_str(".SH \"EXIT STATUS\"\n");
        for (code, meaning) in crate::exit::TABLE {
            r.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", esc(meaning)));
        }
    }
    let mut see: Vec<String> = [
        "handoff",
        "handoff-run",
        "handoff-reload",
        "handoff-scale",
        "handoff-restart-worker",
        "handoff-status",
    ]
    .iter()
    .filter(|p| **p != page)
    .map(|p| format!("{}(1)", esc(p)))
    .collect();
    see.extend(["handoff\\-trigger(1)", "systemd.socket(5)", "journalctl(1)"].map(String::from));
    r.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", see.join(", ")));
    r
}

/// Writes `handoff.1` and one page per subcommand into `dir`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut render = |c: clap::Command, name: String, bin: String| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        // The title names the page (handoff-run); the synopsis the command (handoff run).
        let has_version = c.get_version().is_some();
        let man = clap_mangen::Man::new(c.name(name.clone()).bin_name(bin));
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        man.render_subcommands_section(&mut out)?;
        out.extend_from_slice(man_sections(&name).as_bytes());
        if has_version {
            man.render_version_section(&mut out)?;
        }
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    // Hidden ones (`__check-state`, run by handoff itself) get no page.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render(
            sub.clone(),
            format!("handoff-{}", sub.get_name()),
            format!("handoff {}", sub.get_name()),
        )?;
    }
    render(cmd, "handoff".into(), "handoff".into())?;
    Ok(written)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with any of the options below (underscores for dashes); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bind this address when not socket-activated: HOST:PORT, [V6]:PORT or a unix path; NAME=ADDR names it.
    #[arg(long, value_name = "[NAME=]ADDR", value_parser = config::parse_listen)]
    pub listen: Vec<ListenSpec>,
    /// Worker processes per generation [default: 1].
    #[arg(long, value_name = "N", value_parser = config::parse_workers)]
    pub workers: Option<usize>,
    /// Readiness: `notify` (READY=1 on NOTIFY_SOCKET) or `delay:DURATION` [default: notify].
    #[arg(long, value_name = "MODE", value_parser = config::parse_ready)]
    pub ready: Option<ReadyMode>,
    /// Roll back when a new worker is not ready in this time [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_ready_timeout)]
    pub ready_timeout: Option<Duration>,
    /// SIGKILL old workers still running this long after the drain signal [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub drain_timeout: Option<Duration>,
    /// New workers must stay up this long past READY=1 before the old generation is drained
    /// and the rollover counts as ok; a crash within it rolls back. 0s: no window [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub min_uptime: Option<Duration>,
    /// With --rolling: the first new worker serves beside the old ones this long (at least
    /// --min-uptime) before the other slots follow; a crash or a hang in it rolls back
    /// [default: 0s, the stability window only].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub soak: Option<Duration>,
    /// Signal that asks a worker to stop accepting and finish [default: SIGTERM].
    #[arg(long, value_name = "SIG", value_parser = config::parse_signal)]
    pub drain_signal: Option<Signal>,
    /// Per-worker watchdog: each worker gets WATCHDOG_USEC and must send WATCHDOG=1 this often
    /// once ready; a silent one is replaced (a new one starts, then it is drained). 0s: off
    /// [default: off].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_watchdog)]
    pub watchdog: Option<Duration>,
    /// Replace a worker (gracefully) whose process tree's RSS passes SIZE (e.g. 512M). 0: off.
    #[arg(long, value_name = "SIZE", value_parser = config::parse_memory)]
    pub max_memory: Option<u64>,
    /// Replace a worker (gracefully) this long after its start (e.g. 24h). 0s: off.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_max_age)]
    pub max_age: Option<Duration>,
    /// Replace workers one at a time instead of a whole generation at once.
    #[arg(long)]
    pub rolling: bool,
    /// Control socket path [default: RUNTIME_DIR/control.sock].
    #[arg(long, value_name = "PATH", env = "HANDOFF_CONTROL")]
    pub control: Option<PathBuf>,
    /// Directory (mode 0700) for the control and notify sockets [default: $RUNTIME_DIRECTORY,
    /// $XDG_RUNTIME_DIR/handoff or /run/handoff].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Shell command run (sh -c) when a worker had to be killed after the drain timeout.
    #[arg(long, value_name = "CMD")]
    pub on_drain_timeout: Option<String>,
    /// The app's version file (package.json): recorded per generation, used by reload --if-changed.
    #[arg(long, value_name = "PATH")]
    pub version_file: Option<PathBuf>,
    /// Run workers as this user (name or uid); needs handoff to run as root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Primary group of the workers (name or gid) [default: the user's].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Members of this group (name or gid) may run `handoff status` (read-only: never reload)
    /// through RUNTIME_DIR/status.sock (mode 0660); the runtime dir becomes 0711.
    #[arg(long, value_name = "GROUP")]
    pub status_group: Option<String>,
    /// The workers' working directory, resolved (realpath) when each generation starts: with
    /// a `current` symlink, a generation and its restarts keep running the release it named.
    #[arg(long, value_name = "DIR", value_parser = config::parse_working_directory)]
    pub working_directory: Option<PathBuf>,
    /// The worker command, exec'd directly (no shell).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl RunArgs {
    /// What the command line said, for laying over the config file.
    pub fn options(&self) -> Options {
        Options {
            listen: (!self.listen.is_empty()).then(|| self.listen.clone()),
            workers: self.workers,
            ready: self.ready,
            ready_timeout: self.ready_timeout,
            drain_timeout: self.drain_timeout,
            min_uptime: self.min_uptime,
            soak: self.soak,
            drain_signal: self.drain_signal,
            watchdog: self.watchdog,
            max_memory: self.max_memory,
            max_age: self.max_age,
            rolling: self.rolling.then_some(true),
            control: self.control.clone(),
            runtime_dir: self.runtime_dir.clone(),
            on_drain_timeout: self.on_drain_timeout.clone(),
            version_file: self.version_file.clone(),
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            user: self.user.clone(),
            group: self.group.clone(),
            status_group: self.status_group.clone(),
            // The file only: a table does not fit a flag.
            environment: None,
            working_directory: self.working_directory.clone(),
        }
    }
}

/// Which running handoff a client command talks to.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Control socket of the handoff to talk to.
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
    /// Give up (exit 75) when handoff sends nothing for this long (stopped, or its loop
    /// stuck); 0s waits forever. A reload hears from a live handoff every 2 s however long
    /// the rollover takes, so this bounds silence, not the rollover (for reload at least 4 s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub timeout: Duration,
}

impl ClientArgs {
    /// `None` for `--timeout 0s`: wait as long as it takes.
    pub fn timeout(&self) -> Option<Duration> {
        (!self.timeout.is_zero()).then_some(self.timeout)
    }

    /// How to run `sub` against the same handoff, for hints.
    pub fn command_line(&self, sub: &str) -> String {
        match (&self.app, &self.control) {
            (Some(app), _) => format!("handoff {sub} --app {app}"),
            (None, Some(c)) => format!("handoff {sub} --control {}", c.display()),
            (None, None) => format!("handoff {sub}"),
        }
    }

    /// The unit to look at in the journal.
    pub fn unit(&self) -> String {
        match &self.app {
            Some(app) => format!("handoff@{app}"),
            None => "handoff@APP".into(),
        }
    }

    /// `--control`, else `--app` (the units' RuntimeDirectory=handoff-APP), else the default.
    pub fn control_path(&self) -> PathBuf {
        self.control
            .clone()
            .or_else(|| self.app.as_deref().map(crate::paths::app_control))
            .unwrap_or_else(crate::paths::default_control_path)
    }
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only roll over if the version file changed since the running generation started.
    #[arg(long)]
    pub if_changed: bool,
}

#[derive(Debug, Args)]
pub struct RestartWorkerArgs {
    /// The worker's slot (0, 1, ...: `handoff status` shows them).
    #[arg(value_name = "N")]
    pub slot: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Workers of the new generation (1 to 4096, the cap `workers` has).
    #[arg(value_name = "N", value_parser = config::parse_workers)]
    pub workers: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ReexecArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("handoff-man-{}", std::process::id()));
        let pages = write_man_pages(&dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into())
            .collect();
        for want in [
            "handoff.1",
            "handoff-run.1",
            "handoff-reload.1",
            "handoff-status.1",
            "handoff-completions.1",
        ] {
            assert!(names.contains(&want.to_string()), "{names:?}");
        }
        let run = std::fs::read_to_string(dir.join("handoff-run.1")).unwrap();
        assert!(
            run.contains("drain\\-timeout"),
            "options missing from the run page"
        );
        // The synopsis is the command, not the page name; the sections operators look for.
        assert!(run.contains("\\fBhandoff run\\fR"), "{run}");
        for section in [
            "EXIT STATUS",
            "FILES",
            "CONFIGURATION",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            assert!(
                run.contains(section),
                "{section} missing from handoff-run.1"
            );
        }
        for (code, _) in crate::exit::TABLE {
            assert!(run.contains(&format!("\\fB{code}\\fR")), "exit code {code}");
        }
        // Every page it points to exists.
        let top = std::fs::read_to_string(dir.join("handoff.1")).unwrap();
        assert!(
            !top.contains("handoff\\-help"),
            "handoff.1 lists a help page"
        );
        for page in top.split(|c: char| c.is_whitespace() || c == ',') {
            if let Some(name) = page.strip_suffix("(1)")
                && name.starts_with("handoff\\-")
                && !name.contains("trigger")
            {
                let file = format!("{}.1", name.replace("\\-", "-"));
                assert!(names.contains(&file), "handoff.1 refers to missing {file}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_parses_the_documented_form() {
        let cli = Cli::try_parse_from([
            "handoff",
            "run",
            "--listen",
            "http=127.0.0.1:8080",
            "--workers",
            "4",
            "--ready",
            "delay:500ms",
            "--drain-timeout",
            "5s",
            "--drain-signal",
            "SIGQUIT",
            "--rolling",
            "--",
            "node",
            "server.js",
            "--port",
            "3",
        ])
        .unwrap();
        let Sub::Run(r) = cli.command else { panic!() };
        let o = r.options();
        assert_eq!(o.workers, Some(4));
        assert_eq!(o.command.unwrap(), vec!["node", "server.js", "--port", "3"]);
        assert_eq!(o.drain_signal, Some(Signal::SIGQUIT));
        assert_eq!(o.rolling, Some(true));
        assert!(Cli::try_parse_from(["handoff", "run", "--workers", "0", "--", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["handoff", "run", "--drain-timeout", "10", "--", "x"]).is_err()
        );
    }
}
