//! The one wasmtime `Engine` of a node: its configuration (async, epoch interruption,
//! pooling allocator), the thread that advances epochs, and the compile cache: every
//! image is compiled once per node, kept on disk by content digest, and pre-instantiated
//! (`InstancePre`) once per process.

use super::guest::{ComponentState, ModuleState};
use crate::RuntimeError;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How many guest instances may exist at once (sizes the pooling allocator).
    pub max_instances: u32,
    /// The largest linear memory any guest may have, whatever its limit says.
    pub max_memory_bytes: u64,
    /// How often the epoch advances: the granularity of CPU accounting and preemption.
    pub epoch_tick: Duration,
    /// Compiles that may run at once (compiling is CPU-heavy and guest-controlled).
    pub max_concurrent_compiles: usize,
    /// Where compiled artifacts are kept.
    pub cache_dir: PathBuf,
}

/// A compiled, pre-instantiated image.
pub enum Compiled {
    /// A WASI preview 1 core module, run through `_start`.
    Module(wasmtime::InstancePre<ModuleState>),
    /// A WASI preview 2 component exporting `wasi:cli/run`.
    Component(wasmtime_wasi::p2::bindings::CommandPre<ComponentState>),
    /// A WASI preview 2 component exporting `wasi:http/incoming-handler`: a serving
    /// container, instantiated once per request.
    Proxy(wasmtime_wasi_http::p2::bindings::ProxyPre<ComponentState>),
}

/// The engine and what goes with it.
pub struct NodeEngine {
    pub engine: Engine,
    module_linker: Linker<ModuleState>,
    component_linker: ComponentLinker<ComponentState>,
    compiled: Mutex<HashMap<String, Arc<Compiled>>>,
    /// Digest -> the lock its one compile runs under (single-flight); removed when done.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Compiles run by this engine (cache loads included), for tests and diagnostics.
    compile_runs: AtomicU64,
    compiles: tokio::sync::Semaphore,
    cache_dir: PathBuf,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for NodeEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Release);
    }
}

fn engine_config(config: &EngineConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    // Guest stack use is bounded well below the async fiber stack, so a deep recursion
    // traps instead of reaching the host's guard page.
    c.max_wasm_stack(512 * 1024);
    c.async_stack_size(2 * 1024 * 1024);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances.max(1);
        // Rust's wasip2 components hold a few core instances (adapters) each.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memory_size(config.max_memory_bytes as usize)
            // Instance-per-request serving reuses slots all the time: zero the first
            // pages of a slot's memory, tables and stack in place instead of handing
            // them back to the kernel (each madvise is a TLB shootdown on every core,
            // and the next instance faults the pages back in), and decommit the rest
            // in batches. Measured on the http-hello pod at 64 clients: the madvise
            // and page-fault paths were the top of the profile.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10)
            .decommit_batch_size(32);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

impl NodeEngine {
    /// Builds the engine (pooling allocator, or on-demand where the machine cannot reserve
    /// the pool's address space) and starts the epoch ticker.
    pub fn new(config: &EngineConfig) -> Result<Arc<NodeEngine>, RuntimeError> {
        let engine = match Engine::new(&engine_config(config, true)) {
            Ok(e) => e,
            Err(pooling_error) => {
                tracing::warn!(error = %pooling_error, "pooling allocator unavailable; using on-demand allocation");
                Engine::new(&engine_config(config, false))
                    .map_err(|e| RuntimeError::Io(format!("cannot create the wasm engine: {e}")))?
            }
        };
        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut ModuleState| {
            &mut s.wasi
        })
        .map_err(|e| RuntimeError::Io(format!("cannot link WASI preview 1: {e}")))?;
        let mut component_linker = ComponentLinker::new(&engine);
        // The whole of WASI preview 2 plus wasi:http, for commands and servers alike:
        // Rust's std imports wasi:cli even in a proxy-world component, and a command may
        // make outgoing requests (which go through the pod's egress hooks).
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)
            .map_err(|e| RuntimeError::Io(format!("cannot link WASI preview 2: {e}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)
            .map_err(|e| RuntimeError::Io(format!("cannot link wasi:http: {e}")))?;
        super::lookup::shadow_ip_name_lookup(&mut component_linker)
            .map_err(|e| RuntimeError::Io(format!("cannot link the node's ip-name-lookup: {e}")))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Io(format!("cannot start the epoch thread: {e}")))?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_dir = config.cache_dir.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| RuntimeError::Io(format!("cannot create {}: {e}", cache_dir.display())))?;
        Ok(Arc::new(NodeEngine {
            engine,
            module_linker,
            component_linker,
            compiled: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            compile_runs: AtomicU64::new(0),
            compiles: tokio::sync::Semaphore::new(config.max_concurrent_compiles.max(1)),
            cache_dir,
            ticker_stop,
        }))
    }

    /// Returns the pre-instantiated form of an image, compiling it at most once per node.
    ///
    /// Concurrent calls for one digest are single-flight: the first compiles while the
    /// others wait on the digest's flight lock, then find the result in the map. (Before,
    /// two of them could compile at once and write the same temporary file.)
    pub async fn prepare(
        self: &Arc<Self>,
        reference: &str,
        digest: &str,
        bytes_path: &Path,
    ) -> Result<Arc<Compiled>, RuntimeError> {
        if let Some(found) = self.cached(digest) {
            return Ok(found);
        }
        let flight = lock(&self.flights)
            .entry(digest.to_string())
            .or_default()
            .clone();
        let result = {
            let _flight = flight.lock().await;
            self.prepare_in_flight(reference, digest, bytes_path).await
        };
        // The flight is over: later callers find the result (or try again after a failure).
        let mut flights = lock(&self.flights);
        if flights.get(digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(digest);
        }
        result
    }

    /// The compile of one digest, run by at most one task at a time.
    async fn prepare_in_flight(
        self: &Arc<Self>,
        reference: &str,
        digest: &str,
        bytes_path: &Path,
    ) -> Result<Arc<Compiled>, RuntimeError> {
        // An earlier flight may have compiled it while this one waited.
        if let Some(found) = self.cached(digest) {
            return Ok(found);
        }
        let _permit = self
            .compiles
            .acquire()
            .await
            .map_err(|_| RuntimeError::Io("the engine is shutting down".into()))?;
        let this = self.clone();
        let (reference_owned, digest_owned, path_owned) = (
            reference.to_string(),
            digest.to_string(),
            bytes_path.to_path_buf(),
        );
        let compiled = tokio::task::spawn_blocking(move || {
            this.compile(&reference_owned, &digest_owned, &path_owned)
        })
        .await
        .map_err(|e| RuntimeError::Io(format!("compile task failed: {e}")))??;
        Ok(lock(&self.compiled)
            .entry(digest.to_string())
            .or_insert_with(|| Arc::new(compiled))
            .clone())
    }

    /// How many times an image was compiled (or loaded from the disk cache) so far.
    #[cfg(test)]
    pub fn compile_runs(&self) -> u64 {
        self.compile_runs.load(Ordering::Relaxed)
    }

    fn cached(&self, digest: &str) -> Option<Arc<Compiled>> {
        lock(&self.compiled).get(digest).cloned()
    }

    fn compile(
        &self,
        reference: &str,
        digest: &str,
        bytes_path: &Path,
    ) -> Result<Compiled, RuntimeError> {
        let run = self.compile_runs.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(reference, digest, run, "compiling image");
        let invalid = |reason: String| RuntimeError::InvalidImage {
            image: reference.to_string(),
            reason,
        };
        let artifact = self
            .cache_dir
            .join(format!("{}.cwasm", digest.replace(':', "-")));
        let kind = {
            let bytes = std::fs::read(bytes_path).map_err(|e| {
                RuntimeError::Io(format!("cannot read {}: {e}", bytes_path.display()))
            })?;
            let kind = wasm_kind(&bytes)
                .ok_or_else(|| invalid("not a WebAssembly module or component".into()))?;
            if !artifact.exists() {
                let precompiled = match kind {
                    WasmKind::Module => self.engine.precompile_module(&bytes),
                    WasmKind::Component => self.engine.precompile_component(&bytes),
                }
                .map_err(|e| invalid(format!("compilation failed: {e}")))?;
                write_atomically(&self.cache_dir, &artifact, &precompiled)?;
            }
            kind
        };
        let compiled = match kind {
            WasmKind::Module => {
                let module = load_module(&self.engine, &artifact)
                    .map_err(|e| invalid(format!("cannot load compiled module: {e}")))?;
                if module.get_export("_start").is_none() {
                    return Err(invalid(
                        "the module exports no `_start` function (not a WASI command)".into(),
                    ));
                }
                let pre = self
                    .module_linker
                    .instantiate_pre(&module)
                    .map_err(|e| invalid(format!("unsupported imports: {e}")))?;
                Compiled::Module(pre)
            }
            WasmKind::Component => {
                let component = load_component(&self.engine, &artifact)
                    .map_err(|e| invalid(format!("cannot load compiled component: {e}")))?;
                let pre = self
                    .component_linker
                    .instantiate_pre(&component)
                    .map_err(|e| invalid(format!("unsupported imports: {e}")))?;
                // A serving component if it exports the incoming handler, else a command.
                match wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre.clone()) {
                    Ok(proxy) => Compiled::Proxy(proxy),
                    Err(_) => {
                        let command =
                            wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(|e| {
                                invalid(format!(
                                    "the component exports neither wasi:cli/run nor \
                                     wasi:http/incoming-handler (unsupported world): {e}"
                                ))
                            })?;
                        Compiled::Component(command)
                    }
                }
            }
        };
        Ok(compiled)
    }
}

/// Writes `bytes` to a temporary file of its own in `dir` and renames it to `path`, so
/// readers (and a concurrent writer, say another agent process on the same data dir)
/// only ever see a complete artifact.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let io = |e: std::io::Error| RuntimeError::Io(format!("cannot write {}: {e}", path.display()));
    let mut tmp = tempfile::Builder::new()
        .prefix(".compile-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only inserted into and removed from whole, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WasmKind {
    Module,
    Component,
}

/// Tells a core module from a component by the binary header.
fn wasm_kind(bytes: &[u8]) -> Option<WasmKind> {
    match bytes.get(..8)? {
        [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00] => Some(WasmKind::Module),
        [0x00, 0x61, 0x73, 0x6d, _, 0x00, 0x01, 0x00] => Some(WasmKind::Component),
        _ => None,
    }
}

#[allow(unsafe_code)]
fn load_module(engine: &Engine, artifact: &Path) -> wasmtime::Result<Module> {
    // SAFETY: the artifact was produced by `precompile_module` of an engine with the same
    // compatibility hash (the cache directory is named after it), written by this
    // process to a file it renamed into place, so it is a well-formed wasmtime artifact.
    unsafe { Module::deserialize_file(engine, artifact) }
}

#[allow(unsafe_code)]
fn load_component(engine: &Engine, artifact: &Path) -> wasmtime::Result<Component> {
    // SAFETY: as in `load_module`, the artifact comes from `precompile_component` of a
    // compatible engine and was written atomically by this process.
    unsafe { Component::deserialize_file(engine, artifact) }
}
