//! Exit codes, from sysexits.h, which systemd and shell scripts understand. One table for both
//! binaries: scripts (rpm scriptlets, Ansible, the `.path` unit) branch on these.

/// Success.
pub const OK: i32 = 0;
/// `reload`: the rollover failed (rolled back, partial or refused) and the old generation
/// serves; `run`: the first generation failed.
pub const FAILED: i32 = 1;
/// EX_USAGE: bad command line.
pub const USAGE: i32 = 64;
/// EX_DATAERR: a release's `package.json` is invalid (`handoff-trigger`).
pub const INVALID_RELEASE: i32 = 65;
/// EX_UNAVAILABLE: no running handoff answers on the control socket.
pub const UNAVAILABLE: i32 = 69;
/// EX_SOFTWARE: anything else that went wrong.
pub const SOFTWARE: i32 = 70;
/// EX_TEMPFAIL: try again later (an install that did not settle, a reload that timed out).
pub const TEMPFAIL: i32 = 75;
/// EX_NOPERM: the control socket exists but this user may not use it.
pub const NOPERM: i32 = 77;
/// EX_CONFIG: the configuration is invalid.
pub const CONFIG: i32 = 78;

/// Every code with its meaning, for `--help` texts and man pages.
pub const TABLE: &[(i32, &str)] = &[
    (
        OK,
        "success (the new generation serves, or nothing needed to change)",
    ),
    (
        FAILED,
        "the rollover failed and the previous generation still serves (or the first generation failed)",
    ),
    (USAGE, "bad command line"),
    (
        INVALID_RELEASE,
        "the release's package.json is invalid (handoff-trigger)",
    ),
    (
        UNAVAILABLE,
        "no handoff answers on the control socket (not running?)",
    ),
    (SOFTWARE, "internal error"),
    (
        TEMPFAIL,
        "try again later: the install did not settle, or the request timed out",
    ),
    (NOPERM, "permission denied on the control socket"),
    (CONFIG, "invalid configuration"),
];

/// The table as man-page / `--help` text.
pub fn table_text() -> String {
    TABLE
        .iter()
        .map(|(c, m)| format!("  {c:>3}  {m}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<i32> = super::TABLE.iter().map(|(c, _)| *c).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), super::TABLE.len());
    }
}
