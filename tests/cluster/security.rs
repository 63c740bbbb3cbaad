//! The secure API server (reliability-security §7.4 A-1…A-3): authentication over TLS
//! with real client certificates and bootstrap tokens, the RBAC matrix with escalation
//! prevention, node isolation (Node authorizer + NodeRestriction), and the real kubectl
//! with the kubeconfig `skiff control` writes (`auth whoami`, `auth can-i`).

use crate::harness::{issue, tls_http, ControlProcess, InProcess};
use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt as _;
use serde_json::{json, Value};
use std::process::Command;

/// Sends `method path` with an optional JSON body and returns the code and body.
async fn send(
    http: &reqwest::Client,
    server: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, Value)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = http.request(method, format!("{server}{path}"));
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let code = response.status().as_u16();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((code, body))
}

fn bootstrap_secret(id: &str, secret: &str, expiration: &str) -> Value {
    let token = skiff_control::auth::tokens::BootstrapToken {
        id: id.to_string(),
        secret: secret.to_string(),
    };
    token.secret_object(expiration)
}

async fn whoami(http: &reqwest::Client, server: &str, token: Option<&str>) -> Result<(u16, Value)> {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    send(
        http,
        server,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(&review),
        token,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_authenticate_by_certificate_or_token_and_nothing_else() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let server = &cluster.server;
    let anonymous = tls_http(cluster.pki.ca_pem(), None)?;

    // No credential: only health and version answer.
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, body) = send(&anonymous, server, "GET", path, None, None).await?;
        ensure!(code == 200, "anonymous GET {path}: {code} {body}");
    }
    for path in [
        "/api",
        "/apis",
        "/metrics",
        "/api/v1/namespaces",
        "/api/v1/namespaces/default/secrets",
        "/openapi/v3",
    ] {
        let (code, body) = send(&anonymous, server, "GET", path, None, None).await?;
        ensure!(
            code == 401 && body["kind"] == "Status" && body["reason"] == "Unauthorized",
            "anonymous GET {path}: {code} {body}"
        );
    }
    let config_map =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sneaky"}});
    let (code, _) = send(
        &anonymous,
        server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&config_map),
        None,
    )
    .await?;
    ensure!(code == 401, "anonymous create: {code}");

    // CN is the user, each O a group: a certificate made with openssl, as an
    // administrator would make one, signed by the cluster CA.
    let alice =
        openssl_client_certificate(&cluster.dir.path().join("pki"), "/O=dev/O=ops/CN=alice")?;
    let alice_http = tls_http(cluster.pki.ca_pem(), Some(&alice))?;
    let (code, review) = whoami(&alice_http, server, None).await?;
    ensure!(code == 201, "whoami: {code} {review}");
    let info = &review["status"]["userInfo"];
    ensure!(info["username"] == "alice", "{review}");
    ensure!(
        info["groups"] == json!(["dev", "ops", "system:authenticated"]),
        "{review}"
    );

    // A certificate from another CA fails the TLS handshake: no HTTP answer at all.
    let foreign_dir = tempfile::tempdir()?;
    let names = skiff_control::pki::ServingNames::standard("cluster.local", &[], &[]);
    let foreign = skiff_control::pki::ClusterPki::ensure(
        foreign_dir.path(),
        &names,
        std::time::SystemTime::now(),
    )?;
    let mallory = issue(&foreign, "system:admin", &["system:masters"])?;
    let mallory_http = tls_http(cluster.pki.ca_pem(), Some(&mallory.identity_pem()))?;
    let attempt = mallory_http
        .get(format!("{server}/api/v1/namespaces"))
        .send()
        .await;
    match attempt {
        Err(e) => ensure!(
            e.is_connect() || e.is_request(),
            "unexpected error kind: {e}"
        ),
        Ok(r) => bail!(
            "a foreign CA's certificate got an HTTP answer: {}",
            r.status()
        ),
    }
    // And a client that does not trust the server's CA refuses it.
    let wrong_trust = tls_http(foreign.ca_pem(), None)?;
    ensure!(wrong_trust
        .get(format!("{server}/healthz"))
        .send()
        .await
        .is_err());

    // Bootstrap tokens: valid, unknown, wrong secret, expired, revoked.
    let admin = &cluster.http;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let earlier = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let secrets = "/api/v1/namespaces/kube-system/secrets";
    let (code, body) = send(
        admin,
        server,
        "POST",
        secrets,
        Some(&bootstrap_secret("abcdef", "0123456789abcdef", &later)),
        None,
    )
    .await?;
    ensure!(code == 201, "token secret: {code} {body}");
    let (code, body) = send(
        admin,
        server,
        "POST",
        secrets,
        Some(&bootstrap_secret("oldtkn", "0123456789abcdef", &earlier)),
        None,
    )
    .await?;
    ensure!(code == 201, "expired token secret: {code} {body}");
    let (code, review) = whoami(&anonymous, server, Some("abcdef.0123456789abcdef")).await?;
    ensure!(code == 201, "bootstrap whoami: {code} {review}");
    ensure!(
        review["status"]["userInfo"]["username"] == "system:bootstrap:abcdef",
        "{review}"
    );
    ensure!(
        review["status"]["userInfo"]["groups"]
            == json!(["system:bootstrappers", "system:authenticated"]),
        "{review}"
    );
    for bad in [
        "abcdef.0123456789abcdee",
        "zzzzzz.0123456789abcdef",
        "oldtkn.0123456789abcdef",
        "not-a-token",
        "",
    ] {
        let (code, body) = send(
            &anonymous,
            server,
            "GET",
            "/api/v1/namespaces",
            None,
            Some(bad),
        )
        .await?;
        ensure!(
            code == 401 && body["reason"] == "Unauthorized",
            "token {bad:?}: {code} {body}"
        );
        ensure!(
            !body.to_string().contains("0123456789abcde"),
            "a token secret in an answer: {body}"
        );
    }
    // A bootstrapper may not read what it is not granted.
    let (code, body) = send(
        &anonymous,
        server,
        "GET",
        secrets,
        None,
        Some("abcdef.0123456789abcdef"),
    )
    .await?;
    ensure!(code == 403, "bootstrapper lists secrets: {code} {body}");
    ensure!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("system:bootstrap:abcdef"),
        "{body}"
    );
    let (code, _) = send(
        admin,
        server,
        "DELETE",
        &format!("{secrets}/bootstrap-token-abcdef"),
        None,
        None,
    )
    .await?;
    ensure!(code == 200, "revoke: {code}");
    let (code, _) = whoami(&anonymous, server, Some("abcdef.0123456789abcdef")).await?;
    ensure!(code == 401, "revoked token: {code}");

    // Nothing the refused requests sent was written.
    let (code, body) = send(
        admin,
        server,
        "GET",
        "/api/v1/namespaces/default/configmaps/sneaky",
        None,
        None,
    )
    .await?;
    ensure!(code == 404, "anonymous write landed: {code} {body}");
    cluster.stop().await;
    Ok(())
}

/// A key and a certificate for `subject` made and signed with openssl (the CA's files
/// in `pki_dir`), as `client certificate + key` PEM.
fn openssl_client_certificate(pki_dir: &std::path::Path, subject: &str) -> Result<Vec<u8>> {
    let scratch = tempfile::tempdir()?;
    let (key, csr, cert) = (
        scratch.path().join("c.key"),
        scratch.path().join("c.csr"),
        scratch.path().join("c.crt"),
    );
    let run = |args: &[&std::ffi::OsStr]| -> Result<()> {
        let output = Command::new("openssl").args(args).output()?;
        ensure!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    run(&[
        &os("ecparam"),
        &os("-name"),
        &os("prime256v1"),
        &os("-genkey"),
        &os("-noout"),
        &os("-out"),
        key.as_os_str(),
    ])?;
    run(&[
        &os("req"),
        &os("-new"),
        &os("-key"),
        key.as_os_str(),
        &os("-subj"),
        &os(subject),
        &os("-out"),
        csr.as_os_str(),
    ])?;
    let ext = scratch.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    )?;
    run(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        csr.as_os_str(),
        &os("-CA"),
        pki_dir.join("ca.crt").as_os_str(),
        &os("-CAkey"),
        pki_dir.join("ca.key").as_os_str(),
        &os("-set_serial"),
        &os(&format!("{}", rand::random::<u32>())),
        &os("-days"),
        &os("1"),
        &os("-extfile"),
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ])?;
    let mut pem = std::fs::read(&cert)?;
    pem.extend(std::fs::read(&key)?);
    Ok(pem)
}

/// One row of the RBAC matrix: a subject, a request, and whether it is allowed.
struct Case {
    user: &'static str,
    verb: &'static str,
    path: &'static str,
    allowed: bool,
}

fn rbac_setup() -> Vec<(&'static str, Value)> {
    let binding = |ns: &str, name: &str, role_kind: &str, role: &str, subject: Value| {
        let (kind, path) = if ns.is_empty() {
            (
                "ClusterRoleBinding",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".to_string(),
            )
        } else {
            (
                "RoleBinding",
                format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
            )
        };
        let mut object = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [subject]});
        if !ns.is_empty() {
            object["metadata"]["namespace"] = json!(ns);
        }
        (Box::leak(path.into_boxed_str()) as &'static str, object)
    };
    let user =
        |name: &str| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name});
    let group = |name: &str| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name});
    let ns = |name: &str| {
        (
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
    };
    let cm = |ns: &str, name: &str| {
        (
            Box::leak(format!("/api/v1/namespaces/{ns}/configmaps").into_boxed_str())
                as &'static str,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}),
        )
    };
    let secret = |ns: &str| {
        (
            Box::leak(format!("/api/v1/namespaces/{ns}/secrets").into_boxed_str()) as &'static str,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "stringData": {"password": "hunter2"}}),
        )
    };
    vec![
        ns("a"),
        ns("b"),
        cm("a", "cm1"),
        cm("a", "cm2"),
        cm("b", "cm1"),
        cm("b", "cm2"),
        secret("a"),
        secret("b"),
        binding("a", "alice-view", "ClusterRole", "view", user("alice")),
        binding("a", "bob-edit", "ClusterRole", "edit", user("bob")),
        binding("", "ops-view", "ClusterRole", "view", group("ops")),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/b/roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "one-config-map", "namespace": "b"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cm1"], "verbs": ["get"]}]}),
        ),
        binding("b", "carol-one", "Role", "one-config-map", user("carol")),
        // A binding to a role that does not exist grants nothing.
        binding("b", "dave-missing", "Role", "no-such-role", user("dave")),
    ]
}

fn rbac_matrix() -> Vec<Case> {
    let case = |user, verb, path, allowed| Case {
        user,
        verb,
        path,
        allowed,
    };
    vec![
        // alice: view in a.
        case("alice", "get", "/api/v1/namespaces/a/configmaps/cm1", true),
        case("alice", "list", "/api/v1/namespaces/a/configmaps", true),
        case(
            "alice",
            "watch",
            "/api/v1/namespaces/a/configmaps?watch=true&timeoutSeconds=1",
            true,
        ),
        case("alice", "list", "/api/v1/namespaces/a/pods", true),
        case("alice", "get", "/api/v1/namespaces/a/secrets/s1", false),
        case("alice", "list", "/api/v1/namespaces/a/secrets", false),
        case("alice", "create", "/api/v1/namespaces/a/configmaps", false),
        case(
            "alice",
            "delete",
            "/api/v1/namespaces/a/configmaps/cm1",
            false,
        ),
        case("alice", "get", "/api/v1/namespaces/b/configmaps/cm1", false),
        case("alice", "list", "/api/v1/configmaps", false),
        case(
            "alice",
            "list",
            "/apis/apps/v1/namespaces/a/deployments",
            true,
        ),
        case(
            "alice",
            "create",
            "/apis/apps/v1/namespaces/a/deployments",
            false,
        ),
        case(
            "alice",
            "list",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
            false,
        ),
        case("alice", "list", "/api/v1/nodes", false),
        // bob: edit in a.
        case("bob", "get", "/api/v1/namespaces/a/secrets/s1", true),
        case("bob", "create", "/api/v1/namespaces/a/configmaps", true),
        case("bob", "delete", "/api/v1/namespaces/a/configmaps/cm2", true),
        case(
            "bob",
            "create",
            "/apis/apps/v1/namespaces/a/deployments",
            true,
        ),
        case("bob", "create", "/api/v1/namespaces/b/configmaps", false),
        case("bob", "get", "/api/v1/namespaces/b/secrets/s1", false),
        case(
            "bob",
            "create",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
            false,
        ),
        // ops (a group, via a ClusterRoleBinding): view everywhere.
        case("ops-member", "list", "/api/v1/configmaps", true),
        case(
            "ops-member",
            "get",
            "/api/v1/namespaces/b/configmaps/cm2",
            true,
        ),
        case(
            "ops-member",
            "get",
            "/api/v1/namespaces/b/secrets/s1",
            false,
        ),
        case(
            "ops-member",
            "create",
            "/api/v1/namespaces/b/configmaps",
            false,
        ),
        // carol: one named config map in b.
        case("carol", "get", "/api/v1/namespaces/b/configmaps/cm1", true),
        case("carol", "get", "/api/v1/namespaces/b/configmaps/cm2", false),
        case("carol", "list", "/api/v1/namespaces/b/configmaps", false),
        case("carol", "get", "/api/v1/namespaces/a/configmaps/cm1", false),
        // dave: bound to a missing role; eve: nothing at all.
        case("dave", "get", "/api/v1/namespaces/b/configmaps/cm1", false),
        case("eve", "get", "/api/v1/namespaces/a/configmaps/cm1", false),
        case("eve", "list", "/api/v1/namespaces", false),
        // Every authenticated user may discover and review itself.
        case("eve", "get", "/api", true),
        case("eve", "get", "/apis/apps/v1", true),
        case("eve", "get", "/version", true),
        case("eve", "get", "/metrics", false),
    ]
}

fn groups_of(user: &str) -> Vec<&'static str> {
    match user {
        "ops-member" => vec!["ops"],
        _ => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_what_bindings_say() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let server = &cluster.server;
    for (path, object) in rbac_setup() {
        let (code, body) = send(&cluster.http, server, "POST", path, Some(&object), None).await?;
        ensure!(code == 201, "setup POST {path}: {code} {body}");
    }
    let mut failures = Vec::new();
    for case in rbac_matrix() {
        let identity = issue(&cluster.pki, case.user, &groups_of(case.user))?;
        let http = tls_http(cluster.pki.ca_pem(), Some(&identity.identity_pem()))?;
        // Writes are dry runs: authorization is decided the same, the matrix leaves the
        // objects as they are for later rows.
        let (method, body, path) = match case.verb {
            "create" => {
                let body = if case.path.contains("deployments") {
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
                } else if case.path.contains("rolebindings") {
                    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "x"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": []})
                } else {
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}})
                };
                ("POST", Some(body), format!("{}?dryRun=All", case.path))
            }
            "delete" => ("DELETE", None, format!("{}?dryRun=All", case.path)),
            _ => ("GET", None, case.path.to_string()),
        };
        let (code, answer) = send(&http, server, method, &path, body.as_ref(), None).await?;
        let allowed = !matches!(code, 401 | 403);
        if allowed != case.allowed {
            failures.push(format!(
                "{} {} {}: expected allowed={}, got {code} {answer}",
                case.user, case.verb, case.path, case.allowed
            ));
        } else if allowed && !(200..300).contains(&code) {
            failures.push(format!(
                "{} {} {}: allowed but {code} {answer}",
                case.user, case.verb, case.path
            ));
        } else if !allowed {
            let message = answer["message"].as_str().unwrap_or_default();
            if code != 403
                || answer["reason"] != "Forbidden"
                || !message.contains(&format!("User \"{}\"", case.user))
            {
                failures.push(format!(
                    "{} {} {}: a denial must be 403 naming the user: {code} {answer}",
                    case.user, case.verb, case.path
                ));
            }
            if !message.contains(&format!("cannot {}", case.verb)) {
                failures.push(format!(
                    "{} {} {}: the denial does not name the verb: {message}",
                    case.user, case.verb, case.path
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "RBAC matrix:\n{}", failures.join("\n"));
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_cannot_grant_more_than_their_author_holds() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let server = &cluster.server;
    let admin = &cluster.http;
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    // frank may manage roles and bindings in a and read pods there, nothing more.
    let setup = [
        (
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "rbac-manager"},
                "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "update", "get"]},
                          {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "frank"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rbac-manager"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "frank"}]}),
        ),
    ];
    for (path, object) in &setup {
        let (code, body) = send(admin, server, "POST", path, Some(object), None).await?;
        ensure!(code == 201, "setup {path}: {code} {body}");
    }
    let frank_identity = issue(&cluster.pki, "frank", &[])?;
    let frank = tls_http(cluster.pki.ca_pem(), Some(&frank_identity.identity_pem()))?;
    let role = |name: &str, verbs: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]})
    };
    let roles = format!("{rbac}/namespaces/a/roles");
    let (code, body) = send(
        &frank,
        server,
        "POST",
        &roles,
        Some(&role("read-pods", json!(["get"]))),
        None,
    )
    .await?;
    ensure!(
        code == 201,
        "a role within frank's own rules: {code} {body}"
    );
    let (code, body) = send(
        &frank,
        server,
        "POST",
        &roles,
        Some(&role("delete-pods", json!(["get", "delete"]))),
        None,
    )
    .await?;
    ensure!(
        code == 403
            && body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("not currently held"),
        "escalating role: {code} {body}"
    );
    let binding = |name: &str, kind: &str, role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]})
    };
    let bindings = format!("{rbac}/namespaces/a/rolebindings");
    let (code, body) = send(
        &frank,
        server,
        "POST",
        &bindings,
        Some(&binding("ok", "Role", "read-pods")),
        None,
    )
    .await?;
    ensure!(code == 201, "binding a role frank holds: {code} {body}");
    let (code, body) = send(
        &frank,
        server,
        "POST",
        &bindings,
        Some(&binding("admin", "ClusterRole", "admin")),
        None,
    )
    .await?;
    ensure!(code == 403, "binding admin: {code} {body}");
    // Updating his own role to more than he holds is refused too, and leaves it as it was.
    let mut grown = role("read-pods", json!(["get", "list", "delete"]));
    grown["metadata"]["namespace"] = json!("a");
    let (code, body) = send(
        &frank,
        server,
        "PUT",
        &format!("{roles}/read-pods"),
        Some(&grown),
        None,
    )
    .await?;
    ensure!(code == 403, "escalating update: {code} {body}");
    let (_, stored) = send(
        admin,
        server,
        "GET",
        &format!("{roles}/read-pods"),
        None,
        None,
    )
    .await?;
    ensure!(stored["rules"][0]["verbs"] == json!(["get"]), "{stored}");
    // With `bind` on the admin ClusterRole in a, the binding is his to make.
    let (code, body) = send(admin, server, "POST", &roles, Some(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "bind-admin"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["admin"], "verbs": ["bind"]}]})), None).await?;
    ensure!(code == 201, "{code} {body}");
    let (code, body) = send(
        admin,
        server,
        "POST",
        &bindings,
        Some(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "frank-bind"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bind-admin"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "frank"}]}),
        ),
        None,
    )
    .await?;
    ensure!(code == 201, "{code} {body}");
    let (code, body) = send(
        &frank,
        server,
        "POST",
        &bindings,
        Some(&binding("admin", "ClusterRole", "admin")),
        None,
    )
    .await?;
    ensure!(
        code == 201,
        "binding admin with the bind verb: {code} {body}"
    );
    // mallory now has admin in a: she can read secrets there (and only there).
    let mallory_identity = issue(&cluster.pki, "mallory", &[])?;
    let mallory = tls_http(cluster.pki.ca_pem(), Some(&mallory_identity.identity_pem()))?;
    let (code, _) = send(
        &mallory,
        server,
        "GET",
        "/api/v1/namespaces/a/secrets",
        None,
        None,
    )
    .await?;
    ensure!(code == 200, "admin in a lists secrets: {code}");
    let (code, _) = send(
        &mallory,
        server,
        "GET",
        "/api/v1/namespaces/default/secrets",
        None,
        None,
    )
    .await?;
    ensure!(code == 403, "admin in a lists secrets of default: {code}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_credential_reaches_only_its_own_node_pods_and_secrets() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let server = &cluster.server;
    let admin = &cluster.http;
    let node = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"node-restriction.kubernetes.io/zone": "z1", "team": "x"}},
        "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}})
    };
    let pod = |name: &str, node: &str, secret: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "serviceAccountName": "runner", "containers": [{"name": "c", "image": "x"}],
            "volumes": [{"name": "s", "secret": {"secretName": secret}}]}})
    };
    let secret = |name: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}});
    let account = |name: &str| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    let setup = [
        (
            "/api/v1/namespaces/default/serviceaccounts",
            account("runner"),
        ),
        (
            "/api/v1/namespaces/default/serviceaccounts",
            account("other"),
        ),
        ("/api/v1/nodes", node("a")),
        ("/api/v1/nodes", node("b")),
        ("/api/v1/namespaces/default/secrets", secret("secret-a")),
        ("/api/v1/namespaces/default/secrets", secret("secret-b")),
        (
            "/api/v1/namespaces/default/pods",
            pod("on-a", "a", "secret-a"),
        ),
        (
            "/api/v1/namespaces/default/pods",
            pod("on-b", "b", "secret-b"),
        ),
    ];
    for (path, object) in &setup {
        let (code, body) = send(admin, server, "POST", path, Some(object), None).await?;
        ensure!(code == 201, "setup {path}: {code} {body}");
    }
    let identity = issue(&cluster.pki, "system:node:a", &["system:nodes"])?;
    let node_a = tls_http(cluster.pki.ca_pem(), Some(&identity.identity_pem()))?;
    let get = |path: &'static str| async move {
        let (code, body) = send(admin, server, "GET", path, None, None).await?;
        ensure!(code == 200, "{path}: {code}");
        Ok::<Value, anyhow::Error>(body)
    };
    let node_b = get("/api/v1/nodes/b").await?;
    let pod_b = get("/api/v1/namespaces/default/pods/on-b").await?;
    let node_a_object = get("/api/v1/nodes/a").await?;
    let mut status_b = node_b.clone();
    status_b["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}]});
    let mut pod_b_status = pod_b.clone();
    pod_b_status["status"] = json!({"phase": "Failed"});
    let mut untainted = node_a_object.clone();
    untainted["spec"]["taints"] = json!([]);
    let mut relabelled = node_a_object.clone();
    relabelled["metadata"]["labels"]["node-restriction.kubernetes.io/zone"] = json!("z2");
    let merge = |v: Value| v;
    // (method, path, body, expected code)
    let denied: Vec<(&str, &str, Option<Value>)> = vec![
        ("PUT", "/api/v1/nodes/b/status", Some(status_b)),
        (
            "PATCH",
            "/api/v1/nodes/b",
            Some(merge(json!({"metadata": {"labels": {"x": "y"}}}))),
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/pods/on-b/status",
            Some(pod_b_status),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/on-b",
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
        ),
        ("DELETE", "/api/v1/namespaces/default/pods/on-b", None),
        ("GET", "/api/v1/namespaces/default/secrets/secret-b", None),
        ("GET", "/api/v1/namespaces/default/secrets", None),
        ("DELETE", "/api/v1/nodes/a", None),
        ("PUT", "/api/v1/nodes/a", Some(untainted)),
        ("PUT", "/api/v1/nodes/a", Some(relabelled)),
        (
            "PATCH",
            "/api/v1/nodes/a",
            Some(json!({"metadata": {"labels": {"node-restriction.kubernetes.io/zone": null}}})),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("sneaky", "a", "secret-b")),
        ),
        (
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            None,
        ),
        // Tokens only of its pods' accounts, and only bound to its own pods.
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/runner/token",
            Some(token_request(Some("on-b"))),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/runner/token",
            Some(token_request(None)),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/other/token",
            Some(token_request(Some("on-a"))),
        ),
    ];
    for (method, path, body) in &denied {
        let mut request = node_a.request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{server}{path}"),
        );
        if let Some(body) = body {
            request = if *method == "PATCH" {
                request
                    .header("Content-Type", "application/merge-patch+json")
                    .body(body.to_string())
            } else {
                request.json(body)
            };
        }
        let response = request.send().await?;
        let code = response.status().as_u16();
        let text = response.text().await?;
        ensure!(
            code == 403,
            "node a: {method} {path} answered {code}, not 403: {text}"
        );
        ensure!(!text.contains("\"data\""), "a refusal carried data: {text}");
    }
    // What stayed untouched, stayed untouched.
    ensure!(
        get("/api/v1/nodes/b").await?["metadata"]["resourceVersion"]
            == node_b["metadata"]["resourceVersion"]
    );
    ensure!(
        get("/api/v1/namespaces/default/pods/on-b").await?["metadata"]["resourceVersion"]
            == pod_b["metadata"]["resourceVersion"]
    );
    ensure!(
        get("/api/v1/nodes/a").await?["spec"]["taints"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    );

    // And what a node needs, it gets.
    let allowed: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/api/v1/namespaces/default/secrets/secret-a", None),
        ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Da", None),
        (
            "GET",
            "/api/v1/namespaces/default/secrets?fieldSelector=type%3Dkubernetes.io%2Ftls",
            None,
        ),
        (
            "PATCH",
            "/api/v1/nodes/a",
            Some(json!({"metadata": {"labels": {"team": "y"}}})),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/on-a/status",
            Some(json!({"status": {"phase": "Running"}})),
        ),
    ];
    for (method, path, body) in &allowed {
        let mut request = node_a.request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{server}{path}"),
        );
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/merge-patch+json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let code = response.status().as_u16();
        let text = response.text().await?;
        ensure!(
            code == 200,
            "node a: {method} {path} answered {code}: {text}"
        );
    }
    let secret_a = get("/api/v1/namespaces/default/secrets/secret-a").await?;
    ensure!(secret_a["data"]["k"] == "dg==", "{secret_a}");
    let response = node_a
        .post(format!(
            "{server}/api/v1/namespaces/default/serviceaccounts/runner/token"
        ))
        .json(&token_request(Some("on-a")))
        .send()
        .await?;
    let code = response.status().as_u16();
    let answer: Value = response.json().await?;
    ensure!(
        code == 201
            && answer["status"]["token"]
                .as_str()
                .is_some_and(|t| t.len() > 100),
        "node a's token for its own pod: {code} {answer}"
    );
    cluster.stop().await;
    Ok(())
}

/// A TokenRequest, bound to `pod` if given.
fn token_request(pod: Option<&str>) -> Value {
    let mut request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}});
    if let Some(pod) = pod {
        request["spec"]["boundObjectRef"] = json!({"apiVersion": "v1", "kind": "Pod", "name": pod});
    }
    request
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Result<(bool, String)> {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("running kubectl")?;
    // A successful command's answer is its stdout (kubectl warns on stderr); a failed
    // one's is everything it printed.
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let text = if output.status.success() {
        stdout
    } else {
        format!("{stdout}{}", String::from_utf8_lossy(&output.stderr))
    };
    Ok((output.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_over_tls_with_the_written_kubeconfig() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let control = ControlProcess::start(dir.path()).await?;
    let kubeconfig = control.kubeconfig.clone();
    for secret_file in [
        kubeconfig.clone(),
        dir.path().join("pki/ca.key"),
        dir.path().join("pki/apiserver.key"),
    ] {
        let mode = std::fs::metadata(&secret_file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} is {mode:o}", secret_file.display());
    }
    let written = std::fs::read_to_string(&kubeconfig)?;
    ensure!(written.contains("server: https://"), "{written}");

    let (ok, text) = tokio::task::spawn_blocking({
        let kubeconfig = kubeconfig.clone();
        move || kubectl(&kubeconfig, &["get", "namespaces"])
    })
    .await??;
    ensure!(ok && text.contains("kube-system"), "{text}");
    let (ok, text) = kubectl(&kubeconfig, &["auth", "whoami", "-o", "json"])?;
    ensure!(ok, "{text}");
    let review: Value = serde_json::from_str(&text)?;
    ensure!(
        review["status"]["userInfo"]["username"] == "system:admin",
        "{review}"
    );
    ensure!(
        review["status"]["userInfo"]["groups"][0] == "system:masters",
        "{review}"
    );
    let (ok, text) = kubectl(&kubeconfig, &["auth", "can-i", "delete", "nodes"])?;
    ensure!(ok && text.trim() == "yes", "{text}");

    // A kubeconfig for a user with only `view` in default: reads yes, writes no.
    let (ok, text) = kubectl(
        &kubeconfig,
        &[
            "create",
            "rolebinding",
            "viewer",
            "--clusterrole=view",
            "--user=viewer",
            "-n",
            "default",
        ],
    )?;
    ensure!(ok, "{text}");
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt"))?;
    let viewer_kubeconfig = dir.path().join("viewer.kubeconfig");
    let viewer = viewer_credential(dir.path())?;
    std::fs::write(
        &viewer_kubeconfig,
        skiff_client::kubeconfig::render_with(
            &control.server,
            &skiff_client::kubeconfig::Credentials {
                ca_pem: Some(&ca),
                client_certificate_pem: Some(&viewer.cert_pem),
                client_key_pem: Some(&viewer.key_pem),
                token: None,
            },
        ),
    )?;
    let (ok, text) = kubectl(&viewer_kubeconfig, &["auth", "can-i", "list", "pods"])?;
    ensure!(ok && text.trim() == "yes", "viewer can-i list pods: {text}");
    let (ok, text) = kubectl(&viewer_kubeconfig, &["auth", "can-i", "create", "pods"])?;
    ensure!(
        !ok && text.trim() == "no",
        "viewer can-i create pods: {text}"
    );
    let (ok, text) = kubectl(&viewer_kubeconfig, &["auth", "can-i", "--list"])?;
    ensure!(
        ok && text.contains("pods") && text.contains("selfsubjectaccessreviews"),
        "can-i --list: {text}"
    );
    let (ok, text) = kubectl(&viewer_kubeconfig, &["get", "pods"])?;
    ensure!(ok, "viewer get pods: {text}");
    let (ok, text) = kubectl(
        &viewer_kubeconfig,
        &["create", "configmap", "nope", "--from-literal=a=b"],
    )?;
    ensure!(
        !ok && text.contains("forbidden") && text.contains("User \"viewer\""),
        "viewer create: {text}"
    );
    let (ok, text) = kubectl(&viewer_kubeconfig, &["get", "pods", "-n", "kube-system"])?;
    ensure!(
        !ok && text.contains("forbidden"),
        "viewer in kube-system: {text}"
    );
    Ok(())
}

/// A certificate for `viewer`, issued with the CA key `skiff control` wrote (read-only:
/// the PKI directory is loaded without rewriting anything).
fn viewer_credential(data_dir: &std::path::Path) -> Result<skiff_control::pki::Credential> {
    let names = skiff_control::pki::ServingNames::standard("cluster.local", &[], &[]);
    let scratch = tempfile::tempdir()?;
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(data_dir.join("pki").join(file), scratch.path().join(file))?;
    }
    let pki = skiff_control::pki::ClusterPki::ensure(
        scratch.path(),
        &names,
        std::time::SystemTime::now(),
    )?;
    issue(&pki, "viewer", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_refused_with_429_while_probes_and_node_heartbeats_go_on() -> Result<()> {
    use skiff_control::apiserver::limits::LimitsConfig;
    let limits = LimitsConfig {
        max_read_only: 8,
        max_mutating: 4,
        request_timeout: std::time::Duration::from_secs(20),
        ..LimitsConfig::default()
    };
    let cluster = InProcess::start_api_only_limited(limits).await?;
    let server = cluster.server.clone();
    let admin = cluster.client();
    admin
        .create(
            &skiff_api::resource::ROLE_BINDINGS,
            Some("default"),
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
        )
        .await?;
    let node_identity = issue(&cluster.pki, "system:node:a", &["system:nodes"])?;
    let node = crate::harness::client_with(
        &server,
        cluster.pki.ca_pem(),
        Some(node_identity.identity_pem()),
        None,
    )?;
    let leases = &skiff_api::resource::LEASES;
    node.create(
        leases,
        Some("kube-node-lease"),
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 40}}),
    )
    .await?;
    let alice_identity = issue(&cluster.pki, "alice", &[])?;
    let alice = tls_http(cluster.pki.ca_pem(), Some(&alice_identity.identity_pem()))?;
    let config_maps = format!("{server}/api/v1/namespaces/default/configmaps");

    // Slow clients: uploads that trickle one byte every 100 ms for about 30 s hold every
    // mutating seat, until the request timeout (20 s) cuts them.
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..4 {
        // Each slow client on a connection of its own, as separate clients are.
        let alice = tls_http(cluster.pki.ca_pem(), Some(&alice_identity.identity_pem()))?;
        let url = config_maps.clone();
        slow.spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("slow-{i}")}}).to_string();
            let chunks = futures::stream::iter(body.into_bytes().into_iter().chain(std::iter::repeat_n(b' ', 220)))
                .then(|b| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(vec![b])
                });
            let started = std::time::Instant::now();
            let response = alice
                .post(&url)
                .header("Content-Type", "application/json")
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await;
            let code = response.map(|r| r.status().as_u16()).unwrap_or(0);
            anyhow::Ok((code, started.elapsed()))
        });
    }
    // Wait until the slow uploads hold the seats: a fast create is refused.
    crate::harness::eventually(std::time::Duration::from_secs(15), "the slow uploads to hold every seat", || async {
        let response = alice.post(format!("{config_maps}?dryRun=All")).json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}})).send().await.ok()?;
        let code = response.status().as_u16();
        // Read whole: an HTTP/2 response dropped unread resets its stream, and h2 ends a
        // connection after 1,024 of those.
        let _ = response.bytes().await;
        (code == 429).then_some(())
    })
    .await?;

    let flood_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let anonymous = tls_http(cluster.pki.ca_pem(), None)?;
    let probes = {
        let (done, server) = (flood_done.clone(), server.clone());
        tokio::spawn(async move {
            let mut answered = 0u32;
            for _ in 0..2_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let response = anonymous.get(format!("{server}/readyz")).send().await?;
                let code = response.status().as_u16();
                let body = response.text().await?;
                ensure!(
                    code == 200 && body == "ok",
                    "/readyz during the flood: {code} {body}"
                );
                answered += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            anyhow::Ok(answered)
        })
    };
    let heartbeats = {
        let done = flood_done.clone();
        tokio::spawn(async move {
            let mut renewed = 0u32;
            for _ in 0..2_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                node.patch(
                    leases,
                    Some("kube-node-lease"),
                    "a",
                    "application/merge-patch+json",
                    &json!({"spec": {"renewTime": now}}),
                )
                .await
                .context("a node heartbeat during the flood")?;
                renewed += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            anyhow::Ok(renewed)
        })
    };
    // The flood: 2,000 concurrent creates (dry runs) and lists.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..2_000 {
        let (alice, url) = (alice.clone(), config_maps.clone());
        flood.spawn(async move {
            let request = if i % 2 == 0 {
                alice.post(format!("{url}?dryRun=All")).json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("flood-{i}")}}))
            } else {
                alice.get(&url)
            };
            let response = request.send().await?;
            let code = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body: Value = response.json().await.unwrap_or(Value::Null);
            anyhow::Ok((code, retry_after, body))
        });
    }
    let (mut ok, mut throttled) = (0, 0);
    while let Some(result) = flood.join_next().await {
        let (code, retry_after, body) = result??;
        match code {
            200 | 201 => ok += 1,
            429 => {
                ensure!(
                    retry_after.as_deref() == Some("1"),
                    "429 without Retry-After: {retry_after:?}"
                );
                ensure!(
                    body["reason"] == "TooManyRequests" && body["code"] == 429,
                    "{body}"
                );
                throttled += 1;
            }
            other => bail!("a flood request answered {other}: {body}"),
        }
    }
    flood_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = probes.await??;
    let renewed = heartbeats.await??;
    // The slow uploads were cut at the request timeout, and nothing they sent was stored.
    while let Some(result) = slow.join_next().await {
        let (code, took) = result??;
        ensure!(matches!(code, 504 | 0), "a slow upload answered {code}");
        ensure!(
            took < std::time::Duration::from_secs(25),
            "a slow upload was held {took:?}"
        );
    }
    let stored = admin
        .list(
            &skiff_api::resource::CONFIG_MAPS,
            Some("default"),
            &Default::default(),
        )
        .await?;
    ensure!(
        stored["items"].as_array().is_some_and(Vec::is_empty),
        "{stored}"
    );
    eprintln!("flood: {ok} served, {throttled} refused with 429; {answered} probes and {renewed} heartbeats during it");
    ensure!(
        throttled > 0,
        "2,000 concurrent requests against held seats were never refused"
    );
    ensure!(ok > 0, "no read of the flood was served");
    ensure!(
        answered > 0 && renewed > 0,
        "probes {answered}, heartbeats {renewed}"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cleaner_deletes_expired_bootstrap_tokens_only() -> Result<()> {
    let cluster = InProcess::start().await?;
    let (server, admin) = (&cluster.server, &cluster.http);
    let secrets = "/api/v1/namespaces/kube-system/secrets";
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    for (id, expiration) in [("keep01", later.as_str()), ("gone01", soon.as_str())] {
        let (code, body) = send(
            admin,
            server,
            "POST",
            secrets,
            Some(&bootstrap_secret(id, "0123456789abcdef", expiration)),
            None,
        )
        .await?;
        ensure!(code == 201, "{code} {body}");
    }
    let anonymous = tls_http(cluster.pki.ca_pem(), None)?;
    let (code, _) = whoami(&anonymous, server, Some("gone01.0123456789abcdef")).await?;
    ensure!(code == 201, "the token works before it expires: {code}");
    crate::harness::eventually(
        std::time::Duration::from_secs(15),
        "the expired token's Secret to be deleted",
        || async {
            let (code, _) = send(
                admin,
                server,
                "GET",
                &format!("{secrets}/bootstrap-token-gone01"),
                None,
                None,
            )
            .await
            .ok()?;
            (code == 404).then_some(())
        },
    )
    .await?;
    let (code, _) = send(
        admin,
        server,
        "GET",
        &format!("{secrets}/bootstrap-token-keep01"),
        None,
        None,
    )
    .await?;
    ensure!(code == 200, "the valid token was deleted too: {code}");
    let (code, _) = whoami(&anonymous, server, Some("gone01.0123456789abcdef")).await?;
    ensure!(code == 401, "an expired token still authenticates: {code}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account_back_when_deleted() -> Result<()> {
    let cluster = InProcess::start().await?;
    let (server, admin) = (&cluster.server, &cluster.http);
    let (code, body) = send(
        admin,
        server,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})),
        None,
    )
    .await?;
    ensure!(code == 201, "{code} {body}");
    let account = "/api/v1/namespaces/team/serviceaccounts/default";
    let first = crate::harness::eventually(
        std::time::Duration::from_secs(15),
        "team's default service account",
        || async {
            let (code, body) = send(admin, server, "GET", account, None, None).await.ok()?;
            (code == 200).then_some(body)
        },
    )
    .await?;
    let (code, _) = send(admin, server, "DELETE", account, None, None).await?;
    ensure!(code == 200, "delete: {code}");
    crate::harness::eventually(
        std::time::Duration::from_secs(15),
        "the default service account to come back",
        || async {
            let (code, body) = send(admin, server, "GET", account, None, None).await.ok()?;
            (code == 200 && body["metadata"]["uid"] != first["metadata"]["uid"]).then_some(())
        },
    )
    .await?;
    for namespace in ["default", "kube-system"] {
        let (code, _) = send(
            admin,
            server,
            "GET",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/default"),
            None,
            None,
        )
        .await?;
        ensure!(
            code == 200,
            "{namespace} has no default service account: {code}"
        );
    }
    cluster.stop().await;
    Ok(())
}

#[test]
fn a_node_endpoint_serves_only_the_api_server() -> Result<()> {
    crate::netns::isolated(async {
        let dir = tempfile::tempdir()?;
        let (control, _node) = crate::harness::NodeProcess::cluster_in(dir.path()).await?;
        let admin = control.client()?;
        let node = admin.get(&skiff_api::resource::NODES, None, "n1").await?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .context("the node's endpoint port")?;
        let address = node["status"]["addresses"][0]["address"]
            .as_str()
            .context("address")?
            .to_string();
        let url = format!("https://{address}:{port}/containerLogs/default/none/c");
        let ca = std::fs::read_to_string(dir.path().join("control/pki/ca.crt"))?;
        // Plain HTTP, TLS without a certificate, and an admin's or a node's certificate of
        // the cluster CA: none gets an answer.
        let plain = reqwest::Client::new()
            .get(format!(
                "http://{address}:{port}/containerLogs/default/none/c"
            ))
            .send()
            .await;
        ensure!(
            plain.is_err(),
            "plain HTTP answered: {:?}",
            plain.map(|r| r.status())
        );
        let no_certificate = tls_http(&ca, None)?.get(&url).send().await;
        ensure!(
            no_certificate.is_err(),
            "TLS without a client certificate answered"
        );
        let names = skiff_control::pki::ServingNames::standard("cluster.local", &[], &[]);
        let scratch = tempfile::tempdir()?;
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(
                dir.path().join("control/pki").join(file),
                scratch.path().join(file),
            )?;
        }
        let pki = skiff_control::pki::ClusterPki::ensure(
            scratch.path(),
            &names,
            std::time::SystemTime::now(),
        )?;
        for (user, groups) in [
            ("system:admin", vec!["system:masters"]),
            ("system:node:n2", vec!["system:nodes"]),
        ] {
            let credential = issue(&pki, user, &groups)?;
            let answer = tls_http(&ca, Some(&credential.identity_pem()))?
                .get(&url)
                .send()
                .await;
            ensure!(
                answer.is_err(),
                "{user}'s certificate got an answer: {:?}",
                answer.map(|r| r.status())
            );
        }
        // The API server's own client certificate is served (a missing pod is a 404 of
        // the agent's, not a refused connection).
        let kubelet_client = issue(&pki, skiff_api::rbac::KUBELET_CLIENT_USER, &[])?;
        let answer = tls_http(&ca, Some(&kubelet_client.identity_pem()))?
            .get(&url)
            .send()
            .await?;
        ensure!(
            answer.status().as_u16() == 404,
            "the API server's certificate: {}",
            answer.status()
        );
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_work_until_their_account_or_pod_is_gone() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let (server, admin) = (cluster.server.clone(), cluster.http.clone());
    let kubeconfig = cluster.kubeconfig();
    let setup = [
        (
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
        ),
        (
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "robot-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}]}),
        ),
        (
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
            "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "x"}]}}),
        ),
    ];
    for (path, object) in &setup {
        let (code, body) = send(&admin, &server, "POST", path, Some(object), None).await?;
        ensure!(code == 201, "setup {path}: {code} {body}");
    }
    // kubectl create token, as a user would.
    let create = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&kubeconfig, &args)
        })
    };
    let (ok, token) = create(vec![
        "create".into(),
        "token".into(),
        "robot".into(),
        "--duration=1h".into(),
    ])
    .await??;
    ensure!(ok, "kubectl create token: {token}");
    let token = token.trim().to_string();
    ensure!(token.split('.').count() == 3, "not a JWT: {token}");
    let anonymous = tls_http(cluster.pki.ca_pem(), None)?;
    let (code, review) = whoami(&anonymous, &server, Some(&token)).await?;
    ensure!(code == 201, "whoami: {code} {review}");
    let info = &review["status"]["userInfo"];
    ensure!(
        info["username"] == "system:serviceaccount:default:robot",
        "{review}"
    );
    ensure!(
        info["groups"]
            == json!([
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]),
        "{review}"
    );
    // What its Role allows, and nothing more.
    let (code, _) = send(
        &anonymous,
        &server,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        Some(&token),
    )
    .await?;
    ensure!(code == 200, "the robot lists pods: {code}");
    let (code, body) = send(
        &anonymous,
        &server,
        "GET",
        "/api/v1/namespaces/default/secrets",
        None,
        Some(&token),
    )
    .await?;
    ensure!(
        code == 403
            && body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("system:serviceaccount:default:robot"),
        "{code} {body}"
    );
    let (ok, nobody) = create(vec!["create".into(), "token".into(), "nobody".into()]).await??;
    ensure!(ok, "{nobody}");
    let (code, _) = send(
        &anonymous,
        &server,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        Some(nobody.trim()),
    )
    .await?;
    ensure!(
        code == 403,
        "an account without a binding lists pods: {code}"
    );
    // Forged, for another audience, too short: refused.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (code, _) = send(
        &anonymous,
        &server,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        Some(&forged),
    )
    .await?;
    ensure!(code == 401, "a forged token: {code}");
    let (ok, other) = create(vec![
        "create".into(),
        "token".into(),
        "robot".into(),
        "--audience=https://elsewhere.example".into(),
    ])
    .await??;
    ensure!(ok, "{other}");
    let (code, _) = send(
        &anonymous,
        &server,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        Some(other.trim()),
    )
    .await?;
    ensure!(code == 401, "a token for another audience: {code}");
    let (ok, text) = create(vec![
        "create".into(),
        "token".into(),
        "robot".into(),
        "--duration=1m".into(),
    ])
    .await??;
    ensure!(!ok && text.contains("10 minutes"), "{text}");
    // Bound to a pod: valid while the pod is.
    let (ok, bound) = create(vec![
        "create".into(),
        "token".into(),
        "robot".into(),
        "--bound-object-kind=Pod".into(),
        "--bound-object-name=worker".into(),
    ])
    .await??;
    ensure!(ok, "{bound}");
    let bound = bound.trim().to_string();
    let (code, review) = whoami(&anonymous, &server, Some(&bound)).await?;
    ensure!(
        code == 201
            && review["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"]
                == json!(["worker"]),
        "{code} {review}"
    );
    let (code, _) = send(
        &admin,
        &server,
        "DELETE",
        "/api/v1/namespaces/default/pods/worker?gracePeriodSeconds=0",
        None,
        None,
    )
    .await?;
    ensure!(code == 200, "delete pod: {code}");
    crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "the pod-bound token to stop working",
        || async {
            let (code, _) = whoami(&anonymous, &server, Some(&bound)).await.ok()?;
            (code == 401).then_some(())
        },
    )
    .await?;
    // Deleting the account revokes its tokens.
    let (code, _) = send(
        &admin,
        &server,
        "DELETE",
        "/api/v1/namespaces/default/serviceaccounts/robot",
        None,
        None,
    )
    .await?;
    ensure!(code == 200, "delete account: {code}");
    let (code, _) = send(
        &anonymous,
        &server,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        Some(&token),
    )
    .await?;
    ensure!(code == 401, "the token of a deleted account: {code}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_who_did_what_without_bodies() -> Result<()> {
    let audit_dir = tempfile::tempdir()?;
    let path = audit_dir.path().join("audit.log");
    let audit = skiff_control::audit::AuditConfig {
        path: path.clone(),
        max_bytes: 100 << 20,
        max_backups: 1,
    };
    let cluster =
        InProcess::start_configured(false, move |config| config.audit = Some(audit)).await?;
    let server = &cluster.server;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "hunter2-audit"}});
    let (code, _) = send(
        &cluster.http,
        server,
        "POST",
        "/api/v1/namespaces/default/secrets",
        Some(&secret),
        None,
    )
    .await?;
    ensure!(code == 201);
    let bob = issue(&cluster.pki, "bob", &["dev"])?;
    let bob = tls_http(cluster.pki.ca_pem(), Some(&bob.identity_pem()))?;
    let (code, _) = send(
        &bob,
        server,
        "GET",
        "/api/v1/namespaces/default/secrets/db",
        None,
        None,
    )
    .await?;
    ensure!(code == 403);
    let anonymous = tls_http(cluster.pki.ca_pem(), None)?;
    let (code, _) = send(&anonymous, server, "GET", "/api/v1/namespaces", None, None).await?;
    ensure!(code == 401);
    let events: Vec<Value> = crate::harness::eventually(
        std::time::Duration::from_secs(5),
        "the audit lines",
        || async {
            let text = std::fs::read_to_string(&path).ok()?;
            let events: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            events
                .iter()
                .any(|e| e["responseStatus"]["code"] == 401)
                .then_some(events)
        },
    )
    .await?;
    let find = |user: &str, code: u16| {
        events
            .iter()
            .find(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == code)
            .cloned()
    };
    let created = find("system:admin", 201).context("the admin's create")?;
    ensure!(
        created["verb"] == "create" && created["objectRef"]["resource"] == "secrets",
        "{created}"
    );
    let refused = find("bob", 403).context("bob's refused get")?;
    ensure!(
        refused["verb"] == "get"
            && refused["objectRef"]["name"] == "db"
            && refused["user"]["groups"][0] == "dev",
        "{refused}"
    );
    ensure!(refused["sourceIPs"][0] == "127.0.0.1", "{refused}");
    ensure!(
        find("system:anonymous", 401).is_some(),
        "no record of the anonymous request"
    );
    let text = std::fs::read_to_string(&path)?;
    ensure!(
        !text.contains("hunter2-audit") && !text.contains("aHVudGVyMi1hdWRpdA"),
        "a secret reached the audit log"
    );
    cluster.stop().await;
    Ok(())
}

/// A wasm pod's in-cluster client (reliability-security §7.4 A-2): the projected token,
/// CA and namespace, `KUBERNETES_SERVICE_HOST`, HTTPS to the `kubernetes` Service
/// verified against the cluster CA; 403 without a Role, the pods with one.
#[test]
fn an_in_cluster_client_lists_pods_only_when_a_role_allows_it() -> Result<()> {
    crate::netns::isolated(async {
        let dir = tempfile::tempdir()?;
        let (control, _node) = crate::harness::NodeProcess::cluster_in(dir.path()).await?;
        let admin = control.client()?;
        let r = &skiff_api::resource::NAMESPACES;
        admin
            .create(
                r,
                None,
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
            )
            .await?;
        let accounts = &skiff_api::resource::SERVICE_ACCOUNTS;
        admin
            .create(accounts, Some("apps"), &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}))
            .await?;
        // Every namespace gets the cluster CA to verify the API server with.
        let ca = std::fs::read_to_string(control.data_dir.join("pki/ca.crt"))?;
        let config_maps = &skiff_api::resource::CONFIG_MAPS;
        crate::harness::eventually(
            std::time::Duration::from_secs(20),
            "kube-root-ca.crt in apps",
            || async {
                let map = admin
                    .get(config_maps, Some("apps"), "kube-root-ca.crt")
                    .await
                    .ok()?;
                (map["data"]["ca.crt"] == ca.as_str()).then_some(())
            },
        )
        .await?;
        let image = crate::harness::example_image("wasm32-wasip2", "in-cluster")?;
        let pod = |name: &str, account: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"serviceAccountName": account, "restartPolicy": "Never",
                    "containers": [{"name": "client", "image": image}]}})
        };
        let pods = &skiff_api::resource::PODS;
        // An account that does not exist is refused at once.
        let missing = admin
            .create(pods, Some("apps"), &pod("nobody", "ghost"))
            .await;
        ensure!(
            missing.as_ref().err().and_then(|e| e.code()) == Some(403),
            "a pod of a missing account: {missing:?}"
        );
        let created = admin
            .create(pods, Some("apps"), &pod("denied", "reader"))
            .await?;
        let volume = &created["spec"]["volumes"][0];
        ensure!(
            volume["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
                && created["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
                    == "/var/run/secrets/kubernetes.io/serviceaccount",
            "the admitted pod: {}",
            created["spec"]
        );
        let finished = |name: &'static str| {
            let admin = admin.clone();
            async move {
                let phase = crate::harness::eventually(
                    std::time::Duration::from_secs(30),
                    &format!("pod {name} to finish"),
                    || async {
                        let pod = admin.get(pods, Some("apps"), name).await.ok()?;
                        let phase = pod["status"]["phase"].as_str()?.to_string();
                        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
                    },
                )
                .await?;
                let (_, log) = admin
                    .get_bytes(&format!("/api/v1/namespaces/apps/pods/{name}/log"), "")
                    .await?
                    .context("no log")?;
                Ok::<_, anyhow::Error>((phase, String::from_utf8_lossy(&log).into_owned()))
            }
        };
        let (phase, log) = finished("denied").await?;
        ensure!(
            phase == "Failed"
                && log.contains("GET /api/v1/namespaces/apps/pods: 403")
                && log.contains("system:serviceaccount:apps:reader"),
            "without a Role: {phase}\n{log}"
        );
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "apps"}]});
        admin
            .create(&skiff_api::resource::ROLES, Some("apps"), &role)
            .await?;
        admin
            .create(&skiff_api::resource::ROLE_BINDINGS, Some("apps"), &binding)
            .await?;
        admin
            .create(pods, Some("apps"), &pod("allowed", "reader"))
            .await?;
        let (phase, log) = finished("allowed").await?;
        ensure!(
            phase == "Succeeded"
                && log.contains("GET /api/v1/namespaces/apps/pods: 200")
                && log.contains("pod: allowed")
                && log.contains("pod: denied"),
            "with a Role: {phase}\n{log}"
        );
        Ok(())
    })
}
