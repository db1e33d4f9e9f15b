//! handoff: zero-downtime worker rollovers on listening sockets that never close.
//!
//! Where things live:
//! - [`supervisor`]: the rollover state machine (`supervisor::machine`, start here) and the
//!   executor that carries out its decisions (`supervisor::executor`).
//! - [`contract`]: what a worker is handed (environment, fds); [`spawn`]: fork/exec of a
//!   worker (the only process creation, by `clone(CLONE_VM|CLONE_VFORK)`); [`journal`]: the workers' journal streams.
//! - [`priority`]: boot priority building blocks (new workers at a lower CPU priority until
//!   READY=1; not wired into the supervisor yet).
//! - [`guard`]: a child that kills what handoff started if handoff is killed.
//! - [`listeners`]: taking sockets from systemd or binding them.
//! - [`notify`]: the sd_notify protocol, worker side (receiving) and systemd side (sending).
//! - [`usage`]: what each worker's process tree uses (RSS, CPU time), sampled from /proc.
//! - [`control`]: the control socket's server side (the wire types are in
//!   `handoff_common::protocol`).
//! - [`reexec`]: `handoff reexec`, handoff replacing its own program over its state.
//! - [`config`]: the TOML file and command-line settings; [`cli`]: the command line.
//! - [`pinned`]: a generation's `working_directory`, resolved once (the `current` symlink layout).

pub mod cli;
pub mod config;
pub mod contract;
pub mod control;
pub mod guard;
pub mod journal;
pub mod listeners;
pub mod notify;
pub mod pinned;
pub mod priority;
pub mod reexec;
pub mod render;
pub mod spawn;
pub mod supervisor;
pub mod usage;

pub use handoff_common::{duration, exit, paths, protocol, release, text};
