//! Data-driven tests of the RBAC module: rule matching, the authorizer over a small
//! snapshot with the default policy, rule reviews, escalation checks, aggregation and
//! the default policy itself.

use super::policy::{AGGREGATE_TO_EDIT, AGGREGATE_TO_VIEW, AUTOUPDATE_ANNOTATION};
use super::*;
use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef,
    Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use std::collections::BTreeMap;

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn res_rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        ..PolicyRule::default()
    }
}

fn named(rule: PolicyRule, names: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(strings(names)),
        ..rule
    }
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: Some(strings(urls)),
        ..PolicyRule::default()
    }
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..ObjectMeta::default()
    }
}

fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
    Subject {
        kind: kind.to_string(),
        name: name.to_string(),
        namespace: namespace.map(str::to_string),
        api_group: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: RBAC_GROUP.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

fn role_binding(ns: &str, name: &str, role: RoleRef, subjects: Vec<Subject>) -> RoleBinding {
    RoleBinding {
        metadata: meta(name, Some(ns)),
        role_ref: role,
        subjects: Some(subjects),
    }
}

fn cluster_binding(name: &str, role: RoleRef, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: role,
        subjects: Some(subjects),
    }
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ClusterRole {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(name, None)
        },
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn selecting(mut role: ClusterRole, selectors: Vec<LabelSelector>) -> ClusterRole {
    role.aggregation_rule = Some(AggregationRule {
        cluster_role_selectors: Some(selectors),
    });
    role
}

fn match_label(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        match_expressions: None,
    }
}

fn match_expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.to_string(),
            operator: operator.to_string(),
            values: (!values.is_empty()).then(|| strings(values)),
        }]),
    }
}

/// A request in a compact form for tables: `verb`, `group/resource[/sub]`, namespace,
/// name; or a non-resource `verb path` when `resource` starts with `/`.
struct Request<'a> {
    verb: &'a str,
    resource: &'a str,
    namespace: &'a str,
    name: &'a str,
}

fn request<'a>(verb: &'a str, resource: &'a str, namespace: &'a str) -> Request<'a> {
    Request {
        verb,
        resource,
        namespace,
        name: "",
    }
}

impl<'a> Request<'a> {
    fn named(self, name: &'a str) -> Self {
        Request { name, ..self }
    }

    /// `apps/deployments/scale` is group `apps`; a resource without a group prefix
    /// (`pods/log`) is in the core group.
    fn attributes(&self, user: &'a UserInfo) -> Attributes<'a> {
        if self.resource.starts_with('/') {
            return Attributes::non_resource(user, self.verb, self.resource);
        }
        let parts: Vec<&str> = self.resource.split('/').collect();
        let (group, resource, sub) = match parts.as_slice() {
            [r] => ("", *r, ""),
            [g, r] if g.contains('.') || *g == "apps" => (*g, *r, ""),
            [r, s] => ("", *r, *s),
            [g, r, s] => (*g, *r, *s),
            _ => ("", self.resource, ""),
        };
        Attributes::resource(user, self.verb, group, resource, self.namespace)
            .with_subresource(sub)
            .with_name(self.name)
    }
}

#[test]
fn rule_matching_table() {
    let user = UserInfo::new("u", &[]);
    let get_pods = res_rule(&["get"], &[""], &["pods"]);
    #[rustfmt::skip]
    let cases: Vec<(PolicyRule, Request, bool)> = vec![
        (get_pods.clone(), request("get", "pods", "a"), true),
        (get_pods.clone(), request("list", "pods", "a"), false),
        (get_pods.clone(), request("get", "apps/pods", "a"), false),
        (get_pods.clone(), request("get", "configmaps", "a"), false),
        (get_pods.clone(), request("get", "pods/log", "a"), false),
        (res_rule(&["*"], &[""], &["pods"]), request("delete", "pods", "a"), true),
        (res_rule(&["get"], &["*"], &["pods"]), request("get", "apps/pods", "a"), true),
        (res_rule(&["get"], &[""], &["*"]), request("get", "pods/log", "a"), true),
        (res_rule(&["get"], &[""], &["*"]), request("get", "secrets", ""), true),
        (res_rule(&["get"], &[""], &["pods/log"]), request("get", "pods/log", "a"), true),
        (res_rule(&["get"], &[""], &["pods/log"]), request("get", "pods", "a"), false),
        (res_rule(&["get"], &[""], &["pods/log"]), request("get", "pods/status", "a"), false),
        (res_rule(&["get"], &["apps"], &["*/scale"]), request("get", "apps/deployments/scale", "a"), true),
        (res_rule(&["get"], &["apps"], &["*/scale"]), request("get", "apps/replicasets/scale", "a"), true),
        (res_rule(&["get"], &["apps"], &["*/scale"]), request("get", "apps/deployments", "a"), false),
        (res_rule(&["get"], &["apps"], &["*/scale"]), request("get", "apps/deployments/status", "a"), false),
        // Kubernetes has no `resource/*` pattern: it is only ever the literal string.
        (res_rule(&["get"], &[""], &["pods/*"]), request("get", "pods/log", "a"), false),
        (named(get_pods.clone(), &["web"]), request("get", "pods", "a").named("web"), true),
        (named(get_pods.clone(), &["web"]), request("get", "pods", "a").named("db"), false),
        (named(res_rule(&["list"], &[""], &["pods"]), &["web"]), request("list", "pods", "a"), false),
        (named(res_rule(&["create"], &[""], &["pods"]), &["web"]), request("create", "pods", "a"), false),
        (get_pods.clone(), request("get", "pods", "a").named("anything"), true),
        (url_rule(&["get"], &["/healthz"]), request("get", "/healthz", ""), true),
        (url_rule(&["get"], &["/healthz"]), request("get", "/healthz/etcd", ""), false),
        (url_rule(&["get"], &["/healthz"]), request("post", "/healthz", ""), false),
        (url_rule(&["get"], &["/apis/*"]), request("get", "/apis/apps/v1", ""), true),
        (url_rule(&["get"], &["/apis/*"]), request("get", "/apis/", ""), true),
        (url_rule(&["get"], &["/apis/*"]), request("get", "/apis", ""), false),
        (url_rule(&["*"], &["*"]), request("delete", "/anything/at/all", ""), true),
        // A rule of one kind never allows a request of the other.
        (url_rule(&["*"], &["*"]), request("get", "pods", "a"), false),
        (res_rule(&["*"], &["*"], &["*"]), request("get", "/healthz", ""), false),
        (res_rule(&[], &["*"], &["*"]), request("get", "pods", "a"), false),
    ];
    for (rule, req, expected) in cases {
        let attributes = req.attributes(&user);
        assert_eq!(
            rule_allows(&attributes, &rule),
            expected,
            "{rule:?} on {attributes:?}"
        );
    }
}

/// The defaults, plus: view for alice and edit for group devs in `a`, view for the
/// service account `a/builder` (namespace defaulted), a Role in `a` for carol, a
/// cluster-wide pod reader for group ops, and bindings whose roles do not exist.
fn snapshot() -> RbacSnapshot {
    let mut cluster_roles = default_cluster_roles();
    cluster_roles.push(cluster_role(
        "pod-reader",
        &[],
        vec![res_rule(&["get", "list"], &[""], &["pods"])],
    ));
    cluster_roles.push(cluster_role(
        "view-binder",
        &[],
        vec![named(
            res_rule(&["bind"], &[RBAC_GROUP], &["clusterroles"]),
            &["view"],
        )],
    ));
    let roles = vec![Role {
        metadata: meta("config-editor", Some("a")),
        rules: Some(vec![res_rule(&["*"], &[""], &["configmaps"])]),
    }];
    #[rustfmt::skip]
    let role_bindings = vec![
        role_binding("a", "alice-view", role_ref("ClusterRole", "view"), vec![subject("User", "alice", None)]),
        role_binding("a", "devs-edit", role_ref("ClusterRole", "edit"), vec![subject("Group", "devs", None)]),
        role_binding("a", "ci-view", role_ref("ClusterRole", "view"), vec![subject("ServiceAccount", "builder", None)]),
        role_binding("a", "carol-config", role_ref("Role", "config-editor"), vec![subject("User", "carol", None)]),
        role_binding("a", "dave-broken", role_ref("ClusterRole", "missing-role"), vec![subject("User", "dave", None)]),
        role_binding("b", "carol-elsewhere", role_ref("Role", "config-editor"), vec![subject("User", "carol", None)]),
        role_binding("b", "erin-binder", role_ref("ClusterRole", "view-binder"), vec![subject("User", "erin", None)]),
    ];
    let mut cluster_bindings = default_cluster_role_bindings();
    cluster_bindings.push(cluster_binding(
        "ops-pods",
        role_ref("ClusterRole", "pod-reader"),
        vec![subject("Group", "ops", None)],
    ));
    // A service account without a namespace stands for nobody in a ClusterRoleBinding.
    cluster_bindings.push(cluster_binding(
        "nobody",
        role_ref("ClusterRole", "cluster-admin"),
        vec![subject("ServiceAccount", "builder", None)],
    ));
    RbacSnapshot::new(roles, cluster_roles, role_bindings, cluster_bindings)
}

fn users() -> BTreeMap<&'static str, UserInfo> {
    let authenticated = |name: &str, groups: &[&str]| {
        let mut user = UserInfo::new(name, groups);
        user.groups.push(ALL_AUTHENTICATED.to_string());
        user
    };
    BTreeMap::from([
        ("alice", authenticated("alice", &[])),
        ("bob", authenticated("bob", &["devs"])),
        (
            "sa-a",
            authenticated(
                "system:serviceaccount:a:builder",
                &["system:serviceaccounts"],
            ),
        ),
        (
            "sa-b",
            authenticated(
                "system:serviceaccount:b:builder",
                &["system:serviceaccounts"],
            ),
        ),
        ("olivia", authenticated("olivia", &["ops"])),
        ("carol", authenticated("carol", &[])),
        ("dave", authenticated("dave", &[])),
        ("erin", authenticated("erin", &[])),
        ("mallory", UserInfo::new("mallory", &[])),
        ("root", authenticated("root", &[SYSTEM_MASTERS])),
        (
            "anonymous",
            UserInfo::new("system:anonymous", &[ALL_UNAUTHENTICATED]),
        ),
        ("node", authenticated("system:node:n1", &[NODES_GROUP])),
        ("scheduler", authenticated("system:kube-scheduler", &[])),
    ])
}

#[test]
fn authorization_matrix() {
    let snapshot = snapshot();
    let users = users();
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str, bool)] = &[
        // A RoleBinding to `view` grants reads in its namespace only, and no secrets.
        ("alice", "get", "pods", "a", true),
        ("alice", "list", "pods", "a", true),
        ("alice", "watch", "pods", "a", true),
        ("alice", "get", "pods/log", "a", true),
        ("alice", "get", "apps/deployments", "a", true),
        ("alice", "get", "pods", "b", false),
        ("alice", "list", "pods", "", false),
        ("alice", "get", "secrets", "a", false),
        ("alice", "create", "pods", "a", false),
        ("alice", "delete", "pods", "a", false),
        ("alice", "create", "pods/portforward", "a", false),
        // `edit` through a group: writes and secrets, nothing of RBAC, no status.
        ("bob", "create", "pods", "a", true),
        ("bob", "get", "pods", "a", true),
        ("bob", "get", "secrets", "a", true),
        ("bob", "create", "secrets", "a", true),
        ("bob", "update", "apps/deployments/scale", "a", true),
        ("bob", "create", "rbac.authorization.k8s.io/rolebindings", "a", false),
        ("bob", "update", "pods/status", "a", false),
        ("bob", "create", "pods", "b", false),
        // A service account subject without a namespace is in the binding's.
        ("sa-a", "get", "pods", "a", true),
        ("sa-a", "get", "pods", "b", false),
        ("sa-b", "get", "pods", "a", false),
        // A ClusterRoleBinding grants in every namespace and cluster-wide.
        ("olivia", "get", "pods", "a", true),
        ("olivia", "get", "pods", "b", true),
        ("olivia", "list", "pods", "", true),
        ("olivia", "delete", "pods", "a", false),
        // A Role binds only in its own namespace; a missing role grants nothing.
        ("carol", "create", "configmaps", "a", true),
        ("carol", "get", "configmaps", "b", false),
        ("carol", "get", "pods", "a", false),
        ("dave", "get", "pods", "a", false),
        ("mallory", "get", "pods", "a", false),
        ("mallory", "get", "/healthz", "", false),
        // system:masters gets everything through the default cluster-admin binding.
        ("root", "delete", "nodes", "", true),
        ("root", "create", "widgets.example.com/widgets", "z", true),
        ("root", "get", "/metrics", "", true),
        ("root", "post", "/anything", "", true),
        // The unauthenticated get health and version, nothing else.
        ("anonymous", "get", "/healthz", "", true),
        ("anonymous", "get", "/livez", "", true),
        ("anonymous", "get", "/version", "", true),
        ("anonymous", "get", "/api", "", false),
        ("anonymous", "get", "pods", "a", false),
        ("anonymous", "create", "authorization.k8s.io/selfsubjectaccessreviews", "", false),
        // Everyone authenticated may discover APIs and ask about itself.
        ("alice", "create", "authorization.k8s.io/selfsubjectaccessreviews", "", true),
        ("alice", "create", "authorization.k8s.io/selfsubjectrulesreviews", "", true),
        ("alice", "create", "authentication.k8s.io/selfsubjectreviews", "", true),
        ("alice", "get", "/apis/apps/v1", "", true),
        ("alice", "get", "/metrics", "", false),
        // Nodes and the scheduler through their default bindings.
        ("node", "get", "nodes", "", true),
        ("node", "patch", "nodes/status", "", true),
        ("node", "get", "secrets", "a", true),
        ("node", "create", "pods/binding", "a", false),
        ("node", "delete", "nodes", "", false),
        ("scheduler", "create", "pods/binding", "a", true),
        ("scheduler", "create", "pods", "a", false),
    ];
    for (who, verb, resource, namespace, expected) in cases {
        let user = &users[who];
        let attributes = request(verb, resource, namespace).attributes(user);
        let decision = snapshot.authorize(&attributes);
        assert_eq!(
            decision.is_allowed(),
            *expected,
            "{who} {verb} {resource} in {namespace:?}: {decision:?}"
        );
    }
}

#[test]
fn allow_reasons_name_the_binding_and_subject() {
    let snapshot = snapshot();
    let users = users();
    #[rustfmt::skip]
    let cases = [
        ("alice", "pods", "a", r#"RBAC: allowed by RoleBinding "alice-view/a" of ClusterRole "view" to User "alice""#),
        ("sa-a", "pods", "a", r#"RBAC: allowed by RoleBinding "ci-view/a" of ClusterRole "view" to ServiceAccount "builder/a""#),
        ("root", "nodes", "", r#"RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole "cluster-admin" to Group "system:masters""#),
        ("olivia", "pods", "b", r#"RBAC: allowed by ClusterRoleBinding "ops-pods" of ClusterRole "pod-reader" to Group "ops""#),
    ];
    for (who, resource, namespace, reason) in cases {
        let attributes = request("get", resource, namespace).attributes(&users[who]);
        assert_eq!(
            snapshot.authorize(&attributes),
            Decision::Allow(reason.to_string())
        );
    }
}

#[test]
fn no_opinion_names_unresolvable_roles_of_the_user_only() {
    let snapshot = snapshot();
    let users = users();
    let dave = request("get", "pods", "a").attributes(&users["dave"]);
    assert_eq!(
        snapshot.authorize(&dave),
        Decision::NoOpinion(
            r#"RBAC: clusterrole.rbac.authorization.k8s.io "missing-role" not found"#.to_string()
        )
    );
    let carol = request("get", "configmaps", "b").attributes(&users["carol"]);
    assert_eq!(
        snapshot.authorize(&carol),
        Decision::NoOpinion(
            r#"RBAC: role.rbac.authorization.k8s.io "config-editor" not found"#.to_string()
        )
    );
    let mallory = request("get", "pods", "a").attributes(&users["mallory"]);
    assert_eq!(
        snapshot.authorize(&mallory),
        Decision::NoOpinion(String::new())
    );
}

fn allows(rules: &[PolicyRule], user: &UserInfo, req: Request<'_>) -> bool {
    rules_allow(&req.attributes(user), rules)
}

#[test]
fn rules_for_lists_cluster_and_namespace_rules() {
    let snapshot = snapshot();
    let alice = &users()["alice"];
    let in_a = snapshot.rules_for(alice, "a");
    assert!(!in_a.incomplete);
    assert_eq!(in_a.evaluation_error, None);
    assert!(allows(
        &in_a.resource_rules,
        alice,
        request("list", "pods", "a")
    ));
    assert!(allows(
        &in_a.resource_rules,
        alice,
        request("create", "authorization.k8s.io/selfsubjectrulesreviews", "")
    ));
    assert!(!allows(
        &in_a.resource_rules,
        alice,
        request("get", "secrets", "a")
    ));
    assert!(allows(
        &in_a.non_resource_rules,
        alice,
        request("get", "/apis", "")
    ));
    assert!(in_a
        .resource_rules
        .iter()
        .all(|r| r.non_resource_urls.is_none()));
    assert!(in_a
        .non_resource_rules
        .iter()
        .all(|r| r.resources.is_none()));
    let cluster_wide = snapshot.rules_for(alice, "");
    assert!(!allows(
        &cluster_wide.resource_rules,
        alice,
        request("list", "pods", "a")
    ));
    assert!(allows(
        &cluster_wide.non_resource_rules,
        alice,
        request("get", "/healthz", "")
    ));
}

#[test]
fn rules_for_a_binding_to_a_missing_role_is_incomplete() {
    let snapshot = snapshot();
    let dave = &users()["dave"];
    let rules = snapshot.rules_for(dave, "a");
    assert!(rules.incomplete);
    assert_eq!(
        rules.evaluation_error.as_deref(),
        Some(r#"clusterrole.rbac.authorization.k8s.io "missing-role" not found"#)
    );
    // What the user does hold is still there.
    assert!(allows(
        &rules.resource_rules,
        dave,
        request(
            "create",
            "authorization.k8s.io/selfsubjectaccessreviews",
            ""
        )
    ));
}

#[test]
fn covers_breaks_requested_rules_into_atoms() {
    let get_pods = res_rule(&["get"], &[""], &["pods"]);
    let everything = vec![res_rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])];
    let web = named(get_pods.clone(), &["web"]);
    let apis = url_rule(&["get"], &["/apis/*"]);
    #[rustfmt::skip]
    let cases: Vec<(Vec<PolicyRule>, Vec<PolicyRule>, Vec<PolicyRule>)> = vec![
        // (owner, requested, uncovered)
        (vec![get_pods.clone()], vec![get_pods.clone()], vec![]),
        (vec![get_pods.clone()], vec![res_rule(&["*"], &[""], &["pods"])], vec![res_rule(&["*"], &[""], &["pods"])]),
        (vec![res_rule(&["get"], &[""], &["*"])], vec![res_rule(&["get"], &[""], &["pods", "pods/log"])], vec![]),
        (vec![get_pods.clone()], vec![res_rule(&["get", "list"], &[""], &["pods"])], vec![res_rule(&["list"], &[""], &["pods"])]),
        (everything.clone(), vec![res_rule(&["*"], &["*"], &["*"]), url_rule(&["post"], &["/x"])], vec![]),
        (vec![web.clone()], vec![web.clone()], vec![]),
        (vec![get_pods.clone()], vec![web.clone()], vec![]),
        (vec![web.clone()], vec![get_pods.clone()], vec![get_pods.clone()]),
        (vec![web.clone()], vec![named(get_pods.clone(), &["web", "db"])], vec![named(get_pods.clone(), &["db"])]),
        (vec![apis.clone()], vec![url_rule(&["get"], &["/apis/apps", "/apis/*"])], vec![]),
        (vec![apis.clone()], vec![url_rule(&["get"], &["/api"])], vec![url_rule(&["get"], &["/api"])]),
        (vec![apis.clone()], vec![url_rule(&["post"], &["/apis/apps"])], vec![url_rule(&["post"], &["/apis/apps"])]),
        (vec![get_pods.clone()], vec![url_rule(&["get"], &["/healthz"])], vec![url_rule(&["get"], &["/healthz"])]),
        // Owner patterns are compared literally, as in Kubernetes.
        (vec![res_rule(&["get"], &["apps"], &["*/scale"])], vec![res_rule(&["get"], &["apps"], &["deployments/scale"])], vec![res_rule(&["get"], &["apps"], &["deployments/scale"])]),
    ];
    for (owner, requested, uncovered) in cases {
        let (covered, missing) = covers(&owner, &requested);
        assert_eq!(missing, uncovered, "{owner:?} covering {requested:?}");
        assert_eq!(covered, uncovered.is_empty());
    }
}

#[test]
fn role_grants_need_the_rules_in_that_namespace() {
    let snapshot = snapshot();
    let users = users();
    let get_pods = vec![res_rule(&["get"], &[""], &["pods"])];
    assert_eq!(
        snapshot.check_role_grant(&users["bob"], "a", &get_pods),
        Ok(())
    );
    assert!(snapshot
        .check_role_grant(&users["bob"], "b", &get_pods)
        .is_err());
    assert_eq!(
        snapshot.check_role_grant(&users["root"], "b", &get_pods),
        Ok(())
    );
    let grant_rbac = vec![res_rule(
        &["create", "get"],
        &[RBAC_GROUP],
        &["rolebindings"],
    )];
    let error = snapshot
        .check_role_grant(&users["bob"], "a", &grant_rbac)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "user \"bob\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC \
         permissions not currently held:\n{APIGroups:[\"rbac.authorization.k8s.io\"], \
         Resources:[\"rolebindings\"], Verbs:[\"create\" \"get\"]}"
    );
}

#[test]
fn escalation_errors_mention_unresolvable_roles_of_the_owner() {
    let snapshot = snapshot();
    let dave = &users()["dave"];
    let error = snapshot
        .check_role_grant(dave, "a", &[res_rule(&["get"], &[""], &["pods"])])
        .unwrap_err();
    assert!(error.to_string().ends_with(
        "; resolution errors: [clusterrole.rbac.authorization.k8s.io \"missing-role\" not found]"
    ));
}

#[test]
fn cluster_role_grants_need_cluster_wide_rules_and_full_authority_to_aggregate() {
    let snapshot = snapshot();
    let users = users();
    let readers = cluster_role("readers", &[], vec![res_rule(&["get"], &[""], &["pods"])]);
    assert!(snapshot
        .check_cluster_role_grant(&users["bob"], &readers, None)
        .is_err());
    assert_eq!(
        snapshot.check_cluster_role_grant(&users["olivia"], &readers, None),
        Ok(())
    );
    let aggregating = selecting(
        cluster_role("agg", &[], vec![]),
        vec![match_label("x", "y")],
    );
    assert_eq!(
        snapshot.check_cluster_role_grant(&users["olivia"], &aggregating, None),
        Err(EscalationError::AggregationRule)
    );
    assert_eq!(
        snapshot.check_cluster_role_grant(&users["root"], &aggregating, None),
        Ok(())
    );
    // Removing an aggregation rule needs the same authority as setting one.
    assert_eq!(
        snapshot.check_cluster_role_grant(&users["olivia"], &readers, Some(&aggregating)),
        Err(EscalationError::AggregationRule)
    );
}

#[test]
fn binding_grants_need_every_rule_of_the_role() {
    let snapshot = snapshot();
    let bob = &users()["bob"];
    assert_eq!(
        snapshot.check_binding_grant(bob, "a", &role_ref("ClusterRole", "view")),
        Ok(())
    );
    assert!(matches!(
        snapshot.check_binding_grant(bob, "a", &role_ref("ClusterRole", "admin")),
        Err(EscalationError::NotHeld { .. })
    ));
    assert!(snapshot
        .check_binding_grant(bob, "b", &role_ref("ClusterRole", "view"))
        .is_err());
    assert_eq!(
        snapshot.check_binding_grant(bob, "a", &role_ref("ClusterRole", "nope")),
        Err(EscalationError::RoleRef(
            RoleRefError::ClusterRoleNotFound {
                name: "nope".to_string()
            }
        ))
    );
}

#[test]
fn bind_and_escalate_checks_are_requests_on_the_role() {
    let snapshot = snapshot();
    let erin = &users()["erin"];
    let view = role_ref("ClusterRole", "view");
    let edit = role_ref("ClusterRole", "edit");
    let allowed = |r: &RoleRef, ns: &str| {
        bind_attributes(erin, r, ns).is_some_and(|a| snapshot.authorize(&a).is_allowed())
    };
    assert!(allowed(&view, "b"));
    assert!(!allowed(&view, "a"));
    assert!(!allowed(&edit, "b"));
    assert!(bind_attributes(erin, &role_ref("Other", "view"), "b").is_none());
    let escalate = escalate_attributes(erin, "roles", "b", "r");
    assert_eq!(
        (escalate.verb, escalate.api_group, escalate.resource),
        ("escalate", RBAC_GROUP, "roles")
    );
    assert!(!snapshot.authorize(&escalate).is_allowed());
    assert!(snapshot
        .authorize(&escalate_attributes(&users()["root"], "roles", "b", "r"))
        .is_allowed());
}

fn rules_of<'a>(roles: &'a [(String, Vec<PolicyRule>)], name: &str) -> &'a [PolicyRule] {
    roles
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, rules)| rules.as_slice())
        .unwrap_or_default()
}

fn default_rules(name: &str) -> Vec<PolicyRule> {
    default_cluster_roles()
        .into_iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
        .and_then(|r| r.rules)
        .unwrap_or_default()
}

#[test]
fn admin_contains_edit_contains_view() {
    let (admin, edit, view) = (
        default_rules("admin"),
        default_rules("edit"),
        default_rules("view"),
    );
    assert_eq!(view, default_rules("system:aggregate-to-view"));
    assert!(view.iter().all(|r| edit.contains(r)));
    assert!(edit.iter().all(|r| admin.contains(r)));
    assert!(covers(&admin, &default_rules("system:aggregate-to-admin")).0);
    assert!(!covers(&edit, &default_rules("system:aggregate-to-admin")).0);
    assert!(!covers(&view, &edit).0);
    let user = UserInfo::new("u", &[]);
    assert!(!allows(&view, &user, request("get", "secrets", "a")));
    assert!(!allows(&view, &user, request("create", "pods", "a")));
    assert!(allows(&edit, &user, request("get", "secrets", "a")));
    assert!(!allows(
        &edit,
        &user,
        request("get", "coordination.k8s.io/leases", "a")
    ));
}

#[test]
fn a_role_labelled_for_view_reaches_view_edit_and_admin() {
    let widgets = res_rule(&["get"], &["example.com"], &["widgets"]);
    let mut roles = default_cluster_roles();
    roles.push(cluster_role(
        "widget-viewer",
        &[(AGGREGATE_TO_VIEW, "true")],
        vec![widgets.clone()],
    ));
    let aggregated = aggregate(&roles);
    for name in ["view", "edit", "admin"] {
        assert!(rules_of(&aggregated, name).contains(&widgets), "{name}");
    }
    // The same answer whatever order the roles come in.
    roles.reverse();
    let reversed = aggregate(&roles);
    for name in ["view", "edit", "admin"] {
        assert_eq!(
            rules_of(&reversed, name),
            rules_of(&aggregated, name),
            "{name}"
        );
    }
}

#[test]
fn default_aggregated_roles_are_already_at_the_fixed_point() {
    let roles = default_cluster_roles();
    let aggregated = aggregate(&roles);
    assert_eq!(aggregated.len(), 3);
    for (name, rules) in &aggregated {
        assert_eq!(rules, &default_rules(name), "{name}");
        assert!(!rules.is_empty(), "{name}");
    }
}

#[test]
fn aggregation_selectors_follow_label_selector_semantics() {
    let r1 = res_rule(&["get"], &[""], &["pods"]);
    let r2 = res_rule(&["get"], &[""], &["services"]);
    let source_a = cluster_role("a", &[("tier", "web")], vec![r1.clone()]);
    let source_b = cluster_role("b", &[("tier", "db")], vec![r2.clone()]);
    #[rustfmt::skip]
    let cases: Vec<(LabelSelector, Option<Vec<PolicyRule>>)> = vec![
        (match_label("tier", "web"), Some(vec![r1.clone()])),
        (match_expression("tier", "In", &["web", "db"]), Some(vec![r1.clone(), r2.clone()])),
        (match_expression("tier", "NotIn", &["web"]), Some(vec![r2.clone()])),
        (match_expression("tier", "Exists", &[]), Some(vec![r1.clone(), r2.clone()])),
        (match_expression("tier", "DoesNotExist", &[]), Some(vec![])),
        // The empty selector selects everything, as Kubernetes' LabelSelectorAsSelector.
        (LabelSelector::default(), Some(vec![r1.clone(), r2.clone()])),
        // Invalid selectors leave the role alone instead of selecting too much.
        (match_expression("tier", "Sometimes", &["web"]), None),
        (match_expression("tier", "In", &[]), None),
        (match_expression("tier", "Exists", &["web"]), None),
        (match_label("tier", "web,db"), None),
        (match_label("bad key", "web"), None),
    ];
    for (selector, expected) in cases {
        let target = selecting(cluster_role("target", &[], vec![]), vec![selector.clone()]);
        let result = aggregate(&[source_a.clone(), source_b.clone(), target]);
        let rules = result
            .into_iter()
            .find(|(n, _)| n == "target")
            .map(|(_, r)| r);
        assert_eq!(rules, expected, "{selector:?}");
    }
}

#[test]
fn aggregation_excludes_itself_and_repeats() {
    let r1 = res_rule(&["get"], &[""], &["pods"]);
    let r1_spelled_out = PolicyRule {
        resource_names: Some(vec![]),
        ..r1.clone()
    };
    let own = res_rule(&["delete"], &[""], &["pods"]);
    let target = selecting(
        cluster_role("target", &[("x", "y")], vec![own]),
        vec![match_label("x", "y")],
    );
    let roles = [
        target,
        cluster_role("s1", &[("x", "y")], vec![r1.clone()]),
        cluster_role("s2", &[("x", "y")], vec![r1_spelled_out]),
    ];
    assert_eq!(aggregate(&roles), vec![("target".to_string(), vec![r1])]);
    let nothing = selecting(
        cluster_role("empty", &[], vec![res_rule(&["get"], &[""], &["stale"])]),
        vec![],
    );
    assert_eq!(aggregate(&[nothing]), vec![("empty".to_string(), vec![])]);
}

#[test]
fn aggregation_cycles_reach_the_least_fixed_point() {
    let r1 = res_rule(&["get"], &[""], &["pods"]);
    let r2 = res_rule(&["get"], &[""], &["services"]);
    let stale = res_rule(&["get"], &[""], &["stale"]);
    let a = selecting(
        cluster_role("a", &[("to-b", "true")], vec![stale.clone()]),
        vec![match_label("to-a", "true")],
    );
    let b = selecting(
        cluster_role("b", &[("to-a", "true")], vec![stale.clone()]),
        vec![match_label("to-b", "true")],
    );
    let c = cluster_role("c", &[("to-a", "true")], vec![r1.clone()]);
    let d = cluster_role("d", &[("to-b", "true")], vec![r2.clone()]);
    let with_both = aggregate(&[a.clone(), b.clone(), c, d.clone()]);
    for name in ["a", "b"] {
        let rules = rules_of(&with_both, name);
        assert!(
            rules.contains(&r1) && rules.contains(&r2) && !rules.contains(&stale),
            "{name}: {rules:?}"
        );
    }
    // Once `c` is gone its rule leaves both, although each still selects the other.
    let without_c = aggregate(&[a, b, d]);
    assert_eq!(rules_of(&without_c, "a"), [r2]);
    assert_eq!(rules_of(&without_c, "b"), rules_of(&without_c, "a"));
}

#[test]
fn default_objects_carry_bootstrap_metadata() {
    let label = |m: &ObjectMeta| {
        m.labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/bootstrapping"))
            .cloned()
    };
    let autoupdate = |m: &ObjectMeta| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(AUTOUPDATE_ANNOTATION))
            .cloned()
    };
    let roles = default_cluster_roles();
    let bindings = default_cluster_role_bindings();
    let metas = roles
        .iter()
        .map(|r| &r.metadata)
        .chain(bindings.iter().map(|b| &b.metadata));
    for m in metas {
        assert_eq!(label(m).as_deref(), Some("rbac-defaults"), "{:?}", m.name);
        assert_eq!(autoupdate(m).as_deref(), Some("true"), "{:?}", m.name);
    }
    for binding in &bindings {
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert!(roles
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())));
    }
    let labels_of = |name: &str| {
        roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .and_then(|r| r.metadata.labels.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        labels_of("view").get(AGGREGATE_TO_EDIT).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels_of("system:aggregate-to-view")
            .get(AGGREGATE_TO_VIEW)
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn default_rules_are_sorted_and_well_formed() {
    let sorted = |v: &[String]| v.windows(2).all(|w| w[0] < w[1]);
    for role in default_cluster_roles() {
        for rule in role.rules.iter().flatten() {
            let lists = [
                Some(rule.verbs.clone()),
                rule.api_groups.clone(),
                rule.resources.clone(),
                rule.resource_names.clone(),
                rule.non_resource_urls.clone(),
            ];
            assert!(
                lists.iter().flatten().all(|l| sorted(l)),
                "{:?}: {rule:?}",
                role.metadata.name
            );
            let is_resource_rule = rule.resources.is_some() && rule.api_groups.is_some();
            assert!(
                is_resource_rule != rule.non_resource_urls.is_some(),
                "{rule:?}"
            );
            assert!(!rule.verbs.is_empty());
        }
    }
}
