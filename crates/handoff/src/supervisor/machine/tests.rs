//! Every rule of a rollover, with fake time: a test runs in microseconds. `Harness` plays
//! the executor: it answers spawns with fresh pids and version reads with `version`.

use super::*;

/// Config reload and the stability window together.
mod combo;
/// Random inputs, invariants checked.
mod fuzz;
/// One worker replaced gracefully: restart-worker, the per-worker watchdog, memory and age.
mod health;
/// Each generation pins the release its `working_directory` named when it started.
mod pinned;
/// Reloads that bring settings (a re-read config file) and `scale`.
mod settings;
/// Export and import of the state (`handoff reexec`).
mod snapshot;
/// `soak`: the first slot of a rolling rollover.
mod soak;

const MS: Duration = Duration::from_millis(1);

fn policy(workers: usize) -> Policy {
    Policy {
        workers,
        rolling: false,
        ready: ReadyMode::Notify,
        ready_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(10),
        // The rules before the stability window; `windowed` tests it.
        min_uptime: Duration::ZERO,
        soak: Duration::ZERO,
        drain_signal: Signal::SIGTERM,
        watchdog: None,
        max_memory: None,
        max_age: None,
        version_file: false,
        drain_timeout_hook: false,
        command: vec!["app".into()],
        environment: vec![],
        user: None,
        group: None,
        credentials: None,
        working_directory: None,
    }
}

struct Harness {
    m: Machine,
    now: Instant,
    next_pid: i32,
    /// pid → worker id, for everything spawned.
    pids: BTreeMap<i32, WorkerId>,
    version: VersionInfo,
    /// Spawns that fail (by slot) instead of answering with a pid.
    fail_spawn: Option<usize>,
    /// ...and whether handoff (not the release) is to blame.
    fail_ours: bool,
    /// What a generation's `working_directory` resolves to when it starts.
    resolves_to: Result<std::path::PathBuf, String>,
}

/// `policy(workers)` with a 1 s stability window.
fn windowed(workers: usize) -> Policy {
    Policy {
        min_uptime: Duration::from_secs(1),
        ..policy(workers)
    }
}

const SEC: Duration = Duration::from_secs(1);

fn version(text: &str) -> VersionInfo {
    VersionInfo {
        path: "/opt/app/package.json".into(),
        version: Some(text.into()),
        hash: format!("hash-of-{text}"),
        error: None,
    }
}

impl Harness {
    fn new(p: Policy) -> Harness {
        let now = Instant::now();
        Harness {
            m: Machine::new(p, now),
            now,
            next_pid: 100,
            pids: BTreeMap::new(),
            version: version("1.0.0"),
            fail_spawn: None,
            fail_ours: false,
            resolves_to: Ok("/opt/app/releases/1".into()),
        }
    }

    /// Sends `input` and answers what the executor would answer at once.
    fn send(&mut self, input: Input) -> Vec<Action> {
        let mut all = Vec::new();
        let mut queue = VecDeque::from([input]);
        while let Some(i) = queue.pop_front() {
            for a in self.m.handle(self.now, i) {
                match &a {
                    Action::Spawn { worker, slot, .. } => {
                        if self.fail_spawn == Some(*slot) {
                            queue.push_back(Input::SpawnFailed {
                                worker: *worker,
                                error: "no such file".into(),
                                ours: self.fail_ours,
                            });
                        } else {
                            let pid = self.next_pid;
                            self.next_pid += 1;
                            self.pids.insert(pid, *worker);
                            queue.push_back(Input::Spawned {
                                worker: *worker,
                                pid,
                            });
                        }
                    }
                    Action::ReadVersion => queue.push_back(
                        match self.m.preparing().and_then(|p| p.working_directory.clone()) {
                            Some(_) => Input::Prepared {
                                version: Some(self.version.clone()),
                                release: self.resolves_to.clone(),
                            },
                            None => Input::Version(self.version.clone()),
                        },
                    ),
                    _ => {}
                }
                all.push(a);
            }
        }
        all
    }

    fn after(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.send(Input::Tick)
    }

    fn ready(&mut self, pid: i32) -> Vec<Action> {
        let worker = self.pids[&pid];
        self.send(Input::Notify {
            worker,
            msg: Message {
                ready: true,
                ..Message::default()
            },
        })
    }

    fn say(&mut self, pid: i32, msg: Message) -> Vec<Action> {
        let worker = self.pids[&pid];
        self.send(Input::Notify { worker, msg })
    }

    fn exit(&mut self, pid: i32, code: i32) -> Vec<Action> {
        self.send(Input::Exited {
            pid,
            status: ExitStatus::Code(code),
        })
    }

    fn reload(&mut self, waiter: WaiterId) -> Vec<Action> {
        self.send(Input::Reload {
            waiter: Some(waiter),
            if_changed: false,
        })
    }

    fn reload_if_changed(&mut self, waiter: WaiterId) -> Vec<Action> {
        self.send(Input::Reload {
            waiter: Some(waiter),
            if_changed: true,
        })
    }

    /// Pids of the workers in `state` (`starting`, `ready`, `draining`).
    fn pids_in(&self, state: &str) -> Vec<i32> {
        self.m
            .status(self.now)
            .workers
            .iter()
            .filter(|w| w.state == state)
            .map(|w| w.pid)
            .collect()
    }

    /// Starts the first generation of `n` workers and makes it ready (past its stability
    /// window, if there is one).
    fn serving(p: Policy) -> Harness {
        let window = p.min_uptime;
        let mut h = Harness::new(p);
        h.send(Input::Start);
        for pid in h.pids_in("starting") {
            h.ready(pid);
        }
        if !window.is_zero() {
            h.after(window);
        }
        assert_eq!(h.m.current, 1, "the first generation serves");
        h
    }

    fn exit_by(&mut self, pid: i32, signal: Signal) -> Vec<Action> {
        self.send(Input::Exited {
            pid,
            status: ExitStatus::Signal {
                signal: signal as i32,
                core: false,
            },
        })
    }
}

fn spawned(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

fn signalled(actions: &[Action], sig: Signal) -> Vec<i32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, signal } if *signal == sig => Some(*pid),
            _ => None,
        })
        .collect()
}

/// The answer `waiter` got in `a`.
fn outcome(a: &[Action], waiter: WaiterId) -> ReloadReply {
    replies(a)
        .into_iter()
        .find(|(w, _)| *w == waiter)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no answer for {waiter} in {a:?}"))
}

fn replies(actions: &[Action]) -> Vec<(WaiterId, ReloadReply)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { waiter, reply } => Some((*waiter, reply.clone())),
            _ => None,
        })
        .collect()
}

fn logs(actions: &[Action], level: Level) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(l) if l.level == level => Some(l.message.clone()),
            _ => None,
        })
        .collect()
}

fn told_systemd(actions: &[Action], state: &SystemdState) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Systemd(s) if s.contains(state)))
}

#[test]
fn the_first_generation_starts_whole_and_readiness_ends_the_start() {
    let mut h = Harness::new(policy(2));
    let a = h.send(Input::Start);
    assert_eq!(spawned(&a), [0, 1]);
    assert!(
        !told_systemd(&a, &SystemdState::Reloading),
        "a start is no reload"
    );
    assert_eq!(h.m.status_line(), "starting: 0/2 ready");
    let a = h.ready(100);
    assert!(!told_systemd(&a, &SystemdState::Ready));
    assert_eq!(h.m.status_line(), "starting: 1/2 ready");
    let a = h.ready(101);
    assert!(told_systemd(&a, &SystemdState::Ready));
    assert_eq!(
        h.m.status_line(),
        "gen 1: 2/2 ready; last rollover ok in 0 ms"
    );
    assert_eq!(
        h.m.next_deadline(),
        None,
        "nothing to wake up for when idle"
    );
}

#[test]
fn a_rollover_switches_once_every_new_worker_is_ready_then_drains_the_old() {
    let mut h = Harness::serving(policy(2));
    let a = h.reload(1);
    assert!(told_systemd(&a, &SystemdState::Reloading));
    assert_eq!(spawned(&a), [0, 1]);
    assert!(h.ready(102).is_empty() || signalled(&h.ready(102), Signal::SIGTERM).is_empty());
    h.now += 5 * MS;
    let a = h.ready(103);
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [100, 101],
        "old generation drained"
    );
    let r = replies(&a);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1.outcome, Outcome::Ok);
    assert_eq!(r[0].1.generation, 2);
    assert!(r[0].1.message.contains("(2 workers)"), "{}", r[0].1.message);
    assert!(told_systemd(&a, &SystemdState::Ready));
    assert_eq!(h.pids_in("draining"), [100, 101]);
    // The old workers exit: reaped, their groups killed, their sockets closed.
    let a = h.exit(100, 0);
    assert!(a.contains(&Action::SignalGroup {
        pgid: 100,
        signal: Signal::SIGKILL
    }));
    assert!(a.iter().any(|x| matches!(x, Action::CloseNotify { .. })));
}

#[test]
fn reloads_during_a_rollover_share_the_next_one() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    assert!(spawned(&h.reload(2)).is_empty(), "queued, not started");
    assert!(spawned(&h.reload(3)).is_empty());
    let a = h.ready(101);
    let r = replies(&a);
    assert_eq!(r.iter().map(|(w, _)| *w).collect::<Vec<_>>(), [1]);
    assert_eq!(spawned(&a), [0], "one rollover for both queued callers");
    let a = h.ready(102);
    let r = replies(&a);
    assert_eq!(r.iter().map(|(w, _)| *w).collect::<Vec<_>>(), [2, 3]);
    assert!(
        r.iter()
            .all(|(_, x)| x.outcome == Outcome::Ok && x.generation == 3)
    );
    assert!(spawned(&a).is_empty());
}

#[test]
fn a_worker_that_crashes_at_start_rolls_back_with_the_reason() {
    let mut h = Harness::serving(policy(2));
    h.reload(1);
    h.say(
        102,
        Message {
            status: Some("loading config".into()),
            ..Message::default()
        },
    );
    h.now += 300 * MS;
    let a = h.exit(102, 3);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::RolledBack);
    let msg = &r[0].1.message;
    assert!(msg.contains("generation 1 still serves"), "{msg}");
    assert!(msg.contains("exited with status 3 after 300 ms"), "{msg}");
    assert!(msg.contains("last status: \"loading config\""), "{msg}");
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [103],
        "the other new worker drains"
    );
    assert_eq!(h.pids_in("ready"), [100, 101], "old generation untouched");
    assert_eq!(r[0].1.generation, 1);
    assert!(
        logs(&a, Level::Error)
            .iter()
            .any(|l| l.contains("rolled back"))
    );
}

#[test]
fn a_worker_never_ready_rolls_back_at_its_deadline_not_before() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    assert_eq!(h.m.next_deadline(), Some(h.now + Duration::from_secs(60)));
    assert!(replies(&h.after(Duration::from_secs(60) - MS)).is_empty());
    let a = h.after(MS);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::RolledBack);
    assert!(
        r[0].1.message.contains("was not ready within 1 m 0 s"),
        "{}",
        r[0].1.message
    );
    assert_eq!(signalled(&a, Signal::SIGTERM), [101]);
}

#[test]
fn extend_timeout_gives_a_slow_worker_more_time() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    h.now += Duration::from_secs(50);
    h.say(
        101,
        Message {
            extend_timeout: Some(Duration::from_secs(30)),
            ..Message::default()
        },
    );
    assert!(
        replies(&h.after(Duration::from_secs(20))).is_empty(),
        "past 60 s, within 80 s"
    );
    let a = h.ready(101);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::Ok);
    // A shorter extension never shortens the deadline.
    h.reload(2);
    h.say(
        102,
        Message {
            extend_timeout: Some(MS),
            ..Message::default()
        },
    );
    assert!(replies(&h.after(Duration::from_secs(1))).is_empty());
}

#[test]
fn a_worker_past_the_drain_timeout_is_killed_with_its_group_and_the_hook_runs() {
    let mut p = policy(1);
    p.drain_timeout_hook = true;
    let mut h = Harness::serving(p);
    h.reload(1);
    h.ready(101);
    assert!(h.after(Duration::from_secs(10) - MS).is_empty());
    let a = h.after(MS);
    assert!(a.contains(&Action::SignalGroup {
        pgid: 100,
        signal: Signal::SIGKILL
    }));
    assert!(a.contains(&Action::Signal {
        pid: 100,
        signal: Signal::SIGKILL
    }));
    assert!(a.contains(&Action::RunHook {
        pid: 100,
        generation: 1,
        slot: 0
    }));
    assert!(logs(&a, Level::Error)[0].starts_with("ALERT: worker still running 10.0 s"));
    assert!(h.after(Duration::from_secs(60)).is_empty(), "killed once");
    let a = h.exit(100, 137);
    assert!(logs(&a, Level::Warn)[0].contains("killed after the drain timeout"));
}

#[test]
fn a_forced_kill_is_counted_shown_and_told_to_the_next_reload_once() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    h.ready(101);
    h.after(Duration::from_secs(10));
    let st = h.m.status(h.now);
    assert_eq!(st.forced_kills, 1);
    assert_eq!(st.last_rollover.as_ref().unwrap().forced_kills, 1);
    assert!(
        h.m.status_line().contains("1 worker FORCE-KILLED"),
        "{}",
        h.m.status_line()
    );
    h.exit(100, 137);
    h.reload(2);
    let a = h.ready(102);
    let r = &replies(&a)[0].1;
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("worker 0 of generation 1 (pid 100)"));
    // The new rollover starts clean; its own drain has not killed anyone yet.
    assert_eq!(h.m.status(h.now).last_rollover.unwrap().forced_kills, 0);
    assert!(!h.m.status_line().contains("FORCE-KILLED"));
}

#[test]
fn a_crashed_worker_restarts_with_doubling_backoff_and_a_stable_one_resets_it() {
    let mut h = Harness::serving(policy(2));
    let mut pid = 100;
    for (n, delay_ms) in [100u64, 200, 400, 800].iter().enumerate() {
        let a = h.exit(pid, 1);
        assert!(logs(&a, Level::Warn)[0].contains("died outside a rollover"));
        assert_eq!(h.m.status(h.now).slots[0].crashes as usize, n + 1);
        assert_eq!(
            h.m.next_deadline(),
            Some(h.now + Duration::from_millis(*delay_ms))
        );
        assert!(spawned(&h.after(Duration::from_millis(delay_ms - 1))).is_empty());
        let a = h.after(MS);
        assert_eq!(spawned(&a), [0]);
        pid = *h.pids.keys().last().unwrap();
        assert!(
            h.m.status_line().contains("1/2 ready"),
            "{}",
            h.m.status_line()
        );
        h.ready(pid);
    }
    // Ready for longer than STABLE_AFTER: the next crash is a fresh one.
    h.now += STABLE_AFTER;
    h.exit(pid, 1);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 1);
    assert!(
        h.m.status_line().contains("restarting w0×1"),
        "{}",
        h.m.status_line()
    );
}

#[test]
fn a_rollover_cancels_a_pending_restart() {
    let mut h = Harness::serving(policy(1));
    h.exit(100, 1);
    h.reload(1);
    let a = h.ready(101);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::Ok);
    assert_eq!(
        h.m.next_deadline(),
        Some(h.now + STABLE_AFTER),
        "no restart; only the crash count's reset is due"
    );
    assert!(spawned(&h.after(Duration::from_secs(1))).is_empty());
}

#[test]
fn rolling_replaces_one_slot_at_a_time_and_never_drops_below_n_ready() {
    let mut p = policy(3);
    p.rolling = true;
    let mut h = Harness::serving(p);
    let a = h.reload(1);
    assert_eq!(spawned(&a), [0], "one at a time");
    for (slot, new) in [(0usize, 103), (1, 104), (2, 105)] {
        assert_eq!(h.m.ready_count(), 3);
        let a = h.ready(new);
        assert_eq!(signalled(&a, Signal::SIGTERM), [100 + slot as i32]);
        if slot < 2 {
            assert_eq!(spawned(&a), [slot + 1]);
            assert!(replies(&a).is_empty());
        } else {
            assert_eq!(replies(&a)[0].1.outcome, Outcome::Ok);
        }
    }
}

#[test]
fn a_rolling_failure_after_the_first_slot_is_partial() {
    let mut p = policy(2);
    p.rolling = true;
    let mut h = Harness::serving(p);
    h.reload(1);
    h.ready(102);
    let a = h.exit(103, 1);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::Partial);
    assert!(
        r[0].1
            .message
            .contains("1 worker run generation 2, 1 still run"),
        "{}",
        r[0].1.message
    );
}

#[test]
fn a_failed_first_generation_shuts_handoff_down_with_exit_code_1() {
    let mut h = Harness::new(policy(2));
    h.send(Input::Start);
    let a = h.exit(100, 2);
    assert!(logs(&a, Level::Error)[0].contains("first generation failed"));
    assert_eq!(signalled(&a, Signal::SIGTERM), [101]);
    assert!(told_systemd(&a, &SystemdState::Stopping));
    assert_eq!(h.m.exit_code(), None, "waits for the other worker");
    h.exit(101, 0);
    assert_eq!(h.m.exit_code(), Some(1));
}

#[test]
fn shutdown_during_a_rollover_answers_everyone_and_drains_everything() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    h.reload(2);
    let a = h.send(Input::Shutdown {
        why: "SIGTERM".into(),
        code: 0,
    });
    let r = replies(&a);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|(_, x)| x.outcome == Outcome::Refused));
    assert_eq!(signalled(&a, Signal::SIGTERM), [100, 101]);
    assert!(replies(&h.reload(3))[0].1.message.contains("shutting down"));
    h.exit(100, 0);
    assert_eq!(
        spawned(&h.exit(101, 0)),
        Vec::<usize>::new(),
        "no restart while stopping"
    );
    assert_eq!(h.m.exit_code(), Some(0));
}

#[test]
fn a_second_sigint_kills_everything() {
    let mut h = Harness::serving(policy(2));
    h.send(Input::Shutdown {
        why: "SIGINT".into(),
        code: 0,
    });
    let a = h.send(Input::KillAll);
    assert_eq!(signalled(&a, Signal::SIGKILL), [100, 101]);
}

#[test]
fn a_spawn_failure_fails_the_rollover_and_is_not_a_crash() {
    let mut h = Harness::serving(policy(2));
    h.fail_spawn = Some(1);
    let a = h.reload(1);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::RolledBack);
    assert!(
        r[0].1
            .message
            .contains("cannot start worker 1 of generation 2: no such file")
    );
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [102],
        "worker 0 of the new generation drains"
    );
    assert!(h.m.status(h.now).slots.iter().all(|s| s.crashes == 0));
}

#[test]
fn if_changed_rolls_over_only_for_a_new_release_and_never_retries_a_failed_one() {
    let mut p = policy(1);
    p.version_file = true;
    let mut h = Harness::serving(p);
    let a = h.reload_if_changed(1);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::Unchanged);
    assert!(spawned(&a).is_empty());
    // A new release that crashes: rolled back, then not tried again by --if-changed...
    h.version = version("2.0.0");
    let a = h.reload_if_changed(2);
    assert_eq!(spawned(&a), [0]);
    let a = h.exit(101, 1);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::RolledBack);
    let a = h.reload_if_changed(3);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::Unchanged);
    assert!(
        r[0].1.message.contains("was rolled back"),
        "{}",
        r[0].1.message
    );
    // ...but a plain reload does; an --if-changed caller queued behind it then finds the
    // release serving and is answered without a second rollover.
    let a = h.reload(4);
    assert_eq!(spawned(&a), [0]);
    h.reload_if_changed(5);
    let a = h.ready(102);
    let r = replies(&a);
    assert_eq!((r[0].0, r[0].1.outcome), (4, Outcome::Ok));
    assert_eq!((r[1].0, r[1].1.outcome), (5, Outcome::Unchanged));
    assert!(spawned(&a).is_empty());
    assert_eq!(
        h.m.status(h.now).generations[0].version,
        Some(version("2.0.0"))
    );
}

#[test]
fn if_changed_with_an_unreadable_version_file_is_refused() {
    let mut p = policy(1);
    p.version_file = true;
    let mut h = Harness::serving(p);
    h.version.error = Some("cannot read /opt/app/package.json: not a regular file".into());
    let a = h.reload_if_changed(1);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::Refused);
    assert!(r[0].1.message.contains("not a regular file"));
    assert!(spawned(&a).is_empty());
    // Without a version file at all, --if-changed cannot be answered.
    let mut h = Harness::serving(policy(1));
    assert!(
        replies(&h.reload_if_changed(1))[0]
            .1
            .message
            .contains("needs `version_file`")
    );
}

#[test]
fn delay_readiness_ignores_ready_datagrams_and_waits_the_delay() {
    let mut p = policy(1);
    p.ready = ReadyMode::Delay(Duration::from_millis(500));
    let mut h = Harness::new(p);
    h.send(Input::Start);
    assert!(!told_systemd(&h.ready(100), &SystemdState::Ready));
    assert!(!told_systemd(&h.after(499 * MS), &SystemdState::Ready));
    assert!(told_systemd(&h.after(MS), &SystemdState::Ready));
}

#[test]
fn a_restarted_worker_that_never_gets_ready_is_drained_and_restarted_again() {
    let mut h = Harness::serving(policy(1));
    h.exit(100, 1);
    h.after(Duration::from_millis(100));
    let a = h.after(Duration::from_secs(60));
    assert!(logs(&a, Level::Warn)[0].contains("was not ready within"));
    assert_eq!(signalled(&a, Signal::SIGTERM), [101]);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 2);
}

#[test]
fn unknown_children_are_only_logged() {
    let mut h = Harness::serving(policy(1));
    let a = h.exit(4242, 0);
    assert_eq!(logs(&a, Level::Debug).len(), 1);
    assert_eq!(a.len(), 1);
}

#[test]
fn old_generations_are_forgotten_once_their_workers_are_gone() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    h.ready(101);
    assert_eq!(
        h.m.status(h.now).generations.len(),
        2,
        "generation 1 still drains"
    );
    h.exit(100, 0);
    let g: Vec<u64> =
        h.m.status(h.now)
            .generations
            .iter()
            .map(|g| g.number)
            .collect();
    assert_eq!(g, [2]);
}

#[test]
fn an_extension_asked_for_in_a_rollover_is_passed_on_to_systemd() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    let a = h.say(
        101,
        Message {
            extend_timeout: Some(Duration::from_secs(90)),
            ..Message::default()
        },
    );
    assert!(told_systemd(
        &a,
        &SystemdState::ExtendTimeout(Duration::from_secs(90) + SYSTEMD_SLACK)
    ));
    // One that does not move the deadline is not passed on.
    let a = h.say(
        101,
        Message {
            extend_timeout: Some(Duration::from_secs(1)),
            ..Message::default()
        },
    );
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn a_first_generation_with_a_ready_worker_keeps_it_and_restarts_the_rest() {
    let mut h = Harness::new(policy(2));
    h.send(Input::Start);
    h.ready(100);
    let a = h.exit(101, 1);
    assert!(!told_systemd(&a, &SystemdState::Stopping), "no shutdown");
    assert!(
        told_systemd(&a, &SystemdState::Ready),
        "the start completes"
    );
    assert!(logs(&a, Level::Warn)[0].contains("started with 1 of 2 ready"));
    let st = h.m.status(h.now);
    assert_eq!((st.current_generation, st.ready), (1, 1));
    assert_eq!(st.last_rollover.unwrap().outcome, Outcome::Partial);
    assert_eq!(
        spawned(&h.after(Duration::from_millis(100))),
        [1],
        "slot 1 restarts"
    );
    assert_eq!(h.m.exit_code(), None);
}

#[test]
fn a_spawn_failure_of_handoffs_own_is_not_held_against_the_release() {
    let mut p = policy(1);
    p.version_file = true;
    let mut h = Harness::serving(p);
    h.version = version("2.0.0");
    h.fail_spawn = Some(0);
    h.fail_ours = true;
    let r = replies(&h.reload_if_changed(1));
    assert_eq!(r[0].1.outcome, Outcome::Refused, "{}", r[0].1.message);
    assert!(
        r[0].1.message.contains("release was not at fault"),
        "{}",
        r[0].1.message
    );
    // Once handoff has its fds back, --if-changed tries the release (it was never tried).
    h.fail_spawn = None;
    assert_eq!(spawned(&h.reload_if_changed(2)), [0]);
}

#[test]
fn re_parented_descendants_go_with_their_worker() {
    let mut h = Harness::serving(policy(1));
    // pid 900 names worker (1, 0) in its environment; 901 names nobody.
    let a = h.send(Input::Children(vec![
        (900, Some((1, 0))),
        (901, None),
        (100, Some((1, 0))),
    ]));
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [901],
        "the unattributed one drains at once"
    );
    // The worker drains in a rollover: its descendant with it; a scan looks for more.
    h.reload(1);
    let a = h.ready(101);
    assert_eq!(signalled(&a, Signal::SIGTERM), [100, 900]);
    assert!(a.contains(&Action::ScanChildren));
    // 900 ignores SIGTERM: killed at the drain deadline, with its process group.
    let a = h.after(Duration::from_secs(10));
    assert!(a.contains(&Action::Signal {
        pid: 900,
        signal: Signal::SIGKILL
    }));
    assert!(a.contains(&Action::SignalGroup {
        pgid: 900,
        signal: Signal::SIGKILL
    }));
    // Shutdown waits for descendants as for workers.
    h.exit(100, 0);
    h.send(Input::Shutdown {
        why: "SIGTERM".into(),
        code: 0,
    });
    h.exit(101, 0);
    assert_eq!(h.m.exit_code(), None, "900 and 901 still run");
    h.exit(900, 137);
    h.exit(901, 0);
    assert_eq!(h.m.exit_code(), Some(0));
}

// ---- the stability window (min_uptime) and the crash counter ------------------------------

#[test]
fn the_old_generation_serves_through_the_window_and_drains_only_after_it() {
    let mut h = Harness::serving(windowed(2));
    h.reload(1);
    h.ready(102);
    let a = h.ready(103);
    assert!(
        signalled(&a, Signal::SIGTERM).is_empty(),
        "nothing drained at READY=1"
    );
    assert!(replies(&a).is_empty(), "no answer yet");
    assert!(!told_systemd(&a, &SystemdState::Ready));
    assert!(told_systemd(
        &a,
        &SystemdState::ExtendTimeout(SEC + SYSTEMD_SLACK)
    ));
    assert_eq!(
        h.pids_in("ready"),
        [102, 103, 100, 101],
        "both generations serve"
    );
    let st = h.m.status(h.now);
    let win = st.stabilizing.expect("in the window");
    assert_eq!(
        (win.generation, win.slots.clone(), win.left_ms),
        (2, vec![0, 1], 1000)
    );
    assert!(
        h.m.status_line().contains("gen 2 stabilizing"),
        "{}",
        h.m.status_line()
    );
    assert_eq!(h.m.next_deadline(), Some(h.now + SEC));
    let a = h.after(SEC - MS);
    assert!(signalled(&a, Signal::SIGTERM).is_empty() && replies(&a).is_empty());
    assert_eq!(h.m.status(h.now).stabilizing.unwrap().left_ms, 1);
    let a = h.after(MS);
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [100, 101],
        "drained after the window"
    );
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::Ok);
    assert!(
        r[0].1.message.contains("stable 1.0 s past READY=1"),
        "{}",
        r[0].1.message
    );
    assert_eq!(
        r[0].1.duration_ms, 1000,
        "the window is part of the rollover"
    );
    assert!(told_systemd(&a, &SystemdState::Ready));
    assert!(h.m.status(h.now).stabilizing.is_none());
}

#[test]
fn a_new_worker_that_crashes_within_the_window_rolls_back_and_the_old_never_stopped() {
    let mut h = Harness::serving(windowed(2));
    h.reload(1);
    h.ready(102);
    h.ready(103);
    h.now += 100 * MS;
    let a = h.exit(103, 1);
    let r = replies(&a);
    assert_eq!(r[0].1.outcome, Outcome::RolledBack);
    let msg = &r[0].1.message;
    assert!(msg.contains("generation 1 still serves"), "{msg}");
    assert!(
        msg.contains("worker 1 (pid 103) exited with status 1"),
        "{msg}"
    );
    assert!(
        msg.contains("100 ms after READY=1 (within the stability window, min_uptime 1.0 s)"),
        "{msg}"
    );
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [102],
        "only the new generation drains"
    );
    assert_eq!(h.pids_in("ready"), [100, 101]);
    assert!(h.m.status(h.now).stabilizing.is_none());
    assert!(told_systemd(&a, &SystemdState::Ready), "RELOADING=1 ends");
    // The old generation's slots were never touched: no crash counted, nothing restarts.
    assert!(h.m.status(h.now).slots.iter().all(|s| s.crashes == 0));
    assert_eq!(h.m.current, 1);
}

#[test]
fn a_crash_at_the_very_end_of_the_window_still_rolls_back() {
    // The executor hands exits in before it judges deadlines: an exit seen at the instant the
    // window ends is inside it.
    let mut h = Harness::serving(windowed(1));
    h.reload(1);
    h.ready(101);
    h.now += SEC;
    let a = h.exit(101, 1);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::RolledBack);
    assert!(
        signalled(&a, Signal::SIGTERM).is_empty(),
        "old worker untouched"
    );
}

#[test]
fn a_crash_after_the_window_is_an_ordinary_restart_of_the_new_generation() {
    let mut h = Harness::serving(windowed(1));
    h.reload(1);
    h.ready(101);
    assert_eq!(replies(&h.after(SEC))[0].1.outcome, Outcome::Ok);
    h.now += MS;
    let a = h.exit(101, 1);
    assert!(replies(&a).is_empty());
    assert!(logs(&a, Level::Warn)[0].contains("died outside a rollover"));
    assert_eq!(h.m.status(h.now).slots[0].crashes, 1);
    assert_eq!(spawned(&h.after(RESTART_BASE)), [0]);
    assert_eq!(h.m.current, 2, "the new generation stays");
}

#[test]
fn min_uptime_zero_switches_at_ready_as_before() {
    let mut h = Harness::serving(policy(1));
    h.reload(1);
    let a = h.ready(101);
    assert_eq!(signalled(&a, Signal::SIGTERM), [100]);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::Ok);
}

#[test]
fn reload_and_stop_during_the_window() {
    let mut h = Harness::serving(windowed(1));
    h.reload(1);
    h.ready(101);
    assert!(spawned(&h.reload(2)).is_empty(), "queued behind the window");
    let a = h.after(SEC);
    assert_eq!(replies(&a)[0].0, 1);
    assert_eq!(
        spawned(&a),
        [0],
        "the queued reload starts after the window"
    );
    h.ready(102);
    // SIGTERM to handoff in the next window: both callers' rollover is abandoned and
    // everything drains.
    let a = h.send(Input::Shutdown {
        why: "SIGTERM".into(),
        code: 0,
    });
    assert_eq!(replies(&a)[0].1.outcome, Outcome::Refused);
    assert_eq!(signalled(&a, Signal::SIGTERM), [101, 102]);
    assert_eq!(
        h.m.next_deadline(),
        Some(h.now + Duration::from_secs(10)),
        "drain only"
    );
}

#[test]
fn rolling_applies_the_window_to_each_slot_before_draining_its_old_worker() {
    let mut p = windowed(2);
    p.rolling = true;
    let mut h = Harness::serving(p);
    h.reload(1);
    let a = h.ready(102);
    assert!(signalled(&a, Signal::SIGTERM).is_empty() && spawned(&a).is_empty());
    assert_eq!(h.m.status(h.now).stabilizing.unwrap().slots, [0]);
    let a = h.after(SEC);
    assert_eq!(signalled(&a, Signal::SIGTERM), [100]);
    assert_eq!(spawned(&a), [1], "next slot after the window");
    h.ready(103);
    // The second slot's new worker crashes in its window: partial, its old worker serves.
    h.now += 10 * MS;
    let a = h.exit(103, 1);
    assert_eq!(replies(&a)[0].1.outcome, Outcome::Partial);
    assert!(h.pids_in("ready").contains(&101));
}

#[test]
fn the_first_generation_reports_ready_to_systemd_only_after_the_window() {
    let mut h = Harness::new(windowed(2));
    h.send(Input::Start);
    h.ready(100);
    let a = h.ready(101);
    assert!(!told_systemd(&a, &SystemdState::Ready));
    assert!(
        h.m.status_line().contains("stabilizing"),
        "{}",
        h.m.status_line()
    );
    let a = h.after(SEC);
    assert!(told_systemd(&a, &SystemdState::Ready));
    assert_eq!(h.m.ready_count(), 2);
}

#[test]
fn a_first_generation_crashing_within_the_window_fails_the_start() {
    let mut h = Harness::new(windowed(2));
    h.send(Input::Start);
    h.ready(100);
    h.ready(101);
    h.now += 100 * MS;
    let a = h.exit(100, 1);
    assert!(!told_systemd(&a, &SystemdState::Ready));
    assert!(told_systemd(&a, &SystemdState::Stopping));
    assert_eq!(
        signalled(&a, Signal::SIGTERM),
        [101],
        "the other, ready one goes too"
    );
    assert!(
        logs(&a, Level::Error)[0].contains("within the stability window"),
        "{:?}",
        logs(&a, Level::Error)
    );
    h.exit(101, 0);
    assert_eq!(h.m.exit_code(), Some(1));
}

#[test]
fn the_crash_count_resets_once_a_worker_has_been_healthy_for_min_uptime() {
    let mut h = Harness::serving(windowed(2));
    let mut pid = 100;
    for _ in 0..3 {
        h.exit(pid, 1);
        h.after(RESTART_MAX);
        pid = *h.pids.keys().last().unwrap();
        h.ready(pid);
        h.now += 100 * MS;
    }
    assert_eq!(h.m.status(h.now).slots[0].crashes, 3);
    assert!(
        h.m.status_line()
            .contains("slot 0 crash-looping (3 crashes in a row)"),
        "{}",
        h.m.status_line()
    );
    // Healthy for min_uptime past READY=1: a deadline, then the count is gone from status.
    let ready_at = h.now - 100 * MS;
    assert_eq!(h.m.next_deadline(), Some(ready_at + SEC));
    h.now = ready_at + SEC - MS;
    h.send(Input::Tick);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 3);
    let a = h.after(MS);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 0);
    assert!(
        logs(&a, Level::Info)
            .iter()
            .any(|l| l.contains("crash count (3) reset"))
    );
    assert!(
        !h.m.status_line().contains("crash"),
        "{}",
        h.m.status_line()
    );
    assert_eq!(h.m.next_deadline(), None);
}

#[test]
fn a_healthy_rollover_clears_a_stale_crash_count() {
    let mut h = Harness::serving(windowed(1));
    h.exit(100, 1);
    h.after(RESTART_BASE);
    h.exit(101, 1);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 2);
    // The rollover cancels the pending restart; its worker passes the window.
    h.reload(1);
    h.ready(102);
    h.after(SEC);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 0);
}

#[test]
fn exits_handoff_asked_for_are_not_crashes() {
    let mut p = windowed(2);
    p.drain_timeout = Duration::from_secs(2);
    let mut h = Harness::serving(p);
    h.reload(1);
    h.ready(102);
    h.ready(103);
    h.after(SEC);
    // Drained: 100 exits on its own, 101 is SIGKILLed at the drain timeout.
    h.exit_by(100, Signal::SIGTERM);
    h.after(Duration::from_secs(2));
    h.exit_by(101, Signal::SIGKILL);
    // A rolled back worker's exit is no crash either.
    h.reload(2);
    h.ready(104);
    h.exit(104, 1);
    h.exit(105, 0);
    let st = h.m.status(h.now);
    assert!(st.slots.iter().all(|s| s.crashes == 0), "{:?}", st.slots);
    assert_eq!(h.m.next_deadline(), None, "nothing restarts");
}

#[test]
fn an_outside_sigterm_to_a_healthy_worker_restarts_it_without_counting_a_crash() {
    let mut h = Harness::serving(windowed(1));
    h.now += SEC;
    let a = h.exit_by(100, Signal::SIGTERM);
    assert!(
        logs(&a, Level::Info)
            .iter()
            .any(|l| l.contains("stopped from outside handoff (not a crash)")),
        "{:?}",
        logs(&a, Level::Info)
    );
    assert_eq!(h.m.status(h.now).slots[0].crashes, 0);
    assert_eq!(spawned(&h.after(RESTART_BASE)), [0]);
    // Exit 0 of a healthy worker: the same.
    h.ready(101);
    h.now += SEC;
    h.exit(101, 0);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 0);
    // Before it was healthy, a SIGTERM exit counts: a release that stops at once backs off.
    h.after(RESTART_BASE);
    h.ready(102);
    h.now += 10 * MS;
    h.exit_by(102, Signal::SIGTERM);
    assert_eq!(h.m.status(h.now).slots[0].crashes, 1);
    // SIGKILL from outside is a crash whenever it comes.
    h.after(RESTART_BASE);
    h.ready(103);
    h.now += SEC;
    h.exit_by(103, Signal::SIGKILL);
    assert_eq!(
        h.m.status(h.now).slots[0].crashes,
        1,
        "reset to 0, then this one"
    );
}

/// Slot `slot`'s last exit as status shows it: (pid, kind, status, why drained).
fn last_exit(h: &Harness, slot: usize) -> Option<(i32, ExitKind, String, Option<String>)> {
    h.m.status(h.now).slots[slot]
        .last_exit
        .as_ref()
        .map(|e| (e.pid, e.kind, e.status.clone(), e.drained_because.clone()))
}

#[test]
fn restarts_count_every_restart_of_a_slot_and_never_a_rollover() {
    let mut h = Harness::serving(windowed(2));
    assert_eq!(last_exit(&h, 0), None);
    // A crash (kill -9 from outside): a restart, and the last exit says so.
    h.now += SEC;
    h.exit_by(100, Signal::SIGKILL);
    assert_eq!(
        last_exit(&h, 0),
        Some((100, ExitKind::Crash, "was killed by SIGKILL".into(), None))
    );
    assert_eq!(h.m.status(h.now).slots[0].restarts, 0, "not restarted yet");
    h.after(RESTART_BASE);
    let st = h.m.status(h.now);
    assert_eq!((st.slots[0].restarts, st.slots[0].crashes), (1, 1));
    assert_eq!(st.slots[1].restarts, 0);
    // A stop from outside of a healthy worker: a restart, not a crash.
    h.ready(102);
    h.now += SEC;
    h.exit(102, 0);
    assert_eq!(last_exit(&h, 0).unwrap().1, ExitKind::Stopped);
    h.after(RESTART_BASE);
    h.ready(103);
    h.after(SEC);
    let st = h.m.status(h.now);
    assert_eq!((st.slots[0].restarts, st.slots[0].crashes), (2, 0));
    // A rollover: the old workers are drained, which is no restart and no crash.
    h.reload(1);
    h.ready(104);
    h.ready(105);
    h.after(SEC);
    h.exit(103, 0);
    h.exit_by(101, Signal::SIGTERM);
    let st = h.m.status(h.now);
    assert_eq!((st.slots[0].restarts, st.slots[0].crashes), (2, 0));
    assert_eq!((st.slots[1].restarts, st.slots[1].crashes), (0, 0));
    assert_eq!(
        last_exit(&h, 0),
        Some((
            103,
            ExitKind::Drained,
            "exited with status 0".into(),
            Some("replaced".into())
        ))
    );
    assert_eq!(
        last_exit(&h, 1),
        Some((
            101,
            ExitKind::Drained,
            "was killed by SIGTERM".into(),
            Some("replaced".into())
        ))
    );
    assert_eq!(
        h.m.status(h.now).slots[1]
            .last_exit
            .as_ref()
            .unwrap()
            .generation,
        1
    );
}

#[test]
fn the_last_exit_tells_a_kill_at_the_drain_timeout_and_a_failed_new_worker() {
    let mut p = windowed(1);
    p.drain_timeout = Duration::from_secs(2);
    let mut h = Harness::serving(p);
    h.reload(1);
    h.ready(101);
    h.after(SEC);
    h.after(Duration::from_secs(2));
    h.exit_by(100, Signal::SIGKILL);
    assert_eq!(
        last_exit(&h, 0),
        Some((
            100,
            ExitKind::Killed,
            "was killed by SIGKILL".into(),
            Some("replaced".into())
        ))
    );
    // A new worker that exits in its window fails the rollover: its slot shows the crash,
    // though the slot's serving worker never stopped (no restart, no crash count).
    h.reload(2);
    h.ready(102);
    h.exit(102, 3);
    let st = h.m.status(h.now);
    let e = st.slots[0].last_exit.as_ref().unwrap();
    assert_eq!((e.pid, e.generation, e.kind), (102, 3, ExitKind::Crash));
    assert_eq!(e.status, "exited with status 3");
    assert_eq!((st.slots[0].restarts, st.slots[0].crashes), (0, 0));
    h.now += 5 * SEC;
    assert_eq!(
        h.m.status(h.now).slots[0]
            .last_exit
            .as_ref()
            .unwrap()
            .ago_ms,
        5000
    );
}
