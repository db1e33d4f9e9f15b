//! An example handoff worker, and the worker the tests and the demo use.
//!
//! The whole worker contract in one file:
//! 1. take the listening sockets from fds 3.. (`listenfd` checks `LISTEN_PID` is ours);
//! 2. say `READY=1` on `NOTIFY_SOCKET` once serving (`sd-notify`);
//! 3. on SIGTERM: stop accepting (close our copies of the listeners: the sockets themselves
//!    stay open in handoff and in the new workers), finish in-flight requests, answer further
//!    requests on open keep-alive connections with `Connection: close`, exit.
//!
//! HTTP: `GET /` answers `pid=.. gen=.. worker=.. version=..`; `GET /slow?ms=N` answers after N ms.
//! Test knobs: `EXAMPLE_CRASH_AT_START=1`, or `"crash_at_start": true` in the version file, makes
//! it exit 1 before serving; `EXAMPLE_NEVER_READY=1` serves but never says READY=1;
//! `EXAMPLE_STARTUP_MS=N` waits N ms before serving; `EXAMPLE_IGNORE_TERM=1` ignores SIGTERM.
//! `EXAMPLE_SHOW_CWD=1` adds `cwd=DIR` (its working directory) to every answer.
//! `EXAMPLE_CRASH_AFTER_READY_MS=N`, or `"crash_after_ready_ms": N` in the version file, makes
//! it exit 1 N ms after `READY=1` (a release that crashes right after start; it stops accepting
//! and finishes its requests first, so a test sees handoff's doing, not the requests it cut).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};

/// Connections left idle this long after the drain signal are closed.
const DRAIN_IDLE_CLOSE: Duration = Duration::from_secs(1);

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

trait Conn: Read + Write + Send {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}
impl Conn for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}
impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

struct Shared {
    draining: AtomicBool,
    /// Open connections; the drain waits on the condvar until it reaches 0.
    open_conns: Mutex<usize>,
    all_closed: Condvar,
    identity: String,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn main() {
    let version_file = std::env::var("EXAMPLE_VERSION_FILE").ok();
    let mut version = "-".to_string();
    let mut crash = env_flag("EXAMPLE_CRASH_AT_START");
    let mut crash_after_ready: Option<u64> = std::env::var("EXAMPLE_CRASH_AFTER_READY_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(path) = &version_file {
        match std::fs::read(path).map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
            Ok(Ok(v)) => {
                version = v
                    .get("version")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_string();
                crash |= v
                    .get("crash_at_start")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                if let Some(ms) = v.get("crash_after_ready_ms").and_then(|v| v.as_u64()) {
                    crash_after_ready = Some(ms);
                }
            }
            Ok(Err(e)) => {
                eprintln!("example-worker: {path}: invalid JSON: {e}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("example-worker: {path}: {e}");
                std::process::exit(1);
            }
        }
    }
    if crash {
        let _ = sd_notify::notify(
            false,
            &[sd_notify::NotifyState::Status(
                "crashing at start, as asked",
            )],
        );
        eprintln!("example-worker: crashing at start, as asked");
        std::process::exit(1);
    }
    if let Ok(ms) = std::env::var("EXAMPLE_STARTUP_MS") {
        thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    }

    // Block the stop signals in every thread; one thread waits for them with sigwait.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().expect("sigprocmask");

    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for i in 0..fds.len() {
        if let Ok(Some(l)) = fds.take_tcp_listener(i) {
            listeners.push(Listener::Tcp(l));
        } else if let Ok(Some(l)) = fds.take_unix_listener(i) {
            listeners.push(Listener::Unix(l));
        } else {
            eprintln!(
                "example-worker: fd {} is neither a TCP nor a unix stream listener",
                i + 3
            );
            std::process::exit(1);
        }
    }
    if listeners.is_empty() {
        eprintln!(
            "example-worker: no listening sockets (run me under handoff or systemd socket activation)"
        );
        std::process::exit(1);
    }

    let generation = std::env::var("HANDOFF_GENERATION").unwrap_or_else(|_| "-".into());
    let worker = std::env::var("HANDOFF_WORKER").unwrap_or_else(|_| "-".into());
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        open_conns: Mutex::new(0),
        all_closed: Condvar::new(),
        identity: format!(
            "pid={} gen={generation} worker={worker} version={version}{}",
            std::process::id(),
            // Which release it runs (tests of pinned releases, tests/systemd t_symlink_layout).
            if env_flag("EXAMPLE_SHOW_CWD") {
                std::env::current_dir()
                    .map(|d| format!(" cwd={}", d.display()))
                    .unwrap_or_default()
            } else {
                String::new()
            }
        ),
    });

    // A pipe whose write end closes when the drain starts: it wakes every accept loop.
    let (wake_r, wake_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let wake_r = Arc::new(wake_r);
    let mut acceptors = Vec::new();
    for l in listeners {
        let (shared, wake_r) = (shared.clone(), wake_r.clone());
        acceptors.push(thread::spawn(move || accept_loop(l, &shared, &wake_r)));
    }

    if !env_flag("EXAMPLE_NEVER_READY") {
        let status = format!("serving: {}", shared.identity);
        if let Err(e) = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&status),
            ],
        ) {
            eprintln!("example-worker: cannot notify readiness: {e}");
        }
    }
    let crashing = Arc::new(AtomicBool::new(false));
    if let Some(ms) = crash_after_ready {
        let crashing = crashing.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            crashing.store(true, Ordering::SeqCst);
            // The stop signal wakes the main thread's sigwait: drain, then exit 1 below.
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM);
        });
    }

    if env_flag("EXAMPLE_IGNORE_TERM") {
        // Ignore every stop signal forever (handoff's drain timeout must deal with us).
        loop {
            let _ = stop.wait();
        }
    }
    let sig = stop.wait().expect("sigwait");
    log(&format!("{sig}: draining"), &shared.identity);
    shared.draining.store(true, Ordering::SeqCst);
    drop(wake_w);
    for a in acceptors {
        let _ = a.join();
    }
    // Listeners are closed now; wait for open connections to finish their requests.
    let mut open = shared.open_conns.lock().unwrap();
    while *open > 0 {
        open = shared.all_closed.wait(open).unwrap();
    }
    drop(open);
    if crashing.load(Ordering::SeqCst) {
        log("crashing after READY=1, as asked: exit 1", &shared.identity);
        std::process::exit(1);
    }
    log("drained, exiting", &shared.identity);
}

/// One write per line, so lines from several workers sharing stderr do not interleave.
fn log(what: &str, identity: &str) {
    let _ = io::stderr().write_all(format!("example-worker {identity}: {what}\n").as_bytes());
}

fn accept_loop(l: Listener, shared: &Arc<Shared>, wake: &OwnedFd) {
    loop {
        let listen_fd = match &l {
            Listener::Tcp(t) => t.as_fd(),
            Listener::Unix(u) => u.as_fd(),
        };
        let mut pfds = [
            PollFd::new(listen_fd, PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut pfds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("example-worker: poll: {e}");
                return;
            }
            Ok(_) => {}
        }
        if shared.draining.load(Ordering::SeqCst) {
            return; // dropping `l` closes only our copy of the listening socket
        }
        if !pfds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            continue;
        }
        // Another worker may have taken the connection first: accept would block, so the
        // listener is switched to non-blocking for this call.
        let conn: Box<dyn Conn> = match &l {
            Listener::Tcp(t) => {
                t.set_nonblocking(true).ok();
                match t.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).ok();
                        s.set_nodelay(true).ok();
                        Box::new(s)
                    }
                    Err(_) => continue,
                }
            }
            Listener::Unix(u) => {
                u.set_nonblocking(true).ok();
                match u.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).ok();
                        Box::new(s)
                    }
                    Err(_) => continue,
                }
            }
        };
        *shared.open_conns.lock().unwrap() += 1;
        let shared = shared.clone();
        thread::spawn(move || {
            let _ = serve(conn, &shared);
            let mut open = shared.open_conns.lock().unwrap();
            *open -= 1;
            if *open == 0 {
                shared.all_closed.notify_all();
            }
        });
    }
}

fn serve(conn: Box<dyn Conn>, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(conn);
    loop {
        // While draining, an idle keep-alive connection is closed after a grace period; a
        // request that does arrive is answered (with Connection: close).
        let idle_limit = if shared.draining.load(Ordering::SeqCst) {
            Some(DRAIN_IDLE_CLOSE)
        } else {
            Some(Duration::from_millis(200))
        };
        reader.get_ref().set_timeout(idle_limit)?;
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.draining.load(Ordering::SeqCst) {
                    return Ok(());
                }
                continue; // not draining: keep waiting, re-checking the drain flag
            }
            Err(e) => return Err(e),
        }
        reader
            .get_ref()
            .set_timeout(Some(Duration::from_secs(10)))?;
        let result = answer(&mut reader, &request_line, shared);
        if !result? {
            return Ok(());
        }
    }
}

/// Reads the rest of one request and answers it. Returns whether to keep the connection.
fn answer(
    reader: &mut BufReader<Box<dyn Conn>>,
    request_line: &str,
    shared: &Shared,
) -> io::Result<bool> {
    let mut client_close = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(false);
        }
        if h == "\r\n" || h == "\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") && lower.contains("close") {
            client_close = true;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if let Some(q) = path.strip_prefix("/slow") {
        let ms: u64 = q.trim_start_matches("?ms=").parse().unwrap_or(2000);
        thread::sleep(Duration::from_millis(ms));
        ("200 OK", format!("{} slow={ms}ms\n", shared.identity))
    } else if path == "/" || path.starts_with("/?") {
        ("200 OK", format!("{}\n", shared.identity))
    } else {
        ("404 Not Found", "not found\n".to_string())
    };
    let close = client_close || shared.draining.load(Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    let conn = reader.get_mut();
    conn.write_all(response.as_bytes())?;
    conn.flush()?;
    Ok(!close)
}
