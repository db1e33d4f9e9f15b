//! Config reload and the stability window together: settings that change while a rollover
//! is inside its window, and rollovers a window fails part of the way.

use super::*;

fn with(workers: usize, f: impl FnOnce(&mut Policy)) -> Policy {
    let mut p = windowed(workers);
    f(&mut p);
    p
}

fn reload_with(h: &mut Harness, waiter: WaiterId, settings: Policy) -> Vec<Action> {
    h.send(Input::ReloadConfig {
        waiter: Some(waiter),
        if_changed: false,
        config: Ok(Box::new(settings)),
        restart_needed: vec![],
    })
}

fn ready_all_starting(h: &mut Harness) -> Vec<Action> {
    let mut all = Vec::new();
    for pid in h.pids_in("starting") {
        all.extend(h.ready(pid));
    }
    all
}

/// `handoff scale 3` while a reload that changed the command is in its window: the scale
/// must build on the settings that reload brings (once they are in force), not put the old
/// command back. Before: gen 3 ran gen 1's command, silently undoing the file's change.
#[test]
fn scale_during_a_window_keeps_the_settings_the_running_reload_brings() {
    let v1 = with(2, |p| p.command = vec!["app-v1".into()]);
    let v2 = with(2, |p| p.command = vec!["app-v2".into()]);
    let mut h = Harness::serving(v1);
    reload_with(&mut h, 1, v2.clone());
    let a = ready_all_starting(&mut h);
    assert!(replies(&a).is_empty(), "inside the window");
    // Inside generation 2's window.
    h.send(Input::Scale {
        waiter: Some(2),
        workers: 3,
    });
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(spawned(&a), [0, 1, 2], "the queued scale starts");
    ready_all_starting(&mut h);
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    assert_eq!(h.m.in_force().workers, 3);
    assert_eq!(
        h.m.in_force().command,
        v2.command,
        "scale reverted the command the config reload brought"
    );
}

/// The same scale queued behind a window whose generation then crashes: the scale applies
/// to the settings still in force (the old ones), not to the rolled-back ones.
#[test]
fn scale_queued_behind_a_window_that_rolls_back_applies_to_the_old_settings() {
    let v1 = with(2, |p| p.command = vec!["app-v1".into()]);
    let v2 = with(2, |p| p.command = vec!["app-v2".into()]);
    let mut h = Harness::serving(v1.clone());
    reload_with(&mut h, 1, v2);
    ready_all_starting(&mut h);
    h.send(Input::Scale {
        waiter: Some(2),
        workers: 3,
    });
    let new = h.pids_in("ready").into_iter().max().unwrap();
    let a = h.exit(new, 1);
    assert_eq!(outcome(&a, 1).outcome, Outcome::RolledBack);
    assert_eq!(spawned(&a), [0, 1, 2], "the queued scale starts");
    ready_all_starting(&mut h);
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok);
    assert_eq!(h.m.in_force().workers, 3);
    assert_eq!(h.m.in_force().command, v1.command);
}

/// A rolling scale-up 1 → 3 whose second new worker crashes inside its window stops
/// `partial` with one slot. The serving generation must not claim 3 workers: status would
/// say 3 while 1 runs, `config_differs` would see nothing to apply, and `--if-changed`
/// would call the file unchanged.
#[test]
fn a_partial_rolling_scale_up_does_not_claim_the_workers_it_never_started() {
    let rolling = |n| with(n, |p| p.rolling = true);
    let mut h = Harness::serving(rolling(1));
    reload_with(&mut h, 1, rolling(3));
    ready_all_starting(&mut h);
    let a = h.after(SEC);
    assert_eq!(spawned(&a), [1], "slot 0 switched, slot 1 starts");
    ready_all_starting(&mut h);
    let new = h.pids_in("ready").into_iter().max().unwrap();
    let a = h.exit(new, 1);
    let r = outcome(&a, 1);
    assert_eq!(r.outcome, Outcome::Partial, "{r:?}");
    let st = h.m.status(h.now);
    assert_eq!(st.workers_wanted, 1);
    assert_eq!(
        st.settings.unwrap().workers,
        st.workers_wanted,
        "status settings claim workers that do not run"
    );
    // The file (3 workers) differs from what is in force: a plain reload tries again.
    assert!(!h.m.in_force().changes(&rolling(3)).is_empty());
}

/// A config reload that changes `min_uptime` (1 s at start, 3 s in the file): status and
/// systemd's `STATUS=` must describe the window that runs, the new generation's. Before,
/// both showed the start's 1 s while the 3 s window ran (`left_ms` 3000 > `min_uptime_ms`
/// 1000). Another reload inside the window (back to 0 s) is queued and does not shorten it.
#[test]
fn status_shows_the_running_windows_own_min_uptime() {
    let mut h = Harness::serving(windowed(1));
    let three = with(1, |p| p.min_uptime = 3 * SEC);
    reload_with(&mut h, 1, three);
    ready_all_starting(&mut h);
    let st = h.m.status(h.now).stabilizing.expect("in the window");
    assert_eq!((st.min_uptime_ms, st.left_ms), (3000, 3000));
    assert!(
        h.m.status_line()
            .contains(&format!("min_uptime {}", human(3 * SEC))),
        "{}",
        h.m.status_line()
    );
    reload_with(&mut h, 2, with(1, |p| p.min_uptime = Duration::ZERO));
    let a = h.after(SEC);
    assert!(
        replies(&a).is_empty(),
        "the queued reload cut the window short"
    );
    let a = h.after(2 * SEC);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(spawned(&a), [0], "the queued reload starts");
    let a = ready_all_starting(&mut h);
    assert_eq!(outcome(&a, 2).outcome, Outcome::Ok, "no window: at once");
}

/// Generation 1's program drains on SIGINT within 10 s; a config reload brings generation 2
/// with SIGTERM and 1 s. Generation 1's re-parented descendant, found by the scan its
/// worker's drain asks for, must drain like its worker: SIGINT, 10 s. Before: SIGTERM (the
/// settings in force had become generation 2's) and SIGKILL after 1 s.
#[test]
fn an_old_generations_stray_drains_by_its_own_generations_signal_and_timeout() {
    let v1 = with(1, |p| p.drain_signal = Signal::SIGINT);
    let v2 = with(1, |p| p.drain_timeout = SEC);
    let mut h = Harness::serving(v1);
    let old = h.pids_in("ready")[0];
    reload_with(&mut h, 1, v2);
    ready_all_starting(&mut h);
    let a = h.after(SEC);
    assert_eq!(outcome(&a, 1).outcome, Outcome::Ok);
    assert_eq!(signalled(&a, Signal::SIGINT), [old]);
    assert!(a.iter().any(|x| matches!(x, Action::ScanChildren)));
    let a = h.send(Input::Children(vec![(999, Some((1, 0)))]));
    assert_eq!(signalled(&a, Signal::SIGINT), [999], "{a:?}");
    assert!(signalled(&a, Signal::SIGTERM).is_empty(), "{a:?}");
    let a = h.after(2 * SEC);
    assert!(
        signalled(&a, Signal::SIGKILL).is_empty(),
        "killed at generation 2's drain timeout: {a:?}"
    );
    let a = h.after(8 * SEC);
    assert!(signalled(&a, Signal::SIGKILL).contains(&999), "{a:?}");
}
