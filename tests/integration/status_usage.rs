//! `handoff status` as `pm2 list` shows it: each worker's process tree's memory and CPU time,
//! sampled when asked; each slot's restarts and how its last worker ended. Real processes.

use std::time::Duration;

use handoff_common::protocol::{ExitKind, StatusReport};

use crate::harness::*;

/// Workers that need no notify socket: ready 200 ms after start.
fn start(tag: &str, workers: usize, worker: Vec<String>) -> Handoff {
    let n = workers.to_string();
    Handoff::start(
        tag,
        Opts {
            args: s(&[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &n,
                "--ready",
                "delay:200ms",
            ]),
            worker,
            wait_ready: workers,
            ..Default::default()
        },
    )
}

fn sh(script: &str) -> Vec<String> {
    s(&["/bin/sh", "-c", script])
}

fn worker_of_slot(st: &StatusReport, slot: usize) -> &handoff_common::protocol::WorkerStatus {
    st.workers
        .iter()
        .find(|w| w.slot == slot && w.generation == st.current_generation)
        .expect("a worker in the slot")
}

const MIB: u64 = 1024 * 1024;

#[test]
fn a_worker_s_memory_includes_its_child_s() {
    // The worker (sh, exec'd into sleep) starts a child that allocates 50 MB, writes to every
    // page (so it is resident), and then waits.
    let py = python();
    let script = format!(
        "{py} -c 'b = bytearray(50 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\n\
         import time; time.sleep(600)' & exec sleep 600"
    );
    let mut h = start("usage-rss", 1, sh(&script));
    let st = h.wait_for(
        Duration::from_secs(20),
        |st| {
            worker_of_slot(st, 0)
                .rss_bytes
                .is_some_and(|b| b >= 50 * MIB)
        },
        "the worker's tree to hold the child's 50 MB",
    );
    let w = worker_of_slot(&st, 0);
    assert_eq!(w.processes, Some(2), "{w:?}");
    // The worker alone (sleep) is a few hundred KiB: the child is what counts.
    let alone = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap();
    let vm_rss_kib: u64 = alone
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(vm_rss_kib * 1024 < 10 * MIB, "{vm_rss_kib} KiB");
    // The human table shows it in MiB (`5x.yM`).
    let out = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    let row = out
        .lines()
        .find(|l| l.contains(&format!(" {} ", w.pid)))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.split_whitespace()
            .any(|c| c.strip_suffix('M').and_then(|m| m.parse::<f64>().ok()) >= Some(50.0)),
        "{out}"
    );
    assert!(out.contains("memory") && out.contains("restarts"), "{out}");
    assert!(h.stop().success());
}

#[test]
fn a_busy_worker_s_cpu_time_grows() {
    let mut h = start("usage-cpu", 1, sh("while :; do :; done"));
    let first = h.wait_for(
        Duration::from_secs(20),
        |st| worker_of_slot(st, 0).cpu_ms.is_some_and(|ms| ms >= 100),
        "some CPU time",
    );
    let cpu0 = worker_of_slot(&first, 0).cpu_ms.unwrap();
    h.wait_for(
        Duration::from_secs(20),
        |st| {
            worker_of_slot(st, 0)
                .cpu_ms
                .is_some_and(|ms| ms >= cpu0 + 200)
        },
        "the CPU time to grow",
    );
    // The idle sibling slot does not: a second worker that only sleeps.
    assert!(h.stop().success());
    let mut h = start("usage-idle", 1, sh("exec sleep 600"));
    std::thread::sleep(Duration::from_millis(300));
    let st = h.status().unwrap();
    assert!(worker_of_slot(&st, 0).cpu_ms.unwrap() < 100, "{st:?}");
    assert!(h.stop().success());
}

#[test]
fn a_kill_9_is_a_restart_and_a_crash_and_a_drain_is_neither() {
    let mut h = start("usage-restarts", 2, sh("exec sleep 600"));
    let st = h.status().unwrap();
    assert!(
        st.slots
            .iter()
            .all(|s| s.restarts == 0 && s.last_exit.is_none())
    );
    let victim = worker_of_slot(&st, 1).pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| st.slots[1].restarts == 1 && st.ready == 2,
        "slot 1 restarted",
    );
    let e = st.slots[1].last_exit.as_ref().expect("a last exit");
    assert_eq!((e.pid, e.kind), (victim, ExitKind::Crash));
    assert_eq!(e.status, "was killed by SIGKILL");
    assert_eq!(st.slots[1].crashes, 1);
    assert_eq!((st.slots[0].restarts, st.slots[0].crashes), (0, 0));
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(human.contains("SIGKILL, crash, "), "{human}");
    // A reload drains both old workers: no restart, no crash, and the last exit says why.
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{err}");
    let st = h.wait_for(
        Duration::from_secs(10),
        |st| {
            st.slots.iter().all(|s| {
                s.last_exit
                    .as_ref()
                    .is_some_and(|e| e.kind == ExitKind::Drained)
            })
        },
        "both old workers drained",
    );
    assert_eq!((st.slots[0].restarts, st.slots[0].crashes), (0, 0));
    assert_eq!((st.slots[1].restarts, st.slots[1].crashes), (1, 1));
    for s in &st.slots {
        let e = s.last_exit.as_ref().unwrap();
        assert_eq!(e.drained_because.as_deref(), Some("replaced"), "{e:?}");
        assert_eq!(e.generation, 1);
    }
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(human.contains("drained (replaced)"), "{human}");
    assert!(h.stop().success());
}

#[test]
fn status_json_carries_the_new_fields() {
    let mut h = start("usage-json", 2, sh("exec sleep 600"));
    let out = h.cli(&["status"], &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for w in v["workers"].as_array().unwrap() {
        for key in ["rss_bytes", "cpu_ms", "processes", "age_ms", "pid", "state"] {
            assert!(w.get(key).is_some_and(|x| !x.is_null()), "{key}: {w}");
        }
    }
    for s in v["slots"].as_array().unwrap() {
        assert!(s["restarts"].is_u64() && s["crashes"].is_u64(), "{s}");
        assert!(s.get("last_exit").is_some(), "{s}");
    }
    assert!(
        v["status_line"].as_str().unwrap().contains("2/2 ready"),
        "{v}"
    );
    assert!(h.stop().success());
}
