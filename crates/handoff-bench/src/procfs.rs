//! Reading processes from /proc, and waiting for processes to exit.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::sys;

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Result<u64> {
    status_field(&read(&format!("/proc/{pid}/status"))?, "VmRSS").context("no VmRSS")
}

/// (`RssAnon`, `RssFile`) in KiB: private memory, and pages of the binary and shared libraries
/// mapped from the page cache.
pub fn rss_split_kib(pid: i32) -> Result<(u64, u64)> {
    let text = read(&format!("/proc/{pid}/status"))?;
    Ok((
        status_field(&text, "RssAnon").context("no RssAnon")?,
        status_field(&text, "RssFile").context("no RssFile")?,
    ))
}

/// Voluntary + involuntary context switches of every thread of `pid`: each one is a wakeup.
pub fn context_switches(pid: i32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("status");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // a thread that just ended
        };
        total += status_field(&text, "voluntary_ctxt_switches").unwrap_or(0)
            + status_field(&text, "nonvoluntary_ctxt_switches").unwrap_or(0);
    }
    Ok(total)
}

/// Threads of `pid`.
pub fn thread_count(pid: i32) -> Result<u64> {
    status_field(&read(&format!("/proc/{pid}/status"))?, "Threads").context("no Threads")
}

/// utime + stime of `pid` (all its threads, not its children), in seconds, from
/// /proc/PID/stat (clock-tick resolution).
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let text = read(&format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in its parentheses.
    let rest = text.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok((utime + stime) as f64 / tck)
}

/// Time on CPU of every thread of `pid`, in seconds, from /proc/PID/task/*/schedstat
/// (nanosecond resolution).
pub fn cpu_seconds_precise(pid: i32) -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// Pids whose parent is `ppid` (a scan of /proc: this kernel has no
/// /proc/PID/task/TID/children).
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = text.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest: state, ppid, ...; a zombie is already gone for our purposes.
        if f.first() != Some(&"Z") && f.get(1).and_then(|p| p.parse().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Pidfds of processes to watch; a process already gone is simply not in the set.
pub struct Watch {
    fds: Vec<(i32, OwnedFd)>,
}

impl Watch {
    pub fn new(pids: &[i32]) -> Result<Watch> {
        let mut fds = Vec::new();
        for &pid in pids {
            match sys::pidfd_open(pid) {
                Ok(fd) => fds.push((pid, fd)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e).with_context(|| format!("pidfd_open({pid})")),
            }
        }
        Ok(Watch { fds })
    }

    /// Waits until every watched process has exited; returns when the last one was seen to.
    pub fn wait_all(mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut last = Instant::now();
        while !self.fds.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let pids: Vec<i32> = self.fds.iter().map(|(p, _)| *p).collect();
                bail!("processes {pids:?} still running after {timeout:?}");
            }
            let mut pfds: Vec<PollFd> = self
                .fds
                .iter()
                .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms =
                PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(PollTimeout::MAX);
            match poll(&mut pfds, ms) {
                Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
                Err(e) => return Err(e).context("poll on pidfds"),
                Ok(_) => {}
            }
            let done: Vec<bool> = pfds
                .iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            last = Instant::now();
            let mut i = 0;
            self.fds.retain(|_| {
                let keep = !done[i];
                i += 1;
                keep
            });
        }
        Ok(last)
    }
}

/// Reaps `pid` if it is our child and has exited (no-op otherwise).
pub fn reap(pid: i32) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let _ = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Whether `pid` has exited but is not reaped yet.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            t.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
