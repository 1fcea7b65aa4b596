//! Recycled payload buffers. A captured payload that outgrows its slot's
//! inline bytes takes a heap buffer of the next power of two (256 B to
//! 8 KiB) from here, and a bigger one of the next class when it grows again,
//! the old one going back; a writer gives a payload's buffer back once its
//! event is persisted or dropped. A capture of a big term thus costs no
//! `malloc`, `realloc` or `free` on the scheduler (perf showed them, with the
//! page faults of memory the allocator had trimmed, as a third of a
//! capture's time on a recursive encoder), and the writers' frees do not
//! contend for the producer's allocator arena.
//!
//! Bounded: each class keeps at most `PER_CLASS` buffers (at most 16 MiB in
//! all, counted in `pooled_bytes`); a buffer given back to a full class, or
//! of another capacity, is freed as before. Capacities are the ones the
//! doubling growth they replace would have reached, or (`etf::InPlace`) the
//! class of the last payload that spilled on the same thread, so a
//! payload's accounted memory (its capacity, in the memory budget) is at
//! most what the run of terms before it needed.

use crossbeam::queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The smallest class: a payload's first heap buffer.
pub const MIN_CLASS: usize = 256;
/// The largest class kept; bigger buffers are allocated and freed as needed.
pub const MAX_CLASS: usize = 8 << 10;
const CLASSES: usize = (MAX_CLASS / MIN_CLASS).trailing_zeros() as usize + 1;
/// Buffers kept per class (1 024 × (256 B + … + 8 KiB) < 16 MiB).
pub const PER_CLASS: usize = 1024;

struct Pool {
    classes: [ArrayQueue<Vec<u8>>; CLASSES],
    bytes: AtomicU64,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        classes: std::array::from_fn(|_| ArrayQueue::new(PER_CLASS)),
        bytes: AtomicU64::new(0),
    })
}

/// The class index of a capacity that is one (a power of two in
/// `MIN_CLASS..=MAX_CLASS`).
#[inline]
fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && (MIN_CLASS..=MAX_CLASS).contains(&cap))
        .then(|| (cap / MIN_CLASS).trailing_zeros() as usize)
}

/// An empty buffer with room for at least `need` bytes: of the class `need`
/// rounds up to (from the pool when it has one), or of exactly `need` bytes
/// rounded to a power of two past the largest class.
#[inline]
pub fn take(need: usize) -> Vec<u8> {
    let cap = need
        .max(MIN_CLASS)
        .checked_next_power_of_two()
        .unwrap_or(need);
    if let Some(c) = class_of(cap) {
        let p = pool();
        if let Some(v) = p.classes[c].pop() {
            p.bytes.fetch_sub(cap as u64, Ordering::Relaxed);
            return v;
        }
    }
    Vec::with_capacity(cap)
}

/// Gives `v` back (emptied) for a later `take`, or frees it when its class
/// is full or its capacity is not a class.
#[inline]
pub fn give(mut v: Vec<u8>) {
    let cap = v.capacity();
    if let Some(c) = class_of(cap) {
        v.clear();
        let p = pool();
        if p.classes[c].push(v).is_ok() {
            p.bytes.fetch_add(cap as u64, Ordering::Relaxed);
        }
    }
}

/// Bytes held by the pool now (buffers waiting to be taken).
pub fn pooled_bytes() -> u64 {
    pool().bytes.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_rounds_up_to_a_class_and_a_given_buffer_comes_back_empty() {
        let v = take(300);
        assert_eq!(v.capacity(), 512);
        assert!(v.is_empty());
        let mut v = v;
        v.extend_from_slice(b"abc");
        give(v);
        // (another test may take it first: any buffer of the class will do)
        let again = take(400);
        assert_eq!(again.capacity(), 512);
        assert!(again.is_empty(), "a given buffer comes back empty");
    }

    #[test]
    fn capacities_outside_the_classes_are_not_kept() {
        assert_eq!(class_of(100), None);
        assert_eq!(class_of(768), None);
        assert_eq!(class_of(16 << 10), None);
        assert_eq!(class_of(256), Some(0));
        assert_eq!(class_of(8 << 10), Some(CLASSES - 1));
        let big = take(20_000);
        assert_eq!(big.capacity(), 32 << 10);
        let before = pooled_bytes();
        give(big);
        give(Vec::with_capacity(1000));
        assert!(pooled_bytes() <= before + (8 << 10) * 2, "not pooled");
    }

    #[test]
    fn the_pool_is_bounded_per_class() {
        // a class gets at most PER_CLASS buffers, whatever is given
        let bufs: Vec<Vec<u8>> = (0..PER_CLASS + 100)
            .map(|_| Vec::with_capacity(4096))
            .collect();
        for b in bufs {
            give(b);
        }
        assert!(pool().classes[class_of(4096).unwrap()].len() <= PER_CLASS);
        assert!(pooled_bytes() < 16 << 20);
    }
}
