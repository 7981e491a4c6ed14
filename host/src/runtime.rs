//! Guest runtimes on disk: the pinned manifests, fetching wheels with pip, SHA-256 verification
//! and the private cache they live in. Nothing here runs wasm; `sandbox` compiles and runs what
//! this module has verified.

pub mod cache;
pub mod fetch;
pub mod manifest;
pub mod mpl_data;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use cache::Cache;
pub use manifest::{AbiKind, FileRole, Manifest};
use verify::{ChecksumMismatch, Stamp, Stamps, sha256_file};

use crate::progress::Progress;

/// A runtime unpacked in the cache. Built only by `ensure`, `fetch` and `verify`, after its
/// files were checked against their pins.
#[derive(Debug, Clone)]
pub struct InstalledRuntime {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl InstalledRuntime {
    fn at(manifest: Manifest, dir: PathBuf) -> Self {
        InstalledRuntime { manifest, dir }
    }

    /// Where a pinned file lives inside a runtime folder: the stdlib in `lib/` (the folder the
    /// guest sees, holding the zip alone), everything else at the top.
    fn file_path(dir: &Path, role: FileRole, name: &str) -> PathBuf {
        match role {
            FileRole::Stdlib => dir.join("lib").join(name),
            FileRole::Module | FileRole::Reactor => dir.join(name),
        }
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The path of the file with this role.
    pub fn path(&self, role: FileRole) -> Option<PathBuf> {
        self.manifest.file(role).map(|f| Self::file_path(&self.dir, role, &f.name))
    }

    /// The pinned SHA-256 of the file with this role.
    pub fn sha256(&self, role: FileRole) -> Option<&str> {
        self.manifest.file(role).map(|f| f.sha256.as_str())
    }

    /// The host folder mounted read-only at `layout.stdlib`.
    pub fn stdlib_dir(&self) -> Option<PathBuf> {
        self.manifest.file(FileRole::Stdlib).map(|_| self.dir.join("lib"))
    }

    /// The host folder mounted read-only at `layout.matplotlib_data`.
    pub fn matplotlib_data_dir(&self) -> Option<PathBuf> {
        self.manifest.layout.matplotlib_data.as_ref().map(|_| self.dir.join(mpl_data::DIR))
    }
}

/// The runtime ready to use: fetched if it is not in the cache, its files checked by their
/// stamps (re-hashed when a stamp no longer matches). A file that does not match its pin is an
/// error naming the file, the sums and the fix; it is never used.
pub fn ensure(manifest: &Manifest, cache: &Cache, progress: &Progress) -> Result<InstalledRuntime> {
    let runtimes = cache.runtimes_dir()?;
    let dir = runtimes.join(manifest.dir_name());
    let _lock = cache::lock(&runtimes, &manifest.dir_name())?;
    if !dir.is_dir() {
        return fetch::fetch(manifest, cache, progress);
    }
    check(manifest, &dir, false, progress)
}

/// Re-hashes every file of an installed runtime, whatever its stamps say.
pub fn verify(manifest: &Manifest, cache: &Cache, progress: &Progress) -> Result<InstalledRuntime> {
    let dir = cache.runtimes_dir()?.join(manifest.dir_name());
    if !dir.is_dir() {
        anyhow::bail!(
            "runtime {} is not installed (no {}); run `toolhost runtime fetch {}`",
            manifest.name,
            dir.display(),
            manifest.name
        );
    }
    check(manifest, &dir, true, progress)
}

/// Whether the runtime's folder exists in the cache (says nothing of its files).
pub fn is_installed(manifest: &Manifest, cache: &Cache) -> bool {
    cache.root().join("runtimes").join(manifest.dir_name()).is_dir()
}

fn check(manifest: &Manifest, dir: &Path, full: bool, progress: &Progress) -> Result<InstalledRuntime> {
    let mut stamps = Stamps::load(dir);
    let mut changed = false;
    for pinned in &manifest.files {
        let path = InstalledRuntime::file_path(dir, pinned.role, &pinned.name);
        let trusted = !full
            && stamps.files.get(&pinned.name).is_some_and(|s| s.sha256 == pinned.sha256 && s.still_matches(&path));
        if trusted {
            continue;
        }
        let step = progress.step(format!("verifying {}", pinned.name));
        let actual = sha256_file(&path).with_context(|| {
            format!(
                "runtime {}: cannot read {}; run `toolhost runtime fetch {}`",
                manifest.name,
                path.display(),
                manifest.name
            )
        })?;
        if actual != pinned.sha256 {
            return Err(ChecksumMismatch {
                subject: format!("runtime {}", manifest.name),
                file: path.display().to_string(),
                expected: pinned.sha256.clone(),
                actual,
                advice: format!(
                    "the file was changed after it was verified and is refused; run \
                     `toolhost runtime fetch {}` to replace the runtime",
                    manifest.name
                ),
            }
            .into());
        }
        step.finish(format!("{} matches its pinned sha256", pinned.name));
        stamps.files.insert(pinned.name.clone(), Stamp::of(&path, &pinned.sha256)?);
        changed = true;
    }
    if full && manifest.layout.matplotlib_data.is_some() {
        let actual = mpl_data::tree_digest(&dir.join(mpl_data::DIR))?;
        if stamps.mpl_data_sha256.as_deref() != Some(actual.as_str()) {
            return Err(ChecksumMismatch {
                subject: format!("runtime {}", manifest.name),
                file: dir.join(mpl_data::DIR).display().to_string(),
                expected: stamps.mpl_data_sha256.clone().unwrap_or_else(|| "(not recorded)".into()),
                actual,
                advice: format!("run `toolhost runtime fetch {}` to replace the runtime", manifest.name),
            }
            .into());
        }
    }
    if changed {
        std::fs::write(Stamps::path(dir), serde_json::to_vec_pretty(&stamps)?)?;
    }
    Ok(InstalledRuntime::at(manifest.clone(), dir.to_path_buf()))
}
