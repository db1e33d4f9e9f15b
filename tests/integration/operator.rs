//! What an operator sees: status that tells the truth, messages that name the command that works,
//! clients that do not hang, a read-only status for non-root, logging that never blocks.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handoff_common::protocol::{self, Request, Response};

use crate::harness::*;

fn start(tag: &str, extra: &[&str], mode_file: &std::path::Path) -> Handoff {
    let mut args = s(&["--listen", "127.0.0.1:0"]);
    args.extend(s(extra));
    Handoff::start(
        tag,
        Opts {
            args,
            worker: fixture(),
            env: vec![("FIXTURE_MODE_FILE", mode_file.display().to_string())],
            wait_ready: 1,
        },
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_forced_kill_shows_in_status_and_in_the_next_reload_answer() {
    let d = TempDir::new("op-kill-mode");
    let mode = d.path().join("mode");
    std::fs::write(&mode, "ignore-term").unwrap();
    let mut h = start("op-kill", &["--drain-timeout", "300ms"], &mode);
    // The rollover itself succeeds: the answer comes at the switch, before the drain ends.
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{err}");
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| {
            st.last_rollover
                .as_ref()
                .is_some_and(|l| l.forced_kills == 1)
        },
        "the forced kill counted",
    );
    assert_eq!(st.forced_kills, 1);
    let human = text(&h.cli(&["status"], &[]).stdout);
    assert!(
        human.contains("1 worker of that rollover was SIGKILLed at the drain timeout"),
        "{human}"
    );
    let json = text(&h.cli(&["status"], &["--json"]).stdout);
    assert!(json.contains("\"forced_kills\": 1"), "{json}");
    // The next reload's answer carries the warning (exit 0: the new generation serves).
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: worker 0 of generation 1")
            && err.contains("SIGKILLed; requests it held were cut"),
        "{err}"
    );
    // And the journal-bound log says it at crit (the ALERT prefix; see logging.rs).
    assert!(
        h.log().contains("ERROR ALERT: worker still running"),
        "{}",
        h.log()
    );
    assert!(h.stop().success());
}

#[test]
fn a_rollback_names_its_outcome_in_words_and_the_command_that_works() {
    let d = TempDir::new("op-rb-mode");
    let mode = d.path().join("mode");
    std::fs::write(&mode, "ready").unwrap();
    let mut h = start("op-rb", &[], &mode);
    std::fs::write(&mode, "crash").unwrap();
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reload failed (rolled back)"), "{err}");
    assert!(!err.contains("RolledBack"), "{err}");
    assert!(
        err.contains(&format!("handoff status --control {}", h.control.display())),
        "{err}"
    );
    assert!(h.stop().success());
}

#[test]
fn a_stopped_handoff_makes_clients_give_up_with_75() {
    let d = TempDir::new("op-stop-mode");
    let mode = d.path().join("mode");
    std::fs::write(&mode, "ready").unwrap();
    let mut h = start("op-stop", &[], &mode);
    let pid = nix::unistd::Pid::from_raw(h.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let st = h.cli(&["status"], &["--timeout", "1s"]);
    let status_took = t0.elapsed();
    let t0 = Instant::now();
    let rl = h.cli(&["reload"], &["--timeout", "1s"]);
    let reload_took = t0.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(st.status.code(), Some(75), "{st:?}");
    assert!(text(&st.stderr).contains("no answer"), "{st:?}");
    assert!(status_took < Duration::from_secs(5), "{status_took:?}");
    assert_eq!(rl.status.code(), Some(75), "{rl:?}");
    // A reload's silence limit is at least two progress intervals (4 s).
    assert!(reload_took < Duration::from_secs(8), "{reload_took:?}");
    // The reload that timed out was queued, and runs once handoff is back: nothing is lost.
    h.wait_for(
        Duration::from_secs(20),
        |st| st.current_generation >= 2 && st.rolling_over_to.is_none(),
        "the queued reload ran after SIGCONT",
    );
    assert!(h.stop().success());
}

#[test]
fn a_reload_longer_than_the_timeout_still_succeeds() {
    // Readiness takes 6 s, the client's silence limit 4 s (1 s asked, raised to two progress
    // intervals): progress lines keep it waiting.
    let d = TempDir::new("op-long-mode");
    let mode = d.path().join("mode");
    std::fs::write(&mode, "ready").unwrap();
    let mut h = Handoff::start(
        "op-long",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--ready", "delay:6s"]),
            worker: fixture(),
            env: vec![("FIXTURE_MODE_FILE", mode.display().to_string())],
            wait_ready: 0,
        },
    );
    h.wait_for(
        Duration::from_secs(30),
        |st| st.ready == 1,
        "first generation",
    );
    let t0 = Instant::now();
    let (code, _, err) = h.reload_cli(&["--timeout", "1s"]);
    assert_eq!(code, 0, "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(6));
    assert!(h.stop().success());
}

#[test]
fn a_full_stderr_pipe_does_not_stop_handoff() {
    // stdout and stderr to one pipe nobody reads; the workers (spew mode) fill it at once.
    let d = TempDir::new("op-pipe");
    let control = d.path().join("rt/control.sock");
    let (_reader, writer) = nix::unistd::pipe().unwrap();
    let writer = std::fs::File::from(writer);
    let mut child = Command::new(handoff_bin())
        .args(["run", "-vv", "--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--runtime-dir")
        .arg(d.path().join("rt"))
        .arg("--")
        .args(fixture())
        .env("FIXTURE_MODE", "spew")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let status = |limit| match protocol::request(&control, &Request::Status, Some(limit)) {
        Ok(Response::Status(st)) => Some(*st),
        _ => None,
    };
    assert!(
        wait_until(Duration::from_secs(20), || status(Duration::from_secs(2))
            .is_some_and(|st| st.ready == 2)),
        "handoff with a full stderr did not come up"
    );
    for i in 0..3 {
        match protocol::reload(&control, false, Some(Duration::from_secs(5)), &mut |_| {}) {
            Ok(Response::Reload(r)) => assert!(r.outcome.success(), "reload {i}: {}", r.message),
            other => panic!("reload {i}: {other:?}"),
        }
    }
    let st = status(Duration::from_secs(5)).expect("status with a full pipe");
    assert_eq!(st.current_generation, 4);
    assert!(
        st.log_lines_dropped > 0,
        "the pipe was full, yet no line was dropped?"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = wait_child(&mut child, Duration::from_secs(30)).expect("handoff exits on SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn status_group_members_read_status_but_cannot_reload() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIP: needs root to act as another user");
        return;
    }
    let d = TempDir::new("op-ro-mode");
    let mode = d.path().join("mode");
    std::fs::write(&mode, "ready").unwrap();
    // nobody (65534) is in group 65534.
    let mut h = start("op-ro", &["--status-group", "65534"], &mode);
    // The temp dirs on the way must be traversable for a test as another user.
    let mut p = h.control.parent().unwrap().to_path_buf();
    while p.pop() && p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&p).unwrap().permissions().mode();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m | 0o011)).unwrap();
    }
    let as_nobody = |sub: &str, gid: u32| {
        Command::new(handoff_bin())
            .args([sub, "--control"])
            .arg(&h.control)
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap()
    };
    let st = as_nobody("status", 65534);
    assert_eq!(st.status.code(), Some(0), "{st:?}");
    assert!(
        text(&st.stdout).contains("generation 1 (current)"),
        "{st:?}"
    );
    let rl = as_nobody("reload", 65534);
    assert_eq!(rl.status.code(), Some(77), "{rl:?}");
    // Outside the group: denied, and told how to get in.
    let other = as_nobody("status", 65533);
    assert_eq!(other.status.code(), Some(77), "{other:?}");
    assert!(text(&other.stderr).contains("status_group"), "{other:?}");
    // The status socket refuses a reload even to a member.
    let ro = handoff_common::paths::status_beside(&h.control);
    let e = protocol::request(&ro, &Request::Reload { if_changed: false }, None).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    assert_eq!(h.status().unwrap().current_generation, 1);
    assert!(h.stop().success());
    assert!(!ro.exists(), "status.sock left behind");
}

#[test]
fn bad_settings_say_what_is_wrong() {
    let run = |args: &[&str]| {
        Command::new(handoff_bin())
            .arg("run")
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = run(&["--listen", "127.0.0.1:99999", "--", "/bin/true"]);
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    assert!(
        text(&o.stderr).contains("port 99999 is out of range"),
        "{o:?}"
    );

    let d = TempDir::new("op-cfg");
    let cfg = d.path().join("app.toml");
    std::fs::write(&cfg, "workers = \"2\"\ncommand = [\"/bin/true\"]\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78), "{o:?}");
    let e = text(&o.stderr);
    assert!(e.contains("without quotes") && !e.contains("i64"), "{e}");

    let rt = d.path().join("rt");
    let o = run(&[
        "--listen",
        "127.0.0.1:0",
        "--runtime-dir",
        rt.to_str().unwrap(),
        "--",
        "/nonexistent/server",
    ]);
    let e = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{e}");
    assert!(e.contains("/nonexistent/server: no such file"), "{e}");
    assert!(!e.contains("not executable"), "{e}");

    if nix::unistd::getuid().is_root() {
        // A privileged port as non-root: the socket unit is the way.
        let o = Command::new(handoff_bin())
            .args(["run", "--listen", "127.0.0.1:81", "--", "/bin/true"])
            .env_remove("RUST_LOG")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let e = text(&o.stderr);
        assert!(
            e.contains("ListenStream=81") && e.contains(".socket"),
            "{e}"
        );
    }
}

#[test]
fn clients_name_the_command_that_works() {
    let d = TempDir::new("op-none");
    let o = Command::new(handoff_bin())
        .args(["status", "--control"])
        .arg(d.path().join("control.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(69), "{o:?}");
    assert!(text(&o.stderr).contains("--app APP"), "{o:?}");
    // Help of both binaries lists the one exit table, 69 included.
    for (bin, sub) in [
        (handoff_bin(), "reload"),
        (handoff_bin(), "status"),
        (bin("handoff-trigger"), "--help"),
    ] {
        let mut c = Command::new(&bin);
        if sub == "--help" {
            c.arg("--help");
        } else {
            c.args([sub, "--help"]);
        }
        let help = text(&c.output().unwrap().stdout);
        for (code, meaning) in handoff_common::exit::TABLE {
            assert!(
                help.contains(&format!("{code:>3}  {meaning}")),
                "{} {sub} --help lacks exit code {code}:\n{help}",
                bin.display()
            );
        }
    }
    let top = text(
        &Command::new(handoff_bin())
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        top.contains("man "),
        "`handoff man` is documented, so --help lists it:\n{top}"
    );
}
