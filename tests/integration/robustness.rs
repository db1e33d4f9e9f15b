//! Leaks, bad input, hostile peers.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

fn start_fixture(tag: &str, extra: &[&str], env: Vec<(&'static str, String)>) -> Handoff {
    let mut args = s(&["--listen", "127.0.0.1:0"]);
    args.extend(s(extra));
    Handoff::start(
        tag,
        Opts {
            args,
            worker: fixture(),
            env,
            wait_ready: 1,
        },
    )
}

#[test]
fn fd_count_is_flat_over_200_rollovers_and_no_zombies() {
    let mut h = start_fixture("fdleak", &["--workers", "2"], vec![]);
    // Warm up (first-use allocations), then measure.
    for _ in 0..5 {
        assert_eq!(h.reload_cli(&[]).0, 0);
    }
    let settle = |h: &Handoff| {
        h.wait_for(
            Duration::from_secs(10),
            |st| st.workers.len() == 2,
            "old generations drained",
        )
    };
    settle(&h);
    let before = steady_fd_count(h.pid());
    let t0 = Instant::now();
    for i in 0..200 {
        reload_ok(&h.control, &format!("rollover {i}"));
        if i % 50 == 0 {
            assert!(
                zombie_children(h.pid()).is_empty(),
                "zombies after {i} rollovers"
            );
        }
    }
    let st = settle(&h);
    let after = steady_fd_count(h.pid());
    eprintln!(
        "200 rollovers in {:?}; supervisor fds before {before}, after {after}",
        t0.elapsed()
    );
    assert_eq!(st.current_generation, 206);
    assert_eq!(before, after, "fd leak over 200 rollovers");
    assert!(zombie_children(h.pid()).is_empty(), "zombie children left");
    let notify_files = std::fs::read_dir(h.notify_dir()).unwrap().count();
    assert_eq!(
        notify_files, 2,
        "stale notify sockets left in the runtime dir"
    );
    assert!(h.stop().success());
}

#[test]
fn malformed_notify_datagrams_are_dropped_and_ready_still_seen() {
    let mut h = start_fixture(
        "noise",
        &["--ready-timeout", "5s"],
        vec![("FIXTURE_MODE", "noise".into())],
    );
    let st = h.status().unwrap();
    assert_eq!(st.ready, 1, "the READY=1 after the noise was seen");
    // Send more garbage straight at the worker's socket, including an fd, and a flood.
    let pid = st.workers[0].pid;
    let sock = process_env(pid, "NOTIFY_SOCKET").unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    let before_fds = steady_fd_count(h.pid());
    let t0 = Instant::now();
    let mut sent = 0;
    while t0.elapsed() < Duration::from_millis(500) {
        for msg in [&b"garbage"[..], b"STATUS=flood", b"\xff\xfe", b"A=1\nB"] {
            if tx.send_to(msg, &sock).is_ok() {
                sent += 1;
            }
        }
    }
    // An fd passed along is closed by handoff, not kept.
    let (r, w) = nix::unistd::pipe().unwrap();
    use std::os::fd::AsRawFd;
    let fds = [r.as_raw_fd()];
    nix::sys::socket::sendmsg(
        tx.as_raw_fd(),
        &[std::io::IoSlice::new(b"STATUS=with fd")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        Some(&nix::sys::socket::UnixAddr::new(sock.as_str()).unwrap()),
    )
    .unwrap();
    // handoff stays responsive during and after the flood.
    let t1 = Instant::now();
    let st = h.status().expect("status during flood");
    eprintln!(
        "flood: {sent} datagrams in 500 ms; status answered in {:?}",
        t1.elapsed()
    );
    // Once handoff has taken the datagram it has closed the passed read end; with ours closed
    // too, the pipe has no reader left and a write fails with EPIPE.
    drop(r);
    assert!(
        wait_until(Duration::from_secs(5), || nix::unistd::write(&w, b"x")
            == Err(nix::errno::Errno::EPIPE)),
        "handoff kept the read end passed in a notify datagram"
    );
    // This test process is not in the worker's process tree: what it sent does not count.
    assert_ne!(
        h.status().unwrap().workers[0].status.as_deref(),
        Some("with fd"),
        "a datagram from outside the worker's process tree counted"
    );
    assert_eq!(
        steady_fd_count(h.pid()),
        before_fds,
        "handoff kept an fd passed in a notify datagram"
    );
    assert_eq!(st.ready, 1);
    assert_eq!(
        h.reload_cli(&[]).0,
        0,
        "rollovers still work after the flood"
    );
    assert!(h.stop().success());
}

#[test]
fn another_user_cannot_notify_for_a_worker() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIP: needs root to act as another user");
        return;
    }
    let mut h = start_fixture(
        "stranger",
        &["--ready-timeout", "1s"],
        vec![("FIXTURE_MODE", "ready".into())],
    );
    // A process of another user (uid 65534) tries to send to the worker's notify socket: the
    // 0700 runtime dir stops it before handoff even sees a datagram.
    let (code, _, stderr) = {
        let pid = h.status().unwrap().workers[0].pid;
        let sock = process_env(pid, "NOTIFY_SOCKET").unwrap();
        use std::os::unix::process::CommandExt;
        // The system's python (a pyenv shim under /root would fail for uid 65534 before it
        // tried anything); the refusal must be the socket's: PermissionError.
        let out = Command::new("/usr/bin/python3")
            .args(["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'STATUS=stranger', sys.argv[1])", &sock])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("python3");
        (
            out.status.code().unwrap_or(-1),
            String::new(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_ne!(
        code, 0,
        "a process of another user reached the notify socket"
    );
    assert!(
        stderr.contains("PermissionError"),
        "refused for another reason than the socket's permissions: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_ne!(
        h.status().unwrap().workers[0].status.as_deref(),
        Some("stranger")
    );
    // And the control socket too.
    use std::os::unix::process::CommandExt;
    let out = Command::new(handoff_bin())
        .args(["status", "--control"])
        .arg(&h.control)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    // EX_NOPERM, with the command that works.
    assert_eq!(
        out.status.code(),
        Some(77),
        "another user reached the control socket: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sudo"),
        "{out:?}"
    );
    assert!(h.stop().success());
}

#[test]
fn bad_config_files_exit_78_naming_file_line_and_key() {
    let dir = TempDir::new("badcfg");
    let cases = [
        (
            "workers = 2\ndrain_timeout = \"10\"\n",
            ":2: key `drain_timeout`: invalid duration \"10\": missing unit",
        ),
        (
            "workers = 2\nworkerz = 3\n",
            ":2: key `workerz`: unknown field `workerz`",
        ),
        (
            "workers = \"many\"\n",
            ":1: key `workers`: expected a whole number",
        ),
        (
            "listen = [\"127.0.0.1:0\"]\ncommand = []\n",
            ":2: key `command`: empty command",
        ),
        ("[section\n", ":1:"),
        ("listen = [\"127.0.0.1:0\"]\n", "no worker command"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let out = Command::new(handoff_bin())
            .args(["run", "--config"])
            .arg(&f)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "case {i}: {err}");
        assert!(
            err.contains(&format!("{}{want}", f.display())) || (i == 5 && err.contains(want)),
            "case {i}: {err}"
        );
    }
    let out = Command::new(handoff_bin())
        .args(["run", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml: cannot read config file")
    );
}

#[test]
fn bad_usage_exits_64_and_unreachable_handoff_69() {
    for args in [
        vec!["run", "--workers", "0", "--", "x"],
        vec!["run", "--frobnicate"],
        vec!["run", "--drain-signal", "SIGNOPE", "--", "x"],
        vec!["run", "--listen", "127.0.0.1:0"],
        vec!["explode"],
    ] {
        let out = Command::new(handoff_bin()).args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(handoff_bin())
        .args(["reload", "--control", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no handoff is running") && err.contains("--app"),
        "{err}"
    );
    let out = Command::new(handoff_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--",
            "/nonexistent/worker",
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a first generation that cannot start makes handoff fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/worker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn control_socket_garbage_half_requests_and_silent_clients() {
    let mut h = start_fixture("ctlabuse", &[], vec![]);
    // Garbage gets an error line.
    let mut c = UnixStream::connect(&h.control).unwrap();
    c.write_all(b"hello there\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("\"error\"") && answer.contains("bad request"),
        "{answer}"
    );
    // A silent client and a half request don't block others.
    let _silent = UnixStream::connect(&h.control).unwrap();
    let mut half = UnixStream::connect(&h.control).unwrap();
    half.write_all(b"{\"cmd\":\"rel").unwrap();
    let t0 = Instant::now();
    assert!(h.status().is_some());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "status blocked by idle clients"
    );
    // The half request is answered with an error once the request timeout passes.
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    half.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("incomplete request"), "{answer}");
    // A reload client that disconnects mid-wait: the rollover still completes.
    let mut gone = UnixStream::connect(&h.control).unwrap();
    gone.write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
    drop(gone);
    h.wait_for(
        Duration::from_secs(5),
        |st| st.current_generation == 2 && st.rolling_over_to.is_none(),
        "rollover done",
    );
    assert!(h.stop().success());
}

#[test]
fn stale_control_socket_is_replaced_but_a_live_one_is_not() {
    let mut h = start_fixture("stale", &[], vec![]);
    // A second handoff on the same runtime dir must refuse to start.
    let out = Command::new(handoff_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--control"])
        .arg(&h.control)
        .arg("--runtime-dir")
        .arg(h.dir.path().join("rt2"))
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another handoff is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kill -9 leaves the socket file behind; the next start replaces it.
    let pid = h.pid();
    let workers: Vec<i32> = h.status().unwrap().workers.iter().map(|w| w.pid).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut child = h.child.take().unwrap();
    child.wait().unwrap();
    assert!(h.control.exists());
    // Orphaned workers get the parent-death signal (the drain signal) and go away.
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|p| !pid_alive(*p))),
        "workers outlived a killed handoff"
    );
    let mut h2 = Handoff::start(
        "stale2",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--control",
                h.control.to_str().unwrap(),
            ]),
            worker: fixture(),
            ..Default::default()
        },
    );
    assert!(h2.status().is_some());
    assert!(h2.stop().success());
}

#[test]
fn a_grandchild_holding_the_socket_is_killed_with_its_worker() {
    let reports = TempDir::new("gc");
    let mut h = start_fixture(
        "grandchild",
        &["--drain-timeout", "2s"],
        vec![
            ("FIXTURE_MODE", "grandchild".into()),
            ("FIXTURE_REPORT_DIR", reports.path().display().to_string()),
        ],
    );
    let gc_pid = || -> Option<i32> {
        std::fs::read_dir(reports.path())
            .ok()?
            .flatten()
            .find_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("grandchild-")?
                    .parse()
                    .ok()
            })
    };
    assert!(wait_until(Duration::from_secs(5), || gc_pid().is_some()));
    let gc = gc_pid().unwrap();
    assert!(pid_alive(gc));
    assert_eq!(h.reload_cli(&[]).0, 0);
    // The old worker exits on SIGTERM; its grandchild (same process group) is killed with it.
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(gc)),
        "grandchild {gc} survived its worker"
    );
    assert!(h.stop().success());
}

#[test]
fn a_worker_that_exits_0_at_once_is_a_failed_start() {
    let mut h = start_fixture("exit0", &[], vec![]);
    // A second handoff (own runtime dir) whose worker exits 0 at once: it never served.
    let out = Command::new(handoff_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--runtime-dir"])
        .arg(h.dir.path().join("rt3"))
        .arg("--")
        .args(fixture())
        .env("FIXTURE_MODE", "exit0")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited with status 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.stop().success());
}

#[test]
fn workers_run_as_the_configured_user_and_can_still_notify() {
    if !nix::unistd::getuid().is_root()
        || nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .is_none()
    {
        eprintln!("SKIP: needs root and a `nobody` user");
        return;
    }
    let reports = TempDir::new("asuser");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(reports.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut h = start_fixture(
        "asuser",
        &["--user", "nobody", "--ready-timeout", "5s"],
        vec![("FIXTURE_REPORT_DIR", reports.path().display().to_string())],
    );
    // It got ready: READY=1 from uid 65534 reached its own notify socket.
    let pid = h.status().unwrap().workers[0].pid;
    let f = reports.path().join(format!("{pid}.json"));
    assert!(wait_until(Duration::from_secs(5), || f.exists()));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid = nobody.uid.as_raw().to_string();
    assert!(
        r["uid"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .all(|u| u == uid),
        "uid: {}",
        r["uid"]
    );
    assert!(
        !r["groups"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .any(|g| g == "0"),
        "kept root's groups: {}",
        r["groups"]
    );
    assert_eq!(r["env"]["USER"], "nobody");
    // handoff itself stays root (it must signal and reap the workers) and rollovers work.
    assert_eq!(h.reload_cli(&[]).0, 0);
    assert!(h.stop().success());
    // An unknown user is a config error.
    let out = Command::new(handoff_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "no-such-user-xyz",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_rollovers_leave_fds_and_memory_flat() {
    let mut h = start_fixture("thousand", &["--workers", "2"], vec![]);
    let reload = |i: usize| reload_ok(&h.control, &format!("rollover {i}"));
    for i in 0..100 {
        reload(i);
    }
    let settle = |h: &Handoff| {
        h.wait_for(
            Duration::from_secs(10),
            |st| st.workers.len() == 2,
            "drained",
        )
    };
    settle(&h);
    let (fds0, rss0) = (steady_fd_count(h.pid()), rss_kib(h.pid()));
    let t0 = Instant::now();
    for i in 0..1000 {
        reload(i);
        if i % 100 == 0 {
            assert!(zombie_children(h.pid()).is_empty(), "zombie after {i}");
        }
    }
    settle(&h);
    let (fds1, rss1) = (steady_fd_count(h.pid()), rss_kib(h.pid()));
    eprintln!(
        "1000 rollovers in {:?}: fds {fds0} -> {fds1}, RSS {rss0} KiB -> {rss1} KiB",
        t0.elapsed()
    );
    assert_eq!(fds0, fds1, "fd leak");
    // Allocator noise is a few pages; a per-rollover leak of even 1 KiB would show as 1000 KiB.
    assert!(
        rss1 <= rss0 + 256,
        "RSS grew from {rss0} to {rss1} KiB over 1000 rollovers"
    );
    assert!(h.stop().success());
}

#[test]
fn a_notify_flood_before_ready_does_not_hide_ready_or_stall_handoff() {
    // 100,000 junk datagrams, then READY=1, from a worker of the next generation.
    let mut h = start_fixture(
        "flood",
        &["--ready-timeout", "30s"],
        vec![
            ("FIXTURE_MODE", "flood".into()),
            ("FIXTURE_MS", "100".into()),
        ],
    );
    assert_eq!(
        h.status().unwrap().workers[0].status.as_deref(),
        Some("after the flood")
    );
    let t0 = Instant::now();
    let probe = {
        let control = h.control.clone();
        std::thread::spawn(move || {
            // Status must keep answering while the flood is being read.
            let mut worst = Duration::ZERO;
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(500) {
                let q = Instant::now();
                let _ = handoff_common::protocol::request(
                    &control,
                    &handoff_common::protocol::Request::Status,
                    None,
                )
                .unwrap();
                worst = worst.max(q.elapsed());
            }
            worst
        })
    };
    let (code, out, err) = h.reload_cli(&[]);
    let took = t0.elapsed();
    let worst = probe.join().unwrap();
    eprintln!(
        "flood: rollover through 100k datagrams took {took:?}; slowest status answer {worst:?}"
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        worst < Duration::from_secs(2),
        "handoff stalled for {worst:?} under the flood"
    );
    let st = h.status().unwrap();
    let new = st
        .workers
        .iter()
        .find(|w| w.generation == 2)
        .expect("generation 2 serves");
    assert_eq!(new.status.as_deref(), Some("after the flood"));
    assert!(h.stop().success());
}

#[test]
fn a_worker_writing_1_mib_per_second_does_not_disturb_rollovers() {
    let mut h = start_fixture(
        "spew",
        &["--workers", "2"],
        vec![("FIXTURE_MODE", "spew".into())],
    );
    let rss0 = rss_kib(h.pid());
    for _ in 0..5 {
        assert_eq!(h.reload_cli(&[]).0, 0);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = std::fs::metadata(h.dir.path().join("stdout.log"))
        .unwrap()
        .len();
    eprintln!(
        "spew: {} KiB of worker output; handoff RSS {rss0} -> {} KiB",
        out / 1024,
        rss_kib(h.pid())
    );
    assert!(
        out > 500 * 1024,
        "the worker did not write much: {out} bytes"
    );
    // Output goes straight to handoff's stdout (the journal under systemd), not through handoff.
    assert!(rss_kib(h.pid()) <= rss0 + 256);
    assert!(h.stop().success());
}

#[test]
fn reload_during_shutdown_is_refused_and_sighup_interleaves_with_reloads() {
    let mut h = start_fixture(
        "interleave",
        &["--workers", "2", "--drain-timeout", "3s"],
        vec![("FIXTURE_READY_DELAY_MS", "100".into())],
    );
    // SIGHUPs and control-socket reloads at once: every control caller answered ok, and the
    // total number of rollovers stays small (they coalesce).
    let pid = nix::unistd::Pid::from_raw(h.pid());
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let control = h.control.clone();
            std::thread::spawn(move || {
                handoff_common::protocol::request(
                    &control,
                    &handoff_common::protocol::Request::Reload { if_changed: false },
                    None,
                )
            })
        })
        .collect();
    for _ in 0..5 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in callers {
        match c.join().unwrap() {
            Ok(handoff_common::protocol::Response::Reload(r)) => {
                assert!(r.outcome.success(), "{}", r.message)
            }
            other => panic!("{other:?}"),
        }
    }
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| st.rolling_over_to.is_none() && st.queued_reloads == 0,
        "quiet",
    );
    eprintln!(
        "interleaved: 5 reloads + 5 SIGHUPs -> {} rollovers",
        st.current_generation - 1
    );
    assert!(
        st.current_generation <= 7,
        "no coalescing: {} rollovers",
        st.current_generation - 1
    );

    // Now a reload while handoff drains for shutdown: refused, not hung.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    if h.control.exists() {
        let (code, _, err) = h.reload_cli(&[]);
        assert!(
            code == 1 || code == 69,
            "reload during shutdown: exit {code}: {err}"
        );
        if code == 1 {
            assert!(err.contains("shutting down"), "{err}");
        }
    }
    let status =
        wait_child(h.child.as_mut().unwrap(), Duration::from_secs(10)).expect("handoff exits");
    assert!(status.success());
    h.child = None;
}

#[test]
fn secrets_in_the_environment_stay_out_of_the_logs() {
    let mut h = start_fixture(
        "secrets",
        &["-v"],
        vec![("DATABASE_PASSWORD", "hunter2-sekrit".into())],
    );
    assert_eq!(h.reload_cli(&[]).0, 0);
    assert!(h.stop().success());
    let log = h.log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "-v did not raise the log level"
    );
    assert!(
        !log.contains("hunter2-sekrit"),
        "a secret from the environment reached the log"
    );
}

#[test]
fn under_journald_log_lines_carry_no_timestamp() {
    // Under journald means: JOURNAL_STREAM names handoff's stderr (dev:ino). The harness writes
    // stderr to a fresh file; a stream variable that does not match it (inherited from a
    // parent) must not count, so this run is timestamped...
    let mut h = start_fixture("journal", &[], vec![("JOURNAL_STREAM", "8:12345".into())]);
    assert!(h.stop().success());
    let first = h.log().lines().next().expect("some log output").to_string();
    assert!(
        first.contains("Z INFO handoff starting"),
        "an inherited JOURNAL_STREAM was taken for ours: {first:?}"
    );
    // ... and one whose dev:ino is the stderr file gets sd-daemon priority prefixes instead.
    let dir = TempDir::new("journal-match");
    let logf = dir.path().join("stderr.log");
    let file = std::fs::File::create(&logf).unwrap();
    let meta = std::os::unix::fs::MetadataExt::dev(&file.metadata().unwrap());
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
    let mut child = Command::new(handoff_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--runtime-dir"])
        .arg(dir.path().join("rt"))
        .arg("--")
        .args(fixture())
        .env("FIXTURE_MODE", "ready")
        .env("JOURNAL_STREAM", format!("{meta}:{ino}"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(file)
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&logf).is_ok_and(|l| l.contains("worker ready"))
    }));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(wait_child(&mut child, Duration::from_secs(30)).is_some_and(|s| s.success()));
    let log = std::fs::read_to_string(&logf).unwrap();
    let first = log.lines().next().expect("some log output");
    assert!(
        first.starts_with("<6>INFO handoff starting"),
        "no priority prefix (or a timestamp) under journald: {first:?}"
    );
    assert!(
        !log.contains("\u{1b}["),
        "ANSI colours in a non-terminal log"
    );
    // Fields name the generation and the worker pid.
    assert!(
        log.lines()
            .any(|l| l.contains("worker ready") && l.contains("gen=1") && l.contains("pid=")),
        "{log}"
    );
}
