//! `certificates.k8s.io/v1` CertificateSigningRequests: the approver and the signer of
//! kube-controller-manager (`csrapproving`, `csrsigning`), run in the API server's
//! process because the signer holds the CA key.
//!
//! Node client certificates (`kubernetes.io/kube-apiserver-client-kubelet`) are
//! approved automatically when a bootstrap token's user asks for one (joining) or a
//! node asks for its own (renewal), and only for the subject a node certificate must
//! have (CN `system:node:<name>`, O `system:nodes`, client usages). Everything else
//! waits for `kubectl certificate approve`; approved requests for the two client
//! signers are signed, for at most a year.

use crate::pki::ClusterPki;
use crate::registry::{Registry, WriteOptions};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use skiff_api::resource;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Node agents' serving certificates (their log and port-forward endpoint).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The shortest certificate the signer issues (Kubernetes: 10 minutes).
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// How often pending requests are looked at without a wake-up.
const RESCAN: Duration = Duration::from_secs(5);

/// The subject a CSR asks for, and the names (IP addresses and DNS names) it asks to
/// carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub names: Vec<String>,
}

/// Reads the subject of a PEM CSR, checking its signature (the requester holds the key).
pub fn requested_subject(csr_pem: &[u8]) -> Result<Subject, String> {
    use x509_parser::prelude::FromDer as _;
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem).map_err(|e| e.to_string())?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "expected a CERTIFICATE REQUEST, got {:?}",
            pem.label
        ));
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| e.to_string())?;
    csr.verify_signature()
        .map_err(|e| format!("the request's signature does not verify: {e}"))?;
    let name = &csr.certification_request_info.subject;
    let common_name = name
        .iter_common_name()
        .filter_map(|c| c.as_str().ok())
        .next()
        .unwrap_or_default()
        .to_string();
    let organizations = name
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    let mut names = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                names.push(match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => dns.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        ip_text(bytes).ok_or("a malformed IP address name")?
                    }
                    // Anything else (e-mail, URI) is not a node's name.
                    _ => String::from("<unsupported name>"),
                });
            }
        }
    }
    let subject = Subject {
        common_name,
        organizations,
        names,
    };
    Ok(subject)
}

/// Whether the request is one a node client certificate may be made from: the kubelet
/// signer, a node's subject, and nothing but client usages.
pub fn is_node_client_request(csr: &CertificateSigningRequest, subject: &Subject) -> bool {
    let allowed = ["digital signature", "key encipherment", "client auth"];
    csr.spec.signer_name == KUBELET_CLIENT_SIGNER
        && subject.organizations == ["system:nodes"]
        && subject
            .common_name
            .strip_prefix("system:node:")
            .is_some_and(|name| !name.is_empty())
        && csr.spec.usages.as_deref().is_some_and(|u| {
            u.iter().any(|x| x == "client auth") && u.iter().all(|x| allowed.contains(&x.as_str()))
        })
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// The node a node subject names (`system:node:<name>` in `system:nodes`).
fn node_of(subject: &Subject) -> Option<&str> {
    let name = subject.common_name.strip_prefix("system:node:")?;
    (!name.is_empty() && subject.organizations == ["system:nodes"]).then_some(name)
}

/// Whether the request is one a node's serving certificate may be made from: the
/// kubelet-serving signer, a node's subject, server usages, and names that are all the
/// Node's own addresses or host name (no one else's name).
pub fn is_node_serving_request(
    csr: &CertificateSigningRequest,
    subject: &Subject,
    node_addresses: Option<&[String]>,
) -> bool {
    let allowed = ["digital signature", "key encipherment", "server auth"];
    let usages_ok = csr.spec.usages.as_deref().is_some_and(|u| {
        u.iter().any(|x| x == "server auth") && u.iter().all(|x| allowed.contains(&x.as_str()))
    });
    let names_ok = node_addresses.is_some_and(|own| {
        !subject.names.is_empty() && subject.names.iter().all(|n| own.contains(n))
    });
    csr.spec.signer_name == KUBELET_SERVING_SIGNER
        && node_of(subject).is_some()
        && usages_ok
        && names_ok
}

/// Why a pending request is approved without a person, if it is: a bootstrap token's
/// user joining a node, a node renewing its own client certificate, or a node asking
/// for a serving certificate for its own addresses (as k3s issues them).
pub fn auto_approval(
    csr: &CertificateSigningRequest,
    subject: &Subject,
    node_addresses: Option<&[String]>,
) -> Option<&'static str> {
    let groups = csr.spec.groups.as_deref().unwrap_or_default();
    let in_group = |g: &str| groups.iter().any(|x| x == g);
    let by_the_node = in_group("system:nodes")
        && csr.spec.username.as_deref() == Some(subject.common_name.as_str());
    if is_node_serving_request(csr, subject, node_addresses) {
        return by_the_node
            .then_some("Auto approving a node's serving certificate for its own addresses.");
    }
    if !is_node_client_request(csr, subject) {
        return None;
    }
    if in_group(crate::auth::tokens::BOOTSTRAPPERS_GROUP) {
        return Some("Auto approving kubelet client certificate after a bootstrap token joined.");
    }
    by_the_node.then_some("Auto approving self kubelet client certificate.")
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// What to do with one request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Approve(&'static str),
    Sign,
    /// Sign as a serving certificate with the names asked for.
    SignServing,
    /// Approved but not for a signer of ours, or for a subject it may not have.
    Fail(String),
    Nothing,
}

/// Whether a request is done with: signed, denied or failed.
fn finished(csr: &CertificateSigningRequest) -> bool {
    let has_certificate = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    has_certificate || condition(csr, "Denied") || condition(csr, "Failed")
}

/// The pure decision for one request. `node_addresses` are the addresses and host name
/// of the Node a node subject names, if that Node exists.
pub fn next_step(csr: &CertificateSigningRequest, node_addresses: Option<&[String]>) -> Step {
    if finished(csr) {
        return Step::Nothing;
    }
    let subject = match requested_subject(&csr.spec.request.0) {
        Ok(subject) => subject,
        Err(e) if condition(csr, "Approved") => return Step::Fail(e),
        Err(_) => return Step::Nothing,
    };
    if !condition(csr, "Approved") {
        return auto_approval(csr, &subject, node_addresses).map_or(Step::Nothing, Step::Approve);
    }
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER if !is_node_client_request(csr, &subject) => Step::Fail(
            "the kubelet client signer signs only system:node:<name> in system:nodes".into(),
        ),
        // The certificate library keeps one organization per subject: refusing beats
        // signing a certificate with fewer groups than were asked for.
        _ if subject.organizations.len() > 1 => {
            Step::Fail("skiff's signer issues certificates with at most one organization".into())
        }
        KUBELET_SERVING_SIGNER if !is_node_serving_request(csr, &subject, node_addresses) => {
            Step::Fail("the kubelet serving signer signs only a node's own addresses".into())
        }
        KUBELET_SERVING_SIGNER => Step::SignServing,
        KUBELET_CLIENT_SIGNER | CLIENT_SIGNER => Step::Sign,
        // Another signer's request: not ours to sign or to fail.
        _ => Step::Nothing,
    }
}

/// Runs the approver and signer until `stopped` flips.
pub async fn run(
    registry: Registry,
    pki: Arc<ClusterPki>,
    wake: Arc<Notify>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut changed = false;
        for value in registry
            .list_objects(&resource::CERTIFICATE_SIGNING_REQUESTS, None)
            .unwrap_or_default()
        {
            let Ok(csr) = serde_json::from_value::<CertificateSigningRequest>(value) else {
                continue;
            };
            match act(&registry, &pki, csr).await {
                Ok(acted) => changed |= acted,
                Err(e) => {
                    tracing::warn!(error = %e, "a certificate signing request could not be processed")
                }
            }
        }
        // An approval is followed by signing at once, not at the next wake-up.
        if changed {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESCAN) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn act(
    registry: &Registry,
    pki: &ClusterPki,
    mut csr: CertificateSigningRequest,
) -> Result<bool, skiff_api::ApiError> {
    // Finished requests stay in the store; every scan passes over them without parsing.
    if finished(&csr) {
        return Ok(false);
    }
    let now = registry.clock.now();
    let addresses = requested_subject(&csr.spec.request.0)
        .ok()
        .and_then(|s| node_of(&s).map(str::to_string))
        .and_then(|node| node_addresses(registry, &node));
    let (kind, reason, message) = match next_step(&csr, addresses.as_deref()) {
        Step::Nothing => return Ok(false),
        Step::Approve(message) => ("Approved", "AutoApproved", message.to_string()),
        Step::Fail(message) => ("Failed", "SignerValidationFailure", message),
        step @ (Step::Sign | Step::SignServing) => {
            let lifetime = csr
                .spec
                .expiration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(crate::pki::LEAF_LIFETIME)
                .clamp(MIN_LIFETIME, crate::pki::LEAF_LIFETIME);
            let at = SystemTime::from(now);
            let request = &csr.spec.request.0;
            let pem = match step {
                Step::SignServing => pki.sign_serving_request(request, lifetime, at),
                _ => pki.sign_client_request(request, lifetime, at),
            }
            .map_err(|e| skiff_api::ApiError::internal(e.to_string()))?;
            let status = csr.status.get_or_insert_with(Default::default);
            status.certificate = Some(k8s_openapi::ByteString(pem.into_bytes()));
            return write_status(registry, csr).await.map(|()| true);
        }
    };
    let status = csr.status.get_or_insert_with(Default::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: kind.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        });
    write_status(registry, csr).await.map(|()| true)
}

/// A Node's addresses and host name, as its serving certificate may name them.
fn node_addresses(registry: &Registry, node: &str) -> Option<Vec<String>> {
    let (_, object) = registry.get(&resource::NODES, None, node).ok()?;
    let addresses = object.pointer("/status/addresses")?.as_array()?;
    Some(
        addresses
            .iter()
            .filter_map(|a| a.get("address").and_then(serde_json::Value::as_str))
            .map(str::to_string)
            .collect(),
    )
}

async fn write_status(
    registry: &Registry,
    csr: CertificateSigningRequest,
) -> Result<(), skiff_api::ApiError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let mut value =
        serde_json::to_value(&csr).map_err(|e| skiff_api::ApiError::internal(e.to_string()))?;
    value["apiVersion"] = serde_json::json!("certificates.k8s.io/v1");
    value["kind"] = serde_json::json!("CertificateSigningRequest");
    registry
        .update(
            &resource::CERTIFICATE_SIGNING_REQUESTS,
            None,
            &name,
            value,
            Some("status"),
            &WriteOptions::default(),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestSpec, CertificateSigningRequestStatus,
    };

    fn request(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        for org in orgs {
            name.push(rcgen::DnType::OrganizationName, *org);
        }
        name.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = name;
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn csr(cn: &str, signer: &str, username: &str, groups: &[&str]) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: k8s_openapi::ByteString(request(cn, &["system:nodes"])),
                signer_name: signer.into(),
                usages: Some(vec!["digital signature".into(), "client auth".into()]),
                username: Some(username.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn approved(mut csr: CertificateSigningRequest) -> CertificateSigningRequest {
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        csr
    }

    #[test]
    fn only_node_requests_from_joiners_or_the_node_itself_are_approved() {
        let bootstrapper = ["system:bootstrappers", "system:authenticated"];
        let node = ["system:nodes", "system:authenticated"];
        let join = csr(
            "system:node:n1",
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &bootstrapper,
        );
        assert!(matches!(next_step(&join, None), Step::Approve(_)));
        let renew = csr(
            "system:node:n1",
            KUBELET_CLIENT_SIGNER,
            "system:node:n1",
            &node,
        );
        assert!(matches!(next_step(&renew, None), Step::Approve(_)));
        // A node asking for another node's certificate, a user asking for a node's, a
        // request for the admin, another signer: left for a person to decide.
        let other_node = csr(
            "system:node:n2",
            KUBELET_CLIENT_SIGNER,
            "system:node:n1",
            &node,
        );
        assert_eq!(next_step(&other_node, None), Step::Nothing);
        let user = csr(
            "system:node:n1",
            KUBELET_CLIENT_SIGNER,
            "alice",
            &["system:authenticated"],
        );
        assert_eq!(next_step(&user, None), Step::Nothing);
        let mut admin = csr(
            "system:admin",
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &bootstrapper,
        );
        admin.spec.request = k8s_openapi::ByteString(request("system:admin", &["system:masters"]));
        assert_eq!(next_step(&admin, None), Step::Nothing);
        let generic = csr(
            "system:node:n1",
            CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &bootstrapper,
        );
        assert_eq!(next_step(&generic, None), Step::Nothing);
        let mut serving = join.clone();
        serving.spec.usages = Some(vec!["digital signature".into(), "server auth".into()]);
        assert_eq!(next_step(&serving, None), Step::Nothing);
    }

    fn serving_request(cn: &str, names: &[&str], username: &str) -> CertificateSigningRequest {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "system:nodes");
        name.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = name;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: k8s_openapi::ByteString(pem.into_bytes()),
                signer_name: KUBELET_SERVING_SIGNER.into(),
                usages: Some(vec!["digital signature".into(), "server auth".into()]),
                username: Some(username.into()),
                groups: Some(vec!["system:nodes".into(), "system:authenticated".into()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_node_gets_a_serving_certificate_for_its_own_addresses_only() {
        let own: Vec<String> = vec!["10.0.0.5".into(), "n1".into()];
        let good = serving_request("system:node:n1", &["10.0.0.5", "n1"], "system:node:n1");
        assert!(matches!(next_step(&good, Some(&own)), Step::Approve(_)));
        assert_eq!(
            next_step(&approved(good.clone()), Some(&own)),
            Step::SignServing
        );
        // Another address, another node's request, an unknown node: left alone.
        let stolen = serving_request(
            "system:node:n1",
            &["10.0.0.5", "10.0.0.9"],
            "system:node:n1",
        );
        assert_eq!(next_step(&stolen, Some(&own)), Step::Nothing);
        let other = serving_request("system:node:n1", &["10.0.0.5"], "system:node:n2");
        assert_eq!(next_step(&other, Some(&own)), Step::Nothing);
        assert_eq!(next_step(&good, None), Step::Nothing);
        // Approved by someone anyway, a name not the node's is still not signed.
        assert!(matches!(
            next_step(&approved(stolen), Some(&own)),
            Step::Fail(_)
        ));
    }

    #[test]
    fn approved_requests_are_signed_or_failed_and_finished_ones_left_alone() {
        let join = approved(csr(
            "system:node:n1",
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &[],
        ));
        assert_eq!(next_step(&join, None), Step::Sign);
        let mut admin = approved(csr("x", KUBELET_CLIENT_SIGNER, "alice", &[]));
        admin.spec.request = k8s_openapi::ByteString(request("system:admin", &["system:masters"]));
        assert!(matches!(next_step(&admin, None), Step::Fail(_)));
        let mut person = approved(csr("x", CLIENT_SIGNER, "alice", &[]));
        person.spec.request = k8s_openapi::ByteString(request("bob", &["dev"]));
        assert_eq!(next_step(&person, None), Step::Sign);
        let mut garbage = approved(csr("x", CLIENT_SIGNER, "alice", &[]));
        garbage.spec.request = k8s_openapi::ByteString(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
        );
        assert!(matches!(next_step(&garbage, None), Step::Fail(_)));
        let mut done = join.clone();
        done.status.as_mut().unwrap().certificate = Some(k8s_openapi::ByteString(b"pem".to_vec()));
        assert_eq!(next_step(&done, None), Step::Nothing);
        let mut foreign = approved(csr("system:node:n1", "example.com/signer", "alice", &[]));
        foreign.spec.usages = None;
        assert_eq!(next_step(&foreign, None), Step::Nothing);
    }
}
