//! Encoding of everything the node stores or sends between nodes (postcard),
//! and the layout of storage keys.

use std::io;

use quorumq_raft_state_machine::QueueId;
use quorumq_raft_state_machine::Seq;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::GroupId;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// [`encode`] for values made mostly of message bodies (log entries, Raft
/// messages carrying them): the buffer is sized exactly first.
pub fn encode_bodies<T: Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Appends the encoding of `value` to `buf`, after reserving its exact size:
/// one allocation instead of a buffer that doubles (copying what it holds,
/// and touching fresh pages, each time) while a log entry of a thousand
/// bodies is encoded. Sizing walks the value once more without copying
/// bodies: cheap for values made of bodies, as costly as the encoding
/// itself for values made of many small parts (the state machine's state),
/// which [`encode`] suits better.
/// On an error `buf` may hold part of the encoding after what it held.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> io::Result<()> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
    buf.reserve(postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).map_err(invalid)?);
    postcard::serialize_with_flavor(value, AppendTo(buf)).map_err(invalid)
}

/// A postcard output that appends to a `Vec` it borrows.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Keys of the `raft` tree: `[group u64 BE][kind][…]`, so that one group's
/// log is one contiguous, ordered range.
pub mod raft_keys {
    use super::GroupId;

    const LOG: u8 = b'l';
    const META: u8 = b'm';

    pub fn log(group: GroupId, index: u64) -> [u8; 17] {
        let mut key = [0u8; 17];
        key[..8].copy_from_slice(&group.to_be_bytes());
        key[8] = LOG;
        key[9..].copy_from_slice(&index.to_be_bytes());
        key
    }

    pub fn log_prefix(group: GroupId) -> [u8; 9] {
        let mut key = [0u8; 9];
        key[..8].copy_from_slice(&group.to_be_bytes());
        key[8] = LOG;
        key
    }

    pub fn log_index(key: &[u8]) -> u64 {
        assert_eq!(key.len(), 17, "log key length");
        u64::from_be_bytes(key[9..].try_into().expect("8 bytes"))
    }

    pub fn meta(group: GroupId, name: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(9 + name.len());
        key.extend_from_slice(&group.to_be_bytes());
        key.push(META);
        key.extend_from_slice(name.as_bytes());
        key
    }
}

/// Keys of the `messages` tree: `[group][queue id][seq]`, all big-endian, so
/// one queue's messages are one range in send order.
pub mod message_keys {
    use super::*;

    pub fn message(group: GroupId, queue: QueueId, seq: Seq) -> [u8; 24] {
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&group.to_be_bytes());
        key[8..16].copy_from_slice(&queue.0.to_be_bytes());
        key[16..].copy_from_slice(&seq.0.to_be_bytes());
        key
    }

    pub fn group_prefix(group: GroupId) -> [u8; 8] {
        group.to_be_bytes()
    }
}
