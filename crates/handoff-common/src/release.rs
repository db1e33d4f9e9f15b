//! A release's identity: the app's `package.json`. handoff records it per generation and
//! `reload --if-changed` compares its content hash with the running generation's;
//! `handoff-trigger` takes a release only when the file parses as a JSON object. Both read it
//! with [`read_bounded`]: the file belongs to the release, not to handoff, so it may be a FIFO,
//! a symlink to `/dev/zero` or a gigabyte of garbage.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::protocol::VersionInfo;

/// No `package.json` is this large; anything larger is not read.
pub const MAX_SIZE: u64 = 1024 * 1024;

/// Hex SHA-256 of `bytes`: the identity two readers of one release agree on.
pub fn hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a regular file of at most [`MAX_SIZE`] bytes. Opens with `O_NONBLOCK` so a FIFO put
/// in its place cannot block the caller, then refuses anything but a regular file.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_SIZE) as usize);
    file.take(MAX_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KiB", MAX_SIZE / 1024),
        ));
    }
    Ok(bytes)
}

/// What handoff records for a generation. Never fails: problems go into `error`.
pub fn version_info(path: &Path) -> VersionInfo {
    match read_bounded(path) {
        Ok(bytes) => version_info_from(path, &bytes),
        Err(e) => VersionInfo {
            path: path.to_path_buf(),
            version: None,
            hash: String::new(),
            error: Some(format!("cannot read {}: {e}", path.display())),
        },
    }
}

pub fn version_info_from(path: &Path, bytes: &[u8]) -> VersionInfo {
    let (version, error) = match check_release(path, bytes) {
        Ok(r) => (r.version, None),
        Err(e) => (None, Some(e.to_string())),
    };
    VersionInfo {
        path: path.to_path_buf(),
        version,
        hash: hash(bytes),
        error,
    }
}

/// What a valid `package.json` tells about the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The `version` field, when present and a string.
    pub version: Option<String>,
    /// Hex SHA-256 of the file's bytes (as read, BOM included).
    pub sha256: String,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = &self.sha256[..12.min(self.sha256.len())];
        match &self.version {
            Some(v) => write!(f, "version {} (sha256 {short})", crate::text::printable(v)),
            None => write!(f, "no version field (sha256 {short})"),
        }
    }
}

/// Why a `package.json` is not (yet) a release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path} does not exist (yet): no release to roll over to")]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not valid JSON ({detail}); half-written or broken release, not rolling over: fix the file, rewriting it triggers again"
    )]
    InvalidJson { path: PathBuf, detail: String },
    #[error(
        "{path} is JSON but not an object ({found}); not rolling over: a package.json is a JSON object"
    )]
    NotAnObject { path: PathBuf, found: &'static str },
    #[error(
        "{path}: \"version\" must be a string, found {found}; not rolling over: fix the version field"
    )]
    BadVersion { path: PathBuf, found: &'static str },
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Checks the bytes of a `package.json`. `path` is only used in error messages.
pub fn check_release(path: &Path, bytes: &[u8]) -> Result<Release, ReleaseError> {
    // Editors and some Windows tools write a UTF-8 BOM; Node's JSON loader accepts it, so do we.
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ReleaseError::InvalidJson {
            path: path.to_owned(),
            detail: if body.iter().all(u8::is_ascii_whitespace) {
                "file is empty".to_owned()
            } else {
                e.to_string()
            },
        })?;
    let obj = value.as_object().ok_or_else(|| ReleaseError::NotAnObject {
        path: path.to_owned(),
        found: kind(&value),
    })?;
    let version = match obj.get("version") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ReleaseError::BadVersion {
                path: path.to_owned(),
                found: kind(other),
            });
        }
    };
    Ok(Release {
        version,
        sha256: hash(bytes),
    })
}

/// Reads and checks `path`.
pub fn read_release(path: &Path) -> Result<Release, ReleaseError> {
    let bytes = read_bounded(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ReleaseError::Missing {
                path: path.to_owned(),
            }
        } else {
            ReleaseError::Read {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    check_release(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<Release, ReleaseError> {
        check_release(Path::new("/opt/app/package.json"), s.as_bytes())
    }

    #[test]
    fn valid_with_version() {
        let r = check(r#"{"name":"app","version":"1.2.3","dependencies":{}}"#).unwrap();
        assert_eq!(r.version.as_deref(), Some("1.2.3"));
        assert_eq!(r.sha256.len(), 64);
        assert!(r.to_string().starts_with("version 1.2.3 (sha256 "));
    }

    #[test]
    fn valid_without_version() {
        let r = check(r#"{"name":"app"}"#).unwrap();
        assert_eq!(r.version, None);
    }

    #[test]
    fn hash_is_of_the_content() {
        let a = check(r#"{"version":"1"}"#).unwrap();
        let b = check(r#"{"version":"1"}"#).unwrap();
        let c = check("{\"version\":\"1\"}\n").unwrap();
        assert_eq!(a.sha256, b.sha256, "same bytes, same hash");
        assert_ne!(a.sha256, c.sha256, "any byte change is a new release");
        // sha256 of the empty JSON object "{}"
        assert_eq!(
            check("{}").unwrap().sha256,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn half_written_is_rejected() {
        let full = r#"{"name":"app","version":"2.0.0","scripts":{"start":"node server.js"}}"#;
        for cut in 1..full.len() {
            let err = check(&full[..cut]).unwrap_err();
            assert!(
                matches!(err, ReleaseError::InvalidJson { .. }),
                "prefix of length {cut} must be invalid, got {err}"
            );
        }
    }

    #[test]
    fn empty_file_says_so() {
        let err = check("").unwrap_err();
        assert!(err.to_string().contains("file is empty"), "{err}");
        assert!(err.to_string().contains("/opt/app/package.json"), "{err}");
        assert!(matches!(
            check(" \n").unwrap_err(),
            ReleaseError::InvalidJson { .. }
        ));
    }

    #[test]
    fn non_objects_and_bad_versions() {
        assert!(matches!(
            check("[1,2]").unwrap_err(),
            ReleaseError::NotAnObject {
                found: "an array",
                ..
            }
        ));
        assert!(matches!(
            check("\"x\"").unwrap_err(),
            ReleaseError::NotAnObject { .. }
        ));
        assert!(matches!(
            check(r#"{"version": 2}"#).unwrap_err(),
            ReleaseError::BadVersion {
                found: "a number",
                ..
            }
        ));
        assert!(matches!(
            check(r#"{"version": "1"} trailing"#).unwrap_err(),
            ReleaseError::InvalidJson { .. }
        ));
    }

    #[test]
    fn bom_is_accepted() {
        let r = check("\u{feff}{\"version\":\"3.0.0\"}").unwrap();
        assert_eq!(r.version.as_deref(), Some("3.0.0"));
    }

    #[test]
    fn version_info_records_problems_and_the_hash() {
        let p = Path::new("p.json");
        let v = version_info_from(p, br#"{"name":"app","version":"1.2.3"}"#);
        assert_eq!(v.version.as_deref(), Some("1.2.3"));
        assert_eq!(v.hash.len(), 64);
        assert!(v.error.is_none());
        let bad = version_info_from(p, br#"{"name":"app","vers"#);
        assert!(bad.error.unwrap().contains("not valid JSON"));
        let missing = version_info(Path::new("/nonexistent/package.json"));
        assert!(missing.error.unwrap().contains("cannot read"));
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("handoff-release-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO must not block (nobody ever writes to it).
        let fifo = dir.join("fifo.json");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_bounded(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // /dev/zero behind a symlink: refused, nothing read.
        let zero = dir.join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_bounded(&zero).is_err());
        // Too large.
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; MAX_SIZE as usize + 1]).unwrap();
        assert!(
            read_bounded(&big)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
        assert!(version_info(&big).error.unwrap().contains("larger than"));
        std::fs::write(&big, br#"{"version":"1"}"#).unwrap();
        assert_eq!(read_bounded(&big).unwrap(), br#"{"version":"1"}"#);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file() {
        let err = read_release(Path::new("/nonexistent/handoff-trigger/package.json")).unwrap_err();
        assert!(matches!(err, ReleaseError::Missing { .. }), "{err}");
    }
}
