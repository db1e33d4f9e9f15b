//! The executor's side of `handoff reexec` (the mechanism is in `crate::reexec`): writing
//! the state and exec'ing, and taking over from a state.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use handoff_common::protocol::{ReexecReply, Response};
use tracing::{error, info, warn};

use super::Executor;
use super::Restored;
use crate::notify::NotifySocket;
use crate::reexec::{self, ListenerState, NotifyState, State};

impl Executor {
    /// Hands over to the binary at `rt.binary`. Returns only when that was not possible:
    /// the clients are told why, and this handoff goes on unchanged.
    pub(super) fn reexec(&mut self) {
        let Err(why) = self.try_reexec();
        self.reexec_failed(why);
    }

    /// Answers every waiting `reexec` client with `why`; nothing else changes.
    pub(super) fn reexec_failed(&mut self, why: String) {
        error!("reexec failed, this handoff goes on unchanged: {why}");
        let message = format!(
            "{why}; handoff (pid {}) still runs the old binary, unchanged",
            std::process::id()
        );
        self.last_reexec = Some(format!("failed: {why}"));
        self.reexec_pending = false;
        for stream in std::mem::take(&mut self.reexec_replies) {
            answer(stream, &Response::Error(message.clone()));
        }
    }

    fn try_reexec(&mut self) -> Result<std::convert::Infallible, String> {
        let binary = self.rt.binary.clone();
        info!("reexec: handing over to {}", binary.display());
        let state = self.state()?;
        let bytes =
            serde_json::to_vec(&state).map_err(|e| format!("cannot write the state: {e}"))?;
        let memfd = reexec::state_memfd(&bytes)
            .map_err(|e| format!("cannot create the state memfd: {e}"))?;
        // The new binary must show it can read this state before this one goes away.
        reexec::preflight(&binary, &memfd)?;
        let image = reexec::open_own_image()
            .map_err(|e| format!("cannot open the running image for a fallback: {e}"))?;
        let mut fds = state.fds();
        fds.push(memfd.as_raw_fd());
        // Until the exec succeeds, each step is undone on failure.
        let mut opened = Vec::new();
        for fd in &fds {
            if let Err(e) = reexec::set_cloexec(*fd, false) {
                for fd in opened {
                    let _ = reexec::set_cloexec(fd, true);
                }
                return Err(format!("cannot pass fd {fd} over the exec: {e}"));
            }
            opened.push(*fd);
        }
        let mut env: Vec<Vec<u8>> = self
            .rt
            .base_env
            .iter()
            .filter(|(k, _)| {
                let k = k.as_encoded_bytes();
                k != reexec::STATE_ENV.as_bytes()
                    && k != reexec::FALLBACK_ENV.as_bytes()
                    && k != reexec::FAILED_ENV.as_bytes()
            })
            .map(|(k, v)| reexec::env_entry(k.as_encoded_bytes(), v.as_encoded_bytes()))
            .collect();
        env.push(reexec::env_entry(
            reexec::STATE_ENV.as_bytes(),
            memfd.as_raw_fd().to_string().as_bytes(),
        ));
        env.push(reexec::env_entry(
            reexec::FALLBACK_ENV.as_bytes(),
            format!("{}:{}", image.as_raw_fd(), memfd.as_raw_fd()).as_bytes(),
        ));
        reexec::block_handover_signals();
        let e = reexec::exec(&binary, &self.rt.argv, &env);
        // Still here: nothing was handed over. Back to how things were.
        reexec::unblock_handover_signals();
        for fd in fds {
            let _ = reexec::set_cloexec(fd, true);
        }
        drop(image);
        Err(format!("cannot exec {}: {e}", binary.display()))
    }

    /// Everything the new image needs, fds by number.
    fn state(&self) -> Result<State, String> {
        let now = Instant::now();
        let machine = self
            .machine
            .export(now)
            .map_err(|e| format!("cannot write the machine's state: {e}"))?;
        let rt = &self.rt;
        Ok(State {
            format: reexec::STATE_FORMAT,
            binary: rt.binary.clone(),
            argv: rt.argv.clone(),
            config: rt.config.clone(),
            settings: rt.settings.clone(),
            base_env: rt
                .base_env
                .iter()
                .map(|(k, v)| (reexec::os_to_bytes(k), reexec::os_to_bytes(v)))
                .collect(),
            notify_socket: rt.notify_socket.clone(),
            watchdog: rt.watchdog,
            runtime_dir: rt.runtime_dir.clone(),
            control_path: rt.control_path.clone(),
            credentials: rt.credentials.clone(),
            nofile: rt.nofile,
            status_gid: rt.status_gid,
            listeners: rt
                .listeners
                .iter()
                .map(|l| ListenerState {
                    name: l.name.clone(),
                    describe: l.describe.clone(),
                    fd: l.fd().as_raw_fd(),
                    created_path: l.created_path().map(|p| p.to_path_buf()),
                })
                .collect(),
            control_fd: self.control_keep.as_raw_fd(),
            status_fd: self.status_keep.as_ref().map(|l| l.as_raw_fd()),
            guard: rt.guard.as_ref().map(|g| (g.pid().as_raw(), g.pipe_fd())),
            notify: self
                .notify
                .iter()
                .map(|(&worker, ch)| {
                    let (fd, allowed_uids, owner) = ch.socket.handover();
                    NotifyState {
                        worker,
                        fd,
                        path: ch.socket.path().to_path_buf(),
                        allowed_uids,
                        owner,
                    }
                })
                .collect(),
            hooks: self
                .hooks
                .iter()
                .map(|(p, c)| (p.as_raw(), c.clone()))
                .collect(),
            replies: self.reexec_replies.iter().map(|s| s.as_raw_fd()).collect(),
            machine,
            next_waiter: self.next_waiter,
            traversable: self.traversable,
            uptime: self.started.elapsed(),
            reexecs: self.reexecs,
            last_status_line: self.last_status_line.clone(),
            workers: {
                let mut w: Vec<i32> = self
                    .machine
                    .status(now)
                    .workers
                    .iter()
                    .map(|w| w.pid)
                    .collect();
                w.sort_unstable();
                w
            },
        })
    }

    /// Takes over from the previous image: its notify sockets, hooks and counters; exits
    /// that happened during the exec are reaped now (their SIGCHLD went to the old image);
    /// the clients that asked hear the outcome.
    pub(super) fn resume(&mut self, r: Restored) {
        self.started = Instant::now()
            .checked_sub(r.uptime)
            .unwrap_or_else(Instant::now);
        self.next_waiter = r.next_waiter;
        self.traversable = r.traversable;
        self.last_status_line = r.last_status_line;
        for (pid, cmd) in r.hooks {
            self.hooks.insert(nix::unistd::Pid::from_raw(pid), cmd);
        }
        for (worker, fd, path, allowed, owner) in r.notify {
            match NotifySocket::restored(fd, path, allowed, owner) {
                Ok(sock) => self.watch_notify(worker, sock),
                Err(e) => warn!(worker, "cannot take over a notify socket: {e}"),
            }
        }
        let answer_with = match r.failed {
            None => {
                self.reexecs = r.reexecs + 1;
                let status = self.machine.status(Instant::now());
                let mut workers: Vec<i32> = status.workers.iter().map(|w| w.pid).collect();
                workers.sort_unstable();
                let message = format!(
                    "handoff re-exec'd: {} runs as pid {} with the same {} worker(s) and \
                     sockets",
                    self.rt.binary.display(),
                    std::process::id(),
                    workers.len()
                );
                info!("{message}");
                self.last_reexec = Some(format!("ok: {}", self.rt.binary.display()));
                Response::Reexec(ReexecReply {
                    pid: std::process::id(),
                    workers,
                    handed_over: r.handed_over.clone(),
                    generation: status.current_generation,
                    binary: self.rt.binary.clone(),
                    message,
                })
            }
            Some(why) => {
                self.reexecs = r.reexecs;
                let why = format!(
                    "the new binary {} could not take over ({why}); the old one took back over",
                    self.rt.binary.display()
                );
                error!("reexec failed: {why}");
                self.last_reexec = Some(format!("failed: {why}"));
                Response::Error(format!(
                    "{why}; handoff (pid {}) still runs the old binary, unchanged",
                    std::process::id()
                ))
            }
        };
        for stream in r.replies {
            answer(stream, &answer_with);
        }
        self.reap();
        self.scan_pending = true;
    }
}

/// One answer line to a `reexec` client, which may have gone away.
fn answer(mut stream: UnixStream, response: &Response) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut line = serde_json::to_string(response).expect("responses serialize");
    line.push('\n');
    let _ = stream.write_all(line.as_bytes());
}
