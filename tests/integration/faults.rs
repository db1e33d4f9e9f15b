//! Faults, round two: what a hostile release, an unlucky machine or a careless operator does to
//! handoff (issue 11). Each test failed on the code before its fix.

use std::process::Command;
use std::time::{Duration, Instant};

use handoff_common::protocol::{self, Outcome, Request, Response};

use crate::harness::*;

/// A worker that double-forks (as Node's `spawn({detached: true})` does) a process that keeps
/// accepting on fd 3 and ignores SIGTERM, then serves and notifies itself.
const DAEMONIZING_WORKER: &str = r#"
import os, signal, socket
def serve(tag):
    s = socket.socket(fileno=3)
    while True:
        c, _ = s.accept()
        c.recv(65536)
        body = ("%s %d %s\n" % (tag, os.getpid(), os.environ["HANDOFF_GENERATION"])).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        c.close()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve("stray")
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
serve("worker")
"#;

#[test]
fn daemonized_grandchildren_are_drained_and_killed_with_their_worker() {
    let dir = TempDir::new("daemon-src");
    let script = dir.path().join("worker.py");
    std::fs::write(&script, DAEMONIZING_WORKER).unwrap();
    let mut h = Handoff::start(
        "daemon",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--drain-timeout", "1s"]),
            worker: vec![python(), script.display().to_string()],
            ..Default::default()
        },
    );
    h.keep.push(dir);
    assert!(
        wait_until(Duration::from_secs(10), || strays(&h).len() == 1),
        "the first worker's detached child was not re-parented to handoff"
    );
    let first = strays(&h);
    for n in 0..2 {
        reload_ok(&h.control, &format!("reload {n}"));
    }
    // The old workers' strays ignore SIGTERM: killed at the 1 s drain deadline.
    let settled = wait_until(Duration::from_secs(10), || strays(&h).len() == 1);
    let left = strays(&h);
    eprintln!("strays after 2 reloads: {left:?} (first generation's: {first:?})");
    assert!(
        settled,
        "old generations' strays survive: {left:?}\n{}",
        h.log()
    );
    assert!(
        !pid_alive(first[0]),
        "the first generation's stray still runs"
    );
    // Every answer now comes from generation 3's code.
    let addr = h.addr();
    let mut gens = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (_, body) = get(&addr, "/").unwrap();
        gens.insert(body.split_whitespace().nth(2).unwrap_or("?").to_string());
    }
    assert_eq!(
        gens.into_iter().collect::<Vec<_>>(),
        ["3"],
        "answers from old generations"
    );
    assert!(h.log().contains("re-parented to handoff"), "{}", h.log());
    // Nothing outlives handoff's own exit.
    let last = strays(&h);
    assert!(h.stop().success());
    assert!(
        last.iter().all(|p| !pid_alive(*p)),
        "a stray outlived handoff: {last:?}"
    );
}

#[test]
fn a_crash_looping_daemonizing_worker_does_not_pile_up_strays() {
    let dir = TempDir::new("daemon-loop-src");
    let script = dir.path().join("worker.py");
    // Detaches a SIGTERM-ignoring child, then crashes after becoming ready.
    let crashing = DAEMONIZING_WORKER.replace(
        "serve(\"worker\")",
        "import time; time.sleep(0.2); os._exit(3)",
    );
    std::fs::write(&script, crashing).unwrap();
    let h = Handoff::start(
        "daemon-loop",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--drain-timeout", "1s"]),
            worker: vec![python(), script.display().to_string()],
            ..Default::default()
        },
    );
    let mut h = h;
    h.keep.push(dir);
    h.wait_for(
        Duration::from_secs(20),
        |st| st.slots[0].crashes >= 5,
        "5 crashes",
    );
    let n = strays(&h).len();
    eprintln!("strays alive after 5 crashes: {n}");
    // Each crash's stray is killed within the 1 s drain timeout; the backoff is 0.1..1.6 s.
    assert!(n <= 3, "strays pile up: {n}");
}

#[test]
fn a_hostile_version_file_never_blocks_handoff() {
    let dir = TempDir::new("fifo-src");
    let pj = dir.path().join("package.json");
    std::fs::write(&pj, r#"{"version":"1.0.0"}"#).unwrap();
    let pj_arg = pj.display().to_string();
    let mut h = Handoff::start(
        "fifo",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--version-file", &pj_arg]),
            worker: example_worker(),
            ..Default::default()
        },
    );
    h.keep.push(dir);
    // A FIFO nobody writes to: the old code blocked its whole event loop in open().
    std::fs::remove_file(&pj).unwrap();
    assert!(Command::new("mkfifo").arg(&pj).status().unwrap().success());
    let t0 = Instant::now();
    let (code, _, err) = h.reload_cli(&["--if-changed"]);
    eprintln!(
        "FIFO as package.json: reload exit {code} in {:?}: {err}",
        t0.elapsed()
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert!(h.status().is_some(), "status must answer");
    // /dev/zero behind a symlink: refused at once, no memory taken.
    std::fs::remove_file(&pj).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &pj).unwrap();
    let (code, _, err) = h.reload_cli(&["--if-changed"]);
    assert_eq!(code, 1, "{err}");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", h.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    eprintln!("/dev/zero as package.json: reload exit {code}; handoff RSS {rss_kib} KiB");
    assert!(rss_kib < 64 * 1024, "RSS grew to {rss_kib} KiB");
    assert!(h.stop().success());
}

#[test]
fn two_handoffs_sharing_a_runtime_dir_keep_their_own_notify_dirs() {
    let shared = TempDir::new("shared-rt");
    let rt = shared.path().join("rt");
    let rt_arg = rt.display().to_string();
    let start = |name: &str| {
        let control = rt.join(format!("{name}.sock")).display().to_string();
        Handoff::start(
            name,
            Opts {
                args: s(&[
                    "--listen",
                    "127.0.0.1:0",
                    "--runtime-dir",
                    &rt_arg,
                    "--control",
                    &control,
                ]),
                worker: example_worker(),
                ..Default::default()
            },
        )
    };
    let a = start("a");
    let mut b = start("b");
    assert_ne!(a.notify_dir(), b.notify_dir());
    assert!(b.stop().success());
    // The old code removed the one shared notify dir at b's exit: every reload of a failed.
    for n in 0..3 {
        reload_ok(&a.control, &format!("reload {n} of a after b stopped"));
    }
}

#[test]
fn a_removed_runtime_dir_is_made_again() {
    let mut h = Handoff::start(
        "rt-gone",
        Opts {
            args: s(&["--listen", "127.0.0.1:0"]),
            worker: example_worker(),
            ..Default::default()
        },
    );
    let rt = h.control.parent().unwrap().to_path_buf();
    let victim = h.status().unwrap().workers[0].pid;
    std::fs::remove_dir_all(&rt).unwrap();
    // A killed worker must come back (it needs a notify socket in the removed dir).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        wait_until(Duration::from_secs(10), || h.control.exists()),
        "the control socket was not bound again:\n{}",
        h.log()
    );
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| st.ready == 1 && st.workers.iter().all(|w| w.pid != victim),
        "the killed worker replaced",
    );
    eprintln!(
        "runtime dir removed: worker {victim} replaced by {}",
        st.workers[0].pid
    );
    reload_ok(&h.control, "reload after the runtime dir was removed");
    assert!(h.stop().success());
}

#[test]
fn a_runtime_dir_too_long_for_notify_sockets_is_refused_at_start() {
    let base = TempDir::new("long");
    // Fits at start with the old growing names, fails after some reloads; now refused.
    let mut long = base.path().to_path_buf();
    while long.as_os_str().len() < 90 {
        long.push("dddddddddd");
    }
    let out = Command::new(handoff_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--runtime-dir"])
        .arg(&long)
        .arg("--")
        .args(example_worker())
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("runtime dir of {} bytes: {err}", long.as_os_str().len());
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("would not fit a unix socket address"), "{err}");
    // One that fits keeps working however many rollovers follow: names do not grow.
    let mut fits = base.path().to_path_buf();
    let target = 107 - 1 - "notify-12345678".len() - 1 - 32;
    while fits.as_os_str().len() + 11 <= target {
        fits.push("dddddddddd");
    }
    let fits_arg = fits.display().to_string();
    let h = Handoff::start(
        "long-ok",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--runtime-dir", &fits_arg]),
            worker: example_worker(),
            ..Default::default()
        },
    );
    for n in 0..12 {
        reload_ok(
            &h.control,
            &format!("reload {n} with a {}-byte runtime dir", fits_arg.len()),
        );
    }
}

#[test]
fn a_reload_flood_at_a_low_fd_limit_never_blames_the_release() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIP: prlimit (util-linux) missing");
        return;
    }
    let h = Handoff::start_wrapped(
        "fd-flood",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--workers", "2"]),
            worker: example_worker(),
            wait_ready: 2,
            ..Default::default()
        },
        &s(&["prlimit", "--nofile=64:4096", "--"]),
    );
    let handoff_limits = std::fs::read_to_string(format!("/proc/{}/limits", h.pid())).unwrap();
    let worker = h.status().unwrap().workers[0].pid;
    let worker_limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let line = |l: &str| {
        l.lines()
            .find(|x| x.starts_with("Max open files"))
            .unwrap()
            .to_string()
    };
    eprintln!(
        "handoff: {}\nworker:  {}",
        line(&handoff_limits),
        line(&worker_limits)
    );
    assert!(line(&handoff_limits).contains("4096                 4096"));
    assert!(
        line(&worker_limits).contains("64                   4096"),
        "workers keep the original soft limit"
    );
    // 300 clients at once: with a soft limit of 64 the old handoff ran out of fds and
    // reported the (good) release rolled back.
    let control = h.control.clone();
    let clients: Vec<_> = (0..300)
        .map(|_| {
            let c = control.clone();
            std::thread::spawn(move || {
                protocol::request(
                    &c,
                    &Request::Reload { if_changed: false },
                    Some(Duration::from_secs(60)),
                )
            })
        })
        .collect();
    let mut outcomes = std::collections::BTreeMap::new();
    for c in clients {
        let key = match c.join().unwrap() {
            Ok(Response::Reload(r)) => r.outcome.to_string(),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error: {e}"),
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    eprintln!("300 concurrent reloads at soft RLIMIT_NOFILE 64: {outcomes:?}");
    assert_eq!(
        outcomes.get(&Outcome::Ok.to_string()),
        Some(&300),
        "{outcomes:?}\n{}",
        h.log()
    );
}

#[test]
fn a_ready_sent_while_handoff_was_stopped_beats_the_deadline() {
    let mut h = Handoff::start(
        "sigstop",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--ready-timeout", "2s"]),
            worker: vec![bin("handoff-fixture").display().to_string()],
            env: vec![("FIXTURE_READY_DELAY_MS", "1000".into())],
            ..Default::default()
        },
    );
    let control = h.control.clone();
    let pid = nix::unistd::Pid::from_raw(h.pid());
    let reload = std::thread::spawn(move || {
        protocol::request(&control, &Request::Reload { if_changed: false }, None)
    });
    std::thread::sleep(Duration::from_millis(300));
    // Stopped past the ready deadline; the worker's READY=1 (at ~1 s) waits in the socket.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    match reload.join().unwrap() {
        Ok(Response::Reload(r)) => {
            eprintln!("after SIGSTOP/SIGCONT: {} ({})", r.outcome, r.message);
            assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(h.stop().success());
}

/// A worker whose child (same process group) serves on fd 3 and ignores SIGTERM.
const FORKING_WORKER: &str = r#"
import os, signal, socket, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    s = socket.socket(fileno=3)
    while True:
        c, _ = s.accept()
        c.close()
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    time.sleep(1)
"#;

#[test]
fn after_kill_9_of_handoff_nothing_it_started_keeps_the_port() {
    kill_9_frees_the_port(&[]);
}

#[test]
fn after_kill_9_of_handoff_workers_running_as_another_user_drain_too() {
    // The kernel clears PR_SET_PDEATHSIG on a credential change: set after setuid now.
    kill_9_frees_the_port(&["--user", "nobody"]);
}

fn kill_9_frees_the_port(extra: &[&str]) {
    let dir = TempDir::new("kill9-src");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("worker.py");
    std::fs::write(&script, FORKING_WORKER).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut h = Handoff::start(
        "kill9",
        Opts {
            args: [s(&["--listen", &listen, "--drain-timeout", "1s"]), s(extra)].concat(),
            worker: vec![python(), script.display().to_string()],
            ..Default::default()
        },
    );
    h.keep.push(dir);
    let worker = h.status().unwrap().workers[0].pid;
    let mut child = h.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let t0 = Instant::now();
    let freed = wait_until(Duration::from_secs(10), || {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
    eprintln!(
        "kill -9 of handoff {extra:?}: port {port} free again after {:?} (worker {worker} alive: {})",
        t0.elapsed(),
        pid_alive(worker)
    );
    assert!(
        freed,
        "the worker's child kept port {port} after handoff was killed"
    );
}
