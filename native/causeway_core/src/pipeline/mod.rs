//! Layer 2: the pipeline that owns the rings, the writer pool (AsyncWriterPool),
//! the correlator, the store and the manager thread (PipelineManager +
//! BackpressureManager). Seed diagrams 1, 2, 3, 4 and 6.
//!
//! Writers are native threads (never BEAM schedulers). Worker `i` of `n` owns the
//! shards `s` with `s % n == i` (or shard `i % shards` when there are more workers
//! than shards); ring pops are exactly-once, so ownership moving on scaling
//! neither skips nor repeats an event. A batch goes: deserialize/enrich → correlate
//! → one RocksDB `WriteBatch`, retried with exponential backoff, then dropped and
//! counted. A panic in a worker is caught, counted, reported, and the batch is
//! retried like a failed write (writes are idempotent: keys are event ids).
//!
//! This file owns the `Pipeline` itself (start, configure, close, snapshot);
//! `capture`, `writer`, `enrich`, `flush`, `outage` and `manager` hold the
//! rest, one concern each.

use crate::backpressure::{Controller, Level};
use crate::config::{Config, ConfigUpdate, Tunables};
use crate::context::Contexts;
use crate::correlator::{Correlator, CorrelatorStats};
use crate::event::{EventType, LinkKind, PidRec, RawEvent, RawPid, StoredEvent};
use crate::fasthash::FastBuild;
use crate::ids::IdGen;
use crate::metrics::{Counters, Decision, DropReason, History, Latency, Percentiles, Rates};
use crate::ring::{PushOutcome, Rings, ShardStats};
use crate::store::Store;
use crate::{Error, Result};
use dashmap::DashSet;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod capture;
mod enrich;
pub mod flight;
mod flush;
mod manager;
mod outage;
#[cfg(test)]
mod tests;
mod writer;

use enrich::EnrichCache;
use manager::{manager_loop, retention_loop};
use outage::RECOVERY_PAUSE_MIN;
use writer::guarded;

/// Turns raw term words into names; provided by the NIF glue (and by tests).
pub trait Resolver: Send + Sync + 'static {
    /// A local pid from its raw term word.
    fn pid(&self, raw: u64) -> PidRec;
    /// An atom's name from its raw term word.
    fn atom(&self, raw: u64) -> Option<String>;
    /// Erlang monotonic time in nanoseconds, on any thread (native threads
    /// included: the BEAM's own clock calls only work on its schedulers).
    fn now_mono_ns(&self) -> i64;
    /// wall-clock ns = monotonic ns + this offset (called on scheduler threads).
    fn time_offset_ns(&self) -> i64;
}

/// Messages the pipeline sends back to the BEAM; provided by the NIF glue.
pub trait Notifier: Send + Sync + 'static {
    fn flushed(&self, token: u64, result: std::result::Result<(), String>);
    fn backpressure(&self, level: Level, info: &LevelInfo);
    fn worker_event(&self, worker: usize, what: &str, detail: &str);
    /// A flight recorder trigger made an incident (persisted by then).
    fn incident(&self, _incident: &crate::store::Incident) {}
}

/// What a backpressure message carries.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelInfo {
    pub previous: Level,
    pub utilization: f64,
    pub workers: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    pub dropped: u64,
}

struct FlushReq {
    token: u64,
    targets: Vec<crate::ring::FlushTarget>,
}

struct WorkerSlot {
    handle: Option<JoinHandle<()>>,
}

pub struct Pipeline {
    /// The flight recorder, when events are persisted only on a trigger.
    flight: Option<flight::Flight>,
    /// Captures in progress that did not come through the runtime's default
    /// pipeline guard (the tracer's), one counter per CPU: close waits for
    /// them to be zero before its final drain, so none lands after it.
    in_capture: crate::inflight::InFlight,
    pub config: Config,
    pub tun: Tunables,
    pub rings: Rings,
    pub ids: IdGen,
    pub contexts: Contexts,
    pub correlator: Correlator,
    /// Taken out on close, so the database is closed when the last query
    /// holding it ends (and not whenever the BEAM collects the handle).
    store: Mutex<Option<Arc<Store>>>,
    store_path: std::path::PathBuf,
    store_opts: crate::store::StoreOptions,
    recovering: Mutex<()>,
    /// Set while the store is failing (a RocksDB write error, until a write
    /// or a reopen succeeds), with the error: flushes are answered at once
    /// with it instead of waiting for every buffered batch to run out of
    /// retries.
    down: AtomicBool,
    outage: Mutex<Option<String>>,
    /// When the next reopen may be tried, and the pause after that one.
    next_recovery: Mutex<(Instant, Duration)>,
    pub counters: Counters,
    pub latency: Latency,
    pub history: History,
    resolver: Arc<dyn Resolver>,
    notifier: Arc<dyn Notifier>,
    level: AtomicU8,
    /// At `emergency`, one non-critical event in this many is kept, as the
    /// manager last decided (0: not decided yet, the level was raised by the
    /// capture path; the sparsest, `emergency_sample`, applies).
    sample_every: AtomicU32,
    enabled: AtomicBool,
    closing: AtomicBool,
    closed: AtomicBool,
    disabled_modules: DashSet<u64, FastBuild>,
    disabled_pids: DashSet<u64, FastBuild>,
    any_disabled: AtomicUsize,
    flushes: Mutex<Vec<FlushReq>>,
    flush_pending: AtomicUsize,
    target_workers: AtomicUsize,
    live_workers: AtomicUsize,
    batch_now: AtomicUsize,
    flush_now_ms: AtomicU64,
    workers: Mutex<Vec<WorkerSlot>>,
    manager: Mutex<Option<JoinHandle<()>>>,
    wake: (Mutex<bool>, Condvar),
    inject_panics: AtomicU32,
    paused: AtomicBool,
    retention: Mutex<Option<JoinHandle<()>>>,
    pub retention_deleted: AtomicU64,
    retention_runs: AtomicU64,
    inject_write_errors: AtomicU32,
    rates: Mutex<Rates>,
    started: Instant,
}

/// Everything `Causeway.metrics/0` shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub level: Level,
    /// One non-critical event in this many is kept (1: no sampling; only at
    /// the emergency level, and never with `overflow: :wait`, is it more).
    pub sample_every: u32,
    pub rates: Rates,
    pub latency: Percentiles,
    pub latency_total: Percentiles,
    pub rings: Vec<ShardStats>,
    pub produced: u64,
    pub persisted: u64,
    pub dropped: Vec<(DropReason, u64)>,
    pub dropped_total: u64,
    pub batches: u64,
    pub workers: usize,
    pub workers_target: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    pub queue_depth: u64,
    pub correlation: CorrelatorStats,
    pub contexts: usize,
    pub open_calls: usize,
    pub context_overflow: u64,
    pub native_memory: u64,
    pub memory_budget: u64,
    pub storage_bytes: u64,
    /// RocksDB's memory in this process (capped by `STORAGE_MEMORY_CAP`).
    pub storage_memory: crate::store::StorageMemory,
    /// The process's C heap, as last sampled (see `crate::heap`).
    pub heap: crate::heap::HeapStats,
    pub write_errors: u64,
    pub retries: u64,
    pub worker_panics: u64,
    pub store_recoveries: u64,
    pub history: Vec<Decision>,
    pub alerts: Vec<(&'static str, String)>,
    pub uptime_ms: u64,
    pub retention_deleted: u64,
    pub retention_runs: u64,
    /// The flight recorder's figures, when `persist` is `on_trigger`.
    pub flight: Option<flight::FlightStats>,
}

/// The payload memory a pipeline allows beyond its ring slots when no
/// `memory_budget` is given.
pub const DEFAULT_HEAP_BUDGET: u64 = 512 << 20;

/// What a pipeline allocates up front, whatever it captures: its ring
/// slots and the process-context table.
fn fixed_bytes(rings: &Rings) -> u64 {
    rings.slot_bytes() + Contexts::table_bytes()
}

/// A budget must leave room beyond what is allocated up front.
fn check_budget(budget: u64, rings: &Rings) -> Result<()> {
    if budget <= fixed_bytes(rings) {
        return Err(Error::InvalidArgument(format!(
            "memory_budget ({budget} B) must exceed the ring slots and the context table \
             ({} B: {} shards x {} slots, and {} B); raise it or lower ring_size",
            fixed_bytes(rings),
            rings.shard_count(),
            rings.capacity(),
            Contexts::table_bytes()
        )));
    }
    Ok(())
}

impl Pipeline {
    /// Starts the manager and the minimum number of workers.
    pub fn start(
        config: Config,
        store: Arc<Store>,
        resolver: Arc<dyn Resolver>,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Arc<Pipeline>> {
        config.validate()?;
        if store.is_read_only() {
            return Err(Error::ReadOnly(format!(
                "{} is open read-only; a pipeline needs a writable store",
                store.path().display()
            )));
        }
        let floor = store.max_id()?;
        let flight = match &config.flight {
            Some(f) => Some(flight::Flight::new(f.clone(), &store)?),
            None => None,
        };
        let rings = Rings::new(config.shards, config.ring_size, config.overflow)?;
        let mut config = config;
        config.memory_budget = match config.memory_budget {
            0 => fixed_bytes(&rings) + DEFAULT_HEAP_BUDGET,
            b => {
                check_budget(b, &rings)?;
                b
            }
        };
        let p = Arc::new(Pipeline {
            tun: Tunables::new(&config),
            rings,
            ids: IdGen::new(config.shards, floor),
            contexts: Contexts::new(config.max_processes),
            correlator: Correlator::new(
                (config.correlation_ttl_ms as i64).saturating_mul(1_000_000),
                config.max_pending,
            ),
            store_path: store.path().to_path_buf(),
            store_opts: store.options(),
            recovering: Mutex::new(()),
            down: AtomicBool::new(false),
            outage: Mutex::new(None),
            next_recovery: Mutex::new((Instant::now(), RECOVERY_PAUSE_MIN)),
            store: Mutex::new(Some(store)),
            counters: Counters::default(),
            latency: Latency::default(),
            history: History::new(256),
            resolver,
            notifier,
            level: AtomicU8::new(Level::Normal as u8),
            sample_every: AtomicU32::new(0),
            enabled: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            disabled_modules: DashSet::with_hasher(FastBuild::default()),
            disabled_pids: DashSet::with_hasher(FastBuild::default()),
            any_disabled: AtomicUsize::new(0),
            flushes: Mutex::new(Vec::new()),
            flush_pending: AtomicUsize::new(0),
            target_workers: AtomicUsize::new(config.workers_min),
            live_workers: AtomicUsize::new(0),
            batch_now: AtomicUsize::new(config.batch_size),
            flush_now_ms: AtomicU64::new(config.flush_interval_ms),
            workers: Mutex::new((0..16).map(|_| WorkerSlot { handle: None }).collect()),
            manager: Mutex::new(None),
            wake: (Mutex::new(false), Condvar::new()),
            inject_panics: AtomicU32::new(0),
            paused: AtomicBool::new(false),
            retention: Mutex::new(None),
            retention_deleted: AtomicU64::new(0),
            retention_runs: AtomicU64::new(0),
            inject_write_errors: AtomicU32::new(0),
            rates: Mutex::new(Rates::default()),
            started: Instant::now(),
            in_capture: crate::inflight::InFlight::new(),
            flight,
            config,
        });
        p.ensure_workers()?;
        let mp = p.clone();
        let handle = std::thread::Builder::new()
            .name("causeway-manager".into())
            .spawn(move || {
                guarded("manager", mp, manager_loop);
            })?;
        if let Ok(mut m) = p.manager.lock() {
            *m = Some(handle);
        }
        if p.config.retention.is_active() {
            let rp = p.clone();
            let h = std::thread::Builder::new()
                .name("causeway-retention".into())
                .spawn(move || {
                    guarded("retention", rp, retention_loop);
                })?;
            if let Ok(mut r) = p.retention.lock() {
                *r = Some(h);
            }
        }
        Ok(p)
    }

    pub fn configure(&self, u: &ConfigUpdate) -> Result<()> {
        if let Some((min, max)) = u.workers {
            crate::config::validate_workers(min, max)?;
        }
        if let Some(b) = u.batch_size {
            if b == 0 || b > 1_000_000 {
                return Err(Error::InvalidArgument(format!(
                    "batch_size must be in 1..=1000000, got {b}"
                )));
            }
        }
        if let Some(f) = u.flush_interval_ms {
            if f == 0 || f > 60_000 {
                return Err(Error::InvalidArgument(format!(
                    "flush_interval_ms must be in 1..=60000, got {f}"
                )));
            }
        }
        crate::config::check_term_budget(u.max_term_bytes, u.max_depth)?;
        if u.emergency_sample == Some(0) {
            return Err(Error::InvalidArgument(
                "emergency_sample must be at least 1".into(),
            ));
        }
        let t = &self.tun;
        if let Some(b) = u.batch_size {
            t.batch_size.store(b, Ordering::Relaxed);
        }
        if let Some(f) = u.flush_interval_ms {
            t.flush_interval_ms.store(f, Ordering::Relaxed);
        }
        if let Some((min, max)) = u.workers {
            t.workers_min.store(min, Ordering::Relaxed);
            t.workers_max.store(max, Ordering::Relaxed);
        }
        if let Some(v) = u.max_term_bytes {
            t.max_term_bytes.store(v, Ordering::Relaxed);
        }
        if let Some(v) = u.max_depth {
            t.max_depth.store(v, Ordering::Relaxed);
        }
        if let Some(v) = u.emergency_sample {
            t.emergency_sample.store(v, Ordering::Relaxed);
        }
        if let Some(v) = u.memory_budget {
            check_budget(v, &self.rings)?;
            t.memory_budget.store(v, Ordering::Relaxed);
        }
        if let Some(v) = u.correlation_ttl_ms {
            self.correlator
                .set_ttl_ns((v as i64).saturating_mul(1_000_000));
        }
        self.wake_manager();
        Ok(())
    }

    /// Test and drill hook: the next `n` batches panic inside a worker
    /// (0 cancels what is left of an earlier drill).
    pub fn inject_panics(&self, n: u32) {
        self.inject_panics.store(n, Ordering::Relaxed);
    }

    /// Test and drill hook: the next `n` batch writes fail as storage errors
    /// (0 ends the outage).
    pub fn inject_write_errors(&self, n: u32) {
        self.inject_write_errors.store(n, Ordering::Relaxed);
    }

    /// Benchmark and drill hook: writers stop reading the rings while paused
    /// (capture goes on; rings fill and drops are counted as usual).
    pub fn set_paused(&self, on: bool) {
        self.paused.store(on, Ordering::Relaxed);
    }

    fn wake_manager(&self) {
        let (m, cv) = &self.wake;
        if let Ok(mut w) = m.lock() {
            *w = true;
            cv.notify_all();
        }
    }

    /// Stops capture, lets the workers drain what is buffered, joins every
    /// thread and syncs the store. Safe to call more than once.
    pub fn close(&self) -> Result<()> {
        self.closing.store(true, Ordering::SeqCst);
        // guarded captures that began before closing finish their push
        self.in_capture.wait_idle();
        self.wake_manager();
        // a retention pass in progress stops at its next chunk
        if let Some(s) = self.store() {
            s.interrupt_maintenance();
        }
        if let Some(h) = self.retention.lock().ok().and_then(|mut r| r.take()) {
            let _ = h.join();
        }
        if let Some(h) = self.manager.lock().ok().and_then(|mut m| m.take()) {
            let _ = h.join();
        }
        let handles: Vec<JoinHandle<()>> = match self.workers.lock() {
            Ok(mut w) => w.iter_mut().filter_map(|s| s.handle.take()).collect(),
            Err(_) => Vec::new(),
        };
        for h in handles {
            let _ = h.join();
        }
        // A worker that died cannot have left events behind: drain here.
        let mut cache = EnrichCache::default();
        let mut raw = Vec::new();
        let mut lat = Latency::new_local();
        for s in 0..self.rings.shard_count() {
            loop {
                raw.clear();
                let (start, n) = self.rings.pop_batch_from(s, 10_000, &mut raw);
                if n == 0 {
                    break;
                }
                self.process(
                    usize::MAX,
                    &mut raw,
                    &[(s, start, n as u64)],
                    &mut cache,
                    &mut lat,
                );
            }
        }
        self.closed.store(true, Ordering::Release);
        self.check_flushes();
        let r = match self.store() {
            Some(s) => s.sync(),
            None => Ok(()),
        };
        // Anyone still waiting on a flush gets an answer.
        let pending: Vec<u64> = match self.flushes.lock() {
            Ok(mut f) => f.drain(..).map(|r| r.token).collect(),
            Err(_) => Vec::new(),
        };
        for t in pending {
            self.notifier.flushed(t, Err("closed".into()));
        }
        r
    }

    /// Starts shutting down without waiting: capture stops, workers drain the
    /// rings and exit by themselves. For destructors running on a scheduler.
    pub fn shutdown_async(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake_manager();
    }

    /// The store, until the pipeline is closed and has let go of it.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.lock().ok().and_then(|s| s.clone())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn produced(&self) -> u64 {
        let rings: u64 = self
            .rings
            .all_stats()
            .iter()
            .map(|s| s.accepted + s.rejected)
            .sum();
        rings + self.counters.sampled.get() + Counters::get(&self.counters.over_budget)
    }

    /// What this pipeline holds natively, plus the payload buffers kept for
    /// reuse (`bufpool`: shared by the process's instances, at most 16 MiB).
    pub fn native_memory(&self) -> u64 {
        let c = self.correlator.stats();
        self.rings.slot_bytes()
            + self.rings.payload_bytes()
            + crate::bufpool::pooled_bytes()
            + c.pending * 96
            + self.contexts.memory_bytes()
            + self.flight.as_ref().map_or(0, |f| f.window_bytes())
    }

    /// Persists the flight recorder's window now (`Causeway.snapshot/1`):
    /// an incident whose trigger is `trigger` (`snapshot` or `telemetry`).
    pub fn flight_snapshot(
        &self,
        trigger: &'static str,
        reason: &str,
    ) -> Result<crate::store::Incident> {
        let f = self.flight.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "this instance persists every event (persist: :always); a snapshot needs \
                 persist: {:on_trigger, ...}"
                    .into(),
            )
        })?;
        let store = self.store().ok_or(Error::Closed)?;
        let mono = self.resolver.now_mono_ns();
        let wall = mono.saturating_add(self.resolver.time_offset_ns());
        f.snapshot(&store, reason, trigger, mono, wall, &*self.notifier)
    }

    /// One non-critical event in how many the capture keeps now.
    pub fn sampling_now(&self) -> u32 {
        if self.level() != Level::Emergency || self.config.overflow == crate::ring::Overflow::Wait {
            return 1;
        }
        self.sample_divisor()
    }

    pub fn snapshot(&self) -> Snapshot {
        let rings = self.rings.all_stats();
        let ring_full: u64 = rings.iter().map(|s| s.rejected).sum();
        let overwritten: u64 = rings.iter().map(|s| s.evicted).sum();
        let dropped = vec![
            (DropReason::RingFull, ring_full),
            (DropReason::Overwritten, overwritten),
            (DropReason::Sampled, self.counters.sampled.get()),
            (
                DropReason::Storage,
                Counters::get(&self.counters.dropped_storage),
            ),
            (
                DropReason::Panic,
                Counters::get(&self.counters.dropped_panic),
            ),
            (
                DropReason::MemoryBudget,
                Counters::get(&self.counters.over_budget),
            ),
        ];
        let dropped_total = dropped.iter().map(|d| d.1).sum();
        let correlation = self.correlator.stats();
        let native_memory = self.native_memory();
        let memory_budget = self.tun.memory_budget.load(Ordering::Relaxed);
        let latency = self.latency.recent();
        let mut alerts = Vec::new();
        for (i, s) in rings.iter().enumerate() {
            if s.utilization() > 0.80 {
                alerts.push((
                    "ring_utilization",
                    format!("ring {i} is {:.0}% full", s.utilization() * 100.0),
                ));
            }
        }
        let failures = correlation.missing + correlation.orphaned;
        let attempted = failures + correlation.matched;
        if attempted > 0 && failures as f64 / attempted as f64 > 0.05 {
            alerts.push((
                "correlation_failures",
                format!(
                    "{:.1}% of correlations failed",
                    100.0 * failures as f64 / attempted as f64
                ),
            ));
        }
        if native_memory > memory_budget {
            alerts.push((
                "memory",
                format!("native memory {native_memory} B over budget {memory_budget} B"),
            ));
        }
        let store = self.store();
        if let Some(why) = self.outage_message() {
            alerts.push(("storage", format!("storage is failing: {why}")));
        } else if Counters::get(&self.counters.write_errors) > 0
            && latency.count == 0
            && self.rings.max_utilization() > 0.0
        {
            alerts.push(("storage", "writes are failing".into()));
        }
        if let Some(note) = store.as_ref().and_then(|s| s.recovery_note()) {
            alerts.push(("wal_damage", note.to_string()));
        }
        let storage_memory = store.as_ref().map(|s| s.memory()).unwrap_or_default();
        // the block cache's limit is soft: pinned blocks may take it a little over
        let cap = crate::store::STORAGE_MEMORY_CAP;
        if storage_memory.total() > cap + cap / 8 {
            alerts.push((
                "storage_memory",
                format!(
                    "RocksDB holds {} B, over its cap of {cap} B",
                    storage_memory.total()
                ),
            ));
        }
        Snapshot {
            level: self.level(),
            sample_every: self.sampling_now(),
            rates: self.rates.lock().map(|r| *r).unwrap_or_default(),
            latency,
            latency_total: self.latency.total(),
            queue_depth: rings.iter().map(|s| s.len).sum(),
            produced: rings.iter().map(|s| s.accepted + s.rejected).sum::<u64>()
                + self.counters.sampled.get()
                + Counters::get(&self.counters.over_budget),
            rings,
            persisted: Counters::get(&self.counters.persisted),
            dropped,
            dropped_total,
            batches: Counters::get(&self.counters.batches),
            workers: self.live_workers.load(Ordering::Relaxed),
            workers_target: self.target_workers.load(Ordering::Relaxed),
            batch_size: self.batch_now.load(Ordering::Relaxed),
            flush_interval_ms: self.flush_now_ms.load(Ordering::Relaxed),
            correlation,
            contexts: self.contexts.len(),
            open_calls: self.contexts.open_calls(),
            context_overflow: self.contexts.overflow(),
            native_memory,
            memory_budget,
            storage_bytes: store.map(|s| s.size_on_disk()).unwrap_or(0),
            storage_memory,
            heap: crate::heap::stats(),
            write_errors: Counters::get(&self.counters.write_errors),
            retries: Counters::get(&self.counters.retries),
            worker_panics: Counters::get(&self.counters.worker_panics),
            store_recoveries: Counters::get(&self.counters.recoveries),
            history: self.history.snapshot(),
            alerts,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            retention_deleted: self.retention_deleted.load(Ordering::Relaxed),
            retention_runs: self.retention_runs.load(Ordering::Relaxed),
            flight: self.flight.as_ref().map(|f| f.stats()),
        }
    }
}

impl Pipeline {
    fn snapshot_dropped(&self) -> u64 {
        let rings: u64 = self.rings.all_stats().iter().map(|s| s.dropped()).sum();
        rings
            + self.counters.sampled.get()
            + Counters::get(&self.counters.dropped_storage)
            + Counters::get(&self.counters.dropped_panic)
    }
}
