//! The machine's vocabulary: what goes in ([`Input`]), what comes out ([`Action`]), and the
//! settings its decisions depend on ([`Policy`]).

use std::fmt;
use std::time::Duration;

use handoff_common::protocol::{ReloadReply, VersionInfo};
use nix::sys::signal::Signal;

use super::{WaiterId, WorkerId};
use crate::config::{ReadyMode, Settings};
use crate::notify::Message;

/// The settings the decisions depend on.
#[derive(Debug, Clone)]
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
    pub drain_signal: Signal,
    /// A version file is configured: read it before each rollover.
    pub version_file: bool,
    /// An `--on-drain-timeout` hook is configured.
    pub drain_timeout_hook: bool,
}

impl Policy {
    pub fn from_settings(s: &Settings) -> Policy {
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
        }
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
