//! `Causeway.open(dir, atoms: :create)`: names read from a store that are
//! not atoms in this VM (modules, functions, keys, atoms in terms) become
//! atoms — at most `limit` of them per opened store, so the VM's atom table
//! is never exhausted. Past the limit the names stay binaries (as with the
//! default, safe reading) and the store's next query fails with an error
//! that says so.
//!
//! The budget in force is set per NIF call, by `Handle::store()` (every
//! query takes its store that way first), in a thread-local read by
//! `convert::name`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct AtomBudget {
    pub limit: u64,
    created: AtomicU64,
    exhausted: AtomicBool,
}

thread_local! {
    static IN_FORCE: RefCell<Option<Arc<AtomBudget>>> = const { RefCell::new(None) };
}

impl AtomBudget {
    pub fn new(limit: u64) -> AtomBudget {
        AtomBudget {
            limit,
            created: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
        }
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }
}

/// The budget of the store this NIF call reads (`None`: create no atom).
pub fn enter(budget: Option<Arc<AtomBudget>>) {
    IN_FORCE.with(|b| *b.borrow_mut() = budget);
}

/// Whether one more atom may be created now (and counts it).
pub fn may_create() -> bool {
    IN_FORCE.with(|b| match &*b.borrow() {
        None => false,
        Some(budget) => {
            let ok = budget
                .created
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < budget.limit).then_some(n + 1)
                })
                .is_ok();
            if !ok {
                budget.exhausted.store(true, Ordering::Relaxed);
            }
            ok
        }
    })
}
