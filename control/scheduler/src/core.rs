//! The scheduler's decision as a pure function: filter the nodes a pod can run on, score
//! the rest, pick the best. No IO and no clock, so every rule is tested with data.

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use skiff_api::quantity::Quantity;
use skiff_api::selector::LabelSelector;
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
    pub taints: Vec<Taint>,
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
fn quantity(value: Option<&KubeQuantity>, units: fn(&Quantity) -> u64, unreadable: u64) -> u64 {
    match value.map(Quantity::try_from) {
        None => 0,
        Some(Ok(q)) => units(&q),
        Some(Err(_)) => unreadable,
    }
}

/// Requests summed over `containers`, and the largest single container's:
/// `(cpu, memory, max cpu, max memory)`.
fn container_requests(containers: &[Container]) -> (u64, u64, u64, u64) {
    let mut total = (0, 0, 0, 0);
    for c in containers {
        let resources = c.resources.as_ref();
        let req = |r: &str, units: fn(&Quantity) -> u64| {
            // A limit without a request means a request of the same size.
            let request = resources
                .and_then(|x| x.requests.as_ref())
                .and_then(|m| m.get(r));
            let limit = resources
                .and_then(|x| x.limits.as_ref())
                .and_then(|m| m.get(r));
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
}

/// The requests of a pod: the sum over its containers, or the largest init container if
/// that is more, plus one pod slot.
pub fn pod_requests(pod: &Pod) -> Resources {
    let spec = pod.spec.as_ref();
    let app = container_requests(spec.map(|s| s.containers.as_slice()).unwrap_or_default());
    let init = container_requests(
        spec.and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default(),
    );
    Resources {
        cpu_millis: app.0.max(init.2),
        memory_bytes: app.1.max(init.3),
        pods: 1,
    }
}

/// Reads a node object into what the scheduler needs (requests are added by the caller).
pub fn node_info(node: &Node) -> NodeInfo {
    let (spec, status) = (node.spec.as_ref(), node.status.as_ref());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let allocatable = status.and_then(|s| s.allocatable.as_ref());
    let alloc = |r: &str, units: fn(&Quantity) -> u64| {
        quantity(allocatable.and_then(|a| a.get(r)), units, 0)
    };
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
        ready,
        unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
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
pub fn controller_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// What spreading and affinity need of a placed pod.
pub fn pod_info(pod: &Pod) -> PodInfo {
    PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        owner: controller_of(pod).map(str::to_string),
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    let value = taint.value.as_deref().unwrap_or_default();
    tolerations.iter().any(|t| {
        let t_effect = t.effect.as_deref().unwrap_or_default();
        let t_key = t.key.as_deref().unwrap_or_default();
        let operator = t.operator.as_deref().unwrap_or("Equal");
        let effect_ok = t_effect.is_empty() || t_effect == taint.effect;
        let key_ok = t_key.is_empty() && operator == "Exists" || t_key == taint.key;
        let value_ok = operator == "Exists" || t.value.as_deref().unwrap_or_default() == value;
        effect_ok && key_ok && value_ok
    })
}

fn match_expression(labels: &BTreeMap<String, String>, expr: &NodeSelectorRequirement) -> bool {
    match_value(labels.get(&expr.key), expr)
}

/// Applies a node selector requirement's operator and values to one actual value.
fn match_value(actual: Option<&String>, expr: &NodeSelectorRequirement) -> bool {
    let values = expr.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    let compared = || {
        actual
            .and_then(|a| number(a))
            .zip(values.first().and_then(|v| number(v)))
    };
    match expr.operator.as_str() {
        "In" => actual.is_some_and(|a| values.contains(a)),
        "NotIn" => actual.is_none_or(|a| !values.contains(a)),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        "Gt" => compared().is_some_and(|(a, v)| a > v),
        "Lt" => compared().is_some_and(|(a, v)| a < v),
        _ => false,
    }
}

fn matches_node_affinity(terms: Option<&[NodeSelectorTerm]>, node: &NodeInfo) -> bool {
    let Some(terms) = terms else {
        return true;
    };
    // Terms are ORed; expressions within a term are ANDed.
    terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|e| match_expression(&node.labels, e))
            && fields.iter().all(|e| {
                // The only field Kubernetes allows here is metadata.name.
                e.key == "metadata.name" && match_value(Some(&node.name), e)
            })
    })
}

/// Topology value of a node for `key` (`kubernetes.io/hostname` defaults to the name).
fn topology(node: &NodeInfo, key: &str) -> Option<String> {
    node.labels
        .get(key)
        .cloned()
        .or_else(|| (key == "kubernetes.io/hostname").then(|| node.name.clone()))
}

/// A required pod (anti-)affinity term, its selector parsed once per decision rather
/// than once per pod looked at.
struct AffinityTerm<'a> {
    /// The typed term holds an absent `topologyKey` as empty (validation refuses both),
    /// which names no domain.
    topology_key: &'a str,
    /// `None` for a term without a selector or with one that does not parse: such a term
    /// matches no pod.
    selector: Option<LabelSelector>,
    namespaces: &'a [String],
}

impl<'a> AffinityTerm<'a> {
    fn new(term: &'a PodAffinityTerm) -> Self {
        AffinityTerm {
            topology_key: &term.topology_key,
            selector: term
                .label_selector
                .as_ref()
                .and_then(|s| LabelSelector::from_typed(s).ok()),
            namespaces: term.namespaces.as_deref().unwrap_or_default(),
        }
    }

    /// Whether the term (`labelSelector`, `namespaces`, `topologyKey`) is satisfied by
    /// some pod in the same topology domain as `node`.
    fn satisfied(&self, pod_namespace: &str, node: &NodeInfo, nodes: &[NodeInfo]) -> bool {
        let key = self.topology_key;
        let Some(domain) = topology(node, key) else {
            return false;
        };
        let Some(selector) = &self.selector else {
            return false;
        };
        nodes
            .iter()
            .filter(|n| topology(n, key).as_deref() == Some(domain.as_str()))
            .any(|n| {
                n.pods.iter().any(|p| {
                    let ns_ok = if self.namespaces.is_empty() {
                        p.namespace == pod_namespace
                    } else {
                        self.namespaces.contains(&p.namespace)
                    };
                    ns_ok && selector.matches(&p.labels)
                })
            })
    }
}

/// What the filters and scores need from a pod, read from it once per decision rather
/// than once per node.
pub struct PodQuery<'a> {
    pub requests: Resources,
    tolerations: &'a [Toleration],
    node_selector: Option<&'a BTreeMap<String, String>>,
    node_affinity: Option<&'a [NodeSelectorTerm]>,
    pod_affinity: Vec<AffinityTerm<'a>>,
    pod_anti_affinity: Vec<AffinityTerm<'a>>,
    namespace: &'a str,
    owner: Option<&'a str>,
}

impl<'a> PodQuery<'a> {
    pub fn new(pod: &'a Pod) -> Self {
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let terms = |required: Option<&'a Vec<PodAffinityTerm>>| -> Vec<AffinityTerm<'a>> {
            required
                .into_iter()
                .flatten()
                .map(AffinityTerm::new)
                .collect()
        };
        PodQuery {
            requests: pod_requests(pod),
            tolerations: spec
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default(),
            node_selector: spec.and_then(|s| s.node_selector.as_ref()),
            node_affinity: affinity
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|s| s.node_selector_terms.as_slice()),
            pod_affinity: terms(
                affinity
                    .and_then(|a| a.pod_affinity.as_ref())
                    .and_then(|a| {
                        a.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    }),
            ),
            pod_anti_affinity: terms(
                affinity
                    .and_then(|a| a.pod_anti_affinity.as_ref())
                    .and_then(|a| {
                        a.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    }),
            ),
            namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
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
            if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !tolerates(self.tolerations, taint)
            {
                return Err("node(s) had untolerated taint");
            }
        }
        if !self
            .node_selector
            .into_iter()
            .flatten()
            .all(|(k, v)| node.labels.get(k) == Some(v))
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
            if !term.satisfied(self.namespace, node, nodes) {
                return Err("node(s) didn't match pod affinity rules");
            }
        }
        for term in &self.pod_anti_affinity {
            if term.satisfied(self.namespace, node, nodes) {
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
        let same_owner = self.owner.map_or(0, |o| {
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
pub fn filter(pod: &Pod, node: &NodeInfo, nodes: &[NodeInfo]) -> Result<(), &'static str> {
    PodQuery::new(pod).filter(node, nodes)
}

/// The score of a node for `pod` (see [`PodQuery::score`]).
pub fn score(pod: &Pod, node: &NodeInfo) -> i64 {
    PodQuery::new(pod).score(node)
}

/// Picks the node for `pod`, or says why none fits. Ties go to the node whose name
/// sorts first, so decisions are reproducible.
pub fn schedule(pod: &Pod, nodes: &[NodeInfo]) -> Result<String, Unschedulable> {
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
    pod: &Pod,
    nodes: &[NodeInfo],
    start: usize,
    limit: usize,
) -> Result<String, Unschedulable> {
    schedule_index(pod, nodes, start, limit).map(|i| nodes[i].name.clone())
}

/// As [`schedule_sampled`], returning the chosen node's index in `nodes`.
pub fn schedule_index(
    pod: &Pod,
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
    use serde_json::{json, Value};

    /// A typed object from JSON, so the tables below stay readable.
    fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).unwrap()
    }

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

    fn pod(spec: Value) -> Pod {
        typed(
            json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": spec}),
        )
    }

    #[test]
    fn data_driven_filters() {
        let mut tainted = node("tainted", &[]);
        tainted.taints = vec![typed(
            json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"}),
        )];
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
        let replica: Pod = typed(
            json!({"metadata": {"name": "r", "namespace": "default", "labels": {"app": "web"}, "ownerReferences": owner}, "spec": {"containers": []}}),
        );
        let mut a = node("a", &[]);
        a.pods.push(pod_info(&replica));
        let b = node("b", &[]);
        assert_eq!(schedule(&replica, &[a.clone(), b.clone()]).unwrap(), "b");
        let anti: Pod = typed(
            json!({"metadata": {"name": "x", "namespace": "default", "labels": {"app": "web"}}, "spec": {"containers": [], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
        );
        let mut b_busy = b.clone();
        b_busy.pods.push(pod_info(&replica));
        let err = schedule(&anti, &[a.clone(), b_busy]).unwrap_err();
        assert!(
            err.message
                .contains("2 node(s) didn't match pod anti-affinity rules"),
            "{}",
            err.message
        );
        let with: Pod = typed(
            json!({"metadata": {"name": "y", "namespace": "default"}, "spec": {"containers": [], "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
        );
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
            // A bare `0.25` is stored as this string by the API server (see
            // `skiff_api::object`); the typed object holds quantities as text.
            {"name": "b", "resources": {"limits": {"cpu": "0.25", "memory": "1e3"}}},
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
        let info = node_info(&typed(json!({"metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}})));
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
