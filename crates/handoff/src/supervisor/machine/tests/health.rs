//! Replacing one serving worker without losing capacity: a new worker starts beside it and
//! takes the slot once ready; only then is the old one drained. `restart-worker`, the
//! per-worker watchdog, `max_age` and `max_memory` all go this way.

use super::*;

fn with(workers: usize, f: impl FnOnce(&mut Policy)) -> Policy {
    let mut p = policy(workers);
    f(&mut p);
    p
}

impl Harness {
    fn restart_worker(&mut self, waiter: WaiterId, slot: usize) -> Vec<Action> {
        self.send(Input::RestartWorker {
            waiter: Some(waiter),
            slot,
        })
    }

    fn ping(&mut self, pid: i32) -> Vec<Action> {
        self.say(
            pid,
            Message {
                watchdog: true,
                ..Message::default()
            },
        )
    }

    /// The pid of the worker serving `slot`.
    fn serving_pid(&self, slot: usize) -> i32 {
        let Occupant::Worker(id) = self.m.slots[slot].occupant else {
            panic!("slot {slot} has no worker");
        };
        self.m.workers[&id].pid.expect("pid")
    }
}

#[test]
fn restart_worker_drains_the_old_worker_only_once_the_new_one_is_ready() {
    let mut h = Harness::serving(policy(2));
    let a = h.restart_worker(1, 0);
    assert_eq!(spawned(&a), [0], "one new worker, for slot 0");
    assert!(
        signalled(&a, Signal::SIGTERM).is_empty(),
        "the old one serves on"
    );
    assert!(
        replies(&a).is_empty(),
        "the answer waits for the new worker"
    );
    assert_eq!(h.m.ready_count(), 2, "no capacity lost meanwhile");
    let new = *h.pids.keys().max().unwrap();
    let a = h.ready(new);
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [100],
        "the old one drains now"
    );
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(r.message.contains("pid 100 → pid 102"), "{}", r.message);
    assert_eq!(h.serving_pid(0), new);
    assert_eq!(h.serving_pid(1), 101, "the other slot is untouched");
    assert_eq!(h.m.slots[0].crashes, 0, "asked for: not a crash");
    // The drained worker's exit is no crash either, and nothing restarts.
    let a = h.exit_by(100, Signal::SIGTERM);
    assert!(spawned(&a).is_empty());
    assert_eq!(h.m.slots[0].crashes, 0);
    let st = h.m.status(h.now);
    assert!(
        st.slots[0]
            .last_replacement
            .as_deref()
            .is_some_and(|m| m.contains("restart-worker")),
        "{:?}",
        st.slots[0]
    );
}

#[test]
fn a_replacement_that_fails_leaves_the_old_worker_serving() {
    let mut h = Harness::serving(policy(1));
    h.restart_worker(1, 0);
    let a = h.exit(101, 1);
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.message.contains("keeps serving"), "{}", r.message);
    assert!(signalled(&a, Signal::SIGTERM).is_empty());
    assert!(
        spawned(&a).is_empty(),
        "no restart: the slot's worker never left"
    );
    assert_eq!(h.serving_pid(0), 100);
    assert_eq!(h.m.slots[0].crashes, 0);
    assert!(h.m.slots[0].incoming.is_none());
    // Not ready in time counts the same way.
    let mut h = Harness::serving(policy(1));
    h.restart_worker(2, 0);
    let a = h.after(Duration::from_secs(60));
    assert_eq!(outcome(&a, 2).outcome, Outcome::RolledBack);
    assert_eq!(signalled(&a, Signal::SIGTERM), [101], "the new one goes");
    assert_eq!(h.serving_pid(0), 100);
}

#[test]
fn restart_worker_refuses_what_it_cannot_do_and_says_why() {
    let mut h = Harness::serving(policy(2));
    let r = outcome(&h.restart_worker(1, 5), 1);
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.message.contains("numbered 0 to 1"), "{}", r.message);
    h.restart_worker(2, 0);
    let r = outcome(&h.restart_worker(3, 0), 3);
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(
        r.message.contains("already being replaced"),
        "{}",
        r.message
    );
    // During a rollover: it replaces every worker anyway.
    let mut h = Harness::serving(policy(2));
    h.reload(4);
    let r = outcome(&h.restart_worker(5, 1), 5);
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(
        r.message.contains("rollover to generation 2"),
        "{}",
        r.message
    );
    // A slot restarting after a crash.
    let mut h = Harness::serving(policy(1));
    h.exit(100, 1);
    let r = outcome(&h.restart_worker(6, 0), 6);
    assert!(r.message.contains("restarts in"), "{}", r.message);
}

#[test]
fn an_old_worker_that_dies_while_replaced_hands_the_slot_to_its_replacement() {
    let mut h = Harness::serving(policy(1));
    h.restart_worker(1, 0);
    let a = h.exit(100, 1);
    assert!(
        spawned(&a).is_empty(),
        "no third worker: the replacement is on its way"
    );
    assert_eq!(h.m.slots[0].crashes, 1, "a crash is a crash");
    let a = h.ready(101);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert!(signalled(&a, Signal::SIGTERM).is_empty());
    assert_eq!(h.serving_pid(0), 101);
    // And if the replacement then fails too, the slot restarts as after any crash.
    let mut h = Harness::serving(policy(1));
    h.restart_worker(2, 0);
    h.exit(100, 1);
    let a = h.exit(101, 1);
    assert_eq!(outcome(&a, 2).outcome, Outcome::RolledBack);
    assert!(matches!(h.m.slots[0].occupant, Occupant::Restarting { .. }));
    assert_eq!(spawned(&h.after(SEC)), [0]);
}

#[test]
fn a_worker_silent_past_its_watchdog_is_replaced_and_drained_once_the_new_one_is_ready() {
    let p = with(2, |p| p.watchdog = Some(Duration::from_secs(2)));
    let mut h = Harness::serving(p);
    let since = h.now;
    assert_eq!(h.m.next_deadline(), Some(since + 2 * SEC));
    // Slot 1 pings; slot 0 has hung.
    h.now += 1500 * MS;
    h.ping(101);
    let a = h.after(500 * MS);
    assert_eq!(spawned(&a), [0], "only the silent one is replaced");
    assert!(
        logs(&a, Level::Error)
            .iter()
            .any(|l| l.contains("no WATCHDOG=1 for 2")),
        "{a:?}"
    );
    assert!(
        signalled(&a, Signal::SIGTERM).is_empty(),
        "it keeps its slot until then"
    );
    assert_eq!(
        h.m.status(h.now).slots[0]
            .replacing
            .as_deref()
            .map(|r| r.contains("watchdog")),
        Some(true)
    );
    // No busy loop while the replacement starts: the silent worker is not due again.
    assert!(h.m.next_deadline().is_some_and(|d| d > h.now));
    assert!(
        h.m.status_line().contains("replacing w0 (watchdog)"),
        "{}",
        h.m.status_line()
    );
    let a = h.ready(102);
    assert_eq!(signalled(&a, Signal::SIGTERM), [100]);
    // The hung one does not finish: SIGKILL past the drain timeout, as any drain.
    let a = h.after(Duration::from_secs(10));
    assert!(a.iter().any(|x| matches!(
        x,
        Action::SignalGroup {
            pgid: 100,
            signal: Signal::SIGKILL
        }
    )));
    // Counted since start, but not as the last rollover's: no rollover drained it.
    let st = h.m.status(h.now);
    assert_eq!(st.forced_kills, 1);
    assert_eq!(st.last_rollover.map(|l| l.forced_kills), Some(0));
    assert!(
        !h.m.status_line().contains("FORCE-KILLED"),
        "{}",
        h.m.status_line()
    );
    // Nobody pinged for 10 s: slot 1 and slot 0's new worker are replaced in turn, and each
    // serves meanwhile.
    assert_eq!(spawned(&a), [0, 1]);
    assert_eq!(h.serving_pid(1), 101, "{:?}", h.m.status(h.now));
}

#[test]
fn pings_keep_a_worker_and_watchdog_trigger_replaces_it_at_once() {
    let p = with(1, |p| p.watchdog = Some(Duration::from_secs(2)));
    let mut h = Harness::serving(p);
    for _ in 0..5 {
        h.now += SEC;
        h.ping(100);
        assert!(spawned(&h.send(Input::Tick)).is_empty());
    }
    let a = h.say(
        100,
        Message {
            watchdog_trigger: true,
            ..Message::default()
        },
    );
    assert_eq!(spawned(&a), [0]);
    assert!(
        logs(&a, Level::Error)
            .iter()
            .any(|l| l.contains("WATCHDOG=trigger"))
    );
}

#[test]
fn without_a_watchdog_pings_and_triggers_change_nothing_and_nothing_wakes_handoff() {
    let mut h = Harness::serving(policy(2));
    assert_eq!(h.m.next_deadline(), None, "an idle handoff sleeps");
    h.ping(100);
    let a = h.say(
        101,
        Message {
            watchdog_trigger: true,
            ..Message::default()
        },
    );
    assert!(
        spawned(&a).is_empty(),
        "no watchdog: WATCHDOG=trigger means nothing"
    );
    let a = h.after(Duration::from_secs(3600));
    assert!(spawned(&a).is_empty());
}

#[test]
fn a_new_worker_silent_in_its_stability_window_rolls_the_reload_back() {
    let p = with(1, |p| {
        p.watchdog = Some(Duration::from_secs(2));
        p.min_uptime = Duration::from_secs(5);
    });
    let mut h = Harness::new(p);
    h.send(Input::Start);
    h.ready(100);
    for _ in 0..5 {
        h.now += SEC;
        h.ping(100);
        h.send(Input::Tick);
    }
    assert_eq!(h.m.current, 1);
    // The old worker pings throughout; the new one never does.
    h.reload(1);
    h.ready(101);
    h.now += SEC;
    h.ping(100);
    let a = h.after(SEC);
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.message.contains("no WATCHDOG=1"), "{}", r.message);
    assert_eq!(h.serving_pid(0), 100);
}

#[test]
fn max_age_replaces_one_worker_at_a_time() {
    let p = with(2, |p| p.max_age = Some(Duration::from_secs(3600)));
    let mut h = Harness::serving(p);
    assert_eq!(h.m.next_deadline(), Some(h.now + Duration::from_secs(3600)));
    let a = h.after(Duration::from_secs(3600));
    assert_eq!(spawned(&a), [0], "one at a time");
    assert!(
        logs(&a, Level::Info)
            .iter()
            .any(|l| l.contains("older than max_age"))
    );
    let a = h.ready(102);
    assert_eq!(signalled(&a, Signal::SIGTERM), [100]);
    // The next one is due already: it goes now, after the first.
    let a = h.send(Input::Tick);
    assert_eq!(spawned(&a), [1]);
    let a = h.ready(103);
    assert_eq!(signalled(&a, Signal::SIGTERM), [101]);
    // Both young again: once the old ones have drained, the next replacement is an hour
    // away.
    h.exit_by(100, Signal::SIGTERM);
    h.exit_by(101, Signal::SIGTERM);
    assert_eq!(h.m.next_deadline(), Some(h.now + Duration::from_secs(3600)));
}

#[test]
fn max_memory_samples_once_a_second_and_replaces_the_worker_over_it() {
    let p = with(2, |p| p.max_memory = Some(100 << 20));
    let mut h = Harness::serving(p);
    let a = h.send(Input::Tick);
    let asked = a.iter().find_map(|x| match x {
        Action::SampleUsage(w) => Some(w.clone()),
        _ => None,
    });
    let asked = asked.expect("a sample is asked for");
    assert_eq!(asked.len(), 2);
    assert_eq!(
        h.m.next_deadline(),
        None,
        "no second sample while one is out"
    );
    let (w0, w1) = (h.pids[&100], h.pids[&101]);
    let a = h.send(Input::Usage(vec![(w0, 300 << 20), (w1, 200 << 20)]));
    assert_eq!(
        spawned(&a),
        [0],
        "one at a time, never more than one slot short"
    );
    assert!(
        logs(&a, Level::Info)
            .iter()
            .any(|l| l.contains("over max_memory 100.0 MiB"))
    );
    assert_eq!(h.m.next_deadline(), Some(h.now + SAMPLE_EVERY));
    // While slot 0's replacement starts, slot 1 (over too) waits.
    let a = h.after(SAMPLE_EVERY);
    assert!(a.iter().any(|x| matches!(x, Action::SampleUsage(_))));
    let a = h.send(Input::Usage(vec![(w1, 200 << 20)]));
    assert!(spawned(&a).is_empty());
    h.ready(102);
    h.after(SAMPLE_EVERY);
    let a = h.send(Input::Usage(vec![
        (w1, 200 << 20),
        (h.pids[&102], 10 << 20),
    ]));
    assert_eq!(spawned(&a), [1]);
}

#[test]
fn a_failed_replacement_backs_off_instead_of_spinning() {
    let p = with(1, |p| p.watchdog = Some(Duration::from_secs(2)));
    let mut h = Harness::serving(p);
    let a = h.after(2 * SEC);
    assert_eq!(spawned(&a), [0]);
    let a = h.exit(101, 1);
    assert!(spawned(&a).is_empty());
    // The hung worker is overdue, but the next try waits out the backoff.
    let next = h.m.next_deadline().expect("a retry is due");
    assert!(next > h.now, "no deadline in the past (a busy loop)");
    assert_eq!(next, h.now + 200 * MS);
    let a = h.after(200 * MS);
    assert_eq!(spawned(&a), [0], "then it tries again");
}

#[test]
fn a_rollover_that_switches_a_slot_cancels_its_replacement() {
    let mut h = Harness::serving(policy(1));
    h.restart_worker(1, 0);
    // A reload queued by the operator... the rollover can start only with the slot's
    // replacement in flight if it came from the watchdog; here the reload arrives after.
    h.reload(2);
    let gen2 = *h.pids.keys().max().unwrap();
    assert_eq!(gen2, 102);
    let a = h.ready(gen2);
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(
        r.message.contains("replaced by generation 2"),
        "{}",
        r.message
    );
    let mut drained = signalled(&a, Signal::SIGTERM);
    drained.sort();
    assert_eq!(
        drained,
        [100, 101],
        "the old worker and the unneeded replacement"
    );
    assert!(h.m.slots[0].incoming.is_none());
}

#[test]
fn shutdown_abandons_a_replacement_and_answers_its_caller() {
    let mut h = Harness::serving(policy(1));
    h.restart_worker(1, 0);
    let a = h.send(Input::Shutdown {
        why: "SIGTERM".into(),
        code: 0,
    });
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Refused);
    let mut drained = signalled(&a, Signal::SIGTERM);
    drained.sort();
    assert_eq!(drained, [100, 101]);
    h.exit(100, 0);
    h.exit(101, 0);
    assert_eq!(h.m.exit_code(), Some(0));
}

/// A worker of the first generation that hangs or sends `WATCHDOG=trigger` inside the
/// stability window fails the start, as a crash there does. Before, the start "completed" as
/// `started with 2 of 2 ready: worker 0 sent WATCHDOG=trigger; the others restart with
/// backoff`: the worker that asked to be replaced kept its slot and served on (nothing
/// remembered the trigger), and a hung one was kept while a healthy starting one was drained.
#[test]
fn a_first_generation_worker_that_hangs_or_triggers_in_its_window_fails_the_start() {
    let p = with(2, |p| {
        p.watchdog = Some(Duration::from_secs(2));
        p.min_uptime = Duration::from_secs(5);
    });
    let mut h = Harness::new(p.clone());
    h.send(Input::Start);
    h.ready(100);
    h.ready(101);
    let a = h.say(
        100,
        Message {
            watchdog_trigger: true,
            ..Message::default()
        },
    );
    assert!(
        told_systemd(&a, &SystemdState::Stopping),
        "the start fails: {:?}",
        logs(&a, Level::Error)
    );
    let mut drained = signalled(&a, Signal::SIGTERM);
    drained.sort();
    assert_eq!(drained, [100, 101]);
    // Silent past the watchdog inside the window: the same.
    let mut h = Harness::new(p.clone());
    h.send(Input::Start);
    h.ready(100);
    h.ready(101);
    h.now += SEC;
    h.ping(101);
    let a = h.after(SEC);
    assert!(told_systemd(&a, &SystemdState::Stopping), "{a:?}");
    // Without a window, as after a crash there: the hung worker is not kept as "ready"
    // while the healthy one still starting is drained; the start fails.
    let p = with(2, |p| p.watchdog = Some(Duration::from_secs(2)));
    let mut h = Harness::new(p);
    h.send(Input::Start);
    h.ready(100);
    let a = h.after(2 * SEC);
    assert!(told_systemd(&a, &SystemdState::Stopping), "{a:?}");
    let mut drained = signalled(&a, Signal::SIGTERM);
    drained.sort();
    assert_eq!(drained, [100, 101]);
}

/// A worker that never pings (the app does not read `WATCHDOG_USEC`, or a wrapper makes
/// `WATCHDOG_PID` name another process): every replacement is as silent as the worker it
/// replaced. Before, the slot was replaced once per watchdog interval forever (64
/// replacements in 30 s with `--watchdog 1s` and 2 workers, an err line each); now the
/// replacements back off to one per 30 s, and the log says it never pinged.
#[test]
fn a_worker_that_never_pings_is_replaced_with_backoff_not_once_per_interval() {
    let p = with(1, |p| p.watchdog = Some(SEC));
    let mut h = Harness::serving(p);
    let mut replaced = 0;
    let mut said_never = false;
    for _ in 0..1200 {
        let a = h.after(100 * MS);
        said_never |= logs(&a, Level::Error)
            .iter()
            .any(|l| l.contains("never sent one since READY=1"));
        replaced += spawned(&a).len();
        for pid in h.pids_in("starting") {
            h.ready(pid);
        }
        for pid in h.pids_in("draining") {
            h.exit_by(pid, Signal::SIGTERM);
        }
    }
    assert!(said_never);
    assert!(
        replaced <= 15,
        "{replaced} replacements in 120 s of a worker that never pings"
    );
    assert!(replaced >= 5, "it is still replaced: {replaced}");
    // Capacity throughout: the slot always has its ready worker.
    assert_eq!(h.m.ready_count(), 1);
}

/// A hung worker replaced by the watchdog and SIGKILLed at the drain timeout counts in the
/// total of forced kills, not on the last rollover: no rollover drained it. Before, status
/// said `2 workers of that rollover were SIGKILLed` about the start, 30 s after it.
#[test]
fn a_replaced_worker_killed_at_the_drain_timeout_is_not_blamed_on_the_last_rollover() {
    let p = with(1, |p| p.watchdog = Some(2 * SEC));
    let mut h = Harness::serving(p);
    h.after(2 * SEC);
    h.ready(101);
    h.ping(101);
    h.after(Duration::from_secs(10));
    let st = h.m.status(h.now);
    assert_eq!(st.forced_kills, 1, "the kill is counted");
    assert_eq!(
        st.last_rollover.as_ref().map(|l| l.forced_kills),
        Some(0),
        "{:?}",
        st.last_rollover
    );
}

/// A replacement handoff itself could not start (out of fds, say) is `refused`, as a
/// rollover's is, not `rolled back`: the release was never tried. Before, `restart-worker`
/// under `prlimit --nofile=20` said "rolled back" about `Too many open files`.
#[test]
fn a_replacement_handoff_could_not_start_is_refused_not_rolled_back() {
    let mut h = Harness::serving(policy(1));
    h.fail_spawn = Some(0);
    h.fail_ours = true;
    let r = outcome(&h.restart_worker(1, 0), 1);
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert!(r.message.contains("keeps serving"), "{}", r.message);
    assert_eq!(h.serving_pid(0), 100);
    // The release's own failure (exec of a missing file) is still a rollback.
    h.fail_ours = false;
    let r = outcome(&h.restart_worker(2, 0), 2);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
}
