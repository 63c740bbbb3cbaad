//! Asking the cluster for a certificate: create a `certificates.k8s.io/v1`
//! CertificateSigningRequest for a PEM request and wait until the signer has filled in
//! `status.certificate` (or an approver denied it, or the signer failed it). A joining
//! node uses it for its client certificate, an agent for its serving certificate.

use crate::{Client, ClientError};
use serde_json::{json, Value};
use std::time::Duration;

/// Why no certificate came.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("the certificate request {name} was {why}")]
    Refused { name: String, why: String },
    #[error("the certificate request {name} was not signed within {timeout:?}")]
    Timeout { name: String, timeout: Duration },
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct CertificateRequest<'a> {
    /// The CSR object's name.
    pub name: &'a str,
    /// The PEM `CERTIFICATE REQUEST`.
    pub request_pem: &'a str,
    pub signer_name: &'a str,
    pub usages: &'a [&'a str],
    pub timeout: Duration,
}

/// Creates the CSR and returns the PEM certificate once it is signed.
pub async fn request_certificate(
    client: &Client,
    request: CertificateRequest<'_>,
) -> Result<Vec<u8>, CertificateError> {
    let csrs = &skiff_api::resource::CERTIFICATE_SIGNING_REQUESTS;
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": request.name},
        "spec": {
            "request": skiff_api::object::base64_encode(request.request_pem.as_bytes()),
            "signerName": request.signer_name,
            "usages": request.usages,
        },
    });
    client.create(csrs, None, &body).await?;
    let deadline = tokio::time::Instant::now() + request.timeout;
    loop {
        let csr = client.get(csrs, None, request.name).await?;
        if let Some(why) = refusal(&csr) {
            return Err(CertificateError::Refused {
                name: request.name.to_string(),
                why,
            });
        }
        if let Some(pem) = csr["status"]["certificate"]
            .as_str()
            .and_then(skiff_api::object::base64_decode)
        {
            return Ok(pem);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CertificateError::Timeout {
                name: request.name.to_string(),
                timeout: request.timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Denied or Failed condition, worded for the error.
fn refusal(csr: &Value) -> Option<String> {
    csr["status"]["conditions"]
        .as_array()?
        .iter()
        .find_map(|c| {
            let kind = c["type"].as_str()?;
            (matches!(kind, "Denied" | "Failed") && c["status"] == "True").then(|| {
                format!(
                    "{}: {}",
                    kind.to_lowercase(),
                    c["message"].as_str().unwrap_or_default()
                )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_and_failed_requests_are_refusals_pending_ones_are_not() {
        let csr = |kind: &str, status: &str| json!({"status": {"conditions": [{"type": kind, "status": status, "message": "no"}]}});
        assert_eq!(
            refusal(&csr("Denied", "True")).as_deref(),
            Some("denied: no")
        );
        assert_eq!(
            refusal(&csr("Failed", "True")).as_deref(),
            Some("failed: no")
        );
        assert_eq!(refusal(&csr("Approved", "True")), None);
        assert_eq!(refusal(&csr("Denied", "False")), None);
        assert_eq!(refusal(&json!({})), None);
    }
}
