//! The subcommands: each turns `Settings` into work and an exit status.

pub mod bench;
pub mod prepare;
pub mod run;
pub mod runtimes;
pub mod serve;
pub mod soak;
pub mod stdio;
pub mod tools;
pub mod worker;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::app::App;
use crate::config::Settings;
use crate::progress::Progress;
use crate::runtime::{self, Cache, InstalledRuntime, manifest};
use crate::sandbox::Sandbox;

/// The named runtimes made ready (fetched and verified when needed), and a sandbox started on
/// them (compiling each module on first use).
pub fn start_sandbox(settings: &Settings, names: &[String], progress: &Progress) -> Result<Sandbox> {
    let installed = ensure_runtimes(settings, names, progress)?;
    Sandbox::start(settings.sandbox.clone(), &installed, &Cache::new(&settings.cache_dir), progress)
}

/// The named runtimes, fetched and verified when needed.
pub fn ensure_runtimes(settings: &Settings, names: &[String], progress: &Progress) -> Result<Vec<InstalledRuntime>> {
    let cache = Cache::new(&settings.cache_dir);
    names
        .iter()
        .map(|name| {
            let manifest = known_runtime(name)?;
            runtime::ensure(&manifest, &cache, progress).with_context(|| format!("runtime {name} is not ready"))
        })
        .collect()
}

/// The manifest of a runtime toolhost ships, or an error listing those it has.
pub fn known_runtime(name: &str) -> Result<manifest::Manifest> {
    manifest::find(name).with_context(|| {
        let names: Vec<String> = manifest::builtin().into_iter().map(|m| m.name).collect();
        format!("unknown runtime {name:?}; toolhost ships: {}", names.join(", "))
    })
}

/// The service's state, with its runtime prepared on a blocking thread: the transports answer
/// at once (health checks, `initialize`, `tools/list`) while a first start downloads and
/// compiles. The returned task ends when the runtime is ready, or with why it cannot be.
pub fn start_app(settings: &Settings) -> Result<(Arc<App>, tokio::task::JoinHandle<Result<()>>)> {
    let limits = settings.sandbox.limits;
    let app = Arc::new(App::new(&settings.app, limits)?);
    app.sessions.workspaces().spawn_expiry();
    if settings.app.watch_tools {
        app.catalog().watch()?;
    }
    let preparing = app.clone();
    let settings = settings.clone();
    let ready = tokio::task::spawn_blocking(move || {
        let names = vec![settings.sandbox.default_runtime.clone()];
        let started = prepare::in_child_if_cold(&settings, &names).and_then(|installed| {
            Sandbox::start(settings.sandbox.clone(), &installed, &Cache::new(&settings.cache_dir), &Progress::log())
        });
        match started {
            Ok(sandbox) => {
                preparing.services.sandbox.set(sandbox);
                tracing::info!("ready: the {} runtime is loaded", names.join(", "));
                Ok(())
            }
            Err(e) => {
                preparing.services.sandbox.fail(format!("{e:#}"));
                Err(e)
            }
        }
    });
    let ready = tokio::spawn(async move { ready.await.context("the runtime preparation panicked")? });
    Ok((app, ready))
}
