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
    sample_tick: AtomicU64,
}

/// Everything `Causeway.metrics/0` shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub level: Level,
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
    pub write_errors: u64,
    pub retries: u64,
    pub worker_panics: u64,
    pub store_recoveries: u64,
    pub history: Vec<Decision>,
    pub alerts: Vec<(&'static str, String)>,
    pub uptime_ms: u64,
    pub retention_deleted: u64,
    pub retention_runs: u64,
}

/// The first and the longest pause between two reopens of a failing store
/// (each RocksDB open costs a file descriptor sweep and an info log).
const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(50);
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(2);

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
            sample_tick: AtomicU64::new(0),
            in_capture: crate::inflight::InFlight::new(),
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

    // ---------------------------------------------------------------- capture

    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    pub fn is_open(&self) -> bool {
        !self.closing.load(Ordering::Relaxed)
    }

    /// Whether an event of `kind` from `pid` in `module` (raw words, 0 = any)
    /// should be captured. Disabled capture costs these flag checks; an event
    /// sampled out in the emergency level is counted as dropped.
    #[inline]
    pub fn admit(&self, kind: EventType, pid: u64, module: u64) -> bool {
        self.admit_as(kind, pid, module, false)
    }

    /// `admit`, where `paired` says the event completes one that was kept (an
    /// exit whose entry was captured): it is not sampled on its own, so the
    /// emergency level keeps or drops calls whole and leaves no half waiting
    /// for a partner that will never come.
    #[inline]
    pub fn admit_as(&self, kind: EventType, pid: u64, module: u64, paired: bool) -> bool {
        if !self.enabled.load(Ordering::Relaxed) || self.closing.load(Ordering::Relaxed) {
            return false;
        }
        if self.any_disabled.load(Ordering::Relaxed) > 0
            && ((pid != 0 && self.disabled_pids.contains(&pid))
                || (module != 0 && self.disabled_modules.contains(&module)))
        {
            return false;
        }
        if !paired
            && self.level.load(Ordering::Relaxed) == Level::Emergency as u8
            && !kind.is_critical()
            && self.config.overflow != crate::ring::Overflow::Wait
        {
            let n = self.sample_tick.fetch_add(1, Ordering::Relaxed);
            let every = self.tun.emergency_sample.load(Ordering::Relaxed).max(1) as u64;
            if !n.is_multiple_of(every) {
                Counters::add(&self.counters.sampled, 1);
                return false;
            }
        }
        true
    }

    /// The id of an event for `shard` at Erlang monotonic time `mono_ns`.
    #[inline]
    pub fn stamp_on(&self, shard: usize, mono_ns: i64) -> u64 {
        self.ids.next(shard, self.wall_ns(mono_ns) as u64)
    }

    /// Wall-clock (Erlang system) time of Erlang monotonic time `mono_ns`.
    #[inline]
    fn wall_ns(&self, mono_ns: i64) -> i64 {
        mono_ns
            .saturating_add(self.resolver.time_offset_ns())
            .max(0)
    }

    /// Puts an event into its shard; raises the level at once if the shard is
    /// filling up (the check runs on every push, not on a timer). An event
    /// whose payload lives outside its slot is refused (and counted) when it
    /// would take its shard past its share of the memory budget.
    #[inline(always)]
    pub fn push(&self, shard: usize, ev: RawEvent) -> PushOutcome {
        let bytes = ev.heap_bytes();
        if bytes > 0 && self.over_budget(shard, bytes) {
            Counters::add(&self.counters.over_budget, 1);
            return PushOutcome::Rejected;
        }
        let outcome = self.rings.push(shard, ev);
        self.after_push(shard, outcome);
        outcome
    }

    /// `push` of an event made in its slot by `fill` (which completes a
    /// default event there; see `Rings::push_in_place`), for events whose
    /// payload is encoded right into the ring. `fill` is not called when the
    /// event is refused (`Rejected`). It is handed back (`Err`) when a
    /// payload of up to `max_heap` bytes outside the slot could take the
    /// shard past its memory budget: the caller then makes the event first
    /// and `push`es it, which checks its exact size.
    #[inline(always)]
    pub fn push_in_place<F: FnOnce(&mut RawEvent)>(
        &self,
        shard: usize,
        max_heap: u64,
        fill: F,
    ) -> std::result::Result<PushOutcome, F> {
        if self.over_budget(shard, max_heap) {
            return Err(fill);
        }
        let outcome = self.rings.push_in_place(shard, fill);
        self.after_push(shard, outcome);
        Ok(outcome)
    }

    /// Raises the level at once when a push finds its shard filling up.
    #[inline(always)]
    fn after_push(&self, shard: usize, outcome: PushOutcome) {
        if outcome != PushOutcome::Stored || self.rings.time_to_check(shard) {
            let u = self.rings.utilization(shard);
            if u >= 0.5 {
                let l = Level::for_utilization(u) as u8;
                if self.level.fetch_max(l, Ordering::Relaxed) < l {
                    self.wake_manager();
                }
            }
        }
    }

    /// Would `bytes` more take `shard`'s payloads past its share of the
    /// budget (what the fixed allocations leave of it, split evenly between
    /// shards)?
    #[inline]
    fn over_budget(&self, shard: usize, bytes: u64) -> bool {
        let budget = self.tun.memory_budget.load(Ordering::Relaxed);
        let for_payloads = budget.saturating_sub(fixed_bytes(&self.rings)) as u128;
        // `held > for_payloads / shards`, without a division on every capture
        let held = (self.rings.heap_bytes(shard) + bytes) as u128;
        held * self.rings.shard_count() as u128 > for_payloads
    }

    /// Runs `f` as a capture that `close` waits for; `None` (and `f` not
    /// run) once the pipeline is closing.
    pub fn guarded_capture<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _inside = self.in_capture.enter();
        (!self.closing.load(Ordering::SeqCst)).then(f)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_module_enabled(&self, module: u64, on: bool) {
        if on {
            self.disabled_modules.remove(&module);
        } else {
            self.disabled_modules.insert(module);
        }
        self.any_disabled.store(
            self.disabled_modules.len() + self.disabled_pids.len(),
            Ordering::Relaxed,
        );
    }

    pub fn set_pid_enabled(&self, pid: u64, on: bool) {
        if on {
            self.disabled_pids.remove(&pid);
        } else {
            self.disabled_pids.insert(pid);
        }
        self.any_disabled.store(
            self.disabled_modules.len() + self.disabled_pids.len(),
            Ordering::Relaxed,
        );
    }

    pub fn now_mono_ns(&self) -> i64 {
        self.resolver.now_mono_ns()
    }

    // ---------------------------------------------------------------- control

    /// Asks for a durability barrier: `notifier.flushed(token, ..)` is called
    /// once every event accepted before this call is persisted (or counted as
    /// dropped) and the WAL is synced.
    pub fn request_flush(&self, token: u64) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(why) = self.outage_message() {
            return Err(Error::StorageDown(why));
        }
        let targets = self.rings.flush_targets();
        if let Ok(mut f) = self.flushes.lock() {
            f.push(FlushReq { token, targets });
            self.flush_pending.fetch_add(1, Ordering::Release);
        }
        // Answered by a worker (or the manager), never on the caller's thread.
        Ok(())
    }

    fn check_flushes(&self) {
        if self.flush_pending.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(why) = self.outage_message() {
            // nothing will be durable until the store is back: say so now
            let waiting: Vec<u64> = match self.flushes.lock() {
                Ok(mut f) => {
                    self.flush_pending.store(0, Ordering::Release);
                    f.drain(..).map(|r| r.token).collect()
                }
                Err(_) => Vec::new(),
            };
            for token in waiting {
                self.notifier
                    .flushed(token, Err(format!("storage is failing: {why}")));
            }
            return;
        }
        let done: Vec<u64> = {
            let Ok(mut f) = self.flushes.lock() else {
                return;
            };
            let mut done = Vec::new();
            f.retain_mut(|r| {
                if self.rings.reached(&mut r.targets) {
                    done.push(r.token);
                    false
                } else {
                    true
                }
            });
            self.flush_pending.store(f.len(), Ordering::Release);
            done
        };
        if done.is_empty() {
            return;
        }
        let result = match self.store() {
            Some(s) => s.sync().map_err(|e| e.to_string()),
            None if self.closed.load(Ordering::Acquire) => Err("closed".to_string()),
            None => {
                Err("storage unavailable: the store is being reopened after a failure".to_string())
            }
        };
        for token in done {
            self.notifier.flushed(token, result.clone());
        }
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
    fn enter_outage(&self, e: &Error) {
        if let Ok(mut o) = self.outage.lock() {
            *o = Some(e.to_string());
        }
        self.down.store(true, Ordering::Release);
        self.check_flushes();
    }

    fn leave_outage(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            if let Ok(mut o) = self.outage.lock() {
                *o = None;
            }
        }
    }

    /// While the store is failing: reopens it if the pause since the last
    /// try has passed (called by writers between retries and by the manager,
    /// so a store comes back even when nothing is being captured).
    fn try_recover(&self, worker: usize) {
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
        if let Some(old) = slot.take() {
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
                let ro = crate::store::StoreOptions {
                    read_only: true,
                    ..self.store_opts.clone()
                };
                *slot = Store::open(&self.store_path, ro).ok().map(Arc::new);
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

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    // ---------------------------------------------------------------- workers

    fn shards_for(&self, index: usize, n: usize) -> Vec<usize> {
        let shards = self.rings.shard_count();
        if n <= shards {
            (0..shards).filter(|s| s % n == index).collect()
        } else {
            vec![index % shards]
        }
    }

    fn ensure_workers(self: &Arc<Self>) -> Result<()> {
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
    fn process(
        &self,
        worker: usize,
        raw: &mut Vec<RawEvent>,
        per_shard: &[(usize, u64, u64)],
        cache: &mut EnrichCache,
        lat: &mut hdrhistogram::Histogram<u64>,
    ) {
        // void events: a capture panicked while making them in their slot
        let before = raw.len();
        raw.retain(|e| e.kind.is_some());
        Counters::add(&self.counters.dropped_panic, (before - raw.len()) as u64);
        let n = raw.len() as u64;
        let max_retries = self.config.max_retries;
        let mut attempt = 0u32;
        let outcome: std::result::Result<(), DropReason> = loop {
            let r = catch_unwind(AssertUnwindSafe(|| self.try_batch(raw, cache)));
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
                lat.reset();
                for e in raw.iter() {
                    let us = (now.saturating_sub(e.mono_ns) / 1_000).max(1) as u64;
                    let _ = lat.record(us.min(3_600_000_000));
                }
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
        raw.clear();
        for &(s, start, k) in per_shard {
            self.rings.finish(s, start, k);
        }
    }

    fn try_batch(&self, raw: &[RawEvent], cache: &mut EnrichCache) -> Result<()> {
        if self
            .inject_panics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok()
        {
            panic!("injected worker panic");
        }
        let mut events = Vec::with_capacity(raw.len());
        let mut parents = Vec::with_capacity(raw.len());
        for r in raw {
            let (ev, parent) = self.enrich(r, cache);
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
        let r = store.write(&events, &cache.links);
        if r.is_ok() {
            cache.correlated = false;
            cache.links.clear();
        }
        r
    }

    /// Deserialize + enrich: raw words to names, pid, node and wall time.
    fn enrich(&self, r: &RawEvent, cache: &mut EnrichCache) -> (StoredEvent, Option<LinkKind>) {
        let pid = cache.pid(&*self.resolver, r.pid);
        let peer = match &r.peer {
            RawPid::None => None,
            RawPid::Local(w) => Some(cache.pid(&*self.resolver, *w)),
            RawPid::External(b) => crate::etf::parse_pid(b).ok(),
        };
        let module = if r.module != 0 {
            cache.atom(&*self.resolver, r.module)
        } else {
            None
        };
        let function = if r.function != 0 {
            cache.atom(&*self.resolver, r.function)
        } else {
            None
        };
        (
            StoredEvent {
                id: r.id,
                kind: r.kind(),
                mono_ns: r.mono_ns,
                // as the id was stamped (the offset only moves under
                // multi-time-warp, by the warp)
                wall_ns: self.wall_ns(r.mono_ns),
                pid,
                call_id: r.call_id(),
                parent_id: r.parent_id,
                parent_link: r.parent_link,
                module,
                function,
                arity: r.arity,
                peer,
                data: r.data.to_vec(),
                source: r.source,
            },
            r.parent_link,
        )
    }

    // ---------------------------------------------------------------- metrics

    pub fn produced(&self) -> u64 {
        let rings: u64 = self
            .rings
            .all_stats()
            .iter()
            .map(|s| s.accepted + s.rejected)
            .sum();
        rings + Counters::get(&self.counters.sampled) + Counters::get(&self.counters.over_budget)
    }

    pub fn native_memory(&self) -> u64 {
        let c = self.correlator.stats();
        self.rings.slot_bytes()
            + self.rings.payload_bytes()
            + c.pending * 96
            + self.contexts.memory_bytes()
    }

    pub fn snapshot(&self) -> Snapshot {
        let rings = self.rings.all_stats();
        let ring_full: u64 = rings.iter().map(|s| s.rejected).sum();
        let overwritten: u64 = rings.iter().map(|s| s.evicted).sum();
        let dropped = vec![
            (DropReason::RingFull, ring_full),
            (DropReason::Overwritten, overwritten),
            (DropReason::Sampled, Counters::get(&self.counters.sampled)),
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
            rates: self.rates.lock().map(|r| *r).unwrap_or_default(),
            latency,
            latency_total: self.latency.total(),
            queue_depth: rings.iter().map(|s| s.len).sum(),
            produced: rings.iter().map(|s| s.accepted + s.rejected).sum::<u64>()
                + Counters::get(&self.counters.sampled)
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
            write_errors: Counters::get(&self.counters.write_errors),
            retries: Counters::get(&self.counters.retries),
            worker_panics: Counters::get(&self.counters.worker_panics),
            store_recoveries: Counters::get(&self.counters.recoveries),
            history: self.history.snapshot(),
            alerts,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            retention_deleted: self.retention_deleted.load(Ordering::Relaxed),
            retention_runs: self.retention_runs.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct EnrichCache {
    pids: HashMap<u64, PidRec>,
    atoms: HashMap<u64, Option<crate::event::Name>>,
    correlated: bool,
    links: Vec<crate::event::Link>,
}

impl EnrichCache {
    const MAX: usize = 65_536;

    fn pid(&mut self, r: &dyn Resolver, raw: u64) -> PidRec {
        if let Some(p) = self.pids.get(&raw) {
            return p.clone();
        }
        if self.pids.len() >= Self::MAX {
            self.pids.clear();
        }
        let p = r.pid(raw);
        self.pids.insert(raw, p.clone());
        p
    }

    fn atom(&mut self, r: &dyn Resolver, raw: u64) -> Option<crate::event::Name> {
        if let Some(a) = self.atoms.get(&raw) {
            return a.clone();
        }
        if self.atoms.len() >= Self::MAX {
            self.atoms.clear();
        }
        let a = r.atom(raw).map(Into::into);
        self.atoms.insert(raw, a.clone());
        a
    }
}

fn worker_loop(p: Arc<Pipeline>, index: usize) {
    let mut raw: Vec<RawEvent> = Vec::new();
    let mut cache = EnrichCache::default();
    let mut lat = Latency::new_local();
    // (shard, first pop sequence number, count) of each part of the batch
    let mut per_shard: Vec<(usize, u64, u64)> = Vec::new();
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
            let wait = p.flush_now_ms.load(Ordering::Relaxed).max(1);
            std::thread::sleep(Duration::from_millis(wait));
            continue;
        }
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
fn guarded(what: &'static str, p: Arc<Pipeline>, body: impl FnOnce(Arc<Pipeline>)) -> bool {
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

fn retention_loop(p: Arc<Pipeline>) {
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

fn manager_loop(p: Arc<Pipeline>) {
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
        let plan = ctl.step(
            util,
            floor,
            now_ms,
            min,
            max,
            p.tun.batch_size.load(Ordering::Relaxed),
            p.tun.flush_interval_ms.load(Ordering::Relaxed),
        );
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

impl Pipeline {
    fn snapshot_dropped(&self) -> u64 {
        let rings: u64 = self.rings.all_stats().iter().map(|s| s.dropped()).sum();
        rings
            + Counters::get(&self.counters.sampled)
            + Counters::get(&self.counters.dropped_storage)
            + Counters::get(&self.counters.dropped_panic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use std::sync::mpsc;

    /// The BEAM's side, for a pipeline with no BEAM: names are made up.
    struct Names;
    impl Resolver for Names {
        fn pid(&self, raw: u64) -> PidRec {
            PidRec {
                id: raw as u32,
                ..Default::default()
            }
        }
        fn atom(&self, raw: u64) -> Option<String> {
            Some(format!("a{raw}"))
        }
        fn now_mono_ns(&self) -> i64 {
            crate::clock::now_ns()
        }
        fn time_offset_ns(&self) -> i64 {
            0
        }
    }

    struct Quiet;
    impl Notifier for Quiet {
        fn flushed(&self, _token: u64, _result: std::result::Result<(), String>) {}
        fn backpressure(&self, _level: Level, _info: &LevelInfo) {}
        fn worker_event(&self, _worker: usize, _what: &str, _detail: &str) {}
    }

    /// A pipeline with default settings on a fresh directory.
    fn started() -> (tempfile::TempDir, Arc<Pipeline>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
        let p = Pipeline::start(Config::default(), store, Arc::new(Names), Arc::new(Quiet))
            .expect("start");
        (dir, p)
    }

    #[test]
    fn closing_waits_for_a_query_on_the_store_so_the_directory_reopens_at_once() {
        let (dir, p) = started();
        // a query in progress holds the store
        let query = p.store().expect("the store");
        let (done_tx, done_rx) = mpsc::channel();
        let closer = {
            let p = p.clone();
            std::thread::spawn(move || {
                let r = p.close();
                p.release_store();
                done_tx.send(r.is_ok()).expect("send");
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            done_rx.try_recv().is_err(),
            "close returned while a query still held the database open"
        );
        drop(query);
        assert!(done_rx.recv().expect("closer"), "close failed");
        closer.join().expect("closer thread");
        // the database is closed and its lock released: the same directory
        // opens again at once (a supervisor restarting the instance)
        Store::open(dir.path(), StoreOptions::default()).expect("reopened right after close");
    }

    #[test]
    fn an_event_made_in_place_near_the_memory_budget_is_handed_back() {
        let (_dir, p) = started();
        let fixed = fixed_bytes(&p.rings);
        let shards = p.rings.shard_count() as u64;
        // room for 1 000 payload bytes per shard
        p.tun
            .memory_budget
            .store(fixed + 1_000 * shards, Ordering::Relaxed);
        let fill = |e: &mut RawEvent| e.id = 1;
        let Ok(PushOutcome::Stored) = p.push_in_place(0, 900, fill) else {
            panic!("900 bytes fit a budget of 1 000");
        };
        let Err(back) = p.push_in_place(0, 1_100, |e: &mut RawEvent| e.id = 2) else {
            panic!("1 100 bytes may not fit a budget of 1 000");
        };
        // the caller makes the event and pushes it: its exact size decides
        let mut e = exit_event(&p, 1);
        back(&mut e);
        assert_eq!(e.id, 2);
        assert_eq!(p.push(0, e), PushOutcome::Stored);
        p.close().expect("close");
    }

    #[test]
    fn a_capture_that_panics_is_dropped_and_counted_and_the_rest_persisted() {
        let (_dir, p) = started();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.push_in_place(0, 1_000, |e: &mut RawEvent| {
                e.kind = Some(EventType::ProcessExit);
                panic!("while making the event");
            })
        }));
        assert!(caught.is_err());
        let kept = exit_event(&p, 7);
        let id = kept.id;
        p.push(0, kept);
        p.close().expect("close");
        assert_eq!(Counters::get(&p.counters.dropped_panic), 1);
        assert_eq!(Counters::get(&p.counters.persisted), 1);
        let store = p.store().expect("the store");
        assert!(store.get(id).expect("read").is_some());
    }

    fn exit_event(p: &Pipeline, pid: u64) -> RawEvent {
        let mono = crate::clock::now_ns();
        RawEvent {
            id: p.stamp_on(0, mono),
            kind: Some(EventType::ProcessExit),
            mono_ns: mono,
            pid,
            ..Default::default()
        }
    }

    /// Counts the level changes a subscriber would be sent.
    #[derive(Default)]
    struct Levels(AtomicU64, Mutex<Vec<Level>>);
    impl Notifier for Levels {
        fn flushed(&self, _token: u64, _result: std::result::Result<(), String>) {}
        fn backpressure(&self, level: Level, _info: &LevelInfo) {
            self.0.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut v) = self.1.lock() {
                v.push(level);
            }
        }
        fn worker_event(&self, _worker: usize, _what: &str, _detail: &str) {}
    }

    #[test]
    fn a_sustained_overload_sends_a_handful_of_level_changes_not_one_per_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
        let levels = Arc::new(Levels::default());
        let config = Config {
            shards: 1,
            ring_size: 4096,
            ..Config::default()
        };
        let p = Pipeline::start(config, store, Arc::new(Names), levels.clone()).expect("start");
        // one producer far faster than the writers, for 6 s: at `emergency`
        // its sampling empties the ring, which looks calm
        let end = Instant::now() + Duration::from_secs(6);
        while Instant::now() < end {
            for _ in 0..1_000 {
                if p.admit(EventType::FunctionExit, 1, 0) {
                    let mono = crate::clock::now_ns();
                    let e = RawEvent {
                        id: p.stamp_on(0, mono),
                        kind: Some(EventType::FunctionExit),
                        mono_ns: mono,
                        pid: 1,
                        ..Default::default()
                    };
                    p.push(0, e);
                }
            }
        }
        let changes = levels.0.load(Ordering::Relaxed);
        let seen = levels.1.lock().map(|v| v.clone()).unwrap_or_default();
        p.close().expect("close");
        assert!(
            seen.contains(&Level::Emergency),
            "never overloaded: {seen:?}"
        );
        assert!(Counters::get(&p.counters.sampled) > 0);
        // ~36 in 6 s when only checks were counted
        assert!(changes <= 12, "{changes} level changes in 6 s: {seen:?}");
    }

    #[test]
    fn a_capture_under_way_when_close_begins_is_persisted_not_lost() {
        let (_dir, p) = started(); // (the directory lives until the end)
        let (in_tx, in_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        // a tracer probe admitted just before close, preempted before its push
        let probe = {
            let p = p.clone();
            std::thread::spawn(move || {
                p.guarded_capture(|| {
                    in_tx.send(()).expect("send");
                    go_rx.recv().expect("go");
                    p.push(0, exit_event(&p, 7))
                })
            })
        };
        in_rx.recv().expect("probe started");
        let (done_tx, done_rx) = mpsc::channel();
        let closer = {
            let p = p.clone();
            std::thread::spawn(move || done_tx.send(p.close().is_ok()).expect("send"))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            done_rx.try_recv().is_err(),
            "close drained the rings while a capture was still under way"
        );
        go_tx.send(()).expect("go");
        assert_eq!(probe.join().expect("probe"), Some(PushOutcome::Stored));
        assert!(done_rx.recv().expect("closer"), "close failed");
        closer.join().expect("closer thread");
        let s = p.snapshot();
        assert_eq!((s.produced, s.persisted), (1, 1), "accepted and persisted");
        // and a capture after close is refused, not pushed into a closed pipeline
        assert_eq!(p.guarded_capture(|| ()), None);
    }
}
