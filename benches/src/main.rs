//! skiff benchmarks. Each one measures skiff and, in the same run, a peer on this
//! machine, and prints medians, tail latencies and the ratio between them.
//!
//! `skiff-bench store`: durable create latency (one client) and throughput at 1, 16 and
//! 64 concurrent clients, against `skiff control` and against etcd started with its
//! default durability (fsync per commit), with the same object payloads.

mod cluster;
mod density;
mod deployments;
mod etcd;
mod pods;
mod scheduler;
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
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Store(args) => store::run(args).await,
        Bench::Pods(args) => pods::run(args).await,
        Bench::Density(args) => density::run(args).await,
        Bench::Deployment(args) => deployments::run(args).await,
        Bench::Scheduler(args) => scheduler::run(args).await,
    }
}
