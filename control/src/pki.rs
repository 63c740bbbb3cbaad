//! The cluster PKI: the cluster CA, the API server's serving certificate and the client
//! certificates the CA issues (the admin's, the control plane's loopback identity, nodes').
//!
//! Made on first start under `DATA_DIR/pki/` and loaded on every later one; only this
//! module (and the TLS setup built on it) handles key material. Keys are ECDSA P-256 (what
//! client-go's certificate manager generates), written 0600 and atomically, so a crash
//! never leaves half a key. The serving certificate is re-issued when the names it must
//! carry change or when less than a third of its lifetime is left; the CA is never
//! replaced (every kubeconfig and node trusts it).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long the CA is valid (kubeadm: 10 years).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long leaf certificates are valid (kube-controller-manager's
/// `--cluster-signing-duration` default: one year).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The admin identity written into the kubeconfig (k3s's: user `system:admin` in the
/// `system:masters` group, which the default `cluster-admin` binding names).
pub const ADMIN_USER: &str = "system:admin";
pub const MASTERS_GROUP: &str = "system:masters";

/// Errors of the PKI: files that cannot be read or written, or material that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable {what}: {message}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

/// The names and addresses the API server's certificate must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ServingNames {
    /// The names every API server certificate has (kubeadm's): `kubernetes`,
    /// `kubernetes.default`, `kubernetes.default.svc`, `kubernetes.default.svc.<domain>`,
    /// `localhost`, and loopback; plus the given addresses (listen, advertise, the
    /// `kubernetes` Service IP) and extra names.
    pub fn standard(cluster_domain: &str, ips: &[IpAddr], extra: &[String]) -> ServingNames {
        let mut dns: Vec<String> = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "localhost",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        dns.push(format!("kubernetes.default.svc.{cluster_domain}"));
        let mut all_ips = vec![IpAddr::from([127, 0, 0, 1])];
        let mut names = ServingNames::default();
        for name in extra {
            match name.parse::<IpAddr>() {
                Ok(ip) => all_ips.push(ip),
                Err(_) => dns.push(name.clone()),
            }
        }
        all_ips.extend(ips.iter().copied().filter(|ip| !ip.is_unspecified()));
        for name in dns {
            if !names.dns.contains(&name) {
                names.dns.push(name);
            }
        }
        for ip in all_ips {
            if !names.ips.contains(&ip) {
                names.ips.push(ip);
            }
        }
        names
    }

    /// One line per name, as kept beside the certificate to tell whether it still fits.
    fn fingerprint(&self) -> String {
        let mut lines: Vec<String> = self.dns.iter().map(|d| format!("dns:{d}")).collect();
        lines.extend(self.ips.iter().map(|ip| format!("ip:{ip}")));
        lines.sort();
        lines.join("\n")
    }
}

/// A PEM certificate (chain) and its PEM private key.
#[derive(Clone)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credential {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The certificate followed by the key, as `skiff_client::TlsConfig::identity_pem`
    /// takes them.
    pub fn identity_pem(&self) -> Vec<u8> {
        format!("{}{}", self.cert_pem, self.key_pem).into_bytes()
    }
}

/// The cluster CA and the API server's serving credential, loaded or made by
/// [`ClusterPki::ensure`].
pub struct ClusterPki {
    dir: PathBuf,
    ca_cert_pem: String,
    /// The CA's name, key identifier and key, as every issued certificate names it.
    issuer: Issuer<'static, KeyPair>,
    serving: Credential,
    /// PKCS#8 PEM of the service-account signing key.
    service_account_key_pem: String,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "apiserver.crt";
const SERVING_KEY: &str = "apiserver.key";
const SERVING_NAMES: &str = "apiserver.names";
/// The key service-account tokens are signed with (kube-apiserver's
/// `--service-account-signing-key-file`).
const SERVICE_ACCOUNT_KEY: &str = "sa.key";

impl ClusterPki {
    /// Loads the PKI from `dir`, making whatever is missing: the CA on first start, the
    /// serving certificate when it is missing, lacks one of `names`, or is past two thirds
    /// of its lifetime.
    pub fn ensure(dir: &Path, names: &ServingNames, now: SystemTime) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        restrict_dir(dir)?;
        let (ca_cert_pem, ca_key) = match read_optional(&dir.join(CA_CERT))? {
            Some(cert) => {
                let key_path = dir.join(CA_KEY);
                let key_pem = read_optional(&key_path)?.ok_or_else(|| PkiError::Invalid {
                    path: key_path.clone(),
                    what: "CA key",
                    message: "the CA certificate exists but its key is missing".into(),
                })?;
                let key = parse_key(&key_path, &key_pem)?;
                (cert, key)
            }
            None => {
                let (cert, key) = make_ca(now)?;
                write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
                write_public(&dir.join(CA_CERT), cert.as_bytes())?;
                (cert, key)
            }
        };
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| PkiError::Invalid {
                path: dir.join(CA_CERT),
                what: "CA certificate",
                message: e.to_string(),
            })?;
        let mut pki = ClusterPki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            issuer,
            serving: Credential {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            service_account_key_pem: String::new(),
        };
        pki.serving = pki.ensure_serving(names, now)?;
        pki.service_account_key_pem = ensure_service_account_key(dir)?;
        Ok(pki)
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, as kubeadm's
    /// `--discovery-token-ca-cert-hash` pins it.
    pub fn ca_cert_hash(&self) -> String {
        spki_sha256(&rcgen::PublicKeyData::subject_public_key_info(
            self.issuer.key(),
        ))
    }

    /// The API server's serving certificate (with the CA after it) and key.
    pub fn serving(&self) -> &Credential {
        &self.serving
    }

    /// The service-account token signing key, PKCS#8 PEM.
    pub fn service_account_key_pem(&self) -> &str {
        &self.service_account_key_pem
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a client certificate for `user` in `groups` (CN and O, as Kubernetes'
    /// x509 authenticator reads them), valid from now for `lifetime`. At most one group:
    /// the certificate library keeps one value per name attribute, and a group silently
    /// dropped would be worse than a refusal (sign a CSR made with openssl for more).
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[&str],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Credential, PkiError> {
        if groups.len() > 1 {
            return Err(PkiError::Issue(format!(
                "a certificate carries one group here, not {}",
                groups.len()
            )));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Issue(e.to_string()))?;
        let mut params = leaf_params(now, lifetime);
        params.distinguished_name = subject(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = self.sign(&params, &key)?;
        Ok(Credential {
            cert_pem: cert,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a PEM certificate request as a client certificate for the subject it asks
    /// for, valid from now for `lifetime`. Whatever else the request asks (SANs, CA
    /// rights, other usages) is ignored: the signer decides what a client certificate is.
    pub fn sign_client_request(
        &self,
        request_pem: &[u8],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        self.sign_request(
            request_pem,
            lifetime,
            now,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Signs a PEM certificate request as a serving certificate for the names it asks
    /// for (the approver has checked they are the requester's own), valid from now for
    /// `lifetime`.
    pub fn sign_serving_request(
        &self,
        request_pem: &[u8],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        self.sign_request(
            request_pem,
            lifetime,
            now,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A leaf certificate for the request's subject with `usage`; a serving certificate
    /// keeps the names asked for, a client certificate carries none.
    fn sign_request(
        &self,
        request_pem: &[u8],
        lifetime: Duration,
        now: SystemTime,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<String, PkiError> {
        let text = std::str::from_utf8(request_pem)
            .map_err(|_| PkiError::Issue("the request is not PEM text".into()))?;
        let mut request = rcgen::CertificateSigningRequestParams::from_pem(text)
            .map_err(|e| PkiError::Issue(format!("the request does not parse: {e}")))?;
        let mut params = leaf_params(now, lifetime);
        params.distinguished_name = request.params.distinguished_name.clone();
        if usage == ExtendedKeyUsagePurpose::ServerAuth {
            params.subject_alt_names = request.params.subject_alt_names.clone();
        }
        params.extended_key_usages = vec![usage];
        request.params = params;
        request
            .signed_by(&self.issuer)
            .map(|c| c.pem())
            .map_err(|e| PkiError::Issue(e.to_string()))
    }

    fn sign(&self, params: &CertificateParams, key: &KeyPair) -> Result<String, PkiError> {
        params
            .signed_by(key, &self.issuer)
            .map(|c| c.pem())
            .map_err(|e| PkiError::Issue(e.to_string()))
    }

    fn ensure_serving(
        &self,
        names: &ServingNames,
        now: SystemTime,
    ) -> Result<Credential, PkiError> {
        let (cert_path, key_path) = (self.dir.join(SERVING_CERT), self.dir.join(SERVING_KEY));
        let names_path = self.dir.join(SERVING_NAMES);
        let wanted = names.fingerprint();
        if let (Some(cert_pem), Some(key_pem), Some(kept)) = (
            read_optional(&cert_path)?,
            read_optional(&key_path)?,
            read_optional(&names_path)?,
        ) {
            let fresh = not_after(&cert_path, &cert_pem)?
                .duration_since(now)
                .is_ok_and(|left| left > LEAF_LIFETIME / 3);
            if kept == wanted && fresh {
                return Ok(Credential { cert_pem, key_pem });
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Issue(e.to_string()))?;
        let mut params = leaf_params(now, LEAF_LIFETIME);
        params.distinguished_name = subject("kube-apiserver", &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for dns in &names.dns {
            let name = dns.clone().try_into().map_err(|e: rcgen::Error| {
                PkiError::Issue(format!("invalid server name {dns:?}: {e}"))
            })?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cert = self.sign(&params, &key)?;
        // The chain clients get: the leaf, then the CA.
        let chain = format!("{cert}{}", self.ca_cert_pem);
        let credential = Credential {
            cert_pem: chain,
            key_pem: key.serialize_pem(),
        };
        write_private(&key_path, credential.key_pem.as_bytes())?;
        write_public(&cert_path, credential.cert_pem.as_bytes())?;
        write_public(&names_path, wanted.as_bytes())?;
        Ok(credential)
    }
}

/// `sha256:<hex>` of the public key of the (first) certificate in `ca_pem`: what a
/// joining node compares with the `--ca-cert-hash` it was given.
pub fn ca_cert_hash_of_pem(ca_pem: &[u8]) -> Result<String, PkiError> {
    let invalid = |message: String| PkiError::Invalid {
        path: PathBuf::from("<CA certificate>"),
        what: "CA certificate",
        message,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem).map_err(|e| invalid(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| invalid(e.to_string()))?;
    Ok(spki_sha256(cert.tbs_certificate.subject_pki.raw))
}

/// A new ECDSA P-256 key and a certificate request for `user` in `group`, as a joining
/// node makes them (PEM key, PEM request). The key never leaves the node.
pub fn client_key_and_request(user: &str, group: &str) -> Result<Credential, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Issue(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(user, &[group]);
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| PkiError::Issue(e.to_string()))?;
    Ok(Credential {
        cert_pem: request,
        key_pem: key.serialize_pem(),
    })
}

/// When the (first) certificate of `cert_pem` stops being valid.
pub fn certificate_not_after(cert_pem: &[u8]) -> Result<SystemTime, PkiError> {
    let text = String::from_utf8_lossy(cert_pem);
    not_after(Path::new("<certificate>"), &text)
}

/// `sha256:<hex>` of a DER SubjectPublicKeyInfo.
pub fn spki_sha256(spki_der: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(spki_der)))
}

/// The service-account signing key, made on first start (ECDSA P-256 PKCS#8).
fn ensure_service_account_key(dir: &Path) -> Result<String, PkiError> {
    let path = dir.join(SERVICE_ACCOUNT_KEY);
    if let Some(pem) = read_optional(&path)? {
        return Ok(pem);
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Issue(e.to_string()))?;
    let pem = key.serialize_pem();
    write_private(&path, pem.as_bytes())?;
    Ok(pem)
}

fn make_ca(now: SystemTime) -> Result<(String, KeyPair), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Issue(e.to_string()))?;
    let mut params = CertificateParams::default();
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // Like k3s's `k3s-server-ca@<unix time>`: a new cluster's CA is told apart by name.
    params.distinguished_name = subject(&format!("skiff-ca@{}", since_epoch.as_secs()), &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now, Duration::ZERO, true);
    params.not_after = offset(now, CA_LIFETIME, false);
    let cert = params
        .self_signed(&key)
        .map_err(|e| PkiError::Issue(e.to_string()))?;
    Ok((cert.pem(), key))
}

fn leaf_params(now: SystemTime, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    // A little back-dating tolerates clocks of other machines that run behind.
    params.not_before = offset(now, Duration::from_secs(300), true);
    params.not_after = offset(now, lifetime, false);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn subject(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for org in organizations {
        name.push(DnType::OrganizationName, *org);
    }
    name.push(DnType::CommonName, common_name);
    name
}

fn offset(now: SystemTime, by: Duration, before: bool) -> time::OffsetDateTime {
    let at = if before {
        now.checked_sub(by).unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        now.checked_add(by).unwrap_or(now)
    };
    time::OffsetDateTime::from(at)
}

fn not_after(path: &Path, cert_pem: &str) -> Result<SystemTime, PkiError> {
    let invalid = |message: String| PkiError::Invalid {
        path: path.to_path_buf(),
        what: "certificate",
        message,
    };
    let pem = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| invalid(e.to_string()))?
        .1;
    let cert = pem.parse_x509().map_err(|e| invalid(e.to_string()))?;
    let seconds = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

fn parse_key(path: &Path, pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| PkiError::Invalid {
        path: path.to_path_buf(),
        what: "private key",
        message: e.to_string(),
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a secret file 0600 from its creation on (never briefly world-readable), then
/// renames it into place so readers see the old file or the whole new one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_with_mode(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |action: &'static str| {
        move |source| PkiError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create"))?;
    file.write_all(contents).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    std::fs::rename(&tmp, path).map_err(io("rename"))
}

fn restrict_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        PkiError::Io {
            action: "restrict",
            path: dir.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn names() -> ServingNames {
        ServingNames::standard("cluster.local", &[IpAddr::from([10, 43, 0, 1])], &[])
    }

    fn san_strings(cert_pem: &str) -> Vec<String> {
        let pem = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .unwrap()
            .1;
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    _ => format!("{b:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn first_start_makes_a_ca_and_keys_only_the_owner_reads() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::ensure(dir.path(), &names(), SystemTime::now()).unwrap();
        for key in [CA_KEY, SERVING_KEY, SERVICE_ACCOUNT_KEY] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let sans = san_strings(&pki.serving().cert_pem);
        for wanted in [
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "127.0.0.1",
            "10.43.0.1",
        ] {
            assert!(
                sans.iter().any(|s| s == wanted),
                "{wanted} missing from {sans:?}"
            );
        }
        assert!(pki.ca_cert_hash().starts_with("sha256:"));
        assert_eq!(pki.ca_cert_hash().len(), "sha256:".len() + 64);
    }

    #[test]
    fn a_restart_keeps_the_ca_and_reissues_the_serving_certificate_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let first = ClusterPki::ensure(dir.path(), &names(), now).unwrap();
        let again = ClusterPki::ensure(dir.path(), &names(), now).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert_eq!(first.serving().cert_pem, again.serving().cert_pem);
        let more = ServingNames::standard("cluster.local", &[], &["api.example.test".into()]);
        let renamed = ClusterPki::ensure(dir.path(), &more, now).unwrap();
        assert_eq!(first.ca_pem(), renamed.ca_pem());
        assert_ne!(first.serving().cert_pem, renamed.serving().cert_pem);
        assert!(san_strings(&renamed.serving().cert_pem).contains(&"api.example.test".to_string()));
        // Two thirds of the lifetime later the certificate is renewed.
        let later = now + LEAF_LIFETIME / 3 * 2 + Duration::from_secs(3600);
        let renewed = ClusterPki::ensure(dir.path(), &more, later).unwrap();
        assert_ne!(renamed.serving().cert_pem, renewed.serving().cert_pem);
    }

    #[test]
    fn client_certificates_carry_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let pki = ClusterPki::ensure(dir.path(), &names(), now).unwrap();
        let cred = pki
            .issue_client("system:node:n1", &["system:nodes"], LEAF_LIFETIME, now)
            .unwrap();
        let pem = x509_parser::pem::parse_x509_pem(cred.cert_pem.as_bytes())
            .unwrap()
            .1;
        let cert = pem.parse_x509().unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["system:node:n1"]);
        assert_eq!(orgs, ["system:nodes"]);
        assert!(format!("{cred:?}").find("PRIVATE").is_none());
    }

    #[test]
    fn a_signed_request_names_the_requested_subject_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let pki = ClusterPki::ensure(dir.path(), &names(), now).unwrap();
        assert_eq!(
            ca_cert_hash_of_pem(pki.ca_pem().as_bytes()).unwrap(),
            pki.ca_cert_hash()
        );
        let request = client_key_and_request("system:node:n1", "system:nodes").unwrap();
        let cert = pki
            .sign_client_request(request.cert_pem.as_bytes(), Duration::from_secs(3600), now)
            .unwrap();
        let pem = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap().1;
        let parsed = pem.parse_x509().unwrap();
        let cn: Vec<_> = parsed
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["system:node:n1"]);
        let left = parsed.validity().not_after.timestamp()
            - now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
        assert!((3500..=3700).contains(&left), "{left}");
        let ca = x509_parser::pem::parse_x509_pem(pki.ca_pem().as_bytes())
            .unwrap()
            .1;
        let ca = ca.parse_x509().unwrap();
        assert!(parsed.verify_signature(Some(ca.public_key())).is_ok());
        assert!(pki
            .sign_client_request(b"not a request", Duration::from_secs(60), now)
            .is_err());
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        ClusterPki::ensure(dir.path(), &names(), SystemTime::now()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = ClusterPki::ensure(dir.path(), &names(), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("key is missing"), "{err}");
    }
}
