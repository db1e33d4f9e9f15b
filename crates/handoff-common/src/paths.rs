//! Where a handoff keeps its sockets. One home for the policy the units, the CLI and the
//! trigger all follow:
//!
//! - runtime dir: `--runtime-dir`, else `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`),
//!   else `$XDG_RUNTIME_DIR/handoff`, else `/run/handoff` (root) or `/tmp/handoff-UID`;
//! - control socket: `--control`, else `RUNTIME_DIR/control.sock`;
//! - read-only status socket (with `status_group`): `status.sock` next to the control socket;
//! - notify sockets of the workers: `RUNTIME_DIR/notify-XXXXXXXX/`, one dir per control
//!   socket, so two handoffs sharing a runtime dir never touch each other's;
//! - the `handoff@APP` units: runtime dir `/run/handoff-APP`, config `/etc/handoff/APP.toml`.

use std::path::{Path, PathBuf};

/// The control socket's file name inside a runtime dir.
pub const CONTROL_SOCKET: &str = "control.sock";

/// The read-only status socket's file name (next to the control socket; `status_group`).
pub const STATUS_SOCKET: &str = "status.sock";

/// The read-only status socket that goes with a control socket: same directory.
pub fn status_beside(control: &Path) -> PathBuf {
    control.with_file_name(STATUS_SOCKET)
}

/// The runtime dir of `handoff@APP.service` (its `RuntimeDirectory=handoff-%i`).
pub fn app_runtime_dir(app: &str) -> PathBuf {
    PathBuf::from(format!("/run/handoff-{app}"))
}

/// The control socket of `handoff@APP.service`.
pub fn app_control(app: &str) -> PathBuf {
    app_runtime_dir(app).join(CONTROL_SOCKET)
}

/// The config file of `handoff@APP.service`.
pub fn app_config(app: &str) -> PathBuf {
    PathBuf::from(format!("/etc/handoff/{app}.toml"))
}

/// The control socket inside a runtime dir.
pub fn control_in(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(CONTROL_SOCKET)
}

/// The directory of the workers' notify sockets of the handoff with this control socket.
pub fn notify_dir(runtime_dir: &Path, control: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let id = crate::release::hash(control.as_os_str().as_bytes());
    runtime_dir.join(format!("notify-{}", &id[..8]))
}

/// The path clients use when none is given: `HANDOFF_CONTROL`, else the control socket in the
/// default runtime directory.
pub fn default_control_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HANDOFF_CONTROL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    control_in(&default_runtime_dir())
}

/// See the module docs for the order.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, colon-separated; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("handoff");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/handoff")
    } else {
        PathBuf::from(format!("/tmp/handoff-{uid}"))
    }
}

/// Creates `dir` with mode 0700 (and its parents as needed). With `traversable`, 0711: workers
/// running as another user must reach their own notify socket inside; nobody else can list
/// the directory.
///
/// An existing `dir` must be a real directory owned by this process's user: the default
/// `/tmp/handoff-UID` sits in a world-writable directory where another user may have put a
/// symlink (handoff would then clear `notify/` wherever it points) or a directory of their own
/// (where they could swap the control socket). Both are refused, not repaired.
pub fn make_private_dir(dir: &Path, traversable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let mode = if traversable { 0o711 } else { 0o700 };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symlink; handoff keeps its sockets only in a directory of its own (remove it, or give --runtime-dir)",
                dir.display()
            ),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to handoff's uid {me}; another user could replace the sockets in it (remove it, or give --runtime-dir)",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    // An existing dir keeps its mode under create(): force it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_paths_match_the_units() {
        assert_eq!(
            app_control("shop"),
            Path::new("/run/handoff-shop/control.sock")
        );
        assert_eq!(app_config("shop"), Path::new("/etc/handoff/shop.toml"));
        let a = notify_dir(Path::new("/run/x"), Path::new("/run/x/a.sock"));
        let b = notify_dir(Path::new("/run/x"), Path::new("/run/x/b.sock"));
        assert!(
            a.to_string_lossy().starts_with("/run/x/notify-") && a != b,
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn a_symlinked_runtime_dir_is_refused() {
        let base = std::env::temp_dir().join(format!("handoff-paths-{}", std::process::id()));
        let real = base.join("real");
        make_private_dir(&real, false).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = make_private_dir(&link, false).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        make_private_dir(&real, true).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
