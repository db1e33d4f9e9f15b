//! Settings: the TOML file, the command line, and the validated [`Settings`] the rest trusts.
//!
//! Both sources fill the same [`Options`] (every field optional); the command line is laid over
//! the file, then [`Options::settle`] applies defaults and validates once. Text parsing takes a
//! `&str` so tests need no files; [`load_file`] is the only function that touches the disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use toml::Spanned;

use crate::duration;

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long new workers must stay up past `READY=1` before the old generation is drained
/// (docs/operating.md, "Stability window", says why 5 s).
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(5);
pub const MAX_WORKERS: usize = 4096;

/// Where a listening socket comes from when handoff binds it itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `[NAME=]ADDR` from `--listen` or the `listen` list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenSpec {
    pub name: Option<String>,
    pub addr: ListenAddr,
}

/// How a worker tells it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadyMode {
    /// `READY=1` on the worker's `NOTIFY_SOCKET`.
    Notify,
    /// Ready once it has lived this long (for workers that cannot send datagrams).
    Delay(Duration),
}

/// Validated settings for `handoff run`. Serde: `handoff reexec` carries them over the exec
/// (the file on disk may have changed since start; those bound at start must not).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub listen: Vec<ListenSpec>,
    pub workers: usize,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// New workers must stay up this long past `READY=1` before the rollover counts.
    pub min_uptime: Duration,
    /// With `rolling`: the first new worker serves beside the old ones this long (at least
    /// `min_uptime`) before the other slots follow.
    #[serde(default)]
    pub soak: Duration,
    #[serde(with = "crate::supervisor::machine::snapshot::signal")]
    pub drain_signal: Signal,
    /// Per-worker watchdog: a ready worker must send `WATCHDOG=1` this often.
    pub watchdog: Option<Duration>,
    /// Replace a worker whose process tree's RSS passes this many bytes.
    pub max_memory: Option<u64>,
    /// Replace a worker this long after its start.
    pub max_age: Option<Duration>,
    pub rolling: bool,
    pub control: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub on_drain_timeout: Option<String>,
    pub version_file: Option<PathBuf>,
    pub command: Vec<String>,
    /// Run workers as this user (name or uid); handoff itself stays root.
    pub user: Option<String>,
    /// Run workers with this primary group (name or gid) [default: the user's].
    pub group: Option<String>,
    /// Members of this group may read `handoff status` through the read-only status.sock.
    pub status_group: Option<String>,
    /// Variables set for the workers on top of handoff's own environment (`[environment]`).
    pub environment: Vec<(String, String)>,
    /// The workers' cwd, resolved (realpath) once per generation: a `current` symlink is
    /// pinned to the release it pointed at when the generation started.
    pub working_directory: Option<PathBuf>,
}

/// Every setting, each optional: what one source (file or command line) said. Serde:
/// `handoff reexec` carries the command line's over the exec.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Options {
    pub listen: Option<Vec<ListenSpec>>,
    pub workers: Option<usize>,
    pub ready: Option<ReadyMode>,
    pub ready_timeout: Option<Duration>,
    pub drain_timeout: Option<Duration>,
    pub min_uptime: Option<Duration>,
    pub soak: Option<Duration>,
    #[serde(with = "crate::supervisor::machine::snapshot::opt_signal")]
    pub drain_signal: Option<Signal>,
    /// Zero: off (as `WatchdogSec=0`), so the command line can turn off the file's.
    pub watchdog: Option<Duration>,
    /// Zero: off.
    pub max_memory: Option<u64>,
    /// Zero: off.
    pub max_age: Option<Duration>,
    pub rolling: Option<bool>,
    pub control: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub on_drain_timeout: Option<String>,
    pub version_file: Option<PathBuf>,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub status_group: Option<String>,
    /// The file only: `[environment]`, sorted by name.
    pub environment: Option<Vec<(String, String)>>,
    pub working_directory: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// A required setting came from neither source.
    #[error("{0}")]
    Missing(String),
}

impl Options {
    /// `self` (the file) overlaid by `over` (the command line): a value in `over` wins.
    pub fn overlay(self, over: Options) -> Options {
        Options {
            listen: over.listen.or(self.listen),
            workers: over.workers.or(self.workers),
            ready: over.ready.or(self.ready),
            ready_timeout: over.ready_timeout.or(self.ready_timeout),
            drain_timeout: over.drain_timeout.or(self.drain_timeout),
            min_uptime: over.min_uptime.or(self.min_uptime),
            soak: over.soak.or(self.soak),
            drain_signal: over.drain_signal.or(self.drain_signal),
            watchdog: over.watchdog.or(self.watchdog),
            max_memory: over.max_memory.or(self.max_memory),
            max_age: over.max_age.or(self.max_age),
            rolling: over.rolling.or(self.rolling),
            control: over.control.or(self.control),
            runtime_dir: over.runtime_dir.or(self.runtime_dir),
            on_drain_timeout: over.on_drain_timeout.or(self.on_drain_timeout),
            version_file: over.version_file.or(self.version_file),
            command: over.command.or(self.command),
            user: over.user.or(self.user),
            group: over.group.or(self.group),
            status_group: over.status_group.or(self.status_group),
            environment: over.environment.or(self.environment),
            working_directory: over.working_directory.or(self.working_directory),
        }
    }

    /// Applies defaults and checks what no single value can check alone.
    pub fn settle(self) -> Result<Settings, ConfigError> {
        let command = self.command.unwrap_or_default();
        if command.is_empty() {
            return Err(ConfigError::Missing(
                "no worker command: give it after `--` (handoff run ... -- node server.js) \
                 or as `command = [\"node\", \"server.js\"]` in the config file"
                    .into(),
            ));
        }
        Ok(Settings {
            listen: self.listen.unwrap_or_default(),
            workers: self.workers.unwrap_or(1),
            ready: self.ready.unwrap_or(ReadyMode::Notify),
            ready_timeout: self.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT),
            drain_timeout: self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            min_uptime: self.min_uptime.unwrap_or(DEFAULT_MIN_UPTIME),
            soak: self.soak.unwrap_or(Duration::ZERO),
            drain_signal: self.drain_signal.unwrap_or(Signal::SIGTERM),
            watchdog: self.watchdog.filter(|d| !d.is_zero()),
            max_memory: self.max_memory.filter(|b| *b > 0),
            max_age: self.max_age.filter(|d| !d.is_zero()),
            rolling: self.rolling.unwrap_or(false),
            control: self.control,
            runtime_dir: self.runtime_dir,
            on_drain_timeout: self.on_drain_timeout.filter(|s| !s.trim().is_empty()),
            version_file: self.version_file,
            command,
            user: self.user,
            group: self.group,
            status_group: self.status_group.filter(|g| !g.is_empty()),
            environment: self.environment.unwrap_or_default(),
            working_directory: self.working_directory,
        })
    }
}

// ---- value parsers shared by the file and the command line -------------------------------

pub fn parse_workers(text: &str) -> Result<usize, String> {
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid worker count {text:?}: expected a whole number"))?;
    check_workers(n)
}

fn check_workers(n: i64) -> Result<usize, String> {
    if n < 1 || n as usize > MAX_WORKERS {
        return Err(format!("worker count {n} out of range 1..={MAX_WORKERS}"));
    }
    Ok(n as usize)
}

/// `--ready-timeout`: a duration, not zero (every release would be rolled back before it
/// could say `READY=1`).
pub fn parse_ready_timeout(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.is_zero() {
        return Err(format!(
            "a ready timeout of {:?} would roll back every release before it could start; give the time a worker may take to become ready, e.g. 30s",
            text.trim()
        ));
    }
    Ok(d)
}

pub fn parse_ready(text: &str) -> Result<ReadyMode, String> {
    match text.trim() {
        "notify" => Ok(ReadyMode::Notify),
        t => match t.strip_prefix("delay:") {
            Some(d) => Ok(ReadyMode::Delay(duration::parse(d)?)),
            None => Err(format!(
                "invalid readiness mode {text:?}: expected `notify` or `delay:DURATION` (e.g. delay:2s)"
            )),
        },
    }
}

/// `working_directory`: absolute, so what it names does not depend on handoff's own cwd (`/`
/// under systemd, the shell's elsewhere). It need not exist yet: it is resolved when each
/// generation starts, and a missing one fails that generation with its name.
pub fn parse_working_directory(text: &str) -> Result<PathBuf, String> {
    let p = Path::new(text);
    if !p.is_absolute() {
        return Err(format!(
            "working directory {text:?} is not an absolute path: give it from /, e.g. /opt/app/current"
        ));
    }
    Ok(p.to_path_buf())
}

/// `SIGTERM`, `TERM`, `sigterm` or `15`.
/// Shortest per-worker watchdog interval: a worker pings at half of it, and handoff's own
/// loop must not be woken more often than a few times a second for it.
pub const MIN_WATCHDOG: Duration = Duration::from_millis(200);

/// `watchdog`: a duration of at least [`MIN_WATCHDOG`], or `0s` for none.
pub fn parse_watchdog(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if !d.is_zero() && d < MIN_WATCHDOG {
        return Err(format!(
            "watchdog {text:?} is shorter than {}ms: workers could not ping in time; use e.g. \
             10s (or 0s for no watchdog)",
            MIN_WATCHDOG.as_millis()
        ));
    }
    Ok(d)
}

/// `max_age`: a duration of at least a second, or `0s` for none. (Workers are replaced one
/// at a time, each only once its successor is ready, so even a short age never costs
/// capacity; it costs boots.)
pub fn parse_max_age(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err(format!(
            "max_age {text:?} is under a second: use e.g. 24h (or 0s for no limit)"
        ));
    }
    Ok(d)
}

/// `max_memory`: bytes with an optional binary unit (`512M`, `1.5G` is not taken: whole
/// numbers only, as systemd's `MemoryMax=`), at least 1M; `0` for none.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = "write e.g. 512M or 2G (K, M, G, T: powers of 1024), or 0 for no limit";
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid memory size {text:?}: {hint}"))?;
    let shift = match unit.trim() {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "m" | "MiB" => 20,
        "G" | "g" | "GiB" => 30,
        "T" | "t" | "TiB" => 40,
        other => return Err(format!("invalid memory unit {other:?} in {text:?}: {hint}")),
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("memory size {text:?} is too large"))?;
    if bytes != 0 && bytes < 1 << 20 {
        return Err(format!(
            "max_memory {text:?} is under 1M: no worker would stay under it; {hint}"
        ));
    }
    Ok(bytes)
}

pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("invalid signal number {n}"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {text:?} (e.g. SIGTERM, SIGINT, SIGQUIT, SIGUSR2)"))
}

/// `[NAME=]ADDR`: `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `/run/app.sock`,
/// `http=127.0.0.1:8080`.
pub fn parse_listen(text: &str) -> Result<ListenSpec, String> {
    let (name, addr) = match text.split_once('=') {
        Some((n, a)) if !n.contains('/') => (Some(n.to_string()), a),
        _ => (None, text),
    };
    if let Some(n) = &name {
        check_fd_name(n)?;
    }
    let addr = if addr.starts_with('/') || addr.starts_with("./") {
        ListenAddr::Unix(PathBuf::from(addr))
    } else if let Some(port) = addr.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                format!("invalid listen address {addr:?}: port {port} is out of range (0-65535)")
            } else {
                format!("invalid port in listen address {addr:?}")
            }
        })?;
        ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    } else {
        ListenAddr::Tcp(addr.parse().map_err(|_| {
            if let Some((_, port)) = addr.rsplit_once(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
            {
                return format!(
                    "invalid listen address {addr:?}: port {port} is out of range (0-65535)"
                );
            }
            format!(
                "invalid listen address {addr:?}: expected HOST:PORT (127.0.0.1:8080, [::1]:8080) \
                 or a unix socket path starting with / or ./"
            )
        })?)
    };
    Ok(ListenSpec { name, addr })
}

/// Names travel in `LISTEN_FDNAMES`, colon-separated; systemd allows up to 255 printable chars.
pub fn check_fd_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(':')
        || !name.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(format!(
            "invalid socket name {name:?}: 1-255 printable characters, no ':' or spaces"
        ));
    }
    Ok(())
}

/// A variable of `[environment]`: a name the worker contract does not own, no NUL anywhere.
fn check_env(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!(
            "invalid variable name {name:?}: not empty, no '=' or NUL"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte"));
    }
    if crate::contract::set_by_handoff(name) {
        return Err(format!(
            "{name} is set by handoff for each worker (the worker contract); it cannot be \
             given in [environment]"
        ));
    }
    Ok(())
}

// ---- the TOML file -------------------------------------------------------------------------

/// The file's shape. Values that need checking keep their span so errors can name the line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<Vec<Spanned<String>>>,
    workers: Option<Spanned<Count>>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    min_uptime: Option<Spanned<String>>,
    soak: Option<Spanned<String>>,
    drain_signal: Option<Spanned<String>>,
    watchdog: Option<Spanned<String>>,
    max_memory: Option<Spanned<String>>,
    max_age: Option<Spanned<String>>,
    rolling: Option<bool>,
    control: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    on_drain_timeout: Option<String>,
    version_file: Option<PathBuf>,
    command: Option<Spanned<Vec<String>>>,
    user: Option<String>,
    group: Option<String>,
    status_group: Option<String>,
    environment: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    working_directory: Option<Spanned<String>>,
}

/// A number the file may (wrongly, but understandably) give as a string: `workers = "2"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Count {
    Number(i64),
    Text(String),
    Other(toml::Value),
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<Options, ConfigError> {
    let name = path.display().to_string();
    let text = read_capped(path).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    parse_str(&text, &name)
}

/// The file as text. Read like the version file (`release::read_bounded`: a regular file of
/// at most 1 MiB, opened non-blocking): it is re-read on the supervisor's loop at each reload,
/// and a FIFO put in its place must not stop it.
fn read_capped(path: &Path) -> std::io::Result<String> {
    let bytes = handoff_common::release::read_bounded(path)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The config file read again for a reload: the file overlaid by the command line given at
/// start (`cli`), validated completely. Settings bound at start keep `running`'s values; the
/// second value has one line for each of them the file changed, naming `restart` as the
/// command that applies it.
pub fn reread(
    path: &Path,
    cli: &Options,
    running: &Settings,
    restart: &str,
) -> Result<(Settings, Vec<String>), ConfigError> {
    let file = path.display();
    let mut s = load_file(path)?
        .overlay(cli.clone())
        .settle()
        .map_err(|e| match e {
            // Name the file: a reload's caller may not know which one handoff reads.
            ConfigError::Missing(m) => ConfigError::Missing(format!("{file}: {m}")),
            e => e,
        })?;
    let mut notes = Vec::new();
    let mut bound = |key: &str, new: String, old: String| {
        if new != old {
            notes.push(format!(
                "{key}: {file} says {new}, handoff runs with {old}; it is bound at start and \
                 the reload left it as it was: `{restart}` applies it"
            ));
        }
    };
    let listen = |l: &[ListenSpec]| {
        let v: Vec<String> = l.iter().map(show_listen).collect();
        format!("[{}]", v.join(", "))
    };
    let path_of = |p: &Option<PathBuf>| match p {
        Some(p) => p.display().to_string(),
        None => "(default)".into(),
    };
    let text_of = |t: &Option<String>| match t {
        Some(t) => format!("{t:?}"),
        None => "(none)".into(),
    };
    bound("listen", listen(&s.listen), listen(&running.listen));
    bound("control", path_of(&s.control), path_of(&running.control));
    bound(
        "runtime_dir",
        path_of(&s.runtime_dir),
        path_of(&running.runtime_dir),
    );
    bound(
        "status_group",
        text_of(&s.status_group),
        text_of(&running.status_group),
    );
    bound(
        "version_file",
        path_of(&s.version_file),
        path_of(&running.version_file),
    );
    bound(
        "on_drain_timeout",
        text_of(&s.on_drain_timeout),
        text_of(&running.on_drain_timeout),
    );
    s.listen = running.listen.clone();
    s.control = running.control.clone();
    s.runtime_dir = running.runtime_dir.clone();
    s.status_group = running.status_group.clone();
    s.version_file = running.version_file.clone();
    s.on_drain_timeout = running.on_drain_timeout.clone();
    Ok((s, notes))
}

fn show_listen(l: &ListenSpec) -> String {
    let addr = match &l.addr {
        ListenAddr::Tcp(a) => a.to_string(),
        ListenAddr::Unix(p) => p.display().to_string(),
    };
    match &l.name {
        Some(n) => format!("{n}={addr}"),
        None => addr,
    }
}

/// Parses config text; `file` names it in errors.
pub fn parse_str(text: &str, file: &str) -> Result<Options, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start).unwrap_or(0);
        let line = line_of(text, start);
        let message = e.message().trim().to_string();
        match key_on_line(text, start) {
            Some(key) => ConfigError::Invalid {
                file: file.into(),
                line,
                key,
                message,
            },
            None => ConfigError::Syntax {
                file: file.into(),
                line,
                message,
            },
        }
    })?;
    let invalid = |key: &str, span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
        file: file.into(),
        line: line_of(text, span.start),
        key: key.into(),
        message,
    };
    fn check<T>(
        invalid: &impl Fn(&str, std::ops::Range<usize>, String) -> ConfigError,
        key: &str,
        v: &Spanned<String>,
        f: fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        f(v.get_ref()).map_err(|m| invalid(key, v.span(), m))
    }
    let mut o = Options::default();
    if let Some(list) = &raw.listen {
        let mut specs = Vec::new();
        for item in list {
            specs
                .push(parse_listen(item.get_ref()).map_err(|m| invalid("listen", item.span(), m))?);
        }
        o.listen = Some(specs);
    }
    if let Some(w) = &raw.workers {
        let n = match w.get_ref() {
            Count::Number(n) => Ok(*n),
            Count::Text(t) => Err(match t.trim().parse::<i64>() {
                Ok(n) => {
                    format!("{t:?} is a string: write the number without quotes (workers = {n})")
                }
                Err(_) => format!("expected a whole number (workers = 2), not the string {t:?}"),
            }),
            Count::Other(v) => Err(format!(
                "expected a whole number (workers = 2), not a {}",
                v.type_str()
            )),
        };
        o.workers = Some(
            n.and_then(check_workers)
                .map_err(|m| invalid("workers", w.span(), m))?,
        );
    }
    if let Some(v) = &raw.ready {
        o.ready = Some(check(&invalid, "ready", v, parse_ready)?);
    }
    if let Some(v) = &raw.ready_timeout {
        o.ready_timeout = Some(check(&invalid, "ready_timeout", v, parse_ready_timeout)?);
    }
    if let Some(v) = &raw.drain_timeout {
        o.drain_timeout = Some(check(&invalid, "drain_timeout", v, duration::parse)?);
    }
    if let Some(v) = &raw.min_uptime {
        o.min_uptime = Some(check(&invalid, "min_uptime", v, duration::parse)?);
    }
    if let Some(v) = &raw.soak {
        o.soak = Some(check(&invalid, "soak", v, duration::parse)?);
    }
    if let Some(v) = &raw.drain_signal {
        o.drain_signal = Some(check(&invalid, "drain_signal", v, parse_signal)?);
    }
    if let Some(v) = &raw.watchdog {
        o.watchdog = Some(check(&invalid, "watchdog", v, parse_watchdog)?);
    }
    if let Some(v) = &raw.max_memory {
        o.max_memory = Some(check(&invalid, "max_memory", v, parse_memory)?);
    }
    if let Some(v) = &raw.max_age {
        o.max_age = Some(check(&invalid, "max_age", v, parse_max_age)?);
    }
    if let Some(c) = &raw.command {
        if c.get_ref().is_empty() || c.get_ref()[0].is_empty() {
            return Err(invalid(
                "command",
                c.span(),
                "empty command: give the program and its arguments, e.g. [\"node\", \"server.js\"]"
                    .into(),
            ));
        }
        o.command = Some(c.get_ref().clone());
    }
    if let Some(v) = &raw.working_directory {
        o.working_directory = Some(check(
            &invalid,
            "working_directory",
            v,
            parse_working_directory,
        )?);
    }
    o.rolling = raw.rolling;
    o.control = raw.control;
    o.runtime_dir = raw.runtime_dir;
    o.on_drain_timeout = raw.on_drain_timeout;
    o.version_file = raw.version_file;
    o.user = raw.user;
    o.group = raw.group;
    o.status_group = raw.status_group;
    if let Some(env) = &raw.environment {
        for (k, v) in env.get_ref() {
            check_env(k, v).map_err(|m| invalid("environment", env.span(), m))?;
        }
        o.environment = Some(env.get_ref().clone().into_iter().collect());
    }
    Ok(o)
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The `key` of a `key = value` line holding `offset`, if that line is one.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let (key, _) = text[start..end].split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_str(text, "app.toml").unwrap_err().to_string()
    }

    #[test]
    fn environment_is_a_table_of_strings_the_contract_does_not_own() {
        let o = parse_str(
            "command = [\"app\"]\n[environment]\nNODE_ENV = \"production\"\nA = \"1\"\n",
            "app.toml",
        )
        .unwrap();
        let s = o.settle().unwrap();
        assert_eq!(
            s.environment,
            [
                ("A".to_string(), "1".to_string()),
                ("NODE_ENV".to_string(), "production".to_string())
            ]
        );
        let e = err("[environment]\nLISTEN_FDS = \"3\"\n");
        assert!(e.starts_with("app.toml:1: key `environment`"), "{e}");
        assert!(e.contains("set by handoff"), "{e}");
        let e = err("[environment]\nN = 3\n");
        assert!(e.starts_with("app.toml:"), "{e}");
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-cfg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_reread_keeps_settings_bound_at_start_and_names_each_one_changed() {
        let d = temp("reread");
        let f = d.join("app.toml");
        let running = parse_str(
            "listen = [\"127.0.0.1:8080\"]\ncommand = [\"old\"]\nworkers = 2\n",
            "x",
        )
        .unwrap()
        .settle()
        .unwrap();
        std::fs::write(
            &f,
            "listen = [\"127.0.0.1:9090\"]\nruntime_dir = \"/run/other\"\ncommand = [\"new\"]\nworkers = 5\n",
        )
        .unwrap();
        // The command line given at start still overrides the file.
        let cli = Options {
            workers: Some(3),
            ..Options::default()
        };
        let (s, notes) = reread(&f, &cli, &running, "systemctl restart handoff@shop").unwrap();
        assert_eq!(s.workers, 3);
        assert_eq!(s.command, ["new"]);
        assert_eq!(s.listen, running.listen);
        assert_eq!(s.runtime_dir, None);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("listen: "), "{notes:?}");
        assert!(notes[0].contains("127.0.0.1:9090"), "{notes:?}");
        assert!(notes[1].starts_with("runtime_dir: "), "{notes:?}");
        assert!(
            notes
                .iter()
                .all(|n| n.contains("`systemctl restart handoff@shop`") && !n.contains('\n'))
        );
        // A file that names no command is refused with its name.
        std::fs::write(&f, "workers = 2\n").unwrap();
        let e = reread(&f, &Options::default(), &running, "r").unwrap_err();
        assert!(e.to_string().starts_with(&f.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_a_regular_file_of_bounded_size_is_read() {
        let d = temp("hostile");
        let fifo = d.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Returns at once (no writer would ever come).
        let e = load_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = d.join("big.toml");
        std::fs::write(
            &big,
            vec![b'#'; handoff_common::release::MAX_SIZE as usize + 1],
        )
        .unwrap();
        let e = load_file(&big).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = load_file(&d.join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("cannot read config file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn full_file_parses() {
        let o = parse_str(
            r#"
listen = ["http=127.0.0.1:8080", "[::1]:8081", "/run/app.sock"]
workers = 4
ready = "delay:2s"
ready_timeout = "30s"
drain_timeout = "1m"
min_uptime = "2s"
drain_signal = "SIGQUIT"
rolling = true
control = "/run/app/control.sock"
on_drain_timeout = "mail -s drain admin"
version_file = "/opt/app/package.json"
command = ["node", "server.js"]
user = "app"
group = "app"
"#,
            "app.toml",
        )
        .unwrap();
        let s = o.settle().unwrap();
        assert_eq!(s.listen.len(), 3);
        assert_eq!(s.listen[0].name.as_deref(), Some("http"));
        assert_eq!(s.listen[2].addr, ListenAddr::Unix("/run/app.sock".into()));
        assert_eq!(s.workers, 4);
        assert_eq!(s.ready, ReadyMode::Delay(Duration::from_secs(2)));
        assert_eq!(s.drain_timeout, Duration::from_secs(60));
        assert_eq!(s.min_uptime, Duration::from_secs(2));
        assert_eq!(s.drain_signal, Signal::SIGQUIT);
        assert!(s.rolling);
        assert_eq!(s.command, vec!["node", "server.js"]);
        assert_eq!(s.user.as_deref(), Some("app"));
    }

    #[test]
    fn defaults_and_cli_overlay() {
        let file = parse_str("workers = 3\ncommand = [\"a\"]\n", "f").unwrap();
        let cli = Options {
            workers: Some(5),
            ..Default::default()
        };
        let s = file.overlay(cli).settle().unwrap();
        assert_eq!(s.workers, 5);
        assert_eq!(s.command, vec!["a"]);
        assert_eq!(s.ready, ReadyMode::Notify);
        assert_eq!(s.ready_timeout, DEFAULT_READY_TIMEOUT);
        assert_eq!(s.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(s.min_uptime, DEFAULT_MIN_UPTIME);
        // 0s is allowed: no stability window (handoff before the window existed).
        let zero = parse_str("min_uptime = \"0s\"\n", "f").unwrap();
        assert_eq!(zero.min_uptime, Some(Duration::ZERO));
        assert_eq!(s.drain_signal, Signal::SIGTERM);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            err("workers = 2\ndrain_timeout = \"5 parsecs\"\n"),
            "app.toml:2: key `drain_timeout`: invalid duration \"5 parsecs\": unknown unit \" parsecs\" (use ms, s, m or h)"
        );
        let e = err("workers = 2\n\nfrobnicate = true\n");
        assert!(
            e.starts_with("app.toml:3: key `frobnicate`: unknown field `frobnicate`"),
            "{e}"
        );
        let e = err("workers = \"two\"\n");
        assert!(
            e.starts_with("app.toml:1: key `workers`: expected a whole number"),
            "{e}"
        );
        let e = err("workers = \"2\"\n");
        assert!(
            e.contains("without quotes (workers = 2)") && !e.contains("i64"),
            "{e}"
        );
        assert!(err("workers = 0").starts_with("app.toml:1: key `workers`: worker count 0"));
        assert!(err("\n\nready = \"soon\"").starts_with("app.toml:3: key `ready`:"));
        assert!(err("drain_signal = \"SIGNOPE\"").contains("key `drain_signal`: unknown signal"));
        assert!(err("listen = [\"nowhere\"]").contains("key `listen`: invalid listen address"));
        assert!(err("command = []").contains("key `command`: empty command"));
        let e = err("workers = 2\n[oops\n");
        assert!(e.starts_with("app.toml:2:"), "{e}");
    }

    #[test]
    fn working_directory_is_absolute() {
        let s = parse_str(
            "command = [\"a\"]\nworking_directory = \"/opt/app/current\"\n",
            "f",
        )
        .unwrap()
        .settle()
        .unwrap();
        assert_eq!(
            s.working_directory.as_deref(),
            Some(Path::new("/opt/app/current"))
        );
        let e = err("\nworking_directory = \"opt/app\"\n");
        assert!(
            e.starts_with("app.toml:2: key `working_directory`: working directory \"opt/app\" is not an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn missing_command_is_reported() {
        let e = parse_str("workers = 1", "f").unwrap().settle().unwrap_err();
        assert!(e.to_string().contains("no worker command"));
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_memory("0").unwrap(), 0);
        assert!(parse_memory("512").unwrap_err().contains("under 1M"));
        assert!(parse_memory("1.5G").unwrap_err().contains("512M"));
        assert!(parse_memory("5X").unwrap_err().contains("unit"));
        assert!(
            parse_memory("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_watchdog("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_watchdog("0s").unwrap(), Duration::ZERO);
        assert!(
            parse_watchdog("50ms")
                .unwrap_err()
                .contains("shorter than 200ms")
        );
        assert_eq!(parse_max_age("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_max_age("500ms").is_err());
        let f = parse_str(
            "watchdog = \"10s\"\nmax_memory = \"512M\"\nmax_age = \"0s\"\ncommand = [\"x\"]\n",
            "f",
        )
        .unwrap()
        .settle()
        .unwrap();
        assert_eq!(f.watchdog, Some(Duration::from_secs(10)));
        assert_eq!(f.max_memory, Some(512 << 20));
        assert_eq!(f.max_age, None, "0s: no limit");
        let e = parse_str("max_memory = \"lots\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f:1: key `max_memory`"), "{e}");
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGUSR2").unwrap(), Signal::SIGUSR2);
        assert!(parse_signal("99").is_err());
        assert_eq!(parse_ready("notify").unwrap(), ReadyMode::Notify);
        assert!(parse_ready("delay:").is_err());
        let l = parse_listen("localhost:80").unwrap();
        assert_eq!(l.addr, ListenAddr::Tcp("127.0.0.1:80".parse().unwrap()));
        assert!(parse_listen("a:b=127.0.0.1:1").is_err());
        assert_eq!(parse_listen("[::1]:9").unwrap().name, None);
        assert!(parse_workers("4097").is_err());
        assert_eq!(parse_workers("8").unwrap(), 8);
    }
}

/// Property tests: any config text gives settings or an error naming a line, never a panic.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "listen",
        "workers",
        "ready",
        "ready_timeout",
        "drain_timeout",
        "min_uptime",
        "soak",
        "drain_signal",
        "watchdog",
        "max_memory",
        "max_age",
        "rolling",
        "control",
        "runtime_dir",
        "on_drain_timeout",
        "version_file",
        "command",
        "user",
        "group",
        "working_directory",
        "bogus",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            if let Err(e) = parse_str(&text, "f.toml") {
                prop_assert!(e.to_string().starts_with("f.toml"), "{}", e);
            }
        }

        #[test]
        fn errors_point_at_the_offending_line(
            good in proptest::collection::vec(0usize..3, 0..5),
            key in 0usize..KEYS.len(),
            value in prop_oneof!["\"[a-z0-9 :]{0,12}\"", "-?[0-9]{1,6}", Just("true".to_string()), Just("[1, 2]".to_string())],
        ) {
            // Valid lines first, then one random assignment: if it fails, the error names its line.
            let valid = ["workers = 2", "rolling = false", "drain_timeout = \"5s\""];
            let mut text: Vec<String> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for g in good {
                if seen.insert(g) {
                    text.push(valid[g].to_string());
                }
            }
            let line_no = text.len() + 1;
            let k = KEYS[key];
            if text.iter().any(|l| l.starts_with(&format!("{k} "))) {
                return Ok(());
            }
            text.push(format!("{k} = {value}"));
            if let Err(e) = parse_str(&text.join("\n"), "f.toml") {
                let msg = e.to_string();
                prop_assert!(msg.starts_with(&format!("f.toml:{line_no}: key `{k}`")), "{}", msg);
            }
        }
    }
}
