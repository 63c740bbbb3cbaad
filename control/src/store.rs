//! The cluster store: objects as bytes under registry keys in sled, one global revision
//! that is every object's `resourceVersion`, compare-and-swap writes, group commit and
//! watches over an in-memory history window.
//!
//! This is the only module that knows sled. Writes go through one writer thread: it takes
//! every request waiting in its queue, stages them against the committed state, writes
//! them as one atomic sled batch, calls `flush` (an fsync) once for the whole group, and
//! only then publishes the new state and events and answers the callers. So an
//! acknowledged write is on disk, readers never see a write that could still be lost,
//! and concurrent writers share one fsync.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::metrics::Histogram;

/// A revision of the store; object `resourceVersion`s are revisions printed in decimal.
pub type Revision = u64;

/// The key under which the current revision is kept, sorting before every object key.
const REVISION_KEY: &[u8] = b"\x00revision";
/// How many requests one group commit takes at most.
const MAX_GROUP: usize = 4096;
/// The sled tree that holds blobs.
const BLOB_TREE: &str = "blobs";

/// Errors of store operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {key} is at revision {actual}, not {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} is older than the oldest revision kept for watches ({oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("the store could not write to disk and refuses writes until restarted: {0}")]
    Failed(String),
    #[error("the store is shut down")]
    Closed,
    #[error("the store at {path} could not be opened: {reason}")]
    Open { path: String, reason: String },
}

/// One stored object: its bytes and the revision that last wrote it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: Revision,
    pub value: Arc<[u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// A committed change, as watches deliver it.
#[derive(Debug)]
pub struct Event {
    pub revision: Revision,
    pub key: String,
    pub event_type: EventType,
    /// The new value; for deletions, the last value as encoded at the deleting revision.
    pub value: Arc<[u8]>,
    /// The value before this change, if there was one (selectors need it to turn a
    /// change that leaves a selection into DELETED).
    pub previous: Option<Arc<[u8]>>,
}

/// Builds the bytes to store from the revision the write is given, so objects can carry
/// their own `resourceVersion`.
pub type Encoder = Box<dyn FnOnce(Revision) -> Vec<u8> + Send>;

/// A write, checked and applied atomically by the writer.
pub enum WriteOp {
    /// Fails with `AlreadyExists` if the key is present.
    Create { key: String, encode: Encoder },
    /// Fails with `NotFound` if absent, or `Conflict` if `expected` is set and differs.
    Update {
        key: String,
        expected: Option<Revision>,
        encode: Encoder,
    },
    /// Removes the key; `encode` renders the final state for the DELETED event.
    Delete {
        key: String,
        expected: Option<Revision>,
        encode: Encoder,
    },
}

impl WriteOp {
    fn key(&self) -> &str {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOp").field("key", &self.key()).finish()
    }
}

/// Settings for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How many events the watch history keeps; older revisions get `Compacted`.
    pub history_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_capacity: 20_000,
        }
    }
}

struct State {
    objects: BTreeMap<String, Entry>,
    revision: Revision,
    history: VecDeque<Arc<Event>>,
    /// Watches may start from this revision or later.
    oldest_watchable: Revision,
}

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
    failed: AtomicBool,
    history_capacity: usize,
    /// Latency of each group commit's flush; read by `/metrics`.
    pub flush_latency: Histogram,
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<Entry, StoreError>>,
}

enum Request {
    Write(WriteRequest),
    /// Blobs (pushed images) live in their own tree, outside the revisioned objects and
    /// not held in memory.
    PutBlob {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    GetBlob {
        key: String,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, StoreError>>,
    },
    /// Stop the writer after the writes queued before it; answered once sled is closed.
    Close(oneshot::Sender<()>),
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &self.revision())
            .finish()
    }
}

/// The events a watch gets: those after its start revision that were already in the
/// history, then live ones.
pub struct Watch {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// Objects at the start revision, when the watch asked for them (`list_first`).
    pub initial: Option<(Revision, Vec<(String, Entry)>)>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        // Opening a damaged sled database can panic inside sled; turn that into an error.
        let dir_owned = dir.to_path_buf();
        let db = std::panic::catch_unwind(move || {
            sled::Config::new()
                .path(dir_owned)
                // Durability comes from our explicit flush per group commit, not a timer.
                .flush_every_ms(None)
                .open()
        })
        .map_err(|_| {
            open_error("sled panicked while reading the database; restore DIR from a backup".into())
        })?
        .map_err(|e| open_error(e.to_string()))?;

        let mut objects = BTreeMap::new();
        let mut revision = 0;
        for item in db.iter() {
            let (key, value) = item.map_err(|e| open_error(e.to_string()))?;
            if &*key == REVISION_KEY {
                revision = decode_revision(&value)
                    .ok_or_else(|| open_error("bad revision record".into()))?;
                continue;
            }
            let (entry_revision, bytes) =
                split_entry(&value).ok_or_else(|| open_error("bad object record".into()))?;
            let key = String::from_utf8(key.to_vec()).map_err(|e| open_error(e.to_string()))?;
            objects.insert(
                key,
                Entry {
                    revision: entry_revision,
                    value: Arc::from(bytes),
                },
            );
        }
        let (events, _) = broadcast::channel(16_384);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                objects,
                revision,
                history: VecDeque::new(),
                oldest_watchable: revision,
            }),
            events,
            failed: AtomicBool::new(false),
            history_capacity: config.history_capacity.max(1),
            flush_latency: Histogram::new(),
        });
        let (writer, requests) = mpsc::channel(MAX_GROUP);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(db, writer_shared, requests))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Store { shared, writer })
    }

    /// The latest committed revision.
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read().objects.get(key).cloned()
    }

    /// Every object under `prefix`, with the revision the list is consistent at.
    pub fn list(&self, prefix: &str) -> (Revision, Vec<(String, Entry)>) {
        let state = self.read();
        (state.revision, collect_prefix(&state.objects, prefix))
    }

    /// Applies one write durably; returns the entry as written (for deletes, the final state).
    pub async fn write(&self, op: WriteOp) -> Result<Entry, StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed("an earlier flush failed".into()));
        }
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Request::Write(WriteRequest { op, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }

    /// Starts a watch of events after `from`. With `from` unset, the watch starts at the
    /// current revision and `initial` holds the objects under `prefix` at it.
    pub fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<Watch, StoreError> {
        let state = self.read();
        let live = self.shared.events.subscribe();
        let Some(from) = from else {
            let initial = collect_prefix(&state.objects, prefix);
            return Ok(Watch {
                backlog: Vec::new(),
                live,
                initial: Some((state.revision, initial)),
            });
        };
        if from < state.oldest_watchable {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: state.oldest_watchable,
            });
        }
        let start = state.history.partition_point(|e| e.revision <= from);
        let backlog = state
            .history
            .range(start..)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok(Watch {
            backlog,
            live,
            initial: None,
        })
    }

    /// The oldest revision a watch may start from.
    pub fn oldest_watchable(&self) -> Revision {
        self.read().oldest_watchable
    }

    /// Stores a blob durably (flushed before this returns) under `key`.
    pub async fn put_blob(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Request::PutBlob {
                key: key.to_string(),
                value,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Request::GetBlob {
                key: key.to_string(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer and closes the database, so the directory can be opened again.
    /// Writes after this fail with `Closed`.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.writer.send(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }

    /// Flush latency of group commits, for `/metrics`.
    pub fn flush_latency(&self) -> &Histogram {
        &self.shared.flush_latency
    }

    /// Whether writes are being accepted (false after a failed flush).
    pub fn healthy(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated (the writer
        // builds its changes first), so a poisoned lock is still consistent.
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn collect_prefix(objects: &BTreeMap<String, Entry>, prefix: &str) -> Vec<(String, Entry)> {
    objects
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn decode_revision(bytes: &[u8]) -> Option<Revision> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn split_entry(bytes: &[u8]) -> Option<(Revision, &[u8])> {
    Some((decode_revision(bytes)?, bytes.get(8..)?))
}

fn join_entry(revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The writer thread: group commit loop. It owns the revision counter.
fn run_writer(db: sled::Db, shared: Arc<Shared>, mut requests: mpsc::Receiver<Request>) {
    let mut close = None;
    while let Some(first) = requests.blocking_recv() {
        let mut group = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Write(w) => group.push(w),
                Request::PutBlob { key, value, reply } => {
                    let result = db
                        .open_tree(BLOB_TREE)
                        .and_then(|tree| tree.insert(key.as_bytes(), value))
                        .and_then(|_| db.flush().map(|_| ()))
                        .map_err(|e| StoreError::Failed(format!("storing a blob failed: {e}")));
                    let _ = reply.send(result);
                }
                Request::GetBlob { key, reply } => {
                    let result = db
                        .open_tree(BLOB_TREE)
                        .and_then(|tree| tree.get(key.as_bytes()))
                        .map(|v| v.map(|v| v.to_vec()))
                        .map_err(|e| StoreError::Failed(format!("reading a blob failed: {e}")));
                    let _ = reply.send(result);
                }
                Request::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if group.len() < MAX_GROUP {
                next = requests.try_recv().ok();
            }
        }
        commit_group(&db, &shared, group);
        if close.is_some() {
            break;
        }
    }
    requests.close();
    // Answer writes that raced with the close instead of leaving them hanging.
    while let Ok(request) = requests.try_recv() {
        match request {
            Request::Write(w) => {
                let _ = w.reply.send(Err(StoreError::Closed));
            }
            Request::PutBlob { reply, .. } => {
                let _ = reply.send(Err(StoreError::Closed));
            }
            Request::GetBlob { reply, .. } => {
                let _ = reply.send(Err(StoreError::Closed));
            }
            Request::Close(done) => {
                let _ = done.send(());
            }
        }
    }
    let _ = db.flush();
    drop(db);
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn commit_group(db: &sled::Db, shared: &Shared, group: Vec<WriteRequest>) {
    if shared.failed.load(Ordering::Acquire) {
        for request in group {
            let _ = request
                .reply
                .send(Err(StoreError::Failed("an earlier flush failed".into())));
        }
        return;
    }
    let mut revision = shared
        .state
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .revision;
    // Changes staged by this group, over the committed state: key -> new entry or removal.
    let mut staged: HashMap<String, Option<Entry>> = HashMap::new();
    let mut batch = sled::Batch::default();
    let mut events = Vec::new();
    let mut replies = Vec::new();
    for WriteRequest { op, reply } in group {
        let current = match staged.get(op.key()) {
            Some(s) => s.clone(),
            None => shared
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .objects
                .get(op.key())
                .cloned(),
        };
        let outcome = match op {
            WriteOp::Create { key, encode } => match current {
                Some(_) => Err(StoreError::AlreadyExists(key)),
                None => Ok((key, EventType::Added, encode, None)),
            },
            WriteOp::Update {
                key,
                expected,
                encode,
            }
            | WriteOp::Delete {
                key,
                expected,
                encode,
            } if current.is_none() => {
                let _ = (expected, encode);
                Err(StoreError::NotFound(key))
            }
            WriteOp::Update {
                key,
                expected,
                encode,
            } => {
                let current = current.expect("checked above");
                match expected {
                    Some(e) if e != current.revision => Err(StoreError::Conflict {
                        key,
                        expected: e,
                        actual: current.revision,
                    }),
                    _ => Ok((key, EventType::Modified, encode, Some(current.value))),
                }
            }
            WriteOp::Delete {
                key,
                expected,
                encode,
            } => {
                let current = current.expect("checked above");
                match expected {
                    Some(e) if e != current.revision => Err(StoreError::Conflict {
                        key,
                        expected: e,
                        actual: current.revision,
                    }),
                    _ => Ok((key, EventType::Deleted, encode, Some(current.value))),
                }
            }
        };
        match outcome {
            Err(e) => replies.push((reply, Err(e))),
            Ok((key, event_type, encode, previous)) => {
                revision += 1;
                let value: Arc<[u8]> = Arc::from(encode(revision));
                let entry = Entry {
                    revision,
                    value: value.clone(),
                };
                if event_type == EventType::Deleted {
                    batch.remove(key.as_bytes());
                    staged.insert(key.clone(), None);
                } else {
                    batch.insert(key.as_bytes(), join_entry(revision, &value));
                    staged.insert(key.clone(), Some(entry.clone()));
                }
                events.push(Arc::new(Event {
                    revision,
                    key,
                    event_type,
                    value,
                    previous,
                }));
                replies.push((reply, Ok(entry)));
            }
        }
    }
    if !events.is_empty() {
        batch.insert(REVISION_KEY, &revision.to_be_bytes());
        let started = Instant::now();
        let result = db.apply_batch(batch).and_then(|()| db.flush().map(|_| ()));
        shared.flush_latency.observe(started.elapsed());
        if let Err(e) = result {
            shared.failed.store(true, Ordering::Release);
            let message = format!("write to disk failed: {e}");
            for (reply, _) in replies {
                let _ = reply.send(Err(StoreError::Failed(message.clone())));
            }
            return;
        }
        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
        for (key, entry) in staged {
            match entry {
                Some(e) => {
                    state.objects.insert(key, e);
                }
                None => {
                    state.objects.remove(&key);
                }
            }
        }
        state.revision = revision;
        for event in events {
            state.history.push_back(event.clone());
            // No receivers is fine: nobody is watching.
            let _ = shared.events.send(event);
        }
        while state.history.len() > shared.history_capacity {
            if let Some(old) = state.history.pop_front() {
                state.oldest_watchable = old.revision;
            }
        }
    }
    for (reply, result) in replies {
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Encoder {
        let s = s.to_string();
        Box::new(move |rev| format!("{s}@{rev}").into_bytes())
    }

    fn open(dir: &Path) -> Store {
        Store::open(
            dir,
            StoreConfig {
                history_capacity: 8,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn create_update_delete_with_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store
            .write(WriteOp::Create {
                key: "/r/a".into(),
                encode: bytes("a"),
            })
            .await
            .unwrap();
        assert_eq!(a.revision, 1);
        assert!(matches!(
            store
                .write(WriteOp::Create {
                    key: "/r/a".into(),
                    encode: bytes("a")
                })
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
        let b = store
            .write(WriteOp::Update {
                key: "/r/a".into(),
                expected: Some(1),
                encode: bytes("b"),
            })
            .await
            .unwrap();
        assert_eq!(&*b.value, b"b@2");
        assert!(matches!(
            store
                .write(WriteOp::Update {
                    key: "/r/a".into(),
                    expected: Some(1),
                    encode: bytes("c")
                })
                .await,
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        store
            .write(WriteOp::Delete {
                key: "/r/a".into(),
                expected: None,
                encode: bytes("gone"),
            })
            .await
            .unwrap();
        assert!(store.get("/r/a").is_none());
        assert_eq!(store.revision(), 3);
        store.close().await;
        // The revision survives a reopen even though the object with the highest one is gone.
        let reopened = open(dir.path());
        assert_eq!(reopened.revision(), 3);
    }

    #[tokio::test]
    async fn concurrent_compare_and_swap_loses_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .write(WriteOp::Create {
                key: "/c".into(),
                encode: Box::new(|_| b"0".to_vec()),
            })
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0;
                while done < 10 {
                    let current = store.get("/c").unwrap();
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    let write = WriteOp::Update {
                        key: "/c".into(),
                        expected: Some(current.revision),
                        encode: Box::new(move |_| (n + 1).to_string().into_bytes()),
                    };
                    match store.write(write).await {
                        Ok(_) => done += 1,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(&*store.get("/c").unwrap().value, b"160");
    }

    #[tokio::test]
    async fn watches_resume_in_order_and_expire_past_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..5 {
            store
                .write(WriteOp::Create {
                    key: format!("/w/{i}"),
                    encode: bytes("x"),
                })
                .await
                .unwrap();
        }
        let mut watch = store.watch("/w/", Some(2)).unwrap();
        let revisions: Vec<_> = watch.backlog.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, vec![3, 4, 5]);
        store
            .write(WriteOp::Create {
                key: "/other".into(),
                encode: bytes("o"),
            })
            .await
            .unwrap();
        store
            .write(WriteOp::Create {
                key: "/w/9".into(),
                encode: bytes("x"),
            })
            .await
            .unwrap();
        assert_eq!(watch.live.recv().await.unwrap().revision, 6);
        assert_eq!(watch.live.recv().await.unwrap().key, "/w/9");
        // Reconnecting from the last revision seen misses nothing and repeats nothing.
        let resumed = store.watch("/w/", Some(5)).unwrap();
        assert_eq!(
            resumed
                .backlog
                .iter()
                .map(|e| e.revision)
                .collect::<Vec<_>>(),
            vec![7]
        );
        for i in 10..20 {
            store
                .write(WriteOp::Create {
                    key: format!("/w/{i}"),
                    encode: bytes("x"),
                })
                .await
                .unwrap();
        }
        assert!(matches!(
            store.watch("/w/", Some(2)),
            Err(StoreError::Compacted { .. })
        ));
        let (rev, items) = store.list("/w/");
        assert_eq!(rev, 17);
        assert_eq!(items.len(), 16);
    }
}
