//! The Raft log and vote of one group, in sled.
//!
//! Durability rule: openraft hears that an append is persisted (its
//! `IOFlushed` callback) only after a `sled::Db::flush` that began after the
//! append's write returned; `save_vote` returns only after its own flush.
//!
//! Group commit: `append` writes the entries with one `apply_batch` and hands
//! the callback to a single flusher task. The flusher takes every callback
//! that is waiting, runs one flush (which covers every write made before it
//! started, for the whole database), then completes them all. While one flush
//! runs, the next batch of callbacks gathers, so under load many appends share
//! one fsync.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use tokio::sync::mpsc;

use crate::codec::decode;
use crate::codec::encode;
use crate::codec::raft_keys;
use crate::types::*;

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged";

/// Counters that show group commit at work: `entries_appended /
/// flushes` is the mean number of entries per fsync. The histograms are
/// exported as Prometheus metrics (`metrics.rs`).
#[derive(Debug)]
pub struct LogStats {
    pub appends: AtomicU64,
    pub entries_appended: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_micros_total: AtomicU64,
    /// Duration of each flush of the flusher (`Db::flush`, an fsync), in
    /// seconds.
    pub flush_seconds: Histogram,
    /// Time from `append` being called to the flush that made its entries
    /// durable returning, in seconds: what an append costs openraft (the
    /// write, the wait for the flusher, the fsync).
    pub append_seconds: Histogram,
    /// Log entries made durable by each flush of the flusher.
    pub flush_entries: Histogram,
}

impl Default for LogStats {
    fn default() -> LogStats {
        // 100 µs to 10 s: an fsync on NVMe takes tens of microseconds, on a
        // busy disk or a network volume hundreds of milliseconds.
        let seconds = || Histogram::new(FLUSH_SECONDS_BUCKETS);
        LogStats {
            appends: AtomicU64::new(0),
            entries_appended: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_micros_total: AtomicU64::new(0),
            flush_seconds: seconds(),
            append_seconds: seconds(),
            // 1 to 4096 entries.
            flush_entries: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

/// Bucket bounds of the flush and append latency histograms, in seconds.
const FLUSH_SECONDS_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// An append waiting for the flusher.
struct PendingFlush {
    callback: IOFlushed<TypeConfig>,
    entries: u64,
    written_at: std::time::Instant,
}

#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    db: sled::Db,
    tree: sled::Tree,
    flusher: mpsc::UnboundedSender<PendingFlush>,
    stats: Arc<LogStats>,
    /// Test-only fault (`Config::unsafe_ack_before_fsync`): appends are
    /// reported persisted at once, but kept in memory and written to sled only
    /// about a second later, as an operating system's cache would hold writes
    /// that were never fsynced. A process killed meanwhile loses them, which
    /// is what a machine losing power does to unsynced data. (sled itself
    /// hands every batch to the OS at once, so without this a killed process
    /// never loses anything and the broken mode would go unnoticed.)
    unsynced: Option<Arc<Mutex<BTreeMap<u64, Entry>>>>,
}

/// How long the broken mode holds appended entries before writing them.
const UNSYNCED_WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(1000);

impl LogStore {
    /// Opens the log of `group` in `db`. Must be called inside a tokio
    /// runtime: it starts the flusher task.
    pub fn open(db: sled::Db, group: GroupId) -> io::Result<LogStore> {
        Self::open_with(db, group, false)
    }

    pub(crate) fn open_with(db: sled::Db, group: GroupId, ack_before_fsync: bool) -> io::Result<LogStore> {
        let tree = db.open_tree("raft").map_err(io::Error::other)?;
        let stats = Arc::new(LogStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(db.clone(), rx, stats.clone()));
        let unsynced = ack_before_fsync.then(|| {
            let unsynced = Arc::new(Mutex::new(BTreeMap::new()));
            tokio::spawn(write_unsynced_later(tree.clone(), group, unsynced.clone()));
            unsynced
        });
        Ok(LogStore { group, db, tree, flusher: tx, stats, unsynced })
    }

    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self.tree.get(raft_keys::meta(self.group, name)).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        self.tree.insert(raft_keys::meta(self.group, name), encode(value)?).map_err(io::Error::other)?;
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        let db = self.db.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || db.flush()).await.map_err(io::Error::other)?.map_err(io::Error::other)?;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.flush_micros_total.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let stored = match self.tree.scan_prefix(raft_keys::log_prefix(self.group)).next_back() {
            None => None,
            Some(item) => {
                let (key, value) = item.map_err(io::Error::other)?;
                let entry: Entry = decode(&value)?;
                check_entry_key(&key, &entry)?;
                Some(entry)
            }
        };
        let unsynced = self
            .unsynced
            .as_ref()
            .and_then(|u| u.lock().expect("unsynced lock").last_key_value().map(|(_, e)| e.clone()));
        Ok(match (stored, unsynced) {
            (Some(s), Some(u)) => Some(if u.index() >= s.index() { u } else { s }),
            (s, u) => s.or(u),
        })
    }

    /// Removes log entries with index in `range`, newest first, so that an
    /// interrupted removal leaves no hole.
    fn remove_range(&self, from: u64, to_inclusive: u64) -> io::Result<()> {
        if let Some(unsynced) = &self.unsynced {
            unsynced.lock().expect("unsynced lock").retain(|&i, _| i < from || i > to_inclusive);
        }
        let keys: Vec<_> = self
            .tree
            .range(raft_keys::log(self.group, from)..=raft_keys::log(self.group, to_inclusive))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io::Error::other)?;
        let mut batch = sled::Batch::default();
        for key in keys.into_iter().rev() {
            batch.remove(key);
        }
        self.tree.apply_batch(batch).map_err(io::Error::other)
    }
}

/// Checks an entry read back against the key it was stored under.
fn check_entry_key(key: &[u8], entry: &Entry) -> io::Result<()> {
    let index = raft_keys::log_index(key);
    if entry.index() != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("log entry stored at index {index} says it is index {}", entry.index()),
        ));
    }
    Ok(())
}

/// The broken mode's delayed writer (see `LogStore::unsynced`).
async fn write_unsynced_later(tree: sled::Tree, group: GroupId, unsynced: Arc<Mutex<BTreeMap<u64, Entry>>>) {
    loop {
        tokio::time::sleep(UNSYNCED_WRITE_DELAY).await;
        let mut pending = unsynced.lock().expect("unsynced lock");
        let mut batch = sled::Batch::default();
        for (index, entry) in pending.iter() {
            match encode(entry) {
                Ok(bytes) => batch.insert(&raft_keys::log(group, *index), bytes),
                Err(e) => tracing::error!(error = %e, "encoding a log entry"),
            }
        }
        if let Err(e) = tree.apply_batch(batch) {
            tracing::error!(error = %e, "writing delayed log entries");
        }
        pending.clear();
    }
}

async fn run_flusher(db: sled::Db, mut rx: mpsc::UnboundedReceiver<PendingFlush>, stats: Arc<LogStats>) {
    let mut waiting: Vec<PendingFlush> = Vec::new();
    while let Some(first) = rx.recv().await {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let db = db.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || db.flush()).await;
        let took = started.elapsed();
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.flush_micros_total.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        stats.flush_seconds.observe(took.as_secs_f64());
        stats.flush_entries.observe(waiting.iter().map(|p| p.entries).sum::<u64>() as f64);
        let error = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = &error {
            tracing::error!(error = %e, "log flush failed; reporting the appends as failed");
        }
        let flushes = stats.flushes.load(Ordering::Relaxed);
        if flushes.is_multiple_of(1000) {
            tracing::debug!(
                flushes,
                appends = stats.appends.load(Ordering::Relaxed),
                entries = stats.entries_appended.load(Ordering::Relaxed),
                batch = waiting.len(),
                flush_us_avg = stats.flush_micros_total.load(Ordering::Relaxed) / flushes.max(1),
                "log flush stats"
            );
        }
        for PendingFlush { callback, written_at, .. } in waiting.drain(..) {
            stats.append_seconds.observe(written_at.elapsed().as_secs_f64());
            callback.io_completed(match &error {
                None => Ok(()),
                Some(e) => Err(io::Error::other(e.clone())),
            });
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&x) => Some(x),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&x) => Some(x - 1),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end < start) {
            return Ok(Vec::new());
        }
        let from = raft_keys::log(self.group, start);
        let iter = match end {
            Some(end) => self.tree.range(from..=raft_keys::log(self.group, end)),
            None => self.tree.range(from..=raft_keys::log(self.group, u64::MAX)),
        };
        let mut entries = BTreeMap::new();
        for item in iter {
            let (key, value) = item.map_err(io::Error::other)?;
            let entry: Entry = decode(&value)?;
            check_entry_key(&key, &entry)?;
            entries.insert(entry.index(), entry);
        }
        if let Some(unsynced) = &self.unsynced {
            let unsynced = unsynced.lock().expect("unsynced lock");
            for (index, entry) in unsynced.range(start..=end.unwrap_or(u64::MAX)) {
                entries.insert(*index, entry.clone());
            }
        }
        Ok(entries.into_values().collect())
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(META_LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(META_VOTE, vote)?;
        // A vote must be on disk before it is acted on: a node that forgot
        // its vote after a crash could vote twice in one term.
        self.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        if self.unsynced.is_some() {
            // In the broken mode the committed index would be lost with the
            // unsynced entries it covers; not saving it keeps a restarted
            // node consistent with the log it actually has.
            return Ok(());
        }
        // Not flushed by itself: the next log or vote flush carries it. A
        // committed id older than the true one only means re-applying less
        // on restart; it is never ahead of the durable log.
        self.put_meta(META_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.get_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(unsynced) = &self.unsynced {
            // The deliberately broken mode: claim durability that does not
            // exist. Only reachable through `Config::unsafe_ack_before_fsync`.
            let mut unsynced = unsynced.lock().expect("unsynced lock");
            for entry in entries {
                unsynced.insert(entry.index(), entry);
            }
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut count = 0u64;
        let started = std::time::Instant::now();
        for entry in entries {
            batch.insert(&raft_keys::log(self.group, entry.index()), encode(&entry)?);
            count += 1;
        }
        self.tree.apply_batch(batch).map_err(io::Error::other)?;
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats.entries_appended.fetch_add(count, Ordering::Relaxed);
        let pending = PendingFlush { callback, entries: count, written_at: started };
        if let Err(mpsc::error::SendError(pending)) = self.flusher.send(pending) {
            pending.callback.io_completed(Err(io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        // Not flushed: the append that follows a truncation is flushed, and
        // sled makes writes durable in order, so the truncation is durable
        // before that append is reported persisted.
        self.remove_range(from, u64::MAX)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: entries at or below it are ignored
        // from then on, so a crash between the two steps leaves no hole.
        self.put_meta(META_LAST_PURGED, &log_id)?;
        self.remove_range(0, log_id.index())
    }
}
