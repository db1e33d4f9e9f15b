//! The sd_notify protocol, both ends.
//!
//! Server side: every worker gets a datagram socket of its own (`NOTIFY_SOCKET`) with an
//! unguessable name ([`socket_name`]). A datagram counts for that worker only if the kernel's
//! credentials (`SCM_CREDENTIALS`, which an unprivileged sender cannot forge) name an allowed
//! user and a process of the worker's own tree ([`sender_in_tree`]): the worker, a process in its
//! process group, a descendant, or a daemonized (`setsid`) descendant re-parented to handoff. So
//! `systemd-notify --ready` run by a Node.js worker, or by a detached grandchild, works; another
//! process of the same user (`user =` makes the directory 0711) is refused.
//!
//! Client side: [`SystemdNotifier`] speaks to the service manager for handoff itself. It does not
//! use `sd_notify::notify` because that reads `NOTIFY_SOCKET` from the environment on every call,
//! and handoff strips that variable at the top of `main` (children must not inherit it, and the
//! environment must not change once threads exist). Message formatting still comes from the
//! `sd-notify` crate's [`NotifyState`].

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as StdUnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff_common::text::printable;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, sockopt};
use sd_notify::NotifyState;

/// systemd's own limit for one notification datagram (`NOTIFY_BUFFER_MAX`).
pub const MAX_DATAGRAM: usize = 4096;
/// At most this many fds are accepted (and closed) per datagram; more are cut by the kernel.
const MAX_FDS: usize = 64;

/// What one datagram said. Unknown keys are ignored, as systemd does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub reloading: bool,
    pub stopping: bool,
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the sender asks to be treated as hung (systemd's meaning).
    pub watchdog_trigger: bool,
    pub status: Option<String>,
    pub errno: Option<i32>,
    pub extend_timeout: Option<Duration>,
    pub main_pid: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    Oversized(usize),
    #[error("datagram is not UTF-8")]
    NotUtf8,
    #[error("datagram contains a NUL byte")]
    Nul,
    #[error("line {0:?} is not KEY=VALUE")]
    NoEquals(String),
    #[error("empty datagram")]
    Empty,
}

/// Parses one datagram: newline-separated `KEY=VALUE` assignments.
///
/// A datagram that is not well-formed as a whole is dropped (the caller logs at debug); a
/// well-formed line with a value systemd would not accept (`READY=2`, `ERRNO=x`) is ignored on
/// its own, again as systemd does.
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    if data.len() > MAX_DATAGRAM {
        return Err(ParseError::Oversized(data.len()));
    }
    if data.contains(&0) {
        return Err(ParseError::Nul);
    }
    let text = std::str::from_utf8(data).map_err(|_| ParseError::NotUtf8)?;
    let mut msg = Message::default();
    let mut any = false;
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ParseError::NoEquals(line.chars().take(64).collect()))?;
        any = true;
        match key {
            "READY" => msg.ready |= value == "1",
            "RELOADING" => msg.reloading |= value == "1",
            "STOPPING" => msg.stopping |= value == "1",
            "WATCHDOG" => match value {
                "1" => msg.watchdog = true,
                "trigger" => msg.watchdog_trigger = true,
                _ => {}
            },
            "STATUS" => msg.status = Some(value.to_string()),
            "ERRNO" => msg.errno = value.parse().ok().filter(|&e: &i32| e >= 0).or(msg.errno),
            "EXTEND_TIMEOUT_USEC" => {
                if let Ok(us) = value.parse::<u64>() {
                    msg.extend_timeout = Some(Duration::from_micros(us));
                }
            }
            "MAINPID" => msg.main_pid = value.parse().ok().filter(|&p| p > 0).or(msg.main_pid),
            _ => {}
        }
    }
    if !any {
        return Err(ParseError::Empty);
    }
    Ok(msg)
}

/// What came out of one receive on a worker's notify socket.
#[derive(Debug)]
pub enum Received {
    Message {
        msg: Message,
        sender_pid: Option<i32>,
    },
    /// Dropped, with the reason (for a debug log).
    Dropped(String),
}

/// A worker's notify socket, bound to a path inside the runtime directory.
pub struct NotifySocket {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
    /// Users whose datagrams count: root, handoff's own user, the worker's user.
    allowed_uids: Vec<u32>,
    /// The worker's pid, once spawned: datagrams count only from its process tree.
    owner: i32,
}

/// A fresh notify socket file name: 128 random bits, fixed length. Nobody can guess a
/// starting worker's socket, and the path does not grow with generations or restarts.
pub fn socket_name() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// (ppid, process group, session) of `pid`, from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(i32, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(1);
    let mut next = || fields.next()?.parse::<i32>().ok();
    Some((next()?, next()?, next()?))
}

/// A legitimate sender that did not wait (`systemd-notify` before systemd 246, e.g. RHEL 8,
/// exits right after sending) looks like this too: say so where an operator looks, at most
/// every 10 s (a loop of senders that exit must not flood the log).
fn warn_unplaced(why: &str) {
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        *last = Some(Instant::now());
        tracing::warn!(
            "notify datagram dropped: {why}. A worker must send from a process that is still running when handoff reads it (systemd-notify from systemd 246 on waits by default; older ones do not)"
        );
    }
}

/// Whether `sender` (a pid the kernel vouched for) belongs to the process tree of `worker`, a
/// child of `supervisor` (handoff, the child subreaper). Walks the parent chain up from the
/// sender, as `/proc` shows it now:
///
/// - the worker itself, any process in its process group (workers lead their own group, and
///   only processes of handoff's session can join it), or any descendant: yes;
/// - a chain that reaches handoff through another child: that child is another worker or a
///   hook (no: they never lead a session), or a descendant of some worker whose parent exited,
///   re-parented to handoff. Those that `setsid()`ed (`spawn({detached: true})`, a daemon's
///   double fork) count; they can only descend from handoff's own children.
///
/// A process of the same user outside handoff's tree is refused, and so is a sender that has
/// already exited (nothing tells whose it was; systemd drops those too). `systemd-notify`
/// waits for the receiver by default (`BARRIER=1`), so it is still there when checked.
pub fn sender_in_tree(sender: i32, worker: i32, supervisor: i32) -> Result<(), String> {
    if sender <= 0 || worker <= 0 {
        return Err(format!(
            "sender pid {sender} unknown (another pid namespace?)"
        ));
    }
    let mut pid = sender;
    // A bound, not a real limit: pid chains are short, and /proc cannot loop.
    for _ in 0..4096 {
        if pid == worker {
            return Ok(());
        }
        let Some((ppid, pgid, sid)) = proc_stat(pid) else {
            let why = format!(
                "sender pid {sender} exited before it could be checked; cannot tell whose it was"
            );
            warn_unplaced(&why);
            return Err(why);
        };
        if pgid == worker {
            return Ok(());
        }
        if ppid == supervisor {
            return if sid == pid {
                Ok(())
            } else {
                Err(format!(
                    "sender pid {sender} belongs to handoff's child {pid}, not to worker {worker}"
                ))
            };
        }
        if ppid <= 1 {
            return Err(format!(
                "sender pid {sender} is not in worker {worker}'s process tree"
            ));
        }
        pid = ppid;
    }
    Err(format!("sender pid {sender}: parent chain too long"))
}

impl NotifySocket {
    pub fn bind(path: &Path, allowed_uids: Vec<u32>) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        // std creates it CLOEXEC.
        let sock = UnixDatagram::bind(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind notify socket {}: {e} (a shorter --runtime-dir helps if the path is long)", path.display()))
        })?;
        // Ask the kernel to attach the sender's pid/uid/gid to every datagram.
        socket::setsockopt(&sock, sockopt::PassCred, &true)?;
        // Room for bursts (a Node worker sending STATUS= lines fast) without blocking senders.
        let _ = socket::setsockopt(&sock, sockopt::RcvBuf, &(256 * 1024));
        sock.set_nonblocking(true)?;
        Ok(NotifySocket {
            sock: tokio::net::UnixDatagram::from_std(sock)?,
            path: path.to_path_buf(),
            allowed_uids,
            owner: 0,
        })
    }

    /// The worker this socket is for, once forked: until then nothing counts.
    pub fn set_owner(&mut self, pid: i32) {
        self.owner = pid;
    }

    /// What `handoff reexec` carries over: (fd, allowed uids, owner).
    pub fn handover(&self) -> (std::os::fd::RawFd, Vec<u32>, i32) {
        (self.sock.as_raw_fd(), self.allowed_uids.clone(), self.owner)
    }

    /// A notify socket carried over `handoff reexec` (inside the runtime).
    pub fn restored(
        fd: std::os::fd::OwnedFd,
        path: PathBuf,
        allowed_uids: Vec<u32>,
        owner: i32,
    ) -> io::Result<Self> {
        let sock = std::os::unix::net::UnixDatagram::from(fd);
        sock.set_nonblocking(true)?;
        Ok(NotifySocket {
            sock: tokio::net::UnixDatagram::from_std(sock)?,
            path,
            allowed_uids,
            owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next datagram. Passed fds are always closed; oversized, malformed and
    /// foreign datagrams come back as [`Received::Dropped`].
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            self.sock.readable().await?;
            let fd = self.sock.as_raw_fd();
            match self.sock.try_io(tokio::io::Interest::READABLE, || {
                recv_one(fd, &self.allowed_uids, self.owner)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl NotifySocket {
    /// Takes one datagram already queued, without waiting; `None` when there is none. Reads
    /// the socket directly, not through the runtime's readiness cache, so it also sees what
    /// arrived while handoff was stopped and the runtime has not been told about yet.
    pub fn try_recv(&self) -> io::Result<Option<Received>> {
        match recv_one(self.sock.as_raw_fd(), &self.allowed_uids, self.owner) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_one(fd: i32, allowed_uids: &[u32], owner: i32) -> io::Result<Received> {
    // One byte more than the limit: with MSG_TRUNC the kernel reports the real length anyway.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC;
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), flags)?;
    let mut creds = None;
    let mut fds_closed = 0;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::ScmRights(fds) => {
                // The protocol's FDSTORE is not ours to keep: close whatever was passed.
                for f in fds {
                    let _ = nix::unistd::close(f);
                    fds_closed += 1;
                }
            }
            ControlMessageOwned::ScmCredentials(c) => creds = Some(c),
            _ => {}
        }
    }
    let len = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    if truncated {
        return Ok(Received::Dropped(format!(
            "control data truncated (too many fds passed); closed {fds_closed}"
        )));
    }
    // With SO_PASSCRED the kernel always attaches credentials; without them, nothing counts.
    let Some(c) = &creds else {
        return Ok(Received::Dropped("no sender credentials".into()));
    };
    if !allowed_uids.contains(&c.uid()) {
        return Ok(Received::Dropped(format!(
            "sender pid {} uid {} is not allowed to notify for this worker",
            c.pid(),
            c.uid()
        )));
    }
    // Checked now, while the sender most likely still runs (the datagram was just queued).
    if let Err(why) = sender_in_tree(c.pid(), owner, std::process::id() as i32) {
        return Ok(Received::Dropped(why));
    }
    if fds_closed > 0 {
        tracing::debug!(fds_closed, "closed fds passed with a notify datagram");
    }
    let sender_pid = creds.map(|c| c.pid());
    Ok(
        match parse(&buf[..len.min(buf.len())]).map_err(|e| {
            if len > MAX_DATAGRAM {
                ParseError::Oversized(len)
            } else {
                e
            }
        }) {
            Ok(msg) => Received::Message { msg, sender_pid },
            Err(e) => Received::Dropped(e.to_string()),
        },
    )
}

/// Talks to the service manager on behalf of handoff itself (a no-op when not under systemd).
pub struct SystemdNotifier {
    target: Option<(UnixDatagram, StdUnixAddr)>,
}

impl SystemdNotifier {
    /// `notify_socket` is the value `NOTIFY_SOCKET` had at start (`/path` or `@abstract`).
    pub fn new(notify_socket: Option<&str>) -> io::Result<Self> {
        let Some(addr) = notify_socket.filter(|s| !s.is_empty()) else {
            return Ok(SystemdNotifier { target: None });
        };
        let addr = match addr.strip_prefix('@') {
            Some(name) => StdUnixAddr::from_abstract_name(name.as_bytes())?,
            None => StdUnixAddr::from_pathname(addr)?,
        };
        Ok(SystemdNotifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    pub fn send(&self, states: &[NotifyState]) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        let text = datagram(states);
        if let Err(e) = sock.send_to_addr(text.as_bytes(), addr) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
}

/// The datagram for `states`: one `KEY=VALUE` line each. Values are made [`printable`]: a
/// `STATUS=` carries a release's version and text from workers, and a newline in it would be
/// read by systemd as an assignment of its own (`WATCHDOG_USEC=`, `MAINPID=`). This is the one
/// place handoff's words go to systemd, so the escaping is here, for every field.
fn datagram(states: &[NotifyState]) -> String {
    let mut text = String::new();
    for state in states {
        let line = state.to_string();
        match line.split_once('=') {
            Some((key, value)) => {
                text.push_str(key);
                text.push('=');
                text.push_str(&printable(value));
            }
            None => text.push_str(&printable(&line)),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::UnixAddr;

    #[test]
    fn parses_known_keys() {
        let m = parse(b"READY=1\nSTATUS=serving 4 sockets\nERRNO=2\nEXTEND_TIMEOUT_USEC=5000000\nMAINPID=42\nX_CUSTOM=1\n")
            .unwrap();
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("serving 4 sockets"));
        assert_eq!(m.errno, Some(2));
        assert_eq!(m.extend_timeout, Some(Duration::from_secs(5)));
        assert_eq!(m.main_pid, Some(42));
        let m = parse(b"STOPPING=1\nWATCHDOG=1").unwrap();
        assert!(m.stopping && m.watchdog && !m.ready && !m.watchdog_trigger);
        let t = parse(b"WATCHDOG=trigger").unwrap();
        assert!(t.watchdog_trigger && !t.watchdog);
        assert!(!parse(b"WATCHDOG=2").unwrap().watchdog);
        assert_eq!(parse(b"STATUS=a=b").unwrap().status.as_deref(), Some("a=b"));
    }

    #[test]
    fn bad_values_are_ignored_not_fatal() {
        let m = parse(b"READY=2\nERRNO=x\nEXTEND_TIMEOUT_USEC=-1\nMAINPID=0").unwrap();
        assert_eq!(m, Message::default());
    }

    #[test]
    fn malformed_datagrams_are_rejected() {
        assert_eq!(parse(b"READY"), Err(ParseError::NoEquals("READY".into())));
        assert_eq!(parse(b"READY=1\n\xff"), Err(ParseError::NotUtf8));
        assert_eq!(parse(b"READY=1\0"), Err(ParseError::Nul));
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"\n\n"), Err(ParseError::Empty));
        let big = vec![b'a'; MAX_DATAGRAM + 1];
        assert_eq!(parse(&big), Err(ParseError::Oversized(MAX_DATAGRAM + 1)));
    }

    #[tokio::test]
    async fn socket_receives_drops_and_closes_fds() {
        let dir = std::env::temp_dir().join(format!("handoff-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.sock");
        let me = nix::unistd::getuid().as_raw();
        let mut sock = NotifySocket::bind(&path, vec![0, me]).unwrap();
        // This process plays the worker.
        sock.set_owner(std::process::id() as i32);
        let tx = UnixDatagram::unbound().unwrap();

        tx.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
        match sock.recv().await.unwrap() {
            Received::Message { msg, sender_pid } => {
                assert!(msg.ready);
                assert_eq!(sender_pid, Some(std::process::id() as i32));
            }
            other => panic!("{other:?}"),
        }

        tx.send_to(&vec![b'x'; MAX_DATAGRAM + 100], &path).unwrap();
        match sock.recv().await.unwrap() {
            Received::Dropped(why) => assert!(why.contains("exceeds"), "{why}"),
            other => panic!("{other:?}"),
        }

        // An fd passed along with a datagram is closed by the receiver: once our own copy of
        // the pipe's read end is dropped too, the pipe has no reader left.
        let (r, w) = nix::unistd::pipe().unwrap();
        let fds = [r.as_raw_fd()];
        let cmsg = [socket::ControlMessage::ScmRights(&fds)];
        let to = UnixAddr::new(&path).unwrap();
        socket::sendmsg(
            tx.as_raw_fd(),
            &[std::io::IoSlice::new(b"READY=1")],
            &cmsg,
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        drop(r);
        match sock.recv().await.unwrap() {
            Received::Message { msg, .. } => assert!(msg.ready),
            other => panic!("{other:?}"),
        }
        // Every read end is now closed, so writing fails with EPIPE (Rust's runtime ignores
        // SIGPIPE, so this is an error return, not a signal).
        let res = nix::unistd::write(&w, b"x");
        assert_eq!(
            res,
            Err(nix::errno::Errno::EPIPE),
            "passed fd was not closed"
        );

        drop(sock);
        assert!(!path.exists(), "socket file removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_workers_process_tree_may_notify() {
        use std::process::Command;
        let me = std::process::id() as i32;
        let parent = nix::unistd::getppid().as_raw();
        let sleep = |setsid: bool| {
            let mut c = if setsid {
                let mut c = Command::new("setsid");
                c.arg("sleep");
                c
            } else {
                Command::new("sleep")
            };
            c.arg("30").spawn().unwrap()
        };
        let mut child = sleep(false);
        let mut other = sleep(false);
        let mut daemon = sleep(true);
        let (c, o, d) = (child.id() as i32, other.id() as i32, daemon.id() as i32);
        // setsid(1) execs in place once it leads its session.
        assert!(
            wait(|| super::proc_stat(d).is_some_and(|(_, _, sid)| sid == d)),
            "setsid sleep did not become a session leader"
        );
        // The worker itself, and its descendants (here the worker is this test process).
        assert_eq!(sender_in_tree(me, me, parent), Ok(()));
        assert_eq!(sender_in_tree(c, me, parent), Ok(()));
        // This process as handoff: `other` is another of its children, not the worker's.
        let e = sender_in_tree(c, o, me).unwrap_err();
        assert!(e.contains("not to worker"), "{e}");
        // A session leader re-parented to handoff: a daemonized descendant of some worker.
        assert_eq!(sender_in_tree(d, o, me), Ok(()));
        // Outside handoff's tree altogether (pid 1's chain ends at 0).
        assert!(sender_in_tree(1, o, me).is_err());
        assert!(sender_in_tree(0, o, me).is_err());
        for p in [&mut child, &mut other, &mut daemon] {
            let _ = p.kill();
            let _ = p.wait();
        }
        // A sender that is gone cannot be placed.
        let e = sender_in_tree(c, o, me).unwrap_err();
        assert!(e.contains("exited"), "{e}");
    }

    fn wait(mut cond: impl FnMut() -> bool) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn socket_names_are_random_and_fixed_length() {
        let a = socket_name().unwrap();
        let b = socket_name().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn values_sent_to_systemd_stay_on_their_line() {
        let text = datagram(&[
            NotifyState::Ready,
            NotifyState::Status(
                "gen 1; version 1.2.3\nWATCHDOG_USEC=1000000\nMAINPID=1\r\u{1b}[2J",
            ),
        ]);
        assert_eq!(
            text,
            "READY=1\nSTATUS=gen 1; version 1.2.3\\nWATCHDOG_USEC=1000000\\nMAINPID=1\\r\\u{1b}[2J\n"
        );
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn notifier_sends_to_path_and_abstract() {
        let dir = std::env::temp_dir().join(format!("handoff-sysd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sd.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = SystemdNotifier::new(Some(path.to_str().unwrap())).unwrap();
        n.send(&[NotifyState::Reloading, NotifyState::Status("gen 2")]);
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"RELOADING=1\nSTATUS=gen 2\n");

        let name = format!("handoff-test-{}", std::process::id());
        let rx =
            UnixDatagram::bind_addr(&StdUnixAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = SystemdNotifier::new(Some(&format!("@{name}"))).unwrap();
        n.send(&[NotifyState::Ready]);
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
        assert!(!SystemdNotifier::new(None).unwrap().enabled());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Property tests: the parser faces whatever any process on the machine sends.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..6000)) {
            let _ = parse(&data);
        }

        #[test]
        fn well_formed_datagrams_parse_and_ready_is_found(
            lines in proptest::collection::vec(("[A-Z_]{1,20}", "[ -~]{0,40}"), 0..20),
            ready_at in any::<prop::sample::Index>(),
        ) {
            let mut lines: Vec<String> = lines.into_iter().filter(|(k, _)| k != "READY").map(|(k, v)| format!("{k}={v}")).collect();
            let at = ready_at.index(lines.len() + 1);
            lines.insert(at, "READY=1".into());
            let text = lines.join("\n");
            prop_assume!(text.len() <= MAX_DATAGRAM);
            let m = parse(text.as_bytes()).unwrap();
            prop_assert!(m.ready);
        }

        #[test]
        fn a_line_without_equals_rejects_the_datagram(good in "[A-Z]{1,8}=[a-z]{0,8}", bad in "[A-Za-z ]{1,16}") {
            let text = format!("{good}\n{bad}");
            prop_assert!(matches!(parse(text.as_bytes()), Err(ParseError::NoEquals(_))));
        }
    }
}
