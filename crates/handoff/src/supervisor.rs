//! The supervisor: workers, generations and the rollover state machine.
//!
//! One task owns all state and reacts to events: child exits (SIGCHLD), notify datagrams,
//! timers, control requests and signals. Nothing polls: with no event, handoff sleeps.
//!
//! Life of a rollover (whole-generation mode):
//!  1. A trigger (SIGHUP, `handoff reload`) arrives. If a rollover runs, it joins the one queued
//!     after it (at most one is queued; every caller gets that rollover's outcome).
//!  2. Generation G+1 starts: N workers, each with the listening fds and its own notify socket.
//!  3. Each reports `READY=1` (or lives `--ready=delay:` long). When all are ready, the slots
//!     switch to G+1 and every worker of G gets the drain signal. The trigger is answered.
//!  4. Old workers stop accepting, finish in-flight work and exit; past the drain timeout
//!     they are killed (with their process group) and the `--on-drain-timeout` hook runs.
//!  5. If a new worker exits or is not ready within the ready timeout, the whole of G+1 is
//!     drained instead and G keeps serving ("rolled back").
//!
//! `--rolling` replaces one slot at a time (start new, wait ready, drain old), so at least N
//! workers are ready at every moment; a failure at slot 0 is a full rollback, a later one
//! leaves the slots already replaced on G+1 ("partial").

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

use crate::config::{ReadyMode, Settings};
use crate::control::{
    self, Command, GenerationStatus, Outcome, ReloadReply, RolloverStatus, SlotStatus,
    StatusReport, VersionInfo, WorkerStatus,
};
use crate::duration::human;
use crate::listeners::{self, Listener};
use crate::notify::{NotifySocket, Received, SystemdNotifier};
use crate::spawn::{self, WorkerSpec};
use crate::version;

/// First restart delay after a crash; doubles per consecutive crash up to [`RESTART_MAX`].
const RESTART_BASE: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A worker ready this long before it dies is a fresh crash, not part of a crash loop.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Slack added to timeouts announced to systemd with `EXTEND_TIMEOUT_USEC=`.
const SYSTEMD_SLACK: Duration = Duration::from_secs(5);

/// Everything prepared in `main` before the event loop starts.
pub struct Runtime {
    pub settings: Settings,
    pub listeners: Vec<Listener>,
    /// handoff's environment with the activation and notify variables already stripped.
    pub base_env: Vec<(OsString, OsString)>,
    pub notifier: SystemdNotifier,
    /// `WATCHDOG_USEC` for handoff itself: ping systemd at half of it.
    pub watchdog: Option<Duration>,
    pub runtime_dir: PathBuf,
    pub control_path: PathBuf,
    /// Who workers run as, when `user =` is set.
    pub credentials: Option<spawn::Credentials>,
}

type WorkerId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Starting,
    Ready,
    Draining,
}

impl WorkerState {
    fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
        }
    }
}

struct Worker {
    slot: usize,
    generation: u64,
    pid: Pid,
    state: WorkerState,
    started: Instant,
    ready_at: Option<Instant>,
    ready_deadline: Instant,
    status: Option<String>,
    errno: Option<i32>,
    notify_task: Option<AbortHandle>,
    /// Pending timers for this worker (ready or drain deadline, delayed readiness).
    timers: Vec<AbortHandle>,
    killed: bool,
}

impl Worker {
    fn cancel_timers(&mut self) {
        for t in self.timers.drain(..) {
            t.abort();
        }
    }
}

#[derive(Default)]
struct Slot {
    worker: Option<WorkerId>,
    crashes: u32,
    restart_at: Option<Instant>,
    /// Bumped whenever a pending restart is superseded, so stale timers are ignored.
    restart_token: u64,
    restart_timer: Option<AbortHandle>,
}

impl Slot {
    fn cancel_restart(&mut self) {
        self.restart_token += 1;
        self.restart_at = None;
        if let Some(t) = self.restart_timer.take() {
            t.abort();
        }
    }
}

struct Waiter {
    reply: Option<oneshot::Sender<ReloadReply>>,
    if_changed: bool,
}

struct Rollover {
    generation: u64,
    started: Instant,
    waiters: Vec<Waiter>,
    /// New workers started and not yet switched into their slot.
    pending: Vec<WorkerId>,
    /// Rolling mode: the slot being replaced now. Whole mode: unused.
    next_slot: usize,
    /// Slots already switched to the new generation.
    switched: usize,
    /// The first generation at start-up: failure means handoff exits.
    initial: bool,
}

enum Event {
    Notify {
        worker: WorkerId,
        received: Received,
    },
    ReadyDeadline(WorkerId),
    DelayReady(WorkerId),
    DrainDeadline(WorkerId),
    Restart {
        slot: usize,
        token: u64,
    },
}

struct Supervisor {
    rt: Runtime,
    events: mpsc::Sender<Event>,
    workers: HashMap<WorkerId, Worker>,
    next_worker_id: WorkerId,
    slots: Vec<Slot>,
    generations: HashMap<u64, (Instant, Option<VersionInfo>)>,
    current_generation: u64,
    next_generation: u64,
    rollover: Option<Rollover>,
    queued: Vec<Waiter>,
    last_rollover: Option<(RolloverStatus, Instant)>,
    /// Set once shutdown begins; the exit code to leave with once every worker is gone.
    shutdown: Option<i32>,
    hooks: HashMap<Pid, String>,
    started: Instant,
    last_status_line: String,
    program: Option<PathBuf>,
    notify_dir: PathBuf,
    /// The version-file hash of the last release that was rolled back, and its generation:
    /// `--if-changed` does not try the same content again.
    failed_release: Option<(String, u64)>,
    /// Under journald: give each worker its own journal stream tagged with its generation;
    /// the value is handoff's unit (may be empty outside a service).
    journal: Option<String>,
}

/// Runs handoff until it has shut down; returns the process exit code.
pub async fn run(rt: Runtime) -> anyhow::Result<i32> {
    // Signal handlers first: a child that exits before SIGCHLD is watched would be missed.
    let mut sigchld = unix_signal(SignalKind::child())?;
    let mut sighup = unix_signal(SignalKind::hangup())?;
    let mut sigterm = unix_signal(SignalKind::terminate())?;
    let mut sigint = unix_signal(SignalKind::interrupt())?;

    // Orphaned grandchildren of workers are re-parented to handoff, not to init, so they are
    // reaped here (and killed with their worker's process group).
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!("cannot become a child subreaper ({e}); orphaned grandchildren go to init");
    }

    let control_listener = control::bind(&rt.control_path)?;
    // Only one handoff owns a control socket, so its notify dir is ours to clear.
    let notify_dir = rt.runtime_dir.join("notify");
    let _ = std::fs::remove_dir_all(&notify_dir);
    make_private_dir(&notify_dir, rt.credentials.is_some())?;

    let (control_tx, mut control_rx) = mpsc::channel::<Command>(64);
    let control_task = tokio::spawn(control::serve(control_listener, control_tx));
    // Bounded: a flood of notify datagrams waits in the kernel, not in handoff's memory.
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(1024);

    let workers_wanted = rt.settings.workers;
    let mut sup = Supervisor {
        rt,
        events: events_tx,
        workers: HashMap::new(),
        next_worker_id: 1,
        slots: (0..workers_wanted).map(|_| Slot::default()).collect(),
        generations: HashMap::new(),
        current_generation: 0,
        next_generation: 1,
        rollover: None,
        queued: Vec::new(),
        last_rollover: None,
        shutdown: None,
        hooks: HashMap::new(),
        started: Instant::now(),
        last_status_line: String::new(),
        program: None,
        notify_dir,
        journal: None,
        failed_release: None,
    };
    if sup.rt.base_env.iter().any(|(k, _)| k == "JOURNAL_STREAM")
        && std::path::Path::new(spawn::JournalStream::SOCKET).exists()
    {
        sup.journal = Some(spawn::own_unit().unwrap_or_default());
    }
    info!(
        listeners = %sup.rt.listeners.iter().map(|l| format!("{}={}", l.name, l.describe)).collect::<Vec<_>>().join(" "),
        workers = workers_wanted,
        control = %sup.rt.control_path.display(),
        "handoff starting"
    );
    sup.start_rollover(vec![], true);

    let mut watchdog = sup.rt.watchdog.map(|d| tokio::time::interval(d / 2));
    while !sup.finished() {
        tokio::select! {
            Some(ev) = events_rx.recv() => sup.on_event(ev),
            Some(cmd) = control_rx.recv() => sup.on_command(cmd),
            _ = sigchld.recv() => sup.reap(),
            _ = sighup.recv() => {
                info!("SIGHUP: rollover requested");
                sup.request_reload(Waiter { reply: None, if_changed: false });
            }
            _ = sigterm.recv() => sup.begin_shutdown("SIGTERM", 0),
            _ = sigint.recv() => {
                if sup.shutdown.is_some() {
                    warn!("second SIGINT: killing all workers now");
                    sup.kill_everything();
                } else {
                    sup.begin_shutdown("SIGINT", 0);
                }
            }
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                sup.rt.notifier.send(&[NotifyState::Watchdog]);
            }
        }
        sup.publish_status();
    }
    control_task.abort();
    let _ = std::fs::remove_file(&sup.rt.control_path);
    let _ = std::fs::remove_dir_all(&sup.notify_dir);
    let code = sup.shutdown.unwrap_or(0);
    info!(code, "handoff stopped");
    Ok(code)
}

/// Creates `dir` with mode 0700 (and its parents as needed). With `traversable`, 0711: workers
/// running as another user must reach their own notify socket inside (the socket file itself
/// is theirs alone, mode 0600); nobody else can list the directory.
pub fn make_private_dir(dir: &std::path::Path, traversable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mode = if traversable { 0o711 } else { 0o700 };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    // An existing dir keeps its mode under create(): force it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "was killed by {}{}",
                sig.as_str(),
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

impl Supervisor {
    fn finished(&self) -> bool {
        self.shutdown.is_some() && self.workers.is_empty()
    }

    /// Sends `ev` to the loop at `at`. Handlers still check that the state the timer was armed
    /// for holds; the returned handle lets the owner cancel it early, so that fast rollovers
    /// do not pile up sleeping tasks until their (long) timeouts.
    fn at(&self, at: Instant, ev: Event) -> AbortHandle {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = tx.send(ev).await;
        })
        .abort_handle()
    }

    // ---- starting workers ------------------------------------------------------------------

    fn spawn_worker(&mut self, slot: usize, generation: u64) -> Result<WorkerId, String> {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        let program = match &self.program {
            Some(p) => p.clone(),
            None => {
                let path = self
                    .rt
                    .base_env
                    .iter()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| v.as_os_str());
                let p = spawn::resolve_program(&self.rt.settings.command[0], path)
                    .map_err(|e| e.to_string())?;
                self.program = Some(p.clone());
                p
            }
        };
        let sock_path = self.notify_dir.join(format!("g{generation}-w{slot}-{id}"));
        let mut allowed = vec![0, nix::unistd::getuid().as_raw()];
        if let Some(c) = &self.rt.credentials {
            allowed.push(c.uid);
        }
        let sock = NotifySocket::bind(&sock_path, allowed)
            .map_err(|e| format!("cannot create notify socket {}: {e}", sock_path.display()))?;
        if let Some(c) = &self.rt.credentials {
            // The worker's user alone may send to it.
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::chown(&sock_path, Some(c.uid), Some(c.gid))
                .and_then(|_| {
                    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(|e| {
                    format!(
                        "cannot hand notify socket {} to {}: {e}",
                        sock_path.display(),
                        c.name
                    )
                })?;
        }
        let mut env: Vec<(OsString, OsString)> = self
            .rt
            .base_env
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.to_str(),
                    Some(
                        "LISTEN_FDS"
                            | "LISTEN_PID"
                            | "LISTEN_FDNAMES"
                            | "NOTIFY_SOCKET"
                            | "HANDOFF_GENERATION"
                            | "HANDOFF_WORKER"
                    )
                )
            })
            .cloned()
            .collect();
        env.push((
            "LISTEN_FDS".into(),
            self.rt.listeners.len().to_string().into(),
        ));
        env.push((
            "LISTEN_FDNAMES".into(),
            listeners::fd_names(&self.rt.listeners).into(),
        ));
        env.push(("NOTIFY_SOCKET".into(), sock_path.clone().into_os_string()));
        env.push(("HANDOFF_GENERATION".into(), generation.to_string().into()));
        env.push(("HANDOFF_WORKER".into(), slot.to_string().into()));
        if let Some(c) = &self.rt.credentials {
            // What a login (or systemd's User=) would set; the rest passes through.
            env.retain(|(k, _)| !matches!(k.to_str(), Some("USER" | "LOGNAME" | "HOME")));
            env.push(("USER".into(), c.name.clone().into()));
            env.push(("LOGNAME".into(), c.name.clone().into()));
            env.push(("HOME".into(), c.home.clone().into_os_string()));
        }
        let journal = self.journal.as_ref().map(|unit| {
            // `node@g7`: journalctl shows it as the line's identifier, with the worker's pid.
            env.retain(|(k, _)| k != "JOURNAL_STREAM");
            let base = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            spawn::JournalStream::new(&format!("{base}@g{generation}"), unit)
        });
        let fds: Vec<_> = self.rt.listeners.iter().map(|l| l.fd()).collect();
        let spec = WorkerSpec {
            program: &program,
            args: &self.rt.settings.command,
            env: &env,
            listeners: &fds,
            parent_death_signal: self.rt.settings.drain_signal,
            credentials: self.rt.credentials.as_ref(),
            journal: journal.as_ref(),
        };
        let pid = spawn::spawn_worker(&spec).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let tx = self.events.clone();
        let task = tokio::spawn(async move {
            loop {
                match sock.recv().await {
                    Ok(received) => {
                        if tx
                            .send(Event::Notify {
                                worker: id,
                                received,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!("notify socket {}: {e}", sock.path().display());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let deadline = now + self.rt.settings.ready_timeout;
        self.workers.insert(
            id,
            Worker {
                slot,
                generation,
                pid,
                state: WorkerState::Starting,
                started: now,
                ready_at: None,
                ready_deadline: deadline,
                status: None,
                errno: None,
                notify_task: Some(task.abort_handle()),
                timers: Vec::new(),
                killed: false,
            },
        );
        info!(gen = generation, worker = slot, pid = pid.as_raw(), "worker started");
        let mut timers = vec![self.at(deadline, Event::ReadyDeadline(id))];
        if let ReadyMode::Delay(d) = self.rt.settings.ready {
            timers.push(self.at(now + d, Event::DelayReady(id)));
        }
        self.workers.get_mut(&id).expect("worker").timers = timers;
        Ok(id)
    }

    // ---- rollovers -------------------------------------------------------------------------

    fn request_reload(&mut self, waiter: Waiter) {
        if self.shutdown.is_some() {
            reply(waiter, self.refused("handoff is shutting down"));
            return;
        }
        if self.rollover.is_some() {
            // Queue behind the running one; all queued callers share the next rollover.
            self.queued.push(waiter);
            return;
        }
        self.start_rollover(vec![waiter], false);
    }

    fn refused(&self, message: &str) -> ReloadReply {
        ReloadReply {
            outcome: Outcome::Refused,
            generation: self.current_generation,
            message: message.to_string(),
            duration_ms: 0,
        }
    }

    fn start_rollover(&mut self, mut waiters: Vec<Waiter>, initial: bool) {
        let version = self.rt.settings.version_file.as_deref().map(version::read);
        if !initial {
            // Requests that only want a rollover if the release changed are settled here,
            // after any earlier rollover has finished, so two triggers for one release give
            // one rollover.
            let current_hash = self
                .generations
                .get(&self.current_generation)
                .and_then(|(_, v)| v.as_ref())
                .map(|v| v.hash.clone());
            let (conditional, unconditional): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|w| w.if_changed);
            waiters = unconditional;
            for w in conditional {
                let answer = match &version {
                    None => Some(
                        self.refused("--if-changed needs `version_file` in handoff's settings"),
                    ),
                    Some(v) if v.error.is_some() => Some(self.refused(&format!(
                        "{}; not rolling over",
                        v.error.as_deref().unwrap_or_default()
                    ))),
                    Some(v) if Some(&v.hash) == current_hash.as_ref() && waiters.is_empty() => {
                        Some(ReloadReply {
                            outcome: Outcome::Unchanged,
                            generation: self.current_generation,
                            message: format!(
                                "{} unchanged since generation {}; no rollover",
                                v.path.display(),
                                self.current_generation
                            ),
                            duration_ms: 0,
                        })
                    }
                    Some(v)
                        if self
                            .failed_release
                            .as_ref()
                            .is_some_and(|(h, _)| *h == v.hash)
                            && waiters.is_empty() =>
                    {
                        // Retrying the very release that just failed would fail the same way
                        // (an rpm scriptlet and the .path trigger both asking, say).
                        let failed_gen = self
                            .failed_release
                            .as_ref()
                            .map(|(_, g)| *g)
                            .unwrap_or_default();
                        Some(ReloadReply {
                            outcome: Outcome::Unchanged,
                            generation: self.current_generation,
                            message: format!(
                                "{} is the release generation {failed_gen} started from and was rolled back; \
                                 not trying it again (a plain `handoff reload` would); generation {} serves",
                                v.path.display(),
                                self.current_generation
                            ),
                            duration_ms: 0,
                        })
                    }
                    Some(_) => None,
                };
                match answer {
                    Some(a) => {
                        info!(outcome = ?a.outcome, "conditional reload: {}", a.message);
                        reply(w, a);
                    }
                    None => waiters.push(w),
                }
            }
            if waiters.is_empty() {
                return self.start_queued();
            }
        }
        if let Some(v) = &version
            && let Some(e) = &v.error
        {
            warn!("version file: {e}");
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let now = Instant::now();
        self.generations.insert(generation, (now, version.clone()));
        info!(
            gen = generation,
            version = version.as_ref().and_then(|v| v.version.as_deref()).unwrap_or("-"),
            mode = if self.rt.settings.rolling { "rolling" } else { "whole" },
            "{}",
            if initial { "starting first generation" } else { "rollover started" }
        );
        if !initial {
            self.rt.notifier.send(&[
                NotifyState::Reloading,
                NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0)),
            ]);
        }
        self.extend_systemd_timeout(self.rt.settings.ready_timeout);
        self.rollover = Some(Rollover {
            generation,
            started: now,
            waiters,
            pending: Vec::new(),
            next_slot: 0,
            switched: 0,
            initial,
        });
        // The first generation has nothing to keep serving meanwhile: start it whole.
        let slots: Vec<usize> = if self.rt.settings.rolling && !initial {
            vec![0]
        } else {
            (0..self.slots.len()).collect()
        };
        for slot in slots {
            if let Err(e) = self.spawn_into_rollover(slot) {
                return self.fail_rollover(format!(
                    "cannot start worker {slot} of generation {generation}: {e}"
                ));
            }
        }
    }

    fn spawn_into_rollover(&mut self, slot: usize) -> Result<(), String> {
        let generation = self.rollover.as_ref().expect("rollover").generation;
        let id = self.spawn_worker(slot, generation)?;
        let ro = self.rollover.as_mut().expect("rollover");
        ro.pending.push(id);
        ro.next_slot = slot;
        Ok(())
    }

    /// Called whenever a worker became ready: advances the rollover if it can.
    fn advance_rollover(&mut self) {
        let Some(ro) = &self.rollover else { return };
        let all_ready = ro.pending.iter().all(|id| {
            self.workers
                .get(id)
                .is_some_and(|w| w.state == WorkerState::Ready)
        });
        if ro.pending.is_empty() || !all_ready {
            return;
        }
        let ro = self.rollover.as_mut().expect("rollover");
        let generation = ro.generation;
        let pending = std::mem::take(&mut ro.pending);
        ro.switched += pending.len();
        let next = ro.next_slot + 1;
        let one_at_a_time = self.rt.settings.rolling && !ro.initial;
        for id in pending {
            let slot = self.workers[&id].slot;
            let old = self.slots[slot].worker.replace(id);
            // A restart pending for this slot is moot now.
            self.slots[slot].cancel_restart();
            if let Some(old) = old {
                self.drain(old, "replaced");
            }
        }
        self.current_generation = generation;
        if one_at_a_time && next < self.slots.len() {
            if let Err(e) = self.spawn_into_rollover(next) {
                self.fail_rollover(format!(
                    "cannot start worker {next} of generation {generation}: {e}"
                ));
            }
            return;
        }
        let ro = self.rollover.as_ref().expect("rollover");
        let message = format!(
            "generation {generation} serves ({} workers) after {}",
            self.slots.len(),
            human(ro.started.elapsed())
        );
        self.finish_rollover(Outcome::Ok, message);
    }

    fn fail_rollover(&mut self, reason: String) {
        let Some(ro) = &mut self.rollover else { return };
        let generation = ro.generation;
        let pending = std::mem::take(&mut ro.pending);
        let switched = ro.switched;
        let initial = ro.initial;
        // New workers may already have accepted connections: drain them, don't kill them.
        for id in pending {
            self.drain(id, "rolled back");
        }
        if initial {
            // Nothing to roll back to: tell systemd the start failed by exiting non-zero.
            error!(gen = generation, "first generation failed: {reason}");
            self.begin_shutdown("the first generation failed", 1);
            return;
        }
        let (outcome, message) = if switched == 0 {
            let old = self.current_generation;
            (
                Outcome::RolledBack,
                format!("rolled back: generation {old} still serves; {reason}"),
            )
        } else {
            let n = self.slots.len();
            (
                Outcome::Partial,
                format!(
                    "rolling rollover stopped at worker {switched} of {n}: {reason}; {switched} worker(s) run generation {generation}, {} still run the previous one",
                    n - switched
                ),
            )
        };
        error!(gen = generation, "{message}");
        self.finish_rollover(outcome, message);
    }

    fn finish_rollover(&mut self, outcome: Outcome, message: String) {
        let Some(ro) = self.rollover.take() else {
            return;
        };
        let hash = self
            .generations
            .get(&ro.generation)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| v.hash.clone());
        self.failed_release = match outcome {
            Outcome::RolledBack | Outcome::Partial => hash.map(|h| (h, ro.generation)),
            _ => None,
        };
        let duration = ro.started.elapsed();
        if outcome == Outcome::Ok {
            info!(gen = ro.generation, duration_ms = duration.as_millis() as u64, "{message}");
        }
        let answer = ReloadReply {
            outcome,
            generation: self.current_generation,
            message: message.clone(),
            duration_ms: duration.as_millis() as u64,
        };
        for w in ro.waiters {
            reply(w, answer.clone());
        }
        self.last_rollover = Some((
            RolloverStatus {
                generation: ro.generation,
                outcome,
                message,
                duration_ms: duration.as_millis() as u64,
                ago_ms: 0,
            },
            Instant::now(),
        ));
        self.forget_idle_generations();
        // READY=1 ends the start (first generation) or the RELOADING=1 state, either way.
        self.rt.notifier.send(&[NotifyState::Ready]);
        self.start_queued();
    }

    /// Generations with no worker left (and not current or starting) are history.
    fn forget_idle_generations(&mut self) {
        let live: Vec<u64> = self.workers.values().map(|w| w.generation).collect();
        let keep = [
            Some(self.current_generation),
            self.rollover.as_ref().map(|r| r.generation),
        ];
        self.generations
            .retain(|g, _| keep.contains(&Some(*g)) || live.contains(g));
    }

    fn start_queued(&mut self) {
        if self.rollover.is_some() || self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        if self.shutdown.is_some() {
            for w in queued {
                reply(w, self.refused("handoff is shutting down"));
            }
            return;
        }
        self.start_rollover(queued, false);
    }

    // ---- draining --------------------------------------------------------------------------

    fn drain(&mut self, id: WorkerId, why: &str) {
        let signal = self.rt.settings.drain_signal;
        let timeout = self.rt.settings.drain_timeout;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Draining {
            return;
        }
        w.state = WorkerState::Draining;
        info!(gen = w.generation, worker = w.slot, pid = w.pid.as_raw(), signal = signal.as_str(), "draining worker ({why})");
        if let Err(e) = signal::kill(w.pid, signal) {
            debug!(pid = w.pid.as_raw(), "drain signal: {e}");
        }
        w.cancel_timers();
        let timer = self.at(Instant::now() + timeout, Event::DrainDeadline(id));
        self.workers
            .get_mut(&id)
            .expect("worker")
            .timers
            .push(timer);
    }

    fn drain_deadline(&mut self, id: WorkerId) {
        let timeout = self.rt.settings.drain_timeout;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state != WorkerState::Draining || w.killed {
            return;
        }
        w.killed = true;
        let (pid, generation, slot) = (w.pid, w.generation, w.slot);
        error!(
            gen = generation,
            worker = slot,
            pid = pid.as_raw(),
            "ALERT: worker still running {} after the drain signal; sending SIGKILL to its process group",
            human(timeout)
        );
        let _ = signal::killpg(pid, Signal::SIGKILL);
        let _ = signal::kill(pid, Signal::SIGKILL);
        if let Some(cmd) = self.rt.settings.on_drain_timeout.clone() {
            self.run_hook(&cmd, pid, generation, slot);
        }
    }

    fn run_hook(&mut self, cmd: &str, pid: Pid, generation: u64, slot: usize) {
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(cmd)
            .env_clear()
            .envs(self.rt.base_env.iter().map(|(k, v)| (k, v)))
            .env("HANDOFF_EVENT", "drain-timeout")
            .env("HANDOFF_WORKER_PID", pid.to_string())
            .env("HANDOFF_GENERATION", generation.to_string())
            .env("HANDOFF_WORKER", slot.to_string())
            .env(
                "HANDOFF_DRAIN_TIMEOUT_MS",
                self.rt.settings.drain_timeout.as_millis().to_string(),
            )
            .stdin(std::process::Stdio::null());
        match c.spawn() {
            // The child is reaped by the SIGCHLD loop like every other child.
            Ok(child) => {
                let hpid = Pid::from_raw(child.id() as i32);
                info!(
                    hook_pid = hpid.as_raw(),
                    "on-drain-timeout hook started: {cmd}"
                );
                self.hooks.insert(hpid, cmd.to_string());
            }
            Err(e) => error!("cannot run on-drain-timeout hook {cmd:?}: {e}"),
        }
    }

    // ---- events ----------------------------------------------------------------------------

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Notify { worker, received } => self.on_notify(worker, received),
            Event::ReadyDeadline(id) => self.ready_deadline(id),
            Event::DelayReady(id) => {
                if self
                    .workers
                    .get(&id)
                    .is_some_and(|w| w.state == WorkerState::Starting)
                {
                    self.mark_ready(id);
                }
            }
            Event::DrainDeadline(id) => self.drain_deadline(id),
            Event::Restart { slot, token } => self.restart_slot(slot, token),
        }
    }

    fn on_notify(&mut self, id: WorkerId, received: Received) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let msg = match received {
            Received::Dropped(why) => {
                debug!(gen = w.generation, worker = w.slot, pid = w.pid.as_raw(), "notify datagram dropped: {why}");
                return;
            }
            Received::Message { msg, .. } => msg,
        };
        if let Some(s) = msg.status {
            debug!(gen = w.generation, worker = w.slot, pid = w.pid.as_raw(), "status: {s}");
            w.status = Some(s);
        }
        if msg.errno.is_some() {
            w.errno = msg.errno;
        }
        if msg.stopping {
            debug!(gen = w.generation, worker = w.slot, pid = w.pid.as_raw(), "worker says it is stopping");
        }
        if let Some(ext) = msg.extend_timeout
            && w.state == WorkerState::Starting
        {
            // As systemd does: the deadline moves to "now + extension", if later.
            let new = Instant::now() + ext;
            if new > w.ready_deadline {
                w.ready_deadline = new;
                let timer = self.at(new, Event::ReadyDeadline(id));
                self.workers
                    .get_mut(&id)
                    .expect("worker")
                    .timers
                    .push(timer);
            }
        }
        let w = &self.workers[&id];
        if msg.ready
            && w.state == WorkerState::Starting
            && self.rt.settings.ready == ReadyMode::Notify
        {
            self.mark_ready(id);
        }
    }

    fn mark_ready(&mut self, id: WorkerId) {
        let w = self.workers.get_mut(&id).expect("worker");
        w.cancel_timers();
        w.state = WorkerState::Ready;
        w.ready_at = Some(Instant::now());
        info!(
            gen = w.generation,
            worker = w.slot,
            pid = w.pid.as_raw(),
            startup_ms = w.started.elapsed().as_millis() as u64,
            "worker ready"
        );
        self.advance_rollover();
    }

    fn ready_deadline(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if w.state != WorkerState::Starting || Instant::now() < w.ready_deadline {
            return;
        }
        let reason = format!(
            "worker {} (pid {}) was not ready within {}{}",
            w.slot,
            w.pid,
            human(w.ready_deadline - w.started),
            last_words(w)
        );
        if self
            .rollover
            .as_ref()
            .is_some_and(|r| r.pending.contains(&id))
        {
            self.fail_rollover(reason);
        } else {
            // A restarted worker that never got ready: drain it and count a crash.
            warn!("{reason}");
            let slot = w.slot;
            self.drain(id, "not ready in time");
            if self.slots[slot].worker == Some(id) {
                self.slots[slot].worker = None;
                self.schedule_restart(slot);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Reload { if_changed, reply } => {
                info!(if_changed, "reload requested on the control socket");
                self.request_reload(Waiter {
                    reply: Some(reply),
                    if_changed,
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status_report());
            }
        }
    }

    // ---- child exits and supervision -------------------------------------------------------

    fn reap(&mut self) {
        loop {
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    error!("waitpid: {e}");
                    return;
                }
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    self.on_exit(pid, &status);
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, status: &WaitStatus) {
        if let Some(cmd) = self.hooks.remove(&pid) {
            info!(
                hook_pid = pid.as_raw(),
                "on-drain-timeout hook {}: {cmd}",
                describe_exit(status)
            );
            return;
        }
        let Some((&id, _)) = self.workers.iter().find(|(_, w)| w.pid == pid) else {
            debug!(
                pid = pid.as_raw(),
                "reaped a re-parented descendant: {}",
                describe_exit(status)
            );
            return;
        };
        let mut w = self.workers.remove(&id).expect("worker");
        if let Some(t) = &w.notify_task {
            t.abort();
        }
        w.cancel_timers();
        // Whatever the worker left in its process group (a grandchild still holding the
        // listening socket, say) goes with it.
        let _ = signal::killpg(w.pid, Signal::SIGKILL);
        self.forget_idle_generations();
        let how = describe_exit(status);
        let age = human(w.started.elapsed());
        match w.state {
            WorkerState::Draining => {
                if w.killed {
                    warn!(gen = w.generation, worker = w.slot, pid = pid.as_raw(), "worker killed after the drain timeout ({how})");
                } else {
                    info!(gen = w.generation, worker = w.slot, pid = pid.as_raw(), "worker drained and {how}");
                }
            }
            WorkerState::Starting | WorkerState::Ready => {
                let reason = format!(
                    "worker {} (pid {pid}) {how} after {age}{}",
                    w.slot,
                    last_words(&w)
                );
                if self
                    .rollover
                    .as_ref()
                    .is_some_and(|r| r.pending.contains(&id))
                {
                    if let Some(r) = self.rollover.as_mut() {
                        r.pending.retain(|p| *p != id);
                    }
                    self.fail_rollover(reason);
                } else if self.slots[w.slot].worker == Some(id) {
                    self.slots[w.slot].worker = None;
                    if self.shutdown.is_none() {
                        let stable = w.ready_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER);
                        if stable {
                            self.slots[w.slot].crashes = 0;
                        }
                        warn!(gen = w.generation, worker = w.slot, pid = pid.as_raw(), "worker died outside a rollover: {reason}");
                        self.schedule_restart(w.slot);
                    }
                }
            }
        }
    }

    fn schedule_restart(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        let delay = RESTART_BASE
            .saturating_mul(1u32 << s.crashes.min(16))
            .min(RESTART_MAX);
        s.crashes += 1;
        s.cancel_restart();
        let at = Instant::now() + delay;
        s.restart_at = Some(at);
        info!(
            worker = slot,
            crashes = s.crashes,
            "restarting worker in {}",
            human(delay)
        );
        let token = s.restart_token;
        let timer = self.at(at, Event::Restart { slot, token });
        self.slots[slot].restart_timer = Some(timer);
    }

    fn restart_slot(&mut self, slot: usize, token: u64) {
        let s = &self.slots[slot];
        if s.restart_token != token || s.worker.is_some() || self.shutdown.is_some() {
            return;
        }
        self.slots[slot].restart_at = None;
        self.slots[slot].restart_timer = None;
        match self.spawn_worker(slot, self.current_generation) {
            Ok(id) => self.slots[slot].worker = Some(id),
            Err(e) => {
                error!(worker = slot, "restart failed: {e}");
                self.schedule_restart(slot);
            }
        }
    }

    // ---- shutdown --------------------------------------------------------------------------

    fn begin_shutdown(&mut self, why: &str, code: i32) {
        if self.shutdown.is_some() {
            return;
        }
        info!(
            "{why}: draining all workers (up to {})",
            human(self.rt.settings.drain_timeout)
        );
        self.shutdown = Some(code);
        self.rt.notifier.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining workers"),
        ]);
        self.extend_systemd_timeout(self.rt.settings.drain_timeout);
        if let Some(ro) = self.rollover.take() {
            let answer = self.refused("handoff is shutting down; rollover abandoned");
            for w in ro.waiters {
                reply(w, answer.clone());
            }
        }
        for w in std::mem::take(&mut self.queued) {
            reply(w, self.refused("handoff is shutting down"));
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.drain(id, why);
        }
        for s in &mut self.slots {
            s.worker = None;
            s.cancel_restart();
        }
    }

    fn kill_everything(&mut self) {
        for w in self.workers.values_mut() {
            w.killed = true;
            let _ = signal::killpg(w.pid, Signal::SIGKILL);
            let _ = signal::kill(w.pid, Signal::SIGKILL);
        }
    }

    // ---- reporting -------------------------------------------------------------------------

    fn extend_systemd_timeout(&self, t: Duration) {
        let usec = (t + SYSTEMD_SLACK).as_micros().min(u32::MAX as u128) as u32;
        self.rt
            .notifier
            .send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    fn ready_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.worker.is_some_and(|id| {
                    self.workers
                        .get(&id)
                        .is_some_and(|w| w.state == WorkerState::Ready)
                })
            })
            .count()
    }

    /// The one-line summary systemd shows (`systemctl status`), sent only when it changes.
    fn publish_status(&mut self) {
        if !self.rt.notifier.enabled() || self.shutdown.is_some() {
            return;
        }
        let line = self.status_line();
        if line != self.last_status_line {
            self.rt.notifier.send(&[NotifyState::Status(&line)]);
            self.last_status_line = line;
        }
    }

    fn status_line(&self) -> String {
        let mut line = format!(
            "gen {}: {}/{} ready",
            self.current_generation,
            self.ready_count(),
            self.slots.len()
        );
        if let Some(v) = self
            .generations
            .get(&self.current_generation)
            .and_then(|(_, v)| v.as_ref())
            .and_then(|v| v.version.as_ref())
        {
            line.push_str(&format!("; version {v}"));
        }
        if let Some(ro) = &self.rollover {
            let ready = ro
                .pending
                .iter()
                .filter(|id| {
                    self.workers
                        .get(id)
                        .is_some_and(|w| w.state == WorkerState::Ready)
                })
                .count();
            line.push_str(&format!(
                "; rolling over to gen {} ({} switched, {ready} more ready)",
                ro.generation, ro.switched
            ));
        }
        if let Some((last, _)) = &self.last_rollover {
            let word = match last.outcome {
                Outcome::Ok => "ok",
                Outcome::RolledBack => "ROLLED BACK",
                Outcome::Partial => "PARTIAL",
                Outcome::Unchanged => "unchanged",
                Outcome::Refused => "refused",
            };
            line.push_str(&format!(
                "; last rollover {word} in {}",
                human(Duration::from_millis(last.duration_ms))
            ));
        }
        let crashing: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.restart_at.is_some())
            .map(|(i, s)| format!("w{i}×{}", s.crashes))
            .collect();
        if !crashing.is_empty() {
            line.push_str(&format!("; restarting {}", crashing.join(",")));
        }
        line
    }

    fn status_report(&self) -> StatusReport {
        let now = Instant::now();
        let ms = |d: Duration| d.as_millis() as u64;
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| WorkerStatus {
                slot: w.slot,
                generation: w.generation,
                pid: w.pid.as_raw(),
                state: w.state.as_str().to_string(),
                age_ms: ms(now - w.started),
                status: w.status.clone(),
            })
            .collect();
        workers.sort_by_key(|w| (std::cmp::Reverse(w.generation), w.slot, w.pid));
        let mut generations: Vec<GenerationStatus> = self
            .generations
            .iter()
            .map(|(n, (t, v))| GenerationStatus {
                number: *n,
                version: v.clone(),
                age_ms: ms(now - *t),
            })
            .collect();
        generations.sort_by_key(|g| std::cmp::Reverse(g.number));
        StatusReport {
            pid: std::process::id(),
            uptime_ms: ms(now - self.started),
            current_generation: self.current_generation,
            workers_wanted: self.slots.len(),
            ready: self.ready_count(),
            listeners: self
                .rt
                .listeners
                .iter()
                .map(|l| format!("{}={}", l.name, l.describe))
                .collect(),
            generations,
            workers,
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotStatus {
                    slot: i,
                    crashes: s.crashes,
                    restart_in_ms: s.restart_at.map(|t| ms(t.saturating_duration_since(now))),
                })
                .collect(),
            rolling_over_to: self.rollover.as_ref().map(|r| r.generation),
            queued_reloads: self.queued.len(),
            last_rollover: self.last_rollover.as_ref().map(|(r, at)| RolloverStatus {
                ago_ms: ms(now - *at),
                ..r.clone()
            }),
            shutting_down: self.shutdown.is_some(),
        }
    }
}

/// ", last status: ..." for failure messages, when the worker said anything.
fn last_words(w: &Worker) -> String {
    let mut s = String::new();
    if let Some(st) = &w.status {
        s.push_str(&format!("; last status: {st:?}"));
    }
    if let Some(e) = w.errno {
        s.push_str(&format!(
            "; errno {e} ({})",
            std::io::Error::from_raw_os_error(e)
        ));
    }
    s
}

fn reply(w: Waiter, answer: ReloadReply) {
    if let Some(tx) = w.reply {
        // The client may have gone away; the rollover's outcome stands regardless.
        let _ = tx.send(answer);
    }
}
