//! The contenders: each can start serving on a port, roll its workers over once (reporting
//! when it was triggered and when the old generation was gone), and stop.
//!
//! - [`Handoff`]: `handoff run` (whole-generation or `--rolling`), triggered over its control
//!   socket (the JSON line `handoff reload` sends, without the CLI's own exec).
//! - [`PlainRestart`]: the bench holds the listening socket and does what `systemctl restart`
//!   of a socket-activated `Type=notify` service does: SIGTERM the workers, wait for them to
//!   exit, start new ones with the socket at fd 3, wait for their `READY=1`.
//! - [`ServerStarter`]: `start_server --signal-on-hup=TERM`, triggered by SIGHUP; the worker
//!   gets its socket through `peers/server-starter-adapter.sh`.
//! - [`Pm2`]: PM2 cluster mode, `pm2 reload` through PM2's programmatic API
//!   (`peers/pm2-driver.js`), with the Node.js worker `peers/pm2-worker.js`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use handoff_common::protocol::{self, Outcome, Request, Response, StatusReport};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cleanup;
use crate::procfs::{self, Watch};
use crate::sys;

/// How long one rollover may take before the bench calls it failed.
pub const ROLLOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a contender may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// When one rollover happened, on the bench's clock.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Just before the trigger was sent.
    pub t0: Instant,
    /// The supervisor said the new generation serves (handoff's reload answer, PM2's reload
    /// callback), when it says so.
    pub switched: Option<Instant>,
    /// Every worker that served before the trigger has exited.
    pub end: Instant,
    /// Plain restart only: the workers' own start (exec → READY=1) and drain (SIGTERM → exit).
    pub start_own: Option<Duration>,
    /// Plain restart: each worker's own start.
    pub start_each: Vec<Duration>,
    pub drain_own: Option<Duration>,
}

pub trait Contender {
    /// Starts serving; returns once every worker is ready.
    fn start(&mut self) -> Result<()>;
    /// One rollover, from trigger until the old generation is gone.
    fn rollover(&mut self) -> Result<Timing>;
    /// The supervisor process, for CPU and RSS (none for the plain restart).
    fn supervisor_pid(&self) -> Option<i32>;
    /// Stops everything it started. Idempotent.
    fn stop(&mut self) -> Result<()>;
    /// The worker's own start, measured away from the served socket (plain restart only).
    fn calibrate(&mut self, _reps: usize) -> Result<Option<Calibration>> {
        Ok(None)
    }
}

/// The worker's own start time, measured `reps` times on a private listener that no client
/// connects to, while the load runs against the contender: exec → READY=1 of one worker
/// alone, and of a whole generation started at once. (Within a plain restart the new workers
/// also meet the connections queued while nobody accepted, which slows their start.)
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    pub single_ms: Vec<f64>,
    pub generation_ms: Vec<f64>,
}

/// `n` TCP ports on 127.0.0.1 in 19000..=19999 that are free now, starting at a place that
/// depends on our pid (so two runs at once rarely collide).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let span = 1000u32;
    let start = (std::process::id().wrapping_mul(7919)) % span;
    let mut out = Vec::new();
    for i in 0..span {
        let port = 19000 + ((start + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    bail!("fewer than {n} free ports in 19000-19999 on 127.0.0.1")
}

/// Which example worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerKind {
    Rust,
    Node,
    /// The Egg.js example app run by egg-handoff's entry point (`egg-handoff-start`, what the
    /// app's rpm runs), one single-process Egg
    /// per worker; its boot takes most of a second of CPU.
    Egg,
}

impl WorkerKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Rust => "Rust",
            WorkerKind::Node => "Node.js",
            WorkerKind::Egg => "Egg",
        }
    }
}

/// egg-handoff's entry point in the Egg example app (its bin `egg-handoff-start`).
const EGG_START: &str = "node_modules/egg-handoff/bin/egg-handoff-start.js";

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `handoff` and `handoff-example-worker`.
    pub bin_dir: PathBuf,
    /// The workspace (for `examples/node-worker/server.js`).
    pub root: PathBuf,
    /// `crates/handoff-bench/peers`.
    pub peers: PathBuf,
    /// The `pm2` npm package (a directory with its package.json).
    pub pm2_module: PathBuf,
    /// Scratch space for logs, runtime dirs and sockets of this run.
    pub tmp: PathBuf,
}

impl Paths {
    pub fn handoff(&self) -> PathBuf {
        self.bin_dir.join("handoff")
    }

    /// argv of the worker handoff and the plain restart start.
    pub fn worker_command(&self, kind: WorkerKind) -> Result<Vec<String>> {
        Ok(match kind {
            WorkerKind::Rust => vec![path_str(&self.bin_dir.join("handoff-example-worker"))],
            WorkerKind::Node => vec![
                path_str(&which("node").context("node is not on PATH")?),
                path_str(&self.root.join("examples/node-worker/server.js")),
            ],
            WorkerKind::Egg => {
                let app = self.egg_app()?;
                // env(1) execs node in the same process, so LISTEN_PID stays right. Egg's run
                // files and logs go to the scratch dir; the demo schedule is off (it would
                // only add a timer).
                let scratch = self.tmp.join("egg");
                vec![
                    "/usr/bin/env".into(),
                    format!("EGG_RUN_DIR={}", path_str(&scratch.join("run"))),
                    format!("EGG_LOG_DIR={}", path_str(&scratch.join("logs"))),
                    "EGG_SCHEDULE_INTERVAL=0".into(),
                    "NODE_ENV=production".into(),
                    path_str(&which("node").context("node is not on PATH")?),
                    path_str(&app.join(EGG_START)),
                    path_str(&app),
                ]
            }
        })
    }

    /// The Egg example app, with its npm packages installed.
    pub fn egg_app(&self) -> Result<PathBuf> {
        let app = self.root.join("examples/egg-app");
        if !app.join("node_modules/egg/package.json").is_file() || !app.join(EGG_START).is_file() {
            bail!(
                "the Egg example app's packages are not installed (cd {} && npm ci)",
                app.display()
            );
        }
        Ok(app)
    }

    /// A fresh scratch directory for one contender.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let d = self.tmp.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `name` on PATH, like which(1).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for `child` to exit within `grace` after SIGTERM, then SIGKILLs it.
fn terminate(child: &mut Child, grace: Duration) {
    cleanup::unregister(child.id() as i32);
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_serving(addr: SocketAddr, alive: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        alive()?;
        if crate::load::probe(addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing serves on {addr} after {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- handoff ----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HandoffConfig {
    pub workers: usize,
    pub rolling: bool,
    pub listen: Vec<SocketAddr>,
    pub command: Vec<String>,
    /// Runtime dir, control socket and log live here.
    pub dir: PathBuf,
    /// Extra environment for handoff (and so its workers).
    pub env: Vec<(String, String)>,
    /// Extra `handoff run` options (worker health limits, say).
    pub args: Vec<String>,
}

pub struct Handoff {
    pub cfg: HandoffConfig,
    handoff: PathBuf,
    child: Option<Child>,
}

impl Handoff {
    pub fn new(paths: &Paths, cfg: HandoffConfig) -> Handoff {
        Handoff {
            cfg,
            handoff: paths.handoff(),
            child: None,
        }
    }

    pub fn control(&self) -> PathBuf {
        self.cfg.dir.join("control.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.cfg.dir.join("handoff.log")
    }

    /// One request on the control socket, through the protocol handoff's own CLI uses.
    fn request(&self, req: &Request) -> Result<Response> {
        let path = self.control();
        protocol::request(&path, req, Some(ROLLOVER_TIMEOUT))
            .with_context(|| format!("{req:?} on {}", path.display()))
    }

    pub fn status(&self) -> Result<StatusReport> {
        match self.request(&Request::Status)? {
            Response::Status(st) => Ok(*st),
            other => bail!("unexpected answer to status: {other:?}"),
        }
    }

    /// Pids of every worker handoff has now: its children but the guard, from /proc. Not
    /// through `handoff status`, which samples every worker's process tree: asking it before
    /// each rollover put a status request's cost into the CPU per rollover.
    pub fn worker_pids(&self) -> Result<Vec<i32>> {
        let pid = self.supervisor_pid().context("handoff is not running")?;
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() != "handoff-guard")
                    }),
            );
        }
        Ok(out)
    }

    /// Sends a reload and waits for its answer; returns handoff's own `duration_ms`.
    pub fn reload(&self) -> Result<u64> {
        match self.request(&Request::Reload { if_changed: false })? {
            Response::Reload(r) if r.outcome == Outcome::Ok => Ok(r.duration_ms),
            Response::Reload(r) => bail!("reload {}: {}", r.outcome, r.message),
            other => bail!("unexpected answer to reload: {other:?}"),
        }
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child
            && let Some(st) = c.try_wait()?
        {
            bail!("handoff exited ({st}); its log:\n{}", tail(&self.log(), 20));
        }
        Ok(())
    }
}

/// handoff's stability window for the bench: `0s` unless `BENCH_MIN_UPTIME` says otherwise,
/// always passed explicitly. A rollover's figure is then the switch itself, comparable with
/// runs from before the window existed and with PM2's reload (which waits for no window); the
/// window adds its own length to each rollover (docs/reliability.md has the measurement).
pub fn min_uptime() -> String {
    std::env::var("BENCH_MIN_UPTIME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "0s".into())
}

impl Contender for Handoff {
    fn start(&mut self) -> Result<()> {
        let log = File::create(self.log())?;
        let mut cmd = Command::new(&self.handoff);
        cmd.arg("run");
        for a in &self.cfg.listen {
            cmd.arg("--listen").arg(a.to_string());
        }
        cmd.arg("--workers")
            .arg(self.cfg.workers.to_string())
            .arg("--runtime-dir")
            .arg(&self.cfg.dir)
            .arg("--control")
            .arg(self.control())
            .arg("--drain-timeout")
            .arg("10s")
            .arg("--ready-timeout")
            .arg("30s")
            .arg("--min-uptime")
            .arg(min_uptime());
        if self.cfg.rolling {
            cmd.arg("--rolling");
        }
        cmd.args(&self.cfg.args);
        cmd.arg("--")
            .args(&self.cfg.command)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("RUST_LOG")
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.handoff.display()))?;
        cleanup::register(child.id() as i32);
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.alive()?;
            if let Ok(st) = self.status()
                && st.ready == self.cfg.workers
                && st.rolling_over_to.is_none()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "handoff not ready after {START_TIMEOUT:?}; its log:\n{}",
                    tail(&self.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let addr = self.cfg.listen[0];
        wait_serving(addr, &mut || self.alive())
    }

    fn rollover(&mut self) -> Result<Timing> {
        let old = self.worker_pids()?;
        let watch = Watch::new(&old)?;
        let t0 = Instant::now();
        self.reload()
            .with_context(|| format!("handoff's log:\n{}", tail(&self.log(), 12)))?;
        let switched = Instant::now();
        let end = watch.wait_all(ROLLOVER_TIMEOUT).with_context(|| {
            format!(
                "old workers did not exit; handoff's log:\n{}",
                tail(&self.log(), 12)
            )
        })?;
        Ok(Timing {
            t0,
            switched: Some(switched),
            end: end.max(switched),
            start_own: None,
            start_each: Vec::new(),
            drain_own: None,
        })
    }

    fn supervisor_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(15));
        }
        Ok(())
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

// ---- plain restart ----------------------------------------------------------------------------

/// Binds a TCP listener the way handoff and systemd do (backlog SOMAXCONN, close-on-exec).
pub fn bind_listener(addr: SocketAddr) -> Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).with_context(|| format!("bind {addr}"))?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(fd)
}

pub struct PlainRestart {
    workers: usize,
    command: Vec<String>,
    program: PathBuf,
    addr: SocketAddr,
    dir: PathBuf,
    listener: Option<OwnedFd>,
    /// One notify socket per slot, so each worker's own start is known.
    notify: Vec<UnixDatagram>,
    pids: Vec<i32>,
    generation: u64,
    log: Option<File>,
    devnull: Option<File>,
}

impl PlainRestart {
    pub fn new(workers: usize, command: Vec<String>, addr: SocketAddr, dir: PathBuf) -> Self {
        PlainRestart {
            workers,
            program: PathBuf::from(&command[0]),
            command,
            addr,
            dir,
            listener: None,
            notify: Vec::new(),
            pids: Vec::new(),
            generation: 0,
            log: None,
            devnull: None,
        }
    }

    /// The listener, notify sockets and log, no worker yet.
    fn open(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        self.listener = Some(bind_listener(self.addr)?);
        for slot in 0..self.workers {
            let p = self.notify_path(slot);
            let _ = std::fs::remove_file(&p);
            self.notify.push(UnixDatagram::bind(&p)?);
        }
        self.log = Some(File::create(self.dir.join("workers.log"))?);
        self.devnull = Some(File::open("/dev/null")?);
        Ok(())
    }

    /// Starts a generation of workers; returns once all said READY=1, with each worker's
    /// own start (exec → its READY=1; the bench's fork is not the worker's time).
    fn start_generation(&mut self) -> Result<Vec<Duration>> {
        self.generation += 1;
        let mut buf = [0u8; 4096];
        // Datagrams left from an earlier generation would count as readiness.
        for n in &self.notify {
            n.set_nonblocking(true)?;
            while n.recv(&mut buf).is_ok() {}
        }
        let base: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                !k.starts_with("LISTEN_") && k != "NOTIFY_SOCKET" && !k.starts_with("HANDOFF_")
            })
            .collect();
        let listener = self.listener.as_ref().expect("listener").as_raw_fd();
        let mut spawned = Vec::new();
        for slot in 0..self.workers {
            let mut env = base.clone();
            env.push(("NOTIFY_SOCKET".into(), path_str(&self.notify_path(slot))));
            env.push(("HANDOFF_GENERATION".into(), self.generation.to_string()));
            env.push(("HANDOFF_WORKER".into(), slot.to_string()));
            let child = sys::spawn_with_fds(&sys::SpawnSpec {
                program: &self.program,
                args: &self.command,
                env: &env,
                listeners: &[listener],
                output: self.log.as_ref().expect("log").as_raw_fd(),
                devnull: self.devnull.as_ref().expect("devnull").as_raw_fd(),
            })
            .with_context(|| format!("starting {}", self.program.display()))?;
            spawned.push(child.exec_at);
            self.pids.push(child.pid);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ready: Vec<Option<Duration>> = vec![None; self.workers];
        while ready.iter().any(|r| r.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {} workers ready after {START_TIMEOUT:?}; log:\n{}",
                    ready.iter().flatten().count(),
                    self.workers,
                    tail(&self.dir.join("workers.log"), 20)
                );
            }
            let mut pfds: Vec<PollFd> = self
                .notify
                .iter()
                .map(|n| PollFd::new(n.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms =
                PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(PollTimeout::MAX);
            match poll(&mut pfds, ms) {
                Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
                Err(e) => return Err(e).context("poll on the notify sockets"),
                Ok(_) => {}
            }
            let now = Instant::now();
            for (slot, n) in self.notify.iter().enumerate() {
                while let Ok(len) = n.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..len]);
                    if ready[slot].is_none() && msg.lines().any(|l| l == "READY=1") {
                        ready[slot] = Some(now - spawned[slot]);
                    }
                }
            }
        }
        Ok(ready.into_iter().flatten().collect())
    }

    fn notify_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("notify-{slot}.sock"))
    }

    /// SIGTERM to every worker; returns when all have exited (and are reaped).
    fn stop_generation(&mut self) -> Result<Instant> {
        let pids = std::mem::take(&mut self.pids);
        let watch = Watch::new(&pids)?;
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let res = watch.wait_all(ROLLOVER_TIMEOUT);
        for &p in &pids {
            if res.is_err() {
                let _ = nix::sys::signal::killpg(Pid::from_raw(p), Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
            }
            procfs::reap(p);
        }
        res
    }
}

impl Contender for PlainRestart {
    fn start(&mut self) -> Result<()> {
        self.open()?;
        self.start_generation()?;
        wait_serving(self.addr, &mut || Ok(()))
    }

    fn calibrate(&mut self, reps: usize) -> Result<Option<Calibration>> {
        let port = free_ports(1)?[0];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cal = Calibration::default();
        for (workers, name) in [(1, "calibrate-1"), (self.workers, "calibrate-n")] {
            let mut p = PlainRestart::new(workers, self.command.clone(), addr, self.dir.join(name));
            p.open()?;
            for _ in 0..reps {
                let each = p.start_generation()?;
                let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
                if workers == 1 {
                    cal.single_ms.extend(each.iter().map(ms));
                } else {
                    cal.generation_ms
                        .extend(each.iter().map(ms).reduce(f64::max));
                }
                p.stop_generation()?;
            }
        }
        Ok(Some(cal))
    }

    fn rollover(&mut self) -> Result<Timing> {
        let t0 = Instant::now();
        let drained = self.stop_generation()?;
        let t_start = Instant::now();
        let each = self.start_generation()?;
        let end = Instant::now();
        Ok(Timing {
            t0,
            switched: Some(end),
            end,
            start_own: Some(end - t_start),
            start_each: each,
            drain_own: Some(drained - t0),
        })
    }

    fn supervisor_pid(&self) -> Option<i32> {
        None
    }

    fn stop(&mut self) -> Result<()> {
        if !self.pids.is_empty() {
            self.stop_generation()?;
        }
        self.listener = None;
        Ok(())
    }
}

impl Drop for PlainRestart {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

// ---- Server::Starter --------------------------------------------------------------------------

pub struct ServerStarter {
    start_server: PathBuf,
    adapter: PathBuf,
    command: Vec<String>,
    addr: SocketAddr,
    dir: PathBuf,
    /// start_server's `--interval`: seconds it waits after starting a worker before it
    /// believes the worker is up (it has no readiness protocol).
    pub interval_s: u32,
    child: Option<Child>,
}

impl ServerStarter {
    /// Checks that `start_server` is installed.
    pub fn available() -> Result<PathBuf, String> {
        which("start_server").ok_or_else(|| {
            "start_server not found (Debian: apt-get install -y libserver-starter-perl)".into()
        })
    }

    pub fn new(
        paths: &Paths,
        start_server: PathBuf,
        command: Vec<String>,
        addr: SocketAddr,
        dir: PathBuf,
    ) -> Self {
        ServerStarter {
            start_server,
            adapter: paths.peers.join("server-starter-adapter.sh"),
            command,
            addr,
            dir,
            interval_s: 1,
            child: None,
        }
    }

    fn pid(&self) -> Result<i32> {
        Ok(self.child.as_ref().context("not started")?.id() as i32)
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child
            && let Some(st) = c.try_wait()?
        {
            bail!(
                "start_server exited ({st}); its log:\n{}",
                tail(&self.dir.join("start_server.log"), 20)
            );
        }
        Ok(())
    }
}

impl Contender for ServerStarter {
    fn start(&mut self) -> Result<()> {
        let log = File::create(self.dir.join("start_server.log"))?;
        let mut cmd = Command::new(&self.start_server);
        cmd.arg(format!("--port={}", self.addr))
            .arg("--signal-on-hup=TERM")
            .arg("--signal-on-term=TERM")
            .arg(format!("--interval={}", self.interval_s))
            .arg("--")
            .arg("/bin/sh")
            .arg(&self.adapter)
            .args(&self.command)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("starting start_server")?;
        cleanup::register(child.id() as i32);
        self.child = Some(child);
        wait_serving(self.addr, &mut || self.alive())?;
        // start_server treats the first worker as up only after --interval.
        std::thread::sleep(Duration::from_secs(self.interval_s as u64));
        Ok(())
    }

    fn rollover(&mut self) -> Result<Timing> {
        let pid = self.pid()?;
        let old = procfs::children_of(pid);
        if old.is_empty() {
            bail!("start_server has no worker");
        }
        let watch = Watch::new(&old)?;
        let t0 = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGHUP)?;
        let end = watch.wait_all(ROLLOVER_TIMEOUT).with_context(|| {
            format!(
                "the old worker did not exit; start_server's log:\n{}",
                tail(&self.dir.join("start_server.log"), 12)
            )
        })?;
        self.alive()?;
        let now = procfs::children_of(pid);
        if now.is_empty() || now.iter().any(|p| old.contains(p)) {
            bail!("after SIGHUP start_server runs {now:?} (before: {old:?})");
        }
        Ok(Timing {
            t0,
            switched: None,
            end,
            start_own: None,
            start_each: Vec::new(),
            drain_own: None,
        })
    }

    fn supervisor_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let workers = procfs::children_of(c.id() as i32);
            terminate(&mut c, Duration::from_secs(15));
            // start_server TERMs its workers on TERM; should it have been killed instead,
            // its workers are orphans now.
            if let Ok(w) = Watch::new(&workers) {
                for &p in &workers {
                    let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
                }
                if w.wait_all(Duration::from_secs(10)).is_err() {
                    for &p in &workers {
                        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for ServerStarter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

// ---- PM2 --------------------------------------------------------------------------------------

pub struct Pm2 {
    module: PathBuf,
    driver_js: PathBuf,
    worker_js: PathBuf,
    /// The Egg app's environment, passed to the PM2 app by the driver (`BENCH_APP_ENV`).
    egg: Option<Vec<(String, String)>>,
    instances: usize,
    addr: SocketAddr,
    dir: PathBuf,
    driver: Option<(Child, ChildStdin, BufReader<ChildStdout>)>,
    daemon_pid: Option<i32>,
}

impl Pm2 {
    /// Checks that node and the pm2 package are there.
    pub fn available(paths: &Paths) -> Result<(), String> {
        which("node").ok_or("node not on PATH (Debian: apt-get install -y nodejs)")?;
        if !paths.pm2_module.join("package.json").is_file() {
            return Err(format!(
                "the pm2 npm package is not at {} (install: crates/handoff-bench/install-peers.sh, or give --pm2-module)",
                paths.pm2_module.display()
            ));
        }
        Ok(())
    }

    pub fn new(
        paths: &Paths,
        worker: WorkerKind,
        instances: usize,
        addr: SocketAddr,
        dir: PathBuf,
    ) -> Self {
        let worker_js = match worker {
            WorkerKind::Egg => "pm2-egg-worker.js",
            _ => "pm2-worker.js",
        };
        Pm2 {
            module: paths.pm2_module.clone(),
            driver_js: paths.peers.join("pm2-driver.js"),
            worker_js: paths.peers.join(worker_js),
            egg: (worker == WorkerKind::Egg).then(|| {
                let scratch = paths.tmp.join("egg-pm2");
                vec![
                    (
                        "EGG_BASE_DIR".into(),
                        path_str(&paths.root.join("examples/egg-app")),
                    ),
                    ("EGG_RUN_DIR".into(), path_str(&scratch.join("run"))),
                    ("EGG_LOG_DIR".into(), path_str(&scratch.join("logs"))),
                    ("EGG_SCHEDULE_INTERVAL".into(), "0".into()),
                    ("NODE_ENV".into(), "production".into()),
                ]
            }),
            instances,
            addr,
            dir,
            driver: None,
            daemon_pid: None,
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.join("pm2-home")
    }

    /// One command to the driver, one JSON line back.
    fn ask(&mut self, cmd: &str) -> Result<Value> {
        let log = self.dir.join("pm2-driver.log");
        let (_, stdin, stdout) = self.driver.as_mut().context("pm2 driver not running")?;
        stdin.write_all(format!("{cmd}\n").as_bytes())?;
        stdin.flush()?;
        read_json(stdout, &log)
    }

    fn pids(&mut self) -> Result<Vec<i32>> {
        let v = self.ask("pids")?;
        Ok(v["pids"]
            .as_array()
            .context("no pids")?
            .iter()
            .filter_map(|p| p.as_i64().map(|p| p as i32))
            .collect())
    }
}

fn read_json(stdout: &mut BufReader<ChildStdout>, log: &Path) -> Result<Value> {
    let mut line = String::new();
    if stdout.read_line(&mut line)? == 0 {
        bail!("the pm2 driver exited; its log:\n{}", tail(log, 20));
    }
    let v: Value =
        serde_json::from_str(&line).with_context(|| format!("pm2 driver said {line:?}"))?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("pm2: {e}; driver log:\n{}", tail(log, 20)));
    }
    Ok(v)
}

impl Contender for Pm2 {
    fn start(&mut self) -> Result<()> {
        let log = File::create(self.dir.join("pm2-driver.log"))?;
        let node = which("node").context("node not on PATH")?;
        let mut child = Command::new(node)
            .arg(&self.driver_js)
            .env("PM2_HOME", self.home())
            .env("BENCH_PM2_MODULE", &self.module)
            .env("BENCH_SCRIPT", &self.worker_js)
            .env("BENCH_PORT", self.addr.port().to_string())
            .env("BENCH_HOST", self.addr.ip().to_string())
            .env("BENCH_INSTANCES", self.instances.to_string())
            .env(
                "BENCH_APP_ENV",
                serde_json::to_string(
                    &self
                        .egg
                        .iter()
                        .flatten()
                        .cloned()
                        .collect::<std::collections::BTreeMap<String, String>>(),
                )?,
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the pm2 driver")?;
        cleanup::register(child.id() as i32);
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let first = read_json(&mut stdout, &self.dir.join("pm2-driver.log"));
        self.driver = Some((child, stdin, stdout));
        let first = first?;
        self.daemon_pid = first["daemon"].as_i64().map(|p| p as i32);
        if let Some(p) = self.daemon_pid {
            cleanup::register(p);
        }
        wait_serving(self.addr, &mut || Ok(()))
    }

    fn rollover(&mut self) -> Result<Timing> {
        let old = self.pids()?;
        if old.len() != self.instances {
            bail!("pm2 lists {old:?} online, expected {}", self.instances);
        }
        let watch = Watch::new(&old)?;
        let t0 = Instant::now();
        self.ask("reload")?;
        let switched = Instant::now();
        let end = watch
            .wait_all(ROLLOVER_TIMEOUT)
            .context("old workers did not exit")?;
        Ok(Timing {
            t0,
            switched: Some(switched),
            end: end.max(switched),
            start_own: None,
            start_each: Vec::new(),
            drain_own: None,
        })
    }

    fn supervisor_pid(&self) -> Option<i32> {
        self.daemon_pid
    }

    fn stop(&mut self) -> Result<()> {
        if self.driver.is_some() {
            let _ = self.ask("stop");
        }
        if let Some((mut child, stdin, _)) = self.driver.take() {
            drop(stdin);
            terminate(&mut child, Duration::from_secs(10));
        }
        // The daemon outlives a crashed driver: make sure it is gone.
        if let Some(pid) = self.daemon_pid.take()
            && let Ok(w) = Watch::new(&[pid])
        {
            cleanup::unregister(pid);
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if w.wait_all(Duration::from_secs(10)).is_err() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        Ok(())
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
