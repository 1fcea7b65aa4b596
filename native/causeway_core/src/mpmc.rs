//! A bounded lock-free MPMC queue (Dmitry Vyukov's design, the one
//! `crossbeam::queue::ArrayQueue` also uses), with positions that count: the
//! tail is the number of slots ever taken by producers, the head the number
//! ever released by consumers.
//!
//! That is why the rings use it instead of `ArrayQueue`: a producer takes
//! its position and only then writes its event, so `reserved()` is at every
//! moment the exact, FIFO-ordered count of events accepted so far. A
//! durability barrier that waits until the head passes it waits for every
//! event whose push began before it, including one whose producer was
//! preempted between taking its slot and filling it (consumers cannot pop
//! past a slot not yet filled). With a separate counter incremented after the
//! push, two producers on one CPU could count in the other order than they
//! queued, and a barrier could return before an earlier-returned push was
//! persisted. It also saves that counter's atomic add on every push.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;

struct Slot<T> {
    /// `pos` when free for the producer of position `pos`; `pos + 1` when
    /// filled for the consumer of position `pos`.
    seq: AtomicU64,
    value: UnsafeCell<MaybeUninit<T>>,
}

pub struct Queue<T> {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    slots: Box<[Slot<T>]>,
    mask: u64,
}

// SAFETY: a value is written by exactly one producer (the one whose CAS took
// its position) before the slot's `seq` is released to consumers, and read by
// exactly one consumer (the one whose CAS took it) before the slot is
// released to the producer of the next lap.
unsafe impl<T: Send> Send for Queue<T> {}
unsafe impl<T: Send> Sync for Queue<T> {}

/// A position taken by `reserve` in one queue: its slot is this producer's
/// until `commit`. (Crate-internal: a reservation never committed would
/// block the queue's consumers for good.)
#[must_use = "a reserved slot blocks every consumer until it is committed"]
pub(crate) struct Reserved<'q, T> {
    queue: &'q Queue<T>,
    pos: u64,
}

impl<T> Reserved<'_, T> {
    /// Fills the reserved slot and hands it to consumers.
    #[inline]
    pub(crate) fn commit(self, value: T) {
        let slot = self.queue.slot(self.pos);
        // SAFETY: the position is ours alone (see `Send`/`Sync` above).
        unsafe { (*slot.value.get()).write(value) };
        slot.seq.store(self.pos + 1, Ordering::Release);
    }
}

/// Asks the CPU to fetch `slot`'s cache lines for writing (`PREFETCHW`
/// where the CPU has it, a read prefetch elsewhere). A hint: never faults.
#[inline(always)]
fn prefetch_for_write<T>(slot: &Slot<T>) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let start = slot as *const Slot<T> as *const u8;
        let end = start.wrapping_add(std::mem::size_of::<Slot<T>>() - 1);
        let mut line = start as usize & !63;
        while line <= end as usize {
            // SAFETY: prefetches do not access memory architecturally; the
            // lines are the slot's own
            unsafe {
                if has_prefetchw() {
                    std::arch::asm!("prefetchw [{}]", in(reg) line, options(nostack, preserves_flags, readonly));
                } else {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        line as *const i8,
                    );
                }
            }
            line += 64;
        }
    }
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    let _ = slot;
}

/// Whether the CPU has `PREFETCHW` (CPUID 8000_0001h ECX bit 8), asked once.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline(always)]
fn has_prefetchw() -> bool {
    use std::sync::atomic::AtomicU8;
    static HAS: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
    match HAS.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            // SAFETY: CPUID is available on every x86_64 CPU
            let yes = {
                core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0001
                    && core::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0
            };
            HAS.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// A value that can be written empty where it will live, field by field:
/// building it elsewhere and copying it in has the copy's wide loads wait
/// for the narrow stores that built it (a failed store-to-load forward; perf
/// showed it as the hottest instruction of a capture).
pub trait WriteEmpty {
    /// # Safety
    /// `p` is valid for writes and aligned; what it held is overwritten
    /// without being dropped. (An implementation that panics leaves the
    /// slot reserved for good: it must not.)
    unsafe fn write_empty(p: *mut Self);
}

impl<T: WriteEmpty> Reserved<'_, T> {
    /// Fills the reserved slot in place: `fill` gets an empty value there
    /// to complete (nothing is built elsewhere and copied in). The slot is
    /// handed to consumers when `fill` returns, and also if it panics (with
    /// what it had written so far): a reserved slot is never left blocking
    /// the queue.
    #[inline(always)]
    pub(crate) fn commit_in_place<R>(self, fill: impl FnOnce(&mut T) -> R) -> R {
        struct Release<'s> {
            seq: &'s AtomicU64,
            to: u64,
        }
        impl Drop for Release<'_> {
            #[inline(always)]
            fn drop(&mut self) {
                self.seq.store(self.to, Ordering::Release);
            }
        }
        let slot = self.queue.slot(self.pos);
        // SAFETY: the position is ours alone (see `Send`/`Sync` above); the
        // value is initialized before `fill` sees it, and before the slot
        // can be released (the guard is made after `write_empty`).
        let value = unsafe {
            let p = (*slot.value.get()).as_mut_ptr();
            T::write_empty(p);
            &mut *p
        };
        let _release = Release {
            seq: &slot.seq,
            to: self.pos + 1,
        };
        fill(value)
    }
}

impl<T> Queue<T> {
    /// A queue of `capacity` slots (a power of two, at least 2).
    pub fn new(capacity: usize) -> Queue<T> {
        match Self::try_new(capacity) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like `new`, but a capacity that is not a power of two, or memory the
    /// allocator refuses, is an error instead of a panic or an abort.
    pub fn try_new(capacity: usize) -> crate::Result<Queue<T>> {
        if !capacity.is_power_of_two() || capacity < 2 {
            return Err(crate::Error::InvalidArgument(format!(
                "queue capacity must be a power of two >= 2, got {capacity}"
            )));
        }
        let mut slots: Vec<Slot<T>> = Vec::new();
        slots.try_reserve_exact(capacity).map_err(|e| {
            crate::Error::InvalidArgument(format!(
                "cannot allocate a ring of {capacity} slots ({} B): {e}",
                (capacity as u64).saturating_mul(std::mem::size_of::<Slot<T>>() as u64)
            ))
        })?;
        slots.extend((0..capacity as u64).map(|i| Slot {
            seq: AtomicU64::new(i),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }));
        let slots = slots.into_boxed_slice();
        Ok(Queue {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            slots,
            mask: capacity as u64 - 1,
        })
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn slot(&self, pos: u64) -> &Slot<T> {
        &self.slots[(pos & self.mask) as usize]
    }

    /// Takes the next position, or `None` when the queue is full. (Also
    /// `None` for the moment a consumer has taken the oldest value and not
    /// yet released its slot: the queue is one short of full then.)
    #[inline]
    pub(crate) fn reserve(&self) -> Option<Reserved<'_, T>> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let seq = self.slot(pos).seq.load(Ordering::Acquire);
            let dif = seq.wrapping_sub(pos) as i64;
            if dif == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // the slot after next is what this producer's CPU
                        // most likely writes next: fetch it for writing now,
                        // so that store does not wait for memory (a ring
                        // larger than the caches misses on every slot)
                        prefetch_for_write(self.slot(pos + 2));
                        return Some(Reserved { queue: self, pos });
                    }
                    Err(now) => pos = now,
                }
            } else if dif < 0 {
                // the slot still holds the value of the previous lap
                return None;
            } else {
                // another producer took this position
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// `reserve` and `commit`: the value's position, or the value back when
    /// the queue is full.
    #[inline]
    pub fn push(&self, value: T) -> Result<u64, T> {
        match self.reserve() {
            Some(r) => {
                let pos = r.pos;
                r.commit(value);
                Ok(pos)
            }
            None => Err(value),
        }
    }

    /// The oldest value, or `None` when the queue is empty or its oldest
    /// slot is reserved but not yet filled.
    #[inline]
    pub fn pop(&self) -> Option<T> {
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            let dif = seq.wrapping_sub(pos + 1) as i64;
            if dif == 0 {
                match self.head.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: filled (seq == pos + 1) and now ours alone.
                        let value = unsafe { (*slot.value.get()).assume_init_read() };
                        slot.seq
                            .store(pos + self.slots.len() as u64, Ordering::Release);
                        return Some(value);
                    }
                    Err(now) => pos = now,
                }
            } else if dif < 0 {
                return None;
            } else {
                pos = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Positions reserved so far: every value ever accepted.
    #[inline]
    pub fn reserved(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Positions released so far: every value ever removed.
    pub fn released(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Values in the queue (reserved and not yet removed).
    pub fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        (tail.saturating_sub(head) as usize).min(self.slots.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every slot holds a value or a reservation (counted by positions, so
    /// not while a consumer is between taking a value and freeing its slot).
    pub fn is_full(&self) -> bool {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        tail.saturating_sub(head) >= self.slots.len() as u64
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        // `&mut self`: no producer or consumer is left. A slot reserved and
        // never committed (a bug: `Reserved` is `must_use`) would stop this
        // drain; what is behind it would leak, nothing is read uninitialised.
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, PartialEq)]
    struct Pair(u64, String);

    #[test]
    fn a_queue_the_allocator_refuses_is_an_error_not_an_abort() {
        // 2^60 slots of 16+ bytes: more than any address space
        let e = Queue::<u64>::try_new(1 << 60).err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("cannot allocate a ring")));
        assert!(Queue::<u64>::try_new(1000).is_err());
        assert_eq!(Queue::<u64>::try_new(4).map(|q| q.capacity()).ok(), Some(4));
    }

    impl WriteEmpty for Pair {
        unsafe fn write_empty(p: *mut Pair) {
            unsafe { p.write(Pair(0, String::new())) }
        }
    }

    #[test]
    fn a_value_filled_in_place_is_handed_over_even_when_filling_panics() {
        let q = Queue::<Pair>::new(4);
        let r = q.reserve().unwrap();
        let got = r.commit_in_place(|v| {
            assert_eq!(*v, Pair(0, String::new()));
            v.0 = 7;
            v.1.push_str("seven");
            v.0 * 2
        });
        assert_eq!(got, 14);
        // a panicking fill still releases its slot with what it wrote
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            q.reserve().unwrap().commit_in_place(|v| {
                v.0 = 8;
                panic!("while filling");
            })
        }));
        assert!(caught.is_err());
        q.push(Pair(9, "nine".into())).unwrap();
        assert_eq!(q.pop(), Some(Pair(7, "seven".into())));
        assert_eq!(q.pop(), Some(Pair(8, String::new())));
        assert_eq!(q.pop(), Some(Pair(9, "nine".into())));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn fifo_full_and_empty() {
        let q = Queue::new(4);
        assert_eq!(q.pop(), None::<u32>);
        for i in 0..4 {
            assert_eq!(q.push(i), Ok(i as u64));
        }
        assert_eq!(q.push(9), Err(9));
        assert_eq!((q.len(), q.reserved(), q.released()), (4, 4, 0));
        assert!(q.is_full());
        assert_eq!(q.pop(), Some(0));
        assert_eq!(q.push(4), Ok(4));
        assert_eq!(
            std::iter::from_fn(|| q.pop()).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(q.is_empty());
        assert_eq!((q.reserved(), q.released()), (5, 5));
    }

    #[test]
    fn a_reserved_slot_holds_back_the_consumers_until_committed() {
        let q = Queue::new(8);
        let first = q.reserve().expect("room");
        assert_eq!(q.push(2u32), Ok(1));
        assert_eq!(q.reserved(), 2, "both counted, in queue order");
        assert_eq!(q.pop(), None, "the first slot is not filled yet");
        first.commit(1);
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
    }

    #[test]
    fn values_left_in_the_queue_are_dropped_with_it() {
        let v = Arc::new(());
        {
            let q = Queue::new(4);
            for _ in 0..3 {
                q.push(v.clone()).expect("room");
            }
            q.pop();
        }
        assert_eq!(Arc::strong_count(&v), 1);
    }

    #[test]
    fn many_producers_and_consumers_lose_and_duplicate_nothing() {
        use std::sync::atomic::AtomicBool;
        let q = Arc::new(Queue::new(64));
        let done = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..4u64)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let mut v = t << 32 | i;
                        while let Err(back) = q.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (q, done) = (q.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match q.pop() {
                            Some(v) => got.push(v),
                            None if done.load(Ordering::Acquire) && q.is_empty() => break,
                            None => std::thread::yield_now(),
                        }
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().expect("producer");
        }
        done.store(true, Ordering::Release);
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| c.join().expect("consumer"))
            .collect();
        assert_eq!(all.len(), 200_000);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 200_000, "no value twice");
        assert_eq!((q.reserved(), q.released()), (200_000, 200_000));
    }
}
