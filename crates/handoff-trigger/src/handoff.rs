//! Asking handoff for a rollover: `handoff reload --if-changed`, the same interface an operator or
//! an rpm scriptlet uses. handoff compares the version file's hash with the running generation's and
//! rolls over only when they differ, atomically with respect to other reloads: that is what makes
//! "one release = one rollover" hold when several triggers fire.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handoff_common::exit;

use crate::error::TriggerError;

/// How to reach handoff.
#[derive(Debug, Clone)]
pub struct Reloader {
    /// The `handoff` binary.
    pub bin: PathBuf,
    /// Its control socket; `None` lets `handoff` use its default.
    pub control: Option<PathBuf>,
    /// How long `handoff reload` may take before it is killed.
    pub timeout: Duration,
    /// How long to keep asking while the control socket exists but handoff does not answer
    /// (handoff starting or restarting).
    pub wait_running: Duration,
}

/// The `handoff` binary to use when none is given: the one next to this executable (both are
/// installed to /usr/bin, and both sit in target/debug during tests), else `handoff` from PATH.
pub fn default_handoff_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("handoff")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("handoff"))
}

impl Reloader {
    /// The app, when the control socket is a `handoff@APP` unit's (`/run/handoff-APP/...`).
    pub fn app(&self) -> Option<String> {
        let c = self.control.as_deref()?;
        let app = c
            .parent()?
            .file_name()?
            .to_str()?
            .strip_prefix("handoff-")?;
        (handoff_common::paths::app_control(app) == c).then(|| app.to_string())
    }

    /// How to run `handoff SUB` against the same handoff, for messages.
    pub fn command_line(&self, sub: &str) -> String {
        match (self.app(), &self.control) {
            (Some(app), _) => format!("handoff {sub} --app {app}"),
            (None, Some(c)) => format!("handoff {sub} --control {}", c.display()),
            (None, None) => format!("handoff {sub}"),
        }
    }

    /// The service unit, for `journalctl -u` / `systemctl status` hints.
    pub fn unit(&self) -> String {
        self.app()
            .map_or_else(|| "handoff@APP".into(), |a| format!("handoff@{a}"))
    }

    /// The control socket, when known and absent, means handoff is not running.
    pub fn control_missing(&self) -> Option<&Path> {
        self.control
            .as_deref()
            .filter(|c| std::fs::symlink_metadata(c).is_err())
    }

    /// Runs `handoff reload --if-changed` and waits (bounded) for it. Its output goes to our
    /// stdout/stderr, i.e. into the trigger unit's journal.
    pub fn reload_if_changed(&self) -> Result<(), TriggerError> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("reload").arg("--if-changed");
        if let Some(c) = &self.control {
            cmd.arg("--control").arg(c);
        }
        cmd.stdin(Stdio::null());
        tracing::debug!("running {cmd:?}");
        let mut child = cmd.spawn().map_err(|source| TriggerError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait(); // reap it
                    return Err(TriggerError::ReloadTimeout(self.timeout));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TriggerError::HandoffFailed {
                        bin: self.bin.clone(),
                        detail: format!("waiting for it failed: {e}"),
                    });
                }
            }
        };
        match status.code() {
            Some(exit::OK) => Ok(()),
            Some(code @ exit::FAILED) => Err(TriggerError::RolledBack {
                code,
                status: self.command_line("status"),
                unit: self.unit(),
            }),
            Some(code @ exit::UNAVAILABLE) => Err(TriggerError::Unavailable {
                code,
                unit: self.unit(),
            }),
            Some(code) => Err(TriggerError::HandoffFailed {
                bin: self.bin.clone(),
                detail: format!("exit code {code}"),
            }),
            None => Err(TriggerError::HandoffFailed {
                bin: self.bin.clone(),
                detail: format!("killed by a signal ({status})"),
            }),
        }
    }
}
