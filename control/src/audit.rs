//! The audit log (kube-apiserver's `--audit-log-path`, policy level `Metadata`): one
//! `audit.k8s.io/v1` Event per request as a JSON line — who, what verb on which object,
//! the answer's code, when — and never a request or response body, so no secret reaches
//! the file. Lines go through a bounded queue to one writer thread (a slow disk never
//! stalls a request; when the queue is full, lines are dropped and counted), which
//! rotates the file at a size limit, keeping a number of old files (`.1` newest).

use serde_json::{json, Value};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Where and how much to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file reaches this many bytes (`--audit-log-maxsize`, in MB there).
    pub max_bytes: u64,
    /// Old files kept (`--audit-log-maxbackup`).
    pub max_backups: usize,
}

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

/// One request, as the audit log records it.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub request_uri: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub source_ip: Option<String>,
    pub received: chrono::DateTime<chrono::Utc>,
    pub completed: chrono::DateTime<chrono::Utc>,
}

impl AuditRecord {
    /// The `audit.k8s.io/v1` Event of this record at level Metadata.
    pub fn to_event(&self, audit_id: &str) -> Value {
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "requestURI": self.request_uri,
            "verb": self.verb,
            "user": {"username": self.user, "groups": self.groups},
            "responseStatus": {"metadata": {}, "code": self.code},
            "requestReceivedTimestamp": self.received.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "stageTimestamp": self.completed.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        if let Some(ip) = &self.source_ip {
            event["sourceIPs"] = json!([ip]);
        }
        if !self.resource.is_empty() {
            let mut object = json!({"resource": self.resource, "apiGroup": self.api_group, "apiVersion": self.api_version});
            for (key, value) in [
                ("namespace", &self.namespace),
                ("name", &self.name),
                ("subresource", &self.subresource),
            ] {
                if !value.is_empty() {
                    object[key] = json!(value);
                }
            }
            event["objectRef"] = object;
        }
        event
    }
}

/// The handle requests record through; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    sender: SyncSender<Value>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl AuditLog {
    /// Opens (appends to) the log and starts its writer thread, which ends when every
    /// handle is dropped.
    pub fn open(config: AuditConfig) -> std::io::Result<AuditLog> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let (sender, lines) = sync_channel::<Value>(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(config, file, lines))?;
        Ok(AuditLog {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues one record; never blocks.
    pub fn record(&self, record: &AuditRecord) {
        let event = record.to_event(&uuid::Uuid::new_v4().to_string());
        if let Err(TrySendError::Full(_)) = self.sender.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines lost to a full queue since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Who did what is sensitive too: owner-only, like the keys.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn write_lines(config: AuditConfig, file: std::fs::File, lines: std::sync::mpsc::Receiver<Value>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(file);
    while let Ok(first) = lines.recv() {
        // Everything queued goes out in one write and one flush.
        for event in std::iter::once(first).chain(lines.try_iter()) {
            let mut line = event.to_string();
            line.push('\n');
            if size + line.len() as u64 > config.max_bytes && size > 0 {
                let _ = out.flush();
                match rotate(&config) {
                    Ok(file) => {
                        out = std::io::BufWriter::new(file);
                        size = 0;
                    }
                    Err(e) => tracing::warn!(error = %e, "rotating the audit log failed"),
                }
            }
            if out.write_all(line.as_bytes()).is_ok() {
                size += line.len() as u64;
            }
        }
        let _ = out.flush();
    }
}

/// `log` → `log.1` → … → `log.N` (the oldest dropped), then a new `log`.
fn rotate(config: &AuditConfig) -> std::io::Result<std::fs::File> {
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", config.path.display()));
    if config.max_backups == 0 {
        std::fs::remove_file(&config.path)?;
    } else {
        let _ = std::fs::remove_file(numbered(config.max_backups));
        for n in (1..config.max_backups).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&config.path, numbered(1))?;
    }
    open_append(&config.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            user: "alice".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            verb: "get".into(),
            request_uri: format!("/api/v1/namespaces/default/secrets/s{i}"),
            resource: "secrets".into(),
            api_version: "v1".into(),
            namespace: "default".into(),
            name: format!("s{i}"),
            code: 200,
            ..Default::default()
        }
    }

    #[test]
    fn records_are_metadata_events_and_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let config = AuditConfig {
            path: path.clone(),
            max_bytes: 4096,
            max_backups: 2,
        };
        let log = AuditLog::open(config).unwrap();
        for i in 0..100 {
            log.record(&record(i));
        }
        drop(log);
        // The writer ends once the handle is gone; wait for its last flush.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let last = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("\"name\":\"s99\"") || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let event: Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(event["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(event["level"], "Metadata");
        assert_eq!(event["user"]["username"], "alice");
        assert_eq!(event["objectRef"]["resource"], "secrets");
        assert_eq!(event["objectRef"]["name"], "s99");
        assert_eq!(event["responseStatus"]["code"], 200);
        assert!(event.get("requestObject").is_none() && event.get("responseObject").is_none());
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
