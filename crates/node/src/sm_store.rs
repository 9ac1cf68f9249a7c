//! openraft's state machine for one group: the pure queue [`State`] in RAM,
//! message records in the body store (`body_store.rs`), snapshots and
//! checkpoints in files.
//!
//! Where each part lives and why:
//! - The queue metadata (`State`) is in RAM and is rebuilt on restart from
//!   the newest checkpoint plus the log after it (openraft re-applies
//!   committed entries above it on start-up).
//! - Message records (id, body) are appended to the body store's segment
//!   files as entries are applied, without a flush of their own: the Raft
//!   log is the durable copy, and re-applying an entry appends the same
//!   records again.
//! - A checkpoint is a file holding the `State` and the body store's index
//!   as of one log index; it is written after every segment is synced, so a
//!   restart from it finds every body it names. It is cheap next to a
//!   snapshot (no bodies), and it is also what lets the body store delete
//!   retired segments.
//! - A snapshot is a file holding the `State` and a copy of every live
//!   message record as of one log index. Building one writes a checkpoint
//!   at the same index first, so that once openraft purges the log behind
//!   the snapshot, a restart needs neither the purged entries nor a copy of
//!   the bodies.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use quorumq_raft_state_machine::CapturedState;
use quorumq_raft_state_machine::Effect;
use quorumq_raft_state_machine::MessageRecord;
use quorumq_raft_state_machine::Outcome;
use quorumq_raft_state_machine::QueueId;
use quorumq_raft_state_machine::Seq;
use quorumq_raft_state_machine::State;
use quorumq_raft_state_machine::message_id;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::Notify;

use crate::body_store::BodyStore;
use crate::body_store::Capture;
use crate::body_store::Loc;
use crate::codec::decode;
use crate::codec::encode;
use crate::codec::message_keys;
use crate::snapshot_file;
use crate::types::*;

/// A snapshot as openraft passes it around: an open file (readable even
/// after a newer snapshot replaces it on disk) and where it was.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: Arc<File>,
}

impl SnapshotFile {
    pub fn open(path: &Path) -> io::Result<SnapshotFile> {
        Ok(SnapshotFile { path: path.to_path_buf(), file: Arc::new(File::open(path)?) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// An independent reader from the start of the file.
    pub fn reader(&self) -> PositionalReader {
        PositionalReader { file: self.file.clone(), pos: 0 }
    }
}

/// Reads a shared file at its own offset, so that several readers (one per
/// follower being sent the snapshot) do not disturb each other.
pub struct PositionalReader {
    file: Arc<File>,
    pos: u64,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Wakes long polls when messages become visible in a queue.
#[derive(Default)]
pub struct Notifier {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Notifier {
    /// The notifier of one queue. Register interest (`Notified::enable`)
    /// before checking for messages, so that a wake-up between the check and
    /// the wait is not lost.
    pub fn queue(&self, queue: &str) -> Arc<Notify> {
        self.queues.lock().expect("notifier lock").entry(queue.to_string()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        if let Some(notify) = self.queues.lock().expect("notifier lock").get(queue) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for notify in self.queues.lock().expect("notifier lock").values() {
            notify.notify_waiters();
        }
    }
}

/// What has been applied: the queue state and where in the log it stands.
#[derive(Default)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: State,
}

/// The queue state a checkpoint file is to hold.
enum StateSource<'a> {
    /// Already encoded (a snapshot's, written to both files).
    Encoded(&'a [u8]),
    /// Encoded straight into the file, with no encoded copy in memory.
    Value(&'a CapturedState),
}

#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    file_name: String,
    meta: SnapshotMeta,
}

struct Shared {
    group: GroupId,
    db: sled::Db,
    meta: sled::Tree,
    dir: PathBuf,
    bodies: BodyStore,
    applied: RwLock<Applied>,
    /// Held while a snapshot is copied out or installed: the two must not
    /// interleave.
    snapshot_lock: tokio::sync::Mutex<()>,
    notifier: Notifier,
    file_counter: AtomicU64,
    /// Size of the current snapshot file (last built, installed or loaded),
    /// 0 when there is none: the `quorumq_snapshot_bytes` metric.
    snapshot_bytes: AtomicU64,
    /// Log bytes applied since the last checkpoint (an estimate: bodies
    /// plus a fixed cost per entry).
    since_checkpoint: AtomicU64,
    /// Set while a background checkpoint is being written.
    checkpointing: AtomicBool,
    /// Serialises checkpoint writes and holds the body store capture
    /// generation of the newest one written: an older capture that
    /// finishes later is dropped, never made current.
    checkpoint_write: Mutex<u64>,
    checkpoint_every: AtomicU64,
    /// The least `checkpoint_every` may be ([`CHECKPOINT_EVERY_BYTES`]).
    checkpoint_floor: AtomicU64,
    /// 1 + the index of the checkpoint the state was loaded from at start
    /// (0: none).
    loaded_checkpoint: AtomicU64,
    checkpoints_written: AtomicU64,
    /// Seconds the apply task spent capturing the state and body index for
    /// each checkpoint (encoding under the read lock: applies wait).
    checkpoint_capture_seconds: Histogram,
    /// 1 + the index of the last checkpoint written (0: none yet).
    last_checkpoint: AtomicU64,
    /// Whether the threshold grows with the state (off once a test sets it).
    checkpoint_adaptive: AtomicBool,
}

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

const META_CURRENT: &str = "current_snapshot";
const META_INSTALLING: &str = "installing_snapshot";
/// Written by versions that kept bodies in sled: how far those were
/// complete. Removed when the bodies move to the body store.
const META_BODIES_APPLIED: &str = "bodies_applied";
const META_CHECKPOINT: &str = "checkpoint";
/// The sled tree that held message records before the body store.
const OLD_MESSAGES_TREE: &str = "messages";

/// A checkpoint is written once this many bytes of log have been applied
/// since the last one (bodies plus [`CHECKPOINT_ENTRY_BYTES`] per entry).
pub const CHECKPOINT_EVERY_BYTES: u64 = 64 << 20;
/// What one entry counts towards [`CHECKPOINT_EVERY_BYTES`] besides its
/// bodies: replaying acks and receives costs too.
const CHECKPOINT_ENTRY_BYTES: u64 = 256;
/// With at most this many records, a checkpoint is cheap enough to write
/// for any retired body segment, so a drained queue's disk comes back at
/// once.
const SMALL_INDEX: u64 = 65_536;

fn meta_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

impl StateMachineStore {
    /// Opens the state machine of `group` in `data_dir` (snapshots and
    /// checkpoints in `snapshots/group-N/`, bodies in `bodies/group-N/`):
    /// finishes an interrupted snapshot install, then loads the newest
    /// checkpoint (or snapshot) with the body index. Blocking.
    pub fn open(db: sled::Db, group: GroupId, data_dir: &Path) -> io::Result<StateMachineStore> {
        let dir = data_dir.join("snapshots").join(format!("group-{group}"));
        std::fs::create_dir_all(&dir)?;
        let bodies = BodyStore::open(&data_dir.join("bodies").join(format!("group-{group}")))?;
        let shared = Shared {
            group,
            meta: db.open_tree("sm").map_err(io::Error::other)?,
            db,
            dir,
            bodies,
            applied: RwLock::new(Applied::default()),
            snapshot_lock: tokio::sync::Mutex::new(()),
            notifier: Notifier::default(),
            file_counter: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            since_checkpoint: AtomicU64::new(0),
            checkpointing: AtomicBool::new(false),
            checkpoint_write: Mutex::new(0),
            checkpoint_every: AtomicU64::new(CHECKPOINT_EVERY_BYTES),
            checkpoint_floor: AtomicU64::new(CHECKPOINT_EVERY_BYTES),
            loaded_checkpoint: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            checkpoint_capture_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            last_checkpoint: AtomicU64::new(0),
            checkpoint_adaptive: AtomicBool::new(true),
        };
        if let Some(file_name) = shared.get_meta::<String>(META_INSTALLING)? {
            tracing::warn!(%file_name, "finishing a snapshot install interrupted by a crash");
            let path = shared.dir.join(&file_name);
            let snapshot = SnapshotFile::open(&path)?;
            shared.install_from_own_file(&snapshot)?;
        }
        let current = shared.get_meta::<CurrentSnapshot>(META_CURRENT)?;
        if let Some(current) = &current {
            let file = SnapshotFile::open(&shared.dir.join(&current.file_name))?;
            shared.snapshot_bytes.store(file.len()?, Ordering::Relaxed);
        }
        let snapshot_index = current.as_ref().and_then(|c| c.meta.last_log_id).map(|id| id.index());
        if !shared.load_checkpoint(snapshot_index)? {
            match &current {
                // The checkpoint written with every snapshot is missing:
                // take the state and the bodies from the snapshot itself.
                Some(current) => {
                    tracing::warn!(file = %current.file_name, "no checkpoint as new as the snapshot: re-reading its bodies");
                    let snapshot = SnapshotFile::open(&shared.dir.join(&current.file_name))?;
                    let (meta, state) = shared.install_from_own_file(&snapshot)?;
                    tracing::info!(file = %current.file_name, messages = state.message_count(), "loaded queue state from snapshot");
                    *shared.applied.write().expect("applied lock") =
                        Applied { last_applied: meta.last_log_id, last_membership: meta.last_membership, state };
                }
                // No snapshot: the whole log is there and is applied again.
                None => shared.bodies.load_index(std::iter::empty())?,
            }
        }
        shared.migrate_sled_messages()?;
        shared.remove_stale_files(true)?;
        Ok(StateMachineStore { shared: Arc::new(shared) })
    }

    /// Fixes how many bytes of log are applied between checkpoints (tests
    /// use a small value). By default it is [`CHECKPOINT_EVERY_BYTES`] or
    /// twice the last checkpoint (written or loaded), whichever is larger.
    pub fn set_checkpoint_every(&self, bytes: u64) {
        self.shared.checkpoint_adaptive.store(false, Ordering::Relaxed);
        self.shared.checkpoint_floor.store(bytes, Ordering::Relaxed);
        self.shared.checkpoint_every.store(bytes, Ordering::Relaxed);
    }

    /// The log index of the checkpoint the state was loaded from when this
    /// node started, if it was loaded from one.
    pub fn loaded_checkpoint(&self) -> Option<u64> {
        self.shared.loaded_checkpoint.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The log index of the last checkpoint written since this node started.
    pub fn last_checkpoint(&self) -> Option<u64> {
        self.shared.last_checkpoint.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Checkpoints written since this node started.
    pub fn checkpoints_written(&self) -> u64 {
        self.shared.checkpoints_written.load(Ordering::Relaxed)
    }

    /// The histogram of checkpoint captures on the apply path (shared).
    pub fn checkpoint_capture_seconds(&self) -> Histogram {
        self.shared.checkpoint_capture_seconds.clone()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.shared.notifier
    }

    /// Size in bytes of the current snapshot file (the last one built,
    /// installed or loaded at start), 0 when there is none.
    pub fn snapshot_bytes(&self) -> u64 {
        self.shared.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the body store's segment files (retired ones not yet
    /// deleted included).
    pub fn body_bytes(&self) -> u64 {
        self.shared.bodies.disk_bytes()
    }

    /// Runs `f` on the applied state (a read lock; keep `f` short).
    pub fn read<R>(&self, f: impl FnOnce(&Applied) -> R) -> R {
        f(&self.shared.applied.read().expect("applied lock"))
    }

    /// The stored record of a message, if it still exists.
    pub fn load_message(&self, queue_id: QueueId, seq: Seq) -> io::Result<Option<MessageRecord>> {
        self.shared.bodies.get(queue_id, seq)
    }
}

impl Shared {
    fn get_meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self.meta.get(meta_key(self.group, name)).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn put_meta<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        self.meta.insert(meta_key(self.group, name), encode(value)?).map_err(io::Error::other)?;
        Ok(())
    }

    fn remove_meta(&self, name: &str) -> io::Result<()> {
        self.meta.remove(meta_key(self.group, name)).map_err(io::Error::other)?;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        Ok(())
    }

    fn new_file_name(&self, kind: &str) -> String {
        let n = self.file_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{kind}-{nanos}-{n}.qqs")
    }

    /// Deletes snapshot files other than the current one (and the one being
    /// installed); with `with_partial`, also unfinished ones left by a crash.
    /// Open handles keep removed files readable until dropped.
    fn remove_stale_files(&self, with_partial: bool) -> io::Result<()> {
        let keep: BTreeSet<String> = [
            self.get_meta::<CurrentSnapshot>(META_CURRENT)?.map(|c| c.file_name),
            self.get_meta::<String>(META_INSTALLING)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        for dirent in std::fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            let partial = name.starts_with("tmp-") || name.starts_with("incoming-");
            if (name.starts_with("snap-") || (with_partial && partial)) && !keep.contains(&name) {
                std::fs::remove_file(dirent.path())?;
            }
        }
        Ok(())
    }

    /// Loads the latest checkpoint, state and body index, if it is at least
    /// as new as the snapshot (of log index `snapshot_index`): openraft then
    /// replays only the log after it. Returns whether it did.
    ///
    /// Nothing is held twice meanwhile: the state is decoded from the file
    /// as it is read, and each body-index record goes into the index as it
    /// is read.
    fn load_checkpoint(&self, snapshot_index: Option<u64>) -> io::Result<bool> {
        let current = self.get_meta::<CurrentSnapshot>(META_CHECKPOINT)?;
        self.remove_stale_checkpoints(current.as_ref().map(|c| c.file_name.as_str()))?;
        let Some(current) = current else { return Ok(false) };
        let checkpoint = current.meta.last_log_id.map(|id| id.index());
        if checkpoint < snapshot_index {
            return Ok(false);
        }
        let file = SnapshotFile::open(&self.dir.join(&current.file_name))?;
        // The interval the checkpoint was written under: without it the log
        // replayed after it (up to twice its size) would start a checkpoint
        // every 64 MiB, each a second copy of the state while it is written
        // (at 10M queued messages that took a restart from 0.5 to 1.2 GiB).
        self.adapt_checkpoint_every(file.len()?);
        let mut reader = snapshot_file::Reader::open(file.reader())?;
        let (_, state) = reader.read_queue_state()?;
        tracing::info!(file = %current.file_name, messages = state.message_count(), "loaded queue state from checkpoint");
        *self.applied.write().expect("applied lock") = Applied {
            last_applied: current.meta.last_log_id,
            last_membership: current.meta.last_membership.clone(),
            state,
        };
        self.bodies.load_index(std::iter::from_fn(|| match reader.next_record() {
            Ok(Some((queue_id, seq, loc))) => Some(Loc::decode(&loc).map(|loc| (queue_id, seq, loc))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }))?;
        self.loaded_checkpoint.store(checkpoint.map_or(0, |i| i + 1), Ordering::Relaxed);
        Ok(true)
    }

    /// Moves the message records a version before the body store kept in
    /// sled's `messages` tree into the body store, writes a checkpoint with
    /// them, and drops the tree. Records of messages the loaded state no
    /// longer has are left behind (the log after the checkpoint re-creates
    /// whatever it needs).
    fn migrate_sled_messages(&self) -> io::Result<()> {
        let exists = self.db.tree_names().iter().any(|name| name.as_ref() == OLD_MESSAGES_TREE.as_bytes());
        if !exists {
            return Ok(());
        }
        let messages = self.db.open_tree(OLD_MESSAGES_TREE).map_err(io::Error::other)?;
        let (meta, state_bytes, keys) = {
            let applied = self.applied.read().expect("applied lock");
            let meta =
                SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.last_membership.clone() };
            (meta, encode(&applied.state)?, applied.state.message_keys().collect::<Vec<_>>())
        };
        let mut moved = 0u64;
        for (queue_id, seq) in keys {
            if let Some(record) =
                messages.get(message_keys::message(self.group, queue_id, seq)).map_err(io::Error::other)?
            {
                self.bodies.put_encoded(queue_id, seq, &record)?;
                moved += 1;
            }
        }
        let capture = self.bodies.capture()?;
        self.write_checkpoint(&meta, StateSource::Encoded(&state_bytes), capture)?;
        self.remove_meta(META_BODIES_APPLIED)?;
        self.db.drop_tree(OLD_MESSAGES_TREE).map_err(io::Error::other)?;
        self.flush()?;
        tracing::info!(moved, "moved message records from sled to the body store");
        Ok(())
    }

    /// Deletes checkpoint files other than `keep`.
    fn remove_stale_checkpoints(&self, keep: Option<&str>) -> io::Result<()> {
        for dirent in std::fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            if name.starts_with("ckpt-") && Some(name.as_str()) != keep {
                std::fs::remove_file(dirent.path())?;
            }
        }
        Ok(())
    }

    /// Writes a checkpoint of the state at `meta.last_log_id` with the body
    /// index captured at the same moment. The body segments are synced
    /// first, so that a restart from the checkpoint finds every body it
    /// names; once it is durable, body segments retired before the capture
    /// are deleted. A capture older than the last checkpoint written is
    /// dropped (returns false).
    fn write_checkpoint(&self, meta: &SnapshotMeta, state: StateSource<'_>, capture: Capture) -> io::Result<bool> {
        let mut newest = self.checkpoint_write.lock().expect("checkpoint lock");
        if capture.generation < *newest {
            return Ok(false);
        }
        capture.sync()?;
        let tmp = self.dir.join(self.new_file_name("tmp"));
        let (mut writer, state_len) = match state {
            StateSource::Encoded(bytes) => (snapshot_file::Writer::create(&tmp, meta, bytes)?, bytes.len() as u64),
            StateSource::Value(state) => snapshot_file::Writer::create_encoding(&tmp, meta, state)?,
        };
        capture.try_for_each(|queue_id, seq, loc| writer.record(queue_id, seq, &loc.encode()))?;
        writer.finish()?;
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index());
        let file_name = format!("ckpt-{index:020}-{}", self.new_file_name("c"));
        std::fs::rename(&tmp, self.dir.join(&file_name))?;
        sync_dir(&self.dir)?;
        self.put_meta(META_CHECKPOINT, &CurrentSnapshot { file_name: file_name.clone(), meta: meta.clone() })?;
        self.flush()?;
        *newest = capture.generation;
        self.remove_stale_checkpoints(Some(&file_name))?;
        self.bodies.checkpoint_durable(capture.generation)?;
        self.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        self.last_checkpoint.store(index + 1, Ordering::Relaxed);
        self.adapt_checkpoint_every(state_len + (capture.len() * (Loc::ENCODED + 20)) as u64);
        tracing::debug!(last_log_id = ?meta.last_log_id, state_bytes = state_len, "wrote checkpoint");
        Ok(true)
    }

    /// Sets the interval between checkpoints to twice the size of one
    /// (`size` bytes), or the floor, unless a test fixed it.
    fn adapt_checkpoint_every(&self, size: u64) {
        if self.checkpoint_adaptive.load(Ordering::Relaxed) {
            let every = self.checkpoint_floor.load(Ordering::Relaxed).max(2 * size);
            self.checkpoint_every.store(every, Ordering::Relaxed);
        }
    }

    /// Starts a checkpoint in the background when enough log has been
    /// applied since the last one, or when retired body segments wait for
    /// one to be deleted. Called by the state machine task after an apply,
    /// so the state captured is exactly the state at `last_applied`.
    ///
    /// A checkpoint is the queue state and body index without bodies:
    /// cheap next to a snapshot, which copies every body. On restart the
    /// node loads the newest checkpoint and replays only the log after it.
    /// The threshold grows with the state (2 x its encoded size and index), so a large
    /// backlog is not re-encoded too often.
    fn maybe_checkpoint(self: &Arc<Shared>) -> io::Result<()> {
        let every = self.checkpoint_every.load(Ordering::Relaxed);
        let due = self.since_checkpoint.load(Ordering::Relaxed) >= every || {
            let reclaimable = self.bodies.reclaimable_bytes();
            reclaimable >= every / 2 || (reclaimable > 0 && self.bodies.len() <= SMALL_INDEX)
        };
        if !due || self.checkpointing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let captured = self.capture();
        let (meta, state, capture) = match captured {
            Ok(captured) => captured,
            Err(e) => {
                self.checkpointing.store(false, Ordering::Release);
                return Err(e);
            }
        };
        self.checkpoint_capture_seconds.observe(started.elapsed().as_secs_f64());
        self.since_checkpoint.store(0, Ordering::Relaxed);
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.write_checkpoint(&meta, StateSource::Value(&state), capture) {
                tracing::error!(error = %e, "writing a checkpoint failed");
            }
            shared.checkpointing.store(false, Ordering::Release);
        });
        Ok(())
    }

    /// The state, its log position and the body index as of the last
    /// applied entry, for a checkpoint or a snapshot. Runs in the state
    /// machine's task (so all three are as of `last_applied`), which waits
    /// meanwhile: the state and the index are copied here, sharing their
    /// per-message parts copy-on-write (a few bytes a message), and encoded
    /// by the background writer (a checkpoint encodes the state straight
    /// into its file).
    fn capture(&self) -> io::Result<(SnapshotMeta, CapturedState, Capture)> {
        let applied = self.applied.read().expect("applied lock");
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.last_membership.clone() };
        Ok((meta, applied.state.capture(), self.bodies.capture()?))
    }

    /// Replaces every message record of the group with those of `snapshot`
    /// (a file in our directory), writes a checkpoint of it, then makes it
    /// the current snapshot. Idempotent, so a crash at any point is finished
    /// by running it again. Returns the snapshot's state.
    fn install_from_own_file(&self, snapshot: &SnapshotFile) -> io::Result<(SnapshotMeta, State)> {
        let file_name = snapshot
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("snapshot file has no name"))?
            .to_string();
        self.put_meta(META_INSTALLING, &file_name)?;
        self.flush()?;

        let mut reader = snapshot_file::Reader::open(snapshot.reader())?;
        let (meta, state) = reader.read_queue_state()?;

        self.bodies.clear()?;
        while let Some((queue_id, seq, record)) = reader.next_record()? {
            self.bodies.put_encoded(queue_id, seq, &record)?;
        }
        let capture = self.bodies.capture()?;
        self.write_checkpoint(&meta, StateSource::Value(&state.capture()), capture)?;

        self.put_meta(META_CURRENT, &CurrentSnapshot { file_name, meta: meta.clone() })?;
        self.remove_meta(META_INSTALLING)?;
        self.flush()?;
        self.snapshot_bytes.store(snapshot.len()?, Ordering::Relaxed);
        Ok((meta, state))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok(self.read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let shared = &self.shared;
        let bodies = &shared.bodies;
        let mut effects = Vec::new();
        let mut replies = Vec::new();
        let mut woken = BTreeSet::new();
        let mut applied_bytes = 0u64;
        while let Some((entry, responder)) = entries.try_next().await? {
            applied_bytes += CHECKPOINT_ENTRY_BYTES;
            let response = {
                let mut applied = shared.applied.write().expect("applied lock");
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Ok(Outcome::None),
                    EntryPayload::Normal(request) => applied.state.apply(request, &mut effects),
                    EntryPayload::Membership(membership) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        Ok(Outcome::None)
                    }
                }
            };
            for effect in effects.drain(..) {
                match effect {
                    Effect::PutMessage { queue_id, seq, record } => {
                        applied_bytes += record.body.len() as u64;
                        bodies.put(queue_id, seq, &record)?;
                    }
                    Effect::DeleteMessage { queue_id, seq } => bodies.delete(queue_id, seq)?,
                    Effect::DeleteMessages { queue_id, before } => bodies.delete_below(queue_id, before)?,
                    Effect::MoveMessage { from, to, dead_letter } => {
                        match bodies.get(from.0, from.1)? {
                            Some(mut record) => {
                                // The message keeps the id it was delivered
                                // under, even when the server assigned it.
                                record.id.get_or_insert_with(|| message_id(from.0, from.1, None));
                                record.dead_letter = dead_letter;
                                bodies.put(to.0, to.1, &record)?;
                            }
                            None => tracing::warn!(
                                queue_id = from.0.0,
                                seq = from.1.0,
                                "moved message has no stored record"
                            ),
                        }
                        bodies.delete(from.0, from.1)?;
                    }
                    Effect::MessagesAvailable { queue } => {
                        woken.insert(queue);
                    }
                }
            }
            if let Some(responder) = responder {
                replies.push((responder, response));
            }
        }
        bodies.write_pending()?;
        // Answer only once the records are written, so that a Receive's
        // caller can read the bodies it was given.
        for (responder, response) in replies {
            responder.send(response);
        }
        for queue in woken {
            shared.notifier.wake(&queue);
        }
        if bodies.compact_one()? > 0 {
            bodies.write_pending()?;
        }
        shared.since_checkpoint.fetch_add(applied_bytes, Ordering::Relaxed);
        shared.maybe_checkpoint()
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<SnapshotBuilder> {
        match self.start_snapshot() {
            Ok(builder) => Some(builder),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a snapshot");
                None
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.start_snapshot().expect("encode the queue state")
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> io::Result<()> {
        let _lock = self.shared.snapshot_lock.lock().await;
        let shared = self.shared.clone();
        let expected = meta.clone();
        let (meta, state) = tokio::task::spawn_blocking(move || -> io::Result<(SnapshotMeta, State)> {
            // Take ownership of the file: one received over the network is
            // already ours and is moved; any other is copied (and checked)
            // into our directory first.
            let own = if snapshot.path().parent() == Some(shared.dir.as_path())
                && snapshot.path().file_name().is_some_and(|n| n.to_string_lossy().starts_with("incoming-"))
            {
                let path = shared.dir.join(shared.new_file_name("snap"));
                std::fs::rename(snapshot.path(), &path)?;
                path
            } else {
                let path = shared.dir.join(shared.new_file_name("snap"));
                let mut out = File::create(&path)?;
                io::copy(&mut snapshot.reader(), &mut out)?;
                out.sync_all()?;
                path
            };
            sync_dir(&shared.dir)?;
            let (meta, state) = shared.install_from_own_file(&SnapshotFile::open(&own)?)?;
            if meta.last_log_id != expected.last_log_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot file is of log id {:?}, expected {:?}", meta.last_log_id, expected.last_log_id),
                ));
            }
            shared.remove_stale_files(false)?;
            Ok((meta, state))
        })
        .await
        .map_err(io::Error::other)??;
        *self.shared.applied.write().expect("applied lock") =
            Applied { last_applied: meta.last_log_id, last_membership: meta.last_membership.clone(), state };
        self.shared.notifier.wake_all();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let Some(current) = self.shared.get_meta::<CurrentSnapshot>(META_CURRENT)? else { return Ok(None) };
        let file = SnapshotFile::open(&self.shared.dir.join(&current.file_name))?;
        Ok(Some(Snapshot { meta: current.meta, snapshot: file }))
    }
}

impl StateMachineStore {
    /// Captures the state and the body index to snapshot, in the state
    /// machine's task (so both are exactly as of `last_applied`).
    fn start_snapshot(&self) -> io::Result<SnapshotBuilder> {
        let (meta, state, capture) = self.shared.capture()?;
        Ok(SnapshotBuilder { shared: self.shared.clone(), meta, captured: Some((state, capture)) })
    }

    /// The directory receiving snapshots from the leader writes into.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        self.shared.dir.join(self.shared.new_file_name("incoming"))
    }
}

/// Writes a captured state and its message records into a snapshot file.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    meta: SnapshotMeta,
    captured: Option<(CapturedState, Capture)>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let _lock = self.shared.snapshot_lock.lock().await;
        let shared = self.shared.clone();
        let meta = self.meta.clone();
        let (state, capture) = self.captured.take().ok_or_else(|| io::Error::other("snapshot already built"))?;
        let path = tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
            let state_bytes = encode(&state)?;
            drop(state);
            let tmp = shared.dir.join(shared.new_file_name("tmp"));
            let mut writer = snapshot_file::Writer::create(&tmp, &meta, &state_bytes)?;
            capture
                .try_for_each(|queue_id, seq, loc| writer.record(queue_id, seq, &capture.read(queue_id, seq, loc)?))?;
            writer.finish()?;
            // A checkpoint at the snapshot's index before openraft may purge
            // the log behind it: a restart then loads the body index from it
            // instead of copying every body out of the snapshot.
            shared.write_checkpoint(&meta, StateSource::Encoded(&state_bytes), capture)?;
            let index = meta.last_log_id.as_ref().map_or(0, |id| id.index());
            let file_name = format!("snap-{index:020}-{}", shared.new_file_name("b"));
            let path = shared.dir.join(&file_name);
            std::fs::rename(&tmp, &path)?;
            sync_dir(&shared.dir)?;
            shared.put_meta(META_CURRENT, &CurrentSnapshot { file_name, meta: meta.clone() })?;
            shared.flush()?;
            shared.snapshot_bytes.store(std::fs::metadata(&path)?.len(), Ordering::Relaxed);
            shared.remove_stale_files(false)?;
            Ok(path)
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?self.meta.last_log_id, path = %path.display(), "built snapshot");
        Ok(Snapshot { meta: self.meta.clone(), snapshot: SnapshotFile::open(&path)? })
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use openraft::RaftTypeConfig;
    use openraft::vote::RaftLeaderIdExt;
    use quorumq_raft_state_machine::Command;
    use quorumq_raft_state_machine::NewMessage;
    use quorumq_raft_state_machine::QueueConfig;
    use quorumq_raft_state_machine::Request;

    use super::*;
    use crate::types::QUEUES_GROUP;
    use crate::types::TypeConfig;

    /// Opens the store in `dir`. A store of the same directory just dropped
    /// may still be held for a moment by a task it started (a checkpoint
    /// written in the background), and with it sled's lock on the
    /// database: opening is retried for a few seconds.
    fn open(dir: &Path) -> StateMachineStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::Config::new().path(dir.join("db")).open() {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("opening the database again: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("opening the database: {e}"),
            }
        };
        StateMachineStore::open(db, QUEUES_GROUP, dir).unwrap()
    }

    /// Applies `command` straight to the state, bodies included, as of log
    /// index `index`. Returns the messages it stored.
    fn apply(sm: &StateMachineStore, index: u64, command: Command) -> Vec<(QueueId, Seq)> {
        let mut effects = Vec::new();
        let mut applied = sm.shared.applied.write().unwrap();
        applied.last_applied = Some(LogId::new(<TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 1), index));
        applied.state.apply(Request { now_ms: 1_000 + index, command }, &mut effects).unwrap();
        let mut stored = Vec::new();
        for effect in effects {
            if let Effect::PutMessage { queue_id, seq, record } = effect {
                sm.shared.bodies.put(queue_id, seq, &record).unwrap();
                stored.push((queue_id, seq));
            }
        }
        stored
    }

    /// A node whose checkpoint is older than its snapshot (or gone) takes
    /// the state and every body from the snapshot; one with both loads the
    /// checkpoint's.
    #[tokio::test]
    async fn a_restart_loads_the_checkpoint_or_else_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = |n: u64| (0..n).map(|i| NewMessage { body: format!("body {i}").into(), ..Default::default() });
        let queue = || "q".to_string();
        let stored = {
            let mut sm = open(dir.path());
            apply(&sm, 1, Command::CreateQueue { name: queue(), config: QueueConfig::default() });
            let stored = apply(&sm, 2, Command::Send { queue: queue(), messages: bodies(300).collect() });
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            stored
        };
        for forget_checkpoint in [false, true] {
            if forget_checkpoint {
                let sm = open(dir.path());
                sm.shared.remove_meta(META_CHECKPOINT).unwrap();
                sm.shared.flush().unwrap();
            }
            let sm = open(dir.path());
            assert_eq!(sm.read(|a| (a.last_applied.map(|id| id.index()), a.state.message_count())), (Some(2), 300));
            assert_eq!(sm.loaded_checkpoint(), (!forget_checkpoint).then_some(2));
            for (i, (queue_id, seq)) in stored.iter().enumerate() {
                let record = sm.load_message(*queue_id, *seq).unwrap().expect("a body for every message");
                assert_eq!(record.body, format!("body {i}"));
            }
        }
    }
}
