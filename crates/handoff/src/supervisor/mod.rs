//! The supervisor: the rollover state machine ([`machine`]) and the executor around it
//! ([`executor`]), which owns every effect: processes, sockets, signals, the clock.

pub mod executor;
pub mod machine;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Settings;
use crate::listeners::Listener;
use crate::notify::SystemdNotifier;
use crate::spawn::Credentials;

pub use executor::run;

/// Everything prepared in `main` before the event loop starts.
pub struct Runtime {
    pub settings: Settings,
    pub listeners: Vec<Listener>,
    /// handoff's environment without the variables meant for handoff alone.
    pub base_env: Vec<(OsString, OsString)>,
    pub notifier: SystemdNotifier,
    /// `WATCHDOG_USEC` for handoff itself: ping systemd at half of it.
    pub watchdog: Option<Duration>,
    pub runtime_dir: PathBuf,
    pub control_path: PathBuf,
    /// Who workers run as, when `user =` is set.
    pub credentials: Option<Credentials>,
    /// `RLIMIT_NOFILE` as handoff found it (soft, hard), for the workers.
    pub nofile: Option<(u64, u64)>,
    /// Kills the workers' process groups if handoff is killed.
    pub guard: Option<crate::guard::Guard>,
    /// `status_group`'s gid: serve the read-only status.sock to it.
    pub status_gid: Option<u32>,
}
