//! skiff benchmarks. Each one measures skiff and, in the same run, a peer on this
//! machine, and prints medians, tail latencies and the ratio between them.
//!
//! `skiff-bench store`: durable create latency (one client) and throughput at 1, 16 and
//! 64 concurrent clients, against `skiff control` and against etcd started with its
//! default durability (fsync per commit), with the same object payloads.
//!
//! Every benchmark runs in a network namespace of its own, holding only `lo`: the pod
//! and Service addresses the clusters hand out never reach the machine's network, and
//! the routes and rules the agent installs go with the namespace.

mod cluster;
mod density;
mod deployments;
mod dns;
mod etcd;
mod http;
mod ingress;
mod pods;
mod scheduler;
mod services;
mod store;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "skiff-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Durable writes: skiff control vs etcd.
    Store(store::StoreArgs),
    /// Wasm pod start latency and burst, vs `ctr run --rm` on containerd.
    Pods(pods::PodsArgs),
    /// Idle wasm pods on one node: agent memory per pod.
    Density(density::DensityArgs),
    /// A 1,000-replica Deployment: time to available and to roll it.
    Deployment(deployments::DeploymentArgs),
    /// Scheduler throughput over 5,000 nodes, in memory and bound durably.
    Scheduler(scheduler::SchedulerArgs),
    /// A wasi:http pod by pod IP and ClusterIP vs `wasmtime serve`.
    Http(http::HttpArgs),
    /// HTTP through the built-in Ingress vs nginx proxying to the same pod.
    Ingress(ingress::IngressArgs),
    /// Endpoint propagation to the ClusterIP, and a 50-replica rolling update under load.
    Services(services::ServicesArgs),
    /// In-zone DNS queries: the DNS add-on vs dnsmasq, and Service-to-answer time.
    Dns(dns::DnsArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Before any thread exists, so every thread and child shares the namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| anyhow::anyhow!("a network namespace for the benchmark (run as root): {e}"))?;
    let lo = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    anyhow::ensure!(
        lo.success(),
        "cannot bring up lo in the benchmark's namespace"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(cli))
}

async fn bench(cli: Cli) -> Result<()> {
    match cli.bench {
        Bench::Store(args) => store::run(args).await,
        Bench::Pods(args) => pods::run(args).await,
        Bench::Density(args) => density::run(args).await,
        Bench::Deployment(args) => deployments::run(args).await,
        Bench::Scheduler(args) => scheduler::run(args).await,
        Bench::Http(args) => http::run(args).await,
        Bench::Ingress(args) => ingress::run(args).await,
        Bench::Services(args) => services::run(args).await,
        Bench::Dns(args) => dns::run(args).await,
    }
}
