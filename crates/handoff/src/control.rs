//! The control socket: how `handoff reload` and `handoff status` talk to a running handoff.
//!
//! A unix stream socket (mode 0600, in the 0700 runtime dir). One request per connection, one
//! line of JSON each way: `{"cmd":"reload","if_changed":false}` or `{"cmd":"status"}`. A reload
//! answer comes only when the rollover that covers the request has ended, however long that
//! takes (bounded by the ready timeout). A client that sends garbage gets an error line; one
//! that sends nothing is dropped after [`REQUEST_TIMEOUT`]; one that disconnects mid-wait does
//! not stop the rollover.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: u64 = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Reload {
        /// Skip the rollover when the version file is unchanged since the running generation.
        #[serde(default)]
        if_changed: bool,
    },
    Status,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReply {
    pub outcome: Outcome,
    /// The generation that serves now.
    pub generation: u64,
    pub message: String,
    pub duration_ms: u64,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub generation: u64,
    pub pid: i32,
    /// `starting`, `ready`, `draining`.
    pub state: String,
    pub age_ms: u64,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub number: u64,
    pub version: Option<VersionInfo>,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloverStatus {
    pub generation: u64,
    pub outcome: Outcome,
    pub message: String,
    pub duration_ms: u64,
    pub ago_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: usize,
    /// Consecutive crashes of this slot's worker; reset once a worker stays ready.
    pub crashes: u32,
    /// Milliseconds until the next restart attempt, when one is pending.
    pub restart_in_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Reload(ReloadReply),
    Status(Box<StatusReport>),
    Error(String),
}

/// A request as the supervisor sees it, with the way back to its client.
#[derive(Debug)]
pub enum Command {
    Reload {
        if_changed: bool,
        reply: oneshot::Sender<ReloadReply>,
    },
    Status {
        reply: oneshot::Sender<StatusReport>,
    },
}

/// The path clients use when none is given: `HANDOFF_CONTROL`, else `control.sock` in the
/// default runtime directory.
pub fn default_control_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HANDOFF_CONTROL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_runtime_dir().join("control.sock")
}

/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR/handoff`, else
/// `/run/handoff` for root and `/tmp/handoff-UID` for others.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, colon-separated; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("handoff");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/handoff")
    } else {
        PathBuf::from(format!("/tmp/handoff-{uid}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach handoff at {path}: {source} (is it running? give --control or set HANDOFF_CONTROL)"
    )]
    Connect { path: String, source: io::Error },
    #[error("lost the connection to handoff at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("handoff at {path} sent an answer this client does not understand: {detail}")]
    Protocol { path: String, detail: String },
    #[error("handoff refused the request: {0}")]
    Refused(String),
}

/// Sends one request and waits for its answer (a reload waits for the rollover to end).
pub fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = path.display().to_string();
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: p.clone(),
        source,
    })?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|source| ClientError::Io {
            path: p.clone(),
            source,
        })?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|source| ClientError::Io {
            path: p.clone(),
            source,
        })?;
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

/// Binds the control socket. A socket file left by a crashed handoff is replaced; one that a
/// live handoff answers on is not (two supervisors must not share a runtime dir).
pub fn bind(path: &Path) -> io::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another handoff is running with control socket {}; give this one its own --control / --runtime-dir",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind control socket {}: {e}", path.display()),
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std_listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(std_listener)
}

/// Accepts control connections forever, passing each request to the supervisor.
pub async fn serve(listener: tokio::net::UnixListener, to_supervisor: mpsc::Sender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = to_supervisor.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, tx).await {
                        tracing::debug!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: tokio::net::UnixStream, tx: mpsc::Sender<Command>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let got = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let response = match got {
        Err(_) => Response::Error(format!(
            "no complete request within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Response::Error(format!("unreadable request: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') => Response::Error(format!(
            "incomplete request: expected one JSON line of at most {MAX_REQUEST} bytes ending in a newline"
        )),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!(
                "bad request ({e}); expected {{\"cmd\":\"reload\"}} or {{\"cmd\":\"status\"}}"
            )),
            Ok(Request::Reload { if_changed }) => {
                let (reply, rx) = oneshot::channel();
                let _ = tx.send(Command::Reload { if_changed, reply }).await;
                match rx.await {
                    Ok(r) => Response::Reload(r),
                    Err(_) => Response::Error("handoff is shutting down".into()),
                }
            }
            Ok(Request::Status) => {
                let (reply, rx) = oneshot::channel();
                let _ = tx.send(Command::Status { reply }).await;
                match rx.await {
                    Ok(r) => Response::Status(Box::new(r)),
                    Err(_) => Response::Error("handoff is shutting down".into()),
                }
            }
        },
    };
    let mut out = serde_json::to_string(&response).expect("responses serialize");
    out.push('\n');
    write.write_all(out.as_bytes()).await?;
    write.shutdown().await
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
        assert!(
            Outcome::Unchanged.success()
                && !Outcome::RolledBack.success()
                && !Outcome::Partial.success()
        );
    }
}
