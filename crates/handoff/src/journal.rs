//! Journal streams: under journald, each worker's stdout/stderr is a journal stream of its
//! own, opened by the worker's child process itself (see `spawn.rs`), so journald records the
//! worker's pid and unit and an identifier that names its slot (`node@w1`), the same across
//! generations: `journalctl -u handoff@APP -t node@w1` follows worker 1 through rollovers, and
//! `_PID=` (in handoff's own lines: `pid=`) picks one generation's worker.
#![allow(unsafe_code)]

/// A journald stdout stream for a worker, opened by the child itself after fork, so the
/// journal records the worker's own pid and unit, under an identifier that names its
/// slot (`node@w1`, see [`identifier`]). This is the protocol systemd uses for a service's stdout.
pub struct JournalStream {
    pub(crate) addr: libc::sockaddr_un,
    pub(crate) addr_len: libc::socklen_t,
    /// The stream header: identifier, unit id, priority, level prefix, forwarding flags.
    pub(crate) header: Vec<u8>,
}

impl JournalStream {
    pub const SOCKET: &'static str = "/run/systemd/journal/stdout";

    /// `unit` (handoff's own unit, e.g. `handoff@app.service`) goes into the header: journald
    /// uses it when a worker exits before journald could read which unit its pid belongs to.
    pub fn new(identifier: &str, unit: &str) -> JournalStream {
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = Self::SOCKET.as_bytes();
        for (i, b) in path.iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let addr_len =
            (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
        let clean = |t: &str| t.chars().filter(|c| !c.is_control()).collect::<String>();
        let (ident, unit) = (clean(identifier), clean(unit));
        // identifier, unit id, priority 6 (info), level prefix on (a line starting "<3>" is an
        // error), no syslog/kmsg/console forwarding: what systemd itself sends for a service.
        let header = format!("{ident}\n{unit}\n6\n1\n0\n0\n0\n").into_bytes();
        JournalStream {
            addr,
            addr_len,
            header,
        }
    }
}

/// The journal identifier of the worker in `slot`, started from `program` (`node@w1`).
pub fn identifier(program: &str, slot: usize) -> String {
    format!("{program}@w{slot}")
}

/// The systemd unit this process runs in (`handoff@app.service`), from its cgroup path.
pub fn own_unit() -> Option<String> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}
