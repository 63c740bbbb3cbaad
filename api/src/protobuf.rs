//! Protobuf request bodies, as kubectl 1.32's typed generators send them
//! (`kubectl create namespace|configmap|secret generic …`): the `k8s\0` envelope around a
//! `runtime.Unknown`, and the object messages of the kinds those generators create,
//! decoded into the JSON form every other request takes. Field numbers are those of
//! Kubernetes' `generated.proto`; fields the server sets (uid, timestamps, status) are
//! skipped.

use serde_json::{json, Map, Value};

/// The four bytes before every Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

/// A protobuf body that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("the body is not a Kubernetes protobuf envelope (no k8s\\0 prefix)")]
    NoEnvelope,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("skiff decodes protobuf bodies of Namespace, ConfigMap and Secret only, not {0}; send JSON or YAML (kubectl apply -f / create -f)")]
    Unsupported(String),
}

/// One field of a message: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        if self.bytes.len() < n {
            return Err(ProtobufError::Malformed("truncated field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next field, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtobufError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| ProtobufError::Malformed("length too large"))?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            _ => return Err(ProtobufError::Malformed("unsupported wire type")),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn fields(bytes: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtobufError> {
    let mut reader = Reader { bytes };
    let mut out = Vec::new();
    while let Some(f) = reader.next()? {
        out.push(f);
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::Malformed("a string is not UTF-8"))
}

/// A `map<string, V>` entry: key = 1, value = 2.
fn map_entry(bytes: &[u8]) -> Result<(String, &[u8]), ProtobufError> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

/// `ObjectMeta`: the fields a client sets.
fn object_meta(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (number, field) in fields(bytes)? {
        let Field::Bytes(b) = field else { continue };
        match number {
            // gogo-protobuf writes unset optional strings as "": they mean unset.
            1..=3 if b.is_empty() => {}
            1 => {
                meta.insert("name".into(), json!(text(b)?));
            }
            2 => {
                meta.insert("generateName".into(), json!(text(b)?));
            }
            3 => {
                meta.insert("namespace".into(), json!(text(b)?));
            }
            11 => {
                let (k, v) = map_entry(b)?;
                labels.insert(k, json!(text(v)?));
            }
            12 => {
                let (k, v) = map_entry(b)?;
                annotations.insert(k, json!(text(v)?));
            }
            14 => finalizers.push(json!(text(b)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// Decodes a `k8s\0` protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoEnvelope)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (number, field) in fields(envelope)? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta)? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = json!({"apiVersion": api_version, "kind": kind});
    if let Some(spec) = review_spec(&api_version, &kind) {
        for (number, field) in fields(raw)? {
            match (number, field) {
                (1, Field::Bytes(b)) => object["metadata"] = object_meta(b)?,
                (2, Field::Bytes(b)) => object["spec"] = spec(b)?,
                _ => {}
            }
        }
        return Ok(object);
    }
    if api_version == "rbac.authorization.k8s.io/v1" {
        return rbac_object(object, &kind, raw);
    }
    let supported =
        api_version == "v1" && matches!(kind.as_str(), "Namespace" | "ConfigMap" | "Secret");
    if !supported {
        return Err(ProtobufError::Unsupported(format!("{api_version} {kind}")));
    }
    let mut data = Map::new();
    let mut binary = Map::new();
    let mut string_data = Map::new();
    for (number, field) in fields(raw)? {
        match (kind.as_str(), number, field) {
            (_, 1, Field::Bytes(b)) => object["metadata"] = object_meta(b)?,
            ("ConfigMap", 2, Field::Bytes(b)) => {
                let (k, v) = map_entry(b)?;
                data.insert(k, json!(text(v)?));
            }
            ("ConfigMap", 3, Field::Bytes(b)) => {
                let (k, v) = map_entry(b)?;
                binary.insert(k, json!(crate::object::base64_encode(v)));
            }
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                object["immutable"] = json!(v != 0)
            }
            ("Secret", 2, Field::Bytes(b)) => {
                let (k, v) = map_entry(b)?;
                data.insert(k, json!(crate::object::base64_encode(v)));
            }
            ("Secret", 3, Field::Bytes(b)) if !b.is_empty() => object["type"] = json!(text(b)?),
            ("Secret", 4, Field::Bytes(b)) => {
                let (k, v) = map_entry(b)?;
                string_data.insert(k, json!(text(v)?));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        object["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        object["binaryData"] = Value::Object(binary);
    }
    if !string_data.is_empty() {
        object["stringData"] = Value::Object(string_data);
    }
    Ok(object)
}

/// The spec decoder of the reviews kubectl sends as protobuf (`auth can-i`, `auth
/// whoami`), by group-version and kind.
type SpecDecoder = fn(&[u8]) -> Result<Value, ProtobufError>;

fn review_spec(api_version: &str, kind: &str) -> Option<SpecDecoder> {
    match (api_version, kind) {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => Some(access_review_spec),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => Some(rules_review_spec),
        ("authentication.k8s.io/v1", "SelfSubjectReview") => Some(|_| Ok(json!({}))),
        ("authentication.k8s.io/v1", "TokenRequest") => Some(token_request_spec),
        _ => None,
    }
}

/// Strings of a message by field number, named; empty strings mean unset.
fn named_strings(bytes: &[u8], names: &[(u64, &str)]) -> Result<Value, ProtobufError> {
    let mut object = Map::new();
    for (number, field) in fields(bytes)? {
        let Field::Bytes(b) = field else { continue };
        if let Some((_, name)) = names.iter().find(|(n, _)| *n == number) {
            if !b.is_empty() {
                object.insert(name.to_string(), json!(text(b)?));
            }
        }
    }
    Ok(Value::Object(object))
}

/// `SelfSubjectAccessReviewSpec`: resourceAttributes = 1, nonResourceAttributes = 2.
fn access_review_spec(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut spec = Map::new();
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                let names = [
                    (1, "namespace"),
                    (2, "verb"),
                    (3, "group"),
                    (4, "version"),
                    (5, "resource"),
                    (6, "subresource"),
                    (7, "name"),
                ];
                spec.insert("resourceAttributes".into(), named_strings(b, &names)?);
            }
            (2, Field::Bytes(b)) => {
                let names = [(1, "path"), (2, "verb")];
                spec.insert("nonResourceAttributes".into(), named_strings(b, &names)?);
            }
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

/// Roles and bindings as `kubectl create role|clusterrole|rolebinding|clusterrolebinding`
/// sends them. (A ClusterRole's `aggregationRule`, field 3, is not decoded: such roles
/// are written as YAML.)
fn rbac_object(mut object: Value, kind: &str, raw: &[u8]) -> Result<Value, ProtobufError> {
    let role = matches!(kind, "Role" | "ClusterRole");
    let binding = matches!(kind, "RoleBinding" | "ClusterRoleBinding");
    if !role && !binding {
        return Err(ProtobufError::Unsupported(format!(
            "rbac.authorization.k8s.io/v1 {kind}"
        )));
    }
    let mut rules = Vec::new();
    let mut subjects = Vec::new();
    for (number, field) in fields(raw)? {
        let Field::Bytes(b) = field else { continue };
        match number {
            1 => object["metadata"] = object_meta(b)?,
            2 if role => rules.push(policy_rule(b)?),
            3 if kind == "ClusterRole" => {
                return Err(ProtobufError::Unsupported(
                    "a ClusterRole with an aggregationRule".into(),
                ))
            }
            2 => subjects.push(named_strings(
                b,
                &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")],
            )?),
            3 => {
                object["roleRef"] = named_strings(b, &[(1, "apiGroup"), (2, "kind"), (3, "name")])?
            }
            _ => {}
        }
    }
    if role {
        object["rules"] = Value::Array(rules);
    } else {
        object["subjects"] = Value::Array(subjects);
        // An empty apiGroup is the core group: kubectl leaves it unset.
        if object["roleRef"].get("apiGroup").is_none() {
            object["roleRef"]["apiGroup"] = json!("");
        }
    }
    Ok(object)
}

/// `PolicyRule`: verbs = 1, apiGroups = 2, resources = 3, resourceNames = 4,
/// nonResourceURLs = 5, each a repeated string (an empty apiGroups entry is the core group).
fn policy_rule(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let names = [
        "verbs",
        "apiGroups",
        "resources",
        "resourceNames",
        "nonResourceURLs",
    ];
    let mut lists: Vec<Vec<Value>> = vec![Vec::new(); names.len()];
    for (number, field) in fields(bytes)? {
        let Field::Bytes(b) = field else { continue };
        let index = usize::try_from(number).ok().and_then(|n| n.checked_sub(1));
        if let Some(list) = index.and_then(|i| lists.get_mut(i)) {
            list.push(json!(text(b)?));
        }
    }
    let mut rule = Map::new();
    for (name, list) in names.iter().zip(lists) {
        if *name == "verbs" || !list.is_empty() {
            rule.insert(name.to_string(), Value::Array(list));
        }
    }
    Ok(Value::Object(rule))
}

/// `TokenRequestSpec`: audiences = 1 (repeated), expirationSeconds = 4, boundObjectRef =
/// 3 (kind 1, apiVersion 2, name 3, uid 4), as `kubectl create token` sends them.
fn token_request_spec(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut spec = Map::new();
    let mut audiences = Vec::new();
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(b)) => audiences.push(json!(text(b)?)),
            (4, Field::Varint(v)) => {
                spec.insert("expirationSeconds".into(), json!(v as i64));
            }
            (3, Field::Bytes(b)) => {
                let names = [(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")];
                spec.insert("boundObjectRef".into(), named_strings(b, &names)?);
            }
            _ => {}
        }
    }
    spec.insert("audiences".into(), Value::Array(audiences));
    Ok(Value::Object(spec))
}

/// `SelfSubjectRulesReviewSpec`: namespace = 1.
fn rules_review_spec(bytes: &[u8]) -> Result<Value, ProtobufError> {
    named_strings(bytes, &[(1, "namespace")])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(number << 3 | 2, &mut out);
        varint(value.len() as u64, &mut out);
        out.extend_from_slice(value);
        out
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [bytes_field(1, k.as_bytes()), bytes_field(2, v)].concat()
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [
            bytes_field(1, api_version.as_bytes()),
            bytes_field(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, raw),
        ]
        .concat()
    }

    #[test]
    fn namespace_and_secret_bodies_decode() {
        let meta = [
            bytes_field(1, b"foo"),
            bytes_field(11, &entry("team", b"a")),
        ]
        .concat();
        let ns = decode(&envelope("v1", "Namespace", &bytes_field(1, &meta))).unwrap();
        assert_eq!(
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo", "labels": {"team": "a"}}})
        );
        let raw = [
            bytes_field(1, &bytes_field(1, b"creds")),
            bytes_field(2, &entry("password", b"hunter2")),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let secret = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
        assert_eq!(secret["type"], "Opaque");
    }

    #[test]
    fn access_reviews_decode_as_kubectl_auth_can_i_sends_them() {
        let attributes = [
            bytes_field(1, b"team-a"),
            bytes_field(2, b"list"),
            bytes_field(3, b""),
            bytes_field(5, b"pods"),
        ]
        .concat();
        let raw = [
            bytes_field(1, b""),
            bytes_field(2, &bytes_field(1, &attributes)),
        ]
        .concat();
        let review = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &raw,
        ))
        .unwrap();
        assert_eq!(
            review["spec"],
            json!({"resourceAttributes": {"namespace": "team-a", "verb": "list", "resource": "pods"}})
        );
        let path = [bytes_field(1, b"/metrics"), bytes_field(2, b"get")].concat();
        let raw = bytes_field(2, &bytes_field(2, &path));
        let review = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &raw,
        ))
        .unwrap();
        assert_eq!(
            review["spec"]["nonResourceAttributes"],
            json!({"path": "/metrics", "verb": "get"})
        );
        let rules = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectRulesReview",
            &bytes_field(2, &bytes_field(1, b"a")),
        ))
        .unwrap();
        assert_eq!(rules["spec"], json!({"namespace": "a"}));
        let whoami = decode(&envelope(
            "authentication.k8s.io/v1",
            "SelfSubjectReview",
            b"",
        ))
        .unwrap();
        assert_eq!(whoami["kind"], "SelfSubjectReview");
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert_eq!(decode(b"{}"), Err(ProtobufError::NoEnvelope));
        assert!(matches!(
            decode(&envelope("apps/v1", "Deployment", b"")),
            Err(ProtobufError::Unsupported(_))
        ));
        for cut in 0..20 {
            let body = envelope("v1", "ConfigMap", &bytes_field(2, &entry("k", b"value")));
            let _ = decode(&body[..body.len().saturating_sub(cut)]);
        }
        assert!(decode(&[b'k', b'8', b's', 0, 0xff, 0xff, 0xff]).is_err());
    }
}
