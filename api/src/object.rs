//! Objects on the wire: decoding request bodies (JSON or YAML) into the typed
//! `k8s-openapi` structs, which checks field types and drops unknown fields exactly as
//! the Kubernetes API server prunes them, and reading metadata from JSON objects.

use crate::resource::ResourceInfo;
use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
    coordination::v1 as coordination, core::v1 as core, networking::v1 as networking,
    rbac::v1 as rbac,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A body that is not a well-formed object of the expected kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the request body is not valid JSON or YAML: {0}")]
    Syntax(String),
    #[error("the request body must be an object")]
    NotAnObject,
    #[error("the API version in the data ({found}) does not match the expected API version ({expected})")]
    WrongApiVersion { found: String, expected: String },
    #[error("the kind in the data ({found}) does not match the expected kind ({expected})")]
    WrongKind { found: String, expected: String },
    #[error("the object does not match the schema of {kind}: {reason}")]
    Schema { kind: String, reason: String },
}

/// Parses a request body as JSON, or YAML when it is not JSON (`kubectl` and the Python
/// client send JSON; people with curl send either).
pub fn parse_body(body: &[u8]) -> Result<Value, DecodeError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_error) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| DecodeError::Syntax(json_error.to_string()))?;
            // A body that starts like JSON is JSON; report the JSON error, not a YAML one.
            if text.trim_start().starts_with(['{', '[']) {
                return Err(DecodeError::Syntax(json_error.to_string()));
            }
            check_yaml_flow_depth(text)?;
            serde_yaml::from_str::<Value>(text).map_err(|e| DecodeError::Syntax(e.to_string()))
        }
    }
}

/// serde_yaml refuses nesting deeper than 128, but only after libyaml has scanned the
/// whole nest, in time quadratic in its depth: `a: [[[[…` of a 3 MiB body would pin a core
/// for hours. This counts flow brackets outside quotes and comments and refuses such a
/// body before the parser sees it.
const MAX_YAML_FLOW_DEPTH: usize = 128;

fn check_yaml_flow_depth(text: &str) -> Result<(), DecodeError> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut previous = '\n';
    for c in text.chars() {
        if comment {
            comment = c != '\n';
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '"' | '\'' => quote = Some(c),
                '#' if previous.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_YAML_FLOW_DEPTH {
                        return Err(DecodeError::Syntax(format!(
                            "the YAML body nests deeper than {MAX_YAML_FLOW_DEPTH} levels"
                        )));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    Ok(())
}

/// Fills in `apiVersion` and `kind` from the URL when the body leaves them out, and
/// rejects a body whose kind does not belong at this URL.
pub fn check_type_meta(
    object: &mut Value,
    api_version: &str,
    kind: &str,
) -> Result<(), DecodeError> {
    let map = object.as_object_mut().ok_or(DecodeError::NotAnObject)?;
    for (field, expected) in [("apiVersion", api_version), ("kind", kind)] {
        match map.get(field) {
            None | Some(Value::Null) => {
                map.insert(field.to_string(), Value::from(expected));
            }
            Some(Value::String(s)) if s.is_empty() => {
                map.insert(field.to_string(), Value::from(expected));
            }
            Some(Value::String(s)) if s == expected => {}
            Some(other) => {
                let found = other
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| other.to_string());
                return Err(if field == "kind" {
                    DecodeError::WrongKind {
                        found,
                        expected: expected.to_string(),
                    }
                } else {
                    DecodeError::WrongApiVersion {
                        found,
                        expected: expected.to_string(),
                    }
                });
            }
        }
    }
    Ok(())
}

fn round_trip<T: DeserializeOwned + Serialize>(
    kind: &str,
    object: Value,
) -> Result<Value, DecodeError> {
    let typed: T = serde_json::from_value(object).map_err(|e| DecodeError::Schema {
        kind: kind.to_string(),
        reason: e.to_string(),
    })?;
    serde_json::to_value(&typed).map_err(|e| DecodeError::Schema {
        kind: kind.to_string(),
        reason: e.to_string(),
    })
}

/// Decodes an object of `resource`'s kind through its typed struct: wrong field types are
/// an error, unknown fields are dropped, and the result is the canonical JSON form.
pub fn normalize(resource: &ResourceInfo, object: Value) -> Result<Value, DecodeError> {
    normalize_kind(resource.kind, object)
}

/// Keys whose values are maps of resource quantities, or (`sizeLimit`) one quantity.
const QUANTITY_MAPS: &[&str] = &[
    "requests",
    "limits",
    "capacity",
    "allocatable",
    "overhead",
    "hard",
    "used",
];

/// Turns quantities written as JSON numbers (`cpu: 0.5`, `memory: 1e9` in YAML) into
/// strings, as Kubernetes' `Quantity` unmarshalling accepts both; k8s-openapi's takes only
/// strings, so without this a common manifest would be refused with 400. Validation then
/// judges the value (a number out of range is a 422 with its field, not a decode error).
fn stringify_number_quantities(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::Object(quantities) if QUANTITY_MAPS.contains(&key.as_str()) => {
                        for quantity in quantities.values_mut() {
                            if let Value::Number(n) = quantity {
                                *quantity = Value::String(n.to_string());
                            }
                        }
                    }
                    Value::Number(n) if key == "sizeLimit" => {
                        *child = Value::String(n.to_string());
                    }
                    _ => stringify_number_quantities(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(stringify_number_quantities),
        _ => {}
    }
}

/// As [`normalize`], for any kind skiff decodes, including `Binding` and `Scale`.
pub fn normalize_kind(kind: &str, mut object: Value) -> Result<Value, DecodeError> {
    if matches!(kind, "Pod" | "Node" | "Deployment" | "ReplicaSet") {
        stringify_number_quantities(&mut object);
    }
    match kind {
        "Namespace" => round_trip::<core::Namespace>(kind, object),
        "Pod" => round_trip::<core::Pod>(kind, object),
        "Node" => round_trip::<core::Node>(kind, object),
        "Service" => round_trip::<core::Service>(kind, object),
        "Endpoints" => round_trip::<core::Endpoints>(kind, object),
        "EndpointSlice" => {
            round_trip::<k8s_openapi::api::discovery::v1::EndpointSlice>(kind, object)
        }
        "Event" => round_trip::<core::Event>(kind, object),
        "ConfigMap" => round_trip::<core::ConfigMap>(kind, object),
        "Secret" => round_trip::<core::Secret>(kind, object),
        "Binding" => round_trip::<core::Binding>(kind, object),
        "Deployment" => round_trip::<apps::Deployment>(kind, object),
        "ReplicaSet" => round_trip::<apps::ReplicaSet>(kind, object),
        "Lease" => round_trip::<coordination::Lease>(kind, object),
        "RuntimeClass" => round_trip::<k8s_openapi::api::node::v1::RuntimeClass>(kind, object),
        "Ingress" => round_trip::<networking::Ingress>(kind, object),
        "IngressClass" => round_trip::<networking::IngressClass>(kind, object),
        "Scale" => round_trip::<k8s_openapi::api::autoscaling::v1::Scale>(kind, object),
        "ServiceAccount" => round_trip::<core::ServiceAccount>(kind, object),
        "CertificateSigningRequest" => round_trip::<
            k8s_openapi::api::certificates::v1::CertificateSigningRequest,
        >(kind, object),
        "Role" => round_trip::<rbac::Role>(kind, object),
        "ClusterRole" => round_trip::<rbac::ClusterRole>(kind, object),
        "RoleBinding" => round_trip::<rbac::RoleBinding>(kind, object),
        "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(kind, object),
        "SelfSubjectAccessReview" => round_trip::<authz::SelfSubjectAccessReview>(kind, object),
        "SelfSubjectRulesReview" => round_trip::<authz::SelfSubjectRulesReview>(kind, object),
        "SubjectAccessReview" => round_trip::<authz::SubjectAccessReview>(kind, object),
        "LocalSubjectAccessReview" => round_trip::<authz::LocalSubjectAccessReview>(kind, object),
        "SelfSubjectReview" => round_trip::<authn::SelfSubjectReview>(kind, object),
        "TokenReview" => round_trip::<authn::TokenReview>(kind, object),
        "TokenRequest" => round_trip::<authn::TokenRequest>(kind, object),
        "DeleteOptions" => round_trip::<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions,
        >(kind, object),
        other => Err(DecodeError::Schema {
            kind: other.to_string(),
            reason: "skiff does not serve this kind".into(),
        }),
    }
}

/// Reads a string field of `metadata`.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// Mutable access to `metadata`, created when missing.
pub fn metadata_mut(object: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(Default::default());
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_pruned_and_wrong_types_rejected() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "bogus": 1, "spec": {"containers": [{"name": "c", "image": "i", "nope": true}]}});
        let out = normalize_kind("Pod", pod).unwrap();
        assert!(out.get("bogus").is_none());
        assert!(out["spec"]["containers"][0].get("nope").is_none());
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 5}});
        assert!(matches!(
            normalize_kind("Pod", bad),
            Err(DecodeError::Schema { .. })
        ));
    }

    #[test]
    fn quantities_written_as_numbers_decode_as_strings() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"cpu": 0.5, "memory": 1e30}, "requests": {"cpu": 1}}}],
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": 1024}}]}});
        let out = normalize_kind("Pod", pod).unwrap();
        let resources = &out["spec"]["containers"][0]["resources"];
        assert_eq!(resources["limits"]["cpu"], "0.5");
        // serde_json prints the float as `1e+30`, which parses as a quantity (and is then
        // out of range: a 422 from validation, not a decode error).
        assert_eq!(resources["limits"]["memory"], "1e+30");
        assert!(matches!(
            crate::quantity::Quantity::parse("1e+30"),
            Err(crate::quantity::QuantityError::OutOfRange { .. })
        ));
        assert_eq!(resources["requests"]["cpu"], "1");
        assert_eq!(out["spec"]["volumes"][0]["emptyDir"]["sizeLimit"], "1024");
    }

    #[test]
    fn type_meta_comes_from_the_url_when_missing() {
        let mut o = json!({"metadata": {"name": "x"}});
        check_type_meta(&mut o, "v1", "Namespace").unwrap();
        assert_eq!(o["kind"], "Namespace");
        let mut wrong = json!({"kind": "Pod"});
        assert!(matches!(
            check_type_meta(&mut wrong, "v1", "Namespace"),
            Err(DecodeError::WrongKind { .. })
        ));
    }

    #[test]
    fn yaml_bodies_parse() {
        let v = parse_body(b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n").unwrap();
        assert_eq!(v["metadata"]["name"], "a");
        assert!(parse_body(b"{\"a\":").is_err());
    }

    #[test]
    fn deeply_nested_yaml_flow_sequences_are_refused_quickly() {
        let started = std::time::Instant::now();
        let body = format!("metadata: {}", "[".repeat(1_000_000));
        assert!(matches!(
            parse_body(body.as_bytes()),
            Err(DecodeError::Syntax(_))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Brackets in quotes, comments and shallow flow collections are ordinary YAML.
        let fine = format!(
            "data:\n  a: '{0}'\n  b: \"{0}\\\"\"\n  # {0}\n  c: [[1], {{d: [2]}}]\n",
            "[".repeat(500)
        );
        let v = parse_body(fine.as_bytes()).unwrap();
        assert_eq!(v["data"]["c"][1]["d"][0], 2);
    }
}

/// Standard base64 (RFC 4648, padded), as Secret `data` and ConfigMap `binaryData` hold.
pub fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Decodes standard base64; `None` if the text is not base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Some(out)
}

#[cfg(test)]
mod base64_tests {
    use super::*;

    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert!(base64_decode("!!").is_none());
    }
}
