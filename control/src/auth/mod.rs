//! Authentication and authorization of API requests, in Kubernetes' order: who sent the
//! request (x509 client certificate, then bearer token — bootstrap token or
//! service-account JWT — else `system:anonymous`), then whether they may (the privileged
//! `system:masters` group, the Node authorizer for node credentials, RBAC for everyone
//! else; default deny).
//!
//! The RBAC objects are read from the store into an immutable [`RbacSnapshot`], rebuilt
//! whenever one of them changes (the API server calls [`Auth::refresh`] after its own
//! RBAC writes before answering, so a binding is in force once its create returned).
//! Nothing here knows axum: the API server hands in the certificate and the header.

pub mod node;
pub mod reviews;
pub mod serviceaccount;
pub mod tokens;

use crate::registry::Registry;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::Value;
use skiff_api::rbac::{
    Attributes, Decision, RbacSnapshot, UserInfo, ALL_AUTHENTICATED, ALL_UNAUTHENTICATED,
    SYSTEM_MASTERS,
};
use skiff_api::resource::{self, ResourceInfo};
use skiff_api::ApiError;
use std::sync::{Arc, RwLock};

/// The object a write is for.
#[derive(Debug, Clone, Copy)]
pub struct WriteTarget<'a> {
    pub resource: &'a ResourceInfo,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// The anonymous user (Kubernetes' `user.Anonymous`).
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// Who every request is under `--insecure-http` (kube-apiserver's old insecure port).
pub const INSECURE_USER: &str = "system:unsecured";

/// Whether requests are authenticated and authorized at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request is authenticated and authorized (the default).
    Secure,
    /// Plain HTTP for development: every request acts as a cluster admin.
    Insecure,
}

/// The API server's authenticator and authorizer.
pub struct Auth {
    mode: AuthMode,
    /// The current RBAC view; replaced whole, read under a short lock.
    rbac: RwLock<Arc<RbacSnapshot>>,
    /// Service-account token issuing and checking (secure mode only).
    service_accounts: Option<ServiceAccountTokens>,
}

/// The issuer and audience of the cluster's service-account tokens (kubeadm's).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Signs and checks service-account tokens.
pub struct ServiceAccountTokens {
    signer: serviceaccount::TokenSigner,
    verifier: serviceaccount::TokenVerifier,
}

impl ServiceAccountTokens {
    /// Tokens signed with `key_pem` (PKCS#8), issued by and for this API server.
    pub fn new(key_pem: &str) -> Result<Self, serviceaccount::TokenError> {
        let signer = serviceaccount::TokenSigner::from_pkcs8_pem(key_pem)?;
        let verifier = serviceaccount::TokenVerifier::new(
            vec![signer.verification_key()],
            vec![SERVICE_ACCOUNT_ISSUER.to_string()],
            vec![SERVICE_ACCOUNT_ISSUER.to_string()],
        );
        Ok(ServiceAccountTokens { signer, verifier })
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The RBAC resources whose change rebuilds the snapshot.
pub const RBAC_RESOURCES: [&ResourceInfo; 4] = [
    &resource::ROLES,
    &resource::CLUSTER_ROLES,
    &resource::ROLE_BINDINGS,
    &resource::CLUSTER_ROLE_BINDINGS,
];

/// Paths anonymous requests may read: health and version (Kubernetes'
/// `system:public-info-viewer`).
pub fn is_public_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || ["/healthz/", "/livez/", "/readyz/"]
            .iter()
            .any(|prefix| path.starts_with(prefix))
}

impl Auth {
    pub fn new(mode: AuthMode) -> Auth {
        Auth {
            mode,
            rbac: RwLock::new(Arc::new(RbacSnapshot::default())),
            service_accounts: None,
        }
    }

    /// Secure mode with service-account tokens.
    pub fn with_service_accounts(mut self, tokens: ServiceAccountTokens) -> Auth {
        self.service_accounts = Some(tokens);
        self
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent a request without a client certificate (those are read once per
    /// connection, with [`certificate_user`]): the bearer token's owner, else `None`
    /// (anonymous). A token that is present but invalid is 401, whatever path it was
    /// sent to. Under `--insecure-http` everyone is an admin.
    pub fn authenticate(
        &self,
        registry: &Registry,
        authorization: Option<&str>,
    ) -> Result<Option<UserInfo>, ApiError> {
        if self.mode == AuthMode::Insecure {
            return Ok(Some(UserInfo::new(
                INSECURE_USER,
                &[SYSTEM_MASTERS, ALL_AUTHENTICATED],
            )));
        }
        let Some(header) = authorization else {
            return Ok(None);
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        if let Some(token) = tokens::BootstrapToken::parse(token) {
            let secret = registry
                .get(
                    &resource::SECRETS,
                    Some(tokens::BOOTSTRAP_TOKEN_NAMESPACE),
                    &token.secret_name(),
                )
                .ok()
                .and_then(|(_, v)| serde_json::from_value::<Secret>(v).ok());
            let now = registry.clock.now();
            return match tokens::authenticate(&token, secret.as_ref(), now) {
                Ok(user) => Ok(Some(user)),
                Err(e) => {
                    tracing::info!(reason = %e, "refused a bootstrap token");
                    Err(unauthorized())
                }
            };
        }
        if let Some(tokens) = &self.service_accounts {
            return match service_account_user(registry, tokens, token) {
                Ok(user) => Ok(Some(user)),
                Err(why) => {
                    tracing::info!(reason = %why, "refused a service account token");
                    Err(unauthorized())
                }
            };
        }
        Err(unauthorized())
    }

    /// Issues a token for the service account `namespace/name` (TokenRequest): bound to
    /// `pod` if given, for `audiences` (default: the API server), for `expiration`.
    /// Returns the token and when it expires.
    pub fn issue_service_account_token(
        &self,
        registry: &Registry,
        namespace: &str,
        name: &str,
        request: TokenRequestOptions,
    ) -> Result<(String, std::time::SystemTime), ApiError> {
        let tokens = self.service_accounts.as_ref().ok_or_else(|| {
            ApiError::service_unavailable("service account tokens need the secure API server")
        })?;
        let accounts = &resource::SERVICE_ACCOUNTS;
        let (_, account) = registry.get(accounts, Some(namespace), name)?;
        let uid = skiff_api::object::meta_str(&account, "uid")
            .unwrap_or_default()
            .to_string();
        let pod = match request.bound_pod {
            None => None,
            Some((pod_name, pod_uid)) => {
                let (_, pod) = registry.get(&resource::PODS, Some(namespace), &pod_name)?;
                let stored_uid = skiff_api::object::meta_str(&pod, "uid").unwrap_or_default();
                if pod_uid.as_deref().is_some_and(|u| u != stored_uid) {
                    return Err(ApiError::new(409, "Conflict", format!(
                        "the UID in the bound object reference ({}) does not match the UID in record ({stored_uid})",
                        pod_uid.unwrap_or_default()
                    )));
                }
                Some(serviceaccount::ObjectRef::new(
                    pod_name,
                    stored_uid.to_string(),
                ))
            }
        };
        if request.expiration < serviceaccount::MIN_TOKEN_EXPIRATION {
            return Err(ApiError::bad_request("spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes"));
        }
        let audiences = if request.audiences.is_empty() {
            vec![SERVICE_ACCOUNT_ISSUER.to_string()]
        } else {
            request.audiences
        };
        let expiration = serviceaccount::clamp_expiration(
            request.expiration,
            serviceaccount::DEFAULT_MAX_TOKEN_EXPIRATION,
        );
        let issued = serviceaccount::ServiceAccountTokenRequest {
            namespace: namespace.to_string(),
            service_account: serviceaccount::ObjectRef::new(name.to_string(), uid),
            audiences,
            expiration,
            pod,
            node: None,
            warn_after: None,
        };
        let now = std::time::SystemTime::from(registry.clock.now());
        let token = tokens
            .signer
            .issue(
                SERVICE_ACCOUNT_ISSUER,
                &issued,
                now,
                &serviceaccount::new_jti(),
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((token, now + expiration))
    }

    /// Whether `attributes` are allowed: `Ok`, or the 401 (anonymous) / 403 to answer.
    pub fn authorize(
        &self,
        registry: &Registry,
        attributes: &Attributes<'_>,
        field_selector: Option<&str>,
    ) -> Result<(), ApiError> {
        let user = attributes.user;
        if self.mode == AuthMode::Insecure || user.in_group(SYSTEM_MASTERS) {
            return Ok(());
        }
        let anonymous = user.name == ANONYMOUS_USER;
        if anonymous && !attributes.resource_request && is_public_path(attributes.path) {
            return Ok(());
        }
        if let Some(node) = node::node_name(user) {
            return match node::authorize(node, attributes, field_selector, &StoreGraph(registry)) {
                node::NodeDecision::Allow => Ok(()),
                node::NodeDecision::Deny(why) => {
                    tracing::debug!(%why, "node authorizer refused a request");
                    Err(forbidden(attributes, ""))
                }
            };
        }
        match self.snapshot().authorize(attributes) {
            Decision::Allow(_) => Ok(()),
            Decision::NoOpinion(_) if anonymous => Err(unauthorized()),
            Decision::NoOpinion(reason) => Err(forbidden(attributes, &reason)),
        }
    }

    /// Escalation prevention for a write of a Role, ClusterRole or binding (`object` is
    /// what would be stored): allowed when the user may `escalate` (roles) or `bind`
    /// (bindings) through the authorizer, or already holds every rule it grants.
    pub fn admit_rbac_write(
        &self,
        registry: &Registry,
        user: &UserInfo,
        target: WriteTarget<'_>,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<(), ApiError> {
        use skiff_api::rbac::{bind_attributes, escalate_attributes};
        let WriteTarget {
            resource,
            namespace,
            name,
        } = target;
        if self.mode == AuthMode::Insecure || !RBAC_RESOURCES.contains(&resource) {
            return Ok(());
        }
        let ns = namespace.unwrap_or_default();
        let invalid = |e: serde_json::Error| {
            ApiError::bad_request(format!("the body is not a valid {}: {e}", resource.kind))
        };
        let snapshot = self.snapshot();
        let checked = match *resource {
            resource::ROLES | resource::CLUSTER_ROLES => {
                let escalate = escalate_attributes(user, resource.plural, ns, name);
                if self.authorize(registry, &escalate, None).is_ok() {
                    return Ok(());
                }
                if *resource == resource::ROLES {
                    let role: k8s_openapi::api::rbac::v1::Role =
                        serde_json::from_value(object.clone()).map_err(invalid)?;
                    snapshot.check_role_grant(user, ns, role.rules.as_deref().unwrap_or_default())
                } else {
                    let role: ClusterRole =
                        serde_json::from_value(object.clone()).map_err(invalid)?;
                    let previous: Option<ClusterRole> =
                        old.and_then(|o| serde_json::from_value(o.clone()).ok());
                    snapshot.check_cluster_role_grant(user, &role, previous.as_ref())
                }
            }
            _ => {
                let role_ref: k8s_openapi::api::rbac::v1::RoleRef = object
                    .get("roleRef")
                    .cloned()
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(invalid)?
                    .ok_or_else(|| ApiError::bad_request("roleRef is required"))?;
                if let Some(bind) = bind_attributes(user, &role_ref, ns) {
                    if self.authorize(registry, &bind, None).is_ok() {
                        return Ok(());
                    }
                }
                snapshot.check_binding_grant(user, ns, &role_ref)
            }
        };
        checked.map_err(|e| {
            ApiError::forbidden(format!(
                "{} {name:?} is forbidden: {e}",
                resource.qualified_plural()
            ))
        })
    }

    /// NodeRestriction: a node writes only the Node (and Lease) named after it, and its
    /// Node keeps its taints and `node-restriction.kubernetes.io/` labels. `old` is None
    /// on create.
    pub fn admit_node_write(
        &self,
        user: &UserInfo,
        name: &str,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        let Some(node) = node::node_name(user) else {
            return Ok(());
        };
        let named = skiff_api::object::meta_str(new, "name").unwrap_or(name);
        if named != node || name != node {
            return Err(ApiError::forbidden(format!(
                "nodes {name:?} is forbidden: node {node:?} can only write its own Node and Lease"
            )));
        }
        node::admit_node_write(node, old, new)
            .map_err(|why| ApiError::forbidden(format!("nodes {node:?} is forbidden: {why}")))
    }

    /// NodeRestriction of a node's TokenRequest for `account`: bound to a pod
    /// (`(name, uid)`, the uid possibly empty) that exists, runs on the node and runs as
    /// that account. Other users pass.
    pub fn admit_node_token_request(
        &self,
        registry: &Registry,
        user: &UserInfo,
        (namespace, account): (&str, &str),
        pod: Option<(String, String)>,
    ) -> Result<(), ApiError> {
        let Some(node) = node::node_name(user) else {
            return Ok(());
        };
        let forbidden = |why: String| {
            ApiError::forbidden(format!(
                "serviceaccounts/token is forbidden: node {node:?} {why}"
            ))
        };
        let Some((name, uid)) = pod else {
            return Err(forbidden(
                "may only request tokens bound to a pod".to_string(),
            ));
        };
        let stored = registry
            .get(&resource::PODS, Some(namespace), &name)
            .map(|(_, pod)| pod)
            .map_err(|_| {
                forbidden(format!(
                    "requested a token bound to pod {namespace}/{name}, which does not exist"
                ))
            })?;
        let on_node = stored.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
        let stored_uid = skiff_api::object::meta_str(&stored, "uid").unwrap_or_default();
        if !on_node {
            return Err(forbidden(format!(
                "requested a token bound to pod {namespace}/{name}, which runs on another node"
            )));
        }
        let runs_as = stored
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str);
        if runs_as != Some(account) {
            return Err(forbidden(format!(
                "requested a token of {namespace}/{account} bound to pod {namespace}/{name}, which runs as another account"
            )));
        }
        if !uid.is_empty() && uid != stored_uid {
            return Err(forbidden(format!(
                "requested a token bound to pod {namespace}/{name} with another uid"
            )));
        }
        Ok(())
    }

    /// The RBAC view requests are authorized against now.
    pub fn snapshot(&self) -> Arc<RbacSnapshot> {
        match self.rbac.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Brings aggregated ClusterRoles' rules up to date (the clusterrole aggregation
    /// controller's work, done where ClusterRoles are written), then rebuilds the view.
    pub async fn reconcile(&self, registry: &Registry) {
        let roles: Vec<ClusterRole> = typed_objects(registry, &resource::CLUSTER_ROLES);
        for (name, rules) in skiff_api::rbac::aggregate(&roles) {
            let current = roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|r| r.rules.as_ref());
            if current == Some(&rules) {
                continue;
            }
            let patch = serde_json::json!({"rules": rules});
            let written = registry
                .patch(
                    &resource::CLUSTER_ROLES,
                    None,
                    &name,
                    skiff_api::patch::PatchType::Merge,
                    &patch,
                    None,
                    &crate::registry::WriteOptions::default(),
                )
                .await;
            if let Err(e) = written {
                tracing::warn!(role = %name, error = %e, "could not aggregate a ClusterRole");
            }
        }
        self.refresh(registry);
    }

    /// Writes the default ClusterRoles and ClusterRoleBindings that are missing, and
    /// brings those marked `rbac.authorization.kubernetes.io/autoupdate: "true"` back to
    /// their default rules and subjects (as kube-apiserver's bootstrap policy does at
    /// start), then aggregates and loads the view.
    pub async fn ensure_default_policy(&self, registry: &Registry) -> Result<(), ApiError> {
        let options = crate::registry::WriteOptions::default();
        for role in skiff_api::rbac::default_cluster_roles() {
            let name = role.metadata.name.clone().unwrap_or_default();
            let value =
                serde_json::to_value(&role).map_err(|e| ApiError::internal(e.to_string()))?;
            ensure_default(
                registry,
                &resource::CLUSTER_ROLES,
                &name,
                value,
                &["rules", "aggregationRule"],
                &options,
            )
            .await?;
        }
        for binding in skiff_api::rbac::default_cluster_role_bindings() {
            let name = binding.metadata.name.clone().unwrap_or_default();
            let value =
                serde_json::to_value(&binding).map_err(|e| ApiError::internal(e.to_string()))?;
            ensure_default(
                registry,
                &resource::CLUSTER_ROLE_BINDINGS,
                &name,
                value,
                &["subjects", "roleRef"],
                &options,
            )
            .await?;
        }
        self.reconcile(registry).await;
        Ok(())
    }

    /// Keeps the view current for RBAC writes that do not pass through the API
    /// server's handlers (a namespace's deletion removing its bindings, the bootstrap
    /// objects): rebuilds it after every committed change of an RBAC object, until
    /// `stopped` flips. Returns at once if the store cannot be watched.
    pub async fn follow(
        self: Arc<Self>,
        registry: Registry,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let Ok(watch) = registry
            .store
            .watch("/registry/", Some(registry.store.revision()))
        else {
            return;
        };
        let prefixes: Vec<String> = RBAC_RESOURCES
            .iter()
            .map(|r| crate::registry::collection_prefix(r, None))
            .collect();
        let mut live = watch.live;
        self.refresh(&registry);
        loop {
            let event = tokio::select! {
                event = live.recv() => event,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let changed = match event {
                Ok(event) => prefixes.iter().any(|p| event.key.starts_with(p.as_str())),
                // Missed events: whatever they were, rebuild.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if changed {
                self.refresh(&registry);
            }
        }
    }

    /// Rebuilds the RBAC view from the store.
    pub fn refresh(&self, registry: &Registry) {
        let snapshot = Arc::new(load_snapshot(registry));
        match self.rbac.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }
}

/// What a TokenRequest asks for.
#[derive(Debug, Clone)]
pub struct TokenRequestOptions {
    pub audiences: Vec<String>,
    pub expiration: std::time::Duration,
    /// A pod (name, uid if given) the token lives and dies with.
    pub bound_pod: Option<(String, Option<String>)>,
}

/// The user of a service-account token: signature, issuer, audience and lifetime
/// checked, then the objects it names — the service account (same uid) and a bound
/// pod (same uid, not being deleted) — must still exist, so deleting either revokes it.
fn service_account_user(
    registry: &Registry,
    tokens: &ServiceAccountTokens,
    token: &str,
) -> Result<UserInfo, String> {
    let now = std::time::SystemTime::from(registry.clock.now());
    let verified = tokens
        .verifier
        .verify(token, now)
        .map_err(|e| e.to_string())?;
    let namespace = verified.namespace.as_str();
    let uid_of = |r: &ResourceInfo, name: &str| -> Result<(String, Value), String> {
        let (_, object) = registry
            .get(r, Some(namespace), name)
            .map_err(|_| format!("{} {namespace}/{name} no longer exists", r.singular))?;
        let uid = skiff_api::object::meta_str(&object, "uid")
            .unwrap_or_default()
            .to_string();
        Ok((uid, object))
    };
    let account = &verified.service_account;
    let (uid, _) = uid_of(&resource::SERVICE_ACCOUNTS, &account.name)?;
    if uid != account.uid {
        return Err(format!(
            "service account {namespace}/{} was replaced",
            account.name
        ));
    }
    if let Some(pod) = &verified.pod {
        let (uid, object) = uid_of(&resource::PODS, &pod.name)?;
        let deleting = object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        if uid != pod.uid || deleting {
            return Err(format!(
                "pod {namespace}/{} the token is bound to is gone",
                pod.name
            ));
        }
    }
    Ok(verified.user_info())
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn certificate_user(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(ALL_AUTHENTICATED.to_string());
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}

/// The anonymous user, for requests that carry no credential.
pub fn anonymous() -> UserInfo {
    UserInfo::new(ANONYMOUS_USER, &[ALL_UNAUTHENTICATED])
}

pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// Kubernetes' 403 wording: `pods "x" is forbidden: User "bob" cannot get resource
/// "pods" in API group "" in the namespace "default"`.
pub fn forbidden(attributes: &Attributes<'_>, reason: &str) -> ApiError {
    let user = &attributes.user.name;
    let verb = attributes.verb;
    let mut message = if attributes.resource_request {
        let resource = if attributes.subresource.is_empty() {
            attributes.resource.to_string()
        } else {
            format!("{}/{}", attributes.resource, attributes.subresource)
        };
        let qualified = if attributes.api_group.is_empty() {
            attributes.resource.to_string()
        } else {
            format!("{}.{}", attributes.resource, attributes.api_group)
        };
        let object = if attributes.name.is_empty() {
            qualified
        } else {
            format!("{qualified} {:?}", attributes.name)
        };
        let scope = if attributes.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", attributes.namespace)
        };
        format!(
            "{object} is forbidden: User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
            attributes.api_group
        )
    } else {
        format!(
            "forbidden: User {user:?} cannot {verb} path {:?}",
            attributes.path
        )
    };
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    let mut error = ApiError::forbidden(message);
    if attributes.resource_request {
        error.details = Some(Box::new(skiff_api::status::StatusDetails {
            name: attributes.name.to_string(),
            group: attributes.api_group.to_string(),
            kind: attributes.resource.to_string(),
            causes: Vec::new(),
        }));
    }
    error
}

fn typed_objects<T: serde::de::DeserializeOwned>(registry: &Registry, r: &ResourceInfo) -> Vec<T> {
    registry
        .list_objects(r, None)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

fn load_snapshot(registry: &Registry) -> RbacSnapshot {
    RbacSnapshot::new(
        typed_objects(registry, &resource::ROLES),
        typed_objects(registry, &resource::CLUSTER_ROLES),
        typed_objects(registry, &resource::ROLE_BINDINGS),
        typed_objects(registry, &resource::CLUSTER_ROLE_BINDINGS),
    )
}

/// The annotation that lets the API server restore a default object at start.
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// Creates a default policy object, or restores its `fields` when it is marked for
/// auto-update and they differ.
async fn ensure_default(
    registry: &Registry,
    resource: &ResourceInfo,
    name: &str,
    default: Value,
    fields: &[&str],
    options: &crate::registry::WriteOptions,
) -> Result<(), ApiError> {
    let mut object = default;
    object["apiVersion"] = Value::from(resource.api_version());
    object["kind"] = Value::from(resource.kind);
    let current = match registry.get(resource, None, name) {
        Ok((_, current)) => current,
        Err(e) if e.code == 404 => {
            return match registry.create(resource, None, object, options).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let autoupdate = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(AUTOUPDATE))
        .and_then(Value::as_str)
        != Some("false");
    let patch: serde_json::Map<String, Value> = fields
        .iter()
        .filter(|f| current.get(**f) != object.get(**f))
        .map(|f| {
            (
                f.to_string(),
                object.get(*f).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    // An aggregated role's rules are the aggregation's to fill in.
    let patch: serde_json::Map<String, Value> = patch
        .into_iter()
        .filter(|(f, _)| {
            !(f == "rules" && object.get("aggregationRule").is_some_and(|a| !a.is_null()))
        })
        .collect();
    if !autoupdate || patch.is_empty() {
        return Ok(());
    }
    registry
        .patch(
            resource,
            None,
            name,
            skiff_api::patch::PatchType::Merge,
            &Value::Object(patch),
            None,
            options,
        )
        .await
        .map(|_| ())
}

/// The Node authorizer's view of pods, read from the store.
struct StoreGraph<'a>(&'a Registry);

impl node::NodeGraph for StoreGraph<'_> {
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let (_, pod) = self.0.get(&resource::PODS, Some(namespace), name).ok()?;
        pod.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn node_uses(&self, node: &str, kind: node::Referenced, namespace: &str, name: &str) -> bool {
        if namespace.is_empty() || name.is_empty() {
            return false;
        }
        self.0
            .list_objects(&resource::PODS, Some(namespace))
            .unwrap_or_default()
            .iter()
            .any(|pod| {
                pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    && node::pod_references(pod, kind, name)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_version_are_public() {
        for public in [
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
            "/readyz/ping",
            "/version/",
        ] {
            assert!(is_public_path(public), "{public}");
        }
        for private in [
            "/metrics",
            "/api",
            "/apis",
            "/openapi/v3",
            "/healthzz",
            "/api/v1/pods",
        ] {
            assert!(!is_public_path(private), "{private}");
        }
    }

    #[test]
    fn forbidden_messages_read_like_kubernetes() {
        let bob = UserInfo::new("bob", &[]);
        let get = Attributes::resource(&bob, "get", "", "pods", "default").with_name("web");
        assert_eq!(
            forbidden(&get, "").message,
            r#"pods "web" is forbidden: User "bob" cannot get resource "pods" in API group "" in the namespace "default""#
        );
        let list = Attributes::resource(&bob, "list", "apps", "deployments", "");
        assert_eq!(
            forbidden(&list, "").message,
            r#"deployments.apps is forbidden: User "bob" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        let log = Attributes::resource(&bob, "get", "", "pods", "a")
            .with_subresource("log")
            .with_name("p");
        assert!(forbidden(&log, "")
            .message
            .contains(r#"cannot get resource "pods/log""#));
        let path = Attributes::non_resource(&bob, "get", "/metrics");
        assert_eq!(
            forbidden(&path, "").message,
            r#"forbidden: User "bob" cannot get path "/metrics""#
        );
        assert_eq!(forbidden(&get, "").code, 403);
    }
}
