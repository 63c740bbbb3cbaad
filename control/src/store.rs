//! The cluster store: objects as bytes under registry keys in sled, one global revision
//! that is every object's `resourceVersion`, compare-and-swap writes, atomic multi-key
//! transactions, group commit and watches over an in-memory history window.
//!
//! This is the only module that knows sled. Writes go through one writer thread: it takes
//! every transaction waiting in its queue, stages each against the committed state plus
//! the transactions before it in the group, writes the group as one atomic sled batch,
//! calls `flush` (an fsync) once for the whole group, and only then publishes the new
//! state and events and answers the callers. So an acknowledged write is on disk, readers
//! never see a write that could still be lost, and concurrent writers share one fsync.
//!
//! A transaction is all or nothing: each of its ops is checked against the committed state
//! and the ops before it; if one fails, none is applied. A transaction that passes gets
//! one revision, which every entry it wrote and every event it caused carries; its events
//! are published together, in op order, so a watcher sees all of a transaction or none.
//!
//! Memory: the watch history keeps at most [`StoreConfig::history_capacity`] events
//! (65,536 by default: enough for 20,000 pods to be created, bound and given a status).
//! A watcher that falls behind the live broadcast is caught up from that history; only
//! one whose position has left the history gets `Compacted` (410 Expired over HTTP).

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
/// How many events the live broadcast buffers per watcher before it lags and has to be
/// caught up from the history.
const BROADCAST_CAPACITY: usize = 16_384;
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
    /// The position of this event among those of its transaction (its op's index).
    pub index: usize,
    /// Whether this is the last event of its transaction.
    pub last_of_transaction: bool,
    pub key: String,
    pub event_type: EventType,
    /// The new value; for deletions, the last value as encoded at the deleting revision.
    pub value: Arc<[u8]>,
    /// The value before this change, if there was one (selectors need it to turn a
    /// change that leaves a selection into DELETED).
    pub previous: Option<Arc<[u8]>>,
    /// What watches derive from this event, made by the first watch that needs it.
    pub derived: Derived,
}

/// Memos of what watches derive from one event, shared by all of them: with N watches of
/// a collection an event is parsed once and each watch line rendered once, not N times.
#[derive(Debug, Default)]
pub struct Derived {
    value: std::sync::OnceLock<Option<serde_json::Value>>,
    previous: std::sync::OnceLock<Option<serde_json::Value>>,
    /// Rendered lines, one per event type a watch may report this event as.
    lines: [std::sync::OnceLock<Option<bytes::Bytes>>; 3],
}

impl Event {
    /// The new value as JSON, if it is JSON.
    pub fn parsed(&self) -> Option<&serde_json::Value> {
        self.derived
            .value
            .get_or_init(|| serde_json::from_slice(&self.value).ok())
            .as_ref()
    }

    /// The previous value as JSON, if there was one and it is JSON.
    pub fn parsed_previous(&self) -> Option<&serde_json::Value> {
        self.derived
            .previous
            .get_or_init(|| {
                self.previous
                    .as_ref()
                    .and_then(|p| serde_json::from_slice(p).ok())
            })
            .as_ref()
    }

    /// `render(event_type)` for this event, computed once per event type.
    pub fn rendered(
        &self,
        event_type: EventType,
        render: impl FnOnce() -> Option<bytes::Bytes>,
    ) -> Option<bytes::Bytes> {
        let slot = match event_type {
            EventType::Added => &self.derived.lines[0],
            EventType::Modified => &self.derived.lines[1],
            EventType::Deleted => &self.derived.lines[2],
        };
        slot.get_or_init(render).clone()
    }
}

impl Event {
    /// Where this event is in the stream of all events.
    pub fn position(&self) -> Position {
        Position {
            revision: self.revision,
            index: self.index,
        }
    }

    /// The position of a watcher that has dealt with this event: past the whole
    /// transaction when this is its last event.
    pub fn position_after(&self) -> Position {
        if self.last_of_transaction {
            Position::end_of(self.revision)
        } else {
            self.position()
        }
    }
}

/// A point in the stream of events, ordered by revision and then by the index of the
/// event inside its transaction. A watcher's position is the last event it dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub revision: Revision,
    pub index: usize,
}

impl Position {
    /// After every event of `revision` and before.
    pub fn end_of(revision: Revision) -> Position {
        Position {
            revision,
            index: usize::MAX,
        }
    }

    /// The newest revision whose events are all at or before this position: what a
    /// bookmark may promise.
    pub fn complete_revision(&self) -> Revision {
        if self.index == usize::MAX {
            self.revision
        } else {
            self.revision.saturating_sub(1)
        }
    }
}

/// A failed transaction: which op failed (`None` when the store itself refused the
/// transaction, as after a failed flush) and why. Nothing of the transaction was applied.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {error}", match .op { Some(i) => format!("op {i} of the transaction failed"), None => "the transaction failed".to_string() })]
pub struct TransactionError {
    pub op: Option<usize>,
    #[source]
    pub error: StoreError,
}

impl TransactionError {
    fn whole(error: StoreError) -> Self {
        TransactionError { op: None, error }
    }
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
    /// The key this op writes.
    pub fn key(&self) -> &str {
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
    /// How many events the watch history keeps; older revisions get `Compacted`. This
    /// bounds the store's memory beyond the objects themselves.
    pub history_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_capacity: 65_536,
        }
    }
}

struct State {
    objects: BTreeMap<String, Entry>,
    revision: Revision,
    history: VecDeque<Arc<Event>>,
    /// The last event dropped from the history: watches may resume from it or later.
    /// Watches by resourceVersion may start from its revision or later.
    oldest: Position,
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
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<Result<Vec<Entry>, TransactionError>>,
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
    /// The revision the backlog (or `initial`) runs up to: every event of it and before
    /// is accounted for, later ones arrive on `live`.
    pub revision: Revision,
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// Objects at the start revision, when the watch asked for them (`list_first`).
    pub initial: Option<(Revision, Vec<(String, Entry)>)>,
}

/// A watch's events in order, each once: the backlog, then live events. When the live
/// receiver falls behind the broadcast buffer, the stream catches up from the history
/// and continues on a fresh receiver; only when its position has left the history does
/// it end with `Compacted`. Memory stays bounded by the history window.
pub struct EventStream {
    store: Store,
    prefix: String,
    backlog: VecDeque<Arc<Event>>,
    /// Where the stream stands once the backlog is delivered: its events are all those
    /// under the prefix up to here.
    backlog_end: Position,
    live: broadcast::Receiver<Arc<Event>>,
    /// The last event delivered or passed over; never moves back.
    position: Position,
}

impl EventStream {
    /// The events of `watch` under `prefix` after `start` (the client's resourceVersion,
    /// or the revision of the watch's initial objects).
    pub fn new(store: &Store, prefix: &str, watch: Watch, start: Position) -> Self {
        let mut stream = EventStream {
            store: store.clone(),
            prefix: prefix.to_string(),
            backlog: watch.backlog.into(),
            backlog_end: Position::end_of(watch.revision),
            live: watch.live,
            position: start,
        };
        stream.settle_backlog();
        stream
    }

    /// The last event dealt with: everything up to it has been delivered.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The next event under the prefix. Cancel-safe: it awaits only the live receiver,
    /// and its state is updated before each await.
    pub async fn next(&mut self) -> Result<Arc<Event>, StoreError> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.position = self.position.max(event.position_after());
                self.settle_backlog();
                return Ok(event);
            }
            match self.live.recv().await {
                // Events up to the position came from the snapshot or a backlog already.
                Ok(event) if event.position() <= self.position => {}
                Ok(event) => {
                    self.position = event.position_after();
                    if event.key.starts_with(&self.prefix) {
                        return Ok(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let resumed = self.store.resume(&self.prefix, self.position)?;
                    self.live = resumed.live;
                    self.backlog = resumed.backlog.into();
                    self.backlog_end = Position::end_of(resumed.revision);
                    self.settle_backlog();
                }
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }

    /// Once the backlog is delivered, the stream stands at its end.
    fn settle_backlog(&mut self) {
        if self.backlog.is_empty() {
            self.position = self.position.max(self.backlog_end);
        }
    }
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
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                objects,
                revision,
                history: VecDeque::new(),
                oldest: Position::end_of(revision),
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
        let mut entries = self.transact(vec![op]).await.map_err(|e| e.error)?;
        entries
            .pop()
            .ok_or_else(|| StoreError::Failed("the writer answered a write with no entry".into()))
    }

    /// Applies `ops` atomically and durably under one new revision: all of them or, if
    /// any fails its check, none. Returns the entries as written, in op order. An empty
    /// transaction writes nothing and takes no revision.
    pub async fn transact(&self, ops: Vec<WriteOp>) -> Result<Vec<Entry>, TransactionError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(TransactionError::whole(StoreError::Failed(
                "an earlier flush failed".into(),
            )));
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let closed = || TransactionError::whole(StoreError::Closed);
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Request::Write(WriteRequest { ops, reply }))
            .await
            .map_err(|_| closed())?;
        response.await.map_err(|_| closed())?
    }

    /// Starts a watch of events after `from`. With `from` unset, the watch starts at the
    /// current revision and `initial` holds the objects under `prefix` at it.
    pub fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<Watch, StoreError> {
        let state = self.read();
        let live = self.shared.events.subscribe();
        let Some(from) = from else {
            let initial = collect_prefix(&state.objects, prefix);
            return Ok(Watch {
                revision: state.revision,
                backlog: Vec::new(),
                live,
                initial: Some((state.revision, initial)),
            });
        };
        let backlog = backlog_after(&state, prefix, Position::end_of(from))?;
        Ok(Watch {
            revision: state.revision,
            backlog,
            live,
            initial: None,
        })
    }

    /// Resumes a watch whose live receiver fell behind: the events under `prefix` after
    /// `after` (the last event it dealt with) from the history, and a new live receiver
    /// that starts right after them, so nothing is missed or repeated. `Compacted` if
    /// events after `after` have already left the history.
    pub fn resume(&self, prefix: &str, after: Position) -> Result<Watch, StoreError> {
        // Subscribing under the read lock: the writer publishes under the write lock, so
        // every event is either in the backlog or arrives on the new receiver.
        let state = self.read();
        let live = self.shared.events.subscribe();
        let backlog = backlog_after(&state, prefix, after)?;
        Ok(Watch {
            revision: state.revision,
            backlog,
            live,
            initial: None,
        })
    }

    /// The oldest revision a watch may start from.
    pub fn oldest_watchable(&self) -> Revision {
        self.read().oldest.revision
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

/// The history's events under `prefix` after `after`, or `Compacted` if some of them are
/// no longer kept.
fn backlog_after(
    state: &State,
    prefix: &str,
    after: Position,
) -> Result<Vec<Arc<Event>>, StoreError> {
    if after < state.oldest {
        return Err(StoreError::Compacted {
            requested: after.revision,
            oldest: state.oldest.revision,
        });
    }
    let start = state.history.partition_point(|e| e.position() <= after);
    Ok(state
        .history
        .range(start..)
        .filter(|e| e.key.starts_with(prefix))
        .cloned()
        .collect())
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
                let _ = w
                    .reply
                    .send(Err(TransactionError::whole(StoreError::Closed)));
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

/// The state of one key as the transaction being checked sees it: staged by an earlier
/// transaction of the group or an earlier op, else committed.
type Staged = HashMap<String, Option<Entry>>;

/// One checked op, ready to be applied.
struct Checked {
    key: String,
    event_type: EventType,
    entry: Entry,
    previous: Option<Arc<[u8]>>,
}

fn commit_group(db: &sled::Db, shared: &Shared, group: Vec<WriteRequest>) {
    if shared.failed.load(Ordering::Acquire) {
        for request in group {
            let _ = request
                .reply
                .send(Err(TransactionError::whole(StoreError::Failed(
                    "an earlier flush failed".into(),
                ))));
        }
        return;
    }
    let mut revision = shared
        .state
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .revision;
    // Changes staged by the transactions of this group that passed, over the committed
    // state: key -> new entry or removal.
    let mut staged: Staged = HashMap::new();
    let mut batch = sled::Batch::default();
    let mut events = Vec::new();
    let mut replies = Vec::new();
    for WriteRequest { ops, reply } in group {
        match check_transaction(shared, &staged, ops, revision + 1) {
            Err(e) => replies.push((reply, Err(e))),
            Ok(checked) => {
                revision += 1;
                let mut entries = Vec::with_capacity(checked.len());
                let count = checked.len();
                for (index, op) in checked.into_iter().enumerate() {
                    if op.event_type == EventType::Deleted {
                        batch.remove(op.key.as_bytes());
                        staged.insert(op.key.clone(), None);
                    } else {
                        batch.insert(op.key.as_bytes(), join_entry(revision, &op.entry.value));
                        staged.insert(op.key.clone(), Some(op.entry.clone()));
                    }
                    events.push(Arc::new(Event {
                        revision,
                        index,
                        last_of_transaction: index + 1 == count,
                        key: op.key,
                        event_type: op.event_type,
                        value: op.entry.value.clone(),
                        previous: op.previous,
                        derived: Derived::default(),
                    }));
                    entries.push(op.entry);
                }
                replies.push((reply, Ok(entries)));
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
                let _ = reply.send(Err(TransactionError::whole(StoreError::Failed(
                    message.clone(),
                ))));
            }
            return;
        }
        publish(shared, staged, revision, events);
    }
    for (reply, result) in replies {
        let _ = reply.send(result);
    }
}

/// Checks every op of one transaction, in order, against `staged` over the committed
/// state and the ops before it, encoding each at `revision`. The first failing op fails
/// the whole transaction.
fn check_transaction(
    shared: &Shared,
    staged: &Staged,
    ops: Vec<WriteOp>,
    revision: Revision,
) -> Result<Vec<Checked>, TransactionError> {
    // This transaction's own changes, seen by its later ops but by nobody else until it passes.
    let mut own: Staged = HashMap::new();
    let mut checked = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let current = match own.get(op.key()).or_else(|| staged.get(op.key())) {
            Some(s) => s.clone(),
            None => shared
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .objects
                .get(op.key())
                .cloned(),
        };
        let op = check_op(op, current, revision).map_err(|error| TransactionError {
            op: Some(index),
            error,
        })?;
        let after = (op.event_type != EventType::Deleted).then(|| op.entry.clone());
        own.insert(op.key.clone(), after);
        checked.push(op);
    }
    Ok(checked)
}

/// Checks one op against the current entry of its key and encodes it at `revision`.
fn check_op(
    op: WriteOp,
    current: Option<Entry>,
    revision: Revision,
) -> Result<Checked, StoreError> {
    let (key, event_type, encode, previous) = match (op, current) {
        (WriteOp::Create { key, .. }, Some(_)) => return Err(StoreError::AlreadyExists(key)),
        (WriteOp::Create { key, encode }, None) => (key, EventType::Added, encode, None),
        (WriteOp::Update { key, .. } | WriteOp::Delete { key, .. }, None) => {
            return Err(StoreError::NotFound(key))
        }
        (
            WriteOp::Update {
                key,
                expected: Some(expected),
                ..
            }
            | WriteOp::Delete {
                key,
                expected: Some(expected),
                ..
            },
            Some(current),
        ) if expected != current.revision => {
            return Err(StoreError::Conflict {
                key,
                expected,
                actual: current.revision,
            })
        }
        (WriteOp::Update { key, encode, .. }, Some(current)) => {
            (key, EventType::Modified, encode, Some(current.value))
        }
        (WriteOp::Delete { key, encode, .. }, Some(current)) => {
            (key, EventType::Deleted, encode, Some(current.value))
        }
    };
    Ok(Checked {
        key,
        event_type,
        entry: Entry {
            revision,
            value: Arc::from(encode(revision)),
        },
        previous,
    })
}

/// Makes a flushed group visible: objects, revision, history and live events, all under
/// one write lock so readers and new watches see the whole group or none of it.
fn publish(shared: &Shared, staged: Staged, revision: Revision, events: Vec<Arc<Event>>) {
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
            state.oldest = old.position();
        }
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

    fn create(key: &str) -> WriteOp {
        WriteOp::Create {
            key: key.into(),
            encode: bytes(key),
        }
    }

    #[tokio::test]
    async fn a_transaction_with_a_failing_op_applies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.write(create("/t/a")).await.unwrap();
        let before = store.revision();
        let mut watch = store.watch("/t/", Some(before)).unwrap();
        let error = store
            .transact(vec![create("/t/b"), create("/t/a"), create("/t/c")])
            .await
            .unwrap_err();
        assert_eq!(error.op, Some(1));
        assert!(matches!(error.error, StoreError::AlreadyExists(ref k) if k == "/t/a"));
        assert!(store.get("/t/b").is_none());
        assert!(store.get("/t/c").is_none());
        assert_eq!(store.revision(), before);
        assert!(matches!(
            watch.live.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }

    #[tokio::test]
    async fn a_transaction_takes_one_revision_and_publishes_its_events_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.write(create("/t/a")).await.unwrap();
        let mut watch = store.watch("/t/", None).unwrap();
        let entries = store
            .transact(vec![
                create("/t/b"),
                WriteOp::Update {
                    key: "/t/a".into(),
                    expected: Some(1),
                    encode: bytes("a2"),
                },
                // Later ops see the earlier ones: /t/b exists at the transaction's revision.
                WriteOp::Delete {
                    key: "/t/b".into(),
                    expected: Some(2),
                    encode: bytes("b-gone"),
                },
            ])
            .await
            .unwrap();
        assert!(entries.iter().all(|e| e.revision == 2));
        assert_eq!(store.revision(), 2);
        assert!(store.get("/t/b").is_none());
        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = watch.live.recv().await.unwrap();
            seen.push((
                event.revision,
                event.index,
                event.key.clone(),
                event.event_type,
                event.last_of_transaction,
            ));
        }
        assert_eq!(
            seen,
            vec![
                (2, 0, "/t/b".to_string(), EventType::Added, false),
                (2, 1, "/t/a".to_string(), EventType::Modified, false),
                (2, 2, "/t/b".to_string(), EventType::Deleted, true),
            ]
        );
        // A watch from before the transaction gets all of it from the history.
        let resumed = store.watch("/t/", Some(1)).unwrap();
        assert_eq!(resumed.backlog.len(), 3);
    }

    #[tokio::test]
    async fn transactions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .transact(vec![create("/t/a"), create("/t/b")])
            .await
            .unwrap();
        store
            .transact(vec![
                WriteOp::Delete {
                    key: "/t/a".into(),
                    expected: None,
                    encode: bytes("gone"),
                },
                create("/t/c"),
            ])
            .await
            .unwrap();
        store.close().await;
        let reopened = open(dir.path());
        assert_eq!(reopened.revision(), 2);
        let (_, items) = reopened.list("/t/");
        let keys: Vec<_> = items
            .iter()
            .map(|(k, e)| (k.as_str(), e.revision))
            .collect();
        assert_eq!(keys, vec![("/t/b", 1), ("/t/c", 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_concurrent_claims_on_one_key_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for round in 0..20 {
            let claim = format!("/claims/{round}");
            let mut tasks = Vec::new();
            for owner in 0..2 {
                let store = store.clone();
                let claim = claim.clone();
                tasks.push(tokio::spawn(async move {
                    store
                        .transact(vec![
                            create(&format!("/owners/{round}/{owner}")),
                            create(&claim),
                        ])
                        .await
                }));
            }
            let mut winners = 0;
            for (owner, task) in tasks.into_iter().enumerate() {
                match task.await.unwrap() {
                    Ok(_) => winners += 1,
                    Err(e) => {
                        assert_eq!(e.op, Some(1));
                        assert!(store.get(&format!("/owners/{round}/{owner}")).is_none());
                    }
                }
            }
            assert_eq!(winners, 1, "round {round}");
        }
    }

    #[test]
    fn an_event_is_parsed_and_rendered_once_for_all_watches() {
        let event = Event {
            revision: 7,
            index: 0,
            last_of_transaction: true,
            key: "/registry/pods/default/a".into(),
            event_type: EventType::Modified,
            value: Arc::from(&br#"{"metadata":{"name":"a"}}"#[..]),
            previous: Some(Arc::from(&br#"{"metadata":{"name":"a","labels":{}}}"#[..])),
            derived: Derived::default(),
        };
        let first = event.parsed().unwrap() as *const serde_json::Value;
        assert_eq!(event.parsed().unwrap() as *const _, first);
        assert!(event.parsed_previous().unwrap()["metadata"]["labels"].is_object());
        let mut renders = 0;
        let mut render = || {
            renders += 1;
            Some(bytes::Bytes::from_static(b"line"))
        };
        let a = event.rendered(EventType::Modified, &mut render).unwrap();
        let b = event.rendered(EventType::Modified, &mut render).unwrap();
        // One render, and every watch sends the same buffer.
        assert_eq!(a.as_ptr(), b.as_ptr());
        let _ = event.rendered(EventType::Deleted, &mut render);
        assert_eq!(renders, 2);
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_caught_up_from_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                history_capacity: BROADCAST_CAPACITY * 2,
            },
        )
        .unwrap();
        let mut watch = store.watch("/l/", None).unwrap();
        let position = Position::end_of(watch.revision);
        let count = BROADCAST_CAPACITY + 100;
        let ops = (0..count).map(|i| create(&format!("/l/{i:06}"))).collect();
        store.transact(ops).await.unwrap();
        assert!(matches!(
            watch.live.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        let resumed = store.resume("/l/", position).unwrap();
        assert_eq!(resumed.backlog.len(), count);
        assert_eq!(resumed.revision, 1);
        // Resuming from the middle of the transaction repeats nothing.
        let middle = resumed.backlog[9].position();
        assert_eq!(
            store.resume("/l/", middle).unwrap().backlog.len(),
            count - 10
        );
        // With the small default of the tests, the position leaves the history.
        let dir = tempfile::tempdir().unwrap();
        let small = open(dir.path());
        let ops = (0..20).map(|i| create(&format!("/l/{i}"))).collect();
        small.transact(ops).await.unwrap();
        assert!(matches!(
            small.resume("/l/", Position::end_of(0)),
            Err(StoreError::Compacted { .. })
        ));
        assert!(small.resume("/l/", Position::end_of(1)).is_ok());
    }

    #[tokio::test]
    async fn an_event_stream_that_lags_is_caught_up_without_gaps_or_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                history_capacity: BROADCAST_CAPACITY * 3,
            },
        )
        .unwrap();
        let watch = store.watch("/s/", None).unwrap();
        let mut events = EventStream::new(&store, "/s/", watch, Position::end_of(0));
        // More than the broadcast buffer, interleaved with keys outside the prefix.
        let count = BROADCAST_CAPACITY + 500;
        let ops = (0..count)
            .flat_map(|i| [create(&format!("/s/{i:06}")), create(&format!("/o/{i:06}"))])
            .collect();
        store.transact(ops).await.unwrap();
        store.write(create("/s/after")).await.unwrap();
        let mut keys = Vec::new();
        for _ in 0..=count {
            keys.push(events.next().await.unwrap().key.clone());
        }
        let mut expected: Vec<String> = (0..count).map(|i| format!("/s/{i:06}")).collect();
        expected.push("/s/after".into());
        assert_eq!(keys, expected);
        assert_eq!(events.position(), Position::end_of(2));
        store.write(create("/s/live")).await.unwrap();
        assert_eq!(events.next().await.unwrap().key, "/s/live");
    }

    #[tokio::test]
    async fn an_event_stream_whose_position_left_the_history_ends_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let watch = store.watch("/s/", None).unwrap();
        let mut events = EventStream::new(&store, "/s/", watch, Position::end_of(0));
        let ops = (0..BROADCAST_CAPACITY + 1)
            .map(|i| create(&format!("/s/{i:06}")))
            .collect();
        store.transact(ops).await.unwrap();
        assert!(matches!(
            events.next().await,
            Err(StoreError::Compacted { .. })
        ));
    }
}
