//! The executor: everything around the [`Machine`] that touches the world.
//!
//! One tokio current-thread task turns events (SIGCHLD, signals, notify datagrams, control
//! requests, the machine's next deadline) into [`Input`]s, and carries out the [`Action`]s the
//! machine returns. Results of actions (a spawned pid, a version file's content) go back into
//! the machine as further inputs through a queue, so the machine is never re-entered.
//! With nothing happening and no deadline pending, nothing wakes up.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_common::paths;
use handoff_common::protocol::{ReloadReply, StatusReport, VersionInfo};
use handoff_common::release;
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
use crate::contract::WorkerEnv;
use crate::control::{self, Command};
use crate::journal::{self, JournalStream};
use crate::listeners;
use crate::notify::{NotifySocket, Received};
use crate::spawn::{self, WorkerSpec};

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
    /// The worker program, resolved on `PATH` once.
    program: Option<PathBuf>,
    notify_dir: PathBuf,
    /// Under journald: handoff's unit, for the workers' journal streams.
    journal_unit: Option<String>,
    last_status_line: String,
    started: Instant,
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
    // The read-only status socket for `status_group` (see control.rs).
    let status_path = paths::status_beside(&rt.control_path);
    let status_listener = match rt.status_gid {
        Some(gid) => Some(control::bind_status(&status_path, gid)?),
        None => {
            let _ = std::fs::remove_file(&status_path);
            None
        }
    };
    // Only one handoff owns a control socket, so its notify dir is ours to clear.
    let notify_dir = paths::notify_dir(&rt.runtime_dir);
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
        control_tx,
        control::Access::Full,
    ));
    // Bounded: a flood of notify datagrams waits in the kernel, not in handoff's memory.
    let (notify_tx, mut notify_rx) = mpsc::channel(1024);
    let (version_tx, mut version_rx) = mpsc::channel(4);

    let journal_unit = (rt.base_env.iter().any(|(k, _)| k == "JOURNAL_STREAM")
        && std::path::Path::new(JournalStream::SOCKET).exists())
    .then(|| journal::own_unit().unwrap_or_default());
    let now = Instant::now();
    let machine = Machine::new(Policy::from_settings(&rt.settings), now);
    info!(
        listeners = %rt.listeners.iter().map(|l| format!("{}={}", l.name, l.describe)).collect::<Vec<_>>().join(" "),
        workers = rt.settings.workers,
        control = %rt.control_path.display(),
        "handoff starting"
    );
    let watchdog_period = rt.watchdog.map(|d| d / 2);
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
        notify_dir,
        journal_unit,
        last_status_line: String::new(),
        started: now,
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
                ex.queue.push_back(Input::Reload { waiter: None, if_changed: false });
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
    control_task.abort();
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
        while let Some(input) = self.queue.pop_front() {
            for action in self.machine.handle(Instant::now(), input) {
                self.perform(action);
            }
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
                    Ok(pid) => Input::Spawned { worker, pid },
                    Err(error) => Input::SpawnFailed { worker, error },
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
                    debug!(worker, "status: {s}");
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
                self.queue.push_back(Input::Reload {
                    waiter: Some(id),
                    if_changed,
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status_report());
            }
        }
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

    /// Starts one worker: its notify socket, its environment, fork/exec. Returns its pid.
    fn spawn(&mut self, worker: WorkerId, slot: usize, generation: u64) -> Result<i32, String> {
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
        let sock_path = self
            .notify_dir
            .join(format!("g{generation}-w{slot}-{worker}"));
        let socket = self.notify_socket(&sock_path)?;
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
            credentials: self.rt.credentials.as_ref(),
            journal: journal.is_some(),
        }
        .build();
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

    fn notify_socket(&self, path: &std::path::Path) -> Result<NotifySocket, String> {
        let mut allowed = vec![0, nix::unistd::getuid().as_raw()];
        if let Some(c) = &self.rt.credentials {
            allowed.push(c.uid);
        }
        let sock = NotifySocket::bind(path, allowed)
            .map_err(|e| format!("cannot create notify socket {}: {e}", path.display()))?;
        if let Some(c) = &self.rt.credentials {
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
                self.rt.settings.drain_timeout.as_millis().to_string(),
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

fn unreadable(path: &std::path::Path, why: &str) -> VersionInfo {
    VersionInfo {
        path: path.to_path_buf(),
        version: None,
        hash: String::new(),
        error: Some(format!("cannot read {}: {why}", path.display())),
    }
}

fn emit(log: &Log) {
    let g = log.generation.unwrap_or_default();
    let w = log.slot.unwrap_or_default();
    let pid = log.pid.unwrap_or_default();
    let m = &log.message;
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
