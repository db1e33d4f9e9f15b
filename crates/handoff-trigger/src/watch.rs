//! Watching the install directory with the `notify` crate (inotify on Linux).
//!
//! The directory is watched, never the file: packages replace `package.json` by rename, which a
//! watch on the file's old inode would miss. A queue overflow means events were lost: it is
//! reported as [`Relevance::Rescan`] (look again, assume the release may have changed). The
//! directory may not exist yet, or be replaced as a whole (a release switched by renaming a
//! directory or a symlink): [`DirWatcher::check_root`] notices and watches the new one.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// What an event means for the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relevance {
    /// Not a change (a read, an open, or under an excluded directory).
    Ignore,
    /// Something in the install changed: the install has not settled.
    Change,
    /// The version file itself changed (written, replaced, removed).
    VersionFile,
    /// Events were lost or the directory itself was replaced: look again.
    Rescan,
}

/// Which paths matter.
#[derive(Debug, Clone)]
pub struct Scope {
    root: PathBuf,
    version_file: PathBuf,
    excludes: Vec<PathBuf>,
}

impl Scope {
    /// `version_file` must be absolute; its parent is the watched directory. Relative `excludes`
    /// are taken relative to that directory.
    pub fn new(version_file: &Path, excludes: &[PathBuf]) -> Self {
        let root = version_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let excludes = excludes
            .iter()
            .map(|e| {
                if e.is_absolute() {
                    e.clone()
                } else {
                    root.join(e)
                }
            })
            .collect();
        Scope {
            root,
            version_file: version_file.to_path_buf(),
            excludes,
        }
    }

    /// The watched directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The version file.
    pub fn version_file(&self) -> &Path {
        &self.version_file
    }

    /// Classifies one event.
    pub fn classify(&self, ev: &Event) -> Relevance {
        if ev.need_rescan() {
            return Relevance::Rescan;
        }
        match ev.kind {
            // closing a file opened for writing is the end of a write: a change
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            // opens, reads, closes after reading (handoff and the app read package.json)
            EventKind::Access(_) => return Relevance::Ignore,
            _ => {}
        }
        if ev.paths.is_empty() {
            return Relevance::Change;
        }
        let mut change = false;
        for p in &ev.paths {
            if p == &self.version_file {
                return Relevance::VersionFile;
            }
            if p == &self.root {
                // the directory itself moved away or was deleted: a new release may be in place
                if matches!(
                    ev.kind,
                    EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(_))
                        | EventKind::Create(_)
                ) {
                    return Relevance::Rescan;
                }
                change = true;
                continue;
            }
            if !p.starts_with(&self.root) {
                continue; // an ancestor's event while the directory does not exist yet
            }
            if self.excludes.iter().any(|e| p.starts_with(e)) {
                continue;
            }
            change = true;
        }
        if change {
            Relevance::Change
        } else {
            Relevance::Ignore
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Watching the directory with this (device, inode).
    Watching(u64, u64),
    /// The directory does not exist; watching its nearest existing ancestor.
    Waiting,
}

/// A watch on the install directory that survives the directory being created or replaced.
pub struct DirWatcher {
    scope: Scope,
    recursive: bool,
    tx: Sender<notify::Result<Event>>,
    rx: Receiver<notify::Result<Event>>,
    watcher: Option<RecommendedWatcher>,
    state: State,
}

fn dir_id(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p)
        .ok()
        .filter(fs::Metadata::is_dir)
        .map(|m| (m.dev(), m.ino()))
}

impl DirWatcher {
    /// Starts watching (recursively unless `recursive` is false).
    pub fn new(scope: Scope, recursive: bool) -> notify::Result<Self> {
        let (tx, rx) = channel();
        let mut w = DirWatcher {
            scope,
            recursive,
            tx,
            rx,
            watcher: None,
            state: State::Waiting,
        };
        w.establish()?;
        Ok(w)
    }

    /// The scope this watcher classifies events with.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Whether the directory exists and is being watched.
    pub fn watching(&self) -> bool {
        matches!(self.state, State::Watching(..))
    }

    fn establish(&mut self) -> notify::Result<()> {
        self.watcher = None; // drops every old watch
        let root = self.scope.root.clone();
        if let Some(id) = dir_id(&root) {
            let mut last_err = None;
            if self.recursive {
                // A tree being installed can lose a subdirectory while notify walks it; retry.
                for _ in 0..5 {
                    let mut w = notify::recommended_watcher(self.tx.clone())?;
                    match w.watch(&root, RecursiveMode::Recursive) {
                        Ok(()) => {
                            self.watcher = Some(w);
                            break;
                        }
                        Err(e) => {
                            last_err = Some(e);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            }
            if self.watcher.is_none() {
                if let Some(e) = last_err {
                    tracing::warn!(
                        "cannot watch {} recursively ({e}); watching only the directory itself \
                         (raise fs.inotify.max_user_watches, or pass --shallow to silence this)",
                        root.display()
                    );
                }
                let mut w = notify::recommended_watcher(self.tx.clone())?;
                w.watch(&root, RecursiveMode::NonRecursive)?;
                self.watcher = Some(w);
            }
            self.state = State::Watching(id.0, id.1);
            tracing::debug!(
                "watching {} ({})",
                root.display(),
                if self.recursive {
                    "recursive"
                } else {
                    "shallow"
                }
            );
        } else {
            let mut anc = root.parent();
            while let Some(a) = anc {
                if dir_id(a).is_some() {
                    break;
                }
                anc = a.parent();
            }
            let anc = anc.unwrap_or(Path::new("/")).to_path_buf();
            let mut w = notify::recommended_watcher(self.tx.clone())?;
            w.watch(&anc, RecursiveMode::NonRecursive)?;
            self.watcher = Some(w);
            self.state = State::Waiting;
            tracing::info!(
                "{} does not exist yet; waiting for it (watching {})",
                root.display(),
                anc.display()
            );
        }
        Ok(())
    }

    /// Notices a directory that appeared, disappeared or was replaced since the last call, and
    /// watches the new one. Returns `Some(Rescan)` when that happened.
    pub fn check_root(&mut self) -> notify::Result<Option<Relevance>> {
        let now = dir_id(&self.scope.root);
        let same = match (self.state, now) {
            (State::Watching(d, i), Some(n)) => (d, i) == n,
            (State::Waiting, None) => true,
            _ => false,
        };
        if same {
            return Ok(None);
        }
        tracing::info!(
            "{} {}; watching it anew",
            self.scope.root.display(),
            if now.is_some() {
                "appeared or was replaced"
            } else {
                "disappeared"
            }
        );
        self.establish()?;
        Ok(Some(Relevance::Rescan))
    }

    fn map(&self, r: notify::Result<Event>) -> Relevance {
        match r {
            Ok(ev) => {
                let rel = self.scope.classify(&ev);
                tracing::trace!("{:?} {:?} -> {rel:?}", ev.kind, ev.paths);
                rel
            }
            Err(e) => {
                // e.g. the inotify watch limit while following new subdirectories, or a read error:
                // events may be missing, so look again.
                tracing::warn!("watch error: {e}; rescanning");
                Relevance::Rescan
            }
        }
    }

    /// Waits up to `timeout` for the next event; `None` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Relevance> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(self.map(r)),
            Err(RecvTimeoutError::Timeout) => None,
            // cannot happen: we hold a sender
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Relevance> {
        match self.rx.try_recv() {
            Ok(r) => Some(self.map(r)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind, RenameMode};

    fn scope() -> Scope {
        Scope::new(
            Path::new("/opt/app/package.json"),
            &[PathBuf::from("logs"), PathBuf::from("/opt/app/run")],
        )
    }

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn version_file_events() {
        let s = scope();
        let pj = "/opt/app/package.json";
        // written in place
        assert_eq!(
            s.classify(&ev(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &[pj]
            )),
            Relevance::VersionFile
        );
        assert_eq!(
            s.classify(&ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[pj]
            )),
            Relevance::VersionFile
        );
        // replaced by rename: the new name shows up as the rename's target
        assert_eq!(
            s.classify(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/opt/app/.package.json.tmp", pj]
            )),
            Relevance::VersionFile
        );
        assert_eq!(
            s.classify(&ev(EventKind::Remove(RemoveKind::File), &[pj])),
            Relevance::VersionFile
        );
    }

    #[test]
    fn reads_are_not_changes() {
        let s = scope();
        for k in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Read,
            AccessKind::Any,
        ] {
            assert_eq!(
                s.classify(&ev(EventKind::Access(k), &["/opt/app/package.json"])),
                Relevance::Ignore
            );
        }
    }

    #[test]
    fn other_files_are_changes_unless_excluded() {
        let s = scope();
        let create = EventKind::Create(CreateKind::File);
        assert_eq!(
            s.classify(&ev(create, &["/opt/app/node_modules/x/index.js"])),
            Relevance::Change
        );
        assert_eq!(
            s.classify(&ev(create, &["/opt/app/node_modules/x/package.json"])),
            Relevance::Change,
            "only the top-level package.json is the version file"
        );
        assert_eq!(
            s.classify(&ev(create, &["/opt/app/logs/today.log"])),
            Relevance::Ignore
        );
        assert_eq!(
            s.classify(&ev(create, &["/opt/app/run/app.pid"])),
            Relevance::Ignore
        );
        assert_eq!(
            s.classify(&ev(create, &["/opt/app/logsX"])),
            Relevance::Change,
            "exclusion is by path component"
        );
        // outside the directory (the ancestor watched while waiting for it)
        assert_eq!(s.classify(&ev(create, &["/opt/other"])), Relevance::Ignore);
    }

    #[test]
    fn overflow_and_root_replacement_rescan() {
        let s = scope();
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(s.classify(&overflow), Relevance::Rescan);
        assert_eq!(
            s.classify(&ev(EventKind::Create(CreateKind::Folder), &["/opt/app"])),
            Relevance::Rescan
        );
        assert_eq!(
            s.classify(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &["/opt/app"]
            )),
            Relevance::Rescan
        );
        assert_eq!(
            s.classify(&ev(
                EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
                &["/opt/app"]
            )),
            Relevance::Change
        );
        assert_eq!(s.classify(&Event::new(EventKind::Any)), Relevance::Change);
    }
}
