//! One guest run: a fresh `Store` and instance, WASI wired with only what this call is given,
//! every limit armed, the program driven through the runtime's ABI (`turn` for a reactor,
//! `_start` for a command), and how it ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;
use wasmtime::{Engine, Instance, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc};
use wasmtime_wasi::filesystem::Budget;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::dirty::{Restored, Tracker};
use super::door::{self, HostTools};
use super::guest;
use super::outcome::{Ending, Ran};
use super::output::Capture;
use super::prefault::WriteSet;
use super::state::{Baseline, Keeper, Restore};
use super::{Limits, ReadOnlyRoot};
use crate::runtime::{AbiKind, FileRole, InstalledRuntime};

/// Tables may grow to this many elements (the guest starts with ~47k).
const TABLE_LIMIT: usize = 1 << 20;
/// The most of a slot's memory kept private between calls (see `fresh_memory`). A print call's
/// slot keeps 23 MiB (the pages populated on its first use, `prefault`), a pandas call's 3-33.
const KEPT_PRIVATE: usize = 32 << 20;
/// Every this many instances a slot hosts, what it keeps is measured (a scan of its memory's
/// page tables, ~0.4 ms for 100 MiB): between two, it may keep up to this many calls' 8 MiB
/// more than KEPT_PRIVATE.
const KEPT_CHECK: u64 = 8;

/// The store's data: WASI, the memory limiter, the deadline (host calls that wait honour it)
/// and the tools code mode may call.
pub(super) struct CallState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    pub(super) deadline: Instant,
    /// What answers the guest's `host.call`; `None`: the call offers no tools.
    pub(super) host_tools: Option<Arc<dyn HostTools>>,
    /// A large restored state's pages, protected again: dropped with this data, before wasmtime
    /// returns the instance's memory to the pool, it makes the reset see them (`dirty`).
    restored: Option<Restored>,
}

impl door::DoorState for CallState {
    fn host_tools(&self) -> Option<Arc<dyn HostTools>> {
        self.host_tools.clone()
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Refuses memory growth past the call's limit, remembering that it did: the guest then sees
/// `MemoryError`, and the outcome says `out_of_memory`.
struct MemoryLimiter {
    max_bytes: usize,
    denied: Arc<AtomicBool>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        if !allowed {
            self.denied.store(true, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_LIMIT)
    }
}

/// The runtime's own folders a guest sees, in the order they are preopened, before `/tmp`,
/// `/workspace` and the call's roots. (A snapshot does not freeze this table: wasi-libc's
/// preopens are reset before it is taken, and each call's are read afresh.)
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// The runtime's own read-only folders (stdlib, matplotlib data), host and guest path.
    pub mounts: Vec<(PathBuf, String)>,
}

impl Layout {
    pub fn of(runtime: &InstalledRuntime) -> Layout {
        let layout = &runtime.manifest.layout;
        let mut mounts = Vec::new();
        if let (Some(dir), Some(guest)) = (runtime.stdlib_dir(), layout.stdlib.clone()) {
            mounts.push((dir, guest));
        }
        if let (Some(dir), Some(guest)) = (runtime.matplotlib_data_dir(), layout.matplotlib_data.clone()) {
            mounts.push((dir, guest));
        }
        Layout { mounts }
    }

    /// Every guest path before the roots, in preopen order.
    pub fn guest_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.mounts.iter().map(|(_, guest)| guest.clone()).collect();
        paths.extend(["/tmp".to_string(), "/workspace".to_string()]);
        paths
    }
}

/// The linker every runtime is instantiated with: WASI preview 1 and `host.call`.
pub(super) fn linker(engine: &Engine) -> Result<Linker<CallState>> {
    let mut linker: Linker<CallState> = Linker::new(engine);
    p1::add_to_linker_async(&mut linker, |state: &mut CallState| &mut state.wasi)?;
    linker.func_wrap_async(
        "host",
        "call",
        |mut caller: wasmtime::Caller<'_, CallState>, args: (i32, i32, i32, i32)| {
            Box::new(async move { door::serve(&mut caller, args).await })
        },
    )?;
    Ok(linker)
}

/// A runtime made ready for calls: linked once, instantiated afresh for every call. Clones
/// share the linked module.
#[derive(Clone)]
pub(super) struct Prepared {
    kind: AbiKind,
    argv0: String,
    pre: InstancePre<CallState>,
    layout: Arc<Layout>,
    env: Vec<(String, String)>,
    /// How a reactor instance gets the prelude.
    pub prelude: guest::Prelude,
    /// Pages a typical call writes, populated the first time a pool slot hosts this runtime.
    pub write_set: Option<Arc<WriteSet>>,
    /// How many instances each pool slot (by memory address) has hosted; a hint, never a
    /// guarantee.
    uses: Arc<std::sync::Mutex<std::collections::HashMap<usize, u64>>>,
    /// What Python states are relative to; `None`: this runtime keeps no state.
    pub baseline: Option<Arc<Baseline>>,
    /// What write-protects an instance's memory and tells the pages a call wrote; `None`: they
    /// are found by comparing (`dirty`).
    pub tracker: Option<Arc<Tracker>>,
}

impl Prepared {
    pub fn new(engine: &Engine, module: &Module, runtime: &InstalledRuntime, layout: Layout) -> Result<Self> {
        let pre = linker(engine)?
            .instantiate_pre(module)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("runtime {}: the module's imports cannot be satisfied", runtime.name()))?;
        if runtime.manifest.abi.kind == AbiKind::Reactor && runtime.path(FileRole::Stdlib).is_none() {
            bail!("runtime {}: a reactor runtime needs a stdlib file", runtime.name());
        }
        Ok(Prepared {
            kind: runtime.manifest.abi.kind,
            argv0: runtime.manifest.abi.argv0.clone(),
            pre,
            layout: Arc::new(layout),
            env: runtime.manifest.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            prelude: guest::Prelude::Source,
            write_set: None,
            uses: Arc::default(),
            baseline: None,
            tracker: None,
        })
    }
}

/// What a run executes.
pub(super) enum Script {
    /// The user's code: the prelude's setup before it, the closing turn after.
    User(String),
    /// Code alone, without the prelude (used to compile the prelude itself).
    Bare(String),
}

/// Everything one run is given.
pub(super) struct GuestRun {
    pub script: Script,
    pub call_id: String,
    pub stdin: Vec<u8>,
    /// The host folder seen as `/workspace`.
    pub workspace: PathBuf,
    pub workspace_read_only: bool,
    /// What every change under `/workspace` draws on; `None`: unbounded (runs outside calls).
    pub workspace_budget: Option<Arc<dyn Budget>>,
    /// The host folder seen as `/tmp`, read-write, fresh for this call.
    pub scratch: PathBuf,
    /// What every change under `/tmp` draws on.
    pub scratch_budget: Option<Arc<dyn Budget>>,
    pub roots: Vec<ReadOnlyRoot>,
    pub limits: Limits,
    pub deadline: Instant,
    pub cancel: CancellationToken,
    pub stdout: Capture,
    pub stderr: Capture,
    pub memory_denied: Arc<AtomicBool>,
    /// Learn which pages of memory the run wrote (see `prefault`).
    pub learn: bool,
    pub host_tools: Option<Arc<dyn HostTools>>,
    /// The workspace's Python state, restored before the code and saved after it.
    pub state: Option<Keeper>,
}

impl GuestRun {
    /// A run outside any call (at start, or while building a snapshot): throwaway workspace and
    /// `/tmp`, which live as long as the returned folders, empty stdin, no tools.
    pub fn offline(
        script: Script,
        call_id: &str,
        limits: Limits,
        deadline: Instant,
        learn: bool,
    ) -> Result<(GuestRun, [tempfile::TempDir; 2])> {
        let workspace = tempfile::tempdir()?;
        let scratch = tempfile::tempdir()?;
        let run = GuestRun {
            script,
            call_id: call_id.into(),
            stdin: Vec::new(),
            workspace: workspace.path().to_path_buf(),
            workspace_read_only: false,
            workspace_budget: None,
            scratch: scratch.path().to_path_buf(),
            scratch_budget: None,
            roots: Vec::new(),
            limits,
            deadline,
            cancel: CancellationToken::new(),
            stdout: Capture::new(limits.output_bytes),
            stderr: Capture::new(limits.output_bytes),
            memory_denied: Arc::new(AtomicBool::new(false)),
            learn,
            host_tools: None,
            state: None,
        };
        Ok((run, [workspace, scratch]))
    }
}

/// The environment every guest sees: nothing from the host.
pub(super) fn environment(runtime_env: &[(String, String)], call_id: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
        ("MPLBACKEND", "Agg"),
        ("MPLCONFIGDIR", "/tmp/matplotlib"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("TOOLHOST_CALL_ID", call_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(runtime_env.iter().cloned());
    env
}

/// A fresh store for one run: WASI with the layout's folders, the capture, the limits.
pub(super) fn store(
    engine: &Engine,
    layout: &Layout,
    args: &[&str],
    env: &[(String, String)],
    run: &GuestRun,
) -> Result<Store<CallState>> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(MemoryInputPipe::new(run.stdin.clone()))
        .stdout(run.stdout.clone())
        .stderr(run.stderr.clone())
        // Never block the guest's thread: a blocking host call (a relative poll_oneoff, which
        // wasmtime-wasi otherwise serves with `thread::sleep`, or a file operation on a FIFO)
        // then runs where the call can be abandoned at its deadline, and the thread is free.
        .allow_blocking_current_thread(false)
        .envs(env)
        .args(args);
    let mount = |wasi: &mut WasiCtxBuilder,
                 host: &std::path::Path,
                 guest: &str,
                 perms: FsPerms,
                 budget: Option<&Arc<dyn Budget>>|
     -> Result<()> {
        match budget {
            Some(budget) => wasi.preopened_dir_with_budget(host, guest, perms, budget.clone()),
            None => wasi.preopened_dir(host, guest, perms),
        }
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot mount {} at {guest}", host.display()))?;
        Ok(())
    };
    for (host, guest) in &layout.mounts {
        mount(&mut wasi, host, guest, FsPerms::ReadOnly, None)?;
    }
    mount(&mut wasi, &run.scratch, "/tmp", FsPerms::ReadWrite, run.scratch_budget.as_ref())?;
    let workspace_perms = if run.workspace_read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
    mount(&mut wasi, &run.workspace, "/workspace", workspace_perms, run.workspace_budget.as_ref())?;
    for root in &run.roots {
        mount(&mut wasi, &root.host, &format!("/{}", root.name), FsPerms::ReadOnly, None)?;
    }

    let state = CallState {
        wasi: wasi.build_p1(),
        limiter: MemoryLimiter {
            max_bytes: usize::try_from(run.limits.memory_bytes).unwrap_or(usize::MAX),
            denied: run.memory_denied.clone(),
        },
        deadline: run.deadline,
        host_tools: run.host_tools.clone(),
        restored: None,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    // Instantiation maps the module's memory image copy-on-write; no guest code runs yet.
    store.set_fuel(u64::MAX)?;
    // The guest yields every YIELD_FUEL units, so the call's deadline and cancellation reach
    // it while it computes (`sandbox::spawn_guest`).
    store.fuel_async_yield_interval(Some(super::engine::YIELD_FUEL))?;
    Ok(store)
}

/// Runs the guest once. Returns how it ended and the spent store, which the caller drops once
/// the result is on its way (resetting the memory takes a millisecond or two).
pub(super) async fn run(prepared: &Prepared, engine: &Engine, mut run: GuestRun) -> Result<(Ran, Store<CallState>)> {
    let env = environment(&prepared.env, &run.call_id);
    let argv = ["-c".to_string()];
    let setup = match prepared.kind {
        AbiKind::Command => guest::setup_json(&env, &argv),
        AbiKind::Reactor => String::new(),
    };
    let args: Vec<&str> = match (&prepared.kind, &run.script) {
        (AbiKind::Reactor, _) => vec![prepared.argv0.as_str()],
        (AbiKind::Command, Script::User(code) | Script::Bare(code)) => {
            vec![prepared.argv0.as_str(), "-c", guest::COMMAND_RUNNER, guest::PRELUDE, setup.as_str(), code.as_str()]
        }
    };
    let mut keeper = run.state.take();
    // Set when a damaged state was found half-written: the next instance starts fresh, and the
    // call's state replaces the damaged one.
    let mut spoiled = false;
    let (mut store, instance) = loop {
        let mut store = store(engine, &prepared.layout, &args, &env, &run)?;
        let instance = match prepared.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => return Ok((Ran { ending: ending_of(e)?, fuel_used: None, written: None }, store)),
        };
        let memory = instance.get_memory(&mut store, "memory");
        let tracker = memory.and_then(|memory| fresh_memory(prepared, &mut store, memory));
        if let Some(state) = keeper.as_mut() {
            state.track(tracker);
        }
        let (Some(state), Some(memory), false) = (keeper.as_mut(), memory, spoiled) else {
            break (store, instance);
        };
        match state.restore(&mut store, memory, run.limits.memory_bytes) {
            Restore::Restored(guard) => {
                store.data_mut().restored = guard;
                // wasi-libc's table of preopened folders is in the restored memory: it is read
                // afresh from this call's WASI context, as in a fresh instance.
                let reset = instance.get_typed_func::<(), ()>(&mut store, "toolhost.reset_preopens")?;
                reset
                    .call_async(&mut store, ())
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reset the preopens of a restored state: {e:#}"))?;
                break (store, instance);
            }
            Restore::Fresh => break (store, instance),
            // Part of a damaged state is in this instance: start over in a new one.
            Restore::Spoiled => spoiled = true,
        }
    };
    let memory = instance.get_memory(&mut store, "memory");
    store.set_fuel(run.limits.fuel)?;

    let (driven, at_rest) = match prepared.kind {
        AbiKind::Reactor => {
            let (setup, code) = match &run.script {
                Script::User(code) => (Some(guest::setup_turn(&prepared.prelude, &env, &argv)), code),
                Script::Bare(code) => (None, code),
            };
            drive_reactor(&mut store, instance, setup.as_deref(), code).await?
        }
        AbiKind::Command => (drive_command(&mut store, instance).await?, false),
    };
    let fuel_used = match driven {
        Ending::Timeout | Ending::Cancelled => None,
        _ => store.get_fuel().ok().map(|left| run.limits.fuel.saturating_sub(left)),
    };
    if let (Some(state), Some(memory)) = (keeper, memory) {
        keep_state(state, &mut store, instance, memory, &driven, at_rest, &run).await?;
    }
    let written = match memory {
        Some(memory) if run.learn => WriteSet::learn(memory.data_ptr(&store), memory.data_size(&store)).ok(),
        _ => None,
    };
    Ok((Ran { ending: driven, fuel_used, written }, store))
}

/// Instantiates the runtime without running any of it and hands `look` its memory: the image
/// every instance starts from. The pages looking mapped in are dropped again.
pub(super) async fn with_pristine_memory<R>(
    prepared: &Prepared,
    engine: &Engine,
    look: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    let limits = Limits::default();
    let (run, _folders) =
        GuestRun::offline(Script::Bare(String::new()), "baseline", limits, Instant::now() + limits.timeout, false)?;
    let mut store = store(engine, &prepared.layout, &[prepared.argv0.as_str()], &[], &run)?;
    let instance = prepared.pre.instantiate_async(&mut store).await.map_err(anyhow::Error::from)?;
    let memory = instance.get_memory(&mut store, "memory").context("the runtime exports no memory")?;
    let seen = look(memory.data(&store));
    super::pagemap::release(memory.data_mut(&mut store));
    Ok(seen)
}

/// After the code: saves the state if the call ended at rest with `ok` or a Python exception,
/// after closing the files it left open (their descriptors mean nothing in the next call).
/// Otherwise the saved state stays as it was.
async fn keep_state(
    state: Keeper,
    store: &mut Store<CallState>,
    instance: Instance,
    memory: Memory,
    ending: &Ending,
    at_rest: bool,
    run: &GuestRun,
) -> Result<()> {
    let status = super::outcome::classify(
        ending,
        &String::from_utf8_lossy(&run.stderr.tail(4096)),
        run.memory_denied.load(Ordering::Relaxed),
        &run.limits,
    )
    .0;
    if !at_rest || !matches!(status, super::Status::Ok | super::Status::Error) {
        return Ok(());
    }
    let open = store.data().wasi.opened_descriptors();
    if !open.is_empty() {
        let reactor = Reactor::new(store, instance)?;
        if let Err(e) = reactor.turn(store, &guest::close_files_turn(&open)).await {
            tracing::debug!("closing the files a call left open failed ({e:#}); its state is not saved");
            return Ok(());
        }
    }
    state.save(store, memory);
    Ok(())
}

/// Readies a new instance's memory, which holds the runtime's image: the pages a typical call
/// writes are populated the first time a pool slot hosts the runtime, then the memory is
/// write-protected so that the pages this call writes are known (`dirty`). Returns what tells
/// them, when the kernel does.
fn fresh_memory(prepared: &Prepared, store: &mut Store<CallState>, memory: Memory) -> Option<Arc<Tracker>> {
    let uses = {
        let mut uses = prepared.uses.lock().unwrap_or_else(|p| p.into_inner());
        let slot = uses.entry(memory.data_ptr(&*store) as usize).or_insert(0);
        *slot += 1;
        *slot
    };
    if let (Some(set), 1) = (&prepared.write_set, uses) {
        set.prefault(memory.data_mut(&mut *store));
    }
    let tracker = prepared.tracker.clone()?;
    // The pool's reset copies the image back over the pages an instance wrote and keeps them;
    // pages an earlier instance kept and later ones left alone stay too, holding the image. Past
    // a bound they are dropped (the memory is the image everywhere, so no byte changes).
    if uses.is_multiple_of(KEPT_CHECK)
        && tracker.private(memory.data(&*store)).is_ok_and(|pages| pages.len() * super::pagemap::PAGE > KEPT_PRIVATE)
    {
        super::pagemap::release(memory.data_mut(&mut *store));
    }
    match tracker.protect(memory.data_mut(&mut *store)) {
        Ok(()) => Some(tracker),
        Err(e) => {
            tracing::debug!("cannot write-protect a guest's memory ({e}); its written pages are found by comparing");
            None
        }
    }
}

/// The reactor's exports a turn needs.
pub(super) struct Reactor {
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    turn: TypedFunc<(i32, i32), i32>,
}

impl Reactor {
    pub fn new(store: &mut Store<CallState>, instance: Instance) -> Result<Reactor> {
        Ok(Reactor {
            memory: instance.get_memory(&mut *store, "memory").context("the runtime exports no memory")?,
            alloc: instance.get_typed_func(&mut *store, "host_alloc")?,
            turn: instance.get_typed_func(&mut *store, "turn")?,
        })
    }

    /// Writes `source` into guest memory from `host_alloc` and runs it with `turn`.
    pub async fn turn(&self, store: &mut Store<CallState>, source: &str) -> wasmtime::Result<i32> {
        let len = i32::try_from(source.len()).map_err(|_| wasmtime::format_err!("the code is over 2 GiB"))?;
        let ptr = self.alloc.call_async(&mut *store, len).await?;
        // A null pointer makes the guest raise MemoryError for its code.
        if ptr != 0 {
            self.memory.write(&mut *store, ptr as u32 as usize, source.as_bytes())?;
        }
        self.turn.call_async(&mut *store, (ptr, len)).await
    }
}

/// A reactor: the setup turn (with the prelude), the code's turn, then the closing turn
/// (when there was a setup). Also says whether the interpreter is at rest after it: every turn
/// returned and it is not ending.
async fn drive_reactor(
    store: &mut Store<CallState>,
    instance: Instance,
    setup: Option<&str>,
    code: &str,
) -> Result<(Ending, bool)> {
    let reactor = Reactor::new(store, instance)?;
    if let Ok(initialize) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")
        && let Err(e) = initialize.call_async(&mut *store, ()).await
    {
        return Ok((ending_of(e)?, false));
    }
    if let Some(setup) = setup {
        match reactor.turn(store, setup).await {
            Ok(0) => {}
            Ok(status) => bail!("the guest prelude failed (status {status}); see the call's stderr"),
            Err(e) => return Ok((ending_of(e)?, false)),
        }
    }
    let status = match reactor.turn(store, code).await {
        Ok(status) => status,
        Err(e) => return Ok((ending_of(e)?, false)),
    };
    // 256 and above: the code called sys.exit(); the interpreter is ending, so no closing turn.
    if status >= 256 {
        return Ok((Ending::Exited(status & 0xff), false));
    }
    if setup.is_some()
        && let Err(e) = reactor.turn(store, guest::CLOSING_TURN).await
    {
        return Ok((ending_of(e)?, false));
    }
    Ok((Ending::Exited(status), true))
}

/// A command: `_start` runs the runner, which runs the prelude and the code.
async fn drive_command(store: &mut Store<CallState>, instance: Instance) -> Result<Ending> {
    let start: TypedFunc<(), ()> = instance.get_typed_func(&mut *store, "_start")?;
    match start.call_async(&mut *store, ()).await {
        Ok(()) => Ok(Ending::Exited(0)),
        Err(e) => ending_of(e),
    }
}

/// What a wasmtime error means for the guest: an exit, an interruption, a limit or a trap.
pub(super) fn ending_of(error: wasmtime::Error) -> Result<Ending> {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Ok(Ending::Exited(exit.0));
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return Ok(match trap {
            Trap::OutOfFuel => Ending::OutOfFuel,
            Trap::Interrupt => Ending::Timeout,
            other => Ending::Trapped(other.to_string()),
        });
    }
    Ok(Ending::Trapped(format!("{error:#}")))
}
