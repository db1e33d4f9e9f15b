//! Boot priority: a new worker starts at a lower CPU priority and gets its normal priority
//! back, on every thread of its whole process tree, once it says `READY=1`. While it boots it
//! then takes CPU only from idle time, not from the workers that serve (issue 17).
//!
//! The building blocks, for the supervisor to wire:
//! - [`BootPriority`]: the setting (`boot_priority = "idle"`), parsed by [`str::parse`];
//! - [`BootPriority::apply_in_child`]: between clone and exec, async-signal-safe;
//! - [`restore_tree`]: at `READY=1`, every thread of the worker and of its descendants;
//! - [`BootPriority::check_restorable`]: at start, whether handoff will be allowed to undo it.
//!
//! What the kernel lets an unprivileged handoff do (checked on Linux 6.18, uid 65534,
//! RLIMIT_NICE 0/0, the default; see docs/benchmarks.md):
//! - lowering a priority always works: a higher nice value, SCHED_IDLE, SCHED_BATCH;
//! - SCHED_BATCH → SCHED_OTHER works (the kernel lets a task move between the two freely);
//! - nice N → a lower value fails with EACCES, and SCHED_IDLE → SCHED_OTHER fails with EPERM,
//!   unless the task's RLIMIT_NICE allows the nice value it goes back to (soft limit
//!   ≥ 20 − nice, so ≥ 20 for nice 0: `LimitNICE=0` in the unit, which systemd sets with its
//!   own privileges) or handoff has CAP_SYS_NICE. The kernel treats SCHED_IDLE as "below nice
//!   19" and leaving it as a nice decrease (`can_nice()` in kernel/sched), since 2.6.39; before
//!   that only CAP_SYS_NICE could leave it.
//!
//! So without CAP_SYS_NICE or a raised RLIMIT_NICE only `batch` can be undone, and
//! [`BootPriority::check_restorable`] says so before any worker is started at a priority it
//! would keep for its whole life.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::str::FromStr;

/// How a new worker runs until it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootPriority {
    /// As handoff itself runs (no change).
    #[default]
    None,
    /// `nice:N`: N (1..=19) more than handoff's own nice value, capped at 19.
    Nice(u8),
    /// `idle`: SCHED_IDLE, runs only when a core has nothing else to run (weight 3 against
    /// nice 0's 1024).
    Idle,
    /// `batch`: SCHED_BATCH, same weight as nice 0 but never preempts a running task on
    /// wakeup. Weak, but the only one an unprivileged handoff can undo.
    Batch,
}

/// Why a `boot_priority` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

impl FromStr for BootPriority {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        match t {
            "none" | "off" => return Ok(BootPriority::None),
            "idle" => return Ok(BootPriority::Idle),
            "batch" => return Ok(BootPriority::Batch),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("nice:") {
            let n: u8 = n.trim().parse().map_err(|_| {
                ParseError(format!("boot priority {s:?}: nice:N needs N from 1 to 19"))
            })?;
            if !(1..=19).contains(&n) {
                return Err(ParseError(format!(
                    "boot priority {s:?}: nice:N needs N from 1 to 19"
                )));
            }
            return Ok(BootPriority::Nice(n));
        }
        Err(ParseError(format!(
            "boot priority {s:?}: expected none, nice:N (1-19), idle or batch"
        )))
    }
}

impl fmt::Display for BootPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootPriority::None => f.write_str("none"),
            BootPriority::Nice(n) => write!(f, "nice:{n}"),
            BootPriority::Idle => f.write_str("idle"),
            BootPriority::Batch => f.write_str("batch"),
        }
    }
}

/// sched_setscheduler's parameter (only the priority, 0 for the non-real-time policies).
#[repr(C)]
struct SchedParam {
    priority: libc::c_int,
}

/// The kernel's getpriority returns 20 − nice (1..=40) to stay clear of error values.
fn raw_nice(who: libc::pid_t) -> io::Result<i32> {
    // SAFETY: a plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getpriority,
            libc::PRIO_PROCESS as libc::c_long,
            who as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(20 - r as i32)
    }
}

fn set_nice(who: libc::pid_t, nice: i32) -> io::Result<()> {
    // SAFETY: a plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setpriority,
            libc::PRIO_PROCESS as libc::c_long,
            who as libc::c_long,
            nice as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn policy(who: libc::pid_t) -> io::Result<libc::c_int> {
    // SAFETY: a plain syscall with an integer argument.
    let r = unsafe { libc::syscall(libc::SYS_sched_getscheduler, who as libc::c_long) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // Without SCHED_RESET_ON_FORK, which a worker may have set.
        Ok(r as libc::c_int & !libc::SCHED_RESET_ON_FORK)
    }
}

fn set_policy(who: libc::pid_t, policy: libc::c_int) -> io::Result<()> {
    let param = SchedParam { priority: 0 };
    // SAFETY: `param` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            who as libc::c_long,
            policy as libc::c_long,
            &param as *const SchedParam as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl BootPriority {
    /// In the new worker, between clone and exec: lowers the calling thread's priority (exec
    /// keeps it, and every thread the worker then creates inherits it). Async-signal-safe and
    /// allocation-free: raw syscalls on the stack only, fit for a CLONE_VM child. Returns 0 or
    /// the errno of the failed call.
    ///
    /// # Safety
    /// Only sets errno (the caller's thread-local) besides the syscalls themselves.
    pub unsafe fn apply_in_child(self) -> libc::c_int {
        let param = SchedParam { priority: 0 };
        // SAFETY: raw syscalls; `param` lives on this stack.
        unsafe {
            let r = match self {
                BootPriority::None => 0,
                BootPriority::Nice(n) => {
                    let cur = libc::syscall(
                        libc::SYS_getpriority,
                        libc::PRIO_PROCESS as libc::c_long,
                        0 as libc::c_long,
                    );
                    if cur < 0 {
                        -1
                    } else {
                        let target = ((20 - cur) + n as libc::c_long).min(19);
                        libc::syscall(
                            libc::SYS_setpriority,
                            libc::PRIO_PROCESS as libc::c_long,
                            0 as libc::c_long,
                            target,
                        )
                    }
                }
                BootPriority::Idle | BootPriority::Batch => libc::syscall(
                    libc::SYS_sched_setscheduler,
                    0 as libc::c_long,
                    if self == BootPriority::Idle {
                        libc::SCHED_IDLE
                    } else {
                        libc::SCHED_BATCH
                    } as libc::c_long,
                    &param as *const SchedParam as libc::c_long,
                ),
            };
            if r < 0 { *libc::__errno_location() } else { 0 }
        }
    }

    /// Whether handoff, as it runs now, may undo this setting at `READY=1`: Err says why not
    /// and what would fix it. Call it at start and refuse (or fall back to `batch`): a worker
    /// that cannot be restored would serve at boot priority for its whole life.
    pub fn check_restorable(self) -> Result<(), String> {
        let nice = raw_nice(0).map_err(|e| format!("reading handoff's nice value: {e}"))?;
        match self {
            BootPriority::None | BootPriority::Batch => Ok(()),
            BootPriority::Nice(_) | BootPriority::Idle => {
                if has_cap_sys_nice() {
                    return Ok(());
                }
                // The kernel's can_nice(): nice value v is allowed when 20 − v ≤ RLIMIT_NICE.
                let need = (20 - nice) as u64;
                let (soft, _) =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
                        .map_err(|e| format!("reading RLIMIT_NICE: {e}"))?;
                if soft >= need {
                    Ok(())
                } else {
                    Err(format!(
                        "boot_priority = \"{self}\" could not be undone at READY=1: handoff has no CAP_SYS_NICE and RLIMIT_NICE is {soft} (going back to nice {nice} needs at least {need}; set LimitNICE={nice} in the unit), or use boot_priority = \"batch\""
                    ))
                }
            }
        }
    }
}

/// Whether this process has CAP_SYS_NICE in its effective set.
fn has_cap_sys_nice() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// What [`restore_tree`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// Threads looked at (the worker's and its descendants').
    pub threads: usize,
    /// Threads whose priority was changed back.
    pub changed: usize,
    /// Threads that could not be changed back, and the first error.
    pub failed: usize,
    pub first_error: Option<io::Error>,
}

/// Gives every thread of `pid` and of all its descendants the normal priority back: SCHED_OTHER
/// and handoff's own nice value (`normal_nice`, read at start with [`own_nice`]). Only what
/// `prio` changed is undone: a thread the worker moved to SCHED_BATCH or niced itself for its
/// own reasons is left alone unless it looks exactly like the boot priority.
///
/// Threads and children the worker creates while this runs inherit the priority of their
/// creator, which may still be the boot one: the walk repeats until a pass changes nothing
/// (at most 4 passes). Processes and threads that exit meanwhile are skipped.
pub fn restore_tree(pid: i32, prio: BootPriority, normal_nice: i32) -> Restored {
    let mut out = Restored::default();
    if prio == BootPriority::None {
        return out;
    }
    for _ in 0..4 {
        let mut pass = Restored::default();
        let mut seen = HashSet::new();
        let mut stack = vec![pid];
        while let Some(p) = stack.pop() {
            if !seen.insert(p) {
                continue;
            }
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue; // gone
            };
            let mut any_children_file = false;
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                pass.threads += 1;
                match restore_thread(tid, prio, normal_nice) {
                    Ok(true) => pass.changed += 1,
                    Ok(false) => {}
                    // ESRCH: the thread exited between the listing and the call.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        pass.failed += 1;
                        pass.first_error.get_or_insert(e);
                    }
                }
                if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{tid}/children")) {
                    any_children_file = true;
                    stack.extend(c.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
                }
            }
            if !any_children_file {
                stack.extend(children_by_scan(p));
            }
        }
        out.threads = pass.threads;
        out.changed += pass.changed;
        out.failed = pass.failed;
        if out.first_error.is_none() {
            out.first_error = pass.first_error;
        }
        if pass.changed == 0 {
            break;
        }
    }
    out
}

/// One thread back to normal; Ok(true) when something changed.
fn restore_thread(tid: i32, prio: BootPriority, normal_nice: i32) -> io::Result<bool> {
    match prio {
        BootPriority::None => Ok(false),
        BootPriority::Idle | BootPriority::Batch => {
            let boot = if prio == BootPriority::Idle {
                libc::SCHED_IDLE
            } else {
                libc::SCHED_BATCH
            };
            if policy(tid)? == boot {
                set_policy(tid, libc::SCHED_OTHER)?;
                Ok(true)
            } else {
                Ok(false)
            }
        }
        BootPriority::Nice(n) => {
            let boot = (normal_nice + n as i32).min(19);
            if raw_nice(tid)? == boot && boot != normal_nice {
                set_nice(tid, normal_nice)?;
                Ok(true)
            } else {
                Ok(false)
            }
        }
    }
}

/// Children of `pid` from every /proc/N/stat (kernels without CONFIG_PROC_CHILDREN).
fn children_by_scan(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// handoff's own nice value: the "normal" priority workers go back to.
pub fn own_nice() -> io::Result<i32> {
    raw_nice(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_the_rest() {
        assert_eq!("none".parse(), Ok(BootPriority::None));
        assert_eq!("off".parse(), Ok(BootPriority::None));
        assert_eq!("idle".parse(), Ok(BootPriority::Idle));
        assert_eq!(" batch ".parse(), Ok(BootPriority::Batch));
        assert_eq!("nice:10".parse(), Ok(BootPriority::Nice(10)));
        assert_eq!("nice:1".parse(), Ok(BootPriority::Nice(1)));
        assert_eq!("nice:19".parse(), Ok(BootPriority::Nice(19)));
        for bad in [
            "", "nice", "nice:", "nice:0", "nice:20", "nice:-5", "nice:x", "IDLE", "fifo",
            "nice:10x", "rr",
        ] {
            let e = bad.parse::<BootPriority>().unwrap_err();
            assert!(e.to_string().contains("boot priority"), "{bad:?}: {e}");
        }
        for p in [
            BootPriority::None,
            BootPriority::Nice(7),
            BootPriority::Idle,
            BootPriority::Batch,
        ] {
            assert_eq!(p.to_string().parse(), Ok(p), "{p} round-trips");
        }
    }

    /// Runs `f` in a forked child (priority changes are per thread and the test harness has
    /// many threads) and returns its exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `f` (syscalls and /proc reads) and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = f();
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("child: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn apply_lowers_and_restore_tree_undoes_it_for_every_thread() {
        // nice:N needs room above the nice value the tests run at (none at nice 19).
        let room = (19 - own_nice().unwrap()).clamp(0, 5) as u8;
        let mut cases = vec![BootPriority::Idle, BootPriority::Batch];
        if room > 0 {
            cases.push(BootPriority::Nice(room));
        }
        for prio in cases {
            let code = in_child(move || {
                let normal = own_nice().unwrap();
                if unsafe { prio.apply_in_child() } != 0 {
                    return 10;
                }
                // A thread started while "booting" inherits the boot priority ...
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let (tid_tx, tid_rx) = std::sync::mpsc::channel();
                let t = std::thread::spawn(move || {
                    tid_tx
                        .send(unsafe { libc::syscall(libc::SYS_gettid) } as i32)
                        .unwrap();
                    rx.recv().unwrap();
                    (policy(0).unwrap(), raw_nice(0).unwrap())
                });
                let tid = tid_rx.recv().unwrap();
                let booting = match prio {
                    BootPriority::Idle => policy(tid).unwrap() == libc::SCHED_IDLE,
                    BootPriority::Batch => policy(tid).unwrap() == libc::SCHED_BATCH,
                    BootPriority::Nice(n) => raw_nice(tid).unwrap() == (normal + n as i32).min(19),
                    BootPriority::None => true,
                };
                if !booting {
                    return 11;
                }
                // ... and so does a child process.
                let pid = std::process::id() as i32;
                let r = restore_tree(pid, prio, normal);
                if r.failed != 0 || r.changed < 2 || r.threads < 2 {
                    return 12;
                }
                tx.send(()).unwrap();
                let (pol, nice) = t.join().unwrap();
                if pol != libc::SCHED_OTHER || nice != normal {
                    return 13;
                }
                if policy(0).unwrap() != libc::SCHED_OTHER || raw_nice(0).unwrap() != normal {
                    return 14;
                }
                // A second walk finds nothing left to change.
                if restore_tree(pid, prio, normal).changed != 0 {
                    return 15;
                }
                0
            });
            assert_eq!(code, 0, "{prio}");
        }
    }

    #[test]
    fn restore_reaches_descendants() {
        let code = in_child(|| {
            let normal = own_nice().unwrap();
            if unsafe { BootPriority::Idle.apply_in_child() } != 0 {
                return 10;
            }
            // A grandchild-to-be: sh inherits SCHED_IDLE and runs sleep in a child of its own.
            let mut c = std::process::Command::new("/bin/sh")
                .args(["-c", "sleep 5 & wait"])
                .spawn()
                .unwrap();
            let sh = c.id() as i32;
            let code = (|| {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let sleeper = loop {
                    let kids = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
                        .unwrap_or_default();
                    if let Some(k) = kids.split_whitespace().next() {
                        break k.parse::<i32>().unwrap();
                    }
                    if std::time::Instant::now() > deadline {
                        return 11;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                };
                // The sleep has exec'd when its comm says so (before that it is a fork of sh).
                while std::fs::read_to_string(format!("/proc/{sleeper}/comm")).unwrap_or_default()
                    != "sleep\n"
                {
                    if std::time::Instant::now() > deadline {
                        return 12;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                if policy(sleeper).unwrap() != libc::SCHED_IDLE {
                    return 13;
                }
                let r = restore_tree(std::process::id() as i32, BootPriority::Idle, normal);
                let ok = r.failed == 0
                    && policy(sh).unwrap() == libc::SCHED_OTHER
                    && policy(sleeper).unwrap() == libc::SCHED_OTHER;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(sleeper),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if ok { 0 } else { 14 }
            })();
            let _ = c.kill();
            let _ = c.wait();
            code
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn restorable_as_root_or_with_batch() {
        assert!(BootPriority::Batch.check_restorable().is_ok());
        assert!(BootPriority::None.check_restorable().is_ok());
        if has_cap_sys_nice() {
            assert!(BootPriority::Idle.check_restorable().is_ok());
        }
    }

    #[test]
    fn without_cap_sys_nice_idle_cannot_be_undone() {
        // As an unprivileged user with RLIMIT_NICE 0 (the default): lowering works, undoing
        // SCHED_IDLE and nice does not, undoing SCHED_BATCH does; check_restorable agrees.
        if !has_cap_sys_nice() || nix::unistd::getuid().as_raw() != 0 {
            return; // needs root to become nobody; as non-root this is what the test runs as
        }
        let code = in_child(|| {
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NICE, 0, 0);
            // SAFETY: raw setresuid in a single-threaded child.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, 0 as libc::c_long, 0 as libc::c_long) != 0
                    || libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) != 0
                    || libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) != 0
                {
                    return 10;
                }
            }
            let me = 0;
            let normal = own_nice().unwrap();
            if BootPriority::Idle.check_restorable().is_ok()
                || BootPriority::Nice(5).check_restorable().is_ok()
                || BootPriority::Batch.check_restorable().is_err()
            {
                return 11;
            }
            if unsafe { BootPriority::Batch.apply_in_child() } != 0 {
                return 12;
            }
            if restore_tree(std::process::id() as i32, BootPriority::Batch, normal).failed != 0
                || policy(me).unwrap() != libc::SCHED_OTHER
            {
                return 13;
            }
            if unsafe { BootPriority::Idle.apply_in_child() } != 0 {
                return 14;
            }
            let r = restore_tree(std::process::id() as i32, BootPriority::Idle, normal);
            match r.first_error.and_then(|e| e.raw_os_error()) {
                Some(libc::EPERM) if r.failed == 1 => 0,
                _ => 15,
            }
        });
        assert_eq!(code, 0);
    }
}
