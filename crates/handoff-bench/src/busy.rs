//! The busy host: rollovers while the machine is already loaded.
//!
//! First the capacity: handoff (whole generation, no rollovers) with the worker, the same
//! clients as later but back to back (no pacing), for a few seconds; the requests served per
//! second are the capacity of this worker on this machine (clients included, since they run on
//! the same cores). Then, for each load fraction (50 %, 80 %), every contender runs with the
//! clients paced to that fraction of the capacity and rolls over K times; the table gives
//! p50/p99/max in steady state and inside rollover windows, and the ratios.
//!
//! The clients are closed-loop (a client never has more than one request out): a rollover that
//! stalls requests also lowers the load a little while it lasts. The served rate is in the table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::compare::{self, ContenderResult, Kind, Plan};
use crate::contenders::{Contender, Handoff, HandoffConfig, Paths, WorkerKind, free_ports};
use crate::load::{self, LoadSpec};
use crate::stats::{Counts, Latency, median_f64, quantile};

/// What a busy run is given.
#[derive(Debug, Clone)]
pub struct BusyPlan {
    pub worker: WorkerKind,
    pub workers: usize,
    pub kinds: Vec<Kind>,
    /// Load fractions, percent of the capacity.
    pub loads: Vec<u32>,
    pub rollovers: usize,
    pub gap: Duration,
    pub steady: Duration,
    pub budget: Duration,
    pub capacity_time: Duration,
    pub new_conn_clients: usize,
    pub keepalive_clients: usize,
    /// handoff rows run once per value (`HANDOFF_BOOT_PRIORITY`); empty: handoff's default.
    pub boot_priorities: Vec<String>,
}

/// The measured capacity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capacity {
    pub requests_per_s: f64,
    /// Per client of each kind: a new-connection client and a keep-alive client at capacity
    /// serve very different rates, so each kind is paced to its own share later.
    pub per_new_conn_client: f64,
    pub per_keepalive_client: f64,
    pub failed: u64,
    pub latency: Latency,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BusyRow {
    pub load_pct: u32,
    pub offered_per_s: f64,
    pub served_per_s: f64,
    pub boot_priority: Option<String>,
    pub result: ContenderResult,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BusyResult {
    pub worker: WorkerKind,
    pub capacity: Capacity,
    pub rows: Vec<BusyRow>,
}

/// Requests per second the worker serves under handoff with back-to-back clients.
pub fn capacity(bp: &BusyPlan, paths: &Paths) -> Result<Capacity> {
    let port = free_ports(1)?[0];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut h = Handoff::new(
        paths,
        HandoffConfig {
            workers: bp.workers,
            rolling: false,
            listen: vec![addr],
            command: paths.worker_command(bp.worker)?,
            dir: paths.scratch("capacity")?,
            env: Vec::new(),
            args: Vec::new(),
        },
    );
    h.start()?;
    let spec = LoadSpec {
        addr,
        new_conn_clients: bp.new_conn_clients,
        keepalive_clients: bp.keepalive_clients,
        interval: Duration::ZERO,
        keepalive_interval: None,
        timeout: Duration::from_secs(5),
    };
    let warm = Duration::from_secs(1);
    let epoch = Instant::now();
    let running = load::start(&spec, epoch);
    std::thread::sleep(warm + bp.capacity_time);
    let rec = running.finish();
    h.stop()?;
    let from = warm.as_micros() as u64;
    let to = from + bp.capacity_time.as_micros() as u64;
    let counted: Vec<_> = rec
        .samples
        .iter()
        .filter(|s| s.start_us >= from && s.end_us() <= to)
        .collect();
    let counts = Counts::of(counted.iter().copied());
    let ok = counts.requests - counts.failed;
    let secs = bp.capacity_time.as_secs_f64();
    let per = |ka: bool, n: usize| {
        let c = Counts::of(counted.iter().copied().filter(|s| s.keepalive == ka));
        (c.requests - c.failed) as f64 / secs / n.max(1) as f64
    };
    Ok(Capacity {
        requests_per_s: ok as f64 / secs,
        per_new_conn_client: per(false, bp.new_conn_clients),
        per_keepalive_client: per(true, bp.keepalive_clients),
        failed: counts.failed,
        latency: Latency::of(counted.into_iter()),
    })
}

pub fn run(bp: &BusyPlan, paths: &Paths) -> Result<BusyResult> {
    eprintln!("== capacity: {} worker ×{}", bp.worker.name(), bp.workers);
    let cap = capacity(bp, paths)?;
    eprintln!(
        "   {:.0} requests/s ({} failed), p50 {:.2} ms, p99 {:.2} ms",
        cap.requests_per_s,
        cap.failed,
        cap.latency.p50_ms.unwrap_or(f64::NAN),
        cap.latency.p99_ms.unwrap_or(f64::NAN)
    );
    if cap.requests_per_s < 10.0 {
        bail!(
            "capacity of {:.1} requests/s: nothing to load",
            cap.requests_per_s
        );
    }
    let mut rows = Vec::new();
    for &pct in &bp.loads {
        let f = pct as f64 / 100.0;
        let offered = cap.requests_per_s * f;
        // Each client at `f` of the rate its kind reached at capacity.
        let pace = |per_client: f64| Duration::from_secs_f64(1.0 / (f * per_client.max(1.0)));
        let interval = pace(cap.per_new_conn_client);
        let keepalive_interval = pace(cap.per_keepalive_client);
        for &kind in &bp.kinds {
            let variants: Vec<Option<String>> =
                if kind.is_handoff() && !bp.boot_priorities.is_empty() {
                    bp.boot_priorities.iter().cloned().map(Some).collect()
                } else {
                    vec![None]
                };
            for prio in variants {
                eprintln!(
                    "== load {pct} % ({offered:.0}/s; per client one request per {:.3} ms new-connection, {:.3} ms keep-alive){}",
                    interval.as_secs_f64() * 1000.0,
                    keepalive_interval.as_secs_f64() * 1000.0,
                    prio.as_deref()
                        .map(|p| format!(", boot_priority={p}"))
                        .unwrap_or_default()
                );
                let plan = Plan {
                    kinds: vec![kind],
                    workers: bp.workers,
                    rollovers: bp.rollovers,
                    peer_rollovers: bp.rollovers,
                    budget: bp.budget,
                    warmup: Duration::from_millis(1000),
                    steady: bp.steady,
                    gap: bp.gap,
                    tail: Duration::from_millis(500),
                    new_conn_clients: bp.new_conn_clients,
                    keepalive_clients: bp.keepalive_clients,
                    interval,
                    keepalive_interval: Some(keepalive_interval),
                    timeout: Duration::from_secs(5),
                    starter_interval: 1,
                    handoff_env: prio
                        .iter()
                        .map(|p| ("HANDOFF_BOOT_PRIORITY".to_string(), p.clone()))
                        .collect(),
                    calibration_reps: 0,
                };
                let ports = free_ports(1)?;
                let mut res = compare::run(&plan, paths, &ports)
                    .with_context(|| format!("load {pct} %, {}", kind.id()))?;
                let r = res.pop().context("no result")?;
                let served = served_per_s(&r);
                rows.push(BusyRow {
                    load_pct: pct,
                    offered_per_s: offered,
                    served_per_s: served,
                    boot_priority: prio,
                    result: r,
                });
            }
        }
    }
    Ok(BusyResult {
        worker: bp.worker,
        capacity: cap,
        rows,
    })
}

/// Requests per second over the counted part of the run.
fn served_per_s(r: &ContenderResult) -> f64 {
    match (r.samples.first(), r.samples.last()) {
        (Some(a), Some(b)) if b.start_us > a.start_us => {
            r.samples.len() as f64 / ((b.start_us - a.start_us) as f64 / 1e6)
        }
        _ => 0.0,
    }
}

fn f2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn f1(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The busy-host table (markdown).
pub fn table(b: &BusyResult) -> String {
    let mut s = format!(
        "Capacity ({} worker ×{}, handoff, no rollovers, clients back to back): **{:.0} requests/s** ({:.0}/s per new-connection client, {:.0}/s per keep-alive client; {} failed; p50 {} ms, p99 {} ms at capacity). Each client is then paced to the load's fraction of its own kind's rate.\n\n",
        b.worker.name(),
        b.rows.first().map(|r| r.result.workers).unwrap_or(0),
        b.capacity.requests_per_s,
        b.capacity.per_new_conn_client,
        b.capacity.per_keepalive_client,
        b.capacity.failed,
        f2(b.capacity.latency.p50_ms),
        f2(b.capacity.latency.p99_ms),
    );
    s.push_str("| load | contender | boot priority | offered / served (req/s) | rollovers | requests | failed | p50 / p99 / max steady (ms) | p50 / p99 / max in rollovers (ms) | p99 ratio | max ratio | rollover median / p90 (ms) |\n");
    s.push_str("|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for row in &b.rows {
        let r = &row.result;
        if let Some(why) = &r.left_out {
            s.push_str(&format!(
                "| {} % | {} | | left out: {why} | | | | | | | | |\n",
                row.load_pct, r.label
            ));
            continue;
        }
        let mut d = r.durations_ms.clone();
        d.sort_by(|a, b| a.total_cmp(b));
        let errors = if r.rollover_errors.is_empty() {
            String::new()
        } else {
            format!(" (+{} failed)", r.rollover_errors.len())
        };
        s.push_str(&format!(
            "| {} % | {} | {} | {:.0} / {:.0} | {}{errors} | {} | {} | {} / {} / {} | {} / {} / {} | {} | {} | {} / {} |\n",
            row.load_pct,
            r.label,
            row.boot_priority.as_deref().unwrap_or(if r.kind.is_handoff() { "default" } else { "-" }),
            row.offered_per_s,
            row.served_per_s,
            r.rollovers,
            r.counts.requests,
            r.counts.failed,
            f2(r.steady.p50_ms),
            f2(r.steady.p99_ms),
            f1(r.steady.max_ms),
            f2(r.during.p50_ms),
            f2(r.during.p99_ms),
            f1(r.during.max_ms),
            f2(ratio(r.during.p99_ms, r.steady.p99_ms)),
            f2(ratio(r.during.max_ms, r.steady.max_ms)),
            f1(median_f64(&r.durations_ms)),
            f1(quantile(&d, 0.9)),
        ));
    }
    let errors: Vec<String> = b
        .rows
        .iter()
        .flat_map(|row| {
            let r = &row.result;
            r.rollover_errors
                .iter()
                .map(move |e| format!("- {} % {}: rollover failed: {e}", row.load_pct, r.label))
                .chain(
                    r.client_errors
                        .iter()
                        .map(move |e| format!("- {} % {}: {e}", row.load_pct, r.label)),
                )
        })
        .collect();
    if !errors.is_empty() {
        s.push_str("\nFirst failures seen by the clients and failed rollovers:\n\n");
        s.push_str(&errors.join("\n"));
        s.push('\n');
    }
    s
}
