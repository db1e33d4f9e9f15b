//! Human-readable `handoff status`. Text that came from a release or a worker (a version, a
//! `STATUS=`, a rollover's message) is shown through [`printable`]: an ESC in a worker's status
//! must not repaint the operator's terminal. `--json` carries the raw values instead.

use std::fmt::Write;
use std::time::Duration;

use crate::duration::human;
use crate::protocol::{ExitKind, SlotExit, SlotStatus, StatusReport, WorkerStatus};
use crate::text::printable;

fn ago(ms: u64) -> String {
    human(Duration::from_millis(ms))
}

/// A duration for a table cell: `850ms`, `12.4s`, `3m05s`, `2h03m`, `3d04h`.
fn short(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    }
}

/// Bytes for a table cell, in binary units as `free -h` writes them: `81.2M`, `1.4G`.
fn bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f < K * K {
        format!("{:.0}K", f / K)
    } else if f < K * K * K {
        format!("{:.1}M", f / (K * K))
    } else {
        format!("{:.2}G", f / (K * K * K))
    }
}

/// A slot's last exit in a few words: `exit 1, crash, 3m05s ago`, `SIGKILL, killed at the
/// drain timeout, 12.0s ago`, `drained (replaced), 2m01s ago`.
fn exit_words(e: &SlotExit) -> String {
    let status = if let Some(code) = e.status.strip_prefix("exited with status ") {
        format!("exit {code}")
    } else if let Some(sig) = e.status.strip_prefix("was killed by ") {
        sig.to_string()
    } else {
        e.status.clone()
    };
    let what = match (e.kind, &e.drained_because) {
        // A drained worker's own status is of little interest, unless it failed.
        (ExitKind::Drained, Some(why)) if e.status == "exited with status 0" => {
            format!("drained ({why})")
        }
        (ExitKind::Drained, Some(why)) => format!("{status}, drained ({why})"),
        (ExitKind::Drained, None) => format!("{status}, drained"),
        (kind, _) => format!("{status}, {kind}"),
    };
    format!("{}, {} ago", printable(&what), short(e.ago_ms))
}

/// One row per worker, as `pm2 list` shows its processes: readable at 64 workers.
fn worker_table(o: &mut String, workers: &[WorkerStatus], slots: &[SlotStatus]) {
    let header = [
        "slot",
        "gen",
        "pid",
        "state",
        "uptime",
        "memory",
        "cpu",
        "procs",
        "ping",
        "restarts",
        "crashes",
        "last exit of the slot",
        "STATUS=",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 13]> = workers
        .iter()
        .map(|w| {
            let slot = slots.iter().find(|s| s.slot == w.slot);
            let last = slot
                .and_then(|s| s.last_exit.as_ref())
                .map(exit_words)
                .unwrap_or_else(dash);
            let said = w
                .status
                .as_ref()
                .map(|st| format!("\"{}\"", printable(st)))
                .unwrap_or_default();
            [
                w.slot.to_string(),
                w.generation.to_string(),
                w.pid.to_string(),
                printable(&w.state).into_owned(),
                short(w.age_ms),
                w.rss_bytes.map(bytes).unwrap_or_else(dash),
                w.cpu_ms.map(short).unwrap_or_else(dash),
                w.processes.map(|n| n.to_string()).unwrap_or_else(dash),
                // With a watchdog: since its last WATCHDOG=1.
                w.watchdog_ago_ms.map(short).unwrap_or_else(dash),
                slot.map(|s| s.restarts.to_string()).unwrap_or_else(dash),
                slot.map(|s| s.crashes.to_string()).unwrap_or_else(dash),
                last,
                said,
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                // Numbers right-aligned, words left-aligned.
                let right = matches!(i, 1 | 2 | 5 | 6 | 7 | 8 | 9 | 10);
                let pad = " ".repeat(width[i] - c.chars().count());
                if right {
                    l.push_str(&pad);
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    l.push_str(&pad);
                }
                l.push_str("  ");
            }
        }
        let _ = writeln!(o, "  {}", l.trim_end());
    };
    line(&header);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
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
    if let Some(line) = &r.status_line {
        let _ = writeln!(o, "systemd status: {}", printable(line));
    }
    let _ = writeln!(o, "sockets: {}", printable(&r.listeners.join(", ")));
    if let Some(st) = &r.settings {
        let _ = writeln!(
            o,
            "settings in force: {} worker(s), {}; ready {} within {}; drain {} within {}{}{}{}{}",
            st.workers,
            if !st.rolling {
                "whole generation".to_string()
            } else if !st.soak.is_empty() && st.soak != "0s" {
                format!("rolling, first slot soaks {}", printable(&st.soak))
            } else {
                "rolling".to_string()
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
            st.working_directory
                .as_ref()
                .map(|d| format!(" in {}", printable(&d.display().to_string())))
                .unwrap_or_default(),
        );
        let mut health = Vec::new();
        if let Some(w) = &st.watchdog {
            health.push(format!("watchdog {}", printable(w)));
        }
        if let Some(m) = st.max_memory {
            health.push(format!("max_memory {:.1} MiB", m as f64 / 1048576.0));
        }
        if let Some(a) = &st.max_age {
            health.push(format!("max_age {}", printable(a)));
        }
        if !health.is_empty() {
            let _ = writeln!(o, "worker health: {}", health.join(", "));
        }
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
        let release = g
            .release_dir
            .as_ref()
            .map(|d| format!("; release {}", printable(&d.display().to_string())))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "generation {}{tag}: started {} ago{version}{release}",
            g.number,
            ago(g.age_ms)
        );
    }
    if !r.workers.is_empty() {
        worker_table(&mut o, &r.workers, &r.slots);
        for w in &r.workers {
            if let Some(note) = &w.runs_on_disk {
                // Under the table: a sentence, too long for a cell.
                let _ = writeln!(o, "  worker {} {}", w.slot, printable(note));
            }
        }
    }
    for s in r
        .slots
        .iter()
        .filter(|s| s.restart_in_ms.is_some() || s.crashes > 0)
    {
        let _ = writeln!(
            o,
            "slot {}: {} crash(es) in a row{}{}{}",
            s.slot,
            s.crashes,
            if s.crashes >= 3 {
                " (crash-looping)"
            } else {
                ""
            },
            s.restart_in_ms
                .map(|ms| format!(", restart in {}", ago(ms)))
                .unwrap_or_default(),
            // A slot without a worker has no row in the table: its last exit goes here.
            s.last_exit
                .as_ref()
                .filter(|_| s.restart_in_ms.is_some())
                .map(|e| format!("; last exit: pid {} {}", e.pid, exit_words(e)))
                .unwrap_or_default()
        );
    }
    for s in &r.slots {
        if let Some(why) = &s.replacing {
            let _ = writeln!(o, "slot {}: being replaced: {}", s.slot, printable(why));
        }
        if let (Some(m), Some(ms)) = (&s.last_replacement, s.last_replacement_ago_ms) {
            let _ = writeln!(o, "slot {}: {} ago: {}", s.slot, ago(ms), printable(m));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: &str, kind: ExitKind, why: Option<&str>) -> SlotExit {
        SlotExit {
            pid: 7,
            generation: 1,
            status: status.into(),
            kind,
            drained_because: why.map(Into::into),
            ago_ms: 185_000,
        }
    }

    #[test]
    fn a_last_exit_reads_in_a_few_words() {
        let cases = [
            (
                exit("exited with status 1", ExitKind::Crash, None),
                "exit 1, crash, 3m05s ago",
            ),
            (
                exit("was killed by SIGTERM", ExitKind::Stopped, None),
                "SIGTERM, stopped from outside, 3m05s ago",
            ),
            (
                exit("exited with status 0", ExitKind::Drained, Some("replaced")),
                "drained (replaced), 3m05s ago",
            ),
            (
                exit(
                    "exited with status 2",
                    ExitKind::Drained,
                    Some("rolled back"),
                ),
                "exit 2, drained (rolled back), 3m05s ago",
            ),
            (
                exit("was killed by SIGKILL", ExitKind::Killed, Some("replaced")),
                "SIGKILL, killed at the drain timeout, 3m05s ago",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(exit_words(&e), want);
        }
        // A drain reason comes from handoff, but status text is escaped all the same.
        let e = exit("exited with status 0", ExitKind::Drained, Some("x\x1b[2J"));
        assert!(!exit_words(&e).contains('\x1b'));
    }

    #[test]
    fn cells_are_short() {
        assert_eq!(short(850), "850ms");
        assert_eq!(short(12_400), "12.4s");
        assert_eq!(short(185_000), "3m05s");
        assert_eq!(short(7_380_000), "2h03m");
        assert_eq!(short(273_600_000), "3d04h");
        assert_eq!(bytes(512 * 1024), "512K");
        assert_eq!(bytes(85_144_371), "81.2M");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.00G");
    }

    #[test]
    fn the_table_lines_up_with_a_row_per_worker() {
        let w = |slot: usize, pid: i32, rss: Option<u64>| WorkerStatus {
            slot,
            generation: 3,
            pid,
            state: "ready".into(),
            age_ms: 5000,
            status: None,
            rss_bytes: rss,
            cpu_ms: rss.map(|_| 1200),
            processes: rss.map(|_| 1),
            runs_on_disk: None,
            watchdog_ago_ms: None,
            replacing: None,
        };
        let slots: Vec<SlotStatus> = (0..2)
            .map(|slot| SlotStatus {
                slot,
                crashes: slot as u32,
                restart_in_ms: None,
                restarts: 10 * slot as u32,
                last_exit: None,
                replacing: None,
                last_replacement: None,
                last_replacement_ago_ms: None,
            })
            .collect();
        let mut o = String::new();
        worker_table(
            &mut o,
            &[w(0, 4_000_001, Some(85_144_371)), w(1, 12, None)],
            &slots,
        );
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines.len(), 3, "{o}");
        // Right-aligned numbers: the memory column ends at the same place on every line.
        let end = |l: &str, cell: &str| l.find(cell).map(|i| i + cell.len());
        assert_eq!(end(lines[0], "memory"), end(lines[1], "81.2M"), "{o}");
        assert_eq!(end(lines[1], "4000001"), end(lines[2], " 12"), "{o}");
        // An unreadable worker shows dashes, not zeros; restarts come from its slot.
        assert!(lines[2].contains(" - ") && lines[2].contains(" 10 "), "{o}");
    }
}
