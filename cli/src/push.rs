//! `skiff push FILE NAME:TAG`: stores a wasm module in the cluster, so pods can use
//! `image: NAME:TAG` and every node fetches the same verified bytes.

use crate::get::Context;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The .wasm module or component.
    file: PathBuf,
    /// The reference pods will use, NAME:TAG.
    reference: String,
}

pub async fn run(context: &Context, args: PushArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!(
            "{} is not a WebAssembly module or component",
            args.file.display()
        );
    }
    let client = context.client()?;
    let answer = client
        .put_bytes(
            &format!("/skiff/v1/images/{}", args.reference),
            "application/wasm",
            bytes,
        )
        .await?;
    let digest = answer
        .get("digest")
        .and_then(Value::as_str)
        .unwrap_or_default();
    outln!("pushed {} ({digest})", args.reference);
    Ok(ExitCode::SUCCESS)
}
