//! `Causeway.Pipeline`: start, close, flush, configure, metrics, fault drills.

use crate::beam::{Beam, OwnerNotifier};
use crate::convert::atom;
use crate::error::{arg_error, Nif};
use crate::handle::Handle;
use causeway_core::config::{Config, ConfigUpdate};
use causeway_core::pipeline::flight::FlightConfig;
use causeway_core::pipeline::Pipeline;
use causeway_core::ring::Overflow;
use causeway_core::store::{Store, StoreOptions};
use rustler::{Atom, Encoder, Env, LocalPid, NifMap, NifResult, ResourceArc, Term};
use std::sync::Arc;

#[derive(NifMap)]
struct StartOpts {
    dir: String,
    shards: usize,
    ring_size: usize,
    overflow: String,
    workers_min: usize,
    workers_max: usize,
    batch_size: usize,
    flush_interval_ms: u64,
    max_term_bytes: usize,
    max_depth: usize,
    correlation_ttl_ms: u64,
    max_pending: u64,
    max_processes: usize,
    emergency_sample: u32,
    max_retries: u32,
    retry_base_ms: u64,
    memory_budget: u64,
    sync_writes: bool,
    covering_pid_index: bool,
    redact: Vec<Atom>,
    retention_max_age_ms: Option<u64>,
    retention_max_bytes: Option<u64>,
    retention_interval_ms: u64,
    flight: Option<FlightOpts>,
}

/// `persist: {:on_trigger, opts}`, checked on the Elixir side.
#[derive(NifMap)]
struct FlightOpts {
    window_ms: u64,
    max_bytes: u64,
    after_ms: u64,
    cone: bool,
    on_exit: bool,
    on_error: bool,
    slow_call_ms: Option<u64>,
    queue_wait_ms: Option<u64>,
}

#[rustler::nif(schedule = "DirtyIo")]
fn pipeline_start(env: Env, o: StartOpts, owner: LocalPid) -> NifResult<Term> {
    let overflow = Overflow::from_name(&o.overflow).ok_or_else(|| {
        arg_error(format!(
            "overflow must be :drop_newest, :drop_oldest or :wait, got {:?}",
            o.overflow
        ))
    })?;
    let config = Config {
        shards: o.shards,
        ring_size: o.ring_size,
        overflow,
        workers_min: o.workers_min,
        workers_max: o.workers_max,
        batch_size: o.batch_size,
        flush_interval_ms: o.flush_interval_ms,
        max_term_bytes: o.max_term_bytes,
        max_depth: o.max_depth,
        correlation_ttl_ms: o.correlation_ttl_ms,
        max_pending: o.max_pending,
        max_processes: o.max_processes,
        emergency_sample: o.emergency_sample,
        max_retries: o.max_retries,
        retry_base_ms: o.retry_base_ms,
        memory_budget: o.memory_budget,
        sync_writes: o.sync_writes,
        redact: o
            .redact
            .iter()
            .map(|a| crate::beam::word(a.as_c_arg()))
            .collect(),
        retention: causeway_core::store::RetentionPolicy {
            max_age_ns: o
                .retention_max_age_ms
                .map(|ms| ms.saturating_mul(1_000_000)),
            max_bytes: o.retention_max_bytes,
        },
        retention_interval_ms: o.retention_interval_ms,
        flight: o.flight.map(|f| FlightConfig {
            window_ms: f.window_ms,
            max_bytes: f.max_bytes,
            after_ms: f.after_ms,
            cone: f.cone,
            on_exit: f.on_exit,
            on_error: f.on_error,
            slow_call_ms: f.slow_call_ms,
            queue_wait_ms: f.queue_wait_ms,
        }),
    };
    config.validate().nif()?;
    crate::runtime::note_term_budget(config.max_term_bytes);
    crate::runtime::note_overflow(config.overflow);
    crate::beam::calibrate();
    let store = Arc::new(
        Store::open(
            &o.dir,
            StoreOptions {
                read_only: false,
                sync_writes: o.sync_writes,
                covering_pid_index: o.covering_pid_index,
            },
        )
        .nif()?,
    );
    let pipeline = Pipeline::start(
        config,
        store.clone(),
        Arc::new(Beam),
        Arc::new(OwnerNotifier { owner }),
    )
    .nif()?;
    let h = ResourceArc::new(Handle::new(Some(pipeline), store));
    Ok((crate::atoms::ok(), h).encode(env))
}

/// Drains what is buffered, stops every thread and syncs the store.
#[rustler::nif(schedule = "DirtyIo")]
fn pipeline_close(h: ResourceArc<Handle>) -> NifResult<Atom> {
    h.close().nif()?;
    Ok(crate::atoms::ok())
}

/// Registers a durability barrier; `{:causeway_native, :flushed, token, result}`
/// is sent to the owner when it is reached.
#[rustler::nif]
fn pipeline_flush(h: ResourceArc<Handle>, token: u64) -> NifResult<Atom> {
    h.pipeline()?.request_flush(token).nif()?;
    Ok(crate::atoms::ok())
}

#[derive(NifMap)]
struct Update {
    batch_size: Option<usize>,
    flush_interval_ms: Option<u64>,
    workers: Option<(usize, usize)>,
    max_term_bytes: Option<usize>,
    max_depth: Option<usize>,
    emergency_sample: Option<u32>,
    correlation_ttl_ms: Option<u64>,
    memory_budget: Option<u64>,
}

#[rustler::nif]
fn pipeline_configure(h: ResourceArc<Handle>, u: Update) -> NifResult<Atom> {
    if let Some(b) = u.max_term_bytes {
        causeway_core::config::check_term_budget(Some(b), None).nif()?;
        crate::runtime::note_term_budget(b);
    }
    h.pipeline()?
        .configure(&ConfigUpdate {
            batch_size: u.batch_size,
            flush_interval_ms: u.flush_interval_ms,
            workers: u.workers,
            max_term_bytes: u.max_term_bytes,
            max_depth: u.max_depth,
            emergency_sample: u.emergency_sample,
            correlation_ttl_ms: u.correlation_ttl_ms,
            memory_budget: u.memory_budget,
        })
        .nif()?;
    Ok(crate::atoms::ok())
}

/// Fault drills: `:panic` makes the next `n` batches panic in a worker,
/// `:write_error` makes the next `n` batch writes fail.
#[rustler::nif]
fn pipeline_inject(h: ResourceArc<Handle>, kind: Atom, n: u32) -> NifResult<Atom> {
    let p = h.pipeline()?;
    if kind == crate::atoms::panic() {
        p.inject_panics(n);
    } else if kind == crate::atoms::write_error() {
        p.inject_write_errors(n);
    } else if kind == crate::atoms::pause() {
        p.set_paused(n != 0);
    } else {
        return Err(arg_error("drill must be :panic, :write_error or :pause"));
    }
    Ok(crate::atoms::ok())
}

/// Applies the retention policy now, on a native thread of its own (a
/// pass over millions of events holds no scheduler, dirty ones included):
/// `{:causeway_native, :retention, token, {:ok, %{events: n, chunks: n}} |
/// {:error, reason}}` is sent to `to` when it ends.
#[rustler::nif]
fn pipeline_retention(h: ResourceArc<Handle>, to: LocalPid, token: u64) -> NifResult<Atom> {
    let p = h.pipeline()?.clone();
    std::thread::Builder::new()
        .name("causeway-retention-now".into())
        .spawn(move || {
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.enforce_retention()))
                    .unwrap_or_else(|_| {
                        Err(causeway_core::Error::Busy(
                            "the retention pass panicked".into(),
                        ))
                    });
            let mut env = rustler::OwnedEnv::new();
            let _ = env.send_and_clear(&to, move |env| {
                let result = match r {
                    Ok(st) => (
                        crate::atoms::ok(),
                        map(
                            env,
                            vec![
                                ("events", st.events.encode(env)),
                                ("chunks", st.chunks.encode(env)),
                            ],
                        ),
                    )
                        .encode(env),
                    Err(e) => (crate::atoms::error(), crate::error::CoreError(e)).encode(env),
                };
                (
                    crate::atoms::causeway_native(),
                    crate::atoms::retention(),
                    token,
                    result,
                )
                    .encode(env)
            });
        })
        .map_err(|e| arg_error(format!("cannot start a retention thread: {e}")))?;
    Ok(crate::atoms::ok())
}

#[rustler::nif]
fn pipeline_level(env: Env, h: ResourceArc<Handle>) -> NifResult<Term> {
    Ok(atom(env, h.pipeline()?.level().name()))
}

fn map<'a>(env: Env<'a>, pairs: Vec<(&str, Term<'a>)>) -> Term<'a> {
    let keys: Vec<Term> = pairs.iter().map(|(k, _)| atom(env, k)).collect();
    let vals: Vec<Term> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &vals)
        .unwrap_or_else(|_| crate::atoms::nil().encode(env))
}

fn pct<'a>(env: Env<'a>, p: &causeway_core::metrics::Percentiles) -> Term<'a> {
    map(
        env,
        vec![
            ("count", p.count.encode(env)),
            ("p50_us", p.p50_us.encode(env)),
            ("p95_us", p.p95_us.encode(env)),
            ("p99_us", p.p99_us.encode(env)),
            ("max_us", p.max_us.encode(env)),
        ],
    )
}

/// Every figure of the dashboard (seed diagram 8) as a map.
#[rustler::nif(schedule = "DirtyIo")]
fn pipeline_metrics(env: Env, h: ResourceArc<Handle>) -> NifResult<Term> {
    let s = h.pipeline()?.snapshot();
    let rings: Vec<Term> = s
        .rings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            map(
                env,
                vec![
                    ("shard", i.encode(env)),
                    ("capacity", r.capacity.encode(env)),
                    ("length", r.len.encode(env)),
                    ("utilization", r.utilization().encode(env)),
                    ("written", r.written().encode(env)),
                    ("read", r.popped.encode(env)),
                    ("dropped", r.dropped().encode(env)),
                ],
            )
        })
        .collect();
    let dropped = map(
        env,
        s.dropped
            .iter()
            .map(|(r, n)| (r.name(), n.encode(env)))
            .collect(),
    );
    let alerts: Vec<Term> = s
        .alerts
        .iter()
        .map(|(k, m)| (atom(env, k), m.as_str()).encode(env))
        .collect();
    let history: Vec<Term> = s
        .history
        .iter()
        .map(|d| {
            map(
                env,
                vec![
                    ("at_ms", d.at_ms.encode(env)),
                    ("level", atom(env, d.level)),
                    ("utilization", d.utilization.encode(env)),
                    ("workers", d.workers.encode(env)),
                    ("batch_size", d.batch_size.encode(env)),
                    ("flush_interval_ms", d.flush_interval_ms.encode(env)),
                ],
            )
        })
        .collect();
    let c = &s.correlation;
    Ok(map(
        env,
        vec![
            ("level", atom(env, s.level.name())),
            ("sample_every", s.sample_every.encode(env)),
            ("events_per_s", s.rates.events_per_s.encode(env)),
            ("captured_per_s", s.rates.captured_per_s.encode(env)),
            ("batches_per_s", s.rates.batches_per_s.encode(env)),
            ("correlations_per_s", s.rates.correlations_per_s.encode(env)),
            ("latency", pct(env, &s.latency)),
            ("latency_total", pct(env, &s.latency_total)),
            ("rings", rings.encode(env)),
            ("produced", s.produced.encode(env)),
            ("persisted", s.persisted.encode(env)),
            ("dropped", dropped),
            ("dropped_total", s.dropped_total.encode(env)),
            ("batches", s.batches.encode(env)),
            ("workers", s.workers.encode(env)),
            ("workers_target", s.workers_target.encode(env)),
            ("worker_load", s.rates.worker_load.encode(env)),
            ("batch_size", s.batch_size.encode(env)),
            ("flush_interval_ms", s.flush_interval_ms.encode(env)),
            ("queue_depth", s.queue_depth.encode(env)),
            ("correlations", c.links.encode(env)),
            ("correlations_matched", c.matched.encode(env)),
            ("correlation_success_rate", c.success_rate().encode(env)),
            ("missing_correlations", c.missing.encode(env)),
            ("orphaned_events", c.orphaned.encode(env)),
            ("ambiguous_matches", c.ambiguous.encode(env)),
            ("pending_correlations", c.pending.encode(env)),
            ("process_contexts", s.contexts.encode(env)),
            ("open_calls", s.open_calls.encode(env)),
            ("context_overflow", s.context_overflow.encode(env)),
            ("native_memory", s.native_memory.encode(env)),
            ("memory_budget", s.memory_budget.encode(env)),
            ("storage_bytes", s.storage_bytes.encode(env)),
            ("storage_memory", s.storage_memory.total().encode(env)),
            (
                "heap",
                map(
                    env,
                    vec![
                        ("in_use", s.heap.in_use.encode(env)),
                        ("free", s.heap.free.encode(env)),
                        ("trims", s.heap.trims.encode(env)),
                        ("trimmed", s.heap.trimmed.encode(env)),
                    ],
                ),
            ),
            ("write_errors", s.write_errors.encode(env)),
            ("retries", s.retries.encode(env)),
            ("worker_panics", s.worker_panics.encode(env)),
            ("store_recoveries", s.store_recoveries.encode(env)),
            ("history", history.encode(env)),
            ("alerts", alerts.encode(env)),
            ("uptime_ms", s.uptime_ms.encode(env)),
            ("retention_deleted", s.retention_deleted.encode(env)),
            ("retention_runs", s.retention_runs.encode(env)),
            (
                "flight",
                match &s.flight {
                    None => crate::atoms::nil().encode(env),
                    Some(f) => map(
                        env,
                        vec![
                            ("window_events", f.window_events.encode(env)),
                            ("window_bytes", f.window_bytes.encode(env)),
                            ("expired", f.expired.encode(env)),
                            ("evicted", f.evicted.encode(env)),
                            ("persisted", f.persisted.encode(env)),
                            ("incidents", f.incidents.encode(env)),
                        ],
                    ),
                },
            ),
        ],
    ))
}
