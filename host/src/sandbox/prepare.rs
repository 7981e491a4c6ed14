//! Preparing a runtime at start: the module it runs (a pre-initialized snapshot, built once,
//! or the stock module), compiled once into the cache and linked; its prelude; and a first
//! run that checks it and learns the pages a call writes.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::spawn::spawn_guest;
use super::{SandboxConfig, call, engine, guest, outcome, output, prefault, snapshot, state};
use crate::progress::Progress;
use crate::runtime::{Cache, FileRole, InstalledRuntime};
use crate::sandbox::Limits;

/// One runtime made ready: which module, how it gets its prelude, checked by a first call.
pub(super) fn prepare(
    engine: &engine::SandboxEngine,
    executor: &tokio::runtime::Handle,
    runtime: &InstalledRuntime,
    layout: call::Layout,
    config: &SandboxConfig,
    cache: &Cache,
    progress: &Progress,
) -> Result<call::Prepared> {
    let reactor = runtime.manifest.abi.kind == crate::runtime::AbiKind::Reactor;
    let snapshot = if reactor && config.snapshot && runtime.path(FileRole::Reactor).is_some() {
        match snapshot::ensure(engine, executor, runtime, &layout, &config.preload, cache, progress) {
            Ok(found) => Some(found),
            Err(e) => {
                tracing::warn!("cannot build a snapshot of {} ({e:#}); using its stock module", runtime.name());
                None
            }
        }
    } else {
        None
    };
    let (label, path, sha256, prelude) = match snapshot {
        Some((path, sha256)) => (format!("runtime {} (snapshot)", runtime.name()), path, sha256, guest::Prelude::Baked),
        None => (
            format!("runtime {}", runtime.name()),
            runtime.path(FileRole::Module).context("runtime has no module")?,
            runtime.sha256(FileRole::Module).context("runtime has no module")?.to_string(),
            guest::Prelude::Source,
        ),
    };
    let module = engine.module(&label, &path, &sha256, cache, progress)?;
    if let Some(wasmtime::ExternType::Memory(memory)) = module.get_export("memory") {
        let initial = memory.minimum() * memory.page_size();
        if initial > config.limits.memory_bytes {
            anyhow::bail!(
                "{label} starts with {} MiB of memory, more than the {} MiB limit; raise --memory-mb",
                initial >> 20,
                config.limits.memory_bytes >> 20
            );
        }
    }
    let mut ready = call::Prepared::new(&engine.engine, &module, runtime, layout)?;
    ready.prelude = prelude;
    match ready.prelude {
        guest::Prelude::Source if reactor => {
            let hex = compile_prelude(executor, &engine.engine, &ready).context("cannot compile the guest prelude")?;
            ready.prelude = guest::Prelude::Marshalled(hex);
        }
        guest::Prelude::Baked => {
            let written = smoke_test(executor, &engine.engine, &ready).with_context(|| {
                format!(
                    "the snapshot {} is unusable; delete it (or start with --no-snapshot) and start again",
                    path.display()
                )
            })?;
            ready.write_set = written.map(Arc::new);
            ready.baseline = match baseline(executor, &engine.engine, &ready, &path, &sha256) {
                Ok(Some(baseline)) => Some(Arc::new(baseline)),
                Ok(None) => {
                    tracing::warn!("{label} keeps state outside its memory; its calls keep no Python state");
                    None
                }
                Err(e) => {
                    tracing::warn!("{label}: cannot read its memory image ({e:#}); its calls keep no Python state");
                    None
                }
            };
        }
        _ => {}
    }
    Ok(ready)
}

/// Runs one script outside any call (at start), blocking the calling thread (which may be
/// inside another tokio runtime); returns how it ended and what it printed.
fn run_once(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
    script: call::Script,
    learn: bool,
) -> Result<(outcome::Ran, String, String)> {
    let limits = Limits::default();
    let deadline = Instant::now() + limits.timeout;
    let (run, _folders) = call::GuestRun::offline(script, "startup", limits, deadline, learn)?;
    let (stdout, stderr) = (run.stdout.clone(), run.stderr.clone());
    // Wait on a std channel: this thread may be inside another tokio runtime, where blocking on
    // tokio's channels is refused.
    let handle = spawn_guest(executor, Arc::new(prepared.clone()), engine.clone(), run);
    let (done, wait) = std::sync::mpsc::channel();
    executor.spawn(async move {
        let _ = done.send(handle.await);
    });
    let ran = wait.recv().context("the startup run stopped")?.context("the startup run ended without a result")??;
    let text = |capture: &output::Capture| String::from_utf8_lossy(&capture.take().data).into_owned();
    Ok((ran, text(&stdout), text(&stderr)))
}

/// Compiles the prelude with the runtime's own CPython, once per process: the code object,
/// marshalled, as hex.
fn compile_prelude(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
) -> Result<String> {
    let (ran, hex, stderr) =
        run_once(executor, engine, prepared, call::Script::Bare(guest::compile_prelude_turn()), false)?;
    if ran.ending != outcome::Ending::Exited(0) || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{:?}: {stderr}", ran.ending);
    }
    Ok(hex)
}

/// What Python states of this snapshot are relative to: its memory image, and the resting
/// shadow-stack pointer (`None` when the snapshot has other mutable globals).
fn baseline(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
    wasm: &std::path::Path,
    id: &str,
) -> Result<Option<state::Baseline>> {
    let Some(stack_top) = snapshot::resting_stack_pointer(wasm)? else { return Ok(None) };
    let (prepared, engine, id) = (prepared.clone(), engine.clone(), id.to_string());
    let (done, wait) = std::sync::mpsc::channel();
    executor.spawn(async move {
        let seen = call::with_pristine_memory(&prepared, &engine, |memory| state::Baseline::new(id, memory, stack_top));
        let _ = done.send(seen.await);
    });
    Ok(Some(wait.recv().context("the baseline run stopped")??))
}

/// Checks that a freshly loaded snapshot runs code as a call would, and learns the pages such
/// a call writes.
fn smoke_test(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
) -> Result<Option<prefault::WriteSet>> {
    let (ran, stdout, stderr) = run_once(executor, engine, prepared, call::Script::User("print('ok')".into()), true)?;
    if ran.ending != outcome::Ending::Exited(0) || stdout != "ok\n" {
        anyhow::bail!("the snapshot does not run code ({:?}): {stdout}{stderr}", ran.ending);
    }
    if let Some(written) = &ran.written {
        tracing::debug!(pages = written.pages(), ranges = written.ranges(), "learned the pages a call writes");
    }
    Ok(ran.written)
}
