//! The on-disk snapshot format: the queue metadata and every message record
//! of one group as of one log index, in one self-checking file.
//!
//! ```text
//! "QQSNAP01"
//! u32 LE  length, then the snapshot meta (postcard)
//! u64 LE  length, then the queue state (postcard)
//! u32 LE  CRC-32 of everything above
//! records: u64 BE queue id, u64 BE seq, u32 LE length, the record (postcard)
//! end:     u64 0, u64 0, u32 0
//! u32 LE  CRC-32 of the records and the end marker
//! ```
//!
//! Queue ids start at 1, so a zero queue id marks the end. A restart reads
//! the header, the state and the records (the body index); a follower
//! installing a snapshot reads the same. The header's checksum is verified
//! before the state is returned; the records' at their end.

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Seek;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use quorumq_raft_state_machine::QueueId;
use quorumq_raft_state_machine::Seq;
use quorumq_raft_state_machine::State;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::decode;
use crate::codec::encode;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"QQSNAP01";

/// Bounds what a corrupt or hostile length field can make us allocate.
const META_BYTES_MAX: u32 = 16 * 1024 * 1024;
const STATE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
const RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes a snapshot file. Call [`Writer::record`] for each message in key
/// order, then [`Writer::finish`], which fsyncs.
///
/// The checksum is taken below the buffer, so that it runs over large
/// chunks rather than over each small field of each record (a checkpoint
/// writes four small fields per queued message).
pub struct Writer {
    out: BufWriter<CrcWriter<File>>,
}

impl Writer {
    pub fn create(path: &Path, meta: &SnapshotMeta, state_bytes: &[u8]) -> io::Result<Writer> {
        let mut out = begin(path, meta)?;
        out.write_all(&(state_bytes.len() as u64).to_le_bytes())?;
        out.write_all(state_bytes)?;
        end_section(&mut out)?;
        Ok(Writer { out })
    }

    /// Like [`Writer::create`], but encodes `state` straight into the file:
    /// no buffer holding a second, encoded copy of the state (hundreds of
    /// megabytes for a backlog of millions). Returns the writer and the
    /// encoded state's length. The file is the same, byte for byte: the
    /// length, unknown until the state is written, is filled in afterwards
    /// and the header's checksum combined from its three parts.
    pub fn create_encoding<T: Serialize>(path: &Path, meta: &SnapshotMeta, state: &T) -> io::Result<(Writer, u64)> {
        let mut out = begin(path, meta)?;
        out.flush()?;
        let (mut crc, _) = out.get_mut().take_hasher();
        let len_at = out.get_mut().inner.stream_position()?;
        out.get_mut().inner.write_all(&[0u8; 8])?;
        postcard::to_io(state, &mut out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.flush()?;
        let (state_crc, state_len) = out.get_mut().take_hasher();
        let len_bytes = state_len.to_le_bytes();
        out.get_mut().inner.write_all_at(&len_bytes, len_at)?;
        let mut len_crc = crc32fast::Hasher::new();
        len_crc.update(&len_bytes);
        crc.combine(&len_crc);
        crc.combine(&state_crc);
        out.get_mut().inner.write_all(&crc.finalize().to_le_bytes())?;
        Ok((Writer { out }, state_len))
    }

    pub fn record(&mut self, queue_id: QueueId, seq: Seq, record: &[u8]) -> io::Result<()> {
        assert!(queue_id.0 != 0, "queue ids start at 1; 0 marks the end");
        self.out.write_all(&queue_id.0.to_be_bytes())?;
        self.out.write_all(&seq.0.to_be_bytes())?;
        self.out.write_all(&(record.len() as u32).to_le_bytes())?;
        self.out.write_all(record)
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 20])?;
        end_section(&mut self.out)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?.inner;
        file.sync_all()
    }
}

/// Creates the file and writes the magic and the meta, checksummed.
fn begin(path: &Path, meta: &SnapshotMeta) -> io::Result<BufWriter<CrcWriter<File>>> {
    let mut out = BufWriter::with_capacity(1 << 20, CrcWriter::new(File::create(path)?));
    out.write_all(MAGIC)?;
    let meta_bytes = encode(meta)?;
    out.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    Ok(out)
}

/// Writes the checksum of everything since the last one, itself not
/// checksummed.
fn end_section(out: &mut BufWriter<CrcWriter<File>>) -> io::Result<()> {
    out.flush()?;
    let inner = out.get_mut();
    let crc = inner.take_crc();
    inner.inner.write_all(&crc.to_le_bytes())
}

/// Reads a snapshot file: the header first, then the state
/// ([`Reader::read_state`]), then (optionally) the records.
///
/// The state is decoded straight from the file, never held encoded in
/// memory (at 10 million queued messages the encoding is hundreds of
/// megabytes, which a restart used to hold beside the decoded state); its
/// checksum is verified once it has been read, before it is returned.
pub struct Reader<R> {
    input: CrcReader<BufReader<R>>,
    meta_bytes: Vec<u8>,
    state_len: u64,
    state_read: bool,
}

/// Scratch for the strings of the state while they are decoded (postcard
/// reads each into it before copying it out); the longest string the state
/// holds is an attribute name of 256 bytes.
const STATE_SCRATCH_BYTES: usize = 64 * 1024;

impl<R: Read> Reader<R> {
    /// Reads the header up to the state.
    pub fn open(input: R) -> io::Result<Reader<R>> {
        let mut input = CrcReader::new(BufReader::with_capacity(1 << 20, input));
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a quorumq snapshot file"));
        }
        let meta_len = read_u32(&mut input)?;
        if meta_len > META_BYTES_MAX {
            return Err(invalid(format!("snapshot meta of {meta_len} bytes")));
        }
        let mut meta_bytes = vec![0u8; meta_len as usize];
        input.read_exact(&mut meta_bytes)?;
        let state_len = read_u64(&mut input)?;
        if state_len > STATE_BYTES_MAX {
            return Err(invalid(format!("snapshot state of {state_len} bytes")));
        }
        Ok(Reader { input, meta_bytes, state_len, state_read: false })
    }

    /// Decodes the meta and the state, then verifies the header's
    /// checksum. Call once, before [`Reader::next_record`].
    pub fn read_state<T: DeserializeOwned>(&mut self) -> io::Result<(SnapshotMeta, T)> {
        if self.state_read {
            return Err(io::Error::other("snapshot state read twice"));
        }
        self.state_read = true;
        let mut section = BufReader::with_capacity(1 << 16, (&mut self.input).take(self.state_len));
        let mut scratch = vec![0u8; STATE_SCRATCH_BYTES];
        let decoded = postcard::from_io::<T, _>((&mut section, &mut scratch[..])).map(|(state, _)| state);
        // Whatever the outcome, read the section to its end so that the
        // checksum covers all of it: a corrupt state is reported as such.
        let trailing = section.buffer().len() as u64;
        let rest = io::copy(section.get_mut(), &mut io::sink())?;
        let crc = self.input.take_crc();
        let stored = read_u32(&mut self.input.inner)?;
        if crc != stored {
            return Err(invalid("snapshot header checksum mismatch"));
        }
        let state = decoded.map_err(|e| invalid(format!("snapshot state: {e}")))?;
        if trailing + rest != 0 {
            return Err(invalid(format!("{} bytes after the snapshot state", trailing + rest)));
        }
        let meta = decode(&self.meta_bytes)?;
        Ok((meta, state))
    }

    /// [`Reader::read_state`] for the queue state, with its invariants
    /// checked.
    pub fn read_queue_state(&mut self) -> io::Result<(SnapshotMeta, State)> {
        let (meta, state): (SnapshotMeta, State) = self.read_state()?;
        state.check_invariants().map_err(|e| invalid(format!("snapshot state is inconsistent: {e}")))?;
        Ok((meta, state))
    }

    /// The next message record, or `None` after the last one (once the end
    /// checksum has been verified). Records are handed out as they are
    /// read, before that checksum: on an error, drop what was made of them.
    pub fn next_record(&mut self) -> io::Result<Option<(QueueId, Seq, Vec<u8>)>> {
        if !self.state_read {
            return Err(io::Error::other("snapshot records read before its state"));
        }
        let queue_id = read_u64_be(&mut self.input)?;
        let seq = read_u64_be(&mut self.input)?;
        let len = read_u32(&mut self.input)?;
        if queue_id == 0 {
            if seq != 0 || len != 0 {
                return Err(invalid("malformed snapshot end marker"));
            }
            let crc = self.input.take_crc();
            let stored = read_u32(&mut self.input.inner)?;
            if crc != stored {
                return Err(invalid("snapshot records checksum mismatch"));
            }
            return Ok(None);
        }
        if len > RECORD_BYTES_MAX {
            return Err(invalid(format!("snapshot record of {len} bytes")));
        }
        let mut record = vec![0u8; len as usize];
        self.input.read_exact(&mut record)?;
        Ok(Some((QueueId(queue_id), Seq(seq), record)))
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u64_be(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    /// Bytes through `crc`.
    written: u64,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter { inner, crc: crc32fast::Hasher::new(), written: 0 }
    }

    fn take_crc(&mut self) -> u32 {
        self.take_hasher().0.finalize()
    }

    /// The checksum of the bytes written since the last take, and how many.
    fn take_hasher(&mut self) -> (crc32fast::Hasher, u64) {
        (std::mem::take(&mut self.crc), std::mem::take(&mut self.written))
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn new(inner: R) -> Self {
        CrcReader { inner, crc: crc32fast::Hasher::new() }
    }

    fn take_crc(&mut self) -> u32 {
        std::mem::take(&mut self.crc).finalize()
    }
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(path: &Path) {
        let state = encode(&"state bytes".to_string()).unwrap();
        let mut w = Writer::create(path, &SnapshotMeta::default(), &state).unwrap();
        for seq in 1..=1000u64 {
            w.record(QueueId(1 + seq % 3), Seq(seq), &seq.to_le_bytes().repeat(seq as usize % 5)).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn a_state_encoded_into_the_file_gives_the_same_bytes_as_one_encoded_first() {
        let dir = tempfile::tempdir().unwrap();
        let state: Vec<(u64, String)> = (0..5000u64).map(|i| (i * 7919, format!("value {i}"))).collect();
        let bytes = encode(&state).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut w = Writer::create(&a, &SnapshotMeta::default(), &bytes).unwrap();
        w.record(QueueId(1), Seq(1), b"record").unwrap();
        w.finish().unwrap();
        let (mut w, len) = Writer::create_encoding(&b, &SnapshotMeta::default(), &state).unwrap();
        assert_eq!(len, bytes.len() as u64);
        w.record(QueueId(1), Seq(1), b"record").unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut r = Reader::open(File::open(&b).unwrap()).unwrap();
        let (_, read): (SnapshotMeta, Vec<(u64, String)>) = r.read_state().unwrap();
        assert_eq!(read, state);
        assert_eq!(r.next_record().unwrap(), Some((QueueId(1), Seq(1), b"record".to_vec())));
        assert_eq!(r.next_record().unwrap(), None);
    }

    /// The state is decoded from the file as it is read, with a scratch
    /// buffer far smaller than all its strings together.
    #[test]
    fn a_state_of_many_long_strings_is_decoded_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let state: Vec<String> = (0..4000u32).map(|i| format!("{i:0>256}")).collect();
        assert!(state.len() * 256 > 10 * STATE_SCRATCH_BYTES);
        let (w, _) = Writer::create_encoding(&path, &SnapshotMeta::default(), &state).unwrap();
        w.finish().unwrap();
        let mut r = Reader::open(File::open(&path).unwrap()).unwrap();
        let (_, read): (SnapshotMeta, Vec<String>) = r.read_state().unwrap();
        assert_eq!(read, state);
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn bytes_after_the_state_in_its_section_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        Writer::create(&path, &SnapshotMeta::default(), &bytes).unwrap().finish().unwrap();
        let mut r = Reader::open(File::open(&path).unwrap()).unwrap();
        let err = r.read_state::<u32>().unwrap_err();
        assert!(err.to_string().contains("1 bytes after the snapshot state"), "{err}");
    }

    #[test]
    fn records_read_back_and_a_flipped_byte_fails_a_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write_sample(&path);

        let mut r = Reader::open(File::open(&path).unwrap()).unwrap();
        assert!(r.next_record().is_err(), "records before the state");
        let (_, state): (SnapshotMeta, String) = r.read_state().unwrap();
        assert_eq!(state, "state bytes");
        let mut n = 0u64;
        while let Some((queue_id, seq, record)) = r.next_record().unwrap() {
            n += 1;
            assert_eq!((queue_id, seq), (QueueId(1 + n % 3), Seq(n)));
            assert_eq!(record, n.to_le_bytes().repeat(n as usize % 5));
        }
        assert_eq!(n, 1000);

        // A byte flipped in the meta, in the state, then in the records.
        let bytes = std::fs::read(&path).unwrap();
        let state_at = bytes.windows(11).position(|w| w == b"state bytes").unwrap();
        for at in [12, state_at + 3, bytes.len() / 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let read_all = || -> io::Result<()> {
                let mut r = Reader::open(File::open(&path)?)?;
                r.read_state::<String>()?;
                while r.next_record()?.is_some() {}
                Ok(())
            };
            assert!(read_all().is_err(), "corruption at byte {at} went unnoticed");
        }
    }
}
