//! The executor: everything around the [`Machine`] that touches the world.
//!
//! One tokio current-thread task turns events (SIGCHLD, signals, notify datagrams, control
//! requests, the machine's next deadline) into [`Input`]s, and carries out the [`Action`]s the
//! machine returns. Results of actions (a spawned pid, a version file's content) go back into
//! the machine as further inputs through a queue, so the machine is never re-entered.
//! With nothing happening and no deadline pending, nothing wakes up.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_common::paths;
use handoff_common::protocol::{ReloadReply, StatusReport, VersionInfo};
use handoff_common::release;
use handoff_common::text::printable;
use nix::sys::signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

use super::Runtime;
use super::machine::{
    Action, ExitStatus, Input, Level, Log, Machine, Policy, SystemdState, WaiterId, WorkerId,
};
use crate::config;
use crate::contract::WorkerEnv;
use crate::control::{self, Command};
use crate::journal::{self, JournalStream};
use crate::listeners;
use crate::notify::{NotifySocket, Received};
use crate::pinned;
use crate::spawn::{self, Credentials, WorkerSpec};

mod handover;

/// How long a reexec waits for control connections in flight to be answered (a client
/// that connected and says nothing holds one for up to `control::REQUEST_TIMEOUT`).
const QUIESCE_LIMIT: Duration = Duration::from_secs(1);

/// How long reading the version file may take (it lives on the app's disk, maybe NFS).
const VERSION_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker's notify socket and the task that reads it.
struct NotifyChannel {
    socket: Arc<NotifySocket>,
    task: AbortHandle,
}

struct Executor {
    rt: Runtime,
    machine: Machine,
    /// Inputs waiting for the machine: results of actions, and events of this loop turn.
    queue: VecDeque<Input>,
    notify_tx: mpsc::Sender<(WorkerId, Received)>,
    /// Answers read off the loop: [`Input::Version`], [`Input::Prepared`],
    /// [`Input::RunsOnDisk`].
    version_tx: mpsc::Sender<Input>,
    notify: HashMap<WorkerId, NotifyChannel>,
    waiters: HashMap<WaiterId, oneshot::Sender<ReloadReply>>,
    next_waiter: WaiterId,
    /// `--on-drain-timeout` hooks still running.
    hooks: HashMap<Pid, String>,
    /// The worker program as the command names it, and as resolved on `PATH` (once per
    /// name: a reload may change the command).
    program: Option<(String, PathBuf)>,
    /// The runtime and notify dirs are traversable (0711) for workers of another user.
    traversable: bool,
    notify_dir: PathBuf,
    /// Under journald: handoff's unit, for the workers' journal streams.
    journal_unit: Option<String>,
    last_status_line: String,
    started: Instant,
    /// For binding the control socket again if its file was removed.
    control_tx: mpsc::Sender<Command>,
    /// The control socket and the read-only status socket; their accept loops (on
    /// duplicates) while they run; the connections accepted and not yet answered.
    control_keep: std::os::unix::net::UnixListener,
    status_keep: Option<std::os::unix::net::UnixListener>,
    accepting: Vec<AbortHandle>,
    in_flight: control::InFlight,
    /// A reexec stopped accepting at this time and waits for the connections in flight.
    quiescing: Option<Instant>,
    /// The machine asked for a look at handoff's children (done once the queue is empty).
    scan_pending: bool,
    /// `handoff reexec` / SIGUSR2 asked for; done once the machine is idle.
    reexec_pending: bool,
    /// Control connections waiting for the reexec's answer.
    reexec_replies: Vec<std::os::unix::net::UnixStream>,
    /// Successful reexecs since start, and how the last one ended.
    reexecs: u32,
    last_reexec: Option<String>,
}

/// What the previous image of this handoff handed over (`handoff reexec`), as main read it
/// from the state; the executor turns the fds into its own objects inside the runtime.
pub struct Restored {
    pub machine: Machine,
    pub control: std::os::unix::net::UnixListener,
    pub status: Option<std::os::unix::net::UnixListener>,
    pub notify: Vec<(WorkerId, std::os::fd::OwnedFd, PathBuf, Vec<u32>, i32)>,
    pub hooks: Vec<(i32, String)>,
    pub replies: Vec<std::os::unix::net::UnixStream>,
    pub next_waiter: WaiterId,
    pub traversable: bool,
    pub uptime: Duration,
    pub reexecs: u32,
    pub last_status_line: String,
    /// The new image failed to restore and this (old) image took back over: why.
    pub failed: Option<String>,
    /// The workers' pids the previous image handed over.
    pub handed_over: Vec<i32>,
}

/// Runs handoff until it has shut down; returns the process exit code.
pub async fn run(rt: Runtime, restored: Option<Restored>) -> anyhow::Result<i32> {
    // Signal handlers first: a child that exits before SIGCHLD is watched would be missed.
    let mut sigchld = unix_signal(SignalKind::child())?;
    let mut sighup = unix_signal(SignalKind::hangup())?;
    let mut sigterm = unix_signal(SignalKind::terminate())?;
    let mut sigint = unix_signal(SignalKind::interrupt())?;
    let mut sigusr2 = unix_signal(SignalKind::user_defined2())?;
    // After a reexec these were blocked across the exec (reexec.rs): what arrived meanwhile is
    // delivered now, to the handlers above. A no-op at a first start.
    crate::reexec::unblock_handover_signals();

    // Orphaned grandchildren of workers are re-parented to handoff, not to init, so they are
    // reaped here (and killed with their worker's process group).
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!("cannot become a child subreaper ({e}); orphaned grandchildren go to init");
    }

    let notify_dir = paths::notify_dir(&rt.runtime_dir, &rt.control_path);
    check_notify_dir(&notify_dir).map_err(anyhow::Error::msg)?;
    // The read-only status socket for `status_group` (see control.rs).
    let status_path = paths::status_beside(&rt.control_path);
    // Executor-held (std) listeners: the accept loops run on duplicates of them, so that a
    // reexec can stop accepting (abort the loops) without closing the sockets.
    let (control_keep, status_keep, mut restored) = match restored {
        Some(mut r) => {
            // The sockets of the previous image: still bound, still listening, with any
            // connections that queued during the exec.
            let control = r.control.try_clone()?;
            let status = r.status.take();
            (control, status, Some(r))
        }
        None => {
            let control_listener = control::bind(&rt.control_path)?.into_std()?;
            let status_listener = match rt.status_gid {
                Some(gid) => Some(control::bind_status(&status_path, gid)?.into_std()?),
                None => {
                    let _ = std::fs::remove_file(&status_path);
                    None
                }
            };
            // Only one handoff owns a control socket, so the notify dir named after it is
            // ours to clear.
            let _ = std::fs::remove_dir_all(&notify_dir);
            paths::make_private_dir(&notify_dir, rt.credentials.is_some())?;
            (control_listener, status_listener, None)
        }
    };
    let (control_tx, mut control_rx) = mpsc::channel::<Command>(64);
    // Bounded: a flood of notify datagrams waits in the kernel, not in handoff's memory.
    let (notify_tx, mut notify_rx) = mpsc::channel(1024);
    let (version_tx, mut version_rx) = mpsc::channel(4);

    let journal_unit = (rt.base_env.iter().any(|(k, _)| k == "JOURNAL_STREAM")
        && std::path::Path::new(JournalStream::SOCKET).exists())
    .then(|| journal::own_unit().unwrap_or_default());
    let now = Instant::now();
    let machine = match restored.as_mut() {
        Some(r) => std::mem::replace(
            &mut r.machine,
            Machine::new(
                Policy::from_settings(&rt.settings, rt.credentials.clone()),
                now,
            ),
        ),
        None => Machine::new(
            Policy::from_settings(&rt.settings, rt.credentials.clone()),
            now,
        ),
    };
    if restored.is_none() {
        info!(
            listeners = %rt.listeners.iter().map(|l| format!("{}={}", l.name, l.describe)).collect::<Vec<_>>().join(" "),
            workers = rt.settings.workers,
            control = %rt.control_path.display(),
            "handoff starting"
        );
    }
    let watchdog_period = rt.watchdog.map(|d| d / 2);
    let rt_traversable = rt.credentials.is_some() || rt.status_gid.is_some();
    let mut ex = Executor {
        rt,
        machine,
        queue: if restored.is_some() {
            VecDeque::new()
        } else {
            VecDeque::from([Input::Start])
        },
        notify_tx,
        version_tx,
        notify: HashMap::new(),
        waiters: HashMap::new(),
        next_waiter: 1,
        hooks: HashMap::new(),
        program: None,
        traversable: rt_traversable,
        notify_dir,
        journal_unit,
        last_status_line: String::new(),
        started: now,
        control_tx,
        control_keep,
        status_keep,
        accepting: Vec::new(),
        in_flight: control::InFlight::default(),
        quiescing: None,
        scan_pending: false,
        reexec_pending: false,
        reexec_replies: Vec::new(),
        reexecs: 0,
        last_reexec: None,
    };
    ex.serve_control()?;
    if let Some(r) = restored {
        ex.resume(r);
    }
    let mut watchdog = watchdog_period.map(tokio::time::interval);
    let code = loop {
        ex.run_queue();
        ex.publish_status();
        if let Some(code) = ex.machine.exit_code() {
            break code;
        }
        if ex.reexec_pending && ex.machine.idle() && ex.quiescing.is_none() {
            // First no new control connection (they wait in the backlog, which the new
            // image inherits), and the ones in flight answered: an answer due from this
            // image would otherwise be a client's lost connection.
            ex.stop_accepting();
            ex.quiescing = Some(Instant::now());
        }
        if let Some(since) = ex.quiescing {
            if !ex.reexec_pending || !ex.machine.idle() {
                // A request in flight started a rollover: serve on, reexec when it is over.
                ex.quiescing = None;
                if let Err(e) = ex.serve_control() {
                    error!("cannot serve the control socket again: {e}");
                }
            } else if ex.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
                || since.elapsed() > QUIESCE_LIMIT
            {
                // What already arrived goes to the machine first (a READY=1 read off a
                // socket but not yet handled would be lost with this image's memory).
                while let Ok((worker, received)) = notify_rx.try_recv() {
                    ex.on_datagram(worker, received);
                }
                while let Ok(cmd) = control_rx.try_recv() {
                    ex.on_command(cmd);
                }
                ex.run_queue();
                if ex.machine.idle() {
                    // Returns only if handoff could not hand over: it goes on as it was.
                    ex.reexec();
                    ex.quiescing = None;
                    if let Err(e) = ex.serve_control() {
                        error!("cannot serve the control socket again: {e}");
                    }
                }
                continue;
            }
        }
        if ex.reexec_pending && ex.machine.shutting_down() {
            ex.reexec_failed("handoff is shutting down".into());
        }
        let deadline = ex.machine.next_deadline();
        tokio::select! {
            // Biased: what already happened (exits, datagrams, answers) is handled before any
            // deadline is judged, e.g. after handoff was stopped (SIGSTOP) and continued.
            biased;
            _ = sigchld.recv() => ex.reap(),
            Some((worker, received)) = notify_rx.recv() => ex.on_datagram(worker, received),
            Some(input) = version_rx.recv() => ex.queue.push_back(input),
            Some(cmd) = control_rx.recv() => ex.on_command(cmd),
            _ = sighup.recv() => {
                info!("SIGHUP: rollover requested");
                ex.reload(None, false);
            }
            _ = sigusr2.recv() => {
                info!("SIGUSR2: reexec requested");
                ex.reexec_pending = true;
            }
            _ = sigterm.recv() => ex.queue.push_back(Input::Shutdown { why: "SIGTERM".into(), code: 0 }),
            _ = sigint.recv() => {
                let input = if ex.machine.shutting_down() {
                    Input::KillAll
                } else {
                    Input::Shutdown { why: "SIGINT".into(), code: 0 }
                };
                ex.queue.push_back(input);
            }
            _ = async { watchdog.as_mut().expect("watchdog").tick().await }, if watchdog.is_some() => {
                ex.rt.notifier.send(&[NotifyState::Watchdog]);
            }
            _ = sleep_until(deadline), if deadline.is_some() => ex.tick(),
            // Quiescing for a reexec: look again soon whether the connections in flight
            // have been answered (their tasks tell nobody when they finish).
            _ = tokio::time::sleep(Duration::from_millis(2)), if ex.quiescing.is_some() => {}
        }
    };
    if let Some(g) = &mut ex.rt.guard {
        g.goodbye();
    }
    ex.stop_accepting();
    if ex.status_keep.is_some() {
        let _ = std::fs::remove_file(&status_path);
    }
    let _ = std::fs::remove_file(&ex.rt.control_path);
    ex.notify.clear();
    let _ = std::fs::remove_dir_all(&ex.notify_dir);
    info!(code, "handoff stopped");
    Ok(code)
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

impl Executor {
    /// Feeds queued inputs to the machine until none is left, carrying out its actions.
    fn run_queue(&mut self) {
        loop {
            while let Some(input) = self.queue.pop_front() {
                for action in self.machine.handle(Instant::now(), input) {
                    self.perform(action);
                }
            }
            // One look for re-parented descendants per turn, however many exits asked for
            // it: a rollover of 64 workers reaps 64 of them, often in one SIGCHLD.
            if !std::mem::take(&mut self.scan_pending) {
                break;
            }
            let children = self.other_children();
            if let Some(g) = &mut self.rt.guard {
                for (pid, _) in &children {
                    g.watch(*pid);
                }
            }
            self.queue.push_back(Input::Children(children));
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::ReadVersion => self.read_version(),
            Action::Spawn {
                worker,
                slot,
                generation,
            } => {
                let input = match self.spawn(worker, slot, generation) {
                    Ok(pid) => {
                        if let Some(g) = &mut self.rt.guard {
                            g.watch(pid);
                        }
                        self.check_on_disk(worker, generation);
                        Input::Spawned { worker, pid }
                    }
                    Err(SpawnError { error, ours }) => Input::SpawnFailed {
                        worker,
                        error,
                        ours,
                    },
                };
                self.queue.push_back(input);
            }
            Action::Signal { pid, signal } => {
                if let Err(e) = signal::kill(Pid::from_raw(pid), signal) {
                    debug!(pid, "{}: {e}", signal.as_str());
                }
            }
            Action::SignalGroup { pgid, signal } => {
                let _ = signal::killpg(Pid::from_raw(pgid), signal);
            }
            Action::CloseNotify { worker } => {
                if let Some(ch) = self.notify.remove(&worker) {
                    ch.task.abort();
                }
            }
            Action::Reply { waiter, reply } => {
                if let Some(tx) = self.waiters.remove(&waiter) {
                    // The client may have gone away; the rollover's outcome stands regardless.
                    let _ = tx.send(reply);
                }
            }
            Action::Systemd(states) => self.tell_systemd(&states),
            Action::RunHook {
                pid,
                generation,
                slot,
            } => self.run_hook(pid, generation, slot),
            Action::Log(log) => emit(&log),
            Action::ScanChildren => self.scan_pending = true,
            Action::SampleUsage(workers) => {
                // Down each worker's tree, not all of /proc: this runs every second.
                let roots: Vec<i32> = workers.iter().map(|(_, pid)| *pid).collect();
                let rss = crate::usage::tree_rss(&roots);
                let samples = workers
                    .iter()
                    .zip(rss)
                    .filter_map(|((id, _), rss)| Some((*id, rss?)))
                    .collect();
                self.queue.push_back(Input::Usage(samples));
            }
        }
    }

    /// The clock passed the machine's deadline. Datagrams that are already queued on the
    /// workers' sockets are taken first: a `READY=1` sent in time must beat its deadline even
    /// when handoff itself was late to look (stopped, or busy).
    fn tick(&mut self) {
        let mut queued = Vec::new();
        for (&worker, ch) in &self.notify {
            while let Ok(Some(r)) = ch.socket.try_recv() {
                queued.push((worker, r));
            }
        }
        for (worker, r) in queued {
            self.on_datagram(worker, r);
        }
        self.queue.push_back(Input::Tick);
    }

    /// Prepares the next generation: resolves its `working_directory` (when it has one),
    /// then reads the version file through the resolved dir, so the version it is labelled
    /// with is the release it runs even if `current` is switched meanwhile.
    fn read_version(&mut self) {
        let file = self.rt.settings.version_file.clone();
        let working_directory = self
            .machine
            .preparing()
            .and_then(|p| p.working_directory.clone());
        if file.is_none() && working_directory.is_none() {
            return;
        }
        let tx = self.version_tx.clone();
        // Off the loop: the file and the symlinks belong to the release and may be slow
        // (NFS) or hostile.
        tokio::spawn(async move {
            let (f, w) = (file.clone(), working_directory.clone());
            let read = tokio::task::spawn_blocking(move || {
                let release = w.as_deref().map(pinned::resolve);
                let version = f.map(|f| match (&w, &release) {
                    (Some(w), Some(Ok(dir))) => release::version_info(&pinned::pin(&f, w, dir)),
                    _ => release::version_info(&f),
                });
                (version, release)
            });
            let (version, release) = match tokio::time::timeout(VERSION_READ_TIMEOUT, read).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let why = e.to_string();
                    (
                        file.as_deref().map(|f| unreadable(f, &why)),
                        working_directory
                            .as_ref()
                            .map(|w| Err(format!("working_directory {}: {why}", w.display()))),
                    )
                }
                Err(_) => {
                    let why = format!("no answer within {} s", VERSION_READ_TIMEOUT.as_secs());
                    (
                        file.as_deref().map(|f| unreadable(f, &why)),
                        working_directory
                            .as_ref()
                            .map(|w| Err(format!("working_directory {}: {why}", w.display()))),
                    )
                }
            };
            let input = match (release, version) {
                (Some(release), version) => Input::Prepared { version, release },
                (None, Some(version)) => Input::Version(version),
                (None, None) => return,
            };
            let _ = tx.send(input).await;
        });
    }

    /// After a worker of `generation` started: if the generation's version file now holds
    /// something else (an in-place install overwrote the release), tell the machine, which
    /// says so in the journal and in status. Off the loop, like every read of a release.
    fn check_on_disk(&self, worker: WorkerId, generation: u64) {
        let Some(then) = self.machine.version_of(generation).cloned() else {
            return;
        };
        if then.error.is_some() {
            return;
        }
        let tx = self.version_tx.clone();
        tokio::spawn(async move {
            let p = then.path.clone();
            let read = tokio::task::spawn_blocking(move || release::version_info(&p));
            if let Ok(Ok(now)) = tokio::time::timeout(VERSION_READ_TIMEOUT, read).await
                && let Some(note) = pinned::on_disk_note(generation, &then, &now)
            {
                let _ = tx.send(Input::RunsOnDisk { worker, note }).await;
            }
        });
    }

    fn on_datagram(&mut self, worker: WorkerId, received: Received) {
        match received {
            Received::Dropped(why) => debug!(worker, "notify datagram dropped: {why}"),
            Received::Message { msg, .. } => {
                if let Some(s) = &msg.status {
                    debug!(worker, "status: {}", printable(s));
                }
                self.queue.push_back(Input::Notify { worker, msg });
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Reload { if_changed, reply } => {
                info!(if_changed, "reload requested on the control socket");
                let id = self.next_waiter;
                self.next_waiter += 1;
                self.waiters.insert(id, reply);
                self.reload(Some(id), if_changed);
            }
            Command::Scale { workers, reply } => {
                info!(workers, "scale requested on the control socket");
                let id = self.next_waiter;
                self.next_waiter += 1;
                self.waiters.insert(id, reply);
                self.queue.push_back(Input::Scale {
                    waiter: Some(id),
                    workers,
                });
            }
            Command::RestartWorker { slot, reply } => {
                info!(slot, "restart-worker requested on the control socket");
                let id = self.next_waiter;
                self.next_waiter += 1;
                self.waiters.insert(id, reply);
                self.queue.push_back(Input::RestartWorker {
                    waiter: Some(id),
                    slot,
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status_report());
            }
            Command::Reexec { stream } => {
                info!("reexec requested on the control socket");
                self.reexec_replies.push(stream);
                self.reexec_pending = true;
            }
        }
    }

    /// A reload: with `--config`, the file is read again and validated here, and the machine
    /// gets the result (new settings, or why the file was refused).
    fn reload(&mut self, waiter: Option<WaiterId>, if_changed: bool) {
        let input = match self.reread() {
            None => Input::Reload { waiter, if_changed },
            Some(Ok((policy, restart_needed))) => {
                self.allow_other_users(&policy);
                Input::ReloadConfig {
                    waiter,
                    if_changed,
                    config: Ok(Box::new(policy)),
                    restart_needed,
                }
            }
            Some(Err(e)) => Input::ReloadConfig {
                waiter,
                if_changed,
                config: Err(e),
                restart_needed: Vec::new(),
            },
        };
        self.queue.push_back(input);
    }

    /// The config file's settings now, completely validated (users resolved); `None`
    /// without `--config`.
    fn reread(&self) -> Option<Result<(Policy, Vec<String>), String>> {
        let file = self.rt.config.file.as_ref()?;
        let read = config::reread(
            file,
            &self.rt.config.cli,
            &self.rt.settings,
            &self.restart_command(),
        );
        Some(read.map_err(|e| e.to_string()).and_then(|(s, notes)| {
            let creds = Credentials::for_workers(s.user.as_deref(), s.group.as_deref())
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok((Policy::from_settings(&s, creds), notes))
        }))
    }

    /// The command that applies settings bound at start.
    fn restart_command(&self) -> String {
        match &self.journal_unit {
            Some(u) if u.starts_with("handoff@") => {
                format!("systemctl restart {}", u.trim_end_matches(".service"))
            }
            _ => "systemctl restart handoff@APP".into(),
        }
    }

    /// Workers of another user reach their notify sockets through the runtime and notify
    /// dirs: open them to traversal (0711, as at start with `user =`) before the first such
    /// worker starts.
    fn allow_other_users(&mut self, policy: &Policy) {
        if policy.credentials.is_none() || self.traversable {
            return;
        }
        for dir in [&self.rt.runtime_dir, &self.notify_dir] {
            if let Err(e) = paths::make_private_dir(dir, true) {
                warn!("cannot open {} to the workers' user: {e}", dir.display());
                return;
            }
        }
        self.traversable = true;
    }

    /// How the config file differs from the settings in force, for `handoff status`.
    fn config_differs(&self) -> Option<String> {
        let file = self.rt.config.file.as_ref()?;
        let (s, notes) = match config::reread(
            file,
            &self.rt.config.cli,
            &self.rt.settings,
            &self.restart_command(),
        ) {
            Ok(r) => r,
            Err(e) => return Some(format!("the file cannot be applied: {e}")),
        };
        // Users are not looked up for a status: names are compared.
        let changes = self
            .machine
            .in_force()
            .changes(&Policy::from_settings(&s, None));
        let mut parts = Vec::new();
        if !changes.is_empty() {
            parts.push(format!(
                "{} differ{} from the settings in force; `handoff reload` applies {}",
                changes.join(", "),
                if changes.len() == 1 { "s" } else { "" },
                if changes.len() == 1 { "it" } else { "them" }
            ));
        }
        parts.extend(notes);
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    fn status_report(&self) -> StatusReport {
        let mut r = self.machine.status(Instant::now());
        r.pid = std::process::id();
        r.uptime_ms = self.started.elapsed().as_millis() as u64;
        r.listeners = self
            .rt
            .listeners
            .iter()
            .map(|l| format!("{}={}", l.name, l.describe))
            .collect();
        r.log_lines_dropped = handoff_common::logging::dropped_lines();
        r.config_file = self.rt.config.file.clone();
        r.config_differs = self.config_differs();
        // Sampled now, on the loop: a worker not reaped yet keeps its pid (a zombie), so no
        // pid sampled here can be another process's. One /proc walk for all workers; no
        // sampling happens between status requests (an idle handoff never wakes up).
        let pids: Vec<i32> = r.workers.iter().map(|w| w.pid).collect();
        let usage = crate::usage::sample(&pids);
        for w in &mut r.workers {
            if let Some(u) = usage.get(&w.pid) {
                w.rss_bytes = Some(u.rss_bytes);
                w.cpu_ms = Some(u.cpu.as_millis() as u64);
                w.processes = Some(u.processes);
            }
        }
        r.reexecs = self.reexecs;
        r.last_reexec = self.last_reexec.clone();
        r
    }

    // ---- children ------------------------------------------------------------------------

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
                    let (pid, st) = match status {
                        WaitStatus::Exited(pid, code) => (pid, ExitStatus::Code(code)),
                        WaitStatus::Signaled(pid, sig, core) => (
                            pid,
                            ExitStatus::Signal {
                                signal: sig as i32,
                                core,
                            },
                        ),
                        _ => continue,
                    };
                    if let Some(g) = &mut self.rt.guard {
                        g.forget(pid.as_raw());
                    }
                    if let Some(cmd) = self.hooks.remove(&pid) {
                        info!(hook_pid = pid.as_raw(), "on-drain-timeout hook {st}: {cmd}");
                        continue;
                    }
                    self.queue.push_back(Input::Exited {
                        pid: pid.as_raw(),
                        status: st,
                    });
                }
            }
        }
    }

    /// handoff's children that are not hooks, workers or known strays, each with the worker
    /// its environment names (`HANDOFF_GENERATION`, `HANDOFF_WORKER`). Known pids are left
    /// out before any /proc/PID/environ is read: that read per worker per exit cost 2.7x the
    /// CPU of a 64-worker rollover.
    fn other_children(&self) -> Vec<(i32, Option<(u64, usize)>)> {
        let mut pids = Vec::new();
        // Children of every thread of handoff (the blocking pool's threads fork nothing, but
        // a child's parent is the thread that forked it).
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
                    pids.extend(
                        list.split_whitespace()
                            .filter_map(|p| p.parse::<i32>().ok()),
                    );
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .filter(|p| !self.hooks.contains_key(&Pid::from_raw(*p)))
            .filter(|p| !self.machine.knows_pid(*p))
            .filter(|p| {
                self.rt
                    .guard
                    .as_ref()
                    .is_none_or(|g| g.pid().as_raw() != *p)
            })
            .map(|p| (p, worker_named_in_environment(p)))
            .collect()
    }

    /// Starts one worker: its notify socket, its environment, fork/exec. Returns its pid.
    fn spawn(&mut self, worker: WorkerId, slot: usize, generation: u64) -> Result<i32, SpawnError> {
        // Its generation's settings: a restart in an old generation runs the old command.
        let mut settings = self.machine.settings_of(generation).clone();
        // The release the generation pinned when it started, for this worker too (a restart
        // after a crash runs the generation's release, not what `current` names now).
        let cwd = match self.machine.release_of(generation) {
            None => None,
            Some(Err(e)) => return Err(SpawnError::release(e)),
            Some(Ok(dir)) => {
                let wd = settings.working_directory.as_deref();
                if let Some(e) = pinned::gone(dir, generation, wd) {
                    return Err(SpawnError::release(e));
                }
                if let Some(wd) = wd {
                    settings.command = pinned::command(&settings.command, wd, dir);
                }
                Some(dir.clone())
            }
        };
        let name = &settings.command[0];
        let program = match &self.program {
            Some((n, p)) if n == name => p.clone(),
            _ => {
                let path = self
                    .rt
                    .base_env
                    .iter()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| v.as_os_str());
                let p = spawn::resolve_program(name, path).map_err(SpawnError::release)?;
                self.program = Some((name.clone(), p.clone()));
                p
            }
        };
        let credentials = settings.credentials.as_ref();
        // Unguessable (only this worker is told the name) and of a fixed length, so the
        // longest path is known at start (`check_notify_dir`).
        let ours = |error| SpawnError { error, ours: true };
        let name = crate::notify::socket_name().map_err(|e| ours(format!("getrandom: {e}")))?;
        let sock_path = self.notify_dir.join(name);
        let mut socket = self.notify_socket(&sock_path, credentials).map_err(ours)?;
        let journal = self.journal_unit.as_ref().map(|unit| {
            // `node@w1`: the slot, the same across rollovers, so `journalctl -t node@w1`
            // follows one worker; journalctl shows it with the pid (one per generation).
            let base = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            JournalStream::new(&journal::identifier(&base, slot), unit)
        });
        let env = WorkerEnv {
            base: &self.rt.base_env,
            listeners: self.rt.listeners.len(),
            fd_names: &listeners::fd_names(&self.rt.listeners),
            notify_socket: &sock_path,
            generation,
            slot,
            credentials,
            extra: &settings.environment,
            journal: journal.is_some(),
            watchdog: settings.watchdog,
        }
        .build();
        let mut env = env;
        if let Some(dir) = &cwd {
            // Shells and some runtimes take the cwd from $PWD: make it the pinned release.
            env.retain(|(k, _)| k != "PWD");
            env.push(("PWD".into(), dir.into()));
        }
        let fds: Vec<_> = self.rt.listeners.iter().map(|l| l.fd()).collect();
        let spec = WorkerSpec {
            program: &program,
            args: &settings.command,
            env: &env,
            watchdog_pid: settings.watchdog.is_some(),
            listeners: &fds,
            parent_death_signal: settings.drain_signal,
            credentials,
            journal: journal.as_ref(),
            nofile: self.rt.nofile,
            cwd: cwd.as_deref(),
        };
        let pid = spawn::spawn_worker(&spec).map_err(|e| {
            // Out of fds, memory or processes: handoff's own trouble, not the release's.
            let ours = matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN)
            );
            SpawnError {
                error: e.to_string(),
                ours,
            }
        })?;
        // Datagrams count only from this worker's process tree (`notify::sender_in_tree`).
        socket.set_owner(pid.as_raw());
        self.watch_notify(worker, socket);
        Ok(pid.as_raw())
    }

    /// Reads worker `worker`'s notify socket from now on.
    fn watch_notify(&mut self, worker: WorkerId, socket: NotifySocket) {
        let socket = Arc::new(socket);
        let reader = socket.clone();
        let tx = self.notify_tx.clone();
        let task = tokio::spawn(async move {
            loop {
                match reader.recv().await {
                    Ok(received) => {
                        if tx.send((worker, received)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!("notify socket {}: {e}", reader.path().display());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        self.notify.insert(
            worker,
            NotifyChannel {
                socket,
                task: task.abort_handle(),
            },
        );
    }

    /// Starts the accept loops of the control (and status) sockets.
    fn serve_control(&mut self) -> std::io::Result<()> {
        let dup = |l: &std::os::unix::net::UnixListener| {
            let l = l.try_clone()?;
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        };
        let control = dup(&self.control_keep)?;
        let status = self.status_keep.as_ref().map(dup).transpose()?;
        self.accepting.push(
            tokio::spawn(control::serve(
                control,
                self.control_tx.clone(),
                control::Access::Full,
                self.in_flight.clone(),
            ))
            .abort_handle(),
        );
        if let Some(l) = status {
            self.accepting.push(
                tokio::spawn(control::serve(
                    l,
                    self.control_tx.clone(),
                    control::Access::StatusOnly,
                    self.in_flight.clone(),
                ))
                .abort_handle(),
            );
        }
        Ok(())
    }

    /// Stops the accept loops: new connections wait in the sockets' backlogs.
    fn stop_accepting(&mut self) {
        for t in self.accepting.drain(..) {
            t.abort();
        }
    }

    /// Binds the control socket again when its file is gone (the runtime dir was removed),
    /// so `handoff status` / `reload` keep working.
    fn ensure_control_socket(&mut self) {
        if std::fs::symlink_metadata(&self.rt.control_path).is_ok() {
            return;
        }
        match control::bind(&self.rt.control_path) {
            Ok(listener) => {
                let Ok(listener) = listener.into_std() else {
                    return;
                };
                self.control_keep = listener;
                self.stop_accepting();
                if let Err(e) = self.serve_control() {
                    error!("cannot serve the control socket again: {e}");
                }
                warn!(
                    "the control socket {} was gone; bound it again",
                    self.rt.control_path.display()
                );
            }
            Err(e) => error!("cannot bind the control socket again: {e}"),
        }
    }

    fn notify_socket(
        &mut self,
        path: &std::path::Path,
        credentials: Option<&Credentials>,
    ) -> Result<NotifySocket, String> {
        // The dir is ours alone, but someone may have removed it (tmpfiles, an operator):
        // make it again rather than fail every start from now on.
        if !self.notify_dir.is_dir() {
            warn!(
                "the notify directory {} is gone; making it again",
                self.notify_dir.display()
            );
            paths::make_private_dir(&self.notify_dir, self.traversable)
                .map_err(|e| format!("cannot make {}: {e}", self.notify_dir.display()))?;
            self.ensure_control_socket();
        }
        let mut allowed = vec![0, nix::unistd::getuid().as_raw()];
        if let Some(c) = credentials {
            allowed.push(c.uid);
        }
        let sock = NotifySocket::bind(path, allowed)
            .map_err(|e| format!("cannot create notify socket {}: {e}", path.display()))?;
        if let Some(c) = credentials {
            // The worker's user alone may send to it.
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::chown(path, Some(c.uid), Some(c.gid))
                .and_then(|_| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(|e| {
                    format!(
                        "cannot hand notify socket {} to {}: {e}",
                        path.display(),
                        c.name
                    )
                })?;
        }
        Ok(sock)
    }

    fn run_hook(&mut self, pid: i32, generation: u64, slot: usize) {
        let Some(cmd) = self.rt.settings.on_drain_timeout.clone() else {
            return;
        };
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(&cmd)
            .env_clear()
            .envs(self.rt.base_env.iter().map(|(k, v)| (k, v)))
            .env("HANDOFF_EVENT", "drain-timeout")
            .env("HANDOFF_WORKER_PID", pid.to_string())
            .env("HANDOFF_GENERATION", generation.to_string())
            .env("HANDOFF_WORKER", slot.to_string())
            .env(
                "HANDOFF_DRAIN_TIMEOUT_MS",
                self.machine
                    .settings_of(generation)
                    .drain_timeout
                    .as_millis()
                    .to_string(),
            )
            .stdin(std::process::Stdio::null());
        match c.spawn() {
            // Reaped by the SIGCHLD loop like every other child.
            Ok(child) => {
                let hpid = Pid::from_raw(child.id() as i32);
                info!(
                    hook_pid = hpid.as_raw(),
                    "on-drain-timeout hook started: {cmd}"
                );
                self.hooks.insert(hpid, cmd);
            }
            Err(e) => error!("cannot run on-drain-timeout hook {cmd:?}: {e}"),
        }
    }

    // ---- systemd ---------------------------------------------------------------------------

    fn tell_systemd(&self, states: &[SystemdState]) {
        let mut out: Vec<NotifyState> = Vec::new();
        for s in states {
            match s {
                SystemdState::Ready => out.push(NotifyState::Ready),
                SystemdState::Reloading => {
                    out.push(NotifyState::Reloading);
                    // Type=notify-reload wants the time the reload started.
                    out.push(
                        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0)),
                    );
                }
                SystemdState::Stopping => out.push(NotifyState::Stopping),
                SystemdState::Status(s) => out.push(NotifyState::Status(s)),
                SystemdState::ExtendTimeout(d) => out.push(NotifyState::ExtendTimeoutUsec(
                    d.as_micros().min(u32::MAX as u128) as u32,
                )),
            }
        }
        self.rt.notifier.send(&out);
    }

    /// The one-line summary systemd shows (`systemctl status`), sent only when it changes.
    fn publish_status(&mut self) {
        if !self.rt.notifier.enabled() || self.machine.shutting_down() {
            return;
        }
        let line = self.machine.status_line();
        if line != self.last_status_line {
            self.rt.notifier.send(&[NotifyState::Status(&line)]);
            self.last_status_line = line;
        }
    }
}

/// Why a worker could not be started, and whose fault it is.
struct SpawnError {
    error: String,
    /// handoff lacked a resource; the release was never tried.
    ours: bool,
}

impl SpawnError {
    fn release(e: impl ToString) -> SpawnError {
        SpawnError {
            error: e.to_string(),
            ours: false,
        }
    }
}

/// Refuses a runtime dir whose notify sockets would not fit a unix socket address.
pub fn check_notify_dir(dir: &Path) -> Result<(), String> {
    // sun_path holds 108 bytes, with the terminating NUL.
    const SUN_PATH: usize = 108;
    // Names are 32 hex digits (`notify::socket_name`), whatever the number of rollovers.
    let longest = dir.join("f".repeat(32));
    let len = longest.as_os_str().len();
    if len >= SUN_PATH {
        return Err(format!(
            "the notify sockets under {} would not fit a unix socket address ({len} bytes for \
             {}, the limit is {}): give a shorter --runtime-dir",
            dir.display(),
            longest.display(),
            SUN_PATH - 1
        ));
    }
    Ok(())
}

fn unreadable(path: &std::path::Path, why: &str) -> VersionInfo {
    VersionInfo {
        path: path.to_path_buf(),
        version: None,
        hash: String::new(),
        error: Some(format!("cannot read {}: {why}", path.display())),
    }
}

/// The (generation, slot) in a process's `HANDOFF_GENERATION` / `HANDOFF_WORKER`, as it was
/// when the process exec'd; `None` when unreadable or absent (a scrubbed environment).
fn worker_named_in_environment(pid: i32) -> Option<(u64, usize)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let get = |key: &[u8]| {
        env.split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix(b"="))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
    };
    Some((
        get(b"HANDOFF_GENERATION")?,
        get(b"HANDOFF_WORKER")? as usize,
    ))
}

fn emit(log: &Log) {
    let g = log.generation.unwrap_or_default();
    let w = log.slot.unwrap_or_default();
    let pid = log.pid.unwrap_or_default();
    // Messages quote versions and workers' STATUS= text: no control characters in the log.
    let m = printable(&log.message);
    macro_rules! ev {
        ($mac:ident) => {
            match (log.generation, log.slot, log.pid) {
                (_, Some(_), Some(_)) => $mac!(gen = g, worker = w, pid, "{m}"),
                (_, Some(_), None) => $mac!(worker = w, "{m}"),
                (Some(_), None, _) => $mac!(gen = g, "{m}"),
                _ => $mac!("{m}"),
            }
        };
    }
    match log.level {
        Level::Debug => ev!(debug),
        Level::Info => ev!(info),
        Level::Warn => ev!(warn),
        Level::Error => ev!(error),
    }
}
