//! The control socket's server side: binding it, reading requests, passing them to the
//! supervisor. The wire format and the client are in `handoff_common::protocol`.
//!
//! A client that sends garbage gets an error line; one that sends nothing is dropped after
//! [`REQUEST_TIMEOUT`]; one that disconnects mid-wait does not stop the rollover.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use handoff_common::protocol::{
    MAX_REQUEST, PROGRESS_EVERY, ReloadReply, Request, Response, StatusReport,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request as the supervisor sees it, with the way back to its client.
#[derive(Debug)]
pub enum Command {
    Reload {
        if_changed: bool,
        reply: oneshot::Sender<ReloadReply>,
    },
    Scale {
        workers: usize,
        reply: oneshot::Sender<ReloadReply>,
    },
    RestartWorker {
        slot: usize,
        reply: oneshot::Sender<ReloadReply>,
    },
    Status {
        reply: oneshot::Sender<StatusReport>,
    },
    /// `handoff reexec`: the connection itself goes to the supervisor, which carries it over
    /// the exec so the new binary answers on it (or answers an error itself).
    Reexec {
        stream: std::os::unix::net::UnixStream,
    },
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

/// At most this many control connections are served at once; more wait in the socket's
/// backlog (not in handoff's fd table), so a flood of clients cannot take the fds a worker
/// start needs.
pub const MAX_CONNECTIONS: usize = 128;

/// Binds the read-only status socket: mode 0660, group `gid`, so members of `status_group`
/// can read `handoff status` without the power to reload. Replaced if left over.
pub fn bind_status(path: &Path, gid: u32) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind status socket {}: {e}", path.display()),
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, None, Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    std_listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(std_listener)
}

/// What a socket's clients may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The control socket: reload and status.
    Full,
    /// status.sock: status only.
    StatusOnly,
}

/// Connections accepted and not yet answered, on every control socket: a `handoff reexec`
/// waits for them to be answered before the exec (an answer written by nobody would be a
/// client's lost connection).
pub type InFlight = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// Counts one connection in [`InFlight`] while it lives.
struct Counted(InFlight);

impl Counted {
    fn new(n: &InFlight) -> Counted {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(n.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Accepts control connections forever (until the task is aborted), passing each request to
/// the supervisor.
pub async fn serve(
    listener: tokio::net::UnixListener,
    to_supervisor: mpsc::Sender<Command>,
    access: Access,
    in_flight: InFlight,
) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = to_supervisor.clone();
                let counted = Counted::new(&in_flight);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, tx, access).await {
                        tracing::debug!("control connection: {e}");
                    }
                    drop(permit);
                    drop(counted);
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

async fn handle(
    stream: tokio::net::UnixStream,
    tx: mpsc::Sender<Command>,
    access: Access,
) -> io::Result<()> {
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
            Ok(
                Request::Reload { .. }
                | Request::ReloadKeepalive { .. }
                | Request::Scale { .. }
                | Request::RestartWorker { .. }
                | Request::Reexec,
            ) if access == Access::StatusOnly => Response::Error(
                "this is the read-only status socket: reload, scale, restart-worker and reexec \
                 need the control socket (run `handoff reload` as root)"
                    .into(),
            ),
            Ok(Request::Reexec) => {
                let read = reader.into_inner().into_inner();
                let stream = read
                    .reunite(write)
                    .map_err(|_| io::Error::other("halves of two streams"))?
                    .into_std()?;
                let _ = tx.send(Command::Reexec { stream }).await;
                return Ok(());
            }
            Ok(Request::Reload { if_changed }) => {
                let (reply, rx) = oneshot::channel();
                let _ = tx.send(Command::Reload { if_changed, reply }).await;
                match rx.await {
                    Ok(r) => Response::Reload(r),
                    Err(_) => Response::Error("handoff is shutting down".into()),
                }
            }
            Ok(Request::ReloadKeepalive { if_changed }) => {
                let (reply, rx) = oneshot::channel();
                let _ = tx.send(Command::Reload { if_changed, reply }).await;
                match with_progress(rx, &tx, &mut write).await {
                    Some(r) => r,
                    None => return Ok(()),
                }
            }
            Ok(Request::Scale { workers }) => {
                let (reply, rx) = oneshot::channel();
                let _ = tx.send(Command::Scale { workers, reply }).await;
                match with_progress(rx, &tx, &mut write).await {
                    Some(r) => r,
                    None => return Ok(()),
                }
            }
            Ok(Request::RestartWorker { slot }) => {
                let (reply, rx) = oneshot::channel();
                let _ = tx.send(Command::RestartWorker { slot, reply }).await;
                match with_progress(rx, &tx, &mut write).await {
                    Some(r) => r,
                    None => return Ok(()),
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

/// Waits for a rollover's answer, writing a progress line every [`PROGRESS_EVERY`]. `None`:
/// the client went away (the rollover goes on; its answer is dropped).
async fn with_progress(
    mut rx: oneshot::Receiver<ReloadReply>,
    tx: &mpsc::Sender<Command>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Option<Response> {
    let mut beat = tokio::time::interval(PROGRESS_EVERY);
    beat.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            r = &mut rx => return Some(match r {
                Ok(r) => Response::Reload(r),
                Err(_) => Response::Error("handoff is shutting down".into()),
            }),
            _ = beat.tick() => {
                // Asked of the supervisor loop itself: a beat means the loop, not just this
                // task, is alive.
                let (sreply, srx) = oneshot::channel();
                let _ = tx.send(Command::Status { reply: sreply }).await;
                let Ok(st) = srx.await else { continue };
                let mut line = serde_json::to_string(&Response::Progress(progress_line(&st)))
                    .expect("responses serialize");
                line.push('\n');
                // A client that went away does not stop the rollover.
                if write.write_all(line.as_bytes()).await.is_err() {
                    let _ = rx.await;
                    return None;
                }
            }
        }
    }
}

/// One line on what a rollover is doing, for `reload` progress.
fn progress_line(st: &StatusReport) -> String {
    match st.rolling_over_to {
        Some(g) if let Some(w) = &st.stabilizing => format!(
            "rolling over to generation {g}: stabilizing, {} left (min_uptime {})",
            handoff_common::duration::human(Duration::from_millis(w.left_ms)),
            handoff_common::duration::human(Duration::from_millis(w.min_uptime_ms)),
        ),
        Some(g) => {
            let new: Vec<_> = st.workers.iter().filter(|w| w.generation == g).collect();
            let ready = new.iter().filter(|w| w.state == "ready").count();
            format!(
                "rolling over to generation {g}: {ready} of {} new worker(s) ready",
                st.workers_wanted
            )
        }
        None if st.queued_reloads > 0 => "waiting for the version file".to_string(),
        None => "waiting".to_string(),
    }
}
