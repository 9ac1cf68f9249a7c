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
