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
//!
//! A triggered session (`start_on:`, see `Follow`) records nothing until its
//! trigger fires; then it records the triggering process and every process a
//! followed one sends to or spawns, a bounded number of hops away.

use crate::beam::{monotonic_ns, pid_word, word};
use crate::error::arg_error;
use crate::handle::Handle;
use crate::term::{self, Budget};
use causeway_core::context::Frame;
use causeway_core::event::{EventType, LinkKind, RawEvent, RawPid, Source};
use causeway_core::pipeline::Pipeline;
use causeway_core::ring::cpu_slot;
use rustler::{Atom, Encoder, Env, LocalPid, NifMap, NifResult, ResourceArc, Term, TermType};
use std::collections::{HashMap, HashSet};
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
        fired,
        already_fired,
        not_armed,
        not_followable,
        triggered,
        trigger_pid,
        followed,
        refused,
        beyond_hops,
        spawn_reply,
        down = "DOWN",
        process,
        error,
        throw,
        return_ = "return",
    }
}

pub struct TraceSession {
    pipeline: Arc<Pipeline>,
    owner: LocalPid,
    max_events: u64,
    max_rate: u64,
    /// Lowered to the trigger's time + `follow_ms` when a trigger fires.
    deadline_ns: AtomicI64,
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
    /// Spawns and exits are recorded (`:procs` in `:what`).
    procs: bool,
    /// `Some` for a triggered session.
    follow: Option<Follow>,
}

/// The following of a triggered session. Before its trigger fires, the only
/// events that reach the session are the trigger's meta-traced calls (and
/// probes of processes that got its flags without being followed, which are
/// detached). When it fires, the calling process is followed at hop 0; a
/// followed process at hop `h < max_hops` that sends to a local process or
/// spawns one makes it followed at `h + 1`, until `max_followed` processes
/// are. The Elixir side gives followed processes `send`, `procs` and
/// `set_on_spawn` (spawned children inherit the flags before they run) and
/// a send trace pattern that gives a message's receiver the flags as it is
/// sent; this registry decides which of them stay: any other process whose
/// tracer is this session is detached (`remove`) on its next probe.
struct Follow {
    fired: AtomicBool,
    max_hops: u32,
    max_followed: usize,
    follow_ns: i64,
    /// The trigger function's module and function words (`None`: a manual
    /// or telemetry trigger, fired by `tracer_session_fire`).
    trigger: Option<(u64, u64)>,
    record_sends: bool,
    record_receives: bool,
    record_procs: bool,
    /// Pid words never followed (Causeway's own processes, the session's owner).
    exclude: Vec<u64>,
    set: Mutex<FollowSet>,
}

/// Distinct processes not followed are remembered up to this many (the
/// counts stay exact up to it, and are lower bounds after).
const MAX_NOT_FOLLOWED: usize = 10_000;

#[derive(Default)]
struct FollowSet {
    hops: HashMap<u64, (LocalPid, u32)>,
    trigger_pid: Option<LocalPid>,
    fired_at_ns: i64,
    not_followed: HashSet<u64>,
    /// Processes reached when `max_followed` were followed already.
    refused: u64,
    /// Processes reached from a followed process at `max_hops`.
    beyond_hops: u64,
}

/// What `Follow::gate` needs of one probe.
struct Probe {
    kind: EventType,
    tracee: LocalPid,
    /// Module and function words of a call or return.
    mfa: Option<(u64, u64)>,
    /// The receiver of a send, the child of a spawn.
    peer: Option<LocalPid>,
    now: i64,
}

enum Gate {
    /// Not an event of this session: neither recorded nor followed.
    Skip,
    /// The call that fired the trigger: recorded whatever the filters say.
    Trigger,
    /// An event of a followed process.
    Followed,
}

impl Follow {
    fn hop_of(&self, pid: u64) -> Option<u32> {
        self.set
            .lock()
            .ok()
            .and_then(|s| s.hops.get(&pid).map(|(_, h)| *h))
    }

    fn is_followed(&self, pid: u64) -> bool {
        self.set
            .lock()
            .map(|s| s.hops.contains_key(&pid))
            .unwrap_or(false)
    }

    /// Fires the trigger in `pid` (once): it is followed from now on.
    fn fire(&self, env: Env, s: &TraceSession, pid: LocalPid, now: i64) -> bool {
        if self.excluded(env, &pid)
            || self
                .fired
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        if let Ok(mut set) = self.set.lock() {
            set.hops.insert(pid_word(env, &pid), (pid, 0));
            set.trigger_pid = Some(pid);
            set.fired_at_ns = now;
        }
        s.deadline_ns
            .fetch_min(now.saturating_add(self.follow_ns), Ordering::AcqRel);
        let _ = env.send(&s.owner, (atoms::causeway_trace(), atoms::fired(), pid));
        true
    }

    fn excluded(&self, env: Env, pid: &LocalPid) -> bool {
        self.exclude.contains(&pid_word(env, pid))
    }

    /// A followed process at `hop` reached `peer` (sent to it or spawned it).
    fn reach(&self, env: Env, hop: u32, peer: LocalPid) {
        let w = pid_word(env, &peer);
        if self.exclude.contains(&w) {
            return;
        }
        let Ok(mut set) = self.set.lock() else { return };
        if set.hops.contains_key(&w) {
            return;
        }
        let full = set.hops.len() >= self.max_followed;
        if hop >= self.max_hops || full {
            if set.not_followed.len() < MAX_NOT_FOLLOWED && set.not_followed.insert(w) {
                if hop >= self.max_hops {
                    set.beyond_hops += 1;
                } else {
                    set.refused += 1;
                }
            }
            return;
        }
        set.not_followed.remove(&w);
        set.hops.insert(w, (peer, hop + 1));
    }

    /// Whether probe `p` of session `s` is recorded or followed.
    fn gate(&self, env: Env, s: &TraceSession, p: &Probe) -> Gate {
        let pid = pid_word(env, &p.tracee);
        let Some(hop) = self.hop_of(pid) else {
            let trigger_call = p.kind == EventType::FunctionEntry
                && self.trigger.is_some()
                && self.trigger == p.mfa;
            return if trigger_call && self.fire(env, s, p.tracee, p.now) {
                Gate::Trigger
            } else {
                Gate::Skip
            };
        };
        if let Some(peer) = p.peer {
            self.reach(env, hop, peer);
        }
        let kind = p.kind;
        let recorded = match kind {
            EventType::MessageSend => self.record_sends,
            EventType::MessageReceive => self.record_receives,
            EventType::ProcessSpawn | EventType::ProcessExit => self.record_procs,
            _ => true,
        };
        if recorded {
            Gate::Followed
        } else {
            Gate::Skip
        }
    }
}

#[rustler::resource_impl]
impl rustler::Resource for TraceSession {}

impl TraceSession {
    fn live(&self, now: i64) -> bool {
        !self.stopped.load(Ordering::Relaxed)
            && now < self.deadline_ns.load(Ordering::Relaxed)
            && self.pipeline.is_open()
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
            if !self.stopped.load(Ordering::Relaxed)
                && now >= self.deadline_ns.load(Ordering::Relaxed)
            {
                let fired = self
                    .follow
                    .as_ref()
                    .map(|f| f.fired.load(Ordering::Relaxed));
                self.trip(
                    env,
                    if fired == Some(true) {
                        "follow_ms"
                    } else {
                        "duration_ms"
                    },
                );
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
    procs: bool,
    /// `nil`, or the following of a triggered session.
    follow: Option<FollowOpts>,
}

#[derive(NifMap)]
struct FollowOpts {
    max_hops: u32,
    max_followed: usize,
    follow_ms: u64,
    /// `{module, function}` of a call trigger, or `nil`.
    trigger: Option<(Atom, Atom)>,
    record_sends: bool,
    record_receives: bool,
    record_procs: bool,
    exclude: Vec<LocalPid>,
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
    let follow = o.follow.map(|f| Follow {
        fired: AtomicBool::new(false),
        max_hops: f.max_hops,
        max_followed: f.max_followed.max(1),
        follow_ns: (f.follow_ms as i64).saturating_mul(1_000_000),
        trigger: f
            .trigger
            .map(|(m, fun)| (word(m.as_c_arg()), word(fun.as_c_arg()))),
        record_sends: f.record_sends,
        record_receives: f.record_receives,
        record_procs: f.record_procs,
        exclude: f.exclude.iter().map(|p| pid_word(env, p)).collect(),
        set: Mutex::new(FollowSet::default()),
    });
    let s = TraceSession {
        pipeline,
        owner,
        max_events: o.max_events,
        max_rate: o.max_rate.max(1),
        deadline_ns: AtomicI64::new(
            now.saturating_add((o.duration_ms as i64).saturating_mul(1_000_000)),
        ),
        max_term_bytes: o.max_msg_bytes,
        events: AtomicU64::new(0),
        window_start: AtomicI64::new(now),
        window_count: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        reason: Mutex::new(None),
        modules: o.modules.iter().map(|a| word(a.as_c_arg())).collect(),
        returns: o.returns,
        procs: o.procs,
        follow,
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

/// `%{events: n, stopped: bool, reason: nil | string}`; a triggered
/// session adds `triggered: bool, trigger_pid: pid | nil, followed: [{pid,
/// hop}], refused: n, beyond_hops: n`.
#[rustler::nif]
fn tracer_session_info(env: Env, s: ResourceArc<TraceSession>) -> NifResult<Term> {
    let reason = s.reason.lock().ok().and_then(|r| r.clone());
    let map = Term::map_new(env)
        .map_put(
            crate::convert::atom(env, "events"),
            s.events.load(Ordering::Relaxed).encode(env),
        )?
        .map_put(
            crate::convert::atom(env, "stopped"),
            s.stopped.load(Ordering::Relaxed).encode(env),
        )?
        .map_put(
            crate::convert::atom(env, "reason"),
            match reason {
                Some(r) => r.encode(env),
                None => crate::atoms::nil().encode(env),
            },
        )?;
    let Some(f) = &s.follow else { return Ok(map) };
    let Ok(set) = f.set.lock() else {
        return Ok(map);
    };
    let mut followed: Vec<(LocalPid, u32)> = set.hops.values().copied().collect();
    followed.sort_by_key(|(_, h)| *h);
    map.map_put(
        atoms::triggered().encode(env),
        f.fired.load(Ordering::Relaxed).encode(env),
    )?
    .map_put(
        atoms::trigger_pid().encode(env),
        match set.trigger_pid {
            Some(p) => p.encode(env),
            None => crate::atoms::nil().encode(env),
        },
    )?
    .map_put(atoms::followed().encode(env), followed.encode(env))?
    .map_put(atoms::refused().encode(env), set.refused.encode(env))?
    .map_put(
        atoms::beyond_hops().encode(env),
        set.beyond_hops.encode(env),
    )
}

/// Fires a triggered session's trigger in `pid` (a manual or telemetry
/// trigger): `ok`, `already_fired`, `not_followable` (one of Causeway's
/// processes or the session's owner), or `not_armed` (not a triggered
/// session, or stopped). The caller then gives `pid` its trace flags.
#[rustler::nif]
fn tracer_session_fire(env: Env, s: ResourceArc<TraceSession>, pid: LocalPid) -> Atom {
    let now = monotonic_ns();
    let Some(f) = &s.follow else {
        return atoms::not_armed();
    };
    if !s.live(now) {
        return atoms::not_armed();
    }
    if f.excluded(env, &pid) {
        return atoms::not_followable();
    }
    if f.fire(env, &s, pid, now) {
        crate::atoms::ok()
    } else {
        atoms::already_fired()
    }
}

lean_nif!("enabled", 3, |env, a| Ok(enabled(env, a[0], a[1], a[2])));
/// erl_tracer `enabled/3`: trace while the session lives, detach after.
fn enabled<'a>(env: Env<'a>, tag: Term<'a>, state: Term<'a>, tracee: Term<'a>) -> Term<'a> {
    // borrowed for the call (the VM holds the state term): no reference
    // count taken and dropped per probe
    let Some(s) = state.try_get_resource::<TraceSession>() else {
        return atoms::remove().encode(env);
    };
    if !s.live(monotonic_ns()) {
        return atoms::remove().encode(env);
    }
    if let Some(f) = &s.follow {
        // `trace_status` asks whether a tracer given to a process (by the
        // trigger's or the send pattern's match spec) stays: it does until
        // that process probes and is not followed
        let keep = tag.decode::<Atom>().ok() == Some(atoms::trace_status())
            || if f.fired.load(Ordering::Acquire) {
                f.is_followed(word(tracee.as_c_arg()))
            } else {
                // before the trigger fires only its meta-traced call counts
                tag.decode::<Atom>().ok() == Some(atoms::call())
            };
        if !keep {
            return atoms::remove().encode(env);
        }
    }
    atoms::trace().encode(env)
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
    let gate = match &s.follow {
        Some(f) => {
            let peer = match kind {
                EventType::MessageSend => {
                    extra(env, opts).and_then(|t| t.decode::<LocalPid>().ok())
                }
                EventType::ProcessSpawn => term.decode::<LocalPid>().ok(),
                _ => None,
            };
            let probe = Probe {
                kind,
                tracee: tracee_pid,
                mfa: mfa.map(|(m, f, _)| (word(m.as_c_arg()), word(f.as_c_arg()))),
                peer,
                now,
            };
            f.gate(env, s, &probe)
        }
        None => Gate::Followed,
    };
    match (gate, mfa) {
        (Gate::Skip, _) => return ok,
        (Gate::Followed, Some((m, _, _)))
            if !s.modules.is_empty() && !s.modules.contains(&word(m.as_c_arg())) =>
        {
            return ok;
        }
        _ => {}
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
            match extra(env, opts) {
                Some(to) if to.get_type() == TermType::Pid => {
                    ev.peer = crate::runtime::raw_pid(to, "the receiver").unwrap_or_default();
                }
                // a registered name, `name` or `{name, node}`: kept as the
                // send's function (and module) words, paired at query time
                Some(to) if term::is_atom(to) => ev.function = word(to.as_c_arg()),
                Some(to) => {
                    if let Some([name, node]) = term::tuple_of::<2>(to) {
                        if term::is_atom(name) && term::is_atom(node) {
                            ev.function = word(name.as_c_arg());
                            ev.module = word(node.as_c_arg());
                        }
                    }
                }
                None => {}
            }
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
    if kind == EventType::MessageReceive && s.procs {
        if let Some(child) = remote_child(env, term) {
            record_remote_spawn(env, s, pid, child, shard, now, &budget);
        }
    }
    ok
}

/// The process on another node that a received message says was spawned
/// for the receiver: the BEAM traces no `spawn` for a remote spawn, but its
/// parent gets `{spawn_reply, Ref, ok, Pid}` (`Node.spawn/2`,
/// `spawn_request/4`) or, from `:erpc.call/4`, the worker's
/// `{'DOWN', Ref, process, Pid, {Ref, return | throw | error | exit, _}}`
/// when the call ends.
fn remote_child<'a>(env: Env<'a>, msg: Term<'a>) -> Option<Term<'a>> {
    let remote = |t: Term<'a>| t.get_type() == TermType::Pid && t.decode::<LocalPid>().is_err();
    if let Some([tag, _ref, ok, child]) = term::tuple_of::<4>(msg) {
        if tag == atoms::spawn_reply().encode(env)
            && ok == crate::atoms::ok().encode(env)
            && remote(child)
        {
            return Some(child);
        }
    }
    let [tag, _ref, process, child, reason] = term::tuple_of::<5>(msg)?;
    let [rref, how, _] = term::tuple_of::<3>(reason)?;
    let how_ok = [
        atoms::return_(),
        atoms::throw(),
        atoms::error(),
        atoms::exit(),
    ]
    .iter()
    .any(|a| how == a.encode(env));
    (tag == atoms::down().encode(env)
        && process == atoms::process().encode(env)
        && rref.get_type() == TermType::Ref
        && how_ok
        && remote(child))
    .then_some(child)
}

/// A `process_spawn` of `child` (a pid on another node) by `pid`, recorded
/// as the reply of the spawn is received.
fn record_remote_spawn<'a>(
    env: Env<'a>,
    s: &TraceSession,
    pid: u64,
    child: Term<'a>,
    shard: usize,
    now: i64,
    budget: &Budget,
) {
    let p = &s.pipeline;
    if !p.admit_as(EventType::ProcessSpawn, pid, 0, false) || !s.admit(env, now) {
        return;
    }
    let mut ev = RawEvent {
        id: p.stamp_on(shard, now),
        kind: Some(EventType::ProcessSpawn),
        mono_ns: now,
        pid,
        source: Source::Tracer,
        ..Default::default()
    };
    ev.peer = crate::runtime::raw_pid(child, "the child").unwrap_or_default();
    ev.data = term::encode(env, crate::atoms::undefined().encode(env), budget);
    if let Some(c) = p.contexts.current_call(pid) {
        ev.parent_id = c;
        ev.parent_link = Some(LinkKind::CausedBy);
    }
    p.push(shard, ev);
}
