//! `skiff apply`: create-or-update with kubectl's last-applied annotation, so fields
//! removed from a manifest are removed from the object, and fields others set (status,
//! controller-managed fields) are left alone.

use crate::files::read_manifests;
use crate::get::{resolve_namespace, Context};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::{Map, Value};
use skiff_api::resource::{find_by_kind, ResourceInfo};
use std::process::ExitCode;

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File, directory or `-` (standard input) with the manifests.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

pub async fn run(context: &Context, args: ApplyArgs) -> Result<ExitCode> {
    let client = context.client()?;
    let default_namespace = resolve_namespace(context);
    let mut failures = 0;
    for path in &args.files {
        for manifest in read_manifests(path)? {
            match apply_one(&client, &default_namespace, manifest.object).await {
                Ok(line) => outln!("{line}"),
                Err(e) => {
                    failures += 1;
                    eprintln!("error: {}: {}", manifest.source, crate::one_line(&e));
                }
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn resource_of(object: &Value) -> Result<&'static ResourceInfo> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        bail!("the object has no apiVersion or kind; both are required");
    }
    find_by_kind(api_version, kind)
        .ok_or_else(|| anyhow::anyhow!("no matches for kind {kind:?} in version {api_version:?}"))
}

/// `deployment.apps/web`, as kubectl names objects in its output.
pub fn display_name(resource: &ResourceInfo, name: &str) -> String {
    if resource.group.is_empty() {
        format!("{}/{name}", resource.singular)
    } else {
        format!("{}.{}/{name}", resource.singular, resource.group)
    }
}

async fn apply_one(
    client: &skiff_client::Client,
    default_namespace: &str,
    mut object: Value,
) -> Result<String> {
    let resource = resource_of(&object)?;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        bail!("{}: metadata.name is required to apply", resource.kind);
    }
    let namespace = if resource.namespaced {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(default_namespace)
            .to_string();
        object["metadata"]["namespace"] = Value::from(ns.clone());
        Some(ns)
    } else {
        None
    };
    // What is recorded is the manifest as written, without the annotation itself.
    let mut recorded = object.clone();
    if let Some(a) = recorded
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            recorded["metadata"]
                .as_object_mut()
                .map(|m| m.remove("annotations"));
        }
    }
    let recorded_text = serde_json::to_string(&recorded)?;
    let shown = display_name(resource, &name);
    match client.get(resource, namespace.as_deref(), &name).await {
        Err(e) if e.is_not_found() => {
            let mut created = recorded.clone();
            set_annotation(&mut created, &recorded_text);
            client
                .create(resource, namespace.as_deref(), &created)
                .await?;
            Ok(format!("{shown} created"))
        }
        Err(e) => Err(e.into()),
        Ok(live) => {
            let previous: Value = live
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(LAST_APPLIED))
                .and_then(Value::as_str)
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Object(Map::new()));
            let mut patch = merge_diff(&previous, &recorded, &live);
            let live_annotation = live
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(LAST_APPLIED));
            if patch.as_object().is_some_and(Map::is_empty)
                && live_annotation == Some(&Value::from(recorded_text.clone()))
            {
                return Ok(format!("{shown} unchanged"));
            }
            set_annotation(&mut patch, &recorded_text);
            client
                .patch(
                    resource,
                    namespace.as_deref(),
                    &name,
                    "application/merge-patch+json",
                    &patch,
                )
                .await?;
            Ok(format!("{shown} configured"))
        }
    }
}

fn set_annotation(object: &mut Value, text: &str) {
    let meta = object.as_object_mut().map(|o| {
        o.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
    });
    if let Some(Value::Object(meta)) = meta {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(LAST_APPLIED.to_string(), Value::from(text));
        }
    }
}

/// A JSON merge patch that turns `live` into what `desired` asks for: keys that were in
/// the last applied manifest (`previous`) but are gone from `desired` are removed, keys
/// that differ from `live` are set, and everything else on the live object stays.
pub fn merge_diff(previous: &Value, desired: &Value, live: &Value) -> Value {
    let empty = Map::new();
    let previous = previous.as_object().unwrap_or(&empty);
    let live = live.as_object().unwrap_or(&empty);
    let mut patch = Map::new();
    if let Some(desired) = desired.as_object() {
        for (key, want) in desired {
            match (want, live.get(key)) {
                (Value::Object(_), Some(have @ Value::Object(_))) => {
                    let child = merge_diff(previous.get(key).unwrap_or(&Value::Null), want, have);
                    if child.as_object().is_some_and(|c| !c.is_empty()) {
                        patch.insert(key.clone(), child);
                    }
                }
                (_, Some(have)) if is_subset(want, have) => {}
                _ => {
                    patch.insert(key.clone(), want.clone());
                }
            }
        }
        for key in previous.keys() {
            if !desired.contains_key(key) && live.contains_key(key) {
                patch.insert(key.clone(), Value::Null);
            }
        }
    }
    Value::Object(patch)
}

/// Whether `live` already says everything `desired` says: the same scalars, and objects
/// and lists whose entries carry at least the desired fields. Fields the server defaulted
/// (an `imagePullPolicy` in a container, say) are not differences, as in kubectl's
/// strategic merge diff.
fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| is_subset(v, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        _ => desired == live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_way_diff_removes_only_what_the_manifest_dropped() {
        let previous =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2}});
        let desired = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3}});
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2", "c": "set-by-someone"}},
            "spec": {"replicas": 2, "paused": false}, "status": {"replicas": 2}});
        assert_eq!(
            merge_diff(&previous, &desired, &live),
            json!({"metadata": {"labels": {"b": null}}, "spec": {"replicas": 3}})
        );
        assert_eq!(
            merge_diff(
                &desired,
                &desired,
                &json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3}})
            ),
            json!({})
        );
        // Server-side defaults inside list entries are not a change.
        let containers = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        let defaulted = json!({"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always"}]}});
        assert_eq!(merge_diff(&containers, &containers, &defaulted), json!({}));
        let changed = json!({"spec": {"containers": [{"name": "c", "image": "j"}]}});
        assert_eq!(merge_diff(&containers, &changed, &defaulted), changed);
    }
}
