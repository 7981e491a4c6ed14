//! What the cache holds for this configuration: whether a start would compile anything, and
//! pruning what no runtime of this configuration uses any more.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{SandboxConfig, call, engine, snapshot};
use crate::runtime::{Cache, FileRole, InstalledRuntime};

/// Removes from the cache's `compiled/` folder every file this configuration does not use
/// (compiled modules and snapshots of earlier pins, preloads or wasmtime versions); returns the
/// paths removed (or that would be, when `dry_run`) with their sizes.
pub fn prune(
    config: &SandboxConfig,
    runtimes: &[InstalledRuntime],
    cache: &Cache,
    dry_run: bool,
) -> Result<Vec<(PathBuf, u64)>> {
    let engine =
        engine::SandboxEngine::new(engine::EngineLimits { slots: 1, max_memory_bytes: config.limits.memory_bytes })?;
    let mut keep = std::collections::BTreeSet::new();
    let mut keep_compiled = |key: &str| -> Result<()> {
        let path = engine.compiled_path(key, cache)?;
        keep.insert(PathBuf::from(format!("{}.lock", path.display())));
        keep.insert(path);
        Ok(())
    };
    let mut snapshot_files = Vec::new();
    for runtime in runtimes {
        let reactor = runtime.manifest.abi.kind == crate::runtime::AbiKind::Reactor;
        let mut uses_stock = true;
        if reactor && config.snapshot && runtime.path(FileRole::Reactor).is_some() {
            let (files, snapshot_sha, instrumented) =
                snapshot::files_in_use(runtime, &call::Layout::of(runtime), &config.preload, cache)?;
            keep_compiled(&instrumented)?;
            if let Some(sha) = snapshot_sha {
                keep_compiled(&sha)?;
                uses_stock = false;
            }
            snapshot_files.extend(files);
        }
        if uses_stock && let Some(sha) = runtime.sha256(FileRole::Module) {
            keep_compiled(sha)?;
        }
    }
    keep.extend(snapshot_files);
    let compiled = cache.compiled_dir()?;
    let mut removed = Vec::new();
    for dir in [compiled.clone(), compiled.join("snapshots")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && !keep.contains(&path) {
                let size = entry.metadata().map_or(0, |m| m.len());
                if !dry_run {
                    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                }
                removed.push((path, size));
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether everything `Sandbox::start` loads for these runtimes is already in the cache
/// (snapshots built, modules compiled), so that starting compiles nothing.
pub fn is_warm(config: &SandboxConfig, runtimes: &[InstalledRuntime], cache: &Cache) -> Result<bool> {
    for runtime in runtimes {
        let reactor = runtime.manifest.abi.kind == crate::runtime::AbiKind::Reactor;
        let sha = if reactor && config.snapshot && runtime.path(FileRole::Reactor).is_some() {
            let (_, snapshot_sha, _) =
                snapshot::files_in_use(runtime, &call::Layout::of(runtime), &config.preload, cache)?;
            match snapshot_sha {
                Some(sha) => sha,
                None => return Ok(false),
            }
        } else {
            runtime.sha256(FileRole::Module).context("runtime has no module")?.to_string()
        };
        if !is_compiled(config, &sha, cache)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a module with this SHA-256 is compiled in the cache for this configuration.
pub fn is_compiled(config: &SandboxConfig, sha256: &str, cache: &Cache) -> Result<bool> {
    let engine =
        engine::SandboxEngine::new(engine::EngineLimits { slots: 1, max_memory_bytes: config.limits.memory_bytes })?;
    Ok(crate::runtime::cache::is_private_file(&engine.compiled_path(sha256, cache)?))
}
