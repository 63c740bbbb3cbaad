//! PATCH semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes'
//! strategic merge patch with the list merge keys of the built-in kinds.

use serde_json::{Map, Value};

/// The content types a PATCH request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    /// Server-side apply; skiff applies it like a strategic merge and creates missing objects.
    Apply,
}

impl PatchType {
    /// Maps a request's `Content-Type` (parameters ignored) to a patch type.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        match essence {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// A patch body that is malformed or cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the patch body must be a JSON object")]
    NotAnObject,
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    #[error("the JSON patch could not be applied: {0}")]
    JsonPatchFailed(String),
    #[error("invalid strategic merge patch directive at {path}: {reason}")]
    InvalidDirective { path: String, reason: String },
    #[error("the JSON patch is too large: {0}")]
    TooLarge(String),
}

/// Kubernetes' `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// How many bytes the `copy` operations of one JSON patch may duplicate in total. A
/// patch of a few kilobytes can otherwise double the object forty times over and
/// exhaust memory (Kubernetes bounds this the same way, with `AccumulatedCopySizeLimit`).
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// Applies a patch of `patch_type` to `original`.
pub fn apply_patch(
    patch_type: PatchType,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => json_patch_bounded(original, patch),
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::NotAnObject);
            }
            let mut doc = original.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::StrategicMerge | PatchType::Apply => strategic_merge(original, patch),
    }
}

/// Applies an RFC 6902 patch with Kubernetes' bounds on its operations and on what its
/// `copy` operations duplicate.
fn json_patch_bounded(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "the allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    // The document is a copy, so a failure half-way leaves nothing behind and the
    // library's undo log is not needed.
    let mut doc = original.clone();
    let mut copied = 0usize;
    for (index, op) in ops.0.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(copy) = op {
            let size = doc
                .pointer(copy.from.as_str())
                .map(|v| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX))
                .unwrap_or(0);
            copied = copied.saturating_add(size);
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(PatchError::TooLarge(format!(
                    "operation {index} would make the patch's copies exceed {MAX_JSON_PATCH_COPY_BYTES} bytes"
                )));
            }
        }
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op))
            .map_err(|e| PatchError::JsonPatchFailed(format!("operation {index}: {e}")))?;
    }
    Ok(doc)
}

/// Applies a strategic merge patch.
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let (Some(orig), Some(patch)) = (original.as_object(), patch.as_object()) else {
        return Err(PatchError::NotAnObject);
    };
    let mut path = Vec::new();
    Ok(Value::Object(merge_map(orig, patch, &mut path)?))
}

#[derive(Debug, PartialEq)]
enum ListStrategy {
    MergeOnKey(&'static str),
    MergePrimitives,
    Replace,
}

/// The list strategy for the field at `path` (field names only, array indexes left out),
/// from the `x-kubernetes-patch-*` extensions of the Kubernetes 1.32 OpenAPI documents.
fn list_strategy(path: &[String]) -> ListStrategy {
    let last = path.last().map(String::as_str).unwrap_or_default();
    let parent = path
        .len()
        .checked_sub(2)
        .map(|i| path[i].as_str())
        .unwrap_or_default();
    let in_container = path.iter().any(|p| {
        matches!(
            p.as_str(),
            "containers" | "initContainers" | "ephemeralContainers"
        )
    });
    match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "schedulingGates"
        | "resourceClaims" => ListStrategy::MergeOnKey("name"),
        "env" if in_container => ListStrategy::MergeOnKey("name"),
        "ports" if in_container => ListStrategy::MergeOnKey("containerPort"),
        "ports" if parent == "spec" => ListStrategy::MergeOnKey("port"),
        "volumeMounts" => ListStrategy::MergeOnKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeOnKey("devicePath"),
        "hostAliases" | "podIPs" => ListStrategy::MergeOnKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeOnKey("topologyKey"),
        "ownerReferences" => ListStrategy::MergeOnKey("uid"),
        "conditions" => ListStrategy::MergeOnKey("type"),
        "addresses" if parent == "status" => ListStrategy::MergeOnKey("type"),
        "finalizers" if parent == "metadata" => ListStrategy::MergePrimitives,
        "podCIDRs" => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

fn directive_error(path: &[String], reason: &str) -> PatchError {
    PatchError::InvalidDirective {
        path: path.join("."),
        reason: reason.to_string(),
    }
}

/// Merges `patch` into `orig`.
///
/// `$patch: delete` on a map that is not a list element yields the empty map, not a
/// removed field, as upstream's `handleDirectiveInMergeMap` does: so
/// `{"metadata":{"$patch":"delete"}}` leaves a metadata without a name, which the
/// registry then refuses as a name mismatch, rather than a field the registry would
/// quietly refill while dropping the labels. (List elements with `$patch: delete` are
/// removed by [`merge_list`].)
fn merge_map(
    orig: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, PatchError> {
    match patch.get("$patch").map(|v| v.as_str()) {
        None => {}
        Some(Some("replace")) => return Ok(strip_directives(patch)),
        Some(Some("delete")) => return Ok(Map::new()),
        Some(Some("merge")) => {}
        Some(_) => {
            return Err(directive_error(
                path,
                "$patch must be replace, delete or merge",
            ))
        }
    }
    let mut result = orig.clone();
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            result.remove(key);
            continue;
        }
        path.push(key.clone());
        let merged = match (result.get(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) => Value::Object(merge_map(o, p, path)?),
            (_, Value::Object(p)) => {
                let empty = Map::new();
                Value::Object(merge_map(&empty, p, path)?)
            }
            (existing, Value::Array(p)) => {
                let orig_list = existing
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                Value::Array(merge_list(&orig_list, p, path)?)
            }
            (_, other) => other.clone(),
        };
        path.pop();
        result.insert(key.clone(), merged);
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value
                .as_array()
                .ok_or_else(|| directive_error(path, "expected a list"))?;
            if let Some(Value::Array(list)) = result.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = value
                .as_array()
                .ok_or_else(|| directive_error(path, "expected a list"))?;
            path.push(field.to_string());
            let strategy = list_strategy(path);
            path.pop();
            if let Some(Value::Array(list)) = result.get_mut(field) {
                reorder(list, order, &strategy);
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keys = retain
            .as_array()
            .ok_or_else(|| directive_error(path, "$retainKeys must be a list"))?;
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        result.retain(|k, _| keys.contains(&k.as_str()));
    }
    Ok(result)
}

fn merge_list(
    orig: &[Value],
    patch: &[Value],
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    match list_strategy(path) {
        ListStrategy::Replace => Ok(patch.iter().map(strip_value_directives).collect()),
        ListStrategy::MergePrimitives => {
            let mut result = orig.to_vec();
            for v in patch {
                if !result.contains(v) {
                    result.push(v.clone());
                }
            }
            Ok(result)
        }
        ListStrategy::MergeOnKey(merge_key) => {
            if patch
                .iter()
                .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Ok(patch
                    .iter()
                    .filter(|p| p.get("$patch").is_none())
                    .map(strip_value_directives)
                    .collect());
            }
            let mut result = orig.to_vec();
            for item in patch {
                let Some(item_map) = item.as_object() else {
                    result.push(item.clone());
                    continue;
                };
                let key_value = item_map.get(merge_key);
                let position = key_value
                    .and_then(|kv| result.iter().position(|o| o.get(merge_key) == Some(kv)));
                if item_map.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(kv) = key_value {
                        result.retain(|o| o.get(merge_key) != Some(kv));
                    }
                    continue;
                }
                match position {
                    Some(i) => {
                        let existing = result[i].as_object().cloned().unwrap_or_default();
                        if let Some(slot) = result.get_mut(i) {
                            *slot = Value::Object(merge_map(&existing, item_map, path)?);
                        }
                    }
                    None => result.push(Value::Object(strip_directives(item_map))),
                }
            }
            Ok(result)
        }
    }
}

fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: &ListStrategy) {
    let key_of = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeOnKey(k) => v.get(*k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let order_keys: Vec<Value> = order.iter().map(&key_of).collect();
    let mut ordered: Vec<Value> = Vec::with_capacity(list.len());
    for k in &order_keys {
        if let Some(i) = list.iter().position(|v| &key_of(v) == k) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

fn strip_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_value_directives(v)))
        .collect()
}

fn strip_value_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip_value_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_on_name_and_other_lists_replace() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x", "y"]},
            {"name": "b", "image": "b:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2", "args": ["z"]}]}}}});
        let out = strategic_merge(&orig, &patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:2", "args": ["z"]}])
        );
    }

    #[test]
    fn directives_from_a_real_kubectl_apply() {
        let orig = json!({"spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [
                {"name": "one", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80}, {"containerPort": 81}]},
                {"name": "two"}]}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": null, "type": "Recreate"},
            "template": {"spec": {"$setElementOrder/containers": [{"name": "one"}],
            "containers": [{"name": "one", "$setElementOrder/env": [{"name": "B"}],
                "env": [{"$patch": "delete", "name": "A"}],
                "ports": [{"$patch": "delete", "containerPort": 80}]},
                {"$patch": "delete", "name": "two"}]}}}});
        let out = strategic_merge(&orig, &patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "one", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 81}]}])
        );
    }

    /// Upstream's `$patch: delete` on a map empties it (the field stays, as `{}`); it
    /// used to remove the field, which let the registry refill the name and silently
    /// drop every label and annotation.
    #[test]
    fn patch_delete_on_a_map_empties_it_instead_of_removing_the_field() {
        let original = json!({"metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}}}});
        let patched =
            strategic_merge(&original, &json!({"metadata": {"$patch": "delete"}})).unwrap();
        assert_eq!(patched["metadata"], json!({}));
        let nested = json!({"spec": {"template": {"metadata": {"$patch": "delete"}}}});
        let patched = strategic_merge(&original, &nested).unwrap();
        assert_eq!(patched["spec"]["template"]["metadata"], json!({}));
        assert_eq!(patched["metadata"]["labels"]["app"], "web");
        assert_eq!(
            strategic_merge(&original, &json!({"$patch": "delete"})).unwrap(),
            json!({})
        );
    }

    #[test]
    fn service_ports_merge_on_port_and_finalizers_union() {
        let orig = json!({"metadata": {"finalizers": ["a"]}, "spec": {"ports": [{"port": 80, "name": "http"}]}});
        let patch = json!({"metadata": {"finalizers": ["b"]}, "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "name": "https"}]}});
        let out = strategic_merge(&orig, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443, "name": "https"}])
        );
    }

    #[test]
    fn merge_and_json_patch() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let merged = apply_patch(
            PatchType::Merge,
            &orig,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let patched = apply_patch(
            PatchType::Json,
            &orig,
            &json!([{"op": "replace", "path": "/metadata/labels/a", "value": "9"}]),
        )
        .unwrap();
        assert_eq!(patched["metadata"]["labels"]["a"], json!("9"));
        assert!(apply_patch(
            PatchType::Json,
            &orig,
            &json!([{"op": "remove", "path": "/nope"}])
        )
        .is_err());
        assert!(apply_patch(PatchType::Merge, &orig, &json!([1])).is_err());
    }

    #[test]
    fn json_patch_copies_that_double_the_object_are_refused_not_an_oom() {
        let orig = json!({"metadata": {"name": "x", "labels": {"a": "1"}}});
        let bomb: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
            .collect();
        assert!(matches!(
            apply_patch(PatchType::Json, &orig, &Value::Array(bomb)),
            Err(PatchError::TooLarge(_))
        ));
        // A handful of small copies is fine.
        let ok =
            json!([{"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"}]);
        let out = apply_patch(PatchType::Json, &orig, &ok).unwrap();
        assert_eq!(out["metadata"]["annotations"], json!({"a": "1"}));
    }

    #[test]
    fn json_patch_with_too_many_operations_is_refused() {
        let orig = json!({"a": 1});
        let ops =
            vec![json!({"op": "test", "path": "/a", "value": 1}); MAX_JSON_PATCH_OPERATIONS + 1];
        assert!(matches!(
            apply_patch(PatchType::Json, &orig, &Value::Array(ops)),
            Err(PatchError::TooLarge(_))
        ));
    }
}
