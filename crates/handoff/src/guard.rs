//! The guard: a small child of handoff that outlives it by one drain timeout, so that nothing
//! handoff started outlives handoff.
//!
//! A worker gets its drain signal from the kernel when handoff dies (`PR_SET_PDEATHSIG`), but
//! that reaches the worker alone: a child of the worker in its process group, or a descendant
//! that left it, would keep the listening socket (and the port) with nobody left to kill it.
//! Under systemd the cgroup catches them (`KillMode=mixed`); outside systemd nothing does. So
//! handoff tells the guard, over a pipe, every process group it starts; when the pipe closes
//! without a goodbye (handoff was killed), the guard sends the drain signal to each group,
//! waits the drain timeout, and SIGKILLs what is left.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{ForkResult, Pid};

/// handoff's end of the pipe.
pub struct Guard {
    pipe: std::fs::File,
    pid: Pid,
}

const GOODBYE: i32 = 0;

impl Guard {
    /// Forks the guard. Must run while handoff is single-threaded (before the runtime starts):
    /// the child then runs ordinary Rust code, never exec'ing.
    pub fn start(drain_signal: Signal, drain_timeout: Duration) -> std::io::Result<Guard> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: handoff has one thread here (main() forks before building the runtime), so
        // the child may allocate and use std as usual.
        match unsafe { nix::unistd::fork() }? {
            ForkResult::Child => {
                drop(w);
                run_guard(r, drain_signal, drain_timeout)
            }
            ForkResult::Parent { child } => {
                drop(r);
                Ok(Guard {
                    pipe: std::fs::File::from(w),
                    pid: child,
                })
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The pipe's fd, for `handoff reexec` (the guard must not see it close).
    pub fn pipe_fd(&self) -> std::os::fd::RawFd {
        self.pipe.as_raw_fd()
    }

    /// The guard of the handoff before a `handoff reexec`: the same child, the same pipe.
    pub fn restored(pid: i32, pipe: OwnedFd) -> Guard {
        Guard {
            pipe: std::fs::File::from(pipe),
            pid: Pid::from_raw(pid),
        }
    }

    /// A process group to take care of if handoff dies.
    pub fn watch(&mut self, pgid: i32) {
        self.send(pgid);
    }

    /// The group is gone (its leader was reaped and the rest killed).
    pub fn forget(&mut self, pgid: i32) {
        self.send(-pgid);
    }

    /// handoff exits cleanly: nothing left to do.
    pub fn goodbye(&mut self) {
        self.send(GOODBYE);
    }

    fn send(&mut self, v: i32) {
        use std::io::Write;
        // 4 bytes: atomic on a pipe. A full pipe (a guard that stopped reading) must not
        // block handoff; the guard drains it continuously, so this is not expected.
        let _ = self.pipe.write_all(&v.to_ne_bytes());
    }
}

fn run_guard(r: OwnedFd, drain_signal: Signal, drain_timeout: Duration) -> ! {
    // Detach from the terminal's signals (a Ctrl-C meant for handoff) and from everything
    // handoff had open, the listening sockets above all.
    let _ = nix::unistd::setsid();
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGPIPE,
    ] {
        // SAFETY: installing SIG_IGN runs no code.
        let _ = unsafe { signal::signal(sig, SigHandler::SigIgn) };
    }
    let _ = nix::unistd::dup2_stdin(&r);
    drop(r);
    // SAFETY: close_range only closes fds; no memory involved.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_long,
            libc::c_uint::MAX as libc::c_long,
            0 as libc::c_long,
        );
    }
    // SAFETY: fd 0 is the pipe's read end, owned by nobody else in this process now.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(0) };
    let _ = nix::sys::prctl::set_name(c"handoff-guard");
    let mut groups: Vec<i32> = Vec::new();
    let mut buf = [0u8; 4];
    let clean = loop {
        match pipe.read_exact(&mut buf) {
            Ok(()) => match i32::from_ne_bytes(buf) {
                GOODBYE => break true,
                v if v > 0 => groups.push(v),
                v => groups.retain(|g| *g != -v),
            },
            Err(_) => break false,
        }
    };
    if !clean && !groups.is_empty() {
        for g in &groups {
            let _ = signal::killpg(Pid::from_raw(*g), drain_signal);
        }
        let deadline = std::time::Instant::now() + drain_timeout;
        while std::time::Instant::now() < deadline
            && groups
                .iter()
                .any(|g| signal::killpg(Pid::from_raw(*g), None).is_ok())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for g in &groups {
            let _ = signal::killpg(Pid::from_raw(*g), Signal::SIGKILL);
        }
    }
    let _ = pipe.as_raw_fd();
    std::process::exit(0)
}
