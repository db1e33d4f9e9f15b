//! The comparison: every contender, the same worker, the same load, K rollovers each, one
//! table.
//!
//! Per contender: start it, start the clients, let them run `warmup` (not counted) and
//! `steady` seconds, then roll over up to K times (a `gap` between rollovers, at most
//! `budget` seconds in all), let the clients run `tail` more, stop. A request is "in a
//! rollover" when its lifetime overlaps a window [trigger, old generation gone]; the others
//! are steady state.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::contenders::{
    Contender, Handoff, HandoffConfig, Paths, PlainRestart, Pm2, ServerStarter, WorkerKind,
};
use crate::load::{self, LoadSpec, Sample};
use crate::procfs;
use crate::stats::{Counts, Latency, Window, WindowIndex, median_f64, quantile, split_windows};

/// The contenders, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    HandoffWhole,
    HandoffRolling,
    PlainRestart,
    ServerStarter,
    HandoffWholeNode,
    PlainRestartNode,
    Pm2,
    HandoffWholeEgg,
    HandoffRollingEgg,
    PlainRestartEgg,
    Pm2Egg,
}

impl Kind {
    /// What `compare` and `all` run when not told otherwise.
    pub const DEFAULT: [Kind; 7] = [
        Kind::HandoffWhole,
        Kind::HandoffRolling,
        Kind::PlainRestart,
        Kind::ServerStarter,
        Kind::HandoffWholeNode,
        Kind::PlainRestartNode,
        Kind::Pm2,
    ];

    /// Everything `--only` knows: the default set and the Egg app's rows (which `busy`
    /// runs).
    pub const ALL: [Kind; 11] = [
        Kind::HandoffWhole,
        Kind::HandoffRolling,
        Kind::PlainRestart,
        Kind::ServerStarter,
        Kind::HandoffWholeNode,
        Kind::PlainRestartNode,
        Kind::Pm2,
        Kind::HandoffWholeEgg,
        Kind::HandoffRollingEgg,
        Kind::PlainRestartEgg,
        Kind::Pm2Egg,
    ];

    /// The contenders `busy` runs for a worker.
    pub fn busy_set(worker: WorkerKind) -> Vec<Kind> {
        match worker {
            WorkerKind::Egg => vec![
                Kind::HandoffWholeEgg,
                Kind::HandoffRollingEgg,
                Kind::PlainRestartEgg,
                Kind::Pm2Egg,
            ],
            WorkerKind::Node => vec![Kind::HandoffWholeNode, Kind::PlainRestartNode, Kind::Pm2],
            WorkerKind::Rust => vec![Kind::HandoffWhole, Kind::HandoffRolling, Kind::PlainRestart],
        }
    }

    /// The name on the command line (`--only`).
    pub fn id(self) -> &'static str {
        match self {
            Kind::HandoffWhole => "handoff",
            Kind::HandoffRolling => "handoff-rolling",
            Kind::PlainRestart => "plain-restart",
            Kind::ServerStarter => "start-server",
            Kind::HandoffWholeNode => "handoff-node",
            Kind::PlainRestartNode => "plain-restart-node",
            Kind::Pm2 => "pm2",
            Kind::HandoffWholeEgg => "handoff-egg",
            Kind::HandoffRollingEgg => "handoff-rolling-egg",
            Kind::PlainRestartEgg => "plain-restart-egg",
            Kind::Pm2Egg => "pm2-egg",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::HandoffWhole | Kind::HandoffWholeEgg => "handoff (whole generation)",
            Kind::HandoffRolling | Kind::HandoffRollingEgg => "handoff --rolling",
            Kind::PlainRestart | Kind::PlainRestartEgg => "plain restart (baseline)",
            Kind::ServerStarter => "Server::Starter start_server",
            Kind::HandoffWholeNode => "handoff (whole generation)",
            Kind::PlainRestartNode => "plain restart (baseline)",
            Kind::Pm2 | Kind::Pm2Egg => "PM2 cluster, pm2 reload",
        }
    }

    pub fn worker(self) -> WorkerKind {
        match self {
            Kind::HandoffWholeNode | Kind::PlainRestartNode | Kind::Pm2 => WorkerKind::Node,
            Kind::HandoffWholeEgg
            | Kind::HandoffRollingEgg
            | Kind::PlainRestartEgg
            | Kind::Pm2Egg => WorkerKind::Egg,
            _ => WorkerKind::Rust,
        }
    }

    /// Worker starts that happen one after another in a rollover (rolling modes replace one
    /// worker at a time, so each one's start is on the critical path).
    pub fn sequential_starts(self, workers: usize) -> usize {
        match self {
            Kind::HandoffRolling | Kind::Pm2 | Kind::HandoffRollingEgg | Kind::Pm2Egg => workers,
            _ => 1,
        }
    }

    pub fn is_handoff(self) -> bool {
        matches!(
            self,
            Kind::HandoffWhole
                | Kind::HandoffRolling
                | Kind::HandoffWholeNode
                | Kind::HandoffWholeEgg
                | Kind::HandoffRollingEgg
        )
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.id() == s)
    }
}

/// Everything a comparison run is given.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kinds: Vec<Kind>,
    pub workers: usize,
    /// Rollovers per contender (at most; see `budget`).
    pub rollovers: usize,
    /// Rollovers per contender for the slow peers (start_server, PM2) and the Node rows.
    pub peer_rollovers: usize,
    /// Time limit for one contender's rollovers.
    pub budget: Duration,
    pub warmup: Duration,
    pub steady: Duration,
    pub gap: Duration,
    pub tail: Duration,
    pub new_conn_clients: usize,
    pub keepalive_clients: usize,
    pub interval: Duration,
    /// The keep-alive clients' own interval (busy mode), else `interval`.
    pub keepalive_interval: Option<Duration>,
    pub timeout: Duration,
    /// start_server's --interval (seconds).
    pub starter_interval: u32,
    /// Extra environment for handoff (busy mode: `HANDOFF_BOOT_PRIORITY`).
    pub handoff_env: Vec<(String, String)>,
    /// How often the plain restart measures the worker's own start (0: not at all).
    pub calibration_reps: usize,
}

/// What one contender did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContenderResult {
    pub kind: Kind,
    pub label: String,
    pub worker: WorkerKind,
    pub workers: usize,
    /// Why it was left out, if it was.
    pub left_out: Option<String>,
    pub rollovers: usize,
    pub rollover_errors: Vec<String>,
    pub counts: Counts,
    pub counts_new_conn: Counts,
    pub counts_keepalive: Counts,
    /// Failed requests whose lifetime overlaps a rollover window.
    pub failed_in_windows: u64,
    pub steady: Latency,
    pub during: Latency,
    pub steady_new_conn: Latency,
    pub during_new_conn: Latency,
    pub steady_keepalive: Latency,
    pub during_keepalive: Latency,
    /// handoff: requests overlapping the start phase [trigger, new generation serves], and
    /// those overlapping only the drain phase [new serves, old gone].
    pub during_start_phase: Latency,
    pub during_drain_phase: Latency,
    /// trigger → old generation gone, per rollover.
    pub durations_ms: Vec<f64>,
    /// trigger → the supervisor said the new generation serves, per rollover.
    pub switch_ms: Vec<f64>,
    /// Plain restart: the worker's own start (exec → READY=1) and drain (SIGTERM → exit).
    pub start_own_ms: Vec<f64>,
    /// Plain restart: each single worker's own start.
    pub start_each_ms: Vec<f64>,
    /// Plain restart: the worker's own start on a private listener (see [`crate::contenders::Calibration`]).
    pub calib_single_ms: Vec<f64>,
    pub calib_generation_ms: Vec<f64>,
    pub drain_own_ms: Vec<f64>,
    pub supervisor_rss_kib: Option<u64>,
    pub supervisor_cpu_ms_per_rollover: Option<f64>,
    pub client_errors: Vec<String>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    #[serde(skip)]
    pub windows: Vec<Window>,
    /// Per window: when the supervisor said the new generation serves (µs since the epoch).
    #[serde(skip)]
    pub switch_us: Vec<Option<u64>>,
    pub seconds: f64,
}

impl ContenderResult {
    fn empty(kind: Kind, workers: usize) -> Self {
        ContenderResult {
            kind,
            label: kind.label().into(),
            worker: kind.worker(),
            workers,
            left_out: None,
            rollovers: 0,
            rollover_errors: Vec::new(),
            counts: Counts::default(),
            counts_new_conn: Counts::default(),
            counts_keepalive: Counts::default(),
            failed_in_windows: 0,
            steady: Latency::default(),
            during: Latency::default(),
            steady_new_conn: Latency::default(),
            during_new_conn: Latency::default(),
            steady_keepalive: Latency::default(),
            during_keepalive: Latency::default(),
            during_start_phase: Latency::default(),
            during_drain_phase: Latency::default(),
            durations_ms: Vec::new(),
            switch_ms: Vec::new(),
            start_own_ms: Vec::new(),
            start_each_ms: Vec::new(),
            calib_single_ms: Vec::new(),
            calib_generation_ms: Vec::new(),
            drain_own_ms: Vec::new(),
            supervisor_rss_kib: None,
            supervisor_cpu_ms_per_rollover: None,
            client_errors: Vec::new(),
            samples: Vec::new(),
            windows: Vec::new(),
            switch_us: Vec::new(),
            seconds: 0.0,
        }
    }

    pub fn failed_per_1k(&self) -> Option<f64> {
        (self.rollovers > 0).then(|| self.counts.failed as f64 * 1000.0 / self.rollovers as f64)
    }
}

/// Runs every contender of the plan; ports come from `ports` (one per contender).
pub fn run(plan: &Plan, paths: &Paths, ports: &[u16]) -> Result<Vec<ContenderResult>> {
    let mut results = Vec::new();
    for (i, &kind) in plan.kinds.iter().enumerate() {
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[i]).parse()?;
        let mut r = ContenderResult::empty(kind, plan.workers);
        if kind == Kind::ServerStarter {
            r.workers = 1;
        }
        eprintln!(
            "== {} ({} worker) on {addr}",
            kind.label(),
            kind.worker().name()
        );
        match make(kind, plan, paths, addr) {
            Err(reason) => {
                eprintln!("   left out: {reason}");
                r.left_out = Some(reason);
            }
            Ok(mut c) => {
                let k = match kind {
                    Kind::HandoffWhole | Kind::HandoffRolling | Kind::PlainRestart => {
                        plan.rollovers
                    }
                    _ => plan.peer_rollovers,
                };
                run_one(c.as_mut(), plan, addr, k, &mut r)
                    .with_context(|| format!("running {}", kind.id()))?;
                eprintln!(
                    "   {} rollovers, {} requests, {} failed ({}), rollover median {:.1} ms",
                    r.rollovers,
                    r.counts.requests,
                    r.counts.failed,
                    r.counts.failures_text(),
                    median_f64(&r.durations_ms).unwrap_or(f64::NAN)
                );
            }
        }
        results.push(r);
    }
    Ok(results)
}

fn make(
    kind: Kind,
    plan: &Plan,
    paths: &Paths,
    addr: SocketAddr,
) -> Result<Box<dyn Contender>, String> {
    let command = paths
        .worker_command(kind.worker())
        .map_err(|e| e.to_string())?;
    let dir = paths.scratch(kind.id()).map_err(|e| e.to_string())?;
    Ok(match kind {
        Kind::HandoffWhole
        | Kind::HandoffRolling
        | Kind::HandoffWholeNode
        | Kind::HandoffWholeEgg
        | Kind::HandoffRollingEgg => Box::new(Handoff::new(
            paths,
            HandoffConfig {
                workers: plan.workers,
                rolling: matches!(kind, Kind::HandoffRolling | Kind::HandoffRollingEgg),
                listen: vec![addr],
                command,
                dir,
                env: plan.handoff_env.clone(),
                args: Vec::new(),
            },
        )),
        Kind::PlainRestart | Kind::PlainRestartNode | Kind::PlainRestartEgg => {
            Box::new(PlainRestart::new(plan.workers, command, addr, dir))
        }
        Kind::ServerStarter => {
            let bin = ServerStarter::available()?;
            let mut s = ServerStarter::new(paths, bin, command, addr, dir);
            s.interval_s = plan.starter_interval;
            Box::new(s)
        }
        Kind::Pm2 | Kind::Pm2Egg => {
            Pm2::available(paths)?;
            Box::new(Pm2::new(paths, kind.worker(), plan.workers, addr, dir))
        }
    })
}

fn run_one(
    c: &mut dyn Contender,
    plan: &Plan,
    addr: SocketAddr,
    k: usize,
    r: &mut ContenderResult,
) -> Result<()> {
    let started = Instant::now();
    let res = (|| -> Result<()> {
        c.start()?;
        let spec = LoadSpec {
            addr,
            new_conn_clients: plan.new_conn_clients,
            keepalive_clients: plan.keepalive_clients,
            interval: plan.interval,
            keepalive_interval: plan.keepalive_interval,
            timeout: plan.timeout,
        };
        let epoch = Instant::now();
        let running = load::start(&spec, epoch);
        std::thread::sleep(plan.warmup + plan.steady);
        let sup = c.supervisor_pid();
        let cpu0 = sup.and_then(|p| procfs::cpu_seconds(p).ok());
        let deadline = Instant::now() + plan.budget;
        let mut timings = Vec::new();
        for _ in 0..k {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(plan.gap);
            match c.rollover() {
                Ok(t) => timings.push(t),
                Err(e) => {
                    eprintln!("   rollover failed: {e:#}");
                    r.rollover_errors.push(format!("{e:#}"));
                    if r.rollover_errors.len() >= 3 {
                        break;
                    }
                }
            }
        }
        let cpu1 = sup.and_then(|p| procfs::cpu_seconds(p).ok());
        std::thread::sleep(plan.tail);
        let recorded = running.finish();
        // The worker's own start, under the same load but away from the served socket.
        let calibration_load = load::start(&spec, epoch);
        let cal = c.calibrate(plan.calibration_reps);
        calibration_load.finish();
        if let Some(cal) = cal? {
            r.calib_single_ms = cal.single_ms;
            r.calib_generation_ms = cal.generation_ms;
        }
        r.supervisor_rss_kib = sup.and_then(|p| procfs::rss_kib(p).ok());
        if let (Some(a), Some(b)) = (cpu0, cpu1)
            && !timings.is_empty()
        {
            r.supervisor_cpu_ms_per_rollover = Some((b - a) * 1000.0 / timings.len() as f64);
        }
        let us = |t: Instant| t.saturating_duration_since(epoch).as_micros() as u64;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        r.rollovers = timings.len();
        r.windows = timings
            .iter()
            .map(|t| Window {
                start_us: us(t.t0),
                end_us: us(t.end),
            })
            .collect();
        r.switch_us = timings.iter().map(|t| t.switched.map(us)).collect();
        r.durations_ms = timings.iter().map(|t| ms(t.end - t.t0)).collect();
        r.switch_ms = timings
            .iter()
            .filter_map(|t| t.switched.map(|s| ms(s - t.t0)))
            .collect();
        r.start_own_ms = timings.iter().filter_map(|t| t.start_own.map(ms)).collect();
        r.start_each_ms = timings
            .iter()
            .flat_map(|t| t.start_each.iter().map(|d| ms(*d)))
            .collect();
        r.drain_own_ms = timings.iter().filter_map(|t| t.drain_own.map(ms)).collect();
        let warm = plan.warmup.as_micros() as u64;
        r.samples = recorded
            .samples
            .into_iter()
            .filter(|s| s.start_us >= warm)
            .collect();
        r.client_errors = recorded.errors;
        summarize(r);
        Ok(())
    })();
    let stopped = c.stop();
    r.seconds = started.elapsed().as_secs_f64();
    res.and(stopped)
}

/// Fills the counts and latencies from the samples and windows.
pub fn summarize(r: &mut ContenderResult) {
    let idx = WindowIndex::new(&r.windows);
    let all = &r.samples;
    r.counts = Counts::of(all.iter());
    r.counts_new_conn = Counts::of(all.iter().filter(|s| !s.keepalive));
    r.counts_keepalive = Counts::of(all.iter().filter(|s| s.keepalive));
    r.failed_in_windows = Counts::of(all.iter().filter(|s| idx.overlaps(s))).failed;
    let steady = |ka: Option<bool>| {
        Latency::of(
            all.iter()
                .filter(|s| ka.is_none_or(|k| s.keepalive == k) && !idx.overlaps(s)),
        )
    };
    let during = |ka: Option<bool>| {
        Latency::of(
            all.iter()
                .filter(|s| ka.is_none_or(|k| s.keepalive == k) && idx.overlaps(s)),
        )
    };
    r.steady = steady(None);
    r.during = during(None);
    r.steady_new_conn = steady(Some(false));
    r.during_new_conn = during(Some(false));
    r.steady_keepalive = steady(Some(true));
    r.during_keepalive = during(Some(true));
    if r.kind.is_handoff() {
        let (start, drain) = split_windows(&r.windows, &r.switch_us);
        let (si, di) = (WindowIndex::new(&start), WindowIndex::new(&drain));
        r.during_start_phase = Latency::of(all.iter().filter(|s| si.overlaps(s)));
        r.during_drain_phase =
            Latency::of(all.iter().filter(|s| di.overlaps(s) && !si.overlaps(s)));
    }
}

/// The worker's own times, medians from the plain restart of the same worker under the same
/// load.
#[derive(Debug, Clone, Copy)]
pub struct OwnTimes {
    /// exec → READY=1 of one worker.
    pub single_start: f64,
    /// exec → the last READY=1 of a whole generation started at once.
    pub generation_start: f64,
    /// SIGTERM → exit of a generation.
    pub drain: f64,
}

pub fn own_times(results: &[ContenderResult], worker: WorkerKind) -> Option<OwnTimes> {
    let b = results.iter().find(|r| {
        matches!(
            r.kind,
            Kind::PlainRestart | Kind::PlainRestartNode | Kind::PlainRestartEgg
        ) && r.worker == worker
            && r.rollovers > 0
    })?;
    Some(OwnTimes {
        single_start: median_f64(&b.calib_single_ms)?,
        generation_start: median_f64(&b.calib_generation_ms)?,
        drain: median_f64(&b.drain_own_ms)?,
    })
}

/// The worker's own start time on a rollover's critical path: one worker's start when it
/// runs alone, N one after another in rolling modes, a whole generation's otherwise.
fn start_on_path(own: &OwnTimes, r: &ContenderResult) -> f64 {
    if r.workers == 1 {
        own.single_start
    } else if r.kind.sequential_starts(r.workers) > 1 {
        r.workers as f64 * own.single_start
    } else {
        own.generation_start
    }
}

/// Median of (rollover − the worker's own start(s) − its own drain): what the supervisor adds.
pub fn overhead_ms(results: &[ContenderResult], r: &ContenderResult) -> Option<f64> {
    let own = own_times(results, r.worker)?;
    let start = start_on_path(&own, r);
    let v: Vec<f64> = r
        .durations_ms
        .iter()
        .map(|d| d - start - own.drain)
        .collect();
    median_f64(&v)
}

/// Median of (rollover − the worker's own start(s)), the definition.
pub fn minus_start_ms(results: &[ContenderResult], r: &ContenderResult) -> Option<f64> {
    let own = own_times(results, r.worker)?;
    let start = start_on_path(&own, r);
    let v: Vec<f64> = r.durations_ms.iter().map(|d| d - start).collect();
    median_f64(&v)
}

fn f1(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn f2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn pct(values: &[f64], q: f64) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    quantile(&v, q)
}

/// The main table (markdown).
pub fn table(results: &[ContenderResult]) -> String {
    let mut s = String::new();
    s.push_str("| contender | worker | rollovers | requests | failed | failed / 1,000 rollovers | p99 steady (ms) | p99 in rollovers (ms) | ratio | rollover, trigger → old gone (median ms) | rollover − worker's own start (median ms) | overhead beyond the worker's start and drain (median ms) |\n");
    s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in results {
        let worker = format!("{} ×{}", r.worker.name(), r.workers);
        if let Some(why) = &r.left_out {
            s.push_str(&format!(
                "| {} | {worker} | left out: {why} | | | | | | | | | |\n",
                r.label
            ));
            continue;
        }
        let minus_start = minus_start_ms(results, r);
        let errors = if r.rollover_errors.is_empty() {
            String::new()
        } else {
            format!(" (+{} failed)", r.rollover_errors.len())
        };
        s.push_str(&format!(
            "| {} | {worker} | {}{errors} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.rollovers,
            r.counts.requests,
            r.counts.failed,
            f1(r.failed_per_1k()),
            f2(r.steady.p99_ms),
            f2(r.during.p99_ms),
            f2(ratio(r.during.p99_ms, r.steady.p99_ms)),
            f1(median_f64(&r.durations_ms)),
            f1(minus_start),
            f1(overhead_ms(results, r)),
        ));
    }
    s
}

/// The details table: failures by kind, by client mode, spread of the rollover time.
pub fn details(results: &[ContenderResult]) -> String {
    let mut s = String::new();
    s.push_str("| contender | worker | failures by kind (of which in rollover windows) | new-conn p99 steady / rollover (ms) | keep-alive p99 steady / rollover (ms) | max in rollovers (ms) | rollover p90 / max (ms) | trigger → new serves (median ms) | supervisor CPU per rollover (ms) | supervisor RSS (MiB) |\n");
    s.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in results.iter().filter(|r| r.left_out.is_none()) {
        s.push_str(&format!(
            "| {} | {} ×{} | {} | {} / {} | {} / {} | {} | {} / {} | {} | {} | {} |\n",
            r.label,
            r.worker.name(),
            r.workers,
            if r.counts.failed == 0 {
                "-".to_string()
            } else {
                format!("{} ({})", r.counts.failures_text(), r.failed_in_windows)
            },
            f2(r.steady_new_conn.p99_ms),
            f2(r.during_new_conn.p99_ms),
            f2(r.steady_keepalive.p99_ms),
            f2(r.during_keepalive.p99_ms),
            f1(r.during.max_ms),
            f1(pct(&r.durations_ms, 0.9)),
            f1(pct(&r.durations_ms, 1.0)),
            f1(median_f64(&r.switch_ms)),
            f2(r.supervisor_cpu_ms_per_rollover),
            r.supervisor_rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    s
}

/// handoff only: where in a rollover the latency comes from.
pub fn phases(results: &[ContenderResult]) -> String {
    let mut s = String::from(
        "| contender | worker | p99 steady (ms) | p99 in the start phase, trigger → new generation serves (ms, requests) | p99 in the drain phase, → old generation gone (ms, requests) |\n|---|---|--:|--:|--:|\n",
    );
    for r in results
        .iter()
        .filter(|r| r.kind.is_handoff() && r.left_out.is_none())
    {
        s.push_str(&format!(
            "| {} | {} ×{} | {} | {} ({}) | {} ({}) |\n",
            r.label,
            r.worker.name(),
            r.workers,
            f2(r.steady.p99_ms),
            f2(r.during_start_phase.p99_ms),
            r.during_start_phase.count,
            f2(r.during_drain_phase.p99_ms),
            r.during_drain_phase.count,
        ));
    }
    s
}

/// The worker's own times the overhead column subtracts.
pub fn own_times_text(results: &[ContenderResult]) -> String {
    let mut out = String::new();
    for w in [WorkerKind::Rust, WorkerKind::Node, WorkerKind::Egg] {
        if let Some(o) = own_times(results, w) {
            out.push_str(&format!(
                "- {} worker's own times (medians, under the same load): start (exec → READY=1) of one worker {:.1} ms, of a whole generation started at once {:.1} ms (on a private listener no client connects to, 20 times each); drain (SIGTERM → exit) {:.1} ms (in the plain restart run)\n",
                w.name(),
                o.single_start,
                o.generation_start,
                o.drain
            ));
        }
    }
    out
}
