//! One worker replaced without losing capacity, on real processes: `handoff restart-worker`,
//! the per-worker watchdog (a worker that hangs after READY=1), `max_memory` (a worker that
//! leaks) and `max_age`. In each, the replaced worker's slot keeps serving until its successor
//! is ready, and the requests the other workers answer never fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn start(tag: &str, workers: usize, extra: &[&str]) -> Handoff {
    let mut args = s(&["--listen", "127.0.0.1:0", "--workers", &workers.to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    Handoff::start(
        tag,
        Opts {
            args,
            worker: example_worker(),
            env: vec![],
            wait_ready: workers,
        },
    )
}

/// The pid serving each slot, by slot.
fn serving(h: &Handoff) -> Vec<i32> {
    let st = h.status().expect("status");
    let mut by_slot: Vec<(usize, i32)> = st
        .workers
        .iter()
        .filter(|w| w.state == "ready" && w.generation == st.current_generation)
        .map(|w| (w.slot, w.pid))
        .collect();
    by_slot.sort();
    by_slot.into_iter().map(|(_, p)| p).collect()
}

/// New-connection clients only: a hung worker accepts nothing, so every request they send
/// is answered by a live worker (a keep-alive connection held by the hung one would stall,
/// as it would with any server).
fn fresh_connection_load(
    addr: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<LoadStats>> {
    (0..clients)
        .map(|_| {
            let (addr, stop) = (addr.to_string(), stop.clone());
            thread::spawn(move || {
                let mut st = LoadStats::default();
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                    match get(&addr, "/") {
                        Ok((200, _)) => st.ok += 1,
                        Ok((code, body)) => st.failures.push(format!("HTTP {code}: {body}")),
                        Err(e) => st.failures.push(e),
                    }
                }
                st
            })
        })
        .collect()
}

fn no_failures(total: &LoadStats) {
    assert!(total.ok > 0, "the load ran");
    assert!(
        total.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        total.failures.len(),
        total.ok + total.failures.len(),
        &total.failures[..total.failures.len().min(5)]
    );
}

/// The pid that answered `body` (`pid=N ...`).
fn pid_in(body: &str) -> i32 {
    parse_identity(body).expect("identity").0
}

#[test]
fn restart_worker_replaces_one_slot_under_load_with_no_failed_request() {
    let mut h = start("hl-restart", 2, &[]);
    let before = serving(&h);
    assert_eq!(before.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let out = h.cli(&["restart-worker", "0"], &[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("worker 0 replaced: pid {} →", before[0])),
        "{said}"
    );
    thread::sleep(Duration::from_millis(300));
    let total = finish_load(&stop, clients);
    no_failures(&total);
    let after = serving(&h);
    assert_ne!(after[0], before[0], "slot 0 has a new worker");
    assert_eq!(after[1], before[1], "slot 1 was not touched");
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(before[0])),
        "the old worker drained and exited"
    );
    let st = h.status().unwrap();
    assert!(
        st.slots.iter().all(|s| s.crashes == 0),
        "not a crash: {:?}",
        st.slots
    );
    assert_eq!(st.current_generation, 1, "no new generation");
    // A slot that does not exist: refused, with the range.
    let out = h.cli(&["restart-worker", "7"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("numbered 0 to 1"), "{err}");
    assert!(h.stop().success());
}

#[test]
fn a_worker_that_hangs_after_ready_is_replaced_and_the_others_lose_no_request() {
    let mut h = start(
        "hl-watchdog",
        2,
        // Pings every 1.5 s: slack for a busy machine, where a 1 s watchdog flaked.
        &["--watchdog", "3s", "--drain-timeout", "2s"],
    );
    let before = serving(&h);
    // Each worker is told its own watchdog, never handoff's.
    for pid in &before {
        assert_eq!(
            process_env(*pid, "WATCHDOG_USEC").as_deref(),
            Some("3000000")
        );
        assert_eq!(process_env(*pid, "WATCHDOG_PID"), Some(pid.to_string()));
    }
    // Pinging workers stay: past two watchdog intervals, nothing replaced.
    thread::sleep(Duration::from_secs(7));
    assert_eq!(serving(&h), before, "{}", h.log());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = fresh_connection_load(&h.addr(), 3, stop.clone());
    let (code, body) = get(&h.addr(), "/hang").unwrap();
    assert_eq!(code, 200);
    let hung = pid_in(&body);
    let st = h.wait_for(
        Duration::from_secs(15),
        |st| {
            st.workers
                .iter()
                .filter(|w| w.state == "ready")
                .all(|w| w.pid != hung)
                && st.ready == 2
        },
        "the hung worker's replacement to take its slot",
    );
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(hung)),
        "the hung worker is SIGKILLed past the drain timeout"
    );
    thread::sleep(Duration::from_millis(300));
    let total = finish_load(&stop, clients);
    no_failures(&total);
    let log = h.log();
    assert!(log.contains("no WATCHDOG=1 for"), "{log}");
    assert!(
        st.slots.iter().any(|s| s
            .last_replacement
            .as_deref()
            .is_some_and(|m| m.contains(&format!("pid {hung} →")) && m.contains("watchdog"))),
        "{:?}",
        st.slots
    );
    assert!(h.stop().success());
}

#[test]
fn a_worker_past_max_memory_is_replaced_gracefully_with_no_failed_request() {
    let mut h = start("hl-memory", 2, &["--max-memory", "64M"]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    let (code, body) = get(&h.addr(), "/grow?mb=100").unwrap();
    assert_eq!(code, 200, "{body}");
    let grown = pid_in(&body);
    h.wait_for(
        Duration::from_secs(15),
        |st| {
            st.ready == 2
                && st
                    .workers
                    .iter()
                    .all(|w| w.pid != grown || w.state == "draining")
        },
        "the grown worker to be replaced",
    );
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(grown)),
        "it drained and exited"
    );
    thread::sleep(Duration::from_millis(300));
    let total = finish_load(&stop, clients);
    no_failures(&total);
    let log = h.log();
    assert!(log.contains("over max_memory 64.0 MiB"), "{log}");
    assert_eq!(h.status().unwrap().forced_kills, 0, "drained, not killed");
    assert!(h.stop().success());
}

#[test]
fn max_age_replaces_workers_one_at_a_time_and_never_leaves_a_slot_short() {
    let mut h = start("hl-age", 2, &["--max-age", "2s"]);
    let first = serving(&h);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    // Both are replaced within a few seconds; meanwhile status never shows a slot short.
    let t0 = Instant::now();
    let mut least_ready = usize::MAX;
    while t0.elapsed() < Duration::from_secs(15) {
        let st = h.status().unwrap();
        least_ready = least_ready.min(st.ready);
        let now = serving(&h);
        if now.len() == 2 && now.iter().all(|p| !first.contains(p)) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let now = serving(&h);
    assert!(
        now.iter().all(|p| !first.contains(p)),
        "both replaced: {first:?} → {now:?}\n{}",
        h.log()
    );
    assert_eq!(least_ready, 2, "no slot was ever short");
    let total = finish_load(&stop, clients);
    no_failures(&total);
    assert!(h.log().contains("older than max_age"), "{}", h.log());
    assert!(h.stop().success());
}

#[test]
fn the_example_workers_ping_their_watchdog_and_are_kept() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut workers = vec![
        ("rust", example_worker()),
        (
            "python",
            vec![
                python(),
                root.join("examples/python-worker/server.py")
                    .display()
                    .to_string(),
            ],
        ),
    ];
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
    {
        workers.push((
            "node",
            vec![
                "node".into(),
                root.join("examples/node-worker/server.js")
                    .display()
                    .to_string(),
            ],
        ));
    } else {
        eprintln!("SKIP node: not installed");
    }
    for (name, worker) in workers {
        let mut h = Handoff::start(
            &format!("hl-ping-{name}"),
            Opts {
                args: s(&[
                    "--listen",
                    "127.0.0.1:0",
                    // Pings come every 1.5 s: 1.5 s of slack for a busy machine.
                    "--watchdog",
                    "3s",
                    "--ready-timeout",
                    "20s",
                ]),
                worker,
                env: vec![],
                wait_ready: 1,
            },
        );
        let before = serving(&h);
        // Over two intervals: a worker that did not ping would have been replaced.
        thread::sleep(Duration::from_secs(7));
        let st = h.status().unwrap();
        assert_eq!(serving(&h), before, "{name}: replaced\n{}", h.log());
        let w = st.workers.iter().find(|w| w.pid == before[0]).unwrap();
        assert!(
            w.watchdog_ago_ms.is_some_and(|ms| ms < 3000),
            "{name} pings: {w:?}"
        );
        assert!(!h.log().contains("no WATCHDOG=1"), "{name}: {}", h.log());
        assert!(h.stop().success());
    }
}
