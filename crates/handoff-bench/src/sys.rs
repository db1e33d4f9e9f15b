//! What the bench needs from the kernel that std does not offer:
//! - starting a worker the socket-activation way without any supervisor (the plain-restart
//!   baseline): fds at 3.., `LISTEN_FDS`, and `LISTEN_PID` = the child's own pid, which only
//!   the child knows, so it is written into a preallocated slot after `fork`;
//! - pidfds, to learn the instant a process exits even when it is not our child (handoff's,
//!   start_server's and PM2's workers).
//!
//! This is the only module with `unsafe`; each block says why it holds.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Most listening fds [`spawn_with_fds`] moves into place (a fixed array: no allocation
/// after fork).
const MAX_FDS: usize = 64;

/// Opens a pidfd for `pid` (close-on-exec, as the kernel always makes them). It becomes
/// readable when the process exits, whether or not it is our child.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers and returns a new fd or -1; it touches none of
    // our memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this fd for us; nothing else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What a worker started by [`spawn_with_fds`] gets.
pub struct SpawnSpec<'a> {
    pub program: &'a Path,
    /// argv including argv[0].
    pub args: &'a [String],
    /// The environment, without `LISTEN_PID` / `LISTEN_FDS` (added here).
    pub env: &'a [(String, String)],
    /// Become fds 3, 4, ... in the child.
    pub listeners: &'a [RawFd],
    /// Becomes the child's stdout and stderr (stdin is /dev/null).
    pub output: RawFd,
    pub devnull: RawFd,
}

/// A started worker.
#[derive(Debug, Clone, Copy)]
pub struct Spawned {
    pub pid: i32,
    /// When the child was about to exec, on the bench's clock. A worker's own start is
    /// measured from here: the time `fork` takes in the bench (a big process: it holds every
    /// sample) is not the worker's.
    pub exec_at: std::time::Instant,
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// fork + exec with the listening sockets at 3.. and `LISTEN_PID` set to the child's pid, the
/// child in its own process group, default signal dispositions and mask, and SIGTERM on our
/// death (so an aborted bench leaves no worker serving). Returns once exec succeeded. Every fd
/// the bench itself opens is close-on-exec, so the child gets only these.
pub fn spawn_with_fds(spec: &SpawnSpec) -> io::Result<Spawned> {
    if spec.listeners.len() > MAX_FDS {
        return Err(io::Error::other("too many listening fds"));
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL in argument"));
    let path = cstr(spec.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let mut envs: Vec<CString> = spec
        .env
        .iter()
        .filter(|(k, _)| k != "LISTEN_PID" && k != "LISTEN_FDS")
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<_>>()?;
    envs.push(cstr(
        format!("LISTEN_FDS={}", spec.listeners.len()).as_bytes(),
    )?);
    // The child writes its pid (at most 20 digits) after the '=' and keeps a NUL after it.
    let mut pid_slot: Vec<u8> = b"LISTEN_PID=".to_vec();
    pid_slot.resize(pid_slot.len() + 21, 0);
    // One raw pointer for both uses, taken once: the envp entry and the digits after '='.
    let pid_entry: *mut u8 = pid_slot.as_mut_ptr();
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(pid_entry as *const c_char);
    env_ptrs.push(std::ptr::null());
    let mut fds = [-1 as RawFd; MAX_FDS];
    fds[..spec.listeners.len()].copy_from_slice(spec.listeners);
    let nfds = spec.listeners.len();
    let (output, devnull) = (spec.output, spec.devnull);

    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    use std::os::fd::AsRawFd;
    let err_w_raw = err_w.as_raw_fd();

    // SAFETY: the child of a multi-threaded process may only make async-signal-safe calls
    // until exec. Everything it needs (path, argv, envp, the pid slot, the fd list) was
    // allocated above; after fork the child calls only setpgid, sigprocmask, signal, prctl,
    // fcntl, dup2, getpid, write, execve and _exit, and writes only into `pid_slot`, which no
    // other thread knows about.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; this block runs in the child only and never returns.
        unsafe {
            libc::setpgid(0, 0);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored across exec.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            );
            // Move the listeners out of the way first (they may sit on 3.. already), then
            // into place; dup2 clears close-on-exec on the copy.
            let mut high = [-1 as RawFd; MAX_FDS];
            for i in 0..nfds {
                high[i] = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    child_fail(err_w_raw);
                }
            }
            for (i, fd) in high.iter().enumerate().take(nfds) {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    child_fail(err_w_raw);
                }
            }
            if libc::dup2(devnull, 0) < 0 || libc::dup2(output, 1) < 0 || libc::dup2(output, 2) < 0
            {
                child_fail(err_w_raw);
            }
            // getpid() digits, written backwards into a stack buffer, then copied.
            let mut n = libc::getpid() as u64;
            let mut tmp = [0u8; 20];
            let mut len = 0;
            loop {
                tmp[len] = b'0' + (n % 10) as u8;
                len += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for i in 0..len {
                *pid_entry.add(11 + i) = tmp[len - 1 - i];
            }
            // The moment of exec, for the parent (CLOCK_MONOTONIC, as std's Instant).
            let mut ts: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
            let ns = (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64;
            let bytes = ns.to_ne_bytes();
            libc::write(err_w_raw, bytes.as_ptr().cast(), 8);
            libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            child_fail(err_w_raw);
        }
    }
    drop(err_w);
    // The child sends the time of exec (8 bytes) and, should exec fail, errno (4 bytes); the
    // pipe closes on a successful exec (close-on-exec).
    let mut buf = [0u8; 12];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(&err_r, &mut buf[len..]) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => break,
            Ok(n) => len += n,
        }
    }
    let (now, now_ns) = (std::time::Instant::now(), monotonic_ns());
    if len != 8 {
        let at = if len == 12 { 8 } else { 0 };
        let errno = i32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(errno));
    }
    let exec_ns = u64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
    let exec_at = now
        .checked_sub(std::time::Duration::from_nanos(
            now_ns.saturating_sub(exec_ns),
        ))
        .unwrap_or(now);
    Ok(Spawned { pid, exec_at })
}

/// In the child: report errno to the parent and exit.
///
/// # Safety
/// Only async-signal-safe calls; `fd` is the write end of the error pipe.
unsafe fn child_fail(fd: RawFd) -> ! {
    // SAFETY: errno location, write and _exit are async-signal-safe; `e` lives on our stack.
    unsafe {
        let e = *libc::__errno_location();
        let bytes = e.to_ne_bytes();
        libc::write(fd, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

/// Write end of the self-pipe the stop-signal handler writes to (-1: none).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives on this handler's stack.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Catches SIGINT, SIGTERM and SIGHUP with a handler that writes the signal number to a pipe;
/// returns the pipe's read end. A handler (unlike a blocked mask, which children would
/// inherit through std's `Command`) is reset to the default by exec, so the processes the
/// bench starts get their signals as usual.
pub fn catch_stop_signals() -> io::Result<OwnedFd> {
    use std::os::fd::IntoRawFd;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    SIGNAL_PIPE.store(w.into_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only loads an atomic and calls write(2), both
        // async-signal-safe; SA_RESTART keeps the other threads' blocking calls going.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("handoff-bench-sys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_child_gets_its_own_pid_and_the_socket_at_fd_3() {
        let dir = scratch("spawn");
        let l = UnixListener::bind(dir.join("s")).unwrap();
        let out = File::create(dir.join("out")).unwrap();
        let devnull = File::open("/dev/null").unwrap();
        let script = "echo $LISTEN_PID $$ $LISTEN_FDS; [ -S /proc/self/fd/3 ] && echo socket; [ -e /proc/self/fd/4 ] || echo no-fd-4";
        let pid = spawn_with_fds(&SpawnSpec {
            program: Path::new("/bin/sh"),
            args: &["sh".into(), "-c".into(), script.into()],
            env: &[("PATH".into(), "/usr/bin:/bin".into())],
            listeners: &[l.as_raw_fd()],
            output: out.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
        })
        .unwrap();
        assert!(pid.exec_at <= std::time::Instant::now());
        let pid = pid.pid;
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        let text = std::fs::read_to_string(dir.join("out")).unwrap();
        assert_eq!(text, format!("{pid} {pid} 1\nsocket\nno-fd-4\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_exec_failure_is_reported() {
        let devnull = File::open("/dev/null").unwrap();
        let e = spawn_with_fds(&SpawnSpec {
            program: Path::new("/nonexistent/worker"),
            args: &["worker".into()],
            env: &[],
            listeners: &[],
            output: devnull.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
        })
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_pidfd_tells_when_a_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let watch = crate::procfs::Watch::new(&[child.id() as i32]).unwrap();
        let t = std::time::Instant::now();
        watch.wait_all(std::time::Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(150));
        child.wait().unwrap();
        // A process already gone is simply not watched.
        let gone = crate::procfs::Watch::new(&[child.id() as i32]).unwrap();
        gone.wait_all(std::time::Duration::from_millis(10)).unwrap();
    }
}
