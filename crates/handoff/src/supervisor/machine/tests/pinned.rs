//! `working_directory`: each generation records the release it resolved to when it started,
//! and its workers (restarts included) are spawned as that generation's.

use std::path::Path;

use super::*;

fn pinned(workers: usize) -> Policy {
    Policy {
        working_directory: Some("/opt/app/current".into()),
        ..policy(workers)
    }
}

fn release_dir(h: &Harness, generation: u64) -> Option<std::path::PathBuf> {
    h.m.status(h.now)
        .generations
        .iter()
        .find(|g| g.number == generation)
        .and_then(|g| g.release_dir.clone())
}

#[test]
fn a_crash_after_a_rollback_restarts_the_old_generation_from_its_own_release() {
    let mut h = Harness::serving(pinned(1));
    assert_eq!(h.m.release_of(1), Some(&Ok("/opt/app/releases/1".into())));
    assert_eq!(
        release_dir(&h, 1).as_deref(),
        Some(Path::new("/opt/app/releases/1"))
    );
    // `current` now names release 2, which crashes at start: rolled back.
    h.resolves_to = Ok("/opt/app/releases/2".into());
    h.version = version("2.0.0");
    let a = h.reload(1);
    assert!(
        logs(&a, Level::Info)
            .iter()
            .any(|l| l.contains("version 2.0.0, from /opt/app/releases/2")),
        "{:?}",
        logs(&a, Level::Info)
    );
    let new = *h.pids.keys().last().unwrap();
    let a = h.exit(new, 1);
    assert_eq!(outcome(&a, 1).outcome, Outcome::RolledBack);
    assert_eq!(h.m.current, 1);
    // Generation 1's worker crashes: its restart is generation 1's, so the executor starts
    // it from releases/1, whatever `current` names now.
    h.exit(100, 1);
    let a = h.after(RESTART_BASE);
    let gens: Vec<u64> = a
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect();
    assert_eq!(gens, [1]);
    assert_eq!(h.m.release_of(1), Some(&Ok("/opt/app/releases/1".into())));
}

#[test]
fn a_working_directory_that_does_not_resolve_is_logged_and_kept_for_the_spawn() {
    let mut h = Harness::serving(pinned(1));
    h.resolves_to = Err("working_directory /opt/app/current cannot be resolved: No such file or directory (os error 2)".into());
    let a = h.reload(1);
    assert!(
        logs(&a, Level::Error)
            .iter()
            .any(|l| l.contains("cannot be resolved")),
        "{a:?}"
    );
    // The executor fails the spawn with that message (it reads `release_of`).
    assert!(matches!(h.m.release_of(2), Some(Err(_))));
    assert_eq!(release_dir(&h, 2), None);
}

#[test]
fn a_worker_running_the_files_now_on_disk_says_so_in_status_and_the_journal() {
    let mut h = Harness::serving(policy(1));
    let worker = h.pids[&100];
    let a = h.send(Input::RunsOnDisk {
        worker,
        note:
            "runs the files now on disk (version 1.1.0), not generation 1's release (version 1.0.0)"
                .into(),
    });
    let warned = logs(&a, Level::Warn);
    assert!(
        warned[0].starts_with("worker 0 runs the files now on disk (version 1.1.0)"),
        "{warned:?}"
    );
    let st = h.m.status(h.now);
    assert!(
        st.workers[0]
            .runs_on_disk
            .as_deref()
            .is_some_and(|n| n.contains("version 1.1.0"))
    );
}

#[test]
fn a_changed_working_directory_is_a_changed_setting() {
    let a = policy(1);
    let b = pinned(1);
    assert_eq!(a.changes(&b), ["working_directory"]);
    let st = Harness::serving(pinned(1)).m.status(Instant::now());
    assert_eq!(
        st.settings.unwrap().working_directory.as_deref(),
        Some(Path::new("/opt/app/current"))
    );
}
