//! The ServiceAccount admission of pods (Kubernetes' `ServiceAccount` admission plugin):
//! every pod runs as a service account (`default` unless it names one), and unless it
//! or its account opts out, gets the `kube-api-access-…` projected volume — a token
//! bound to the pod, the cluster CA (`kube-root-ca.crt`) and the namespace — mounted at
//! [`MOUNT_PATH`] in every container, which is where in-cluster clients look.
//!
//! [`admit`] is the pure decision; the Pod strategy of the registry looks the account up.

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};

/// Where in-cluster clients (client-go, kube-rs, the Python client) read the token,
/// `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The account a pod that names none runs as.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The ConfigMap in every namespace that carries the cluster CA.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
pub const ROOT_CA_KEY: &str = "ca.crt";
/// Kubernetes' prefix of the projected volume's name.
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The token lifetime Kubernetes asks for (an hour and seven seconds, so tokens of this
/// volume can be told from others).
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// 0644, as Kubernetes.
const DEFAULT_MODE: i32 = 0o644;

/// Why a pod cannot be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It names an account that does not exist (`default` may be missing for a moment,
    /// until the service-account controller makes it: the agent waits for its token).
    MissingAccount { namespace: String, name: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MissingAccount { namespace, name } => write!(
                f,
                "error looking up service account {namespace}/{name}: serviceaccount \"{name}\" not found"
            ),
        }
    }
}

/// The account `pod` runs as: `serviceAccountName`, else the deprecated
/// `serviceAccount`, else `default`.
pub fn account_name(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.as_deref())
        .or_else(|| spec.and_then(|s| s.service_account.as_deref()))
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_ACCOUNT)
        .to_string()
}

/// Admits `pod` as running under `account` (the stored account of [`account_name`], if
/// it exists); `mount` names the token volume (`kube-api-access-{mount}`), `None` when
/// the cluster issues no tokens.
pub fn admit(
    pod: &mut Pod,
    account: Option<&ServiceAccount>,
    mount: Option<&str>,
) -> Result<(), Refusal> {
    let name = account_name(pod);
    if account.is_none() && name != DEFAULT_ACCOUNT {
        return Err(Refusal::MissingAccount {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name,
        });
    }
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    spec.service_account_name = Some(name.clone());
    spec.service_account = Some(name);
    let automount = spec
        .automount_service_account_token
        .or_else(|| account.and_then(|a| a.automount_service_account_token))
        .unwrap_or(true);
    let Some(suffix) = mount.filter(|_| automount) else {
        return Ok(());
    };
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let volume_name = match volumes.iter().find(|v| is_api_access_volume(v)) {
        Some(existing) => existing.name.clone(),
        None => {
            let name = format!("{VOLUME_PREFIX}{suffix}");
            volumes.push(api_access_volume(&name));
            name
        }
    };
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        if mounts.iter().any(|m| m.mount_path == MOUNT_PATH) {
            continue;
        }
        mounts.push(VolumeMount {
            name: volume_name.clone(),
            mount_path: MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Ok(())
}

fn is_api_access_volume(volume: &Volume) -> bool {
    volume.name.starts_with(VOLUME_PREFIX) && volume.projected.is_some()
}

/// The projected volume Kubernetes 1.22+ mounts: token, CA, namespace.
fn api_access_volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(DEFAULT_MODE),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: "token".into(),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: ROOT_CA_CONFIG_MAP.into(),
                        items: Some(vec![KeyToPath {
                            key: ROOT_CA_KEY.into(),
                            path: ROOT_CA_KEY.into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn account(automount: Option<bool>) -> ServiceAccount {
        ServiceAccount {
            automount_service_account_token: automount,
            ..Default::default()
        }
    }

    fn mounts(pod: &Pod) -> Vec<Vec<(String, String)>> {
        let spec = pod.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| {
                c.volume_mounts
                    .iter()
                    .flatten()
                    .map(|m| (m.name.clone(), m.mount_path.clone()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_pod_runs_as_default_and_gets_the_api_access_volume_in_every_container() {
        let mut p = pod(json!({
            "initContainers": [{"name": "init", "image": "i"}],
            "containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}],
        }));
        admit(&mut p, Some(&account(None)), Some("x2b4c")).unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        assert_eq!(spec.service_account.as_deref(), Some("default"));
        let volume = json!(spec.volumes.as_ref().unwrap()[0]);
        assert_eq!(
            volume,
            json!({"name": "kube-api-access-x2b4c", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}})
        );
        let wanted = ("kube-api-access-x2b4c".to_string(), MOUNT_PATH.to_string());
        assert_eq!(mounts(&p), vec![vec![wanted.clone()]; 3]);
        // Admitting again (an update through the same path) adds nothing.
        admit(&mut p, Some(&account(None)), Some("other")).unwrap();
        assert_eq!(p.spec.as_ref().unwrap().volumes.as_ref().unwrap().len(), 1);
        assert_eq!(mounts(&p), vec![vec![wanted]; 3]);
    }

    #[test]
    fn opting_out_and_own_mounts_are_respected() {
        // The pod's own setting wins over the account's, either way.
        for (pod_setting, account_setting, mounted) in [
            (None, None, true),
            (None, Some(false), false),
            (Some(true), Some(false), true),
            (Some(false), Some(true), false),
        ] {
            let mut spec = json!({"containers": [{"name": "a", "image": "a"}]});
            if let Some(setting) = pod_setting {
                spec["automountServiceAccountToken"] = json!(setting);
            }
            let mut p = pod(spec);
            admit(&mut p, Some(&account(account_setting)), Some("abcde")).unwrap();
            let has_volume = p.spec.as_ref().unwrap().volumes.iter().flatten().count() == 1;
            assert_eq!(has_volume, mounted, "{pod_setting:?} {account_setting:?}");
        }
        // A container that mounts something of its own at the path keeps it.
        let mut p = pod(json!({
            "volumes": [{"name": "mine", "emptyDir": {}}],
            "containers": [{"name": "a", "image": "a", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}],
        }));
        admit(&mut p, Some(&account(None)), Some("abcde")).unwrap();
        assert_eq!(mounts(&p), vec![vec![("mine".into(), MOUNT_PATH.into())]]);
    }

    #[test]
    fn a_named_account_must_exist_but_default_may_still_be_coming() {
        let mut p = pod(
            json!({"serviceAccountName": "reader", "containers": [{"name": "a", "image": "a"}]}),
        );
        let refusal = admit(&mut p, None, Some("abcde")).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "error looking up service account apps/reader: serviceaccount \"reader\" not found"
        );
        let mut p =
            pod(json!({"serviceAccount": "legacy", "containers": [{"name": "a", "image": "a"}]}));
        admit(&mut p, Some(&account(None)), Some("abcde")).unwrap();
        assert_eq!(
            p.spec.as_ref().unwrap().service_account_name.as_deref(),
            Some("legacy")
        );
        let mut p = pod(json!({"containers": [{"name": "a", "image": "a"}]}));
        admit(&mut p, None, Some("abcde")).unwrap();
        assert_eq!(mounts(&p)[0].len(), 1);
        // A cluster that issues no tokens mounts none.
        let mut p = pod(json!({"containers": [{"name": "a", "image": "a"}]}));
        admit(&mut p, None, None).unwrap();
        assert!(mounts(&p)[0].is_empty());
        assert_eq!(
            p.spec.as_ref().unwrap().service_account_name.as_deref(),
            Some("default")
        );
    }
}
