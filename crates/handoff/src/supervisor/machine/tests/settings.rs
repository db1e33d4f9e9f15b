//! Settings per generation: what a reload of the config file and `scale` change, and what a
//! failed rollover leaves in force.

use super::*;

impl Harness {
    fn reload_with(&mut self, waiter: WaiterId, settings: Policy) -> Vec<Action> {
        self.send(Input::ReloadConfig {
            waiter: Some(waiter),
            if_changed: false,
            config: Ok(Box::new(settings)),
            restart_needed: vec![],
        })
    }

    fn ready_all_starting(&mut self) -> Vec<Action> {
        let mut all = Vec::new();
        for pid in self.pids_in("starting") {
            all.extend(self.ready(pid));
        }
        all
    }
}

fn with(workers: usize, f: impl FnOnce(&mut Policy)) -> Policy {
    let mut p = policy(workers);
    f(&mut p);
    p
}

#[test]
fn a_reload_with_more_workers_scales_up_and_one_with_fewer_scales_down() {
    let mut h = Harness::serving(policy(2));
    let a = h.reload_with(1, policy(3));
    assert_eq!(spawned(&a), [0, 1, 2]);
    let a = h.ready_all_starting();
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(
        signalled(&a, Signal::SIGTERM).len(),
        2,
        "both old workers drain"
    );
    let st = h.m.status(h.now);
    assert_eq!((st.workers_wanted, st.ready), (3, 3));
    assert_eq!(st.settings.unwrap().workers, 3);

    let a = h.reload_with(2, policy(1));
    assert_eq!(spawned(&a), [0], "the new generation has one slot");
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    assert_eq!(
        signalled(&a, Signal::SIGTERM).len(),
        3,
        "slot 0's old worker is replaced, slots 1 and 2 go"
    );
    let st = h.m.status(h.now);
    assert_eq!((st.workers_wanted, st.ready), (1, 1));
    // Generation 1's two (never reaped here) and generation 2's three.
    assert_eq!(h.pids_in("draining").len(), 5);
}

#[test]
fn rolling_scales_slot_by_slot_and_drops_the_extra_slots_at_the_end() {
    let rolling = |n| with(n, |p| p.rolling = true);
    let mut h = Harness::serving(rolling(2));
    let a = h.reload_with(1, rolling(3));
    assert_eq!(spawned(&a), [0]);
    let a = h.ready_all_starting();
    assert_eq!(spawned(&a), [1]);
    let a = h.ready_all_starting();
    assert_eq!(spawned(&a), [2]);
    assert_eq!(
        h.m.status(h.now).workers_wanted,
        2,
        "slot 2 exists once it switches"
    );
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(h.m.status(h.now).workers_wanted, 3);

    let a = h.reload_with(2, rolling(1));
    assert_eq!(spawned(&a), [0]);
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    assert_eq!(signalled(&a, Signal::SIGTERM).len(), 3);
    assert_eq!(h.m.status(h.now).workers_wanted, 1);
}

#[test]
fn a_refused_config_file_changes_nothing_and_says_why() {
    let mut h = Harness::serving(policy(2));
    let a = h.send(Input::ReloadConfig {
        waiter: Some(1),
        if_changed: false,
        config: Err("/etc/handoff/app.toml:3: key `workers`: worker count 0 out of range".into()),
        restart_needed: vec![],
    });
    assert!(spawned(&a).is_empty());
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(
        r.message.contains("app.toml:3: key `workers`"),
        "{}",
        r.message
    );
    assert!(r.message.contains("nothing changed"), "{}", r.message);
    assert_eq!(r.generation, 1);
    assert_eq!(h.m.in_force(), &policy(2));
    assert!(!logs(&a, Level::Error).is_empty());
    // The next plain reload runs with the settings in force.
    let a = h.reload(2);
    assert_eq!(spawned(&a), [0, 1]);
}

#[test]
fn a_rolled_back_reload_keeps_the_old_settings_and_old_workers_restart_by_them() {
    let old = with(2, |p| p.command = vec!["old".into()]);
    let mut h = Harness::serving(old.clone());
    let new = with(3, |p| {
        p.command = vec!["new".into()];
        p.environment = vec![("MODE".into(), "broken".into())];
    });
    let a = h.reload_with(1, new.clone());
    assert_eq!(spawned(&a), [0, 1, 2]);
    assert_eq!(
        h.m.settings_of(2),
        &new,
        "the new generation's workers start by its settings"
    );
    let first_new = h.pids_in("starting")[0];
    let a = h.exit(first_new, 3);
    assert_eq!(outcome(&a, 1).outcome, Outcome::RolledBack);
    assert_eq!(h.m.in_force(), &old);
    let st = h.m.status(h.now);
    assert_eq!(st.current_generation, 1);
    assert_eq!(st.settings.unwrap().command, ["old"]);
    assert_eq!(st.workers_wanted, 2);
    // An old worker that crashes now comes back as generation 1, with generation 1's command.
    let a = h.exit(100, 1);
    assert!(spawned(&a).is_empty());
    let a = h.after(RESTART_BASE);
    let gens: Vec<u64> = a
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect();
    assert_eq!(gens, [1]);
    assert_eq!(h.m.settings_of(1).command, ["old"]);
}

#[test]
fn each_worker_is_judged_and_drained_by_its_own_generations_settings() {
    let mut h = Harness::serving(policy(1));
    let new = with(1, |p| {
        p.drain_signal = Signal::SIGINT;
        p.ready_timeout = Duration::from_secs(5);
    });
    h.reload_with(1, new.clone());
    // The new worker's ready deadline is the new 5 s, not the old 60 s.
    let a = h.after(5 * Duration::from_secs(1));
    assert_eq!(outcome(&a, 1).outcome, Outcome::RolledBack);
    assert_eq!(
        signalled(&a, Signal::SIGINT).len(),
        1,
        "the new worker drains by its own signal"
    );
    let a = h.reload_with(2, new);
    assert!(!spawned(&a).is_empty());
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [100],
        "the old worker drains by the signal its generation was started with"
    );
}

#[test]
fn if_changed_counts_new_settings_as_a_change_and_same_settings_as_none() {
    let p = with(2, |p| p.version_file = true);
    let mut h = Harness::serving(p.clone());
    let reload = |h: &mut Harness, waiter, settings: Policy| {
        h.send(Input::ReloadConfig {
            waiter: Some(waiter),
            if_changed: true,
            config: Ok(Box::new(settings)),
            restart_needed: vec![],
        })
    };
    let a = reload(&mut h, 1, p.clone());
    assert_eq!(outcome(&a, 1).outcome, Outcome::Unchanged);
    assert!(spawned(&a).is_empty());
    let more = with(3, |q| q.version_file = true);
    let a = reload(&mut h, 2, more.clone());
    assert_eq!(
        spawned(&a),
        [0, 1, 2],
        "same release, new settings: a rollover"
    );
    // Its new worker fails: the same release with the same settings is not tried again...
    let a = h.exit(h.pids_in("starting")[0], 1);
    assert_eq!(outcome(&a, 2).outcome, Outcome::RolledBack);
    let a = reload(&mut h, 3, more);
    assert_eq!(outcome(&a, 3).outcome, Outcome::Unchanged);
    // ...but with other settings it is.
    let a = reload(&mut h, 4, with(4, |q| q.version_file = true));
    assert_eq!(spawned(&a).len(), 4);
}

#[test]
fn scale_rolls_over_to_n_workers_with_the_settings_in_force() {
    let base = with(2, |p| {
        p.command = vec!["app".into(), "--port-from-fd".into()]
    });
    let mut h = Harness::serving(base.clone());
    for bad in [0, crate::config::MAX_WORKERS + 1] {
        let a = h.send(Input::Scale {
            waiter: Some(9),
            workers: bad,
        });
        let r = outcome(&a, 9);
        assert_eq!(r.outcome, Outcome::Refused);
        assert!(r.message.contains("1..=4096"), "{}", r.message);
        assert!(spawned(&a).is_empty());
    }
    let a = h.send(Input::Scale {
        waiter: Some(1),
        workers: 3,
    });
    assert_eq!(spawned(&a), [0, 1, 2]);
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(h.m.in_force().workers, 3);
    assert_eq!(h.m.in_force().command, base.command);
    // A plain reload (no config file) keeps the scaled count.
    let a = h.reload(2);
    assert_eq!(spawned(&a).len(), 3);
}

#[test]
fn the_latest_settings_win_for_a_queued_rollover() {
    let mut h = Harness::serving(policy(1));
    h.reload_with(1, policy(2));
    // Two more while the first runs: they share the next rollover, with the latest file.
    h.reload_with(2, policy(4));
    h.send(Input::Scale {
        waiter: Some(3),
        workers: 3,
    });
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(spawned(&a), [0, 1, 2], "the scale came last");
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    assert_eq!(outcome(&a, 3).outcome, Outcome::Ok);
    assert_eq!(h.m.in_force().workers, 3);
}

#[test]
fn settings_bound_at_start_are_told_with_every_answer_and_logged_at_warn() {
    let mut h = Harness::serving(policy(1));
    let line = "listen: f says [127.0.0.1:9], handoff runs with [127.0.0.1:8]; ... \
                `systemctl restart handoff@APP` applies it"
        .to_string();
    let a = h.send(Input::ReloadConfig {
        waiter: Some(1),
        if_changed: false,
        config: Ok(Box::new(policy(1))),
        restart_needed: vec![line.clone()],
    });
    assert_eq!(logs(&a, Level::Warn), std::slice::from_ref(&line));
    let a = h.ready_all_starting();
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.warnings, std::slice::from_ref(&line));
    // Until the file agrees again.
    let a = h.reload_with(2, policy(1));
    assert!(logs(&a, Level::Warn).is_empty());
    let a = h.ready_all_starting();
    assert!(outcome(&a, 2).warnings.is_empty());
}

#[test]
fn late_news_of_a_worker_in_a_slot_a_scale_down_removed_is_harmless() {
    let mut h = Harness::serving(policy(3));
    h.reload_with(1, policy(1));
    // Slot 2's old worker crashes during the rollover and is restarted there...
    h.exit(102, 1);
    h.after(RESTART_BASE);
    let restarted = *h.pids.keys().max().unwrap();
    let id = h.pids[&restarted];
    // ...then the new generation switches in and slot 2 is gone.
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(h.m.status(h.now).workers_wanted, 1);
    // An answer about it that the executor queued before the switch arrives after it.
    h.send(Input::SpawnFailed {
        worker: id,
        error: "late".into(),
        ours: false,
    });
    h.exit(101, 1);
    h.after(Duration::from_secs(60));
    assert_eq!(h.m.status(h.now).workers_wanted, 1);
}

/// `min_uptime` is a generation's setting too: a reload that sets it gets the new window, and
/// a rollback keeps the old one.
#[test]
fn a_reload_applies_a_new_min_uptime_to_the_new_generation_only() {
    let mut h = Harness::serving(policy(1));
    let windowed = |n| with(n, |p| p.min_uptime = 2 * SEC);
    // Generation 2 with a 2 s window: nothing switches at READY=1, the switch waits 2 s.
    h.reload_with(1, windowed(1));
    let a = h.ready_all_starting();
    assert!(replies(&a).is_empty(), "answered inside the window: {a:?}");
    assert!(
        signalled(&a, Signal::SIGTERM).is_empty(),
        "old drained early"
    );
    let a = h.after(SEC);
    assert!(replies(&a).is_empty(), "answered 1 s into a 2 s window");
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(h.m.status(h.now).settings.unwrap().min_uptime, "2s");
    // Back to no window: generation 3 switches at READY=1.
    h.reload_with(2, policy(1));
    let a = h.ready_all_starting();
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok, "no window: at once");
    // Generation 4 asks for a 2 s window and crashes 1 s after READY=1: rolled back, and
    // generation 3's settings (no window) stay in force.
    h.reload_with(3, windowed(1));
    h.ready_all_starting();
    h.after(SEC);
    let new = h.pids_in("ready").into_iter().max().unwrap();
    let a = h.exit(new, 1);
    let r = outcome(&a, 3);
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.message.contains("stability window"), "{}", r.message);
    assert_eq!(h.m.status(h.now).settings.unwrap().min_uptime, "0s");
}
