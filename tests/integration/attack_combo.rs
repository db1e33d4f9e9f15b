//! Config reload and the stability window together (each was attacked alone): settings
//! that change while a rollover is inside its window, a daemonizing release rolled back in
//! its window, a rolling scale-up a window stops part of the way.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use handoff_common::protocol::StatusReport;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(30);

/// Writes a config file for `handoff run --config`, replaced whole as an editor does.
fn write_config(
    path: &Path,
    workers: usize,
    command: &[String],
    extra: &str,
    env: &[(&str, &str)],
) {
    let mut t = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = {workers}\ndrain_timeout = \"1s\"\n\
         command = {command:?}\n{extra}\n[environment]\n"
    );
    for (k, v) in env {
        t.push_str(&format!("{k} = {v:?}\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, t).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn status_json(h: &Handoff) -> StatusReport {
    let out = h.cli(&["status"], &["--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `handoff SUB ARGS` in a thread: (exit code, stdout + stderr).
fn cli_in_thread(h: &Handoff, sub: &[&str]) -> thread::JoinHandle<(i32, String)> {
    let control = h.control.display().to_string();
    let args: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
    thread::spawn(move || {
        let out = Command::new(handoff_bin())
            .args(&args)
            .args(["--control", &control])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
}

/// A config reload changes the environment (min_uptime 2s); `handoff scale 3` arrives
/// while the new generation is inside its window. Before the fix the scale took the
/// settings in force at that moment (the old generation's) and its rollover, queued behind
/// the window, put the old environment back: three workers with APP_FLAVOUR=old while the
/// file says new, and status said the file differs.
#[test]
fn scale_inside_a_window_keeps_what_the_config_reload_brought() {
    let d = TempDir::new("combo-scale");
    let cfg = d.path().join("app.toml");
    let extra = "min_uptime = \"2s\"";
    write_config(&cfg, 2, &example_worker(), extra, &[("APP_FLAVOUR", "old")]);
    let mut h = start_config("combo-scale", &cfg, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    write_config(&cfg, 2, &example_worker(), extra, &[("APP_FLAVOUR", "new")]);
    let reload = cli_in_thread(&h, &["reload"]);
    h.wait_for(
        LONG,
        |st| st.stabilizing.is_some(),
        "the new generation in its window",
    );
    let scale = cli_in_thread(&h, &["scale", "3"]);
    let (rc_reload, out_reload) = reload.join().unwrap();
    let (rc_scale, out_scale) = scale.join().unwrap();
    let st = h.wait_for(
        LONG,
        |st| st.rolling_over_to.is_none() && st.ready == 3 && st.stabilizing.is_none(),
        "the scaled generation serves",
    );
    let total = finish_load(&stop, clients);
    let flavours: Vec<Option<String>> = st
        .workers
        .iter()
        .filter(|w| w.generation == st.current_generation)
        .map(|w| process_env(w.pid, "APP_FLAVOUR"))
        .collect();
    eprintln!(
        "reload exit {rc_reload}, scale exit {rc_scale}; generation {} flavours {flavours:?}; \
         {} requests ok, {} failed",
        st.current_generation,
        total.ok,
        total.failures.len()
    );
    assert_eq!(rc_reload, 0, "{out_reload}");
    assert_eq!(rc_scale, 0, "{out_scale}");
    assert_eq!(flavours.len(), 3);
    assert!(
        flavours.iter().all(|f| f.as_deref() == Some("new")),
        "scale put the old environment back: {flavours:?}\n{}",
        h.log()
    );
    let st = status_json(&h);
    let differs = st.config_differs.unwrap_or_default();
    assert!(!differs.contains("environment"), "{differs}");
    assert!(total.failures.is_empty(), "{:?}", total.failures);
    assert!(h.stop().success());
}

/// A rolling scale-up 1 → 3 (min_uptime 1s) whose worker in slot 1 exits inside its
/// window stops `partial` with one slot. Before the fix status claimed `workers = 3` while
/// one worker ran, and `config_differs` saw nothing for a reload to apply.
#[test]
fn a_rolling_scale_up_stopped_in_a_window_says_how_many_workers_run() {
    let d = TempDir::new("combo-partial");
    let cfg = d.path().join("app.toml");
    let extra = "rolling = true\nmin_uptime = \"1s\"";
    write_config(&cfg, 1, &fixture(), extra, &[("FIXTURE_MODE", "ready")]);
    let mut h = start_config("combo-partial", &cfg, 1);
    // Slot 1 of the new release crashes 300 ms after READY=1; the others are fine.
    let wrapper = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!(
            "if [ \"$HANDOFF_WORKER\" = 1 ]; then export FIXTURE_MODE=crash-after-ready \
             FIXTURE_MS=300; fi; exec {}",
            fixture()[0]
        ),
    ];
    write_config(&cfg, 3, &wrapper, extra, &[("FIXTURE_MODE", "ready")]);
    let (code, out, err) = h.reload_cli(&[]);
    let st = status_json(&h);
    let settings = st.settings.as_ref().unwrap().workers;
    eprintln!(
        "partial rolling scale-up: reload exit {code}; workers_wanted {}, ready {}, settings.workers \
         {settings}, config_differs {:?}",
        st.workers_wanted, st.ready, st.config_differs
    );
    assert_eq!(code, 1, "{out} {err}");
    assert!(
        out.contains("partial") || err.contains("partial") || out.contains("stopped at worker"),
        "{out} {err}"
    );
    assert_eq!(st.workers_wanted, 1);
    assert_eq!(
        settings, st.workers_wanted,
        "status claims workers that do not run"
    );
    assert!(
        st.config_differs
            .as_deref()
            .unwrap_or("")
            .contains("workers"),
        "{:?}",
        st.config_differs
    );
    assert!(h.stop().success());
}

/// Double-forks a SIGTERM-ignoring child that keeps fd 3, says READY=1, then serves or
/// (CRASH_AFTER_READY set) exits 3 after that many seconds.
const DAEMONIZING: &str = r#"
import os, signal, socket, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        s = socket.socket(fileno=3)
        while True:
            time.sleep(3600)
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
crash = os.environ.get("CRASH_AFTER_READY")
if crash:
    time.sleep(float(crash))
    os._exit(3)
while True:
    time.sleep(3600)
"#;

/// A config reload brings a daemonizing release that crashes 300 ms after READY=1, with
/// min_uptime 2s: rolled back inside the window. Its detached grandchildren (they ignore
/// SIGTERM) must be found, drained and killed; the first generation's stay.
#[test]
fn a_daemonizing_release_rolled_back_in_its_window_leaves_no_stray() {
    let d = TempDir::new("combo-daemon");
    let script = d.path().join("worker.py");
    std::fs::write(&script, DAEMONIZING).unwrap();
    let cfg = d.path().join("app.toml");
    let cmd = vec![python(), script.display().to_string()];
    let extra = "min_uptime = \"1s\"";
    write_config(&cfg, 2, &cmd, extra, &[]);
    let mut h = start_config("combo-daemon", &cfg, 2);
    assert!(
        wait_until(LONG, || strays(&h).len() == 2),
        "the first generation's detached children"
    );
    let first = strays(&h);
    write_config(
        &cfg,
        2,
        &cmd,
        "min_uptime = \"2s\"",
        &[("CRASH_AFTER_READY", "0.3")],
    );
    let (code, out, err) = h.reload_cli(&[]);
    let settled = wait_until(LONG, || strays(&h).len() == 2);
    let left = strays(&h);
    let st = status_json(&h);
    eprintln!(
        "daemonizing release rolled back in its window: reload exit {code}; strays before \
         {first:?}, after {left:?}; generation {} serves, {} ready",
        st.current_generation, st.ready
    );
    assert_eq!(code, 1, "{out} {err}");
    assert!(
        out.contains("stability window") || err.contains("stability window"),
        "{out} {err}"
    );
    assert!(
        settled,
        "the rolled-back generation's strays survive: {left:?}\n{}",
        h.log()
    );
    assert!(
        first.iter().all(|p| pid_alive(*p)),
        "the serving generation's strays were killed"
    );
    assert_eq!((st.current_generation, st.ready), (1, 2));
    let last = strays(&h);
    assert!(h.stop().success());
    assert!(
        wait_until(LONG, || last.iter().all(|p| !pid_alive(*p))),
        "a stray outlived handoff: {last:?}"
    );
}

/// A config reload raises min_uptime from 1s to 3s; inside that window another reload puts
/// it to 0s. Status must show the running window's 3 s (before: the start's 1 s), the window
/// must not be cut short by the queued reload, and both reloads answer ok.
#[test]
fn a_reload_changing_min_uptime_inside_a_window() {
    let d = TempDir::new("combo-uptime");
    let cfg = d.path().join("app.toml");
    write_config(&cfg, 2, &example_worker(), "min_uptime = \"1s\"", &[]);
    let mut h = start_config("combo-uptime", &cfg, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    write_config(&cfg, 2, &example_worker(), "min_uptime = \"3s\"", &[]);
    let first = cli_in_thread(&h, &["reload"]);
    let st = h.wait_for(LONG, |st| st.stabilizing.is_some(), "the 3 s window");
    let win = st.stabilizing.clone().unwrap();
    let line = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).to_string();
    write_config(&cfg, 2, &example_worker(), "min_uptime = \"0s\"", &[]);
    let second = cli_in_thread(&h, &["reload"]);
    let (rc1, out1) = first.join().unwrap();
    let (rc2, out2) = second.join().unwrap();
    let total = finish_load(&stop, clients);
    eprintln!(
        "min_uptime 1s -> 3s -> 0s: window min_uptime_ms {} (left {}), reloads exit {rc1} / \
         {rc2}; {} requests ok, {} failed",
        win.min_uptime_ms,
        win.left_ms,
        total.ok,
        total.failures.len()
    );
    assert_eq!(
        win.min_uptime_ms, 3000,
        "status shows another window's length: {win:?}"
    );
    assert!(!line.contains("min_uptime 1"), "{line}");
    assert_eq!(rc1, 0, "{out1}");
    assert!(out1.contains("stable 3"), "{out1}");
    assert_eq!(rc2, 0, "{out2}");
    assert!(total.failures.is_empty(), "{:?}", total.failures);
    let st = status_json(&h);
    assert_eq!(st.settings.unwrap().min_uptime, "0s");
    assert!(h.stop().success());
}

/// The stray drains on SIGINT (writing `MARK`) and ignores SIGTERM.
const SIGINT_DAEMON: &str = r#"
import os, signal, socket, time
mark = os.environ["MARK"]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        def done(*a):
            open(mark + "." + str(os.getpid()), "w").write("SIGINT")
            os._exit(0)
        signal.signal(signal.SIGINT, done)
        s = socket.socket(fileno=3)
        while True:
            time.sleep(3600)
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
signal.signal(signal.SIGINT, lambda *a: os._exit(0))
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(3600)
"#;

/// Generation 1's program drains on SIGINT (`drain_signal = "SIGINT"`); a config reload
/// brings drain_signal SIGTERM. Generation 1's detached grandchild must get SIGINT, as its
/// worker does. Before the fix it got generation 2's SIGTERM (ignored), then SIGKILL and an
/// ALERT at the drain timeout.
#[test]
fn an_old_generations_stray_gets_its_own_drain_signal_after_a_config_reload() {
    let d = TempDir::new("combo-stray-sig");
    let script = d.path().join("worker.py");
    std::fs::write(&script, SIGINT_DAEMON).unwrap();
    let mark = d.path().join("stray-drained");
    let cfg = d.path().join("app.toml");
    let cmd = vec![python(), script.display().to_string()];
    let env = [("MARK", mark.to_str().unwrap())];
    write_config(
        &cfg,
        1,
        &cmd,
        "min_uptime = \"1s\"\ndrain_signal = \"SIGINT\"",
        &env,
    );
    let mut h = start_config("combo-stray-sig", &cfg, 1);
    assert!(
        wait_until(LONG, || strays(&h).len() == 1),
        "the detached child"
    );
    let first = strays(&h)[0];
    write_config(
        &cfg,
        1,
        &cmd,
        "min_uptime = \"1s\"\ndrain_signal = \"SIGTERM\"",
        &env,
    );
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out} {err}");
    let gone = wait_until(LONG, || !pid_alive(first));
    let marked = std::fs::read_to_string(format!("{}.{first}", mark.display())).ok();
    let alert = h.log().contains(&format!("ALERT: pid {first}"));
    eprintln!(
        "old stray {first} after a reload to drain_signal SIGTERM: gone {gone}, drained by \
         {marked:?}, ALERT {alert}"
    );
    assert!(gone, "{}", h.log());
    assert_eq!(marked.as_deref(), Some("SIGINT"), "{}", h.log());
    assert!(!alert, "{}", h.log());
    assert!(h.stop().success());
}

/// `scale 1` of 3 workers (min_uptime 3s); SIGTERM to handoff inside that window. The
/// waiting scale must be answered (not hang), handoff exit 0, and every worker of both
/// generations be gone.
#[test]
fn sigterm_inside_the_window_of_a_scale_down() {
    let d = TempDir::new("combo-term");
    let cfg = d.path().join("app.toml");
    write_config(&cfg, 3, &example_worker(), "min_uptime = \"3s\"", &[]);
    let mut h = start_config("combo-term", &cfg, 3);
    let scale = cli_in_thread(&h, &["scale", "1"]);
    let st = h.wait_for(LONG, |st| st.stabilizing.is_some(), "the scale's window");
    let pids: Vec<i32> = st.workers.iter().map(|w| w.pid).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (rc, out) = scale.join().unwrap();
    let exit = h.stop();
    let left: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    eprintln!(
        "SIGTERM in a scale-down's window: scale exit {rc} ({}), handoff {exit}, {} workers \
         before, left {left:?}",
        out.lines().next().unwrap_or_default(),
        pids.len()
    );
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("shutting down"), "{out}");
    assert!(exit.success(), "{exit}");
    assert_eq!(pids.len(), 4, "3 old + 1 new");
    assert!(
        wait_until(LONG, || pids.iter().all(|p| !pid_alive(*p))),
        "{left:?}"
    );
}

/// A release that says READY=1 and exits 0 200 ms later, with min_uptime 0s (no window):
/// the reload answers ok at READY=1 (nothing to catch it), then every exit counts as a
/// crash (it was never 10 s healthy) and the slot backs off: no tight restart loop.
#[test]
fn exit_0_right_after_ready_without_a_window_backs_off() {
    let d = TempDir::new("combo-exit0");
    let script = d.path().join("worker.py");
    std::fs::write(
        &script,
        "import os, socket, time\n\
         u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         u.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n\
         if os.environ.get('EXIT_AFTER_READY'):\n    time.sleep(0.2)\n    os._exit(0)\n\
         time.sleep(3600)\n",
    )
    .unwrap();
    let cfg = d.path().join("app.toml");
    let cmd = vec![python(), script.display().to_string()];
    write_config(&cfg, 1, &cmd, "min_uptime = \"0s\"", &[]);
    let mut h = start_config("combo-exit0", &cfg, 1);
    write_config(
        &cfg,
        1,
        &cmd,
        "min_uptime = \"0s\"",
        &[("EXIT_AFTER_READY", "1")],
    );
    let (code, out, err) = h.reload_cli(&[]);
    let st = h.wait_for(
        LONG,
        |st| st.slots.first().is_some_and(|s| s.crashes >= 4),
        "the slot crash-looping",
    );
    let restarts = h.log().matches("restarting worker 0 in").count();
    eprintln!(
        "exit 0 after READY=1, min_uptime 0s: reload exit {code}; crashes {}, next restart in \
         {:?} ms, {restarts} restarts logged",
        st.slots[0].crashes, st.slots[0].restart_in_ms
    );
    assert_eq!(code, 0, "{out} {err}");
    assert!(restarts <= st.slots[0].crashes as usize + 1, "{}", h.log());
    assert!(h.stop().success());
}

/// `--if-changed` after a config change that was rolled back in its window (version_file
/// unchanged): the same file is not tried again; the file put back is "unchanged"; a new
/// good file rolls over.
#[test]
fn if_changed_after_a_config_change_rolled_back_in_its_window() {
    let d = TempDir::new("combo-ifchanged");
    let pkg = d.path().join("package.json");
    std::fs::write(&pkg, r#"{"name":"app","version":"1.0.0"}"#).unwrap();
    let cfg = d.path().join("app.toml");
    let extra = format!(
        "min_uptime = \"1s\"\nversion_file = {:?}",
        pkg.display().to_string()
    );
    let good = [("FIXTURE_MODE", "ready")];
    write_config(&cfg, 2, &fixture(), &extra, &good);
    let mut h = start_config("combo-ifchanged", &cfg, 2);
    let bad = [("FIXTURE_MODE", "crash-after-ready"), ("FIXTURE_MS", "300")];
    write_config(&cfg, 2, &fixture(), &extra, &bad);
    let (c1, o1, e1) = h.reload_cli(&[]);
    let (c2, o2, e2) = h.reload_cli(&["--if-changed"]);
    write_config(&cfg, 2, &fixture(), &extra, &good);
    let (c3, o3, e3) = h.reload_cli(&["--if-changed"]);
    write_config(
        &cfg,
        2,
        &fixture(),
        &extra,
        &[("FIXTURE_MODE", "ready"), ("X", "1")],
    );
    let (c4, o4, e4) = h.reload_cli(&["--if-changed"]);
    let st = status_json(&h);
    eprintln!(
        "--if-changed after a rolled-back config change: exits {c1} / {c2} / {c3} / {c4}; \
         generation {} serves, config_differs {:?}",
        st.current_generation, st.config_differs
    );
    assert_eq!(c1, 1, "{o1} {e1}");
    assert_eq!(c2, 0, "{o2} {e2}");
    assert!(o2.contains("not trying it again"), "{o2} {e2}");
    assert_eq!(c3, 0, "{o3} {e3}");
    assert!(o3.contains("unchanged"), "{o3} {e3}");
    assert_eq!(c4, 0, "{o4} {e4}");
    assert!(o4.contains("serves"), "{o4} {e4}");
    assert_eq!(st.current_generation, 3, "1, 2 rolled back, 3");
    assert!(st.config_differs.is_none(), "{:?}", st.config_differs);
    assert!(h.stop().success());
}

/// Generation 2 (crashes 600 ms after READY=1, min_uptime 2s) is in its window when a
/// reload of a fixed file (3 workers, rolling) arrives and queues. The window's crash rolls
/// generation 2 back (exit 1); the queued reload then runs with the fixed file (exit 0).
#[test]
fn a_config_reload_queued_behind_a_window_that_crashes() {
    let d = TempDir::new("combo-queued");
    let cfg = d.path().join("app.toml");
    let extra = "min_uptime = \"2s\"";
    write_config(&cfg, 2, &fixture(), extra, &[("FIXTURE_MODE", "ready")]);
    let mut h = start_config("combo-queued", &cfg, 2);
    let bad = [("FIXTURE_MODE", "crash-after-ready"), ("FIXTURE_MS", "600")];
    write_config(&cfg, 2, &fixture(), extra, &bad);
    let first = cli_in_thread(&h, &["reload"]);
    h.wait_for(LONG, |st| st.stabilizing.is_some(), "generation 2's window");
    let fixed = "min_uptime = \"1s\"\nrolling = true";
    write_config(&cfg, 3, &fixture(), fixed, &[("FIXTURE_MODE", "ready")]);
    let second = cli_in_thread(&h, &["reload"]);
    let (rc1, out1) = first.join().unwrap();
    let (rc2, out2) = second.join().unwrap();
    let st = status_json(&h);
    let modes: Vec<Option<String>> = st
        .workers
        .iter()
        .filter(|w| w.generation == st.current_generation && w.state == "ready")
        .map(|w| process_env(w.pid, "FIXTURE_MODE"))
        .collect();
    eprintln!(
        "config reload queued behind a crashing window: exits {rc1} / {rc2}; generation {} \
         serves {modes:?}, rolling {}",
        st.current_generation,
        st.settings.as_ref().unwrap().rolling
    );
    assert_eq!(rc1, 1, "{out1}");
    assert!(out1.contains("stability window"), "{out1}");
    assert_eq!(rc2, 0, "{out2}");
    assert_eq!(st.current_generation, 3);
    assert_eq!(modes.len(), 3, "{st:?}");
    assert!(
        modes.iter().all(|m| m.as_deref() == Some("ready")),
        "{modes:?}"
    );
    assert!(st.config_differs.is_none(), "{:?}", st.config_differs);
    assert!(h.stop().success());
}
