//! Validation of objects as pure functions: names, labels, required and immutable
//! fields. Each failure is a [`FieldCause`], which the API server returns as the
//! `details.causes` of a 422 `Invalid` Status.

use crate::quantity::{Format, Quantity};
use crate::resource::ResourceInfo;
use crate::selector::{labels_of, LabelSelector};
use serde_json::Value;

/// One field-level validation failure, shaped like `metav1.StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`,
    /// `FieldValueForbidden` or `FieldValueNotSupported`.
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl FieldCause {
    pub fn required(field: impl Into<String>) -> Self {
        FieldCause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    /// A required value with Kubernetes' detail after it: `Required value: kind is required`.
    pub fn required_because(field: impl Into<String>, detail: impl AsRef<str>) -> Self {
        FieldCause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value: {}", detail.as_ref()),
        }
    }

    /// A value outside a fixed set: `Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let listed: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldCause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                listed.join(", ")
            ),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        FieldCause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl AsRef<str>) -> Self {
        FieldCause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", detail.as_ref()),
        }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldCause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: must have at most {max} bytes"),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldCause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    /// The line Kubernetes prints for this cause: `spec.selector: Required value`.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

const DNS1123_LABEL_MAX: usize = 63;
/// Kubernetes' `TotalAnnotationSizeLimitB`: keys and values of all annotations together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Returns why `name` is not a DNS-1123 label, if it is not.
pub fn dns1123_label_errors(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > DNS1123_LABEL_MAX {
        return Some(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc')"
            .to_string()
    })
}

/// Returns why `name` is not a DNS-1123 subdomain, if it is not.
pub fn dns1123_subdomain_errors(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > DNS1123_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let ok = name.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && part
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric())
    });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
            .to_string()
    })
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Returns why `key` is not a qualified name (`prefix/name`), as label and annotation keys must be.
pub fn qualified_name_errors(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if let Some(e) = dns1123_subdomain_errors(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    (!is_name_part(name)).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and \
         end with an alphanumeric character, at most 63 characters"
            .to_string()
    })
}

/// Returns why `value` is not a valid label value, if it is not.
pub fn label_value_errors(value: &str) -> Option<String> {
    (!value.is_empty() && !is_name_part(value)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
         or '.', and must start and end with an alphanumeric character, at most 63 characters"
            .to_string()
    })
}

/// Validates an object about to be created or replaced (after defaulting).
pub fn validate_object(resource: &ResourceInfo, object: &Value) -> Vec<FieldCause> {
    let mut causes = validate_metadata(resource, object);
    match resource.kind {
        "Pod" => validate_pod_spec(object.get("spec"), "spec", &mut causes),
        "Deployment" | "ReplicaSet" => validate_workload(resource, object, &mut causes),
        "Service" => validate_service(object, &mut causes),
        "ConfigMap" | "Secret" => validate_data_keys(object, &mut causes),
        "RuntimeClass" => validate_runtime_class(object, &mut causes),
        "Ingress" => validate_ingress(object, &mut causes),
        "IngressClass" => validate_ingress_class(object, &mut causes),
        "RoleBinding" | "ClusterRoleBinding" => validate_binding(resource, object, &mut causes),
        "CertificateSigningRequest" => validate_csr(object, &mut causes),
        _ => {}
    }
    causes
}

/// Validates a change from `old` to `new`: everything [`validate_object`] checks plus
/// fields that may not change after creation.
pub fn validate_update(resource: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldCause> {
    let mut causes = validate_object(resource, new);
    let immutable: &[&str] = match resource.kind {
        "Deployment" | "ReplicaSet" => &["/spec/selector"],
        "Service" => &["/spec/clusterIP"],
        // The node picks its backend by handler; changing it under running pods would
        // leave them on a runtime the class no longer names (Kubernetes forbids it too).
        "RuntimeClass" => &["/handler"],
        // Which controller implements a class is fixed once Ingresses may name it.
        "IngressClass" => &["/spec/controller"],
        // As in Kubernetes: a binding's role is fixed; rebind by recreating.
        "RoleBinding" | "ClusterRoleBinding" => &["/roleRef"],
        // A request is what was asked for; only its status moves.
        "CertificateSigningRequest" => &["/spec"],
        _ => &[],
    };
    for pointer in immutable {
        let (a, b) = (old.pointer(pointer), new.pointer(pointer));
        // Clearing an allocated clusterIP in an update is also a change.
        if a.is_some() && a != b {
            causes.push(FieldCause::invalid(
                pointer_to_field(pointer),
                b.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
    if resource.kind == "Pod" {
        validate_pod_update(old, new, &mut causes);
    }
    if matches!(resource.kind, "ConfigMap" | "Secret")
        && old.get("immutable") == Some(&Value::Bool(true))
    {
        for field in ["data", "binaryData", "stringData", "immutable"] {
            if old.get(field) != new.get(field) {
                causes.push(FieldCause::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    causes
}

fn pointer_to_field(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

fn validate_metadata(resource: &ResourceInfo, object: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        causes.push(FieldCause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else {
        let error = match resource.kind {
            "Namespace" | "Service" => dns1123_label_errors(name),
            // Kubernetes' ValidateRBACName: any path segment (`system:node`).
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
                let errors = path_segment_name_errors(name);
                (!errors.is_empty()).then(|| errors.join(", "))
            }
            _ => dns1123_subdomain_errors(name),
        };
        if let Some(e) = error {
            causes.push(FieldCause::invalid("metadata.name", &Value::from(name), e));
        }
    }
    if resource.namespaced {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(e) = dns1123_label_errors(ns) {
            causes.push(FieldCause::invalid(
                "metadata.namespace",
                &Value::from(ns),
                e,
            ));
        }
    }
    for (key, value) in labels_of(object) {
        if let Some(e) = qualified_name_errors(&key) {
            causes.push(FieldCause::invalid(
                "metadata.labels",
                &Value::from(key.clone()),
                e,
            ));
        }
        if let Some(e) = label_value_errors(&value) {
            causes.push(FieldCause::invalid(
                format!("metadata.labels.{key}"),
                &Value::from(value),
                e,
            ));
        }
    }
    if let Some(annotations) = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0usize;
        for (key, value) in annotations {
            if let Some(e) = qualified_name_errors(key) {
                causes.push(FieldCause::invalid(
                    "metadata.annotations",
                    &Value::from(key.as_str()),
                    e,
                ));
            }
            let value_len = value.as_str().map(str::len).unwrap_or_default();
            total = total.saturating_add(key.len()).saturating_add(value_len);
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            causes.push(FieldCause::too_long(
                "metadata.annotations",
                TOTAL_ANNOTATION_SIZE_LIMIT,
            ));
        }
    }
    causes
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<FieldCause>) {
    let Some(spec) = spec else {
        causes.push(FieldCause::required(path));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(FieldCause::required(format!("{path}.containers"))),
        Some(list) if list.is_empty() => {
            causes.push(FieldCause::required(format!("{path}.containers")))
        }
        Some(_) => {}
    }
    let volume_names: Vec<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut seen = Vec::new();
    for list_name in ["initContainers", "containers"] {
        let Some(list) = spec.get(list_name).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in list.iter().enumerate() {
            let field = format!("{path}.{list_name}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                causes.push(FieldCause::required(format!("{field}.name")));
            } else if let Some(e) = dns1123_label_errors(name) {
                causes.push(FieldCause::invalid(
                    format!("{field}.name"),
                    &Value::from(name),
                    e,
                ));
            } else if seen.contains(&name) {
                causes.push(FieldCause::duplicate(
                    format!("{field}.name"),
                    &Value::from(name),
                ));
            } else {
                seen.push(name);
            }
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .is_empty()
            {
                causes.push(FieldCause::required(format!("{field}.image")));
            }
            for (j, m) in c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mount = m.get("name").and_then(Value::as_str).unwrap_or_default();
                if !volume_names.contains(&mount) {
                    causes.push(FieldCause {
                        reason: "FieldValueNotFound",
                        field: format!("{field}.volumeMounts[{j}].name"),
                        message: format!("Not found: {mount:?}"),
                    });
                }
                if m.get("mountPath")
                    .and_then(Value::as_str)
                    .is_none_or(|p| !p.starts_with('/'))
                {
                    causes.push(FieldCause::required(format!(
                        "{field}.volumeMounts[{j}].mountPath"
                    )));
                }
            }
            validate_container_resources(c.get("resources"), &format!("{field}.resources"), causes);
            if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                for (j, p) in ports.iter().enumerate() {
                    let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        causes.push(FieldCause::invalid(
                            format!("{field}.ports[{j}].containerPort"),
                            &Value::from(port),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !matches!(policy, "Always" | "OnFailure" | "Never") {
            causes.push(FieldCause {
                reason: "FieldValueNotSupported",
                field: format!("{path}.restartPolicy"),
                message: format!(
                    "Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
                ),
            });
        }
    }
    if let Some(grace) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if grace < 0 {
            causes.push(FieldCause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &Value::from(grace),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Validates a container's `resources` as Kubernetes' `ValidateResourceRequirements`
/// does: known resource names, quantities that parse and are not negative, requests no
/// larger than limits. skiff also refuses quantities its counters cannot hold (CPU beyond
/// 2^63-1 millicores, anything else beyond 2^63-1 units), which Kubernetes lets overflow.
/// Fields are named as Kubernetes names them: `resources.limits[cpu]`.
fn validate_container_resources(
    resources: Option<&Value>,
    path: &str,
    causes: &mut Vec<FieldCause>,
) {
    let Some(resources) = resources else {
        return;
    };
    let mut parsed = [Vec::new(), Vec::new()];
    for (list, valid) in ["limits", "requests"].into_iter().zip(parsed.iter_mut()) {
        let Some(entries) = resources.get(list).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(entries) = entries.as_object() else {
            causes.push(FieldCause::invalid(
                format!("{path}.{list}"),
                entries,
                "must be a map of resource names to quantities",
            ));
            continue;
        };
        for (name, value) in entries {
            let field = format!("{path}.{list}[{name}]");
            if let Some(e) = container_resource_name_errors(name) {
                causes.push(FieldCause::invalid(field, &Value::from(name.as_str()), e));
                continue;
            }
            match Quantity::from_json(value) {
                Err(e) => causes.push(FieldCause::invalid(field, value, e.to_string())),
                Ok(quantity) => match resource_quantity_errors(name, &quantity) {
                    Some(e) => causes.push(FieldCause::invalid(
                        field,
                        &Value::from(quantity.to_string()),
                        e,
                    )),
                    None => valid.push((name.as_str(), quantity)),
                },
            }
        }
    }
    let [limits, requests] = parsed;
    for (name, request) in &requests {
        let limit = limits.iter().find(|(n, _)| n == name).map(|(_, q)| q);
        if let Some(limit) = limit.filter(|limit| request > *limit) {
            causes.push(FieldCause::invalid(
                format!("{path}.requests"),
                &Value::from(request.to_string()),
                format!("must be less than or equal to {name} limit of {limit}"),
            ));
        }
    }
}

/// Why `name` may not appear in a container's requests or limits
/// (Kubernetes' `validateContainerResourceName`).
fn container_resource_name_errors(name: &str) -> Option<String> {
    if let Some(e) = qualified_name_errors(name) {
        return Some(e);
    }
    let standard =
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    (!name.contains('/') && !standard)
        .then(|| "must be a standard resource for containers".to_string())
}

/// Why `quantity` is not a valid amount of resource `name`
/// (Kubernetes' `ValidateResourceQuantityValue`, plus skiff's range).
fn resource_quantity_errors(name: &str, quantity: &Quantity) -> Option<String> {
    if quantity.is_negative() {
        return Some("must be greater than or equal to 0".into());
    }
    let max = i128::from(i64::MAX);
    if name == "cpu" && quantity.milli_value() > max {
        return Some(format!(
            "must be less than or equal to {}",
            Quantity::from_millis(i64::MAX, Format::DecimalSI)
        ));
    }
    if quantity.value() > max {
        return Some(format!(
            "must be less than or equal to {}",
            Quantity::from_units(i64::MAX, quantity.format())
        ));
    }
    // Extended resources (`example.com/gpu`) are counted in whole units.
    let extended = name.contains('/') && !name.contains("kubernetes.io/");
    if extended && quantity.milli_value() % 1000 != 0 {
        return Some("must be an integer".into());
    }
    None
}

fn validate_pod_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    // As in Kubernetes, a pod's spec is immutable except for container images,
    // activeDeadlineSeconds and added tolerations; nodeName is set once, by binding.
    let strip = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in items {
                    if let Some(obj) = c.as_object_mut() {
                        obj.remove("image");
                    }
                }
            }
        }
        if let Some(obj) = spec.as_object_mut() {
            obj.remove("activeDeadlineSeconds");
            obj.remove("tolerations");
        }
        spec
    };
    if strip(old) != strip(new) {
        causes.push(FieldCause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`, \
             `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` \
             (only additions to existing tolerations)",
        ));
    }
}

fn validate_workload(resource: &ResourceInfo, object: &Value, causes: &mut Vec<FieldCause>) {
    let Some(spec) = object.get("spec") else {
        causes.push(FieldCause::required("spec"));
        return;
    };
    if let Some(replicas) = spec.get("replicas").and_then(Value::as_i64) {
        if replicas < 0 {
            causes.push(FieldCause::invalid(
                "spec.replicas",
                &Value::from(replicas),
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = spec.get("selector");
    let template_labels = spec
        .pointer("/template/metadata")
        .map(|m| labels_of(&serde_json::json!({ "metadata": m })))
        .unwrap_or_default();
    match selector {
        None => causes.push(FieldCause::required("spec.selector")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(|m| m.is_empty());
            if empty {
                causes.push(FieldCause::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
            } else {
                match LabelSelector::from_structured(sel) {
                    Err(e) => causes.push(FieldCause::invalid("spec.selector", sel, e.to_string())),
                    Ok(parsed) if !parsed.matches(&template_labels) => {
                        causes.push(FieldCause::invalid(
                            "spec.template.metadata.labels",
                            &serde_json::to_value(&template_labels).unwrap_or_default(),
                            "`selector` does not match template `labels`",
                        ))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    validate_pod_spec(spec.pointer("/template/spec"), "spec.template.spec", causes);
    if resource.kind == "Deployment" {
        let rolling = spec.pointer("/strategy/rollingUpdate");
        let is_zero = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.trim_end_matches('%').trim() == "0",
            _ => false,
        };
        if let Some(r) = rolling {
            // Kubernetes defaults both to 25%; only explicitly zero values can collide.
            if is_zero(r.get("maxSurge")) && is_zero(r.get("maxUnavailable")) {
                causes.push(FieldCause::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    r.get("maxUnavailable").unwrap_or(&Value::Null),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
            for field in ["maxSurge", "maxUnavailable"] {
                if let Some(Value::String(s)) = r.get(field) {
                    let valid = s
                        .strip_suffix('%')
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| field == "maxSurge" || n <= 100);
                    if !valid {
                        causes.push(FieldCause::invalid(
                            format!("spec.strategy.rollingUpdate.{field}"),
                            &Value::from(s.clone()),
                            "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%')",
                        ));
                    }
                }
                if let Some(n) = r.get(field).and_then(Value::as_i64) {
                    if n < 0 {
                        causes.push(FieldCause::invalid(
                            format!("spec.strategy.rollingUpdate.{field}"),
                            &Value::from(n),
                            "must be greater than or equal to 0",
                        ));
                    }
                }
            }
        }
        if let Some(t) = spec.pointer("/strategy/type").and_then(Value::as_str) {
            if !matches!(t, "RollingUpdate" | "Recreate") {
                causes.push(FieldCause {
                    reason: "FieldValueNotSupported",
                    field: "spec.strategy.type".into(),
                    message: format!("Unsupported value: {t:?}: supported values: \"Recreate\", \"RollingUpdate\""),
                });
            }
        }
    }
}

fn validate_service(object: &Value, causes: &mut Vec<FieldCause>) {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let service_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        service_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(FieldCause {
            reason: "FieldValueNotSupported",
            field: "spec.type".into(),
            message: format!(
                "Unsupported value: {service_type:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ),
        });
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ports.is_empty() && !headless && service_type != "ExternalName" {
        causes.push(FieldCause::required("spec.ports"));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(FieldCause::invalid(
                format!("spec.ports[{i}].port"),
                &Value::from(port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(FieldCause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() {
            if names.contains(&name) {
                causes.push(FieldCause::duplicate(
                    format!("spec.ports[{i}].name"),
                    &Value::from(name),
                ));
            }
            names.push(name);
        }
        if let Some(protocol) = p.get("protocol").and_then(Value::as_str) {
            if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
                causes.push(FieldCause {
                    reason: "FieldValueNotSupported",
                    field: format!("spec.ports[{i}].protocol"),
                    message: format!("Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                });
            }
        }
    }
}

/// `RuntimeClass`: `handler` names a runtime on the nodes (a DNS label, as in
/// Kubernetes), and the node selector of `scheduling` is made of valid labels.
/// A CSR names its signer, carries a request and asks for at least one usage.
fn validate_csr(object: &Value, causes: &mut Vec<FieldCause>) {
    let spec = &object["spec"];
    let text = |f: &str| spec.get(f).and_then(Value::as_str).unwrap_or_default();
    if text("request").is_empty() {
        causes.push(FieldCause::required("spec.request"));
    }
    let signer = text("signerName");
    if signer.is_empty() {
        causes.push(FieldCause::required("spec.signerName"));
    } else if !signer.split_once('/').is_some_and(|(domain, path)| {
        !path.is_empty() && dns1123_subdomain_errors(domain).is_none()
    }) {
        causes.push(FieldCause::invalid(
            "spec.signerName",
            &Value::from(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    if spec
        .get("usages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        causes.push(FieldCause::required("spec.usages"));
    }
}

/// Kubernetes' `ValidateRoleBindingSubject` and roleRef checks.
fn validate_binding(resource: &ResourceInfo, object: &Value, causes: &mut Vec<FieldCause>) {
    const RBAC: &str = "rbac.authorization.k8s.io";
    let role_ref = &object["roleRef"];
    if role_ref.get("apiGroup").and_then(Value::as_str) != Some(RBAC) {
        causes.push(FieldCause::invalid(
            "roleRef.apiGroup",
            role_ref.get("apiGroup").unwrap_or(&Value::Null),
            format!("supported values: \"{RBAC}\""),
        ));
    }
    let kinds: &[&str] = if resource.namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = role_ref
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !kinds.contains(&kind) {
        causes.push(FieldCause::invalid(
            "roleRef.kind",
            &Value::from(kind),
            format!("supported values: {}", kinds.join(", ")),
        ));
    }
    if role_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        causes.push(FieldCause::required("roleRef.name"));
    }
    let subjects = object.get("subjects").and_then(Value::as_array);
    for (i, subject) in subjects.into_iter().flatten().enumerate() {
        let field = |f: &str| format!("subjects[{i}].{f}");
        let name = subject
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.is_empty() {
            causes.push(FieldCause::required(field("name")));
        }
        match subject
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "ServiceAccount" => {
                if !resource.namespaced
                    && subject
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                {
                    causes.push(FieldCause::required(field("namespace")));
                }
            }
            "User" | "Group" => {
                if subject.get("apiGroup").and_then(Value::as_str) != Some(RBAC) {
                    causes.push(FieldCause::invalid(
                        field("apiGroup"),
                        subject.get("apiGroup").unwrap_or(&Value::Null),
                        format!("supported values: \"{RBAC}\""),
                    ));
                }
            }
            other => causes.push(FieldCause::invalid(
                field("kind"),
                &Value::from(other),
                "supported values: \"ServiceAccount\", \"User\", \"Group\"",
            )),
        }
    }
}

fn validate_runtime_class(object: &Value, causes: &mut Vec<FieldCause>) {
    match object.get("handler").and_then(Value::as_str) {
        None | Some("") => causes.push(FieldCause::required("handler")),
        Some(handler) => {
            if let Some(e) = dns1123_label_errors(handler) {
                causes.push(FieldCause::invalid("handler", &Value::from(handler), e));
            }
        }
    }
    if let Some(selector) = object
        .pointer("/scheduling/nodeSelector")
        .and_then(Value::as_object)
    {
        for (key, value) in selector {
            let field = format!("scheduling.nodeSelector.{key}");
            if let Some(e) = qualified_name_errors(key) {
                causes.push(FieldCause::invalid(&field, &Value::from(key.as_str()), e));
            }
            let text = value.as_str().unwrap_or_default();
            if let Some(e) = label_value_errors(text) {
                causes.push(FieldCause::invalid(&field, value, e));
            }
        }
    }
}

/// `Ingress` (networking/v1), as Kubernetes' `ValidateIngressSpec` and
/// `ValidateIngressLoadBalancerStatus`: a default backend or rules; hosts that are DNS
/// names (one leading `*.` label allowed), not IP addresses; typed paths; backends that
/// name exactly one Service port or one resource; TLS hosts and secret names.
fn validate_ingress(object: &Value, causes: &mut Vec<FieldCause>) {
    let spec = object.get("spec").unwrap_or(&Value::Null);
    let rules = spec.get("rules").and_then(Value::as_array);
    let default_backend = spec.get("defaultBackend").filter(|b| !b.is_null());
    if rules.is_none_or(|r| r.is_empty()) && default_backend.is_none() {
        // Kubernetes prints the Go value of the empty rules here.
        let shown = if rules.is_some() {
            "[]networking.IngressRule{}"
        } else {
            "[]networking.IngressRule(nil)"
        };
        causes.push(FieldCause {
            reason: "FieldValueInvalid",
            field: "spec".into(),
            message: format!(
                "Invalid value: {shown}: either `defaultBackend` or `rules` must be specified"
            ),
        });
    }
    if let Some(backend) = default_backend {
        validate_ingress_backend(backend, "spec.defaultBackend", causes);
    }
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let field = format!("spec.rules[{i}]");
        let host = rule.get("host").and_then(Value::as_str).unwrap_or_default();
        if !host.is_empty() {
            let shown = Value::from(host);
            if is_ip_address(host) {
                causes.push(FieldCause::invalid(
                    format!("{field}.host"),
                    &shown,
                    "must be a DNS name, not an IP address",
                ));
            }
            if let Some(e) = ingress_host_errors(host) {
                causes.push(FieldCause::invalid(format!("{field}.host"), &shown, e));
            }
        }
        let Some(http) = rule.get("http").filter(|h| !h.is_null()) else {
            continue;
        };
        let paths = http.get("paths").and_then(Value::as_array);
        if paths.is_none_or(|p| p.is_empty()) {
            causes.push(FieldCause::required(format!("{field}.http.paths")));
        }
        for (j, path) in paths.into_iter().flatten().enumerate() {
            validate_ingress_path(path, &format!("{field}.http.paths[{j}]"), causes);
        }
    }
    let tls = spec.get("tls").and_then(Value::as_array);
    for (i, entry) in tls.into_iter().flatten().enumerate() {
        let hosts = entry.get("hosts").and_then(Value::as_array);
        for (j, host) in hosts.into_iter().flatten().enumerate() {
            let text = host.as_str().unwrap_or_default();
            if let Some(e) = ingress_host_errors(text) {
                causes.push(FieldCause::invalid(
                    format!("spec.tls[{i}].hosts[{j}]"),
                    host,
                    e,
                ));
            }
        }
        let secret = entry
            .get("secretName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !secret.is_empty() {
            if let Some(e) = dns1123_subdomain_errors(secret) {
                causes.push(FieldCause::invalid(
                    format!("spec.tls[{i}].secretName"),
                    &Value::from(secret),
                    e,
                ));
            }
        }
    }
    if let Some(class) = spec.get("ingressClassName").and_then(Value::as_str) {
        if let Some(e) = dns1123_subdomain_errors(class) {
            causes.push(FieldCause::invalid(
                "spec.ingressClassName",
                &Value::from(class),
                e,
            ));
        }
    }
    let balancers = object
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array);
    for (i, balancer) in balancers.into_iter().flatten().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}]");
        let ip = balancer
            .get("ip")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
            causes.push(FieldCause::invalid(
                format!("{field}.ip"),
                &Value::from(ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        let hostname = balancer
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !hostname.is_empty() {
            let shown = Value::from(hostname);
            if let Some(e) = dns1123_subdomain_errors(hostname) {
                causes.push(FieldCause::invalid(format!("{field}.hostname"), &shown, e));
            }
            if is_ip_address(hostname) {
                causes.push(FieldCause::invalid(
                    format!("{field}.hostname"),
                    &shown,
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
}

/// Path types of networking/v1, in the order Kubernetes lists them.
const INGRESS_PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];

/// One `http.paths[]` entry (Kubernetes' `validateHTTPIngressPath`).
fn validate_ingress_path(path: &Value, field: &str, causes: &mut Vec<FieldCause>) {
    // The typed struct decodes a missing pathType as empty.
    let path_type = path
        .get("pathType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if path_type.is_empty() {
        // As in Kubernetes, the backend of an untyped path is not looked at.
        causes.push(FieldCause::required_because(
            format!("{field}.pathType"),
            "pathType must be specified",
        ));
        return;
    }
    let text = path.get("path").and_then(Value::as_str).unwrap_or_default();
    let shown = Value::from(text);
    let path_field = format!("{field}.path");
    match path_type {
        "Exact" | "Prefix" => {
            if !text.starts_with('/') {
                causes.push(FieldCause::invalid(
                    &path_field,
                    &shown,
                    "must be an absolute path",
                ));
            }
            if !text.is_empty() {
                for sequence in ["//", "/./", "/../", "%2f", "%2F"] {
                    if text.contains(sequence) {
                        causes.push(FieldCause::invalid(
                            &path_field,
                            &shown,
                            format!("must not contain '{sequence}'"),
                        ));
                    }
                }
                for suffix in ["/..", "/."] {
                    if text.ends_with(suffix) {
                        causes.push(FieldCause::invalid(
                            &path_field,
                            &shown,
                            format!("cannot end with '{suffix}'"),
                        ));
                    }
                }
            }
        }
        "ImplementationSpecific" => {
            if !text.is_empty() && !text.starts_with('/') {
                causes.push(FieldCause::invalid(
                    &path_field,
                    &shown,
                    "must be an absolute path",
                ));
            }
        }
        other => causes.push(FieldCause::not_supported(
            format!("{field}.pathType"),
            other,
            INGRESS_PATH_TYPES,
        )),
    }
    let backend = path.get("backend").unwrap_or(&Value::Null);
    validate_ingress_backend(backend, &format!("{field}.backend"), causes);
}

/// An Ingress backend (Kubernetes' `validateIngressBackend`): exactly one of a Service
/// port (by number or by name, not both) and a typed resource reference.
fn validate_ingress_backend(backend: &Value, field: &str, causes: &mut Vec<FieldCause>) {
    let set = |key: &str| backend.get(key).filter(|v| !v.is_null());
    let empty = Value::from("");
    match (set("resource"), set("service")) {
        (Some(_), Some(_)) => causes.push(FieldCause::invalid(
            field,
            &empty,
            "cannot set both resource and service backends",
        )),
        (Some(resource), None) => {
            validate_typed_local_reference(resource, &format!("{field}.resource"), causes)
        }
        (None, Some(service)) => {
            let name = service
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.is_empty() {
                causes.push(FieldCause::required(format!("{field}.service.name")));
            } else if let Some(e) = dns1035_label_errors(name) {
                causes.push(FieldCause::invalid(
                    format!("{field}.service.name"),
                    &Value::from(name),
                    e,
                ));
            }
            let port = service.get("port").unwrap_or(&Value::Null);
            let port_name = port.get("name").and_then(Value::as_str).unwrap_or_default();
            let port_number = port.get("number").and_then(Value::as_i64).unwrap_or(0);
            match (port_name.is_empty(), port_number == 0) {
                (false, false) => causes.push(FieldCause::invalid(
                    field,
                    &empty,
                    "cannot set both port name & port number",
                )),
                (false, true) => {
                    for e in port_name_errors(port_name) {
                        causes.push(FieldCause::invalid(
                            format!("{field}.service.port.name"),
                            &Value::from(port_name),
                            e,
                        ));
                    }
                }
                (true, false) => {
                    if !(1..=65535).contains(&port_number) {
                        causes.push(FieldCause::invalid(
                            format!("{field}.service.port.number"),
                            &Value::from(port_number),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
                (true, true) => causes.push(FieldCause::required_because(
                    field,
                    "port name or number is required",
                )),
            }
        }
        (None, None) => causes.push(FieldCause::invalid(
            field,
            &empty,
            "resource or service backend is required",
        )),
    }
}

/// A typed reference to an object in the same namespace or cluster (a resource backend,
/// an IngressClass's parameters): an API group that is a DNS subdomain, and a kind and
/// name usable as path segments.
fn validate_typed_local_reference(reference: &Value, field: &str, causes: &mut Vec<FieldCause>) {
    if let Some(group) = reference.get("apiGroup").and_then(Value::as_str) {
        if let Some(e) = dns1123_subdomain_errors(group) {
            causes.push(FieldCause::invalid(
                format!("{field}.apiGroup"),
                &Value::from(group),
                e,
            ));
        }
    }
    for key in ["kind", "name"] {
        let value = reference
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default();
        if value.is_empty() {
            causes.push(FieldCause::required_because(
                format!("{field}.{key}"),
                format!("{key} is required"),
            ));
            continue;
        }
        for e in path_segment_name_errors(value) {
            causes.push(FieldCause::invalid(
                format!("{field}.{key}"),
                &Value::from(value),
                e,
            ));
        }
    }
}

/// The longest `spec.controller` Kubernetes accepts.
const INGRESS_CLASS_CONTROLLER_MAX: usize = 250;

/// `IngressClass` (networking/v1): a domain-prefixed `spec.controller` and, when set,
/// parameters that reference one object cluster-wide or in a namespace.
fn validate_ingress_class(object: &Value, causes: &mut Vec<FieldCause>) {
    let controller = object
        .pointer("/spec/controller")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if controller.len() > INGRESS_CLASS_CONTROLLER_MAX {
        causes.push(FieldCause::too_long(
            "spec.controller",
            INGRESS_CLASS_CONTROLLER_MAX,
        ));
    }
    validate_domain_prefixed_path(controller, "spec.controller", causes);
    let Some(parameters) = object.pointer("/spec/parameters").filter(|p| !p.is_null()) else {
        return;
    };
    validate_typed_local_reference(parameters, "spec.parameters", causes);
    let scope = parameters
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = parameters.get("namespace").and_then(Value::as_str);
    match scope {
        "Namespace" => match namespace {
            None => causes.push(FieldCause::required_because(
                "spec.parameters.namespace",
                "`parameters.scope` is set to 'Namespace'",
            )),
            Some(ns) => {
                if let Some(e) = dns1123_label_errors(ns) {
                    causes.push(FieldCause::invalid(
                        "spec.parameters.namespace",
                        &Value::from(ns),
                        e,
                    ));
                }
            }
        },
        "Cluster" => {
            if namespace.is_some() {
                causes.push(FieldCause::forbidden(
                    "spec.parameters.namespace",
                    "`parameters.scope` is set to 'Cluster'",
                ));
            }
        }
        other => causes.push(FieldCause::not_supported(
            "spec.parameters.scope",
            other,
            &["Cluster", "Namespace"],
        )),
    }
}

/// Kubernetes' `IsDomainPrefixedPath`: `example.com/some/path`.
fn validate_domain_prefixed_path(value: &str, field: &str, causes: &mut Vec<FieldCause>) {
    if value.is_empty() {
        causes.push(FieldCause::required(field));
        return;
    }
    let Some((host, path)) = value
        .split_once('/')
        .filter(|(host, path)| !host.is_empty() && !path.is_empty())
    else {
        causes.push(FieldCause::invalid(
            field,
            &Value::from(value),
            "must be a domain-prefixed path (such as \"acme.io/foo\")",
        ));
        return;
    };
    if let Some(e) = dns1123_subdomain_errors(host) {
        causes.push(FieldCause::invalid(field, &Value::from(host), e));
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b));
    if !path_ok {
        causes.push(FieldCause::invalid(
            field,
            &Value::from(path),
            "must be a valid path (regex used for validation is '[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+')",
        ));
    }
}

/// Why `host` is not an Ingress host: a DNS-1123 subdomain, or one with a single
/// leading `*.` label (Kubernetes' `IsWildcardDNS1123Subdomain`).
fn ingress_host_errors(host: &str) -> Option<String> {
    if !host.contains('*') {
        return dns1123_subdomain_errors(host);
    }
    if host.len() > DNS1123_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let valid = host
        .strip_prefix("*.")
        .is_some_and(|rest| dns1123_subdomain_errors(rest).is_none());
    (!valid).then(|| {
        "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, \
         which must consist of lower case alphanumeric characters, '-' or '.' and end with an \
         alphanumeric character (e.g. '*.example.com')"
            .to_string()
    })
}

/// Whether `text` is an IP address as Kubernetes' `ParseIPSloppy` reads one (IPv4
/// components may have leading zeros).
fn is_ip_address(text: &str) -> bool {
    if text.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok()
        })
}

/// Returns why `name` is not a DNS-1035 label (as Service names must be), if it is not.
pub fn dns1035_label_errors(name: &str) -> Option<String> {
    if name.len() > DNS1123_LABEL_MAX {
        return Some(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    (!ok).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with \
         an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or \
         'abc-123')"
            .to_string()
    })
}

/// Why `name` is not a port name (an IANA_SVC_NAME, Kubernetes' `IsValidPortName`);
/// each failed rule is one message.
pub fn port_name_errors(name: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if name.len() > 15 {
        errors.push("must be no more than 15 characters".to_string());
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errors
            .push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)".into());
    }
    if name.contains("--") {
        errors.push("must not contain consecutive hyphens".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        errors.push("must not begin or end with a hyphen".into());
    }
    errors
}

/// Why `name` cannot be one segment of a URL path (Kubernetes' `IsValidPathSegmentName`).
fn path_segment_name_errors(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|bad| name.contains(*bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

fn validate_data_keys(object: &Value, causes: &mut Vec<FieldCause>) {
    for field in ["data", "binaryData", "stringData"] {
        if let Some(map) = object.get(field).and_then(Value::as_object) {
            for key in map.keys() {
                let ok = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !ok {
                    causes.push(FieldCause::invalid(
                        field.to_string(),
                        &Value::from(key.as_str()),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotations_over_256_kib_in_total_are_too_long() {
        let cm = &crate::resource::CONFIG_MAPS;
        let with = |value: String| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": "default", "annotations": {"k": value}}})
        };
        let causes = validate_object(cm, &with("x".repeat(2 << 20)));
        assert!(
            causes
                .iter()
                .any(|c| c.field == "metadata.annotations" && c.reason == "FieldValueTooLong"),
            "{causes:?}"
        );
        assert!(validate_object(cm, &with("x".repeat(1000))).is_empty());
    }

    #[test]
    fn names() {
        assert!(dns1123_label_errors("web-1").is_none());
        assert!(dns1123_label_errors("Web").is_some());
        assert!(dns1123_label_errors("-web").is_some());
        assert!(dns1123_label_errors(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain_errors("a.b-c.d").is_none());
        assert!(dns1123_subdomain_errors("a..b").is_some());
        assert!(qualified_name_errors("kubernetes.io/hostname").is_none());
        assert!(qualified_name_errors("bad key").is_some());
        assert!(label_value_errors("").is_none());
        assert!(label_value_errors("a b").is_some());
    }

    fn fields(causes: &[FieldCause]) -> Vec<String> {
        causes.iter().map(|c| c.field.clone()).collect()
    }

    #[test]
    fn runtime_class_handler_is_a_dns_label_and_immutable() {
        let classes = &crate::resource::RUNTIME_CLASSES;
        let good = json!({"metadata": {"name": "wasm"}, "handler": "wasmtime",
            "scheduling": {"nodeSelector": {"skiff.dev/runtime": "wasm"}}});
        assert_eq!(validate_object(classes, &good), vec![]);
        let missing = json!({"metadata": {"name": "wasm"}});
        assert_eq!(fields(&validate_object(classes, &missing)), vec!["handler"]);
        let mut bad = good.clone();
        bad["handler"] = json!("Not_A_Label");
        bad["scheduling"]["nodeSelector"] = json!({"bad key": "x"});
        assert_eq!(
            fields(&validate_object(classes, &bad)),
            vec!["handler", "scheduling.nodeSelector.bad key"]
        );
        let mut changed = good.clone();
        changed["handler"] = json!("containerd");
        assert_eq!(
            fields(&validate_update(classes, &good, &changed)),
            vec!["handler"]
        );
    }

    #[test]
    fn deployment_rules() {
        let deploy = &crate::resource::DEPLOYMENTS;
        let good = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "x.wasm"}]}}}});
        assert_eq!(validate_object(deploy, &good), vec![]);

        let mut bad = good.clone();
        bad["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        bad["spec"]["replicas"] = json!(-1);
        bad["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
        assert_eq!(
            fields(&validate_object(deploy, &bad)),
            vec![
                "spec.replicas",
                "spec.template.metadata.labels",
                "spec.strategy.rollingUpdate.maxUnavailable"
            ]
        );

        let mut changed = good.clone();
        changed["spec"]["selector"]["matchLabels"] = json!({"app": "web", "x": "y"});
        changed["spec"]["template"]["metadata"]["labels"]["x"] = json!("y");
        assert_eq!(
            fields(&validate_update(deploy, &good, &changed)),
            vec!["spec.selector"]
        );
    }

    fn ingress_with(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn service_backend(port: Value) -> Value {
        json!({"service": {"name": "web", "port": port}})
    }

    #[test]
    fn a_full_ingress_is_valid() {
        let ingresses = &crate::resource::INGRESSES;
        let good = ingress_with(json!({
            "ingressClassName": "skiff",
            "rules": [
                {"host": "a.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": service_backend(json!({"number": 80}))},
                    {"path": "/api/v1", "pathType": "Exact", "backend": service_backend(json!({"name": "http"}))}]}},
                {"host": "*.example.com", "http": {"paths": [
                    {"pathType": "ImplementationSpecific", "backend": {"resource":
                        {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "static"}}}]}},
                {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": service_backend(json!({"number": 8080}))}]}}],
            "tls": [{"hosts": ["a.example.com", "*.example.com"], "secretName": "example-tls"}, {}]}));
        assert_eq!(validate_object(ingresses, &good), vec![]);
        let only_default =
            ingress_with(json!({"defaultBackend": service_backend(json!({"number": 80}))}));
        assert_eq!(validate_object(ingresses, &only_default), vec![]);
    }

    #[test]
    fn bad_ingresses_get_the_messages_kubernetes_gives() {
        let ingresses = &crate::resource::INGRESSES;
        let path = |path: Value| {
            ingress_with(json!({"rules": [{"host": "a.example.com", "http": {"paths": [path]}}]}))
        };
        let p = "spec.rules[0].http.paths[0]";
        let cases: Vec<(Value, Vec<String>)> = vec![
            (ingress_with(json!({})), vec![
                "spec: Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified".into()]),
            (ingress_with(json!({"rules": []})), vec![
                "spec: Invalid value: []networking.IngressRule{}: either `defaultBackend` or `rules` must be specified".into()]),
            (path(json!({"path": "/", "backend": service_backend(json!({"number": 80}))})), vec![
                format!("{p}.pathType: Required value: pathType must be specified")]),
            (path(json!({"path": "/", "pathType": "Regex", "backend": service_backend(json!({"number": 80}))})), vec![
                format!("{p}.pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"")]),
            (path(json!({"path": "api", "pathType": "Prefix", "backend": service_backend(json!({"number": 80}))})), vec![
                format!("{p}.path: Invalid value: \"api\": must be an absolute path")]),
            (path(json!({"path": "/a//b/..", "pathType": "Exact", "backend": service_backend(json!({"number": 80}))})), vec![
                format!("{p}.path: Invalid value: \"/a//b/..\": must not contain '//'"),
                format!("{p}.path: Invalid value: \"/a//b/..\": cannot end with '/..'")]),
            (path(json!({"path": "api", "pathType": "ImplementationSpecific", "backend": service_backend(json!({"number": 80}))})), vec![
                format!("{p}.path: Invalid value: \"api\": must be an absolute path")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": service_backend(json!({"number": 80, "name": "http"}))})), vec![
                format!("{p}.backend: Invalid value: \"\": cannot set both port name & port number")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": service_backend(json!({}))})), vec![
                format!("{p}.backend: Required value: port name or number is required")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": service_backend(json!({"number": 70000}))})), vec![
                format!("{p}.backend.service.port.number: Invalid value: 70000: must be between 1 and 65535, inclusive")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": service_backend(json!({"name": "HTTP--"}))})), vec![
                format!("{p}.backend.service.port.name: Invalid value: \"HTTP--\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
                format!("{p}.backend.service.port.name: Invalid value: \"HTTP--\": must contain at least one letter (a-z)"),
                format!("{p}.backend.service.port.name: Invalid value: \"HTTP--\": must not contain consecutive hyphens"),
                format!("{p}.backend.service.port.name: Invalid value: \"HTTP--\": must not begin or end with a hyphen")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": {
                "service": {"name": "web", "port": {"number": 80}}, "resource": {"kind": "Bucket", "name": "b"}}})), vec![
                format!("{p}.backend: Invalid value: \"\": cannot set both resource and service backends")]),
            (path(json!({"path": "/", "pathType": "Prefix"})), vec![
                format!("{p}.backend: Invalid value: \"\": resource or service backend is required")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": {"resource": {"kind": "a/b"}}})), vec![
                format!("{p}.backend.resource.kind: Invalid value: \"a/b\": may not contain '/'"),
                format!("{p}.backend.resource.name: Required value: name is required")]),
            (path(json!({"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "1web", "port": {"number": 80}}}})), vec![
                format!("{p}.backend.service.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123')")]),
            (ingress_with(json!({"rules": [{"host": "a.example.com", "http": {"paths": []}}]})), vec![
                "spec.rules[0].http.paths: Required value".into()]),
            (ingress_with(json!({"rules": [{"host": "10.0.0.1"}]})), vec![
                "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address".into()]),
            (ingress_with(json!({"rules": [{"host": "a.*.example.com"}, {"host": "Example.com"}]})), vec![
                "spec.rules[0].host: Invalid value: \"a.*.example.com\": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com')".into(),
                "spec.rules[1].host: Invalid value: \"Example.com\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into()]),
            (ingress_with(json!({"defaultBackend": service_backend(json!({"number": 80})),
                "tls": [{"hosts": ["**.example.com"], "secretName": "Bad_Secret"}]})), vec![
                "spec.tls[0].hosts[0]: Invalid value: \"**.example.com\": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com')".into(),
                "spec.tls[0].secretName: Invalid value: \"Bad_Secret\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into()]),
            (ingress_with(json!({"defaultBackend": service_backend(json!({"number": 80})), "ingressClassName": "Skiff"})), vec![
                "spec.ingressClassName: Invalid value: \"Skiff\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into()]),
        ];
        for (ingress, expected) in cases {
            let causes = validate_object(ingresses, &ingress);
            assert_eq!(rendered(&causes), expected, "{ingress}");
        }
        let mut status =
            ingress_with(json!({"defaultBackend": service_backend(json!({"number": 80}))}));
        status["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.300"}, {"hostname": "10.0.0.1"}]}});
        assert_eq!(
            fields(&validate_object(ingresses, &status)),
            vec![
                "status.loadBalancer.ingress[0].ip",
                "status.loadBalancer.ingress[1].hostname"
            ]
        );
    }

    #[test]
    fn ingress_class_controller_is_a_domain_prefixed_path_and_immutable() {
        let classes = &crate::resource::INGRESS_CLASSES;
        let class = |spec: Value| json!({"metadata": {"name": "skiff"}, "spec": spec});
        let good = class(json!({"controller": "skiff.dev/ingress-controller"}));
        assert_eq!(validate_object(classes, &good), vec![]);
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (class(json!({})), vec!["spec.controller: Required value"]),
            (class(json!({"controller": "ingress-controller"})), vec![
                "spec.controller: Invalid value: \"ingress-controller\": must be a domain-prefixed path (such as \"acme.io/foo\")"]),
            (class(json!({"controller": "Skiff.dev/x"})), vec![
                "spec.controller: Invalid value: \"Skiff.dev\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"]),
            (class(json!({"controller": "skiff.dev/a b"})), vec![
                "spec.controller: Invalid value: \"a b\": must be a valid path (regex used for validation is '[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+')"]),
            (class(json!({"controller": "skiff.dev/x", "parameters": {"kind": "Params", "name": "p", "scope": "Namespace"}})), vec![
                "spec.parameters.namespace: Required value: `parameters.scope` is set to 'Namespace'"]),
            (class(json!({"controller": "skiff.dev/x", "parameters": {"kind": "Params", "name": "p", "scope": "Cluster", "namespace": "a"}})), vec![
                "spec.parameters.namespace: Forbidden: `parameters.scope` is set to 'Cluster'"]),
            (class(json!({"controller": "skiff.dev/x", "parameters": {"name": "p", "scope": "Global"}})), vec![
                "spec.parameters.kind: Required value: kind is required",
                "spec.parameters.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespace\""]),
        ];
        for (object, expected) in cases {
            assert_eq!(
                rendered(&validate_object(classes, &object)),
                expected,
                "{object}"
            );
        }
        let mut long = good.clone();
        long["spec"]["controller"] = json!(format!("skiff.dev/{}", "x".repeat(250)));
        assert_eq!(
            fields(&validate_object(classes, &long)),
            vec!["spec.controller"]
        );
        let changed = class(json!({"controller": "example.com/other"}));
        assert_eq!(
            rendered(&validate_update(classes, &good, &changed)),
            vec!["spec.controller: Invalid value: \"example.com/other\": field is immutable"]
        );
    }

    #[test]
    fn pod_rules() {
        let pod = &crate::resource::PODS;
        let bad = json!({"metadata": {"name": "Bad_Name", "namespace": "default"},
            "spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}});
        assert_eq!(
            fields(&validate_object(pod, &bad)),
            vec![
                "metadata.name",
                "spec.containers[0].image",
                "spec.containers[1].name"
            ]
        );
        let old = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a", "image": "x"}]}});
        let mut new_image = old.clone();
        new_image["spec"]["containers"][0]["image"] = json!("y");
        assert!(validate_update(pod, &old, &new_image).is_empty());
        let mut new_name = old.clone();
        new_name["spec"]["containers"][0]["name"] = json!("b");
        assert_eq!(fields(&validate_update(pod, &old, &new_name)), vec!["spec"]);
    }

    fn pod_with(resources: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a", "image": "x", "resources": resources}]}})
    }

    fn rendered(causes: &[FieldCause]) -> Vec<String> {
        causes.iter().map(FieldCause::render).collect()
    }

    #[test]
    fn container_resources_are_valid_quantities() {
        let pod = &crate::resource::PODS;
        let good = pod_with(json!({
            "requests": {"cpu": "1.5", "memory": "1Gi", "example.com/gpu": 1},
            "limits": {"cpu": 2, "memory": "1Gi", "hugepages-2Mi": "0", "example.com/gpu": "1"}}));
        assert_eq!(validate_object(pod, &good), vec![]);

        let cases = [
            (json!({"cpu": "abc"}), "spec.containers[0].resources.requests[cpu]: Invalid value: \"abc\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
            (json!({"memory": "12Zi"}), "spec.containers[0].resources.requests[memory]: Invalid value: \"12Zi\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
            (json!({"memory": "1mi"}), "spec.containers[0].resources.requests[memory]: Invalid value: \"1mi\": unable to parse quantity's suffix"),
            (json!({"cpu": "-1"}), "spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"),
            (json!({"cpu": -0.5}), "spec.containers[0].resources.requests[cpu]: Invalid value: \"-500m\": must be greater than or equal to 0"),
            (json!({"cpu": "1e30"}), "spec.containers[0].resources.requests[cpu]: Invalid value: \"1e30\": quantity is too large: its magnitude must be less than 1e29"),
            (json!({"cpu": 1e30}), "spec.containers[0].resources.requests[cpu]: Invalid value: 1e+30: quantity is too large: its magnitude must be less than 1e29"),
            (json!({"cpu": "1e17"}), "spec.containers[0].resources.requests[cpu]: Invalid value: \"100e15\": must be less than or equal to 9223372036854775807m"),
            (json!({"memory": "10E"}), "spec.containers[0].resources.requests[memory]: Invalid value: \"10E\": must be less than or equal to 9223372036854775807"),
            (json!({"memory": "8Ei"}), "spec.containers[0].resources.requests[memory]: Invalid value: \"8Ei\": quantity is too large: its magnitude must be less than 8Ei"),
            (json!({"memory": true}), "spec.containers[0].resources.requests[memory]: Invalid value: true: a quantity must be a string or a number"),
            (json!({"gpu": "1"}), "spec.containers[0].resources.requests[gpu]: Invalid value: \"gpu\": must be a standard resource for containers"),
            (json!({"example.com/gpu": "500m"}), "spec.containers[0].resources.requests[example.com/gpu]: Invalid value: \"500m\": must be an integer"),
        ];
        for (requests, expected) in cases {
            let causes = validate_object(pod, &pod_with(json!({"requests": requests.clone()})));
            assert_eq!(rendered(&causes), vec![expected.to_string()], "{requests}");
            assert!(causes.iter().all(|c| c.reason == "FieldValueInvalid"));
        }
        let limited = validate_object(pod, &pod_with(json!({"limits": {"memory": "-1Gi"}})));
        assert_eq!(
            fields(&limited),
            vec!["spec.containers[0].resources.limits[memory]"]
        );
    }

    #[test]
    fn requests_may_not_exceed_limits() {
        let pod = &crate::resource::PODS;
        let over = pod_with(json!({
            "requests": {"cpu": "1500m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1024Mi"}}));
        assert_eq!(
            rendered(&validate_object(pod, &over)),
            vec!["spec.containers[0].resources.requests: Invalid value: \"1500m\": must be less than or equal to cpu limit of 1"]
        );
        let mut init = over.clone();
        init["spec"]["initContainers"] = init["spec"]["containers"].clone();
        init["spec"]["initContainers"][0]["name"] = json!("setup");
        init["spec"]["containers"][0]["resources"] = json!({});
        assert_eq!(
            fields(&validate_object(pod, &init)),
            vec!["spec.initContainers[0].resources.requests"]
        );
    }

    #[test]
    fn template_resources_are_validated_for_deployments_and_replica_sets() {
        for resource in [
            &crate::resource::DEPLOYMENTS,
            &crate::resource::REPLICA_SETS,
        ] {
            let workload = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
                "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "x.wasm",
                        "resources": {"limits": {"cpu": "1e30"}}}]}}}});
            assert_eq!(
                fields(&validate_object(resource, &workload)),
                vec!["spec.template.spec.containers[0].resources.limits[cpu]"]
            );
        }
    }
}
