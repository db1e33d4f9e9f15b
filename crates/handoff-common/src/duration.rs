//! Human durations for the CLI and the config file: `500ms`, `5s`, `2m`, `1h`, `1m30s`.
//!
//! A bare number is refused on purpose: "10" in a timeout field is ambiguous (systemd reads
//! seconds, many tools read milliseconds), and a wrong guess here kills workers.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 500ms, 5s, 2m".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number, e.g. 500ms, 5s, 2m"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" | "min" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (ms, s, m or h), e.g. {value}s"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ));
            }
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    if total > MAX {
        // Deadlines are `now + duration`: an absurd value would overflow the clock.
        return Err(format!(
            "invalid duration {text:?}: longer than the maximum of 365 days"
        ));
    }
    Ok(total)
}

/// The longest duration [`parse`] accepts: longer than any sane timeout, far from overflowing
/// a deadline computed from it.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Formats a duration the way status lines show it: `0.8 s`, `12 ms`, `3 m 5 s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{} m {} s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse(" 0s ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_ambiguous_or_garbage() {
        assert!(parse("10").unwrap_err().contains("missing unit"));
        assert!(parse("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("expected a number"));
        assert!(parse("").is_err());
        assert!(parse("-5s").is_err());
        assert!(
            parse("99999999999999999999999s")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse("9999999999999999999h")
                .unwrap_err()
                .contains("maximum")
        );
        assert_eq!(parse("8760h").unwrap(), MAX);
        assert!(parse("8761h").unwrap_err().contains("maximum"));
    }

    #[test]
    fn human_output() {
        assert_eq!(human(Duration::from_millis(12)), "12 ms");
        assert_eq!(human(Duration::from_millis(800)), "800 ms");
        assert_eq!(human(Duration::from_millis(1800)), "1.8 s");
        assert_eq!(human(Duration::from_secs(185)), "3 m 5 s");
    }
}
