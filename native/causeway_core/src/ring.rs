//! Layer 1: bounded lock-free rings, one shard per scheduler thread.
//!
//! Each shard is a `mpmc::Queue` (lock-free, bounded, MPMC), so a
//! full ring never blocks a producer: with `DropNewest` the new event is refused,
//! with `DropOldest` it replaces the oldest unread one. Every outcome is counted
//! exactly: `accepted + rejected` events were offered; each accepted event is
//! eventually either `evicted` (drop-oldest) or popped by a reader and later
//! `finished` (persisted, or dropped downstream and counted there).

use crate::event::RawEvent;
use crate::mpmc::Queue;
use crossbeam::utils::CachePadded;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    DropNewest,
    DropOldest,
    /// Lossless: a producer that may block (`with_blocking`, a dirty
    /// scheduler) waits for room; one that may not is refused and counted as
    /// with `DropNewest` — the NIF glue moves producers to a dirty scheduler
    /// before the ring is that full (`Rings::nearly_full`).
    Wait,
}

/// Slots kept free, under `Overflow::Wait`, for the producers that already
/// passed the `nearly_full` check on a normal scheduler.
pub const WAIT_MARGIN: usize = 256;

/// How long a blocking producer waits for room before it gives up (and the
/// event is counted as refused): the writers drain a ring in milliseconds,
/// so this is reached only when they are stopped.
const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

thread_local! {
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with pushes allowed to wait for room under `Overflow::Wait`
/// (for threads that may block: dirty schedulers, native threads).
pub fn with_blocking<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            MAY_BLOCK.with(|b| b.set(self.0));
        }
    }
    let _reset = Reset(MAY_BLOCK.with(|b| b.replace(true)));
    f()
}

impl Overflow {
    pub fn from_name(s: &str) -> Option<Overflow> {
        match s {
            "drop_newest" => Some(Overflow::DropNewest),
            "drop_oldest" => Some(Overflow::DropOldest),
            "wait" => Some(Overflow::Wait),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Overflow::DropNewest => "drop_newest",
            Overflow::DropOldest => "drop_oldest",
            Overflow::Wait => "wait",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// The ring was full and the new event was refused (drop-newest).
    Rejected,
    /// The ring was full and the oldest event was overwritten (drop-oldest).
    Evicted,
}

/// How often a drop-oldest push yields its thread while the oldest slot is
/// being filled or freed by another thread, before it gives up.
const MAX_YIELDS: u32 = 100;

/// Counters written by producers (one cache line). Accepted events are the
/// queue's reserved positions: counted in queue order, as each push begins.
#[derive(Default)]
struct ProducerSide {
    rejected: AtomicU64,
    evicted: AtomicU64,
    bytes_in: AtomicU64,
}

/// Counters written by the reader (another cache line: producers and writers
/// never contend on them).
#[derive(Default)]
struct ConsumerSide {
    popped: AtomicU64,
    finished: AtomicU64,
    bytes_out: AtomicU64,
}

pub struct Shard {
    queue: Queue<RawEvent>,
    prod: CachePadded<ProducerSide>,
    cons: CachePadded<ConsumerSide>,
    /// Held by a reader for the length of one `pop_batch`: pops of a shard
    /// get consecutive sequence numbers, and `popped` is exact under it.
    /// Producers never take it.
    pop_lock: Mutex<()>,
    /// Which popped events are finished, in pop order.
    done: Mutex<Completion>,
}

/// Finished pops of one shard: every pop below `watermark` is finished;
/// batches finished ahead of an older one wait in `ahead` (start → end).
#[derive(Default)]
struct Completion {
    watermark: u64,
    ahead: BTreeMap<u64, u64>,
}

/// What a durability barrier waits for in one shard: every event accepted
/// before it (`accepted`) removed from the ring, and every pop among those
/// removals finished (`pops`, known once the removals are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushTarget {
    accepted: u64,
    pops: Option<u64>,
}

/// Counters of one shard at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub capacity: u64,
    pub len: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub evicted: u64,
    pub popped: u64,
    pub finished: u64,
    /// Heap bytes held by the events in the ring now (payloads too big to
    /// live in their slot, remote pids); the slots are `Rings::slot_bytes`.
    pub payload_bytes: u64,
}

impl ShardStats {
    pub fn written(&self) -> u64 {
        self.accepted
    }
    pub fn dropped(&self) -> u64 {
        self.rejected + self.evicted
    }
    pub fn utilization(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.len as f64 / self.capacity as f64
        }
    }
}

pub struct Rings {
    shards: Box<[CachePadded<Shard>]>,
    capacity: usize,
    overflow: Overflow,
}

/// The CPU the calling thread runs on. Shards are picked by CPU: producers on
/// different cores never share a ring, and it costs one vDSO call (no
/// thread-local storage, which is slow in a dynamically loaded library).
#[inline]
pub fn cpu_slot() -> usize {
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 {
        0
    } else {
        c as usize
    }
}

/// An event being made in its slot. If making it panics, the slot still
/// goes to the consumers (a reserved slot must be released) but holds a
/// void event: empty, no kind, nothing outside the slot. Writers drop void
/// events and count them (`dropped.panic`).
struct Filling<'e> {
    ev: &'e mut RawEvent,
    done: bool,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.ev = RawEvent::default();
        }
    }
}

/// `i % n` without a division when `i < n` already (the common case: a
/// shard index, or a CPU number on a machine with a shard per CPU). A 32-bit
/// `div` is ~26 cycles, and the capture path used to pay four per event.
#[inline(always)]
pub fn wrap(i: usize, n: usize) -> usize {
    if i < n {
        i
    } else {
        i % n
    }
}

/// The size of one ring slot (an event).
pub const SLOT_BYTES: u64 = std::mem::size_of::<RawEvent>() as u64;

impl Rings {
    /// `shards` rings of `capacity` events each. The capacity must be a power of two.
    pub fn new(shards: usize, capacity: usize, overflow: Overflow) -> crate::Result<Rings> {
        if !capacity.is_power_of_two() || capacity < 2 {
            return Err(crate::Error::InvalidArgument(format!(
                "ring_size must be a power of two >= 2, got {capacity}"
            )));
        }
        if shards == 0 || shards > crate::ids::MAX_SHARDS {
            return Err(crate::Error::InvalidArgument(format!(
                "ring shards must be between 1 and {}, got {shards}",
                crate::ids::MAX_SHARDS
            )));
        }
        let shards = (0..shards)
            .map(|_| {
                Ok(CachePadded::new(Shard {
                    queue: Queue::try_new(capacity)?,
                    prod: CachePadded::new(ProducerSide::default()),
                    cons: CachePadded::new(ConsumerSide::default()),
                    pop_lock: Mutex::new(()),
                    done: Mutex::new(Completion::default()),
                }))
            })
            .collect::<crate::Result<_>>()?;
        Ok(Rings {
            shards,
            capacity,
            overflow,
        })
    }

    #[inline]
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// The shard of the calling thread's CPU.
    #[inline]
    pub fn local_shard(&self) -> usize {
        wrap(cpu_slot(), self.shards.len())
    }

    #[inline]
    pub fn push(&self, shard: usize, event: RawEvent) -> PushOutcome {
        self.put(shard, move |slot| {
            let bytes = event.heap_bytes();
            slot.commit(event);
            bytes
        })
    }

    /// A slot of `s` for a drop-oldest push: the oldest unread events make
    /// room when the ring is full (`Evicted`); `None` (`Rejected`, counted)
    /// when the oldest slot stays busy.
    fn reserve_evicting<'s>(
        &self,
        s: &'s Shard,
    ) -> (Option<crate::mpmc::Reserved<'s, RawEvent>>, PushOutcome) {
        let mut outcome = PushOutcome::Stored;
        let mut waits = 0u32;
        loop {
            if let Some(slot) = s.queue.reserve() {
                return (Some(slot), outcome);
            }
            // Full: the oldest unread event makes room, for good. Only
            // when really full: a consumer between taking the oldest
            // event and freeing its slot frees it in a moment.
            if s.queue.is_full() {
                if let Some(old) = s.queue.pop() {
                    s.cons
                        .bytes_out
                        .fetch_add(old.heap_bytes(), Ordering::Relaxed);
                    s.prod.evicted.fetch_add(1, Ordering::Release);
                    outcome = PushOutcome::Evicted;
                    continue;
                }
            }
            // The oldest slot is being filled by a producer or freed
            // by a consumer (often one preempted on this very CPU):
            // spin a little, then yield, and in the end give up
            // rather than hold a scheduler: the event is refused and
            // counted like a drop-newest one.
            waits += 1;
            if waits <= 64 {
                std::hint::spin_loop();
            } else if waits <= 64 + MAX_YIELDS {
                std::thread::yield_now();
            } else {
                s.prod.rejected.fetch_add(1, Ordering::Relaxed);
                return (None, PushOutcome::Rejected);
            }
        }
    }

    /// `push` of an event made in its slot: `fill` completes a default event
    /// there (see `mpmc::Reserved::commit_in_place`) and is not called when
    /// the event is refused.
    #[inline(always)]
    pub fn push_in_place(&self, shard: usize, fill: impl FnOnce(&mut RawEvent)) -> PushOutcome {
        self.put(shard, |slot| {
            slot.commit_in_place(|ev| {
                let mut filling = Filling { ev, done: false };
                fill(filling.ev);
                filling.done = true;
                filling.ev.heap_bytes()
            })
        })
    }

    /// Takes a slot of `shard` as the overflow policy says and lets `commit`
    /// fill it; `commit` returns what the event holds outside its slot.
    #[inline(always)]
    fn put(
        &self,
        shard: usize,
        commit: impl FnOnce(crate::mpmc::Reserved<'_, RawEvent>) -> u64,
    ) -> PushOutcome {
        let s = &self.shards[wrap(shard, self.shards.len())];
        let (slot, outcome) = match self.overflow {
            Overflow::DropNewest => match s.queue.reserve() {
                Some(slot) => (slot, PushOutcome::Stored),
                None => {
                    s.prod.rejected.fetch_add(1, Ordering::Relaxed);
                    return PushOutcome::Rejected;
                }
            },
            Overflow::DropOldest => match self.reserve_evicting(s) {
                (Some(slot), outcome) => (slot, outcome),
                (None, outcome) => return outcome,
            },
            Overflow::Wait => match s.queue.reserve().or_else(|| Self::reserve_waiting(s)) {
                Some(slot) => (slot, PushOutcome::Stored),
                None => {
                    s.prod.rejected.fetch_add(1, Ordering::Relaxed);
                    return PushOutcome::Rejected;
                }
            },
        };
        let bytes = commit(slot);
        if bytes > 0 {
            s.prod.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
        outcome
    }

    /// Under `Overflow::Wait`, on a thread that may block: waits (sleeping,
    /// up to `WAIT_LIMIT`) until the writers have made room.
    #[cold]
    fn reserve_waiting(s: &Shard) -> Option<crate::mpmc::Reserved<'_, RawEvent>> {
        if !MAY_BLOCK.with(|b| b.get()) {
            return None;
        }
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(10);
        while start.elapsed() < WAIT_LIMIT {
            std::thread::sleep(pause);
            if let Some(slot) = s.queue.reserve() {
                return Some(slot);
            }
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
        None
    }

    /// Under `Overflow::Wait`: true when fewer than `WAIT_MARGIN` slots of
    /// `shard` are free, so a producer that may not block should move to a
    /// thread that may before it pushes.
    #[inline]
    pub fn nearly_full(&self, shard: usize) -> bool {
        self.overflow == Overflow::Wait
            && self.len(shard) + WAIT_MARGIN.min(self.capacity / 2) >= self.capacity
    }

    /// True on one push in 64: when the producer should look at the fill level
    /// (reading the queue's length touches the reader's cache line).
    #[inline]
    pub fn time_to_check(&self, shard: usize) -> bool {
        self.shards[wrap(shard, self.shards.len())].queue.reserved() & 63 == 0
    }

    /// Counts an event refused before it reached the ring (e.g. sampled out).
    pub fn count_rejected(&self, shard: usize) {
        self.shards[wrap(shard, self.shards.len())]
            .prod
            .rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Moves up to `max` events of `shard` into `out`; returns how many.
    pub fn pop_batch(&self, shard: usize, max: usize, out: &mut Vec<RawEvent>) -> usize {
        self.pop_batch_from(shard, max, out).1
    }

    /// `pop_batch`, also returning the pop sequence number of the first
    /// event moved (the batch is `start..start + n`, for `finish`).
    pub fn pop_batch_from(
        &self,
        shard: usize,
        max: usize,
        out: &mut Vec<RawEvent>,
    ) -> (u64, usize) {
        let s = &self.shards[wrap(shard, self.shards.len())];
        // a poisoned lock only means another reader panicked mid-pop; the
        // counters it guards are still whole
        let _g = s.pop_lock.lock().unwrap_or_else(|e| e.into_inner());
        let start = s.cons.popped.load(Ordering::Acquire);
        let mut n = 0;
        let mut bytes = 0u64;
        while n < max {
            match s.queue.pop() {
                Some(ev) => {
                    bytes += ev.heap_bytes();
                    out.push(ev);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            s.cons.popped.fetch_add(n as u64, Ordering::Release);
            if bytes > 0 {
                s.cons.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        (start, n)
    }

    /// Marks the popped events `start..start + n` of `shard` as fully handled
    /// (persisted, or dropped and counted). Batches may finish in any order.
    pub fn finish(&self, shard: usize, start: u64, n: u64) {
        if n == 0 {
            return;
        }
        let s = &self.shards[wrap(shard, self.shards.len())];
        {
            let mut d = s.done.lock().unwrap_or_else(|e| e.into_inner());
            if start == d.watermark {
                d.watermark = start + n;
                while let Some(end) = {
                    let w = d.watermark;
                    d.ahead.remove(&w)
                } {
                    d.watermark = end;
                }
            } else {
                d.ahead.insert(start, start + n);
            }
        }
        s.cons.finished.fetch_add(n, Ordering::Release);
    }

    pub fn len(&self, shard: usize) -> usize {
        self.shards[wrap(shard, self.shards.len())].queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.queue.is_empty())
    }

    /// Fill level of one shard, 0.0..=1.0.
    #[inline]
    pub fn utilization(&self, shard: usize) -> f64 {
        self.len(shard) as f64 / self.capacity as f64
    }

    pub fn max_utilization(&self) -> f64 {
        (0..self.shards.len())
            .map(|s| self.utilization(s))
            .fold(0.0, f64::max)
    }

    pub fn stats(&self, shard: usize) -> ShardStats {
        let s = &self.shards[wrap(shard, self.shards.len())];
        let bytes_out = s.cons.bytes_out.load(Ordering::Acquire);
        ShardStats {
            capacity: self.capacity as u64,
            len: s.queue.len() as u64,
            accepted: s.queue.reserved(),
            rejected: s.prod.rejected.load(Ordering::Acquire),
            evicted: s.prod.evicted.load(Ordering::Acquire),
            popped: s.cons.popped.load(Ordering::Acquire),
            finished: s.cons.finished.load(Ordering::Acquire),
            payload_bytes: s
                .prod
                .bytes_in
                .load(Ordering::Acquire)
                .saturating_sub(bytes_out),
        }
    }

    pub fn all_stats(&self) -> Vec<ShardStats> {
        (0..self.shards.len()).map(|s| self.stats(s)).collect()
    }

    /// For a durability barrier: per shard, the events accepted so far.
    pub fn flush_targets(&self) -> Vec<FlushTarget> {
        self.shards
            .iter()
            .map(|s| FlushTarget {
                accepted: s.queue.reserved(),
                pops: None,
            })
            .collect()
    }

    /// True once every event counted in `targets` is done: removed from its
    /// ring (events leave in FIFO order, popped or evicted) and, if popped,
    /// finished. Counting finished events is not enough: batches of one shard
    /// finish out of order when several writers share it, and evictions of
    /// newer events can outnumber an older batch still being written.
    pub fn reached(&self, targets: &mut [FlushTarget]) -> bool {
        targets.iter_mut().enumerate().all(|(i, t)| {
            let Some(s) = self.shards.get(i) else {
                return true;
            };
            if t.pops.is_none() {
                // no pop is half counted while the lock is held
                let _g = s.pop_lock.lock().unwrap_or_else(|e| e.into_inner());
                let popped = s.cons.popped.load(Ordering::Acquire);
                if popped + s.prod.evicted.load(Ordering::Acquire) < t.accepted {
                    return false;
                }
                // the first `accepted` removals are among these pops and evictions
                t.pops = Some(popped);
            }
            let watermark = s.done.lock().map(|d| d.watermark).unwrap_or(0);
            t.pops.is_some_and(|p| watermark >= p)
        })
    }

    /// Bytes of the rings' slots (allocated up front).
    pub fn slot_bytes(&self) -> u64 {
        Self::slot_bytes_for(self.shards.len(), self.capacity)
    }

    /// What `shards` rings of `capacity` slots take (saturating).
    pub fn slot_bytes_for(shards: usize, capacity: usize) -> u64 {
        (shards as u64)
            .saturating_mul(capacity as u64)
            .saturating_mul(SLOT_BYTES)
    }

    /// Heap bytes held by the events queued in one shard now.
    #[inline]
    pub fn heap_bytes(&self, shard: usize) -> u64 {
        let s = &self.shards[wrap(shard, self.shards.len())];
        s.prod
            .bytes_in
            .load(Ordering::Relaxed)
            .saturating_sub(s.cons.bytes_out.load(Ordering::Relaxed))
    }

    /// Heap bytes held by the events queued in the rings now (beyond `slot_bytes`).
    pub fn payload_bytes(&self) -> u64 {
        (0..self.shards.len())
            .map(|s| self.stats(s).payload_bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ev(id: u64) -> RawEvent {
        RawEvent {
            id,
            ..Default::default()
        }
    }

    #[test]
    fn capacity_must_be_a_power_of_two() {
        assert!(Rings::new(1, 100, Overflow::DropNewest).is_err());
        assert!(Rings::new(0, 128, Overflow::DropNewest).is_err());
        assert!(Rings::new(65, 128, Overflow::DropNewest).is_err());
        assert!(Rings::new(2, 128, Overflow::DropNewest).is_ok());
    }

    #[test]
    fn wrap_is_the_remainder() {
        for n in 1..5 {
            for i in 0..20 {
                assert_eq!(wrap(i, n), i % n);
            }
        }
    }

    /// Fills an event in its slot: id `i`, and a payload too big to be
    /// inline when `big`. Counts its calls.
    fn fill_with(
        i: u64,
        big: bool,
        calls: &std::cell::Cell<u32>,
    ) -> impl FnOnce(&mut RawEvent) + '_ {
        move |e| {
            calls.set(calls.get() + 1);
            assert_eq!(e.id, 0, "the slot holds an empty event");
            e.id = i;
            let n = if big {
                crate::etf::INLINE_PAYLOAD + 52
            } else {
                3
            };
            e.data.extend_from_slice(&vec![i as u8; n]);
        }
    }

    #[test]
    fn events_made_in_place_are_counted_like_pushed_ones() {
        let calls = std::cell::Cell::new(0);
        let r = Rings::new(1, 4, Overflow::DropNewest).unwrap();
        for i in 0..6 {
            let outcome = r.push_in_place(0, fill_with(i, i % 2 == 1, &calls));
            let want = if i < 4 {
                PushOutcome::Stored
            } else {
                PushOutcome::Rejected
            };
            assert_eq!(outcome, want);
        }
        // a refused event is never made
        assert_eq!(calls.get(), 4);
        let s = r.stats(0);
        assert_eq!((s.accepted, s.rejected, s.len), (4, 2, 4));
        let held: u64 = (0..4)
            .filter(|i| i % 2 == 1)
            .map(|_| 100u64.next_power_of_two())
            .sum();
        assert!(r.payload_bytes() >= 2 * 100 && r.payload_bytes() <= held);
        let mut out = Vec::new();
        r.pop_batch(0, 10, &mut out);
        assert_eq!(
            out.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(out.iter().all(|e| e.data.iter().all(|&b| b as u64 == e.id)));
        assert_eq!(r.payload_bytes(), 0);

        let calls = std::cell::Cell::new(0);
        let r = Rings::new(1, 4, Overflow::DropOldest).unwrap();
        for i in 0..6 {
            let outcome = r.push_in_place(0, fill_with(i, true, &calls));
            let want = if i < 4 {
                PushOutcome::Stored
            } else {
                PushOutcome::Evicted
            };
            assert_eq!(outcome, want);
        }
        assert_eq!(calls.get(), 6);
        let s = r.stats(0);
        assert_eq!((s.accepted, s.evicted, s.len), (6, 2, 4));
        let mut out = Vec::new();
        r.pop_batch(0, 10, &mut out);
        assert_eq!(
            out.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(r.payload_bytes(), 0, "evicted payloads are counted out too");
    }

    #[test]
    fn an_event_whose_making_panics_leaves_a_void_event_and_no_held_bytes() {
        let r = Rings::new(1, 4, Overflow::DropNewest).unwrap();
        let calls = std::cell::Cell::new(0);
        r.push_in_place(0, fill_with(1, false, &calls));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.push_in_place(0, |e| {
                e.id = 2;
                e.kind = Some(crate::event::EventType::FunctionEntry);
                e.data.extend_from_slice(&[9; 500]); // spilled, then abandoned
                panic!("while making the event");
            })
        }));
        assert!(caught.is_err());
        r.push_in_place(0, fill_with(3, false, &calls));
        assert_eq!(
            r.payload_bytes(),
            0,
            "the abandoned payload was freed, not counted"
        );
        let mut out = Vec::new();
        assert_eq!(r.pop_batch(0, 10, &mut out), 3, "the slot was released");
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 0, 3]);
        assert!(out[1].kind.is_none() && out[1].data.is_empty());
        assert_eq!(r.payload_bytes(), 0);
    }

    #[test]
    fn drop_newest_counts_exactly_and_keeps_the_first() {
        let r = Rings::new(1, 8, Overflow::DropNewest).unwrap();
        for i in 0..20 {
            r.push(0, ev(i));
        }
        let s = r.stats(0);
        assert_eq!((s.accepted, s.rejected, s.evicted, s.len), (8, 12, 0, 8));
        let mut out = Vec::new();
        assert_eq!(r.pop_batch(0, 100, &mut out), 8);
        assert_eq!(
            out.iter().map(|e| e.id).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn drop_oldest_counts_exactly_and_keeps_the_last() {
        let r = Rings::new(1, 8, Overflow::DropOldest).unwrap();
        for i in 0..20 {
            r.push(0, ev(i));
        }
        let s = r.stats(0);
        assert_eq!((s.accepted, s.rejected, s.evicted, s.len), (20, 0, 12, 8));
        let mut out = Vec::new();
        r.pop_batch(0, 100, &mut out);
        assert_eq!(
            out.iter().map(|e| e.id).collect::<Vec<_>>(),
            (12..20).collect::<Vec<_>>()
        );
        r.finish(0, 0, 8);
        assert!(r.reached(&mut r.flush_targets()));
    }

    #[test]
    fn a_flush_waits_for_an_older_batch_finished_after_a_newer_one() {
        // two writers share a shard: the newer batch lands first
        let r = Rings::new(1, 64, Overflow::DropNewest).unwrap();
        for i in 0..10 {
            r.push(0, ev(i));
        }
        let mut older = Vec::new();
        let mut newer = Vec::new();
        let (a, na) = r.pop_batch_from(0, 5, &mut older);
        let mut targets = r.flush_targets();
        for i in 10..20 {
            r.push(0, ev(i));
        }
        let (b, nb) = r.pop_batch_from(0, 15, &mut newer);
        assert_eq!((a, na, b, nb), (0, 5, 5, 15));
        r.finish(0, b, nb as u64);
        assert!(
            !r.reached(&mut targets),
            "15 finished >= 10 accepted, but events 0..5 are still being written"
        );
        r.finish(0, a, na as u64);
        assert!(r.reached(&mut targets));
    }

    #[test]
    fn a_flush_counts_pushes_in_queue_order_as_they_begin() {
        // Producer A takes its slot and is preempted before filling it;
        // producer B, on the same CPU, pushes after it and returns; B's
        // caller then flushes. (With a count incremented after each push,
        // B's count could stand for A's event: the flush would return once
        // A's event was written, before B's.)
        let r = Rings::new(1, 8, Overflow::DropNewest).unwrap();
        let a = r.shards[0].queue.reserve().expect("room");
        assert_eq!(r.push(0, ev(2)), PushOutcome::Stored);
        let mut targets = r.flush_targets();
        assert_eq!(targets[0].accepted, 2, "both pushes counted, A first");
        let mut out = Vec::new();
        let (start, n) = r.pop_batch_from(0, 10, &mut out);
        assert_eq!(n, 0, "nothing passes A's unfilled slot");
        r.finish(0, start, n as u64);
        assert!(!r.reached(&mut targets));
        a.commit(ev(1));
        let (start, n) = r.pop_batch_from(0, 10, &mut out);
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!r.reached(&mut targets), "popped, not yet written");
        r.finish(0, start, n as u64);
        assert!(r.reached(&mut targets));
    }

    #[test]
    fn drop_oldest_gives_up_rather_than_wait_long_on_a_slot_being_filled() {
        // the oldest slot of a full ring is taken by a producer that is not
        // running: a drop-oldest push cannot evict it, waits a bounded time,
        // then refuses its event and counts it
        let r = Rings::new(1, 4, Overflow::DropOldest).unwrap();
        let stalled = r.shards[0].queue.reserve().expect("room");
        for i in 1..4 {
            assert_eq!(r.push(0, ev(i)), PushOutcome::Stored);
        }
        assert_eq!(r.push(0, ev(9)), PushOutcome::Rejected);
        let s = r.stats(0);
        assert_eq!((s.accepted, s.rejected, s.evicted), (4, 1, 0));
        stalled.commit(ev(0));
        // now the oldest can be evicted: exactly one for one push
        assert_eq!(r.push(0, ev(4)), PushOutcome::Evicted);
        let mut out = Vec::new();
        r.pop_batch(0, 10, &mut out);
        assert_eq!(
            out.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let s = r.stats(0);
        assert_eq!((s.accepted, s.rejected, s.evicted), (5, 1, 1));
    }

    #[test]
    fn a_flush_is_not_fooled_by_evictions_of_newer_events() {
        let r = Rings::new(1, 4, Overflow::DropOldest).unwrap();
        for i in 0..4 {
            r.push(0, ev(i));
        }
        let mut batch = Vec::new();
        let (a, na) = r.pop_batch_from(0, 4, &mut batch);
        let mut targets = r.flush_targets();
        // producers keep going: 4 fill the ring, 6 more evict newer events
        for i in 4..14 {
            r.push(0, ev(i));
        }
        assert_eq!(r.stats(0).evicted, 6);
        assert!(
            !r.reached(&mut targets),
            "6 evicted >= 4 accepted, but the batch of 0..4 is not written"
        );
        r.finish(0, a, na as u64);
        assert!(r.reached(&mut targets));
    }

    #[test]
    fn wraparound_many_laps() {
        let r = Rings::new(1, 4, Overflow::DropNewest).unwrap();
        let mut out = Vec::new();
        let mut next = 0;
        for _lap in 0..1000 {
            for _ in 0..3 {
                assert_eq!(r.push(0, ev(next)), PushOutcome::Stored);
                next += 1;
            }
            out.clear();
            r.pop_batch(0, 2, &mut out);
            r.pop_batch(0, 2, &mut out);
            assert_eq!(out.len(), 3);
            assert_eq!(out[2].id, next - 1);
        }
        assert_eq!(r.stats(0).popped, 3000);
    }

    #[test]
    fn concurrent_producers_and_a_reader_lose_nothing_when_it_fits() {
        let r = Arc::new(Rings::new(2, 1 << 16, Overflow::DropNewest).unwrap());
        let producers: Vec<_> = (0..4u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        r.push((t % 2) as usize, ev(t * 1_000_000 + i));
                    }
                })
            })
            .collect();
        let reader = {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = Vec::new();
                while got.len() < 80_000 {
                    for s in 0..2 {
                        buf.clear();
                        let (start, n) = r.pop_batch_from(s, 512, &mut buf);
                        r.finish(s, start, n as u64);
                        got.extend(buf.iter().map(|e| e.id));
                    }
                }
                got
            })
        };
        for p in producers {
            p.join().unwrap();
        }
        let mut got = reader.join().unwrap();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 80_000);
        let total: u64 = r.all_stats().iter().map(|s| s.accepted).sum();
        assert_eq!(total, 80_000);
        assert!(r.reached(&mut r.flush_targets()));
    }

    #[test]
    fn concurrent_overflow_counts_are_exact() {
        for policy in [Overflow::DropNewest, Overflow::DropOldest] {
            let r = Arc::new(Rings::new(1, 1024, policy).unwrap());
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let r = r.clone();
                    std::thread::spawn(move || {
                        for i in 0..10_000 {
                            r.push(0, ev(i));
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let s = r.stats(0);
            let mut out = Vec::new();
            let popped = r.pop_batch(0, usize::MAX, &mut out) as u64;
            assert_eq!(popped, 1024, "{policy:?}");
            assert_eq!(s.accepted + s.rejected, 40_000, "{policy:?}");
            assert_eq!(s.dropped(), 40_000 - 1024, "{policy:?}");
        }
    }

    #[test]
    fn cpu_slot_is_a_cpu_of_this_machine() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        assert!(cpu_slot() < n.max(64));
    }

    #[test]
    fn payload_bytes_follow_push_pop_and_eviction() {
        // payloads too big for their slot are counted; inline ones are slot memory
        let big = crate::etf::INLINE_PAYLOAD + 10;
        let r = Rings::new(1, 4, Overflow::DropOldest).unwrap();
        for i in 0..6 {
            r.push(
                0,
                RawEvent {
                    id: i,
                    data: smallvec::smallvec![0; big],
                    ..Default::default()
                },
            );
        }
        assert_eq!(r.payload_bytes(), 4 * big as u64);
        let mut out = Vec::new();
        r.pop_batch(0, 3, &mut out);
        assert_eq!(r.payload_bytes(), big as u64);
        r.push(0, ev(9));
        assert_eq!(
            r.payload_bytes(),
            big as u64,
            "an inline payload adds nothing"
        );
    }
}
