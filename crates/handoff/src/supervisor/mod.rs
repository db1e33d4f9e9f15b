//! The supervisor: the rollover state machine ([`machine`]) and the executor around it
//! ([`executor`]), which owns every effect: processes, sockets, signals, the clock.

pub mod executor;
pub mod machine;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Options, Settings};
use crate::listeners::Listener;
use crate::notify::SystemdNotifier;
use crate::spawn::Credentials;

pub use executor::{Restored, run};

/// Where a reload reads the settings again.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ConfigSource {
    /// `--config`: `None`, and a reload keeps the settings in force.
    pub file: Option<PathBuf>,
    /// The command line given at start: it overrides the file at each reading, as at start.
    pub cli: Options,
}

/// Everything prepared in `main` before the event loop starts.
pub struct Runtime {
    /// The settings handoff started with (those bound at start stay these).
    pub settings: Settings,
    pub config: ConfigSource,
    pub listeners: Vec<Listener>,
    /// handoff's environment without the variables meant for handoff alone.
    pub base_env: Vec<(OsString, OsString)>,
    pub notifier: SystemdNotifier,
    /// `WATCHDOG_USEC` for handoff itself: ping systemd at half of it.
    pub watchdog: Option<Duration>,
    pub runtime_dir: PathBuf,
    pub control_path: PathBuf,
    /// Who the first generation's workers run as, when `user =` is set.
    pub credentials: Option<Credentials>,
    /// `RLIMIT_NOFILE` as handoff found it (soft, hard), for the workers.
    pub nofile: Option<(u64, u64)>,
    /// Kills the workers' process groups if handoff is killed.
    pub guard: Option<crate::guard::Guard>,
    /// `status_group`'s gid: serve the read-only status.sock to it.
    pub status_gid: Option<u32>,
    /// The path handoff was started from, resolved then: what `handoff reexec` runs (after a
    /// package upgrade `/proc/self/exe` names the deleted old file).
    pub binary: PathBuf,
    /// handoff's argv, given again to the new binary (for `ps`; the state says the rest).
    pub argv: Vec<Vec<u8>>,
    /// `NOTIFY_SOCKET` as handoff got it (for the new binary after a reexec).
    pub notify_socket: Option<String>,
}
