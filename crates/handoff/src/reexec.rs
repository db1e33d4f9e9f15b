//! `handoff reexec`: handoff replaces its own program without touching its workers.
//!
//! The running handoff writes its state ([`State`]: the machine's, and every fd it holds by
//! number) into a memfd, runs the new binary once as a child on that state (the pre-flight,
//! [`preflight`]: a binary that cannot read this format says so, or fails to answer, and the
//! old handoff goes on), then clears close-on-exec on what must survive and execs the binary
//! installed at the path it was started from, with the same argv. Same pid: systemd's
//! MAINPID, the workers' parent, their `PR_SET_PDEATHSIG` link and the guard's pipe all stay.
//! The new image reads the state from the fd named in [`STATE_ENV`] and takes over. Should it
//! fail to (the pre-flight passed, so this is unexpected), it fexecve's the old image, which
//! was opened from `/proc/self/exe` before the exec and passed along ([`FALLBACK_ENV`]), with
//! the same state: the old program takes back over and tells the client why.
//!
//! Signals that would end or confuse handoff between the two images (SIGTERM, SIGHUP,
//! SIGINT, SIGCHLD, SIGUSR2) are blocked before the exec: the mask survives execve, so they
//! stay pending until the new image has its handlers in place and unblocks them.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::spawn::Credentials;

/// The state format. A binary reads only its own number: the pre-flight refuses any other,
/// so the old handoff stays when the two disagree. Raise it when a change to [`State`] or to
/// the machine's types cannot be read by the previous binary's rules (a field added with
/// `#[serde(default)]` can).
pub const STATE_FORMAT: u32 = 1;
/// The fd of the memfd holding the state, in the new image's environment.
pub const STATE_ENV: &str = "HANDOFF_REEXEC_STATE";
/// The fd of the old image (`/proc/self/exe` opened before the exec), to fall back to.
pub const FALLBACK_ENV: &str = "HANDOFF_REEXEC_FALLBACK";
/// Set by a new image that failed to restore, for the old image it fell back to: why.
pub const FAILED_ENV: &str = "HANDOFF_REEXEC_FAILED";
/// What the pre-flight prints when it can restore the state.
pub const HANDSHAKE: &str = "handoff-state-ok";
/// How long the pre-flight may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// One listening socket, by fd.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerState {
    pub name: String,
    pub describe: String,
    pub fd: RawFd,
    pub created_path: Option<PathBuf>,
}

/// One worker's notify socket, by fd.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotifyState {
    pub worker: u64,
    pub fd: RawFd,
    pub path: PathBuf,
    pub allowed_uids: Vec<u32>,
    pub owner: i32,
}

/// Everything a handoff holds, as the new image needs it.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// The program's path as resolved at the first start: what every reexec runs.
    pub binary: PathBuf,
    /// handoff's argv at its first start (the new image ignores it: the state is the truth).
    pub argv: Vec<Vec<u8>>,
    /// `--config` and the command line's settings, for reloads.
    pub config: crate::supervisor::ConfigSource,
    pub settings: Settings,
    pub base_env: Vec<(Vec<u8>, Vec<u8>)>,
    pub notify_socket: Option<String>,
    pub watchdog: Option<Duration>,
    pub runtime_dir: PathBuf,
    pub control_path: PathBuf,
    pub credentials: Option<Credentials>,
    pub nofile: Option<(u64, u64)>,
    pub status_gid: Option<u32>,
    pub listeners: Vec<ListenerState>,
    pub control_fd: RawFd,
    pub status_fd: Option<RawFd>,
    /// The guard's (pid, pipe fd).
    pub guard: Option<(i32, RawFd)>,
    pub notify: Vec<NotifyState>,
    /// `--on-drain-timeout` hooks still running: (pid, command).
    pub hooks: Vec<(i32, String)>,
    /// Control connections waiting for the answer to their `reexec`.
    pub replies: Vec<RawFd>,
    /// [`crate::supervisor::machine::Machine::export`].
    pub machine: serde_json::Value,
    pub next_waiter: u64,
    pub traversable: bool,
    /// handoff's uptime at the exec.
    pub uptime: Duration,
    pub reexecs: u32,
    pub last_status_line: String,
    /// The workers' pids at the exec, sorted (the new image answers with them).
    #[serde(default)]
    pub workers: Vec<i32>,
}

impl State {
    /// Every fd the new image takes over.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self.listeners.iter().map(|l| l.fd).collect();
        v.push(self.control_fd);
        v.extend(self.status_fd);
        v.extend(self.guard.map(|g| g.1));
        v.extend(self.notify.iter().map(|n| n.fd));
        v.extend(&self.replies);
        v
    }
}

pub fn os_to_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn bytes_to_os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// The signals blocked across the exec (see the module doc).
fn handover_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

pub fn block_handover_signals() {
    let _ =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handover_signals()), None);
}

/// Called once the handlers are in place: what arrived during the exec is delivered now.
pub fn unblock_handover_signals() {
    let _ =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handover_signals()), None);
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd, cloexec: bool) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: fcntl on a raw fd number only reads and sets its flags; a bad number is EBADF.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_truncate(fcntl(bfd, FcntlArg::F_GETFD)?);
    let flags = if cloexec {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(bfd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// A memfd (close-on-exec until the exec itself) holding `bytes`.
pub fn state_memfd(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(c"handoff-state", MFdFlags::MFD_CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

/// Reads and checks a state (from the start of `f`).
pub fn read_state(f: &mut impl Read) -> Result<State, String> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the state: {e}"))?;
    parse_state(&buf)
}

pub fn parse_state(buf: &[u8]) -> Result<State, String> {
    // The format first, alone: a state of another format may not parse as this one's State.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let f: Format = serde_json::from_slice(buf).map_err(|e| format!("unreadable state: {e}"))?;
    if f.format != STATE_FORMAT {
        return Err(format!(
            "state format {} (this binary reads format {STATE_FORMAT} only)",
            f.format
        ));
    }
    let state: State =
        serde_json::from_slice(buf).map_err(|e| format!("state format {STATE_FORMAT}: {e}"))?;
    crate::supervisor::machine::Machine::import(state.machine.clone(), std::time::Instant::now())
        .map_err(|e| format!("the machine's state: {e}"))?;
    Ok(state)
}

/// `handoff __check-state`: the pre-flight's child side. Exit 0 after the handshake line when
/// the state on stdin can be restored by this binary.
pub fn check_state_stdin() -> i32 {
    match read_state(&mut std::io::stdin().lock()) {
        Ok(_) => {
            println!("{HANDSHAKE} {STATE_FORMAT}");
            0
        }
        Err(e) => {
            eprintln!("handoff: {e}");
            crate::exit::SOFTWARE
        }
    }
}

/// Runs `binary __check-state` on the state: it must exit 0 with the handshake line within
/// [`PREFLIGHT_TIMEOUT`]. Blocks the caller (at most that long).
pub fn preflight(binary: &Path, state: &std::fs::File) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let mut input = state
        .try_clone()
        .map_err(|e| format!("cannot pass the state to the pre-flight: {e}"))?;
    input.rewind().map_err(|e| e.to_string())?;
    let mut child = Command::new(binary)
        .arg("__check-state")
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if started.elapsed() > PREFLIGHT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} __check-state gave no answer within {} s",
                    binary.display(),
                    PREFLIGHT_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("waiting for the pre-flight: {e}")),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let expected = format!("{HANDSHAKE} {STATE_FORMAT}");
    if status.success() && out.lines().any(|l| l.trim() == expected) {
        return Ok(());
    }
    let said = err.lines().chain(out.lines()).last().unwrap_or("").trim();
    Err(format!(
        "{} cannot take over this handoff's state ({status}{})",
        binary.display(),
        if said.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                crate::text::printable(&said.chars().take(300).collect::<String>())
            )
        }
    ))
}

fn cstrings<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<CString> {
    items
        .filter_map(|b| CString::new(b.to_vec()).ok())
        .collect()
}

/// An environment entry `KEY=VALUE`.
pub fn env_entry(k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut e = k.to_vec();
    e.push(b'=');
    e.extend_from_slice(v);
    e
}

/// execve: returns only on failure.
pub fn exec(binary: &Path, argv: &[Vec<u8>], env: &[Vec<u8>]) -> std::io::Error {
    let Ok(path) = CString::new(binary.as_os_str().as_bytes()) else {
        return std::io::Error::other("the binary's path holds a NUL byte");
    };
    let argv = cstrings(argv.iter().map(|a| a.as_slice()));
    let env = cstrings(env.iter().map(|e| e.as_slice()));
    match nix::unistd::execve(&path, &argv, &env) {
        Err(e) => e.into(),
    }
}

/// fexecve of the old image: returns only on failure.
pub fn fexec(image: RawFd, argv: &[Vec<u8>], env: &[Vec<u8>]) -> std::io::Error {
    let argv = cstrings(argv.iter().map(|a| a.as_slice()));
    let env = cstrings(env.iter().map(|e| e.as_slice()));
    // SAFETY: the fd number came from our own environment; fexecve only reads it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(image) };
    match nix::unistd::fexecve(fd, &argv, &env) {
        Err(e) => e.into(),
    }
}

/// Opens the running image, for a fallback after the exec. Not close-on-exec: it must reach
/// the new image.
pub fn open_own_image() -> std::io::Result<OwnedFd> {
    let f = std::fs::File::open("/proc/self/exe")?;
    let fd = OwnedFd::from(f);
    set_cloexec(fd.as_raw_fd(), false)?;
    Ok(fd)
}

/// Takes ownership of an fd number the state names.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process: true of the fds a state
/// names, which the previous image left open for exactly this.
pub unsafe fn take_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: see the function's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Marks every fd from 3 up close-on-exec: once restored, nothing handoff holds may leak
/// into a worker or hook (spawn.rs hands workers their sockets explicitly).
pub fn cloexec_all() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_long,
            libc::c_uint::MAX as libc::c_long,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_long,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_format_is_refused_by_number() {
        let e = parse_state(br#"{"format": 999, "whatever": true}"#).unwrap_err();
        assert!(e.contains("format 999"), "{e}");
        assert!(parse_state(b"not json").is_err());
    }

    #[test]
    fn the_memfd_is_cloexec_until_asked() {
        let f = state_memfd(b"{}").unwrap();
        let fd = f.as_raw_fd();
        let get = || {
            nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFD).unwrap() & libc::FD_CLOEXEC != 0
        };
        assert!(get());
        set_cloexec(fd, false).unwrap();
        assert!(!get());
    }
}
