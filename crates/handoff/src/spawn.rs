//! Starting a worker: fork, put the listening fds at 3..3+n, exec.
//!
//! This is the one module that forks. Everything the child needs (argv, envp, the fd list, the
//! `LISTEN_PID=` slot) is allocated before `fork`; after it, the child only makes
//! async-signal-safe calls and then `execve`s: another thread (tokio's blocking pool) may
//! hold a lock at the moment of the fork, the allocator's included, and the child would
//! deadlock on it. An exec
//! failure travels back to the parent over a CLOEXEC pipe, as std's `Command` does it.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

use crate::journal::JournalStream;

/// Everything needed to start one worker process.
pub struct WorkerSpec<'a> {
    /// Absolute path of the program (see [`resolve_program`]).
    pub program: &'a Path,
    /// argv, including argv[0].
    pub args: &'a [String],
    /// The complete environment, except `LISTEN_PID`, which only the child can know.
    pub env: &'a [(OsString, OsString)],
    /// The listening sockets, in order: they become fds 3, 4, ...
    pub listeners: &'a [BorrowedFd<'a>],
    /// Sent to the worker if handoff dies, so an orphaned worker drains instead of serving on.
    pub parent_death_signal: Signal,
    /// Switch to this user and groups before exec (`user =` / `group =`).
    pub credentials: Option<&'a Credentials>,
    /// Connect stdout/stderr to journald under this identifier (see [`JournalStream`]).
    pub journal: Option<&'a JournalStream>,
}

/// Who workers run as, resolved once at start (name lookups are not fork-safe).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, as initgroups would set them).
    pub groups: Vec<libc::gid_t>,
    pub name: String,
    pub home: PathBuf,
}

impl Credentials {
    /// Looks up `user` (name or uid) and `group` (name or gid; default: the user's group).
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Credentials, String> {
        use nix::unistd::{Gid, Group, Uid, User};
        let by_name =
            User::from_name(user).map_err(|e| format!("looking up user {user:?}: {e}"))?;
        let u = match by_name {
            Some(u) => u,
            None => match user.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid))
                    .map_err(|e| format!("looking up uid {uid}: {e}"))?
                    .ok_or_else(|| format!("no user with uid {uid}"))?,
                Err(_) => return Err(format!("unknown user {user:?}")),
            },
        };
        let gid = match group {
            None => u.gid,
            Some(g) => {
                match Group::from_name(g).map_err(|e| format!("looking up group {g:?}: {e}"))? {
                    Some(gr) => gr.gid,
                    None => match g.parse::<u32>() {
                        Ok(n) => Gid::from_raw(n),
                        Err(_) => return Err(format!("unknown group {g:?}")),
                    },
                }
            }
        };
        let cname =
            CString::new(u.name.as_bytes()).map_err(|_| "user name with NUL".to_string())?;
        let mut groups: Vec<libc::gid_t> = nix::unistd::getgrouplist(&cname, gid)
            .map_err(|e| format!("supplementary groups of {user:?}: {e}"))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        groups.dedup();
        Ok(Credentials {
            uid: u.uid.as_raw(),
            gid: gid.as_raw(),
            groups,
            name: u.name,
            home: u.dir,
        })
    }
}

/// Finds `name` on `PATH` (when it has no slash), so a missing program is reported by handoff
/// before any fork, and the child can use plain `execve`.
pub fn resolve_program(name: &str, path_env: Option<&OsStr>) -> io::Result<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match std::fs::metadata(&p) {
            _ if is_executable(&p) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: no such file"),
            )),
            Err(e) => Err(io::Error::new(e.kind(), format!("{name}: {e}"))),
            Ok(m) if m.is_dir() => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: is a directory, not a program"),
            )),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{name}: not executable (chmod +x it?)"),
            )),
        };
    }
    let path = path_env.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name}: command not found on PATH"),
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument or environment entry contains a NUL byte",
        )
    })
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const JOURNAL_STREAM_PREFIX: &[u8] = b"JOURNAL_STREAM=";

/// Forks and execs a worker. Returns its pid once `execve` has succeeded; an exec failure is
/// returned as the error (and the child is already reaped).
pub fn spawn_worker(spec: &WorkerSpec) -> io::Result<Pid> {
    // ---- everything allocated before fork ----
    let program = cstring(spec.program.as_os_str().as_bytes())?;
    let args: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let mut env: Vec<CString> = Vec::with_capacity(spec.env.len());
    for (k, v) in spec.env {
        let mut entry = k.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        env.push(cstring(&entry)?);
    }
    // "LISTEN_PID=" followed by room for any pid and the NUL; the child fills in its own pid.
    let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
    listen_pid.resize(LISTEN_PID_PREFIX.len() + 24, 0);
    let listen_pid_digits = unsafe {
        // SAFETY: in bounds: the buffer is 24 bytes longer than the prefix.
        listen_pid.as_mut_ptr().add(LISTEN_PID_PREFIX.len())
    };
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(listen_pid.as_ptr() as *const libc::c_char);
    // With a journal stream, JOURNAL_STREAM=dev:ino of the worker's own stream, filled in by
    // the child once it has it (room for two u64s and the colon).
    let mut journal_env = JOURNAL_STREAM_PREFIX.to_vec();
    journal_env.resize(JOURNAL_STREAM_PREFIX.len() + 48, 0);
    let journal_digits = unsafe {
        // SAFETY: in bounds: 48 bytes were reserved after the prefix.
        journal_env.as_mut_ptr().add(JOURNAL_STREAM_PREFIX.len())
    };
    if spec.journal.is_some() {
        envp.push(journal_env.as_ptr() as *const libc::c_char);
    }
    let journal = spec.journal;
    envp.push(std::ptr::null());

    let n = spec.listeners.len() as RawFd;
    let sources: Vec<RawFd> = spec.listeners.iter().map(|f| f.as_raw_fd()).collect();
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let first_free = 3 + n;
    let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(65536) as RawFd)
        .unwrap_or(1024);
    let parent = nix::unistd::getpid();
    let creds = spec.credentials;
    let death_signal = spec.parent_death_signal as libc::c_int;

    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let err_w_raw = err_w.as_raw_fd();

    // SAFETY: the child branch below calls only async-signal-safe functions (setpgid, prctl,
    // getppid, rt_sigprocmask, rt_sigaction, fcntl, dup2, syscall(close_range), getpid, execve, write,
    // _exit) and writes only into memory allocated before the fork. It never returns.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => unsafe {
            // SAFETY: see the fork comment; raw libc calls on values prepared above.
            libc::setpgid(0, 0);
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != parent.as_raw() {
                libc::_exit(1); // handoff died between fork and prctl
            }
            if let Some(c) = creds {
                // Groups first, then gid, then uid (after setuid we could not change them).
                // Raw syscalls: glibc's wrappers would try to sync other threads, of which
                // the child has none.
                if libc::syscall(
                    libc::SYS_setgroups,
                    c.groups.len() as libc::c_long,
                    c.groups.as_ptr() as libc::c_long,
                ) != 0
                    || libc::syscall(libc::SYS_setgid, c.gid as libc::c_long) != 0
                    || libc::syscall(libc::SYS_setuid, c.uid as libc::c_long) != 0
                {
                    child_fail(err_w_raw);
                }
            }
            // Raw syscalls, not glibc's wrappers: those refuse to touch the two real-time
            // signals glibc reserves (32, 33), and an ancestor of handoff may have left them
            // ignored; exec keeps SIG_IGN (Rust itself ignores SIGPIPE). Workers start clean.
            // (syscall() is variadic: every argument goes as a full c_long.)
            let empty_mask: u64 = 0;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as libc::c_long,
                &empty_mask as *const u64 as libc::c_long,
                0 as libc::c_long,
                8 as libc::c_long,
            );
            let default = KernelSigaction {
                handler: libc::SIG_DFL,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            for sig in 1..=64 as libc::c_long {
                if sig != libc::SIGKILL as libc::c_long && sig != libc::SIGSTOP as libc::c_long {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        &default as *const KernelSigaction as libc::c_long,
                        0 as libc::c_long,
                        8 as libc::c_long,
                    );
                }
            }
            if let Some(j) = journal {
                connect_journal(j, journal_digits);
            }
            // Move the error pipe and every listener above the target range first, so a
            // dup2 onto 3+i can never clobber a source still to be moved.
            let err_fd = libc::fcntl(err_w_raw, libc::F_DUPFD_CLOEXEC, first_free);
            for (i, &src) in sources.iter().enumerate() {
                let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, first_free);
                if fd < 0 {
                    child_fail(err_fd);
                }
                *moved.as_mut_ptr().add(i) = fd;
            }
            for i in 0..sources.len() {
                // dup2 leaves the new fd without CLOEXEC: exactly these survive exec.
                if libc::dup2(*moved.as_ptr().add(i), 3 + i as RawFd) < 0 {
                    child_fail(err_fd);
                }
            }
            // Everything from 3+n up closes at exec: no inherited strays, whatever handoff's
            // own parent left open. close_range needs Linux 5.11; fall back to a loop.
            if libc::syscall(
                libc::SYS_close_range,
                first_free as libc::c_long,
                libc::c_uint::MAX as libc::c_long,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_long,
            ) != 0
            {
                for fd in first_free..max_fd {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            write_decimal(listen_pid_digits, libc::getpid() as u64);
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            child_fail(err_fd)
        },
        ForkResult::Parent { child } => {
            drop(err_w);
            let mut buf = [0u8; 4];
            let mut got = 0;
            loop {
                match nix::unistd::read(&err_r, &mut buf[got..]) {
                    Ok(0) => break,
                    Ok(k) => {
                        got += k;
                        if got == 4 {
                            break;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if got == 0 {
                return Ok(child); // exec succeeded: the CLOEXEC write end closed
            }
            let _ = nix::sys::wait::waitpid(child, None);
            let errno = i32::from_ne_bytes(buf);
            let err = io::Error::from_raw_os_error(errno);
            Err(io::Error::new(
                err.kind(),
                format!("cannot execute {}: {err}", spec.program.display()),
            ))
        }
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction` (x86_64 and aarch64 layout).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: libc::c_ulong,
    mask: u64,
}

/// In the child: opens the journal stream and makes it stdout and stderr. On any failure the
/// inherited stdout/stderr stay (output still reaches the journal, just untagged), and the
/// JOURNAL_STREAM slot is left empty. Async-signal-safe: socket, connect, write, fstat, dup2.
unsafe fn connect_journal(j: &JournalStream, env_slot: *mut u8) {
    // SAFETY: raw syscalls on a fresh fd and on memory prepared before fork.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        if libc::connect(
            fd,
            &j.addr as *const libc::sockaddr_un as *const libc::sockaddr,
            j.addr_len,
        ) != 0
        {
            libc::close(fd);
            return;
        }
        libc::shutdown(fd, libc::SHUT_RD);
        let mut off = 0;
        while off < j.header.len() {
            let w = libc::write(
                fd,
                j.header.as_ptr().add(off) as *const libc::c_void,
                j.header.len() - off,
            );
            if w <= 0 {
                libc::close(fd);
                return;
            }
            off += w as usize;
        }
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == 0 {
            write_decimal(env_slot, st.st_dev);
            let mut len = 0;
            while *env_slot.add(len) != 0 {
                len += 1;
            }
            *env_slot.add(len) = b':';
            write_decimal(env_slot.add(len + 1), st.st_ino);
        }
        libc::dup2(fd, 1);
        libc::dup2(fd, 2);
        libc::close(fd);
    }
}

/// Reports errno over the pipe and exits; async-signal-safe.
unsafe fn child_fail(err_fd: RawFd) -> ! {
    // SAFETY: errno location, write and _exit are async-signal-safe; buf lives on our stack.
    unsafe {
        let e = *libc::__errno_location();
        let buf = e.to_ne_bytes();
        libc::write(err_fd, buf.as_ptr() as *const libc::c_void, 4);
        libc::_exit(127)
    }
}

/// Writes `v` in decimal followed by NUL at `dst` (which has room for 21 bytes). No allocation.
unsafe fn write_decimal(dst: *mut u8, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // SAFETY: at most 20 digits plus NUL fit the 24 bytes reserved after the prefix.
    unsafe {
        for (k, &b) in tmp[i..].iter().enumerate() {
            *dst.add(k) = b;
        }
        *dst.add(tmp.len() - i) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_users_and_groups() {
        let root = Credentials::resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(Credentials::resolve("0", Some("0")).unwrap().name, "root");
        assert!(
            Credentials::resolve("no-such-user-xyz", None)
                .unwrap_err()
                .contains("unknown user")
        );
        assert!(
            Credentials::resolve("root", Some("no-such-group-xyz"))
                .unwrap_err()
                .contains("unknown group")
        );
    }

    #[test]
    fn decimal_writer() {
        let mut buf = [0xffu8; 24];
        unsafe { write_decimal(buf.as_mut_ptr(), 0) };
        assert_eq!(&buf[..2], b"0\0");
        unsafe { write_decimal(buf.as_mut_ptr(), 4194304) };
        assert_eq!(&buf[..8], b"4194304\0");
        unsafe { write_decimal(buf.as_mut_ptr(), u64::MAX) };
        assert_eq!(&buf[..21], b"18446744073709551615\0");
    }

    #[test]
    fn resolves_programs() {
        assert!(
            resolve_program("sh", Some(OsStr::new("/usr/bin:/bin")))
                .unwrap()
                .ends_with("sh")
        );
        assert!(resolve_program("no-such-program-xyz", None).is_err());
        assert!(resolve_program("/etc/passwd", None).is_err());
    }

    #[test]
    fn exec_failure_is_reported() {
        // A directory passes no exec: the child's execve fails and the error comes back.
        let spec = WorkerSpec {
            program: Path::new("/proc/self/fd"),
            args: &["x".to_string()],
            env: &[],
            listeners: &[],
            parent_death_signal: Signal::SIGTERM,
            credentials: None,
            journal: None,
        };
        let err = spawn_worker(&spec).unwrap_err();
        assert!(err.to_string().contains("cannot execute"), "{err}");
    }
}
