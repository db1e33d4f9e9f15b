//! What handoff itself costs (supervisor cost) and how a rollover grows with workers and
//! sockets (scale). No load here: the supervisor is not on the data path, and an idle
//! machine keeps the figures about handoff.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::contenders::{Contender, Handoff, HandoffConfig, Paths, WorkerKind};
use crate::procfs;
use crate::stats::{median_f64, quantile};

#[derive(Debug, Clone, serde::Serialize)]
pub struct CostResult {
    pub workers: usize,
    /// The worker health options this row ran with (empty: none).
    pub health: String,
    pub rss_kib_started: u64,
    pub rss_kib_after_rollovers: u64,
    /// After the rollovers: anonymous (private) and file-backed parts of the RSS.
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: u64,
    pub idle_seconds: f64,
    pub idle_context_switches: u64,
    /// handoff's CPU time over the idle time, ms per second (sampling for limits, pings).
    pub idle_cpu_ms_per_s: f64,
    pub rollovers: usize,
    /// From /proc/PID/stat utime+stime (clock ticks).
    pub cpu_ms_per_rollover: f64,
    /// From /proc/PID/task/*/schedstat (nanoseconds).
    pub cpu_ms_per_rollover_precise: f64,
    /// `handoff status` requests made one after the other (each samples every worker's
    /// process tree from /proc).
    pub status_requests: usize,
    /// handoff's CPU per status request, from schedstat (ms).
    pub status_cpu_ms: f64,
    /// Wall time of one status request at the client (connect, ask, read the answer): ms.
    pub status_wall_ms: Vec<f64>,
    /// Processes on the machine while the status requests ran (each sample reads them all).
    pub host_processes: usize,
    /// Context switches over a second idle period, after the status requests: status must
    /// leave nothing behind that wakes up.
    pub idle_after_status_context_switches: u64,
    pub idle_after_status_seconds: f64,
}

/// Worker health options a cost row runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    None,
    /// `max_memory` and `max_age`: one memory sample a second, nothing else.
    Limits,
    /// A per-worker watchdog: every worker pings twice per interval.
    Watchdog,
}

impl Health {
    pub fn args(self) -> Vec<String> {
        let a: &[&str] = match self {
            Health::None => &[],
            Health::Limits => &["--max-memory", "512M", "--max-age", "24h"],
            Health::Watchdog => &["--watchdog", "10s"],
        };
        a.iter().map(|s| s.to_string()).collect()
    }
}

/// For each worker count: RSS after start, idle wakeups over `idle`, CPU per rollover over
/// `rollovers` rollovers (a tenth of them past 8 workers, each of which starts that many
/// processes), RSS after them.
pub fn cost(
    paths: &Paths,
    worker_counts: &[(usize, Health)],
    idle: Duration,
    rollovers: usize,
    status_requests: usize,
    port: u16,
) -> Result<Vec<CostResult>> {
    let mut out = Vec::new();
    for &(workers, health) in worker_counts {
        let rollovers = if workers > 8 {
            (rollovers / 10).max(1)
        } else {
            rollovers
        };
        eprintln!(
            "== cost: handoff with {workers} worker(s){}",
            if health.args().is_empty() {
                String::new()
            } else {
                format!(", {}", health.args().join(" "))
            }
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut h = Handoff::new(
            paths,
            HandoffConfig {
                workers,
                rolling: false,
                listen: vec![addr],
                command: paths.worker_command(WorkerKind::Rust)?,
                env: Vec::new(),
                dir: paths.scratch(&format!("cost-{workers}"))?,
                args: health.args(),
            },
        );
        h.start()?;
        let pid = h.supervisor_pid().expect("running");
        // Let start-up settle (the probe's connection, the status requests).
        std::thread::sleep(Duration::from_millis(500));
        let rss_kib_started = procfs::rss_kib(pid)?;
        let cs0 = procfs::context_switches(pid)?;
        let idle_cpu0 = procfs::cpu_seconds_precise(pid)?;
        let t = Instant::now();
        std::thread::sleep(idle);
        let cs1 = procfs::context_switches(pid)?;
        let idle_cpu1 = procfs::cpu_seconds_precise(pid)?;
        let idle_seconds = t.elapsed().as_secs_f64();
        let threads = procfs::thread_count(pid)?;
        // `handoff status`, one request after the other, each from an idle supervisor (a
        // person or a monitoring check asks now and then, not back to back).
        let host_processes = std::fs::read_dir("/proc")?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count();
        let mut status_wall_ms = Vec::with_capacity(status_requests);
        let mut status_cpu = 0.0;
        for _ in 0..status_requests {
            std::thread::sleep(Duration::from_millis(5));
            let c = procfs::cpu_seconds_precise(pid)?;
            let t = Instant::now();
            let st = h.status()?;
            status_wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            status_cpu += procfs::cpu_seconds_precise(pid)? - c;
            anyhow::ensure!(st.workers.len() == workers, "status lists every worker");
        }
        // Nothing may keep running after a status: idle again, counted again.
        std::thread::sleep(Duration::from_millis(500));
        let cs2 = procfs::context_switches(pid)?;
        let t = Instant::now();
        std::thread::sleep(idle);
        let cs3 = procfs::context_switches(pid)?;
        let idle_after_status_seconds = t.elapsed().as_secs_f64();
        let (c0, p0) = (procfs::cpu_seconds(pid)?, procfs::cpu_seconds_precise(pid)?);
        for _ in 0..rollovers {
            // Rollovers are rare events: each one starts from an idle supervisor (as in the
            // scale runs), not back to back with warm caches.
            std::thread::sleep(Duration::from_millis(50));
            h.rollover()?;
        }
        // The last old workers are reaped by handoff right after they exit.
        std::thread::sleep(Duration::from_millis(100));
        let (c1, p1) = (procfs::cpu_seconds(pid)?, procfs::cpu_seconds_precise(pid)?);
        let rss_kib_after_rollovers = procfs::rss_kib(pid)?;
        let (rss_anon_kib, rss_file_kib) = procfs::rss_split_kib(pid)?;
        h.stop()?;
        let r = CostResult {
            workers,
            health: health.args().join(" "),
            rss_kib_started,
            rss_kib_after_rollovers,
            rss_anon_kib,
            rss_file_kib,
            threads,
            idle_seconds,
            idle_context_switches: cs1 - cs0,
            idle_cpu_ms_per_s: (idle_cpu1 - idle_cpu0) * 1000.0 / idle_seconds,
            rollovers,
            cpu_ms_per_rollover: (c1 - c0) * 1000.0 / rollovers as f64,
            cpu_ms_per_rollover_precise: (p1 - p0) * 1000.0 / rollovers as f64,
            status_requests,
            status_cpu_ms: status_cpu * 1000.0 / status_requests.max(1) as f64,
            status_wall_ms,
            host_processes,
            idle_after_status_context_switches: cs3 - cs2,
            idle_after_status_seconds,
        };
        eprintln!(
            "   RSS {:.2} MiB (after {} rollovers {:.2} MiB), {} idle wakeups in {:.1} s, CPU {:.2} ms per rollover",
            r.rss_kib_started as f64 / 1024.0,
            rollovers,
            r.rss_kib_after_rollovers as f64 / 1024.0,
            r.idle_context_switches,
            r.idle_seconds,
            r.cpu_ms_per_rollover_precise
        );
        eprintln!(
            "   status: {:.3} ms CPU of handoff, {:.2} ms wall (median) per request; {} idle wakeups in {:.1} s after them",
            r.status_cpu_ms,
            median_f64(&r.status_wall_ms).unwrap_or(f64::NAN),
            r.idle_after_status_context_switches,
            r.idle_after_status_seconds
        );
        out.push(r);
    }
    Ok(out)
}

pub fn cost_table(rows: &[CostResult]) -> String {
    let mut s = String::from(
        "| workers | worker health options | RSS after start (MiB) | RSS after the rollovers (MiB) | of which anonymous / file-backed (MiB) | threads | idle wakeups / s (context switches over the idle time) | CPU while idle (ms/s) | CPU per rollover, /proc/PID/stat (ms) | CPU per rollover, schedstat (ms) |\n|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} / {:.2} | {} | {:.2} ({} in {:.1} s) | {:.3} | {:.2} | {:.3} |\n",
            r.workers,
            if r.health.is_empty() {
                "none".to_string()
            } else {
                format!("`{}`", r.health)
            },
            r.rss_kib_started as f64 / 1024.0,
            r.rss_kib_after_rollovers as f64 / 1024.0,
            r.rss_anon_kib as f64 / 1024.0,
            r.rss_file_kib as f64 / 1024.0,
            r.threads,
            r.idle_context_switches as f64 / r.idle_seconds,
            r.idle_context_switches,
            r.idle_seconds,
            r.idle_cpu_ms_per_s,
            r.cpu_ms_per_rollover,
            r.cpu_ms_per_rollover_precise
        ));
    }
    s
}

/// What one `handoff status` costs, per worker count.
pub fn status_table(rows: &[CostResult]) -> String {
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        quantile(&v, q)
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    let mut s = String::from(
        "| workers | status requests | processes on the host | handoff CPU per status, schedstat (ms) | wall time per status, client (median / p99 / max ms) | idle wakeups / s after them |\n|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {} / {} / {} | {:.2} ({} in {:.1} s) |\n",
            r.workers,
            r.status_requests,
            r.host_processes,
            r.status_cpu_ms,
            p(&r.status_wall_ms, 0.5),
            p(&r.status_wall_ms, 0.99),
            p(&r.status_wall_ms, 1.0),
            r.idle_after_status_context_switches as f64 / r.idle_after_status_seconds,
            r.idle_after_status_context_switches,
            r.idle_after_status_seconds
        ));
    }
    s
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleResult {
    pub workers: usize,
    pub sockets: usize,
    pub rollovers: usize,
    /// trigger → handoff answers "new generation serves", bench clock.
    pub switch_ms: Vec<f64>,
    /// trigger → old generation gone.
    pub gone_ms: Vec<f64>,
    /// Each new worker's start as handoff logs it (spawn → READY=1), all rollovers.
    pub worker_startup_ms: Vec<f64>,
    pub cpu_ms_per_rollover: f64,
}

/// Rollover time for each (workers, sockets) shape.
pub fn scale(
    paths: &Paths,
    shapes: &[(usize, usize)],
    rollovers: usize,
    ports: &[u16],
) -> Result<Vec<ScaleResult>> {
    let mut out = Vec::new();
    for &(workers, sockets) in shapes {
        eprintln!("== scale: {workers} worker(s), {sockets} socket(s)");
        let listen: Vec<SocketAddr> = ports[..sockets]
            .iter()
            .map(|p| format!("127.0.0.1:{p}").parse().expect("addr"))
            .collect();
        let mut h = Handoff::new(
            paths,
            HandoffConfig {
                workers,
                rolling: false,
                listen,
                command: paths.worker_command(WorkerKind::Rust)?,
                env: Vec::new(),
                dir: paths.scratch(&format!("scale-{workers}x{sockets}"))?,
                args: Vec::new(),
            },
        );
        h.start()?;
        let pid = h.supervisor_pid().expect("running");
        let p0 = procfs::cpu_seconds_precise(pid)?;
        let (mut switch_ms, mut gone_ms) = (Vec::new(), Vec::new());
        for _ in 0..rollovers {
            std::thread::sleep(Duration::from_millis(50));
            let t = h.rollover()?;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            switch_ms.push(ms(t.switched.expect("handoff answers") - t.t0));
            gone_ms.push(ms(t.end - t.t0));
        }
        std::thread::sleep(Duration::from_millis(100));
        let p1 = procfs::cpu_seconds_precise(pid)?;
        h.stop()?;
        let r = ScaleResult {
            workers,
            sockets,
            rollovers,
            switch_ms,
            gone_ms,
            worker_startup_ms: startup_ms_from_log(&h.log()),
            // Minus the 50 ms pauses, which cost nothing: handoff sleeps.
            cpu_ms_per_rollover: (p1 - p0) * 1000.0 / rollovers as f64,
        };
        eprintln!(
            "   trigger → new serves {:.1} ms, → old gone {:.1} ms (medians); worker start {:.1} ms",
            median_f64(&r.switch_ms).unwrap_or(f64::NAN),
            median_f64(&r.gone_ms).unwrap_or(f64::NAN),
            median_f64(&r.worker_startup_ms).unwrap_or(f64::NAN)
        );
        out.push(r);
    }
    Ok(out)
}

/// `startup_ms=N` of every "worker ready" line after the first generation.
fn startup_ms_from_log(log: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("worker ready") && !l.contains("gen=1 "))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("startup_ms="))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .collect()
}

pub fn scale_table(rows: &[ScaleResult]) -> String {
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        quantile(&v, q)
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "-".into())
    };
    let mut s = String::from(
        "| workers | sockets | rollovers | trigger → new generation serves (median / max ms) | trigger → old generation gone (median ms) | worker start as handoff logs it (median / max ms) | handoff CPU per rollover (ms) |\n|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} | {} / {} | {:.2} |\n",
            r.workers,
            r.sockets,
            r.rollovers,
            p(&r.switch_ms, 0.5),
            p(&r.switch_ms, 1.0),
            p(&r.gone_ms, 0.5),
            p(&r.worker_startup_ms, 0.5),
            p(&r.worker_startup_ms, 1.0),
            r.cpu_ms_per_rollover
        ));
    }
    s
}
