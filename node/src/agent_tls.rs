//! TLS of the agent's log and port-forward endpoint (the kubelet's port): the node's
//! serving certificate, and client certificates required, chained to the cluster CA and
//! naming the API server's kubelet client — so nobody but the API server reads a pod's
//! logs or opens a tunnel into it (the kubelet's insecure default, anonymous and
//! AlwaysAllow, is what this avoids).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The one client the endpoint serves: the API server's kubelet client certificate.
pub use skiff_api::rbac::KUBELET_CLIENT_USER;

/// Errors building the endpoint's TLS configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what}: {message}")]
pub struct AgentTlsError {
    what: &'static str,
    message: String,
}

fn invalid(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> AgentTlsError {
    move |e| AgentTlsError {
        what,
        message: e.to_string(),
    }
}

/// A rustls server configuration serving `cert_chain_pem`/`key_pem` that requires a
/// client certificate signed by `client_ca_pem`.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, AgentTlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("serving certificate")(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("serving key")(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        let ca = ca.map_err(|e| invalid("cluster CA")(&e))?;
        roots.add(ca).map_err(|e| invalid("cluster CA")(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| invalid("cluster CA")(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions")(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("serving certificate")(&e))?;
    Ok(Arc::new(config))
}

/// Whether the verified client certificate of a connection is the API server's.
pub fn is_api_server(connection: &rustls::ServerConnection) -> bool {
    let Some(leaf) = connection.peer_certificates().and_then(|c| c.first()) else {
        return false;
    };
    common_name(leaf.as_ref()).as_deref() == Some(KUBELET_CLIENT_USER)
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
