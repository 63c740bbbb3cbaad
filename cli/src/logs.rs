//! `skiff logs`: prints (or follows) a container's log through the API server.

use crate::get::{resolve_namespace, Context};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The pod.
    pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<i64>,
    /// The log of the previous run of the container.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
}

pub async fn run(context: &Context, args: LogsArgs) -> Result<ExitCode> {
    let client = context.client()?;
    let namespace = resolve_namespace(context);
    let pods = &skiff_api::resource::PODS;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(c) = &args.container {
        query.append_pair("container", c);
    }
    if args.follow {
        query.append_pair("follow", "true");
    }
    if let Some(n) = args.tail.filter(|n| *n >= 0) {
        query.append_pair("tailLines", &n.to_string());
    }
    if args.previous {
        query.append_pair("previous", "true");
    }
    if args.timestamps {
        query.append_pair("timestamps", "true");
    }
    let path = format!(
        "{}/log?{}",
        skiff_client::Client::item_path(pods, Some(&namespace), &args.pod),
        query.finish()
    );
    let mut chunks = client.stream_text(&path).await?;
    use futures::StreamExt;
    while let Some(chunk) = chunks.next().await {
        outtext!("{}", String::from_utf8_lossy(&chunk?));
    }
    Ok(ExitCode::SUCCESS)
}
