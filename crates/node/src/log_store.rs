//! The Raft log and vote of one group, in append-only segment files.
//!
//! Layout of the log directory (`data-dir/log/`):
//! - `00000000000000000001.seg`, …: segment files, each named by the index
//!   of its first entry. A segment starts with an 8-byte magic, then records:
//!   `[payload length u32 LE][crc32 u32 LE][entry index u64 LE][payload]`,
//!   the payload being the postcard-encoded `Entry` and the CRC covering the
//!   index and the payload. A new segment is started once the current one
//!   reaches `SEGMENT_BYTES_MAX`.
//! - `meta`: the vote, the last purged log id and the group, written
//!   atomically (temporary file, fsync, rename, fsync of the directory).
//! - `committed`: the committed log id, overwritten in place without fsync.
//!
//! In memory the store keeps, for each live entry, where its record is
//! (segment, offset, length), rebuilt on open by scanning the segments and
//! checking every record's CRC. A torn record at the end of the last segment
//! (a crash in the middle of a write that was never fsynced, so never
//! acknowledged) is cut off on open; a bad record anywhere else is an error.
//!
//! Durability rule: openraft hears that an append is persisted (its
//! `IOFlushed` callback) only after an fdatasync of every segment the append
//! wrote to that began after the append's write returned; `save_vote` and
//! `purge` return only after the metadata file is durable.
//!
//! Group commit: `append` writes the entries to the page cache with one
//! `pwrite` and hands the callback to a single flusher thread. The flusher
//! takes every callback that is waiting, runs one `sync_data` (of each
//! segment they wrote to, usually one), then completes them all. While one
//! sync runs, the next batch of callbacks gathers, so under load many appends
//! share one fsync.
//!
//! The active segment is kept a megabyte ahead of its records in zeroes
//! already on disk (`PREALLOCATE_BYTES`), so that most fdatasyncs flush data
//! only, without a journal commit for the file's growth. On open, zeroes
//! after the last record of the last segment are the end of the log, not a
//! torn write; a segment closed by a roll has its zeroes cut off.
//!
//! Disk use follows the live log: `purge` deletes every segment file whose
//! entries are all purged.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::Stream;
use futures::TryStreamExt;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use serde::Deserialize;
use serde::Serialize;
use std::sync::mpsc;

use crate::codec::decode;
use crate::codec::encode;
use crate::codec::encode_into;
use crate::types::*;

/// Counters that show group commit at work: `entries_appended /
/// flushes` is the mean number of entries per fsync. The histograms are
/// exported as Prometheus metrics (`metrics.rs`).
#[derive(Debug)]
pub struct LogStats {
    pub appends: AtomicU64,
    pub entries_appended: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_micros_total: AtomicU64,
    /// Duration of each flush of the flusher (`sync_data` of the segment
    /// files written since the last one), in seconds.
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

/// A segment is closed and a new one started once it holds this many bytes.
/// Purging frees disk a whole segment at a time, so this is also how much
/// purged log a node may keep on disk; a restart reads at most one
/// segment more than the live log.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;

/// The active segment is kept this far ahead of its records in zeroes that
/// are already on disk. An fdatasync after a write that grows a file must
/// also commit the file's new size and blocks through the filesystem's
/// journal; over blocks that are already allocated and written it flushes
/// only the data (`bench/disk.sh` prints both; ARCHITECTURE.md has the
/// figures). `fallocate` is not enough: the first write to its unwritten
/// extents is a metadata change too. The zeroes go out
/// with the append that writes them, so one fdatasync in every
/// `PREALLOCATE_BYTES` of log pays the journal commit; the price is that
/// each byte of log is written twice, once as a zero.
const PREALLOCATE_BYTES: u64 = 1 << 20;

/// Zeroes for [`zero_ahead`].
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// First bytes of every segment file (format version in the last byte).
const SEGMENT_MAGIC: [u8; 8] = *b"QQLOG\0\0\x01";
/// `[payload length u32][crc32 u32][index u64]`.
const RECORD_HEADER_BYTES: u64 = 16;
const SEGMENT_SUFFIX: &str = ".seg";
const META_FILE: &str = "meta";
const META_TMP_FILE: &str = "meta.tmp";
const COMMITTED_FILE: &str = "committed";
/// Version of the `meta` file's layout.
const META_VERSION: u32 = 1;

/// How long the broken mode holds appended entries before writing them.
const UNSYNCED_WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(1000);

/// An append waiting for the flusher.
struct PendingFlush {
    callback: IOFlushed<TypeConfig>,
    entries: u64,
    written_at: std::time::Instant,
    /// The segments the append wrote to.
    files: Vec<Arc<File>>,
}

/// What the `meta` file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    version: u32,
    group: GroupId,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

/// Options of [`LogStore::open_with_options`].
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// The test-only broken mode (`Config::unsafe_ack_before_fsync`).
    pub ack_before_fsync: bool,
    pub segment_bytes_max: u64,
    /// Bytes of records of the latest entries kept in memory.
    pub recent_bytes_max: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options { ack_before_fsync: false, segment_bytes_max: SEGMENT_BYTES_MAX, recent_bytes_max: RECENT_BYTES_MAX }
    }
}

/// One segment file.
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of valid data (the magic and whole records); the next record is
    /// written here.
    len: u64,
    /// Length of the file: `len` plus the zeroes written ahead of the
    /// records (see [`PREALLOCATE_BYTES`]).
    allocated: u64,
}

/// Where an entry's record is in its segment.
#[derive(Clone, Copy, Debug)]
struct Loc {
    /// Offset of the record's header.
    offset: u64,
    /// Length of the payload.
    len: u32,
}

impl Loc {
    fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES + u64::from(self.len)
    }
}

/// The log: segments and the index of live entries.
struct Log {
    dir: PathBuf,
    segment_bytes_max: u64,
    recent_bytes_max: u64,
    /// By the index of their first entry.
    segments: BTreeMap<u64, Segment>,
    /// Index of `locs[0]`.
    first_index: u64,
    /// One per live (not purged) entry, contiguous from `first_index`.
    locs: VecDeque<Loc>,
    /// Log id of the last entry in `locs`.
    last: Option<LogId>,
    /// The broken mode's entries not yet written (see `Shared::ack_before_fsync`).
    unsynced: BTreeMap<u64, Entry>,
    /// Set when a write failed half-way: the files may no longer match the
    /// index, so nothing more is written until a restart re-reads them.
    failed: Option<String>,
    /// The buffer appends encode their records into, kept between appends
    /// (up to [`WRITE_BUF_KEEP_MAX`]) so that an append allocates nothing.
    write_buf: Vec<u8>,
    /// The latest entries as they were appended, with their record sizes:
    /// a suffix of the log (the last is the log's last entry) of at most
    /// [`RECENT_BYTES_MAX`] bytes of records. Replication and the apply read
    /// entries within moments of their append; from here that is a clone
    /// instead of a `pread`, a CRC check and a decode, once per follower
    /// and once more for the apply.
    recent: VecDeque<(Arc<Entry>, u64)>,
    /// Bytes of records in `recent`.
    recent_bytes: u64,
}

/// Bytes of records kept in [`Log::recent`]: two entries of the largest
/// batch (`limits::BATCH_BYTES_MAX`), as many as the leader keeps in
/// flight; at 100k msgs/s of 1 KiB, 70 ms of log. (16 MiB held 2-4 more
/// bytes of RSS per message at a 10M backlog, `bench/memory.sh`.)
const RECENT_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Largest append buffer kept for the next append.
const WRITE_BUF_KEEP_MAX: usize = 16 * 1024 * 1024;

/// The committed id as openraft last saved it, and its file.
struct SavedCommitted {
    id: Option<LogId>,
    file: File,
    /// When the file was last written.
    written_at: Option<std::time::Instant>,
}

/// The `committed` file is rewritten at most this often: openraft saves the
/// committed id on every commit, and a write per entry was a system call
/// per entry on every node.
const COMMITTED_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

struct Shared {
    dir: PathBuf,
    log: Mutex<Log>,
    /// Held while the `meta` file is rewritten, so that writes do not
    /// overtake each other.
    meta: Mutex<Meta>,
    committed: Mutex<SavedCommitted>,
    /// Test-only fault (`Config::unsafe_ack_before_fsync`): appends are
    /// reported persisted at once, but kept in memory (`Log::unsynced`) and
    /// written to the segment only about a second later, as an operating
    /// system's cache would hold writes that were never fsynced. A process
    /// killed meanwhile loses them, which is what a machine losing power
    /// does to unsynced data. (A write to a file reaches the OS at once, so
    /// without the delay a killed process never loses anything and the
    /// broken mode would go unnoticed.)
    ack_before_fsync: bool,
}

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    flusher: mpsc::Sender<PendingFlush>,
    stats: Arc<LogStats>,
}

fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Makes the creation, removal or renaming of files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `[length u32][crc32 u32][payload]`: the framing of `meta` and `committed`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let payload = bytes.get(8..8usize.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends the record of `entry` to `buf`; returns the payload length. The
/// entry is encoded in place, after room for the header.
fn encode_record(entry: &Entry, buf: &mut Vec<u8>) -> io::Result<u32> {
    let start = buf.len();
    let header = RECORD_HEADER_BYTES as usize;
    buf.resize(start + header, 0);
    encode_into(entry, buf)?;
    let payload = &buf[start + header..];
    let len = u32::try_from(payload.len()).map_err(|_| corrupt(format!("log entry of {} bytes", payload.len())))?;
    let index = entry.index();
    let crc = record_crc(index, payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf[start + 8..start + header].copy_from_slice(&index.to_le_bytes());
    Ok(len)
}

/// Checks one record read back (header and payload) and decodes its entry.
fn decode_record(bytes: &[u8], expected_index: u64) -> io::Result<Entry> {
    let header = bytes.get(..RECORD_HEADER_BYTES as usize).ok_or_else(|| corrupt("short log record".into()))?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let payload = &bytes[RECORD_HEADER_BYTES as usize..];
    if payload.len() != len || index != expected_index || record_crc(index, payload) != crc {
        return Err(corrupt(format!(
            "log record of entry {expected_index} is damaged (says index {index}, {len} bytes)"
        )));
    }
    let entry: Entry = decode(payload)?;
    if entry.index() != expected_index {
        return Err(corrupt(format!("log entry stored at index {expected_index} says it is index {}", entry.index())));
    }
    Ok(entry)
}

/// What scanning a segment found.
struct Scanned {
    locs: Vec<Loc>,
    /// Where the valid records end.
    valid_len: u64,
    /// Why the scan stopped before the end of the file (a torn or damaged
    /// record), if it did.
    bad_tail: Option<String>,
}

/// Reads the records of a segment whose first entry is `first`. A record
/// whose CRC is right but whose index is out of sequence is an error, not a
/// torn write.
fn scan_segment(bytes: &[u8], first: u64) -> io::Result<Scanned> {
    let mut locs = Vec::new();
    let mut pos = SEGMENT_MAGIC.len();
    let mut bad_tail = None;
    let header = RECORD_HEADER_BYTES as usize;
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + header) else {
            bad_tail = Some(format!("a record header cut short at offset {pos}"));
            break;
        };
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if len == 0 {
            // No record is empty: the zeroes written ahead of the records.
            bad_tail = Some(format!("no record at offset {pos}"));
            break;
        }
        let Some(payload) = bytes.get(pos + header..pos + header + len as usize) else {
            bad_tail = Some(format!("a record cut short at offset {pos}"));
            break;
        };
        if record_crc(index, payload) != crc {
            bad_tail = Some(format!("a record with a wrong CRC at offset {pos}"));
            break;
        }
        let expected = first + locs.len() as u64;
        if index != expected {
            return Err(corrupt(format!("record at offset {pos} is entry {index}, expected entry {expected}")));
        }
        locs.push(Loc { offset: pos as u64, len });
        pos += header + len as usize;
    }
    Ok(Scanned { valid_len: pos as u64, locs, bad_tail })
}

/// Indexes the records of a closed segment (`len` bytes long) whose first
/// entry is `first`, reading only their headers. A closed segment was
/// synced before the next one was created, so it has no torn tail; its
/// payloads are not read here (at 10 GiB of log that read was most of a
/// restart), and each record's CRC is checked whenever it is read.
fn walk_segment(file: &File, len: u64, first: u64) -> io::Result<Scanned> {
    let mut magic = [0u8; SEGMENT_MAGIC.len()];
    if len < magic.len() as u64 || file.read_exact_at(&mut magic, 0).is_err() || magic != SEGMENT_MAGIC {
        return Err(corrupt("not a log segment".into()));
    }
    let mut locs = Vec::new();
    let mut pos = SEGMENT_MAGIC.len() as u64;
    let mut head = [0u8; RECORD_HEADER_BYTES as usize];
    while pos < len {
        if pos + RECORD_HEADER_BYTES > len {
            return Err(corrupt(format!("a record header cut short at offset {pos}")));
        }
        file.read_exact_at(&mut head, pos)?;
        let record_len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        if record_len == 0 {
            // Zeroes written ahead of the records, left by a segment that
            // was last when its node stopped. (A segment that is closed by
            // a roll has them cut off; one cut short here by damage is
            // caught by the next segment's first index.)
            break;
        }
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let expected = first + locs.len() as u64;
        if index != expected {
            return Err(corrupt(format!("record at offset {pos} is entry {index}, expected entry {expected}")));
        }
        let end = pos + RECORD_HEADER_BYTES + u64::from(record_len);
        if end > len {
            return Err(corrupt(format!("a record cut short at offset {pos}")));
        }
        locs.push(Loc { offset: pos, len: record_len });
        pos = end;
    }
    Ok(Scanned { valid_len: pos, locs, bad_tail: None })
}

fn create_segment(dir: &Path, first: u64) -> io::Result<Segment> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    file.write_all_at(&SEGMENT_MAGIC, 0)?;
    // The new name must survive a crash before any entry in it is reported
    // durable; its contents are synced by the flusher like any append.
    sync_dir(dir)?;
    let len = SEGMENT_MAGIC.len() as u64;
    Ok(Segment { path, file: Arc::new(file), len, allocated: len })
}

/// Before records are written up to `end`, makes sure `segment`'s file
/// holds zeroes up to [`PREALLOCATE_BYTES`] past `end` (but not past
/// `segment_bytes_max`, where the segment is closed).
fn zero_ahead(segment: &mut Segment, end: u64, segment_bytes_max: u64) -> io::Result<()> {
    if end <= segment.allocated {
        return Ok(());
    }
    let target = (end + PREALLOCATE_BYTES).min(segment_bytes_max.max(end));
    let mut at = segment.allocated.max(end);
    while at < target {
        let n = (target - at).min(ZEROES.len() as u64) as usize;
        segment.file.write_all_at(&ZEROES[..n], at)?;
        at += n as u64;
    }
    segment.allocated = segment.allocated.max(at);
    Ok(())
}

impl Log {
    fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first_index + self.locs.len() as u64 - 1)
    }

    fn loc(&self, index: u64) -> Loc {
        self.locs[(index - self.first_index) as usize]
    }

    /// The last index from `start` on, at most `end`, such that the records
    /// `start..=that` take at most `max_bytes` (at least `start` itself).
    /// Indexes outside the written log end a chunk at `end`.
    fn chunk_end(&self, start: u64, end: u64, max_bytes: u64) -> u64 {
        let Some(last) = self.last_index() else { return end };
        if start < self.first_index || start > last {
            return end;
        }
        let record_bytes = |index: u64| {
            let loc = self.loc(index);
            loc.end() - loc.offset
        };
        let mut bytes = record_bytes(start);
        let mut index = start;
        while index < end && index < last {
            let next = record_bytes(index + 1);
            if bytes + next > max_bytes {
                return index;
            }
            bytes += next;
            index += 1;
        }
        end
    }

    /// The first index of the segment holding `index`.
    fn segment_of(&self, index: u64) -> io::Result<u64> {
        self.segments
            .range(..=index)
            .next_back()
            .map(|(first, _)| *first)
            .ok_or_else(|| corrupt(format!("no segment holds log entry {index}")))
    }

    fn check_writable(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(io::Error::other(format!("the log store stopped writing after an error: {e}"))),
        }
    }

    /// Writes `entries` (contiguous, following the last entry) to the
    /// segments, without syncing; returns the segments written to.
    fn write(&mut self, entries: Vec<Entry>) -> io::Result<Vec<Arc<File>>> {
        self.check_writable()?;
        let result = self.write_inner(&entries);
        match &result {
            Err(e) => {
                self.failed = Some(e.to_string());
                self.recent.clear();
                self.recent_bytes = 0;
            }
            Ok(_) => {
                for entry in entries {
                    let loc = self.loc(entry.index());
                    let bytes = loc.end() - loc.offset;
                    self.recent.push_back((Arc::new(entry), bytes));
                    self.recent_bytes += bytes;
                }
                while self.recent_bytes > self.recent_bytes_max
                    && let Some((_, bytes)) = self.recent.pop_front()
                {
                    self.recent_bytes -= bytes;
                }
            }
        }
        result
    }

    /// Index of the first entry in `recent`.
    fn recent_first(&self) -> Option<u64> {
        self.recent.front().map(|(entry, _)| entry.index())
    }

    /// Drops the entries of `recent` from index `from` on.
    fn forget_recent_from(&mut self, from: u64) {
        while self.recent.back().is_some_and(|(entry, _)| entry.index() >= from)
            && let Some((_, bytes)) = self.recent.pop_back()
        {
            self.recent_bytes -= bytes;
        }
    }

    /// Drops the entries of `recent` up to index `upto`.
    fn forget_recent_upto(&mut self, upto: u64) {
        while self.recent.front().is_some_and(|(entry, _)| entry.index() <= upto)
            && let Some((_, bytes)) = self.recent.pop_front()
        {
            self.recent_bytes -= bytes;
        }
    }

    fn write_inner(&mut self, entries: &[Entry]) -> io::Result<Vec<Arc<File>>> {
        debug_assert_eq!(self.locs.is_empty(), self.segments.is_empty(), "segments without live entries");
        let mut files: Vec<Arc<File>> = Vec::new();
        let mut buf = std::mem::take(&mut self.write_buf);
        buf.clear();
        let mut new_locs = Vec::new();
        let mut next = self.last_index().map(|i| i + 1);
        let mut last = None;
        for entry in entries {
            let index = entry.index();
            if next.is_some_and(|n| n != index) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("log entry {index} appended after entry {}", next.unwrap_or(1) - 1),
                ));
            }
            let active = self.segments.last_key_value().map(|(first, s)| (*first, s.len));
            let start_new = match active {
                None => true,
                Some((_, len)) => {
                    let used = len + buf.len() as u64;
                    used >= self.segment_bytes_max && used > SEGMENT_MAGIC.len() as u64
                }
            };
            if start_new {
                if let Some((first, _)) = active {
                    self.flush_buf(first, &mut buf, &mut new_locs, &mut files)?;
                    // A closed segment is complete on disk before the next
                    // exists, so that only the last segment can ever have a
                    // torn tail.
                    // Its zeroes are cut off first, so that a closed
                    // segment ends with its last record.
                    let segment = self.segments.get_mut(&first).expect("segment");
                    if segment.allocated > segment.len {
                        segment.file.set_len(segment.len)?;
                        segment.allocated = segment.len;
                    }
                    segment.file.sync_data()?;
                }
                let segment = create_segment(&self.dir, index)?;
                self.segments.insert(index, segment);
            }
            let (_, segment) = self.segments.last_key_value().expect("a segment");
            let offset = segment.len + buf.len() as u64;
            let len = encode_record(entry, &mut buf)?;
            new_locs.push((index, Loc { offset, len }));
            next = Some(index + 1);
            last = Some(entry.log_id());
        }
        if let Some((first, _)) = self.segments.last_key_value().map(|(f, s)| (*f, s.len)) {
            self.flush_buf(first, &mut buf, &mut new_locs, &mut files)?;
        }
        if last.is_some() {
            self.last = last;
        }
        if buf.capacity() <= WRITE_BUF_KEEP_MAX {
            buf.clear();
            self.write_buf = buf;
        }
        Ok(files)
    }

    /// Writes `buf` at the end of segment `first` and indexes its records.
    fn flush_buf(
        &mut self,
        first: u64,
        buf: &mut Vec<u8>,
        new_locs: &mut Vec<(u64, Loc)>,
        files: &mut Vec<Arc<File>>,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let segment = self.segments.get_mut(&first).expect("segment");
        zero_ahead(segment, segment.len + buf.len() as u64, self.segment_bytes_max)?;
        segment.file.write_all_at(buf, segment.len)?;
        segment.len += buf.len() as u64;
        if !files.iter().any(|f| Arc::ptr_eq(f, &segment.file)) {
            files.push(segment.file.clone());
        }
        if self.locs.is_empty()
            && let Some((index, _)) = new_locs.first()
        {
            self.first_index = *index;
        }
        self.locs.extend(new_locs.drain(..).map(|(_, loc)| loc));
        buf.clear();
        Ok(())
    }

    /// Removes entries from `from` on. Durable when it returns: segments
    /// after the cut are deleted (newest first, then the directory synced)
    /// before the cut segment is shortened and synced, so that a crash part
    /// way leaves a log that is a prefix of the old one.
    fn truncate_from(&mut self, from: u64) -> io::Result<()> {
        self.unsynced.retain(|&i, _| i < from);
        self.forget_recent_from(from);
        let Some(last) = self.last_index() else { return Ok(()) };
        if from > last {
            return Ok(());
        }
        self.check_writable()?;
        let from = from.max(self.first_index);
        let cut_segment = self.segment_of(from)?;
        let cut_offset = self.loc(from).offset;
        // With no live entry left no segment is kept (the next append may
        // start at any index), nor is one whose first entry goes.
        let whole: Vec<u64> = if from == self.first_index || cut_offset == SEGMENT_MAGIC.len() as u64 {
            self.segments.range(cut_segment..).map(|(f, _)| *f).collect()
        } else {
            self.segments.range(cut_segment + 1..).map(|(f, _)| *f).collect()
        };
        for first in whole.iter().rev() {
            let segment = self.segments.remove(first).expect("segment");
            fs::remove_file(&segment.path)?;
        }
        if !whole.is_empty() {
            sync_dir(&self.dir)?;
        }
        if let Some(segment) = self.segments.get_mut(&cut_segment)
            && from != self.first_index
        {
            segment.file.set_len(cut_offset)?;
            segment.file.sync_data()?;
            segment.len = cut_offset;
            segment.allocated = cut_offset;
        }
        self.locs.truncate((from - self.first_index) as usize);
        self.last = match self.last_index() {
            None => None,
            Some(i) => Some(self.read_entries(i, i)?.pop().expect("one entry").log_id()),
        };
        Ok(())
    }

    /// Forgets entries up to `upto` and deletes the segments that hold only
    /// such entries. Not synced: a deleted segment that comes back after a
    /// crash holds only purged entries, which opening skips.
    fn purge_upto(&mut self, upto: u64) -> io::Result<()> {
        self.unsynced.retain(|&i, _| i > upto);
        self.forget_recent_upto(upto);
        if let Some(last) = self.last_index() {
            if upto >= last {
                self.locs.clear();
                self.last = None;
            } else if upto >= self.first_index {
                self.locs.drain(..(upto + 1 - self.first_index) as usize);
                self.first_index = upto + 1;
            }
        }
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut doomed = Vec::new();
        for (i, first) in firsts.iter().enumerate() {
            let all_purged = match firsts.get(i + 1) {
                Some(next) => *next <= upto + 1,
                None => self.locs.is_empty(),
            };
            if all_purged {
                doomed.push(*first);
            }
        }
        for first in doomed {
            let segment = self.segments.remove(&first).expect("segment");
            fs::remove_file(&segment.path)?;
        }
        Ok(())
    }

    /// Reads entries `start..=end`, all of which must be in the index.
    fn read_entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity((end + 1 - start) as usize);
        for (first, raw) in self.read_raw(start, end)? {
            parse_records(&raw, first, &mut entries)?;
        }
        Ok(entries)
    }

    /// The bytes of the records of entries `start..=end` (all in the index),
    /// one read per segment: `(index of the first record, bytes)`.
    fn read_raw(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut index = start;
        while index <= end {
            let first = self.segment_of(index)?;
            let next_segment = self.segments.range(first + 1..).next().map_or(u64::MAX, |(f, _)| *f);
            let chunk_end = end.min(next_segment - 1);
            let from = self.loc(index).offset;
            let to = self.loc(chunk_end).end();
            let mut raw = vec![0u8; (to - from) as usize];
            self.segments[&first].file.read_exact_at(&mut raw, from)?;
            out.push((index, raw));
            index = chunk_end + 1;
        }
        Ok(out)
    }
}

/// Decodes consecutive records starting with entry `first`.
fn parse_records(raw: &[u8], first: u64, entries: &mut Vec<Entry>) -> io::Result<()> {
    let mut pos = 0usize;
    let mut index = first;
    while pos < raw.len() {
        let len = raw
            .get(pos..pos + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt(format!("log record of entry {index} is cut short")))?;
        let end = pos + RECORD_HEADER_BYTES as usize + len;
        let record = raw.get(pos..end).ok_or_else(|| corrupt(format!("log record of entry {index} is cut short")))?;
        entries.push(decode_record(record, index)?);
        pos = end;
        index += 1;
    }
    Ok(())
}

fn read_meta(dir: &Path) -> io::Result<Option<Meta>> {
    let bytes = match fs::read(dir.join(META_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let payload = unframe(&bytes).ok_or_else(|| corrupt(format!("{} is damaged", dir.join(META_FILE).display())))?;
    let meta: Meta = decode(payload)?;
    if meta.version != META_VERSION {
        return Err(corrupt(format!("{}: unknown version {}", dir.join(META_FILE).display(), meta.version)));
    }
    Ok(Some(meta))
}

/// Replaces the `meta` file atomically and durably.
fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = dir.join(META_TMP_FILE);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(&frame(&encode(meta)?))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(META_FILE))?;
    sync_dir(dir)
}

impl LogStore {
    /// Opens (or creates) the log of `group` in directory `dir`, and starts
    /// its flusher thread. Must be called inside a tokio runtime (the
    /// test-only broken mode's delayed writer is a task).
    pub fn open(dir: &Path, group: GroupId) -> io::Result<LogStore> {
        Self::open_with(dir, group, false)
    }

    pub(crate) fn open_with(dir: &Path, group: GroupId, ack_before_fsync: bool) -> io::Result<LogStore> {
        Self::open_with_options(dir, group, Options { ack_before_fsync, ..Options::default() })
    }

    pub(crate) fn open_with_options(dir: &Path, group: GroupId, options: Options) -> io::Result<LogStore> {
        let (mut log, meta, committed) = open_files(dir, group, options.segment_bytes_max)?;
        log.recent_bytes_max = options.recent_bytes_max;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            log: Mutex::new(log),
            meta: Mutex::new(meta),
            committed: Mutex::new(SavedCommitted { id: committed.0, file: committed.1, written_at: None }),
            ack_before_fsync: options.ack_before_fsync,
        });
        let stats = Arc::new(LogStats::default());
        let (tx, rx) = mpsc::channel();
        let flusher_stats = stats.clone();
        std::thread::Builder::new().name("log-flusher".into()).spawn(move || run_flusher(rx, flusher_stats))?;
        if options.ack_before_fsync {
            tokio::spawn(write_unsynced_later(Arc::downgrade(&shared)));
        }
        Ok(LogStore { shared, flusher: tx, stats })
    }

    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.shared.log.lock().expect("log lock")
    }

    /// Changes the `meta` file durably, off the async threads.
    async fn update_meta(&self, change: impl FnOnce(&mut Meta) + Send + 'static) -> io::Result<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut meta = shared.meta.lock().expect("meta lock");
            let mut new = meta.clone();
            change(&mut new);
            write_meta(&shared.dir, &new)?;
            *meta = new;
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Opens the files of the log directory and rebuilds the index.
fn open_files(dir: &Path, group: GroupId, segment_bytes_max: u64) -> io::Result<(Log, Meta, (Option<LogId>, File))> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    match fs::remove_file(dir.join(META_TMP_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let meta = match read_meta(dir)? {
        Some(meta) if meta.group != group => {
            return Err(corrupt(format!("{} holds the log of group {}, not {group}", dir.display(), meta.group)));
        }
        Some(meta) => meta,
        None => {
            let meta = Meta { version: META_VERSION, group, ..Meta::default() };
            write_meta(dir, &meta)?;
            meta
        }
    };
    let purged = meta.last_purged.as_ref().map(|id| id.index());
    let is_purged = |index: u64| purged.is_some_and(|p| index <= p);

    let mut firsts = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => firsts.push(first),
            None if name == META_FILE || name == COMMITTED_FILE => {}
            None => tracing::warn!(file = %item.path().display(), "unexpected file in the log directory"),
        }
    }
    firsts.sort_unstable();
    // Segments holding only purged entries (deleted by a purge whose
    // deletions did not survive a crash).
    let mut deleted_any = false;
    while firsts.len() > 1 && is_purged(firsts[1] - 1) {
        fs::remove_file(dir.join(segment_name(firsts[0])))?;
        firsts.remove(0);
        deleted_any = true;
    }

    let mut log = Log {
        dir: dir.to_path_buf(),
        segment_bytes_max,
        recent_bytes_max: RECENT_BYTES_MAX,
        segments: BTreeMap::new(),
        first_index: 0,
        locs: VecDeque::new(),
        last: None,
        unsynced: BTreeMap::new(),
        failed: None,
        write_buf: Vec::new(),
        recent: VecDeque::new(),
        recent_bytes: 0,
    };
    let mut next_expected: Option<u64> = None;
    for (i, &first) in firsts.iter().enumerate() {
        let is_last = i + 1 == firsts.len();
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let (scanned, allocated) = if is_last {
            // Only the last segment can have a write in progress at a crash:
            // every record of it is read and checked, and anything after its
            // first bad record (never acknowledged) is cut off.
            let bytes = fs::read(&path)?;
            if bytes.len() < SEGMENT_MAGIC.len() {
                // Created by a crash just before its magic was written.
                fs::remove_file(&path)?;
                deleted_any = true;
                continue;
            }
            if bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
                return Err(corrupt(format!("{} is not a log segment", path.display())));
            }
            let mut scanned = scan_segment(&bytes, first).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
            let mut allocated = scanned.valid_len;
            if bytes[scanned.valid_len as usize..].iter().all(|&b| b == 0) {
                // The records end where the zeroes written ahead of them
                // begin (or at the end of the file).
                scanned.bad_tail = None;
                allocated = bytes.len() as u64;
            }
            if let Some(problem) = &scanned.bad_tail {
                tracing::warn!(
                    segment = %path.display(),
                    problem = %problem,
                    dropped_bytes = bytes.len() as u64 - scanned.valid_len,
                    "cutting a torn write off the end of the log"
                );
                file.set_len(scanned.valid_len)?;
                file.sync_data()?;
            }
            (scanned, allocated)
        } else {
            let scanned = walk_segment(&file, file.metadata()?.len(), first)
                .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
            let allocated = scanned.valid_len;
            (scanned, allocated)
        };
        if scanned.locs.is_empty() && is_last {
            fs::remove_file(&path)?;
            deleted_any = true;
            continue;
        }
        if let Some(expected) = next_expected
            && expected != first
        {
            return Err(corrupt(format!("{} starts at entry {first}, expected entry {expected}", path.display())));
        }
        next_expected = Some(first + scanned.locs.len() as u64);
        for (k, loc) in scanned.locs.iter().enumerate() {
            let index = first + k as u64;
            if is_purged(index) {
                continue;
            }
            if log.locs.is_empty() {
                log.first_index = index;
            }
            log.locs.push_back(*loc);
        }
        log.segments.insert(first, Segment { path, file: Arc::new(file), len: scanned.valid_len, allocated });
    }
    if log.locs.is_empty() {
        // Every entry is purged: no segment is needed.
        for segment in std::mem::take(&mut log.segments).into_values() {
            fs::remove_file(&segment.path)?;
            deleted_any = true;
        }
    } else if let Some(index) = log.last_index() {
        log.last = log.read_entries(index, index)?.first().map(|e| e.log_id());
    }
    if deleted_any {
        sync_dir(dir)?;
    }

    let committed_path = dir.join(COMMITTED_FILE);
    let committed_file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&committed_path)?;
    let bytes = fs::read(&committed_path)?;
    let mut committed: Option<LogId> = if bytes.is_empty() {
        None
    } else {
        match unframe(&bytes).map(decode::<Option<LogId>>) {
            Some(Ok(id)) => id,
            _ => {
                tracing::warn!(file = %committed_path.display(), "ignoring a damaged committed index");
                None
            }
        }
    };
    // The committed id is written without fsync, so after a power failure it
    // may name an entry the log lost or replaced: forget it then (re-applying
    // less on restart is safe; applying an entry the log lacks is not).
    if let Some(id) = committed {
        let keep = if is_purged(id.index()) {
            true
        } else if log.last_index().is_some_and(|l| id.index() <= l && id.index() >= log.first_index) {
            log.read_entries(id.index(), id.index())?.first().map(|e| e.log_id()) == Some(id)
        } else {
            false
        };
        if !keep {
            tracing::warn!(committed = %id, "the saved committed index is not in the log; ignoring it");
            committed = None;
        }
    }
    Ok((log, meta, (committed, committed_file)))
}

/// Fails when `db` still holds a Raft log written by a version that kept it
/// in sled and there is no segment-file log yet: starting would silently
/// begin with an empty log. There is no migration (pre-1.0); start the node
/// on an empty data directory and let it catch up from its peers.
pub fn refuse_old_sled_log(db: &sled::Db, log_dir: &Path) -> io::Result<()> {
    if log_dir.exists() || !db.tree_names().iter().any(|name| name.as_ref() == b"raft") {
        return Ok(());
    }
    if db.open_tree("raft").map_err(io::Error::other)?.is_empty() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "this data directory holds a Raft log in the old format (sled tree \"raft\"), which this version \
         no longer reads; move the data directory away and start the node empty so that it catches up \
         from its peers",
    ))
}

/// The broken mode's delayed writer (see `Shared::ack_before_fsync`).
async fn write_unsynced_later(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(UNSYNCED_WRITE_DELAY).await;
        let Some(shared) = shared.upgrade() else { return };
        let mut log = shared.log.lock().expect("log lock");
        let pending: Vec<Entry> = std::mem::take(&mut log.unsynced).into_values().collect();
        if let Err(e) = log.write(pending) {
            tracing::error!(error = %e, "writing delayed log entries");
        }
    }
}

/// The flusher: a thread of its own, so that an append's fsync is one
/// wake-up away (a task handing the fsync to tokio's blocking pool and
/// back took three). It ends when every `LogStore` handle is dropped.
fn run_flusher(rx: mpsc::Receiver<PendingFlush>, stats: Arc<LogStats>) {
    let mut waiting: Vec<PendingFlush> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for file in waiting.iter().flat_map(|p| p.files.iter()) {
            if !files.iter().any(|f| Arc::ptr_eq(f, file)) {
                files.push(file.clone());
            }
        }
        let started = std::time::Instant::now();
        let result = files.iter().try_for_each(|f| f.sync_data());
        let took = started.elapsed();
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.flush_micros_total.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        stats.flush_seconds.observe(took.as_secs_f64());
        stats.flush_entries.observe(waiting.iter().map(|p| p.entries).sum::<u64>() as f64);
        let error = result.err().map(|e| e.to_string());
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

/// `range` as `(first, last)`, both included; `None` when it is empty.
fn inclusive_range(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

/// The most record bytes [`RaftLogReader::entries_stream`] reads at once.
const STREAM_CHUNK_BYTES: u64 = 16 * 1024 * 1024;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let Some((start, end)) = inclusive_range(&range) else { return Ok(Vec::new()) };
        // Under the lock: the recent entries of the range (shared), and the
        // record bytes of the older ones (one pread per segment); those are
        // checked and decoded, and the recent ones cloned, after.
        let (raw, recent, unsynced) = {
            let log = self.log();
            let mut raw = Vec::new();
            let mut recent = Vec::new();
            if let Some(last) = log.last_index()
                && start.max(log.first_index) <= end.min(last)
            {
                let (from, to) = (start.max(log.first_index), end.min(last));
                let recent_first = log.recent_first().unwrap_or(u64::MAX);
                if from < recent_first {
                    raw = log.read_raw(from, to.min(recent_first - 1))?;
                }
                if recent_first <= to {
                    let skip = from.max(recent_first) - recent_first;
                    let take = to + 1 - from.max(recent_first);
                    recent.extend(log.recent.iter().skip(skip as usize).take(take as usize).map(|(e, _)| e.clone()));
                }
            }
            let unsynced: Vec<Entry> = log.unsynced.range(start..=end).map(|(_, e)| e.clone()).collect();
            (raw, recent, unsynced)
        };
        let mut entries = Vec::with_capacity(recent.len() + unsynced.len());
        for (first, bytes) in raw {
            parse_records(&bytes, first, &mut entries)?;
        }
        entries.extend(recent.iter().map(|entry| Entry::clone(entry)));
        entries.extend(unsynced);
        Ok(entries)
    }

    /// Reads the range in pieces of at most [`STREAM_CHUNK_BYTES`] of
    /// records. openraft applies committed entries through this, and on a
    /// restart that is the whole log after the checkpoint in one range (up
    /// to twice the checkpoint's size: about a gigabyte at 10 million queued
    /// messages); its default implementation reads the range into one `Vec`.
    async fn entries_stream<RB>(&mut self, range: RB) -> impl Stream<Item = io::Result<Entry>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let bounds = inclusive_range(&range);
        let reader = self.clone();
        futures::stream::try_unfold(bounds, move |bounds| {
            let mut reader = reader.clone();
            async move {
                let Some((start, end)) = bounds else { return Ok::<_, io::Error>(None) };
                let chunk_end = reader.log().chunk_end(start, end, STREAM_CHUNK_BYTES);
                let entries = reader.try_get_log_entries(start..=chunk_end).await?;
                let rest = (chunk_end < end).then(|| (chunk_end + 1, end));
                Ok(Some((futures::stream::iter(entries.into_iter().map(Ok)), rest)))
            }
        })
        .try_flatten()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.shared.meta.lock().expect("meta lock").vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.shared.meta.lock().expect("meta lock").last_purged;
        let last = {
            let log = self.log();
            match log.unsynced.last_key_value() {
                Some((_, entry)) => Some(entry.log_id()),
                None => log.last,
            }
        };
        Ok(LogState { last_log_id: last.or(last_purged_log_id), last_purged_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        // A vote must be on disk before it is acted on: a node that forgot
        // its vote after a crash could vote twice in one term.
        let vote = *vote;
        let started = std::time::Instant::now();
        self.update_meta(move |meta| meta.vote = Some(vote)).await?;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.flush_micros_total.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        if self.shared.ack_before_fsync {
            // In the broken mode the committed index would be lost with the
            // unsynced entries it covers; not saving it keeps a restarted
            // node consistent with the log it actually has.
            return Ok(());
        }
        // Written in place without fsync, and at most every
        // COMMITTED_WRITE_INTERVAL: a committed id older than the true one
        // only means applying less on restart before the leader says how far
        // the log is committed, and opening discards one that names an entry
        // the log does not have.
        let mut saved = self.shared.committed.lock().expect("committed lock");
        saved.id = committed;
        if saved.written_at.is_none_or(|at| at.elapsed() >= COMMITTED_WRITE_INTERVAL) {
            saved.file.write_all_at(&frame(&encode(&committed)?), 0)?;
            saved.written_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.shared.committed.lock().expect("committed lock").id)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first) = entries.first().map(|e| e.index()) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        if self.shared.ack_before_fsync {
            // The deliberately broken mode: claim durability that does not
            // exist. Only reachable through `Config::unsafe_ack_before_fsync`.
            let mut log = self.log();
            log.unsynced.retain(|&i, _| i < first);
            if log.last_index().is_some_and(|last| first <= last) {
                log.truncate_from(first)?;
            }
            for entry in entries {
                log.unsynced.insert(entry.index(), entry);
            }
            drop(log);
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let started = std::time::Instant::now();
        let count = entries.len() as u64;
        let files = {
            let mut log = self.log();
            // openraft truncates conflicting entries before appending over
            // them; an append over existing entries replaces them all the same.
            if log.last_index().is_some_and(|last| first <= last) {
                log.truncate_from(first)?;
            }
            log.write(entries)?
        };
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats.entries_appended.fetch_add(count, Ordering::Relaxed);
        let pending = PendingFlush { callback, entries: count, written_at: started, files };
        if let Err(mpsc::SendError(pending)) = self.flusher.send(pending) {
            pending.callback.io_completed(Err(io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.log().truncate_from(from)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point durably first: entries at or below it are
        // ignored from then on (also on open), so a crash between the two
        // steps leaves no hole.
        let purged = log_id;
        self.update_meta(move |meta| {
            if meta.last_purged.as_ref().is_none_or(|old| *old < purged) {
                meta.last_purged = Some(purged);
            }
        })
        .await?;
        self.log().purge_upto(log_id.index())
    }
}

#[cfg(test)]
mod tests {
    //! The segment-file log on its own: reopening, torn tails, purge
    //! deleting files, truncation and segment rolls. (openraft's conformance
    //! suite runs on it in `tests/storage_suite.rs`.)

    use openraft::RaftTypeConfig;
    use openraft::type_config::TypeConfigExt;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::types::QUEUES_GROUP;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(<TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, 1), index)
    }

    fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes.map(|i| Entry::new_blank(log_id(term, i))).collect()
    }

    fn open(dir: &Path, segment_bytes_max: u64) -> LogStore {
        let options = Options { segment_bytes_max, ..Options::default() };
        LogStore::open_with_options(dir, QUEUES_GROUP, options).expect("open log")
    }

    /// Appends and waits for the flusher to report them durable.
    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("callback").expect("flushed");
    }

    async fn ids(log: &mut LogStore) -> Vec<LogId> {
        log.try_get_log_entries(..).await.expect("read").iter().map(|e| e.log_id()).collect()
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        let mut firsts: Vec<u64> = fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| parse_segment_name(e.expect("dir entry").file_name().to_str()?))
            .collect();
        firsts.sort_unstable();
        firsts
    }

    fn expected(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<LogId> {
        indexes.map(|i| log_id(term, i)).collect()
    }

    /// Applying reads committed entries through `entries_stream`, which
    /// reads a long range in bounded pieces (here across segment files)
    /// and still returns every entry, in order.
    #[tokio::test]
    async fn entries_stream_reads_in_pieces_and_returns_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4096);
        append(&mut log, entries(1, 1..=500)).await;
        assert!(segment_files(dir.path()).len() > 2);
        {
            let l = log.log();
            let one = l.loc(1).end() - l.loc(1).offset;
            assert_eq!(l.chunk_end(1, 500, one * 10), 10);
            assert_eq!(l.chunk_end(1, 500, one * 10 + one / 2), 10);
            assert_eq!(l.chunk_end(7, 500, 0), 7, "a piece holds at least one entry");
            assert_eq!(l.chunk_end(495, 600, u64::MAX), 600, "past the log: to the end of the range");
            assert_eq!(l.chunk_end(1, 500, u64::MAX), 500);
        }
        for (range, want) in [(1..=500, expected(1, 1..=500)), (100..=250, expected(1, 100..=250))] {
            let got: Vec<Entry> = log.entries_stream(range).await.try_collect().await.unwrap();
            assert_eq!(got.iter().map(|e| e.log_id()).collect::<Vec<_>>(), want);
        }
        let none: Vec<Entry> = log.entries_stream(600..700).await.try_collect().await.unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn reopen_returns_the_same_entries_vote_and_purge_point() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let mut log = open(dir.path(), SEGMENT_BYTES_MAX);
            append(&mut log, entries(1, 1..=10)).await;
            append(&mut log, entries(2, 11..=20)).await;
            let vote = Vote::new(2, 1);
            log.save_vote(&vote).await.expect("vote");
            log.save_committed(Some(log_id(2, 15))).await.expect("committed");
            // Saved again at once: the file may keep the older id (it is
            // rewritten at most every COMMITTED_WRITE_INTERVAL), the store
            // answers the newer one.
            log.save_committed(Some(log_id(2, 17))).await.expect("committed");
            assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(2, 17)));
            log.purge(log_id(1, 3)).await.expect("purge");
        }
        let mut log = open(dir.path(), SEGMENT_BYTES_MAX);
        let mut want = expected(1, 4..=10);
        want.extend(expected(2, 11..=20));
        assert_eq!(ids(&mut log).await, want);
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
        let committed = log.read_committed().await.expect("committed");
        assert!([Some(log_id(2, 15)), Some(log_id(2, 17))].contains(&committed), "{committed:?}");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 20)));
        assert!(log.try_get_log_entries(0..=3).await.expect("read").is_empty(), "purged entries are gone");
        let some = log.try_get_log_entries(9..12).await.expect("read");
        assert_eq!(
            some.iter().map(|e| e.log_id()).collect::<Vec<_>>(),
            vec![log_id(1, 9), log_id(1, 10), log_id(2, 11)]
        );
        // And it goes on from there.
        append(&mut log, entries(2, 21..=21)).await;
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(log_id(2, 21)));
    }

    /// Where the records of segment file `path` (first entry `first`) end.
    fn records_end(path: &Path, first: u64) -> u64 {
        scan_segment(&fs::read(path).expect("segment"), first).expect("scan").valid_len
    }

    /// Every range of the log reads the same whether its entries come from
    /// the recent entries in memory, from the files, or from both, through
    /// appends, a truncation and a purge.
    #[tokio::test]
    async fn recent_entries_in_memory_read_as_the_files_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options { segment_bytes_max: 400, recent_bytes_max: 300, ..Options::default() };
        let mut log = LogStore::open_with_options(dir.path(), QUEUES_GROUP, options.clone()).expect("open");
        let check = |log: &LogStore, want: Vec<LogId>| {
            let mut log = log.clone();
            async move {
                let (first, last) = (want[0].index(), want[want.len() - 1].index());
                for a in first - 2..=last + 2 {
                    for b in a..=last + 2 {
                        let got: Vec<LogId> =
                            log.try_get_log_entries(a..=b).await.expect("read").iter().map(|e| e.log_id()).collect();
                        let expected: Vec<LogId> =
                            want.iter().copied().filter(|id| (a..=b).contains(&id.index())).collect();
                        assert_eq!(got, expected, "range {a}..={b}");
                    }
                }
            }
        };
        append(&mut log, entries(1, 1..=30)).await;
        append(&mut log, entries(1, 31..=40)).await;
        {
            let l = log.log();
            let first = l.recent_first().expect("recent entries");
            assert!(first > 1 && first <= 40, "only the latest entries are kept: from {first}");
            assert!(l.recent_bytes <= 300);
            assert_eq!(l.recent.back().map(|(e, _)| e.index()), Some(40));
        }
        check(&log, expected(1, 1..=40)).await;

        // A truncation drops the recent entries it cuts; the entries
        // appended in their place are read, not the old ones.
        log.truncate_after(Some(log_id(1, 35))).await.expect("truncate");
        append(&mut log, entries(2, 36..=38)).await;
        let mut want = expected(1, 1..=35);
        want.extend(expected(2, 36..=38));
        check(&log, want.clone()).await;

        log.purge(log_id(1, 20)).await.expect("purge");
        check(&log, want[20..].to_vec()).await;

        // The files say the same after a reopen (nothing in memory yet).
        drop(log);
        let log = LogStore::open_with_options(dir.path(), QUEUES_GROUP, options).expect("reopen");
        assert!(log.log().recent.is_empty());
        check(&log, want[20..].to_vec()).await;
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let mut log = open(dir.path(), SEGMENT_BYTES_MAX);
            append(&mut log, entries(1, 1..=5)).await;
        }
        let path = dir.path().join(segment_name(1));
        let whole = records_end(&path, 1);
        // Half of the last record made it to disk.
        let file = OpenOptions::new().write(true).open(&path).expect("open segment");
        file.set_len(whole - 3).expect("cut");
        drop(file);
        let mut log = open(dir.path(), SEGMENT_BYTES_MAX);
        assert_eq!(ids(&mut log).await, expected(1, 1..=4));
        let cut = fs::metadata(&path).expect("segment").len();
        assert!(cut < whole - 3, "the torn record is removed from the file");
        // Appending after the cut works and survives another reopen.
        append(&mut log, entries(2, 5..=6)).await;
        drop(log);
        let mut log = open(dir.path(), SEGMENT_BYTES_MAX);
        let mut want = expected(1, 1..=4);
        want.extend(expected(2, 5..=6));
        assert_eq!(ids(&mut log).await, want);

        // Garbage after the last record (a write whose pages were half
        // written), here beyond the zeroes written ahead, is cut off with
        // the zeroes.
        drop(log);
        let end = records_end(&path, 1);
        let file = OpenOptions::new().write(true).open(&path).expect("open segment");
        let len = file.metadata().expect("meta").len();
        assert!(len > end, "zeroes are written ahead of the records");
        file.write_all_at(&[0xAB; 100], len).expect("garbage");
        drop(file);
        let mut log = open(dir.path(), SEGMENT_BYTES_MAX);
        assert_eq!(ids(&mut log).await, want);
        assert_eq!(fs::metadata(&path).expect("segment").len(), end);
    }

    #[tokio::test]
    async fn zeroes_are_kept_ahead_of_the_records_and_cut_off_a_closed_segment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segment_max = 2 * PREALLOCATE_BYTES + 4096;
        let first_path = dir.path().join(segment_name(1));
        {
            let mut log = open(dir.path(), segment_max);
            append(&mut log, entries(1, 1..=3)).await;
            let len = fs::metadata(&first_path).expect("segment").len();
            let end = records_end(&first_path, 1);
            assert_eq!(len, end + PREALLOCATE_BYTES, "a megabyte of zeroes after the records");
        }
        // A clean reopen keeps the zeroes (the records end at the first
        // of them) and appends over them.
        let len_before = fs::metadata(&first_path).expect("segment").len();
        let mut log = open(dir.path(), segment_max);
        assert_eq!(ids(&mut log).await, expected(1, 1..=3));
        assert_eq!(fs::metadata(&first_path).expect("segment").len(), len_before);
        append(&mut log, entries(1, 4..=4)).await;
        assert_eq!(fs::metadata(&first_path).expect("segment").len(), len_before, "written over the zeroes");

        // More entries fill the segment: the zeroes never go past its
        // maximum, and the closed segment ends with its last record.
        let mut next = 5;
        while segment_files(dir.path()).len() < 2 {
            append(&mut log, entries(1, next..=next + 9_999)).await;
            next += 10_000;
            let len = fs::metadata(&first_path).expect("segment").len();
            assert!(len <= segment_max.max(records_end(&first_path, 1)), "{len} bytes");
        }
        assert_eq!(fs::metadata(&first_path).expect("segment").len(), records_end(&first_path, 1));
        drop(log);
        let mut log = open(dir.path(), segment_max);
        assert_eq!(ids(&mut log).await, expected(1, 1..=next - 1));
    }

    #[tokio::test]
    async fn damage_before_the_last_segment_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let mut log = open(dir.path(), 200);
            for i in 1..=30 {
                append(&mut log, entries(1, i..=i)).await;
            }
        }
        let segments = segment_files(dir.path());
        assert!(segments.len() > 2, "several segments: {segments:?}");
        let first = dir.path().join(segment_name(segments[0]));
        let options = Options { segment_bytes_max: 200, ..Options::default() };
        let damage = |offset: u64| {
            let file = OpenOptions::new().read(true).write(true).open(&first).expect("open segment");
            let mut old = [0u8; 4];
            file.read_exact_at(&mut old, offset).expect("read");
            file.write_all_at(&[0xFF; 4], offset).expect("damage");
            move || file.write_all_at(&old, offset).expect("repair")
        };

        // A damaged payload in a closed segment: the log opens (only the
        // headers of closed segments are read then), and reading that
        // entry is an error while the others still read.
        let repair = damage(SEGMENT_MAGIC.len() as u64 + RECORD_HEADER_BYTES);
        {
            let mut log = LogStore::open_with_options(dir.path(), QUEUES_GROUP, options.clone()).expect("open");
            assert!(log.try_get_log_entries(1..=1).await.is_err(), "a damaged entry is not returned");
            assert_eq!(log.try_get_log_entries(2..=30).await.expect("read").len(), 29);
        }
        repair();

        // A damaged record header in a closed segment: the log refuses to
        // open, since the index of the entries after it is unknown.
        let _repair = damage(SEGMENT_MAGIC.len() as u64 + 8);
        let error = LogStore::open_with_options(dir.path(), QUEUES_GROUP, options).err().expect("an error");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[tokio::test]
    async fn purge_deletes_segment_files_whose_entries_are_all_purged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = open(dir.path(), 200);
        for i in 1..=40 {
            append(&mut log, entries(1, i..=i)).await;
        }
        let before = segment_files(dir.path());
        assert!(before.len() >= 4, "several segments: {before:?}");
        // Purge up to the middle of the third segment.
        let upto = before[2] + 1;
        log.purge(log_id(1, upto)).await.expect("purge");
        let after = segment_files(dir.path());
        assert_eq!(after, before[2..].to_vec(), "the first two segment files are deleted");
        for first in &before[..2] {
            assert!(!dir.path().join(segment_name(*first)).exists());
        }
        assert_eq!(ids(&mut log).await, expected(1, upto + 1..=40));
        assert!(log.try_get_log_entries(before[2]..=upto).await.expect("read").is_empty());

        // Purging everything deletes every file; the log goes on after it.
        log.purge(log_id(1, 40)).await.expect("purge");
        assert_eq!(segment_files(dir.path()), Vec::<u64>::new());
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 40)));
        append(&mut log, entries(2, 41..=42)).await;
        assert_eq!(segment_files(dir.path()), vec![41]);
        drop(log);
        let mut log = open(dir.path(), 200);
        assert_eq!(ids(&mut log).await, expected(2, 41..=42));
        assert_eq!(log.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 40)));
    }

    #[tokio::test]
    async fn a_purged_segment_that_comes_back_after_a_crash_is_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = open(dir.path(), 200);
        for i in 1..=30 {
            append(&mut log, entries(1, i..=i)).await;
        }
        let before = segment_files(dir.path());
        let saved = fs::read(dir.path().join(segment_name(before[0]))).expect("read");
        log.purge(log_id(1, before[2])).await.expect("purge");
        drop(log);
        // The deletion did not reach the disk.
        fs::write(dir.path().join(segment_name(before[0])), saved).expect("restore");
        let mut log = open(dir.path(), 200);
        assert_eq!(ids(&mut log).await, expected(1, before[2] + 1..=30));
        assert!(!dir.path().join(segment_name(before[0])).exists(), "deleted again on open");
    }

    #[tokio::test]
    async fn truncate_after_then_append() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = open(dir.path(), 200);
        for i in 1..=20 {
            append(&mut log, entries(1, i..=i)).await;
        }
        let segments = segment_files(dir.path());
        // Cut in the middle of a segment: later segments go, that one shrinks.
        let keep = segments[1] + 1;
        log.truncate_after(Some(log_id(1, keep))).await.expect("truncate");
        assert_eq!(segment_files(dir.path()), segments[..2].to_vec());
        assert_eq!(ids(&mut log).await, expected(1, 1..=keep));
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(log_id(1, keep)));
        append(&mut log, entries(2, keep + 1..=keep + 3)).await;
        let mut want = expected(1, 1..=keep);
        want.extend(expected(2, keep + 1..=keep + 3));
        assert_eq!(ids(&mut log).await, want);
        drop(log);
        let mut log = open(dir.path(), 200);
        assert_eq!(ids(&mut log).await, want);

        // Cut exactly at a segment's first entry: that segment goes whole.
        let segments = segment_files(dir.path());
        let at = segments[1];
        log.truncate_after(Some(log_id(1, at - 1))).await.expect("truncate");
        assert_eq!(segment_files(dir.path()), segments[..1].to_vec());
        append(&mut log, entries(3, at..=at)).await;
        let mut want = expected(1, 1..=at - 1);
        want.push(log_id(3, at));
        assert_eq!(ids(&mut log).await, want);

        // An append over existing entries replaces them.
        append(&mut log, entries(4, 2..=3)).await;
        let mut want = expected(1, 1..=1);
        want.extend(expected(4, 2..=3));
        assert_eq!(ids(&mut log).await, want);

        // Everything.
        log.truncate_after(None).await.expect("truncate");
        assert!(ids(&mut log).await.is_empty());
        assert_eq!(segment_files(dir.path()), Vec::<u64>::new());
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, None);
        drop(log);
        let mut log = open(dir.path(), 200);
        assert!(ids(&mut log).await.is_empty());
    }

    #[tokio::test]
    async fn entries_are_read_across_segment_boundaries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = open(dir.path(), 300);
        // One batch spanning several segments, then single appends.
        append(&mut log, entries(1, 1..=25)).await;
        for i in 26..=40 {
            append(&mut log, entries(1, i..=i)).await;
        }
        let segments = segment_files(dir.path());
        assert!(segments.len() >= 3, "several segments: {segments:?}");
        assert_eq!(segments[0], 1);
        for first in &segments {
            let len = fs::metadata(dir.path().join(segment_name(*first))).expect("segment").len();
            assert!(len <= 300 + 100, "segment {first} has {len} bytes");
        }
        assert_eq!(ids(&mut log).await, expected(1, 1..=40));
        // A range that starts just before a boundary and ends just after.
        let boundary = segments[1];
        let got = log.try_get_log_entries(boundary - 1..=boundary).await.expect("read");
        assert_eq!(got.iter().map(|e| e.log_id()).collect::<Vec<_>>(), expected(1, boundary - 1..=boundary));
        drop(log);
        let mut log = open(dir.path(), 300);
        assert_eq!(ids(&mut log).await, expected(1, 1..=40));
        assert_eq!(segment_files(dir.path()), segments);
        // A roll whose new segment was created but never written is dropped.
        drop(log);
        let empty = dir.path().join(segment_name(41));
        fs::write(&empty, SEGMENT_MAGIC).expect("empty segment");
        let mut log = open(dir.path(), 300);
        assert!(!empty.exists());
        append(&mut log, entries(1, 41..=41)).await;
        assert_eq!(ids(&mut log).await, expected(1, 1..=41));
    }

    #[tokio::test]
    async fn an_old_sled_log_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled");
        let log_dir = dir.path().join("log");
        refuse_old_sled_log(&db, &log_dir).expect("no old log");
        db.open_tree("raft").expect("tree").insert(b"k", b"v").expect("insert");
        assert!(refuse_old_sled_log(&db, &log_dir).is_err());
        fs::create_dir(&log_dir).expect("log dir");
        refuse_old_sled_log(&db, &log_dir).expect("a new log exists");
    }
}
