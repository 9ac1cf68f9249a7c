//! Message records (id, body, attributes) in append-only segment files in
//! `data-dir/bodies/`, with the index (queue, seq) -> (segment, offset) in
//! RAM. Replaces sled's `messages` tree, which cost a fifth of the leader's
//! CPU and never gave back the disk a drained queue had used.
//!
//! A record is `[u32 LE length][u32 LE CRC-32][u64 BE queue id][u64 BE seq]`
//! followed by the encoded `MessageRecord`; the CRC covers key and data.
//! Records are appended to the head segment as entries are applied, with no
//! flush of their own: the Raft log is the durable copy. What makes them
//! durable is a checkpoint: it syncs every segment, then writes the index
//! next to the queue state it belongs to (`sm_store.rs`). On restart the
//! index comes from the newest checkpoint and the log after it is applied
//! again, which appends those records anew; anything a crashed process had
//! written past the checkpoint is garbage nobody points to.
//!
//! Disk use follows the live messages: each segment counts its live bytes;
//! a segment with none left is retired, and a segment mostly garbage is
//! compacted (its live records are copied to the head) and retired. A
//! retired file is deleted once a checkpoint taken after its retirement is
//! durable, because until then the index on disk may still point into it.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use quorumq_raft_state_machine::MessageRecord;
use quorumq_raft_state_machine::QueueId;
use quorumq_raft_state_machine::Seq;

mod seq_index;
use seq_index::SeqIndex;

/// A segment takes no new record once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// An empty head segment at least this large is closed and retired, so a
/// drained queue gives its disk back without waiting for the head to fill.
const ROLL_EMPTY_HEAD_BYTES: u64 = 1 << 20;
/// A closed segment is compacted when at least this many of its bytes are
/// garbage and they are more than half of it.
const COMPACT_MIN_GARBAGE: u64 = 8 << 20;
const HEADER: usize = 24;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Where a record is: segment number, offset of its header, data length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

impl Loc {
    pub const ENCODED: usize = 12;

    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.seg.to_le_bytes());
        out[4..8].copy_from_slice(&self.off.to_le_bytes());
        out[8..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Loc> {
        let bytes: &[u8; 12] = bytes.try_into().map_err(|_| invalid("body location of the wrong size"))?;
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Ok(Loc { seg: u32_at(0), off: u32_at(4), len: u32_at(8) })
    }

    fn bytes(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }
}

struct Segment {
    file: Arc<File>,
    /// Bytes written to the file.
    size: u64,
    /// Bytes of records the index points to.
    live: u64,
}

struct Retired {
    seg: u32,
    bytes: u64,
    /// The last capture that may refer to this segment.
    after_generation: u64,
}

struct Inner {
    segments: BTreeMap<u32, Segment>,
    head: u32,
    /// Records appended to the head but not yet written to its file.
    pending: Vec<u8>,
    /// queue id -> seq -> location.
    index: FastMap<u64, SeqIndex>,
    entries: u64,
    retired: Vec<Retired>,
    generation: u64,
}

/// The store. Cheap to share behind an `Arc`; one writer (the state
/// machine's apply task) and any number of readers.
pub struct BodyStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

/// The index as of one moment, with open handles to every segment it
/// refers to: what a checkpoint persists and a snapshot copies records
/// through, while the store goes on changing.
pub struct Capture {
    pub generation: u64,
    /// Each queue's index, by queue id.
    index: Vec<(QueueId, SeqIndex)>,
    len: usize,
    files: HashMap<u32, Arc<File>>,
    dir: PathBuf,
}

impl Capture {
    /// Records in the capture.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with every entry, ordered by queue id, then seq; stops at
    /// the first error.
    pub fn try_for_each(&self, mut f: impl FnMut(QueueId, Seq, Loc) -> io::Result<()>) -> io::Result<()> {
        let mut result = Ok(());
        for (queue_id, seqs) in &self.index {
            seqs.for_each(|seq, loc| {
                if result.is_ok() {
                    result = f(*queue_id, Seq(seq), loc);
                }
            });
            if result.is_err() {
                break;
            }
        }
        result
    }

    /// Every entry, in the order of [`Capture::try_for_each`] (tests).
    #[cfg(test)]
    pub fn entries(&self) -> Vec<(QueueId, Seq, Loc)> {
        let mut entries = Vec::with_capacity(self.len);
        for (queue_id, seqs) in &self.index {
            seqs.for_each(|seq, loc| entries.push((*queue_id, Seq(seq), loc)));
        }
        entries
    }

    /// Makes every record the capture refers to durable.
    pub fn sync(&self) -> io::Result<()> {
        for file in self.files.values() {
            file.sync_data()?;
        }
        File::open(&self.dir)?.sync_all()
    }

    /// The encoded record at `loc`.
    pub fn read(&self, queue_id: QueueId, seq: Seq, loc: Loc) -> io::Result<Vec<u8>> {
        let file = self.files.get(&loc.seg).ok_or_else(|| invalid(format!("body segment {} is gone", loc.seg)))?;
        read_record(file, queue_id, seq, loc)
    }
}

fn segment_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:010}.seg"))
}

fn read_record(file: &File, queue_id: QueueId, seq: Seq, loc: Loc) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER + loc.len as usize];
    file.read_exact_at(&mut buf, u64::from(loc.off))?;
    check_record(&buf, queue_id, seq, loc)?;
    buf.drain(..HEADER);
    Ok(buf)
}

fn check_record(buf: &[u8], queue_id: QueueId, seq: Seq, loc: Loc) -> io::Result<()> {
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let queue = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    let s = u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes"));
    if len != loc.len || queue != queue_id.0 || s != seq.0 || crc32fast::hash(&buf[8..]) != crc {
        return Err(invalid(format!(
            "body record of queue {} seq {} at segment {} offset {} is corrupt",
            queue_id.0, seq.0, loc.seg, loc.off
        )));
    }
    Ok(())
}

impl BodyStore {
    /// Opens the store in `dir` with an empty index; [`BodyStore::load_index`]
    /// then says what is live. New records go to a new head segment.
    pub fn open(dir: &Path) -> io::Result<BodyStore> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for dirent in std::fs::read_dir(dir)? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            let Some(seg) = name.strip_suffix(".seg").and_then(|n| n.parse::<u32>().ok()) else { continue };
            let file = File::open(dirent.path())?;
            let size = file.metadata()?.len();
            segments.insert(seg, Segment { file: Arc::new(file), size, live: 0 });
        }
        let head = segments.keys().next_back().map_or(1, |s| s + 1);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(dir, head))?;
        segments.insert(head, Segment { file: Arc::new(file), size: 0, live: 0 });
        let inner = Inner {
            segments,
            head,
            pending: Vec::new(),
            index: FastMap::default(),
            entries: 0,
            retired: Vec::new(),
            generation: 0,
        };
        Ok(BodyStore { dir: dir.to_path_buf(), inner: Mutex::new(inner) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("body store lock")
    }

    /// Sets the index to `entries` (read from a checkpoint), then deletes
    /// every segment none of them points to.
    pub fn load_index(&self, entries: impl IntoIterator<Item = io::Result<(QueueId, Seq, Loc)>>) -> io::Result<()> {
        let mut inner = self.lock();
        inner.index.clear();
        inner.entries = 0;
        for segment in inner.segments.values_mut() {
            segment.live = 0;
        }
        for entry in entries {
            let (queue_id, seq, loc) = entry?;
            let segment = inner
                .segments
                .get_mut(&loc.seg)
                .ok_or_else(|| invalid(format!("the checkpoint names body segment {}, which is missing", loc.seg)))?;
            if u64::from(loc.off) + loc.bytes() > segment.size {
                return Err(invalid(format!("the checkpoint names bytes past the end of body segment {}", loc.seg)));
            }
            segment.live += loc.bytes();
            if inner.index.entry(queue_id.0).or_default().insert(seq.0, loc).is_none() {
                inner.entries += 1;
            }
        }
        let head = inner.head;
        let dead: Vec<u32> =
            inner.segments.iter().filter(|(s, seg)| **s != head && seg.live == 0).map(|(s, _)| *s).collect();
        for seg in dead {
            inner.segments.remove(&seg);
            std::fs::remove_file(segment_path(&self.dir, seg))?;
        }
        Ok(())
    }

    /// Empties the index (before a snapshot's records replace everything).
    /// The old segments are retired, not deleted: the checkpoint on disk
    /// still points into them until a new one is written.
    pub fn clear(&self) -> io::Result<()> {
        let mut inner = self.lock();
        inner.index.clear();
        inner.entries = 0;
        let segs: Vec<u32> = inner.segments.keys().copied().collect();
        inner.roll(&self.dir)?;
        for seg in segs {
            if let Some(segment) = inner.segments.get_mut(&seg) {
                segment.live = 0;
            }
            inner.retire(seg);
        }
        Ok(())
    }

    /// Appends a record for `(queue_id, seq)`, replacing any earlier one.
    /// Readable at once; written to the file by [`BodyStore::write_pending`].
    pub fn put(&self, queue_id: QueueId, seq: Seq, record: &MessageRecord) -> io::Result<()> {
        let mut inner = self.lock();
        let start = inner.pending.len();
        inner.pending.extend_from_slice(&[0u8; HEADER]);
        let pending = std::mem::take(&mut inner.pending);
        let encoded = postcard::to_extend(record, pending);
        inner.pending = match encoded {
            Ok(pending) => pending,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        let len = inner.pending.len() - start - HEADER;
        let len = u32::try_from(len).map_err(|_| invalid("message record over 4 GiB"))?;
        let pending = &mut inner.pending;
        pending[start + 8..start + 16].copy_from_slice(&queue_id.0.to_be_bytes());
        pending[start + 16..start + 24].copy_from_slice(&seq.0.to_be_bytes());
        let crc = crc32fast::hash(&pending[start + 8..]);
        pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
        pending[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        inner.place(&self.dir, queue_id, seq, start, len)
    }

    /// Like [`BodyStore::put`] with an already encoded record (a snapshot's).
    pub fn put_encoded(&self, queue_id: QueueId, seq: Seq, record: &[u8]) -> io::Result<()> {
        let len = u32::try_from(record.len()).map_err(|_| invalid("message record over 4 GiB"))?;
        let mut inner = self.lock();
        let start = inner.pending.len();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&queue_id.0.to_be_bytes());
        key[8..].copy_from_slice(&seq.0.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&key);
        crc.update(record);
        inner.pending.extend_from_slice(&len.to_le_bytes());
        inner.pending.extend_from_slice(&crc.finalize().to_le_bytes());
        inner.pending.extend_from_slice(&key);
        inner.pending.extend_from_slice(record);
        inner.place(&self.dir, queue_id, seq, start, len)
    }

    /// The encoded record of `(queue_id, seq)`, if the index has one.
    pub fn get_encoded(&self, queue_id: QueueId, seq: Seq) -> io::Result<Option<Vec<u8>>> {
        let (file, loc) = {
            let inner = self.lock();
            let Some(loc) = inner.index.get(&queue_id.0).and_then(|q| q.get(seq.0)) else {
                return Ok(None);
            };
            let head = &inner.segments[&inner.head];
            if loc.seg == inner.head && u64::from(loc.off) >= head.size {
                let start = (u64::from(loc.off) - head.size) as usize;
                let buf = &inner.pending[start..start + HEADER + loc.len as usize];
                check_record(buf, queue_id, seq, loc)?;
                return Ok(Some(buf[HEADER..].to_vec()));
            }
            let file = inner.segments.get(&loc.seg).map(|s| s.file.clone());
            (file.ok_or_else(|| invalid(format!("body segment {} is not open", loc.seg)))?, loc)
        };
        read_record(&file, queue_id, seq, loc).map(Some)
    }

    /// The record of `(queue_id, seq)`, decoded.
    pub fn get(&self, queue_id: QueueId, seq: Seq) -> io::Result<Option<MessageRecord>> {
        match self.get_encoded(queue_id, seq)? {
            None => Ok(None),
            Some(bytes) => crate::codec::decode(&bytes).map(Some),
        }
    }

    pub fn delete(&self, queue_id: QueueId, seq: Seq) -> io::Result<()> {
        let mut inner = self.lock();
        let removed = inner.index.get_mut(&queue_id.0).and_then(|q| q.remove(seq.0));
        if inner.index.get(&queue_id.0).is_some_and(SeqIndex::is_empty) {
            inner.index.remove(&queue_id.0);
        }
        if let Some(loc) = removed {
            inner.entries -= 1;
            inner.release(&self.dir, loc)?;
        }
        Ok(())
    }

    /// Deletes every record of `queue_id` with a seq below `before`.
    pub fn delete_below(&self, queue_id: QueueId, before: Seq) -> io::Result<()> {
        let mut inner = self.lock();
        let mut removed = Vec::new();
        if let Some(queue) = inner.index.get_mut(&queue_id.0) {
            queue.remove_below(before.0, &mut |loc| removed.push(loc));
            if queue.is_empty() {
                inner.index.remove(&queue_id.0);
            }
        }
        inner.entries -= removed.len() as u64;
        for loc in removed {
            inner.release(&self.dir, loc)?;
        }
        Ok(())
    }

    /// Writes the appended records to the head's file (one write).
    pub fn write_pending(&self) -> io::Result<()> {
        self.lock().write_pending()
    }

    /// Copies the live records of the closed segment with the most garbage
    /// (if it is worth it: see [`COMPACT_MIN_GARBAGE`]) to the head and
    /// retires it. Returns the bytes copied.
    pub fn compact_one(&self) -> io::Result<u64> {
        let mut inner = self.lock();
        let head = inner.head;
        let victim = inner
            .segments
            .iter()
            .filter(|(s, seg)| **s != head && seg.size - seg.live >= COMPACT_MIN_GARBAGE && seg.live * 2 < seg.size)
            .max_by_key(|(_, seg)| seg.size - seg.live)
            .map(|(s, seg)| (*s, seg.file.clone(), seg.size));
        let Some((seg, file, size)) = victim else { return Ok(0) };
        let mut data = vec![0u8; size as usize];
        file.read_exact_at(&mut data, 0)?;
        let mut pos = 0usize;
        let mut copied = 0u64;
        while pos + HEADER <= data.len() {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes"));
            let end = pos + HEADER + len as usize;
            if end > data.len() {
                break;
            }
            let queue = u64::from_be_bytes(data[pos + 8..pos + 16].try_into().expect("8 bytes"));
            let seq = u64::from_be_bytes(data[pos + 16..pos + 24].try_into().expect("8 bytes"));
            let here = Loc { seg, off: pos as u32, len };
            if inner.index.get(&queue).and_then(|q| q.get(seq)) == Some(here) {
                check_record(&data[pos..end], QueueId(queue), Seq(seq), here)?;
                let start = inner.pending.len();
                inner.pending.extend_from_slice(&data[pos..end]);
                inner.place(&self.dir, QueueId(queue), Seq(seq), start, len)?;
                copied += here.bytes();
            }
            pos = end;
        }
        if let Some(segment) = inner.segments.get(&seg)
            && segment.live > 0
        {
            // Records the scan could not reach (a torn tail cannot hold
            // live ones): leave the segment as it is.
            tracing::warn!(seg, live = segment.live, "body segment still has live records after compaction");
            return Ok(copied);
        }
        inner.retire(seg);
        Ok(copied)
    }

    /// The index now, for a checkpoint or a snapshot. Call after
    /// [`BodyStore::write_pending`], from the writer.
    pub fn capture(&self) -> io::Result<Capture> {
        let mut inner = self.lock();
        inner.write_pending()?;
        inner.generation += 1;
        // A copy of the index (12 bytes a message in dense chunks), not a
        // list of entries: this runs on the apply path, under the lock.
        let mut index: Vec<(QueueId, SeqIndex)> =
            inner.index.iter().map(|(queue, seqs)| (QueueId(*queue), seqs.clone())).collect();
        index.sort_unstable_by_key(|(queue, _)| *queue);
        let files = inner.segments.iter().map(|(s, seg)| (*s, seg.file.clone())).collect();
        Ok(Capture { generation: inner.generation, index, len: inner.entries as usize, files, dir: self.dir.clone() })
    }

    /// A checkpoint of capture `generation` is durable: segments retired
    /// before that capture are deleted.
    pub fn checkpoint_durable(&self, generation: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let (gone, kept): (Vec<Retired>, Vec<Retired>) =
            std::mem::take(&mut inner.retired).into_iter().partition(|r| r.after_generation < generation);
        inner.retired = kept;
        drop(inner);
        for retired in gone {
            match std::fs::remove_file(segment_path(&self.dir, retired.seg)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Bytes of retired segments waiting for a checkpoint to be deleted.
    pub fn reclaimable_bytes(&self) -> u64 {
        self.lock().retired.iter().map(|r| r.bytes).sum()
    }

    /// Records in the index.
    pub fn len(&self) -> u64 {
        self.lock().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in segment files, retired ones included.
    pub fn disk_bytes(&self) -> u64 {
        let inner = self.lock();
        inner.segments.values().map(|s| s.size).sum::<u64>()
            + inner.pending.len() as u64
            + inner.retired.iter().map(|r| r.bytes).sum::<u64>()
    }
}

impl Inner {
    /// Indexes the record just appended to `pending` at `start`.
    fn place(&mut self, dir: &Path, queue_id: QueueId, seq: Seq, start: usize, len: u32) -> io::Result<()> {
        let head_size = self.segments[&self.head].size;
        let mut off = head_size + start as u64;
        if off > 0 && off + HEADER as u64 + u64::from(len) > SEGMENT_BYTES {
            // Full: the record goes first into a new head.
            let record = self.pending.split_off(start);
            self.roll(dir)?;
            self.pending = record;
            off = 0;
        }
        let loc = Loc { seg: self.head, off: off as u32, len };
        self.segments.get_mut(&self.head).expect("head segment").live += loc.bytes();
        let old = self.index.entry(queue_id.0).or_default().insert(seq.0, loc);
        match old {
            Some(old) => self.release(dir, old),
            None => {
                self.entries += 1;
                Ok(())
            }
        }
    }

    /// Accounts for a record no longer pointed to; retires its segment once
    /// nothing in it is live.
    fn release(&mut self, dir: &Path, loc: Loc) -> io::Result<()> {
        let Some(segment) = self.segments.get_mut(&loc.seg) else { return Ok(()) };
        segment.live = segment.live.saturating_sub(loc.bytes());
        if segment.live > 0 {
            return Ok(());
        }
        if loc.seg != self.head {
            self.retire(loc.seg);
        } else if segment.size + self.pending.len() as u64 >= ROLL_EMPTY_HEAD_BYTES {
            let old = self.head;
            self.roll(dir)?;
            if self.segments.get(&old).is_some_and(|s| s.live == 0) {
                self.retire(old);
            }
        }
        Ok(())
    }

    fn retire(&mut self, seg: u32) {
        if seg == self.head {
            return;
        }
        if let Some(segment) = self.segments.remove(&seg) {
            self.retired.push(Retired { seg, bytes: segment.size, after_generation: self.generation });
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let head = self.segments.get_mut(&self.head).expect("head segment");
        head.file.write_all_at(&self.pending, head.size)?;
        head.size += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is pending and starts a new head segment.
    fn roll(&mut self, dir: &Path) -> io::Result<()> {
        self.write_pending()?;
        let next = self.head + 1;
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(dir, next))?;
        self.segments.insert(next, Segment { file: Arc::new(file), size: 0, live: 0 });
        self.head = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(n: usize) -> MessageRecord {
        MessageRecord {
            id: Some(format!("m{n}")),
            sent_at_ms: n as u64,
            body: Bytes::from(vec![n as u8; 1000]),
            attributes: Default::default(),
            group: None,
            priority: 0,
            dead_letter: None,
        }
    }

    fn seg_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().filter(|d| d.as_ref().unwrap().path().extension().is_some()).count()
    }

    #[test]
    fn put_get_delete_and_reopen_from_a_capture() {
        let dir = tempfile::tempdir().unwrap();
        let store = BodyStore::open(dir.path()).unwrap();
        for n in 0..100 {
            store.put(QueueId(1), Seq(n), &record(n as usize)).unwrap();
        }
        // Readable before and after the write.
        assert_eq!(store.get(QueueId(1), Seq(7)).unwrap().unwrap(), record(7));
        store.write_pending().unwrap();
        assert_eq!(store.get(QueueId(1), Seq(8)).unwrap().unwrap(), record(8));
        store.delete(QueueId(1), Seq(8)).unwrap();
        store.delete_below(QueueId(1), Seq(10)).unwrap();
        assert!(store.get(QueueId(1), Seq(8)).unwrap().is_none());
        assert!(store.get(QueueId(1), Seq(3)).unwrap().is_none());
        assert_eq!(store.len(), 90);
        let capture = store.capture().unwrap();
        capture.sync().unwrap();
        assert_eq!(capture.len(), 90);
        assert_eq!(capture.entries().len(), 90);
        assert_eq!(capture.entries()[0].1, Seq(10));
        // Written after the capture: garbage after a reopen.
        store.put(QueueId(1), Seq(500), &record(500)).unwrap();
        store.write_pending().unwrap();
        drop(store);

        let store = BodyStore::open(dir.path()).unwrap();
        store.load_index(capture.entries().into_iter().map(Ok)).unwrap();
        assert_eq!(store.len(), 90);
        assert_eq!(store.get(QueueId(1), Seq(99)).unwrap().unwrap(), record(99));
        assert!(store.get(QueueId(1), Seq(500)).unwrap().is_none());
    }

    #[test]
    fn a_drained_store_gives_its_segments_back_after_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = BodyStore::open(dir.path()).unwrap();
        let n = 3 * (SEGMENT_BYTES as usize / 1000);
        for i in 0..n {
            store.put(QueueId(1), Seq(i as u64), &record(i)).unwrap();
            if i % 1000 == 0 {
                store.write_pending().unwrap();
            }
        }
        store.write_pending().unwrap();
        assert!(seg_files(dir.path()) >= 3);
        for i in 0..n {
            store.delete(QueueId(1), Seq(i as u64)).unwrap();
        }
        assert!(store.reclaimable_bytes() >= 3 * SEGMENT_BYTES - (4 << 20));
        // Still on disk until a checkpoint after the retirement is durable.
        assert!(seg_files(dir.path()) >= 3);
        let capture = store.capture().unwrap();
        capture.sync().unwrap();
        store.checkpoint_durable(capture.generation).unwrap();
        assert_eq!(store.reclaimable_bytes(), 0);
        assert_eq!(seg_files(dir.path()), 1, "only the (empty) head is left");
        assert!(store.disk_bytes() < ROLL_EMPTY_HEAD_BYTES);
    }

    #[test]
    fn compaction_moves_stragglers_and_retires_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let store = BodyStore::open(dir.path()).unwrap();
        let per_segment = SEGMENT_BYTES as usize / 1030;
        let n = per_segment * 2;
        for i in 0..n {
            store.put(QueueId(2), Seq(i as u64), &record(i)).unwrap();
        }
        store.write_pending().unwrap();
        // Keep every 100th message of the first segment.
        for i in 0..per_segment {
            if i % 100 != 0 {
                store.delete(QueueId(2), Seq(i as u64)).unwrap();
            }
        }
        let copied = store.compact_one().unwrap();
        assert!(copied > 0);
        assert_eq!(store.compact_one().unwrap(), 0, "nothing else is worth compacting");
        for i in (0..per_segment).step_by(100) {
            assert_eq!(store.get(QueueId(2), Seq(i as u64)).unwrap().unwrap(), record(i));
        }
        assert!(store.reclaimable_bytes() > 0);
        let capture = store.capture().unwrap();
        capture.sync().unwrap();
        store.checkpoint_durable(capture.generation).unwrap();
        drop(store);
        let store = BodyStore::open(dir.path()).unwrap();
        store.load_index(capture.entries().into_iter().map(Ok)).unwrap();
        for (q, s, loc) in &capture.entries() {
            assert_eq!(store.get(*q, *s).unwrap().unwrap(), record(s.0 as usize), "{loc:?}");
        }
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_wrong_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = BodyStore::open(dir.path()).unwrap();
        store.put(QueueId(1), Seq(1), &record(1)).unwrap();
        store.write_pending().unwrap();
        let capture = store.capture().unwrap();
        drop(store);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let store = BodyStore::open(dir.path()).unwrap();
        store.load_index(capture.entries().into_iter().map(Ok)).unwrap();
        let err = store.get(QueueId(1), Seq(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
