//! The message ids a queue remembers for deduplication, in two tables: a
//! hash table from id to the seq it stood for, and the same ids with their
//! seqs in expiry order (a deque of 1,024-id blocks: the window is the same
//! for every id, so new ids nearly always go at the back and expired ones
//! leave from the front). The blocks are shared copy-on-write with the copy
//! a checkpoint encodes, which needs no hash table (see
//! [`DedupIds::for_encoding`]).
//!
//! This replaced a `BTreeMap` and a `BTreeSet` of the same content. Those
//! cost about 90 bytes per id, like these, but in many small tree nodes
//! allocated among the nodes of everything else: when the window passed and
//! a million ids were forgotten, a node's RSS did not fall, because nearly
//! every memory page still held some live allocation (BENCHMARKS.md). Two
//! large tables shrink as they empty, and the allocator returns large
//! blocks to the system.
//!
//! Snapshots keep their format: the pair serializes exactly as the map and
//! the set did (a map from id to `{seq, expires_at_ms}`, then the sequence of
//! `(expires_at_ms, id)`), the map in expiry order rather than id order,
//! which deserializing does not depend on.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::hash::Hasher;
use std::sync::Arc;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::de::DeserializeSeed;
use serde::de::MapAccess;
use serde::de::SeqAccess;
use serde::de::Visitor;
use serde::ser::SerializeMap;
use serde::ser::SerializeSeq;
use serde::ser::SerializeTuple;

/// 16 bytes of SHA-256 of a producer's message id (or of a body, for
/// content-based deduplication): fixed size, and the same on every node.
pub(crate) type IdHash = [u8; 16];

/// Hashes an [`IdHash`] by its first 8 bytes: they are already uniformly
/// spread (SHA-256), and a fixed hash keeps the state machine free of
/// randomness.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
    }

    // The length prefix of the 16-byte array: the same for every key.
    fn write_usize(&mut self, _: usize) {}
}

type Seqs = HashMap<IdHash, u64, BuildHasherDefault<IdHasher>>;

/// How far from the back of a block an insert looks for its place before
/// searching the block.
const NEAR_BACK: usize = 64;

/// Below this many slots a table is never shrunk.
const SHRINK_MIN_CAPACITY: usize = 1024;

/// Ids in one block of the expiry deque (32 KiB).
const BLOCK: usize = 1024;

/// One remembered id in expiry order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Due {
    at: u64,
    id: IdHash,
    seq: u64,
}

impl Due {
    fn key(&self) -> (u64, IdHash) {
        (self.at, self.id)
    }
}

/// The ids in `(expires_at_ms, id)` order, in blocks of at most [`BLOCK`]
/// shared copy-on-write: a clone copies the block pointers, and a block is
/// copied only when it changes while a clone holds it (the back one as ids
/// arrive, the front one as they expire).
#[derive(Clone, Default)]
struct Expiry {
    blocks: VecDeque<Arc<VecDeque<Due>>>,
    len: usize,
}

impl Expiry {
    fn front(&self) -> Option<&Due> {
        self.blocks.front().and_then(|b| b.front())
    }

    fn back(&self) -> Option<&Due> {
        self.blocks.back().and_then(|b| b.back())
    }

    fn iter(&self) -> impl Iterator<Item = &Due> + '_ {
        self.blocks.iter().flat_map(|b| b.iter())
    }

    fn pop_front(&mut self) -> Option<Due> {
        let block = self.blocks.front_mut()?;
        let due = if block.len() == 1 {
            let due = block[0];
            self.blocks.pop_front();
            due
        } else {
            Arc::make_mut(block).pop_front().expect("blocks are never empty")
        };
        self.len -= 1;
        Some(due)
    }

    fn push_back(&mut self, due: Due) {
        match self.blocks.back_mut() {
            Some(block) if block.len() < BLOCK => Arc::make_mut(block).push_back(due),
            _ => self.blocks.push_back(Arc::new(VecDeque::from([due]))),
        }
        self.len += 1;
    }

    /// Inserts `due` after every id that is due before it.
    fn insert(&mut self, due: Due) {
        let key = due.key();
        // Ids of one batch share their expiry and arrive in no id order, so
        // the place is nearly always in the last block, a few ids from its
        // back: look there first (no search of the whole deque).
        let b = match self.blocks.back() {
            None => return self.push_back(due),
            Some(last) if last.back().expect("not empty").key() <= key => return self.push_back(due),
            Some(last) if last.front().expect("not empty").key() <= key => self.blocks.len() - 1,
            // The window was shortened since earlier ids were remembered.
            Some(_) => self.blocks.partition_point(|b| b.front().expect("not empty").key() <= key).saturating_sub(1),
        };
        let block = &self.blocks[b];
        let from_back = block.iter().rev().take(NEAR_BACK).take_while(|d| d.key() > key).count();
        let at =
            if from_back < NEAR_BACK { block.len() - from_back } else { block.partition_point(|d| d.key() <= key) };
        if at == 0 {
            // Before every id (only in the first block): a block of its own.
            self.blocks.insert(b, Arc::new(VecDeque::from([due])));
        } else if block.len() < BLOCK {
            Arc::make_mut(&mut self.blocks[b]).insert(at, due);
        } else if self.blocks.get(b + 1).is_some_and(|next| next.len() < BLOCK) {
            // A full block, with room in the next one: its last id moves
            // over (or `due`, if it goes last).
            let moved = if at == block.len() {
                due
            } else {
                let block = Arc::make_mut(&mut self.blocks[b]);
                let last = block.pop_back().expect("not empty");
                block.insert(at, due);
                last
            };
            Arc::make_mut(&mut self.blocks[b + 1]).push_front(moved);
        } else {
            // Full, and so is the next block if there is one: split. The
            // last block is split where `due` goes, which is where the rest
            // of its batch goes too, so it stays full and the new last block
            // fills as ids arrive; any other block in half.
            let cut = if b + 1 == self.blocks.len() { at } else { BLOCK / 2 };
            let block = Arc::make_mut(&mut self.blocks[b]);
            // Capacities stay powers of two up to BLOCK as blocks grow.
            let mut tail = VecDeque::with_capacity((block.len() - cut + 1).next_power_of_two());
            tail.extend(block.drain(cut..));
            if at < cut {
                block.insert(at, due);
            } else {
                tail.insert(at - cut, due);
            }
            self.blocks.insert(b + 1, Arc::new(tail));
        }
        self.len += 1;
    }

    /// Slots allocated for ids.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.blocks.iter().map(|b| b.capacity()).sum()
    }
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Expiry) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Expiry {}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The remembered ids of one queue.
///
/// A checkpoint captures a queue's state in the state machine's task, which
/// every apply waits for: [`DedupIds::for_encoding`] gives it the expiry
/// deque (which carries each id's seq, all that encoding needs) sharing
/// its blocks, and no copy of the hash table; the table is behind an `Arc`
/// only so that a plain clone stays cheap as well.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DedupIds {
    /// Id → the seq of the message it was sent as.
    seqs: Arc<Seqs>,
    /// The same ids with their seqs, ascending by `(expires_at_ms, id)`.
    expiry: Expiry,
}

impl DedupIds {
    pub(crate) fn len(&self) -> usize {
        self.expiry.len
    }

    /// The seq the id was sent as, while it is remembered.
    pub(crate) fn seq_of(&self, id: &IdHash) -> Option<u64> {
        self.seqs.get(id).copied()
    }

    /// When the first id expires.
    pub(crate) fn first_expiry(&self) -> Option<u64> {
        self.expiry.front().map(|d| d.at)
    }

    /// Remembers `id` (not remembered yet) as `seq` until `expires_at_ms`.
    pub(crate) fn insert(&mut self, id: IdHash, seq: u64, expires_at_ms: u64) {
        debug_assert!(!self.seqs.contains_key(&id), "an id is remembered once");
        Arc::make_mut(&mut self.seqs).insert(id, seq);
        self.expiry.insert(Due { at: expires_at_ms, id, seq });
    }

    /// Forgets the id that expires first; returns when it expired.
    pub(crate) fn pop_first(&mut self) -> Option<u64> {
        let due = self.expiry.pop_front()?;
        let seqs = Arc::make_mut(&mut self.seqs);
        seqs.remove(&due.id);
        if seqs.capacity() > SHRINK_MIN_CAPACITY && seqs.len() * 4 < seqs.capacity() {
            // Gives memory back once the table is mostly empty: at a
            // quarter full it is cut to half, so the cost stays
            // proportional to the removals.
            seqs.shrink_to(seqs.len() * 2);
        }
        Some(due.at)
    }

    pub(crate) fn clear(&mut self) {
        *self = DedupIds::default();
    }

    /// A copy that serializes exactly as this one, for a checkpoint or a
    /// snapshot to encode: it shares the expiry blocks and has no lookup
    /// table, so it must not be used for anything but serializing.
    pub(crate) fn for_encoding(&self) -> DedupIds {
        DedupIds { seqs: Arc::default(), expiry: self.expiry.clone() }
    }

    /// Every remembered id with its seq and expiry, in expiry order (for
    /// invariant checks): the seq is `None` when the lookup table does not
    /// hold the id with the seq the expiry deque has.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (IdHash, Option<u64>, u64)> + '_ {
        self.expiry.iter().map(|d| (d.id, self.seqs.get(&d.id).copied().filter(|&s| s == d.seq), d.at))
    }
}

/// The value of the map in the snapshot format.
#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(PartialEq, Debug))]
struct Entry {
    seq: u64,
    expires_at_ms: u64,
}

impl Serialize for DedupIds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct ById<'a>(&'a DedupIds);
        impl Serialize for ById<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for due in self.0.expiry.iter() {
                    map.serialize_entry(&due.id, &Entry { seq: due.seq, expires_at_ms: due.at })?;
                }
                map.end()
            }
        }
        /// The expiry set of the snapshot format: `(expires_at_ms, id)`.
        struct ByExpiry<'a>(&'a Expiry);
        impl Serialize for ByExpiry<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len))?;
                for due in self.0.iter() {
                    seq.serialize_element(&(due.at, due.id))?;
                }
                seq.end()
            }
        }
        let mut pair = serializer.serialize_tuple(2)?;
        pair.serialize_element(&ById(self))?;
        pair.serialize_element(&ByExpiry(&self.expiry))?;
        pair.end()
    }
}

impl<'de> Deserialize<'de> for DedupIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DedupIds, D::Error> {
        /// The map of the snapshot format: the seqs, and the expiry order
        /// too when the map comes in that order (as written since the
        /// expiry blocks carry seqs; a map written in id order by an older
        /// version leaves it to the expiry set, at a hash lookup per id).
        struct MapPass {
            seqs: Seqs,
            expiry: Option<Expiry>,
        }
        impl<'de> Deserialize<'de> for MapPass {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MapPass, D::Error> {
                struct MapVisitor;
                impl<'de> Visitor<'de> for MapVisitor {
                    type Value = MapPass;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a map of dedup entries")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<MapPass, A::Error> {
                        // Sized once (no table left behind by growing:
                        // the allocator may keep it), but never beyond what
                        // a queue can remember, whatever the length says.
                        let mut seqs = Seqs::with_capacity_and_hasher(
                            access.size_hint().unwrap_or(0).min(crate::limits::DEDUP_ENTRIES_PER_QUEUE_MAX),
                            Default::default(),
                        );
                        let mut expiry = Some(Expiry::default());
                        while let Some((id, entry)) = access.next_entry::<IdHash, Entry>()? {
                            if seqs.insert(id, entry.seq).is_some() {
                                return Err(serde::de::Error::custom("dedup ids: an id twice in the map"));
                            }
                            let due = Due { at: entry.expires_at_ms, id, seq: entry.seq };
                            if let Some(built) = &mut expiry {
                                if built.back().is_some_and(|last| last.key() >= due.key()) {
                                    expiry = None;
                                } else {
                                    built.push_back(due);
                                }
                            }
                        }
                        Ok(MapPass { seqs, expiry })
                    }
                }
                deserializer.deserialize_map(MapVisitor)
            }
        }
        /// The expiry set of the snapshot format: checked against the
        /// order the map gave, or else each id given the seq the map holds
        /// for it.
        struct ExpiryOf<'a> {
            seqs: &'a Seqs,
            built: Option<Expiry>,
        }
        impl<'de> DeserializeSeed<'de> for ExpiryOf<'_> {
            type Value = Expiry;
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Expiry, D::Error> {
                deserializer.deserialize_seq(self)
            }
        }
        impl<'de> Visitor<'de> for ExpiryOf<'_> {
            type Value = Expiry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of (expires_at_ms, id)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Expiry, A::Error> {
                if let Some(built) = self.built {
                    let differs = || serde::de::Error::custom("dedup ids: the expiry set differs from the map");
                    {
                        let mut expected = built.iter();
                        while let Some(key) = access.next_element::<(u64, IdHash)>()? {
                            if expected.next().map(Due::key) != Some(key) {
                                return Err(differs());
                            }
                        }
                        if expected.next().is_some() {
                            return Err(differs());
                        }
                    }
                    return Ok(built);
                }
                let mut expiry = Expiry::default();
                while let Some((at, id)) = access.next_element::<(u64, IdHash)>()? {
                    let seq = *self
                        .seqs
                        .get(&id)
                        .ok_or_else(|| serde::de::Error::custom("dedup ids: an expiry entry without its id"))?;
                    if expiry.back().is_some_and(|d| d.key() >= (at, id)) {
                        return Err(serde::de::Error::custom("dedup ids: the expiry set is out of order"));
                    }
                    expiry.push_back(Due { at, id, seq });
                }
                Ok(expiry)
            }
        }
        struct PairVisitor;
        impl<'de> Visitor<'de> for PairVisitor {
            type Value = DedupIds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("dedup ids and their expiry index")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<DedupIds, A::Error> {
                let missing = || serde::de::Error::custom("dedup ids: missing part");
                let MapPass { seqs, expiry: built } = access.next_element()?.ok_or_else(missing)?;
                let expiry = access.next_element_seed(ExpiryOf { seqs: &seqs, built })?.ok_or_else(missing)?;
                if expiry.len != seqs.len() {
                    return Err(serde::de::Error::custom("dedup ids: the map and the expiry set differ in size"));
                }
                Ok(DedupIds { seqs: Arc::new(seqs), expiry })
            }
        }
        deserializer.deserialize_tuple(2, PairVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use super::*;

    fn id(n: u8) -> IdHash {
        [n; 16]
    }

    /// The old representation, field for field.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Old {
        dedup: BTreeMap<IdHash, Entry>,
        dedup_expiry: BTreeSet<(u64, IdHash)>,
    }

    #[test]
    fn keeps_expiry_order_when_the_window_shrinks_and_reads_the_old_format() {
        let mut ids = DedupIds::default();
        ids.insert(id(3), 1, 500);
        ids.insert(id(1), 2, 500);
        ids.insert(id(2), 3, 900);
        // A shorter window: expires before the last one.
        ids.insert(id(9), 4, 600);
        let order: Vec<(IdHash, Option<u64>, u64)> = ids.iter().collect();
        assert_eq!(
            order,
            vec![(id(1), Some(2), 500), (id(3), Some(1), 500), (id(9), Some(4), 600), (id(2), Some(3), 900)]
        );

        // Written the new way, read the old way, and back.
        let bytes = postcard::to_stdvec(&ids).unwrap();
        let old: Old = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old.dedup.len(), 4);
        assert_eq!(old.dedup[&id(9)], Entry { seq: 4, expires_at_ms: 600 });
        assert_eq!(old.dedup_expiry.first(), Some(&(500, id(1))));
        let old_bytes = postcard::to_stdvec(&old).unwrap();
        let back: DedupIds = postcard::from_bytes(&old_bytes).unwrap();
        assert_eq!(back, ids);

        assert_eq!(ids.pop_first(), Some(500));
        assert_eq!(ids.seq_of(&id(1)), None);
        assert_eq!(ids.seq_of(&id(3)), Some(1));
        assert_eq!(ids.first_expiry(), Some(500));
    }

    #[test]
    fn inserts_near_the_back_and_far_from_it_keep_the_order_of_a_sorted_set() {
        // Batches of ids sharing an expiry, in scrambled id order, some runs
        // longer than the look-back, and now and then an earlier expiry.
        let mut ids = DedupIds::default();
        let mut model = BTreeSet::new();
        let mut n = 0u64;
        for batch in 0..40u64 {
            let expires = if batch % 7 == 6 { 1000 + (batch - 3) * 10 } else { 1000 + batch * 10 };
            for _ in 0..(batch * 5 % 150) {
                n += 1;
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
                ids.insert(key, n, expires);
                model.insert((expires, key));
            }
        }
        let got: Vec<(u64, IdHash)> = ids.iter().map(|(id, _, at)| (at, id)).collect();
        let want: Vec<(u64, IdHash)> = model.into_iter().collect();
        assert_eq!(got, want);
    }

    /// The map, written in expiry order, gives the order; an expiry set
    /// that disagrees with it, or an id twice in the map, is refused.
    #[test]
    fn a_map_and_an_expiry_set_that_disagree_are_refused() {
        let entry = |seq, expires_at_ms| Entry { seq, expires_at_ms };
        let entries = vec![(id(1), entry(1, 500)), (id(2), entry(2, 600))];
        let good = postcard::to_stdvec(&(&entries, vec![(500u64, id(1)), (600u64, id(2))])).unwrap();
        let ids: DedupIds = postcard::from_bytes(&good).unwrap();
        assert_eq!((ids.len(), ids.seq_of(&id(2)), ids.first_expiry()), (2, Some(2), Some(500)));
        assert_eq!(postcard::to_stdvec(&ids).unwrap(), good);
        let bad_sets =
            [vec![(500u64, id(1))], vec![(500, id(1)), (601, id(2))], vec![(500, id(1)), (600, id(2)), (700, id(3))]];
        for expiry in bad_sets {
            let bytes = postcard::to_stdvec(&(&entries, &expiry)).unwrap();
            assert!(postcard::from_bytes::<DedupIds>(&bytes).is_err(), "{expiry:?}");
        }
        let twice = vec![(id(1), entry(1, 500)), (id(1), entry(2, 600))];
        let bytes = postcard::to_stdvec(&(&twice, vec![(500u64, id(1)), (600u64, id(1))])).unwrap();
        assert!(postcard::from_bytes::<DedupIds>(&bytes).is_err());
    }

    /// A copy for encoding shares the expiry blocks, encodes as the ids did
    /// when it was taken while they change after it, and blocks split near
    /// the back stay nearly full.
    #[test]
    fn a_copy_for_encoding_keeps_what_it_saw() {
        let key = |n: u64| {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            key
        };
        let mut ids = DedupIds::default();
        let mut copies = Vec::new();
        for n in 0..20_000u64 {
            if n % 3_000 == 1_500 {
                copies.push((ids.for_encoding(), postcard::to_stdvec(&ids).unwrap()));
            }
            // Batches of 50 sharing an expiry, some forgotten as they go.
            ids.insert(key(n), n + 1, 1_000 + n / 50);
            if n % 4 == 0 {
                ids.pop_first();
            }
        }
        for (copy, bytes) in copies {
            assert_eq!(postcard::to_stdvec(&copy).unwrap(), bytes);
        }
        assert!(ids.iter().all(|(_, seq, _)| seq.is_some()));
        let round_trip: DedupIds = postcard::from_bytes(&postcard::to_stdvec(&ids).unwrap()).unwrap();
        assert_eq!(round_trip, ids);
        let sizes: Vec<usize> = ids.expiry.blocks.iter().map(|b| b.len()).collect();
        assert!(sizes.len() * BLOCK * 9 / 10 <= ids.len() + BLOCK, "block sizes {sizes:?}");
        assert!(ids.expiry.capacity() <= ids.len() * 5 / 4 + 2 * BLOCK, "capacity {}", ids.expiry.capacity());
    }

    #[test]
    fn tables_shrink_as_they_empty() {
        let mut ids = DedupIds::default();
        for n in 0..100_000u64 {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&n.to_le_bytes());
            ids.insert(key, n + 1, n);
        }
        let full = (ids.seqs.capacity(), ids.expiry.capacity());
        while ids.len() > 10 {
            ids.pop_first();
        }
        assert!(ids.seqs.capacity() < full.0 / 20, "{} of {}", ids.seqs.capacity(), full.0);
        assert!(ids.expiry.capacity() < full.1 / 20, "{} of {}", ids.expiry.capacity(), full.1);
        assert_eq!(ids.first_expiry(), Some(99_990));
    }
}
