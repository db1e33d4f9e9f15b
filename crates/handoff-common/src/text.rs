//! Text that handoff did not write (a release's version, a worker's `STATUS=`, a file name)
//! made safe to show: [`printable`] is the one function every place uses before such text
//! reaches a terminal, a log line or systemd.
//!
//! A newline in an sd_notify value is a new assignment to systemd (`WATCHDOG_USEC=`,
//! `MAINPID=`); an ESC, BEL or CR on an operator's terminal repaints, rings or overwrites it.
//! Control characters (C0, DEL, C1), line and paragraph separators and the bidirectional
//! overrides ("Trojan Source") are written as Rust escapes (`\n`, `\r`, `\u{1b}`), visibly and
//! on one line; everything else, other languages included, is kept as it is. Machine-readable
//! output (`--json`) carries the raw value, JSON-escaped, instead.

use std::borrow::Cow;

/// Whether `c` must not be shown raw.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character escaped, on one line. Borrowed when nothing needed it.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_or_systemd_would_act_on() {
        assert_eq!(
            printable("1.2.3\nWATCHDOG_USEC=1000000\nMAINPID=1"),
            "1.2.3\\nWATCHDOG_USEC=1000000\\nMAINPID=1"
        );
        assert_eq!(printable("\u{1b}[2J\u{7}\rx"), "\\u{1b}[2J\\u{7}\\rx");
        assert_eq!(printable("a\u{9b}b\u{7f}"), "a\\u{9b}b\\u{7f}");
        assert_eq!(printable("x\u{202e}y\u{2028}"), "x\\u{202e}y\\u{2028}");
        assert_eq!(printable("tab\there"), "tab\\there");
    }

    #[test]
    fn plain_text_is_kept_and_borrowed() {
        for s in ["gen 2: 2/2 ready", "Bereit: größer als 3 €", "就绪", ""] {
            assert!(matches!(printable(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn output_never_holds_a_control_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let p = printable(&all);
        assert!(!p.chars().any(is_unsafe));
        assert!(!p.contains('\n'));
    }
}
