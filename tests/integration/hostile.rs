//! What a hostile release, worker or neighbour can do through handoff's own channels: text
//! that reaches systemd or an operator's terminal, notify datagrams from outside a worker's
//! process tree, the environment a worker inherits, and values that would crash handoff.
//! Each test prints the figure its row in docs/reliability.md quotes.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use handoff_common::protocol::{self as control, Request, Response};

use crate::harness::*;

const PYTHON: &str = "/usr/bin/python3";

/// A Python worker: in mode `ready` it sends `READY=1` and a `STATUS=` full of terminal
/// control sequences, in mode `crash` that status and exit 3, in mode `extend` first an
/// `EXTEND_TIMEOUT_USEC=` of 2^64-1 µs, in mode `claims` first what only a main process may
/// tell systemd (`MAINPID=1`, `STOPPING=1`, ...). The mode is read from `MODE_FILE`.
const PY_WORKER: &str = r#"
import os, signal, socket, sys, time
mode = open(os.environ["MODE_FILE"]).read().strip()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def notify(b): s.sendto(b, os.environ["NOTIFY_SOCKET"])
hostile = b"\x1b[2J\x07\rowned\x1b]0;title\x07"
if mode == "crash":
    notify(b"STATUS=" + hostile)
    time.sleep(0.05)
    sys.exit(3)
if mode == "extend":
    notify(b"EXTEND_TIMEOUT_USEC=18446744073709551615")
if mode == "claims":
    notify(b"MAINPID=1\nSTOPPING=1\nRELOADING=1\nWATCHDOG=trigger\nFDSTORE=1\nNOTIFYACCESS=all\nWATCHDOG_USEC=1")
notify(b"READY=1\nSTATUS=" + hostile)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(3600)
"#;

fn py_worker(dir: &Path, mode: &str) -> (Vec<String>, PathBuf) {
    let script = dir.join("worker.py");
    std::fs::write(&script, PY_WORKER).unwrap();
    let mode_file = dir.join("mode");
    std::fs::write(&mode_file, mode).unwrap();
    (vec![PYTHON.into(), script.display().to_string()], mode_file)
}

fn collect(sock: &UnixDatagram, until: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 8192];
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while t0.elapsed() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    got
}

/// Bytes a terminal acts on: C0 controls but newline, DEL, and the C1 controls.
fn control_chars(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n' && c.is_control())
        .collect()
}

#[test]
fn a_version_with_newlines_cannot_inject_assignments_into_systemd() {
    let dir = TempDir::new("inject");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let pkg = dir.path().join("package.json");
    let version = "1.2.3\nWATCHDOG_USEC=1000000\nMAINPID=1";
    std::fs::write(
        &pkg,
        serde_json::json!({"name": "app", "version": version}).to_string(),
    )
    .unwrap();
    let mut h = Handoff::start(
        "inject",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--version-file",
                pkg.to_str().unwrap(),
            ]),
            worker: vec![bin("handoff-fixture").display().to_string()],
            env: vec![("NOTIFY_SOCKET", path.display().to_string())],
            wait_ready: 1,
        },
    );
    let mut got = collect(&sock, Duration::from_millis(300));
    assert_eq!(h.reload_cli(&[]).0, 0);
    got.extend(collect(&sock, Duration::from_millis(300)));
    assert!(h.stop().success());
    got.extend(collect(&sock, Duration::from_millis(100)));

    // Every line handoff sends must be one of the assignments it means to make.
    const OURS: &[&str] = &[
        "READY",
        "RELOADING",
        "MONOTONIC_USEC",
        "STOPPING",
        "STATUS",
        "WATCHDOG",
        "EXTEND_TIMEOUT_USEC",
    ];
    let lines: Vec<&str> = got
        .iter()
        .flat_map(|d| d.split('\n'))
        .filter(|l| !l.is_empty())
        .collect();
    let injected: Vec<&&str> = lines
        .iter()
        .filter(|l| !OURS.contains(&l.split_once('=').map_or(**l, |(k, _)| k)))
        .collect();
    let escaped = lines
        .iter()
        .filter(|l| l.contains("version 1.2.3\\nWATCHDOG_USEC=1000000\\nMAINPID=1"))
        .count();
    eprintln!(
        "FIGURE inject: {} datagrams, {} lines, {} injected assignments, {} STATUS lines with the version escaped",
        got.len(),
        lines.len(),
        injected.len(),
        escaped
    );
    assert!(
        injected.is_empty(),
        "the release's version reached systemd as assignments: {injected:?}\nall: {got:?}"
    );
    assert!(
        escaped >= 2,
        "the version should be shown, escaped: {got:?}"
    );
}

#[test]
fn control_characters_from_a_worker_or_release_never_reach_a_terminal() {
    let dir = TempDir::new("ctlchars");
    let (worker, mode_file) = py_worker(dir.path(), "ready");
    let pkg = dir.path().join("package.json");
    // An OSC sequence that retitles the terminal, BEL, and a CR that hides what came before.
    let version = "\u{1b}]0;pwned\u{7}2.0.0\r";
    std::fs::write(
        &pkg,
        serde_json::json!({"name": "app", "version": version}).to_string(),
    )
    .unwrap();
    let mut h = Handoff::start(
        "ctlchars",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--version-file",
                pkg.to_str().unwrap(),
                "--ready-timeout",
                "10s",
            ]),
            worker,
            env: vec![
                ("MODE_FILE", mode_file.display().to_string()),
                ("RUST_LOG", "debug".into()),
            ],
            wait_ready: 1,
        },
    );
    h.keep.push(dir);
    h.wait_for(
        Duration::from_secs(10),
        |st| st.workers.iter().any(|w| w.status.is_some()),
        "the worker's STATUS=",
    );

    let out = h.cli(&["status"], &[]);
    assert!(out.status.success());
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    let in_status = control_chars(&status);

    // --json keeps the raw value (JSON-escaped, so safe on a terminal too).
    let out = h.cli(&["status"], &["--json"]);
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(control_chars(&json).is_empty(), "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["workers"][0]["status"],
        "\u{1b}[2J\u{7}\rowned\u{1b}]0;title\u{7}"
    );

    // A failed rollover's message carries the new worker's last status.
    std::fs::write(&mode_file, "crash").unwrap();
    let (code, stdout, stderr) = h.reload_cli(&[]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("owned"), "{stderr}");
    let in_reload = control_chars(&format!("{stdout}{stderr}"));

    // And the log (stderr, the journal), at debug level where every STATUS= is logged.
    std::fs::write(&mode_file, "ready").unwrap();
    assert_eq!(h.reload_cli(&[]).0, 0);
    assert!(h.stop().success());
    let log = h.log();
    assert!(log.contains("owned"), "the status should be logged: {log}");
    let in_log = control_chars(&log);
    eprintln!(
        "FIGURE ctlchars: control characters shown raw: status {}, reload {}, log {} ({} log lines)",
        in_status.len(),
        in_reload.len(),
        in_log.len(),
        log.lines().count()
    );
    assert!(in_status.is_empty(), "handoff status: {status:?}");
    assert!(
        status.contains("\\u{1b}[2J\\u{7}\\rowned"),
        "the worker's status should be shown, escaped: {status}"
    );
    assert!(
        in_reload.is_empty(),
        "handoff reload: {stdout:?} {stderr:?}"
    );
    assert!(in_log.is_empty(), "log: {log:?}");
}

fn nobody() -> Option<nix::unistd::User> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    nix::unistd::User::from_name("nobody").ok().flatten()
}

/// `systemd-notify --ready` run as `uid` with `NOTIFY_SOCKET=sock`: true when it sent.
fn notify_as(uid: u32, gid: u32, sock: &str) -> bool {
    use std::os::unix::process::CommandExt;
    let out = Command::new("systemd-notify")
        .arg("--ready")
        .env("NOTIFY_SOCKET", sock)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("systemd-notify");
    out.status.success()
}

#[test]
fn an_unrelated_process_of_the_workers_user_cannot_make_a_worker_ready() {
    let Some(nobody) = nobody() else {
        eprintln!("SKIP: needs root and a `nobody` user");
        return;
    };
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let dir = TempDir::new("spoof");
    let mode_file = dir.path().join("mode");
    std::fs::write(&mode_file, "ready").unwrap();
    let mut h = Handoff::start(
        "spoof",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--user",
                "nobody",
                "--ready-timeout",
                "3s",
            ]),
            worker: vec![bin("handoff-fixture").display().to_string()],
            env: vec![("FIXTURE_MODE_FILE", mode_file.display().to_string())],
            wait_ready: 1,
        },
    );
    h.keep.push(dir);
    // The next release never becomes ready; a process of the same user that has nothing to do
    // with it claims it is.
    std::fs::write(&mode_file, "never-ready").unwrap();
    let control_path = h.control.clone();
    let t0 = Instant::now();
    let reload = std::thread::spawn(move || {
        control::request(&control_path, &Request::Reload { if_changed: false }, None)
    });
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| st.workers.iter().any(|w| w.generation == 2),
        "generation 2 spawned",
    );
    let pid = st.workers.iter().find(|w| w.generation == 2).unwrap().pid;
    let sock = process_env(pid, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let sent = notify_as(uid, gid, &sock);
    // Names are not guessable either: the old `gG-wS-ID` scheme's next name is not there.
    let tx = UnixDatagram::unbound().unwrap();
    let guess_reached = (0..16).any(|id| {
        tx.send_to(
            b"STATUS=guessed",
            Path::new(&sock).with_file_name(format!("g2-w0-{id}")),
        )
        .is_ok()
    });
    let outcome = match reload.join().unwrap() {
        Ok(Response::Reload(r)) => r,
        other => panic!("{other:?}"),
    };
    eprintln!(
        "FIGURE spoof: spoofed READY=1 sent by an unrelated uid {uid} process: {sent}; guessed name reached: {guess_reached}; rollover {} after {} ms: {}",
        outcome.outcome,
        t0.elapsed().as_millis(),
        outcome.message
    );
    assert!(sent, "the spoofing process could not even send");
    assert!(!guess_reached, "a guessed socket name reached a worker");
    assert!(
        !outcome.outcome.success(),
        "a spoofed READY=1 passed a release that never became ready: {}",
        outcome.message
    );
    assert!(h.stop().success());
}

#[test]
fn systemd_notify_from_a_workers_child_or_daemonized_grandchild_still_counts() {
    let Some(_) = nobody() else {
        eprintln!("SKIP: needs root and a `nobody` user");
        return;
    };
    // The common case: a Node (here: sh) worker runs `systemd-notify --ready` as a child.
    // And a detached, setsid() grandchild whose parent has exited (re-parented to handoff).
    let cases = [
        (
            "child",
            "systemd-notify --ready --status=child; exec sleep 1000",
        ),
        (
            "daemonized",
            "(setsid sh -c 'sleep 0.3; systemd-notify --ready --status=daemonized' &); exec sleep 1000",
        ),
    ];
    for (tag, script) in cases {
        let t0 = Instant::now();
        let mut h = Handoff::start(
            tag,
            Opts {
                args: s(&[
                    "--listen",
                    "127.0.0.1:0",
                    "--user",
                    "nobody",
                    "--ready-timeout",
                    "10s",
                ]),
                worker: s(&["/bin/sh", "-c", script]),
                env: vec![],
                wait_ready: 1,
            },
        );
        let st = h.status().unwrap();
        eprintln!(
            "FIGURE notify-tree: {tag}: ready after {} ms, status {:?}",
            t0.elapsed().as_millis(),
            st.workers[0].status
        );
        assert_eq!(st.workers[0].status.as_deref(), Some(tag));
        assert!(h.stop().success());
    }
}

#[test]
fn workers_do_not_inherit_handoffs_own_systemd_variables() {
    let reports = TempDir::new("inherit");
    let mut h = Handoff::start(
        "inherit",
        Opts {
            args: s(&["--listen", "127.0.0.1:0"]),
            worker: vec![bin("handoff-fixture").display().to_string()],
            env: vec![
                ("FIXTURE_REPORT_DIR", reports.path().display().to_string()),
                ("WATCHDOG_USEC", "60000000".into()),
                // Not handoff's pid: handoff itself does not use the watchdog then.
                ("WATCHDOG_PID", "1".into()),
                ("RUNTIME_DIRECTORY", "/run/handoff-x".into()),
                ("SYSTEMD_EXEC_PID", "1".into()),
                ("FDSTORE", "8".into()),
                ("INVOCATION_ID", "0123456789abcdef0123456789abcdef".into()),
                ("CREDENTIALS_DIRECTORY", "/run/credentials/x".into()),
            ],
            wait_ready: 1,
        },
    );
    let pid = h.status().unwrap().workers[0].pid;
    let f = reports.path().join(format!("{pid}.json"));
    assert!(wait_until(Duration::from_secs(5), || f.exists()));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    let env = r["env"].as_object().unwrap();
    let leaked: Vec<&str> = [
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "RUNTIME_DIRECTORY",
        "SYSTEMD_EXEC_PID",
        "FDSTORE",
    ]
    .into_iter()
    .filter(|k| env.contains_key(*k))
    .collect();
    eprintln!("FIGURE inherit: handoff-only variables a worker got: {leaked:?}");
    assert!(leaked.is_empty(), "workers inherited {leaked:?}");
    // What the service's processes legitimately share stays.
    assert_eq!(env["INVOCATION_ID"], "0123456789abcdef0123456789abcdef");
    assert_eq!(env["CREDENTIALS_DIRECTORY"], "/run/credentials/x");
    assert!(h.stop().success());
}

#[test]
fn a_zero_or_absurd_timeout_is_refused_at_start() {
    let dir = TempDir::new("timeouts");
    let run = |extra: &[&str]| {
        Command::new(handoff_bin())
            .args(["run", "--listen", "127.0.0.1:0", "--runtime-dir"])
            .arg(dir.path().join("rt"))
            .args(extra)
            .args(["--", "/bin/sleep", "1000"])
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap()
    };
    let mut refused = 0;
    for flag in [
        &["--ready-timeout", "0s"][..],
        &["--ready-timeout", "9999999999999999999h"],
        &["--drain-timeout", "9999999999999999999h"],
        &["--ready", "delay:9999999999999999999h"],
    ] {
        let out = run(flag);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag:?}: {out:?}");
        assert!(err.contains(flag[0]), "{flag:?}: {err}");
        refused += 1;
    }
    let cfg = dir.path().join("app.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\nready_timeout = \"0ms\"\ncommand = [\"/bin/sleep\", \"1000\"]\n",
    )
    .unwrap();
    let out = Command::new(handoff_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--runtime-dir")
        .arg(dir.path().join("rt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        err.contains("ready_timeout") && err.contains(":2:"),
        "{err}"
    );
    refused += 1;
    eprintln!("FIGURE timeouts: {refused} of 5 bad timeouts refused with a message");
}

#[test]
fn a_worker_asking_for_an_endless_extension_does_not_crash_handoff() {
    let dir = TempDir::new("extend");
    let (worker, mode_file) = py_worker(dir.path(), "extend");
    let mut h = Handoff::start(
        "extend",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--ready-timeout", "10s"]),
            worker,
            env: vec![("MODE_FILE", mode_file.display().to_string())],
            wait_ready: 1,
        },
    );
    h.keep.push(dir);
    // A second generation asks for 2^64-1 µs too; handoff must keep answering.
    assert_eq!(h.reload_cli(&[]).0, 0);
    let alive = h.status().is_some();
    eprintln!("FIGURE extend: EXTEND_TIMEOUT_USEC=2^64-1 twice, handoff answering: {alive}");
    assert!(alive);
    assert!(h.stop().success());
}

#[test]
fn a_runtime_dir_planted_by_another_user_is_refused() {
    let Some(nobody) = nobody() else {
        eprintln!("SKIP: needs root and a `nobody` user");
        return;
    };
    let dir = TempDir::new("planted");
    // A symlink to a directory of ours: handoff would clear `notify/` in it.
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(victim.join("notify")).unwrap();
    std::fs::write(victim.join("notify/keep"), "precious").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    // A directory another user made (as in a world-writable /tmp) and can still write to.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(
        &theirs,
        Some(nobody.uid.as_raw()),
        Some(nobody.gid.as_raw()),
    )
    .unwrap();
    let mut refused = 0;
    for rt in [&link, &theirs] {
        let mut child = Command::new(handoff_bin())
            .args(["run", "--listen", "127.0.0.1:0", "--runtime-dir"])
            .arg(rt)
            .args(["--", "/bin/sleep", "1000"])
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_child(&mut child, Duration::from_secs(5));
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if status.is_some_and(|s| !s.success()) && err.contains(&rt.display().to_string()) {
            refused += 1;
        } else {
            eprintln!("{} accepted: {status:?} {err}", rt.display());
        }
    }
    let kept = victim.join("notify/keep").exists();
    eprintln!(
        "FIGURE planted: {refused} of 2 planted runtime dirs refused; symlink target's files kept: {kept}"
    );
    assert!(
        kept,
        "handoff deleted files through a symlinked runtime dir"
    );
    assert_eq!(refused, 2);
}

#[test]
fn what_a_worker_claims_for_the_main_process_never_reaches_systemd() {
    let dir = TempDir::new("claims");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let (worker, mode_file) = py_worker(dir.path(), "claims");
    let mut h = Handoff::start(
        "claims",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--ready-timeout", "10s"]),
            worker,
            env: vec![
                ("MODE_FILE", mode_file.display().to_string()),
                ("NOTIFY_SOCKET", path.display().to_string()),
            ],
            wait_ready: 1,
        },
    );
    h.keep.push(dir);
    assert_eq!(h.reload_cli(&[]).0, 0);
    let got = collect(&sock, Duration::from_millis(300)).join("");
    let st = h.status().unwrap();
    let forwarded: Vec<&str> = [
        "MAINPID=",
        "STOPPING=",
        "FDSTORE=",
        "NOTIFYACCESS=",
        "WATCHDOG_USEC=",
    ]
    .into_iter()
    .filter(|k| got.contains(k))
    .collect();
    eprintln!(
        "FIGURE claims: forwarded to systemd: {forwarded:?}; handoff serving generation {} with {} ready, shutting down: {}",
        st.current_generation, st.ready, st.shutting_down
    );
    assert!(forwarded.is_empty(), "{got:?}");
    assert!(!st.shutting_down && st.ready == 1 && st.current_generation == 2);
    assert!(h.stop().success());
}
