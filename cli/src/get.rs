//! `skiff get`, `describe` and `delete`: read and remove objects through the API server.

use crate::apply::{display_name, resource_of};
use crate::files::read_manifests;
use crate::output::{print_columns, print_json, print_yaml, table_rows, visible_columns};
use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::Value;
use skiff_api::resource::{find_by_user_name, ResourceInfo};
use skiff_client::{Client, ListOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Global options every client command shares.
#[derive(Debug)]
pub struct Context {
    pub kubeconfig: Option<PathBuf>,
    pub namespace: Option<String>,
}

impl Context {
    pub fn client(&self) -> Result<Client> {
        Ok(Client::from_kubeconfig(self.kubeconfig.as_deref())?)
    }
}

/// The namespace: `-n`, else the kubeconfig context's, else `default`.
pub fn resolve_namespace(context: &Context) -> String {
    context
        .namespace
        .clone()
        .or_else(|| {
            skiff_client::kubeconfig::Kubeconfig::discover(context.kubeconfig.as_deref())
                .ok()
                .and_then(|k| k.current_namespace())
        })
        .unwrap_or_else(|| "default".into())
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Yaml,
    Json,
    Wide,
    Name,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Resource type(s), comma-separated: pods, po, deploy, svc, ns, ...
    resource_type: String,
    /// Object names; all objects when none are given.
    names: Vec<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<OutputFormat>,
    /// List across all namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Field selector, e.g. status.phase=Running.
    #[arg(long = "field-selector")]
    field_selector: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long = "watch")]
    watch: bool,
}

fn resolve_types(text: &str) -> Result<Vec<&'static ResourceInfo>> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            find_by_user_name(t)
                .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type {t:?}"))
        })
        .collect()
}

pub async fn get(context: &Context, args: GetArgs) -> Result<ExitCode> {
    let client = context.client()?;
    let types = resolve_types(&args.resource_type)?;
    if types.is_empty() {
        bail!("name a resource type, e.g. `skiff get pods`");
    }
    if types.len() > 1 && !args.names.is_empty() {
        bail!("names cannot be given with several resource types");
    }
    let namespace = resolve_namespace(context);
    let options = ListOptions {
        label_selector: args.selector.clone(),
        field_selector: args.field_selector.clone(),
        ..Default::default()
    };
    let mut failed = false;
    let mut printed_any = false;
    for resource in &types {
        let ns = if args.all_namespaces || !resource.namespaced {
            None
        } else {
            Some(namespace.as_str())
        };
        let prefix = if types.len() > 1 {
            format!("{}/", display_name(resource, "").trim_end_matches('/'))
        } else {
            String::new()
        };
        match args.output {
            Some(OutputFormat::Yaml | OutputFormat::Json) => {
                let value = if args.names.is_empty() {
                    client.list(resource, ns, &options).await?
                } else if args.names.len() == 1 {
                    client.get(resource, ns, &args.names[0]).await?
                } else {
                    let mut items = Vec::new();
                    for name in &args.names {
                        items.push(client.get(resource, ns, name).await?);
                    }
                    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}})
                };
                if args.output == Some(OutputFormat::Yaml) {
                    print_yaml(&value)?
                } else {
                    print_json(&value)?
                }
            }
            Some(OutputFormat::Name) => {
                for object in fetch_objects(&client, resource, ns, &args.names, &options).await? {
                    let name = object
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    outln!("{}", display_name(resource, name));
                }
            }
            None | Some(OutputFormat::Wide) => {
                let wide = args.output == Some(OutputFormat::Wide);
                let mut tables = Vec::new();
                if args.names.is_empty() {
                    tables.push(client.list_table(resource, ns, &options).await?);
                } else {
                    for name in &args.names {
                        match client.get_table(resource, ns, name).await {
                            Ok(t) => tables.push(t),
                            Err(e) => {
                                eprintln!("{e}");
                                failed = true;
                            }
                        }
                    }
                }
                let Some(first) = tables.first() else {
                    continue;
                };
                let columns = visible_columns(first, wide);
                let with_namespace = args.all_namespaces && resource.namespaced;
                let mut rows = Vec::new();
                for t in &tables {
                    rows.extend(table_rows(t, &columns, with_namespace, &prefix));
                }
                if rows.is_empty() {
                    if types.len() == 1 && !args.watch {
                        match ns {
                            Some(ns) => eprintln!("No resources found in {ns} namespace."),
                            None => eprintln!("No resources found"),
                        }
                    }
                } else {
                    if printed_any {
                        outln!();
                    }
                    let mut header: Vec<String> = Vec::new();
                    if with_namespace {
                        header.push("NAMESPACE".into());
                    }
                    header.extend(columns.iter().map(|(_, n)| n.clone()));
                    rows.insert(0, header);
                    print_columns(&rows);
                    printed_any = true;
                }
                if args.watch && types.len() == 1 {
                    let rv = first
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let mut watch_options = options.clone();
                    watch_options.resource_version = rv;
                    if let [name] = args.names.as_slice() {
                        watch_options.field_selector = Some(format!("metadata.name={name}"));
                    }
                    let mut events = client.watch(resource, ns, &watch_options, true).await?;
                    while let Some(event) = events.next().await {
                        let event = event?;
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
                        let rows = table_rows(&event.object, &columns, with_namespace, "");
                        print_columns(&rows);
                    }
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn fetch_objects(
    client: &Client,
    resource: &ResourceInfo,
    ns: Option<&str>,
    names: &[String],
    options: &ListOptions,
) -> Result<Vec<Value>> {
    if names.is_empty() {
        let list = client.list(resource, ns, options).await?;
        return Ok(list
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default());
    }
    let mut out = Vec::new();
    for name in names {
        out.push(client.get(resource, ns, name).await?);
    }
    Ok(out)
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    resource_type: String,
    name: String,
}

pub async fn describe(context: &Context, args: DescribeArgs) -> Result<ExitCode> {
    let client = context.client()?;
    let resource = *resolve_types(&args.resource_type)?
        .first()
        .context("name a resource type, e.g. `skiff describe pod NAME`")?;
    let namespace = resolve_namespace(context);
    let ns = resource.namespaced.then_some(namespace.as_str());
    let object = client.get(resource, ns, &args.name).await?;
    let meta = object.get("metadata").cloned().unwrap_or_default();
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("<none>").to_string();
    let pairs = |v: Option<&Value>, sep: &str| {
        v.and_then(Value::as_object)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}{sep}{}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n              ")
            })
            .unwrap_or_else(|| "<none>".into())
    };
    outln!("Name:         {}", text(meta.get("name")));
    if resource.namespaced {
        outln!("Namespace:    {}", text(meta.get("namespace")));
    }
    outln!("Labels:       {}", pairs(meta.get("labels"), "="));
    let mut annotations = meta.get("annotations").cloned().unwrap_or_default();
    if let Some(a) = annotations.as_object_mut() {
        a.remove(crate::apply::LAST_APPLIED);
    }
    outln!("Annotations:  {}", pairs(Some(&annotations), ": "));
    outln!("CreationTimestamp: {}", text(meta.get("creationTimestamp")));
    if let Some(deletion) = meta.get("deletionTimestamp").and_then(Value::as_str) {
        outln!("DeletionTimestamp: {deletion}");
    }
    for section in ["spec", "status", "data", "subsets"] {
        if let Some(value) = object.get(section).filter(|v| !v.is_null()) {
            let capitalised = format!("{}{}", section[..1].to_uppercase(), &section[1..]);
            outln!("{capitalised}:");
            for line in serde_yaml::to_string(value)?.lines() {
                outln!("  {line}");
            }
        }
    }
    let events = &skiff_api::resource::EVENTS;
    let mut selector = format!(
        "involvedObject.name={},involvedObject.uid={}",
        args.name,
        text(meta.get("uid"))
    );
    if let Some(ns) = ns {
        selector.push_str(&format!(",involvedObject.namespace={ns}"));
    }
    let options = ListOptions {
        field_selector: Some(selector),
        ..Default::default()
    };
    let table = client.list_table(events, ns, &options).await?;
    let columns = visible_columns(&table, false);
    let rows = table_rows(&table, &columns, false, "");
    if rows.is_empty() {
        outln!("Events:       <none>");
    } else {
        outln!("Events:");
        let mut all = vec![columns.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>()];
        all.extend(rows);
        print_columns(&all);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Cascade {
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource type, then names (or use -f).
    args: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    #[arg(long, value_enum, default_value = "background")]
    cascade: Cascade,
    /// Seconds a pod gets to stop; 0 removes it at once.
    #[arg(long = "grace-period")]
    grace_period: Option<i64>,
    /// Do not fail when the object does not exist.
    #[arg(long = "ignore-not-found")]
    ignore_not_found: bool,
}

pub async fn delete(context: &Context, args: DeleteArgs) -> Result<ExitCode> {
    let client = context.client()?;
    let namespace = resolve_namespace(context);
    let mut targets: Vec<(&'static ResourceInfo, Option<String>, String)> = Vec::new();
    for path in &args.files {
        for manifest in read_manifests(path)? {
            let resource = resource_of(&manifest.object)?;
            let name = manifest
                .object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let ns = resource.namespaced.then(|| {
                manifest
                    .object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(&namespace)
                    .to_string()
            });
            targets.push((resource, ns, name));
        }
    }
    if let Some((type_arg, names)) = args.args.split_first() {
        if !args.files.is_empty() {
            bail!("give either -f or a resource type and names, not both");
        }
        let mut type_arg = type_arg.clone();
        let mut names: Vec<String> = names.to_vec();
        // `skiff delete pod/x` form.
        if let Some((t, n)) = type_arg.clone().split_once('/') {
            type_arg = t.to_string();
            names.insert(0, n.to_string());
        }
        let resource = *resolve_types(&type_arg)?
            .first()
            .context("name a resource type")?;
        if names.is_empty() {
            bail!("resource(s) were provided, but no name was specified");
        }
        for name in names {
            targets.push((
                resource,
                resource.namespaced.then(|| namespace.clone()),
                name,
            ));
        }
    } else if args.files.is_empty() {
        bail!("give a resource type and names, or -f FILE");
    }
    // Namespaces go last: deleting one first would remove the objects listed after it
    // underneath us.
    targets.sort_by_key(|(resource, _, _)| resource.kind == "Namespace");
    let policy = match args.cascade {
        Cascade::Background => "Background",
        Cascade::Foreground => "Foreground",
        Cascade::Orphan => "Orphan",
    };
    let mut failed = false;
    for (resource, ns, name) in targets {
        match client
            .delete(resource, ns.as_deref(), &name, policy, args.grace_period)
            .await
        {
            Ok(_) => outln!(
                "{} \"{name}\" deleted",
                display_name(resource, "").trim_end_matches('/')
            ),
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
