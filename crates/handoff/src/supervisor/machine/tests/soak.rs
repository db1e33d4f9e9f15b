//! `soak` with `--rolling`: the first new worker serves beside the old ones for the soak
//! (not only `min_uptime`) before the other slots follow; a crash or hang in it rolls back.

use super::*;

fn rolling_soak(workers: usize) -> Policy {
    Policy {
        rolling: true,
        soak: Duration::from_secs(30),
        ..windowed(workers)
    }
}

#[test]
fn the_first_slot_soaks_then_the_others_follow_with_the_stability_window() {
    let mut h = Harness::serving(rolling_soak(2));
    h.reload(1);
    let first = *h.pids.keys().max().unwrap();
    let a = h.ready(first);
    assert!(
        logs(&a, Level::Info).iter().any(|l| l.contains("soak")),
        "{a:?}"
    );
    assert!(
        h.m.status_line().contains("stabilizing (soak 30"),
        "{}",
        h.m.status_line()
    );
    // Past min_uptime (1 s) but inside the soak: nothing switched, nothing drained.
    let a = h.after(SEC);
    assert!(signalled(&a, Signal::SIGTERM).is_empty());
    assert!(spawned(&a).is_empty(), "slot 1 waits for the soak");
    let a = h.after(29 * SEC);
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [100],
        "slot 0's old worker drains now"
    );
    assert_eq!(spawned(&a), [1], "then slot 1 follows");
    // Slot 1 gets the plain window (1 s), not another soak.
    let second = *h.pids.keys().max().unwrap();
    h.ready(second);
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
}

#[test]
fn a_crash_during_the_soak_rolls_back_with_every_old_worker_serving() {
    let mut h = Harness::serving(rolling_soak(2));
    h.reload(1);
    let first = *h.pids.keys().max().unwrap();
    h.ready(first);
    h.now += Duration::from_secs(20);
    let a = h.exit(first, 1);
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(
        signalled(&a, Signal::SIGTERM).is_empty(),
        "no old worker was drained"
    );
    assert_eq!(h.m.status(h.now).ready, 2);
}

#[test]
fn without_rolling_soak_changes_nothing() {
    let p = Policy {
        soak: Duration::from_secs(30),
        ..windowed(2)
    };
    let mut h = Harness::serving(p);
    h.reload(1);
    for pid in h.pids_in("starting") {
        h.ready(pid);
    }
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok, "the 1 s window only");
}
