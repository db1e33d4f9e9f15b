//! Starting a worker: clone, put the listening fds at 3..3+n, exec.
//!
//! This is the one module that creates processes. It uses `clone(CLONE_VM | CLONE_VFORK)`, as
//! posix_spawn does, not fork: the child borrows handoff's memory until it execs, so nothing is
//! copied (fork's page-table copy and the copy-on-write faults after it were most of handoff's
//! CPU per worker). Everything the child needs (argv, envp, the fd list, the `LISTEN_PID=` slot)
//! is allocated before the clone; after it, the child only makes raw syscalls and
//! async-signal-safe calls on its own small stack and then `execve`s. An exec failure travels
//! back to the parent over a CLOEXEC pipe, as std's `Command` does it.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::journal::JournalStream;

/// Everything needed to start one worker process.
pub struct WorkerSpec<'a> {
    /// Absolute path of the program (see [`resolve_program`]).
    pub program: &'a Path,
    /// argv, including argv[0].
    pub args: &'a [String],
    /// The complete environment, except `LISTEN_PID` (and `WATCHDOG_PID`), which only the
    /// child can know.
    pub env: &'a [(OsString, OsString)],
    /// The worker has a watchdog (`WATCHDOG_USEC` is in `env`): it gets `WATCHDOG_PID=` its
    /// own pid, as libsystemd's `sd_watchdog_enabled()` checks.
    pub watchdog_pid: bool,
    /// The listening sockets, in order: they become fds 3, 4, ...
    pub listeners: &'a [BorrowedFd<'a>],
    /// Sent to the worker if handoff dies, so an orphaned worker drains instead of serving on.
    pub parent_death_signal: Signal,
    /// Switch to this user and groups before exec (`user =` / `group =`).
    pub credentials: Option<&'a Credentials>,
    /// Connect stdout/stderr to journald under this identifier (see [`JournalStream`]).
    pub journal: Option<&'a JournalStream>,
    /// The `RLIMIT_NOFILE` handoff was started with: handoff raises its own soft limit, and
    /// workers get the original back (a soft limit above 1024 breaks `select()` users).
    pub nofile: Option<(u64, u64)>,
    /// The worker's cwd (a generation's pinned release dir); `None`: handoff's own.
    pub cwd: Option<&'a Path>,
}

/// Who workers run as, resolved once at start (name lookups are not fork-safe).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, as initgroups would set them).
    pub groups: Vec<libc::gid_t>,
    pub name: String,
    pub home: PathBuf,
}

impl Credentials {
    /// Who workers run as (`user =`, `group =`); `None` without `user`. Unknown names, and
    /// another user when handoff is not root, are errors.
    pub fn for_workers(user: Option<&str>, group: Option<&str>) -> Result<Option<Self>, String> {
        let Some(user) = user else {
            return Ok(None);
        };
        let c = Credentials::resolve(user, group).map_err(|e| format!("user = {user:?}: {e}"))?;
        if !nix::unistd::getuid().is_root() && c.uid != nix::unistd::getuid().as_raw() {
            return Err(format!(
                "user = {user:?}: handoff must run as root to start workers as another user"
            ));
        }
        Ok(Some(c))
    }

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
const WATCHDOG_PID_PREFIX: &[u8] = b"WATCHDOG_PID=";
const JOURNAL_STREAM_PREFIX: &[u8] = b"JOURNAL_STREAM=";

/// Starts a worker (clone + exec). Returns its pid once `execve` has succeeded; an exec failure is
/// returned as the error (and the child is already reaped).
pub fn spawn_worker(spec: &WorkerSpec) -> io::Result<Pid> {
    // ---- everything allocated before clone: the child must not allocate ----
    let program = cstring(spec.program.as_os_str().as_bytes())?;
    let cwd = spec
        .cwd
        .map(|d| cstring(d.as_os_str().as_bytes()))
        .transpose()?;
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
    let mut watchdog_pid = WATCHDOG_PID_PREFIX.to_vec();
    watchdog_pid.resize(WATCHDOG_PID_PREFIX.len() + 24, 0);
    let watchdog_pid_digits = if spec.watchdog_pid {
        envp.push(watchdog_pid.as_ptr() as *const libc::c_char);
        unsafe {
            // SAFETY: in bounds: the buffer is 24 bytes longer than the prefix.
            watchdog_pid.as_mut_ptr().add(WATCHDOG_PID_PREFIX.len())
        }
    } else {
        std::ptr::null_mut()
    };
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
    envp.push(std::ptr::null());

    let n = spec.listeners.len() as RawFd;
    let sources: Vec<RawFd> = spec.listeners.iter().map(|f| f.as_raw_fd()).collect();
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let first_free = 3 + n;
    let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(65536) as RawFd)
        .unwrap_or(1024);
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let child_args = ChildArgs {
        program: program.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        sources: &sources,
        moved: moved.as_mut_ptr(),
        first_free,
        max_fd,
        parent: nix::unistd::getpid().as_raw(),
        creds: spec.credentials,
        death_signal: spec.parent_death_signal as libc::c_int,
        journal: spec.journal,
        nofile: spec.nofile.map(|(soft, hard)| libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        }),
        journal_digits,
        listen_pid_digits,
        watchdog_pid_digits,
        err_w: err_w.as_raw_fd(),
    };
    let child = clone_vfork(&child_args)?;
    drop(err_w);
    // CLONE_VFORK: clone returned only once the child had exec'd (the CLOEXEC write end is
    // closed) or exited (after writing its errno), so this read does not wait.
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
    if errno & CHDIR_FAILED != 0 {
        let err = io::Error::from_raw_os_error(errno & !CHDIR_FAILED);
        return Err(io::Error::new(
            err.kind(),
            format!(
                "cannot enter the working directory {}: {err}",
                spec.cwd.unwrap_or(Path::new("?")).display()
            ),
        ));
    }
    let err = io::Error::from_raw_os_error(errno);
    Err(io::Error::new(
        err.kind(),
        format!("cannot execute {}: {err}", spec.program.display()),
    ))
}

/// Everything the child reads, prepared by the parent: the child shares the parent's memory
/// (CLONE_VM) and must not allocate, so it only follows these pointers.
struct ChildArgs<'a> {
    program: *const libc::c_char,
    /// NUL-terminated cwd, or null to keep handoff's.
    cwd: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    sources: &'a [RawFd],
    /// Room for one fd per source (the child writes here).
    moved: *mut RawFd,
    first_free: RawFd,
    max_fd: RawFd,
    parent: libc::pid_t,
    creds: Option<&'a Credentials>,
    death_signal: libc::c_int,
    journal: Option<&'a JournalStream>,
    journal_digits: *mut u8,
    listen_pid_digits: *mut u8,
    /// Null without a watchdog.
    watchdog_pid_digits: *mut u8,
    err_w: RawFd,
    nofile: Option<libc::rlimit>,
}

/// The child's stack: 64 KiB above one PROT_NONE guard page (the child's deepest frame, in
/// `connect_journal`, needs well under 1 KiB). Unmapped on drop. Each thread that spawns keeps
/// one (mapping and unmapping it per worker was 4 % of handoff's CPU in a 64-worker rollover).
const CHILD_STACK: usize = 64 * 1024;

struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        let page = 4096;
        let len = CHILD_STACK + page;
        // SAFETY: a fresh anonymous mapping; the guard page is its lowest page.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = ChildStack { base, len };
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// The stack grows down: the child starts at the top (page aligned, so 16-byte aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is what clone wants.
        unsafe { (self.base as *mut u8).add(self.len) as *mut libc::c_void }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the child that used it has exec'd or exited (CLONE_VFORK).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Starts the child with `clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn does: no copy of
/// handoff's page tables and no copy-on-write faults afterwards (fork's cost, which grew with
/// every worker), and the calling thread is suspended until the child has exec'd or exited.
/// All signals are blocked around the clone, so no handler of handoff's can run in the child
/// (it would run on shared memory); the child resets every disposition and then unblocks.
fn clone_vfork(args: &ChildArgs) -> io::Result<Pid> {
    thread_local! {
        static STACK: std::cell::RefCell<Option<ChildStack>> = const { std::cell::RefCell::new(None) };
    }
    STACK.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.is_none() {
            *cached = Some(ChildStack::new()?);
        }
        let stack = cached.as_ref().expect("just set");
        clone_on(stack, args)
    })
}

/// The clone itself, on `stack` (which no other child uses meanwhile: the stack is this
/// thread's, and this thread is suspended until the child has exec'd or exited).
fn clone_on(stack: &ChildStack, args: &ChildArgs) -> io::Result<Pid> {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: raw rt_sigprocmask on this thread (glibc's wrapper would leave its two internal
    // signals unblocked); `clone` runs `child_main` on the fresh stack with `args`, which lives
    // on our stack until clone returns, and with CLONE_VFORK that is after exec or exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &all as *const u64 as libc::c_long,
            &mut old as *mut u64 as libc::c_long,
            8 as libc::c_long,
        );
        let pid = libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            args as *const ChildArgs as *mut libc::c_void,
        );
        let err = io::Error::last_os_error();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &old as *const u64 as libc::c_long,
            0 as libc::c_long,
            8 as libc::c_long,
        );
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    Ok(Pid::from_raw(pid))
}

/// The child's entry point on its own stack. Never returns: execve or _exit.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive and unchanged while the parent waits.
    unsafe { child_exec(&*(arg as *const ChildArgs)) }
}

/// Everything between clone and execve. The child shares handoff's memory (CLONE_VM), so it
/// calls only raw syscalls and async-signal-safe functions (no allocation, no locks, no
/// glibc wrapper that syncs threads or caches state), writes only into the buffers the parent
/// reserved for it (`moved`, the LISTEN_PID= and JOURNAL_STREAM= slots), and its errno is the
/// parent thread's, which the parent does not read after a successful clone.
unsafe fn child_exec(a: &ChildArgs) -> ! {
    // SAFETY: see above; raw libc calls on values prepared by the parent.
    unsafe {
        // Dispositions first, while every signal is still blocked (inherited from the
        // parent's clone_vfork). Raw syscalls, not glibc's wrappers: those refuse to touch the
        // two real-time signals glibc reserves (32, 33), and an ancestor of handoff may have
        // left them ignored; exec keeps SIG_IGN (Rust itself ignores SIGPIPE). Workers start
        // clean. (syscall() is variadic: every argument goes as a full c_long.)
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
        libc::syscall(libc::SYS_setpgid, 0 as libc::c_long, 0 as libc::c_long);
        if let Some(c) = a.creds {
            // Groups first, then gid, then uid (after setuid we could not change them).
            // Raw syscalls: glibc's wrappers would signal every thread of handoff to change
            // theirs too (the child shares handoff's memory, so glibc believes it is handoff).
            if libc::syscall(
                libc::SYS_setgroups,
                c.groups.len() as libc::c_long,
                c.groups.as_ptr() as libc::c_long,
            ) != 0
                || libc::syscall(libc::SYS_setgid, c.gid as libc::c_long) != 0
                || libc::syscall(libc::SYS_setuid, c.uid as libc::c_long) != 0
            {
                child_fail(a.err_w);
            }
        }
        // As the worker's user (after the credentials): a release dir that user may not enter
        // fails here, with its name, not later inside the app.
        if !a.cwd.is_null() && libc::syscall(libc::SYS_chdir, a.cwd as libc::c_long) != 0 {
            child_fail_flagged(a.err_w, CHDIR_FAILED);
        }
        // After the credentials: the kernel clears the parent-death signal when a process's
        // uid or gid changes.
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as libc::c_long,
            a.death_signal as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        );
        if libc::syscall(libc::SYS_getppid) as libc::pid_t != a.parent {
            libc::_exit(1); // handoff died before prctl: nobody would signal us
        }
        if let Some(j) = a.journal {
            connect_journal(j, a.journal_digits);
        }
        // Move the error pipe and every listener above the target range first, so a
        // dup2 onto 3+i can never clobber a source still to be moved.
        let err_fd = libc::fcntl(a.err_w, libc::F_DUPFD_CLOEXEC, a.first_free);
        for (i, &src) in a.sources.iter().enumerate() {
            let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, a.first_free);
            if fd < 0 {
                child_fail(err_fd);
            }
            *a.moved.add(i) = fd;
        }
        for i in 0..a.sources.len() {
            // dup2 leaves the new fd without CLOEXEC: exactly these survive exec.
            if libc::dup2(*a.moved.add(i), 3 + i as RawFd) < 0 {
                child_fail(err_fd);
            }
        }
        // Everything from 3+n up closes at exec: no inherited strays, whatever handoff's
        // own parent left open. close_range needs Linux 5.11; fall back to a loop.
        if libc::syscall(
            libc::SYS_close_range,
            a.first_free as libc::c_long,
            libc::c_uint::MAX as libc::c_long,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_long,
        ) != 0
        {
            for fd in a.first_free..a.max_fd {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        if let Some(r) = &a.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, r);
        }
        let pid = libc::syscall(libc::SYS_getpid) as u64;
        write_decimal(a.listen_pid_digits, pid);
        if !a.watchdog_pid_digits.is_null() {
            write_decimal(a.watchdog_pid_digits, pid);
        }
        // Last: unblock every signal (the worker starts with an empty mask).
        let empty_mask: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &empty_mask as *const u64 as libc::c_long,
            0 as libc::c_long,
            8 as libc::c_long,
        );
        libc::execve(a.program, a.argv, a.envp);
        child_fail(err_fd)
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
    // SAFETY: raw syscalls on a fresh fd and on memory prepared before the clone.
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
    // SAFETY: see child_fail_flagged.
    unsafe { child_fail_flagged(err_fd, 0) }
}

/// Marks an errno the child reports as chdir's (errno values are far below this bit).
const CHDIR_FAILED: i32 = 1 << 30;

/// [`child_fail`] with `flag` or'ed into the errno, so the parent can say which step failed.
unsafe fn child_fail_flagged(err_fd: RawFd, flag: i32) -> ! {
    // SAFETY: errno location, write and _exit are async-signal-safe; buf lives on our stack.
    unsafe {
        let e = *libc::__errno_location() | flag;
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
            watchdog_pid: false,
            listeners: &[],
            parent_death_signal: Signal::SIGTERM,
            credentials: None,
            journal: None,
            nofile: None,
            cwd: None,
        };
        let err = spawn_worker(&spec).unwrap_err();
        assert!(err.to_string().contains("cannot execute"), "{err}");
    }

    #[test]
    fn a_missing_working_directory_is_named() {
        let spec = WorkerSpec {
            program: Path::new("/bin/true"),
            args: &["true".to_string()],
            env: &[],
            watchdog_pid: false,
            listeners: &[],
            parent_death_signal: Signal::SIGTERM,
            credentials: None,
            journal: None,
            nofile: None,
            cwd: Some(Path::new("/nonexistent/release/7")),
        };
        let err = spawn_worker(&spec).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot enter the working directory /nonexistent/release/7: No such file or \
             directory (os error 2)"
        );
    }
}
