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
use crate::spawn::{self, Credentials, WorkerSpec};

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
    version_tx: mpsc::Sender<VersionInfo>,
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
    control_task: AbortHandle,
    /// The machine asked for a look at handoff's children (done once the queue is empty).
    scan_pending: bool,
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

    let notify_dir = paths::notify_dir(&rt.runtime_dir, &rt.control_path);
    check_notify_dir(&notify_dir).map_err(anyhow::Error::msg)?;
    let control_listener = control::bind(&rt.control_path)?;
    // The read-only status socket for `status_group` (see control.rs).
    let status_path = paths::status_beside(&rt.control_path);
    let status_listener = match rt.status_gid {
        Some(gid) => Some(control::bind_status(&status_path, gid)?),
        None => {
            let _ = std::fs::remove_file(&status_path);
            None
        }
    };
    // Only one handoff owns a control socket, so the notify dir named after it is ours to
    // clear.
    let _ = std::fs::remove_dir_all(&notify_dir);
    paths::make_private_dir(&notify_dir, rt.credentials.is_some())?;

    let (control_tx, mut control_rx) = mpsc::channel::<Command>(64);
    let status_task = status_listener.map(|l| {
        tokio::spawn(control::serve(
            l,
            control_tx.clone(),
            control::Access::StatusOnly,
        ))
    });
    let control_task = tokio::spawn(control::serve(
        control_listener,
        control_tx.clone(),
        control::Access::Full,
    ));
    // Bounded: a flood of notify datagrams waits in the kernel, not in handoff's memory.
    let (notify_tx, mut notify_rx) = mpsc::channel(1024);
    let (version_tx, mut version_rx) = mpsc::channel(4);

    let journal_unit = (rt.base_env.iter().any(|(k, _)| k == "JOURNAL_STREAM")
        && std::path::Path::new(JournalStream::SOCKET).exists())
    .then(|| journal::own_unit().unwrap_or_default());
    let now = Instant::now();
    let machine = Machine::new(
        Policy::from_settings(&rt.settings, rt.credentials.clone()),
        now,
    );
    info!(
        listeners = %rt.listeners.iter().map(|l| format!("{}={}", l.name, l.describe)).collect::<Vec<_>>().join(" "),
        workers = rt.settings.workers,
        control = %rt.control_path.display(),
        "handoff starting"
    );
    let watchdog_period = rt.watchdog.map(|d| d / 2);
    let rt_traversable = rt.credentials.is_some() || rt.status_gid.is_some();
    let mut ex = Executor {
        rt,
        machine,
        queue: VecDeque::from([Input::Start]),
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
        control_task: control_task.abort_handle(),
        scan_pending: false,
    };
    let mut watchdog = watchdog_period.map(tokio::time::interval);
    let code = loop {
        ex.run_queue();
        ex.publish_status();
        if let Some(code) = ex.machine.exit_code() {
            break code;
        }
        let deadline = ex.machine.next_deadline();
        tokio::select! {
            // Biased: what already happened (exits, datagrams, answers) is handled before any
            // deadline is judged, e.g. after handoff was stopped (SIGSTOP) and continued.
            biased;
            _ = sigchld.recv() => ex.reap(),
            Some((worker, received)) = notify_rx.recv() => ex.on_datagram(worker, received),
            Some(version) = version_rx.recv() => ex.queue.push_back(Input::Version(version)),
            Some(cmd) = control_rx.recv() => ex.on_command(cmd),
            _ = sighup.recv() => {
                info!("SIGHUP: rollover requested");
                ex.reload(None, false);
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
        }
    };
    if let Some(g) = &mut ex.rt.guard {
        g.goodbye();
    }
    ex.control_task.abort();
    if let Some(t) = status_task {
        t.abort();
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
                let roots: Vec<i32> = workers.iter().map(|(_, pid)| *pid).collect();
                let rss = tree_rss(&roots);
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

    fn read_version(&mut self) {
        let Some(path) = self.rt.settings.version_file.clone() else {
            return;
        };
        let tx = self.version_tx.clone();
        // Off the loop: the file belongs to the release and may be slow (NFS) or hostile.
        tokio::spawn(async move {
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || release::version_info(&p));
            let info = match tokio::time::timeout(VERSION_READ_TIMEOUT, read).await {
                Ok(Ok(info)) => info,
                Ok(Err(e)) => unreadable(&path, &e.to_string()),
                Err(_) => unreadable(
                    &path,
                    &format!("no answer within {} s", VERSION_READ_TIMEOUT.as_secs()),
                ),
            };
            let _ = tx.send(info).await;
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
        let settings = self.machine.settings_of(generation).clone();
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
        Ok(pid.as_raw())
    }

    /// Binds the control socket again when its file is gone (the runtime dir was removed),
    /// so `handoff status` / `reload` keep working.
    fn ensure_control_socket(&mut self) {
        if std::fs::symlink_metadata(&self.rt.control_path).is_ok() {
            return;
        }
        match control::bind(&self.rt.control_path) {
            Ok(listener) => {
                self.control_task.abort();
                self.control_task = tokio::spawn(control::serve(
                    listener,
                    self.control_tx.clone(),
                    control::Access::Full,
                ))
                .abort_handle();
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

/// The resident memory of each root's process tree (the root and all its descendants), in
/// bytes; `None` for a root that is gone. A worker's children (Node's cluster, a shell's
/// pipeline) count: the limit is about what the worker costs.
fn tree_rss(roots: &[i32]) -> Vec<Option<u64>> {
    tree_rss_counted(roots).0
}

/// [`tree_rss`], and how many processes' `stat` it read. It walks down from each root by
/// `/proc/PID/task/TID/children`, so the cost is the workers' trees, not the host's process
/// count: one walk of all of /proc every second cost handoff 8.6% of a CPU (86 ms with the
/// event loop blocked, each second) on a host running 3,000 processes. Without
/// `CONFIG_PROC_CHILDREN` it falls back to that walk.
fn tree_rss_counted(roots: &[i32]) -> (Vec<Option<u64>>, usize) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut read = 0;
    let mut out = Vec::with_capacity(roots.len());
    for &root in roots {
        let Some((_, rss)) = stat_of(root, page) else {
            read += 1;
            out.push(None);
            continue;
        };
        read += 1;
        let mut total = rss;
        let mut stack = match children_of(root) {
            Some(c) => c,
            None => return (tree_rss_full_walk(roots, page), read),
        };
        while let Some(p) = stack.pop() {
            read += 1;
            // A process that exits meanwhile counts nothing.
            total += stat_of(p, page).map_or(0, |(_, rss)| rss);
            stack.extend(children_of(p).unwrap_or_default());
        }
        out.push(Some(total));
    }
    (out, read)
}

/// (parent pid, resident bytes) from `/proc/PID/stat`: the fields after the last ')' (the
/// command name may hold any byte) are state, ppid, ... and rss (in pages) is the 22nd.
fn stat_of(pid: i32, page: u64) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let rss: u64 = rest.get(21)?.parse().ok()?;
    Some((ppid, rss * page))
}

/// The children of every thread of `pid`; `None` when the kernel has no `children` files
/// (built without `CONFIG_PROC_CHILDREN`). A process gone meanwhile has none.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(vec![]);
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        match std::fs::read_to_string(t.path().join("children")) {
            Ok(c) => out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && t.path().exists() => {
                return None;
            }
            Err(_) => {}
        }
    }
    Some(out)
}

/// The walk of every process in /proc, by parent pids: for kernels without `children`.
fn tree_rss_full_walk(roots: &[i32], page: u64) -> Vec<Option<u64>> {
    let mut procs: HashMap<i32, (i32, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![None; roots.len()];
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(st) = stat_of(pid, page) {
            procs.insert(pid, st);
        }
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, (ppid, _)) in &procs {
        children.entry(*ppid).or_default().push(*pid);
    }
    roots
        .iter()
        .map(|root| {
            procs.get(root)?;
            let mut total = 0;
            let mut stack = vec![*root];
            while let Some(p) = stack.pop() {
                total += procs.get(&p).map_or(0, |(_, rss)| *rss);
                stack.extend(children.get(&p).into_iter().flatten().copied());
            }
            Some(total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample reads the workers' trees, not every process on the host: 200 unrelated
    /// processes change nothing in what it reads.
    #[test]
    fn a_memory_sample_reads_the_workers_trees_only() {
        let mut others: Vec<std::process::Child> = (0..200)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("sleep")
            })
            .collect();
        // A "worker" with a child of its own (the shell waits for the sleep).
        let mut worker = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :"])
            .spawn()
            .expect("sh");
        let root = worker.id() as i32;
        let mut found = (vec![], 0);
        for _ in 0..100 {
            found = tree_rss_counted(&[root, i32::MAX]);
            if found.1 >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (rss, read) = found;
        for c in others.iter_mut().chain([&mut worker]) {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(rss[0].is_some_and(|b| b > 0), "{rss:?}");
        assert_eq!(rss[1], None, "a root that is gone");
        assert!(read <= 4, "read {read} processes' stat for a tree of 2");
    }
}
