//! The rollover state machine: every decision handoff makes, and none of its effects.
//!
//! [`Machine::handle`] takes the time and one [`Input`] (a reload request, a worker's notify
//! message, a child exit, a spawn result, the clock passing a deadline) and returns the
//! [`Action`]s to carry out (spawn, signal, reply, tell systemd, log). It reads no clock, makes
//! no syscall and never calls itself back: the executor (`executor.rs`) performs the actions
//! and feeds their results (a spawned pid, a version file's content) back in as new inputs.
//! Deadlines are state, not timers: [`Machine::next_deadline`] tells the executor when to send
//! the next [`Input::Tick`], and nothing wakes handoff up when nothing is due.
//!
//! Life of one rollover (whole-generation mode):
//!  1. A reload arrives. If a rollover runs, it joins the queue (all queued callers share the
//!     next rollover). When its turn comes, the version file is read ([`Action::ReadVersion`])
//!     and `--if-changed` callers are settled against it.
//!  2. Generation G+1 starts: workers are spawned one after the other ([`Action::Spawn`], then
//!     [`Input::Spawned`]); each gets a ready deadline.
//!  3. Each reports `READY=1` (or lives `--ready delay:` long). When all are ready, the
//!     stability window starts: for `min_uptime` both generations serve, and a new worker
//!     that exits in it fails the rollover. When it has passed, the slots switch to G+1,
//!     every replaced worker is drained, and the callers hear `ok`.
//!  4. Draining workers get the drain signal and a drain deadline; past it, SIGKILL to their
//!     process group, an ALERT and the `--on-drain-timeout` hook.
//!  5. A new worker that exits or misses its deadline fails the rollover: all new workers are
//!     drained, the old generation keeps serving ("rolled back"). A failed first generation
//!     shuts handoff down with exit code 1.
//!
//! `--rolling` replaces one slot at a time (start, ready, window, switch, drain), so at least
//! N workers are ready throughout; a failure after the first slot leaves both generations
//! ("partial").

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use handoff_common::duration::human;
use handoff_common::protocol::{ExitKind, Outcome, ReloadReply, VersionInfo};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::config::ReadyMode;
use crate::notify::Message;

/// First restart delay after a crash; doubles per consecutive crash up to [`RESTART_MAX`].
pub const RESTART_BASE: Duration = Duration::from_millis(100);
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// With `min_uptime = 0s`: a worker ready this long is healthy (its slot's crash count
/// resets), as before the stability window existed. Otherwise `min_uptime` is that time.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How long past `READY=1` a worker must live to count as healthy, by its generation's
/// `min_uptime`.
fn healthy_after(min_uptime: Duration) -> Duration {
    if min_uptime.is_zero() {
        STABLE_AFTER
    } else {
        min_uptime
    }
}

/// How often the workers' memory is measured while a generation has `max_memory`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A slot with this many consecutive crashes is shown as crash-looping.
pub const CRASH_LOOP: u32 = 3;
/// Slack added to timeouts announced to systemd with `EXTEND_TIMEOUT_USEC=`.
pub const SYSTEMD_SLACK: Duration = Duration::from_secs(5);

pub type WorkerId = u64;
/// A caller waiting for a reload's outcome; the executor keeps the way back to it.
pub type WaiterId = u64;

mod io;
mod report;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use io::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// [`Action::Spawn`] was sent; no pid yet.
    Spawning,
    /// Running, not ready yet.
    Starting {
        #[serde(with = "snapshot::instant")]
        deadline: Instant,
        /// `--ready delay:`: ready at this time.
        #[serde(with = "snapshot::opt_instant")]
        ready_at: Option<Instant>,
    },
    Ready {
        #[serde(with = "snapshot::instant")]
        since: Instant,
    },
    /// Told to drain (the signal goes out as soon as there is a pid).
    Draining {
        #[serde(with = "snapshot::instant")]
        deadline: Instant,
    },
    /// Still there past the drain deadline: SIGKILLed, waiting to be reaped.
    Killed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Spawning => "spawning",
            Phase::Starting { .. } => "starting",
            Phase::Ready { .. } => "ready",
            Phase::Draining { .. } | Phase::Killed => "draining",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Worker {
    slot: usize,
    generation: u64,
    pid: Option<i32>,
    #[serde(with = "snapshot::instant")]
    started: Instant,
    phase: Phase,
    /// The last `STATUS=` it sent.
    status: Option<String>,
    errno: Option<i32>,
    // Fields added after the state format was first written take `default`: a reexec from
    // an older handoff leaves them out.
    /// Why handoff asked it to drain (for its slot's last exit in status).
    #[serde(default)]
    drained_because: Option<String>,
    /// Started after its generation's version file changed on disk: what it runs instead.
    #[serde(default)]
    runs_on_disk: Option<String>,
    /// Its last `WATCHDOG=1`.
    #[serde(default, with = "snapshot::opt_instant")]
    last_ping: Option<Instant>,
    /// Its process tree's RSS at the last sample (with `max_memory`).
    #[serde(default)]
    rss: Option<u64>,
    /// Drained because a replacement took its slot (watchdog, limits, restart-worker), not
    /// by a rollover: a kill at the drain timeout is not the last rollover's.
    #[serde(default)]
    replaced: bool,
}

impl Worker {
    fn new(slot: usize, generation: u64, now: Instant) -> Worker {
        Worker {
            slot,
            generation,
            pid: None,
            started: now,
            phase: Phase::Spawning,
            status: None,
            errno: None,
            last_ping: None,
            rss: None,
            replaced: false,
            runs_on_disk: None,
            drained_because: None,
        }
    }
}

impl Worker {
    /// Its last `WATCHDOG=1`, or `ready_since` if it sent none since it got ready: where
    /// its watchdog interval counts from.
    fn pinged_since(&self, ready_since: Instant) -> Instant {
        self.last_ping.map_or(ready_since, |p| p.max(ready_since))
    }

    /// "; last status: ..." for failure messages, when the worker said anything.
    fn last_words(&self) -> String {
        let mut s = String::new();
        if let Some(st) = &self.status {
            s.push_str(&format!("; last status: {st:?}"));
        }
        if let Some(e) = self.errno {
            s.push_str(&format!(
                "; errno {e} ({})",
                std::io::Error::from_raw_os_error(e)
            ));
        }
        s
    }
}

/// A descendant of a worker that was re-parented to handoff (it left the worker's tree with a
/// double fork, say `spawn({detached: true})`). It goes with its worker: drained when the
/// worker is drained or gone, killed past the drain deadline, waited for at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Stray {
    /// Its worker serves; nothing to do yet. `generation`: the one its environment names,
    /// whose program it runs: it drains by that generation's signal and timeout.
    Attached {
        owner: WorkerId,
        generation: u64,
    },
    Draining {
        #[serde(with = "snapshot::instant")]
        deadline: Instant,
        /// The drain timeout it got (for the ALERT line).
        timeout: Duration,
    },
    Killed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Occupant {
    Vacant,
    Worker(WorkerId),
    /// The worker died; a new one starts at this time.
    Restarting {
        #[serde(with = "snapshot::instant")]
        at: Instant,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    occupant: Occupant,
    /// Consecutive crashes (sets the restart backoff).
    crashes: u32,
    /// A new worker starting beside the occupant, to take its place once ready.
    #[serde(default)]
    incoming: Option<Incoming>,
    /// Replacements that failed in a row (sets when the next automatic one may start).
    #[serde(default)]
    failed_replacements: u32,
    /// No automatic replacement (watchdog, limits) before this time: the last one failed.
    #[serde(default, with = "snapshot::opt_instant")]
    retry_at: Option<Instant>,
    /// The last replacement of this slot's worker, for `handoff status`.
    #[serde(default)]
    last_replacement: Option<LastReplacement>,
    /// Workers started here because the one before exited on its own (crash or stop from
    /// outside), ever: what `pm2 list` calls restarts. Rollovers do not count.
    #[serde(default)]
    restarts: u32,
    /// How the last worker of this slot that is gone ended.
    #[serde(default)]
    last_exit: Option<LastExit>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastReplacement {
    #[serde(with = "snapshot::instant")]
    at: Instant,
    message: String,
}

impl Slot {
    fn vacant() -> Slot {
        Slot {
            occupant: Occupant::Vacant,
            crashes: 0,
            incoming: None,
            failed_replacements: 0,
            retry_at: None,
            last_replacement: None,
            restarts: 0,
            last_exit: None,
        }
    }
}

/// Why a serving worker is being replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Replace {
    /// `handoff restart-worker N`.
    Asked,
    /// It sent no `WATCHDOG=1` for this long.
    Silent(Duration),
    /// It never sent `WATCHDOG=1`, this long after `READY=1`.
    NeverPinged(Duration),
    /// It sent `WATCHDOG=trigger`.
    Triggered,
    /// Its process tree used `rss` bytes, over `max_memory`.
    Memory { rss: u64, limit: u64 },
    /// It ran past `max_age`.
    Age(Duration),
}

impl Replace {
    fn describe(&self) -> String {
        match self {
            Replace::Asked => "restart-worker asked for it".into(),
            Replace::Silent(d) => format!("no WATCHDOG=1 for {} (watchdog)", human(*d)),
            Replace::NeverPinged(d) => format!(
                "no WATCHDOG=1 for {} (watchdog): it never sent one since READY=1 (does it \
                 read WATCHDOG_USEC and WATCHDOG_PID?)",
                human(*d)
            ),
            Replace::Triggered => "it sent WATCHDOG=trigger".into(),
            Replace::Memory { rss, limit } => format!(
                "its process tree uses {}, over max_memory {}",
                mib(*rss),
                mib(*limit)
            ),
            Replace::Age(d) => format!("it is older than max_age {}", human(*d)),
        }
    }

    /// One word for systemd's `STATUS=` line.
    fn short(&self) -> &'static str {
        match self {
            Replace::Asked => "restart-worker",
            Replace::Silent(_) | Replace::NeverPinged(_) | Replace::Triggered => "watchdog",
            Replace::Memory { .. } => "max_memory",
            Replace::Age(_) => "max_age",
        }
    }

    /// Limits replace one worker at a time; a hung or asked-for worker is replaced at once.
    fn is_limit(&self) -> bool {
        matches!(self, Replace::Memory { .. } | Replace::Age(_))
    }
}

/// How long the next automatic replacement of a slot waits after `failed` failed ones.
fn replacement_backoff(failed: u32) -> Duration {
    RESTART_BASE
        .saturating_mul(1u32 << failed.min(16))
        .min(RESTART_MAX)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// A replacement under way: the new worker, and who waits for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Incoming {
    worker: WorkerId,
    /// The worker it replaces.
    old: WorkerId,
    reason: Replace,
    waiter: Option<Waiter>,
}

/// A worker's end, kept per slot for `handoff status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LastExit {
    pid: i32,
    generation: u64,
    status: ExitStatus,
    kind: ExitKind,
    drained_because: Option<String>,
    #[serde(with = "snapshot::instant")]
    at: Instant,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Waiter {
    id: Option<WaiterId>,
    if_changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// The first generation: nothing serves meanwhile, so all slots start at once, and a
    /// failure shuts handoff down.
    Initial,
    Whole,
    Rolling,
}

#[derive(Debug, Serialize, Deserialize)]
struct Rollover {
    generation: u64,
    /// The new generation's worker count (its `Policy::workers`).
    workers: usize,
    #[serde(with = "snapshot::instant")]
    started: Instant,
    mode: Mode,
    waiters: Vec<Waiter>,
    /// Slots whose new worker is still to be spawned.
    to_spawn: VecDeque<usize>,
    /// New workers not yet switched into their slot.
    pending: Vec<WorkerId>,
    /// Slots already switched to the new generation.
    switched: usize,
    /// Every pending worker is ready: the stability window ends (and they switch in) at this
    /// time, unless one of them exits first.
    #[serde(with = "snapshot::opt_instant")]
    stable_at: Option<Instant>,
}

#[derive(Debug, Serialize, Deserialize)]
enum RolloverPhase {
    Idle,
    /// Waiting for [`Input::Version`].
    Preparing {
        waiters: Vec<Waiter>,
        initial: bool,
        /// What the new generation is to run with (boxed: a `Policy` is large, and the
        /// machine keeps one `RolloverPhase`).
        settings: Box<Policy>,
    },
    Running(Rollover),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Life {
    Serving,
    /// Draining everything; exit with this code once no worker is left.
    ShuttingDown {
        code: i32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Generation {
    #[serde(with = "snapshot::instant")]
    started: Instant,
    version: Option<VersionInfo>,
    policy: Policy,
    /// Its `working_directory` resolved when it started (or why that failed): every worker
    /// of this generation, restarts included, runs from there. `None`: no working directory.
    release: Option<Result<PathBuf, String>>,
}

/// The release a rolled back generation started from: `--if-changed` won't try it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FailedRelease {
    hash: String,
    generation: u64,
    /// The settings it was tried with: new settings make it a new attempt.
    settings: Policy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastRollover {
    generation: u64,
    outcome: Outcome,
    message: String,
    duration: Duration,
    #[serde(with = "snapshot::instant")]
    at: Instant,
    /// Workers it drained that were SIGKILLed at the drain timeout.
    forced_kills: u32,
}

/// Serialize/Deserialize: `handoff reexec` carries the whole machine over an exec
/// ([`Machine::export`], [`Machine::import`]). A field added later needs a serde derive on its
/// type, and `#[serde(default)]` if a state written by an older handoff may lack it.
#[derive(Serialize, Deserialize)]
pub struct Machine {
    /// The settings handoff started with: the first generation's.
    policy: Policy,
    /// Settings a reload or scale handed in, for the next rollover to start with (the latest
    /// wins); `None`: the settings in force.
    next: Option<Policy>,
    /// `handoff scale N` asked for since the file was last read: applied when the next
    /// rollover begins, to the settings it starts with then (a rollover running when the
    /// scale arrived may still change them: its settings, if it switches in, or the old
    /// ones, if it is rolled back).
    scale_to: Option<usize>,
    /// The restart-bound settings the config file changed, as of its last reading: told with
    /// every reload answer until the file agrees again.
    restart_needed: Vec<String>,
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: WorkerId,
    slots: Vec<Slot>,
    generations: BTreeMap<u64, Generation>,
    current: u64,
    next_generation: u64,
    rollover: RolloverPhase,
    queued: Vec<Waiter>,
    last: Option<LastRollover>,
    failed_release: Option<FailedRelease>,
    life: Life,
    #[serde(with = "snapshot::instant")]
    started: Instant,
    /// Re-parented descendants of workers, by pid.
    strays: BTreeMap<i32, Stray>,
    /// Look for new strays once this input is handled (one scan however many reasons).
    #[serde(skip)]
    scan: bool,
    /// Workers SIGKILLed at the drain timeout, ever.
    forced_kills: u64,
    /// Those kills not yet told to a reload caller (they come with the next answer).
    unreported_kills: Vec<String>,
    /// When the workers' memory is measured next (with `max_memory`); `None`: a sample is
    /// out, or no limit is set. Not carried over a reexec: the new image samples at once
    /// (a sample out at the exec would never be answered).
    #[serde(skip)]
    next_sample: Option<Instant>,
    /// Actions of the input being handled: empty between inputs, so never carried over.
    #[serde(skip)]
    out: Vec<Action>,
}

impl Machine {
    pub fn new(policy: Policy, now: Instant) -> Machine {
        let slots = (0..policy.workers).map(|_| Slot::vacant()).collect();
        Machine {
            policy,
            next: None,
            scale_to: None,
            restart_needed: Vec::new(),
            workers: BTreeMap::new(),
            next_worker: 1,
            slots,
            generations: BTreeMap::new(),
            current: 0,
            next_generation: 1,
            rollover: RolloverPhase::Idle,
            queued: Vec::new(),
            last: None,
            failed_release: None,
            life: Life::Serving,
            started: now,
            strays: BTreeMap::new(),
            scan: false,
            forced_kills: 0,
            unreported_kills: Vec::new(),
            next_sample: Some(now),
            out: Vec::new(),
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        match input {
            Input::Start => self.begin(now, vec![], true),
            Input::Reload { waiter, if_changed } => self.on_reload(
                now,
                Waiter {
                    id: waiter,
                    if_changed,
                },
            ),
            Input::ReloadConfig {
                waiter,
                if_changed,
                config,
                restart_needed,
            } => self.on_reload_config(
                now,
                Waiter {
                    id: waiter,
                    if_changed,
                },
                config,
                restart_needed,
            ),
            Input::Scale { waiter, workers } => self.on_scale(
                now,
                Waiter {
                    id: waiter,
                    if_changed: false,
                },
                workers,
            ),
            Input::RestartWorker { waiter, slot } => self.on_restart_worker(
                now,
                Waiter {
                    id: waiter,
                    if_changed: false,
                },
                slot,
            ),
            Input::Usage(samples) => self.on_usage(now, samples),
            Input::Version(v) => self.on_version(now, Some(v), None),
            Input::Prepared { version, release } => self.on_version(now, version, Some(release)),
            Input::RunsOnDisk { worker, note } => self.on_runs_on_disk(worker, note),
            Input::Spawned { worker, pid } => self.on_spawned(now, worker, pid),
            Input::SpawnFailed {
                worker,
                error,
                ours,
            } => self.on_spawn_failed(now, worker, error, ours),
            Input::Children(children) => self.on_children(now, children),
            Input::Notify { worker, msg } => self.on_notify(now, worker, msg),
            Input::Exited { pid, status } => self.on_exit(now, pid, status),
            Input::Tick => {
                self.on_tick(now);
                self.check_health(now);
            }
            Input::Shutdown { why, code } => self.begin_shutdown(now, &why, code),
            Input::KillAll => self.kill_all(),
        }
        self.settle_crash_counts(now);
        self.start_queued(now);
        if std::mem::take(&mut self.scan) {
            self.out.push(Action::ScanChildren);
        }
        std::mem::take(&mut self.out)
    }

    /// The exit code, once handoff is shutting down and every worker is gone.
    pub fn exit_code(&self) -> Option<i32> {
        match self.life {
            Life::ShuttingDown { code } if self.workers.is_empty() && self.strays.is_empty() => {
                Some(code)
            }
            _ => None,
        }
    }

    /// Whether `pid` is one of the machine's workers or known strays (a scan for new strays
    /// need not look at it).
    pub fn knows_pid(&self, pid: i32) -> bool {
        self.strays.contains_key(&pid) || self.workers.values().any(|w| w.pid == Some(pid))
    }

    /// No rollover runs, is prepared or queued, no `restart-worker` caller waits, and handoff
    /// serves: the state a `handoff reexec` waits for (waiters are connections, which do not
    /// survive an exec; draining workers, restarts, strays and automatic replacements are
    /// state, which does).
    pub fn idle(&self) -> bool {
        matches!(self.rollover, RolloverPhase::Idle)
            && self.queued.is_empty()
            && self.life == Life::Serving
            && !self
                .slots
                .iter()
                .any(|s| s.incoming.as_ref().is_some_and(|i| i.waiter.is_some()))
    }

    pub fn shutting_down(&self) -> bool {
        self.life != Life::Serving
    }

    /// When the next [`Input::Tick`] is due; `None`: nothing is.
    pub fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().flat_map(|w| match w.phase {
            Phase::Starting { deadline, ready_at } => [Some(deadline), ready_at],
            Phase::Draining { deadline } => [Some(deadline), None],
            _ => [None, None],
        });
        let restarts = self.slots.iter().map(|s| match s.occupant {
            Occupant::Restarting { at } => Some(at),
            _ => None,
        });
        let strays = self.strays.values().map(|s| match s {
            Stray::Draining { deadline, .. } => Some(*deadline),
            _ => None,
        });
        let window = match &self.rollover {
            RolloverPhase::Running(ro) => ro.stable_at,
            _ => None,
        };
        let healthy = (0..self.slots.len()).map(|slot| self.healthy_at(slot));
        workers
            .chain(restarts)
            .chain(strays)
            .chain(healthy)
            .chain([window, self.health_deadline()])
            .flatten()
            .min()
    }

    /// How long past `READY=1` worker `id` must live to count as healthy.
    fn healthy_after(&self, id: WorkerId) -> Duration {
        healthy_after(self.policy_of(id).min_uptime)
    }

    /// When the worker in `slot` will have been healthy long enough to clear the slot's crash
    /// count (`None`: no count to clear, or no ready worker there).
    fn healthy_at(&self, slot: usize) -> Option<Instant> {
        let s = &self.slots[slot];
        let Occupant::Worker(id) = s.occupant else {
            return None;
        };
        match self.workers.get(&id)?.phase {
            Phase::Ready { since } if s.crashes > 0 => Some(since + self.healthy_after(id)),
            _ => None,
        }
    }

    /// Clears the crash count of every slot whose worker has been up `healthy_after` past
    /// `READY=1`: the slot no longer crash-loops, and `handoff status` stops saying so.
    fn settle_crash_counts(&mut self, now: Instant) {
        if self.shutting_down() {
            return;
        }
        for slot in 0..self.slots.len() {
            if let Some(at) = self.healthy_at(slot)
                && at <= now
            {
                let healthy = match self.slots[slot].occupant {
                    Occupant::Worker(id) => human(self.healthy_after(id)),
                    _ => continue,
                };
                let crashes = std::mem::take(&mut self.slots[slot].crashes);
                self.out.push(Action::Log(Log {
                    level: Level::Info,
                    generation: None,
                    slot: Some(slot),
                    pid: None,
                    message: format!(
                        "worker {slot} has been up {healthy} past READY=1: crash count \
                         ({crashes}) reset"
                    ),
                }));
            }
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The settings in force: the serving generation's (before the first one serves, the
    /// settings handoff started with).
    pub fn in_force(&self) -> &Policy {
        self.generations
            .get(&self.current)
            .map_or(&self.policy, |g| &g.policy)
    }

    /// The settings `generation` runs with (the executor starts its workers by them).
    pub fn settings_of(&self, generation: u64) -> &Policy {
        self.generations
            .get(&generation)
            .map_or_else(|| self.in_force(), |g| &g.policy)
    }

    /// Whether worker `id` serves `slot` (a slot a scale-down removed serves nobody).
    fn occupies(&self, slot: usize, id: WorkerId) -> bool {
        self.slots
            .get(slot)
            .is_some_and(|s| s.occupant == Occupant::Worker(id))
    }

    /// The settings worker `id` runs by: its generation's.
    fn policy_of(&self, id: WorkerId) -> &Policy {
        match self.workers.get(&id) {
            Some(w) => self.settings_of(w.generation),
            None => self.in_force(),
        }
    }

    // ---- rollovers -----------------------------------------------------------------------

    fn on_reload(&mut self, now: Instant, waiter: Waiter) {
        if self.shutting_down() {
            self.reply(waiter, self.refused("handoff is shutting down"));
            return;
        }
        match self.rollover {
            // Queued behind the running one; all queued callers share the next rollover.
            RolloverPhase::Preparing { .. } | RolloverPhase::Running(_) => self.queued.push(waiter),
            RolloverPhase::Idle => self.begin(now, vec![waiter], false),
        }
    }

    /// A reload with the config file just read: a refused file changes nothing (not even
    /// what a queued rollover will start with); a valid one is what the next rollover runs.
    fn on_reload_config(
        &mut self,
        now: Instant,
        waiter: Waiter,
        config: Result<Box<Policy>, String>,
        restart_needed: Vec<String>,
    ) {
        match config {
            Err(e) => {
                let message = format!(
                    "config file refused, nothing changed (generation {} serves): {e}",
                    self.current
                );
                self.log(Level::Error, None, message.clone());
                let answer = self.refused(&message);
                self.reply(waiter, answer);
            }
            Ok(settings) => {
                for line in &restart_needed {
                    self.log(Level::Warn, None, line.clone());
                }
                self.restart_needed = restart_needed;
                self.next = Some(*settings);
                // The file was read after the scale: its worker count wins.
                self.scale_to = None;
                self.on_reload(now, waiter);
            }
        }
    }

    /// `handoff scale N`: the settings in force (or those a queued reload brought) with N
    /// workers, until a reload reads the file again.
    fn on_scale(&mut self, now: Instant, waiter: Waiter, workers: usize) {
        if workers == 0 || workers > crate::config::MAX_WORKERS {
            let answer = self.refused(&format!(
                "cannot scale to {workers} workers: the range is 1..={}",
                crate::config::MAX_WORKERS
            ));
            self.reply(waiter, answer);
            return;
        }
        // Not resolved against the settings in force now: during a rollover (its stability
        // window, say) those are the old generation's, and taking them here undid the
        // command or environment the running reload brings once it had switched in.
        self.scale_to = Some(workers);
        self.on_reload(now, waiter);
    }

    fn begin(&mut self, now: Instant, waiters: Vec<Waiter>, initial: bool) {
        let settings = if initial {
            self.policy.clone()
        } else {
            let mut s = self.next.take().unwrap_or_else(|| self.in_force().clone());
            if let Some(n) = self.scale_to.take() {
                s.workers = n;
            }
            s
        };
        self.rollover = RolloverPhase::Preparing {
            waiters,
            initial,
            settings: Box::new(settings),
        };
        let pinned = match &self.rollover {
            RolloverPhase::Preparing { settings, .. } => settings.working_directory.is_some(),
            _ => false,
        };
        if self.policy.version_file || pinned {
            self.out.push(Action::ReadVersion);
        } else {
            self.start_rollover(now, None, None);
        }
    }

    fn on_version(
        &mut self,
        now: Instant,
        version: Option<VersionInfo>,
        release: Option<Result<PathBuf, String>>,
    ) {
        if matches!(self.rollover, RolloverPhase::Preparing { .. }) {
            self.start_rollover(now, version, release);
        }
    }

    /// The settings of the rollover waiting for [`Input::Prepared`] (the executor resolves
    /// their `working_directory`).
    pub fn preparing(&self) -> Option<&Policy> {
        match &self.rollover {
            RolloverPhase::Preparing { settings, .. } => Some(settings),
            _ => None,
        }
    }

    /// The release dir `generation` pinned when it started: `Some(Ok)` to run its workers
    /// from, `Some(Err)` why it could not be resolved, `None` without `working_directory`.
    pub fn release_of(&self, generation: u64) -> Option<&Result<PathBuf, String>> {
        self.generations.get(&generation)?.release.as_ref()
    }

    /// The version file `generation` started from, as read then.
    pub fn version_of(&self, generation: u64) -> Option<&VersionInfo> {
        self.generations.get(&generation)?.version.as_ref()
    }

    /// A worker runs files other than its generation's release (an in-place install changed
    /// them after the generation started): say so once, and keep it for `handoff status`.
    fn on_runs_on_disk(&mut self, id: WorkerId, note: String) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.runs_on_disk = Some(note.clone());
        let (generation, slot, pid) = (w.generation, w.slot, w.pid);
        self.out.push(Action::Log(Log {
            level: Level::Warn,
            generation: Some(generation),
            slot: Some(slot),
            pid,
            message: format!("worker {slot} {note}"),
        }));
    }

    /// Settles the `--if-changed` callers against `version`, then starts the rollover for the
    /// rest (if any are left).
    fn start_rollover(
        &mut self,
        now: Instant,
        version: Option<VersionInfo>,
        release: Option<Result<PathBuf, String>>,
    ) {
        let RolloverPhase::Preparing {
            waiters,
            initial,
            settings,
        } = std::mem::replace(&mut self.rollover, RolloverPhase::Idle)
        else {
            return;
        };
        let settings = *settings;
        let changes = self.in_force().changes(&settings);
        let (conditional, mut go): (Vec<Waiter>, Vec<Waiter>) =
            waiters.into_iter().partition(|w| w.if_changed && !initial);
        // Settled here, after any earlier rollover has finished, so two triggers for one
        // release give one rollover.
        for w in conditional {
            match self.settle_if_changed(version.as_ref(), &settings, go.is_empty()) {
                Some(answer) => {
                    self.log(
                        Level::Info,
                        None,
                        format!("conditional reload: {}", answer.message),
                    );
                    self.reply(w, answer);
                }
                None => go.push(w),
            }
        }
        if go.is_empty() && !initial {
            return;
        }
        if let Some(e) = version.as_ref().and_then(|v| v.error.as_ref()) {
            self.log(Level::Warn, None, format!("version file: {e}"));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let label = version
            .as_ref()
            .and_then(|v| v.version.clone())
            .unwrap_or_else(|| "-".into());
        let from = match &release {
            Some(Ok(dir)) => format!(", from {}", dir.display()),
            Some(Err(e)) => {
                self.log(Level::Error, Some(generation), e.clone());
                String::new()
            }
            None => String::new(),
        };
        if !initial && !changes.is_empty() {
            self.log(
                Level::Info,
                Some(generation),
                format!("new settings: {}", changes.join(", ")),
            );
        }
        let (workers, rolling, ready_timeout) =
            (settings.workers, settings.rolling, settings.ready_timeout);
        self.generations.insert(
            generation,
            Generation {
                started: now,
                version,
                policy: settings,
                release,
            },
        );
        let mode = if initial {
            Mode::Initial
        } else if rolling {
            Mode::Rolling
        } else {
            Mode::Whole
        };
        self.log(
            Level::Info,
            Some(generation),
            format!(
                "{} (version {label}{from}, {})",
                if initial {
                    "starting the first generation"
                } else {
                    "rollover started"
                },
                if mode == Mode::Rolling {
                    "one worker at a time"
                } else {
                    "whole generation"
                },
            ),
        );
        let mut systemd = Vec::new();
        if !initial {
            systemd.push(SystemdState::Reloading);
        }
        systemd.push(SystemdState::ExtendTimeout(ready_timeout + SYSTEMD_SLACK));
        self.out.push(Action::Systemd(systemd));
        self.rollover = RolloverPhase::Running(Rollover {
            generation,
            workers,
            started: now,
            mode,
            waiters: go,
            to_spawn: (0..workers).collect(),
            pending: Vec::new(),
            switched: 0,
            stable_at: None,
        });
        self.spawn_next(now);
    }

    /// The answer for an `--if-changed` caller, or `None` when it takes part in the rollover.
    /// `alone`: no unconditional caller forces the rollover anyway.
    /// New settings (a changed config file) count as a change: the running generation no
    /// longer matches what is on disk.
    fn settle_if_changed(
        &self,
        version: Option<&VersionInfo>,
        settings: &Policy,
        alone: bool,
    ) -> Option<ReloadReply> {
        let same_settings = self.in_force().changes(settings).is_empty();
        let Some(v) = version else {
            return Some(self.refused("--if-changed needs `version_file` in handoff's settings"));
        };
        if let Some(e) = &v.error {
            return Some(self.refused(&format!("{e}; not rolling over")));
        }
        let current_hash = self
            .generations
            .get(&self.current)
            .and_then(|g| g.version.as_ref())
            .map(|v| v.hash.as_str());
        if alone && same_settings && current_hash == Some(v.hash.as_str()) {
            return Some(self.answer(
                Outcome::Unchanged,
                format!(
                    "{} unchanged since generation {}; no rollover",
                    v.path.display(),
                    self.current
                ),
            ));
        }
        if let Some(f) = &self.failed_release
            && alone
            && f.hash == v.hash
            && f.settings.changes(settings).is_empty()
        {
            // Retrying the very release that just failed would fail the same way (an rpm
            // scriptlet and the .path trigger both asking, say).
            return Some(self.answer(
                Outcome::Unchanged,
                format!(
                    "{} is the release generation {} started from (with the same settings) and \
                     was rolled back; not trying it again (a plain `handoff reload` would); \
                     generation {} serves",
                    v.path.display(),
                    f.generation,
                    self.current
                ),
            ));
        }
        None
    }

    /// Spawns the next worker of the running rollover.
    fn spawn_next(&mut self, now: Instant) {
        let RolloverPhase::Running(ro) = &mut self.rollover else {
            return;
        };
        let Some(slot) = ro.to_spawn.pop_front() else {
            return;
        };
        let generation = ro.generation;
        let id = self.next_worker;
        self.next_worker += 1;
        ro.pending.push(id);
        self.workers.insert(id, Worker::new(slot, generation, now));
        self.out.push(Action::Spawn {
            worker: id,
            slot,
            generation,
        });
    }

    /// The rollover of which `id` is a new worker, if any.
    fn rollover_of(&mut self, id: WorkerId) -> Option<&mut Rollover> {
        match &mut self.rollover {
            RolloverPhase::Running(ro) if ro.pending.contains(&id) => Some(ro),
            _ => None,
        }
    }

    /// Whether `ro` is in its soak: `--rolling`, first slot, `soak` longer than `min_uptime`.
    fn soaking(&self, ro: &Rollover) -> bool {
        let p = self.settings_of(ro.generation);
        ro.mode == Mode::Rolling && ro.switched == 0 && p.soak > p.min_uptime
    }

    /// How long `ro`'s pending workers must stay up past `READY=1` before they switch in:
    /// the new generation's own `min_uptime` (a reload may have changed it), or its `soak`
    /// for the first slot of a rolling rollover.
    fn window(&self, ro: &Rollover) -> Duration {
        let p = self.settings_of(ro.generation);
        if self.soaking(ro) {
            p.soak
        } else {
            p.min_uptime
        }
    }

    /// Switches the pending workers in once all are ready; then the next slot (rolling) or
    /// the end of the rollover.
    fn advance(&mut self, now: Instant) {
        let (window, soaking) = match &self.rollover {
            RolloverPhase::Running(ro) => (self.window(ro), self.soaking(ro)),
            _ => return,
        };
        let RolloverPhase::Running(ro) = &mut self.rollover else {
            return;
        };
        let all_ready = !ro.pending.is_empty()
            && ro.pending.iter().all(|id| {
                self.workers
                    .get(id)
                    .is_some_and(|w| matches!(w.phase, Phase::Ready { .. }))
            });
        // Whole mode switches all slots at once: wait until every one was spawned.
        if !all_ready || (ro.mode != Mode::Rolling && !ro.to_spawn.is_empty()) {
            return;
        }
        // The stability window: the new workers serve beside the old ones for `min_uptime`
        // before anything is drained; one that exits meanwhile fails the rollover.
        match ro.stable_at {
            None if !window.is_zero() => {
                ro.stable_at = Some(now + window);
                let (generation, slots) = (ro.generation, ro.pending.len());
                self.log(
                    Level::Info,
                    Some(generation),
                    format!(
                        "{} ready; {} of {}: {} until then",
                        if slots == 1 {
                            "new worker".to_string()
                        } else {
                            format!("all {slots} new workers")
                        },
                        if soaking {
                            "soak (the first slot of a rolling rollover)"
                        } else {
                            "stability window"
                        },
                        human(window),
                        if self.current == 0 {
                            "READY=1 to systemd waits"
                        } else {
                            "the old workers keep serving"
                        }
                    ),
                );
                // systemd's own timeout for the start or reload must cover the window.
                self.out
                    .push(Action::Systemd(vec![SystemdState::ExtendTimeout(
                        window + SYSTEMD_SLACK,
                    )]));
                return;
            }
            Some(at) if now < at => return,
            _ => {}
        }
        ro.stable_at = None;
        let pending = std::mem::take(&mut ro.pending);
        ro.switched += pending.len();
        let generation = ro.generation;
        let more = ro.mode == Mode::Rolling && !ro.to_spawn.is_empty();
        let started = ro.started;
        let workers = ro.workers;
        for id in pending {
            let slot = self.workers[&id].slot;
            // Scaling up: the slot exists from its first worker's switch on.
            while self.slots.len() <= slot {
                self.slots.push(Slot::vacant());
            }
            // Replacing the occupant also cancels a restart pending for this slot.
            let old = std::mem::replace(&mut self.slots[slot].occupant, Occupant::Worker(id));
            if let Occupant::Worker(old) = old {
                self.drain(now, old, "replaced");
            }
            self.cancel_replacement(now, slot, generation);
        }
        self.current = generation;
        if more {
            self.spawn_next(now);
            return;
        }
        // Scaling down: the slots the new generation has no worker for go, their workers
        // drained like any replaced one.
        let keep = workers.min(self.slots.len());
        for slot in keep..self.slots.len() {
            self.cancel_replacement(now, slot, generation);
        }
        for old in self.slots.split_off(keep) {
            if let Occupant::Worker(old) = old.occupant {
                self.drain(now, old, "scaled down");
            }
        }
        let n = self.slots.len();
        let message = format!(
            "generation {generation} serves ({}) after {}{}",
            plural(n, "worker"),
            human(now.saturating_duration_since(started)),
            if window.is_zero() {
                String::new()
            } else {
                format!(", stable {} past READY=1", human(window))
            }
        );
        self.finish(now, Outcome::Ok, message);
    }

    /// New worker `id` of the running rollover hung or sent `WATCHDOG=trigger`: it fails the
    /// rollover, and is never one of the workers a failed first generation keeps (it is not
    /// fit to serve; fail_first_generation keeps the ready ones). Once ready, it fails the
    /// start as a crash there does.
    fn new_worker_failed(&mut self, now: Instant, id: WorkerId, reason: String) {
        let Some(ro) = self.rollover_of(id) else {
            return;
        };
        if ro.mode != Mode::Initial {
            return self.fail_rollover(now, reason, true);
        }
        ro.pending.retain(|p| *p != id);
        let ready = matches!(
            self.workers.get(&id).map(|w| w.phase),
            Some(Phase::Ready { .. })
        );
        self.drain(now, id, "the first generation failed");
        self.fail_first_generation(now, reason, !ready);
    }

    /// `release_at_fault`: false when handoff itself could not start a worker (out of fds,
    /// say): the release was never tried, so it is not remembered as a failed one.
    fn fail_rollover(&mut self, now: Instant, reason: String, release_at_fault: bool) {
        let RolloverPhase::Running(ro) = &mut self.rollover else {
            return;
        };
        let (generation, switched, mode) = (ro.generation, ro.switched, ro.mode);
        if mode == Mode::Initial {
            return self.fail_first_generation(now, reason, true);
        }
        let pending = std::mem::take(&mut ro.pending);
        ro.to_spawn.clear();
        // New workers may already have accepted connections: drain them, don't kill them.
        for id in pending {
            self.drain(now, id, "rolled back");
        }
        let n = self.slots.len();
        let (outcome, message) = if switched > 0 {
            (
                Outcome::Partial,
                format!(
                    "rolling rollover stopped at worker {switched} of {n}: {reason}; {} run \
                     generation {generation}, {} still run the previous one",
                    plural(switched, "worker"),
                    n - switched
                ),
            )
        } else if release_at_fault {
            (
                Outcome::RolledBack,
                format!(
                    "rolled back: generation {} still serves; {reason}",
                    self.current
                ),
            )
        } else {
            (
                Outcome::Refused,
                format!(
                    "handoff could not try generation {generation}: {reason}; generation {} \
                     still serves, and the release was not at fault: retry once handoff has \
                     the resources",
                    self.current
                ),
            )
        };
        self.log(Level::Error, Some(generation), message.clone());
        self.finish(now, outcome, message);
        // A rolling rollover stopped part of the way serves with the slots it has: a scale
        // up that never reached its new slots does not run that many workers, so the
        // generation must not claim it (status, `config_differs` and `--if-changed` read
        // it). `failed_release` above keeps the count that was tried.
        if outcome == Outcome::Partial
            && let Some(g) = self.generations.get_mut(&generation)
        {
            g.policy.workers = n;
        }
        if !release_at_fault
            && let Some(f) = &self.failed_release
            && f.generation == generation
        {
            self.failed_release = None;
        }
    }

    /// A first generation has nothing to fall back to. If none of its workers got ready,
    /// handoff shuts down with exit code 1 (systemd sees the start fail). If some did, they
    /// already answer requests: they stay, the other slots restart with backoff as after a
    /// crash, and the start completes as `partial`. `keep_ready: false` (a worker crashed
    /// within `min_uptime` of its `READY=1`: the release crashes after start) fails the start
    /// whatever the others did.
    fn fail_first_generation(&mut self, now: Instant, reason: String, keep_ready: bool) {
        let RolloverPhase::Running(ro) = &mut self.rollover else {
            return;
        };
        let generation = ro.generation;
        let pending = std::mem::take(&mut ro.pending);
        ro.to_spawn.clear();
        let ready: Vec<WorkerId> = pending
            .iter()
            .copied()
            .filter(|id| keep_ready && matches!(self.workers[id].phase, Phase::Ready { .. }))
            .collect();
        for id in pending.iter().filter(|id| !ready.contains(id)) {
            self.drain(now, *id, "the first generation failed");
        }
        if ready.is_empty() {
            self.rollover = RolloverPhase::Idle;
            self.log(
                Level::Error,
                Some(generation),
                format!("the first generation failed: {reason}"),
            );
            self.begin_shutdown(now, "the first generation failed", 1);
            return;
        }
        for &id in &ready {
            let slot = self.workers[&id].slot;
            self.slots[slot].occupant = Occupant::Worker(id);
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].occupant == Occupant::Vacant {
                self.schedule_restart(now, slot, true);
            }
        }
        self.current = generation;
        let n = self.slots.len();
        let message = format!(
            "started with {} of {n} ready: {reason}; the others restart with backoff",
            ready.len()
        );
        self.log(Level::Warn, Some(generation), message.clone());
        self.finish(now, Outcome::Partial, message);
    }

    fn finish(&mut self, now: Instant, outcome: Outcome, message: String) {
        let RolloverPhase::Running(ro) = std::mem::replace(&mut self.rollover, RolloverPhase::Idle)
        else {
            return;
        };
        let hash = self
            .generations
            .get(&ro.generation)
            .and_then(|g| g.version.as_ref())
            .map(|v| v.hash.clone());
        self.failed_release = match outcome {
            Outcome::RolledBack | Outcome::Partial => hash.map(|hash| FailedRelease {
                hash,
                generation: ro.generation,
                settings: self.settings_of(ro.generation).clone(),
            }),
            _ => None,
        };
        let duration = now.saturating_duration_since(ro.started);
        if outcome == Outcome::Ok {
            self.log(Level::Info, Some(ro.generation), message.clone());
        }
        let mut answer = self.answer(outcome, message.clone());
        answer.duration_ms = duration.as_millis() as u64;
        if ro.waiters.iter().any(|w| w.id.is_some()) {
            answer.warnings = std::mem::take(&mut self.unreported_kills);
        }
        for w in ro.waiters {
            self.reply(w, answer.clone());
        }
        self.last = Some(LastRollover {
            generation: ro.generation,
            outcome,
            message,
            duration,
            at: now,
            forced_kills: 0,
        });
        self.forget_idle_generations();
        // READY=1 ends the start (first generation) or the RELOADING=1 state, either way.
        self.out.push(Action::Systemd(vec![SystemdState::Ready]));
    }

    fn start_queued(&mut self, now: Instant) {
        if !matches!(self.rollover, RolloverPhase::Idle) || self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        if self.shutting_down() {
            for w in queued {
                self.reply(w, self.refused("handoff is shutting down"));
            }
            return;
        }
        self.begin(now, queued, false);
    }

    /// Generations with no worker left (and not current or starting) are history.
    fn forget_idle_generations(&mut self) {
        let starting = match &self.rollover {
            RolloverPhase::Running(ro) => Some(ro.generation),
            _ => None,
        };
        // A re-parented descendant not yet drained still needs its generation's settings.
        let strays = self.strays.values().filter_map(|s| match s {
            Stray::Attached { generation, .. } => Some(*generation),
            _ => None,
        });
        let live: Vec<u64> = self
            .workers
            .values()
            .map(|w| w.generation)
            .chain(strays)
            .collect();
        let current = self.current;
        self.generations
            .retain(|g, _| *g == current || Some(*g) == starting || live.contains(g));
    }

    // ---- workers -------------------------------------------------------------------------

    fn on_spawned(&mut self, now: Instant, id: WorkerId, pid: i32) {
        let p = self.policy_of(id);
        let ready_timeout = p.ready_timeout;
        let delay = match p.ready {
            ReadyMode::Delay(d) => Some(now + d),
            ReadyMode::Notify => None,
        };
        let signal = p.drain_signal;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.pid = Some(pid);
        w.started = now;
        match w.phase {
            Phase::Spawning => {
                w.phase = Phase::Starting {
                    deadline: now + ready_timeout,
                    ready_at: delay,
                };
                self.log_worker(Level::Info, id, "worker started".into());
            }
            // Told to drain before it existed (shutdown during the spawn).
            Phase::Draining { .. } => self.out.push(Action::Signal { pid, signal }),
            _ => {}
        }
        // Whole mode starts the next slot as soon as this one runs.
        if let Some(ro) = self.rollover_of(id)
            && ro.mode != Mode::Rolling
        {
            self.spawn_next(now);
        }
    }

    fn on_spawn_failed(&mut self, now: Instant, id: WorkerId, error: String, ours: bool) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        if let Some(ro) = self.rollover_of(id) {
            ro.pending.retain(|p| *p != id);
            let reason = format!(
                "cannot start worker {} of generation {}: {error}",
                w.slot, w.generation
            );
            self.fail_rollover(now, reason, !ours);
        } else if let Some(slot) = self.incoming_of(id) {
            let reason = format!("cannot start its replacement: {error}");
            self.replacement_failed(now, slot, &reason, !ours);
            if self.slots[slot].occupant == Occupant::Worker(id) {
                self.schedule_restart(now, slot, true);
            }
        } else if self.occupies(w.slot, id) {
            self.log(
                Level::Error,
                Some(w.generation),
                format!("restarting worker {} failed: {error}", w.slot),
            );
            self.schedule_restart(now, w.slot, true);
        }
        self.forget_idle_generations();
    }

    fn on_notify(&mut self, now: Instant, id: WorkerId, msg: Message) {
        let notify_mode = self.policy_of(id).ready == ReadyMode::Notify;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if let Some(s) = msg.status {
            w.status = Some(s);
        }
        if msg.errno.is_some() {
            w.errno = msg.errno;
        }
        if msg.watchdog {
            w.last_ping = Some(now);
        }
        if let (Some(ext), Phase::Starting { deadline, ready_at }) = (msg.extend_timeout, w.phase)
            && now + ext > deadline
        {
            // As systemd does: the deadline moves to "now + extension", if later.
            w.phase = Phase::Starting {
                deadline: now + ext,
                ready_at,
            };
            // systemd's own timeout for the start (or the reload) must follow, or it gives
            // up on handoff while the worker is still within its time.
            if self.rollover_of(id).is_some() {
                self.out
                    .push(Action::Systemd(vec![SystemdState::ExtendTimeout(
                        ext + SYSTEMD_SLACK,
                    )]));
            }
        }
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if msg.ready && notify_mode && matches!(w.phase, Phase::Starting { .. }) {
            self.mark_ready(now, id);
        }
        if msg.watchdog_trigger {
            self.watchdog_triggered(now, id);
        }
    }

    /// `WATCHDOG=trigger`: a serving worker is replaced at once; a new worker of a rollover
    /// fails it (the release says it is broken). Only with `watchdog` set: without, the
    /// message means nothing (as systemd ignores it without `WatchdogSec=`), and a worker
    /// that sends it anyway must not stop a start or a reload.
    fn watchdog_triggered(&mut self, now: Instant, id: WorkerId) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if self.settings_of(w.generation).watchdog.is_none() {
            return;
        }
        let (slot, pid) = (w.slot, w.pid.unwrap_or_default());
        let words = w.last_words();
        if self.rollover_of(id).is_some() {
            let reason = format!("worker {slot} (pid {pid}) sent WATCHDOG=trigger{words}");
            self.new_worker_failed(now, id, reason);
        } else if self.occupies(slot, id) {
            if let Err(e) = self.replace(now, slot, Replace::Triggered, None) {
                self.log_worker(Level::Warn, id, format!("WATCHDOG=trigger ignored: {e}"));
            }
        }
    }

    fn mark_ready(&mut self, now: Instant, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.phase = Phase::Ready { since: now };
        let ms = now.saturating_duration_since(w.started).as_millis();
        self.log_worker(Level::Info, id, format!("worker ready after {ms} ms"));
        if let Some(slot) = self.incoming_of(id) {
            self.swap_in(now, slot);
        }
        self.advance(now);
    }

    fn on_tick(&mut self, now: Instant) {
        if let RolloverPhase::Running(ro) = &self.rollover
            && ro.stable_at.is_some_and(|at| at <= now)
        {
            self.advance(now);
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            // Each step may change other workers: look at this one afresh.
            let Some(phase) = self.workers.get(&id).map(|w| w.phase) else {
                continue;
            };
            match phase {
                Phase::Starting {
                    ready_at: Some(at), ..
                } if at <= now => self.mark_ready(now, id),
                Phase::Starting { deadline, .. } if deadline <= now => {
                    self.ready_deadline_passed(now, id)
                }
                Phase::Draining { deadline } if deadline <= now => self.drain_deadline_passed(id),
                _ => {}
            }
        }
        let due: Vec<(i32, Duration)> = self
            .strays
            .iter()
            .filter_map(|(pid, s)| match s {
                Stray::Draining { deadline, timeout } if *deadline <= now => Some((*pid, *timeout)),
                _ => None,
            })
            .collect();
        for (pid, timeout) in due {
            self.strays.insert(pid, Stray::Killed);
            self.log(
                Level::Error,
                None,
                format!(
                    "ALERT: pid {pid}, a descendant of a worker re-parented to handoff, still runs \
                     {} after the drain signal; sending SIGKILL",
                    human(timeout)
                ),
            );
            self.kill(pid);
        }
        for slot in 0..self.slots.len() {
            if let Occupant::Restarting { at } = self.slots[slot].occupant
                && at <= now
            {
                self.restart(now, slot);
            }
        }
    }

    fn ready_deadline_passed(&mut self, now: Instant, id: WorkerId) {
        let w = &self.workers[&id];
        let (Phase::Starting { deadline, .. }, Some(pid)) = (w.phase, w.pid) else {
            return;
        };
        let reason = format!(
            "worker {} (pid {pid}) was not ready within {}{}",
            w.slot,
            human(deadline.saturating_duration_since(w.started)),
            w.last_words()
        );
        let slot = w.slot;
        if self.rollover_of(id).is_some() {
            self.fail_rollover(now, reason, true);
        } else if let Some(slot) = self.incoming_of(id) {
            self.drain(now, id, "not ready in time");
            self.replacement_failed(now, slot, &reason, true);
            if self.occupies(slot, id) {
                self.schedule_restart(now, slot, true);
            }
        } else {
            // A restarted worker that never got ready: drain it and count a crash.
            self.log_worker(Level::Warn, id, reason);
            self.drain(now, id, "not ready in time");
            if self.occupies(slot, id) {
                self.schedule_restart(now, slot, true);
            }
        }
    }

    fn drain(&mut self, now: Instant, id: WorkerId, why: &str) {
        // By its own generation's settings: the signal its program understands.
        let p = self.policy_of(id);
        let deadline = now + p.drain_timeout;
        let signal = p.drain_signal;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if matches!(w.phase, Phase::Draining { .. } | Phase::Killed) {
            return;
        }
        w.phase = Phase::Draining { deadline };
        w.drained_because = Some(why.to_string());
        if let Some(pid) = w.pid {
            self.out.push(Action::Signal { pid, signal });
        }
        // Its re-parented descendants drain with it; look for new ones too.
        self.drain_strays_of(now, id);
        self.scan = true;
        self.log_worker(
            Level::Info,
            id,
            format!("draining worker ({why}): {}", signal.as_str()),
        );
    }

    fn drain_deadline_passed(&mut self, id: WorkerId) {
        let timeout = self.policy_of(id).drain_timeout;
        let hook = self.policy.drain_timeout_hook;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let Some(pid) = w.pid else {
            return;
        };
        w.phase = Phase::Killed;
        let (generation, slot, replaced) = (w.generation, w.slot, w.replaced);
        // Requests it still held are cut: count it where status and the next reload answer
        // show it (not during shutdown, which nobody waits on as a rollover). A replaced
        // worker (often a hung one) counts since start only: no rollover drained it.
        if replaced {
            self.forced_kills += 1;
        } else if !self.shutting_down() {
            self.forced_kills += 1;
            if let Some(last) = &mut self.last {
                last.forced_kills += 1;
            }
            self.unreported_kills.push(format!(
                "worker {slot} of generation {generation} (pid {pid}) was still running {} after \
                 the drain signal and was SIGKILLed; requests it held were cut",
                human(timeout)
            ));
        }
        self.log_worker(
            Level::Error,
            id,
            format!(
                "ALERT: worker still running {} after the drain signal; sending SIGKILL to its \
                 process group",
                human(timeout)
            ),
        );
        self.out.push(Action::SignalGroup {
            pgid: pid,
            signal: Signal::SIGKILL,
        });
        self.out.push(Action::Signal {
            pid,
            signal: Signal::SIGKILL,
        });
        if hook {
            self.out.push(Action::RunHook {
                pid,
                generation,
                slot,
            });
        }
    }

    fn on_exit(&mut self, now: Instant, pid: i32, status: ExitStatus) {
        let Some((&id, _)) = self.workers.iter().find(|(_, w)| w.pid == Some(pid)) else {
            self.strays.remove(&pid);
            self.log(
                Level::Debug,
                None,
                format!("reaped a re-parented descendant (pid {pid}): {status}"),
            );
            return;
        };
        let how = status.to_string();
        // Gone from the table before anything else is decided: nothing may signal its pid
        // again (it may be reused).
        let w = self.workers.remove(&id).expect("worker");
        self.out.push(Action::CloseNotify { worker: id });
        self.drain_strays_of(now, id);
        self.scan = true;
        // Whatever the worker left in its process group (a grandchild still holding the
        // listening socket, say) goes with it.
        self.out.push(Action::SignalGroup {
            pgid: pid,
            signal: Signal::SIGKILL,
        });
        let log = |level, message| {
            Action::Log(Log {
                level,
                generation: Some(w.generation),
                slot: Some(w.slot),
                pid: Some(pid),
                message,
            })
        };
        match w.phase {
            Phase::Draining { .. } => {
                self.record_exit(now, &w, status, ExitKind::Drained);
                self.out
                    .push(log(Level::Info, format!("worker drained and {how}")))
            }
            Phase::Killed => {
                self.record_exit(now, &w, status, ExitKind::Killed);
                self.out.push(log(
                    Level::Warn,
                    format!("worker killed after the drain timeout ({how})"),
                ))
            }
            Phase::Spawning | Phase::Starting { .. } | Phase::Ready { .. } => {
                self.worker_died(now, id, &w, status)
            }
        }
        self.forget_idle_generations();
    }

    /// A worker that was not draining (handoff did not ask it to go) exited: a failed
    /// rollover, a crash, or a stop from outside handoff.
    fn worker_died(&mut self, now: Instant, id: WorkerId, w: &Worker, status: ExitStatus) {
        let up_past_ready = match w.phase {
            Phase::Ready { since } => Some(now.saturating_duration_since(since)),
            _ => None,
        };
        // The worker's own generation's settings (`w` has left `self.workers` already).
        let (window, drain_signal) = {
            let p = self.settings_of(w.generation);
            (p.min_uptime, p.drain_signal)
        };
        // Said READY=1, then died within the stability window: the release crashes after
        // start (the failure the window is there to catch).
        let in_window = up_past_ready.is_some_and(|d| d < window);
        let reason = format!(
            "worker {} (pid {}) {status} after {}{}{}",
            w.slot,
            w.pid.unwrap_or_default(),
            human(now.saturating_duration_since(w.started)),
            match up_past_ready {
                Some(d) if in_window => format!(
                    ", {} after READY=1 (within the stability window, min_uptime {})",
                    human(d),
                    human(window)
                ),
                Some(d) => format!(", {} after READY=1", human(d)),
                None => String::new(),
            },
            w.last_words()
        );
        let slot = w.slot;
        let healthy = up_past_ready.is_some_and(|d| d >= healthy_after(window));
        if let Some(ro) = self.rollover_of(id) {
            ro.pending.retain(|p| *p != id);
            let initial = ro.mode == Mode::Initial;
            // A new worker that exits unasked fails its rollover: a crash of the release,
            // whatever its status (its slot's crash count is the serving worker's).
            self.record_exit(now, w, status, ExitKind::Crash);
            if initial && in_window {
                self.fail_first_generation(now, reason, false);
            } else {
                self.fail_rollover(now, reason, true);
            }
        } else if let Some(incoming_slot) = self.incoming_of(id) {
            // The replacement died before it was ready (it took the slot if the old worker
            // died first: then the slot restarts as after any crash).
            let took_slot = self.occupies(incoming_slot, id);
            self.replacement_failed(now, incoming_slot, &reason, true);
            if took_slot && !self.shutting_down() {
                self.schedule_restart(now, incoming_slot, true);
            }
        } else if self.occupies(slot, id)
            && !self.shutting_down()
            && let Some(inc) = self.slots[slot].incoming.as_ref().map(|i| i.worker)
        {
            // Its replacement is already starting: it takes the slot now (and serves once
            // ready) instead of a restart.
            self.out.push(Action::Log(Log {
                level: Level::Warn,
                generation: Some(w.generation),
                slot: Some(slot),
                pid: w.pid,
                message: format!(
                    "worker died while being replaced: {reason}; its replacement takes the slot"
                ),
            }));
            let s = &mut self.slots[slot];
            s.occupant = Occupant::Worker(inc);
            if !healthy {
                s.crashes += 1;
            }
        } else if self.occupies(slot, id) && !self.shutting_down() {
            if healthy {
                self.slots[slot].crashes = 0;
            }
            // Exit 0 or a stop signal, after the worker had been healthy: someone stopped it
            // on purpose (`kill -TERM`, the app's own clean exit). It is restarted, but that
            // is no crash. Before that it counts, so a release that exits 0 at once still
            // backs off.
            let stop_signal = |sig: i32| {
                [Signal::SIGTERM, Signal::SIGINT, drain_signal]
                    .iter()
                    .any(|s| *s as i32 == sig)
            };
            let stopped = healthy
                && match status {
                    ExitStatus::Code(0) => true,
                    ExitStatus::Signal { signal, .. } => stop_signal(signal),
                    ExitStatus::Code(_) => false,
                };
            let kind = if stopped {
                ExitKind::Stopped
            } else {
                ExitKind::Crash
            };
            self.record_exit(now, w, status, kind);
            self.out.push(Action::Log(Log {
                level: if stopped { Level::Info } else { Level::Warn },
                generation: Some(w.generation),
                slot: Some(slot),
                pid: w.pid,
                message: if stopped {
                    format!(
                        "worker stopped from outside handoff (not a crash): {reason}; \
                         starting a new one"
                    )
                } else {
                    format!("worker died outside a rollover: {reason}")
                },
            }));
            self.schedule_restart(now, slot, !stopped);
        }
    }

    /// Keeps how worker `w` ended as its slot's last exit (a slot a scale-down removed, or
    /// one a rolled back scale-up never made, keeps nothing).
    fn record_exit(&mut self, now: Instant, w: &Worker, status: ExitStatus, kind: ExitKind) {
        let (Some(slot), Some(pid)) = (self.slots.get_mut(w.slot), w.pid) else {
            return;
        };
        slot.last_exit = Some(LastExit {
            pid,
            generation: w.generation,
            status,
            kind,
            drained_because: match kind {
                ExitKind::Drained | ExitKind::Killed => w.drained_because.clone(),
                _ => None,
            },
            at: now,
        });
    }

    /// Starts a new worker in `slot` after a delay: [`RESTART_BASE`] doubling per consecutive
    /// crash; `crash: false` (a stop from outside) restarts after [`RESTART_BASE`] and leaves
    /// the count alone.
    fn schedule_restart(&mut self, now: Instant, slot: usize, crash: bool) {
        let s = &mut self.slots[slot];
        let delay = if crash {
            RESTART_BASE
                .saturating_mul(1u32 << s.crashes.min(16))
                .min(RESTART_MAX)
        } else {
            RESTART_BASE
        };
        if crash {
            s.crashes += 1;
        }
        s.occupant = Occupant::Restarting { at: now + delay };
        let crashes = s.crashes;
        self.out.push(Action::Log(Log {
            level: Level::Info,
            generation: None,
            slot: Some(slot),
            pid: None,
            message: if crash {
                format!(
                    "restarting worker {slot} in {} ({} in a row)",
                    human(delay),
                    plural(crashes as usize, "crash")
                )
            } else {
                format!("restarting worker {slot} in {}", human(delay))
            },
        }));
    }

    fn restart(&mut self, now: Instant, slot: usize) {
        if self.shutting_down() {
            return;
        }
        let id = self.next_worker;
        self.next_worker += 1;
        self.slots[slot].occupant = Occupant::Worker(id);
        self.slots[slot].restarts += 1;
        self.workers
            .insert(id, Worker::new(slot, self.current, now));
        self.out.push(Action::Spawn {
            worker: id,
            slot,
            generation: self.current,
        });
    }

    // ---- replacing one worker ------------------------------------------------------------

    /// `handoff restart-worker N`.
    fn on_restart_worker(&mut self, now: Instant, waiter: Waiter, slot: usize) {
        if let RolloverPhase::Running(ro) = &self.rollover {
            let message = format!(
                "a rollover to generation {} is running and replaces every worker; \
                 ask again once it is done (`handoff status`)",
                ro.generation
            );
            self.reply(waiter, self.refused(&message));
            return;
        }
        if let Err(e) = self.replace(now, slot, Replace::Asked, Some(waiter)) {
            self.reply(waiter, self.refused(&e));
        }
    }

    /// Starts a new worker for `slot` beside the one serving it, in the same generation; once
    /// it is ready it takes the slot and the old one is drained (see [`Machine::swap_in`]).
    /// The slot never goes without a worker: if the new one fails, the old one stays.
    fn replace(
        &mut self,
        now: Instant,
        slot: usize,
        reason: Replace,
        waiter: Option<Waiter>,
    ) -> Result<(), String> {
        if self.shutting_down() {
            return Err("handoff is shutting down".into());
        }
        let n = self.slots.len();
        let Some(s) = self.slots.get(slot) else {
            return Err(format!(
                "there is no worker {slot}: the workers are numbered 0 to {}",
                n.saturating_sub(1)
            ));
        };
        if let Some(inc) = &s.incoming {
            return Err(format!(
                "worker {slot} is already being replaced ({})",
                inc.reason.describe()
            ));
        }
        let old = match s.occupant {
            Occupant::Worker(id) => id,
            Occupant::Restarting { at } => {
                return Err(format!(
                    "worker {slot} is not running: it restarts in {} after a crash",
                    human(at.saturating_duration_since(now))
                ));
            }
            Occupant::Vacant => return Err(format!("worker {slot} is not running")),
        };
        let w = &self.workers[&old];
        let Phase::Ready { .. } = w.phase else {
            return Err(format!(
                "worker {slot} is {}, not ready yet: a new one is on its way already",
                w.phase.name()
            ));
        };
        let (generation, old_pid) = (w.generation, w.pid.unwrap_or_default());
        let id = self.next_worker;
        self.next_worker += 1;
        self.workers.insert(id, Worker::new(slot, generation, now));
        let level = if reason.is_limit() || reason == Replace::Asked {
            Level::Info
        } else {
            Level::Error
        };
        self.log(
            level,
            Some(generation),
            format!(
                "replacing worker {slot} (pid {old_pid}): {}; a new worker starts beside it, \
                 and it is drained once the new one is ready",
                reason.describe()
            ),
        );
        self.slots[slot].incoming = Some(Incoming {
            worker: id,
            old,
            reason,
            waiter,
        });
        self.out.push(Action::Spawn {
            worker: id,
            slot,
            generation,
        });
        Ok(())
    }

    /// The slot whose replacement `id` is.
    fn incoming_of(&self, id: WorkerId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.incoming.as_ref().is_some_and(|i| i.worker == id))
    }

    /// The replacement for `slot` is ready: it takes the slot, the old worker drains.
    fn swap_in(&mut self, now: Instant, slot: usize) {
        let Some(inc) = self.slots[slot].incoming.take() else {
            return;
        };
        let old = std::mem::replace(&mut self.slots[slot].occupant, Occupant::Worker(inc.worker));
        let pids = |id: WorkerId| {
            self.workers
                .get(&id)
                .and_then(|w| w.pid)
                .map_or("-".to_string(), |p| p.to_string())
        };
        let (old_pid, new_pid) = (pids(inc.old), pids(inc.worker));
        let why = inc.reason.describe();
        let message = format!("worker {slot} replaced: pid {old_pid} → pid {new_pid} ({why})");
        let s = &mut self.slots[slot];
        // A worker that never pinged is replaced by one that most likely won't either (the
        // app does not ping): that counts as a failed replacement, so the next one backs
        // off instead of coming once per watchdog interval forever.
        if matches!(inc.reason, Replace::NeverPinged(_)) {
            s.failed_replacements += 1;
            s.retry_at = Some(now + replacement_backoff(s.failed_replacements));
        } else {
            s.failed_replacements = 0;
            s.retry_at = None;
        }
        s.last_replacement = Some(LastReplacement {
            at: now,
            message: message.clone(),
        });
        if old == Occupant::Worker(inc.old) {
            if let Some(w) = self.workers.get_mut(&inc.old) {
                w.replaced = true;
            }
            self.drain(now, inc.old, &format!("replaced: {why}"));
        }
        self.log_worker(Level::Info, inc.worker, message.clone());
        if let Some(w) = inc.waiter {
            self.reply(w, self.answer(Outcome::Ok, message));
        }
    }

    /// The replacement for `slot` exited or missed its ready deadline: the old worker stays
    /// (if it still runs), and automatic replacements back off.
    /// `release_at_fault`: false when handoff itself could not start it (out of fds): the
    /// caller hears `refused`, as after a rollover handoff could not try.
    fn replacement_failed(
        &mut self,
        now: Instant,
        slot: usize,
        reason: &str,
        release_at_fault: bool,
    ) {
        let Some(inc) = self.slots[slot].incoming.take() else {
            return;
        };
        let s = &mut self.slots[slot];
        s.failed_replacements += 1;
        let backoff = replacement_backoff(s.failed_replacements);
        s.retry_at = Some(now + backoff);
        let kept = if s.occupant == Occupant::Worker(inc.old) {
            format!(
                "worker {slot} keeps serving; the next automatic replacement waits {}",
                human(backoff)
            )
        } else {
            format!("worker {slot} had exited meanwhile")
        };
        let message = format!(
            "replacing worker {slot} ({}) failed: {reason}; {kept}",
            inc.reason.describe()
        );
        self.log(Level::Error, None, message.clone());
        if let Some(w) = inc.waiter {
            let outcome = if release_at_fault {
                Outcome::RolledBack
            } else {
                Outcome::Refused
            };
            self.reply(w, self.answer(outcome, message));
        }
    }

    /// A rollover switched `slot` to `generation`, or scaled it away: a replacement under
    /// way there is not needed any more.
    fn cancel_replacement(&mut self, now: Instant, slot: usize, generation: u64) {
        let Some(inc) = self.slots.get_mut(slot).and_then(|s| s.incoming.take()) else {
            return;
        };
        self.drain(now, inc.worker, "its slot was switched by a rollover");
        if let Some(w) = inc.waiter {
            let message = format!(
                "worker {slot} was replaced by generation {generation} before its own \
                 replacement was ready"
            );
            self.reply(w, self.answer(Outcome::Ok, message));
        }
    }

    /// When worker `id` is due to ping (`None`: no watchdog for it, or it is not ready).
    fn watchdog_due(&self, id: WorkerId) -> Option<Instant> {
        let w = self.workers.get(&id)?;
        let Phase::Ready { since } = w.phase else {
            return None;
        };
        let interval = self.settings_of(w.generation).watchdog?;
        Some(w.pinged_since(since) + interval)
    }

    /// The serving workers an automatic replacement may look at now, with their slots: ready,
    /// not being replaced, not backing off from a failed replacement.
    fn replaceable(&self, now: Instant) -> Vec<(usize, WorkerId)> {
        if self.shutting_down() {
            return Vec::new();
        }
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.incoming.is_none() && s.retry_at.is_none_or(|at| at <= now))
            .filter_map(|(slot, s)| match s.occupant {
                Occupant::Worker(id)
                    if matches!(
                        self.workers.get(&id).map(|w| w.phase),
                        Some(Phase::Ready { .. })
                    ) =>
                {
                    Some((slot, id))
                }
                _ => None,
            })
            .collect()
    }

    /// Limits (`max_memory`, `max_age`) replace one worker at a time, and not while a
    /// rollover runs (it replaces them all anyway).
    fn limits_may_act(&self) -> bool {
        matches!(self.rollover, RolloverPhase::Idle)
            && !self
                .slots
                .iter()
                .any(|s| s.incoming.as_ref().is_some_and(|i| i.reason.is_limit()))
    }

    /// The deadlines of worker health: watchdogs, `max_age`, the next memory sample. A
    /// deadline that has passed while its slot backs off from a failed replacement counts
    /// from the backoff's end, so nothing is due over and over.
    fn health_deadline(&self) -> Option<Instant> {
        if self.shutting_down() {
            return None;
        }
        let limits = self.limits_may_act();
        let serving = self.slots.iter().filter_map(|s| {
            let Occupant::Worker(id) = s.occupant else {
                return None;
            };
            let w = self.workers.get(&id)?;
            if s.incoming.is_some() || !matches!(w.phase, Phase::Ready { .. }) {
                return None;
            }
            let age = self
                .settings_of(w.generation)
                .max_age
                .filter(|_| limits)
                .map(|a| w.started + a);
            let due = [self.watchdog_due(id), age].into_iter().flatten().min()?;
            Some(s.retry_at.map_or(due, |r| due.max(r)))
        });
        // New workers in a stability window are watched too: a hang there rolls back.
        let pending = match &self.rollover {
            RolloverPhase::Running(ro) => ro
                .pending
                .iter()
                .filter_map(|id| self.watchdog_due(*id))
                .min(),
            _ => None,
        };
        let sample = self.next_sample.filter(|_| self.memory_limited());
        serving.chain(pending).chain(sample).min()
    }

    /// Whether a serving worker's generation has `max_memory`.
    fn memory_limited(&self) -> bool {
        !self.shutting_down()
            && self.slots.iter().any(|s| match s.occupant {
                Occupant::Worker(id) => self
                    .workers
                    .get(&id)
                    .is_some_and(|w| self.settings_of(w.generation).max_memory.is_some()),
                _ => false,
            })
    }

    /// Acts on the health deadlines that have come: a silent worker is replaced, a new one
    /// silent in its stability window fails the rollover, a worker past `max_age` is
    /// replaced, and a memory sample is asked for.
    fn check_health(&mut self, now: Instant) {
        if self.shutting_down() {
            return;
        }
        if let RolloverPhase::Running(ro) = &self.rollover {
            let hung = ro.pending.iter().copied().find_map(|id| {
                let due = self.watchdog_due(id)?;
                (due <= now).then_some((id, due))
            });
            if let Some((id, due)) = hung {
                let w = &self.workers[&id];
                let interval = self.settings_of(w.generation).watchdog.unwrap_or_default();
                let reason = format!(
                    "worker {} (pid {}) sent no WATCHDOG=1 for {} after READY=1 (watchdog {}){}",
                    w.slot,
                    w.pid.unwrap_or_default(),
                    human(now.saturating_duration_since(due - interval)),
                    human(interval),
                    w.last_words()
                );
                self.new_worker_failed(now, id, reason);
            }
        }
        for (slot, id) in self.replaceable(now) {
            if let Some(due) = self.watchdog_due(id)
                && due <= now
            {
                let w = &self.workers[&id];
                let silent = now.saturating_duration_since(match w.phase {
                    Phase::Ready { since } => w.pinged_since(since),
                    _ => now,
                });
                let reason = match w.last_ping {
                    Some(_) => Replace::Silent(silent),
                    None => Replace::NeverPinged(silent),
                };
                let _ = self.replace(now, slot, reason, None);
            }
        }
        if self.limits_may_act()
            && let Some((slot, age)) = self.replaceable(now).into_iter().find_map(|(slot, id)| {
                let w = &self.workers[&id];
                let limit = self.settings_of(w.generation).max_age?;
                (w.started + limit <= now).then_some((slot, limit))
            })
        {
            let _ = self.replace(now, slot, Replace::Age(age), None);
        }
        if self.next_sample.is_some_and(|at| at <= now) && self.memory_limited() {
            let workers: Vec<(WorkerId, i32)> = self
                .slots
                .iter()
                .filter_map(|s| match s.occupant {
                    Occupant::Worker(id) => Some(id),
                    _ => None,
                })
                .filter_map(|id| Some((id, self.workers.get(&id)?.pid?)))
                .collect();
            self.next_sample = None;
            self.out.push(Action::SampleUsage(workers));
        }
    }

    /// A memory sample: the first serving worker over its `max_memory` is replaced (one at
    /// a time; the next sample finds the next one).
    fn on_usage(&mut self, now: Instant, samples: Vec<(WorkerId, u64)>) {
        self.next_sample = Some(now + SAMPLE_EVERY);
        for (id, rss) in &samples {
            if let Some(w) = self.workers.get_mut(id) {
                w.rss = Some(*rss);
            }
        }
        if !self.limits_may_act() {
            return;
        }
        let replaceable = self.replaceable(now);
        let over = samples.iter().find_map(|(id, rss)| {
            let (slot, _) = replaceable.iter().find(|(_, w)| w == id)?;
            let limit = self.settings_of(self.workers[id].generation).max_memory?;
            (*rss > limit).then_some((*slot, *rss, limit))
        });
        if let Some((slot, rss, limit)) = over {
            let _ = self.replace(now, slot, Replace::Memory { rss, limit }, None);
        }
    }

    // ---- re-parented descendants ---------------------------------------------------------

    fn on_children(&mut self, now: Instant, children: Vec<(i32, Option<(u64, usize)>)>) {
        for (pid, tag) in children {
            if self.strays.contains_key(&pid) || self.workers.values().any(|w| w.pid == Some(pid)) {
                continue;
            }
            // Its environment names the worker that started it; the oldest living worker of
            // that generation and slot is the one (a restart in the same slot is younger).
            let owner = tag.and_then(|(g, slot)| {
                self.workers
                    .iter()
                    .find(|(_, w)| w.generation == g && w.slot == slot)
                    .map(|(id, w)| (*id, w.phase))
            });
            match owner {
                Some((owner, Phase::Spawning | Phase::Starting { .. } | Phase::Ready { .. }))
                    if !self.shutting_down() =>
                {
                    self.log(
                        Level::Info,
                        tag.map(|t| t.0),
                        format!(
                            "pid {pid} left worker {}'s process tree and was re-parented to \
                             handoff; it will be drained with its worker",
                            tag.map_or(0, |t| t.1)
                        ),
                    );
                    let generation = tag.map_or(self.current, |t| t.0);
                    self.strays
                        .insert(pid, Stray::Attached { owner, generation });
                }
                _ => {
                    let whose = match tag {
                        Some((g, slot)) => {
                            format!("of worker {slot} of generation {g}, which is gone or draining")
                        }
                        None => "whose environment names no handoff worker".to_string(),
                    };
                    self.log(
                        Level::Warn,
                        tag.map(|t| t.0),
                        format!("pid {pid}, a re-parented descendant {whose}: draining it"),
                    );
                    let generation = tag.map_or(self.current, |t| t.0);
                    self.strays.insert(
                        pid,
                        Stray::Attached {
                            owner: 0,
                            generation,
                        },
                    );
                    self.drain_stray(now, pid);
                }
            }
        }
    }

    fn drain_strays_of(&mut self, now: Instant, owner: WorkerId) {
        let theirs: Vec<i32> = self
            .strays
            .iter()
            .filter(|(_, s)| matches!(s, Stray::Attached { owner: o, .. } if *o == owner))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in theirs {
            self.drain_stray(now, pid);
        }
    }

    fn drain_stray(&mut self, now: Instant, pid: i32) {
        let Some(&Stray::Attached { generation, .. }) = self.strays.get(&pid) else {
            return;
        };
        // By its own generation's settings, as its worker: found by the scan a drain asks
        // for, an old generation's stray used to get the settings in force, which by then
        // were the new generation's (another signal, another timeout).
        let p = self.settings_of(generation);
        let (timeout, signal) = (p.drain_timeout, p.drain_signal);
        self.strays.insert(
            pid,
            Stray::Draining {
                deadline: now + timeout,
                timeout,
            },
        );
        self.out.push(Action::Signal { pid, signal });
    }

    /// SIGKILL to a process and to the process group it leads, if it leads one.
    fn kill(&mut self, pid: i32) {
        self.out.push(Action::SignalGroup {
            pgid: pid,
            signal: Signal::SIGKILL,
        });
        self.out.push(Action::Signal {
            pid,
            signal: Signal::SIGKILL,
        });
    }

    // ---- shutdown ------------------------------------------------------------------------

    fn begin_shutdown(&mut self, now: Instant, why: &str, code: i32) {
        if self.shutting_down() {
            return;
        }
        // Each generation drains by its own timeout: the longest bounds the stop.
        let longest = self
            .generations
            .values()
            .map(|g| g.policy.drain_timeout)
            .chain([self.in_force().drain_timeout])
            .max()
            .unwrap_or_default();
        self.log(
            Level::Info,
            None,
            format!("{why}: draining all workers (up to {})", human(longest)),
        );
        self.life = Life::ShuttingDown { code };
        self.out.push(Action::Systemd(vec![
            SystemdState::Stopping,
            SystemdState::Status("stopping: draining workers".into()),
            SystemdState::ExtendTimeout(longest + SYSTEMD_SLACK),
        ]));
        let abandoned = match std::mem::replace(&mut self.rollover, RolloverPhase::Idle) {
            RolloverPhase::Idle => vec![],
            RolloverPhase::Preparing { waiters, .. } => waiters,
            RolloverPhase::Running(ro) => ro.waiters,
        };
        for w in abandoned {
            self.reply(
                w,
                self.refused("handoff is shutting down; rollover abandoned"),
            );
        }
        for w in std::mem::take(&mut self.queued) {
            self.reply(w, self.refused("handoff is shutting down"));
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.drain(now, id, why);
        }
        let strays: Vec<i32> = self.strays.keys().copied().collect();
        for pid in strays {
            self.drain_stray(now, pid);
        }
        self.scan = true;
        let mut replacements = Vec::new();
        for s in &mut self.slots {
            s.occupant = Occupant::Vacant;
            replacements.extend(s.incoming.take().and_then(|i| i.waiter));
        }
        for w in replacements {
            self.reply(
                w,
                self.refused("handoff is shutting down; replacement abandoned"),
            );
        }
    }

    fn kill_all(&mut self) {
        self.log(
            Level::Warn,
            None,
            "second SIGINT: killing all workers now".into(),
        );
        let strays: Vec<i32> = self.strays.keys().copied().collect();
        for pid in strays {
            self.strays.insert(pid, Stray::Killed);
            self.kill(pid);
        }
        for w in self.workers.values_mut() {
            if let Some(pid) = w.pid {
                w.phase = Phase::Killed;
                self.out.push(Action::SignalGroup {
                    pgid: pid,
                    signal: Signal::SIGKILL,
                });
                self.out.push(Action::Signal {
                    pid,
                    signal: Signal::SIGKILL,
                });
            }
        }
    }

    // ---- answers and logs ----------------------------------------------------------------

    fn answer(&self, outcome: Outcome, message: String) -> ReloadReply {
        ReloadReply {
            outcome,
            generation: self.current,
            message,
            duration_ms: 0,
            warnings: Vec::new(),
        }
    }

    fn refused(&self, message: &str) -> ReloadReply {
        self.answer(Outcome::Refused, message.to_string())
    }

    /// Every answer also says which restart-bound settings the config file changed.
    fn reply(&mut self, w: Waiter, mut reply: ReloadReply) {
        if let Some(waiter) = w.id {
            reply.warnings.extend(self.restart_needed.iter().cloned());
            self.out.push(Action::Reply { waiter, reply });
        }
    }

    fn log(&mut self, level: Level, generation: Option<u64>, message: String) {
        self.out.push(Action::Log(Log {
            level,
            generation,
            slot: None,
            pid: None,
            message,
        }));
    }

    fn log_worker(&mut self, level: Level, id: WorkerId, message: String) {
        let w = &self.workers[&id];
        self.out.push(Action::Log(Log {
            level,
            generation: Some(w.generation),
            slot: Some(w.slot),
            pid: w.pid,
            message,
        }));
    }
}

fn plural(n: usize, word: &str) -> String {
    let s = if n == 1 {
        ""
    } else if word.ends_with('h') {
        "es"
    } else {
        "s"
    };
    format!("{n} {word}{s}")
}
