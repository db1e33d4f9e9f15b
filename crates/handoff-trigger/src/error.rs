//! The trigger's errors and the exit code each maps to.

use std::path::PathBuf;
use std::time::Duration;

use crate::release::ReleaseError;

// The exit codes are handoff's own (one table for both binaries: handoff_common::exit).
pub use handoff_common::exit::{
    FAILED as EXIT_ROLLED_BACK, INVALID_RELEASE as EXIT_INVALID_RELEASE, SOFTWARE as EXIT_SOFTWARE,
    TEMPFAIL as EXIT_TEMPFAIL, UNAVAILABLE as EXIT_UNAVAILABLE, USAGE as EXIT_USAGE,
};

/// Why a trigger run did not end in "nothing to do" or "rolled over".
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error(transparent)]
    InvalidRelease(ReleaseError),
    #[error(
        "the rollover failed and handoff kept the old generation (`handoff reload` exited {code}); see `{status}` and `journalctl -u {unit} -p warning`"
    )]
    RolledBack {
        code: i32,
        /// The command that shows this handoff's status (`handoff status --app shop`).
        status: String,
        unit: String,
    },
    #[error(
        "handoff did not answer on its control socket (`handoff reload` exited {code}); is the app's service running? (`systemctl status {unit}`)"
    )]
    Unavailable { code: i32, unit: String },
    #[error("`{bin} reload` failed: {detail}")]
    HandoffFailed { bin: PathBuf, detail: String },
    #[error("cannot run {bin}: {source}; pass --handoff PATH (or HANDOFF_BIN)")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`handoff reload` did not finish within {}; killed it (raise --reload-timeout?)", handoff_common::duration::human(*.0))]
    ReloadTimeout(Duration),
    #[error(
        "{dir} kept changing for {} (or the rpm lock stayed held); not rolling over onto a half-installed release (raise --max-wait, or --exclude directories the app writes to)",
        handoff_common::duration::human(*.waited)
    )]
    NotSettled { dir: PathBuf, waited: Duration },
    #[error("cannot watch {dir}: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl TriggerError {
    /// Whether [`crate::run`] logged it already (so `main` does not say it twice).
    pub fn logged_by_run(&self) -> bool {
        !matches!(self, TriggerError::Watch { .. })
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            TriggerError::InvalidRelease(_) => EXIT_INVALID_RELEASE,
            TriggerError::RolledBack { .. } => EXIT_ROLLED_BACK,
            TriggerError::Unavailable { .. } => EXIT_UNAVAILABLE,
            TriggerError::ReloadTimeout(_) | TriggerError::NotSettled { .. } => EXIT_TEMPFAIL,
            TriggerError::HandoffFailed { .. }
            | TriggerError::Spawn { .. }
            | TriggerError::Watch { .. } => EXIT_SOFTWARE,
        }
    }
}
