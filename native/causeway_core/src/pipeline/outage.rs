//! Storage outages: entering and leaving one, reopening a failing store with
//! backoff, and giving the store up (`release_store`) or taking it back.

use super::*;

/// The first and the longest pause between two reopens of a failing store
/// (each RocksDB open costs a file descriptor sweep and an info log).
pub(super) const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(50);
pub(super) const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(2);

impl Pipeline {
    /// The error the store is failing with, while it is.
    pub fn outage_message(&self) -> Option<String> {
        if !self.down.load(Ordering::Acquire) {
            return None;
        }
        self.outage
            .lock()
            .ok()
            .and_then(|o| o.clone())
            .or_else(|| Some("storage failed".into()))
    }

    /// The store failed with `e`: flushes waiting now, and those asked for
    /// until it is back, are answered with the error.
    pub(super) fn enter_outage(&self, e: &Error) {
        if let Ok(mut o) = self.outage.lock() {
            *o = Some(e.to_string());
        }
        self.down.store(true, Ordering::Release);
        self.check_flushes();
    }

    pub(super) fn leave_outage(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            if let Ok(mut o) = self.outage.lock() {
                *o = None;
            }
        }
    }

    /// While the store is failing: reopens it if the pause since the last
    /// try has passed (called by writers between retries and by the manager,
    /// so a store comes back even when nothing is being captured).
    pub(super) fn try_recover(&self, worker: usize) {
        if !self.down.load(Ordering::Acquire) || self.closing.load(Ordering::Relaxed) {
            return;
        }
        {
            let Ok(mut next) = self.next_recovery.lock() else {
                return;
            };
            if Instant::now() < next.0 {
                return;
            }
            let pause = next.1;
            *next = (Instant::now() + pause, (pause * 2).min(RECOVERY_PAUSE_MAX));
        }
        match self.recover_store() {
            Ok(true) => {
                if let Ok(mut next) = self.next_recovery.lock() {
                    *next = (Instant::now(), RECOVERY_PAUSE_MIN);
                }
                self.leave_outage();
                self.notifier
                    .worker_event(worker, "storage_recovered", "store reopened");
            }
            Ok(false) => {}
            Err(re) => {
                if let Ok(mut o) = self.outage.lock() {
                    *o = Some(format!("reopen failed: {re}"));
                }
            }
        }
    }

    /// Reopens the store after a storage failure: lets go of the broken
    /// database (waiting briefly for queries that hold it), opens the directory
    /// again, and puts the new one in place. `Ok(false)` if another worker is
    /// already doing it. Until it succeeds, writes fail and are retried.
    pub fn recover_store(&self) -> Result<bool> {
        let Ok(_guard) = self.recovering.try_lock() else {
            return Ok(false);
        };
        let Ok(mut slot) = self.store.lock() else {
            return Err(Error::Busy("store slot poisoned".into()));
        };
        let ro_opts = crate::store::StoreOptions {
            read_only: true,
            ..self.store_opts.clone()
        };
        if let Some(old) = slot.take() {
            // a read-only stand-in first (it takes no lock), so a query
            // never finds no store while the broken one closes and the
            // directory is opened again
            *slot = Store::open(&self.store_path, ro_opts.clone())
                .ok()
                .map(Arc::new);
            // other writers and queries drop their clones when they finish
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(store) => {
                        drop(store); // closes the database, releases its lock
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        drop(slot);
                        std::thread::sleep(Duration::from_millis(5));
                        slot = self
                            .store
                            .lock()
                            .map_err(|_| Error::Busy("store slot poisoned".into()))?;
                    }
                    Err(still_shared) => {
                        // someone holds it for long: put it back, try again later
                        *slot = Some(still_shared);
                        return Ok(false);
                    }
                }
            }
        }
        match Store::open(&self.store_path, self.store_opts.clone()) {
            Ok(store) => {
                *slot = Some(Arc::new(store));
                Counters::add(&self.counters.recoveries, 1);
                Ok(true)
            }
            Err(e) => {
                // queries go on against what is on disk while writes wait
                if slot.is_none() {
                    *slot = Store::open(&self.store_path, ro_opts).ok().map(Arc::new);
                }
                Err(e)
            }
        }
    }

    /// Lets go of the store (after `close`) and waits (up to 10 s) for
    /// queries still running on it to finish, so the database is closed (its
    /// lock released) when this returns and the same directory can be opened
    /// again at once.
    pub fn release_store(&self) {
        let Some(mut store) = self.store.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(store) {
                Ok(s) => {
                    drop(s);
                    return;
                }
                // a long query keeps it; it closes when that query ends
                Err(_) if Instant::now() >= deadline => return,
                Err(shared) => {
                    store = shared;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}
