//! The scheduler's decision as a pure function: filter the nodes a pod can run on, score
//! the rest, pick the best. No IO and no clock, so every rule is tested with data.

use serde_json::Value;
use skiff_api::quantity::Quantity;
use std::collections::{BTreeMap, HashMap};

/// Resource amounts the scheduler counts: CPU in millicores, memory in bytes, pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl Resources {
    /// The sum per resource, saturating at `u64::MAX`: a pod asking for more than any
    /// node has makes a node look full, never (by wrapping) empty.
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            pods: self.pods.saturating_add(other.pods),
        }
    }

    /// The difference per resource, saturating at zero.
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            pods: self.pods.saturating_sub(other.pods),
        }
    }
}

/// Whether `requested + extra` stays within `allocatable`; a sum that overflows does not.
fn fits(requested: u64, extra: u64, allocatable: u64) -> bool {
    requested
        .checked_add(extra)
        .is_some_and(|total| total <= allocatable)
}

/// What the scheduler knows of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    pub ready: bool,
    pub unschedulable: bool,
    pub allocatable: Resources,
    /// Sum of the requests of pods bound (or being bound) to it.
    pub requested: Resources,
    /// Pods on the node, for affinity and spreading.
    pub pods: Vec<PodInfo>,
}

/// What the scheduler knows of a pod placed on a node.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// UID of the controller owner (spreading replicas of one owner).
    pub owner: Option<String>,
}

/// Why no node fits: reasons with how many nodes each ruled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub message: String,
}

/// A quantity field in the scheduler's units (see [`Quantity::milli_value_clamped`] and
/// [`Quantity::value_clamped`]); absent is zero. Admission refuses pods whose quantities
/// do not parse, so only objects stored before that check can carry one: it counts as
/// `unreadable`, which callers choose so that the error errs on the safe side (a request
/// that cannot be read fits nowhere; capacity that cannot be read holds nothing).
fn quantity(value: Option<&Value>, units: fn(&Quantity) -> u64, unreadable: u64) -> u64 {
    match value.map(Quantity::from_json) {
        None => 0,
        Some(Ok(q)) => units(&q),
        Some(Err(_)) => unreadable,
    }
}

/// The requests of a pod: the sum over its containers, or the largest init container if
/// that is more, plus one pod slot.
pub fn pod_requests(pod: &Value) -> Resources {
    let sum = |list: &str| -> (u64, u64, u64, u64) {
        let mut total = (0, 0, 0, 0);
        for c in pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = |r: &str, units: fn(&Quantity) -> u64| {
                // A limit without a request means a request of the same size.
                let request = c.pointer(&format!("/resources/requests/{r}"));
                let limit = c.pointer(&format!("/resources/limits/{r}"));
                quantity(request.or(limit), units, u64::MAX)
            };
            let cpu = req("cpu", Quantity::milli_value_clamped);
            let memory = req("memory", Quantity::value_clamped);
            // Saturating: two containers asking for `cpu: 1e28` each must not wrap.
            total.0 = u64::saturating_add(total.0, cpu);
            total.1 = u64::saturating_add(total.1, memory);
            total.2 = total.2.max(cpu);
            total.3 = total.3.max(memory);
        }
        total
    };
    let app = sum("containers");
    let init = sum("initContainers");
    Resources {
        cpu_millis: app.0.max(init.2),
        memory_bytes: app.1.max(init.3),
        pods: 1,
    }
}

/// Reads a node object into what the scheduler needs (requests are added by the caller).
pub fn node_info(node: &Value) -> NodeInfo {
    let labels = skiff_api::selector::labels_of(node);
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str))
        == Some("True");
    let alloc = |r: &str, units: fn(&Quantity) -> u64| {
        quantity(node.pointer(&format!("/status/allocatable/{r}")), units, 0)
    };
    NodeInfo {
        name: node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        labels,
        taints: node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        ready,
        unschedulable: node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true),
        allocatable: Resources {
            cpu_millis: alloc("cpu", Quantity::milli_value_clamped),
            memory_bytes: alloc("memory", Quantity::value_clamped),
            pods: alloc("pods", Quantity::value_clamped),
        },
        requested: Resources::default(),
        pods: Vec::new(),
    }
}

/// The controller owner UID of a pod.
pub fn controller_of(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|r| r.get("uid").and_then(Value::as_str))
        .map(str::to_string)
}

pub fn pod_info(pod: &Value) -> PodInfo {
    PodInfo {
        namespace: pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        labels: skiff_api::selector::labels_of(pod),
        owner: controller_of(pod),
    }
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    let key = taint.get("key").and_then(Value::as_str).unwrap_or_default();
    let value = taint
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let effect = taint
        .get("effect")
        .and_then(Value::as_str)
        .unwrap_or_default();
    tolerations.iter().any(|t| {
        let t_effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
        let t_key = t.get("key").and_then(Value::as_str).unwrap_or_default();
        let operator = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
        let effect_ok = t_effect.is_empty() || t_effect == effect;
        let key_ok = t_key.is_empty() && operator == "Exists" || t_key == key;
        let value_ok = operator == "Exists"
            || t.get("value").and_then(Value::as_str).unwrap_or_default() == value;
        effect_ok && key_ok && value_ok
    })
}

fn match_expression(labels: &BTreeMap<String, String>, expr: &Value) -> bool {
    let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
    match_value(labels.get(key), expr)
}

/// Applies a node selector requirement's operator and values to one actual value.
fn match_value(actual: Option<&String>, expr: &Value) -> bool {
    let values = || -> Vec<&str> {
        expr.get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let number = |v: &str| v.parse::<i64>().ok();
    match expr
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "In" => actual.is_some_and(|a| values().contains(&a.as_str())),
        "NotIn" => actual.is_none_or(|a| !values().contains(&a.as_str())),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        "Gt" => actual
            .and_then(|a| number(a))
            .zip(values().first().and_then(|v| number(v)))
            .is_some_and(|(a, v)| a > v),
        "Lt" => actual
            .and_then(|a| number(a))
            .zip(values().first().and_then(|v| number(v)))
            .is_some_and(|(a, v)| a < v),
        _ => false,
    }
}

fn matches_node_affinity(terms: Option<&Vec<Value>>, node: &NodeInfo) -> bool {
    let Some(terms) = terms else {
        return true;
    };
    let empty = Vec::new();
    // Terms are ORed; expressions within a term are ANDed.
    terms.iter().any(|term| {
        let exprs = term
            .get("matchExpressions")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let fields = term
            .get("matchFields")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|e| match_expression(&node.labels, e))
            && fields.iter().all(|e| {
                // The only field Kubernetes allows here is metadata.name.
                e.get("key").and_then(Value::as_str) == Some("metadata.name")
                    && match_value(Some(&node.name), e)
            })
    })
}

fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    skiff_api::selector::LabelSelector::from_structured(selector).is_ok_and(|s| s.matches(labels))
}

/// Topology value of a node for `key` (`kubernetes.io/hostname` defaults to the name).
fn topology(node: &NodeInfo, key: &str) -> Option<String> {
    node.labels
        .get(key)
        .cloned()
        .or_else(|| (key == "kubernetes.io/hostname").then(|| node.name.clone()))
}

/// Whether a term (`labelSelector`, `namespaces`, `topologyKey`) is satisfied by some pod
/// in the same topology domain as `node`.
fn term_satisfied(term: &Value, pod_namespace: &str, node: &NodeInfo, nodes: &[NodeInfo]) -> bool {
    let key = term
        .get("topologyKey")
        .and_then(Value::as_str)
        .unwrap_or("kubernetes.io/hostname");
    let Some(domain) = topology(node, key) else {
        return false;
    };
    let selector = term.get("labelSelector").cloned().unwrap_or(Value::Null);
    let namespaces: Vec<&str> = term
        .get("namespaces")
        .and_then(Value::as_array)
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    nodes
        .iter()
        .filter(|n| topology(n, key).as_deref() == Some(domain.as_str()))
        .any(|n| {
            n.pods.iter().any(|p| {
                let ns_ok = if namespaces.is_empty() {
                    p.namespace == pod_namespace
                } else {
                    namespaces.contains(&p.namespace.as_str())
                };
                ns_ok && !selector.is_null() && selector_matches(&selector, &p.labels)
            })
        })
}

fn required_terms<'a>(pod: &'a Value, kind: &str) -> Vec<&'a Value> {
    pod.get("spec")
        .and_then(|s| s.get("affinity"))
        .and_then(|a| a.get(kind))
        .and_then(|k| k.get("requiredDuringSchedulingIgnoredDuringExecution"))
        .and_then(Value::as_array)
        .map(|t| t.iter().collect())
        .unwrap_or_default()
}

/// What the filters and scores need from a pod, read from its JSON once per decision
/// rather than once per node.
pub struct PodQuery<'a> {
    pub requests: Resources,
    tolerations: &'a [Value],
    node_selector: Vec<(&'a str, &'a str)>,
    node_affinity: Option<&'a Vec<Value>>,
    pod_affinity: Vec<&'a Value>,
    pod_anti_affinity: Vec<&'a Value>,
    namespace: &'a str,
    owner: Option<String>,
}

impl<'a> PodQuery<'a> {
    pub fn new(pod: &'a Value) -> Self {
        let spec = pod.get("spec");
        PodQuery {
            requests: pod_requests(pod),
            tolerations: spec.and_then(|s| s.get("tolerations")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]),
            node_selector: spec
                .and_then(|s| s.get("nodeSelector"))
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default(),
            node_affinity: spec
                .and_then(|s| s.pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"))
                .and_then(Value::as_array),
            pod_affinity: required_terms(pod, "podAffinity"),
            pod_anti_affinity: required_terms(pod, "podAntiAffinity"),
            namespace: pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default"),
            owner: controller_of(pod),
        }
    }

    /// The first filter a node fails, as the reason Kubernetes prints.
    pub fn filter(&self, node: &NodeInfo, nodes: &[NodeInfo]) -> Result<(), &'static str> {
        if !node.ready {
            return Err("node(s) were not ready");
        }
        if node.unschedulable {
            return Err("node(s) were unschedulable");
        }
        for taint in &node.taints {
            let effect = taint
                .get("effect")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if matches!(effect, "NoSchedule" | "NoExecute") && !tolerates(self.tolerations, taint) {
                return Err("node(s) had untolerated taint");
            }
        }
        if !self
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(*k).map(String::as_str) == Some(*v))
        {
            return Err("node(s) didn't match Pod's node affinity/selector");
        }
        if !matches_node_affinity(self.node_affinity, node) {
            return Err("node(s) didn't match Pod's node affinity/selector");
        }
        let requests = &self.requests;
        let (requested, allocatable) = (&node.requested, &node.allocatable);
        if !fits(requested.pods, requests.pods, allocatable.pods) {
            return Err("Too many pods");
        }
        if !fits(
            requested.cpu_millis,
            requests.cpu_millis,
            allocatable.cpu_millis,
        ) {
            return Err("Insufficient cpu");
        }
        if !fits(
            requested.memory_bytes,
            requests.memory_bytes,
            allocatable.memory_bytes,
        ) {
            return Err("Insufficient memory");
        }
        for term in &self.pod_affinity {
            if !term_satisfied(term, self.namespace, node, nodes) {
                return Err("node(s) didn't match pod affinity rules");
            }
        }
        for term in &self.pod_anti_affinity {
            if term_satisfied(term, self.namespace, node, nodes) {
                return Err("node(s) didn't match pod anti-affinity rules");
            }
        }
        Ok(())
    }

    /// Higher is better: least-allocated (CPU and memory after placing the pod) and
    /// spreading pods of the same owner across nodes.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        let free = |requested: u64, extra: u64, total: u64| -> i64 {
            if total == 0 {
                return 0;
            }
            // In u128 so that neither the sum nor the percentage can overflow.
            let total = u128::from(total);
            let used = (u128::from(requested) + u128::from(extra)).min(total);
            i64::try_from((total - used) * 100 / total).unwrap_or(0)
        };
        let least_allocated = (free(
            node.requested.cpu_millis,
            self.requests.cpu_millis,
            node.allocatable.cpu_millis,
        ) + free(
            node.requested.memory_bytes,
            self.requests.memory_bytes,
            node.allocatable.memory_bytes,
        )) / 2;
        let same_owner = self.owner.as_deref().map_or(0, |o| {
            node.pods
                .iter()
                .filter(|p| p.owner.as_deref() == Some(o))
                .count()
        });
        // Spreading weighs more than balance: replicas of one owner land on distinct nodes
        // while there are any.
        least_allocated - 1000 * same_owner as i64
    }
}

/// The first filter a node fails for `pod` (see [`PodQuery::filter`]).
pub fn filter(pod: &Value, node: &NodeInfo, nodes: &[NodeInfo]) -> Result<(), &'static str> {
    PodQuery::new(pod).filter(node, nodes)
}

/// The score of a node for `pod` (see [`PodQuery::score`]).
pub fn score(pod: &Value, node: &NodeInfo) -> i64 {
    PodQuery::new(pod).score(node)
}

/// Picks the node for `pod`, or says why none fits. Ties go to the node whose name
/// sorts first, so decisions are reproducible.
pub fn schedule(pod: &Value, nodes: &[NodeInfo]) -> Result<String, Unschedulable> {
    schedule_sampled(pod, nodes, 0, usize::MAX)
}

/// How many feasible nodes to find before choosing, as Kubernetes'
/// `percentageOfNodesToScore` adapts it: all of a small cluster, a shrinking share of a
/// large one, never fewer than 100.
pub fn feasible_nodes_to_find(total: usize) -> usize {
    if total <= 100 {
        return total;
    }
    let percent = 50usize.saturating_sub(total / 125).max(5);
    (total * percent / 100).max(100)
}

/// As [`schedule`], looking at nodes from `start` round the list and stopping once
/// `limit` feasible nodes were found (so large clusters cost what a sample costs).
pub fn schedule_sampled(
    pod: &Value,
    nodes: &[NodeInfo],
    start: usize,
    limit: usize,
) -> Result<String, Unschedulable> {
    schedule_index(pod, nodes, start, limit).map(|i| nodes[i].name.clone())
}

/// As [`schedule_sampled`], returning the chosen node's index in `nodes`.
pub fn schedule_index(
    pod: &Value,
    nodes: &[NodeInfo],
    start: usize,
    limit: usize,
) -> Result<usize, Unschedulable> {
    let query = PodQuery::new(pod);
    let mut reasons: HashMap<&'static str, usize> = HashMap::new();
    let mut best: Option<(i64, usize)> = None;
    let mut feasible = 0;
    let n = nodes.len();
    for i in 0..n {
        let index = (start + i) % n;
        let node = &nodes[index];
        match query.filter(node, nodes) {
            Err(reason) => *reasons.entry(reason).or_default() += 1,
            Ok(()) => {
                feasible += 1;
                let s = query.score(node);
                let better = match best {
                    None => true,
                    Some((b, chosen)) => s > b || (s == b && node.name < nodes[chosen].name),
                };
                if better {
                    best = Some((s, index));
                }
                if feasible >= limit {
                    break;
                }
            }
        }
    }
    if let Some((_, index)) = best {
        return Ok(index);
    }
    let mut parts: Vec<String> = reasons
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    parts.sort();
    let detail = if parts.is_empty() {
        String::new()
    } else {
        format!(" {}.", parts.join(", "))
    };
    Err(Unschedulable {
        message: format!("0/{} nodes are available:{detail}", nodes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ready: true,
            allocatable: Resources {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
                pods: 110,
            },
            ..Default::default()
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": spec})
    }

    #[test]
    fn data_driven_filters() {
        let mut tainted = node("tainted", &[]);
        tainted.taints = vec![json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})];
        let mut full = node("full", &[]);
        full.requested = Resources {
            cpu_millis: 1900,
            memory_bytes: 0,
            pods: 1,
        };
        let mut down = node("down", &[]);
        down.ready = false;
        let mut cordoned = node("cordoned", &[]);
        cordoned.unschedulable = true;
        let edge = node("edge", &[("zone", "edge"), ("disk", "ssd")]);
        let nodes = vec![tainted, full, down, cordoned, edge];
        let cases: Vec<(&str, Value, Result<&str, &str>)> = vec![
            (
                "no constraints",
                json!({"containers": [{"name": "c"}]}),
                Ok("edge"),
            ),
            (
                "needs cpu only one node lacks",
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}),
                Ok("edge"),
            ),
            (
                "node selector",
                json!({"nodeSelector": {"zone": "core"}, "containers": []}),
                Err("didn't match Pod's node affinity/selector"),
            ),
            (
                "taint without toleration",
                json!({"nodeSelector": {"zone": "nowhere"}, "containers": []}),
                Err("1 node(s) had untolerated taint"),
            ),
            (
                "affinity In",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}, "containers": []}),
                Ok("edge"),
            ),
            (
                "affinity NotIn",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}, "containers": []}),
                Ok("full"),
            ),
            (
                "too big",
                json!({"containers": [{"name": "c", "resources": {"limits": {"memory": "64Gi"}}}]}),
                Err("Insufficient memory"),
            ),
        ];
        for (name, spec, expected) in cases {
            let result = schedule(&pod(spec), &nodes);
            match (expected, &result) {
                (Ok(n), Ok(got)) => assert_eq!(got, n, "{name}"),
                (Err(fragment), Err(e)) => {
                    assert!(e.message.contains(fragment), "{name}: {}", e.message);
                    assert!(
                        e.message.starts_with("0/5 nodes are available:"),
                        "{name}: {}",
                        e.message
                    );
                }
                _ => panic!("{name}: {result:?}"),
            }
        }
        // The tolerating pod may use the tainted node.
        let tolerating = pod(
            json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}], "nodeSelector": {}, "containers": []}),
        );
        assert!(filter(&tolerating, &nodes[0], &nodes).is_ok());
    }

    #[test]
    fn replicas_spread_and_anti_affinity_separates() {
        let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]);
        let replica = json!({"metadata": {"name": "r", "namespace": "default", "labels": {"app": "web"}, "ownerReferences": owner}, "spec": {"containers": []}});
        let mut a = node("a", &[]);
        a.pods.push(pod_info(&replica));
        let b = node("b", &[]);
        assert_eq!(schedule(&replica, &[a.clone(), b.clone()]).unwrap(), "b");
        let anti = json!({"metadata": {"name": "x", "namespace": "default", "labels": {"app": "web"}}, "spec": {"containers": [], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}});
        let mut b_busy = b.clone();
        b_busy.pods.push(pod_info(&replica));
        let err = schedule(&anti, &[a.clone(), b_busy]).unwrap_err();
        assert!(
            err.message
                .contains("2 node(s) didn't match pod anti-affinity rules"),
            "{}",
            err.message
        );
        let with = json!({"metadata": {"name": "y", "namespace": "default"}, "spec": {"containers": [], "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}});
        assert_eq!(schedule(&with, &[a, b]).unwrap(), "a");
    }

    #[test]
    fn sampling_bounds_the_work_on_large_clusters() {
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        let nodes: Vec<NodeInfo> = (0..300).map(|i| node(&format!("n{i:03}"), &[])).collect();
        let p = pod(json!({"containers": []}));
        // With a sample of one, the node at the start index is chosen.
        assert_eq!(schedule_sampled(&p, &nodes, 7, 1).unwrap(), "n007");
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let mut busy = node("a-busy", &[]);
        busy.requested = Resources {
            cpu_millis: 1500,
            memory_bytes: 3 << 30,
            pods: 5,
        };
        let idle = node("z-idle", &[]);
        let p =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}));
        assert_eq!(schedule(&p, &[busy, idle]).unwrap(), "z-idle");
    }

    #[test]
    fn two_containers_requesting_huge_cpu_do_not_overflow_or_fit() {
        // Before the quantity module, `cpu: 1e30` twice was an unchecked u64 sum: a panic
        // in debug builds and, wrapped, a pod that "fit" in release builds. `1e30` is past
        // what a quantity holds and `1e28` past what a u64 of millicores holds.
        let mut roomy = node("roomy", &[]);
        roomy.allocatable.cpu_millis = u64::MAX / 2;
        roomy.allocatable.memory_bytes = u64::MAX / 2;
        let mut requests = Resources::default();
        for (cpu, memory) in [("1e30", "1"), ("1e28", "1"), ("1e16", "1"), ("1", "5e18")] {
            let container = |name: &str| json!({"name": name, "resources": {"requests": {"cpu": cpu, "memory": memory}}});
            let huge = pod(json!({"containers": [container("a"), container("b")]}));
            requests = pod_requests(&huge);
            let err = schedule(&huge, &[roomy.clone()]).unwrap_err();
            assert!(
                err.message.contains("Insufficient"),
                "{cpu}: {}",
                err.message
            );
        }
        assert_eq!(requests.memory_bytes, 10_000_000_000_000_000_000);
        // A node already carrying a saturated sum cannot take anything more either.
        roomy.allocatable.cpu_millis = u64::MAX;
        roomy.requested = Resources::default().saturating_add(pod_requests(&pod(
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1e30"}}}]}),
        )));
        assert_eq!(roomy.requested.cpu_millis, u64::MAX);
        let small =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1m"}}}]}));
        let err = schedule(&small, &[roomy]).unwrap_err();
        assert!(err.message.contains("Insufficient cpu"), "{}", err.message);
    }

    #[test]
    fn requests_and_allocatable_are_read_as_kubernetes_quantities() {
        let requests = pod_requests(&pod(json!({
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1.5", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": 0.25, "memory": "1e3"}}},
            {"name": "c", "resources": {"requests": {"cpu": "0", "memory": "-1"}}},
        ]})));
        assert_eq!(
            requests,
            Resources {
                cpu_millis: 3000,
                memory_bytes: 1 << 30,
                pods: 1
            }
        );
        let app_only = pod_requests(&pod(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1n", "memory": "1e3"}}}]})));
        assert_eq!(app_only.cpu_millis, 1501);
        assert_eq!(app_only.memory_bytes, (64 << 20) + 1000);
        let unreadable = pod_requests(&pod(
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "abc"}}}]}),
        ));
        assert_eq!(unreadable.cpu_millis, u64::MAX);
        let info = node_info(&json!({"metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}}));
        assert_eq!(
            info.allocatable,
            Resources {
                cpu_millis: 8000,
                memory_bytes: 32 << 30,
                pods: 110
            }
        );
    }
}
