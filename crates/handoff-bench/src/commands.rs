//! The subcommands of `handoff-bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::busy;
use crate::compare::{self, Kind, Plan};
use crate::contenders::{Paths, WorkerKind, free_ports, path_str, which};
use crate::cost;
use crate::load::{self, LoadSpec};
use crate::stats::{Counts, Latency};
use crate::svg;

#[derive(Debug, Parser)]
#[command(
    name = "handoff-bench",
    version,
    about = "Benchmarks handoff against a plain restart, Server::Starter and PM2 under load"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Load generator alone: closed-loop clients against ADDR for a while, then a summary.
    Load(LoadCmd),
    /// Every contender, same worker, same load, K rollovers each: one table and a plot.
    Compare(CompareCmd),
    /// Supervisor cost: handoff's RSS, idle wakeups, CPU time per rollover and per `handoff
    /// status` (which samples every worker's process tree).
    Cost(CostCmd),
    /// Rollover time with 1, 8, 64 workers and 1, 16 sockets.
    Scale(ScaleCmd),
    /// compare + cost + scale, into one report (OUT/report.md, OUT/latency.svg).
    All(AllCmd),
    /// Busy host: measure the capacity (requests/s without rollovers), then roll over at 50 %
    /// and 80 % of it, per contender; p50/p99/max steady and in rollover windows.
    Busy(BusyCmd),
    /// Short correctness check for CI: handoff (whole and --rolling) through a few rollovers
    /// under load; exit 1 on any failed request or rollover. Asserts no timing.
    Ci(CiCmd),
}

#[derive(Debug, Args, Clone)]
pub struct LoadOpts {
    /// Clients that open a new connection per request.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Clients that keep their connection alive.
    #[arg(long, default_value_t = 4)]
    pub keepalive_clients: usize,
    /// Each client sends at most one request per this many microseconds (0: back to back).
    #[arg(long, default_value_t = 2000)]
    pub interval_us: u64,
    /// Timeout of one request (connect, write, read), milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Where `handoff` and `handoff-example-worker` are (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The pm2 npm package directory (default: target/bench-peers/node_modules/pm2, where
    /// install-peers.sh puts it).
    #[arg(long, env = "HANDOFF_BENCH_PM2")]
    pub pm2_module: Option<PathBuf>,
    /// Where results go (default: target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Workers per contender (start_server always runs one).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct LoadCmd {
    /// Where to send requests (loopback only).
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[command(flatten)]
    pub load: LoadOpts,
}

#[derive(Debug, Args, Clone)]
pub struct CompareOpts {
    /// Rollovers for handoff, handoff --rolling and the plain restart (Rust worker).
    #[arg(long, default_value_t = 1000)]
    pub rollovers: usize,
    /// Rollovers for start_server, PM2 and the Node.js rows (each takes a second or more).
    #[arg(long, default_value_t = 100)]
    pub peer_rollovers: usize,
    /// Time limit for one contender's rollovers, seconds (the table says how many were done).
    #[arg(long, default_value_t = 150)]
    pub budget_secs: u64,
    /// Steady state before the first rollover, seconds.
    #[arg(long, default_value_t = 3)]
    pub steady_secs: u64,
    /// Pause between rollovers, milliseconds.
    #[arg(long, default_value_t = 50)]
    pub gap_ms: u64,
    /// Only these contenders (comma-separated): handoff, handoff-rolling, plain-restart,
    /// start-server, handoff-node, plain-restart-node, pm2.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// start_server's --interval, seconds (how long it waits before it believes a new worker
    /// is up; its default is 1, and 0 means no wait at all).
    #[arg(long, default_value_t = 1)]
    pub starter_interval: u32,
    #[command(flatten)]
    pub load: LoadOpts,
}

#[derive(Debug, Args)]
pub struct CompareCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub opts: CompareOpts,
}

#[derive(Debug, Args, Clone)]
pub struct CostOpts {
    /// Idle time over which wakeups are counted, seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Rollovers over which CPU time is averaged.
    #[arg(long, default_value_t = 200)]
    pub cost_rollovers: usize,
    /// `handoff status` requests over which its cost is averaged.
    #[arg(long, default_value_t = 200)]
    pub status_requests: usize,
}

#[derive(Debug, Args)]
pub struct CostCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub opts: CostOpts,
}

#[derive(Debug, Args, Clone)]
pub struct ScaleOpts {
    /// Rollovers per shape.
    #[arg(long, default_value_t = 20)]
    pub scale_rollovers: usize,
}

#[derive(Debug, Args)]
pub struct ScaleCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub opts: ScaleOpts,
}

#[derive(Debug, Args)]
pub struct AllCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub compare: CompareOpts,
    #[command(flatten)]
    pub cost: CostOpts,
    #[command(flatten)]
    pub scale: ScaleOpts,
}

#[derive(Debug, Args)]
pub struct BusyCmd {
    #[command(flatten)]
    pub common: Common,
    /// The worker: rust, node or egg.
    #[arg(long, default_value = "egg")]
    pub worker: String,
    /// Load levels, percent of the measured capacity.
    #[arg(long, value_delimiter = ',', default_value = "50,80")]
    pub loads: Vec<u32>,
    /// Rollovers per contender and load (default: 200 for rust, 20 for node and egg).
    #[arg(long)]
    pub rollovers: Option<usize>,
    /// Pause between rollovers, ms (default: 50 for rust, 1000 for node and egg).
    #[arg(long)]
    pub gap_ms: Option<u64>,
    /// Steady state before the first rollover, seconds.
    #[arg(long, default_value_t = 5)]
    pub steady_secs: u64,
    /// How long the capacity is measured, seconds (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    pub capacity_secs: u64,
    /// Time limit for one contender's rollovers, seconds.
    #[arg(long, default_value_t = 120)]
    pub budget_secs: u64,
    /// Only these contenders (default: handoff, handoff --rolling, plain restart, and PM2 for
    /// node and egg); ids as in `compare --only`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run each handoff row once per value, given to handoff as HANDOFF_BOOT_PRIORITY
    /// (e.g. `none,idle`); without it handoff runs with its default.
    #[arg(long, value_delimiter = ',')]
    pub boot_priority: Vec<String>,
    /// Clients that open a new connection per request.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Clients that keep their connection alive.
    #[arg(long, default_value_t = 4)]
    pub keepalive_clients: usize,
}

#[derive(Debug, Args)]
pub struct CiCmd {
    #[command(flatten)]
    pub common: Common,
    /// Rollovers per handoff mode.
    #[arg(long, default_value_t = 10)]
    pub rollovers: usize,
    /// Rollovers per handoff mode with the Egg example app (0: no Egg rows).
    #[arg(long, default_value_t = 3)]
    pub egg_rollovers: usize,
    /// Fail when the Egg rows cannot run (node or the app's npm packages missing) instead of
    /// leaving them out. From the environment: BENCH_CI_EGG=1 (or true, yes, on); 0, false,
    /// no, off or empty leave it unset.
    #[arg(long, env = "BENCH_CI_EGG", value_parser = clap::builder::FalseyValueParser::new())]
    pub require_egg: bool,
}

pub fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Load(c) => load_cmd(c),
        Cmd::Compare(c) => {
            let ctx = Ctx::new(&c.common)?;
            let results = run_compare(&ctx, &c.common, &c.opts)?;
            let text = compare_section(&results);
            println!("{text}");
            write_compare_outputs(&ctx, &results)?;
            Ok(0)
        }
        Cmd::Cost(c) => {
            let ctx = Ctx::new(&c.common)?;
            let rows = run_cost(&ctx, &c.opts)?;
            println!("{}", cost::cost_table(&rows));
            println!("{}", cost::status_table(&rows));
            Ok(0)
        }
        Cmd::Scale(c) => {
            let ctx = Ctx::new(&c.common)?;
            let rows = run_scale(&ctx, &c.opts)?;
            println!("{}", cost::scale_table(&rows));
            Ok(0)
        }
        Cmd::All(c) => all_cmd(c),
        Cmd::Busy(c) => busy_cmd(c),
        Cmd::Ci(c) => ci_cmd(c),
    }
}

/// Paths and the run's scratch directory.
struct Ctx {
    paths: Paths,
    out: PathBuf,
}

impl Ctx {
    fn new(common: &Common) -> Result<Ctx> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .context("finding the workspace")?;
        let bin_dir = match &common.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("no directory of this binary")?
                .to_path_buf(),
        };
        for b in ["handoff", "handoff-example-worker"] {
            if !bin_dir.join(b).is_file() {
                bail!(
                    "{} not found; build it: cargo build --release -p handoff -p handoff-example-worker (or give --bin-dir)",
                    bin_dir.join(b).display()
                );
            }
        }
        let out = common
            .out
            .clone()
            .unwrap_or_else(|| root.join("target/bench"));
        std::fs::create_dir_all(&out)?;
        // Short paths (unix socket paths are limited to 107 bytes), on a tmpfs when there is
        // one: handoff's runtime dir (its notify sockets, one bound per worker per rollover) is
        // /run or $XDG_RUNTIME_DIR in production, both tmpfs; on a disk file system the inode
        // churn of those sockets would be a large part of what the bench measures.
        let base = if is_tmpfs(Path::new("/dev/shm")) {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let tmp = base.join(format!("handoff-bench.{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        crate::cleanup::scratch_dir(tmp.clone());
        let pm2_module = common
            .pm2_module
            .clone()
            .unwrap_or_else(|| root.join("target/bench-peers/node_modules/pm2"));
        Ok(Ctx {
            paths: Paths {
                bin_dir,
                peers: root.join("crates/handoff-bench/peers"),
                root,
                pm2_module,
                tmp,
            },
            out,
        })
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // HANDOFF_BENCH_KEEP=1 keeps the logs (handoff's, the workers', PM2's) for a look.
        if std::env::var_os("HANDOFF_BENCH_KEEP").is_some() {
            eprintln!("== kept {}", self.paths.tmp.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.paths.tmp);
        }
    }
}

/// Whether `dir` is a writable directory on a tmpfs.
fn is_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn load_spec(opts: &LoadOpts, addr: SocketAddr) -> LoadSpec {
    LoadSpec {
        addr,
        new_conn_clients: opts.clients,
        keepalive_clients: opts.keepalive_clients,
        interval: Duration::from_micros(opts.interval_us),
        keepalive_interval: None,
        timeout: Duration::from_millis(opts.timeout_ms),
    }
}

fn load_cmd(c: LoadCmd) -> Result<i32> {
    if !c.addr.ip().is_loopback() {
        bail!(
            "only loopback addresses (127.0.0.0/8, ::1) are allowed, not {}",
            c.addr
        );
    }
    let epoch = Instant::now();
    let running = load::start(&load_spec(&c.load, c.addr), epoch);
    std::thread::sleep(Duration::from_secs(c.seconds));
    let rec = running.finish();
    let counts = Counts::of(rec.samples.iter());
    let lat = Latency::of(rec.samples.iter());
    println!(
        "{} requests in {} s ({:.0}/s), {} failed ({}); latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        counts.requests,
        c.seconds,
        counts.requests as f64 / c.seconds as f64,
        counts.failed,
        counts.failures_text(),
        lat.p50_ms.unwrap_or(f64::NAN),
        lat.p99_ms.unwrap_or(f64::NAN),
        lat.max_ms.unwrap_or(f64::NAN)
    );
    for e in &rec.errors {
        println!("  {e}");
    }
    Ok(if counts.failed == 0 { 0 } else { 1 })
}

fn plan(common: &Common, o: &CompareOpts) -> Result<Plan> {
    let kinds = if o.only.is_empty() {
        Kind::DEFAULT.to_vec()
    } else {
        o.only
            .iter()
            .map(|s| {
                Kind::parse(s).with_context(|| {
                    format!(
                        "unknown contender {s:?}; known: {}",
                        Kind::ALL.map(|k| k.id()).join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    Ok(Plan {
        kinds,
        workers: common.workers,
        rollovers: o.rollovers,
        peer_rollovers: o.peer_rollovers,
        budget: Duration::from_secs(o.budget_secs),
        warmup: Duration::from_millis(500),
        steady: Duration::from_secs(o.steady_secs),
        gap: Duration::from_millis(o.gap_ms),
        tail: Duration::from_millis(500),
        new_conn_clients: o.load.clients,
        keepalive_clients: o.load.keepalive_clients,
        interval: Duration::from_micros(o.load.interval_us),
        keepalive_interval: None,
        timeout: Duration::from_millis(o.load.timeout_ms),
        starter_interval: o.starter_interval,
        handoff_env: Vec::new(),
        calibration_reps: 20,
    })
}

fn run_compare(
    ctx: &Ctx,
    common: &Common,
    o: &CompareOpts,
) -> Result<Vec<compare::ContenderResult>> {
    let plan = plan(common, o)?;
    let ports = free_ports(plan.kinds.len())?;
    compare::run(&plan, &ctx.paths, &ports)
}

fn compare_section(results: &[compare::ContenderResult]) -> String {
    let mut s = String::new();
    s.push_str(&compare::table(results));
    s.push('\n');
    s.push_str(&compare::own_times_text(results));
    s.push('\n');
    s.push_str(&compare::details(results));
    s.push('\n');
    s.push_str(&compare::phases(results));
    let errors: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.rollover_errors
                .iter()
                .map(move |e| format!("- {} ({}): rollover failed: {e}", r.label, r.worker.name()))
                .chain(
                    r.client_errors
                        .iter()
                        .map(move |e| format!("- {} ({}): {e}", r.label, r.worker.name())),
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

fn write_compare_outputs(ctx: &Ctx, results: &[compare::ContenderResult]) -> Result<()> {
    let svg = svg::plot(
        results,
        "Latency of each request around rollovers (3 s from just before the 5th rollover)",
    );
    std::fs::write(ctx.out.join("latency.svg"), svg)?;
    std::fs::write(
        ctx.out.join("compare.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(ctx.out.join("compare.md"), compare_section(results))?;
    eprintln!(
        "== wrote {}/latency.svg, compare.md, compare.json",
        ctx.out.display()
    );
    Ok(())
}

fn run_cost(ctx: &Ctx, o: &CostOpts) -> Result<Vec<cost::CostResult>> {
    let port = free_ports(1)?[0];
    cost::cost(
        &ctx.paths,
        &[
            (1, cost::Health::None),
            (64, cost::Health::None),
            (64, cost::Health::Limits),
            (64, cost::Health::Watchdog),
        ],
        Duration::from_secs(o.idle_secs),
        o.cost_rollovers,
        o.status_requests,
        port,
    )
}

fn run_scale(ctx: &Ctx, o: &ScaleOpts) -> Result<Vec<cost::ScaleResult>> {
    let ports = free_ports(16)?;
    cost::scale(
        &ctx.paths,
        &[(1, 1), (8, 1), (64, 1), (1, 16), (8, 16)],
        o.scale_rollovers,
        &ports,
    )
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Date, machine, versions and the exact command.
fn header(ctx: &Ctx) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let handoff = command_output(&path_str(&ctx.paths.handoff()), &["--version"])
        .unwrap_or_else(|| "?".into());
    let node = which("node")
        .and_then(|n| command_output(&path_str(&n), &["--version"]))
        .unwrap_or_else(|| "not installed".into());
    let pm2 = std::fs::read_to_string(ctx.paths.pm2_module.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(String::from))
        .unwrap_or_else(|| "not installed".into());
    let starter = command_output(
        "perl",
        &["-MServer::Starter", "-e", "print $Server::Starter::VERSION"],
    )
    .unwrap_or_else(|| "not installed".into());
    let args: Vec<String> = std::env::args().collect();
    format!(
        "- date: {date}\n- machine: {cores} cores ({cpu}), {mem_gib:.0} GiB memory, Linux {kernel}, shared with other work\n- versions: {handoff} (release build), Node.js {node}, pm2 {pm2}, Server::Starter {starter}\n- command: `{}`\n",
        args.join(" ")
    )
}

fn all_cmd(c: AllCmd) -> Result<i32> {
    let ctx = Ctx::new(&c.common)?;
    let t = Instant::now();
    let results = run_compare(&ctx, &c.common, &c.compare)?;
    write_compare_outputs(&ctx, &results)?;
    let cost_rows = run_cost(&ctx, &c.cost)?;
    let scale_rows = run_scale(&ctx, &c.scale)?;
    let plan = plan(&c.common, &c.compare)?;
    let report = format!(
        "# handoff-bench report\n\n{}- took: {:.0} s\n- load: {} new-connection + {} keep-alive closed-loop clients, each at most one request per {} µs; request timeout {} ms; `GET /` answered by the worker\n- per contender: {:.1} s warm-up (not counted), {} s steady, then up to {} rollovers ({} for start_server, PM2 and the Node.js rows) {} ms apart, at most {} s of rollovers\n\n## Comparison\n\n{}\n## Supervisor cost (handoff, no load)\n\n{}\n### One `handoff status`\n\n{}\n## Scale (handoff, whole generation, no load)\n\n{}",
        header(&ctx),
        t.elapsed().as_secs_f64(),
        plan.new_conn_clients,
        plan.keepalive_clients,
        plan.interval.as_micros(),
        plan.timeout.as_millis(),
        plan.warmup.as_secs_f64(),
        plan.steady.as_secs(),
        plan.rollovers,
        plan.peer_rollovers,
        plan.gap.as_millis(),
        plan.budget.as_secs(),
        compare_section(&results),
        cost::cost_table(&cost_rows),
        cost::status_table(&cost_rows),
        cost::scale_table(&scale_rows),
    );
    std::fs::write(ctx.out.join("report.md"), &report)?;
    std::fs::write(
        ctx.out.join("cost.json"),
        serde_json::to_string_pretty(&(&cost_rows, &scale_rows))?,
    )?;
    println!("{report}");
    eprintln!("== wrote {}/report.md", ctx.out.display());
    Ok(0)
}

fn busy_cmd(c: BusyCmd) -> Result<i32> {
    let ctx = Ctx::new(&c.common)?;
    let worker = match c.worker.as_str() {
        "rust" => WorkerKind::Rust,
        "node" => WorkerKind::Node,
        "egg" => WorkerKind::Egg,
        w => bail!("unknown worker {w:?}: rust, node or egg"),
    };
    let fast = worker == WorkerKind::Rust;
    let kinds = if c.only.is_empty() {
        Kind::busy_set(worker)
    } else {
        c.only
            .iter()
            .map(|s| Kind::parse(s).with_context(|| format!("unknown contender {s:?}")))
            .collect::<Result<_>>()?
    };
    let bp = busy::BusyPlan {
        worker,
        workers: c.common.workers,
        kinds,
        loads: c.loads.clone(),
        rollovers: c.rollovers.unwrap_or(if fast { 200 } else { 20 }),
        gap: Duration::from_millis(c.gap_ms.unwrap_or(if fast { 50 } else { 1000 })),
        steady: Duration::from_secs(c.steady_secs),
        budget: Duration::from_secs(c.budget_secs),
        capacity_time: Duration::from_secs(c.capacity_secs),
        new_conn_clients: c.clients,
        keepalive_clients: c.keepalive_clients,
        boot_priorities: c.boot_priority.clone(),
    };
    let t = Instant::now();
    let res = busy::run(&bp, &ctx.paths)?;
    let name = worker.name().to_ascii_lowercase().replace('.', "");
    let text = format!(
        "# handoff-bench busy host, {} worker\n\n{}- took: {:.0} s\n- load: {} new-connection + {} keep-alive closed-loop clients, paced to the fraction of the capacity; per contender and load: 1 s warm-up, {} s steady, up to {} rollovers {} ms apart (at most {} s)\n\n{}",
        worker.name(),
        header(&ctx),
        t.elapsed().as_secs_f64(),
        bp.new_conn_clients,
        bp.keepalive_clients,
        bp.steady.as_secs(),
        bp.rollovers,
        bp.gap.as_millis(),
        bp.budget.as_secs(),
        busy::table(&res)
    );
    std::fs::write(ctx.out.join(format!("busy-{name}.md")), &text)?;
    std::fs::write(
        ctx.out.join(format!("busy-{name}.json")),
        serde_json::to_string_pretty(&res)?,
    )?;
    println!("{text}");
    eprintln!("== wrote {}/busy-{name}.md", ctx.out.display());
    Ok(0)
}

fn ci_cmd(c: CiCmd) -> Result<i32> {
    let ctx = Ctx::new(&c.common)?;
    let opts = CompareOpts {
        rollovers: c.rollovers,
        peer_rollovers: 0,
        budget_secs: 40,
        steady_secs: 1,
        gap_ms: 100,
        only: vec!["handoff".into(), "handoff-rolling".into()],
        starter_interval: 1,
        load: LoadOpts {
            clients: 2,
            keepalive_clients: 2,
            interval_us: 2000,
            // CI asserts lost requests (refused, reset, unanswered), not latency: on a shared
            // 2-core machine at a load average of 10, an Egg rollover kept one answer waiting
            // over 5 s. 15 s still catches a request nobody will answer.
            timeout_ms: 15_000,
        },
    };
    let mut results: Vec<(compare::ContenderResult, usize)> = run_compare(&ctx, &c.common, &opts)?
        .into_iter()
        .map(|r| (r, c.rollovers))
        .collect();
    let mut bad = Vec::new();
    if c.egg_rollovers > 0 {
        // The Egg app: the real case of issue 17 (a boot of most of a second of CPU per worker).
        match ctx.paths.worker_command(WorkerKind::Egg) {
            Err(why) if !c.require_egg => println!("bench-ci: Egg rows left out: {why:#}"),
            Err(why) => bad.push(format!("Egg rows cannot run: {why:#}")),
            Ok(_) => {
                let egg = CompareOpts {
                    rollovers: 0,
                    peer_rollovers: c.egg_rollovers,
                    gap_ms: 200,
                    only: vec!["handoff-egg".into(), "handoff-rolling-egg".into()],
                    ..opts.clone()
                };
                results.extend(
                    run_compare(&ctx, &c.common, &egg)?
                        .into_iter()
                        .map(|r| (r, c.egg_rollovers)),
                );
            }
        }
    }
    for (r, expected) in &results {
        let line = format!(
            "{} ({}): {} rollovers, {} requests, {} failed ({})",
            r.label,
            r.worker.name(),
            r.rollovers,
            r.counts.requests,
            r.counts.failed,
            r.counts.failures_text()
        );
        println!("bench-ci: {line}");
        if r.counts.failed > 0
            || !r.rollover_errors.is_empty()
            || r.rollovers != *expected
            || r.counts.requests == 0
        {
            bad.push(line);
            for e in r.rollover_errors.iter().chain(&r.client_errors) {
                println!("bench-ci:   {e}");
            }
        }
    }
    if bad.is_empty() {
        println!("bench-ci: ok, no failed request in any rollover");
        Ok(0)
    } else {
        println!("bench-ci: FAILED: {}", bad.join("; "));
        Ok(1)
    }
}
