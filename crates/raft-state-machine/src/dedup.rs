//! The message ids a queue remembers for deduplication, in two flat
//! tables: a hash table from id to the seq it stood for, and the same ids
//! in expiry order (a deque: the window is the same for every id, so new
//! ids nearly always go at the back and expired ones leave from the front).
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

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::de::MapAccess;
use serde::de::SeqAccess;
use serde::de::Visitor;
use serde::ser::SerializeMap;
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

/// How far from the back of the expiry deque an insert looks for its place
/// before searching the whole deque.
const NEAR_BACK: usize = 64;

/// Below this many slots a table is never shrunk.
const SHRINK_MIN_CAPACITY: usize = 1024;

/// The remembered ids of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DedupIds {
    /// Id → the seq of the message it was sent as.
    seqs: Seqs,
    /// `(expires_at_ms, id)`, ascending.
    expiry: VecDeque<(u64, IdHash)>,
}

impl DedupIds {
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// The seq the id was sent as, while it is remembered.
    pub(crate) fn seq_of(&self, id: &IdHash) -> Option<u64> {
        self.seqs.get(id).copied()
    }

    /// When the first id expires.
    pub(crate) fn first_expiry(&self) -> Option<u64> {
        self.expiry.front().map(|&(at, _)| at)
    }

    /// Remembers `id` (not remembered yet) as `seq` until `expires_at_ms`.
    pub(crate) fn insert(&mut self, id: IdHash, seq: u64, expires_at_ms: u64) {
        debug_assert!(!self.seqs.contains_key(&id), "an id is remembered once");
        self.seqs.insert(id, seq);
        let key = (expires_at_ms, id);
        // Ids of one batch share their expiry and arrive in no id order,
        // so the place is usually a few entries from the back: look there
        // first (cache-friendly, no search of the whole deque).
        let len = self.expiry.len();
        let from_back = self.expiry.iter().rev().take(NEAR_BACK).take_while(|e| **e > key).count();
        let at = if from_back < NEAR_BACK || from_back == len {
            len - from_back
        } else {
            // The window was shortened since earlier ids were remembered.
            self.expiry.partition_point(|e| *e < key)
        };
        self.expiry.insert(at, key);
    }

    /// Forgets the id that expires first; returns when it expired.
    pub(crate) fn pop_first(&mut self) -> Option<u64> {
        let (at, id) = self.expiry.pop_front()?;
        self.seqs.remove(&id);
        self.shrink();
        Some(at)
    }

    pub(crate) fn clear(&mut self) {
        *self = DedupIds::default();
    }

    /// Every remembered id with its seq and expiry, in expiry order (for
    /// invariant checks).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (IdHash, Option<u64>, u64)> + '_ {
        self.expiry.iter().map(|&(at, id)| (id, self.seqs.get(&id).copied(), at))
    }

    /// Gives memory back once a table is mostly empty: at a quarter full it
    /// is cut to half, so the cost stays proportional to the removals.
    fn shrink(&mut self) {
        let len = self.expiry.len();
        if self.expiry.capacity() > SHRINK_MIN_CAPACITY && len * 4 < self.expiry.capacity() {
            self.expiry.shrink_to(len * 2);
        }
        if self.seqs.capacity() > SHRINK_MIN_CAPACITY && len * 4 < self.seqs.capacity() {
            self.seqs.shrink_to(len * 2);
        }
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
                let mut map = serializer.serialize_map(Some(self.0.expiry.len()))?;
                for (id, seq, expires_at_ms) in self.0.iter() {
                    let seq = seq.ok_or_else(|| serde::ser::Error::custom("a dedup id without its seq"))?;
                    map.serialize_entry(&id, &Entry { seq, expires_at_ms })?;
                }
                map.end()
            }
        }
        let mut pair = serializer.serialize_tuple(2)?;
        pair.serialize_element(&ById(self))?;
        pair.serialize_element(&self.expiry)?;
        pair.end()
    }
}

impl<'de> Deserialize<'de> for DedupIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DedupIds, D::Error> {
        /// The map of the snapshot format, keeping only the seqs.
        struct SeqsOnly(Seqs);
        impl<'de> Deserialize<'de> for SeqsOnly {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SeqsOnly, D::Error> {
                struct MapVisitor;
                impl<'de> Visitor<'de> for MapVisitor {
                    type Value = SeqsOnly;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a map of dedup entries")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<SeqsOnly, A::Error> {
                        let mut seqs = Seqs::with_capacity_and_hasher(
                            access.size_hint().unwrap_or(0).min(1 << 20),
                            Default::default(),
                        );
                        while let Some((id, entry)) = access.next_entry::<IdHash, Entry>()? {
                            seqs.insert(id, entry.seq);
                        }
                        Ok(SeqsOnly(seqs))
                    }
                }
                deserializer.deserialize_map(MapVisitor)
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
                let SeqsOnly(seqs) = access.next_element()?.ok_or_else(missing)?;
                let expiry: VecDeque<(u64, IdHash)> = access.next_element()?.ok_or_else(missing)?;
                Ok(DedupIds { seqs, expiry })
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
