//! Test harness: a real `handoff run` in a temp dir, real clients on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use handoff_common::protocol::{self as control, Request, Response, StatusReport};

/// `target/debug` (or wherever this test binary was built).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    build_binaries_once();
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} missing after `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// The tests drive the workspace's binaries (handoff, the fixture and example workers), which
/// `cargo test` does not build for a test of another package: build them once per test run,
/// with the cargo that runs the tests. A no-op when they are up to date (tests/run.sh builds
/// them first).
fn build_binaries_once() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO")
            .or_else(|| option_env!("CARGO").map(Into::into))
            .unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the test binaries");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
}

/// `HANDOFF_BIN` runs the suite against another handoff binary (an older build, to show
/// that a test fails without its fix).
pub fn handoff_bin() -> PathBuf {
    match std::env::var_os("HANDOFF_BIN") {
        Some(p) => PathBuf::from(p),
        None => bin("handoff"),
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("hit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Handoff {
    pub child: Option<Child>,
    /// Directories that must live as long as this handoff (e.g. a worker's mode file).
    pub keep: Vec<TempDir>,
    pub dir: TempDir,
    pub control: PathBuf,
    pub log: PathBuf,
}

pub struct Opts<'a> {
    pub args: Vec<String>,
    pub worker: Vec<String>,
    pub env: Vec<(&'a str, String)>,
    /// Wait until this many workers are ready (0: don't wait).
    pub wait_ready: usize,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            args: vec![],
            worker: vec![],
            env: vec![],
            wait_ready: 1,
        }
    }
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

impl Handoff {
    pub fn start(tag: &str, o: Opts) -> Handoff {
        Handoff::start_wrapped(tag, o, &[])
    }

    /// As [`Handoff::start`], with handoff run under `wrap` (e.g. `prlimit --nofile=64:4096`).
    /// A `--runtime-dir` in `o.args` replaces the temp dir's `rt`.
    pub fn start_wrapped(tag: &str, o: Opts, wrap: &[String]) -> Handoff {
        Handoff::start_program(o, wrap, &handoff_bin(), TempDir::new(tag))
    }

    /// As [`Handoff::start`], running the handoff binary at `program` (a copy a test then
    /// replaces, for `handoff reexec`), with `dir` as its temp dir.
    pub fn start_program(o: Opts, wrap: &[String], program: &Path, dir: TempDir) -> Handoff {
        let runtime_dir = match o.args.iter().position(|a| a == "--runtime-dir") {
            Some(i) => PathBuf::from(&o.args[i + 1]),
            None => dir.path().join("rt"),
        };
        let control = match o.args.iter().position(|a| a == "--control") {
            Some(i) => PathBuf::from(&o.args[i + 1]),
            None => runtime_dir.join("control.sock"),
        };
        let log = dir.path().join("handoff.log");
        let mut cmd = match wrap.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.arg("run");
        if !o.args.iter().any(|a| a == "--runtime-dir") {
            cmd.arg("--runtime-dir").arg(&runtime_dir);
        }
        // No stability window unless a test is about it (or a config file sets it): the
        // default 5 s would add to every start and reload of the suite. An older binary under
        // HANDOFF_BIN may not know the flag.
        if !o
            .args
            .iter()
            .any(|a| a == "--min-uptime" || a == "--config")
            && std::env::var_os("HANDOFF_BIN").is_none()
        {
            cmd.args(["--min-uptime", "0s"]);
        }
        cmd.args(&o.args)
            .arg("--")
            .args(&o.worker)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("HANDOFF_CONTROL")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn handoff");
        let h = Handoff {
            child: Some(child),
            keep: Vec::new(),
            dir,
            control,
            log,
        };
        if o.wait_ready > 0 {
            h.wait_for(
                Duration::from_secs(20),
                |st| st.ready >= o.wait_ready,
                "first generation ready",
            );
        }
        h
    }

    /// The notify dir of this handoff (`rt/notify-XXXXXXXX`, named after its control socket).
    pub fn notify_dir(&self) -> PathBuf {
        let rt = self.control.parent().expect("control socket in a dir");
        handoff_common::paths::notify_dir(rt, &self.control)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn status(&self) -> Option<StatusReport> {
        match control::request(&self.control, &Request::Status, None) {
            Ok(Response::Status(r)) => Some(*r),
            _ => None,
        }
    }

    pub fn wait_for(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&StatusReport) -> bool,
        what: &str,
    ) -> StatusReport {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.status()
                && cond(&st)
            {
                return st;
            }
            if t0.elapsed() > limit {
                panic!(
                    "timed out waiting for {what}; status: {:#?}\nlog:\n{}",
                    self.status(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The listening address handoff bound (from `--listen 127.0.0.1:0`).
    pub fn addr(&self) -> String {
        let st = self.status().expect("status");
        st.listeners[0].split_once('=').unwrap().1.to_string()
    }

    /// Runs `handoff reload` (the real CLI): (exit code, stdout, stderr).
    pub fn reload_cli(&self, extra: &[&str]) -> (i32, String, String) {
        let out = self.cli(&["reload"], extra);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn cli(&self, sub: &[&str], extra: &[&str]) -> Output {
        Command::new(handoff_bin())
            .args(sub)
            .arg("--control")
            .arg(&self.control)
            .args(extra)
            .output()
            .expect("run handoff cli")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (bounded) for exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_child(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "handoff did not exit within 30 s of SIGTERM; log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Kill the workers too, so a failed test leaves nothing behind.
            if let Some(st) = self.status() {
                for w in st.workers {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(w.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A variable from a running process's environment.
pub fn process_env(pid: i32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    std::fs::read(format!("/proc/{pid}/environ"))
        .ok()?
        .split(|b| *b == 0)
        .find_map(|kv| {
            std::str::from_utf8(kv)
                .ok()?
                .strip_prefix(prefix.as_str())
                .map(str::to_string)
        })
}

/// A reload over the control socket that must succeed (`what` names it in the panic).
pub fn reload_ok(control: &Path, what: &str) {
    match control::request(control, &Request::Reload { if_changed: false }, None) {
        Ok(Response::Reload(r)) => assert!(r.outcome.success(), "{what}: {}", r.message),
        other => panic!("{what}: {other:?}"),
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie counts as gone for our purposes only once reaped; check /proc state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The fd count with transients (a control connection still closing) settled: the smallest
/// of a few samples.
pub fn steady_fd_count(pid: i32) -> usize {
    (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            fd_count(pid)
        })
        .min()
        .unwrap()
}

/// Children of `pid` that stay zombies: a child that just exited is a zombie until handoff
/// handles its SIGCHLD, so only those still unreaped 300 ms later count.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    let first = zombies_now(pid);
    if first.is_empty() {
        return first;
    }
    std::thread::sleep(Duration::from_millis(300));
    let second = zombies_now(pid);
    first.into_iter().filter(|p| second.contains(p)).collect()
}

fn zombies_now(pid: i32) -> Vec<i32> {
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if rest.len() > 2 && rest[0] == "Z" && rest[1] == pid.to_string() {
            z.push(p);
        }
    }
    z
}

// ---- a minimal HTTP/1.1 client ----------------------------------------------------------

/// One response: (status code, body, server said Connection: close).
pub fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, String, bool), String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Err("connection closed before a response".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read status line: {e}")),
    }
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)
            .map_err(|e| format!("read header: {e}"))?;
        if h.is_empty() {
            return Err("eof in headers".into());
        }
        if h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| "bad content-length")?;
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("short body: {e}"))?;
    Ok((code, String::from_utf8_lossy(&body).into(), close))
}

/// GET on a new connection.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut r = BufReader::new(s);
    read_response(&mut r).map(|(c, b, _)| (c, b))
}

/// A keep-alive client that reconnects only when the server says `Connection: close`.
pub struct KeepAlive {
    addr: String,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl KeepAlive {
    pub fn new(addr: &str) -> KeepAlive {
        KeepAlive {
            addr: addr.to_string(),
            conn: None,
        }
    }

    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            self.conn = Some((s, r));
        }
        let (w, r) = self.conn.as_mut().unwrap();
        let res = w
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .map_err(|e| format!("write on keep-alive connection: {e}"))
            .and_then(|_| read_response(r));
        match res {
            Ok((c, b, close)) => {
                if close {
                    self.conn = None;
                }
                Ok((c, b))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// `pid=123 gen=4 ...` → (123, 4).
pub fn parse_identity(body: &str) -> Option<(i32, u64)> {
    let mut pid = None;
    let mut generation = None;
    for part in body.split_whitespace() {
        if let Some(v) = part.strip_prefix("pid=") {
            pid = v.parse().ok();
        }
        if let Some(v) = part.strip_prefix("gen=") {
            generation = v.parse().ok();
        }
    }
    Some((pid?, generation?))
}

/// Pids handoff logged as ready.
pub fn ready_pids(log: &str) -> std::collections::HashSet<i32> {
    log.lines()
        .filter(|l| l.contains("worker ready"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("pid="))
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

// ---- load ------------------------------------------------------------------------------

#[derive(Default)]
pub struct LoadStats {
    pub ok: usize,
    pub failures: Vec<String>,
    /// pid -> generation seen in responses.
    pub seen: HashMap<i32, u64>,
}

/// Runs `clients` new-connection and `clients` keep-alive loops until `stop`.
pub fn load(
    addr: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<LoadStats>> {
    let mut handles = Vec::new();
    for i in 0..clients * 2 {
        let addr = addr.to_string();
        let stop = stop.clone();
        handles.push(thread::spawn(move || {
            let mut st = LoadStats::default();
            let mut ka = KeepAlive::new(&addr);
            // Bounded: at most 2 minutes of traffic even if the test forgets to stop us.
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                let res = if i % 2 == 0 {
                    get(&addr, "/")
                } else {
                    ka.get("/")
                };
                match res {
                    Ok((200, body)) => {
                        st.ok += 1;
                        if let Some((pid, generation)) = parse_identity(&body) {
                            st.seen.insert(pid, generation);
                        }
                    }
                    Ok((code, body)) => st.failures.push(format!("HTTP {code}: {body}")),
                    Err(e) => st.failures.push(e),
                }
            }
            st
        }));
    }
    handles
}

/// Stops the load and sums what the clients saw.
pub fn finish_load(stop: &AtomicBool, clients: Vec<thread::JoinHandle<LoadStats>>) -> LoadStats {
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadStats::default();
    for c in clients {
        let st = c.join().unwrap();
        total.ok += st.ok;
        total.failures.extend(st.failures);
        total.seen.extend(st.seen);
    }
    total
}

/// handoff run --config `cfg`, once `workers` workers are ready.
pub fn start_config(tag: &str, cfg: &Path, workers: usize) -> Handoff {
    Handoff::start(
        tag,
        Opts {
            args: vec!["--config".into(), cfg.display().to_string()],
            worker: vec![],
            wait_ready: workers,
            ..Default::default()
        },
    )
}

/// The fixture worker (reports what it was handed; answers no requests).
pub fn fixture() -> Vec<String> {
    vec![bin("handoff-fixture").display().to_string()]
}

/// The Rust example worker (an HTTP server).
pub fn example_worker() -> Vec<String> {
    vec![bin("handoff-example-worker").display().to_string()]
}

/// A python3 every user can run (the system one; a pyenv shim under /root is not).
pub fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// handoff's children that are not its workers: re-parented descendants.
pub fn strays(h: &Handoff) -> Vec<i32> {
    let workers: Vec<i32> = h
        .status()
        .map(|st| st.workers.iter().map(|w| w.pid).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{}/task", h.pid()))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter(|p| !workers.contains(p))
                .filter(|p| {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                    comm.trim() != "handoff-guard"
                }),
        );
    }
    out
}
