//! The control socket protocol: how `handoff reload`, `handoff status`, `handoff-trigger` and
//! the benchmark talk to a running handoff.
//!
//! A unix stream socket (mode 0600, in the 0700 runtime dir). One request per connection, one
//! line of JSON each way: `{"cmd":"reload","if_changed":false}` or `{"cmd":"status"}`. A reload
//! answer comes only when the rollover that covers the request has ended (bounded by the
//! ready timeout). `{"cmd":"reload-keepalive"}` is a reload whose connection also carries a
//! `{"progress":"..."}` line every [`PROGRESS_EVERY`] before the answer, so clients can time out
//! on silence (a stopped handoff) instead of on the rollover's length. With `status_group`, a
//! second socket `status.sock` (0660) answers `status` only. The server side lives in
//! `handoff::control`.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit;

/// The longest request line the server reads.
pub const MAX_REQUEST: u64 = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Reload {
        /// Skip the rollover when the version file is unchanged since the running generation.
        #[serde(default)]
        if_changed: bool,
    },
    Status,
    /// A reload whose connection carries [`Response::Progress`] lines every
    /// [`PROGRESS_EVERY`] until the answer, so a client can tell a long rollover from a stopped
    /// handoff and time out on silence rather than on the rollover's length.
    ReloadKeepalive {
        #[serde(default)]
        if_changed: bool,
    },
    /// A rollover to the settings in force with this many workers (until a reload reads
    /// the config file again). Its connection carries progress lines like `reload-keepalive`.
    Scale {
        workers: usize,
    },
    /// Replace the worker of one slot gracefully: a new one starts beside it, and once it is
    /// ready the old one is drained. Progress lines as `reload-keepalive`.
    RestartWorker {
        slot: usize,
    },
    /// `handoff reexec`: exec the binary installed at the path handoff was started from,
    /// carrying the whole state over. Answered by the new binary, on the same connection,
    /// with [`Response::Reexec`]; by the old one with [`Response::Error`] when it could not
    /// hand over (it keeps running unchanged).
    Reexec,
}

/// How often a `reload-keepalive` connection hears from handoff while the rollover runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How a reload ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new generation serves.
    Ok,
    /// `if_changed` and nothing changed: no rollover.
    Unchanged,
    /// The new generation failed; the old one still serves.
    RolledBack,
    /// A rolling rollover failed after replacing some workers: both generations serve.
    Partial,
    /// Not attempted (shutting down, version file unreadable with `if_changed`).
    Refused,
}

impl Outcome {
    pub fn success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Unchanged)
    }
}

/// The one way an outcome is written for people (status, logs, client errors).
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::RolledBack => "rolled back",
            Outcome::Partial => "partial",
            Outcome::Refused => "refused",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReply {
    pub outcome: Outcome,
    /// The generation that serves now.
    pub generation: u64,
    pub message: String,
    pub duration_ms: u64,
    /// Things the caller should know that did not make the reload fail: workers of an earlier
    /// rollover that were SIGKILLed at the drain timeout (requests they held were cut) since the
    /// previous reload answer. The drain of *this* rollover ends after this answer; its kills
    /// are in `handoff status` and come with the next answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The recorded identity of what a generation was started from (the app's `package.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub path: PathBuf,
    /// The `version` field, when the file is JSON with one.
    pub version: Option<String>,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    /// Why the file could not be read or parsed, if so.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerStatus {
    pub slot: usize,
    pub generation: u64,
    pub pid: i32,
    /// `spawning`, `starting`, `ready`, `draining`.
    pub state: String,
    pub age_ms: u64,
    pub status: Option<String>,
    /// What the worker's process tree (the worker, its descendants, and what stayed in its
    /// process group) uses, sampled from /proc when the status was asked for. `None`: the
    /// worker could not be read (gone meanwhile, or hidden by `hidepid=`), or an older
    /// handoff. RSS is summed over the processes (shared pages count in each, as in `ps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// User + system CPU time of the tree, with the children its processes reaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Processes in the tree, the worker included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    /// Set when this worker was started after its generation's release files changed on
    /// disk (an in-place install): it runs the files now on disk, not its generation's
    /// release. Says which version those are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on_disk: Option<String>,
    /// With a watchdog: milliseconds since its last `WATCHDOG=1` (since `READY=1` if none).
    #[serde(default)]
    pub watchdog_ago_ms: Option<u64>,
    /// A replacement for another worker, not yet ready: why that one is replaced.
    #[serde(default)]
    pub replacing: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerationStatus {
    pub number: u64,
    pub version: Option<VersionInfo>,
    pub age_ms: u64,
    /// `working_directory` as resolved (realpath) when the generation started: the release
    /// its workers, and every restart of them, run from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloverStatus {
    pub generation: u64,
    pub outcome: Outcome,
    pub message: String,
    pub duration_ms: u64,
    pub ago_ms: u64,
    /// Workers this rollover drained that had to be SIGKILLed at the drain timeout: whatever
    /// requests they still held were cut. Counted as the drain goes on (after the answer).
    #[serde(default)]
    pub forced_kills: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotStatus {
    pub slot: usize,
    /// Consecutive crashes of this slot's worker; reset once a worker stays ready.
    pub crashes: u32,
    /// Milliseconds until the next restart attempt, when one is pending.
    pub restart_in_ms: Option<u64>,
    /// A replacement under way (restart-worker, watchdog, limits): why.
    #[serde(default)]
    pub replacing: Option<String>,
    /// The last completed replacement ("worker 0 replaced: pid 1 → pid 2 (why)") and how long
    /// ago.
    #[serde(default)]
    pub last_replacement: Option<String>,
    #[serde(default)]
    pub last_replacement_ago_ms: Option<u64>,
    /// Workers handoff started in this slot because the one before exited on its own
    /// (crashes and stops from outside), since handoff started. Rollovers do not count.
    #[serde(default)]
    pub restarts: u32,
    /// How the last worker of this slot that is gone ended (any generation).
    #[serde(default)]
    pub last_exit: Option<SlotExit>,
}

/// Why a worker ended, as `handoff status` shows it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// It exited on its own, not asked to: a crash (counted in the slot's crash count), or a
    /// new worker failing its rollover.
    Crash,
    /// A healthy worker stopped from outside handoff (exit 0, SIGTERM): restarted, no crash.
    Stopped,
    /// It exited after handoff asked it to drain.
    Drained,
    /// It was SIGKILLed at the drain timeout.
    Killed,
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExitKind::Crash => "crash",
            ExitKind::Stopped => "stopped from outside",
            ExitKind::Drained => "drained",
            ExitKind::Killed => "killed at the drain timeout",
        })
    }
}

/// The last exit of a slot's worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotExit {
    pub pid: i32,
    pub generation: u64,
    /// As `waitpid` said: `exited with status 1`, `was killed by SIGKILL`.
    pub status: String,
    pub kind: ExitKind,
    /// Why handoff drained it (`replaced`, `rolled back`, `scaled down`, `SIGTERM` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_because: Option<String>,
    pub ago_ms: u64,
}

/// The settings in force: those the serving generation was started with. Durations as the
/// config file writes them (`60s`, `500ms`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettingsStatus {
    pub workers: usize,
    pub command: Vec<String>,
    /// `notify` or `delay:DURATION`.
    pub ready: String,
    pub ready_timeout: String,
    pub drain_timeout: String,
    pub drain_signal: String,
    pub rolling: bool,
    /// The stability window past READY=1 (`min_uptime`).
    #[serde(default)]
    pub min_uptime: String,
    /// With `rolling`: the first new worker's soak (`0s`: none).
    #[serde(default)]
    pub soak: String,
    pub user: Option<String>,
    pub group: Option<String>,
    /// The names `[environment]` sets (values are not shown: they may be secrets).
    #[serde(default)]
    pub environment: Vec<String>,
    /// `working_directory` as configured (each generation pins its resolved target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<PathBuf>,
    /// Per-worker watchdog interval, when set.
    #[serde(default)]
    pub watchdog: Option<String>,
    /// `max_memory` in bytes, when set.
    #[serde(default)]
    pub max_memory: Option<u64>,
    #[serde(default)]
    pub max_age: Option<String>,
}

/// New workers all ready, in their stability window (`min_uptime`): the old generation still
/// serves beside them and is drained only once the window has passed without a crash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StabilizingStatus {
    pub generation: u64,
    /// The slots whose new workers are in the window (all slots, or one with `--rolling`).
    pub slots: Vec<usize>,
    /// Time left until the window ends.
    pub left_ms: u64,
    /// The whole window (`min_uptime`).
    pub min_uptime_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub pid: u32,
    pub uptime_ms: u64,
    pub current_generation: u64,
    pub workers_wanted: usize,
    pub ready: usize,
    pub listeners: Vec<String>,
    pub generations: Vec<GenerationStatus>,
    pub workers: Vec<WorkerStatus>,
    pub slots: Vec<SlotStatus>,
    /// A rollover under way: target generation.
    pub rolling_over_to: Option<u64>,
    pub queued_reloads: usize,
    pub last_rollover: Option<RolloverStatus>,
    pub shutting_down: bool,
    /// Workers SIGKILLed at the drain timeout since handoff started.
    #[serde(default)]
    pub forced_kills: u64,
    /// handoff's own log lines dropped because its stderr was not writable (full pipe).
    #[serde(default)]
    pub log_lines_dropped: u64,
    #[serde(default)]
    pub settings: Option<SettingsStatus>,
    /// The config file handoff was started with (`--config`).
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// How the config file on disk differs from the settings in force (or why it cannot be
    /// read); `None` when it agrees or there is none.
    #[serde(default)]
    pub config_differs: Option<String>,
    /// The running rollover's new workers are in their stability window.
    #[serde(default)]
    pub stabilizing: Option<StabilizingStatus>,
    /// The one-line summary handoff sends systemd (`STATUS=`, what `systemctl status` shows).
    #[serde(default)]
    pub status_line: Option<String>,
    /// Successful `handoff reexec`s since handoff started.
    #[serde(default)]
    pub reexecs: u32,
    /// How the last `handoff reexec` ended, when there was one.
    #[serde(default)]
    pub last_reexec: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Reload(ReloadReply),
    Status(Box<StatusReport>),
    Error(String),
    /// A sign of life while a `reload-keepalive` waits: what the rollover is doing.
    Progress(String),
    Reexec(ReexecReply),
}

/// The answer of a re-exec'd handoff: what it restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReexecReply {
    /// handoff's pid: the same as before the exec.
    pub pid: u32,
    /// The workers' pids it took over, sorted.
    pub workers: Vec<i32>,
    /// The workers' pids the old image wrote into the state at the exec, sorted: a client
    /// checks that they are `workers`.
    #[serde(default)]
    pub handed_over: Vec<i32>,
    pub generation: u64,
    /// The binary that now runs.
    pub binary: PathBuf,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no handoff is running at {path} ({source}); start it (systemctl start handoff@APP.service), \
         or name the right one with --app APP or --control PATH (or HANDOFF_CONTROL)"
    )]
    NotRunning { path: String, source: io::Error },
    #[error(
        "permission denied on {path}: the control socket is for root (and handoff's own user): \
         run the command with sudo; for `handoff status` without root, set `status_group` \
         (--status-group) in the app's config and join that group"
    )]
    PermissionDenied { path: String },
    #[error("cannot reach handoff at {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("no answer from handoff at {path} within {} s; is it stopped (SIGSTOP) or overloaded? (--timeout raises the limit)", .timeout.as_secs())]
    Timeout { path: String, timeout: Duration },
    #[error("lost the connection to handoff at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("handoff at {path} sent an answer this client does not understand: {detail}")]
    Protocol { path: String, detail: String },
    #[error("handoff refused the request: {0}")]
    Refused(String),
}

impl ClientError {
    /// The exit code a command-line client leaves with (see [`crate::exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NotRunning { .. } | ClientError::Connect { .. } => exit::UNAVAILABLE,
            ClientError::PermissionDenied { .. } => exit::NOPERM,
            ClientError::Timeout { .. } => exit::TEMPFAIL,
            ClientError::Refused(_) => exit::FAILED,
            ClientError::Io { .. } | ClientError::Protocol { .. } => exit::SOFTWARE,
        }
    }
}

/// Sends one request and waits for its answer (a reload waits for the rollover to end), at
/// most `timeout` for each read or write when given.
pub fn request(
    path: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Response, ClientError> {
    request_with_progress(path, req, timeout, &mut |_| {})
}

/// A reload that times out only when handoff goes silent for `idle` (stopped, or its loop
/// blocked): it asks for progress lines, which a live handoff sends every [`PROGRESS_EVERY`]
/// however long the rollover takes. A handoff too old to know `reload-keepalive` gets a plain
/// reload without a timeout (what it always had). `progress` sees each progress line.
pub fn reload(
    path: &Path,
    if_changed: bool,
    idle: Option<Duration>,
    progress: &mut dyn FnMut(&str),
) -> Result<Response, ClientError> {
    // Never shorter than two progress intervals: a live handoff must not look silent.
    let idle = idle.map(|d| d.max(2 * PROGRESS_EVERY));
    match request_with_progress(
        path,
        &Request::ReloadKeepalive { if_changed },
        idle,
        progress,
    ) {
        Err(ClientError::Refused(e)) if e.contains("reload-keepalive") => {
            request_with_progress(path, &Request::Reload { if_changed }, None, progress)
        }
        other => other,
    }
}

/// `handoff scale N`: like [`reload`] (timing out on silence only), for a rollover to `workers`.
pub fn scale(
    path: &Path,
    workers: usize,
    idle: Option<Duration>,
    progress: &mut dyn FnMut(&str),
) -> Result<Response, ClientError> {
    let idle = idle.map(|d| d.max(2 * PROGRESS_EVERY));
    request_with_progress(path, &Request::Scale { workers }, idle, progress)
}

/// `handoff restart-worker N`: like [`reload`] (timing out on silence only).
pub fn restart_worker(
    path: &Path,
    slot: usize,
    idle: Option<Duration>,
    progress: &mut dyn FnMut(&str),
) -> Result<Response, ClientError> {
    let idle = idle.map(|d| d.max(2 * PROGRESS_EVERY));
    request_with_progress(path, &Request::RestartWorker { slot }, idle, progress)
}

/// [`request`], with each progress line passed to `progress`.
pub fn request_with_progress(
    path: &Path,
    req: &Request,
    timeout: Option<Duration>,
    progress: &mut dyn FnMut(&str),
) -> Result<Response, ClientError> {
    let p = path.display().to_string();
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: p.clone() },
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            path: p.clone(),
            source,
        },
        _ => ClientError::Connect {
            path: p.clone(),
            source,
        },
    })?;
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if timeout.is_some() => {
            ClientError::Timeout {
                path: p.clone(),
                timeout: timeout.unwrap_or_default(),
            }
        }
        _ => ClientError::Io {
            path: p.clone(),
            source,
        },
    };
    stream.set_read_timeout(timeout).map_err(io_err)?;
    stream.set_write_timeout(timeout).map_err(io_err)?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    loop {
        answer.clear();
        reader.read_line(&mut answer).map_err(io_err)?;
        // Signs of life: each one restarts the timeout (it bounds silence, not the rollover).
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Progress(p)) => {
                progress(&p);
                continue;
            }
            _ => break,
        }
    }
    if answer.is_empty() {
        return Err(ClientError::Io {
            path: p,
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "handoff closed the connection without answering",
            ),
        });
    }
    match serde_json::from_str(&answer) {
        Ok(Response::Error(e)) => Err(ClientError::Refused(e)),
        Ok(r) => Ok(r),
        Err(e) => Err(ClientError::Protocol {
            path: p,
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(
            serde_json::to_string(&Request::Reload { if_changed: true }).unwrap(),
            r#"{"cmd":"reload","if_changed":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"reload"}"#).unwrap(),
            Request::Reload { if_changed: false }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reload","force":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"scale","workers":3}"#).unwrap(),
            Request::Scale { workers: 3 }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"scale"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Outcome::RolledBack).unwrap(),
            r#""rolled-back""#
        );
    }

    #[test]
    fn outcomes_read_as_words() {
        assert!(Outcome::Unchanged.success() && !Outcome::RolledBack.success());
        assert!(!Outcome::Partial.success() && !Outcome::Refused.success());
        assert_eq!(Outcome::RolledBack.to_string(), "rolled back");
        assert_eq!(Outcome::Ok.to_string(), "ok");
    }

    #[test]
    fn connect_errors_name_what_to_do() {
        let dir = std::env::temp_dir().join(format!("handoff-proto-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let missing = dir.join("nothing.sock");
        let e = request(&missing, &Request::Status, None).unwrap_err();
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        assert!(e.to_string().contains("--app APP"), "{e}");
        // A socket nobody accepts on yet: bound, never listened.
        let stale = dir.join("stale.sock");
        let _ = std::fs::remove_file(&stale);
        let _l = std::os::unix::net::UnixDatagram::bind(&stale).unwrap();
        let e = request(&stale, &Request::Status, None).unwrap_err();
        assert_eq!(e.exit_code(), exit::UNAVAILABLE, "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = std::env::temp_dir().join(format!("handoff-proto-t-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        // Listening but never answering: what a SIGSTOPped handoff looks like to a client.
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = request(&path, &Request::Status, Some(Duration::from_millis(200))).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert_eq!(e.exit_code(), exit::TEMPFAIL);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
