//! Per-process capture context: the stack of open calls and the message being
//! handled, so a nested call knows its parent and a state change knows its cause
//! at the moment it is captured (no matter which writer later sees it).
//!
//! An entry exists only while a process is inside an instrumented call or
//! handling a message; it is removed when its stack empties and no message is
//! open, on `process_exit`, and by the TTL sweep. The map is bounded: past
//! `max_processes` new processes are not tracked (their events carry no parent)
//! and that is counted.

use crate::event::LinkKind;
use crate::fasthash::FastBuild;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

pub struct Contexts {
    map: DashMap<u64, Ctx, FastBuild>,
    /// Entries in `map` (DashMap::len locks every shard: too dear per call).
    count: AtomicUsize,
    max_processes: usize,
    overflow: AtomicU64,
}

/// The capture-time cause of an event: the id and the link that names it.
pub type Cause = Option<(u64, LinkKind)>;

impl Contexts {
    pub fn new(max_processes: usize) -> Contexts {
        Contexts {
            map: DashMap::with_hasher(FastBuild::default()),
            count: AtomicUsize::new(0),
            max_processes,
            overflow: AtomicU64::new(0),
        }
    }

    fn with<R>(
        &self,
        pid: u64,
        now: i64,
        create: bool,
        f: impl FnOnce(&mut Ctx) -> R,
    ) -> Option<R> {
        if let Some(mut c) = self.map.get_mut(&pid) {
            c.touched_ns = now;
            return Some(f(&mut c));
        }
        if !create {
            return None;
        }
        if self.count.load(Ordering::Relaxed) >= self.max_processes {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut c = self.map.entry(pid).or_insert_with(|| {
            self.count.fetch_add(1, Ordering::Relaxed);
            Ctx::default()
        });
        c.touched_ns = now;
        Some(f(&mut c))
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
        self.map.get(&pid).and_then(|c| {
            if c.message != 0 {
                Some((c.message, LinkKind::CausedBy))
            } else {
                c.stack.last().map(|top| (top.call_id, LinkKind::CausedBy))
            }
        })
    }

    /// The innermost open call of `pid`.
    pub fn current_call(&self, pid: u64) -> Option<u64> {
        self.map
            .get(&pid)
            .and_then(|c| c.stack.last().map(|f| f.call_id))
    }

    fn remove_if(&self, pid: u64, f: impl FnOnce(&Ctx) -> bool) {
        if self.map.remove_if(&pid, |_, c| f(c)).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn forget(&self, pid: u64) {
        self.remove_if(pid, |_| true);
    }

    /// Drops contexts untouched since `cutoff_ns`; returns how many.
    pub fn sweep(&self, cutoff_ns: i64) -> usize {
        let mut removed = 0;
        self.map.retain(|_, c| {
            let keep = c.touched_ns >= cutoff_ns;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Drops contexts with no open call and no message that were not touched
    /// since `cutoff_ns` (kept a while: the next call of a busy process reuses
    /// its entry instead of removing and re-inserting it).
    pub fn sweep_idle(&self, cutoff_ns: i64) -> usize {
        let mut removed = 0;
        self.map.retain(|_, c| {
            let keep = c.touched_ns >= cutoff_ns || !c.stack.is_empty() || c.message != 0;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Calls open now, over every process (walks the map: for metrics).
    pub fn open_calls(&self) -> usize {
        self.map.iter().map(|c| c.stack.len()).sum()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
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
