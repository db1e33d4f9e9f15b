//! Pinned releases: a generation's `working_directory`, resolved once when it starts.
//!
//! With the `releases/X` + `current` symlink layout, `current` moves on with every install.
//! A generation resolves it (realpath) when it starts and keeps the result: its workers, and
//! every restart of them after a crash, run with that directory as their cwd, and command
//! words naming a path under `working_directory` are rewritten to the resolved directory. So a
//! crashed worker of generation 7 comes back as release 7, not as whatever `current` names
//! now (a release that was just rolled back, say). The version file is read through the same
//! resolved directory, so the version a generation is labelled with is the release it runs.
//!
//! For in-place installs (no symlink: the files are overwritten) nothing can pin the old
//! files. [`on_disk_note`] says so when a worker starts after the version file changed.

use std::path::{Path, PathBuf};

use handoff_common::protocol::VersionInfo;

/// `working_directory` resolved: every symlink followed (relative ones too, and `..`), to a
/// directory. The error names the configured path and says what was wrong.
pub fn resolve(working_directory: &Path) -> Result<PathBuf, String> {
    let shown = working_directory.display();
    let dir = std::fs::canonicalize(working_directory).map_err(|e| {
        format!(
            "working_directory {shown} cannot be resolved: {e}{}",
            if e.raw_os_error() == Some(libc::ELOOP) {
                " (a symlink loop?)"
            } else {
                ""
            }
        )
    })?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(format!(
            "working_directory {shown} resolves to {}, which is not a directory",
            dir.display()
        )),
        Err(e) => Err(format!(
            "working_directory {shown} resolves to {}: {e}",
            dir.display()
        )),
    }
}

/// `path` with a leading `working_directory` replaced by the resolved `dir` (whole path
/// components only); any other path unchanged.
pub fn pin(path: &Path, working_directory: &Path, dir: &Path) -> PathBuf {
    match path.strip_prefix(working_directory) {
        Ok(rest) if rest.as_os_str().is_empty() => dir.to_path_buf(),
        Ok(rest) => dir.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// The command a pinned generation runs: each word that is a path under `working_directory`
/// (`/opt/app/current/server.js`) is pinned to `dir`. Other words are left alone (a flag
/// like `--require=/opt/app/current/x.js` is not rewritten: relative paths, which resolve
/// against the pinned cwd, are the documented way). A relative program with a slash
/// (`node_modules/.bin/egg-handoff-start`) is made absolute under `dir`, so handoff finds it
/// in the pinned release before it forks.
pub fn command(command: &[String], working_directory: &Path, dir: &Path) -> Vec<String> {
    command
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let p = Path::new(word);
            if i == 0 && p.is_relative() && word.contains('/') {
                return dir.join(p).display().to_string();
            }
            if p.is_absolute() && p.starts_with(working_directory) {
                return pin(p, working_directory, dir).display().to_string();
            }
            word.clone()
        })
        .collect()
}

/// Why a generation's pinned directory cannot be used for another worker any more (the
/// release was deleted while the generation ran), or `None` when it can.
pub fn gone(dir: &Path, generation: u64, working_directory: Option<&Path>) -> Option<String> {
    let why = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return None,
        Ok(_) => "it is no longer a directory".to_string(),
        Err(e) => e.to_string(),
    };
    Some(format!(
        "the release directory {} of generation {generation}{} is gone ({why}): the worker \
         cannot be restarted from it; `handoff reload` starts a generation from the release \
         working_directory names now",
        dir.display(),
        working_directory
            .map(|w| format!(" (working_directory {} when it started)", w.display()))
            .unwrap_or_default(),
    ))
}

/// What to say of a worker of `generation` started when the version file reads `now`, while
/// the generation started from `then`: `None` when the file is unchanged (or either could not
/// be read: nothing plain can be said then).
pub fn on_disk_note(generation: u64, then: &VersionInfo, now: &VersionInfo) -> Option<String> {
    if then.error.is_some() || now.error.is_some() || then.hash == now.hash {
        return None;
    }
    let label = |v: &VersionInfo| {
        v.version
            .as_deref()
            .map(|s| format!("version {}", handoff_common::text::printable(s)))
            .unwrap_or_else(|| format!("sha256 {}", v.hash.get(..12).unwrap_or(&v.hash)))
    };
    Some(format!(
        "runs the files now on disk ({}), not generation {generation}'s release ({}): {} \
         changed since the generation started (an in-place install); `handoff reload` starts \
         a generation labelled with them",
        label(now),
        label(then),
        then.path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-pin-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.canonicalize().unwrap()
    }

    #[test]
    fn resolves_relative_symlinks_and_names_what_failed() {
        let d = temp("resolve");
        std::fs::create_dir_all(d.join("releases/1")).unwrap();
        symlink("releases/1", d.join("current")).unwrap();
        assert_eq!(resolve(&d.join("current")).unwrap(), d.join("releases/1"));
        // A symlink to a missing release.
        symlink("releases/9", d.join("dangling")).unwrap();
        let e = resolve(&d.join("dangling")).unwrap_err();
        assert!(
            e.contains("dangling cannot be resolved: No such file"),
            "{e}"
        );
        // A loop.
        symlink("loop-b", d.join("loop-a")).unwrap();
        symlink("loop-a", d.join("loop-b")).unwrap();
        let e = resolve(&d.join("loop-a")).unwrap_err();
        assert!(e.contains("symlink loop"), "{e}");
        // A file.
        std::fs::write(d.join("f"), "x").unwrap();
        assert!(
            resolve(&d.join("f"))
                .unwrap_err()
                .contains("not a directory")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn command_words_under_the_working_directory_are_pinned() {
        let wd = Path::new("/opt/app/current");
        let dir = Path::new("/opt/app/releases/2");
        let c = |v: &[&str]| {
            command(
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                wd,
                dir,
            )
        };
        assert_eq!(
            c(&["node", "/opt/app/current/server.js", "--port=1"]),
            ["node", "/opt/app/releases/2/server.js", "--port=1"]
        );
        assert_eq!(
            c(&["node_modules/.bin/egg-handoff-start", "."]),
            [
                "/opt/app/releases/2/node_modules/.bin/egg-handoff-start",
                "."
            ]
        );
        // Whole components only; other absolute paths stay.
        assert_eq!(
            c(&["/opt/app/current2/x", "/usr/bin/node"]),
            ["/opt/app/current2/x", "/usr/bin/node"]
        );
        assert_eq!(
            pin(Path::new("/opt/app/current/package.json"), wd, dir),
            Path::new("/opt/app/releases/2/package.json")
        );
        assert_eq!(
            pin(Path::new("/etc/app.json"), wd, dir),
            Path::new("/etc/app.json")
        );
    }

    #[test]
    fn a_changed_version_file_is_named_with_both_versions() {
        let v = |version: &str, hash: &str| VersionInfo {
            path: "/opt/app/package.json".into(),
            version: Some(version.into()),
            hash: hash.into(),
            error: None,
        };
        assert_eq!(on_disk_note(2, &v("1.0.0", "aa"), &v("1.0.0", "aa")), None);
        let n = on_disk_note(2, &v("1.0.0", "aa"), &v("1.1.0", "bb")).unwrap();
        assert!(
            n.starts_with(
                "runs the files now on disk (version 1.1.0), not generation 2's release (version 1.0.0)"
            ),
            "{n}"
        );
    }
}
