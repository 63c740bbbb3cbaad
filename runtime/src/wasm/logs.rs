//! Container log files in the CRI format the kubelet writes
//! (`<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`), with size-based rotation:
//! when a write would take the file past its limit, `N.log` becomes `N.log.1` (older
//! files shift up and the oldest beyond the count is removed) and a new `N.log` starts.
//!
//! Files are not held open per container: one node runs tens of thousands of mostly idle
//! containers in one process, and an open file each would exhaust the process's
//! descriptor limit (20,000 pods need more than a 20,000 hard limit allows). [`LogFiles`]
//! keeps the most recently written files open, up to a bound, and closes the least
//! recently written one to open another; a container that logs steadily keeps its file.

use skiff_api::clock::SharedClock;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line written as one record; longer lines are split into `P` (partial) records.
const MAX_LINE: usize = 16 * 1024;

/// Shards of the open-file cache, so containers logging at once rarely share a lock.
const SHARDS: usize = 16;

/// The open log files of one runtime: at most `capacity` at a time, the least recently
/// written closed first. Files are opened in append mode, so closing and reopening one
/// loses nothing and needs no seek.
pub struct LogFiles {
    shards: Box<[Mutex<OpenFiles>]>,
    next_id: AtomicU64,
}

struct OpenFiles {
    capacity: usize,
    /// Advances on every write; a file's last value orders the evictions.
    tick: u64,
    open: HashMap<u64, (File, u64)>,
}

impl LogFiles {
    /// A cache keeping at most `capacity` files open (at least one per shard).
    pub fn new(capacity: usize) -> Arc<LogFiles> {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Arc::new(LogFiles {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(OpenFiles {
                        capacity: per_shard,
                        tick: 0,
                        open: HashMap::new(),
                    })
                })
                .collect(),
            next_id: AtomicU64::new(0),
        })
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.shards[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes` to the file `id` at `path`, opening (creating) it if it is closed.
    fn append(&self, id: u64, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut shard = self.shard(id);
        shard.tick += 1;
        let tick = shard.tick;
        if let Some((file, used)) = shard.open.get_mut(&id) {
            *used = tick;
            return file.write_all(bytes);
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        file.write_all(bytes)?;
        if shard.open.len() >= shard.capacity {
            let oldest = shard
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                shard.open.remove(&oldest);
            }
        }
        shard.open.insert(id, (file, tick));
        Ok(())
    }

    /// Closes file `id` if it is open (before it is renamed, or when its log is gone).
    fn close(&self, id: u64) {
        self.shard(id).open.remove(&id);
    }

    /// How many files are open now.
    pub fn open_count(&self) -> usize {
        (0..SHARDS as u64).map(|i| self.shard(i).open.len()).sum()
    }
}

struct LogFile {
    files: Arc<LogFiles>,
    id: u64,
    path: PathBuf,
    size: u64,
    max_bytes: u64,
    max_files: u32,
    /// Stamps each record (the runtime's clock, so tests can pin it).
    clock: SharedClock,
}

impl LogFile {
    fn rotate(&mut self) -> std::io::Result<()> {
        // Close first: an open descriptor would follow the file to its rotated name.
        self.files.close(self.id);
        for i in (1..self.max_files).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        if self.max_files > 0 {
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        let _ = std::fs::remove_file(rotated(&self.path, self.max_files + 1));
        // A new file is created by the next append (truncating when nothing is kept).
        if self.max_files == 0 {
            File::create(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    fn write_record(&mut self, stream: &str, partial: bool, text: &[u8]) -> std::io::Result<()> {
        let timestamp = self
            .clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut record = Vec::with_capacity(text.len() + 48);
        record.extend_from_slice(timestamp.as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_bytes());
        record.extend_from_slice(if partial { b" P " } else { b" F " });
        record.extend_from_slice(text);
        record.push(b'\n');
        if self.size > 0 && self.size + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.files.append(self.id, &self.path, &record)?;
        self.size += record.len() as u64;
        Ok(())
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        self.files.close(self.id);
    }
}

/// The path of the `n`-th rotated file of `path` (`0.log.1`).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// One container's log, shared by its stdout and stderr streams.
#[derive(Clone)]
pub struct ContainerLog {
    file: Arc<Mutex<LogFile>>,
}

impl ContainerLog {
    /// Opens (appending) the log at `path` through `files`, creating the file and its
    /// directory; records are stamped with `clock`'s time.
    pub fn open(
        files: &Arc<LogFiles>,
        path: &Path,
        max_bytes: u64,
        max_files: u32,
        clock: SharedClock,
    ) -> std::io::Result<ContainerLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let id = files.next_id.fetch_add(1, Ordering::Relaxed);
        files.append(id, path, b"")?;
        let size = std::fs::metadata(path)?.len();
        Ok(ContainerLog {
            file: Arc::new(Mutex::new(LogFile {
                files: files.clone(),
                id,
                path: path.to_path_buf(),
                size,
                max_bytes: max_bytes.max(1024),
                max_files,
                clock,
            })),
        })
    }

    /// A stream for `stdout` or `stderr`.
    pub fn stream(&self, name: &'static str) -> LogStream {
        LogStream {
            log: self.clone(),
            name,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Writes a line from the runtime itself (why a container ended, say) to stderr.
    pub fn note(&self, text: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_record("stderr", false, text.as_bytes());
    }
}

/// A guest's stdout or stderr: splits what it writes into lines and records them.
#[derive(Clone)]
pub struct LogStream {
    log: ContainerLog,
    name: &'static str,
    /// Bytes of an unfinished line; shared by every stream WASI makes from this one.
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(bytes);
        let mut file = self.log.file.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            file.write_record(self.name, false, &line[..line.len() - 1])?;
        }
        while pending.len() >= MAX_LINE {
            let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
            file.write_record(self.name, true, &part)?;
        }
        Ok(())
    }

    /// Writes out an unfinished last line (when the guest exits without a newline).
    pub fn finish(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            let mut file = self.log.file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = file.write_record(self.name, false, &pending);
            pending.clear();
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Log writes are small and go to the page cache; doing them inline is cheaper
        // than handing them to a blocking thread.
        Poll::Ready(self.write_bytes(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_recorded_in_cri_format_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let files = LogFiles::new(64);
        let log = ContainerLog::open(&files, &path, 1024, 2, skiff_api::clock::system()).unwrap();
        let out = log.stream("stdout");
        out.write_bytes(b"hello\nwor").unwrap();
        out.write_bytes(b"ld\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stdout F world"));
        for _ in 0..100 {
            out.write_bytes(b"0123456789012345678901234567890123456789\n")
                .unwrap();
        }
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(
            !rotated(&path, 3).exists(),
            "only two rotated files are kept"
        );
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
    }

    #[test]
    fn open_files_are_bounded_and_no_line_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        // One file per shard: more logs than that must share descriptors.
        let files = LogFiles::new(SHARDS);
        let logs: Vec<(PathBuf, ContainerLog)> = (0..SHARDS * 3)
            .map(|i| {
                let path = dir.path().join(format!("c{i}/0.log"));
                let log = ContainerLog::open(&files, &path, 1 << 20, 1, skiff_api::clock::system())
                    .unwrap();
                (path, log)
            })
            .collect();
        assert!(files.open_count() <= SHARDS);
        for round in 0..5 {
            for (_, log) in &logs {
                log.stream("stdout")
                    .write_bytes(format!("line {round}\n").as_bytes())
                    .unwrap();
            }
            assert!(files.open_count() <= SHARDS, "{}", files.open_count());
        }
        for (path, _) in &logs {
            let text = std::fs::read_to_string(path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 5, "{text}");
            for (round, line) in lines.iter().enumerate() {
                assert!(line.ends_with(&format!(" stdout F line {round}")), "{line}");
            }
        }
        drop(logs);
        assert_eq!(files.open_count(), 0, "a dropped log closes its file");
    }
}
