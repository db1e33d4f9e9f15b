//! `Machine::export` / `Machine::import`: what a `handoff reexec` carries over, with the
//! clock of the new image unrelated to the old one's.

use super::*;

/// Exports at the harness's `now`, imports at `now + shift` (as if the new image's clock
/// read differently), and continues the harness there.
fn carry_over(h: &mut Harness, shift: Duration) {
    let state = h.m.export(h.now).expect("exports");
    // Through text, as it crosses the exec.
    let text = serde_json::to_string(&state).unwrap();
    h.now += shift;
    h.m = Machine::import(serde_json::from_str(&text).unwrap(), h.now).expect("imports");
}

#[test]
fn deadlines_are_carried_as_time_left() {
    // A draining worker (deadline in 10 s) and a restart backoff.
    let mut h = Harness::serving(policy(2));
    let old = h.pids_in("ready");
    h.reload(1);
    for pid in h.pids_in("starting") {
        h.ready(pid);
    }
    assert_eq!(h.pids_in("draining"), old);
    let serving = h.pids_in("ready");
    h.exit(serving[0], 1);
    h.after(3 * SEC);
    let before = h.m.status(h.now);
    let due = h.m.next_deadline().unwrap() - h.now;
    carry_over(&mut h, Duration::from_secs(1000));
    let after = h.m.status(h.now);
    assert_eq!(
        h.m.next_deadline().unwrap() - h.now,
        due,
        "the next deadline is as far away as before the export"
    );
    assert_eq!(after.workers, before.workers);
    assert_eq!(after.slots, before.slots);
    assert_eq!(after.generations, before.generations);
    assert_eq!(after.last_rollover, before.last_rollover);
    assert_eq!(after.settings, before.settings);
    assert_eq!(after.uptime_ms, before.uptime_ms);
    // The drain deadline still fires 10 s after the switch (7 s from here): SIGKILL.
    let actions = h.after(7 * SEC);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::SignalGroup {
                signal: Signal::SIGKILL,
                ..
            }
        )),
        "{actions:?}"
    );
}

#[test]
fn an_idle_machine_is_what_a_reexec_waits_for() {
    let mut h = Harness::serving(policy(1));
    assert!(h.m.idle());
    h.reload(1);
    assert!(!h.m.idle(), "a rollover runs");
    for pid in h.pids_in("starting") {
        h.ready(pid);
    }
    assert!(h.m.idle(), "the rollover ended; the old worker drains");
    assert_eq!(h.pids_in("draining").len(), 1);
    h.send(Input::Shutdown {
        why: "test".into(),
        code: 0,
    });
    assert!(!h.m.idle(), "shutting down");
}

#[test]
fn a_carried_over_machine_rolls_over_and_back() {
    let mut h = Harness::serving(policy(2));
    carry_over(&mut h, Duration::from_secs(5));
    let first = h.pids_in("ready");
    h.reload(1);
    for pid in h.pids_in("starting") {
        h.ready(pid);
    }
    assert_eq!(h.m.current, 2);
    carry_over(&mut h, Duration::ZERO);
    h.reload(2);
    let new = h.pids_in("starting");
    h.exit(new[0], 3);
    assert_eq!(h.m.current, 2, "rolled back to generation 2");
    assert!(first.iter().all(|p| !h.pids_in("ready").contains(p)));
    assert_eq!(h.pids_in("ready").len(), 2);
}

#[test]
fn worker_health_is_carried_over_and_memory_sampling_resumes() {
    // A hung worker being replaced (the watchdog's replacement starting), pings, and a
    // memory sample that was out at the exec.
    let mut p = policy(2);
    p.watchdog = Some(Duration::from_secs(2));
    p.max_memory = Some(100 << 20);
    let mut h = Harness::serving(p);
    let a = h.send(Input::Tick);
    assert!(
        a.iter().any(|x| matches!(x, Action::SampleUsage(_))),
        "a sample is out"
    );
    h.now += SEC;
    h.say(
        101,
        Message {
            watchdog: true,
            ..Message::default()
        },
    );
    let a = h.after(SEC);
    assert_eq!(spawned(&a), [0], "slot 0's silent worker is being replaced");
    let before = h.m.status(h.now);
    assert!(!h.m.idle() || before.slots[0].replacing.is_some());
    carry_over(&mut h, Duration::from_secs(500));
    let after = h.m.status(h.now);
    assert_eq!(
        after.slots, before.slots,
        "the replacement and its reason survive"
    );
    assert_eq!(after.workers, before.workers, "last pings survive");
    // The sample asked for before the exec is never answered: the new image asks again.
    let a = h.send(Input::Tick);
    assert!(
        a.iter().any(|x| matches!(x, Action::SampleUsage(_))),
        "{a:?}"
    );
    // The replacement finishes after the exec: the old worker drains then.
    let new = *h.pids.keys().max().unwrap();
    let a = h.ready(new);
    assert_eq!(signalled(&a, Signal::SIGTERM), [100]);
}

#[test]
fn a_restart_worker_caller_keeps_a_reexec_waiting() {
    let mut h = Harness::serving(policy(1));
    assert!(h.m.idle());
    h.send(Input::RestartWorker {
        waiter: Some(1),
        slot: 0,
    });
    assert!(!h.m.idle(), "its answer is a connection an exec would lose");
    h.ready(101);
    assert!(h.m.idle());
}
