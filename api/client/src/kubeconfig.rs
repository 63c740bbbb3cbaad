//! Kubeconfig files: found the way kubectl finds them (`--kubeconfig`, then
//! `KUBECONFIG`, then `~/.kube/config`), read for the current context's server, and
//! written by the control plane for its clients.

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
                Ok(text) => return Kubeconfig::parse(&text),
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
        Ok(Kubeconfig { document })
    }

    /// The server URL of the current context's cluster.
    pub fn current_server(&self) -> Result<String, KubeconfigError> {
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
        cluster
            .pointer("/cluster/server")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                KubeconfigError::Invalid(format!("cluster {cluster_name:?} has no server"))
            })
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

/// Renders a kubeconfig for a skiff cluster at `server`.
pub fn render(server: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": {"server": server}}],
        "users": [{"name": "skiff-admin", "user": {}}],
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
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            Kubeconfig::discover(Some(&missing)),
            Err(KubeconfigError::Read { .. })
        ));
    }
}
