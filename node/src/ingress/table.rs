//! The Ingress routing table, a pure function of the Ingresses of skiff's class: which
//! backend (a Service and port) a request's host and path go to, and which TLS Secret
//! a server name is answered with. The matching is the networking/v1 specification's:
//! an exact host before a wildcard (`*.example.com` matches exactly one more label),
//! rules without a host for any host; among the paths of the matched host the longest
//! match wins, `Exact` before `Prefix` at equal length; `Prefix` matches whole path
//! elements (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`);
//! `ImplementationSpecific` is `Prefix` here. Requests no rule matches go to the first
//! `defaultBackend` (Ingresses in namespace/name order), else 404.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use std::collections::BTreeMap;

use skiff_api::ingress::{belongs_to_class, SKIFF_CONTROLLER};

/// A Service port as an Ingress backend names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// Where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Service {
        namespace: String,
        name: String,
        port: PortRef,
    },
    /// A backend skiff cannot serve (a `resource` backend, or a Service backend
    /// without a port): answered 503 with the reason.
    Unservable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    // Ordered so that, at equal length, Exact sorts first.
    Exact,
    Prefix,
}

#[derive(Debug, Clone, PartialEq)]
struct PathRule {
    kind: PathKind,
    /// For `Prefix`: without a trailing slash (`/` stays `/`).
    path: String,
    backend: Backend,
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => {
                self.path == "/"
                    || path == self.path
                    || path
                        .strip_prefix(self.path.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// A TLS Secret: namespace and name.
pub type SecretRef = (String, String);

/// Every rule of the class's Ingresses, merged.
#[derive(Debug, Default, PartialEq)]
pub struct IngressTable {
    /// Exact host -> paths, longest first.
    exact: BTreeMap<String, Vec<PathRule>>,
    /// Wildcard suffix (`.example.com` for `*.example.com`) -> paths.
    wildcard: BTreeMap<String, Vec<PathRule>>,
    /// Rules without a host.
    any_host: Vec<PathRule>,
    default_backend: Option<Backend>,
    /// Server name (exact or `*.` pattern) -> the Secret its certificate is in.
    tls: BTreeMap<String, SecretRef>,
}

/// Whether `ingress` belongs to a class skiff's proxy implements (by its controller
/// name), as [`belongs_to_class`] decides for each.
pub fn is_ours(ingress: &Ingress, classes: &[&IngressClass]) -> bool {
    classes
        .iter()
        .filter(|c| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(SKIFF_CONTROLLER))
        .filter_map(|c| c.metadata.name.as_deref())
        .any(|name| belongs_to_class(ingress, name, classes.iter().copied()))
}

fn backend(namespace: &str, backend: &IngressBackend) -> Backend {
    let Some(service) = &backend.service else {
        return Backend::Unservable("the backend is not a Service".into());
    };
    let port = match service.port.as_ref() {
        Some(p) => match (p.number, p.name.as_ref()) {
            (Some(n), _) => match u16::try_from(n) {
                Ok(n) => PortRef::Number(n),
                Err(_) => return Backend::Unservable(format!("port {n} is out of range")),
            },
            (None, Some(name)) => PortRef::Name(name.clone()),
            (None, None) => return Backend::Unservable("the backend names no port".into()),
        },
        None => return Backend::Unservable("the backend names no port".into()),
    };
    Backend::Service {
        namespace: namespace.to_string(),
        name: service.name.clone(),
        port,
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl IngressTable {
    /// Builds the table from the Ingresses of skiff's class (callers filter with
    /// [`is_ours`]).
    pub fn build<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>) -> IngressTable {
        let mut sorted: Vec<&Ingress> = ingresses.into_iter().collect();
        sorted.sort_by_key(|i| (i.metadata.namespace.clone(), i.metadata.name.clone()));
        let mut table = IngressTable::default();
        for ingress in sorted {
            let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ingress.spec else { continue };
            if table.default_backend.is_none() {
                table.default_backend =
                    spec.default_backend.as_ref().map(|b| backend(namespace, b));
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = &tls.secret_name else {
                    continue;
                };
                for host in tls.hosts.iter().flatten() {
                    table
                        .tls
                        .entry(normalize_host(host))
                        .or_insert_with(|| (namespace.to_string(), secret.clone()));
                }
            }
            for rule in spec.rules.iter().flatten() {
                let paths: Vec<PathRule> = rule
                    .http
                    .iter()
                    .flat_map(|h| &h.paths)
                    .map(|p| {
                        let kind = if p.path_type == "Exact" {
                            PathKind::Exact
                        } else {
                            PathKind::Prefix
                        };
                        let mut path = p.path.clone().unwrap_or_else(|| "/".into());
                        if kind == PathKind::Prefix && path.len() > 1 {
                            path = path.trim_end_matches('/').to_string();
                        }
                        PathRule {
                            kind,
                            path,
                            backend: backend(namespace, &p.backend),
                        }
                    })
                    .collect();
                let list = match rule.host.as_deref().map(normalize_host) {
                    None => &mut table.any_host,
                    Some(host) => match host.strip_prefix('*') {
                        Some(suffix) => table.wildcard.entry(suffix.to_string()).or_default(),
                        None => table.exact.entry(host).or_default(),
                    },
                };
                list.extend(paths);
            }
        }
        for list in table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .chain(std::iter::once(&mut table.any_host))
        {
            // Longest first; at equal length Exact first; otherwise as written (stable).
            list.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.kind.cmp(&b.kind)));
        }
        table
    }

    fn host_rules(&self, host: &str) -> Option<&[PathRule]> {
        if let Some(rules) = self.exact.get(host) {
            return Some(rules);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(&format!(".{parent}")).map(Vec::as_slice)
    }

    /// The backend for a request to `host` (a Host header: any case, maybe with a
    /// port) and `path`; `None` is a 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = normalize_host(strip_port(host));
        let matched =
            |rules: &[PathRule]| -> Option<usize> { rules.iter().position(|r| r.matches(path)) };
        if let Some(rules) = self.host_rules(&host) {
            if let Some(i) = matched(rules) {
                return Some(&rules[i].backend);
            }
        }
        if let Some(i) = matched(&self.any_host) {
            return Some(&self.any_host[i].backend);
        }
        self.default_backend.as_ref()
    }

    /// The Secret whose certificate answers TLS for `server_name` (SNI), if an Ingress
    /// names one.
    pub fn tls_secret(&self, server_name: &str) -> Option<&SecretRef> {
        let name = normalize_host(server_name);
        if let Some(secret) = self.tls.get(&name) {
            return Some(secret);
        }
        let (_, parent) = name.split_once('.')?;
        self.tls.get(&format!("*.{parent}"))
    }

    /// Every Secret the table's TLS sections name.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretRef> {
        self.tls.values()
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets' content).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    fn to(service: &str, port: serde_json::Value) -> serde_json::Value {
        json!({"service": {"name": service, "port": port}})
    }

    fn service(name: &str) -> Backend {
        Backend::Service {
            namespace: "shop".into(),
            name: name.into(),
            port: PortRef::Number(80),
        }
    }

    fn table() -> IngressTable {
        let a = ingress(
            "a",
            json!({"rules": [
                {"host": "shop.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": to("web", json!({"number": 80}))},
                    {"path": "/api/", "pathType": "Prefix", "backend": to("api", json!({"number": 80}))},
                    {"path": "/api/v1", "pathType": "Exact", "backend": to("v1", json!({"number": 80}))},
                    {"path": "/api/v1", "pathType": "Prefix", "backend": to("v1-tree", json!({"number": 80}))}]}},
                {"host": "*.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "ImplementationSpecific", "backend": to("wild", json!({"number": 80}))}]}}
            ],
            "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"},
                    {"hosts": ["*.example.com"], "secretName": "wild-tls"}]}),
        );
        let b = ingress(
            "b",
            json!({"defaultBackend": to("fallback", json!({"number": 80})),
                   "rules": [{"http": {"paths": [
                        {"path": "/healthz", "pathType": "Exact", "backend": to("health", json!({"number": 80}))}]}}]}),
        );
        IngressTable::build([&b, &a])
    }

    #[test]
    fn hosts_and_paths_route_as_the_specification_says() {
        let t = table();
        let cases = [
            ("shop.example.com", "/", Some("web")),
            ("SHOP.example.com:8443", "/cart", Some("web")),
            ("shop.example.com", "/api", Some("api")),
            ("shop.example.com", "/api/orders", Some("api")),
            ("shop.example.com", "/apix", Some("web")),
            ("shop.example.com", "/api/v1", Some("v1")),
            ("shop.example.com", "/api/v1/x", Some("v1-tree")),
            ("blog.example.com", "/", Some("wild")),
            ("a.blog.example.com", "/", Some("fallback")),
            ("example.com", "/", Some("fallback")),
            ("other.test", "/healthz", Some("health")),
            ("other.test", "/healthz/x", Some("fallback")),
        ];
        for (host, path, want) in cases {
            let got = t.route(host, path);
            assert_eq!(got, want.map(service).as_ref(), "{host}{path}");
        }
        assert_eq!(
            IngressTable::build([]).route("x", "/"),
            None,
            "no rule: 404"
        );
    }

    #[test]
    fn server_names_pick_their_secret() {
        let t = table();
        assert_eq!(
            t.tls_secret("shop.example.com"),
            Some(&("shop".to_string(), "shop-tls".to_string()))
        );
        assert_eq!(
            t.tls_secret("Blog.Example.com"),
            Some(&("shop".to_string(), "wild-tls".to_string()))
        );
        assert_eq!(t.tls_secret("a.b.example.com"), None);
        assert_eq!(t.secrets().count(), 2);
    }

    #[test]
    fn unservable_backends_and_named_ports() {
        let i = ingress(
            "c",
            json!({"rules": [{"host": "x.test", "http": {"paths": [
                {"path": "/r", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}},
                {"path": "/n", "pathType": "Prefix", "backend": to("web", json!({"name": "http"}))}]}}]}),
        );
        let t = IngressTable::build([&i]);
        assert!(matches!(
            t.route("x.test", "/r"),
            Some(Backend::Unservable(_))
        ));
        assert_eq!(
            t.route("x.test", "/n/1"),
            Some(&Backend::Service {
                namespace: "shop".into(),
                name: "web".into(),
                port: PortRef::Name("http".into())
            })
        );
    }

    #[test]
    fn the_class_decides_which_ingresses_are_ours() {
        let class = |name: &str, controller: &str, default: bool| -> IngressClass {
            serde_json::from_value(json!({"metadata": {"name": name,
                "annotations": {skiff_api::ingress::DEFAULT_CLASS_ANNOTATION: default.to_string()}},
                "spec": {"controller": controller}}))
            .unwrap()
        };
        let skiff = class("skiff", SKIFF_CONTROLLER, true);
        let nginx = class("nginx", "k8s.io/ingress-nginx", false);
        let named = |n: Option<&str>| {
            ingress(
                "i",
                json!({"ingressClassName": n, "defaultBackend": to("w", json!({"number": 1}))}),
            )
        };
        assert!(is_ours(&named(Some("skiff")), &[&skiff, &nginx]));
        assert!(!is_ours(&named(Some("nginx")), &[&skiff, &nginx]));
        assert!(
            is_ours(&named(None), &[&skiff, &nginx]),
            "the default class"
        );
        let not_default = class("skiff", SKIFF_CONTROLLER, false);
        assert!(!is_ours(&named(None), &[&not_default]));
        let mut legacy = named(None);
        legacy.metadata.annotations = Some(
            [(
                skiff_api::ingress::LEGACY_CLASS_ANNOTATION.to_string(),
                "nginx".to_string(),
            )]
            .into(),
        );
        assert!(!is_ours(&legacy, &[&skiff, &nginx]));
    }
}
