//! Kubeconfig files: found the way kubectl finds them (`--kubeconfig`, then
//! `KUBECONFIG`, then `~/.kube/config`), read for the current context's server and
//! credentials (CA, client certificate, token), and written by the control plane for its
//! clients.

use crate::http::{HttpConfig, TlsConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config (skiff control writes DATA_DIR/kubeconfig)")]
    NotFound,
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kubeconfig: {0}")]
    Invalid(String),
}

/// A parsed kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    document: Value,
    /// Relative file references (`certificate-authority: ca.crt`) resolve against the
    /// kubeconfig's own directory, as kubectl resolves them.
    base_dir: Option<PathBuf>,
}

/// How to reach the current context's cluster: its URL and the client settings.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub http: HttpConfig,
}

impl Kubeconfig {
    /// Finds and reads the kubeconfig: `explicit`, else the first file of `KUBECONFIG`,
    /// else `~/.kube/config`.
    pub fn discover(explicit: Option<&Path>) -> Result<Kubeconfig, KubeconfigError> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(p) => vec![p.to_path_buf()],
            None => {
                let mut c: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
                    .map(|v| {
                        std::env::split_paths(&v)
                            .filter(|p| !p.as_os_str().is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                if c.is_empty() {
                    if let Some(home) = std::env::var_os("HOME") {
                        c.push(PathBuf::from(home).join(".kube").join("config"));
                    }
                }
                c
            }
        };
        for path in candidates {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let mut config = Kubeconfig::parse(&text)?;
                    config.base_dir = path.parent().map(Path::to_path_buf);
                    return Ok(config);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                    continue
                }
                Err(source) => {
                    return Err(KubeconfigError::Read {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        Err(KubeconfigError::NotFound)
    }

    pub fn parse(text: &str) -> Result<Kubeconfig, KubeconfigError> {
        let document: Value =
            serde_yaml::from_str(text).map_err(|e| KubeconfigError::Invalid(e.to_string()))?;
        Ok(Kubeconfig {
            document,
            base_dir: None,
        })
    }

    /// The server URL of the current context's cluster.
    pub fn current_server(&self) -> Result<String, KubeconfigError> {
        let (cluster_name, cluster) = self.current_cluster()?;
        cluster
            .pointer("/cluster/server")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                KubeconfigError::Invalid(format!("cluster {cluster_name:?} has no server"))
            })
    }

    /// The current context's server with its CA, client certificate and token, as kubectl
    /// would use them (`*-data` fields inline, or files relative to the kubeconfig).
    pub fn current_connection(&self) -> Result<Connection, KubeconfigError> {
        let server = self.current_server()?;
        let (_, cluster) = self.current_cluster()?;
        let cluster = cluster.get("cluster").cloned().unwrap_or(Value::Null);
        let user = self.current_user()?.unwrap_or(Value::Null);
        let mut http = HttpConfig::default();
        let mut tls = TlsConfig {
            insecure_skip_verify: cluster
                .get("insecure-skip-tls-verify")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..TlsConfig::default()
        };
        if let Some(ca) = self.data_or_file(&cluster, "certificate-authority")? {
            tls.ca_pem = ca;
        }
        let certificate = self.data_or_file(&user, "client-certificate")?;
        let key = self.data_or_file(&user, "client-key")?;
        match (certificate, key) {
            (Some(mut certificate), Some(key)) => {
                certificate.push(b'\n');
                certificate.extend_from_slice(&key);
                tls.identity_pem = Some(certificate);
            }
            (None, None) => {}
            _ => return Err(KubeconfigError::Invalid(
                "the user has a client certificate without a key, or a key without a certificate"
                    .into(),
            )),
        }
        http.tls = tls;
        http.bearer_token = match user.get("token").and_then(Value::as_str) {
            Some(token) => Some(token.to_string()),
            None => match user.get("tokenFile").and_then(Value::as_str) {
                Some(file) => Some(
                    String::from_utf8_lossy(&self.read_file(file)?)
                        .trim()
                        .to_string(),
                ),
                None => None,
            },
        };
        Ok(Connection { server, http })
    }

    /// `field-data` (base64) or `field` (a file path) of a cluster or user entry.
    fn data_or_file(&self, entry: &Value, field: &str) -> Result<Option<Vec<u8>>, KubeconfigError> {
        if let Some(data) = entry.get(format!("{field}-data")).and_then(Value::as_str) {
            return skiff_api::object::base64_decode(data.trim())
                .map(Some)
                .ok_or_else(|| KubeconfigError::Invalid(format!("{field}-data is not base64")));
        }
        match entry.get(field).and_then(Value::as_str) {
            Some(path) => self.read_file(path).map(Some),
            None => Ok(None),
        }
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, KubeconfigError> {
        let path = Path::new(path);
        let path = match (&self.base_dir, path.is_relative()) {
            (Some(base), true) => base.join(path),
            _ => path.to_path_buf(),
        };
        std::fs::read(&path).map_err(|source| KubeconfigError::Read {
            path: path.display().to_string(),
            source,
        })
    }

    fn current_context(&self) -> Result<(String, Value), KubeconfigError> {
        let context_name = self
            .document
            .get("current-context")
            .and_then(Value::as_str)
            .ok_or_else(|| KubeconfigError::Invalid("current-context is not set".into()))?;
        let context = self.find("contexts", context_name).ok_or_else(|| {
            KubeconfigError::Invalid(format!("context {context_name:?} not found"))
        })?;
        Ok((context_name.to_string(), context))
    }

    fn current_user(&self) -> Result<Option<Value>, KubeconfigError> {
        let (context_name, context) = self.current_context()?;
        let Some(user_name) = context.pointer("/context/user").and_then(Value::as_str) else {
            return Ok(None);
        };
        let user = self.find("users", user_name).ok_or_else(|| {
            KubeconfigError::Invalid(format!(
                "context {context_name:?} names user {user_name:?}, which is not defined"
            ))
        })?;
        Ok(user.get("user").cloned())
    }

    fn find(&self, list: &str, name: &str) -> Option<Value> {
        self.document
            .get(list)
            .and_then(Value::as_array)
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
            })
            .cloned()
    }

    fn current_cluster(&self) -> Result<(String, Value), KubeconfigError> {
        let doc = &self.document;
        let context_name = doc
            .get("current-context")
            .and_then(Value::as_str)
            .ok_or_else(|| KubeconfigError::Invalid("current-context is not set".into()))?;
        let find = |list: &str, name: &str| {
            doc.get(list)
                .and_then(Value::as_array)
                .and_then(|items| {
                    items
                        .iter()
                        .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
                })
                .cloned()
        };
        let context = find("contexts", context_name).ok_or_else(|| {
            KubeconfigError::Invalid(format!("context {context_name:?} not found"))
        })?;
        let cluster_name = context
            .pointer("/context/cluster")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                KubeconfigError::Invalid(format!("context {context_name:?} names no cluster"))
            })?;
        let cluster = find("clusters", cluster_name).ok_or_else(|| {
            KubeconfigError::Invalid(format!("cluster {cluster_name:?} not found"))
        })?;
        Ok((cluster_name.to_string(), cluster))
    }

    /// The namespace of the current context, if it sets one.
    pub fn current_namespace(&self) -> Option<String> {
        let context_name = self.document.get("current-context")?.as_str()?;
        self.document
            .get("contexts")?
            .as_array()?
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(context_name))?
            .pointer("/context/namespace")?
            .as_str()
            .map(str::to_string)
    }
}

/// What a rendered kubeconfig trusts and authenticates with, PEM.
#[derive(Clone, Default)]
pub struct Credentials<'a> {
    pub ca_pem: Option<&'a str>,
    pub client_certificate_pem: Option<&'a str>,
    pub client_key_pem: Option<&'a str>,
    pub token: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("has_ca", &self.ca_pem.is_some())
            .field(
                "has_client_certificate",
                &self.client_certificate_pem.is_some(),
            )
            .finish_non_exhaustive()
    }
}

/// Renders a kubeconfig for a skiff cluster at `server`, without credentials (an
/// `--insecure-http` cluster).
pub fn render(server: &str) -> String {
    render_with(server, &Credentials::default())
}

/// Renders a kubeconfig for a skiff cluster at `server` with the CA and credentials
/// inline (`*-data`), so the file stands alone as kubectl expects. It holds a private
/// key: write it 0600.
pub fn render_with(server: &str, credentials: &Credentials<'_>) -> String {
    use skiff_api::object::base64_encode;
    let mut cluster = json!({"server": server});
    if let Some(ca) = credentials.ca_pem {
        cluster["certificate-authority-data"] = json!(base64_encode(ca.as_bytes()));
    }
    let mut user = json!({});
    if let Some(cert) = credentials.client_certificate_pem {
        user["client-certificate-data"] = json!(base64_encode(cert.as_bytes()));
    }
    if let Some(key) = credentials.client_key_pem {
        user["client-key-data"] = json!(base64_encode(key.as_bytes()));
    }
    if let Some(token) = credentials.token {
        user["token"] = json!(token);
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": cluster}],
        "users": [{"name": "skiff-admin", "user": user}],
        "contexts": [{"name": "skiff", "context": {"cluster": "skiff", "user": "skiff-admin", "namespace": "default"}}],
        "current-context": "skiff",
        "preferences": {},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfig_reads_back() {
        let config = Kubeconfig::parse(&render("http://127.0.0.1:1234")).unwrap();
        assert_eq!(config.current_server().unwrap(), "http://127.0.0.1:1234");
        assert_eq!(config.current_namespace().as_deref(), Some("default"));
    }

    #[test]
    fn connection_reads_inline_data_files_relative_to_the_kubeconfig_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA PEM").unwrap();
        std::fs::write(dir.path().join("token"), "abc.def\n").unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: 'https://10.0.0.1:6443', certificate-authority: ca.crt}}}}]\n\
             users: [{{name: u, user: {{client-certificate-data: {}, client-key-data: {}, tokenFile: token}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n",
            skiff_api::object::base64_encode(b"CERT PEM"),
            skiff_api::object::base64_encode(b"KEY PEM"),
        );
        let path = dir.path().join("config");
        std::fs::write(&path, text).unwrap();
        let connection = Kubeconfig::discover(Some(&path))
            .unwrap()
            .current_connection()
            .unwrap();
        assert_eq!(connection.server, "https://10.0.0.1:6443");
        assert_eq!(connection.http.tls.ca_pem, b"CA PEM");
        assert_eq!(
            connection.http.tls.identity_pem.as_deref(),
            Some(&b"CERT PEM\nKEY PEM"[..])
        );
        assert_eq!(connection.http.bearer_token.as_deref(), Some("abc.def"));
        // Key material never shows in debug output (logs).
        assert!(!format!("{:?}", connection.http).contains("KEY PEM"));
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let text = "current-context: c\nclusters: [{name: k, cluster: {server: 'https://h'}}]\n\
                    users: [{name: u, user: {client-certificate-data: Q0VSVA==}}]\n\
                    contexts: [{name: c, context: {cluster: k, user: u}}]\n";
        let error = Kubeconfig::parse(text)
            .unwrap()
            .current_connection()
            .unwrap_err();
        assert!(error.to_string().contains("without a key"), "{error}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            Kubeconfig::discover(Some(&missing)),
            Err(KubeconfigError::Read { .. })
        ));
    }
}
