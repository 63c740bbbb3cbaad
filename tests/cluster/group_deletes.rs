//! Group deletes over real HTTP and sled: `deletecollection` and namespace deletion
//! remove their objects in a few batched transactions (a few revisions, not one per
//! object), with pods in their grace period marked rather than removed.

use crate::harness::{eventually, InProcess};
use anyhow::{ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use skiff_client::{Client, ClientError, ListOptions};
use std::time::Duration;

const CONFIG_MAPS: &skiff_api::resource::ResourceInfo = &skiff_api::resource::CONFIG_MAPS;
const PODS: &skiff_api::resource::ResourceInfo = &skiff_api::resource::PODS;

/// The store's revision, as a list reports it.
async fn revision(client: &Client) -> Result<u64> {
    let list = client
        .list(
            &skiff_api::resource::NAMESPACES,
            None,
            &ListOptions::default(),
        )
        .await?;
    list["metadata"]["resourceVersion"]
        .as_str()
        .context("list has a resourceVersion")?
        .parse()
        .context("resourceVersion is a number")
}

async fn create_config_maps(client: &Client, namespace: &str, count: usize) -> Result<()> {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "labels": {"bulk": "yes"}},
                "data": {"i": i.to_string()}});
            client.create(CONFIG_MAPS, Some(namespace), &object).await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<Value>>()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletecollection_of_500_config_maps_takes_one_revision() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    create_config_maps(&client, "default", 500).await?;
    let keep = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}});
    client.create(CONFIG_MAPS, Some("default"), &keep).await?;
    let before = revision(&client).await?;
    let deleted = client
        .request(
            skiff_client::Method::Delete,
            "/api/v1/namespaces/default/configmaps?labelSelector=bulk%3Dyes",
            None,
            None,
        )
        .await?;
    ensure!(deleted["items"].as_array().map(Vec::len) == Some(500));
    let after = revision(&client).await?;
    ensure!(
        after - before == 1,
        "500 deletes took {} revisions, expected one transaction",
        after - before
    );
    let left = client
        .list(CONFIG_MAPS, Some("default"), &ListOptions::default())
        .await?;
    let names: Vec<&str> = left["items"]
        .as_array()
        .context("list has items")?
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(
        names == ["keep"],
        "only the unselected one is left: {names:?}"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn deletecollection_marks_bound_pods_and_removes_unbound_ones() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    for name in ["bound", "free-1", "free-2"] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "hello.wasm"}]}});
        client.create(PODS, Some("default"), &pod).await?;
    }
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound"},
        "target": {"kind": "Node", "name": "n1"}});
    client
        .request(
            skiff_client::Method::Post,
            "/api/v1/namespaces/default/pods/bound/binding",
            Some(("application/json", serde_json::to_vec(&binding)?)),
            None,
        )
        .await?;
    client
        .request(
            skiff_client::Method::Delete,
            "/api/v1/namespaces/default/pods",
            None,
            None,
        )
        .await?;
    let left = client
        .list(PODS, Some("default"), &ListOptions::default())
        .await?;
    let items = left["items"].as_array().context("list has items")?;
    ensure!(items.len() == 1, "only the bound pod waits: {left}");
    ensure!(items[0]["metadata"]["name"] == "bound");
    ensure!(items[0]["metadata"]["deletionTimestamp"].is_string());
    ensure!(items[0]["metadata"]["deletionGracePeriodSeconds"] == json!(30));
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_removes_its_contents_in_few_revisions() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let namespaces = &skiff_api::resource::NAMESPACES;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bulk"}});
    client.create(namespaces, None, &ns).await?;
    create_config_maps(&client, "bulk", 300).await?;
    let before = revision(&client).await?;
    client
        .delete(namespaces, None, "bulk", "Background", None)
        .await?;
    eventually(Duration::from_secs(20), "namespace bulk to go", || {
        let client = client.clone();
        async move {
            match client.get(namespaces, None, "bulk").await {
                Err(ClientError::Api { code: 404, .. }) => Some(()),
                _ => None,
            }
        }
    })
    .await?;
    let after = revision(&client).await?;
    // Marking the namespace, one transaction for its contents, removing it.
    ensure!(
        after - before <= 5,
        "deleting 300 objects took {} revisions",
        after - before
    );
    let left = client
        .list(CONFIG_MAPS, Some("bulk"), &ListOptions::default())
        .await?;
    ensure!(left["items"].as_array().is_some_and(Vec::is_empty));
    cluster.stop().await;
    Ok(())
}
