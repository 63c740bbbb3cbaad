//! `skiff scale` and `skiff rollout status|history|undo|restart|pause|resume`, with the
//! semantics kubectl gives them for Deployments.

use crate::apply::display_name;
use crate::get::{resolve_namespace, Context};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_api::resource::{find_by_user_name, ResourceInfo};
use skiff_client::{Client, ListOptions};
use std::process::ExitCode;
use std::time::Duration;

const REVISION: &str = "deployment.kubernetes.io/revision";

/// Resolves `deploy/web` or `deploy web` to a resource and a name.
fn target(first: &str, second: Option<&str>) -> Result<(&'static ResourceInfo, String)> {
    let (kind, name) = match (first.split_once('/'), second) {
        (Some((k, n)), None) => (k.to_string(), n.to_string()),
        (None, Some(n)) => (first.to_string(), n.to_string()),
        _ => bail!("name the object as TYPE/NAME or TYPE NAME, e.g. deployment/web"),
    };
    let resource = find_by_user_name(&kind)
        .with_context(|| format!("the server doesn't have a resource type {kind:?}"))?;
    Ok((resource, name))
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// TYPE/NAME or TYPE NAME (deployments and replicasets).
    object: String,
    name: Option<String>,
    #[arg(long)]
    replicas: i64,
    /// Only scale if the current replica count is this (a precondition).
    #[arg(long)]
    current_replicas: Option<i64>,
}

pub async fn scale(context: &Context, args: ScaleArgs) -> Result<ExitCode> {
    let (resource, name) = target(&args.object, args.name.as_deref())?;
    if resource.subresource("scale").is_none() {
        bail!("{} cannot be scaled", resource.plural);
    }
    if args.replicas < 0 {
        bail!("--replicas must be 0 or more");
    }
    let client = context.client()?;
    let namespace = resolve_namespace(context);
    let path = format!(
        "{}/scale",
        Client::item_path(resource, Some(&namespace), &name)
    );
    if let Some(expected) = args.current_replicas {
        let current = client
            .request(skiff_client::Method::Get, &path, None, None)
            .await?;
        let actual = current
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if actual != expected {
            bail!("expected replicas to be {expected}, was {actual}");
        }
    }
    let body = serde_json::to_vec(&json!({"spec": {"replicas": args.replicas}}))?;
    client
        .request(
            skiff_client::Method::Patch,
            &path,
            Some(("application/merge-patch+json", body)),
            None,
        )
        .await?;
    outln!("{} scaled", display_name(resource, &name));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the rollout finishes, printing its progress.
    Status {
        object: String,
        name: Option<String>,
        /// Give up after this many seconds (0 waits forever).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// List the revisions.
    History {
        object: String,
        name: Option<String>,
    },
    /// Go back to the previous revision (or --to-revision).
    Undo {
        object: String,
        name: Option<String>,
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Restart every pod with a rolling update.
    Restart {
        object: String,
        name: Option<String>,
    },
    Pause {
        object: String,
        name: Option<String>,
    },
    Resume {
        object: String,
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

fn deployment_target(object: &str, name: Option<&str>) -> Result<(&'static ResourceInfo, String)> {
    let (resource, name) = target(object, name)?;
    if resource.kind != "Deployment" {
        bail!("rollout supports deployments, not {}", resource.plural);
    }
    Ok((resource, name))
}

/// kubectl's reading of a Deployment's rollout: `Ok(true)` when done, the message to
/// show while waiting, or an error when the deadline passed.
pub fn rollout_state(d: &Value) -> Result<(bool, String)> {
    let name = d
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let n = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    if n("/metadata/generation") > n("/status/observedGeneration") {
        return Ok((
            false,
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    let progressing = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Progressing"))
        });
    if progressing
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        == Some("ProgressDeadlineExceeded")
    {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let desired = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let (updated, replicas, available) = (
        n("/status/updatedReplicas"),
        n("/status/replicas"),
        n("/status/availableReplicas"),
    );
    Ok(if updated < desired {
        (false, format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {desired} new replicas have been updated..."))
    } else if replicas > updated {
        (false, format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", replicas - updated))
    } else if available < updated {
        (false, format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."))
    } else {
        (true, format!("deployment {name:?} successfully rolled out"))
    })
}

async fn owned_replicasets(
    client: &Client,
    namespace: &str,
    deployment: &Value,
) -> Result<Vec<Value>> {
    let replicasets = &skiff_api::resource::REPLICA_SETS;
    let uid = deployment
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let list = client
        .list(replicasets, Some(namespace), &ListOptions::default())
        .await?;
    let mut owned: Vec<Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|rs| {
            rs.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|r| {
                    r.iter().any(|r| {
                        r.get("uid").and_then(Value::as_str) == Some(uid)
                            && r.get("controller") == Some(&json!(true))
                    })
                })
        })
        .collect();
    owned.sort_by_key(revision_of);
    Ok(owned)
}

fn revision_of(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub async fn rollout(context: &Context, args: RolloutArgs) -> Result<ExitCode> {
    let client = context.client()?;
    let namespace = resolve_namespace(context);
    let pause = matches!(args.command, RolloutCommand::Pause { .. });
    match args.command {
        RolloutCommand::Status {
            object,
            name,
            timeout,
        } => {
            let (resource, name) = deployment_target(&object, name.as_deref())?;
            let wait = async {
                let d = client.get(resource, Some(&namespace), &name).await?;
                let (done, mut shown) = rollout_state(&d)?;
                outln!("{shown}");
                if done {
                    return anyhow::Ok(());
                }
                let options = ListOptions {
                    field_selector: Some(format!("metadata.name={name}")),
                    resource_version: d
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    ..Default::default()
                };
                let mut events = client
                    .watch(resource, Some(&namespace), &options, false)
                    .await?;
                while let Some(event) = events.next().await {
                    let event = event?;
                    if event.event_type == "DELETED" {
                        bail!("object has been deleted");
                    }
                    if event.event_type == "ERROR" {
                        bail!(
                            "{}",
                            event
                                .object
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("watch failed")
                        );
                    }
                    let (done, message) = rollout_state(&event.object)?;
                    if message != shown {
                        outln!("{message}");
                        shown = message;
                    }
                    if done {
                        return Ok(());
                    }
                }
                bail!("the watch ended before the rollout finished")
            };
            if timeout == 0 {
                wait.await?;
            } else {
                tokio::time::timeout(Duration::from_secs(timeout), wait)
                    .await
                    .map_err(|_| anyhow::anyhow!("timed out waiting for the condition"))??;
            }
        }
        RolloutCommand::History { object, name } => {
            let (resource, name) = deployment_target(&object, name.as_deref())?;
            let d = client.get(resource, Some(&namespace), &name).await?;
            outln!("{}", display_name(resource, &name));
            let mut rows = vec![vec!["REVISION".to_string(), "CHANGE-CAUSE".to_string()]];
            for rs in owned_replicasets(&client, &namespace, &d).await? {
                let cause = rs
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get("kubernetes.io/change-cause"))
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")
                    .to_string();
                rows.push(vec![revision_of(&rs).to_string(), cause]);
            }
            crate::output::print_columns(&rows);
        }
        RolloutCommand::Undo {
            object,
            name,
            to_revision,
        } => {
            let (resource, name) = deployment_target(&object, name.as_deref())?;
            let d = client.get(resource, Some(&namespace), &name).await?;
            let owned = owned_replicasets(&client, &namespace, &d).await?;
            let chosen = match to_revision {
                Some(r) => owned
                    .iter()
                    .find(|rs| revision_of(rs) == r)
                    .with_context(|| format!("unable to find specified revision {r} in history"))?,
                None => owned
                    .iter()
                    .rev()
                    .nth(1)
                    .context("no rollout history found: there is no previous revision")?,
            };
            let mut template = chosen
                .pointer("/spec/template")
                .cloned()
                .unwrap_or(json!({}));
            if let Some(labels) = template
                .pointer_mut("/metadata/labels")
                .and_then(Value::as_object_mut)
            {
                labels.remove("pod-template-hash");
            }
            if Some(&template) == d.pointer("/spec/template") {
                outln!(
                    "{} skipped rollback (current template already matches revision {})",
                    display_name(resource, &name),
                    revision_of(chosen)
                );
                return Ok(ExitCode::SUCCESS);
            }
            let patch = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
            client
                .patch(
                    resource,
                    Some(&namespace),
                    &name,
                    "application/json-patch+json",
                    &patch,
                )
                .await?;
            outln!("{} rolled back", display_name(resource, &name));
        }
        RolloutCommand::Restart { object, name } => {
            let (resource, name) = deployment_target(&object, name.as_deref())?;
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}});
            client
                .patch(
                    resource,
                    Some(&namespace),
                    &name,
                    "application/strategic-merge-patch+json",
                    &patch,
                )
                .await?;
            outln!("{} restarted", display_name(resource, &name));
        }
        RolloutCommand::Pause { object, name } | RolloutCommand::Resume { object, name } => {
            let (resource, name) = deployment_target(&object, name.as_deref())?;
            client
                .patch(
                    resource,
                    Some(&namespace),
                    &name,
                    "application/merge-patch+json",
                    &json!({"spec": {"paused": pause}}),
                )
                .await?;
            outln!(
                "{} {}",
                display_name(resource, &name),
                if pause { "paused" } else { "resumed" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
