//! Rollovers: under load, rolled back, drained, rolling, coalesced.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use handoff_common::protocol::{self as control, Outcome, Request, Response};

use crate::harness::*;

#[test]
fn twenty_rollovers_under_load_fail_no_request() {
    let mut h = Handoff::start(
        "load",
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--drain-timeout",
                "5s",
            ]),
            worker: example_worker(),
            wait_ready: 2,
            ..Default::default()
        },
    );
    let addr = h.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&addr, 4, stop.clone());
    thread::sleep(Duration::from_millis(200));
    let mut generations = Vec::new();
    for _ in 0..20 {
        let (code, out, err) = h.reload_cli(&[]);
        assert_eq!(code, 0, "reload failed: {out} {err}");
        let generation = h.status().unwrap().current_generation;
        generations.push(generation);
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(200));
    let total = finish_load(&stop, clients);
    assert_eq!(generations, (2..=21).collect::<Vec<u64>>());
    let log = h.log();
    let ready = ready_pids(&log);
    let never_ready: Vec<_> = total.seen.keys().filter(|p| !ready.contains(p)).collect();
    eprintln!(
        "load test: {} requests ok, {} failed, {} worker pids answered, generations {:?}..{:?}",
        total.ok,
        total.failures.len(),
        total.seen.len(),
        total.seen.values().min(),
        total.seen.values().max()
    );
    assert!(
        total.failures.is_empty(),
        "failed requests: {:?}",
        &total.failures[..total.failures.len().min(10)]
    );
    assert!(
        never_ready.is_empty(),
        "answers from workers that never reported ready: {never_ready:?}"
    );
    assert!(
        total.ok > 200,
        "too little traffic to mean anything: {}",
        total.ok
    );
    assert!(
        total.seen.values().max() == Some(&21),
        "the last generation never answered"
    );
    assert!(h.stop().success());
}

fn fixture_handoff(tag: &str, args: &[&str], mode: &str) -> Handoff {
    fixture_handoff_env(tag, args, mode, vec![])
}

/// handoff running fixture workers whose behaviour is read from a mode file (see [`release`]).
fn fixture_handoff_env(
    tag: &str,
    args: &[&str],
    mode: &str,
    mut env: Vec<(&str, String)>,
) -> Handoff {
    let dir = TempDir::new(&format!("{tag}-mode"));
    let f = dir.path().join("mode");
    std::fs::write(&f, mode).unwrap();
    let mut a = s(&["--listen", "127.0.0.1:0"]);
    a.extend(s(args));
    let workers = args
        .iter()
        .position(|x| *x == "--workers")
        .map(|i| args[i + 1].parse().unwrap())
        .unwrap_or(1);
    env.push(("FIXTURE_MODE_FILE", f.display().to_string()));
    let mut h = Handoff::start(
        tag,
        Opts {
            args: a,
            worker: fixture(),
            env,
            wait_ready: workers,
        },
    );
    h.keep.push(dir);
    h
}

/// Rewrites what the next fixture workers started will do, as a new release would.
fn release(h: &Handoff, mode: &str) {
    std::fs::write(h.keep[0].path().join("mode"), mode).unwrap();
}

#[test]
fn crash_at_start_is_rolled_back_with_the_reason() {
    let mut h = fixture_handoff("crash", &["--workers", "2"], "ready");
    let before: HashSet<i32> = h.status().unwrap().workers.iter().map(|w| w.pid).collect();
    release(&h, "crash");
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "reload of a crashing release must fail: {out}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        err.contains("exited with status 3"),
        "exit status missing: {err}"
    );
    assert!(
        err.contains("cannot open database"),
        "last STATUS= missing: {err}"
    );
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 1);
    let serving: HashSet<i32> = st
        .workers
        .iter()
        .filter(|w| w.generation == 1 && w.state == "ready")
        .map(|w| w.pid)
        .collect();
    assert_eq!(
        serving, before,
        "the old generation must keep serving, untouched"
    );
    let last = st.last_rollover.unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    // The next good release works.
    release(&h, "ready");
    assert_eq!(h.reload_cli(&[]).0, 0);
    assert!(h.stop().success());
}

#[test]
fn never_ready_is_rolled_back_after_the_ready_timeout() {
    let mut h = fixture_handoff(
        "neverready",
        &["--ready-timeout", "700ms", "--drain-timeout", "2s"],
        "ready",
    );
    release(&h, "never-ready");
    let t0 = Instant::now();
    let (code, _, err) = h.reload_cli(&[]);
    let took = t0.elapsed();
    assert_eq!(code, 1);
    assert!(err.contains("not ready within 700 ms"), "{err}");
    assert!(
        err.contains("still warming up"),
        "last STATUS= missing: {err}"
    );
    assert!(
        took >= Duration::from_millis(650),
        "rolled back before the timeout: {took:?}"
    );
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 1);
    assert_eq!(st.ready, 1);
    // The never-ready worker is drained away, not left running.
    h.wait_for(
        Duration::from_secs(5),
        |st| st.workers.iter().all(|w| w.generation == 1),
        "new generation gone",
    );
    assert!(h.stop().success());
}

#[test]
fn extend_timeout_usec_gives_a_slow_worker_more_time() {
    // The worker asks for 2 × 600 ms with EXTEND_TIMEOUT_USEC=, then is ready after 600 ms:
    // past the 300 ms ready timeout, within the extension.
    let mut h = fixture_handoff_env(
        "extend",
        &["--ready-timeout", "300ms"],
        "ready",
        vec![("FIXTURE_MS", "600".into())],
    );
    release(&h, "extend");
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out}{err}");
    // Without the extension the same worker is rolled back.
    release(&h, "never-ready");
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(h.stop().success());
}

#[test]
fn drain_timeout_kills_the_worker_and_runs_the_hook() {
    let dir = TempDir::new("hookout");
    let hook_out = dir.path().join("hook.txt");
    let hook = format!(
        "echo \"$HANDOFF_EVENT $HANDOFF_WORKER_PID $HANDOFF_GENERATION\" > {}",
        hook_out.display()
    );
    let mut h = fixture_handoff(
        "draintimeout",
        &["--drain-timeout", "400ms", "--on-drain-timeout", &hook],
        "ignore-term",
    );
    let stubborn = h.status().unwrap().workers[0].pid;
    release(&h, "ready");
    assert_eq!(h.reload_cli(&[]).0, 0);
    assert!(
        wait_until(Duration::from_secs(5), || hook_out.exists()),
        "hook did not run; log:\n{}",
        h.log()
    );
    thread::sleep(Duration::from_millis(50));
    let said = std::fs::read_to_string(&hook_out).unwrap();
    assert_eq!(said.trim(), format!("drain-timeout {stubborn} 1"));
    assert!(
        wait_until(Duration::from_secs(2), || !pid_alive(stubborn)),
        "stubborn worker still alive"
    );
    assert!(h.log().contains("ALERT"), "no alert in the log");
    assert!(h.stop().success());
}

#[test]
fn rolling_mode_never_drops_below_n_minus_1_ready() {
    let n = 3;
    let mut h = Handoff::start(
        "rolling",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--workers", "3", "--rolling"]),
            worker: example_worker(),
            env: vec![("EXAMPLE_STARTUP_MS", "150".into())],
            wait_ready: n,
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples, control) = (stop.clone(), samples.clone(), h.control.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Response::Status(st)) = control::request(&control, &Request::Status, None)
                {
                    let starting = st.workers.iter().filter(|w| w.state == "starting").count();
                    samples.lock().unwrap().push((
                        st.ready,
                        starting,
                        st.rolling_over_to.is_some(),
                    ));
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for _ in 0..2 {
        let (code, out, err) = h.reload_cli(&[]);
        assert_eq!(code, 0, "{out}{err}");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap();
    let during: Vec<_> = samples.iter().filter(|s| s.2).collect();
    assert!(
        during.len() >= 10,
        "too few samples during rollovers: {}",
        during.len()
    );
    let min_ready = during.iter().map(|s| s.0).min().unwrap();
    let max_starting = during.iter().map(|s| s.1).max().unwrap();
    eprintln!(
        "rolling: {} samples during rollovers, min ready {min_ready}, max starting {max_starting}",
        during.len()
    );
    assert!(min_ready >= n - 1, "ready dropped to {min_ready}");
    assert_eq!(
        max_starting, 1,
        "rolling mode must start one worker at a time"
    );
    assert_eq!(h.status().unwrap().current_generation, 3);
    assert!(h.stop().success());
}

#[test]
fn a_storm_of_50_reloads_coalesces_and_every_caller_is_answered() {
    let mut h = Handoff::start(
        "storm",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--workers", "2"]),
            worker: fixture(),
            env: vec![("FIXTURE_READY_DELAY_MS", "150".into())],
            wait_ready: 2,
        },
    );
    let barrier = Arc::new(Barrier::new(50));
    let t0 = Instant::now();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (barrier, control) = (barrier.clone(), h.control.clone());
            thread::spawn(move || {
                barrier.wait();
                control::request(&control, &Request::Reload { if_changed: false }, None)
            })
        })
        .collect();
    let mut gens = Vec::new();
    for c in callers {
        match c.join().unwrap() {
            Ok(Response::Reload(r)) => {
                assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
                gens.push(r.generation);
            }
            other => panic!("caller not answered properly: {other:?}"),
        }
    }
    let took = t0.elapsed();
    let st = h.status().unwrap();
    eprintln!(
        "storm: 50 reloads answered in {took:?}, {} rollovers",
        st.current_generation - 1
    );
    assert!(took < Duration::from_secs(10));
    assert!(gens.iter().all(|g| *g >= 2));
    // One rollover started by the first request and one queued for all the others.
    assert!(
        st.current_generation <= 4,
        "50 reloads caused {} rollovers",
        st.current_generation - 1
    );
    assert!(h.stop().success());
}

#[test]
fn sighup_rolls_over_too() {
    let mut h = fixture_handoff("sighup", &[], "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    h.wait_for(
        Duration::from_secs(5),
        |st| st.current_generation == 2 && st.ready == 1,
        "generation 2 after SIGHUP",
    );
    assert!(h.stop().success());
}

#[test]
fn delay_readiness_for_workers_that_cannot_notify() {
    let mut h = fixture_handoff(
        "delay",
        &["--ready", "delay:300ms", "--ready-timeout", "5s"],
        "never-ready",
    );
    let t0 = Instant::now();
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        t0.elapsed() >= Duration::from_millis(280),
        "ready before the delay: {:?}",
        t0.elapsed()
    );
    assert!(h.stop().success());
}

#[test]
fn reload_if_changed_rolls_over_once_per_release() {
    let dir = TempDir::new("pkg");
    let pkg = dir.path().join("package.json");
    std::fs::write(&pkg, r#"{"name":"app","version":"1.0.0"}"#).unwrap();
    let mut h = fixture_handoff(
        "ifchanged",
        &["--version-file", pkg.to_str().unwrap()],
        "ready",
    );
    let (code, out, _) = h.reload_cli(&["--if-changed"]);
    assert_eq!(code, 0);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(h.status().unwrap().current_generation, 1);
    std::fs::write(&pkg, r#"{"name":"app","version":"1.0.1"}"#).unwrap();
    assert_eq!(h.reload_cli(&["--if-changed"]).0, 0);
    assert_eq!(h.reload_cli(&["--if-changed"]).0, 0);
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 2, "one release, one rollover");
    let g = st.generations.iter().find(|g| g.number == 2).unwrap();
    assert_eq!(
        g.version.as_ref().unwrap().version.as_deref(),
        Some("1.0.1")
    );
    // A release that fails is not tried again by --if-changed (a plain reload still does).
    let f = h.keep[0].path().join("mode");
    std::fs::write(&pkg, r#"{"name":"app","version":"2.0.0-broken"}"#).unwrap();
    std::fs::write(&f, "crash").unwrap();
    let (code, _, err) = h.reload_cli(&["--if-changed"]);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = h.reload_cli(&["--if-changed"]);
    assert_eq!(code, 0);
    assert!(out.contains("rolled back; not trying it again"), "{out}");
    assert_eq!(
        h.reload_cli(&[]).0,
        1,
        "a plain reload retries (and fails again)"
    );
    std::fs::write(&f, "ready").unwrap();
    std::fs::write(&pkg, r#"{"name":"app","version":"2.0.1"}"#).unwrap();
    assert_eq!(h.reload_cli(&["--if-changed"]).0, 0);
    let st = h.status().unwrap();
    let g = st
        .generations
        .iter()
        .find(|g| g.number == st.current_generation)
        .unwrap();
    assert_eq!(
        g.version.as_ref().unwrap().version.as_deref(),
        Some("2.0.1")
    );
    // Half-written JSON never triggers.
    let serving = h.status().unwrap().current_generation;
    std::fs::write(&pkg, r#"{"name":"app","vers"#).unwrap();
    let (code, _, err) = h.reload_cli(&["--if-changed"]);
    assert_eq!(code, 1);
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(h.status().unwrap().current_generation, serving);
    assert!(h.stop().success());
}

#[test]
fn shutdown_lets_an_in_flight_request_finish() {
    let mut h = Handoff::start(
        "shutdown",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--drain-timeout", "5s"]),
            worker: example_worker(),
            ..Default::default()
        },
    );
    let addr = h.addr();
    let slow = thread::spawn(move || get(&addr, "/slow?ms=800"));
    thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let status = h.stop();
    assert!(status.success(), "handoff exit {status:?}");
    let res = slow.join().unwrap();
    assert!(
        matches!(&res, Ok((200, b)) if b.contains("slow=800ms")),
        "{res:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "handoff did not wait for the drain"
    );
}

#[test]
fn a_slow_request_survives_a_rollover() {
    let mut h = Handoff::start(
        "slowroll",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--drain-timeout", "5s"]),
            worker: example_worker(),
            ..Default::default()
        },
    );
    let addr = h.addr();
    let slow = thread::spawn(move || get(&addr, "/slow?ms=1000"));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(h.reload_cli(&[]).0, 0);
    let res = slow.join().unwrap();
    let (code, body) = res.expect("slow request");
    assert_eq!(code, 200);
    assert!(
        body.contains("gen=1"),
        "served by the old generation while it drained: {body}"
    );
    assert!(h.stop().success());
}

#[test]
fn supervision_restarts_a_crashed_worker_with_backoff() {
    let mut h = fixture_handoff("supervise", &["--workers", "2"], "ready");
    let victim = h.status().unwrap().workers[0].clone();
    release(&h, "crash"); // restarts will crash too: a crash loop
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| st.slots[victim.slot].crashes >= 4,
        "crash loop observed",
    );
    let delay = st.slots[victim.slot].restart_in_ms;
    eprintln!(
        "after {} crashes: next restart in {delay:?} ms",
        st.slots[victim.slot].crashes
    );
    // The backoff doubles: after 4 crashes the delay is 800 ms (minus time already waited).
    let slot = victim.slot;
    assert!(
        h.log()
            .contains(&format!("restarting worker {slot} in 800 ms"))
            || h.log()
                .contains(&format!("restarting worker {slot} in 1.6 s")),
        "no growing backoff in log:\n{}",
        h.log()
    );
    // The other slot keeps serving through it all.
    assert!(
        st.workers
            .iter()
            .any(|w| w.slot != victim.slot && w.state == "ready")
    );
    // A good release heals the slot.
    release(&h, "ready");
    h.wait_for(Duration::from_secs(10), |st| st.ready == 2, "slot healed");
    assert!(h.stop().success());
}
