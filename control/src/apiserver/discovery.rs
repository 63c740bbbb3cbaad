//! Discovery and schema endpoints: `/version`, `/api`, `/apis` (legacy and aggregated
//! forms), the per-group-version resource lists, and a minimal OpenAPI v3 document that
//! is enough for `kubectl apply` with its default validation.

use serde_json::{json, Value};
use skiff_api::resource::{named_groups, resources_in, ResourceInfo, Subresource, RESOURCES};

/// The exact media type of aggregated discovery responses; kubectl recognises the
/// aggregated form by it and parses anything else as the legacy form.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": skiff_api::KUBERNETES_MINOR,
        "gitVersion": format!("v1.{}.0-skiff.{}", skiff_api::KUBERNETES_MINOR, env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// Legacy `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// Legacy `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = named_groups()
        .into_iter()
        .map(|(g, v)| group_json(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, or `None` when skiff does not serve the group.
pub fn api_group(group: &str) -> Option<Value> {
    named_groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .map(|(g, v)| {
            let mut value = group_json(g, v);
            value["kind"] = json!("APIGroup");
            value["apiVersion"] = json!("v1");
            value
        })
}

fn subresource_verbs(s: &Subresource) -> Value {
    json!(s.verbs)
}

/// `/api/v1` or `/apis/{group}/{version}`, or `None` when not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in resources_in(group, version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for s in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": subresource_verbs(s),
            });
            if s.group != r.group || s.version != r.version {
                entry["group"] = json!(s.group);
                entry["version"] = json!(s.version);
            }
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| {
            json!({
                "subresource": s.name,
                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                "verbs": s.verbs,
            })
        })
        .collect();
    json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
        "shortNames": r.short_names,
        "categories": r.categories,
        "subresources": subresources,
    })
}

fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = resources_in(group, version)
        .map(aggregated_resource)
        .collect();
    json!({
        "metadata": {"name": group},
        "versions": [{"version": version, "freshness": "Current", "resources": resources}],
    })
}

/// Aggregated discovery: `/api` (core group only) or `/apis` (named groups).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", "v1")]
    } else {
        named_groups()
            .into_iter()
            .map(|(g, v)| aggregated_group(g, v))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// The group-version paths of the OpenAPI v3 index (`api/v1`, `apis/apps/v1`).
fn openapi_group_versions() -> Vec<(String, &'static str, &'static str)> {
    let mut out = vec![("api/v1".to_string(), "", "v1")];
    for (g, v) in named_groups() {
        out.push((format!("apis/{g}/{v}"), g, v));
    }
    out
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (path, group, version) in openapi_group_versions() {
        let hash = fnv1a(openapi_document(group, version).to_string().as_bytes());
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

/// Finds the document for an index path (`api/v1`, `apis/apps/v1`).
pub fn openapi_for_path(path: &str) -> Option<Value> {
    openapi_group_versions()
        .into_iter()
        .find(|(p, _, _)| p == path)
        .map(|(_, g, v)| openapi_document(g, v))
}

/// A minimal OpenAPI v3 document: every item path with its group-version-kind and the
/// `fieldValidation` parameter, so kubectl leaves schema validation to the server (which
/// runs it with `fieldValidation=Strict`) instead of failing for want of a schema.
fn openapi_document(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let item_path = if r.namespaced {
            format!(
                "{}/namespaces/{{namespace}}/{}/{{name}}",
                r.group_version_path(),
                r.plural
            )
        } else {
            format!("{}/{}/{{name}}", r.group_version_path(), r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            item_path,
            json!({"get": operation("get"), "put": operation("put"), "patch": operation("patch"), "delete": operation("delete")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", skiff_api::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_subresource_is_autoscaling_v1() {
        let apps = api_resource_list("apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
    }

    #[test]
    fn every_served_group_version_has_an_openapi_document() {
        let index = openapi_index();
        for path in ["api/v1", "apis/apps/v1", "apis/coordination.k8s.io/v1"] {
            assert!(index["paths"].get(path).is_some(), "{path}");
            let doc = openapi_for_path(path).unwrap();
            assert!(!doc["paths"].as_object().unwrap().is_empty());
        }
    }
}
