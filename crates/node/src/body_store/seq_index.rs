//! One queue's part of the body index: seq -> location, in chunks of 64
//! consecutive seqs. A queue's seqs are consecutive and mostly acked in
//! order, so a dense chunk is an array of 64 locations (12 bytes a message)
//! instead of a hash-map entry (by arithmetic up to about 50 bytes a
//! message once the map's spare capacity is counted). A chunk with few live seqs left (messages
//! stuck in flight, delayed, or acked out of order) is a short sorted list,
//! so a scattered remainder costs about what a hash map would.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Loc;

const CHUNK_BITS: u32 = 6;
const CHUNK: usize = 1 << CHUNK_BITS;
/// A sparse chunk turns dense when it would hold more than this many.
const SPARSE_MAX: usize = 16;
/// A dense chunk turns sparse when this few are left (hysteresis).
const DENSE_MIN: usize = SPARSE_MAX / 2;
const EMPTY: Loc = Loc { seg: u32::MAX, off: u32::MAX, len: u32::MAX };

#[derive(Clone)]
enum Chunk {
    /// Sorted by offset in the chunk.
    Sparse(Vec<(u8, Loc)>),
    /// Shared copy-on-write with clones (see [`SeqIndex`]).
    Dense { live: usize, slots: Arc<[Loc; CHUNK]> },
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Sparse(items) => items.len(),
            Chunk::Dense { live, .. } => *live,
        }
    }

    fn get(&self, off: u8) -> Option<Loc> {
        match self {
            Chunk::Sparse(items) => items.binary_search_by_key(&off, |(o, _)| *o).ok().map(|i| items[i].1),
            Chunk::Dense { slots, .. } => Some(slots[off as usize]).filter(|loc| *loc != EMPTY),
        }
    }

    fn insert(&mut self, off: u8, loc: Loc) -> Option<Loc> {
        if let Chunk::Sparse(items) = self {
            match items.binary_search_by_key(&off, |(o, _)| *o) {
                Ok(i) => return Some(std::mem::replace(&mut items[i].1, loc)),
                Err(i) if items.len() < SPARSE_MAX => {
                    items.insert(i, (off, loc));
                    return None;
                }
                Err(_) => {
                    let mut slots = Arc::new([EMPTY; CHUNK]);
                    let new = Arc::get_mut(&mut slots).expect("not shared yet");
                    for (o, l) in items.iter() {
                        new[*o as usize] = *l;
                    }
                    *self = Chunk::Dense { live: items.len(), slots };
                }
            }
        }
        let Chunk::Dense { live, slots } = self else { unreachable!("made dense above") };
        let old = std::mem::replace(&mut Arc::make_mut(slots)[off as usize], loc);
        if old == EMPTY {
            *live += 1;
            None
        } else {
            Some(old)
        }
    }

    fn remove(&mut self, off: u8) -> Option<Loc> {
        match self {
            Chunk::Sparse(items) => {
                let i = items.binary_search_by_key(&off, |(o, _)| *o).ok()?;
                Some(items.remove(i).1)
            }
            Chunk::Dense { live, slots } => {
                if slots[off as usize] == EMPTY {
                    return None;
                }
                let old = slots[off as usize];
                *live -= 1;
                if *live <= DENSE_MIN {
                    // Turns sparse: the shared slots are read, not copied.
                    let items = slots
                        .iter()
                        .enumerate()
                        .filter(|(o, l)| **l != EMPTY && *o != off as usize)
                        .map(|(o, l)| (o as u8, *l));
                    *self = Chunk::Sparse(items.collect());
                    return Some(old);
                }
                Arc::make_mut(slots)[off as usize] = EMPTY;
                Some(old)
            }
        }
    }

    fn for_each(&self, base: u64, f: &mut impl FnMut(u64, Loc)) {
        match self {
            Chunk::Sparse(items) => items.iter().for_each(|(o, l)| f(base + u64::from(*o), *l)),
            Chunk::Dense { slots, .. } => {
                for (o, l) in slots.iter().enumerate() {
                    if *l != EMPTY {
                        f(base + o as u64, *l);
                    }
                }
            }
        }
    }
}

/// seq -> location for one queue. A clone (a checkpoint's capture, taken
/// on the apply path) shares the dense chunks copy-on-write: it copies the
/// map and the sparse chunks, not the 12 bytes a message of the dense ones,
/// and a dense chunk is copied only when it changes while a clone holds it.
#[derive(Clone, Default)]
pub struct SeqIndex {
    chunks: BTreeMap<u64, Chunk>,
    len: usize,
}

fn split(seq: u64) -> (u64, u8) {
    (seq >> CHUNK_BITS, (seq & (CHUNK as u64 - 1)) as u8)
}

impl SeqIndex {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, seq: u64) -> Option<Loc> {
        let (key, off) = split(seq);
        self.chunks.get(&key)?.get(off)
    }

    /// Sets the location of `seq`; returns the one it replaces.
    pub fn insert(&mut self, seq: u64, loc: Loc) -> Option<Loc> {
        debug_assert!(loc != EMPTY);
        let (key, off) = split(seq);
        let old = self.chunks.entry(key).or_insert_with(|| Chunk::Sparse(Vec::new())).insert(off, loc);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, seq: u64) -> Option<Loc> {
        let (key, off) = split(seq);
        let chunk = self.chunks.get_mut(&key)?;
        let old = chunk.remove(off)?;
        if chunk.len() == 0 {
            self.chunks.remove(&key);
        }
        self.len -= 1;
        Some(old)
    }

    /// Removes every seq below `before`, handing each location to `gone`.
    pub fn remove_below(&mut self, before: u64, gone: &mut impl FnMut(Loc)) {
        let (key, off) = split(before);
        let kept = self.chunks.split_off(&key);
        let below = std::mem::replace(&mut self.chunks, kept);
        for (base, chunk) in below {
            self.len -= chunk.len();
            chunk.for_each(base << CHUNK_BITS, &mut |_, loc| gone(loc));
        }
        if off > 0 {
            for o in 0..off {
                if let Some(loc) = self.chunks.get_mut(&key).and_then(|c| c.remove(o)) {
                    self.len -= 1;
                    gone(loc);
                }
            }
            if self.chunks.get(&key).is_some_and(|c| c.len() == 0) {
                self.chunks.remove(&key);
            }
        }
    }

    /// Every (seq, location), in seq order.
    pub fn for_each(&self, mut f: impl FnMut(u64, Loc)) {
        for (base, chunk) in &self.chunks {
            chunk.for_each(base << CHUNK_BITS, &mut f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        RemoveBelow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Seqs in a small range so that chunks fill, empty and refill.
        prop_oneof![
            6 => (0u64..400, 0u32..1000).prop_map(|(s, v)| Op::Insert(s, v)),
            4 => (0u64..400).prop_map(Op::Remove),
            1 => (0u64..400).prop_map(Op::RemoveBelow),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..600)) {
            let mut index = SeqIndex::default();
            let mut model = BTreeMap::new();
            // Clones taken along the way (checkpoint captures) keep what
            // they saw while the index changes after them.
            let mut captures: Vec<(SeqIndex, BTreeMap<u64, Loc>)> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                if i % 97 == 50 {
                    captures.push((index.clone(), model.clone()));
                }
                match op {
                    Op::Insert(seq, v) => {
                        let loc = Loc { seg: v, off: v * 3, len: v + 1 };
                        prop_assert_eq!(index.insert(seq, loc), model.insert(seq, loc));
                    }
                    Op::Remove(seq) => prop_assert_eq!(index.remove(seq), model.remove(&seq)),
                    Op::RemoveBelow(before) => {
                        let mut gone = Vec::new();
                        index.remove_below(before, &mut |loc| gone.push(loc));
                        let kept = model.split_off(&before);
                        let expected: Vec<Loc> = std::mem::replace(&mut model, kept).into_values().collect();
                        prop_assert_eq!(gone, expected);
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            let mut all = Vec::new();
            index.for_each(|seq, loc| all.push((seq, loc)));
            prop_assert_eq!(all, model.iter().map(|(s, l)| (*s, *l)).collect::<Vec<_>>());
            for seq in 0..400 {
                prop_assert_eq!(index.get(seq), model.get(&seq).copied());
            }
            // No empty chunk is kept.
            prop_assert!(index.chunks.values().all(|c| c.len() > 0));
            for (captured, seen) in captures {
                let mut all = Vec::new();
                captured.for_each(|seq, loc| all.push((seq, loc)));
                prop_assert_eq!(all, seen.into_iter().collect::<Vec<_>>());
            }
        }
    }
}
