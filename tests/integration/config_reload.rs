//! Reload applies the config file: workers, command and environment follow the file; a bad
//! file changes nothing; settings bound at start say they need a restart; `handoff scale`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use handoff_common::protocol::StatusReport;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(30);

/// A config file for `handoff run --config` (the command comes from the file).
struct Config {
    path: PathBuf,
    command: Vec<String>,
    env: Vec<(String, String)>,
}

impl Config {
    fn new(dir: &Path, command: Vec<String>, env: &[(&str, &str)]) -> Config {
        Config {
            path: dir.join("app.toml"),
            command,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Writes the file with `workers` and `extra` lines (keys, before the env table).
    fn write(&self, workers: usize, extra: &str) {
        let mut t = format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = {workers}\ndrain_timeout = \"5s\"\n\
             command = {:?}\n{extra}\n[environment]\n",
            self.command
        );
        for (k, v) in &self.env {
            t.push_str(&format!("{k} = {v:?}\n"));
        }
        // Replaced whole, as an editor or config management does.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, t).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

fn start(tag: &str, cfg: &Config, workers: usize) -> Handoff {
    cfg.write(workers, "");
    start_config(tag, &cfg.path, workers)
}

/// Workers of the serving generation that are ready (what `handoff status --json` shows).
fn live_workers(h: &Handoff) -> usize {
    let out = h.cli(&["status"], &["--json"]);
    assert!(out.status.success(), "{out:?}");
    let st: StatusReport = serde_json::from_slice(&out.stdout).unwrap();
    st.workers
        .iter()
        .filter(|w| w.generation == st.current_generation && w.state == "ready")
        .count()
}

fn settings_workers(st: &StatusReport) -> usize {
    st.settings.as_ref().expect("settings in status").workers
}

#[test]
fn workers_follow_the_file_2_3_1_with_no_failed_request() {
    let d = TempDir::new("cfg-scale");
    let cfg = Config::new(
        d.path(),
        vec![bin("handoff-example-worker").display().to_string()],
        &[],
    );
    let mut h = start("cfg-scale", &cfg, 2);
    assert_eq!(live_workers(&h), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&h.addr(), 2, stop.clone());
    thread::sleep(Duration::from_millis(200));
    let mut seen = Vec::new();
    for n in [3, 1] {
        cfg.write(n, "");
        let (code, out, err) = h.reload_cli(&[]);
        assert_eq!(code, 0, "{out} {err}");
        assert!(out.contains(&format!("({n} worker")), "{out}");
        let st = h.wait_for(
            LONG,
            |st| st.rolling_over_to.is_none() && settings_workers(st) == n,
            "the new settings in force",
        );
        assert_eq!(st.workers_wanted, n);
        assert_eq!(live_workers(&h), n);
        seen.push(live_workers(&h));
    }
    thread::sleep(Duration::from_millis(200));
    let total = finish_load(&stop, clients);
    eprintln!(
        "config reload 2→3→1: live workers {seen:?}, {} requests ok, {} failed",
        total.ok,
        total.failures.len()
    );
    assert!(total.failures.is_empty(), "{:?}", total.failures);
    assert!(total.ok > 0);
    // Draining workers of the scaled-down slots are gone in the end.
    h.wait_for(LONG, |st| st.workers.len() == 1, "only one worker left");
    assert!(h.stop().success());
}

#[test]
fn a_bad_file_fails_the_reload_with_file_and_line_and_changes_nothing() {
    let d = TempDir::new("cfg-bad");
    let cfg = Config::new(d.path(), fixture(), &[]);
    let mut h = start("cfg-bad", &cfg, 2);
    let before = h.status().unwrap();
    let file = cfg.path.display().to_string();
    // A TOML syntax error on line 2, then a value out of range on line 2.
    for (text, want) in [
        (
            "listen = [\"127.0.0.1:0\"]\nworkers = = 3\n".to_string(),
            format!("{file}:2:"),
        ),
        (
            format!(
                "listen = [\"127.0.0.1:0\"]\nworkers = 0\ncommand = {:?}\n",
                fixture()
            ),
            format!("{file}:2: key `workers`"),
        ),
    ] {
        std::fs::write(&cfg.path, &text).unwrap();
        let (code, out, err) = h.reload_cli(&[]);
        assert_eq!(code, 1, "{out} {err}");
        assert!(err.contains(&want), "want {want:?} in {err}");
        assert!(err.contains("nothing changed"), "{err}");
        let st = h.status().unwrap();
        assert_eq!(st.current_generation, before.current_generation);
        assert_eq!(st.settings, before.settings);
        assert_eq!(live_workers(&h), 2);
        // status says the file on disk is not what runs.
        let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
        assert!(human.contains("CONFIG FILE DIFFERS"), "{human}");
    }
    // Still serving: a good file again rolls over.
    cfg.write(2, "");
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(h.status().unwrap().config_differs.is_none());
    assert!(h.stop().success());
}

#[test]
fn a_changed_listen_or_control_says_it_needs_a_restart() {
    let d = TempDir::new("cfg-bound");
    let cfg = Config::new(d.path(), fixture(), &[]);
    let mut h = start("cfg-bound", &cfg, 1);
    std::fs::write(
        &cfg.path,
        format!(
            "listen = [\"127.0.0.1:1\"]\ncontrol = \"/tmp/elsewhere.sock\"\ncommand = {:?}\n",
            fixture()
        ),
    )
    .unwrap();
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out} {err}");
    for key in ["listen", "control"] {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with(&format!("handoff: warning: {key}: ")))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("systemctl restart handoff@"), "{err}");
    }
    // Warned in handoff's log too, and still reachable at the old control socket.
    assert!(h.log().contains("WARN"), "{}", h.log());
    assert!(h.log().contains("listen: "), "{}", h.log());
    let st = h.status().expect("still on the old control socket");
    assert!(
        st.config_differs
            .as_deref()
            .is_some_and(|d| d.contains("listen")),
        "{:?}",
        st.config_differs
    );
    assert!(h.stop().success());
}

#[test]
fn a_new_command_and_environment_reach_the_new_generations_workers() {
    let d = TempDir::new("cfg-cmd");
    let reports = TempDir::new("cfg-cmd-reports");
    let dir = reports.path().display().to_string();
    let mut cfg = Config::new(
        d.path(),
        fixture(),
        &[("FIXTURE_REPORT_DIR", &dir), ("APP_FLAVOUR", "old")],
    );
    let mut h = start("cfg-cmd", &cfg, 1);
    cfg.command = vec![fixture()[0].clone(), "--new-arg".into()];
    cfg.env[1].1 = "new".into();
    cfg.write(1, "");
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out} {err}");
    let st = h.status().unwrap();
    let pid = st
        .workers
        .iter()
        .find(|w| w.generation == st.current_generation)
        .unwrap()
        .pid;
    let f = reports.path().join(format!("{pid}.json"));
    assert!(wait_until(LONG, || f.exists()), "no report from {pid}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    assert_eq!(r["env"]["APP_FLAVOUR"], "new", "{r}");
    assert_eq!(r["args"][1], "--new-arg", "{r}");
    let settings = st.settings.unwrap();
    assert_eq!(settings.command[1], "--new-arg");
    assert!(settings.environment.contains(&"APP_FLAVOUR".to_string()));
    assert!(h.stop().success());
}

#[test]
fn a_rolled_back_reload_keeps_the_settings_in_force() {
    let d = TempDir::new("cfg-rb");
    let mut cfg = Config::new(d.path(), fixture(), &[("FIXTURE_MODE", "ready")]);
    let mut h = start("cfg-rb", &cfg, 2);
    let before = h.status().unwrap();
    // Three workers of a release that crashes at start.
    cfg.env[0].1 = "crash".into();
    cfg.write(3, "");
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("rolled back"), "{err}");
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, before.current_generation);
    assert_eq!(st.settings, before.settings);
    assert_eq!(settings_workers(&st), 2);
    assert_eq!(live_workers(&h), 2);
    // An old worker that dies comes back as the old generation, with the old environment.
    let old = st
        .workers
        .iter()
        .find(|w| w.generation == st.current_generation && w.state == "ready")
        .expect("an old worker serves")
        .pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = h.wait_for(
        LONG,
        |st| {
            st.ready == 2
                && st.workers.iter().all(|w| w.pid != old)
                && st
                    .workers
                    .iter()
                    .all(|w| w.generation == st.current_generation)
        },
        "the crashed old worker restarted",
    );
    assert_eq!(st.current_generation, before.current_generation);
    let before_pids: Vec<i32> = before.workers.iter().map(|w| w.pid).collect();
    let new_pid = st
        .workers
        .iter()
        .find(|w| !before_pids.contains(&w.pid))
        .expect("a restarted worker")
        .pid;
    assert_eq!(
        process_env(new_pid, "FIXTURE_MODE").as_deref(),
        Some("ready"),
        "a restart of the old generation runs with the old environment"
    );
    assert!(h.stop().success());
}

#[test]
fn scale_rolls_over_to_n_and_refuses_nonsense() {
    let d = TempDir::new("cfg-scale-cmd");
    let cfg = Config::new(d.path(), fixture(), &[]);
    let mut h = start("cfg-scale-cmd", &cfg, 1);
    let control = h.control.display().to_string();
    for bad in ["0", "4097", "many"] {
        let out = h.cli(&["scale", bad], &[]);
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("worker count"), "{err}");
    }
    let out = h.cli(&["scale", "3"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("(3 workers)"));
    let st = h.status().unwrap();
    assert_eq!(settings_workers(&st), 3);
    assert_eq!(live_workers(&h), 3);
    let human = String::from_utf8_lossy(&h.cli(&["status"], &[]).stdout).into_owned();
    assert!(human.contains("settings in force: 3 worker(s)"), "{human}");
    assert!(human.contains("CONFIG FILE DIFFERS"), "{human}");
    let json = String::from_utf8_lossy(&h.cli(&["status"], &["--json"]).stdout).into_owned();
    for key in [
        "\"settings\"",
        "\"workers\": 3",
        "\"ready\": \"notify\"",
        "\"ready_timeout\": \"60s\"",
        "\"drain_timeout\": \"5s\"",
        "\"drain_signal\": \"SIGTERM\"",
        "\"rolling\": false",
        "\"user\": null",
        "\"group\": null",
    ] {
        assert!(json.contains(key), "{key} missing: {json}");
    }
    // The file still says 1: status says so, and the next reload goes back to it.
    assert!(
        st.config_differs
            .as_deref()
            .is_some_and(|d| d.contains("workers")),
        "{:?}",
        st.config_differs
    );
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(settings_workers(&h.status().unwrap()), 1);
    // No handoff there: the reload's exit code.
    let out = std::process::Command::new(handoff_bin())
        .args(["scale", "2", "--control", &format!("{control}.nothing")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(h.stop().success());
}

#[test]
fn a_fifo_a_huge_file_or_no_file_fails_the_reload_and_the_loop_goes_on() {
    let d = TempDir::new("cfg-hostile");
    let cfg = Config::new(d.path(), fixture(), &[]);
    let mut h = start("cfg-hostile", &cfg, 1);
    let before = h.status().unwrap();
    let fifo = || {
        std::fs::remove_file(&cfg.path).unwrap();
        nix::unistd::mkfifo(&cfg.path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    };
    let huge = || {
        // Valid TOML, 2 MiB of comments: over the cap.
        std::fs::write(&cfg.path, "#".repeat(2 << 20)).unwrap();
    };
    let gone = || std::fs::remove_file(&cfg.path).unwrap();
    let cases: [(&str, &dyn Fn(), &str); 3] = [
        ("fifo", &fifo, "not a regular file"),
        ("huge", &huge, "larger than"),
        ("removed", &gone, "No such file"),
    ];
    for (what, make, want) in cases {
        cfg.write(1, "");
        make();
        let t0 = std::time::Instant::now();
        let (code, out, err) = h.reload_cli(&[]);
        eprintln!(
            "config file {what}: reload exit {code} after {:?}",
            t0.elapsed()
        );
        assert_eq!(code, 1, "{what}: {out} {err}");
        assert!(err.contains(want), "{what}: {err}");
        let st = h.status().expect("handoff answers");
        assert_eq!(st.current_generation, before.current_generation, "{what}");
        assert!(
            st.config_differs
                .as_deref()
                .is_some_and(|d| d.contains("cannot be applied")),
            "{what}: {:?}",
            st.config_differs
        );
        assert_eq!(live_workers(&h), 1);
    }
    assert!(h.stop().success());
}

#[test]
fn a_reload_storm_while_the_file_changes_ends_with_the_last_file() {
    let d = TempDir::new("cfg-storm");
    let cfg = Config::new(d.path(), fixture(), &[]);
    let mut h = start("cfg-storm", &cfg, 1);
    let control = h.control.clone();
    let mut clients = Vec::new();
    let mut codes = Vec::new();
    for round in 0..12 {
        // Rewritten between requests; every third version of the file is broken.
        if round % 3 == 2 {
            std::fs::write(&cfg.path, "workers = [\n").unwrap();
        } else {
            cfg.write(1 + round % 4, "");
        }
        let c = control.clone();
        clients.push(thread::spawn(move || {
            std::process::Command::new(handoff_bin())
                .args(["reload", "--control"])
                .arg(&c)
                .output()
                .unwrap()
        }));
        if round % 4 == 1 {
            let c = control.clone();
            // A scale amid the reloads (during a rollover, most likely).
            clients.push(thread::spawn(move || {
                std::process::Command::new(handoff_bin())
                    .args(["scale", "2", "--control"])
                    .arg(&c)
                    .output()
                    .unwrap()
            }));
        }
        thread::sleep(Duration::from_millis(15));
    }
    for c in clients {
        let out = c.join().unwrap();
        if out.status.code() != Some(0) {
            eprintln!("storm: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        codes.push(out.status.code());
    }
    let ok = codes.iter().filter(|c| **c == Some(0)).count();
    let refused = codes.iter().filter(|c| **c == Some(1)).count();
    eprintln!(
        "reload storm: {} requests, {ok} ok, {refused} refused (broken file), others {:?}",
        codes.len(),
        codes
            .iter()
            .filter(|c| !matches!(c, Some(0) | Some(1)))
            .collect::<Vec<_>>()
    );
    // Which file a request finds depends on when its client connects: every one must end
    // with an answer (served or refused), none hang or fail otherwise.
    assert_eq!(ok + refused, codes.len(), "{codes:?}");
    // The last file (round 11: 1 + 11 % 4 = 4 workers) is in force after one more reload.
    cfg.write(4, "");
    let (code, out, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{out} {err}");
    let st = h.wait_for(LONG, |st| st.rolling_over_to.is_none(), "quiet");
    assert_eq!(settings_workers(&st), 4);
    assert_eq!(live_workers(&h), 4);
    assert!(st.config_differs.is_none(), "{:?}", st.config_differs);
    assert!(h.stop().success());
}
