//! The writer pool: which shards a worker owns, starting workers, and a
//! worker's loop: pop a batch, enrich and correlate it, write it in one
//! `WriteBatch` with retries, then drop and count what could not be written.

use super::*;

impl Pipeline {
    pub(super) fn shards_for(&self, index: usize, n: usize) -> Vec<usize> {
        let shards = self.rings.shard_count();
        if n <= shards {
            (0..shards).filter(|s| s % n == index).collect()
        } else {
            vec![index % shards]
        }
    }

    pub(super) fn ensure_workers(self: &Arc<Self>) -> Result<()> {
        let target = self.target_workers.load(Ordering::Relaxed);
        let Ok(mut slots) = self.workers.lock() else {
            return Err(Error::Busy("worker table poisoned".into()));
        };
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(h) = &slot.handle {
                if h.is_finished() {
                    if let Some(h) = slot.handle.take() {
                        let _ = h.join();
                    }
                }
            }
            if i < target && slot.handle.is_none() && !self.closing.load(Ordering::Relaxed) {
                let p = self.clone();
                self.live_workers.fetch_add(1, Ordering::Relaxed);
                let h = std::thread::Builder::new()
                    .name(format!("causeway-writer-{i}"))
                    .spawn(move || {
                        let pc = p.clone();
                        if !guarded("writer", p, move |p| worker_loop(p, i)) {
                            pc.live_workers.fetch_sub(1, Ordering::Relaxed);
                        }
                    });
                match h {
                    Ok(h) => slot.handle = Some(h),
                    Err(e) => {
                        self.live_workers.fetch_sub(1, Ordering::Relaxed);
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles one batch: enrich → correlate → write (with retries). Returns
    /// after the batch is persisted or dropped and counted; `raw` is emptied.
    pub(super) fn process(
        &self,
        worker: usize,
        raw: &mut Vec<RawEvent>,
        per_shard: &[(usize, u64, u64)],
        cache: &mut EnrichCache,
        lat: &mut Vec<u64>,
    ) {
        // void events: a capture panicked while making them in their slot
        let before = raw.len();
        raw.retain(|e| e.kind.is_some());
        Counters::add(&self.counters.dropped_panic, (before - raw.len()) as u64);
        let n = raw.len() as u64;
        let max_retries = self.config.max_retries;
        let mut attempt = 0u32;
        // (the worker's vector of the last batch: no allocation per batch)
        let mut events = std::mem::take(&mut cache.events);
        let outcome: std::result::Result<(), DropReason> = loop {
            let r = catch_unwind(AssertUnwindSafe(|| self.try_batch(raw, &mut events, cache)));
            // the payloads lent to `events` go back to their raw events
            // (for a retry, and for the pool), whatever the outcome
            for (r, ev) in raw.iter_mut().zip(events.drain(..)) {
                if r.data.is_empty() {
                    r.data = crate::etf::Payload::from_vec(ev.data);
                }
            }
            let err = match r {
                Ok(Ok(())) => {
                    self.leave_outage();
                    break Ok(());
                }
                Ok(Err(e)) => {
                    Counters::add(&self.counters.write_errors, 1);
                    if attempt == 0 {
                        self.notifier
                            .worker_event(worker, "storage_error", &e.to_string());
                    }
                    // RocksDB stops accepting writes after an I/O error until the
                    // database is reopened (a read-only stand-in is in place
                    // while a reopen fails): try that before the next attempt
                    if matches!(e, Error::Storage(_) | Error::Closed | Error::ReadOnly(_))
                        && !self.closing.load(Ordering::Relaxed)
                    {
                        if !self.down.load(Ordering::Acquire) {
                            self.enter_outage(&e);
                        }
                        self.try_recover(worker);
                    }
                    DropReason::Storage
                }
                Err(panic) => {
                    Counters::add(&self.counters.worker_panics, 1);
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    self.notifier.worker_event(worker, "panic", &msg);
                    // fresh name caches, but a batch already correlated keeps
                    // its links: correlating it again on the retry would queue
                    // its halves twice
                    let (correlated, links) = (cache.correlated, std::mem::take(&mut cache.links));
                    *cache = EnrichCache::default();
                    cache.correlated = correlated;
                    cache.links = links;
                    DropReason::Panic
                }
            };
            if attempt >= max_retries || (self.closing.load(Ordering::Relaxed) && attempt >= 2) {
                break Err(err);
            }
            Counters::add(&self.counters.retries, 1);
            let backoff = self
                .config
                .retry_base_ms
                .saturating_mul(1 << attempt.min(10))
                .min(2_000);
            std::thread::sleep(Duration::from_millis(backoff));
            attempt += 1;
        };
        match outcome {
            Ok(()) => {
                Counters::add(&self.counters.persisted, n);
                Counters::add(&self.counters.batches, 1);
                let now = self.resolver.now_mono_ns();
                lat.clear();
                lat.extend(raw.iter().map(|e| {
                    ((now.saturating_sub(e.mono_ns) / 1_000).max(1) as u64).min(3_600_000_000)
                }));
                self.latency.record_all(lat);
            }
            Err(reason) => {
                Counters::add(
                    if reason == DropReason::Panic {
                        &self.counters.dropped_panic
                    } else {
                        &self.counters.dropped_storage
                    },
                    n,
                );
                // what this batch left waiting for a partner will never be stored
                let ids: std::collections::HashSet<u64> = raw.iter().map(|e| e.id).collect();
                self.correlator.forget_events(&ids);
            }
        }
        cache.correlated = false;
        cache.links.clear();
        cache.events = events;
        // the payloads' buffers go back to the producers (crate::bufpool)
        for e in raw.drain(..) {
            if e.data.spilled() {
                crate::bufpool::give(e.data.into_vec());
            }
        }
        for &(s, start, k) in per_shard {
            self.rings.finish(s, start, k);
        }
    }

    /// One attempt at a batch. The payloads are moved from `raw` into
    /// `events` (not copied; the flight recorder, which keeps the events,
    /// gets copies), and `process` moves them back after the attempt.
    pub(super) fn try_batch(
        &self,
        raw: &mut [RawEvent],
        events: &mut Vec<StoredEvent>,
        cache: &mut EnrichCache,
    ) -> Result<()> {
        if self
            .inject_panics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok()
        {
            panic!("injected worker panic");
        }
        events.clear();
        let lend = self.flight.is_none();
        let mut parents = Vec::with_capacity(raw.len());
        for r in raw.iter_mut() {
            let (mut ev, parent) = self.enrich(r, cache);
            ev.data = if lend {
                std::mem::take(&mut r.data).into_vec()
            } else {
                r.data.to_vec()
            };
            events.push(ev);
            parents.push(parent);
        }
        let now = self.resolver.now_mono_ns();
        let mut links = Vec::with_capacity(raw.len());
        if !cache.correlated {
            for (ev, parent) in events.iter().zip(parents) {
                self.correlator.correlate(ev, parent, now, &mut links);
            }
            cache.links = links;
            cache.correlated = true;
        }
        if self
            .inject_write_errors
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Io(std::io::Error::other("injected storage failure")));
        }
        let store = self.store().ok_or(Error::Closed)?;
        let r = match &self.flight {
            None => store.write(events, &cache.links),
            Some(f) => f.route(
                &store,
                std::mem::take(events),
                &cache.links,
                now,
                &*self.notifier,
            ),
        };
        if r.is_ok() {
            cache.correlated = false;
            cache.links.clear();
        }
        r
    }
}

pub(super) fn worker_loop(p: Arc<Pipeline>, index: usize) {
    let mut raw: Vec<RawEvent> = Vec::new();
    let mut cache = EnrichCache::default();
    let mut lat = Latency::new_local();
    // (shard, first pop sequence number, count) of each part of the batch
    let mut per_shard: Vec<(usize, u64, u64)> = Vec::new();
    // how long to wait when the rings are empty: FIRST_IDLE_US right after a
    // batch, doubling while they stay empty, up to the flush interval. Events
    // that keep coming are picked up within a fraction of a millisecond; an
    // idle writer still wakes only once per flush interval.
    const FIRST_IDLE_US: u64 = 250;
    let mut idle_us: u64 = FIRST_IDLE_US;
    loop {
        let closing = p.closing.load(Ordering::Acquire);
        let n = p.target_workers.load(Ordering::Relaxed).max(1);
        if index >= n && !closing {
            break; // retired by scaling down; its shards now belong to others
        }
        if p.paused.load(Ordering::Relaxed) && !closing {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let shards = if closing {
            (0..p.rings.shard_count()).collect()
        } else {
            p.shards_for(index, n)
        };
        let batch = p.batch_now.load(Ordering::Relaxed).max(1);
        per_shard.clear();
        for &s in &shards {
            let room = batch.saturating_sub(raw.len());
            if room == 0 {
                break;
            }
            let (start, k) = p.rings.pop_batch_from(s, room, &mut raw);
            if k > 0 {
                per_shard.push((s, start, k as u64));
            }
        }
        if raw.is_empty() {
            p.check_flushes();
            if closing {
                break;
            }
            let interval_us = p.flush_now_ms.load(Ordering::Relaxed).max(1) * 1_000;
            let wait = idle_us.min(interval_us);
            idle_us = idle_us.saturating_mul(2).min(interval_us);
            std::thread::sleep(Duration::from_micros(wait));
            continue;
        }
        idle_us = FIRST_IDLE_US;
        let t0 = Instant::now();
        p.process(index, &mut raw, &per_shard, &mut cache, &mut lat);
        Counters::add(&p.counters.busy_ns, t0.elapsed().as_nanos() as u64);
        p.check_flushes();
    }
    p.live_workers.fetch_sub(1, Ordering::Relaxed);
}

/// A native thread's body: a panic that escapes it ends that thread only,
/// is reported to the owner (`{:causeway_native, :worker, :panic, ...}`)
/// and never unwinds past the thread's entry (no abort of the VM).
/// `false` when the body panicked.
pub(super) fn guarded(
    what: &'static str,
    p: Arc<Pipeline>,
    body: impl FnOnce(Arc<Pipeline>),
) -> bool {
    let notifier = p.notifier.clone();
    let r = catch_unwind(AssertUnwindSafe(move || body(p)));
    if let Err(e) = &r {
        let msg = e
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let _ = catch_unwind(AssertUnwindSafe(|| {
            notifier.worker_event(usize::MAX, "panic", &format!("{what} thread: {msg}"))
        }));
    }
    r.is_ok()
}
