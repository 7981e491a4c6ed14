//! Pre-initialized snapshots (wasmtime-wizer): the runtime's plain reactor, instrumented,
//! started in the call layout, with the prelude installed and the preload (numpy, pandas,
//! matplotlib by default) imported through `turn`, then snapshotted into a new module whose
//! memory already holds all of it. A fresh instance of that module runs pandas code in
//! milliseconds instead of importing it for a second. Built once per key (reactor SHA-256,
//! preload, layout, prelude source, format), kept in the cache, compiled like any module.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use wasmtime::{Engine, Instance, Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use super::call::{self, CallState, GuestRun, Layout, Reactor, Script};
use super::guest::{self, Prelude};
use super::output::Capture;
use super::{Limits, engine};
use crate::progress::Progress;
use crate::runtime::cache::{self, Cache};
use crate::runtime::verify::{ChecksumMismatch, sha256_bytes, sha256_file};
use crate::runtime::{FileRole, InstalledRuntime};

/// Changes whenever what goes into a snapshot changes in a way the key does not capture.
const FORMAT: &str = "4";
/// How long building a snapshot may run (imports only; a minute is plenty).
const BUILD_DEADLINE: Duration = Duration::from_secs(600);

/// What the cache remembers of a built snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    sha256: String,
    preload: Vec<String>,
    layout: Vec<String>,
}

/// The key naming a snapshot: everything that shapes its memory.
pub(super) fn key(reactor_sha256: &str, preload: &[String], layout: &Layout) -> String {
    let described = serde_json::json!({
        "format": FORMAT,
        "wasmtime": engine::WASMTIME_VERSION,
        "reactor": reactor_sha256,
        "preload": preload,
        "layout": layout.guest_paths(),
        "prelude": sha256_bytes(guest::PRELUDE.as_bytes()),
        "preload_turn": sha256_bytes(guest::preload_turn(preload, layout.guest_paths().len()).as_bytes()),
    });
    sha256_bytes(described.to_string().as_bytes())
}

/// The snapshot's wasm file and its SHA-256, built first if the cache has none for this key.
pub(super) fn ensure(
    engine: &engine::SandboxEngine,
    executor: &tokio::runtime::Handle,
    runtime: &InstalledRuntime,
    layout: &Layout,
    preload: &[String],
    cache: &Cache,
    progress: &Progress,
) -> Result<(PathBuf, String)> {
    let reactor_sha = runtime.sha256(FileRole::Reactor).context("the runtime has no plain reactor to snapshot")?;
    let dir = cache::private_dir(&cache.compiled_dir()?.join("snapshots"))?;
    let key = key(reactor_sha, preload, layout);
    let name = &key[..32];
    let _lock = cache::lock(&dir, name)?;
    let index_path = dir.join(format!("{name}.json"));
    if let Some(found) = cached(&dir, &index_path) {
        return Ok(found);
    }
    let started = Instant::now();
    progress.note(format!(
        "building a snapshot of runtime {} with {} pre-imported (once: about 3 minutes on 2 cores)",
        runtime.name(),
        preload.join(", ")
    ));
    let wasm = build(engine, executor, runtime, layout, preload, cache, progress)?;
    let sha256 = sha256_bytes(&wasm);
    let path = cache::write_private(&dir, &format!("{}.wasm", &sha256[..32]), &wasm)?;
    let index = Index { sha256: sha256.clone(), preload: preload.to_vec(), layout: layout.guest_paths() };
    cache::write_private(&dir, &format!("{name}.json"), &serde_json::to_vec_pretty(&index)?)?;
    progress.note(format!(
        "snapshot built in {:.0} s ({} MB)",
        started.elapsed().as_secs_f64(),
        wasm.len() / 1_000_000
    ));
    Ok((path, sha256))
}

/// The files of the snapshot this configuration would use (its index and wasm), and the key
/// of the compiled instrumented reactor, if the snapshot is built.
pub(super) fn files_in_use(
    runtime: &InstalledRuntime,
    layout: &Layout,
    preload: &[String],
    cache: &Cache,
) -> Result<(Vec<PathBuf>, Option<String>, String)> {
    let reactor_sha = runtime.sha256(FileRole::Reactor).context("the runtime has no plain reactor")?;
    let dir = cache.compiled_dir()?.join("snapshots");
    let key = key(reactor_sha, preload, layout);
    let index_path = dir.join(format!("{}.json", &key[..32]));
    let mut files = vec![index_path.clone(), dir.join(format!("{}.lock", &key[..32]))];
    let snapshot_sha = cached(&dir, &index_path).map(|(wasm, sha)| {
        files.push(wasm);
        sha
    });
    Ok((files, snapshot_sha, instrumented_key(reactor_sha)))
}

fn instrumented_key(reactor_sha: &str) -> String {
    sha256_bytes(
        format!("wizer-instrumented {reactor_sha} {} {RESET_PREOPENS_EXPORT}", engine::WASMTIME_VERSION).as_bytes(),
    )
}

/// A snapshot already in the cache for this key, if its file is there and private.
fn cached(dir: &Path, index_path: &Path) -> Option<(PathBuf, String)> {
    if !cache::is_private_file(index_path) {
        return None;
    }
    let index: Index = serde_json::from_slice(&std::fs::read(index_path).ok()?).ok()?;
    let wasm = dir.join(format!("{}.wasm", index.sha256.get(..32)?));
    cache::is_private_file(&wasm).then_some((wasm, index.sha256))
}

/// Instruments, starts, preloads and snapshots the reactor. Runs on the sandbox's executor
/// (the guest needs async fibers) and waits for it from this thread.
fn build(
    engine: &engine::SandboxEngine,
    executor: &tokio::runtime::Handle,
    runtime: &InstalledRuntime,
    layout: &Layout,
    preload: &[String],
    cache: &Cache,
    progress: &Progress,
) -> Result<Vec<u8>> {
    let path = runtime.path(FileRole::Reactor).context("the runtime has no plain reactor")?;
    let pinned = runtime.sha256(FileRole::Reactor).context("the reactor has no pin")?.to_string();
    let actual = sha256_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if actual != pinned {
        return Err(ChecksumMismatch {
            subject: format!("runtime {}", runtime.name()),
            file: path.display().to_string(),
            expected: pinned,
            actual,
            advice: format!("it is not used; run `toolhost runtime fetch {}` to replace it", runtime.name()),
        }
        .into());
    }
    // wasi-libc keeps a table of the preopened folders, filled on first use. Resetting it just
    // before the snapshot (as wizer.initialize does) lets each call fill it with its own
    // folders; the reset function exists in the reactor but is not exported, so export it.
    let bytes = export_by_name(&std::fs::read(&path)?, RESET_PREOPENS, RESET_PREOPENS_EXPORT)?;
    let mut wizer = Wizer::new();
    wizer.init_func("wizer.initialize");
    // The instrumented reactor depends only on the reactor and wizer: compiled once, kept, so
    // that a new preload or layout rebuilds in half the time.
    let instrumented_key = instrumented_key(&pinned);
    let module = engine.module_from(
        "the plain reactor, instrumented for snapshots",
        &instrumented_key,
        cache,
        progress,
        || {
            let (_, instrumented) = wizer.instrument(&bytes).map_err(anyhow::Error::from)?;
            Ok(instrumented)
        },
    )?;
    let engine = engine.engine.clone();
    let layout = layout.clone();
    let preload = preload.to_vec();
    let env = call::environment(
        &runtime.manifest.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>(),
        "snapshot",
    );
    let argv0 = runtime.manifest.abi.argv0.clone();
    let progress = *progress;
    let (done, wait) = std::sync::mpsc::channel();
    executor.spawn(async move {
        let built = async {
            let (context, _) = wizer.instrument(&bytes).map_err(anyhow::Error::from)?;
            let step = progress.step(format!("starting Python and importing {}", preload.join(", ")));
            let snapshot = preinitialize(&engine, &module, &layout, &env, &argv0, &preload, &wizer, &context).await?;
            step.finish("pre-initialized the interpreter");
            anyhow::Ok(snapshot)
        }
        .await;
        let _ = done.send(built);
    });
    wait.recv().context("the snapshot builder stopped")?
}

#[allow(clippy::too_many_arguments)]
async fn preinitialize(
    engine: &Engine,
    module: &Module,
    layout: &Layout,
    env: &[(String, String)],
    argv0: &str,
    preload: &[String],
    wizer: &Wizer,
    context: &wasmtime_wizer::ModuleContext<'_>,
) -> Result<Vec<u8>> {
    let limits = Limits { fuel: u64::MAX / 2, ..Limits::default() };
    let deadline = Instant::now() + BUILD_DEADLINE;
    let (run, _folders) = GuestRun::offline(Script::Bare(String::new()), "snapshot", limits, deadline, false)?;
    let stderr = run.stderr.clone();
    let mut store = call::store(engine, layout, &[argv0], env, &run)?;
    store.set_fuel(limits.fuel)?;
    let instance = call::linker(engine)?.instantiate_async(&mut store, module).await.map_err(anyhow::Error::from)?;
    let failed = |what: &str, stderr: &Capture| {
        anyhow::anyhow!("{what} failed while building the snapshot: {}", String::from_utf8_lossy(&stderr.take().data))
    };
    for export in ["_initialize", "wizer.initialize"] {
        let function = instance.get_typed_func::<(), ()>(&mut store, export).map_err(anyhow::Error::from)?;
        function.call_async(&mut store, ()).await.map_err(|e| anyhow::anyhow!("{export} trapped: {e:#}"))?;
    }
    let reactor = Reactor::new(&mut store, instance)?;
    let argv = ["-c".to_string()];
    for (what, source) in [
        ("installing the prelude", guest::setup_turn(&Prelude::Source, env, &argv)),
        ("importing the preload", guest::preload_turn(preload, layout.guest_paths().len())),
    ] {
        let status = reactor.turn(&mut store, &source).await.map_err(|e| anyhow::anyhow!("{what} trapped: {e:#}"))?;
        if status != 0 {
            return Err(failed(what, &stderr));
        }
    }
    let reset = instance.get_typed_func::<(), ()>(&mut store, RESET_PREOPENS_EXPORT).map_err(anyhow::Error::from)?;
    reset.call_async(&mut store, ()).await.map_err(|e| anyhow::anyhow!("resetting the preopens trapped: {e:#}"))?;
    let snapshot =
        wizer.snapshot(context, &mut Captured { store: &mut store, instance }).await.map_err(anyhow::Error::from)?;
    Ok(snapshot)
}

/// The resting value of the snapshot's shadow-stack pointer, when that is its only mutable
/// global (so that memory is all of an instance's state between turns); `None` otherwise. Reads
/// only the file's head: the global section comes long before the code.
pub(super) fn resting_stack_pointer(wasm: &Path) -> Result<Option<u32>> {
    use std::io::Read;
    use wasmparser::{Operator, Parser, Payload};
    let mut head = Vec::new();
    std::fs::File::open(wasm)?.take(16 << 20).read_to_end(&mut head)?;
    for payload in Parser::new(0).parse_all(&head) {
        match payload? {
            Payload::GlobalSection(reader) => {
                let mut mutable = Vec::new();
                for global in reader {
                    let global = global?;
                    if global.ty.mutable {
                        let init: Vec<Operator<'_>> =
                            global.init_expr.get_operators_reader().into_iter().collect::<Result<_, _>>()?;
                        mutable.push(match init.as_slice() {
                            [Operator::I32Const { value }, Operator::End] => Some(*value as u32),
                            _ => None,
                        });
                    }
                }
                return Ok(match mutable.as_slice() {
                    [Some(stack_pointer)] => Some(*stack_pointer),
                    _ => None,
                });
            }
            Payload::CodeSectionStart { .. } => break,
            _ => {}
        }
    }
    Ok(None)
}

/// wasi-libc's function that forgets the preopened folders, and the name we export it as.
const RESET_PREOPENS: &str = "__wasilibc_reset_preopens";
const RESET_PREOPENS_EXPORT: &str = "toolhost.reset_preopens";

/// `wasm` with one more export: the function its name section calls `function`, as `export`.
fn export_by_name(wasm: &[u8], function: &str, export: &str) -> Result<Vec<u8>> {
    use wasmparser::{ExternalKind, KnownCustom, Name, Parser, Payload};
    let mut index = None;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CustomSection(reader) = payload?
            && let KnownCustom::Name(names) = reader.as_known()
        {
            for name in names {
                if let Name::Function(map) = name? {
                    for naming in map {
                        let naming = naming?;
                        if naming.name == function {
                            index = Some(naming.index);
                        }
                    }
                }
            }
        }
    }
    let index = index.with_context(|| format!("the reactor has no function named {function}"))?;
    let mut module = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = wasm_encoder::ExportSection::new();
            for existing in reader.clone() {
                let existing = existing?;
                let kind = match existing.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => wasm_encoder::ExportKind::Func,
                    ExternalKind::Table => wasm_encoder::ExportKind::Table,
                    ExternalKind::Memory => wasm_encoder::ExportKind::Memory,
                    ExternalKind::Global => wasm_encoder::ExportKind::Global,
                    ExternalKind::Tag => wasm_encoder::ExportKind::Tag,
                };
                exports.export(existing.name, kind, existing.index);
            }
            exports.export(export, wasm_encoder::ExportKind::Func, index);
            module.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            module.section(&wasm_encoder::RawSection { id, data: &wasm[range] });
        }
    }
    Ok(module.finish())
}

/// The instance's state as wizer reads it.
struct Captured<'a> {
    store: &'a mut Store<CallState>,
    instance: Instance,
}

impl InstanceState for Captured<'_> {
    async fn global_get(&mut self, name: &str, _type: ValType) -> SnapshotVal {
        let global =
            self.instance.get_global(&mut *self.store, name).expect("wizer exports every global it instruments");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("a global of a type wizer cannot snapshot: {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory =
            self.instance.get_memory(&mut *self.store, name).expect("wizer exports every memory it instruments");
        contents(memory.data(&*self.store));
    }
}
