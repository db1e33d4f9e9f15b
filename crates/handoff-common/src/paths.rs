//! Where a handoff keeps its sockets. One home for the policy the units, the CLI and the
//! trigger all follow:
//!
//! - runtime dir: `--runtime-dir`, else `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`),
//!   else `$XDG_RUNTIME_DIR/handoff`, else `/run/handoff` (root) or `/tmp/handoff-UID`;
//! - control socket: `--control`, else `RUNTIME_DIR/control.sock`;
//! - read-only status socket (with `status_group`): `status.sock` next to the control socket;
//! - notify sockets of the workers: `RUNTIME_DIR/notify/`;
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

/// The directory of the workers' notify sockets inside a runtime dir.
pub fn notify_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("notify")
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
pub fn make_private_dir(dir: &Path, traversable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mode = if traversable { 0o711 } else { 0o700 };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
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
        assert_eq!(notify_dir(Path::new("/run/x")), Path::new("/run/x/notify"));
    }
}
