//! The worker contract, one home: what a worker process is handed.
//!
//! - fds 0-2 as handoff's (or a journal stream of its own under journald, see `journal.rs`),
//!   the listening sockets at 3..3+n, nothing else (`spawn.rs` moves them there);
//! - `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` (its own pid, written by the child itself);
//! - `NOTIFY_SOCKET`: its own notify socket;
//! - `HANDOFF_GENERATION`, `HANDOFF_WORKER` (the slot);
//! - with `watchdog =`: `WATCHDOG_USEC` (the interval) and `WATCHDOG_PID` (its own pid,
//!   written by the child), as systemd gives a service: the worker pings `WATCHDOG=1` on its
//!   `NOTIFY_SOCKET`. Never handoff's own values from systemd;
//! - with `user =`: `USER`, `LOGNAME`, `HOME` of that user;
//! - everything else of handoff's own environment, except what [`HANDOFF_ONLY`] and
//!   [`MAIN_PROCESS_ONLY`] name.

use std::ffi::OsString;
use std::path::Path;

use crate::spawn::Credentials;

/// Variables meant for handoff alone: taken (and removed from the environment) at the top of
/// `main`, never passed to a worker or a hook.
pub const HANDOFF_ONLY: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    // `handoff reexec`'s handover (reexec.rs), set for the new image alone.
    crate::reexec::STATE_ENV,
    crate::reexec::FALLBACK_ENV,
    crate::reexec::FAILED_ENV,
];

/// What systemd gives the service's main process (handoff) alone; a worker must not act on
/// them, so they are not passed on (hooks, run for the operator, still get them):
///
/// - `WATCHDOG_USEC`, `WATCHDOG_PID`: handoff pings systemd; a worker library that saw them
///   would ping handoff's notify socket for nothing, or believe it is watched.
/// - `SYSTEMD_EXEC_PID`: handoff's pid, not the worker's.
/// - `FDSTORE`: the fd store is handoff's (a worker's `FDSTORE=1` is dropped).
/// - `RUNTIME_DIRECTORY`: handoff's runtime dir (`RuntimeDirectory=handoff-APP`): its control
///   socket and the notify sockets live there, and nothing of the app should.
///
/// Kept, because they describe the service every process of it belongs to:
/// `INVOCATION_ID` (journal correlation), `CREDENTIALS_DIRECTORY` (the app's `LoadCredential=`),
/// `STATE_DIRECTORY` and the other per-app directories, `MEMORY_PRESSURE_*`, `JOURNAL_STREAM`.
pub const MAIN_PROCESS_ONLY: &[&str] = &[
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SYSTEMD_EXEC_PID",
    "FDSTORE",
    "RUNTIME_DIRECTORY",
];

/// Variables handoff sets per worker; inherited values of them are dropped.
const PER_WORKER: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "HANDOFF_GENERATION",
    "HANDOFF_WORKER",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Names the worker contract owns (set per worker, or kept from workers): `[environment]` may
/// not give them.
pub fn set_by_handoff(name: &str) -> bool {
    PER_WORKER.contains(&name)
        || MAIN_PROCESS_ONLY.contains(&name)
        || HANDOFF_ONLY.contains(&name)
        || name == "JOURNAL_STREAM"
}

/// What makes one worker's environment.
pub struct WorkerEnv<'a> {
    /// handoff's environment (already without [`HANDOFF_ONLY`]).
    pub base: &'a [(OsString, OsString)],
    pub listeners: usize,
    /// `LISTEN_FDNAMES`: the sockets' names, colon-separated.
    pub fd_names: &'a str,
    pub notify_socket: &'a Path,
    pub generation: u64,
    pub slot: usize,
    pub credentials: Option<&'a Credentials>,
    /// The generation's `[environment]`: replaces inherited values of the same name.
    pub extra: &'a [(String, String)],
    /// The worker gets a journal stream of its own (the child sets `JOURNAL_STREAM`).
    pub journal: bool,
    /// Its generation's `watchdog`: `WATCHDOG_USEC` (the child adds `WATCHDOG_PID`).
    pub watchdog: Option<std::time::Duration>,
}

impl WorkerEnv<'_> {
    /// The complete environment but `LISTEN_PID` (and `JOURNAL_STREAM` with a journal
    /// stream), which only the child can know.
    pub fn build(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .base
            .iter()
            .filter(|(k, _)| {
                let k = k.to_str().unwrap_or_default();
                let replaced = PER_WORKER.contains(&k)
                    || MAIN_PROCESS_ONLY.contains(&k)
                    || (self.journal && k == "JOURNAL_STREAM")
                    || (self.credentials.is_some() && matches!(k, "USER" | "LOGNAME" | "HOME"))
                    || self.extra.iter().any(|(e, _)| e == k);
                !replaced
            })
            .cloned()
            .collect();
        env.extend(self.extra.iter().map(|(k, v)| (k.into(), v.into())));
        let mut set = |k: &str, v: OsString| env.push((k.into(), v));
        set("LISTEN_FDS", self.listeners.to_string().into());
        set("LISTEN_FDNAMES", self.fd_names.into());
        set("NOTIFY_SOCKET", self.notify_socket.as_os_str().to_owned());
        set("HANDOFF_GENERATION", self.generation.to_string().into());
        set("HANDOFF_WORKER", self.slot.to_string().into());
        if let Some(d) = self.watchdog {
            set("WATCHDOG_USEC", d.as_micros().to_string().into());
        }
        if let Some(c) = self.credentials {
            // What a login (or systemd's User=) would set, unless `[environment]` says
            // otherwise: the operator's explicit value wins, and a name appears once.
            let given = |k: &str| self.extra.iter().any(|(e, _)| e == k);
            for (k, v) in [
                ("USER", OsString::from(&c.name)),
                ("LOGNAME", OsString::from(&c.name)),
                ("HOME", c.home.clone().into_os_string()),
            ] {
                if !given(k) {
                    set(k, v);
                }
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Vec<&'a OsString> {
        env.iter().filter(|(n, _)| n == k).map(|(_, v)| v).collect()
    }

    #[test]
    fn per_worker_values_replace_inherited_ones() {
        let base: Vec<(OsString, OsString)> = [
            ("PATH", "/usr/bin"),
            ("HANDOFF_WORKER", "7"),
            ("LISTEN_FDS", "9"),
            ("JOURNAL_STREAM", "1:2"),
            ("HOME", "/root"),
            ("WATCHDOG_USEC", "30000000"),
            ("RUNTIME_DIRECTORY", "/run/handoff-app"),
            ("INVOCATION_ID", "abc"),
        ]
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let creds = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
            name: "nobody".into(),
            home: "/nonexistent".into(),
        };
        let env = WorkerEnv {
            base: &base,
            listeners: 2,
            fd_names: "http:admin",
            notify_socket: Path::new("/run/x/notify/g1-w0"),
            generation: 3,
            slot: 1,
            credentials: Some(&creds),
            extra: &[],
            journal: true,
            watchdog: None,
        }
        .build();
        assert_eq!(get(&env, "PATH"), ["/usr/bin"]);
        assert_eq!(get(&env, "HANDOFF_WORKER"), ["1"]);
        assert_eq!(get(&env, "HANDOFF_GENERATION"), ["3"]);
        assert_eq!(get(&env, "LISTEN_FDS"), ["2"]);
        assert_eq!(get(&env, "LISTEN_FDNAMES"), ["http:admin"]);
        assert_eq!(get(&env, "HOME"), ["/nonexistent"]);
        assert_eq!(get(&env, "USER"), ["nobody"]);
        assert!(
            get(&env, "JOURNAL_STREAM").is_empty(),
            "the child sets its own"
        );
        assert!(get(&env, "LISTEN_PID").is_empty(), "the child sets its own");
        assert!(get(&env, "WATCHDOG_USEC").is_empty());
        assert!(get(&env, "RUNTIME_DIRECTORY").is_empty());
        assert_eq!(get(&env, "INVOCATION_ID"), ["abc"]);
    }

    #[test]
    fn the_generations_environment_replaces_inherited_values_once() {
        let base: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/usr/bin".into()),
            ("NODE_ENV".into(), "development".into()),
        ];
        let creds = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
            name: "nobody".into(),
            home: "/nonexistent".into(),
        };
        let extra = [
            ("NODE_ENV".to_string(), "production".to_string()),
            ("HOME".to_string(), "/srv/app".to_string()),
        ];
        let env = WorkerEnv {
            base: &base,
            listeners: 1,
            fd_names: "http",
            notify_socket: Path::new("/run/x/notify/n"),
            generation: 2,
            slot: 0,
            credentials: Some(&creds),
            extra: &extra,
            journal: false,
            watchdog: None,
        }
        .build();
        assert_eq!(get(&env, "NODE_ENV"), ["production"]);
        assert_eq!(get(&env, "HOME"), ["/srv/app"]);
        assert_eq!(get(&env, "USER"), ["nobody"]);
        assert_eq!(get(&env, "PATH"), ["/usr/bin"]);
    }

    #[test]
    fn a_worker_watchdog_is_its_own_never_handoffs() {
        // handoff's own WATCHDOG_USEC from systemd (30 s) must not reach the worker; the
        // generation's watchdog (2 s) does, once.
        let base: Vec<(OsString, OsString)> = vec![
            ("WATCHDOG_USEC".into(), "30000000".into()),
            ("WATCHDOG_PID".into(), "1".into()),
        ];
        let env = |watchdog| {
            WorkerEnv {
                base: &base,
                listeners: 1,
                fd_names: "http",
                notify_socket: Path::new("/run/x/notify/n"),
                generation: 1,
                slot: 0,
                credentials: None,
                extra: &[],
                journal: false,
                watchdog,
            }
            .build()
        };
        let on = env(Some(std::time::Duration::from_secs(2)));
        assert_eq!(get(&on, "WATCHDOG_USEC"), ["2000000"]);
        assert!(
            get(&on, "WATCHDOG_PID").is_empty(),
            "the child sets its own"
        );
        let off = env(None);
        assert!(get(&off, "WATCHDOG_USEC").is_empty());
        assert!(get(&off, "WATCHDOG_PID").is_empty());
    }
}
