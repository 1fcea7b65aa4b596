//! Per-CPU counts of threads inside a short section (a capture), so another
//! thread can wait until none is inside any more: before freeing what the
//! section reads (the runtime's default pipeline), or before a final drain
//! (a pipeline's close). Entering touches only the caller's CPU's cache line.

use crate::ring::cpu_slot;
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicUsize, Ordering};

const SLOTS: usize = 64;

pub struct InFlight {
    slots: [CachePadded<AtomicUsize>; SLOTS],
}

/// Inside the section until dropped (also when the section panics).
pub struct Inside<'a>(&'a AtomicUsize);

impl Drop for Inside<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl InFlight {
    pub const fn new() -> InFlight {
        InFlight {
            slots: [const { CachePadded::new(AtomicUsize::new(0)) }; SLOTS],
        }
    }

    /// Enters on the slot of CPU `cpu` (the caller's, from `cpu_slot`). What
    /// the caller reads after this (with `SeqCst`) a waiter sees it reading.
    #[inline]
    pub fn enter_on(&self, cpu: usize) -> Inside<'_> {
        let slot = &self.slots[cpu % SLOTS];
        slot.fetch_add(1, Ordering::SeqCst);
        Inside(slot)
    }

    #[inline]
    pub fn enter(&self) -> Inside<'_> {
        self.enter_on(cpu_slot())
    }

    /// Waits until every slot has been seen at zero once: every section
    /// entered before this call has left.
    pub fn wait_idle(&self) {
        for slot in &self.slots {
            while slot.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_waits_for_sections_entered_before_it() {
        let f = Arc::new(InFlight::new());
        let inside = f.enter_on(3);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || {
                f.wait_idle();
                tx.send(()).unwrap();
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            rx.try_recv().is_err(),
            "returned while a section was inside"
        );
        drop(inside);
        rx.recv().unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn a_section_that_panics_still_leaves() {
        let f = InFlight::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _inside = f.enter();
            panic!("in the section");
        }));
        assert!(r.is_err());
        f.wait_idle(); // returns
    }
}
