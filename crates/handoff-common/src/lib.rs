//! The contracts handoff's binaries and tools share, one home each:
//!
//! - [`protocol`]: the control socket's wire types and a blocking client (`handoff reload`,
//!   `handoff status`, `handoff-trigger`, the benchmark).
//! - [`exit`]: exit codes, the same for `handoff` and `handoff-trigger`.
//! - [`paths`]: where a handoff's runtime dir and control socket are, per app.
//! - [`duration`]: `500ms` / `5s` / `2m` parsing and human output.
//! - [`release`]: a release's identity (its `package.json`), read safely and hashed.
//! - [`logging`]: stderr logging as both binaries set it up.
//! - [`text`]: text from releases and workers made safe for terminals, logs and systemd.

pub mod duration;
pub mod exit;
pub mod logging;
pub mod paths;
pub mod protocol;
pub mod release;
pub mod text;
