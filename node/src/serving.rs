//! The node's serving certificate for its log and port-forward endpoint: asked of the
//! cluster CA with a CertificateSigningRequest (signer `kubernetes.io/kubelet-serving`,
//! the node's InternalIP and name as its names), which the control plane approves for a
//! node's own addresses and signs. Kept in the data directory and reused while more than
//! a third of its lifetime is left and it names the node's current addresses.

use crate::NodeConfig;
use skiff_client::Client;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const SIGNING_TIMEOUT: Duration = Duration::from_secs(60);

/// A PEM certificate and key.
#[derive(Clone)]
pub struct ServingCredential {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServingCredential {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCredential").finish_non_exhaustive()
    }
}

/// Why no serving certificate could be had.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot make the serving key or request: {0}")]
    Key(String),
    #[error("no serving certificate: {0}")]
    Request(Box<skiff_client::certificates::CertificateError>),
    #[error("cannot keep the serving certificate in {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<skiff_client::certificates::CertificateError> for ServingError {
    fn from(e: skiff_client::certificates::CertificateError) -> Self {
        ServingError::Request(Box::new(e))
    }
}

/// The names the certificate must carry: the node's address and its name.
fn wanted_names(config: &NodeConfig) -> Vec<String> {
    vec![config.address.to_string(), config.name.clone()]
}

/// The node's serving credential: the kept one if still good, else a new one signed.
pub async fn ensure(
    client: &Client,
    config: &NodeConfig,
) -> Result<ServingCredential, ServingError> {
    let dir = &config.data_dir;
    let names = wanted_names(config).join("\n");
    if let Some(kept) = kept(dir, &names) {
        return Ok(kept);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ServingError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(wanted_names(config))
        .map_err(|e| ServingError::Key(e.to_string()))?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::OrganizationName, "system:nodes");
    subject.push(
        rcgen::DnType::CommonName,
        format!("system:node:{}", config.name),
    );
    params.distinguished_name = subject;
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| ServingError::Key(e.to_string()))?;
    let cert_pem = request_signed(client, &config.name, &request).await?;
    let credential = ServingCredential {
        cert_pem,
        key_pem: key.serialize_pem().into_bytes(),
    };
    write(dir, "serving.key", &credential.key_pem, 0o600)?;
    write(dir, "serving.crt", &credential.cert_pem, 0o644)?;
    write(dir, "serving.names", names.as_bytes(), 0o644)?;
    Ok(credential)
}

/// The kept credential, if it names `names` and has more than a third of its life left.
fn kept(dir: &Path, names: &str) -> Option<ServingCredential> {
    let cert_pem = std::fs::read(dir.join("serving.crt")).ok()?;
    let key_pem = std::fs::read(dir.join("serving.key")).ok()?;
    let kept_names = std::fs::read_to_string(dir.join("serving.names")).ok()?;
    if kept_names != names {
        return None;
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = cert.validity();
    let (start, end) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    (end - now > (end - start) / 3).then_some(ServingCredential { cert_pem, key_pem })
}

async fn request_signed(
    client: &Client,
    node: &str,
    request_pem: &str,
) -> Result<Vec<u8>, ServingError> {
    let name = format!("node-serving-{node}-{:08x}", rand::random::<u32>());
    let request = skiff_client::certificates::CertificateRequest {
        name: &name,
        request_pem,
        signer_name: KUBELET_SERVING_SIGNER,
        usages: &["digital signature", "server auth"],
        timeout: SIGNING_TIMEOUT,
    };
    Ok(skiff_client::certificates::request_certificate(client, request).await?)
}

/// Writes `contents` with `mode` from creation on, atomically.
fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), ServingError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(name);
    let io = |source| ServingError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}
