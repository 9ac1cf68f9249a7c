//! Compact in-memory forms of a queue's per-message structures (issue 6: at
//! most 64 bytes of RAM per queued message).
//!
//! - [`Messages`]: every live message's metadata by seq. A queued message
//!   that was never delivered, has no TTL of its own and entered the queue
//!   when it was sent (the bulk of any backlog) takes a 16-byte slot in a
//!   chunk of 16 consecutive seqs; any other message keeps its full
//!   [`MessageMeta`] in a side map. About 18 bytes per message for a dense
//!   backlog, instead of about 250 for a `BTreeMap<u64, MessageMeta>`.
//! - [`RunSet`]: a set of `u64` kept as runs of consecutive values, for
//!   indexes whose members are mostly consecutive (the ready messages of a
//!   standard queue, in delivery order).
//!
//! Both serialize exactly as the `BTreeMap<u64, MessageMeta>` and
//! `BTreeSet<(u8, u64)>` they replace, so snapshot files keep their format.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::de::MapAccess;
use serde::de::SeqAccess;
use serde::de::Visitor;
use serde::ser::SerializeMap;
use serde::ser::SerializeSeq;

use crate::state::MessageMeta;
use crate::state::MessageState;

const CHUNK_BITS: u32 = 4;
const CHUNK: usize = 1 << CHUNK_BITS;

/// `Slot::bits`: body bytes in the low 24 bits, then flags.
const SIZE_MASK: u32 = (1 << 24) - 1;
const DELAYED: u32 = 1 << 24;
const PRIORITY_SHIFT: u32 = 25;
const PRIORITY_MASK: u32 = 0xf;
/// The message's metadata is in `Messages::full`.
const FULL: u32 = 1 << 30;
const OCCUPIED: u32 = 1 << 31;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// `enqueued_at_ms - Chunk::base_ms`.
    enqueued: u32,
    /// Delayed: `visible_at_ms - Chunk::base_ms`.
    visible: u32,
    bits: u32,
    /// FIFO queues: the group id (ids start at 1); 0: none.
    group: u32,
}

#[derive(Clone)]
struct Chunk {
    /// The entry time of the first message put into the chunk: the times in
    /// its slots count from here.
    base_ms: u64,
    live: u16,
    slots: [Slot; CHUNK],
}

/// Every live message of a queue, by seq.
///
/// Chunks are shared copy-on-write: a clone (a checkpoint's capture, taken
/// in the state machine's task) copies the map of chunk pointers, not the
/// slots (about 1 byte a message instead of 17), and a chunk is copied only
/// when it is changed while a clone still holds it.
#[derive(Clone, Default)]
pub struct Messages {
    chunks: BTreeMap<u64, Arc<Chunk>>,
    /// Messages whose metadata does not fit a slot.
    full: BTreeMap<u64, MessageMeta>,
    len: usize,
}

fn split(seq: u64) -> (u64, usize) {
    (seq >> CHUNK_BITS, (seq as usize) & (CHUNK - 1))
}

/// The slot form of `meta` in a chunk with `base_ms`, if it has one.
fn compact(meta: &MessageMeta, base_ms: u64) -> Option<Slot> {
    let rel = |at: u64| at.checked_sub(base_ms).and_then(|d| u32::try_from(d).ok());
    let plain = meta.receive_count == 0
        && meta.first_received_at_ms == 0
        && meta.expires_at_ms.is_none()
        && meta.source_queue.is_none()
        && meta.sent_at_ms == meta.enqueued_at_ms
        && meta.body_bytes <= SIZE_MASK
        && (meta.priority as u32) <= PRIORITY_MASK
        && meta.group != Some(0);
    if !plain {
        return None;
    }
    let enqueued = rel(meta.enqueued_at_ms)?;
    let (visible, delayed) = match meta.state {
        MessageState::Ready => (0, 0),
        MessageState::Delayed { visible_at_ms } => (rel(visible_at_ms)?, DELAYED),
        MessageState::InFlight { .. } => return None,
    };
    let bits = meta.body_bytes | delayed | (meta.priority as u32) << PRIORITY_SHIFT | OCCUPIED;
    Some(Slot { enqueued, visible, bits, group: meta.group.unwrap_or(0) })
}

fn expand(slot: &Slot, base_ms: u64) -> MessageMeta {
    let enqueued_at_ms = base_ms + slot.enqueued as u64;
    MessageMeta {
        state: if slot.bits & DELAYED != 0 {
            MessageState::Delayed { visible_at_ms: base_ms + slot.visible as u64 }
        } else {
            MessageState::Ready
        },
        receive_count: 0,
        priority: ((slot.bits >> PRIORITY_SHIFT) & PRIORITY_MASK) as u8,
        group: (slot.group != 0).then_some(slot.group),
        body_bytes: slot.bits & SIZE_MASK,
        sent_at_ms: enqueued_at_ms,
        enqueued_at_ms,
        first_received_at_ms: 0,
        expires_at_ms: None,
        source_queue: None,
    }
}

impl Messages {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, seq: u64) -> Option<MessageMeta> {
        let (key, i) = split(seq);
        let chunk = self.chunks.get(&key)?;
        let slot = &chunk.slots[i];
        if slot.bits & OCCUPIED == 0 {
            None
        } else if slot.bits & FULL != 0 {
            self.full.get(&seq).copied()
        } else {
            Some(expand(slot, chunk.base_ms))
        }
    }

    /// Adds or replaces the metadata of `seq`.
    pub fn insert(&mut self, seq: u64, meta: MessageMeta) {
        let (key, i) = split(seq);
        let chunk = Arc::make_mut(self.chunks.entry(key).or_insert_with(|| {
            Arc::new(Chunk { base_ms: meta.enqueued_at_ms, live: 0, slots: [Slot::default(); CHUNK] })
        }));
        let slot = &mut chunk.slots[i];
        if slot.bits & OCCUPIED == 0 {
            chunk.live += 1;
            self.len += 1;
        } else if slot.bits & FULL != 0 {
            self.full.remove(&seq);
        }
        *slot = match compact(&meta, chunk.base_ms) {
            Some(compact) => compact,
            None => {
                self.full.insert(seq, meta);
                Slot { bits: OCCUPIED | FULL, ..Slot::default() }
            }
        };
    }

    /// Changes the metadata of an existing message; returns the new value.
    pub fn update(&mut self, seq: u64, f: impl FnOnce(&mut MessageMeta)) -> MessageMeta {
        let mut meta = self.get(seq).expect("message exists");
        f(&mut meta);
        self.insert(seq, meta);
        meta
    }

    pub fn remove(&mut self, seq: u64) -> Option<MessageMeta> {
        let meta = self.get(seq)?;
        let (key, i) = split(seq);
        let chunk = self.chunks.get_mut(&key).expect("chunk of a live message");
        if chunk.slots[i].bits & FULL != 0 {
            self.full.remove(&seq);
        }
        if chunk.live == 1 {
            // The last message of the chunk: drop it without copying it.
            self.chunks.remove(&key);
        } else {
            let chunk = Arc::make_mut(chunk);
            chunk.slots[i] = Slot::default();
            chunk.live -= 1;
        }
        self.len -= 1;
        Some(meta)
    }

    pub fn clear(&mut self) {
        *self = Messages::default();
    }

    /// Every message in seq order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, MessageMeta)> + '_ {
        self.chunks.iter().flat_map(move |(&key, chunk)| {
            chunk.slots.iter().enumerate().filter(|(_, s)| s.bits & OCCUPIED != 0).map(move |(i, slot)| {
                let seq = key << CHUNK_BITS | i as u64;
                let meta = if slot.bits & FULL != 0 { self.full[&seq] } else { expand(slot, chunk.base_ms) };
                (seq, meta)
            })
        })
    }

    pub fn values(&self) -> impl Iterator<Item = MessageMeta> + '_ {
        self.iter().map(|(_, meta)| meta)
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|(&key, chunk)| {
            chunk
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.bits & OCCUPIED != 0)
                .map(move |(i, _)| key << CHUNK_BITS | i as u64)
        })
    }

    pub fn first(&self) -> Option<(u64, MessageMeta)> {
        self.iter().next()
    }
}

/// Equal when they hold the same messages (however they are laid out).
impl PartialEq for Messages {
    fn eq(&self, other: &Messages) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Messages {}

impl fmt::Debug for Messages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Messages {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (seq, meta) in self.iter() {
            map.serialize_entry(&seq, &meta)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Messages, D::Error> {
        struct MessagesVisitor;
        impl<'de> Visitor<'de> for MessagesVisitor {
            type Value = Messages;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of seq to message metadata")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Messages, A::Error> {
                let mut messages = Messages::default();
                while let Some((seq, meta)) = access.next_entry::<u64, MessageMeta>()? {
                    messages.insert(seq, meta);
                }
                Ok(messages)
            }
        }
        deserializer.deserialize_map(MessagesVisitor)
    }
}

/// A set of `u64` held as runs of consecutive values: `start → end`
/// (exclusive). Costs one map entry per run, so a million consecutive
/// values cost a few bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RunSet {
    runs: BTreeMap<u64, u64>,
    len: u64,
}

impl RunSet {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        *self = RunSet::default();
    }

    pub fn first(&self) -> Option<u64> {
        self.runs.first_key_value().map(|(&start, _)| start)
    }

    /// The run holding `value`, if one does.
    fn run_of(&self, value: u64) -> Option<(u64, u64)> {
        self.runs.range(..=value).next_back().map(|(&s, &e)| (s, e)).filter(|&(_, end)| value < end)
    }

    pub fn contains(&self, value: u64) -> bool {
        self.run_of(value).is_some()
    }

    /// Adds `value`; false if it was there.
    pub fn insert(&mut self, value: u64) -> bool {
        assert!(value < u64::MAX, "u64::MAX cannot be in a run set");
        if self.contains(value) {
            return false;
        }
        // Joins the run ending just below it and the one starting just above.
        let below = self.runs.range(..value).next_back().map(|(&s, &e)| (s, e)).filter(|&(_, end)| end == value);
        let above = self.runs.remove(&(value + 1));
        match (below, above) {
            (Some((start, _)), Some(end)) => self.runs.insert(start, end),
            (Some((start, _)), None) => self.runs.insert(start, value + 1),
            (None, Some(end)) => self.runs.insert(value, end),
            (None, None) => self.runs.insert(value, value + 1),
        };
        self.len += 1;
        true
    }

    /// Removes `value`; false if it was not there.
    pub fn remove(&mut self, value: u64) -> bool {
        let Some((start, end)) = self.run_of(value) else { return false };
        if start == value {
            self.runs.remove(&start);
        } else {
            self.runs.insert(start, value);
        }
        if value + 1 < end {
            self.runs.insert(value + 1, end);
        }
        self.len -= 1;
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|(&start, &end)| start..end)
    }
}

impl fmt::Debug for RunSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.runs.iter().map(|(s, e)| s..e)).finish()
    }
}

/// A standard queue's ready messages in delivery order, `(9 - priority,
/// seq)`, as a [`RunSet`] of `rank << 60 | seq`.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct ReadySet(RunSet);

const RANK_SHIFT: u32 = 60;

fn ready_key(rank: u8, seq: u64) -> u64 {
    assert!(seq < 1 << RANK_SHIFT && rank < 16, "seq below 2^60, rank below 16");
    (rank as u64) << RANK_SHIFT | seq
}

fn ready_entry(key: u64) -> (u8, u64) {
    ((key >> RANK_SHIFT) as u8, key & ((1 << RANK_SHIFT) - 1))
}

impl ReadySet {
    pub fn len(&self) -> usize {
        self.0.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn insert(&mut self, (rank, seq): (u8, u64)) -> bool {
        self.0.insert(ready_key(rank, seq))
    }

    pub fn remove(&mut self, &(rank, seq): &(u8, u64)) -> bool {
        self.0.remove(ready_key(rank, seq))
    }

    pub fn contains(&self, &(rank, seq): &(u8, u64)) -> bool {
        self.0.contains(ready_key(rank, seq))
    }

    pub fn first(&self) -> Option<(u8, u64)> {
        self.0.first().map(ready_entry)
    }
}

impl Serialize for ReadySet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for key in self.0.iter() {
            seq.serialize_element(&ready_entry(key))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ReadySet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReadySet, D::Error> {
        struct ReadyVisitor;
        impl<'de> Visitor<'de> for ReadyVisitor {
            type Value = ReadySet;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of (rank, seq)")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<ReadySet, A::Error> {
                let mut set = ReadySet::default();
                while let Some((rank, seq)) = access.next_element::<(u8, u64)>()? {
                    if seq >= 1 << RANK_SHIFT || rank >= 16 {
                        return Err(serde::de::Error::custom("ready entry out of range"));
                    }
                    set.insert((rank, seq));
                }
                Ok(set)
            }
        }
        deserializer.deserialize_seq(ReadyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::types::QueueId;

    fn meta(enqueued_at_ms: u64) -> MessageMeta {
        MessageMeta {
            state: MessageState::Ready,
            receive_count: 0,
            priority: 0,
            group: None,
            body_bytes: 1024,
            sent_at_ms: enqueued_at_ms,
            enqueued_at_ms,
            first_received_at_ms: 0,
            expires_at_ms: None,
            source_queue: None,
        }
    }

    /// Every kind of metadata reads back as written, compact or not, and
    /// the layout does not show in equality or serialization.
    #[test]
    fn messages_read_back_what_was_written() {
        let t = 1_800_000_000_000;
        let cases = [
            meta(t),
            MessageMeta { state: MessageState::Delayed { visible_at_ms: t + 60_000 }, priority: 9, ..meta(t) },
            MessageMeta { group: Some(7), body_bytes: (1 << 24) - 1, ..meta(t + 5) },
            MessageMeta { body_bytes: 1 << 24, ..meta(t) },
            MessageMeta { group: Some(0), ..meta(t) },
            MessageMeta { priority: 16, ..meta(t) },
            MessageMeta {
                state: MessageState::InFlight { deadline_ms: t + 30_000, received_at_ms: t + 1 },
                receive_count: 1,
                first_received_at_ms: t + 1,
                ..meta(t)
            },
            MessageMeta { receive_count: 3, ..meta(t) },
            MessageMeta { expires_at_ms: Some(t + 10), ..meta(t) },
            MessageMeta { source_queue: Some(QueueId(2)), sent_at_ms: t - 5, ..meta(t) },
            // Too far from the chunk's base for 32 bits, either way.
            meta(t + (1 << 33)),
            meta(t - 1),
            MessageMeta { state: MessageState::Delayed { visible_at_ms: t - 1 }, ..meta(t) },
        ];
        let mut messages = Messages::default();
        let mut reference = BTreeMap::new();
        for (i, m) in cases.iter().enumerate() {
            let seq = 3 + i as u64 * 3;
            messages.insert(seq, *m);
            reference.insert(seq, *m);
        }
        let check = |messages: &Messages, reference: &BTreeMap<u64, MessageMeta>| {
            assert_eq!(messages.len(), reference.len());
            assert_eq!(
                messages.iter().collect::<Vec<_>>(),
                reference.iter().map(|(&s, &m)| (s, m)).collect::<Vec<_>>()
            );
            for seq in 0..60 {
                assert_eq!(messages.get(seq), reference.get(&seq).copied(), "seq {seq}");
            }
            let bytes = postcard::to_allocvec(messages).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(reference).unwrap());
            assert_eq!(&postcard::from_bytes::<Messages>(&bytes).unwrap(), messages);
        };
        check(&messages, &reference);
        // A clone (a checkpoint's capture) shares the chunks and keeps what
        // it saw while the original changes below.
        let (captured, captured_reference) = (messages.clone(), reference.clone());
        // Replacing moves messages between the two forms.
        for seq in [3, 6, 21, 24] {
            let updated = messages.update(seq, |m| {
                m.receive_count = 2;
                m.first_received_at_ms = t + 2;
            });
            reference.insert(seq, updated);
        }
        messages.update(24, |m| *m = meta(t + 7));
        reference.insert(24, meta(t + 7));
        check(&messages, &reference);
        for seq in [3, 9, 12, 33, 39, 40] {
            assert_eq!(messages.remove(seq), reference.remove(&seq));
        }
        check(&messages, &reference);
        let seqs: Vec<u64> = reference.keys().copied().collect();
        for seq in seqs {
            assert_eq!(messages.remove(seq), reference.remove(&seq));
        }
        check(&messages, &reference);
        assert!(messages.chunks.is_empty() && messages.full.is_empty());
        check(&captured, &captured_reference);
    }

    #[test]
    fn run_sets_are_sets() {
        let mut set = RunSet::default();
        let mut reference = BTreeSet::new();
        // A deterministic scramble of inserts and removes over a small range.
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let value = (x >> 33) % 200;
            if (x >> 20).is_multiple_of(3) {
                assert_eq!(set.remove(value), reference.remove(&value));
            } else {
                assert_eq!(set.insert(value), reference.insert(value));
            }
            assert_eq!(set.len(), reference.len() as u64);
            assert_eq!(set.first(), reference.first().copied());
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), reference.iter().copied().collect::<Vec<_>>());
        // Runs are maximal: no two touch.
        let runs: Vec<(u64, u64)> = set.runs.iter().map(|(&s, &e)| (s, e)).collect();
        assert!(runs.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(runs.iter().all(|&(s, e)| s < e));
    }

    #[test]
    fn ready_sets_serialize_as_the_set_they_replace() {
        let entries: BTreeSet<(u8, u64)> = [(0, 5), (0, 6), (0, 7), (3, 1), (3, 9), (9, 2), (9, 3)].into();
        let mut ready = ReadySet::default();
        for &e in entries.iter().rev() {
            ready.insert(e);
        }
        assert_eq!(ready.first(), entries.first().copied());
        let bytes = postcard::to_allocvec(&ready).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&entries).unwrap());
        assert_eq!(postcard::from_bytes::<ReadySet>(&bytes).unwrap(), ready);
    }
}
