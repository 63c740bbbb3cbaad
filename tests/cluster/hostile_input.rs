//! A bounded, seeded hostile-input sweep of every endpoint of the real API server: every
//! served resource and verb gets mutated bodies, URLs and query strings, and every answer
//! must be a well-formed 4xx `Status` that leaves the store untouched, with no panic.
//!
//! The seed comes from `SKIFF_HOSTILE_SEED` (default [`DEFAULT_SEED`]) and is printed with
//! every failure, so a failing run can be replayed exactly.

use crate::harness::InProcess;
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use skiff_api::resource::{ResourceInfo, RESOURCES};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_SEED: u64 = 0x5EED_F0220;
/// The sweep's request budget per served resource (about 230 are used each): the
/// generators stay under it, and the bound grows only with what the server serves.
const MAX_REQUESTS_PER_RESOURCE: usize = 250;
fn max_requests() -> usize {
    MAX_REQUESTS_PER_RESOURCE * RESOURCES.len()
}

/// An answer slower than this is a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const NS: &str = "default";

/// One hostile request.
struct Probe {
    label: String,
    method: reqwest::Method,
    /// Path and query, percent-encoded as it goes on the wire.
    path: String,
    content_type: Option<String>,
    accept: Option<String>,
    body: Vec<u8>,
    /// The stored object (`GET` path) a successful request may have changed.
    touches: Option<String>,
}

impl Probe {
    fn new(label: impl Into<String>, method: reqwest::Method, path: impl Into<String>) -> Probe {
        Probe {
            label: label.into(),
            method,
            path: path.into(),
            content_type: None,
            accept: None,
            body: Vec::new(),
            touches: None,
        }
    }

    fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Probe {
        self.content_type = Some(content_type.to_string());
        self.body = body.into();
        self
    }

    fn touching(mut self, item: &str) -> Probe {
        self.touches = Some(item.to_string());
        self
    }
}

/// Panics raised on the test's own thread, where the in-process server's tasks run
/// (`#[tokio::test]` is a current-thread runtime).
struct PanicLog {
    messages: Arc<Mutex<Vec<String>>>,
}

impl PanicLog {
    fn install() -> PanicLog {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let ours = std::thread::current().id();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == ours {
                if let Ok(mut m) = sink.lock() {
                    m.push(info.to_string());
                }
            }
            previous(info);
        }));
        PanicLog { messages }
    }

    fn count(&self) -> usize {
        self.messages.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn since(&self, from: usize) -> Vec<String> {
        self.messages
            .lock()
            .map(|m| m.iter().skip(from).cloned().collect())
            .unwrap_or_default()
    }
}

struct Sweep {
    http: reqwest::Client,
    server: String,
    seed: u64,
    rng: StdRng,
    sent: usize,
    revision: String,
    failures: Vec<String>,
    /// The stored bytes of each setup object, as the last request that succeeded on it
    /// left them: a rejected request must never change them.
    baseline: BTreeMap<String, Vec<u8>>,
    /// Accepted requests that changed a setup object, for the summary.
    changed_by: Vec<String>,
    panics: PanicLog,
    dead: bool,
    /// `SKIFF_HOSTILE_TRACE=1` prints every probe before it is sent, to find the one
    /// that kills the process.
    trace: bool,
}

impl Sweep {
    async fn revision(&self) -> Result<String> {
        let list: Value = self
            .http
            .get(format!("{}/api/v1/namespaces", self.server))
            .send()
            .await?
            .json()
            .await?;
        Ok(list["metadata"]["resourceVersion"]
            .as_str()
            .context("list has a resourceVersion")?
            .to_string())
    }

    fn fail(&mut self, probe: &Probe, what: String) {
        let path: String = probe.path.chars().take(160).collect();
        let failure = format!("[{}] {} {path}: {what}", probe.label, probe.method);
        if self.trace {
            eprintln!("hostile FAILURE {failure}");
        }
        self.failures.push(failure);
    }

    /// Sends one probe and judges the answer; failures are collected, not returned.
    async fn send(&mut self, probe: Probe) -> Result<()> {
        if self.dead || self.sent >= max_requests() {
            return Ok(());
        }
        self.sent += 1;
        if self.trace {
            eprintln!(
                "hostile probe {}: [{}] {} {:.160}",
                self.sent, probe.label, probe.method, probe.path
            );
        }
        let panics_before = self.panics.count();
        let mut request = self
            .http
            .request(
                probe.method.clone(),
                format!("{}{}", self.server, probe.path),
            )
            .timeout(REQUEST_TIMEOUT)
            .body(probe.body.clone());
        if let Some(ct) = &probe.content_type {
            request = request.header("Content-Type", ct);
        }
        if let Some(accept) = &probe.accept {
            request = request.header("Accept", accept);
        }
        let sent_at = Instant::now();
        let outcome = request.send().await;
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                self.fail(&probe, format!("no answer (panic or hang?): {e}"));
                self.check_alive(&probe).await;
                self.check_panics(&probe, panics_before);
                return Ok(());
            }
        };
        let code = response.status().as_u16();
        let streaming = probe.path.contains("watch=") && (200..300).contains(&code);
        let body = if streaming || probe.method == reqwest::Method::HEAD {
            // A watch that was accepted streams until its timeout; the status line is the
            // answer. Give the server's tasks a turn so a panic in the stream shows here.
            drop(response);
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            Vec::new()
        } else {
            match tokio::time::timeout(REQUEST_TIMEOUT, response.bytes()).await {
                Ok(Ok(b)) => b.to_vec(),
                Ok(Err(e)) => {
                    self.fail(&probe, format!("HTTP {code} body broke off: {e}"));
                    Vec::new()
                }
                Err(_) => {
                    self.fail(&probe, format!("HTTP {code} body did not end"));
                    Vec::new()
                }
            }
        };
        self.check_panics(&probe, panics_before);
        let success = (200..300).contains(&code);
        if self.trace {
            eprintln!("hostile answer {code} after {:?}", sent_at.elapsed());
        }
        if success {
            if let Some(item) = &probe.touches {
                self.rebaseline(&probe, item).await?;
            }
        } else {
            self.check_status(&probe, code, &body);
        }
        match self.revision().await {
            Ok(now) => {
                if !success && now != self.revision {
                    let was = self.revision.clone();
                    self.fail(
                        &probe,
                        format!("rejected with {code} but the revision moved {was} -> {now}"),
                    );
                }
                self.revision = now;
            }
            Err(e) => {
                self.fail(&probe, format!("the server stopped answering lists: {e}"));
                self.check_alive(&probe).await;
            }
        }
        Ok(())
    }

    /// Re-reads a setup object after an accepted request; what it holds now is what
    /// later rejected requests must leave alone.
    async fn rebaseline(&mut self, probe: &Probe, item: &str) -> Result<()> {
        let now = self
            .http
            .get(format!("{}{item}", self.server))
            .send()
            .await?
            .bytes()
            .await?
            .to_vec();
        if self.baseline.get(item) != Some(&now) {
            let change = format!("[{}] {} {:.120}", probe.label, probe.method, probe.path);
            if self.trace {
                eprintln!("hostile CHANGED {change}");
            }
            self.changed_by.push(change);
            self.baseline.insert(item.to_string(), now);
        }
        Ok(())
    }

    fn check_status(&mut self, probe: &Probe, code: u16, body: &[u8]) {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if code >= 500 && code != 503 {
            self.fail(probe, format!("server error {code}: {snippet}"));
            return;
        }
        if !(400..600).contains(&code) {
            self.fail(probe, format!("unexpected HTTP {code}: {snippet}"));
            return;
        }
        let Ok(status) = serde_json::from_slice::<Value>(body) else {
            self.fail(probe, format!("HTTP {code} body is not JSON: {snippet}"));
            return;
        };
        let well_formed = status["kind"] == "Status"
            && status["apiVersion"] == "v1"
            && status["status"] == "Failure"
            && status["code"] == code
            && status["reason"].as_str().is_some_and(|r| !r.is_empty())
            && status["message"].is_string();
        if !well_formed {
            self.fail(probe, format!("HTTP {code} is not a Status: {snippet}"));
        }
    }

    fn check_panics(&mut self, probe: &Probe, before: usize) {
        for message in self.panics.since(before) {
            self.fail(probe, format!("server panicked: {message}"));
        }
    }

    async fn check_alive(&mut self, probe: &Probe) {
        let ready = self
            .http
            .get(format!("{}/readyz", self.server))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ready {
            self.fail(probe, "the server no longer answers /readyz".into());
            self.dead = true;
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.gen_range(0..items.len())]
    }
}

/// A valid object of each served kind, named `hostile-<singular>`.
fn valid_object(resource: &ResourceInfo) -> Value {
    let name = format!("hostile-{}", resource.singular);
    let pod_spec = json!({"containers": [{"name": "c", "image": "hello.wasm",
        "ports": [{"containerPort": 8080}], "env": [{"name": "A", "value": "1"}],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]});
    let template = json!({"metadata": {"labels": {"app": "hostile"}}, "spec": pod_spec});
    let mut object = match resource.kind {
        "Pod" => json!({"spec": pod_spec}),
        "Node" => json!({"spec": {"unschedulable": true}}),
        "Service" => json!({"spec": {"selector": {"app": "hostile"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        "Endpoints" => json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}],
            "ports": [{"port": 80}]}]}),
        "Event" => json!({"involvedObject": {"kind": "Pod", "name": "p", "namespace": NS},
            "reason": "Hostile", "message": "m", "type": "Normal", "count": 1}),
        "ConfigMap" => json!({"data": {"k": "v"}}),
        "Secret" => json!({"type": "Opaque", "data": {"k": "dg=="}}),
        "Deployment" | "ReplicaSet" => json!({"spec": {"replicas": 0,
            "selector": {"matchLabels": {"app": "hostile"}}, "template": template}}),
        "Lease" => json!({"spec": {"holderIdentity": "h", "leaseDurationSeconds": 10}}),
        "RuntimeClass" => json!({"handler": "hostile"}),
        "Ingress" => json!({"spec": {"rules": [{"host": "hostile.example.com",
            "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "hostile", "port": {"number": 80}}}}]}}]}}),
        "IngressClass" => json!({"spec": {"controller": "skiff.dev/hostile"}}),
        "Role" | "ClusterRole" => {
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
        }
        "RoleBinding" | "ClusterRoleBinding" => json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "hostile"}]}),
        // A signer nobody runs: the request stays pending and unchanged.
        "CertificateSigningRequest" => json!({"spec": {
            "request": base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, hostile_csr()),
            "signerName": "example.com/hostile", "usages": ["client auth"]}}),
        _ => json!({}),
    };
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    object["metadata"] = json!({"name": name, "labels": {"app": "hostile", "tier": "x"},
        "annotations": {"note": "setup"}});
    object
}

/// A certificate request (PEM) for the CSR of the sweep.
fn hostile_csr() -> String {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hostile");
    params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("a certificate request")
}

fn collection_path(resource: &ResourceInfo) -> String {
    if resource.namespaced {
        format!(
            "{}/namespaces/{NS}/{}",
            resource.group_version_path(),
            resource.plural
        )
    } else {
        format!("{}/{}", resource.group_version_path(), resource.plural)
    }
}

fn item_path(resource: &ResourceInfo) -> String {
    format!(
        "{}/hostile-{}",
        collection_path(resource),
        resource.singular
    )
}

/// JSON pointers of every field of `value` (the root excluded).
fn pointers(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(v, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{prefix}/{i}");
                out.push(p.clone());
                pointers(v, &p, out);
            }
        }
        _ => {}
    }
}

/// Values of a JSON type other than `original`'s.
fn wrong_types(original: &Value, with_null: bool) -> Vec<Value> {
    let candidates = [
        json!("hostile"),
        json!(7),
        json!(-0.0),
        json!(1.5e300),
        json!(u64::MAX),
        json!(true),
        json!(["x", 1]),
        json!({"x": {"y": 1}}),
        Value::Null,
    ];
    let kind = |v: &Value| std::mem::discriminant(v);
    candidates
        .into_iter()
        .filter(|c| kind(c) != kind(original))
        .filter(|c| with_null || !c.is_null())
        .collect()
}

/// `count` copies of `object`, each with one field given a value of the wrong type.
fn type_mutations(
    rng: &mut StdRng,
    object: &Value,
    count: usize,
    with_null: bool,
) -> Vec<(String, Value)> {
    let mut paths = Vec::new();
    pointers(object, "", &mut paths);
    let mut out = Vec::new();
    for _ in 0..count {
        let path = &paths[rng.gen_range(0..paths.len())];
        let Some(original) = object.pointer(path) else {
            continue;
        };
        let choices = wrong_types(original, with_null);
        let replacement = choices[rng.gen_range(0..choices.len())].clone();
        let mut mutated = object.clone();
        if let Some(slot) = mutated.pointer_mut(path) {
            *slot = replacement.clone();
        }
        out.push((format!("{path} = {replacement}"), mutated));
    }
    out
}

fn deep_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn deep_objects(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

fn billion_laughs() -> String {
    let mut yaml = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(",");
        yaml.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    yaml.push_str("metadata: {name: laughs, labels: *i}\n");
    yaml
}

fn deep_yaml_block(depth: usize) -> String {
    let mut yaml = String::from("metadata:\n  name: deep\n  annotations:\n");
    for level in 0..depth {
        yaml.push_str(&" ".repeat(4 + level));
        yaml.push_str("a:\n");
    }
    yaml
}

/// Bodies that are hostile whatever the endpoint: syntax, nesting, sizes and encodings.
fn hostile_bodies(rng: &mut StdRng, resource: &ResourceInfo) -> Vec<(String, String, Vec<u8>)> {
    let json_ct = "application/json".to_string();
    let yaml_ct = "application/yaml".to_string();
    let kind_meta = format!(
        "\"apiVersion\":\"{}\",\"kind\":\"{}\"",
        resource.api_version(),
        resource.kind
    );
    let name = format!("hostile-{}", resource.singular);
    let in_object = |inner: &str| -> Vec<u8> {
        format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"annotations\":{{\"a\":{inner}}}}}}}")
            .into_bytes()
    };
    let mut random = vec![0u8; rng.gen_range(1..512)];
    rng.fill(&mut random[..]);
    let mut bodies: Vec<(String, String, Vec<u8>)> = vec![
        ("empty".into(), json_ct.clone(), Vec::new()),
        ("whitespace".into(), json_ct.clone(), b" \n\t ".to_vec()),
        ("null".into(), json_ct.clone(), b"null".to_vec()),
        ("a number".into(), json_ct.clone(), b"-0".to_vec()),
        ("a string".into(), json_ct.clone(), b"\"Pod\"".to_vec()),
        ("an array".into(), json_ct.clone(), b"[{}]".to_vec()),
        ("10000 nested arrays".into(), json_ct.clone(), deep_arrays(10_000).into_bytes()),
        ("10000 nested objects".into(), json_ct.clone(), deep_objects(10_000).into_bytes()),
        ("nested arrays in a field".into(), json_ct.clone(), in_object(&deep_arrays(10_000))),
        ("100 nested objects in a field".into(), json_ct.clone(), in_object(&deep_objects(100))),
        (
            "10000 nested yaml flow sequences".into(),
            yaml_ct.clone(),
            format!("metadata: {}", deep_arrays(10_000)).into_bytes(),
        ),
        ("1500 nested yaml blocks".into(), yaml_ct.clone(), deep_yaml_block(1_500).into_bytes()),
        ("billion laughs".into(), yaml_ct.clone(), billion_laughs().into_bytes()),
        (
            "yaml anchors, tags and merge keys".into(),
            yaml_ct.clone(),
            b"base: &b {name: x}\nmetadata:\n  <<: *b\n  labels: !!binary aGk=\n  annotations: !custom {a: b}\n".to_vec(),
        ),
        ("two yaml documents".into(), yaml_ct.clone(), b"metadata: {name: a}\n---\nmetadata: {name: b}\n".to_vec()),
        ("yaml non-string keys".into(), yaml_ct.clone(), b"? [a, b]\n: c\n1: 2\nmetadata: {name: k}\n".to_vec()),
        ("yaml infinities".into(), yaml_ct.clone(), b"metadata: {name: .inf, generation: .nan}\nspec: {replicas: -.inf}\n".to_vec()),
        (
            "number 1e400".into(),
            json_ct.clone(),
            format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"generation\":1e400}}}}").into_bytes(),
        ),
        (
            "number 2^64".into(),
            json_ct.clone(),
            format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"generation\":18446744073709551616}}}}").into_bytes(),
        ),
        (
            "negative zero and huge counts".into(),
            json_ct.clone(),
            format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"generation\":-0,\"deletionGracePeriodSeconds\":-9223372036854775808}}}}").into_bytes(),
        ),
        (
            "invalid utf-8".into(),
            json_ct.clone(),
            [&format!("{{{kind_meta},\"metadata\":{{\"name\":\"")
                .into_bytes()[..], b"\xff\xfe\xc3", b"\"}}"]
            .concat(),
        ),
        (
            "raw NUL bytes".into(),
            json_ct.clone(),
            format!("{{{kind_meta},\"metadata\":{{\"name\":\"a\0b\"}}}}").into_bytes(),
        ),
        ("escaped NUL".into(), json_ct.clone(), in_object("\"a\\u0000b\"")),
        ("lone surrogate".into(), json_ct.clone(), in_object("\"\\ud800\"")),
        (
            "duplicate keys".into(),
            json_ct.clone(),
            format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"name\":\"other\"}},\"metadata\":{{\"name\":\"{name}\"}}}}").into_bytes(),
        ),
        ("byte order mark".into(), json_ct.clone(), [&b"\xef\xbb\xbf"[..], &in_object("\"b\"")].concat()),
        ("a 2 MiB string".into(), json_ct.clone(), in_object(&format!("\"{}\"", "x".repeat(2 << 20)))),
        (
            "a 1 MiB key".into(),
            json_ct.clone(),
            format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"labels\":{{\"{}\":\"v\"}}}}}}", "k".repeat(1 << 20)).into_bytes(),
        ),
        (
            "5000 labels".into(),
            json_ct.clone(),
            {
                let labels: Vec<String> = (0..5_000).map(|i| format!("\"l{i}\":\"v\"")).collect();
                format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\",\"labels\":{{{}}}}}}}", labels.join(",")).into_bytes()
            },
        ),
        (
            "3000 containers".into(),
            json_ct.clone(),
            {
                let containers = vec!["{\"name\":\"c\",\"image\":\"i\"}"; 3_000].join(",");
                format!("{{{kind_meta},\"metadata\":{{\"name\":\"{name}\"}},\"spec\":{{\"containers\":[{containers}],\"template\":{{\"spec\":{{\"containers\":[{containers}]}}}}}}}}").into_bytes()
            },
        ),
        ("random bytes".into(), json_ct.clone(), random.clone()),
        ("random bytes as yaml".into(), yaml_ct.clone(), random),
        (
            "protobuf of random bytes".into(),
            "application/vnd.kubernetes.protobuf".into(),
            random_protobuf(rng, resource),
        ),
    ];
    // A Content-Type skiff must refuse or read as JSON whatever its parameters.
    bodies.push((
        "odd content-type parameters".into(),
        "application/json; charset=\"\\\"\"; ;=; q".into(),
        in_object("1"),
    ));
    bodies
}

fn protobuf_field(number: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let varint = |mut v: u64, out: &mut Vec<u8>| loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    varint((number << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A `k8s\0` envelope naming `resource`'s kind around a random or half-valid message.
fn random_protobuf(rng: &mut StdRng, resource: &ResourceInfo) -> Vec<u8> {
    let type_meta = [
        protobuf_field(1, resource.api_version().as_bytes()),
        protobuf_field(2, resource.kind.as_bytes()),
    ]
    .concat();
    let mut raw = vec![0u8; rng.gen_range(0..256)];
    rng.fill(&mut raw[..]);
    if rng.gen_bool(0.5) {
        // An ObjectMeta whose label entry holds random bytes.
        let label = protobuf_field(11, &raw);
        raw = protobuf_field(1, &[protobuf_field(1, b"hostile-pb"), label].concat());
    }
    [
        skiff_api::protobuf::MAGIC,
        &protobuf_field(1, &type_meta),
        &protobuf_field(2, &raw),
    ]
    .concat()
}

/// Names that are not DNS labels or subdomains, percent-encoded for a path segment.
/// (`.` and `..` in any spelling are dot segments the client resolves away, which would
/// turn an item DELETE into a deletecollection.)
const BAD_NAMES: &[&str] = &[
    "...",
    ".a",
    "%2F",
    "a%2Fb",
    "a%00b",
    "%FF%FE",
    "%C3%BC",
    "%F0%9F%A6%80",
    "UPPER",
    "-lead",
    "a%20b",
    "%25",
    "a..b",
    "a%3Fb",
];

fn long_name(rng: &mut StdRng) -> String {
    let len = *[254usize, 64, 8000]
        .get(rng.gen_range(0..3))
        .unwrap_or(&254);
    "a".repeat(len)
}

const BAD_LABEL_SELECTORS: &[&str] = &[
    "a%20in%20(b",
    "!!",
    "a%3D%3Db%3D%3Dc",
    "a%20notin%20()",
    "(",
    "a%20in%20(b)%20c",
    "a%21%3D",
    "%3D",
    "a%2Fb%2Fc%3Dd",
    "%F0%9F%A6%80%3D1",
    "a%00%3Db",
    "a%3D%FF",
];

const BAD_FIELD_SELECTORS: &[&str] = &[
    "metadata.name",
    "%3Dx",
    "metadata.name%3D%3D%3D",
    "bogus%3D1",
    "metadata.namespace%21",
    "status.phase%3D%00",
    "%2C%2C%2C",
];

const GARBAGE_QUERIES: &[&str] = &[
    "resourceVersion=-1",
    "resourceVersion=abc",
    "resourceVersion=99999999999999999999",
    "resourceVersion=18446744073709551615",
    "resourceVersion=%201",
    "resourceVersionMatch=Sideways",
    "limit=-5",
    "limit=abc",
    "limit=99999999999999999999",
    "continue=%FF%00garbage",
    "timeoutSeconds=1e9",
    "timeoutSeconds=-1",
    "timeoutSeconds=18446744073709551615",
    "timeoutSeconds=9223372036854775807",
    "allowWatchBookmarks=maybe",
    "sendInitialEvents=true",
    "includeObject=Everything",
    "pretty=%FF",
    "watch=sometimes",
    "%FF=%FE",
    "labelSelector",
    "fieldSelector=&labelSelector=&&&",
];

const WRITE_QUERIES: &[&str] = &[
    "dryRun=Some",
    "dryRun=%00",
    "fieldValidation=Paranoid",
    "fieldManager=%00%FF",
    "gracePeriodSeconds=-1",
    "gracePeriodSeconds=99999999999999999999",
    "gracePeriodSeconds=abc",
    "propagationPolicy=Sideways",
    "orphanDependents=perhaps",
];

/// JSON patches that must be refused: bad paths, out-of-range indexes, failed tests,
/// moves into a child, and size bombs.
fn hostile_json_patches() -> Vec<(String, String)> {
    let copy_bomb: Vec<String> = (0..40)
        .map(|i| format!("{{\"op\":\"copy\",\"from\":\"/metadata\",\"path\":\"/metadata/annotations/c{i}\"}}"))
        .collect();
    let add_bomb: Vec<String> = (0..40)
        .map(|i| format!("{{\"op\":\"copy\",\"from\":\"\",\"path\":\"/x{i}\"}}"))
        .collect();
    let many_tests =
        vec!["{\"op\":\"test\",\"path\":\"/metadata/name\",\"value\":\"nope\"}"; 20_000];
    vec![
        ("add past the end".into(), r#"[{"op":"add","path":"/metadata/finalizers/99","value":"f"}]"#.into()),
        ("index -1".into(), r#"[{"op":"add","path":"/metadata/finalizers/-1","value":"f"}]"#.into()),
        ("index 2^64".into(), r#"[{"op":"replace","path":"/metadata/finalizers/18446744073709551616","value":"f"}]"#.into()),
        ("index with leading zero".into(), r#"[{"op":"remove","path":"/metadata/finalizers/01"}]"#.into()),
        ("no leading slash".into(), r#"[{"op":"add","path":"metadata/labels/a","value":"b"}]"#.into()),
        ("bad escape".into(), r#"[{"op":"add","path":"/metadata/labels/a~2b","value":"b"}]"#.into()),
        ("replace the root with an array".into(), r#"[{"op":"replace","path":"","value":[]}]"#.into()),
        ("replace the root with null".into(), r#"[{"op":"replace","path":"","value":null}]"#.into()),
        ("failing test".into(), r#"[{"op":"test","path":"/metadata/name","value":"nope"},{"op":"remove","path":"/metadata/labels"}]"#.into()),
        ("test of a missing path".into(), r#"[{"op":"test","path":"/a/b/c/d","value":1}]"#.into()),
        ("move into its own child".into(), r#"[{"op":"move","from":"/metadata","path":"/metadata/labels/m"}]"#.into()),
        ("move the root into a child".into(), r#"[{"op":"move","from":"","path":"/metadata/x"}]"#.into()),
        ("copy from a missing path".into(), r#"[{"op":"copy","from":"/nope/nope","path":"/metadata/labels/x"}]"#.into()),
        ("unknown op".into(), r#"[{"op":"explode","path":"/metadata"}]"#.into()),
        ("path of the wrong type".into(), r#"[{"op":"add","path":5,"value":1}]"#.into()),
        ("missing value".into(), r#"[{"op":"add","path":"/metadata/labels/x"}]"#.into()),
        ("not a list".into(), r#"{"op":"add","path":"/metadata/labels/x","value":"y"}"#.into()),
        ("a list of numbers".into(), "[1,2,3]".into()),
        ("name set to a number".into(), r#"[{"op":"replace","path":"/metadata/name","value":5}]"#.into()),
        ("40 doubling copies".into(), format!("[{}]", copy_bomb.join(","))),
        ("40 copies of the root".into(), format!("[{}]", add_bomb.join(","))),
        ("20000 failing tests".into(), format!("[{}]", many_tests.join(","))),
        ("deep value".into(), format!("[{{\"op\":\"add\",\"path\":\"/metadata/annotations/d\",\"value\":{}}}]", deep_arrays(10_000))),
    ]
}

fn hostile_merge_patches() -> Vec<(String, String)> {
    vec![
        ("array".into(), "[1]".into()),
        ("string".into(), "\"x\"".into()),
        ("null".into(), "null".into()),
        (
            "name of the wrong type".into(),
            r#"{"metadata":{"name":5}}"#.into(),
        ),
        (
            "labels of the wrong type".into(),
            r#"{"metadata":{"labels":[1]}}"#.into(),
        ),
        (
            "deep".into(),
            format!(
                "{{\"metadata\":{{\"annotations\":{}}}}}",
                deep_objects(10_000)
            ),
        ),
        (
            "kind changed".into(),
            r#"{"kind":"Namespace","apiVersion":"v1"}"#.into(),
        ),
        (
            "stale resourceVersion".into(),
            r#"{"metadata":{"resourceVersion":"1","labels":{"x":"y"}}}"#.into(),
        ),
        (
            "garbage resourceVersion".into(),
            r#"{"metadata":{"resourceVersion":"-1","labels":{"x":"y"}}}"#.into(),
        ),
        (
            "uid changed".into(),
            r#"{"metadata":{"uid":"not-the-uid"}}"#.into(),
        ),
    ]
}

fn hostile_strategic_patches() -> Vec<(String, String)> {
    vec![
        (
            "$patch delete at the root".into(),
            r#"{"$patch":"delete"}"#.into(),
        ),
        ("$patch of the wrong type".into(), r#"{"$patch":5}"#.into()),
        (
            "unknown $patch".into(),
            r#"{"metadata":{"$patch":"nonsense"}}"#.into(),
        ),
        (
            "$patch delete of metadata".into(),
            r#"{"metadata":{"$patch":"delete"}}"#.into(),
        ),
        (
            "$retainKeys a string".into(),
            r#"{"$retainKeys":"x"}"#.into(),
        ),
        (
            "$retainKeys an object".into(),
            r#"{"spec":{"$retainKeys":{}}}"#.into(),
        ),
        (
            "$retainKeys of numbers".into(),
            r#"{"metadata":{"$retainKeys":[1,{},null]}}"#.into(),
        ),
        (
            "$setElementOrder a string".into(),
            r#"{"spec":{"$setElementOrder/containers":"x"}}"#.into(),
        ),
        (
            "$setElementOrder garbage".into(),
            r#"{"metadata":{"$setElementOrder/finalizers":[{},[],null,5]}}"#.into(),
        ),
        (
            "$deleteFromPrimitiveList a number".into(),
            r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":5}}"#.into(),
        ),
        (
            "merge list of primitives".into(),
            r#"{"spec":{"containers":[5,"x",null,[]]}}"#.into(),
        ),
        (
            "list item $patch delete without key".into(),
            r#"{"spec":{"containers":[{"$patch":"delete"}]}}"#.into(),
        ),
        (
            "list item $patch replace".into(),
            r#"{"metadata":{"ownerReferences":[{"$patch":"replace"},{"uid":5}]}}"#.into(),
        ),
        (
            "name of the wrong type".into(),
            r#"{"metadata":{"name":{"a":1}}}"#.into(),
        ),
        (
            "deep".into(),
            format!(
                "{{\"metadata\":{{\"annotations\":{}}}}}",
                deep_objects(10_000)
            ),
        ),
    ]
}

fn hostile_apply_patches(resource: &ResourceInfo) -> Vec<(String, String)> {
    let other = if resource.kind == "Service" {
        "Pod"
    } else {
        "Service"
    };
    vec![
        ("wrong kind".into(), format!("{{\"apiVersion\":\"v1\",\"kind\":\"{other}\",\"metadata\":{{\"name\":\"hostile-{}\"}}}}", resource.singular)),
        ("unknown apiVersion".into(), format!("{{\"apiVersion\":\"nope/v9\",\"kind\":\"{}\"}}", resource.kind)),
        ("kind a number".into(), "kind: 5\napiVersion: v1\n".into()),
        ("yaml list".into(), "- a\n- b\n".into()),
        ("billion laughs".into(), billion_laughs()),
        ("deep yaml".into(), format!("metadata: {}", deep_arrays(10_000))),
    ]
}

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn methods() -> [reqwest::Method; 4] {
    use reqwest::Method;
    [Method::GET, Method::PUT, Method::PATCH, Method::DELETE]
}

/// The sweep itself, resource by resource.
async fn sweep_resource(
    sweep: &mut Sweep,
    index: usize,
    resource: &'static ResourceInfo,
) -> Result<()> {
    use reqwest::Method;
    let kind = resource.kind;
    let collection = collection_path(resource);
    let item = item_path(resource);
    let stored: Value = serde_json::from_slice(
        &sweep
            .http
            .get(format!("{}{item}", sweep.server))
            .send()
            .await?
            .bytes()
            .await?,
    )?;

    // Create: the valid object with one field of the wrong type. Its name is taken, so
    // even a mutation the schema allows ends in AlreadyExists.
    let valid = valid_object(resource);
    for (what, body) in type_mutations(&mut sweep.rng, &valid, 11, true) {
        let probe = Probe::new(format!("{kind} create, {what}"), Method::POST, &collection)
            .body("application/json", body.to_string())
            .touching(&item);
        sweep.send(probe).await?;
    }
    // Update: the stored object with one field of the wrong type.
    for (what, body) in type_mutations(&mut sweep.rng, &stored, 11, false) {
        let probe = Probe::new(format!("{kind} update, {what}"), Method::PUT, &item)
            .body("application/json", body.to_string())
            .touching(&item);
        sweep.send(probe).await?;
    }

    // Hostile bodies, each through about a quarter of the endpoints that take a body;
    // across resources every body reaches every endpoint.
    let mut endpoints: Vec<(String, Method, String, Option<&str>)> = vec![
        ("create".into(), Method::POST, collection.clone(), None),
        ("update".into(), Method::PUT, item.clone(), None),
        // A body the schema allows would really delete; dryRun keeps the object.
        (
            "delete".into(),
            Method::DELETE,
            format!("{item}?dryRun=All"),
            None,
        ),
        (
            "deletecollection".into(),
            Method::DELETE,
            format!("{collection}?dryRun=All&labelSelector=nothing%3Dmatches"),
            None,
        ),
    ];
    for patch_type in PATCH_TYPES {
        endpoints.push((
            format!("patch {patch_type}"),
            Method::PATCH,
            item.clone(),
            Some(patch_type),
        ));
    }
    for sub in resource.subresources {
        let path = format!("{item}/{}", sub.name);
        if sub.verbs.contains(&"update") {
            endpoints.push((
                format!("{} update", sub.name),
                Method::PUT,
                path.clone(),
                None,
            ));
        }
        if sub.verbs.contains(&"patch") {
            let patch_type = *sweep.pick(PATCH_TYPES);
            endpoints.push((
                format!("{} patch", sub.name),
                Method::PATCH,
                path.clone(),
                Some(patch_type),
            ));
        }
        if sub.verbs.contains(&"create") {
            endpoints.push((
                format!("{} create", sub.name),
                Method::POST,
                path.clone(),
                None,
            ));
        }
    }
    if kind == "Namespace" {
        endpoints.push((
            "finalize".into(),
            Method::PUT,
            format!("{item}/finalize"),
            None,
        ));
    }
    let bodies = hostile_bodies(&mut sweep.rng, resource);
    for (b, (what, content_type, body)) in bodies.iter().enumerate() {
        for (e, (endpoint, method, path, patch_type)) in endpoints.iter().enumerate() {
            if (b + e + index) % 4 != 0 {
                continue;
            }
            let ct = patch_type
                .map(str::to_string)
                .unwrap_or(content_type.clone());
            let probe = Probe::new(format!("{kind} {endpoint}, {what}"), method.clone(), path)
                .body(&ct, body.clone())
                .touching(&item);
            sweep.send(probe).await?;
        }
    }

    // Patches, each of its own type and through the subresources that take patches.
    let mut patch_paths = vec![item.clone()];
    for sub in resource
        .subresources
        .iter()
        .filter(|s| s.verbs.contains(&"patch"))
    {
        patch_paths.push(format!("{item}/{}", sub.name));
    }
    let families = [
        (PATCH_TYPES[0], hostile_json_patches()),
        (PATCH_TYPES[1], hostile_merge_patches()),
        (PATCH_TYPES[2], hostile_strategic_patches()),
        (PATCH_TYPES[3], hostile_apply_patches(resource)),
    ];
    // Each resource gets every other patch; its neighbour gets the rest.
    for (patch_type, patches) in families {
        for (p, (what, body)) in patches.into_iter().enumerate() {
            if (p + index) % 2 != 0 {
                continue;
            }
            let path = sweep.pick(&patch_paths).clone();
            let probe = Probe::new(
                format!("{kind} patch {patch_type}, {what}"),
                Method::PATCH,
                path,
            )
            .body(patch_type, body)
            .touching(&item);
            sweep.send(probe).await?;
        }
    }

    // DeleteOptions with a wrong type at every field; a uid precondition that cannot
    // hold keeps a body the schema allows from deleting anything.
    let delete_options = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 30,
        "propagationPolicy": "Background", "preconditions": {"uid": "not-the-uid", "resourceVersion": "1"},
        "dryRun": ["All"], "orphanDependents": false});
    for (what, body) in type_mutations(&mut sweep.rng, &delete_options, 6, false) {
        let probe = Probe::new(
            format!("{kind} delete options, {what}"),
            Method::DELETE,
            &item,
        )
        .body("application/json", body.to_string())
        .touching(&item);
        sweep.send(probe).await?;
    }

    // Names that are not DNS labels, under every item verb.
    let mut names: Vec<String> = BAD_NAMES.iter().map(|n| n.to_string()).collect();
    names.push(long_name(&mut sweep.rng));
    for name in &names {
        for method in methods() {
            if !sweep.rng.gen_bool(0.35) {
                continue;
            }
            let path = format!("{collection}/{name}");
            let mut body = valid.clone();
            body["metadata"]["name"] = json!(name);
            let ct = if method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            let mut probe = Probe::new(
                format!("{kind} {method} name {:.40}", name),
                method.clone(),
                path,
            );
            if method != Method::GET {
                probe = probe.body(ct, body.to_string());
            }
            sweep.send(probe).await?;
        }
        if resource.namespaced && sweep.rng.gen_bool(0.5) {
            let path = format!(
                "{}/namespaces/{name}/{}",
                resource.group_version_path(),
                resource.plural
            );
            let probe = Probe::new(
                format!("{kind} create in namespace {:.40}", name),
                Method::POST,
                path,
            )
            .body("application/json", valid.to_string());
            sweep.send(probe).await?;
        }
    }
    if resource.namespaced {
        let probe = Probe::new(
            format!("{kind} cluster-scoped item path"),
            Method::GET,
            format!(
                "{}/{}/hostile-{}",
                resource.group_version_path(),
                resource.plural,
                resource.singular
            ),
        );
        sweep.send(probe).await?;
    }

    // Selectors and query parameters on list, watch and deletecollection.
    for selector in BAD_LABEL_SELECTORS {
        let watch = if sweep.rng.gen_bool(0.5) {
            "watch=true&timeoutSeconds=1&"
        } else {
            ""
        };
        let path = format!("{collection}?{watch}labelSelector={selector}");
        sweep
            .send(Probe::new(
                format!("{kind} list, label selector"),
                Method::GET,
                path,
            ))
            .await?;
    }
    for selector in BAD_FIELD_SELECTORS {
        let path = format!("{collection}?fieldSelector={selector}");
        sweep
            .send(Probe::new(
                format!("{kind} list, field selector"),
                Method::GET,
                path,
            ))
            .await?;
    }
    let deletecollection_selector = format!("labelSelector={}", sweep.pick(BAD_LABEL_SELECTORS));
    sweep
        .send(
            Probe::new(
                format!("{kind} deletecollection, bad selector"),
                Method::DELETE,
                format!("{collection}?dryRun=All&{deletecollection_selector}"),
            )
            .touching(&item),
        )
        .await?;
    for _ in 0..4 {
        let garbage = random_selector(&mut sweep.rng);
        let watch = if sweep.rng.gen_bool(0.5) {
            "watch=1&timeoutSeconds=1&"
        } else {
            ""
        };
        let path = format!("{collection}?{watch}labelSelector={garbage}&fieldSelector={garbage}");
        sweep
            .send(Probe::new(
                format!("{kind} list, random selector {garbage}"),
                Method::GET,
                path,
            ))
            .await?;
    }
    for query in GARBAGE_QUERIES {
        let watch = match sweep.rng.gen_range(0..3) {
            0 => "",
            // A watch must end on its own when the garbage is not a timeout.
            _ if query.starts_with("timeoutSeconds") => "watch=true&",
            _ => "watch=true&timeoutSeconds=1&",
        };
        let path = format!("{collection}?{watch}{query}");
        let mut probe = Probe::new(format!("{kind} list {watch}{query}"), Method::GET, path);
        if query.starts_with("includeObject") {
            probe.accept = Some("application/json;as=Table;v=v1;g=meta.k8s.io".into());
        }
        sweep.send(probe).await?;
        if sweep.rng.gen_bool(0.3) {
            let probe = Probe::new(
                format!("{kind} get ?{query}"),
                Method::GET,
                format!("{item}?{query}"),
            );
            sweep.send(probe).await?;
        }
    }
    for query in WRITE_QUERIES {
        let (method, path, body) = match sweep.rng.gen_range(0..4) {
            0 => (Method::POST, collection.clone(), valid.to_string()),
            1 => (Method::PUT, item.clone(), stored.to_string()),
            2 => (Method::DELETE, item.clone(), String::new()),
            _ => (Method::DELETE, collection.clone(), String::new()),
        };
        // Deletes whose garbage the server may accept run dry.
        let dry = if method == Method::DELETE && !query.starts_with("dryRun") {
            "&dryRun=All"
        } else {
            ""
        };
        let probe = Probe::new(
            format!("{kind} {method} ?{query}"),
            method,
            format!("{path}?{query}{dry}"),
        )
        .body("application/json", body);
        sweep.send(probe.touching(&item)).await?;
    }
    for accept in [
        "application/vnd.kubernetes.protobuf",
        "a/b/c;;;;=",
        "application/json;as=Table;g=meta.k8s.io;v=v1",
    ] {
        let mut probe = Probe::new(
            format!("{kind} list, Accept {accept}"),
            Method::GET,
            format!("{collection}?includeObject=%FF"),
        );
        probe.accept = Some(accept.into());
        sweep.send(probe).await?;
    }

    // Methods no endpoint has, and subresources nobody serves.
    for method in ["OPTIONS", "TRACE", "CONNECT", "PROPFIND"] {
        let method = Method::from_bytes(method.as_bytes())?;
        let path = sweep.pick(&[collection.clone(), item.clone()]).clone();
        sweep
            .send(Probe::new(format!("{kind} method {method}"), method, path))
            .await?;
    }
    for sub in ["eviction", "exec", "proxy", "status%2F..", "scale/extra"] {
        let method = sweep.pick(&[Method::GET, Method::POST]).clone();
        let probe = Probe::new(
            format!("{kind} {method} {sub}"),
            method,
            format!("{item}/{sub}"),
        )
        .body(
            "application/json",
            r#"{"apiVersion":"policy/v1","kind":"Eviction"}"#,
        )
        .touching(&item);
        sweep.send(probe).await?;
    }

    // Protobuf bodies of random bytes, with and without a half-valid envelope.
    for _ in 0..6 {
        let body = if sweep.rng.gen_bool(0.5) {
            random_protobuf(&mut sweep.rng, resource)
        } else {
            let mut raw = vec![0u8; sweep.rng.gen_range(0..128)];
            sweep.rng.fill(&mut raw[..]);
            if sweep.rng.gen_bool(0.5) {
                [skiff_api::protobuf::MAGIC, &raw].concat()
            } else {
                raw
            }
        };
        let (method, path) = sweep
            .pick(&[
                (Method::POST, collection.clone()),
                (Method::PUT, item.clone()),
            ])
            .clone();
        let probe = Probe::new(format!("{kind} {method} protobuf"), method, path)
            .body("application/vnd.kubernetes.protobuf", body)
            .touching(&item);
        sweep.send(probe).await?;
    }

    subresource_probes(sweep, resource, &item).await
}

/// Scale, binding and log requests with bodies of the wrong shape.
async fn subresource_probes(sweep: &mut Sweep, resource: &ResourceInfo, item: &str) -> Result<()> {
    use reqwest::Method;
    let kind = resource.kind;
    if resource.subresource("scale").is_some() {
        let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": format!("hostile-{}", resource.singular), "resourceVersion": "1"},
            "spec": {"replicas": 0}});
        for (what, body) in type_mutations(&mut sweep.rng, &scale, 8, false) {
            let probe = Probe::new(
                format!("{kind} scale update, {what}"),
                Method::PUT,
                format!("{item}/scale"),
            )
            .body("application/json", body.to_string())
            .touching(item);
            sweep.send(probe).await?;
        }
        for body in [
            r#"{"spec":{"replicas":-1}}"#,
            r#"{"spec":{"replicas":4294967296}}"#,
            r#"{"spec":{"replicas":"3"}}"#,
        ] {
            let probe = Probe::new(
                format!("{kind} scale merge patch {body}"),
                Method::PATCH,
                format!("{item}/scale"),
            )
            .body("application/merge-patch+json", body)
            .touching(item);
            sweep.send(probe).await?;
        }
    }
    if resource.subresource("binding").is_some() {
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": format!("hostile-{}", resource.singular)},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "no-such-node"}});
        for (what, body) in type_mutations(&mut sweep.rng, &binding, 8, false) {
            let probe = Probe::new(
                format!("{kind} binding, {what}"),
                Method::POST,
                format!("{item}/binding"),
            )
            .body("application/json", body.to_string())
            .touching(item);
            sweep.send(probe).await?;
        }
    }
    if resource.subresource("log").is_some() {
        for query in [
            "container=%2E%2E%2F%2E%2E",
            "tailLines=-1",
            "follow=true&limitBytes=-5",
            "sinceSeconds=1e9",
            "container=c&previous=%FF",
        ] {
            let probe = Probe::new(
                format!("{kind} log ?{query}"),
                Method::GET,
                format!("{item}/log?{query}"),
            );
            sweep.send(probe).await?;
        }
    }
    Ok(())
}

/// A label/field selector of random selector characters, percent-encoded.
fn random_selector(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "%3D",
        "%21",
        "%28",
        "%29",
        "%2C",
        "%20in%20",
        "%20notin%20",
        "%3D%3D",
        "%21%3D",
        "%2F",
        ".",
        "-",
        "%00",
        "%FF",
        "%C3%BC",
        "metadata.name",
        "spec.nodeName",
        "status.phase",
        "%3E",
        "%3C",
        "~",
    ];
    let n = rng.gen_range(1..12);
    (0..n)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

#[tokio::test]
async fn hostile_input_gets_a_status_never_a_panic_and_changes_nothing() -> Result<()> {
    let seed = std::env::var("SKIFF_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let panics = PanicLog::install();
    let cluster = InProcess::start_api_only().await?;
    let http = cluster.http.clone();
    let started = Instant::now();

    // Setup: one valid object of every served kind; their stored bytes are the baseline.
    let mut baseline: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for resource in RESOURCES.iter().filter(|r| r.is_stored()) {
        let response = http
            .post(format!("{}{}", cluster.server, collection_path(resource)))
            .json(&valid_object(resource))
            .send()
            .await?;
        let code = response.status();
        let text = response.text().await?;
        if !code.is_success() {
            bail!(
                "setup: creating a {} answered {code}: {text}",
                resource.kind
            );
        }
        let item = item_path(resource);
        let stored = http
            .get(format!("{}{item}", cluster.server))
            .send()
            .await?
            .bytes()
            .await?;
        baseline.insert(item, stored.to_vec());
    }

    let mut sweep = Sweep {
        http: http.clone(),
        server: cluster.server.clone(),
        seed,
        rng: StdRng::seed_from_u64(seed),
        sent: 0,
        revision: String::new(),
        failures: Vec::new(),
        baseline,
        changed_by: Vec::new(),
        panics,
        dead: false,
        trace: std::env::var_os("SKIFF_HOSTILE_TRACE").is_some(),
    };
    sweep.revision = sweep.revision().await?;
    // Reviews are answered, not stored: there is nothing of theirs to corrupt.
    for (index, resource) in RESOURCES.iter().filter(|r| r.is_stored()).enumerate() {
        sweep_resource(&mut sweep, index, resource).await?;
    }

    // Every setup object is byte for byte as the last accepted request left it.
    if !sweep.dead {
        for (item, before) in &sweep.baseline.clone() {
            let after = http
                .get(format!("{}{item}", cluster.server))
                .send()
                .await?
                .bytes()
                .await?;
            if after.as_ref() != before.as_slice() {
                sweep.failures.push(format!(
                    "{item} changed by a rejected request:\n  before {}\n  after  {}",
                    String::from_utf8_lossy(before),
                    String::from_utf8_lossy(&after)
                ));
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "hostile sweep: seed {:#x}, {} requests in {elapsed:?}, {} failures; {} accepted requests changed a setup object",
        sweep.seed,
        sweep.sent,
        sweep.failures.len(),
        sweep.changed_by.len()
    );
    cluster.stop().await;
    if !sweep.failures.is_empty() {
        let shown: Vec<&String> = sweep.failures.iter().take(40).collect();
        bail!(
            "hostile sweep (SKIFF_HOSTILE_SEED={}) found {} failures in {} requests:\n{}",
            sweep.seed,
            sweep.failures.len(),
            sweep.sent,
            shown
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if sweep.sent >= max_requests() {
        bail!(
            "the sweep outgrew its budget of {} requests: trim the generators",
            max_requests()
        );
    }
    Ok(())
}
