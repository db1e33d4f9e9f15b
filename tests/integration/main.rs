//! handoff's integration tests: the real binary, real worker processes, real sockets on
//! loopback. Build the binaries first (`cargo build --workspace --bins`; tests/run.sh does).

mod attack_combo;
mod config_reload;
mod faults;
mod harness;
mod health;
mod hostile;
mod operator;
mod pinned;
mod reexec;
mod robustness;
mod rollover;
mod stability;
mod status_usage;
mod systemd_protocol;
mod worker_contract;
