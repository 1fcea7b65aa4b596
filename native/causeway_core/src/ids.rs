//! Time-ordered, unique event ids.
//!
//! An id is the wall-clock time in nanoseconds with its low 6 bits replaced by the
//! ring shard that issued it. Each shard keeps its ids strictly increasing (a burst
//! faster than 64 ns per event runs a little ahead of the clock), so ids are unique
//! per node without any shared counter, and sort by time to within a few hundred
//! nanoseconds. A floor (the largest id already stored) keeps ids unique across
//! restarts on the same directory even if the clock went back.

use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

/// Ids count from 2020-01-01T00:00:00Z, so they stay BEAM small integers
/// (< 2^59) until 2038 and a call id costs no heap allocation in Elixir.
pub const EPOCH_NS: u64 = 1_577_836_800_000_000_000;
pub const SHARD_BITS: u32 = 6;
pub const MAX_SHARDS: usize = 1 << SHARD_BITS;
const SHARD_MASK: u64 = (MAX_SHARDS as u64) - 1;

pub struct IdGen {
    last: Box<[CachePadded<AtomicU64>]>,
}

impl IdGen {
    /// `shards` id streams (at most 64); every id issued is greater than `floor`.
    pub fn new(shards: usize, floor: u64) -> IdGen {
        let shards = shards.clamp(1, MAX_SHARDS);
        let last = (0..shards)
            .map(|s| CachePadded::new(AtomicU64::new((floor & !SHARD_MASK) | s as u64)))
            .collect();
        IdGen { last }
    }

    pub fn shards(&self) -> usize {
        self.last.len()
    }

    /// The next id of `shard` for an event captured at `wall_ns`.
    #[inline]
    pub fn next(&self, shard: usize, wall_ns: u64) -> u64 {
        let shard = crate::ring::wrap(shard, self.last.len());
        let slot = &self.last[shard];
        let candidate = (wall_ns.saturating_sub(EPOCH_NS) & !SHARD_MASK) | shard as u64;
        let mut last = slot.load(Ordering::Relaxed);
        loop {
            let id = if candidate > last {
                candidate
            } else {
                last + MAX_SHARDS as u64
            };
            match slot.compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return id,
                Err(actual) => last = actual,
            }
        }
    }
}

/// The wall-clock nanoseconds an id stands for (to within its shard bits).
pub fn id_to_wall_ns(id: u64) -> u64 {
    (id & !SHARD_MASK) + EPOCH_NS
}

/// The smallest id that can stand for `wall_ns` or later.
pub fn wall_ns_to_id(wall_ns: u64) -> u64 {
    wall_ns.saturating_sub(EPOCH_NS) & !SHARD_MASK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn ids_are_unique_and_increasing_per_shard_under_contention() {
        let ids = Arc::new(IdGen::new(4, 0));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let ids = ids.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::with_capacity(50_000);
                    for i in 0..50_000u64 {
                        // all threads hammer shard t%2 with a clock that stands still
                        out.push(ids.next(t % 2, EPOCH_NS + 1_000_000 + i / 1000));
                    }
                    out
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            let v = h.join().unwrap();
            assert!(v.windows(2).all(|w| w[0] < w[1]), "per-thread order");
            for id in v {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 200_000);
    }

    #[test]
    fn floor_is_respected() {
        let ids = IdGen::new(2, 10_000_000);
        assert!(ids.next(0, 5) > 10_000_000);
        assert!(ids.next(1, 5) > 10_000_000);
        let id = ids.next(1, EPOCH_NS + 20_000_000);
        assert_eq!(id & SHARD_MASK, 1);
        assert_eq!(id_to_wall_ns(id), EPOCH_NS + (20_000_000 & !SHARD_MASK));
        assert_eq!(
            wall_ns_to_id(EPOCH_NS + 20_000_000),
            20_000_000 & !SHARD_MASK
        );
        // a 2026 id is a BEAM small integer
        let now = IdGen::new(1, 0).next(0, 1_795_000_000_000_000_000);
        assert!(now < (1 << 59));
    }
}
