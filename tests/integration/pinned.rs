//! `working_directory`: each generation pins the release its `current` symlink named when it
//! started. Real handoff, real worker processes; the worker reports (in its `STATUS=`) the
//! directory it runs in and the version in its own `package.json`, so what runs is proven by
//! the worker, not by handoff's bookkeeping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff_common::protocol::StatusReport;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(30);

/// A worker that serves nothing: it reads `package.json` from its cwd, refuses to start
/// when a `crash` file is next to it (a bad release), says `READY=1` with its cwd and
/// version in `STATUS=`, and exits on SIGTERM.
const WORKER: &str = r#"
import json, os, signal, socket, sys, time
version = json.load(open("package.json"))["version"]
if os.path.exists("crash"):
    sys.exit(3)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(("READY=1\nSTATUS=cwd=%s pwd=%s version=%s" % (os.getcwd(), os.environ.get("PWD"), version)).encode(), addr)
while True:
    time.sleep(60)
"#;

/// `root/releases/NAME` with the worker and a package.json of `version`.
fn release(root: &Path, name: &str, version: &str, crash: bool) -> PathBuf {
    let dir = root.join("releases").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("worker.py"), WORKER).unwrap();
    std::fs::write(
        dir.join("package.json"),
        format!("{{\"name\": \"app\", \"version\": \"{version}\"}}\n"),
    )
    .unwrap();
    if crash {
        std::fs::write(dir.join("crash"), "").unwrap();
    }
    dir.canonicalize().unwrap()
}

/// Points `root/current` at `releases/NAME` the way deploy tools do: a relative symlink
/// made aside, then renamed over the old one (atomic).
fn switch(root: &Path, name: &str) {
    let tmp = root.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("releases/{name}"), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("current")).unwrap();
}

fn start(tag: &str, working_directory: &Path) -> Handoff {
    start_with(tag, working_directory, &[])
}

fn start_with(tag: &str, working_directory: &Path, extra: &[&str]) -> Handoff {
    let mut args = s(extra);
    args.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--working-directory".into(),
        working_directory.display().to_string(),
        "--version-file".into(),
        working_directory.join("package.json").display().to_string(),
        "--drain-timeout".into(),
        "5s".into(),
    ]);
    Handoff::start(
        tag,
        Opts {
            args,
            // Relative: found in, and run from, the pinned release.
            worker: vec![python(), "worker.py".into()],
            ..Default::default()
        },
    )
}

/// The ready worker of the current generation: (pid, its STATUS=).
fn serving(st: &StatusReport) -> Option<(i32, String)> {
    st.workers
        .iter()
        .find(|w| w.generation == st.current_generation && w.state == "ready")
        .map(|w| (w.pid, w.status.clone().unwrap_or_default()))
}

/// Kills the serving worker (a crash) and waits for its replacement to be ready.
fn crash_and_respawn(h: &Handoff) -> (StatusReport, String) {
    let (pid, _) = serving(&h.status().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = h.wait_for(
        LONG,
        |st| serving(st).is_some_and(|(p, _)| p != pid),
        "the crashed worker restarted",
    );
    let status = serving(&st).unwrap().1;
    (st, status)
}

fn release_dir(st: &StatusReport, generation: u64) -> Option<PathBuf> {
    st.generations
        .iter()
        .find(|g| g.number == generation)
        .and_then(|g| g.release_dir.clone())
}

#[test]
fn after_a_rollback_a_crashed_worker_comes_back_from_its_own_release() {
    let root = TempDir::new("pin-rollback");
    let r1 = release(root.path(), "1", "1.0.0", false);
    switch(root.path(), "1");
    let h = start("pin-rollback", &root.path().join("current"));
    let st = h.status().unwrap();
    assert_eq!(release_dir(&st, 1), Some(r1.clone()));
    let v = st.generations[0].version.as_ref().unwrap();
    assert_eq!(v.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        v.path,
        r1.join("package.json"),
        "read through the resolved dir"
    );
    let (_, status) = serving(&st).unwrap();
    assert_eq!(
        status,
        format!("cwd={0} pwd={0} version=1.0.0", r1.display())
    );

    // Release 2 crashes at start: the switch, then the reload, rolls back.
    let r2 = release(root.path(), "2", "2.0.0", true);
    switch(root.path(), "2");
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rolled back"), "{err}");
    let log = h.log();
    assert!(
        log.contains(&format!("version 2.0.0, from {}", r2.display())),
        "the new generation resolved current to release 2:\n{log}"
    );

    // `current` still names release 2. Generation 1's worker crashes: it comes back as
    // release 1, as its worker says.
    let (st, status) = crash_and_respawn(&h);
    assert_eq!(st.current_generation, 1);
    assert_eq!(
        status,
        format!("cwd={0} pwd={0} version=1.0.0", r1.display())
    );
    assert_eq!(release_dir(&st, 1), Some(r1));
    assert!(
        st.workers.iter().all(|w| w.runs_on_disk.is_none()),
        "{st:?}"
    );
    // The human status names the release.
    let out = h.cli(&["status"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("; release "), "{text}");
}

#[test]
fn a_respawn_after_an_in_place_install_says_it_runs_the_files_now_on_disk() {
    // No symlink: the release is overwritten where it is (an rpm, say).
    let root = TempDir::new("pin-inplace");
    let app = release(root.path(), "app", "1.0.0", false);
    let h = start("pin-inplace", &app);
    std::fs::write(
        app.join("package.json"),
        "{\"name\": \"app\", \"version\": \"1.1.0\"}\n",
    )
    .unwrap();
    let (_, status) = crash_and_respawn(&h);
    assert!(status.ends_with("version=1.1.0"), "{status}");
    let st = h.wait_for(
        LONG,
        |st| st.workers.iter().any(|w| w.runs_on_disk.is_some()),
        "the respawned worker marked as running the files on disk",
    );
    let note = st
        .workers
        .iter()
        .find_map(|w| w.runs_on_disk.clone())
        .unwrap();
    assert!(
        note.starts_with(
            "runs the files now on disk (version 1.1.0), not generation 1's release (version 1.0.0)"
        ),
        "{note}"
    );
    let log = h.log();
    assert!(
        log.contains("worker 0 runs the files now on disk (version 1.1.0)"),
        "{log}"
    );
    let out = h.cli(&["status"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("worker 0 runs the files now on disk (version 1.1.0)"),
        "{text}"
    );
}

#[test]
fn a_deleted_release_fails_the_respawn_with_its_name_and_a_reload_recovers() {
    let root = TempDir::new("pin-deleted");
    let r1 = release(root.path(), "1", "1.0.0", false);
    switch(root.path(), "1");
    let h = start("pin-deleted", &root.path().join("current"));
    // Release 2 installed and `current` switched, but no reload yet; release 1 is cleaned
    // up while generation 1 still runs from it.
    let r2 = release(root.path(), "2", "2.0.0", false);
    switch(root.path(), "2");
    std::fs::remove_dir_all(&r1).unwrap();
    let (pid, _) = serving(&h.status().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let want = format!(
        "the release directory {} of generation 1 (working_directory {} when it started) is gone",
        r1.display(),
        root.path().join("current").display()
    );
    assert!(
        wait_until(LONG, || h.log().contains(&want)),
        "{want}\n{}",
        h.log()
    );
    // The worker was not started from release 2 behind the operator's back.
    let st = h.status().unwrap();
    assert!(serving(&st).is_none(), "{st:?}");
    // A reload starts generation 2 from what `current` names now.
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 0, "{err}");
    let st = h.status().unwrap();
    assert_eq!(release_dir(&st, st.current_generation), Some(r2.clone()));
    let (_, status) = serving(&st).unwrap();
    assert_eq!(
        status,
        format!("cwd={0} pwd={0} version=2.0.0", r2.display())
    );
}

#[test]
fn a_working_directory_that_resolves_to_nothing_fails_the_reload_with_its_name() {
    let root = TempDir::new("pin-dangling");
    release(root.path(), "1", "1.0.0", false);
    switch(root.path(), "1");
    let h = start("pin-dangling", &root.path().join("current"));
    // `current` names a release that is not there (yet).
    switch(root.path(), "9");
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("current cannot be resolved: No such file or directory"),
        "{err}"
    );
    assert_eq!(h.status().unwrap().current_generation, 1);
}

#[test]
fn a_symlink_loop_fails_the_reload_and_the_old_generation_serves() {
    let root = TempDir::new("pin-loop");
    release(root.path(), "1", "1.0.0", false);
    switch(root.path(), "1");
    let h = start("pin-loop", &root.path().join("current"));
    let (pid, _) = serving(&h.status().unwrap()).unwrap();
    let tmp = root.path().join("current.tmp");
    std::os::unix::fs::symlink("current", &tmp).unwrap();
    std::fs::rename(&tmp, root.path().join("current")).unwrap();
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("(a symlink loop?)"), "{err}");
    let st = h.status().unwrap();
    assert_eq!(serving(&st).map(|(p, _)| p), Some(pid), "{st:?}");
}

#[test]
fn a_switch_during_a_rollover_does_not_change_the_release_it_started_from() {
    let root = TempDir::new("pin-mid");
    release(root.path(), "1", "1.0.0", false);
    switch(root.path(), "1");
    let h = start_with(
        "pin-mid",
        &root.path().join("current"),
        &["--min-uptime", "2s"],
    );
    let r2 = release(root.path(), "2", "2.0.0", false);
    release(root.path(), "3", "3.0.0", false);
    switch(root.path(), "2");
    let control = h.control.clone();
    let bin = handoff_bin();
    let reload = std::thread::spawn(move || {
        std::process::Command::new(bin)
            .args(["reload", "--control"])
            .arg(control)
            .output()
            .unwrap()
    });
    // Generation 2 is in its stability window: `current` moves on to 3.
    h.wait_for(
        LONG,
        |st| st.stabilizing.is_some(),
        "generation 2 stabilizing",
    );
    switch(root.path(), "3");
    let out = reload.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = h.status().unwrap();
    assert_eq!(st.current_generation, 2);
    assert_eq!(release_dir(&st, 2), Some(r2.clone()));
    let v = &st.generations[0].version.as_ref().unwrap();
    assert_eq!(v.version.as_deref(), Some("2.0.0"));
    let (_, status) = crash_and_respawn(&h);
    assert_eq!(
        status,
        format!("cwd={0} pwd={0} version=2.0.0", r2.display())
    );
}

#[test]
fn a_release_the_workers_user_cannot_enter_is_named() {
    if !nix::unistd::getuid().is_root()
        || nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .is_none()
    {
        eprintln!("SKIP: needs root and a `nobody` user");
        return;
    }
    let root = TempDir::new("pin-perm");
    use std::os::unix::fs::PermissionsExt;
    // The temp dir is the test's (0700 by default on some systems): let nobody through.
    for d in [root.path().to_path_buf(), root.path().join("releases")] {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    release(root.path(), "1", "1.0.0", false);
    switch(root.path(), "1");
    let h = start_with(
        "pin-perm",
        &root.path().join("current"),
        &["--user", "nobody"],
    );
    let r2 = release(root.path(), "2", "2.0.0", false);
    std::fs::set_permissions(&r2, std::fs::Permissions::from_mode(0o700)).unwrap();
    switch(root.path(), "2");
    let (code, _, err) = h.reload_cli(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot enter the working directory {}: Permission denied",
            r2.display()
        )),
        "{err}"
    );
}
