//! The subcommands: each turns `Settings` into work and an exit status.

pub mod bench;
pub mod run;
pub mod runtimes;

use anyhow::{Context, Result};

use crate::config::Settings;
use crate::progress::Progress;
use crate::runtime::{self, Cache, manifest};
use crate::sandbox::Sandbox;

/// The named runtimes made ready (fetched and verified when needed), and a sandbox started on
/// them (compiling each module on first use).
pub fn start_sandbox(settings: &Settings, names: &[String], progress: &Progress) -> Result<Sandbox> {
    let cache = Cache::new(&settings.cache_dir);
    let mut installed = Vec::new();
    for name in names {
        let manifest = known_runtime(name)?;
        let ready =
            runtime::ensure(&manifest, &cache, progress).with_context(|| format!("runtime {name} is not ready"))?;
        installed.push(ready);
    }
    Sandbox::start(settings.sandbox.clone(), &installed, &cache, progress)
}

/// The manifest of a runtime toolhost ships, or an error listing those it has.
pub fn known_runtime(name: &str) -> Result<manifest::Manifest> {
    manifest::find(name).with_context(|| {
        let names: Vec<String> = manifest::builtin().into_iter().map(|m| m.name).collect();
        format!("unknown runtime {name:?}; toolhost ships: {}", names.join(", "))
    })
}
