//! The stability window (`--min-uptime`) and the crash counter, on real processes: a release
//! that says READY=1 and crashes right after is rolled back while the old generation serves
//! throughout; a healthy one is switched in only once the window has passed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use handoff_common::protocol::Outcome;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

/// handoff with `workers` example workers reading their release from `package.json` in a
/// temp dir (kept alive with the handoff).
fn start(tag: &str, workers: usize, min_uptime: &str, release: &str) -> (Handoff, TempDir) {
    let d = TempDir::new(&format!("{tag}-rel"));
    let pkg = d.path().join("package.json");
    std::fs::write(&pkg, release).unwrap();
    let h = Handoff::start(
        tag,
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
                "--min-uptime",
                min_uptime,
            ]),
            worker: example_worker(),
            env: vec![("EXAMPLE_VERSION_FILE", pkg.display().to_string())],
            wait_ready: workers,
        },
    );
    (h, d)
}

fn release(dir: &Path, text: &str) {
    std::fs::write(dir.join("package.json"), text).unwrap();
}

fn pids_of(h: &Handoff, generation: u64, state: &str) -> Vec<i32> {
    h.status()
        .map(|st| {
            st.workers
                .iter()
                .filter(|w| w.generation == generation && w.state == state)
                .map(|w| w.pid)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_release_crashing_after_ready_is_rolled_back_and_the_old_generation_serves_throughout() {
    let (mut h, d) = start("st-crash", 2, "1s", r#"{"version": "1.0.0"}"#);
    let old = pids_of(&h, 1, "ready");
    assert_eq!(old.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    // The new release serves, says READY=1, and exits 1 200 ms later (after finishing the
    // requests it took: what is measured here is handoff, not the requests a crash cuts).
    release(
        d.path(),
        r#"{"version": "2.0.0", "crash_after_ready_ms": 200}"#,
    );
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "a failed rollover exits 1: {out}{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("rolled back"), "{said}");
    assert!(said.contains("generation 1 still serves"), "{said}");
    assert!(said.contains("exited with status 1"), "{said}");
    assert!(
        said.contains("after READY=1 (within the stability window, min_uptime 1.0 s)"),
        "{said}"
    );
    // Requests keep coming after the rollback too.
    std::thread::sleep(Duration::from_millis(500));
    let total = finish_load(&stop, clients);
    assert!(total.ok > 0);
    assert!(
        total.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        total.failures.len(),
        total.ok + total.failures.len(),
        &total.failures[..total.failures.len().min(5)]
    );
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 1);
    assert_eq!(
        pids_of(&h, 1, "ready"),
        old,
        "the old workers never stopped"
    );
    assert_eq!(
        st.last_rollover.as_ref().map(|l| l.outcome),
        Some(Outcome::RolledBack)
    );
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(
        human.contains("last rollover: generation 2 rolled back"),
        "{human}"
    );
    assert!(st.slots.iter().all(|s| s.crashes == 0), "{:?}", st.slots);
    assert!(h.stop().success());
}

#[test]
fn a_healthy_release_switches_only_after_the_window_with_both_generations_serving_in_it() {
    let (mut h, d) = start("st-ok", 2, "2s", r#"{"version": "1.0.0"}"#);
    let old = pids_of(&h, 1, "ready");
    let addr = h.addr();
    release(d.path(), r#"{"version": "2.0.0"}"#);
    let control = h.control.clone();
    let reload = std::thread::spawn(move || {
        let out = std::process::Command::new(handoff_bin())
            .args(["reload", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    let st = h.wait_for(
        Duration::from_secs(20),
        |st| st.stabilizing.is_some(),
        "the stability window",
    );
    // In the window: the new workers are ready, the old ones still ready (not draining).
    let w = st.stabilizing.as_ref().unwrap();
    assert_eq!((w.generation, w.slots.clone()), (2, vec![0, 1]));
    assert_eq!(w.min_uptime_ms, 2000);
    let state = |g: u64| {
        st.workers
            .iter()
            .filter(|x| x.generation == g)
            .map(|x| x.state.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(state(1), ["ready", "ready"]);
    assert_eq!(state(2), ["ready", "ready"]);
    assert_eq!(st.current_generation, 1);
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(human.contains("generation 2 stabilizing, "), "{human}");
    // Both generations answer requests while the window lasts.
    let mut seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    while h.status().is_some_and(|st| st.stabilizing.is_some()) {
        match get(&addr, "/") {
            Ok((200, body)) => {
                if let Some((_, g)) = parse_identity(&body) {
                    seen.insert(g);
                }
            }
            other => failures.push(format!("{other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [1, 2],
        "both generations served in the window"
    );
    let (code, out, err) = reload.join().unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("stable 2.0 s past READY=1"),
        "{out}{err}"
    );
    // Only now do the old workers drain.
    assert!(
        wait_until(Duration::from_secs(20), || old
            .iter()
            .all(|p| !pid_alive(*p))),
        "old workers drained after the window"
    );
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 2);
    assert_eq!(st.ready, 2);
    assert!(h.stop().success());
}

#[test]
fn the_crash_count_resets_after_min_uptime_and_an_outside_sigterm_is_no_crash() {
    let (mut h, _d) = start("st-count", 1, "1s", r#"{"version": "1.0.0"}"#);
    let pid_now = |h: &Handoff| pids_of(h, 1, "ready").first().copied();
    // Three kills in a row, each before the new worker has been up 1 s: a crash loop.
    let mut pid = pid_now(&h).unwrap();
    for n in 1..=3u32 {
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let st = h.wait_for(
            Duration::from_secs(20),
            |st| {
                st.workers
                    .iter()
                    .any(|w| w.pid != pid && w.state == "ready")
            },
            "a restarted worker",
        );
        assert_eq!(st.slots[0].crashes, n, "{:?}", st.slots);
        pid = st.workers.iter().find(|w| w.pid != pid).unwrap().pid;
    }
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(
        human.contains("slot 0: 3 crash(es) in a row (crash-looping)"),
        "{human}"
    );
    // This one lives: 1 s past READY=1 the count is gone, from status too.
    h.wait_for(
        Duration::from_secs(20),
        |st| st.slots[0].crashes == 0,
        "the crash count reset",
    );
    assert_eq!(pid_now(&h), Some(pid), "the same worker, no restart");
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    // (The table still says how the slot's last worker ended: `SIGKILL, crash`.)
    assert!(!human.contains("crash(es) in a row"), "{human}");
    // Someone sends the healthy worker SIGTERM: it stops cleanly, a new one starts, and the
    // slot shows no crash.
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let st = h.wait_for(
        Duration::from_secs(20),
        |st| {
            st.workers
                .iter()
                .any(|w| w.pid != pid && w.state == "ready")
        },
        "a new worker after the outside SIGTERM",
    );
    assert_eq!(st.slots[0].crashes, 0, "{:?}", st.slots);
    assert!(
        h.log()
            .contains("worker stopped from outside handoff (not a crash)"),
        "{}",
        h.log()
    );
    // A rollover drains the worker: handoff's own stop is no crash either.
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_until(Duration::from_secs(20), || h
        .status()
        .is_some_and(|st| st.workers.len() == 1)));
    assert_eq!(h.status().unwrap().slots[0].crashes, 0);
    assert!(h.stop().success());
}

#[test]
fn a_first_generation_crashing_right_after_ready_fails_the_start() {
    let d = TempDir::new("st-first-rel");
    let pkg = d.path().join("package.json");
    std::fs::write(&pkg, r#"{"version": "1.0.0", "crash_after_ready_ms": 200}"#).unwrap();
    let mut h = Handoff::start(
        "st-first",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--min-uptime",
                "2s",
            ]),
            worker: example_worker(),
            env: vec![("EXAMPLE_VERSION_FILE", pkg.display().to_string())],
            wait_ready: 0,
        },
    );
    let mut child = h.child.take().unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30)).expect("handoff exits");
    assert_eq!(status.code(), Some(1), "{}", h.log());
    assert!(
        h.log().contains("within the stability window"),
        "{}",
        h.log()
    );
}

#[test]
fn sigterm_to_handoff_during_the_window_abandons_the_rollover_and_drains_everything() {
    let (mut h, d) = start("st-stop", 1, "5s", r#"{"version": "1.0.0"}"#);
    release(d.path(), r#"{"version": "2.0.0"}"#);
    let control = h.control.clone();
    let reload = std::thread::spawn(move || {
        std::process::Command::new(handoff_bin())
            .args(["reload", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    });
    let st = h.wait_for(
        Duration::from_secs(20),
        |st| st.stabilizing.is_some(),
        "the stability window",
    );
    let pids: Vec<i32> = st.workers.iter().map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    assert!(h.stop().success(), "{}", h.log());
    let out = reload.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shutting down"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pids.iter().all(|p| !pid_alive(*p)));
}

#[test]
fn with_rolling_a_crash_during_the_first_slots_soak_rolls_back_and_no_old_worker_stopped() {
    // min_uptime 1 s would switch slot 0 before the crash at 1.5 s; the 4 s soak catches it.
    let d = TempDir::new("st-soak-rel");
    let pkg = d.path().join("package.json");
    std::fs::write(&pkg, r#"{"version": "1.0.0"}"#).unwrap();
    let mut h = Handoff::start(
        "st-soak",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--rolling",
                "--min-uptime",
                "1s",
                "--soak",
                "4s",
            ]),
            worker: example_worker(),
            env: vec![("EXAMPLE_VERSION_FILE", pkg.display().to_string())],
            wait_ready: 2,
        },
    );
    let old = pids_of(&h, 1, "ready");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    release(
        d.path(),
        r#"{"version": "2.0.0", "crash_after_ready_ms": 1500}"#,
    );
    let (code, out, err) = h.reload_cli(&[]);
    let said = format!("{out}{err}");
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("rolled back"), "{said}");
    std::thread::sleep(Duration::from_millis(300));
    let total = finish_load(&stop, clients);
    assert!(total.ok > 0);
    assert!(
        total.failures.is_empty(),
        "{:?}",
        &total.failures[..total.failures.len().min(5)]
    );
    assert_eq!(
        pids_of(&h, 1, "ready"),
        old,
        "no old worker was ever stopped"
    );
    assert!(h.log().contains("soak"), "{}", h.log());
    assert!(h.stop().success());
}
