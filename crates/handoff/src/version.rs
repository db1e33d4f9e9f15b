//! What a generation was started from: the app's version file (its `package.json`).
//!
//! handoff records it per generation and shows it in status; `reload --if-changed` compares
//! the file's content hash with the running generation's, so a release that lands twice (the
//! rpm scriptlet and the `.path` unit both asking) rolls over once.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::control::VersionInfo;

/// Reads the file; never fails: problems are recorded in [`VersionInfo::error`].
pub fn read(path: &Path) -> VersionInfo {
    match std::fs::read(path) {
        Ok(bytes) => from_bytes(path, &bytes),
        Err(e) => VersionInfo {
            path: path.to_path_buf(),
            version: None,
            hash: String::new(),
            error: Some(format!("cannot read {}: {e}", path.display())),
        },
    }
}

pub fn from_bytes(path: &Path, bytes: &[u8]) -> VersionInfo {
    let hash = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (version, error) = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => (
            v.get("version")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            None,
        ),
        Err(e) => (
            None,
            Some(format!("{} is not valid JSON: {e}", path.display())),
        ),
    };
    VersionInfo {
        path: path.to_path_buf(),
        version,
        hash,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_and_hash() {
        let v = from_bytes(Path::new("p.json"), br#"{"name":"app","version":"1.2.3"}"#);
        assert_eq!(v.version.as_deref(), Some("1.2.3"));
        assert_eq!(v.hash.len(), 64);
        assert!(v.error.is_none());
        let w = from_bytes(Path::new("p.json"), br#"{"name":"app","version":"1.2.3" }"#);
        assert_ne!(v.hash, w.hash, "content hash sees any change");
        let bad = from_bytes(Path::new("p.json"), br#"{"name":"app","vers"#);
        assert!(bad.error.unwrap().contains("not valid JSON"));
        let missing = read(Path::new("/nonexistent/package.json"));
        assert!(missing.error.unwrap().contains("cannot read"));
    }
}
