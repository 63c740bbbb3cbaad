//! Running one guest to completion in its own `Store`: WASI context (args, env,
//! stdout/stderr to the container log), the memory limiter, the epoch callback that
//! preempts the guest every tick and throttles it to its CPU limit, and the mapping of
//! how it ended to an exit code and reason.

use super::egress::PodHooks;
use super::engine::Compiled;
use super::logs::LogStream;
use crate::ExitReason;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The window over which a CPU limit is enforced (like the CFS period).
const CPU_PERIOD: Duration = Duration::from_millis(100);

/// Store data for a WASI preview 1 module.
pub struct ModuleState {
    pub wasi: WasiP1Ctx,
    guard: GuestGuard,
}

/// Store data for a WASI preview 2 component: a command run once, or one request of a
/// wasi:http serving component. Both may make outgoing HTTP requests, which go through
/// the pod's egress hooks.
pub struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: PodHooks,
    /// Set for pods allowed `wasi:sockets`: their name lookups.
    resolver: Option<super::egress::PodResolver>,
    pub(super) guard: GuestGuard,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl ComponentState {
    /// The state of one run (or one request) from a guest's settings.
    pub(super) fn new(
        builder: &mut WasiCtxBuilder,
        spec: &GuestSpec,
        guard: GuestGuard,
        hooks: PodHooks,
    ) -> ComponentState {
        ComponentState {
            ctx: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            resolver: spec.sockets.as_ref().map(|_| hooks.resolver()),
            hooks,
            guard,
        }
    }

    /// What the shadowed `ip-name-lookup` works on.
    pub(super) fn lookup_view(&mut self) -> super::lookup::LookupView<'_> {
        super::lookup::LookupView {
            table: &mut self.table,
            resolve: self.resolver.as_deref(),
        }
    }
}

/// Limits every guest store carries.
pub(super) struct GuestGuard {
    memory: MemoryLimiter,
    cpu: CpuBudget,
    /// When the run must end (a request's timeout); checked at every epoch tick.
    deadline: Option<Instant>,
    /// Set when the deadline cut the guest off.
    pub(super) timed_out: bool,
}

impl GuestGuard {
    pub(super) fn memory_exceeded(&self) -> bool {
        self.memory.exceeded
    }
}

pub(super) trait Guarded {
    fn guard(&mut self) -> &mut GuestGuard;
}

impl Guarded for ModuleState {
    fn guard(&mut self) -> &mut GuestGuard {
        &mut self.guard
    }
}

impl Guarded for ComponentState {
    fn guard(&mut self) -> &mut GuestGuard {
        &mut self.guard
    }
}

/// Refuses memory growth past the container's limit and remembers that it did, so the
/// trap that follows (allocators abort on failed growth) is reported as OOMKilled.
struct MemoryLimiter {
    limit_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond real programs.
        Ok(desired <= 1_000_000)
    }
}

/// CPU accounting in epoch ticks over [`CPU_PERIOD`] windows.
struct CpuBudget {
    /// Ticks the guest may run per period; `None` is unlimited.
    ticks_per_period: Option<u32>,
    period_start: Instant,
    used: u32,
}

impl CpuBudget {
    fn new(cpu_millis: Option<u64>, tick: Duration) -> Self {
        let ticks_in_period = (CPU_PERIOD.as_micros() / tick.as_micros().max(1)).max(1) as u64;
        CpuBudget {
            ticks_per_period: cpu_millis.map(|m| ((m * ticks_in_period) / 1000).max(1) as u32),
            period_start: Instant::now(),
            used: 0,
        }
    }

    /// Called at every epoch tick the guest runs through: always yield so other guests
    /// and the agent get the thread; over budget, sleep out the rest of the period.
    ///
    /// The yield is tokio's: wasmtime's own `Yield` starves the I/O driver once as many
    /// guests spin as there are guest threads (measured: 3 req/s instead of 91 with two
    /// spinners on two threads).
    fn on_tick(&mut self) -> UpdateDeadline {
        let Some(allowed) = self.ticks_per_period else {
            return yield_to_tokio();
        };
        let now = Instant::now();
        if now.duration_since(self.period_start) >= CPU_PERIOD {
            self.period_start = now;
            self.used = 0;
        }
        self.used += 1;
        if self.used > allowed {
            let resume = tokio::time::Instant::from_std(self.period_start + CPU_PERIOD);
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep_until(resume)))
        } else {
            yield_to_tokio()
        }
    }
}

fn yield_to_tokio() -> UpdateDeadline {
    UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
}

/// What one run of a guest gets.
#[derive(Clone)]
pub struct GuestSpec {
    /// argv, program name first.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub memory_limit_bytes: u64,
    pub cpu_millis: Option<u64>,
    pub epoch_tick: Duration,
    pub stdout: LogStream,
    pub stderr: LogStream,
    /// Preopened directories: (host path, guest path, read-only).
    pub mounts: Vec<crate::Mount>,
    /// `wasi:sockets` access, when the container asked for it.
    pub sockets: Option<SocketPolicy>,
}

/// What a guest's sockets may do: bind and listen on the pod's address only (a wildcard
/// bind only for the ephemeral port of an outgoing connection), connect and send only
/// where the node's router says is in the cluster (Services, pods). Accepting and
/// receiving from anyone is allowed, as for any server.
#[derive(Clone)]
pub struct SocketPolicy {
    pub pod_ip: std::net::IpAddr,
    pub caller: std::sync::Arc<crate::CallerPod>,
    pub router: std::sync::Arc<dyn crate::HttpRouter>,
}

impl SocketPolicy {
    pub fn allows(
        &self,
        addr: std::net::SocketAddr,
        usage: wasmtime_wasi::sockets::SocketAddrUse,
    ) -> bool {
        use wasmtime_wasi::sockets::SocketAddrUse as Use;
        match usage {
            Use::TcpBind | Use::UdpBind => {
                addr.ip() == self.pod_ip || (addr.ip().is_unspecified() && addr.port() == 0)
            }
            Use::TcpListen => addr.ip() == self.pod_ip,
            Use::TcpConnect | Use::UdpSend => matches!(
                self.router
                    .route(&self.caller, &addr.ip().to_string(), addr.port()),
                crate::HttpRoute::Endpoint(_) | crate::HttpRoute::NoEndpoints(_)
            ),
            _ => true,
        }
    }
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub reason: ExitReason,
    pub message: String,
}

impl Outcome {
    fn exited(code: i32) -> Self {
        Outcome {
            exit_code: code,
            reason: if code == 0 {
                ExitReason::Completed
            } else {
                ExitReason::Error
            },
            message: String::new(),
        }
    }
}

pub(super) fn guard_for(spec: &GuestSpec, deadline: Option<Instant>) -> GuestGuard {
    GuestGuard {
        memory: MemoryLimiter {
            limit_bytes: spec.memory_limit_bytes as usize,
            exceeded: false,
        },
        cpu: CpuBudget::new(spec.cpu_millis, spec.epoch_tick),
        deadline,
        timed_out: false,
    }
}

pub(super) fn wasi_builder(spec: &GuestSpec) -> Result<WasiCtxBuilder, String> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.argv)
        .envs(&spec.env)
        .stdout(spec.stdout.clone())
        .stderr(spec.stderr.clone());
    if let Some(policy) = &spec.sockets {
        let policy = policy.clone();
        builder
            .allow_tcp(true)
            .allow_udp(true)
            // The host's resolver knows no cluster names: lookups are shadowed by the
            // node's (`lookup`), and this one stays off should the shadowing ever fail.
            .allow_ip_name_lookup(false)
            .socket_addr_check(move |addr, usage| {
                let allowed = policy.allows(addr, usage);
                Box::pin(async move { allowed })
            });
    }
    for mount in &spec.mounts {
        let perms = if mount.read_only {
            wasmtime_wasi::FsPerms::ReadOnly
        } else {
            wasmtime_wasi::FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&mount.host_path, &mount.container_path, perms)
            .map_err(|e| {
                format!(
                    "cannot mount {} at {}: {e}",
                    mount.host_path.display(),
                    mount.container_path
                )
            })?;
    }
    Ok(builder)
}

/// The outcome of a guest that could not even be set up.
fn setup_failure(message: String) -> Outcome {
    Outcome {
        exit_code: 128,
        reason: ExitReason::Error,
        message,
    }
}

/// Sets the limiter and the epoch callback; must run before instantiation, since start
/// functions run guest code (and a store's epoch deadline is 0 until set, which traps).
pub(super) fn configure<T: Guarded + 'static>(store: &mut Store<T>) {
    store.limiter(|s| &mut s.guard().memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let guard = cx.data_mut().guard();
        if guard.deadline.is_some_and(|d| Instant::now() >= d) {
            guard.timed_out = true;
            return Err(wasmtime::Error::msg("the request's time limit ran out"));
        }
        Ok(guard.cpu.on_tick())
    });
}

/// Maps an error out of the guest to how it ended.
pub(super) fn classify(error: &wasmtime::Error, memory_exceeded: bool, limit: u64) -> Outcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::exited(exit.0);
    }
    if memory_exceeded {
        return Outcome {
            exit_code: 137,
            reason: ExitReason::OOMKilled,
            message: format!("memory limit of {limit} bytes reached"),
        };
    }
    Outcome {
        exit_code: 1,
        reason: ExitReason::Error,
        message: format!("wasm trap: {}", error.root_cause()),
    }
}

/// Instantiates and runs a guest to the end.
pub async fn run(
    engine: &wasmtime::Engine,
    compiled: &Compiled,
    spec: GuestSpec,
    hooks: PodHooks,
) -> Outcome {
    let limit = spec.memory_limit_bytes;
    let outcome = match compiled {
        Compiled::Module(pre) => {
            let mut builder = match wasi_builder(&spec) {
                Ok(b) => b,
                Err(message) => return setup_failure(message),
            };
            let state = ModuleState {
                wasi: builder.build_p1(),
                guard: guard_for(&spec, None),
            };
            let mut store = Store::new(engine, state);
            configure(&mut store);
            let result = async {
                let instance = pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            match result {
                Ok(()) => Outcome::exited(0),
                Err(e) => classify(&e, store.data().guard.memory.exceeded, limit),
            }
        }
        Compiled::Proxy(_) => {
            return setup_failure("a serving component is not run as a command".into())
        }
        Compiled::Component(pre) => {
            let mut builder = match wasi_builder(&spec) {
                Ok(b) => b,
                Err(message) => return setup_failure(message),
            };
            let state = ComponentState::new(&mut builder, &spec, guard_for(&spec, None), hooks);
            let mut store = Store::new(engine, state);
            configure(&mut store);
            let result = async {
                let command = pre.instantiate_async(&mut store).await?;
                command.wasi_cli_run().call_run(&mut store).await
            }
            .await;
            match result {
                Ok(Ok(())) => Outcome::exited(0),
                Ok(Err(())) => Outcome::exited(1),
                Err(e) => classify(&e, store.data().guard.memory.exceeded, limit),
            }
        }
    };
    spec.stdout.finish();
    spec.stderr.finish();
    outcome
}
