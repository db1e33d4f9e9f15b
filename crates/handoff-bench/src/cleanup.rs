//! Cleaning up after an interrupted run: processes that would outlive the bench (handoff,
//! start_server, the PM2 daemon, which daemonizes) are registered here, and SIGINT, SIGTERM or
//! SIGHUP to the bench stops them before it exits. (Workers the bench starts itself get
//! SIGTERM from the kernel when it dies: PR_SET_PDEATHSIG.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static SCRATCH: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// The run's scratch directory, removed on a stop signal (unless `HANDOFF_BENCH_KEEP` is set).
pub fn scratch_dir(dir: std::path::PathBuf) {
    *SCRATCH.lock().expect("cleanup registry") = Some(dir);
}

pub fn register(pid: i32) {
    PIDS.lock().expect("cleanup registry").push(pid);
}

pub fn unregister(pid: i32) {
    PIDS.lock().expect("cleanup registry").retain(|p| *p != pid);
}

/// Catches the stop signals (see [`crate::sys::catch_stop_signals`]) and handles them in a
/// thread of its own: stop what was registered, then exit 128 + the signal.
pub fn install() {
    let Ok(pipe) = crate::sys::catch_stop_signals() else {
        return;
    };
    std::thread::Builder::new()
        .name("cleanup".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            let sig = loop {
                match nix::unistd::read(&pipe, &mut b) {
                    Ok(1) => break b[0] as i32,
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => return,
                }
            };
            eprintln!("handoff-bench: signal {sig}: stopping what it started");
            let pids = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
            for &p in &pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline
                && pids.iter().any(|&p| {
                    crate::procfs::reap(p);
                    kill(Pid::from_raw(p), None).is_ok() && !crate::procfs::is_zombie(p)
                })
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            for &p in &pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            if std::env::var_os("HANDOFF_BENCH_KEEP").is_none()
                && let Some(d) = SCRATCH.lock().ok().and_then(|d| d.clone())
            {
                let _ = std::fs::remove_dir_all(d);
            }
            std::process::exit(128 + sig);
        })
        .expect("spawn cleanup thread");
}
