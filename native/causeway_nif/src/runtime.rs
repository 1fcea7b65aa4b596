//! `Causeway.Runtime`: one NIF call per event, on the caller's scheduler, no
//! process hop. Each checks the capture flags, stamps an id, updates the
//! process context, encodes its terms under the budget and pushes to the ring
//! of the caller's CPU.
//!
//! The runtime reports to the default instance (the one named `Causeway`),
//! published here by `rt_set_default` instead of being looked up and passed as
//! a resource on every call. Readers announce themselves in a per-CPU counter
//! (no shared cache line); replacing the default waits until every counter has
//! been seen at zero once, so a pipeline is never freed under a reader.

use crate::beam::{monotonic_ns, pid_word, term_bytes, word};
use crate::error::arg_error;
use crate::handle::Handle;
use crate::term::{self, Budget};
use causeway_core::context::{Cause, Frame};
use causeway_core::etf::Payload;
use causeway_core::event::{EventType, LinkKind, RawEvent, RawPid, Source};
use causeway_core::inflight::InFlight;
use causeway_core::pipeline::Pipeline;
use causeway_core::ring::{cpu_slot, wrap, PushOutcome};
use rustler::{Atom, Encoder, Env, NifResult, ResourceArc, Term, TermType};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

struct DefaultPipeline {
    ptr: AtomicPtr<Pipeline>,
    readers: InFlight,
    writer: Mutex<()>,
}

static DEFAULT: DefaultPipeline = DefaultPipeline {
    ptr: AtomicPtr::new(std::ptr::null_mut()),
    readers: InFlight::new(),
    writer: Mutex::new(()),
};

/// Runs `f` with the default pipeline, if one is published. Returns the CPU
/// slot too, so the caller picks its ring shard without asking again.
#[inline]
fn with_default<R>(f: impl FnOnce(&Pipeline, usize) -> R) -> Option<R> {
    let cpu = cpu_slot();
    let _inside = DEFAULT.readers.enter_on(cpu);
    let p = DEFAULT.ptr.load(Ordering::SeqCst);
    // SAFETY: a published pipeline is freed only after every reader that
    // could have loaded it has left (`replace_default`)
    (!p.is_null()).then(|| f(unsafe { &*p }, cpu))
}

/// Publishes `new` as the default pipeline, waits until no reader can still
/// hold the old one, and releases it.
fn replace_default(new: Option<Arc<Pipeline>>) {
    let _w = DEFAULT.writer.lock();
    let new_ptr = new
        .map(|a| Arc::into_raw(a) as *mut Pipeline)
        .unwrap_or(std::ptr::null_mut());
    let old = DEFAULT.ptr.swap(new_ptr, Ordering::SeqCst);
    // each reader is inside for the length of one capture call
    DEFAULT.readers.wait_idle();
    if !old.is_null() {
        drop(unsafe { Arc::from_raw(old as *const Pipeline) });
    }
}

/// Unpublishes `p` if it is the default (on close).
pub fn clear_default_if(p: &Arc<Pipeline>) {
    if std::ptr::eq(DEFAULT.ptr.load(Ordering::SeqCst), Arc::as_ptr(p)) {
        replace_default(None);
    }
}

/// Makes a running instance the one `Causeway.Runtime` reports to (or none).
#[rustler::nif(schedule = "DirtyCpu")]
fn rt_set_default(h: Term) -> NifResult<Atom> {
    if h.is_atom() {
        replace_default(None);
        return Ok(crate::atoms::ok());
    }
    let h: ResourceArc<Handle> = h.decode()?;
    replace_default(Some(h.pipeline()?.clone()));
    Ok(crate::atoms::ok())
}

pub(crate) fn self_raw(env: Env) -> u64 {
    pid_word(env, &env.pid())
}

/// Encodings that may take longer than this many bytes are done on a
/// dirty CPU scheduler (64 KiB encode in ~50 µs here; a 16 MB binary took
/// 17 ms on the caller's scheduler before this). Only a `max_term_bytes`
/// above it lets a term get that big, so with the default budget (2 KiB)
/// the check is one relaxed load.
const DIRTY_ABOVE: usize = 64 << 10;

/// Set (and never cleared) once any pipeline of this VM was given a
/// `max_term_bytes` above `DIRTY_ABOVE`: until then no capture looks at the
/// size of its terms.
static BIG_BUDGET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set (and never cleared) once a pipeline of this VM ran with
/// `overflow: :wait`: until then no capture looks at its ring's fill level.
static WAIT_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called with the overflow policy of every pipeline started.
pub(crate) fn note_overflow(o: causeway_core::ring::Overflow) {
    if o == causeway_core::ring::Overflow::Wait {
        WAIT_MODE.store(true, Ordering::Relaxed);
    }
}

/// Under `overflow: :wait`: the default pipeline's ring of this CPU is
/// nearly full, so the capture must move to a thread that may wait.
#[inline]
pub(crate) fn must_wait() -> bool {
    WAIT_MODE.load(Ordering::Relaxed)
        && with_default(|p, cpu| p.rings.nearly_full(wrap(cpu, p.rings.shard_count())))
            .unwrap_or(false)
}

/// On a dirty scheduler: sleeps until the ring of this CPU has room again
/// (at most 30 s; then the capture runs and the ring's own wait decides).
pub(crate) fn wait_for_room() {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(20);
    while must_wait() && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(1));
    }
}

/// Called with every `max_term_bytes` a pipeline starts with or is
/// configured to.
pub(crate) fn note_term_budget(max_term_bytes: usize) {
    if max_term_bytes > DIRTY_ABOVE {
        BIG_BUDGET.store(true, Ordering::Relaxed);
    }
}

/// `dirty_if` of the captures that encode terms: true when the default
/// pipeline's budget allows more than `DIRTY_ABOVE` bytes and one of the
/// arguments may encode to more than that (a bounded look at the terms:
/// at most ~4 000 of their nodes are visited).
pub(crate) fn long_encoding(args: &[Term]) -> bool {
    if !BIG_BUDGET.load(Ordering::Relaxed) {
        return false;
    }
    let mut left = SizeWalk {
        bytes: DIRTY_ABOVE as i64,
        nodes: 4_096,
    };
    args.iter().any(|t| left.exceeds(*t, 0))
}

/// Nesting deeper than this is taken as a long encoding (the walk recurses
/// on the caller's scheduler stack: it must stay shallow).
const WALK_DEPTH: usize = 64;

/// What is left of a size estimate's allowance while walking a term.
struct SizeWalk {
    bytes: i64,
    nodes: i64,
}

impl SizeWalk {
    /// True once the terms seen so far may encode to more than the
    /// allowance, or have more nodes than it lets us look at.
    fn exceeds(&mut self, t: Term, depth: usize) -> bool {
        self.nodes -= 1;
        self.bytes -= 9;
        if self.nodes < 0 || self.bytes < 0 || depth > WALK_DEPTH {
            return true;
        }
        let depth = depth + 1;
        match t.get_type() {
            TermType::Binary => {
                let n = rustler::Binary::from_term(t).map_or(0, |b| b.len());
                self.bytes -= n as i64;
                self.bytes < 0
            }
            TermType::List => {
                // cell by cell: rustler's list iterator panics on improper lists
                let mut cell = t;
                while let Ok((head, tail)) = cell.list_get_cell() {
                    if self.exceeds(head, depth) {
                        return true;
                    }
                    self.bytes -= 1;
                    cell = tail;
                }
                false
            }
            TermType::Tuple => match rustler::types::tuple::get_tuple(t) {
                Ok(items) => items.into_iter().any(|x| self.exceeds(x, depth)),
                Err(_) => false,
            },
            TermType::Map => match rustler::types::map::MapIterator::new(t) {
                Some(items) => {
                    for (k, v) in items {
                        if self.exceeds(k, depth) || self.exceeds(v, depth) {
                            return true;
                        }
                    }
                    false
                }
                None => false,
            },
            _ => false,
        }
    }
}

fn budget(p: &Pipeline) -> Budget<'_> {
    Budget {
        max_bytes: p.tun.max_term_bytes.load(Ordering::Relaxed),
        max_depth: p.tun.max_depth.load(Ordering::Relaxed),
        redact: &p.config.redact,
    }
}

/// A pid argument: local pids by their word, remote ones by their bytes.
pub(crate) fn raw_pid(t: Term, what: &str) -> NifResult<RawPid> {
    if t.get_type() != TermType::Pid {
        return Err(arg_error(format!("{what} must be a pid, got: {t:?}")));
    }
    if let Ok(p) = t.decode::<rustler::LocalPid>() {
        return Ok(RawPid::Local(pid_word(t.get_env(), &p)));
    }
    match term_bytes(t.get_env().as_c_arg(), t.as_c_arg()) {
        Some(b) => Ok(RawPid::External(Box::new(b))),
        None => Err(arg_error(format!("{what} could not be encoded"))),
    }
}

fn local_pid(t: Term, what: &str) -> NifResult<u64> {
    match t.decode::<rustler::LocalPid>() {
        Ok(p) => Ok(pid_word(t.get_env(), &p)),
        Err(_) => Err(arg_error(format!("{what} must be a local pid, got: {t:?}"))),
    }
}

/// The shard, id and monotonic time of an event captured now.
struct Stamp {
    shard: usize,
    id: u64,
    mono: i64,
}

fn stamp(p: &Pipeline, cpu: usize) -> Stamp {
    stamp_at(p, cpu, monotonic_ns())
}

/// `stamp` with a clock reading the caller already has.
fn stamp_at(p: &Pipeline, cpu: usize, mono: i64) -> Stamp {
    let shard = wrap(cpu, p.rings.shard_count());
    let id = p.stamp_on(shard, mono);
    Stamp { shard, id, mono }
}

/// Completes, in its ring slot, an event whose payload is already there.
#[inline(always)]
fn set_fields(
    ev: &mut RawEvent,
    s: &Stamp,
    kind: EventType,
    pid: u64,
    (module, function, arity): (u64, u64, u32),
    parent: Cause,
) {
    (ev.parent_id, ev.parent_link) = match parent {
        // an exit's parent is its own entry: the correlator links it when both are seen
        Some((id, _)) if kind == EventType::FunctionExit => (id, None),
        Some((id, k)) => (id, Some(k)),
        None => (0, None),
    };
    ev.id = s.id;
    ev.kind = Some(kind);
    ev.mono_ns = s.mono;
    ev.pid = pid;
    ev.module = module;
    ev.function = function;
    ev.arity = arity;
    ev.source = Source::Runtime;
}

/// The most a payload under budget `b` can hold outside its slot, doubled
/// for the spare capacity of an allocation that doubles. Past the budget,
/// the encoder may still write a last atom or two (a map key and value,
/// ~520 bytes), and while it climbs out of the containers it was in, an
/// end marker of up to 30 bytes for each (a container header is 5 bytes,
/// so there are at most `max_bytes / 5 + 1` of them).
fn max_heap(b: &Budget) -> u64 {
    let open = (b.max_depth as u64).min(b.max_bytes as u64 / 5 + 1);
    2 * (b.max_bytes as u64 + 600 + 30 * open)
}

/// The largest byte budget under which a payload is encoded right in its
/// ring slot. The slot is taken before the encoding starts and consumers
/// wait at it until it is filled: with a larger budget the terms are
/// encoded first and the event is copied in, so that a long encoding (or a
/// scheduler thread descheduled in the middle of one) does not hold the
/// ring's readers, nor a drop-oldest ring's writers, for that long.
const IN_PLACE_MAX_BYTES: usize = 4096;

/// Puts the event `fill` makes into `shard`'s ring: in its slot when the
/// budget allows (see `IN_PLACE_MAX_BYTES`, `max_heap`; `extra_heap` is what
/// the event holds outside its slot besides its payload), else made first
/// and pushed. False when it was refused without `fill` running.
#[inline(always)]
fn place(
    p: &Pipeline,
    shard: usize,
    b: &Budget,
    extra_heap: u64,
    fill: impl FnOnce(&mut RawEvent),
) -> bool {
    if b.max_bytes <= IN_PLACE_MAX_BYTES {
        match p.push_in_place(shard, max_heap(b) + extra_heap, fill) {
            Ok(PushOutcome::Rejected) => false,
            Ok(_) => true,
            Err(fill) => {
                push_made(p, shard, fill);
                true
            }
        }
    } else {
        push_made(p, shard, fill);
        true
    }
}

/// Near the memory budget: the event is made first, then pushed, which
/// checks its exact size against the budget.
#[cold]
fn push_made(p: &Pipeline, shard: usize, fill: impl FnOnce(&mut RawEvent)) {
    let mut ev = RawEvent::default();
    fill(&mut ev);
    p.push(shard, ev);
}

lean_nif!("rt_function_entry", 3, dirty_if long_encoding, |env, a| rt_function_entry(
    env, a[0], a[1], a[2]
));
/// Returns the call id, or `nil` when nothing was captured.
fn rt_function_entry<'a>(
    env: Env<'a>,
    module: Term<'a>,
    function: Term<'a>,
    args: Term<'a>,
) -> NifResult<Term<'a>> {
    if !term::is_atom(module) {
        return Err(arg_error(format!(
            "module must be an atom, got: {module:?}"
        )));
    }
    if !term::is_atom(function) {
        return Err(arg_error(format!(
            "function must be an atom, got: {function:?}"
        )));
    }
    if !term::is_list(args) {
        return Err(arg_error(format!("args must be a list, got: {args:?}")));
    }
    let id = with_default(|p, cpu| {
        let pid = self_raw(env);
        let m = word(module.as_c_arg());
        if !p.admit(EventType::FunctionEntry, pid, m) {
            return 0;
        }
        let s = stamp(p, cpu);
        let f = word(function.as_c_arg());
        let b = budget(p);
        let frame = |arity| Frame {
            call_id: s.id,
            module: m,
            function: f,
            arity,
        };
        // the arguments are encoded into the ring slot itself
        let fill = |ev: &mut RawEvent| {
            let arity = term::encode_list_len_into(env, args, &b, &mut ev.data);
            let parent = p.contexts.enter(pid, frame(arity), s.mono);
            set_fields(ev, &s, EventType::FunctionEntry, pid, (m, f, arity), parent);
        };
        if !place(p, s.shard, &b, 0, fill) {
            // not stored, but the call is open all the same: its children
            // and its exit still name it
            p.contexts.enter(pid, frame(term::arity(args)), s.mono);
        }
        s.id
    });
    Ok(match id {
        Some(id) if id != 0 => id.encode(env),
        _ => crate::atoms::nil().encode(env),
    })
}

lean_nif!("rt_function_exit", 2, dirty_if long_encoding, |env, a| Ok(rt_function_exit(
    env,
    a[0].decode()?,
    a[1]
)));
fn rt_function_exit<'a>(env: Env<'a>, call_id: u64, result: Term<'a>) -> Atom {
    with_default(|p, cpu| {
        let pid = self_raw(env);
        let now = monotonic_ns();
        let frame = p.contexts.exit(pid, call_id, now);
        let paired = frame.is_some();
        let frame = frame.unwrap_or_default();
        if !p.admit_as(EventType::FunctionExit, pid, frame.module, paired) {
            return;
        }
        let s = stamp_at(p, cpu, now);
        let b = budget(p);
        // the result is encoded into the ring slot itself
        let fill = |ev: &mut RawEvent| {
            term::encode_into(env, result, &b, &mut ev.data);
            let what = (frame.module, frame.function, frame.arity);
            let parent = Some((call_id, LinkKind::Completes));
            set_fields(ev, &s, EventType::FunctionExit, pid, what, parent);
        };
        place(p, s.shard, &b, 0, fill);
    });
    crate::atoms::ok()
}

/// The common shape of the other captures: `context` gives the capture-time
/// cause (and may update the process context), `encode` writes the payload
/// (into the ring slot).
fn capture(
    kind: EventType,
    pid: u64,
    peer: RawPid,
    encode: impl FnOnce(&Budget, &mut Payload),
    context: impl FnOnce(&Pipeline, u64, i64) -> Option<(u64, LinkKind)>,
) -> Atom {
    capture_as(Source::Runtime, None, kind, pid, peer, encode, context)
}

/// `capture` for another source (`Causeway.watch/2`'s hooks), with the
/// term budget's byte limit replaced when `max_bytes` is given.
pub(crate) fn capture_as(
    source: Source,
    max_bytes: Option<usize>,
    kind: EventType,
    pid: u64,
    peer: RawPid,
    encode: impl FnOnce(&Budget, &mut Payload),
    context: impl FnOnce(&Pipeline, u64, i64) -> Option<(u64, LinkKind)>,
) -> Atom {
    with_default(|p, cpu| {
        if !p.admit(kind, pid, 0) {
            return;
        }
        let s = stamp(p, cpu);
        let parent = context(p, s.id, s.mono);
        let mut b = budget(p);
        if let Some(m) = max_bytes {
            b.max_bytes = m;
        }
        let peer_bytes = match &peer {
            RawPid::External(bytes) => bytes.capacity() as u64,
            _ => 0,
        };
        let fill = |ev: &mut RawEvent| {
            encode(&b, &mut ev.data);
            set_fields(ev, &s, kind, pid, (0, 0, 0), parent);
            ev.source = source;
            ev.peer = peer;
        };
        place(p, s.shard, &b, peer_bytes, fill);
    });
    crate::atoms::ok()
}

lean_nif!("rt_message_send", 2, dirty_if long_encoding, |env, a| rt_message_send(
    env, a[0], a[1]
));
fn rt_message_send<'a>(env: Env<'a>, to: Term<'a>, message: Term<'a>) -> NifResult<Atom> {
    let peer = raw_pid(to, "the receiver")?;
    let me = self_raw(env);
    Ok(capture(
        EventType::MessageSend,
        me,
        peer,
        |b, out| term::encode_into(env, message, b, out),
        |p, _, _| p.contexts.current_call(me).map(|c| (c, LinkKind::CausedBy)),
    ))
}

lean_nif!("rt_message_receive", 2, dirty_if long_encoding, |env, a| rt_message_receive(
    env, a[0], a[1]
));
fn rt_message_receive<'a>(env: Env<'a>, from: Term<'a>, message: Term<'a>) -> NifResult<Atom> {
    receive_as(env, Source::Runtime, None, from, message)
}

/// A `message_receive` from `from` (a pid or `nil`), for `source`, with the
/// byte budget replaced when `max_bytes` is given.
pub(crate) fn receive_as<'a>(
    env: Env<'a>,
    source: Source,
    max_bytes: Option<usize>,
    from: Term<'a>,
    message: Term<'a>,
) -> NifResult<Atom> {
    let peer = if from
        .decode::<Atom>()
        .is_ok_and(|a| a == crate::atoms::nil())
    {
        RawPid::None
    } else {
        raw_pid(from, "the sender")?
    };
    let me = self_raw(env);
    Ok(capture_as(
        source,
        max_bytes,
        EventType::MessageReceive,
        me,
        peer,
        |b, out| term::encode_into(env, message, b, out),
        |p, id, mono| {
            p.contexts.receive(me, id, mono);
            None
        },
    ))
}

lean_nif!("rt_state_change", 2, dirty_if long_encoding, |env, a| Ok(rt_state_change(
    env, a[0], a[1]
)));
fn rt_state_change<'a>(env: Env<'a>, old: Term<'a>, new: Term<'a>) -> Atom {
    let me = self_raw(env);
    capture(
        EventType::StateChange,
        me,
        RawPid::None,
        |b, out| term::encode_tuple_into(env, &[old, new], b, out),
        |p, _, _| p.contexts.cause(me),
    )
}

lean_nif!("rt_process_spawn", 1, dirty_if long_encoding, |env, a| rt_process_spawn(env, a[0]));
fn rt_process_spawn<'a>(env: Env<'a>, child: Term<'a>) -> NifResult<Atom> {
    let peer = raw_pid(child, "the child")?;
    let me = self_raw(env);
    Ok(capture(
        EventType::ProcessSpawn,
        me,
        peer,
        |b, out| term::encode_into(env, child, b, out),
        |p, _, _| p.contexts.current_call(me).map(|c| (c, LinkKind::CausedBy)),
    ))
}

lean_nif!("rt_process_exit", 2, dirty_if long_encoding, |env, a| rt_process_exit(
    env, a[0], a[1]
));
fn rt_process_exit<'a>(env: Env<'a>, pid: Term<'a>, reason: Term<'a>) -> NifResult<Atom> {
    let who = local_pid(pid, "the exiting process")?;
    Ok(capture(
        EventType::ProcessExit,
        who,
        RawPid::None,
        |b, out| term::encode_into(env, reason, b, out),
        |p, _, _| {
            p.contexts.forget(who);
            None
        },
    ))
}

lean_nif!("rt_error", 3, dirty_if long_encoding, |env, a| Ok(rt_error(env, a[0], a[1], a[2])));
fn rt_error<'a>(env: Env<'a>, kind: Term<'a>, reason: Term<'a>, stacktrace: Term<'a>) -> Atom {
    let me = self_raw(env);
    capture(
        EventType::Error,
        me,
        RawPid::None,
        |b, out| term::encode_tuple_into(env, &[kind, reason, stacktrace], b, out),
        |p, _, _| p.contexts.current_call(me).map(|c| (c, LinkKind::CausedBy)),
    )
}

lean_nif!("rt_message_handled", 0, |env, _a| Ok(rt_message_handled(
    env
)));
/// The caller is done handling the message it last received.
pub(crate) fn rt_message_handled(env: Env) -> Atom {
    let me = self_raw(env);
    with_default(|p, _| p.contexts.handled(me, monotonic_ns()));
    crate::atoms::ok()
}

/// Capture on/off: `:global`, `{:module, m}` or `{:pid, p}`.
#[rustler::nif]
fn rt_set_capture<'a>(h: ResourceArc<Handle>, scope: Term<'a>, on: bool) -> NifResult<Atom> {
    let p = h.pipeline()?;
    if scope
        .decode::<Atom>()
        .is_ok_and(|a| a == crate::atoms::global())
    {
        p.set_enabled(on);
        return Ok(crate::atoms::ok());
    }
    if let Ok((tag, v)) = scope.decode::<(Atom, Term)>() {
        if tag == crate::atoms::module() && v.is_atom() {
            p.set_module_enabled(word(v.as_c_arg()), on);
            return Ok(crate::atoms::ok());
        }
        if tag == crate::atoms::pid() {
            p.set_pid_enabled(local_pid(v, "the pid")?, on);
            return Ok(crate::atoms::ok());
        }
    }
    Err(arg_error(format!(
        "capture scope must be :global, {{:module, atom}} or {{:pid, local_pid}}, got: {scope:?}"
    )))
}

lean_nif!("bench_noop", 1, |env, a| Ok(bench_noop(a[0])));
/// A NIF that does nothing: the floor `mix bench` measures capture against.
fn bench_noop(_x: Term) -> Atom {
    crate::atoms::ok()
}
