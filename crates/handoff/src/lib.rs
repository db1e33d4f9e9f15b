//! handoff: zero-downtime worker rollovers on listening sockets that never close.
//!
//! Where things live:
//! - [`supervisor`]: the event loop and the rollover state machine (start here).
//! - [`spawn`]: clone/exec of a worker with the listening fds at 3.. (the only process creation).
//! - [`listeners`]: taking sockets from systemd or binding them.
//! - [`notify`]: the sd_notify protocol, worker side (receiving) and systemd side (sending).
//! - [`priority`]: boot priority: new workers at a lower CPU priority until READY=1.
//! - [`control`]: the control socket protocol behind `handoff reload` / `handoff status`.
//! - [`config`]: the TOML file and command-line settings; [`cli`]: the command line.

pub mod cli;
pub mod config;
pub mod control;
pub mod duration;
pub mod listeners;
pub mod logging;
pub mod notify;
pub mod priority;
pub mod render;
pub mod spawn;
pub mod supervisor;
pub mod version;

/// Exit codes from sysexits.h, which systemd and shell scripts understand.
pub mod exit {
    /// `handoff reload`: the rollover failed (rolled back, partial or refused).
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 64;
    /// `handoff reload`/`status` cannot reach a running handoff.
    pub const UNAVAILABLE: i32 = 69;
    pub const SOFTWARE: i32 = 70;
    pub const CONFIG: i32 = 78;
}
