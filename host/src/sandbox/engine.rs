//! The one wasmtime `Engine`: its configuration (fuel, which also carries deadlines: a guest
//! yields every `YIELD_FUEL` units), and modules compiled once per (module SHA-256,
//! wasmtime version, engine configuration) into the private cache, then loaded file-backed so
//! their memory images are copy-on-write.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::progress::Progress;
use crate::runtime::cache::{self, Cache};
use crate::runtime::verify::{ChecksumMismatch, sha256_bytes};

/// The wasmtime release toolhost is built against; it names compiled files. A unit test holds
/// it equal to the pin in Cargo.toml.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Fuel a guest spends between two yields to its runtime: a few milliseconds of interpretation
/// (~3.5 G units/s on the 2-core VM). At every yield the call's deadline and cancellation can
/// stop it (`sandbox::spawn_guest`), with no check of our own in the guest's code: epoch checks
/// cost 13-19% of pure interpretation (docs/operations.md).
pub const YIELD_FUEL: u64 = 10_000_000;

/// The wasm stack the CPython guest needs (its recursion limit assumes about 8 MiB).
const MAX_WASM_STACK: usize = 8 << 20;
/// The fiber stack each call runs on: the wasm stack plus room for host functions.
const ASYNC_STACK: usize = MAX_WASM_STACK + (2 << 20);
/// The CPython guest's function table has ~47k entries.
const TABLE_ELEMENTS: usize = 65_536;
/// What a pool slot keeps resident between calls: every page it keeps is copied back from the
/// image after each call, so this is per-call work as well as memory. A print call writes about
/// 1 MiB, numpy and pandas calls a few. Measured on 2 cores (calls/s at concurrency 2, print /
/// numpy / pandas): 8 MiB 204 / 109 / 78, 32 MiB 105 / 66 / 66, 128 MiB 82 / 68 / 60, with peak
/// RSS 102-134 MB against 269-336 MB.
const KEEP_RESIDENT: usize = 8 << 20;

/// What the engine is sized for.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Instances alive at once (running calls, and calls nested under them).
    pub slots: u32,
    /// The most linear memory one instance may ever have.
    pub max_memory_bytes: u64,
}

/// The engine.
pub struct SandboxEngine {
    pub engine: Engine,
}

impl SandboxEngine {
    pub fn new(limits: EngineLimits) -> Result<Self> {
        let engine = Engine::new(&config(limits)).map_err(anyhow::Error::from).context("cannot configure wasmtime")?;
        Ok(SandboxEngine { engine })
    }

    /// The compiled module for the wasm file at `wasm`, whose pinned SHA-256 is `sha256`: loaded
    /// from the cache when we compiled it before, else compiled (once, minutes for a 100 MB
    /// module), written to the cache and loaded back from there.
    pub fn module(&self, label: &str, wasm: &Path, sha256: &str, cache: &Cache, progress: &Progress) -> Result<Module> {
        self.module_from(label, sha256, cache, progress, || {
            let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
            let actual = sha256_bytes(&bytes);
            if actual != sha256 {
                return Err(ChecksumMismatch {
                    subject: label.to_string(),
                    file: wasm.display().to_string(),
                    expected: sha256.to_string(),
                    actual,
                    advice: "it is not compiled; run `toolhost runtime fetch` to replace it".into(),
                }
                .into());
            }
            Ok(bytes)
        })
    }

    /// The compiled module cached under `key`: loaded when we compiled it before, else compiled
    /// from the wasm `wasm` produces (only then called), written to the cache and loaded back.
    pub fn module_from(
        &self,
        label: &str,
        key: &str,
        cache: &Cache,
        progress: &Progress,
        wasm: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Module> {
        let path = self.compiled_path(key, cache)?;
        let dir = path.parent().context("compiled path has a parent")?;
        let name = path.file_name().and_then(|n| n.to_str()).context("compiled file name")?;
        let _lock = cache::lock(dir, name)?;
        if cache::is_private_file(&path) {
            match load_compiled(&self.engine, &path) {
                Ok(module) => return Ok(module),
                Err(e) => tracing::warn!("compiled module {} is unusable ({e:#}); compiling again", path.display()),
            }
        }
        let bytes = wasm()?;
        let step = progress.step(format!(
            "compiling {label} ({} MB of wasm to native code, once; about {} on 2 cores)",
            bytes.len() / 1_000_000,
            if bytes.len() > 50_000_000 { "1.5 minutes" } else { "20 seconds" }
        ));
        let module = Module::new(&self.engine, &bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot compile {label}"))?;
        drop(bytes);
        let serialized =
            module.serialize().map_err(anyhow::Error::from).context("cannot serialize the compiled module")?;
        drop(module);
        cache::write_private(dir, name, &serialized)?;
        step.finish(format!("compiled {label} into {}", path.display()));
        load_compiled(&self.engine, &path)
    }

    /// `compiled/<sha256[..16]>-wasmtime<version>-<config hash>.cwasm`.
    pub fn compiled_path(&self, sha256: &str, cache: &Cache) -> Result<PathBuf> {
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let name = format!("{}-wasmtime{WASMTIME_VERSION}-{:016x}.cwasm", &sha256[..16], hasher.finish());
        Ok(cache.compiled_dir()?.join(name))
    }
}

/// Loads a compiled module we wrote ourselves, mapping the file so that its memory image is
/// shared copy-on-write between instances.
#[allow(unsafe_code)]
fn load_compiled(engine: &Engine, path: &Path) -> Result<Module> {
    if !cache::is_private_file(path) {
        bail!("{} is not a private file of this user; refusing to load it", path.display());
    }
    // SAFETY: `deserialize_file` runs the file's native code as it finds it. The file lives in
    // the 0700 cache folder, is a regular file (not a link) owned by this user with mode 0600,
    // and was written by `SandboxEngine::module` from wasm whose SHA-256 matched its pin;
    // wasmtime itself checks that it was compiled by this version with this configuration.
    unsafe { Module::deserialize_file(engine, path) }
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot load the compiled module {}", path.display()))
}

fn config(limits: EngineLimits) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .wasm_exceptions(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        .memory_init_cow(true)
        .parallel_compilation(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);

    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(limits.slots)
        .total_memories(limits.slots)
        .total_tables(limits.slots)
        .total_stacks(limits.slots)
        .total_gc_heaps(limits.slots)
        .total_component_instances(0)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(TABLE_ELEMENTS)
        .max_core_instance_size(16 << 20)
        .max_memory_size(usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX))
        // A slot's written pages, up to KEEP_RESIDENT of them, are reset by copying the image
        // back over them (found with the PAGEMAP_SCAN ioctl, Linux 6.7+) rather than unmapped:
        // the next instance finds them present, with no copy-on-write fault (see `prefault`).
        // Every written page past that is decommitted, so memory is given back after a large
        // call. vendor/README.md says why the reset is patched.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a byte on every other page over `pages` pages from 64 KiB in (thousands of runs of
    /// written pages, past the 32 one scan holds and past KEEP_RESIDENT), and counts the
    /// non-zero bytes left there.
    const DIRTY: &str = r#"(module
        (memory (export "memory") 512)
        (data (i32.const 0) "image")
        (func (export "dirty") (param $pages i32)
            (local $i i32)
            (loop $next
                (i32.store8 (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 8192))) (i32.const 171))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $next (i32.lt_u (local.get $i) (local.get $pages)))))
        (func (export "left") (param $pages i32) (result i32)
            (local $i i32) (local $n i32)
            (loop $next
                (local.set $n (i32.add (local.get $n)
                    (i32.load8_u (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 8192))))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $next (i32.lt_u (local.get $i) (local.get $pages))))
            (local.get $n)))"#;

    /// How a test instance's memory is readied: as a fresh call's, not at all, or as a call's
    /// whose large Python state was restored (written by the host, then protected again).
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Readied {
        Protected,
        Unprotected,
        Restored,
    }

    #[tokio::test]
    async fn a_reused_slot_holds_nothing_of_the_previous_instance() {
        use super::super::dirty::{Restored, Tracker};
        use super::super::pagemap::PAGE;
        use std::sync::Arc;
        let engine = SandboxEngine::new(EngineLimits { slots: 1, max_memory_bytes: 64 << 20 }).expect("engine");
        let module = Module::new(&engine.engine, DIRTY).expect("module");
        let linker = wasmtime::Linker::<Option<Restored>>::new(&engine.engine);
        let tracker = Arc::new(Tracker::open().expect("userfaultfd write-protection (Linux 6.7+)"));
        // Every instance grows its memory by 4 MiB past the image's 32, as a restored state does.
        let (image_end, grown_end) = (32usize << 20, 36usize << 20);
        // 3000 runs of one page, over 24 MiB: more than KEEP_RESIDENT holds. Instances readied
        // each way in turn, each writing fewer or more pages than the one before.
        let (protected, unprotected, restored) = (Readied::Protected, Readied::Unprotected, Readied::Restored);
        for (pages, readied) in [
            (40, protected),
            (3000, protected),
            (40, restored),
            (3000, unprotected),
            (3000, restored),
            (40, protected),
            (3000, restored),
            (40, protected),
        ] {
            let mut store = wasmtime::Store::new(&engine.engine, None);
            store.set_fuel(u64::MAX).expect("fuel");
            let instance = linker.instantiate_async(&mut store, &module).await.expect("instance");
            let memory = instance.get_memory(&mut store, "memory").expect("memory");
            if readied != Readied::Unprotected {
                tracker.protect(memory.data_mut(&mut store)).expect("protect");
            }
            let left = instance.get_typed_func::<i32, i32>(&mut store, "left").expect("left");
            assert_eq!(left.call_async(&mut store, 3000).await.expect("left"), 0, "a fresh instance sees zeros");
            assert_eq!(&memory.data(&store)[..5], b"image");
            memory.grow(&mut store, 64).expect("grow");
            let grown = &memory.data(&store)[image_end..grown_end];
            assert!(grown.iter().all(|&b| b == 0), "grown memory reads zeros ({readied:?} before)");
            // Every other page from 64 KiB in, then every page of the grown memory.
            let written: Vec<u32> = (0..pages as u32)
                .map(|i| 16 + 2 * i)
                .chain((image_end / PAGE) as u32..(grown_end / PAGE) as u32)
                .collect();
            if readied == Readied::Restored {
                let data = memory.data_mut(&mut store);
                super::super::pagemap::huge(&mut data[image_end..]);
                tracker
                    .unprotect(data, written.iter().copied().filter(|&p| (p as usize) < image_end / PAGE))
                    .expect("lift");
                for &page in &written {
                    data[page as usize * PAGE] = 171;
                }
                let (guard, protected) = tracker.reprotect(data, written.iter().copied());
                protected.expect("protect again");
                *store.data_mut() = Some(guard);
                assert_eq!(tracker.written(memory.data(&store)).expect("written"), Vec::<u32>::new());
            } else {
                let dirty = instance.get_typed_func::<i32, ()>(&mut store, "dirty").expect("dirty");
                dirty.call_async(&mut store, pages).await.expect("dirty");
                memory.data_mut(&mut store)[image_end..grown_end].fill(171);
            }
            assert_eq!(left.call_async(&mut store, pages).await.expect("left"), 171 * pages);
            if readied == Readied::Protected {
                // Exactly the pages written: every other page from 64 KiB in, and the grown
                // memory (never protected, so it reports written).
                assert_eq!(tracker.written(memory.data(&store)).expect("written"), written);
            }
        }
        // A fresh instance's kept pages dropped (as `call::fresh_memory` does past its bound):
        // still the image.
        let mut store = wasmtime::Store::new(&engine.engine, None);
        store.set_fuel(u64::MAX).expect("fuel");
        let instance = linker.instantiate_async(&mut store, &module).await.expect("instance");
        let memory = instance.get_memory(&mut store, "memory").expect("memory");
        assert!(!tracker.private(memory.data(&store)).expect("private").is_empty(), "the slot kept pages");
        super::super::pagemap::release(memory.data_mut(&mut store));
        assert!(tracker.private(memory.data(&store)).expect("private").is_empty());
        let left = instance.get_typed_func::<i32, i32>(&mut store, "left").expect("left");
        assert_eq!(left.call_async(&mut store, 3000).await.expect("left"), 0);
        assert_eq!(&memory.data(&store)[..5], b"image");
    }

    #[test]
    fn the_version_naming_compiled_files_is_the_pinned_one() {
        let manifest = include_str!("../../../Cargo.toml");
        assert!(
            manifest.contains(&format!("wasmtime = {{ version = \"={WASMTIME_VERSION}\"")),
            "update WASMTIME_VERSION with the wasmtime pin"
        );
    }
}
