//! The registry of resource kinds skiff serves: names, scope, short names and subresources.
//!
//! This is the single table the API server, discovery, the OpenAPI document, the CLI and
//! the store keys are derived from, so adding a kind is one entry here plus its typed
//! decoding in [`crate::object`].

/// Static description of one served resource (one REST collection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Plural lower-case name used in URLs (`pods`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served under `{name}/{sub}`.
    pub subresources: &'static [Subresource],
    /// The verbs the collection serves: [`ALL_VERBS`] for stored kinds, `create` alone for
    /// reviews (SelfSubjectAccessReview, TokenReview), which are answered, never stored.
    pub verbs: &'static [&'static str],
    /// Whether the kind has a `spec` whose change bumps `metadata.generation`.
    pub has_generation: bool,
}

/// A subresource and the kind its requests and responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// Verbs every full collection resource supports.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

const fn status_of(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        group,
        version,
        kind,
        verbs: STATUS_VERBS,
    }
}

const SCALE: Subresource = Subresource {
    name: "scale",
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    verbs: STATUS_VERBS,
};

/// `Namespace` (core).
pub const NAMESPACES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &[status_of("", "v1", "Namespace")],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Pod` (core).
pub const PODS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &[
        status_of("", "v1", "Pod"),
        Subresource {
            name: "binding",
            group: "",
            version: "v1",
            kind: "Binding",
            verbs: &["create"],
        },
        Subresource {
            name: "log",
            group: "",
            version: "v1",
            kind: "Pod",
            verbs: &["get"],
        },
        Subresource {
            name: "portforward",
            group: "",
            version: "v1",
            kind: "PodPortForwardOptions",
            verbs: &["create", "get"],
        },
    ],
    verbs: ALL_VERBS,
    has_generation: true,
};

/// `Node` (core).
pub const NODES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &[status_of("", "v1", "Node")],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Service` (core).
pub const SERVICES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    subresources: &[status_of("", "v1", "Service")],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Endpoints` (core).
pub const ENDPOINTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `EndpointSlice` (discovery.k8s.io): a Service's endpoints, at most 100 per slice.
pub const ENDPOINT_SLICES: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Event` (core).
pub const EVENTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `ConfigMap` (core).
pub const CONFIG_MAPS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Secret` (core).
pub const SECRETS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Deployment` (apps).
pub const DEPLOYMENTS: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &[status_of("apps", "v1", "Deployment"), SCALE],
    verbs: ALL_VERBS,
    has_generation: true,
};

/// `ReplicaSet` (apps).
pub const REPLICA_SETS: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    categories: &["all"],
    subresources: &[status_of("apps", "v1", "ReplicaSet"), SCALE],
    verbs: ALL_VERBS,
    has_generation: true,
};

/// `Lease` (coordination.k8s.io).
pub const LEASES: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `RuntimeClass` (node.k8s.io, cluster-scoped): which runtime handler a pod's
/// `runtimeClassName` selects on the node.
pub const RUNTIME_CLASSES: ResourceInfo = ResourceInfo {
    group: "node.k8s.io",
    version: "v1",
    kind: "RuntimeClass",
    plural: "runtimeclasses",
    singular: "runtimeclass",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `Ingress` (networking.k8s.io): HTTP routes from hosts and paths to Services; its
/// status carries the addresses the class's controller serves it on.
pub const INGRESSES: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "Ingress",
    plural: "ingresses",
    singular: "ingress",
    namespaced: true,
    short_names: &["ing"],
    categories: &[],
    subresources: &[status_of("networking.k8s.io", "v1", "Ingress")],
    verbs: ALL_VERBS,
    has_generation: true,
};

/// `IngressClass` (networking.k8s.io, cluster-scoped): which controller implements the
/// Ingresses that name it.
pub const INGRESS_CLASSES: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "IngressClass",
    plural: "ingressclasses",
    singular: "ingressclass",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    // As Kubernetes' ingressClassStrategy: a spec change bumps the generation.
    verbs: ALL_VERBS,
    has_generation: true,
};

const fn rbac(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        verbs: ALL_VERBS,
        has_generation: false,
    }
}

/// `Role` (`rbac.authorization.k8s.io/v1`).
pub const ROLES: ResourceInfo = rbac("Role", "roles", "role", true);
/// `ClusterRole` (`rbac.authorization.k8s.io/v1`).
pub const CLUSTER_ROLES: ResourceInfo = rbac("ClusterRole", "clusterroles", "clusterrole", false);
/// `RoleBinding` (`rbac.authorization.k8s.io/v1`).
pub const ROLE_BINDINGS: ResourceInfo = rbac("RoleBinding", "rolebindings", "rolebinding", true);
/// `ClusterRoleBinding` (`rbac.authorization.k8s.io/v1`).
pub const CLUSTER_ROLE_BINDINGS: ResourceInfo = rbac(
    "ClusterRoleBinding",
    "clusterrolebindings",
    "clusterrolebinding",
    false,
);

/// `ServiceAccount` (core), with the `token` subresource (TokenRequest).
pub const SERVICE_ACCOUNTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    subresources: &[Subresource {
        name: "token",
        group: "authentication.k8s.io",
        version: "v1",
        kind: "TokenRequest",
        verbs: &["create"],
    }],
    verbs: ALL_VERBS,
    has_generation: false,
};

/// `CertificateSigningRequest` (`certificates.k8s.io/v1`): `status` carries the issued
/// certificate, `approval` the Approved/Denied conditions (`kubectl certificate approve`).
pub const CERTIFICATE_SIGNING_REQUESTS: ResourceInfo = ResourceInfo {
    group: "certificates.k8s.io",
    version: "v1",
    kind: "CertificateSigningRequest",
    plural: "certificatesigningrequests",
    singular: "certificatesigningrequest",
    namespaced: false,
    short_names: &["csr"],
    categories: &[],
    subresources: &[
        status_of("certificates.k8s.io", "v1", "CertificateSigningRequest"),
        Subresource {
            name: "approval",
            group: "certificates.k8s.io",
            version: "v1",
            kind: "CertificateSigningRequest",
            verbs: STATUS_VERBS,
        },
    ],
    verbs: ALL_VERBS,
    has_generation: false,
};

const CREATE_ONLY: &[&str] = &["create"];

const fn review(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        verbs: CREATE_ONLY,
        has_generation: false,
    }
}

/// Reviews: answered from the request and the cluster's policy, never stored.
pub const SELF_SUBJECT_ACCESS_REVIEWS: ResourceInfo = review(
    "authorization.k8s.io",
    "SelfSubjectAccessReview",
    "selfsubjectaccessreviews",
    "selfsubjectaccessreview",
    false,
);
pub const SELF_SUBJECT_RULES_REVIEWS: ResourceInfo = review(
    "authorization.k8s.io",
    "SelfSubjectRulesReview",
    "selfsubjectrulesreviews",
    "selfsubjectrulesreview",
    false,
);
pub const SUBJECT_ACCESS_REVIEWS: ResourceInfo = review(
    "authorization.k8s.io",
    "SubjectAccessReview",
    "subjectaccessreviews",
    "subjectaccessreview",
    false,
);
pub const LOCAL_SUBJECT_ACCESS_REVIEWS: ResourceInfo = review(
    "authorization.k8s.io",
    "LocalSubjectAccessReview",
    "localsubjectaccessreviews",
    "localsubjectaccessreview",
    true,
);
pub const SELF_SUBJECT_REVIEWS: ResourceInfo = review(
    "authentication.k8s.io",
    "SelfSubjectReview",
    "selfsubjectreviews",
    "selfsubjectreview",
    false,
);
pub const TOKEN_REVIEWS: ResourceInfo = review(
    "authentication.k8s.io",
    "TokenReview",
    "tokenreviews",
    "tokenreview",
    false,
);

/// Every resource skiff serves, in discovery order.
pub const RESOURCES: &[ResourceInfo] = &[
    NAMESPACES,
    PODS,
    NODES,
    SERVICES,
    ENDPOINTS,
    ENDPOINT_SLICES,
    EVENTS,
    CONFIG_MAPS,
    SECRETS,
    DEPLOYMENTS,
    REPLICA_SETS,
    LEASES,
    RUNTIME_CLASSES,
    INGRESSES,
    INGRESS_CLASSES,
    SERVICE_ACCOUNTS,
    ROLES,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    CLUSTER_ROLE_BINDINGS,
    CERTIFICATE_SIGNING_REQUESTS,
    SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
    SUBJECT_ACCESS_REVIEWS,
    LOCAL_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_REVIEWS,
    TOKEN_REVIEWS,
];

impl ResourceInfo {
    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Resource name qualified by group, as Kubernetes error messages write it
    /// (`pods`, `deployments.apps`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The URL prefix of this resource's group-version (`/api/v1`, `/apis/apps/v1`).
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether objects of this kind are kept in the store (reviews are not).
    pub fn is_stored(&self) -> bool {
        self.verbs.contains(&"get")
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

/// Finds a resource by group, version and plural, as given in a URL.
pub fn find_by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by `apiVersion` and `kind`, as written in an object.
pub fn find_by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Resolves what a user typed on the command line (`po`, `pod`, `pods`, `Pod`,
/// `deployments.apps`) to a resource.
pub fn find_by_user_name(name: &str) -> Option<&'static ResourceInfo> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        group.as_deref().is_none_or(|g| g == r.group)
            && (r.plural == base
                || r.singular == base
                || r.kind.eq_ignore_ascii_case(&base)
                || r.short_names.contains(&base.as_str()))
    })
}

/// The groups (other than core) skiff serves, with their versions, in discovery order.
pub fn named_groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !groups.contains(&(r.group, r.version)) {
            groups.push((r.group, r.version));
        }
    }
    groups
}

/// The resources of one group-version.
pub fn resources_in<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_resolve_like_kubectl() {
        assert_eq!(find_by_user_name("po").unwrap().kind, "Pod");
        assert_eq!(find_by_user_name("deploy").unwrap().kind, "Deployment");
        assert_eq!(find_by_user_name("Deployment").unwrap().kind, "Deployment");
        assert_eq!(
            find_by_user_name("deployments.apps").unwrap().kind,
            "Deployment"
        );
        assert_eq!(find_by_user_name("svc").unwrap().kind, "Service");
        assert_eq!(find_by_user_name("ing").unwrap().kind, "Ingress");
        assert_eq!(
            find_by_user_name("ingresses.networking.k8s.io")
                .unwrap()
                .kind,
            "Ingress"
        );
        assert_eq!(
            find_by_user_name("ingressclass").unwrap().kind,
            "IngressClass"
        );
        assert!(find_by_user_name("deployments.core").is_none());
        assert!(find_by_user_name("widgets").is_none());
    }

    #[test]
    fn paths_and_kinds_agree() {
        for r in RESOURCES {
            assert_eq!(find_by_path(r.group, r.version, r.plural), Some(r));
            assert_eq!(find_by_kind(&r.api_version(), r.kind), Some(r));
        }
    }
}
