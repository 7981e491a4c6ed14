//! SHA-256 checks: a file matches its pin or is refused with an error naming the file, the
//! expected and the actual sum. Verified files are remembered by a stamp (size, mtime, inode)
//! so a warm start does not re-hash 250 MB; `toolhost runtime verify` always re-hashes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A file that does not match its pinned SHA-256.
#[derive(Debug, thiserror::Error)]
#[error("{subject}: sha256 mismatch for {file}: expected {expected}, got {actual}; {advice}")]
pub struct ChecksumMismatch {
    /// What the file belongs to: `runtime python`, `runtime python (snapshot)`.
    pub subject: String,
    pub file: String,
    pub expected: String,
    pub actual: String,
    pub advice: String,
}

/// The hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a verified file looked like when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub sha256: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl Stamp {
    pub fn of(path: &Path, sha256: &str) -> std::io::Result<Stamp> {
        let meta = fs::symlink_metadata(path)?;
        Ok(Stamp {
            sha256: sha256.to_string(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        })
    }

    /// True when the file at `path` is still the one this stamp was taken of.
    pub fn still_matches(&self, path: &Path) -> bool {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => Stamp::of(path, &self.sha256).is_ok_and(|now| now == *self),
            _ => false,
        }
    }
}

/// `verified.json` in a runtime's folder: each file's stamp from its last full check.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stamps {
    pub files: BTreeMap<String, Stamp>,
    /// The digest of matplotlib's data folder (see `mpl_data::tree_digest`), when extracted.
    #[serde(default)]
    pub mpl_data_sha256: Option<String>,
}

impl Stamps {
    pub const FILE: &'static str = "verified.json";

    pub fn load(dir: &Path) -> Stamps {
        fs::read(dir.join(Self::FILE)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(Self::FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_the_standard_vectors() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        fs::write(tmp.path(), b"abc").expect("write");
        assert_eq!(sha256_file(tmp.path()).expect("hash"), sha256_bytes(b"abc"));
    }

    #[test]
    fn a_rewritten_file_no_longer_matches_its_stamp() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("f");
        fs::write(&path, b"one").expect("write");
        let stamp = Stamp::of(&path, &sha256_bytes(b"one")).expect("stamp");
        assert!(stamp.still_matches(&path));
        fs::write(&path, b"two!").expect("rewrite");
        assert!(!stamp.still_matches(&path));
    }

    #[test]
    fn the_mismatch_message_names_file_expected_and_actual() {
        let e = ChecksumMismatch {
            subject: "runtime python".into(),
            file: "python.wasm".into(),
            expected: "aa".into(),
            actual: "bb".into(),
            advice: "run toolhost runtime fetch".into(),
        };
        let text = e.to_string();
        for part in ["python.wasm", "expected aa", "got bb", "toolhost runtime fetch"] {
            assert!(text.contains(part), "{text}");
        }
    }
}
