//! handoff-trigger: rolls a handoff app over to a new release once the release has landed.
//!
//! Run by `handoff-trigger@APP.service` (started by `handoff-trigger@APP.path` when the app's
//! `package.json` changes), or as a long-running `--watch` process where there are no path units.
//! Either way one cycle is:
//!
//! 1. wait until the install has settled: no change in the watched directory for `--settle`, and
//!    the rpm database lock free ([`settle`], [`watch`], [`rpmlock`]);
//! 2. check that `package.json` parses as a JSON object ([`release`]); a half-written or invalid
//!    file never triggers a rollover;
//! 3. `handoff reload --if-changed` ([`handoff`]): handoff rolls over only when the file differs
//!    from the one the running generation was started with, so an install that fires many events,
//!    an rpm scriptlet's own reload and this trigger together cause exactly one rollover.
//!
//! Changes that land while a cycle runs start another cycle (the watch stays open throughout), so
//! a release is never missed because it arrived while the previous one was being rolled out.

pub mod cli;
pub mod error;
pub mod handoff;
pub mod rpmlock;
pub mod settle;
pub mod watch;

/// The release marker is shared with handoff, which hashes it the same way.
pub use handoff_common::release;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use error::TriggerError;
use handoff::Reloader;
use release::ReleaseError;
use rpmlock::LockState;
use settle::{Settle, Verdict};
use watch::{DirWatcher, Relevance, Scope};

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Options {
    /// Absolute path of the release's version file (`/opt/APP/package.json`).
    pub version_file: PathBuf,
    /// Quiet period that makes an install settled.
    pub settle: Duration,
    /// Give up on a cycle that has not settled after this long.
    pub max_wait: Duration,
    /// The package manager's lock file, if any.
    pub rpm_lock: Option<PathBuf>,
    /// Watch the whole tree under the directory (else the directory alone).
    pub recursive: bool,
    /// Directories (relative to the watched one, or absolute) whose changes do not count.
    pub excludes: Vec<PathBuf>,
    /// Keep running and handle every release (else one cycle, then exit).
    pub watch: bool,
    /// How to ask handoff for the rollover.
    pub reloader: Reloader,
    /// How often to look at the lock and the directory while waiting.
    pub poll: Duration,
}

/// How a cycle ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// handoff was asked; it rolled over, or found the release unchanged.
    Asked,
    /// No control socket: the app is not running, it will start with the new release.
    NotRunning,
    /// No version file (a removed package): nothing to roll over to.
    NoRelease,
}

/// A oneshot run handles at most this many cycles (changes that land during a rollover start
/// another cycle); a bound, so that a directory that never stops changing cannot keep it alive.
const MAX_ROUNDS: u32 = 10;

/// One cycle's check and rollover request, once settled.
fn check_and_reload(opts: &Options) -> Result<Done, TriggerError> {
    let release = match release::read_release(&opts.version_file) {
        Ok(r) => r,
        Err(ReleaseError::Missing { path }) => {
            tracing::info!("{} is absent; nothing to roll over to", path.display());
            return Ok(Done::NoRelease);
        }
        Err(e) => return Err(TriggerError::InvalidRelease(e)),
    };
    if let Some(control) = opts.reloader.control_missing() {
        tracing::info!(
            "release settled: {release}; handoff is not running (no {}), it will start with this release",
            control.display()
        );
        return Ok(Done::NotRunning);
    }
    tracing::info!("release settled: {release}; asking handoff to roll over if it changed");
    // A control socket that exists but does not answer belongs to a handoff that is starting,
    // restarting (killed, systemd about to clean up and start it again) or gone without cleanup.
    // The release must not be dropped then: ask again until handoff answers, or its socket is gone
    // (not running: the next start reads the new release), bounded by --wait-running.
    let deadline = Instant::now() + opts.reloader.wait_running;
    let mut told = false;
    loop {
        match opts.reloader.reload_if_changed() {
            // (Only with a known control path: without one, "gone" cannot be told apart.)
            Err(TriggerError::Unavailable { .. })
                if opts.reloader.control.is_some() && Instant::now() < deadline =>
            {
                if let Some(control) = opts.reloader.control_missing() {
                    tracing::info!(
                        "handoff went away (no {}); it will start with this release",
                        control.display()
                    );
                    return Ok(Done::NotRunning);
                }
                if !told {
                    tracing::info!(
                        "handoff does not answer yet (starting or restarting?); asking again for up to {:?}",
                        opts.reloader.wait_running
                    );
                    told = true;
                }
                std::thread::sleep(RETRY_UNAVAILABLE);
            }
            Err(e) => return Err(e),
            Ok(()) => break,
        }
    }
    tracing::info!("handoff reload --if-changed succeeded (rolled over, or release unchanged)");
    Ok(Done::Asked)
}

/// How often to ask again while handoff's control socket exists but nobody answers.
const RETRY_UNAVAILABLE: Duration = Duration::from_millis(250);

/// Runs the trigger: one cycle (then returns its result), or forever with `opts.watch`.
pub fn run(opts: &Options) -> Result<Done, TriggerError> {
    let scope = Scope::new(&opts.version_file, &opts.excludes);
    let dir = scope.root().to_path_buf();
    let watch_err = |source| TriggerError::Watch {
        dir: dir.clone(),
        source,
    };
    let mut watcher = DirWatcher::new(scope, opts.recursive).map_err(watch_err)?;
    let t0 = Instant::now();
    let mut settle = Settle::new(t0, opts.settle, opts.max_wait);
    // Both modes start with a cycle: the oneshot was started because of a change; the watcher
    // catches up with a release that landed while it was not running (handoff's --if-changed makes
    // that a no-op when there is none).
    let mut pending = true;
    let mut lock_logged = false;
    let mut lock_held = false;
    let mut rounds = 0u32;
    let mut last: Result<Done, TriggerError> = Ok(Done::Asked);

    loop {
        // 1. Wait for events, at most until the next decision is due.
        let tick = if pending {
            match settle.verdict(Instant::now()) {
                Verdict::Wait(d) => d.min(opts.poll),
                _ => Duration::ZERO,
            }
        } else if opts.watch {
            opts.poll
        } else {
            // oneshot, done: a short grace for events still in flight from the last rollover
            Duration::from_millis(100)
        };
        let mut next = watcher.recv_timeout(tick);
        while let Some(rel) = next {
            let now = Instant::now();
            match rel {
                Relevance::Ignore => {}
                Relevance::Change => settle.change(now),
                Relevance::VersionFile | Relevance::Rescan => {
                    if !pending {
                        tracing::debug!("{rel:?}: a new cycle starts");
                        pending = true;
                        settle.restart(now);
                    }
                    settle.change(now);
                }
            }
            next = watcher.try_recv();
        }
        if let Some(rel) = watcher.check_root().map_err(watch_err)? {
            if !pending {
                pending = true;
                settle.restart(Instant::now());
            }
            tracing::debug!("{rel:?}: directory replaced");
            settle.change(Instant::now());
        }

        if !pending {
            if opts.watch {
                continue;
            }
            return last;
        }

        // 2. A package manager transaction in progress counts as a change.
        if let Some(lock) = &opts.rpm_lock {
            match rpmlock::probe(lock) {
                Ok(LockState::Held) => {
                    lock_held = true;
                    if !lock_logged {
                        tracing::info!(
                            "{} is held: a package transaction is running; waiting for it",
                            lock.display()
                        );
                        lock_logged = true;
                    }
                    settle.change(Instant::now());
                }
                Ok(LockState::Free | LockState::Absent) => {
                    if lock_held {
                        // The quiet period starts when the transaction is seen over, not at the
                        // last poll that found it running.
                        tracing::info!(
                            "{} released; waiting for the install to settle",
                            lock.display()
                        );
                        settle.change(Instant::now());
                    }
                    lock_held = false;
                    lock_logged = false;
                }
                Err(e) => {
                    if !lock_logged {
                        tracing::warn!("cannot probe {}: {e}; not waiting for it", lock.display());
                        lock_logged = true;
                    }
                }
            }
        }

        // 3. Decide.
        let now = Instant::now();
        match settle.verdict(now) {
            Verdict::Wait(_) => continue,
            Verdict::GaveUp => {
                let err = TriggerError::NotSettled {
                    dir: dir.clone(),
                    waited: settle.elapsed(now),
                };
                if !opts.watch {
                    tracing::error!("{err}");
                    return Err(err);
                }
                tracing::error!("{err}; still watching");
                settle.restart(now); // keep waiting, and say so again after another max_wait
            }
            Verdict::Settled => {
                tracing::debug!(
                    "settled after {:?} ({} changes seen)",
                    settle.elapsed(now),
                    settle.changes()
                );
                pending = false;
                rounds += 1;
                last = check_and_reload(opts);
                if let Err(e) = &last {
                    tracing::error!("{e}");
                }
                settle.restart(Instant::now());
                if !opts.watch && rounds >= MAX_ROUNDS {
                    tracing::warn!("{MAX_ROUNDS} releases in one run; stopping here");
                    return last;
                }
            }
        }
    }
}
