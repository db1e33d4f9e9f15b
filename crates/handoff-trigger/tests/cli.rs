//! Drives the real `handoff-trigger` binary against a fake `handoff` (a shell script that records
//! each call, with the version file's content at that moment, and exits with a chosen code).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_handoff-trigger");

/// A per-test directory: app/ (the install), fake handoff, its call log.
struct Env {
    dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!(
            "handoff-trigger-it-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("app")).unwrap();
        let fake = dir.join("handoff");
        fs::write(
            &fake,
            format!(
                "#!/bin/sh\n\
                 # fake handoff: record the call and the version file's content, exit as told\n\
                 d='{d}'\n\
                 printf '%s | %s\\n' \"$*\" \"$(tr -d '\\n' < \"$d/app/package.json\" 2>/dev/null)\" >> \"$d/calls\"\n\
                 exit $(cat \"$d/exit\" 2>/dev/null || echo 0)\n",
                d = dir.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        Env { dir }
    }

    fn app(&self) -> PathBuf {
        self.dir.join("app")
    }

    fn pj(&self) -> PathBuf {
        self.app().join("package.json")
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn set_exit(&self, code: i32) {
        fs::write(self.dir.join("exit"), code.to_string()).unwrap();
    }

    fn cmd(&self, extra: &[&str]) -> Command {
        self.cmd_lock(extra, None)
    }

    fn cmd_lock(&self, extra: &[&str], rpm_lock: Option<&Path>) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--handoff").arg(self.dir.join("handoff"));
        match rpm_lock {
            Some(l) => c.arg("--rpm-lock").arg(l),
            None => c.arg("--no-rpm-lock"),
        };
        c.args([
            "--settle",
            "300ms",
            "--max-wait",
            "20s",
            "--reload-timeout",
            "20s",
        ])
        .args(extra)
        .arg(self.pj())
        .env_remove("HANDOFF_CONTROL")
        .env_remove("HANDOFF_TRIGGER_SETTLE")
        .env_remove("HANDOFF_TRIGGER_RPM_LOCK")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null());
        c
    }

    fn oneshot(&self, extra: &[&str]) -> Output {
        let mut child = self
            .cmd(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_child(&mut child, Duration::from_secs(30));
        child.wait_with_output().unwrap()
    }

    fn spawn_watch(&self, extra: &[&str]) -> Watcher {
        let log = fs::File::create(self.dir.join("watch.log")).unwrap();
        let child = self
            .cmd(&[&["--watch"], extra].concat())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Watcher {
            child,
            log: self.dir.join("watch.log"),
        }
    }

    /// Waits (bounded) until there are `n` calls; returns them.
    fn wait_calls(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.calls();
            if c.len() >= n || Instant::now() >= deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Watcher {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_child(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("handoff-trigger did not exit within {within:?}");
}

fn write_in_place(p: &Path, s: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

fn replace_by_rename(p: &Path, s: &str) {
    let tmp = p.with_file_name(".package.json.tmp");
    fs::write(&tmp, s).unwrap();
    fs::rename(&tmp, p).unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn oneshot_valid_release_asks_handoff_once() {
    let e = Env::new("valid");
    write_in_place(&e.pj(), r#"{"name":"app","version":"1.0.0"}"#);
    let out = e.oneshot(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let calls = e.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].starts_with("reload --if-changed |"), "{calls:?}");
    assert!(stderr(&out).contains("version 1.0.0"), "{}", stderr(&out));
}

#[test]
fn oneshot_passes_the_control_socket() {
    let e = Env::new("control");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let sock = e.dir.join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = e.oneshot(&["--control", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let calls = e.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with(&format!(
            "reload --if-changed --control {} |",
            sock.display()
        )),
        "{calls:?}"
    );
}

#[test]
fn oneshot_app_not_running_is_not_an_error() {
    let e = Env::new("notrunning");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let out = e.oneshot(&["--control", e.dir.join("nope.sock").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(e.calls().is_empty());
    assert!(
        stderr(&out).contains("handoff is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn oneshot_invalid_json_never_asks() {
    let e = Env::new("invalid");
    write_in_place(&e.pj(), r#"{"name":"app","version":"2.0.0""#);
    let out = e.oneshot(&[]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(e.calls().is_empty());
    assert!(
        stderr(&out).contains("is not valid JSON"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn oneshot_missing_version_file_is_nothing_to_do() {
    let e = Env::new("missing");
    let out = e.oneshot(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(e.calls().is_empty());
}

#[test]
fn oneshot_reports_handoff_results() {
    let e = Env::new("results");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    for (handoff_exit, want) in [(1, 1), (69, 69), (3, 70)] {
        e.set_exit(handoff_exit);
        let out = e.oneshot(&["--settle", "50ms"]);
        assert_eq!(
            out.status.code(),
            Some(want),
            "handoff exit {handoff_exit}: {}",
            stderr(&out)
        );
    }
    e.set_exit(1);
    let out = e.oneshot(&["--settle", "50ms"]);
    assert!(
        stderr(&out).contains("rolled back") || stderr(&out).contains("kept the old generation"),
        "{}",
        stderr(&out)
    );
}

/// A control socket that exists but does not answer (handoff restarting): the trigger asks again
/// until handoff answers, bounded by --wait-running; without a known control path it does not wait.
#[test]
fn oneshot_asks_again_while_handoff_does_not_answer() {
    let e = Env::new("restarting");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let control = e.dir.join("control.sock");
    // bound and never listened on: connect() is refused, as for a crashed handoff's socket
    let _stale = std::os::unix::net::UnixDatagram::bind(&control).unwrap();
    e.set_exit(69);
    let ctl = control.to_str().unwrap();
    let mut child = e
        .cmd(&["--settle", "50ms", "--control", ctl])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let calls = e.wait_calls(3, Duration::from_secs(10));
    assert!(calls.len() >= 3, "asked only {} times", calls.len());
    e.set_exit(0); // the restarted handoff answers
    wait_child(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not answer yet"),
        "{}",
        stderr(&out)
    );

    // never answers: gives up after --wait-running with 69
    let t0 = Instant::now();
    e.set_exit(69);
    let out = e.oneshot(&["--settle", "50ms", "--control", ctl, "--wait-running", "1s"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());

    // the socket goes away meanwhile: not running, exit 0
    let cleanup = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            let _ = std::fs::remove_file(control);
        })
    };
    let out = e.oneshot(&["--settle", "50ms", "--control", ctl]);
    cleanup.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("handoff went away"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn oneshot_waits_until_the_install_settles() {
    let e = Env::new("settle");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let mut child = e
        .cmd(&["--settle", "500ms"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // an install that keeps writing files (in a subdirectory too) for 1.5 s, and rewrites
    // package.json in the middle; the rollover may only be asked after the last write + 500 ms
    fs::create_dir_all(e.app().join("lib/deep")).unwrap();
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        fs::write(e.app().join(format!("lib/deep/f{i}.js")), "x").unwrap();
        if i == 5 {
            write_in_place(&e.pj(), r#"{"version":"1.0.1"}"#);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let last_write = Instant::now();
    assert!(
        e.calls().is_empty(),
        "asked before the install settled: {:?}",
        e.calls()
    );
    wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        last_write.elapsed() >= Duration::from_millis(450),
        "returned too early"
    );
    let calls = e.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].contains("1.0.1"), "{calls:?}");
}

#[test]
fn oneshot_excluded_directories_do_not_delay() {
    let e = Env::new("exclude");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    fs::create_dir_all(e.app().join("logs")).unwrap();
    let mut child = e
        .cmd(&["--exclude", "logs", "--max-wait", "3s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // the app writes its log inside the install directory all the time
    let t0 = Instant::now();
    let mut done = false;
    while t0.elapsed() < Duration::from_secs(4) {
        fs::write(e.app().join("logs/app.log"), format!("{:?}", t0.elapsed())).unwrap();
        if child.try_wait().unwrap().is_some() {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(done, "did not settle although only excluded files changed");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(e.calls().len(), 1);
}

#[test]
fn oneshot_gives_up_when_it_never_settles() {
    let e = Env::new("nosettle");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let mut child = e
        .cmd(&["--max-wait", "1s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) && child.try_wait().unwrap().is_none() {
        fs::write(e.app().join("busy"), format!("{:?}", t0.elapsed())).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_child(&mut child, Duration::from_secs(5));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(e.calls().is_empty());
}

#[test]
fn oneshot_waits_for_the_rpm_lock() {
    use nix::fcntl::{Flock, FlockArg};
    let e = Env::new("rpmlock");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let lock = e.dir.join(".rpm.lock");
    fs::write(&lock, "").unwrap();
    let held = Flock::lock(
        fs::File::open(&lock).unwrap(),
        FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .unwrap();
    let mut child = e
        .cmd_lock(&["--settle", "200ms"], Some(&lock))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        e.calls().is_empty(),
        "asked while an rpm transaction held the lock"
    );
    assert!(child.try_wait().unwrap().is_none());
    let released = Instant::now();
    drop(held);
    wait_child(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(released.elapsed() >= Duration::from_millis(150));
    assert_eq!(e.calls().len(), 1);
    assert!(
        stderr(&out).contains("package transaction is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn watch_one_rollover_per_release() {
    let e = Env::new("watch");
    write_in_place(&e.pj(), r#"{"version":"1.0.0"}"#);
    let w = e.spawn_watch(&["--settle", "200ms"]);
    // catch-up cycle at start
    assert_eq!(
        e.wait_calls(1, Duration::from_secs(10)).len(),
        1,
        "{}",
        w.log()
    );

    // written in place (in several chunks, one open)
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(e.pj())
            .unwrap();
        f.write_all(br#"{"version":"#).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(br#""1.1.0"}"#).unwrap();
    }
    let c = e.wait_calls(2, Duration::from_secs(10));
    assert_eq!(c.len(), 2, "{}", w.log());
    assert!(c[1].contains("1.1.0"), "{c:?}");

    // replaced by rename
    replace_by_rename(&e.pj(), r#"{"version":"1.2.0"}"#);
    let c = e.wait_calls(3, Duration::from_secs(10));
    assert_eq!(c.len(), 3, "{}", w.log());
    assert!(c[2].contains("1.2.0"), "{c:?}");

    // invalid JSON: no call, an error in the log
    replace_by_rename(&e.pj(), r#"{"version": "#);
    assert!(
        w.wait_log("is not valid JSON", Duration::from_secs(10)),
        "{}",
        w.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(e.calls().len(), 3, "{:?}", e.calls());

    // a burst of 10,000 files plus a new package.json: one call, after the burst
    fs::create_dir_all(e.app().join("node_modules")).unwrap();
    for i in 0..10_000 {
        if i % 1000 == 0 {
            fs::create_dir_all(e.app().join(format!("node_modules/m{}", i / 1000))).unwrap();
        }
        if i == 5_000 {
            replace_by_rename(&e.pj(), r#"{"version":"2.0.0"}"#);
        }
        fs::write(
            e.app().join(format!("node_modules/m{}/f{i}.js", i / 1000)),
            "x",
        )
        .unwrap();
    }
    let c = e.wait_calls(4, Duration::from_secs(20));
    assert_eq!(c.len(), 4, "{}", w.log());
    assert!(c[3].contains("2.0.0"), "{c:?}");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        e.calls().len(),
        4,
        "a second call for one release: {:?}",
        e.calls()
    );
}

#[test]
fn watch_directory_created_later_and_replaced() {
    let e = Env::new("later");
    fs::remove_dir_all(e.app()).unwrap();
    let w = e.spawn_watch(&["--settle", "200ms"]);
    assert!(
        w.wait_log("does not exist yet", Duration::from_secs(10)),
        "{}",
        w.log()
    );
    // the directory appears, with a release in it
    let staged = e.dir.join("staged");
    fs::create_dir_all(&staged).unwrap();
    fs::write(staged.join("package.json"), r#"{"version":"1.0.0"}"#).unwrap();
    fs::rename(&staged, e.app()).unwrap();
    let c = e.wait_calls(1, Duration::from_secs(10));
    assert_eq!(c.len(), 1, "{}", w.log());
    assert!(c[0].contains("1.0.0"));
    // the whole directory is swapped for a new release
    let next = e.dir.join("next");
    fs::create_dir_all(&next).unwrap();
    fs::write(next.join("package.json"), r#"{"version":"1.1.0"}"#).unwrap();
    fs::rename(e.app(), e.dir.join("old")).unwrap();
    fs::rename(&next, e.app()).unwrap();
    let c = e.wait_calls(2, Duration::from_secs(10));
    assert_eq!(c.len(), 2, "{}", w.log());
    assert!(c[1].contains("1.1.0"), "{c:?}");
    // and the new directory is watched: a change in it is seen
    write_in_place(&e.pj(), r#"{"version":"1.2.0"}"#);
    let c = e.wait_calls(3, Duration::from_secs(10));
    assert_eq!(c.len(), 3, "{}", w.log());
    assert!(c[2].contains("1.2.0"), "{c:?}");
}

#[test]
fn usage_errors_exit_64() {
    let out = Command::new(BIN)
        .arg("--settle")
        .arg("x")
        .arg("/a/package.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}
