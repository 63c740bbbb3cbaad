//! The files of a pod's `configMap`, `secret`, `downwardAPI` and `projected` volumes:
//! which keys become which paths (`items`), what a downward-API field says, and writing
//! them so that a reader never sees half a file. Pure except [`write_files`].

use k8s_openapi::api::core::v1::{KeyToPath, Pod};
use std::collections::BTreeMap;
use std::path::Path;

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Relative to the volume's directory; checked by [`checked_path`].
    pub path: String,
    pub bytes: Vec<u8>,
    /// Permission bits; `None` takes the volume's default mode.
    pub mode: Option<i32>,
}

/// Kubernetes' `defaultMode` when a volume gives none (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// `path` if it is relative and stays inside the volume (no `..` element, not empty).
pub fn checked_path(path: &str) -> Result<&str, String> {
    let inside = !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|part| !part.is_empty() && part != "..");
    if inside {
        Ok(path)
    } else {
        Err(format!("{path:?} must be a relative path without '..'"))
    }
}

/// The files `data` (a ConfigMap's or Secret's keys) gives: every key under its own
/// name, or just `items`, each at its `path`. A listed key that is missing is an error
/// unless the source is `optional`.
pub fn select_items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    source: &str,
) -> Result<Vec<VolumeFile>, String> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data
            .iter()
            .map(|(key, bytes)| VolumeFile {
                path: key.clone(),
                bytes: bytes.clone(),
                mode: None,
            })
            .collect());
    };
    let mut files = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(bytes) => files.push(VolumeFile {
                path: checked_path(&item.path)?.to_string(),
                bytes: bytes.clone(),
                mode: item.mode,
            }),
            None if optional => {}
            None => {
                return Err(format!(
                    "{source} has no key {:?} (listed in items)",
                    item.key
                ))
            }
        }
    }
    Ok(files)
}

/// Where the pod runs, for the fields that are not in the pod object.
pub struct PodPlace<'a> {
    pub node_name: &'a str,
    pub host_ip: &'a str,
    pub pod_ip: Option<String>,
}

/// The value of a downward-API `fieldRef` (`metadata.name`, `metadata.labels['app']`,
/// `status.podIP`…), as an environment variable or a file holds it; `None` for a field
/// that is not supported.
pub fn pod_field(pod: &Pod, field_path: &str, place: &PodPlace<'_>) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = field_path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    match field_path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Some(format_map(meta.annotations.as_ref())),
        "spec.nodeName" => Some(place.node_name.to_string()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => Some(place.host_ip.to_string()),
        "status.podIP" => place.pod_ip.clone(),
        _ => keyed("metadata.labels", &meta.labels)
            .or_else(|| keyed("metadata.annotations", &meta.annotations)),
    }
}

/// Labels or annotations as kubelet writes them to a file: `key="value"` lines, sorted,
/// with the value quoted as Go's `%q` does.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `files` into `dir`, each through a temporary file renamed into place, so a
/// container reading one while it is renewed sees the old or the new content, never
/// a mix. Files whose content is already there are left alone.
pub fn write_files(dir: &Path, files: &[VolumeFile], default_mode: i32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for file in files {
        let target = dir.join(&file.path);
        if std::fs::read(&target).is_ok_and(|current| current == file.bytes) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = target.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&temporary, &file.bytes)?;
        let mode = file.mode.unwrap_or(default_mode);
        let mode = u32::try_from(mode & 0o777).unwrap_or(0o644);
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temporary, &target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ])
    }

    fn item(key: &str, path: &str) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode: None,
        }
    }

    #[test]
    fn items_choose_keys_and_paths() {
        let all = select_items(&data(), None, false, "ConfigMap c").unwrap();
        assert_eq!(
            all.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let chosen =
            select_items(&data(), Some(&[item("b", "sub/dir/b.txt")]), false, "c").unwrap();
        assert_eq!(chosen.len(), 1);
        assert_eq!(
            (chosen[0].path.as_str(), &chosen[0].bytes[..]),
            ("sub/dir/b.txt", &b"2"[..])
        );
        let missing = select_items(&data(), Some(&[item("zz", "z")]), false, "ConfigMap c");
        assert_eq!(
            missing.unwrap_err(),
            "ConfigMap c has no key \"zz\" (listed in items)"
        );
        assert!(select_items(&data(), Some(&[item("zz", "z")]), true, "c")
            .unwrap()
            .is_empty());
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "a//b"] {
            assert!(
                select_items(&data(), Some(&[item("a", bad)]), false, "c").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn downward_fields() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "apps", "uid": "u1",
                "labels": {"app": "web", "tier": "a \"b\""}},
            "spec": {"serviceAccountName": "reader", "containers": []},
        }))
        .unwrap();
        let place = PodPlace {
            node_name: "n1",
            host_ip: "10.0.0.1",
            pod_ip: Some("10.244.0.5".into()),
        };
        let field = |path: &str| pod_field(&pod, path, &place);
        assert_eq!(field("metadata.namespace").as_deref(), Some("apps"));
        assert_eq!(field("spec.serviceAccountName").as_deref(), Some("reader"));
        assert_eq!(field("status.podIP").as_deref(), Some("10.244.0.5"));
        assert_eq!(field("metadata.labels['app']").as_deref(), Some("web"));
        assert_eq!(field("metadata.labels['none']").as_deref(), Some(""));
        assert_eq!(
            field("metadata.labels").as_deref(),
            Some("app=\"web\"\ntier=\"a \\\"b\\\"\"")
        );
        assert_eq!(field("spec.unknown"), None);
    }

    #[test]
    fn files_are_replaced_whole_with_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |bytes: &[u8], mode| VolumeFile {
            path: "sub/token".into(),
            bytes: bytes.to_vec(),
            mode,
        };
        write_files(dir.path(), &[file(b"one", None)], 0o640).unwrap();
        let target = dir.path().join("sub/token");
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        write_files(dir.path(), &[file(b"two", Some(0o600))], 0o640).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token"], "no temporary file is left");
    }
}
