//! API server behaviour over real HTTP: bad input gets the right Status and writes
//! nothing; watches are ordered, complete across reconnects and follow selectors;
//! deletion, finalizers, subresources and generation behave as in Kubernetes.

use crate::harness::{eventually, InProcess};
use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::ListOptions;
use std::time::Duration;

fn deployment(name: &str, app: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "hello.wasm"}]}}}})
}

/// The store's current revision, read through a list.
async fn revision(http: &reqwest::Client, server: &str) -> Result<String> {
    let list: Value = http
        .get(format!("{server}/api/v1/namespaces"))
        .send()
        .await?
        .json()
        .await?;
    Ok(list["metadata"]["resourceVersion"]
        .as_str()
        .context("list has a resourceVersion")?
        .to_string())
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    code: u16,
    reason: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        content_type,
        body: body.into(),
        code,
        reason,
    }
}

#[tokio::test]
async fn bad_input_gets_a_status_and_changes_nothing() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let http = cluster.http.clone();
    let deployments = &skiff_api::resource::DEPLOYMENTS;
    let web = client
        .create(deployments, Some("default"), &deployment("web", "web"))
        .await?;
    let stale_rv = "1";
    let mut selector_change = web.clone();
    selector_change["spec"]["selector"]["matchLabels"]["app"] = json!("other");
    selector_change["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
    let mut stale = web.clone();
    stale["metadata"]["resourceVersion"] = json!(stale_rv);
    stale["spec"]["replicas"] = json!(5);
    let mut mismatch = deployment("bad-selector", "a");
    mismatch["spec"]["template"]["metadata"]["labels"]["app"] = json!("b");
    let mut negative = deployment("negative", "a");
    negative["spec"]["replicas"] = json!(-1);
    let oversized = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"k\":\"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let pods = "/api/v1/namespaces/default/pods";
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    let json_ct = Some("application/json");
    let cases = vec![
        case(
            "malformed json",
            "POST",
            pods,
            json_ct,
            "{\"metadata\": ",
            400,
            "BadRequest",
        ),
        case(
            "malformed yaml",
            "POST",
            pods,
            Some("application/yaml"),
            "metadata: [1, 2",
            400,
            "BadRequest",
        ),
        case(
            "body is not an object",
            "POST",
            pods,
            json_ct,
            "[1,2]",
            400,
            "BadRequest",
        ),
        case(
            "wrong kind for the path",
            "POST",
            pods,
            json_ct,
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        case(
            "wrong field type",
            "POST",
            pods,
            json_ct,
            r#"{"metadata":{"name":"x"},"spec":{"containers":"nope"}}"#,
            400,
            "BadRequest",
        ),
        case(
            "invalid name",
            "POST",
            pods,
            json_ct,
            r#"{"metadata":{"name":"Bad_Name"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
            422,
            "Invalid",
        ),
        case(
            "missing name",
            "POST",
            pods,
            json_ct,
            r#"{"metadata":{},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
            422,
            "Invalid",
        ),
        case(
            "missing containers",
            "POST",
            pods,
            json_ct,
            r#"{"metadata":{"name":"x"},"spec":{}}"#,
            422,
            "Invalid",
        ),
        case(
            "selector does not match template",
            "POST",
            deploys,
            json_ct,
            mismatch.to_string(),
            422,
            "Invalid",
        ),
        case(
            "negative replicas",
            "POST",
            deploys,
            json_ct,
            negative.to_string(),
            422,
            "Invalid",
        ),
        case(
            "immutable selector",
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web",
            json_ct,
            selector_change.to_string(),
            422,
            "Invalid",
        ),
        case(
            "stale resourceVersion",
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web",
            json_ct,
            stale.to_string(),
            409,
            "Conflict",
        ),
        case(
            "name differs from URL",
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/other",
            json_ct,
            web.to_string(),
            400,
            "BadRequest",
        ),
        case(
            "already exists",
            "POST",
            deploys,
            json_ct,
            deployment("web", "web").to_string(),
            409,
            "AlreadyExists",
        ),
        case(
            "oversized body",
            "POST",
            "/api/v1/namespaces/default/configmaps",
            json_ct,
            oversized,
            413,
            "RequestEntityTooLarge",
        ),
        case(
            "unknown content type",
            "POST",
            pods,
            Some("text/plain"),
            "{}",
            415,
            "UnsupportedMediaType",
        ),
        case(
            "malformed protobuf body",
            "POST",
            "/api/v1/namespaces",
            Some("application/vnd.kubernetes.protobuf"),
            b"k8s\0\x0a".to_vec(),
            400,
            "BadRequest",
        ),
        case(
            "protobuf of a kind skiff does not decode",
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            Some("application/vnd.kubernetes.protobuf"),
            b"k8s\0\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment".to_vec(),
            415,
            "UnsupportedMediaType",
        ),
        case(
            "unknown patch type",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/xml"),
            "{}",
            415,
            "UnsupportedMediaType",
        ),
        case(
            "json patch to a missing path",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/json-patch+json"),
            r#"[{"op":"remove","path":"/spec/nope"}]"#,
            422,
            "Invalid",
        ),
        case(
            "merge patch that breaks validation",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/merge-patch+json"),
            r#"{"spec":{"replicas":-3}}"#,
            422,
            "Invalid",
        ),
        case(
            "unknown field under Strict",
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            json_ct,
            r#"{"metadata":{"name":"s"},"dta":{}}"#,
            400,
            "BadRequest",
        ),
        case(
            "missing namespace",
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            json_ct,
            r#"{"metadata":{"name":"x"}}"#,
            404,
            "NotFound",
        ),
        case(
            "missing object",
            "GET",
            "/api/v1/namespaces/default/pods/nope",
            None,
            "",
            404,
            "NotFound",
        ),
        case(
            "unknown resource",
            "GET",
            "/apis/widgets.example.com/v1/widgets",
            None,
            "",
            404,
            "NotFound",
        ),
        case(
            "bad label selector",
            "GET",
            "/api/v1/pods?labelSelector=a%20in%20(b",
            None,
            "",
            400,
            "BadRequest",
        ),
        case(
            "unsupported field selector",
            "GET",
            "/api/v1/services?fieldSelector=spec.nodeName%3Dx",
            None,
            "",
            400,
            "BadRequest",
        ),
        case(
            "bad resourceVersion",
            "GET",
            "/api/v1/pods?watch=true&resourceVersion=abc",
            None,
            "",
            400,
            "BadRequest",
        ),
        case(
            "delete with wrong uid precondition",
            "DELETE",
            "/apis/apps/v1/namespaces/default/deployments/web",
            json_ct,
            r#"{"preconditions":{"uid":"not-the-uid"}}"#,
            409,
            "Conflict",
        ),
        case(
            "bad propagation policy",
            "DELETE",
            "/apis/apps/v1/namespaces/default/deployments/web",
            json_ct,
            r#"{"propagationPolicy":"Sideways"}"#,
            400,
            "BadRequest",
        ),
        case(
            "bad dryRun",
            "POST",
            "/api/v1/namespaces/default/configmaps?dryRun=Some",
            json_ct,
            r#"{"metadata":{"name":"d"}}"#,
            400,
            "BadRequest",
        ),
        // List options are checked as apimachinery checks them: decoding errors are
        // 400, ValidateListOptions' rules a 422 on ListOptions.
        case(
            "list with a non-numeric limit",
            "GET",
            "/api/v1/namespaces/default/pods?limit=ten",
            None,
            "",
            400,
            "BadRequest",
        ),
        case(
            "list with a non-numeric resourceVersion",
            "GET",
            "/api/v1/namespaces/default/pods?resourceVersion=latest",
            None,
            "",
            400,
            "BadRequest",
        ),
        case(
            "list with resourceVersionMatch but no resourceVersion",
            "GET",
            "/api/v1/pods?resourceVersionMatch=NotOlderThan",
            None,
            "",
            422,
            "Invalid",
        ),
        case(
            "list with an unknown resourceVersionMatch",
            "GET",
            "/api/v1/pods?resourceVersion=1&resourceVersionMatch=Newest",
            None,
            "",
            422,
            "Invalid",
        ),
        // Emptying metadata leaves no name; upstream's checkName refuses it, where
        // refilling the name would drop the stored labels silently.
        case(
            "strategic patch deleting metadata",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/strategic-merge-patch+json"),
            r#"{"metadata":{"$patch":"delete"}}"#,
            400,
            "BadRequest",
        ),
        case(
            "merge patch nulling metadata",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/merge-patch+json"),
            r#"{"metadata":null}"#,
            400,
            "BadRequest",
        ),
        case(
            "merge patch renaming the object",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/merge-patch+json"),
            r#"{"metadata":{"name":"other"}}"#,
            400,
            "BadRequest",
        ),
        case(
            "delete with a body of another kind",
            "DELETE",
            "/apis/apps/v1/namespaces/default/deployments/web",
            json_ct,
            r#"{"kind":"Deployment","apiVersion":"apps/v1"}"#,
            400,
            "BadRequest",
        ),
        case(
            "delete with DeleteOptions of an unregistered version",
            "DELETE",
            "/apis/apps/v1/namespaces/default/deployments/web",
            json_ct,
            r#"{"kind":"DeleteOptions","apiVersion":"apps/v1"}"#,
            400,
            "BadRequest",
        ),
        case(
            "deletecollection with resourceVersionMatch but no resourceVersion",
            "DELETE",
            "/api/v1/namespaces/default/configmaps?resourceVersionMatch=Exact",
            None,
            "",
            422,
            "Invalid",
        ),
    ];
    let before = revision(&http, &cluster.server).await?;
    let stored_before = client.get(deployments, Some("default"), "web").await?;
    for c in &cases {
        let method = reqwest::Method::from_bytes(c.method.as_bytes())?;
        let mut request = http
            .request(method, format!("{}{}", cluster.server, c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            request = request.header("Content-Type", ct);
        }
        let response = request.send().await?;
        let code = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{}: the error body is not JSON", c.name))?;
        ensure!(
            code == c.code,
            "{}: expected HTTP {}, got {code}: {body}",
            c.name,
            c.code
        );
        ensure!(
            body["kind"] == "Status" && body["apiVersion"] == "v1",
            "{}: not a Status: {body}",
            c.name
        );
        ensure!(
            body["reason"] == c.reason,
            "{}: expected reason {}, got {body}",
            c.name,
            c.reason
        );
        ensure!(
            body["code"] == c.code,
            "{}: Status code disagrees: {body}",
            c.name
        );
        ensure!(body["status"] == "Failure", "{}: {body}", c.name);
    }
    // A dry run answers like a create and writes nothing.
    let dry = http
        .post(format!(
            "{}/api/v1/namespaces/default/configmaps?dryRun=All",
            cluster.server
        ))
        .body(r#"{"metadata":{"name":"dry"}}"#)
        .send()
        .await?;
    ensure!(
        dry.status().as_u16() == 201,
        "dry run create answered {}",
        dry.status()
    );
    let after = revision(&http, &cluster.server).await?;
    ensure!(
        before == after,
        "bad input changed the store: revision {before} -> {after}"
    );
    let stored_after = client.get(deployments, Some("default"), "web").await?;
    ensure!(
        stored_before == stored_after,
        "bad input changed the stored deployment"
    );
    ensure!(client
        .get(&skiff_api::resource::CONFIG_MAPS, Some("default"), "dry")
        .await
        .is_err());
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn watches_are_complete_and_ordered_across_reconnects() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let list = client
        .list(configmaps, Some("default"), &ListOptions::default())
        .await?;
    let start_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..60 {
                let o =
                    json!({"metadata": {"name": format!("w{i}")}, "data": {"i": i.to_string()}});
                let created = client.create(configmaps, Some("default"), &o).await?;
                revisions.push(
                    created["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            anyhow::Ok(revisions)
        })
    };
    let mut seen = Vec::new();
    let mut from = start_rv.clone();
    // Three connections, each dropped after a few events, must together see every event once.
    for round in 0.. {
        let options = ListOptions {
            resource_version: Some(from.clone()),
            ..Default::default()
        };
        let mut events = client
            .watch(configmaps, Some("default"), &options, false)
            .await?;
        let mut taken = 0;
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_secs(10), events.next()).await
        {
            let event = event?;
            ensure!(
                event.event_type == "ADDED",
                "unexpected {}",
                event.event_type
            );
            let rv = event.object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            from = rv.clone();
            seen.push(rv);
            taken += 1;
            if (round < 2 && taken == 20) || seen.len() == 60 {
                break;
            }
        }
        if seen.len() == 60 {
            break;
        }
        ensure!(round < 10, "the watch stopped delivering events");
    }
    let written = writer.await??;
    ensure!(
        seen == written,
        "watch saw {seen:?}, writes were {written:?}"
    );
    // Past the history window (200 events in the test harness), an old revision is gone.
    for i in 0..210 {
        let o = json!({"metadata": {"name": format!("fill{i}")}});
        client.create(configmaps, Some("default"), &o).await?;
    }
    let options = ListOptions {
        resource_version: Some(start_rv),
        ..Default::default()
    };
    let expired = client
        .watch(configmaps, Some("default"), &options, false)
        .await;
    match expired {
        Err(skiff_client::ClientError::Api {
            code: 410, reason, ..
        }) => ensure!(reason == "Expired"),
        Err(e) => anyhow::bail!("expected 410 Expired, got {e}"),
        Ok(_) => anyhow::bail!("a watch from a compacted revision was accepted"),
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn watch_selectors_turn_label_changes_into_added_and_deleted() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let options = ListOptions {
        label_selector: Some("app=a".into()),
        ..Default::default()
    };
    let mut events = client
        .watch(configmaps, Some("default"), &options, false)
        .await?;
    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    client
        .create(
            configmaps,
            Some("default"),
            &json!({"metadata": {"name": "x", "labels": {"app": "a"}}}),
        )
        .await?;
    client
        .create(
            configmaps,
            Some("default"),
            &json!({"metadata": {"name": "other", "labels": {"app": "z"}}}),
        )
        .await?;
    client
        .patch(
            configmaps,
            Some("default"),
            "x",
            "application/merge-patch+json",
            &relabel("b"),
        )
        .await?;
    client
        .patch(
            configmaps,
            Some("default"),
            "x",
            "application/merge-patch+json",
            &relabel("a"),
        )
        .await?;
    client
        .delete(configmaps, Some("default"), "x", "Background", None)
        .await?;
    let mut types = Vec::new();
    while types.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .context("watch ended")??;
        ensure!(
            event.object["metadata"]["name"] == "x",
            "an unselected object was delivered"
        );
        types.push(event.event_type);
    }
    ensure!(
        types == ["ADDED", "DELETED", "ADDED", "DELETED"],
        "got {types:?}"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn deletion_honours_finalizers_and_pod_grace_periods() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let pods = &skiff_api::resource::PODS;
    client
        .create(
            configmaps,
            Some("default"),
            &json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )
        .await?;
    let deleted = client
        .delete(configmaps, Some("default"), "held", "Background", None)
        .await?;
    ensure!(
        deleted["metadata"]["deletionTimestamp"].is_string(),
        "no deletionTimestamp: {deleted}"
    );
    let still = client.get(configmaps, Some("default"), "held").await?;
    ensure!(still["metadata"]["deletionTimestamp"].is_string());
    let add = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}});
    let refused = client
        .patch(
            configmaps,
            Some("default"),
            "held",
            "application/merge-patch+json",
            &add,
        )
        .await;
    ensure!(
        refused.as_ref().err().and_then(|e| e.code()) == Some(422),
        "a finalizer was added during deletion"
    );
    client
        .patch(
            configmaps,
            Some("default"),
            "held",
            "application/merge-patch+json",
            &json!({"metadata": {"finalizers": null}}),
        )
        .await?;
    ensure!(client
        .get(configmaps, Some("default"), "held")
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));

    // A pod bound to a node is deleted gracefully; an unbound one goes at once.
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "hello.wasm"}]}});
    client.create(pods, Some("default"), &pod).await?;
    client
        .create(
            pods,
            Some("default"),
            &json!({"metadata": {"name": "unbound"}, "spec": pod["spec"].clone()}),
        )
        .await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    client
        .request(
            skiff_client::Method::Post,
            "/api/v1/namespaces/default/pods/p/binding",
            Some(("application/json", serde_json::to_vec(&binding)?)),
            None,
        )
        .await?;
    let rebind = client
        .request(
            skiff_client::Method::Post,
            "/api/v1/namespaces/default/pods/p/binding",
            Some(("application/json", serde_json::to_vec(&binding)?)),
            None,
        )
        .await;
    ensure!(
        rebind.err().and_then(|e| e.code()) == Some(409),
        "a bound pod was bound again"
    );
    let bound = client.get(pods, Some("default"), "p").await?;
    ensure!(bound["spec"]["nodeName"] == "n1");
    let terminating = client
        .delete(pods, Some("default"), "p", "Background", None)
        .await?;
    ensure!(
        terminating["metadata"]["deletionGracePeriodSeconds"] == 30,
        "{terminating}"
    );
    ensure!(
        client.get(pods, Some("default"), "p").await.is_ok(),
        "a bound pod vanished before its grace period"
    );
    client
        .delete(pods, Some("default"), "unbound", "Background", None)
        .await?;
    ensure!(client
        .get(pods, Some("default"), "unbound")
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));
    client
        .delete(pods, Some("default"), "p", "Background", Some(0))
        .await?;
    ensure!(client
        .get(pods, Some("default"), "p")
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn generation_status_and_scale_subresources() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let deployments = &skiff_api::resource::DEPLOYMENTS;
    let created = client
        .create(deployments, Some("default"), &deployment("web", "web"))
        .await?;
    ensure!(created["metadata"]["generation"] == 1);
    ensure!(
        created.get("status").is_none(),
        "status was not cleared on create"
    );
    // A status write changes status only and does not bump generation.
    let mut with_status = created.clone();
    with_status["status"] = json!({"replicas": 1, "observedGeneration": 1});
    with_status["spec"]["replicas"] = json!(9);
    let updated = client
        .request(
            skiff_client::Method::Put,
            "/apis/apps/v1/namespaces/default/deployments/web/status",
            Some(("application/json", serde_json::to_vec(&with_status)?)),
            None,
        )
        .await?;
    ensure!(
        updated["status"]["replicas"] == 1
            && updated["spec"]["replicas"] == 1
            && updated["metadata"]["generation"] == 1,
        "{updated}"
    );
    // Scale through the subresource like kubectl: merge-patch on /scale.
    let scale = client
        .request(
            skiff_client::Method::Patch,
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            Some((
                "application/merge-patch+json",
                br#"{"spec":{"replicas":4}}"#.to_vec(),
            )),
            None,
        )
        .await?;
    ensure!(
        scale["kind"] == "Scale"
            && scale["spec"]["replicas"] == 4
            && scale["status"]["selector"] == "app=web",
        "{scale}"
    );
    let after = client.get(deployments, Some("default"), "web").await?;
    ensure!(
        after["metadata"]["generation"] == 2 && after["status"]["replicas"] == 1,
        "{after}"
    );
    // A main-resource write keeps the stored status.
    let mut replace = after.clone();
    replace["status"] = json!({"replicas": 77});
    let replaced = client
        .replace(deployments, Some("default"), "web", &replace)
        .await?;
    ensure!(replaced["status"]["replicas"] == 1, "{replaced}");
    // A no-op write does not change the resourceVersion.
    ensure!(replaced["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]);
    // generateName gives a unique name.
    let generated = client
        .create(
            &skiff_api::resource::CONFIG_MAPS,
            Some("default"),
            &json!({"metadata": {"generateName": "gen-"}}),
        )
        .await?;
    let name = generated["metadata"]["name"].as_str().unwrap_or_default();
    ensure!(name.starts_with("gen-") && name.len() == 9, "{name}");
    // A namespace delete removes its contents and then the namespace.
    let namespaces = &skiff_api::resource::NAMESPACES;
    client
        .create(namespaces, None, &json!({"metadata": {"name": "doomed"}}))
        .await?;
    client
        .create(deployments, Some("doomed"), &deployment("d", "d"))
        .await?;
    client
        .delete(namespaces, None, "doomed", "Background", None)
        .await?;
    eventually(Duration::from_secs(20), "namespace removal", || async {
        client
            .get(namespaces, None, "doomed")
            .await
            .err()
            .filter(|e| e.is_not_found())
            .map(|_| ())
    })
    .await?;
    ensure!(client
        .get(deployments, Some("doomed"), "d")
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn bookmarks_metrics_and_table_objects() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let namespaces = &skiff_api::resource::NAMESPACES;
    client
        .create(
            namespaces,
            None,
            &json!({"metadata": {"name": "elsewhere"}}),
        )
        .await?;
    let list = client
        .list(configmaps, Some("default"), &ListOptions::default())
        .await?;
    let options = ListOptions {
        resource_version: list["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        allow_bookmarks: true,
        ..Default::default()
    };
    let mut events = client
        .watch(configmaps, Some("default"), &options, false)
        .await?;
    // A write this watch does not select still moves its bookmark forward.
    let other = client
        .create(
            configmaps,
            Some("elsewhere"),
            &json!({"metadata": {"name": "x"}}),
        )
        .await?;
    let other_rv: u64 = other["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .parse()?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .context("watch ended")??;
        ensure!(
            event.event_type == "BOOKMARK",
            "unexpected {} for a write in another namespace",
            event.event_type
        );
        ensure!(event.object["kind"] == "ConfigMap", "{}", event.object);
        let rv: u64 = event.object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .parse()?;
        if rv >= other_rv {
            break;
        }
    }

    let http = cluster.http.clone();
    let table: Value = http
        .get(format!(
            "{}/api/v1/namespaces/elsewhere/configmaps?includeObject=Object",
            cluster.server
        ))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        table["kind"] == "Table" && table["rows"][0]["object"]["kind"] == "ConfigMap",
        "{table}"
    );
    ensure!(table["rows"][0]["cells"][0] == "x", "{table}");

    let metrics = http
        .get(format!("{}/metrics", cluster.server))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains(
            r#"apiserver_request_total{verb="create",resource="configmaps",code="201"} 1"#
        ),
        "{metrics}"
    );
    ensure!(metrics.contains("apiserver_request_duration_seconds_bucket{verb=\"create\",resource=\"configmaps\",le=\"+Inf\"} 1"));
    ensure!(metrics
        .lines()
        .any(|l| l.starts_with("skiff_store_flush_duration_seconds_count ") && !l.ends_with(" 0")));
    for path in ["/healthz", "/livez", "/readyz"] {
        let response = http.get(format!("{}{path}", cluster.server)).send().await?;
        ensure!(response.status().is_success(), "{path}");
    }
    cluster.stop().await;
    Ok(())
}
