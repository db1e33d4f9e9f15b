//! The machine's vocabulary: what goes in ([`Input`]), what comes out ([`Action`]), and the
//! settings its decisions depend on ([`Policy`]).

use std::fmt;
use std::path::PathBuf;
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
    /// `--rolling` only: the first new worker's window is at least this long (the soak).
    #[serde(default)]
    pub soak: Duration,
    #[serde(with = "super::snapshot::signal")]
    pub drain_signal: Signal,
    /// Each worker must send `WATCHDOG=1` this often once ready (it gets `WATCHDOG_USEC`);
    /// one that falls silent is replaced.
    #[serde(default)]
    pub watchdog: Option<Duration>,
    /// A worker whose process tree's RSS passes this many bytes is replaced.
    #[serde(default)]
    pub max_memory: Option<u64>,
    /// A worker this old (since its start) is replaced.
    #[serde(default)]
    pub max_age: Option<Duration>,
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
    /// `working_directory` as configured; each generation resolves it once when it starts
    /// ([`Input::Prepared`]) and runs from that target.
    #[serde(default)]
    pub working_directory: Option<PathBuf>,
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
            soak: s.soak,
            drain_signal: s.drain_signal,
            watchdog: s.watchdog,
            max_memory: s.max_memory,
            max_age: s.max_age,
            version_file: s.version_file.is_some(),
            drain_timeout_hook: s.on_drain_timeout.is_some(),
            command: s.command.clone(),
            environment: s.environment.clone(),
            user: s.user.clone(),
            group: s.group.clone(),
            credentials,
            working_directory: s.working_directory.clone(),
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
        differ("soak", self.soak != other.soak);
        differ("watchdog", self.watchdog != other.watchdog);
        differ("max_memory", self.max_memory != other.max_memory);
        differ("max_age", self.max_age != other.max_age);
        differ("user", self.user != other.user);
        differ("group", self.group != other.group);
        differ(
            "working_directory",
            self.working_directory != other.working_directory,
        );
        out
    }
}

/// How a child ended, as `waitpid` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// `handoff restart-worker N`: replace the worker of slot N gracefully (a new one starts
    /// beside it; once it is ready the old one is drained).
    RestartWorker {
        waiter: Option<WaiterId>,
        slot: usize,
    },
    /// The answer to [`Action::SampleUsage`]: each worker's process-tree RSS in bytes (workers
    /// that could not be read are left out).
    Usage(Vec<(WorkerId, u64)>),
    /// The answer to [`Action::ReadVersion`].
    Version(VersionInfo),
    /// The answer to [`Action::ReadVersion`] when the new generation has a
    /// `working_directory`: the directory resolved first (realpath, or why it could not be),
    /// then the version file read through it, so both name the same release.
    Prepared {
        version: Option<VersionInfo>,
        release: Result<PathBuf, String>,
    },
    /// A worker was started after its generation's version file changed on disk (an
    /// in-place install): `note` says which files it runs.
    RunsOnDisk { worker: WorkerId, note: String },
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
    /// Resolve the new generation's `working_directory` (if any), then read the version file
    /// (if any); answer with [`Input::Prepared`] or [`Input::Version`].
    ReadVersion,
    /// Start a worker; answer with [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn {
        worker: WorkerId,
        slot: usize,
        generation: u64,
    },
    /// Measure these workers' memory (pid: each worker's process tree); answer with
    /// [`Input::Usage`].
    SampleUsage(Vec<(WorkerId, i32)>),
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
