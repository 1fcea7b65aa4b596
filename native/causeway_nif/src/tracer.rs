//! `Causeway.Tracer`: an `erl_tracer` written in Rust. `enabled/3` and
//! `trace/5` are NIFs of `Causeway.Native` (the module given to
//! `:erlang.trace/3` as `{:tracer, Causeway.Native, session}`); the BEAM calls
//! them synchronously in the traced process, so tracing sends no message and
//! builds no mailbox anywhere. Events go into the same rings as
//! `Causeway.Runtime`'s, with `source: :tracer`.
//!
//! A session carries its safety limits (events, rate, duration, term size);
//! whichever trips first stops it: from then on `enabled/3` answers `remove`
//! (the VM detaches the tracer from each tracee), and the session process is
//! told why, and removes every flag and pattern it set.

use crate::beam::{monotonic_ns, pid_word, word};
use crate::error::arg_error;
use crate::handle::Handle;
use crate::term::{self, Budget};
use causeway_core::context::Frame;
use causeway_core::event::{EventType, LinkKind, RawEvent, RawPid, Source};
use causeway_core::pipeline::Pipeline;
use causeway_core::ring::cpu_slot;
use rustler::{Atom, Encoder, Env, LocalPid, NifMap, NifResult, ResourceArc, Term, TermType};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod atoms {
    rustler::atoms! {
        trace,
        discard,
        remove,
        trace_status,
        call,
        return_from,
        exception_from,
        send,
        send_to_non_existing_process,
        receive = "receive",
        spawn,
        exit,
        extra,
        causeway_trace,
        stopped,
        exception,
    }
}

pub struct TraceSession {
    pipeline: Arc<Pipeline>,
    owner: LocalPid,
    max_events: u64,
    max_rate: u64,
    deadline_ns: i64,
    max_term_bytes: usize,
    events: AtomicU64,
    window_start: AtomicI64,
    window_count: AtomicU64,
    stopped: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Module atom words this session records calls of (empty = any).
    modules: Vec<u64>,
    /// Returns are traced: calls are stacked (and closed by their return).
    returns: bool,
}

#[rustler::resource_impl]
impl rustler::Resource for TraceSession {}

impl TraceSession {
    fn live(&self, now: i64) -> bool {
        !self.stopped.load(Ordering::Relaxed) && now < self.deadline_ns && self.pipeline.is_open()
    }

    /// Stops the session once, remembers why and tells its process.
    fn trip(&self, env: Env, reason: &str) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(reason.to_string());
        }
        let _ = env.send(
            &self.owner,
            (atoms::causeway_trace(), atoms::stopped(), reason),
        );
    }

    /// Counts one event against the limits; false once a limit trips.
    fn admit(&self, env: Env, now: i64) -> bool {
        if !self.live(now) {
            if !self.stopped.load(Ordering::Relaxed) && now >= self.deadline_ns {
                self.trip(env, "duration_ms");
            }
            return false;
        }
        let n = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.max_events {
            self.events.fetch_sub(1, Ordering::Relaxed);
            self.trip(env, "max_events");
            return false;
        }
        let start = self.window_start.load(Ordering::Relaxed);
        let new_window = now - start >= 1_000_000_000;
        if new_window
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.window_count.store(0, Ordering::Relaxed);
        }
        if self.window_count.fetch_add(1, Ordering::Relaxed) + 1 > self.max_rate {
            self.trip(env, "max_rate");
            return false;
        }
        true
    }
}

#[derive(NifMap)]
struct SessionOpts {
    max_events: u64,
    max_rate: u64,
    duration_ms: u64,
    max_msg_bytes: usize,
    modules: Vec<Atom>,
    returns: bool,
}

/// A session bound to the instance `h`, reporting limits to `owner`.
#[rustler::nif]
fn tracer_session_new(
    env: Env,
    h: ResourceArc<Handle>,
    o: SessionOpts,
    owner: LocalPid,
) -> NifResult<Term> {
    let pipeline = h.pipeline()?.clone();
    if o.max_msg_bytes < 64 {
        return Err(arg_error(format!(
            "max_msg_bytes must be at least 64, got {}",
            o.max_msg_bytes
        )));
    }
    let now = monotonic_ns();
    let s = TraceSession {
        pipeline,
        owner,
        max_events: o.max_events,
        max_rate: o.max_rate.max(1),
        deadline_ns: now.saturating_add((o.duration_ms as i64).saturating_mul(1_000_000)),
        max_term_bytes: o.max_msg_bytes,
        events: AtomicU64::new(0),
        window_start: AtomicI64::new(now),
        window_count: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        reason: Mutex::new(None),
        modules: o.modules.iter().map(|a| word(a.as_c_arg())).collect(),
        returns: o.returns,
    };
    Ok((crate::atoms::ok(), ResourceArc::new(s)).encode(env))
}

/// Stops a session from Elixir (no more events; tracees detach on their next probe).
#[rustler::nif]
fn tracer_session_stop(s: ResourceArc<TraceSession>, reason: String) -> Atom {
    if !s.stopped.swap(true, Ordering::AcqRel) {
        if let Ok(mut r) = s.reason.lock() {
            *r = Some(reason);
        }
    }
    crate::atoms::ok()
}

/// `%{events: n, stopped: bool, reason: nil | string}`
#[rustler::nif]
fn tracer_session_info(env: Env, s: ResourceArc<TraceSession>) -> Term {
    let reason = s.reason.lock().ok().and_then(|r| r.clone());
    let keys = ["events", "stopped", "reason"].map(|k| crate::convert::atom(env, k));
    let vals = [
        s.events.load(Ordering::Relaxed).encode(env),
        s.stopped.load(Ordering::Relaxed).encode(env),
        match reason {
            Some(r) => r.encode(env),
            None => crate::atoms::nil().encode(env),
        },
    ];
    Term::map_from_term_arrays(env, &keys, &vals)
        .unwrap_or_else(|_| crate::atoms::nil().encode(env))
}

lean_nif!("enabled", 3, |env, a| Ok(enabled(env, a[0], a[1], a[2])));
/// erl_tracer `enabled/3`: trace while the session lives, detach after.
fn enabled<'a>(env: Env<'a>, _tag: Term<'a>, state: Term<'a>, _tracee: Term<'a>) -> Term<'a> {
    // borrowed for the call (the VM holds the state term): no reference
    // count taken and dropped per probe
    let Some(s) = state.try_get_resource::<TraceSession>() else {
        return atoms::remove().encode(env);
    };
    if s.live(monotonic_ns()) {
        atoms::trace().encode(env)
    } else {
        atoms::remove().encode(env)
    }
}

fn extra<'a>(env: Env<'a>, opts: Term<'a>) -> Option<Term<'a>> {
    opts.map_get(atoms::extra().encode(env)).ok()
}

lean_nif!("trace", 5, |env, a| Ok(trace(
    env,
    a[0].decode()?,
    a[1],
    a[2],
    a[3],
    a[4]
)));
/// erl_tracer `trace/5`: one event per probe, into the caller's ring.
fn trace<'a>(
    env: Env<'a>,
    tag: Atom,
    state: Term<'a>,
    tracee: Term<'a>,
    term: Term<'a>,
    opts: Term<'a>,
) -> Atom {
    let ok = crate::atoms::ok();
    let Some(s) = state.try_get_resource::<TraceSession>() else {
        return ok;
    };
    // a probe that began before the instance closed finishes before its
    // final drain (nothing lands in a ring after it, uncounted)
    s.pipeline
        .guarded_capture(|| record(env, tag, s, tracee, term, opts))
        .unwrap_or(ok)
}

/// The event of one probe of session `s`.
fn record<'a>(
    env: Env<'a>,
    tag: Atom,
    s: &TraceSession,
    tracee: Term<'a>,
    term: Term<'a>,
    opts: Term<'a>,
) -> Atom {
    let ok = crate::atoms::ok();
    let Ok(tracee_pid) = tracee.decode::<LocalPid>() else {
        return ok;
    };
    let p = &s.pipeline;
    let pid = pid_word(env, &tracee_pid);
    let now = monotonic_ns();
    let budget = Budget {
        max_bytes: s.max_term_bytes,
        max_depth: p.tun.max_depth.load(Ordering::Relaxed),
        redact: &p.config.redact,
    };

    let kind = if tag == atoms::call() {
        EventType::FunctionEntry
    } else if tag == atoms::return_from() || tag == atoms::exception_from() {
        EventType::FunctionExit
    } else if tag == atoms::send() || tag == atoms::send_to_non_existing_process() {
        EventType::MessageSend
    } else if tag == atoms::receive() {
        EventType::MessageReceive
    } else if tag == atoms::spawn() {
        EventType::ProcessSpawn
    } else if tag == atoms::exit() {
        EventType::ProcessExit
    } else {
        return ok; // link, unlink, register, ...: not recorded
    };

    // calls and returns: {M, F, Args} / {M, F, Arity}
    let mfa = if matches!(kind, EventType::FunctionEntry | EventType::FunctionExit) {
        match term::tuple_of::<3>(term) {
            Some([m, f, a]) if term::is_atom(m) && term::is_atom(f) => Some((m, f, a)),
            _ => return ok,
        }
    } else {
        None
    };
    if let (Some((m, _, _)), false) = (mfa, s.modules.is_empty()) {
        if !s.modules.contains(&word(m.as_c_arg())) {
            return ok;
        }
    }
    let module = mfa.map_or(0, |(m, _, _)| word(m.as_c_arg()));
    // a return closes its frame whether or not it is recorded; one whose call
    // was recorded is kept with it under sampling (calls stay whole)
    let exit_frame = match (kind, mfa) {
        (EventType::FunctionExit, Some((_, f, arity))) => {
            let arity = arity.decode::<u32>().unwrap_or(0);
            p.contexts
                .exit_matching(pid, module, word(f.as_c_arg()), arity, now)
        }
        _ => None,
    };
    if !p.admit_as(kind, pid, module, exit_frame.is_some()) || !s.admit(env, now) {
        return ok;
    }

    let shard = causeway_core::ring::wrap(cpu_slot(), p.rings.shard_count());
    let id = p.stamp_on(shard, now);
    let mut ev = RawEvent {
        id,
        kind: Some(kind),
        mono_ns: now,
        pid,
        source: Source::Tracer,
        ..Default::default()
    };

    match kind {
        EventType::FunctionEntry => {
            let Some((_, f, args)) = mfa else { return ok };
            let (data, arity) = if args.is_list() || args.is_empty_list() {
                term::encode_list_len(env, args, &budget)
            } else {
                (
                    term::encode(env, args, &budget),
                    args.decode::<u32>().unwrap_or(0),
                )
            };
            let function = word(f.as_c_arg());
            let frame = Frame {
                call_id: id,
                module,
                function,
                arity,
            };
            let parent = if s.returns {
                p.contexts.enter(pid, frame, now)
            } else {
                // never closed without returns: only the current cause, no stacking
                p.contexts.cause(pid)
            };
            if let Some((parent, link)) = parent {
                ev.parent_id = parent;
                ev.parent_link = Some(link);
            }
            ev.module = module;
            ev.function = function;
            ev.arity = arity;
            ev.data = data;
        }
        EventType::FunctionExit => {
            let Some((_, f, arity)) = mfa else { return ok };
            let arity = arity.decode::<u32>().unwrap_or(0);
            let function = word(f.as_c_arg());
            let frame = exit_frame;
            let value = extra(env, opts);
            ev.data = if tag == atoms::exception_from() {
                // extra is {Class, Value}
                match value.and_then(term::tuple_of::<2>) {
                    Some([class, v]) => term::encode_tuple(
                        env,
                        &[atoms::exception().encode(env), class, v],
                        &budget,
                    ),
                    _ => term::encode(env, atoms::exception().encode(env), &budget),
                }
            } else {
                match value {
                    Some(v) => term::encode(env, v, &budget),
                    None => term::encode(env, crate::atoms::undefined().encode(env), &budget),
                }
            };
            ev.module = module;
            ev.function = function;
            ev.arity = arity;
            if let Some(fr) = frame {
                ev.parent_id = fr.call_id;
            }
        }
        EventType::MessageSend => {
            ev.data = term::encode(env, term, &budget);
            ev.peer = match extra(env, opts) {
                Some(to) if to.get_type() == TermType::Pid => {
                    crate::runtime::raw_pid(to, "the receiver").unwrap_or_default()
                }
                _ => RawPid::None,
            };
            if let Some(c) = p.contexts.current_call(pid) {
                ev.parent_id = c;
                ev.parent_link = Some(LinkKind::CausedBy);
            }
        }
        EventType::MessageReceive => {
            ev.data = term::encode(env, term, &budget);
            p.contexts.receive(pid, id, now);
        }
        EventType::ProcessSpawn => {
            ev.peer = match term.decode::<LocalPid>() {
                Ok(child) => RawPid::Local(pid_word(env, &child)),
                Err(_) => RawPid::None,
            };
            ev.data = term::encode(env, extra(env, opts).unwrap_or(term), &budget);
            if let Some(c) = p.contexts.current_call(pid) {
                ev.parent_id = c;
                ev.parent_link = Some(LinkKind::CausedBy);
            }
        }
        EventType::ProcessExit => {
            ev.data = term::encode(env, term, &budget);
            p.contexts.forget(pid);
        }
        _ => return ok,
    }
    p.push(shard, ev);
    ok
}
