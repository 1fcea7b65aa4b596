//! Per-process capture context: the stack of open calls and the message being
//! handled, so a nested call knows its parent and a state change knows its cause
//! at the moment it is captured (no matter which writer later sees it).
//!
//! An entry exists only while a process is inside an instrumented call or
//! handling a message; it is removed when its stack empties and no message is
//! open, on `process_exit`, and by the TTL sweep. The map is bounded: past
//! `max_processes` new processes are not tracked (their events carry no parent)
//! and that is counted.
//!
//! Every capture of a call touches its process's context twice (entry and
//! exit), so the table is lean: a fixed array of buckets, each a few entries
//! behind a spinlock taken with one compare-and-swap and released with a
//! plain store (a `DashMap` shard costs two compare-and-swaps and a
//! SwissTable probe: measured ~12% of a capture with it, by removing it).
//! A process only ever contends with itself and, rarely, with a sweep or a
//! process hashed to the same bucket; every critical section is a few
//! instructions on one entry.

use crate::event::LinkKind;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The deepest stack of open calls kept per process (memory stays bounded
/// when returns are never reported).
pub const MAX_STACK: usize = 100_000;

/// An open call: its id (= the entry's event id) and what was called.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub call_id: u64,
    pub module: u64,
    pub function: u64,
    pub arity: u32,
}

#[derive(Debug, Default)]
struct Ctx {
    stack: Vec<Frame>,
    message: u64,
    touched_ns: i64,
}

/// Buckets in the table: 16 384 (32 bytes each). A million processes with
/// an open context would put ~60 in a bucket; a busy node has thousands.
const BUCKETS: usize = 1 << 14;

struct Bucket {
    locked: AtomicBool,
    entries: UnsafeCell<Vec<(u64, Ctx)>>,
}

// SAFETY: `entries` is only touched while `locked` is held (see `Locked`).
unsafe impl Sync for Bucket {}

/// A bucket's entries while its lock is held; released when dropped (also
/// when the section panics).
struct Locked<'a>(&'a Bucket);

impl Bucket {
    #[inline]
    fn lock(&self) -> Locked<'_> {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // the holder is a few instructions from releasing, unless its
            // thread was preempted: then let it run
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Locked(self)
    }
}

impl Locked<'_> {
    #[inline]
    fn entries(&mut self) -> &mut Vec<(u64, Ctx)> {
        // SAFETY: the lock is held, and `&mut self` makes this the only
        // reference to the entries
        unsafe { &mut *self.0.entries.get() }
    }
}

impl Drop for Locked<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.locked.store(false, Ordering::Release);
    }
}

pub struct Contexts {
    buckets: Box<[Bucket]>,
    /// Entries in the table.
    count: AtomicUsize,
    max_processes: usize,
    overflow: AtomicU64,
}

/// The capture-time cause of an event: the id and the link that names it.
pub type Cause = Option<(u64, LinkKind)>;

impl Contexts {
    pub fn new(max_processes: usize) -> Contexts {
        Contexts {
            buckets: (0..BUCKETS)
                .map(|_| Bucket {
                    locked: AtomicBool::new(false),
                    entries: UnsafeCell::new(Vec::new()),
                })
                .collect(),
            count: AtomicUsize::new(0),
            max_processes,
            overflow: AtomicU64::new(0),
        }
    }

    /// The bucket of `pid` (the pid word's tag bits are the same for
    /// every local pid: the multiply spreads the number bits to the top).
    #[inline]
    fn bucket(&self, pid: u64) -> &Bucket {
        let h = pid.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BUCKETS.trailing_zeros());
        &self.buckets[h as usize & (BUCKETS - 1)]
    }

    /// Runs `f` on `pid`'s context (made when `create` and there is room).
    #[inline]
    fn with<R>(
        &self,
        pid: u64,
        now: i64,
        create: bool,
        f: impl FnOnce(&mut Ctx) -> R,
    ) -> Option<R> {
        let mut b = self.bucket(pid).lock();
        let entries = b.entries();
        if let Some((_, c)) = entries.iter_mut().find(|(p, _)| *p == pid) {
            c.touched_ns = now;
            return Some(f(c));
        }
        if !create {
            return None;
        }
        if self.count.load(Ordering::Relaxed) >= self.max_processes {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        entries.push((
            pid,
            Ctx {
                touched_ns: now,
                ..Ctx::default()
            },
        ));
        let last = entries.len() - 1;
        Some(f(&mut entries[last].1))
    }

    /// Runs `f` on `pid`'s context if it has one, without touching it.
    #[inline]
    fn peek<R>(&self, pid: u64, f: impl FnOnce(&Ctx) -> Option<R>) -> Option<R> {
        let mut b = self.bucket(pid).lock();
        b.entries()
            .iter()
            .find(|(p, _)| *p == pid)
            .and_then(|(_, c)| f(c))
    }

    /// Keeps the contexts `keep` says yes to; returns how many went.
    fn retain(&self, mut keep: impl FnMut(&Ctx) -> bool) -> usize {
        let mut removed = 0;
        for bucket in self.buckets.iter() {
            let mut b = bucket.lock();
            let entries = b.entries();
            let before = entries.len();
            entries.retain(|(_, c)| keep(c));
            removed += before - entries.len();
        }
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// A call begins: returns its parent (the open call, else the message being handled).
    /// A stack already `MAX_STACK` deep is not grown (counted in `overflow`):
    /// the call keeps its parent, its own children then name that parent too.
    pub fn enter(&self, pid: u64, frame: Frame, now: i64) -> Cause {
        self.with(pid, now, true, |c| {
            let parent = match c.stack.last() {
                Some(top) => Some((top.call_id, LinkKind::CalledFrom)),
                None if c.message != 0 => Some((c.message, LinkKind::CausedBy)),
                None => None,
            };
            if c.stack.len() < MAX_STACK {
                c.stack.push(frame);
            } else {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
            parent
        })
        .flatten()
    }

    /// `pid` is done with the message it was handling: what it does next is
    /// no longer caused by it.
    pub fn handled(&self, pid: u64, now: i64) {
        self.with(pid, now, false, |c| c.message = 0);
    }

    /// A call ends (normally or by exception): its frame and any frames above it
    /// (left open by a non-local return) are closed. Returns the call's frame, or
    /// `None` if it was not open.
    pub fn exit(&self, pid: u64, call_id: u64, now: i64) -> Option<Frame> {
        self.close_innermost(pid, now, |f| f.call_id == call_id)
    }

    /// A traced function returned: closes the innermost open call of that
    /// function (and any frames above it). The tracer reports returns by
    /// module/function/arity, not by call id.
    pub fn exit_matching(
        &self,
        pid: u64,
        module: u64,
        function: u64,
        arity: u32,
        now: i64,
    ) -> Option<Frame> {
        self.close_innermost(pid, now, |f| {
            f.module == module && f.function == function && f.arity == arity
        })
    }

    /// Closes the innermost frame matching `is_it` and everything above it.
    /// An idle context stays for the process's next call (`sweep_idle` removes it).
    fn close_innermost(&self, pid: u64, now: i64, is_it: impl Fn(&Frame) -> bool) -> Option<Frame> {
        self.with(pid, now, false, |c| {
            let pos = c.stack.iter().rposition(is_it)?;
            let f = c.stack[pos];
            c.stack.truncate(pos);
            Some(f)
        })
        .flatten()
    }

    /// A message is being handled by `pid`: later state changes are caused by it.
    pub fn receive(&self, pid: u64, receive_id: u64, now: i64) {
        self.with(pid, now, true, |c| c.message = receive_id);
    }

    /// What `pid` is doing now: the message it handles, else its open call.
    pub fn cause(&self, pid: u64) -> Cause {
        self.peek(pid, |c| {
            if c.message != 0 {
                Some((c.message, LinkKind::CausedBy))
            } else {
                c.stack.last().map(|top| (top.call_id, LinkKind::CausedBy))
            }
        })
    }

    /// The innermost open call of `pid`.
    pub fn current_call(&self, pid: u64) -> Option<u64> {
        self.peek(pid, |c| c.stack.last().map(|f| f.call_id))
    }

    pub fn forget(&self, pid: u64) {
        let mut b = self.bucket(pid).lock();
        let entries = b.entries();
        if let Some(i) = entries.iter().position(|(p, _)| *p == pid) {
            entries.swap_remove(i);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops contexts untouched since `cutoff_ns`; returns how many.
    pub fn sweep(&self, cutoff_ns: i64) -> usize {
        self.retain(|c| c.touched_ns >= cutoff_ns)
    }

    /// Drops contexts with no open call and no message that were not touched
    /// since `cutoff_ns` (kept a while: the next call of a busy process reuses
    /// its entry instead of removing and re-inserting it).
    pub fn sweep_idle(&self, cutoff_ns: i64) -> usize {
        self.retain(|c| c.touched_ns >= cutoff_ns || !c.stack.is_empty() || c.message != 0)
    }

    /// Calls open now, over every process (walks the table: for metrics).
    pub fn open_calls(&self) -> usize {
        self.buckets
            .iter()
            .map(|bucket| {
                let mut b = bucket.lock();
                b.entries()
                    .iter()
                    .map(|(_, c)| c.stack.len())
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The bucket array, allocated up front.
    pub const fn table_bytes() -> u64 {
        (BUCKETS * std::mem::size_of::<Bucket>()) as u64
    }

    /// About what the table holds: its buckets, and ~96 bytes per context
    /// (its entry and a small stack).
    pub fn memory_bytes(&self) -> u64 {
        Self::table_bytes() + self.len() as u64 * 96
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u64) -> Frame {
        Frame {
            call_id: id,
            module: 7,
            function: 8,
            arity: 1,
        }
    }

    #[test]
    fn nested_calls_get_their_parent_and_exits_clean_up() {
        let c = Contexts::new(100);
        assert_eq!(c.enter(1, f(10), 0), None);
        assert_eq!(c.enter(1, f(11), 0), Some((10, LinkKind::CalledFrom)));
        assert_eq!(
            c.enter(2, f(20), 0),
            None,
            "other process has its own stack"
        );
        assert_eq!(c.enter(1, f(12), 0), Some((11, LinkKind::CalledFrom)));
        assert_eq!(c.exit(1, 12, 0), Some(f(12)));
        assert!(c.exit(1, 11, 0).is_some());
        assert!(c.exit(1, 10, 0).is_some());
        assert_eq!(c.exit(1, 10, 0), None);
        assert_eq!(c.open_calls(), 1, "only process 2 is still inside a call");
        assert_eq!(c.sweep_idle(1), 1, "process 1's idle context goes");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_handled_message_no_longer_causes_and_stacks_are_bounded() {
        let c = Contexts::new(100);
        c.receive(1, 50, 0);
        assert_eq!(c.cause(1), Some((50, LinkKind::CausedBy)));
        c.handled(1, 0);
        assert_eq!(c.cause(1), None);
        assert_eq!(c.sweep_idle(1), 1, "an idle context can go once handled");

        for i in 0..(MAX_STACK as u64 + 5) {
            c.enter(2, f(i + 1), 0);
        }
        assert_eq!(c.open_calls(), MAX_STACK);
        assert_eq!(c.overflow(), 5);
    }

    #[test]
    fn an_exception_unwinding_several_frames_closes_them() {
        let c = Contexts::new(100);
        c.enter(1, f(10), 0);
        c.enter(1, f(11), 0);
        c.enter(1, f(12), 0);
        assert!(
            c.exit(1, 10, 0).is_some(),
            "outer frame catches what the inner raised"
        );
        assert_eq!(c.open_calls(), 0);
    }

    #[test]
    fn state_changes_are_caused_by_the_message_being_handled() {
        let c = Contexts::new(100);
        c.enter(1, f(10), 0);
        c.receive(1, 50, 0);
        assert_eq!(c.cause(1), Some((50, LinkKind::CausedBy)));
        c.exit(1, 10, 0);
        assert_eq!(
            c.cause(1),
            Some((50, LinkKind::CausedBy)),
            "message context survives"
        );
        assert_eq!(c.enter(1, f(60), 0), Some((50, LinkKind::CausedBy)));
        c.forget(1);
        assert_eq!(c.cause(1), None);
    }

    #[test]
    fn returns_reported_by_function_close_the_innermost_match() {
        let c = Contexts::new(100);
        c.enter(
            1,
            Frame {
                call_id: 10,
                module: 1,
                function: 2,
                arity: 1,
            },
            0,
        );
        c.enter(
            1,
            Frame {
                call_id: 11,
                module: 1,
                function: 3,
                arity: 0,
            },
            0,
        );
        c.enter(
            1,
            Frame {
                call_id: 12,
                module: 1,
                function: 2,
                arity: 1,
            },
            0,
        );
        assert_eq!(c.exit_matching(1, 1, 2, 1, 0).map(|f| f.call_id), Some(12));
        assert_eq!(c.exit_matching(1, 1, 3, 0, 0).map(|f| f.call_id), Some(11));
        assert_eq!(c.exit_matching(1, 9, 9, 9, 0), None);
        assert_eq!(c.exit_matching(1, 1, 2, 1, 0).map(|f| f.call_id), Some(10));
        assert_eq!(c.open_calls(), 0);
    }

    #[test]
    fn many_processes_on_many_threads_keep_their_own_stacks() {
        let c = std::sync::Arc::new(Contexts::new(1_000_000));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        // another thread walks every bucket meanwhile (metrics)
        let walker = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.open_calls();
                }
            })
        };
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for round in 0..3u64 {
                        for pid in (t * 5_000)..(t * 5_000 + 5_000) {
                            let outer = pid * 10 + round;
                            assert_eq!(c.enter(pid, f(outer), 1), None);
                            assert_eq!(
                                c.enter(pid, f(outer + 1_000_000_000), 1),
                                Some((outer, LinkKind::CalledFrom))
                            );
                            assert_eq!(c.current_call(pid), Some(outer + 1_000_000_000));
                            assert!(c.exit(pid, outer + 1_000_000_000, 1).is_some());
                            assert!(c.exit(pid, outer, 1).is_some());
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker");
        }
        stop.store(true, Ordering::Relaxed);
        walker.join().expect("walker");
        assert_eq!(c.len(), 20_000);
        assert_eq!(c.open_calls(), 0);
        c.forget(7);
        assert_eq!(c.len(), 19_999);
        assert_eq!(c.sweep_idle(2), 19_999);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_and_swept() {
        let c = Contexts::new(2);
        c.enter(1, f(1), 100);
        c.enter(2, f(2), 200);
        assert_eq!(c.enter(3, f(3), 300), None);
        assert_eq!(c.overflow(), 1);
        assert_eq!(c.len(), 2);
        assert_eq!(c.sweep(150), 1);
        assert_eq!(c.current_call(2), Some(2));
    }
}
