//! The machine's vocabulary: what goes in ([`Input`]), what comes out ([`Action`]), and the
//! settings its decisions depend on ([`Policy`]).

use std::fmt;
use std::time::Duration;

use handoff_common::protocol::{ReloadReply, VersionInfo};
use nix::sys::signal::Signal;

use super::{WaiterId, WorkerId};
use crate::config::{ReadyMode, Settings};
use crate::notify::Message;
use crate::spawn::Credentials;

/// The settings a generation runs with. Each generation keeps its own (a reload may change
/// all but `version_file` and `drain_timeout_hook`, which are bound at start): its workers
/// are started, restarted, judged and drained by them, so a rolled back reload leaves the
/// old ones in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub workers: usize,
    pub rolling: bool,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// The stability window: new workers must stay up this long past `READY=1` before the
    /// old ones are drained; a worker up this long past `READY=1` is healthy (its slot's
    /// crash count resets). Zero: no window.
    pub min_uptime: Duration,
    #[serde(with = "super::snapshot::signal")]
    pub drain_signal: Signal,
    /// A version file is configured: read it before each rollover.
    pub version_file: bool,
    /// An `--on-drain-timeout` hook is configured.
    pub drain_timeout_hook: bool,
    /// What the executor starts the workers with (the machine only keeps them per generation).
    pub command: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `user` / `group` as resolved when the settings were read.
    pub credentials: Option<Credentials>,
}

impl Policy {
    pub fn from_settings(s: &Settings, credentials: Option<Credentials>) -> Policy {
        Policy {
            workers: s.workers,
            rolling: s.rolling,
            ready: s.ready,
            ready_timeout: s.ready_timeout,
            drain_timeout: s.drain_timeout,
            min_uptime: s.min_uptime,
            drain_signal: s.drain_signal,
            version_file: s.version_file.is_some(),
            drain_timeout_hook: s.on_drain_timeout.is_some(),
            command: s.command.clone(),
            environment: s.environment.clone(),
            user: s.user.clone(),
            group: s.group.clone(),
            credentials,
        }
    }

    /// The settings (by their config file key) in which `other` differs from `self`.
    pub fn changes(&self, other: &Policy) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut differ = |key, differs: bool| {
            if differs {
                out.push(key);
            }
        };
        differ("workers", self.workers != other.workers);
        differ("command", self.command != other.command);
        differ("environment", self.environment != other.environment);
        differ("ready", self.ready != other.ready);
        differ("ready_timeout", self.ready_timeout != other.ready_timeout);
        differ("drain_timeout", self.drain_timeout != other.drain_timeout);
        differ("drain_signal", self.drain_signal != other.drain_signal);
        differ("rolling", self.rolling != other.rolling);
        differ("min_uptime", self.min_uptime != other.min_uptime);
        differ("user", self.user != other.user);
        differ("group", self.group != other.group);
        out
    }
}

/// How a child ended, as `waitpid` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal { signal: i32, core: bool },
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signal { signal, core } => {
                let name = Signal::try_from(signal)
                    .map_or_else(|_| signal.to_string(), |s| s.as_str().to_string());
                write!(
                    f,
                    "was killed by {name}{}",
                    if core { " (core dumped)" } else { "" }
                )
            }
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Input {
    /// handoff started: start the first generation.
    Start,
    /// A rollover was asked for (`waiter: None` for SIGHUP, which nobody waits on).
    Reload {
        waiter: Option<WaiterId>,
        if_changed: bool,
    },
    /// A reload that re-read the config file (`handoff run --config`): `Ok` with the new
    /// settings, validated completely (restart-bound ones already kept at their running
    /// values), or `Err` with why the file was refused (nothing changes then).
    /// `restart_needed`: one line per restart-bound setting the file changed.
    ReloadConfig {
        waiter: Option<WaiterId>,
        if_changed: bool,
        config: Result<Box<Policy>, String>,
        restart_needed: Vec<String>,
    },
    /// `handoff scale N`: a rollover to the settings in force with `workers` workers.
    Scale {
        waiter: Option<WaiterId>,
        workers: usize,
    },
    /// The answer to [`Action::ReadVersion`].
    Version(VersionInfo),
    /// The answer to [`Action::Spawn`]: the worker runs (its exec succeeded).
    Spawned { worker: WorkerId, pid: i32 },
    /// The answer to [`Action::Spawn`]: no process. `ours`: handoff itself lacked a
    /// resource (fds, memory, processes, its runtime dir), so the release was never tried;
    /// otherwise the release is at fault (no such program, not executable, ...).
    SpawnFailed {
        worker: WorkerId,
        error: String,
        ours: bool,
    },
    /// The answer to [`Action::ScanChildren`]: handoff's children that are not workers or
    /// hooks (descendants of workers re-parented to handoff, the child subreaper), each with
    /// the worker (generation, slot) its environment names, if any.
    Children(Vec<(i32, Option<(u64, usize)>)>),
    /// A datagram on a worker's notify socket.
    Notify { worker: WorkerId, msg: Message },
    /// A child was reaped (a worker, or anything else reparented to handoff).
    Exited { pid: i32, status: ExitStatus },
    /// The time of [`Machine::next_deadline`] has come.
    Tick,
    /// SIGTERM / SIGINT: drain everything and exit with `code`.
    Shutdown { why: String, code: i32 },
    /// A second SIGINT: kill every worker now.
    KillAll,
}

/// What systemd should hear from handoff itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdState {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    ExtendTimeout(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// A log line, with the worker it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub level: Level,
    pub generation: Option<u64>,
    pub slot: Option<usize>,
    pub pid: Option<i32>,
    pub message: String,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the version file; answer with [`Input::Version`].
    ReadVersion,
    /// Start a worker; answer with [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn {
        worker: WorkerId,
        slot: usize,
        generation: u64,
    },
    /// List handoff's other children; answer with [`Input::Children`].
    ScanChildren,
    /// Send a signal to one process.
    Signal {
        pid: i32,
        signal: Signal,
    },
    /// Send a signal to a process group.
    SignalGroup {
        pgid: i32,
        signal: Signal,
    },
    /// The worker is gone: close its notify socket.
    CloseNotify {
        worker: WorkerId,
    },
    Reply {
        waiter: WaiterId,
        reply: ReloadReply,
    },
    Systemd(Vec<SystemdState>),
    /// Run the `--on-drain-timeout` hook for a worker that was killed.
    RunHook {
        pid: i32,
        generation: u64,
        slot: usize,
    },
    Log(Log),
}
