//! handoff-bench: does anybody notice the upgrade? A load generator and a driver that rolls
//! handoff and the tools users would pick instead over under the same load, side by side.
//!
//! - [`load`]: the load generator (closed-loop clients, new-connection and keep-alive).
//! - [`contenders`]: handoff, the plain restart baseline, Server::Starter, PM2.
//! - [`compare`]: the comparison run and its tables; [`svg`]: the latency plot.
//! - [`busy`]: the busy host: load at a fraction of the measured capacity, Rust or Egg workers.
//! - [`cost`]: supervisor cost (RSS, idle wakeups, CPU per rollover) and scale.
//! - [`commands`]: what each subcommand of the binary does.
//! - [`cleanup`]: stopping what the bench started when it is interrupted.
//! - [`sys`]: fork/exec with fds at 3.. and pidfds (the only `unsafe`); [`procfs`]: /proc.

pub mod busy;
pub mod cleanup;
pub mod commands;
pub mod compare;
pub mod contenders;
pub mod cost;
pub mod load;
pub mod procfs;
pub mod stats;
pub mod svg;
pub mod sys;
