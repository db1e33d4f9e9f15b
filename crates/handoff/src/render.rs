//! Human-readable `handoff status`. Text that came from a release or a worker (a version, a
//! `STATUS=`, a rollover's message) is shown through [`printable`]: an ESC in a worker's status
//! must not repaint the operator's terminal. `--json` carries the raw values instead.

use std::fmt::Write;
use std::time::Duration;

use crate::duration::human;
use crate::protocol::StatusReport;
use crate::text::printable;

fn ago(ms: u64) -> String {
    human(Duration::from_millis(ms))
}

pub fn status(r: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "handoff pid {}, up {}; generation {} serving, {}/{} workers ready{}",
        r.pid,
        ago(r.uptime_ms),
        r.current_generation,
        r.ready,
        r.workers_wanted,
        if r.shutting_down {
            "; SHUTTING DOWN"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "sockets: {}", printable(&r.listeners.join(", ")));
    if let Some(st) = &r.settings {
        let _ = writeln!(
            o,
            "settings in force: {} worker(s), {}; ready {} within {}; drain {} within {}{}{}{}",
            st.workers,
            if st.rolling {
                "rolling"
            } else {
                "whole generation"
            },
            printable(&st.ready),
            printable(&st.ready_timeout),
            printable(&st.drain_signal),
            printable(&st.drain_timeout),
            match (&st.user, &st.group) {
                (Some(u), Some(g)) => format!("; user {} group {}", printable(u), printable(g)),
                (Some(u), None) => format!("; user {}", printable(u)),
                _ => String::new(),
            },
            if st.environment.is_empty() {
                String::new()
            } else {
                format!("; environment {}", printable(&st.environment.join(" ")))
            },
            format_args!("; command {}", printable(&st.command.join(" "))),
        );
    }
    if let (Some(f), Some(d)) = (&r.config_file, &r.config_differs) {
        let _ = writeln!(
            o,
            "CONFIG FILE DIFFERS: {}: {}",
            printable(&f.display().to_string()),
            printable(d)
        );
    }
    for g in &r.generations {
        let tag = if g.number == r.current_generation {
            " (current)"
        } else if Some(g.number) == r.rolling_over_to {
            " (starting)"
        } else {
            ""
        };
        let version = match &g.version {
            Some(v) => match (&v.version, &v.error) {
                (_, Some(e)) => format!("; version file: {}", printable(e)),
                (Some(ver), None) => format!(
                    "; version {} (sha256 {})",
                    printable(ver),
                    printable(v.hash.get(..12).unwrap_or(&v.hash))
                ),
                (None, None) => format!(
                    "; {} sha256 {}",
                    printable(&v.path.display().to_string()),
                    printable(v.hash.get(..12).unwrap_or(&v.hash))
                ),
            },
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "generation {}{tag}: started {} ago{version}",
            g.number,
            ago(g.age_ms)
        );
        for w in r.workers.iter().filter(|w| w.generation == g.number) {
            let _ = writeln!(
                o,
                "  worker {:<3} pid {:<8} {:<9} age {}{}",
                w.slot,
                w.pid,
                printable(&w.state),
                ago(w.age_ms),
                w.status
                    .as_ref()
                    .map(|s| format!("  \"{}\"", printable(s)))
                    .unwrap_or_default()
            );
        }
    }
    for s in r
        .slots
        .iter()
        .filter(|s| s.restart_in_ms.is_some() || s.crashes > 0)
    {
        let _ = writeln!(
            o,
            "slot {}: {} crash(es) in a row{}{}",
            s.slot,
            s.crashes,
            if s.crashes >= 3 {
                " (crash-looping)"
            } else {
                ""
            },
            s.restart_in_ms
                .map(|ms| format!(", restart in {}", ago(ms)))
                .unwrap_or_default()
        );
    }
    if let Some(g) = r.rolling_over_to {
        let _ = writeln!(
            o,
            "rollover to generation {g} in progress; {} more queued",
            r.queued_reloads
        );
    }
    if let Some(st) = &r.stabilizing {
        let slots: Vec<String> = st.slots.iter().map(|s| s.to_string()).collect();
        let then = if r.current_generation == 0 {
            "the start completes then"
        } else {
            "the old ones serve until then"
        };
        let _ = writeln!(
            o,
            "generation {} stabilizing, {} left (min_uptime {}; new worker(s) {} ready, {then})",
            st.generation,
            ago(st.left_ms),
            ago(st.min_uptime_ms),
            slots.join(",")
        );
    }
    match &r.last_rollover {
        Some(l) => {
            let _ = writeln!(
                o,
                "last rollover: generation {} {} in {}, {} ago: {}",
                l.generation,
                l.outcome,
                ago(l.duration_ms),
                ago(l.ago_ms),
                printable(&l.message)
            );
            if l.forced_kills > 0 {
                let _ = writeln!(
                    o,
                    "WARNING: {} of that rollover {} SIGKILLed at the drain timeout; requests {} held were cut",
                    if l.forced_kills == 1 {
                        "1 worker".to_string()
                    } else {
                        format!("{} workers", l.forced_kills)
                    },
                    if l.forced_kills == 1 { "was" } else { "were" },
                    if l.forced_kills == 1 { "it" } else { "they" },
                );
            }
        }
        None => o.push_str("last rollover: none yet\n"),
    }
    if r.forced_kills > 0 {
        let _ = writeln!(
            o,
            "workers SIGKILLed at the drain timeout since start: {} (raise --drain-timeout, or make the app finish its requests on the drain signal)",
            r.forced_kills
        );
    }
    if r.log_lines_dropped > 0 {
        let _ = writeln!(
            o,
            "handoff log lines dropped (its stderr was not writable): {}",
            r.log_lines_dropped
        );
    }
    if let Some(last) = &r.last_reexec {
        // The message can quote a path: no control characters on the terminal.
        let _ = writeln!(
            o,
            "reexec: {} since start; last: {}",
            r.reexecs,
            printable(last)
        );
    }
    o
}
