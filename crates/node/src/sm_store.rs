//! openraft's state machine for one group: the pure queue [`State`] in RAM,
//! message records in sled, snapshots in files.
//!
//! Where each part lives and why:
//! - The queue metadata (`State`) is in RAM and is rebuilt on restart from
//!   the latest snapshot plus the log after it (openraft re-applies committed
//!   entries above the snapshot on start-up).
//! - Message records (id, body) are in the sled tree `messages`, written as
//!   entries are applied, without a flush of their own: the Raft log is the
//!   durable copy, and re-applying an entry rewrites the same records.
//! - A snapshot is a file holding the `State` and a copy of every live
//!   message record as of one log index. Building one flushes sled first, so
//!   that every record written by entries up to that index is on disk before
//!   openraft may purge those entries.
//!
//! While a snapshot is being built (copied out of sled in a background task),
//! deletions of message records are deferred until the copy is done: a
//! message acked after the snapshot's index must still be readable by the
//! copier. Deferred deletions are bounded (`DeleteMessages` carries an upper
//! seq), so carrying them out late never touches newer messages.

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

#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    file_name: String,
    meta: SnapshotMeta,
}

enum DeleteOp {
    One([u8; 24]),
    Below { queue_id: QueueId, before: Seq },
}

#[derive(Default)]
struct Deferred {
    /// Snapshot copies in progress (openraft runs one at a time; counted to
    /// stay correct regardless).
    building: u32,
    ops: Vec<DeleteOp>,
}

struct Shared {
    group: GroupId,
    db: sled::Db,
    messages: sled::Tree,
    meta: sled::Tree,
    dir: PathBuf,
    applied: RwLock<Applied>,
    deferred: Mutex<Deferred>,
    /// Held while a snapshot is copied out or installed: the two must not
    /// interleave.
    snapshot_lock: tokio::sync::Mutex<()>,
    notifier: Notifier,
    file_counter: AtomicU64,
    /// Size of the current snapshot file (last built, installed or loaded),
    /// 0 when there is none: the `quorumq_snapshot_bytes` metric.
    snapshot_bytes: AtomicU64,
    /// 1 + the highest log index whose effects on the `messages` tree are
    /// all written (0: none known). Stored under [`META_BODIES_APPLIED`]
    /// after the records it covers, so sled's in-order recovery never lets
    /// it run ahead of them. Replaying an entry at or below it after a
    /// restart rebuilds the queue metadata only and skips rewriting bodies.
    bodies_applied: AtomicU64,
    /// Log bytes applied since the last checkpoint (an estimate: bodies
    /// plus a fixed cost per entry).
    since_checkpoint: AtomicU64,
    /// Set while a checkpoint is being written.
    checkpointing: AtomicBool,
    checkpoint_every: AtomicU64,
    /// The least `checkpoint_every` may be ([`CHECKPOINT_EVERY_BYTES`]).
    checkpoint_floor: AtomicU64,
    /// 1 + the index of the checkpoint the state was loaded from at start
    /// (0: none).
    loaded_checkpoint: AtomicU64,
    checkpoints_written: AtomicU64,
    /// 1 + the index of the last checkpoint written (0: none yet).
    last_checkpoint: AtomicU64,
    /// Whether the threshold grows with the state (off once a test sets it).
    checkpoint_adaptive: AtomicBool,
    /// Whether [`Shared::bodies_applied`] is kept and used (see
    /// [`StateMachineStore::disable_replay_watermark`]).
    replay_watermark: AtomicBool,
}

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

const META_CURRENT: &str = "current_snapshot";
const META_INSTALLING: &str = "installing_snapshot";
const META_BODIES_APPLIED: &str = "bodies_applied";
const META_CHECKPOINT: &str = "checkpoint";

/// A checkpoint is written once this many bytes of log have been applied
/// since the last one (bodies plus [`CHECKPOINT_ENTRY_BYTES`] per entry).
pub const CHECKPOINT_EVERY_BYTES: u64 = 64 << 20;
/// What one entry counts towards [`CHECKPOINT_EVERY_BYTES`] besides its
/// bodies: replaying acks and receives costs too.
const CHECKPOINT_ENTRY_BYTES: u64 = 256;

fn meta_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

impl StateMachineStore {
    /// Opens the state machine of `group`: finishes an interrupted snapshot
    /// install, then loads the latest snapshot's state. Blocking.
    pub fn open(db: sled::Db, group: GroupId, snapshot_dir: &Path) -> io::Result<StateMachineStore> {
        let dir = snapshot_dir.join(format!("group-{group}"));
        std::fs::create_dir_all(&dir)?;
        let shared = Shared {
            group,
            messages: db.open_tree("messages").map_err(io::Error::other)?,
            meta: db.open_tree("sm").map_err(io::Error::other)?,
            db,
            dir,
            applied: RwLock::new(Applied::default()),
            deferred: Mutex::new(Deferred::default()),
            snapshot_lock: tokio::sync::Mutex::new(()),
            notifier: Notifier::default(),
            file_counter: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            bodies_applied: AtomicU64::new(0),
            since_checkpoint: AtomicU64::new(0),
            checkpointing: AtomicBool::new(false),
            checkpoint_every: AtomicU64::new(CHECKPOINT_EVERY_BYTES),
            checkpoint_floor: AtomicU64::new(CHECKPOINT_EVERY_BYTES),
            loaded_checkpoint: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            last_checkpoint: AtomicU64::new(0),
            checkpoint_adaptive: AtomicBool::new(true),
            replay_watermark: AtomicBool::new(true),
        };
        if let Some(file_name) = shared.get_meta::<String>(META_INSTALLING)? {
            tracing::warn!(%file_name, "finishing a snapshot install interrupted by a crash");
            let path = shared.dir.join(&file_name);
            let snapshot = SnapshotFile::open(&path)?;
            shared.install_from_own_file(&snapshot)?;
        }
        if let Some(current) = shared.get_meta::<CurrentSnapshot>(META_CURRENT)? {
            let file = SnapshotFile::open(&shared.dir.join(&current.file_name))?;
            shared.snapshot_bytes.store(file.len()?, Ordering::Relaxed);
            shared.load_state(&current, file, "snapshot")?;
        }
        shared.load_checkpoint()?;
        let bodies_applied = shared.get_meta::<u64>(META_BODIES_APPLIED)?.map_or(0, |index| index + 1);
        shared.bodies_applied.store(bodies_applied, Ordering::Relaxed);
        if bodies_applied > 0 {
            tracing::info!(
                index = bodies_applied - 1,
                "message records complete up to this index: replaying it rebuilds metadata only"
            );
        }
        shared.remove_stale_files(true)?;
        Ok(StateMachineStore { shared: Arc::new(shared) })
    }

    /// Fixes how many bytes of log are applied between checkpoints (tests
    /// use a small value). By default it is [`CHECKPOINT_EVERY_BYTES`] or 8
    /// times the encoded state, whichever is larger.
    pub fn set_checkpoint_every(&self, bytes: u64) {
        self.shared.checkpoint_adaptive.store(false, Ordering::Relaxed);
        self.shared.checkpoint_floor.store(bytes, Ordering::Relaxed);
        self.shared.checkpoint_every.store(bytes, Ordering::Relaxed);
    }

    /// Stops using the replay watermark ([`Shared::bodies_applied`]): a
    /// replay after a restart rewrites every body. For the test-only broken
    /// mode (`Config::unsafe_ack_before_fsync`) only: there the Raft log
    /// loses entries the state machine has already applied (and written to
    /// sled, which a killed process does not lose), and a new leader writes
    /// other entries at those indexes; a watermark above them would make
    /// the replay skip their bodies and leave delivered messages without a
    /// record. A correct log never loses an applied entry, so the watermark
    /// can never be above the durable log there.
    pub fn disable_replay_watermark(&self) {
        self.shared.replay_watermark.store(false, Ordering::Relaxed);
        self.shared.bodies_applied.store(0, Ordering::Relaxed);
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

    pub fn notifier(&self) -> &Notifier {
        &self.shared.notifier
    }

    /// Size in bytes of the current snapshot file (the last one built,
    /// installed or loaded at start), 0 when there is none.
    pub fn snapshot_bytes(&self) -> u64 {
        self.shared.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Runs `f` on the applied state (a read lock; keep `f` short).
    pub fn read<R>(&self, f: impl FnOnce(&Applied) -> R) -> R {
        f(&self.shared.applied.read().expect("applied lock"))
    }

    /// The stored record of a message, if it still exists.
    pub fn load_message(&self, queue_id: QueueId, seq: Seq) -> io::Result<Option<MessageRecord>> {
        let key = message_keys::message(self.shared.group, queue_id, seq);
        match self.shared.messages.get(key).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
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

    /// Removes the group's message records with `queue_id` and seq below
    /// `before`.
    fn delete_below(&self, queue_id: QueueId, before: Seq) -> io::Result<()> {
        let from = message_keys::message(self.group, queue_id, Seq(0));
        let to = message_keys::message(self.group, queue_id, before);
        let mut batch = sled::Batch::default();
        for key in self.messages.range(from..to).keys() {
            batch.remove(key.map_err(io::Error::other)?);
        }
        self.messages.apply_batch(batch).map_err(io::Error::other)
    }

    fn carry_out(&self, op: DeleteOp) -> io::Result<()> {
        match op {
            DeleteOp::One(key) => {
                self.messages.remove(key).map_err(io::Error::other)?;
            }
            DeleteOp::Below { queue_id, before } => self.delete_below(queue_id, before)?,
        }
        Ok(())
    }

    /// Ends a snapshot copy: carries out the deletions held back meanwhile.
    fn end_building(&self) {
        let ops = {
            let mut deferred = self.deferred.lock().expect("deferred lock");
            deferred.building -= 1;
            if deferred.building > 0 {
                return;
            }
            std::mem::take(&mut deferred.ops)
        };
        for op in ops {
            if let Err(e) = self.carry_out(op) {
                // A record left behind is unreachable garbage, not a wrong
                // answer: the state no longer names it.
                tracing::error!(error = %e, "deferred message deletion failed");
            }
        }
    }

    /// Makes the state in `file` (a snapshot or a checkpoint, described by
    /// `current`) the applied state.
    fn load_state(&self, current: &CurrentSnapshot, file: SnapshotFile, kind: &str) -> io::Result<()> {
        let state = snapshot_file::Reader::open(file.reader())?.state()?;
        tracing::info!(file = %current.file_name, messages = state.message_count(), "loaded queue state from {kind}");
        *self.applied.write().expect("applied lock") = Applied {
            last_applied: current.meta.last_log_id,
            last_membership: current.meta.last_membership.clone(),
            state,
        };
        Ok(())
    }

    /// Loads the latest checkpoint if it is newer than the snapshot loaded
    /// before it: openraft then replays only the log after it.
    fn load_checkpoint(&self) -> io::Result<()> {
        let current = self.get_meta::<CurrentSnapshot>(META_CHECKPOINT)?;
        self.remove_stale_checkpoints(current.as_ref().map(|c| c.file_name.as_str()))?;
        let Some(current) = current else { return Ok(()) };
        let applied = self.applied.read().expect("applied lock").last_applied.map(|id| id.index());
        let checkpoint = current.meta.last_log_id.map(|id| id.index());
        if checkpoint <= applied {
            return Ok(());
        }
        self.load_state(&current, SnapshotFile::open(&self.dir.join(&current.file_name))?, "checkpoint")?;
        self.loaded_checkpoint.store(checkpoint.map_or(0, |i| i + 1), Ordering::Relaxed);
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

    /// Writes a checkpoint of the state at `meta.last_log_id`. The message
    /// records written by entries up to that index are flushed first, so
    /// that a restart from the checkpoint finds every body it names.
    fn write_checkpoint(&self, meta: &SnapshotMeta, state_bytes: &[u8]) -> io::Result<()> {
        self.flush()?;
        let tmp = self.dir.join(self.new_file_name("tmp"));
        snapshot_file::Writer::create(&tmp, meta, state_bytes)?.finish()?;
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index());
        let file_name = format!("ckpt-{index:020}-{}", self.new_file_name("c"));
        std::fs::rename(&tmp, self.dir.join(&file_name))?;
        sync_dir(&self.dir)?;
        self.put_meta(META_CHECKPOINT, &CurrentSnapshot { file_name: file_name.clone(), meta: meta.clone() })?;
        self.flush()?;
        self.remove_stale_checkpoints(Some(&file_name))?;
        self.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        self.last_checkpoint.store(index + 1, Ordering::Relaxed);
        tracing::debug!(last_log_id = ?meta.last_log_id, state_bytes = state_bytes.len(), "wrote checkpoint");
        Ok(())
    }

    /// Starts a checkpoint in the background when enough log has been
    /// applied since the last one. Called by the state machine task after an
    /// apply, so the state captured is exactly the state at `last_applied`.
    ///
    /// A checkpoint is the queue state without bodies (those are in sled):
    /// cheap next to a snapshot, which copies every body. On restart the
    /// node loads the newest of snapshot and checkpoint and replays only the
    /// log after it. The threshold grows with the state (8 x its encoded
    /// size), so a large backlog is not re-encoded too often.
    fn maybe_checkpoint(self: &Arc<Shared>) -> io::Result<()> {
        if self.since_checkpoint.load(Ordering::Relaxed) < self.checkpoint_every.load(Ordering::Relaxed) {
            return Ok(());
        }
        {
            // Deletions held back for a snapshot copy are not in sled yet: a
            // checkpoint now would leave their records behind for good.
            let deferred = self.deferred.lock().expect("deferred lock");
            if deferred.building > 0 || !deferred.ops.is_empty() {
                return Ok(());
            }
        }
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let captured = {
            let applied = self.applied.read().expect("applied lock");
            let meta =
                SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.last_membership.clone() };
            encode(&applied.state).map(|bytes| (meta, bytes))
        };
        let (meta, state_bytes) = match captured {
            Ok(captured) => captured,
            Err(e) => {
                self.checkpointing.store(false, Ordering::Release);
                return Err(e);
            }
        };
        self.since_checkpoint.store(0, Ordering::Relaxed);
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.write_checkpoint(&meta, &state_bytes) {
                tracing::error!(error = %e, "writing a checkpoint failed");
            }
            if shared.checkpoint_adaptive.load(Ordering::Relaxed) {
                let every = shared.checkpoint_floor.load(Ordering::Relaxed).max(8 * state_bytes.len() as u64);
                shared.checkpoint_every.store(every, Ordering::Relaxed);
            }
            shared.checkpointing.store(false, Ordering::Release);
        });
        Ok(())
    }

    /// Replaces every message record of the group with those of `snapshot`
    /// (a file in our directory), then makes it the current snapshot.
    /// Idempotent, so a crash at any point is finished by running it again.
    /// Returns the snapshot's state.
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
        let state = reader.state()?;
        let meta = reader.meta.clone();

        let prefix = message_keys::group_prefix(self.group);
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for key in self.messages.scan_prefix(prefix).keys() {
            batch.remove(key.map_err(io::Error::other)?);
            pending += 1;
            if pending == 10_000 {
                self.messages.apply_batch(std::mem::take(&mut batch)).map_err(io::Error::other)?;
                pending = 0;
            }
        }
        self.messages.apply_batch(std::mem::take(&mut batch)).map_err(io::Error::other)?;
        pending = 0;
        while let Some((queue_id, seq, record)) = reader.next_record()? {
            batch.insert(&message_keys::message(self.group, queue_id, seq), record);
            pending += 1;
            if pending == 10_000 {
                self.messages.apply_batch(std::mem::take(&mut batch)).map_err(io::Error::other)?;
                pending = 0;
            }
        }
        self.messages.apply_batch(batch).map_err(io::Error::other)?;

        self.put_meta(META_CURRENT, &CurrentSnapshot { file_name, meta: meta.clone() })?;
        // The records are exactly those of the snapshot now.
        let index = meta.last_log_id.map(|id| id.index());
        match index {
            Some(index) => self.put_meta(META_BODIES_APPLIED, &index)?,
            None => self.remove_meta(META_BODIES_APPLIED)?,
        }
        self.bodies_applied.store(index.map_or(0, |i| i + 1), Ordering::Relaxed);
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
        let mut effects = Vec::new();
        let mut replies = Vec::new();
        let mut batch = sled::Batch::default();
        let mut woken = BTreeSet::new();
        // Records written by this batch, for moves that read them back
        // before the batch reaches sled.
        let mut written: HashMap<[u8; 24], MessageRecord> = HashMap::new();
        let bodies_applied = shared.bodies_applied.load(Ordering::Relaxed);
        let mut last_index = None;
        let mut applied_bytes = 0u64;
        while let Some((entry, responder)) = entries.try_next().await? {
            applied_bytes += CHECKPOINT_ENTRY_BYTES;
            // Replayed after a restart, and its records are already written:
            // rebuild the metadata only.
            let replay = entry.log_id.index() < bodies_applied;
            last_index = Some(entry.log_id.index());
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
            if replay {
                effects.retain(|e| matches!(e, Effect::MessagesAvailable { .. }));
            }
            for effect in effects.drain(..) {
                match effect {
                    Effect::PutMessage { queue_id, seq, record } => {
                        applied_bytes += record.body.len() as u64;
                        let key = message_keys::message(shared.group, queue_id, seq);
                        batch.insert(&key, encode(&record)?);
                        written.insert(key, record);
                    }
                    Effect::DeleteMessage { queue_id, seq } => {
                        let key = message_keys::message(shared.group, queue_id, seq);
                        let mut deferred = shared.deferred.lock().expect("deferred lock");
                        if deferred.building > 0 {
                            deferred.ops.push(DeleteOp::One(key));
                        } else {
                            batch.remove(&key);
                        }
                    }
                    Effect::DeleteMessages { queue_id, before } => {
                        // A range deletion must see the records this batch
                        // is about to write, so write them first.
                        shared.messages.apply_batch(std::mem::take(&mut batch)).map_err(io::Error::other)?;
                        let mut deferred = shared.deferred.lock().expect("deferred lock");
                        if deferred.building > 0 {
                            deferred.ops.push(DeleteOp::Below { queue_id, before });
                        } else {
                            drop(deferred);
                            shared.delete_below(queue_id, before)?;
                        }
                    }
                    Effect::MoveMessage { from, to, dead_letter } => {
                        // The record may have been written by this very
                        // batch (not yet in sled): look there first.
                        let from_key = message_keys::message(shared.group, from.0, from.1);
                        let record = match written.remove(&from_key) {
                            Some(record) => Some(record),
                            None => match shared.messages.get(from_key).map_err(io::Error::other)? {
                                Some(bytes) => Some(decode::<MessageRecord>(&bytes)?),
                                None => None,
                            },
                        };
                        match record {
                            Some(mut record) => {
                                // The message keeps the id it was delivered
                                // under, even when the server assigned it.
                                record.id.get_or_insert_with(|| message_id(from.0, from.1, None));
                                record.dead_letter = dead_letter;
                                let to_key = message_keys::message(shared.group, to.0, to.1);
                                batch.insert(&to_key, encode(&record)?);
                                written.insert(to_key, record);
                            }
                            None => tracing::warn!(
                                queue_id = from.0.0,
                                seq = from.1.0,
                                "moved message has no stored record (deleted by a later entry before a restart)"
                            ),
                        }
                        let mut deferred = shared.deferred.lock().expect("deferred lock");
                        if deferred.building > 0 {
                            deferred.ops.push(DeleteOp::One(from_key));
                        } else {
                            batch.remove(&from_key);
                        }
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
        shared.messages.apply_batch(batch).map_err(io::Error::other)?;
        // Record how far the records are complete, unless deletions wait for
        // a snapshot copy (then a replay must redo them).
        if let Some(index) = last_index
            && index >= bodies_applied
            && shared.replay_watermark.load(Ordering::Relaxed)
        {
            let deferred = shared.deferred.lock().expect("deferred lock");
            if deferred.building == 0 && deferred.ops.is_empty() {
                shared.put_meta(META_BODIES_APPLIED, &index)?;
                shared.bodies_applied.store(index + 1, Ordering::Relaxed);
            }
        }
        // Answer only once the records are written, so that a Receive's
        // caller can read the bodies it was given.
        for (responder, response) in replies {
            responder.send(response);
        }
        for queue in woken {
            shared.notifier.wake(&queue);
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
    /// Captures the state to snapshot, in the state machine's task (so it is
    /// exactly the state at `last_applied`), and starts deferring deletions.
    fn start_snapshot(&self) -> io::Result<SnapshotBuilder> {
        let applied = self.shared.applied.read().expect("applied lock");
        let state_bytes = encode(&applied.state)?;
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.last_membership.clone() };
        self.shared.deferred.lock().expect("deferred lock").building += 1;
        Ok(SnapshotBuilder { shared: self.shared.clone(), meta, state_bytes: Some(state_bytes) })
    }

    /// The directory receiving snapshots from the leader writes into.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        self.shared.dir.join(self.shared.new_file_name("incoming"))
    }
}

/// Copies a captured state and its message records into a snapshot file.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    meta: SnapshotMeta,
    state_bytes: Option<Vec<u8>>,
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        self.shared.end_building();
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let _lock = self.shared.snapshot_lock.lock().await;
        let shared = self.shared.clone();
        let meta = self.meta.clone();
        let state_bytes = self.state_bytes.take().ok_or_else(|| io::Error::other("snapshot already built"))?;
        let path = tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
            let state: State = decode(&state_bytes)?;
            let tmp = shared.dir.join(shared.new_file_name("tmp"));
            let mut writer = snapshot_file::Writer::create(&tmp, &meta, &state_bytes)?;
            drop(state_bytes);
            let mut missing = 0u64;
            for (queue_id, seq) in state.message_keys() {
                match shared
                    .messages
                    .get(message_keys::message(shared.group, queue_id, seq))
                    .map_err(io::Error::other)?
                {
                    Some(record) => writer.record(queue_id, seq, &record)?,
                    // Only after a restart that replays entries whose
                    // deletions had already reached disk: a later entry,
                    // already committed, deletes this message again.
                    None => missing += 1,
                }
            }
            if missing > 0 {
                tracing::warn!(missing, "message records absent while building a snapshot (deleted by later entries)");
            }
            writer.finish()?;
            // Every record written by entries up to this snapshot must be
            // durable before openraft may purge those entries.
            shared.flush()?;
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
