//! The `skiff` binary: the control-plane daemon and a kubectl-like client. Thin: it
//! parses arguments, sets up tracing and signals, and calls into the library crates.

#[macro_use]
mod output;
mod apply;
mod control;
mod dns;
mod files;
mod get;
mod join;
mod logs;
mod node;
mod push;
mod rollout;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A WebAssembly-workload orchestrator with the Kubernetes API"
)]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "SKIFF_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace to use (default: the kubeconfig context's, else "default").
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: the API server on the embedded store.
    Control(control::ControlArgs),
    /// Create or update objects from YAML or JSON files.
    Apply(apply::ApplyArgs),
    /// Show objects as a table, or as YAML, JSON or names.
    Get(get::GetArgs),
    /// Show an object in detail, with its events.
    Describe(get::DescribeArgs),
    /// Delete objects by type and name, or those in files.
    Delete(get::DeleteArgs),
    /// Print the logs of a container in a pod.
    Logs(logs::LogsArgs),
    /// Set the replica count of a Deployment or ReplicaSet.
    Scale(rollout::ScaleArgs),
    /// Manage the rollout of a Deployment: status, history, undo, restart, pause, resume.
    Rollout(rollout::RolloutArgs),
    /// Store a wasm module in the cluster as NAME:TAG for pods to use as their image.
    Push(push::PushArgs),
    /// Run a node agent that joins a cluster and runs its wasm pods.
    Node(node::NodeArgs),
    /// Run a whole single-node cluster in one process: control plane, scheduler and a
    /// node agent on the embedded store.
    Up(node::UpArgs),
    /// Run the cluster DNS add-on on its own (it runs inside `skiff node` and `skiff up`).
    Dns(dns::DnsCommandArgs),
    /// Manage bootstrap tokens for joining nodes.
    Token(join::TokenArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap prints them to stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Usage errors get one line, as every other CLI error does.
            let rendered = e.render().to_string();
            let first_paragraph: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see `skiff --help`)", first_paragraph.join(" "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without Rust debug formatting.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let context = get::Context {
        kubeconfig: cli.kubeconfig,
        namespace: cli.namespace,
    };
    match cli.command {
        Command::Control(args) => control::run(args).await,
        Command::Apply(args) => apply::run(&context, args).await,
        Command::Get(args) => get::get(&context, args).await,
        Command::Describe(args) => get::describe(&context, args).await,
        Command::Delete(args) => get::delete(&context, args).await,
        Command::Logs(args) => logs::run(&context, args).await,
        Command::Push(args) => push::run(&context, args).await,
        Command::Scale(args) => rollout::scale(&context, args).await,
        Command::Rollout(args) => rollout::rollout(&context, args).await,
        Command::Node(args) => node::node(&context, args).await,
        Command::Dns(args) => dns::run(&context, args).await,
        Command::Token(args) => join::token(&context, args).await,
        Command::Up(args) => node::up(args).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_well_formed() {
        // clap checks argument names only when a subcommand is parsed; check them all.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
