//! What the machine shows: `handoff status` and systemd's one-line `STATUS=`.

use std::time::{Duration, Instant};

use handoff_common::duration::human;
use handoff_common::protocol::{
    GenerationStatus, Outcome, RolloverStatus, SettingsStatus, SlotExit, SlotStatus,
    StabilizingStatus, StatusReport, WorkerStatus,
};

use super::{CRASH_LOOP, Machine, Occupant, Phase, Policy, RolloverPhase};
use crate::config::ReadyMode;

/// A duration as the config file takes it: `500ms`, `60s`.
pub fn config_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// How `handoff status` shows a generation's settings.
pub fn settings_status(p: &Policy) -> SettingsStatus {
    SettingsStatus {
        workers: p.workers,
        command: p.command.clone(),
        ready: match p.ready {
            ReadyMode::Notify => "notify".into(),
            ReadyMode::Delay(d) => format!("delay:{}", config_duration(d)),
        },
        ready_timeout: config_duration(p.ready_timeout),
        drain_timeout: config_duration(p.drain_timeout),
        drain_signal: p.drain_signal.as_str().to_string(),
        rolling: p.rolling,
        min_uptime: config_duration(p.min_uptime),
        soak: config_duration(p.soak),
        user: p.user.clone(),
        group: p.group.clone(),
        environment: p.environment.iter().map(|(k, _)| k.clone()).collect(),
        working_directory: p.working_directory.clone(),
        watchdog: p.watchdog.map(config_duration),
        max_memory: p.max_memory,
        max_age: p.max_age.map(config_duration),
    }
}

impl Machine {
    /// Slots whose worker is ready.
    pub fn ready_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| match s.occupant {
                Occupant::Worker(id) => self
                    .workers
                    .get(&id)
                    .is_some_and(|w| matches!(w.phase, Phase::Ready { .. })),
                _ => false,
            })
            .count()
    }

    /// The report behind `handoff status` (the executor adds handoff's pid and sockets).
    pub fn status(&self, now: Instant) -> StatusReport {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .filter_map(|(id, w)| {
                Some(WorkerStatus {
                    slot: w.slot,
                    generation: w.generation,
                    pid: w.pid?,
                    state: w.phase.name().to_string(),
                    age_ms: ms(now.saturating_duration_since(w.started)),
                    status: w.status.clone(),
                    // Sampled by the executor (the machine reads no /proc).
                    rss_bytes: None,
                    cpu_ms: None,
                    processes: None,
                    runs_on_disk: w.runs_on_disk.clone(),
                    watchdog_ago_ms: match w.phase {
                        Phase::Ready { since }
                            if self.settings_of(w.generation).watchdog.is_some() =>
                        {
                            Some(ms(now.saturating_duration_since(w.pinged_since(since))))
                        }
                        _ => None,
                    },
                    replacing: self
                        .slots
                        .get(w.slot)
                        .and_then(|s| s.incoming.as_ref())
                        .filter(|i| i.worker == *id)
                        .map(|i| i.reason.describe()),
                })
            })
            .collect();
        workers.sort_by_key(|w| (std::cmp::Reverse(w.generation), w.slot, w.pid));
        let generations = self
            .generations
            .iter()
            .rev()
            .map(|(n, g)| GenerationStatus {
                number: *n,
                version: g.version.clone(),
                age_ms: ms(now.saturating_duration_since(g.started)),
                release_dir: g.release.as_ref().and_then(|r| r.as_ref().ok()).cloned(),
            })
            .collect();
        StatusReport {
            pid: 0,
            uptime_ms: ms(now.saturating_duration_since(self.started)),
            current_generation: self.current,
            workers_wanted: self.slots.len(),
            ready: self.ready_count(),
            listeners: vec![],
            generations,
            workers,
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotStatus {
                    slot: i,
                    crashes: s.crashes,
                    restart_in_ms: match s.occupant {
                        Occupant::Restarting { at } => Some(ms(at.saturating_duration_since(now))),
                        _ => None,
                    },
                    replacing: s.incoming.as_ref().map(|i| i.reason.describe()),
                    last_replacement: s.last_replacement.as_ref().map(|r| r.message.clone()),
                    last_replacement_ago_ms: s
                        .last_replacement
                        .as_ref()
                        .map(|r| ms(now.saturating_duration_since(r.at))),
                    restarts: s.restarts,
                    last_exit: s.last_exit.as_ref().map(|e| SlotExit {
                        pid: e.pid,
                        generation: e.generation,
                        status: e.status.to_string(),
                        kind: e.kind,
                        drained_because: e.drained_because.clone(),
                        ago_ms: ms(now.saturating_duration_since(e.at)),
                    }),
                })
                .collect(),
            rolling_over_to: match &self.rollover {
                RolloverPhase::Running(ro) => Some(ro.generation),
                _ => None,
            },
            queued_reloads: self.queued.len(),
            last_rollover: self.last.as_ref().map(|l| RolloverStatus {
                generation: l.generation,
                outcome: l.outcome,
                message: l.message.clone(),
                duration_ms: ms(l.duration),
                ago_ms: ms(now.saturating_duration_since(l.at)),
                forced_kills: l.forced_kills,
            }),
            shutting_down: self.shutting_down(),
            forced_kills: self.forced_kills,
            log_lines_dropped: 0,
            settings: Some(settings_status(self.in_force())),
            config_file: None,
            config_differs: None,
            stabilizing: self.stabilizing(now),
            status_line: Some(self.status_line()),
            reexecs: 0,
            last_reexec: None,
        }
    }

    /// The running rollover's stability window, if its new workers are in one.
    pub fn stabilizing(&self, now: Instant) -> Option<StabilizingStatus> {
        let RolloverPhase::Running(ro) = &self.rollover else {
            return None;
        };
        let at = ro.stable_at?;
        let mut slots: Vec<usize> = ro
            .pending
            .iter()
            .filter_map(|id| self.workers.get(id).map(|w| w.slot))
            .collect();
        slots.sort_unstable();
        Some(StabilizingStatus {
            generation: ro.generation,
            slots,
            left_ms: at.saturating_duration_since(now).as_millis() as u64,
            // The window's own generation's (a config reload may have changed it since the
            // start).
            min_uptime_ms: self.window(ro).as_millis() as u64,
        })
    }

    /// The one-line summary systemd shows (`systemctl status`). It is sent when it changes,
    /// so it holds no countdown (a stability window shows its length, not the time left).
    pub fn status_line(&self) -> String {
        let n = self.slots.len();
        let ready = self.ready_count();
        let mut line = if self.current == 0 {
            // Nothing serves yet: the first generation is starting.
            let starting_ready = match &self.rollover {
                RolloverPhase::Running(ro) => ro
                    .pending
                    .iter()
                    .filter(|id| {
                        self.workers
                            .get(id)
                            .is_some_and(|w| matches!(w.phase, Phase::Ready { .. }))
                    })
                    .count(),
                _ => 0,
            };
            format!("starting: {starting_ready}/{n} ready")
        } else {
            format!("gen {}: {ready}/{n} ready", self.current)
        };
        if let Some(v) = self
            .generations
            .get(&self.current)
            .and_then(|g| g.version.as_ref())
            .and_then(|v| v.version.as_ref())
        {
            line.push_str(&format!("; version {v}"));
        }
        if let RolloverPhase::Running(ro) = &self.rollover
            && self.current != 0
        {
            line.push_str(&format!(
                "; rolling over to gen {} ({} of {n} switched)",
                ro.generation, ro.switched
            ));
        }
        if let RolloverPhase::Running(ro) = &self.rollover
            && ro.stable_at.is_some()
        {
            line.push_str(&format!(
                "; gen {} stabilizing ({} {})",
                ro.generation,
                if self.soaking(ro) {
                    "soak"
                } else {
                    "min_uptime"
                },
                human(self.window(ro))
            ));
        }
        if let Some(last) = &self.last {
            let word = match last.outcome {
                Outcome::Ok | Outcome::Unchanged | Outcome::Refused => last.outcome.to_string(),
                // Shouted: this is what an operator must not miss in `systemctl status`.
                Outcome::RolledBack | Outcome::Partial => last.outcome.to_string().to_uppercase(),
            };
            line.push_str(&format!(
                "; last rollover {word} in {}",
                human(last.duration)
            ));
            if last.forced_kills > 0 {
                line.push_str(&format!(
                    ", {} FORCE-KILLED at the drain timeout",
                    plural_worker(last.forced_kills)
                ));
            }
        }
        // A crash loop shows at a glance, between restarts too; a single restart is shorter.
        let looping: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.crashes >= CRASH_LOOP)
            .map(|(i, s)| format!("slot {i} crash-looping ({} crashes in a row)", s.crashes))
            .collect();
        let crashing: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.crashes < CRASH_LOOP && matches!(s.occupant, Occupant::Restarting { .. })
            })
            .map(|(i, s)| format!("w{i}×{}", s.crashes))
            .collect();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(inc) = &s.incoming {
                line.push_str(&format!("; replacing w{i} ({})", inc.reason.short()));
            }
        }
        if !crashing.is_empty() {
            line.push_str(&format!("; restarting {}", crashing.join(",")));
        }
        for l in looping {
            line.push_str(&format!("; {l}"));
        }
        line
    }
}

fn plural_worker(n: u32) -> String {
    if n == 1 {
        "1 worker".into()
    } else {
        format!("{n} workers")
    }
}
