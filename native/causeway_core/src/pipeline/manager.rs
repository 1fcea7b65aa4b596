//! The manager thread (scaling the writer pool and backpressure levels from
//! ring utilization) and the retention thread.

use super::*;

impl Pipeline {
    /// Applies the retention policy now; returns what it deleted.
    pub fn enforce_retention(&self) -> Result<crate::store::RetentionStats> {
        let store = self.store().ok_or(Error::Closed)?;
        let now_wall = self
            .resolver
            .now_mono_ns()
            .saturating_add(self.resolver.time_offset_ns())
            .max(0) as u64;
        let st = store.enforce_retention(&self.config.retention, now_wall)?;
        self.retention_deleted
            .fetch_add(st.events, Ordering::Relaxed);
        self.retention_runs.fetch_add(1, Ordering::Relaxed);
        Ok(st)
    }
}

pub(super) fn retention_loop(p: Arc<Pipeline>) {
    let every = Duration::from_millis(p.config.retention_interval_ms.max(100));
    let mut last = Instant::now();
    while !p.closing.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100).min(every));
        if last.elapsed() >= every {
            if let Err(e) = p.enforce_retention() {
                p.notifier
                    .worker_event(usize::MAX, "retention_error", &e.to_string());
            }
            last = Instant::now();
        }
    }
}

pub(super) fn manager_loop(p: Arc<Pipeline>) {
    let mut ctl = Controller::new(p.config.workers_min);
    let mut last_level = Level::Normal;
    let mut last_tick = Instant::now();
    let mut last_persisted = 0u64;
    let mut last_batches = 0u64;
    let mut last_links = 0u64;
    let mut last_produced = 0u64;
    let mut last_busy = 0u64;
    let mut last_window = Instant::now();
    loop {
        if p.closing.load(Ordering::Acquire) {
            break;
        }
        let util = p.rings.max_utilization();
        // The capture path only ever raises the level (fetch_max); anything
        // above what this manager last decided was raised there.
        let current = p.level();
        let floor = if current > ctl.level() {
            current
        } else {
            Level::Normal
        };
        let now_ms = p.started.elapsed().as_millis() as u64;
        let min = p.tun.workers_min.load(Ordering::Relaxed);
        let max = p.tun.workers_max.load(Ordering::Relaxed);
        // the capture path may have sampled sparser since the last check
        ctl.sampled_sparser(p.sample_every.load(Ordering::Relaxed));
        let plan = ctl.step(
            util,
            floor,
            now_ms,
            min,
            max,
            p.tun.batch_size.load(Ordering::Relaxed),
            p.tun.flush_interval_ms.load(Ordering::Relaxed),
            p.tun.emergency_sample.load(Ordering::Relaxed),
        );
        // (before the level: a capture that sees `emergency` samples at the
        // rate decided with it)
        p.sample_every.store(plan.sample_every, Ordering::Relaxed);
        p.level.store(plan.level as u8, Ordering::Relaxed);
        p.batch_now.store(plan.batch_size, Ordering::Relaxed);
        p.flush_now_ms
            .store(plan.flush_interval_ms, Ordering::Relaxed);
        let old_target = p.target_workers.swap(plan.workers, Ordering::Relaxed);
        if plan.workers != old_target || plan.level != last_level {
            p.history.push(Decision {
                at_ms: now_ms,
                level: plan.level.name(),
                utilization: util,
                workers: plan.workers,
                batch_size: plan.batch_size,
                flush_interval_ms: plan.flush_interval_ms,
            });
        }
        if plan.workers > old_target || p.live_workers.load(Ordering::Relaxed) < plan.workers {
            let _ = p.ensure_workers();
        }
        if plan.level != last_level {
            let snap_dropped = p.snapshot_dropped();
            p.notifier.backpressure(
                plan.level,
                &LevelInfo {
                    previous: last_level,
                    utilization: util,
                    workers: plan.workers,
                    batch_size: plan.batch_size,
                    flush_interval_ms: plan.flush_interval_ms,
                    dropped: snap_dropped,
                },
            );
            last_level = plan.level;
        }

        let elapsed = last_tick.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let secs = elapsed.as_secs_f64();
            let persisted = Counters::get(&p.counters.persisted);
            let batches = Counters::get(&p.counters.batches);
            let links = p.correlator.stats().links;
            let produced = p.produced();
            let busy = Counters::get(&p.counters.busy_ns);
            let live = p.live_workers.load(Ordering::Relaxed).max(1) as f64;
            if let Ok(mut r) = p.rates.lock() {
                *r = Rates {
                    events_per_s: (persisted - last_persisted) as f64 / secs,
                    batches_per_s: (batches - last_batches) as f64 / secs,
                    correlations_per_s: (links - last_links) as f64 / secs,
                    captured_per_s: (produced - last_produced) as f64 / secs,
                    worker_load: ((busy - last_busy) as f64 / 1e9 / secs / live).min(1.0),
                };
            }
            (
                last_persisted,
                last_batches,
                last_links,
                last_produced,
                last_busy,
            ) = (persisted, batches, links, produced, busy);
            last_tick = Instant::now();
            // the kernel may have stopped trusting the TSC since start
            crate::clock::recheck();
            let now = p.resolver.now_mono_ns();
            p.correlator.expire(now);
            p.contexts.sweep(now.saturating_sub(p.correlator.ttl_ns()));
            p.contexts.sweep_idle(now.saturating_sub(1_000_000_000));
            p.try_recover(usize::MAX);
            p.check_flushes();
            let _ = p.ensure_workers(); // joins retired threads, replaces dead ones
            crate::heap::tick();
        }
        if last_window.elapsed() >= Duration::from_secs(5) {
            p.latency.rotate();
            last_window = Instant::now();
        }

        let wait = Duration::from_millis(plan.level.check_interval_ms());
        let (m, cv) = &p.wake;
        if let Ok(woken) = m.lock() {
            let mut woken = if *woken {
                woken
            } else {
                match cv.wait_timeout(woken, wait) {
                    Ok((g, _)) => g,
                    Err(poisoned) => poisoned.into_inner().0,
                }
            };
            *woken = false;
        }
    }
}
