//! `handoff reexec` (and SIGUSR2): handoff replaces its own program, keeping its pid, its
//! sockets and its workers, and carrying its state (deadlines included) over the exec. Each
//! test runs a copy of the handoff binary that it then replaces, as a package upgrade does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use handoff_common::protocol::StatusReport;

use super::harness::*;

/// Installs `from` at `dir/bin/handoff` the way rpm does: a new file renamed over the old.
fn install(dir: &Path, from: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tmp = bin.join(".handoff.new");
    // Copied by cp, not by this process: a test thread forking meanwhile would hold the write
    // fd until its exec, and an exec of the file then fails with ETXTBSY (Text file busy).
    let cp = std::process::Command::new("cp")
        .arg(from)
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = bin.join("handoff");
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// Installs a shell script as the new handoff.
fn install_script(dir: &Path, script: &str, mode: u32) {
    let src = dir.join("script");
    std::fs::write(&src, script).unwrap();
    let dest = install(dir, &src);
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// handoff, run from a copy of its binary in its temp dir, with fixture workers whose mode
/// is read from a file (`keep[0]/mode`).
fn start(tag: &str, args: &[&str], mode: &str, worker: Option<Vec<String>>) -> Handoff {
    start_env(tag, args, mode, worker, vec![])
}

fn start_env(
    tag: &str,
    args: &[&str],
    mode: &str,
    worker: Option<Vec<String>>,
    mut env: Vec<(&str, String)>,
) -> Handoff {
    let dir = TempDir::new(tag);
    let bin = install(dir.path(), &handoff_bin());
    let modes = TempDir::new(&format!("{tag}-mode"));
    std::fs::write(modes.path().join("mode"), mode).unwrap();
    let mut a = s(&["--listen", "127.0.0.1:0"]);
    a.extend(s(args));
    let workers = args
        .iter()
        .position(|x| *x == "--workers")
        .map(|i| args[i + 1].parse().unwrap())
        .unwrap_or(1);
    let mut h = Handoff::start_program(
        Opts {
            args: a,
            worker: worker.unwrap_or_else(fixture),
            env: {
                env.push((
                    "FIXTURE_MODE_FILE",
                    modes.path().join("mode").display().to_string(),
                ));
                env
            },
            wait_ready: workers,
        },
        &[],
        &bin,
        dir,
    );
    h.keep.push(modes);
    h
}

fn release(h: &Handoff, mode: &str) {
    std::fs::write(h.keep[0].path().join("mode"), mode).unwrap();
}

/// The handoff's own dir (where `bin/handoff` lives).
fn home(h: &Handoff) -> &Path {
    h.dir.path()
}

fn reexec(h: &Handoff) -> (i32, String, String) {
    let out = h.cli(&["reexec"], &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The serving workers' pids (draining ones of an earlier rollover go away on their own).
fn ready(st: &StatusReport) -> Vec<i32> {
    let mut v: Vec<i32> = st
        .workers
        .iter()
        .filter(|w| w.state == "ready")
        .map(|w| w.pid)
        .collect();
    v.sort_unstable();
    v
}

fn pids(st: &StatusReport) -> Vec<i32> {
    let mut v: Vec<i32> = st.workers.iter().map(|w| w.pid).collect();
    v.sort_unstable();
    v
}

/// What a reexec must leave as it was.
fn same_state(before: &StatusReport, after: &StatusReport) {
    assert_eq!(after.pid, before.pid, "handoff's pid");
    assert_eq!(pids(after), pids(before), "worker pids");
    assert_eq!(after.current_generation, before.current_generation);
    assert_eq!(after.settings, before.settings);
    assert_eq!(after.listeners, before.listeners);
    assert_eq!(
        after
            .generations
            .iter()
            .map(|g| (g.number, &g.version))
            .collect::<Vec<_>>(),
        before
            .generations
            .iter()
            .map(|g| (g.number, &g.version))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        after
            .workers
            .iter()
            .map(|w| (w.pid, w.slot, w.generation, &w.state))
            .collect::<Vec<_>>(),
        before
            .workers
            .iter()
            .map(|w| (w.pid, w.slot, w.generation, &w.state))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        after
            .last_rollover
            .as_ref()
            .map(|l| (l.generation, l.outcome, &l.message)),
        before
            .last_rollover
            .as_ref()
            .map(|l| (l.generation, l.outcome, &l.message))
    );
    assert!(after.uptime_ms >= before.uptime_ms, "uptime carried over");
}

/// One request's (start, duration, error).
type Sample = (Instant, Duration, Option<String>);

/// `clients` loops of requests (half new connections, half keep-alive), timed.
fn timed_load(
    addr: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<Sample>>> {
    (0..clients)
        .map(|i| {
            let (addr, stop) = (addr.to_string(), stop.clone());
            thread::spawn(move || {
                let mut out = Vec::new();
                let mut ka = KeepAlive::new(&addr);
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                    let t = Instant::now();
                    let r = if i % 2 == 0 {
                        get(&addr, "/")
                    } else {
                        ka.get("/")
                    };
                    let err = match r {
                        Ok((200, _)) => None,
                        Ok((code, body)) => Some(format!("HTTP {code}: {body}")),
                        Err(e) => Some(e),
                    };
                    out.push((t, t.elapsed(), err));
                }
                out
            })
        })
        .collect()
}

#[test]
fn reexec_under_load_fails_no_request_and_keeps_every_pid() {
    let h = start(
        "rx-load",
        &["--workers", "2"],
        "ready",
        Some(example_worker()),
    );
    let before = h.status().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = timed_load(&h.addr(), 4, stop.clone());
    // Steady traffic first: the reference for the slowest request.
    thread::sleep(Duration::from_millis(1500));
    let mut windows = Vec::new();
    for _ in 0..3 {
        install(home(&h), &handoff_bin());
        let t = Instant::now();
        let (code, out, err) = reexec(&h);
        windows.push((t, Instant::now()));
        assert_eq!(code, 0, "reexec: {out}{err}\nlog:\n{}", h.log());
        assert!(out.contains("re-exec'd"), "{out}");
        thread::sleep(Duration::from_millis(300));
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.2.as_ref()).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let after = h.status().unwrap();
    same_state(&before, &after);
    assert_eq!(after.reexecs, 3);
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(human.contains("reexec: 3 since start; last: ok"), "{human}");
    assert!(
        after
            .last_reexec
            .as_deref()
            .is_some_and(|l| l.starts_with("ok")),
        "{:?}",
        after.last_reexec
    );
    // The figure the spec asks about, printed (timing assertions flake on a shared machine).
    let first = windows[0].0;
    let steady = samples
        .iter()
        .filter(|s| s.0 + s.1 < first)
        .map(|s| s.1)
        .max()
        .unwrap();
    let across = samples
        .iter()
        .filter(|s| windows.iter().any(|(a, b)| s.0 < *b && s.0 + s.1 > *a))
        .map(|s| s.1)
        .max()
        .unwrap_or_default();
    let took: Vec<_> = windows
        .iter()
        .map(|(a, b)| format!("{:?}", *b - *a))
        .collect();
    eprintln!(
        "reexec under load: {} requests, 0 failed; slowest steady {:?}, slowest across a \
         reexec {:?} ({:.2}x); reexec client round trips {}",
        samples.len(),
        steady,
        across,
        across.as_secs_f64() / steady.as_secs_f64(),
        took.join(", ")
    );
}

#[test]
fn a_draining_worker_keeps_its_drain_deadline_across_reexec() {
    let h = start("rx-drain", &["--drain-timeout", "6s"], "ignore-term", None);
    let stubborn = h.status().unwrap().workers[0].pid;
    release(&h, "ready");
    let t0 = Instant::now();
    assert_eq!(h.reload_cli(&[]).0, 0);
    thread::sleep(Duration::from_millis(2000));
    let (code, out, err) = reexec(&h);
    assert_eq!(code, 0, "{out}{err}\n{}", h.log());
    assert!(
        pid_alive(stubborn),
        "the reexec must not touch a draining worker"
    );
    let st = h.status().unwrap();
    assert!(
        st.workers
            .iter()
            .any(|w| w.pid == stubborn && w.state == "draining"),
        "{st:#?}"
    );
    // Killed at its deadline, 6 s after the reload: not 6 s after the reexec (8 s and more;
    // the margin is for a loaded machine, where a reexec of the debug build took 1.5 s).
    assert!(
        wait_until(Duration::from_secs(15), || !pid_alive(stubborn)),
        "never killed"
    );
    let killed = t0.elapsed();
    eprintln!(
        "draining worker killed {killed:?} after the reload (drain timeout 6 s, reexec at 2 s)"
    );
    assert!(
        killed >= Duration::from_millis(5900),
        "killed early: {killed:?}"
    );
    assert!(
        killed < Duration::from_millis(7500),
        "deadline not kept: {killed:?}\n{}",
        h.log()
    );
    let st = h.wait_for(
        Duration::from_secs(5),
        |st| st.forced_kills == 1,
        "the kill counted",
    );
    assert_eq!(st.reexecs, 1);
}

#[test]
fn a_pending_restart_backoff_survives_reexec() {
    let h = start("rx-backoff", &[], "ready", None);
    let first = h.status().unwrap().workers[0].pid;
    release(&h, "crash");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Crashes 1..4 back off 0.1, 0.2, 0.4, 0.8 s; the 5th waits 1.6 s.
    let before = h.wait_for(
        Duration::from_secs(20),
        |st| st.slots[0].crashes >= 5 && st.slots[0].restart_in_ms.is_some_and(|ms| ms > 1000),
        "a long backoff",
    );
    release(&h, "ready");
    let (code, out, err) = reexec(&h);
    assert_eq!(code, 0, "{out}{err}\n{}", h.log());
    let after = h.status().unwrap();
    assert_eq!(
        after.slots[0].crashes, before.slots[0].crashes,
        "{after:#?}"
    );
    let left = after.slots[0]
        .restart_in_ms
        .expect("the restart is still pending");
    assert!(left <= before.slots[0].restart_in_ms.unwrap(), "{left}");
    // And it happens: a ready worker, whose restart was not lost with the old image.
    h.wait_for(Duration::from_secs(10), |st| st.ready == 1, "the restart");
}

#[test]
fn a_binary_that_cannot_take_over_leaves_the_old_handoff_running() {
    let h = start("rx-bogus", &["--workers", "2"], "ready", None);
    let before = h.status().unwrap();
    for (what, script, mode) in [
        ("a script exiting 1", "#!/bin/sh\nexit 1\n", 0o755),
        (
            "a script saying ok without the handshake",
            "#!/bin/sh\necho ok\n",
            0o755,
        ),
        (
            "a file that is not executable",
            "#!/bin/sh\nexit 0\n",
            0o644,
        ),
    ] {
        install_script(home(&h), script, mode);
        let (code, out, err) = reexec(&h);
        assert_ne!(code, 0, "{what}: {out}");
        eprintln!("{what}: exit {code}: {}", err.lines().next().unwrap_or(""));
        assert!(err.contains("reexec failed"), "{what}: {err}");
        assert!(err.contains("systemctl restart"), "{what}: {err}");
        assert!(err.contains("unchanged"), "{what}: {err}");
        let st = h.status().expect("the old handoff answers");
        same_state(&before, &st);
        assert_eq!(st.reexecs, 0);
        assert!(
            st.last_reexec
                .as_deref()
                .is_some_and(|l| l.starts_with("failed")),
            "{:?}",
            st.last_reexec
        );
    }
    // Still in charge: a reload works, and so does a reexec to a good binary.
    assert_eq!(h.reload_cli(&[]).0, 0);
    install(home(&h), &handoff_bin());
    let (code, out, err) = reexec(&h);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(h.status().unwrap().current_generation, 2);
}

#[test]
fn a_new_image_that_fails_after_the_exec_falls_back_to_the_old_one() {
    let h = start("rx-fallback", &["--workers", "2"], "ready", None);
    let before = h.status().unwrap();
    // Passes the pre-flight (the real binary answers it), then starts the real binary on a
    // garbled state fd: the new image cannot restore, and must fexecve the old one.
    let real = handoff_bin();
    install_script(
        home(&h),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = __check-state ]; then exec {r} __check-state; fi\n\
             HANDOFF_REEXEC_STATE=garbage exec {r} \"$@\"\n",
            r = real.display()
        ),
        0o755,
    );
    let (code, out, err) = reexec(&h);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("could not take over") && err.contains("took back over"),
        "{err}"
    );
    let st = h.status().expect("the old image answers");
    same_state(&before, &st);
    assert_eq!(st.reexecs, 0);
    assert!(
        h.log()
            .contains("falling back to the previous handoff image"),
        "{}",
        h.log()
    );
    // In charge: reloads roll over, a crashing release rolls back.
    assert_eq!(h.reload_cli(&[]).0, 0);
    release(&h, "crash");
    assert_eq!(h.reload_cli(&[]).0, 1);
    assert_eq!(h.status().unwrap().current_generation, 2);
}

#[test]
fn sigusr2_reexecs_and_reloads_work_after() {
    let mut h = start("rx-usr2", &["--workers", "2"], "ready", None);
    let before = h.status().unwrap();
    install(home(&h), &handoff_bin());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.pid()),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let after = h.wait_for(
        Duration::from_secs(10),
        |st| st.reexecs == 1,
        "the SIGUSR2 reexec",
    );
    same_state(&before, &after);
    // A reload after the reexec rolls over; a crashing release is rolled back.
    assert_eq!(h.reload_cli(&[]).0, 0);
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 2);
    let serving = ready(&st);
    release(&h, "crash");
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(ready(&h.status().unwrap()), serving);
    // A storm of SIGUSR2: handoff lives through it, with the same workers.
    for _ in 0..20 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.pid()),
            nix::sys::signal::Signal::SIGUSR2,
        );
        thread::sleep(Duration::from_millis(5));
    }
    let st = h.wait_for(
        Duration::from_secs(20),
        |st| st.reexecs >= 2 && ready(st) == serving,
        "the storm settled",
    );
    assert_eq!(st.pid, before.pid);
    eprintln!(
        "20 SIGUSR2 5 ms apart: {} reexecs in all (they coalesce)",
        st.reexecs - 1
    );
    // And the restored handoff stops cleanly, removing its control socket.
    assert!(h.stop().success());
    assert!(!h.control.exists());
}

#[test]
fn out_of_fds_the_old_handoff_answers_an_error_and_keeps_running() {
    let h = start("rx-nofile", &[], "ready", None);
    let before = h.status().unwrap();
    let pid = h.pid().to_string();
    let open = fd_count(h.pid());
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: String = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .unwrap();
    let prlimit = |soft: &str| {
        // The soft limit only (`N:`): lowering the hard one could not be undone.
        let st = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .status()
            .unwrap();
        assert!(st.success());
    };
    // Room for the client's connection and one more fd: not for the state and the
    // pre-flight's pipes.
    prlimit(&(open + 2).to_string());
    install(home(&h), &handoff_bin());
    let (code, out, err) = reexec(&h);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("reexec failed"), "{err}");
    eprintln!(
        "out of fds: exit {code}: {}",
        err.lines().next().unwrap_or("")
    );
    prlimit(&soft);
    let st = h.status().unwrap();
    same_state(&before, &st);
    let (code, out, err) = reexec(&h);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_reexec_during_a_reload_waits_for_it_and_both_succeed() {
    // Workers take 1 s to get ready: the reexec arrives mid-rollover.
    let h = start_env(
        "rx-during",
        &["--workers", "2"],
        "ready",
        None,
        vec![("FIXTURE_READY_DELAY_MS", "1000".into())],
    );
    let before = h.status().unwrap();
    let control = h.control.clone();
    let bin = handoff_bin();
    let reload = thread::spawn(move || {
        std::process::Command::new(&bin)
            .args(["reload", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    });
    h.wait_for(
        Duration::from_secs(10),
        |st| st.rolling_over_to.is_some(),
        "the rollover under way",
    );
    install(home(&h), &handoff_bin());
    let (code, out, err) = reexec(&h);
    let reload = reload.join().unwrap();
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert_eq!(code, 0, "{out}{err}\n{}", h.log());
    let st = h.status().unwrap();
    assert_eq!(st.pid, before.pid);
    assert_eq!(st.current_generation, 2, "the reload ran to its end first");
    assert_eq!(st.reexecs, 1);
}

#[test]
fn two_reexecs_at_once_are_both_answered() {
    let h = start("rx-twice", &["--workers", "2"], "ready", None);
    let before = h.status().unwrap();
    install(home(&h), &handoff_bin());
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (bin, control) = (handoff_bin(), h.control.clone());
            thread::spawn(move || {
                std::process::Command::new(&bin)
                    .args(["reexec", "--control"])
                    .arg(&control)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // One more right after: a fresh handover from the just-restored image.
    let (code, out, err) = reexec(&h);
    assert_eq!(code, 0, "{out}{err}");
    let st = h.status().unwrap();
    same_state(&before, &st);
    assert!((2..=3).contains(&st.reexecs), "{}", st.reexecs);
}
