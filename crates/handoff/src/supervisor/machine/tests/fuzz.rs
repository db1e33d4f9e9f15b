//! Random sequences of inputs (restart-worker, reloads, scales, readiness, pings, triggers,
//! exits, failing spawns, memory samples, shutdown, time passing) under random settings
//! (watchdog, max_memory, max_age, rolling, a window, `ready delay:`), with invariants
//! checked after each: no signal to an exited pid, one answer per caller (and one for each
//! by the end), slots and replacements name live workers, at most one limit replacement,
//! every live worker has a place (slot, replacement, or rollover), no deadline left in the
//! past after a few ticks (a busy loop), and a shutdown that ends. `FUZZ_CASES=30000` for a
//! long run (30,000 cases passed on the health branch, 387 s).

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    RestartWorker(usize),
    Reload,
    Scale(usize),
    Ready(usize),
    Ping(usize),
    Trigger(usize),
    Exit(usize, i32),
    Usage(u64),
    Wait(u64),
    FailSpawns(Option<usize>, bool),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..4).prop_map(Op::RestartWorker),
        Just(Op::Reload),
        (1usize..4).prop_map(Op::Scale),
        (0usize..8).prop_map(Op::Ready),
        (0usize..8).prop_map(Op::Ready),
        (0usize..8).prop_map(Op::Ping),
        (0usize..8).prop_map(Op::Trigger),
        (0usize..8, 0i32..2).prop_map(|(i, c)| Op::Exit(i, c)),
        (0u64..300).prop_map(Op::Usage),
        (1u64..40_000).prop_map(Op::Wait),
        (1u64..3_000).prop_map(Op::Wait),
        (proptest::option::of(0usize..4), any::<bool>()).prop_map(|(s, o)| Op::FailSpawns(s, o)),
        (0u64..40).prop_map(|n| if n == 0 { Op::Shutdown } else { Op::Wait(n) }),
    ]
}

#[derive(Debug, Clone)]
struct Knobs {
    workers: usize,
    rolling: bool,
    window: bool,
    watchdog: bool,
    memory: bool,
    age: bool,
    delay: bool,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        1usize..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(workers, rolling, window, watchdog, memory, age, delay)| Knobs {
                workers,
                rolling,
                window,
                watchdog,
                memory,
                age,
                delay,
            },
        )
}

struct Run {
    h: Harness,
    live: Vec<i32>,
    sample: Option<Vec<(WorkerId, i32)>>,
    answered: BTreeMap<WaiterId, usize>,
    asked: Vec<WaiterId>,
    next_waiter: WaiterId,
    next_live: i32,
}

impl Run {
    fn take(&mut self, a: Vec<Action>) {
        // Everything spawned runs until it exits.
        for (&pid, _) in self.h.pids.iter() {
            if pid >= self.next_live && !self.live.contains(&pid) {
                self.live.push(pid);
            }
        }
        self.next_live = self.h.next_pid;
        for x in &a {
            match x {
                Action::Spawn { .. } => {}
                Action::SampleUsage(w) => {
                    assert!(self.sample.is_none(), "a second sample while one is out");
                    self.sample = Some(w.clone());
                }
                Action::Reply { waiter, .. } => *self.answered.entry(*waiter).or_default() += 1,
                Action::Signal { pid, .. } => {
                    assert!(
                        self.live.contains(pid) || !self.h.pids.contains_key(pid),
                        "signal to pid {pid}, which exited: {a:?}"
                    );
                }
                _ => {}
            }
        }
        // Each waiter hears once.
        for (w, n) in &self.answered {
            assert!(*n <= 1, "waiter {w} answered {n} times");
        }
        // Slots and their replacements agree with the worker table.
        for (i, s) in self.h.m.slots.iter().enumerate() {
            if let Some(inc) = &s.incoming {
                let w = self.h.m.workers.get(&inc.worker).expect("incoming exists");
                assert_eq!(w.slot, i);
            }
            if let Occupant::Worker(id) = s.occupant {
                assert!(
                    self.h.m.workers.contains_key(&id),
                    "slot {i} holds a gone worker"
                );
            }
        }
        // Limits replace one worker at a time.
        let limits = self
            .h
            .m
            .slots
            .iter()
            .filter(|s| s.incoming.as_ref().is_some_and(|i| i.reason.is_limit()))
            .count();
        assert!(limits <= 1, "{limits} limit replacements at once");
        // Every worker not draining has a place: a slot, a slot's replacement, or a
        // rollover's new workers. One without is never drained (until shutdown).
        let pending: Vec<WorkerId> = match &self.h.m.rollover {
            RolloverPhase::Running(ro) => ro.pending.clone(),
            _ => vec![],
        };
        for (id, w) in &self.h.m.workers {
            if matches!(w.phase, Phase::Draining { .. } | Phase::Killed) {
                continue;
            }
            let placed = pending.contains(id)
                || self.h.m.slots.iter().any(|s| {
                    s.occupant == Occupant::Worker(*id)
                        || s.incoming.as_ref().is_some_and(|i| i.worker == *id)
                });
            assert!(
                placed,
                "worker {id} ({w:?}) has no place: {:?}",
                self.h.m.status(self.h.now)
            );
        }
    }
}

impl Run {
    fn pick(&self, i: usize) -> Option<i32> {
        if self.live.is_empty() {
            None
        } else {
            Some(self.live[i % self.live.len()])
        }
    }
}

fn run(k: Knobs, ops: Vec<Op>) {
    let mut p = if k.window {
        windowed(k.workers)
    } else {
        policy(k.workers)
    };
    p.rolling = k.rolling;
    if k.watchdog {
        p.watchdog = Some(2 * SEC);
    }
    if k.memory {
        p.max_memory = Some(100 << 20);
    }
    if k.age {
        p.max_age = Some(5 * SEC);
    }
    if k.delay {
        p.ready = ReadyMode::Delay(300 * MS);
    }
    let mut r = Run {
        h: Harness::new(p),
        live: vec![],
        sample: None,
        answered: BTreeMap::new(),
        asked: vec![],
        next_waiter: 1,
        next_live: 100,
    };
    let a = r.h.send(Input::Start);
    r.take(a);
    for op in ops {
        let a = match op {
            Op::RestartWorker(slot) => {
                let w = r.next_waiter;
                r.next_waiter += 1;
                r.asked.push(w);
                r.h.send(Input::RestartWorker {
                    waiter: Some(w),
                    slot,
                })
            }
            Op::Reload => {
                let w = r.next_waiter;
                r.next_waiter += 1;
                r.asked.push(w);
                r.h.reload(w)
            }
            Op::Scale(n) => {
                let w = r.next_waiter;
                r.next_waiter += 1;
                r.asked.push(w);
                r.h.send(Input::Scale {
                    waiter: Some(w),
                    workers: n,
                })
            }
            Op::Ready(i) => match r.pick(i) {
                Some(pid) => r.h.ready(pid),
                None => vec![],
            },
            Op::Ping(i) => match r.pick(i) {
                Some(pid) => r.h.ping_pid(pid),
                None => vec![],
            },
            Op::Trigger(i) => match r.pick(i) {
                Some(pid) => r.h.say(
                    pid,
                    Message {
                        watchdog_trigger: true,
                        ..Message::default()
                    },
                ),
                None => vec![],
            },
            Op::Exit(i, code) => match r.pick(i) {
                Some(pid) => {
                    r.live.retain(|p| *p != pid);
                    r.h.exit(pid, code)
                }
                None => vec![],
            },
            Op::Usage(mb) => match r.sample.take() {
                Some(w) => r.h.send(Input::Usage(
                    w.iter()
                        .enumerate()
                        .map(|(j, (id, _))| (*id, if j == 0 { mb << 20 } else { 10 << 20 }))
                        .collect(),
                )),
                None => vec![],
            },
            Op::FailSpawns(slot, ours) => {
                r.h.fail_spawn = slot;
                r.h.fail_ours = ours;
                vec![]
            }
            Op::Shutdown => r.h.send(Input::Shutdown {
                why: "SIGTERM".into(),
                code: 0,
            }),
            Op::Wait(ms) => {
                r.h.now += Duration::from_millis(ms);
                r.h.send(Input::Tick)
            }
        };
        r.take(a);
        if r.h.m.exit_code().is_some() {
            return;
        }
        // No busy loop: once a tick at `now` is handled, nothing is due at `now` any more.
        // Each tick makes progress (a failed spawn may leave the next slot due at once),
        // but a few ticks at the same time settle every deadline.
        for round in 0..8 {
            if r.sample.is_some() || r.h.m.exit_code().is_some() {
                break;
            }
            let a = r.h.send(Input::Tick);
            r.take(a);
            let Some(d) = r.h.m.next_deadline() else {
                break;
            };
            if d > r.h.now {
                break;
            }
            assert!(
                round < 7,
                "a deadline in the past after 8 ticks (busy loop): {:?} late; {:?}",
                r.h.now - d,
                r.h.m.status(r.h.now)
            );
        }
    }
    // Shut down: everyone hears, and handoff exits once the workers do.
    if let Some(w) = r.sample.take() {
        let a =
            r.h.send(Input::Usage(w.iter().map(|(id, _)| (*id, 0)).collect()));
        r.take(a);
    }
    let a = r.h.send(Input::Shutdown {
        why: "SIGTERM".into(),
        code: 0,
    });
    r.take(a);
    r.h.fail_spawn = None;
    for pid in r.live.clone() {
        let a = r.h.exit(pid, 0);
        r.take(a);
    }
    r.live.clear();
    for w in &r.asked {
        assert_eq!(r.answered.get(w), Some(&1), "waiter {w} never heard");
    }
    assert!(r.h.m.exit_code().is_some(), "{:?}", r.h.m.status(r.h.now));
}

impl Harness {
    fn ping_pid(&mut self, pid: i32) -> Vec<Action> {
        self.say(
            pid,
            Message {
                watchdog: true,
                ..Message::default()
            },
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(500), ..ProptestConfig::default() })]

    #[test]
    fn random_health_inputs_keep_the_machine_sane(k in knobs(), ops in proptest::collection::vec(op(), 0..60)) {
        run(k, ops);
    }
}
