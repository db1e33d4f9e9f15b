//! A test worker that checks what handoff handed it, then behaves as `FIXTURE_MODE` says.
//!
//! It writes `$FIXTURE_REPORT_DIR/<pid>.json` describing its fds, environment, signal state and
//! process group, so tests assert on what the worker really got. Modes:
//! `ready` (default: READY=1, drain on SIGTERM), `crash` (STATUS= then exit 3), `never-ready`,
//! `ignore-term` (READY=1 then ignore SIGTERM), `grandchild` (READY=1, leaves a `sleep` holding
//! the sockets behind on SIGTERM), `exit0` (exit 0 at once), `crash-after-ready`
//! (READY=1, exit 1 after FIXTURE_MS), `noise` (sends malformed datagrams before READY=1),
//! `extend` (asks for 2×FIXTURE_MS with EXTEND_TIMEOUT_USEC=, READY=1 after FIXTURE_MS),
//! `spew` (READY=1, then ~1 MiB/s to stdout), `flood` (FIXTURE_MS×1000 junk datagrams, then
//! READY=1).
//! The mode is read from `FIXTURE_MODE_FILE` if set (so a test can "release" a new behaviour),
//! else `FIXTURE_MODE`; `FIXTURE_READY_DELAY_MS` delays everything, like a slow boot.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

fn notify(text: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let s = UnixDatagram::unbound().expect("socket");
    let _ = s.send_to(text.as_bytes(), path);
}

fn report() {
    let Ok(dir) = std::env::var("FIXTURE_REPORT_DIR") else {
        return;
    };
    let pid = std::process::id();
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").expect("proc").flatten() {
        let n: i32 = e.file_name().to_string_lossy().parse().unwrap_or(-1);
        let target = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // Each fd's FD_CLOEXEC flag: listeners must not have it, nothing else may exist.
        let flags =
            nix::fcntl::fcntl(unsafe_borrow(n), nix::fcntl::FcntlArg::F_GETFD).unwrap_or(-1);
        fds.push(serde_json::json!({"fd": n, "target": target, "cloexec": flags >= 0 && flags & libc::FD_CLOEXEC != 0}));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
    };
    let env: serde_json::Map<String, serde_json::Value> = std::env::vars()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let r = serde_json::json!({
        "pid": pid,
        "pgid": nix::unistd::getpgrp().as_raw(),
        "args": std::env::args().collect::<Vec<_>>(),
        "ppid": nix::unistd::getppid().as_raw(),
        "fds": fds,
        "env": env,
        "sig_blocked": field("SigBlk:"),
        "sig_ignored": field("SigIgn:"),
        "uid": field("Uid:"),
        "gid": field("Gid:"),
        "groups": field("Groups:"),
    });
    let tmp = format!("{dir}/{pid}.tmp");
    std::fs::write(&tmp, r.to_string()).expect("write report");
    std::fs::rename(&tmp, format!("{dir}/{pid}.json")).expect("rename report");
}

/// Borrows a listed fd number for an F_GETFD query.
fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    #[allow(unsafe_code)]
    // SAFETY: only used for an F_GETFD query; a closed fd yields EBADF, never UB in the kernel.
    unsafe {
        std::os::fd::BorrowedFd::borrow_raw(fd)
    }
}

fn wait_term() -> Signal {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().expect("block");
    set.wait().expect("sigwait")
}

fn main() {
    report();
    // FIXTURE_MODE_FILE lets a test change what the next generation does, as a release would.
    let mode = std::env::var("FIXTURE_MODE_FILE")
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|m| m.trim().to_string())
        .or_else(|| std::env::var("FIXTURE_MODE").ok())
        .unwrap_or_else(|| "ready".into());
    if let Some(d) = std::env::var("FIXTURE_READY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(d));
    }
    let ms: u64 = std::env::var("FIXTURE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    match mode.as_str() {
        "ready" => {
            notify("READY=1\nSTATUS=fixture ready");
            wait_term();
        }
        "crash" => {
            notify("STATUS=cannot open database\nERRNO=2");
            std::thread::sleep(Duration::from_millis(50));
            std::process::exit(3);
        }
        "never-ready" => {
            notify("STATUS=still warming up");
            wait_term();
        }
        "ignore-term" => {
            let mut set = SigSet::empty();
            set.add(Signal::SIGTERM);
            set.thread_block().expect("block");
            notify("READY=1");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "grandchild" => {
            // The grandchild inherits fds 3.. (no CLOEXEC) and outlives us unless handoff
            // kills our process group.
            let child = std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .expect("sleep");
            if let Ok(dir) = std::env::var("FIXTURE_REPORT_DIR") {
                std::fs::write(format!("{dir}/grandchild-{}", child.id()), "").ok();
            }
            notify("READY=1");
            wait_term();
            std::process::exit(0);
        }
        "exit0" => std::process::exit(0),
        "crash-after-ready" => {
            notify("READY=1");
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(1);
        }
        "noise" => {
            notify("NOT A KEY VALUE");
            notify("READY=1\n\u{0}");
            let s = UnixDatagram::unbound().expect("socket");
            let path = std::env::var("NOTIFY_SOCKET").unwrap();
            let _ = s.send_to(&[0xff, 0xfe, b'=', b'1'], &path);
            let _ = s.send_to(&vec![b'A'; 8000], &path);
            notify("READY=1");
            wait_term();
        }
        "extend" => {
            // Asks for more time than --ready-timeout, then becomes ready within it.
            notify(&format!("EXTEND_TIMEOUT_USEC={}", ms * 2000));
            std::thread::sleep(Duration::from_millis(ms));
            notify("READY=1");
            wait_term();
        }
        "spew" => {
            // READY=1, then about 1 MiB/s of output to stdout until stopped.
            notify("READY=1");
            std::thread::spawn(|| {
                use std::io::Write;
                let line = [b'x'; 1023];
                let mut out = std::io::stdout().lock();
                loop {
                    for _ in 0..100 {
                        let _ = out.write_all(&line);
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            wait_term();
        }
        "flood" => {
            // FIXTURE_MS thousand junk datagrams at our own notify socket, then READY=1: the
            // kernel queue makes us wait for handoff to read them, so READY=1 comes last.
            let path = std::env::var("NOTIFY_SOCKET").unwrap();
            let s = UnixDatagram::unbound().expect("socket");
            for i in 0..ms * 1000 {
                let _ = s.send_to(if i % 2 == 0 { b"STATUS=flood" } else { b"junk" }, &path);
            }
            notify("READY=1\nSTATUS=after the flood");
            wait_term();
        }
        other => {
            eprintln!("fixture: unknown FIXTURE_MODE {other}");
            std::process::exit(2);
        }
    }
}
