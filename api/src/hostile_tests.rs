//! Hostile input through the pure decoding, patch, selector, quantity and validation
//! functions, with many more seeded iterations than the API-server sweep can afford:
//! none of them may panic, whatever the bytes.

use crate::object::{check_type_meta, normalize_kind, parse_body};
use crate::patch::{apply_patch, PatchType};
use crate::resource::RESOURCES;
use crate::selector::{structured_to_string, FieldSelector, LabelSelector};
use crate::validation::{validate_object, validate_update};
use serde_json::{json, Map, Value};

const SEED: u64 = 0x5EED_0A91;
const ITERATIONS: usize = 4_000;

/// splitmix64: deterministic, good enough to pick mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Prints the seed and iteration when a panic unwinds through the loop.
struct Replay(u64, usize);

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("hostile input: seed {:#x}, iteration {}", self.0, self.1);
        }
    }
}

const STRINGS: &[&str] = &[
    "",
    "x",
    "hostile",
    "..",
    "a/b",
    "\u{0}",
    "ü",
    "🦀",
    "-1",
    "1e400",
    "18446744073709551616",
    "9223372036854775808",
    "500m",
    "1Ei",
    "0.000000001",
    "Pod",
    "v1",
    "$patch",
    "delete",
    "replace",
    "In",
    "NotIn",
    "Exists",
    "TCP",
    "IntOrString",
];

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next()),
        3 => json!(-(rng.below(1 << 20) as i64)),
        4 => json!(f64::from_bits(rng.next()).clamp(-1e300, 1e300)),
        5 => json!(*rng.pick(&[0.5, -0.0, 1e300, -1e-300])),
        _ => json!(*rng.pick(STRINGS)),
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    if depth == 0 || rng.below(3) == 0 {
        return scalar(rng);
    }
    if rng.below(2) == 0 {
        Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        )
    } else {
        let keys = [
            "metadata",
            "name",
            "spec",
            "status",
            "containers",
            "ports",
            "labels",
            "selector",
            "matchLabels",
            "matchExpressions",
            "key",
            "operator",
            "values",
            "replicas",
            "resources",
            "limits",
            "requests",
            "cpu",
            "memory",
            "$patch",
            "$retainKeys",
            "$setElementOrder/containers",
            "$deleteFromPrimitiveList/finalizers",
            "finalizers",
            "template",
            "image",
            "env",
            "value",
            "port",
            "targetPort",
            "type",
            "data",
        ];
        let mut map = Map::new();
        for _ in 0..rng.below(4) {
            map.insert(rng.pick(&keys).to_string(), random_value(rng, depth - 1));
        }
        Value::Object(map)
    }
}

/// A valid-looking object of `kind` to mutate.
fn seed_object(kind: &str) -> Value {
    let pod_spec = json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "a", "namespace": "default",
        "labels": {"app": "a"}, "finalizers": ["f"]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": pod_spec.clone()},
            "containers": pod_spec["containers"].clone(), "ports": [{"port": 80}]},
        "data": {"k": "v"}})
}

/// Replaces a random node of `value` with `replacement`.
fn mutate(rng: &mut Rng, value: &mut Value, replacement: Value) {
    let mut node = value;
    loop {
        let children = match node {
            Value::Object(m) if !m.is_empty() => m.len(),
            Value::Array(a) if !a.is_empty() => a.len(),
            _ => 0,
        };
        if children == 0 || rng.below(3) == 0 {
            *node = replacement;
            return;
        }
        let i = rng.below(children);
        node = match node {
            Value::Object(m) => match m.values_mut().nth(i) {
                Some(v) => v,
                None => return,
            },
            Value::Array(a) => match a.get_mut(i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
}

fn random_json_patch(rng: &mut Rng) -> Value {
    let ops = ["add", "remove", "replace", "move", "copy", "test", "bogus"];
    let paths = [
        "",
        "/",
        "/metadata",
        "/metadata/labels/x",
        "/metadata/finalizers/0",
        "/metadata/finalizers/-",
        "/metadata/finalizers/99",
        "/metadata/finalizers/-1",
        "/metadata/finalizers/18446744073709551616",
        "/spec/containers/0/ports/0",
        "/spec/containers/01",
        "/a~2b",
        "metadata",
        "/spec/template/spec",
    ];
    let ops: Vec<Value> = (0..rng.below(5))
        .map(|_| {
            json!({"op": rng.pick(&ops), "path": rng.pick(&paths), "from": rng.pick(&paths),
                "value": random_value(rng, 3)})
        })
        .collect();
    Value::Array(ops)
}

fn pick_str(rng: &mut Rng) -> &'static str {
    STRINGS[rng.below(STRINGS.len())]
}

const SELECTOR_PIECES: &[&str] = &[
    "a",
    "b",
    "=",
    "==",
    "!=",
    "!",
    "(",
    ")",
    ",",
    " in ",
    " notin ",
    "/",
    ".",
    "-",
    "\u{0}",
    "ü",
    "metadata.name",
    "spec.nodeName",
    "status.phase",
    ">",
    "<",
    " ",
    "x.y/z",
];

#[test]
fn hostile_values_never_panic_the_decoders_patches_or_validation() {
    let mut rng = Rng(SEED);
    let kinds: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.kind)
        .chain(["Binding", "Scale", "DeleteOptions", "Widget"])
        .collect();
    let patch_types = [
        PatchType::Json,
        PatchType::Merge,
        PatchType::StrategicMerge,
        PatchType::Apply,
    ];
    for iteration in 0..ITERATIONS {
        let _replay = Replay(SEED, iteration);
        let kind = *rng.pick(&kinds);
        let mut object = seed_object(kind);
        for _ in 0..=rng.below(3) {
            let replacement = random_value(&mut rng, 4);
            mutate(&mut rng, &mut object, replacement);
        }
        let resource = RESOURCES.iter().find(|r| r.kind == kind);
        let mut typed = object.clone();
        let _ = check_type_meta(&mut typed, "v1", kind);
        if let Ok(normalized) = normalize_kind(kind, typed) {
            if let Some(resource) = resource {
                let _ = validate_object(resource, &normalized);
                let _ = validate_update(resource, &seed_object(kind), &normalized);
            }
        }
        let patch_type = *rng.pick(&patch_types);
        let patch = if patch_type == PatchType::Json {
            random_json_patch(&mut rng)
        } else {
            random_value(&mut rng, 5)
        };
        if let Ok(patched) = apply_patch(patch_type, &seed_object(kind), &patch) {
            let _ = normalize_kind(kind, patched);
        }
        let _ = LabelSelector::from_structured(&object);
        let _ = structured_to_string(&object);
        let text: String = (0..rng.below(12))
            .map(|_| *rng.pick(SELECTOR_PIECES))
            .collect();
        let _ = LabelSelector::parse(&text);
        if let Ok(fields) = FieldSelector::parse(&text) {
            let _ = fields.check_supported(kind);
            let _ = fields.matches(kind, &object);
        }
        let _ = crate::quantity::Quantity::parse(&text);
        let _ = crate::quantity::Quantity::parse(pick_str(&mut rng));
    }
}

#[test]
fn hostile_bytes_never_panic_parse_body_or_protobuf_decode() {
    let mut rng = Rng(SEED ^ 0xB0D1);
    let fragments: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"a: ",
        b"- ",
        b"\n",
        b"  ",
        b"&a ",
        b"*a",
        b"<<: ",
        b"!!binary ",
        b"---\n",
        b"\xff",
        b"\0",
        b"1e400",
        b"-0",
        b"null",
        b"\\u0000",
        b"\\ud800",
        b"#",
        b"'",
        b"|",
        b">",
        b"? ",
        b"k8s\0",
        b"\x0a\x05",
        b"\x12\x7f",
    ];
    for iteration in 0..ITERATIONS {
        let _replay = Replay(SEED, iteration);
        let body: Vec<u8> = (0..rng.below(40))
            .flat_map(|_| rng.pick(fragments).to_vec())
            .collect();
        if let Ok(value) = parse_body(&body) {
            let _ = normalize_kind("Pod", value);
        }
        let _ = crate::protobuf::decode(&body);
        let mut envelope = crate::protobuf::MAGIC.to_vec();
        envelope.extend((0..rng.below(64)).map(|_| rng.next() as u8));
        let _ = crate::protobuf::decode(&envelope);
    }
}
