//! Is a package manager transaction running? rpm holds a write lock on `/var/lib/rpm/.rpm.lock`
//! (an fcntl record lock) for a whole transaction, scriptlets included; some tools use flock(2)
//! instead. We probe both without taking a lock that could get in rpm's way.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, Flock, FlockArg, fcntl};

/// The lock file rpm uses by default.
pub const DEFAULT_RPM_LOCK: &str = "/var/lib/rpm/.rpm.lock";

/// The state of a lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// No such file: no rpm database here, nothing to wait for.
    Absent,
    /// The file exists and nobody holds a write (exclusive) lock on it.
    Free,
    /// Somebody holds a write lock: a transaction is running.
    Held,
}

/// Would a read lock conflict with somebody else's write lock? Asked with F_OFD_GETLK, which also
/// sees classic fcntl locks of this very process (useful in tests), falling back to F_GETLK.
fn record_lock_held(file: &File) -> io::Result<bool> {
    let mut probe = libc::flock {
        l_type: libc::F_RDLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // the whole file
        l_pid: 0, // must be 0 for F_OFD_GETLK
    };
    match fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => {}
        Err(Errno::EINVAL) => {
            // kernel before 3.15: classic locks only
            probe.l_type = libc::F_RDLCK as libc::c_short;
            probe.l_pid = 0;
            fcntl(file.as_fd(), FcntlArg::F_GETLK(&mut probe)).map_err(io::Error::from)?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// Probes the lock file at `path`.
pub fn probe(path: &Path) -> io::Result<LockState> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockState::Absent),
        Err(e) => return Err(e),
    };
    if record_lock_held(&file)? {
        return Ok(LockState::Held);
    }
    // A shared flock is granted unless somebody holds an exclusive one; it is released when the
    // guard (and with it our own open file description) is dropped right away.
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_guard) => Ok(LockState::Free),
        Err((_, Errno::EWOULDBLOCK)) => Ok(LockState::Held),
        Err((_, e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn temp_lock(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "handoff-trigger-rpmlock-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(".rpm.lock");
        std::fs::write(&p, b"").unwrap();
        p
    }

    #[test]
    fn absent_file() {
        assert_eq!(
            probe(Path::new("/nonexistent/handoff/.rpm.lock")).unwrap(),
            LockState::Absent
        );
    }

    #[test]
    fn fcntl_write_lock_is_seen() {
        let p = temp_lock("fcntl");
        assert_eq!(probe(&p).unwrap(), LockState::Free);
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let lk = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // a classic record lock, as rpm takes it
        fcntl(f.as_fd(), FcntlArg::F_SETLK(&lk)).unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Held);
        drop(f); // closing releases it
        assert_eq!(probe(&p).unwrap(), LockState::Free);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn exclusive_flock_is_seen() {
        let p = temp_lock("flock");
        let f = File::open(&p).unwrap();
        let guard = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Held);
        drop(guard);
        assert_eq!(probe(&p).unwrap(), LockState::Free);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn shared_flock_is_not_a_transaction() {
        let p = temp_lock("shared");
        let f = File::open(&p).unwrap();
        let _reader = Flock::lock(f, FlockArg::LockSharedNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Free);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}
