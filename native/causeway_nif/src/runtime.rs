//! `Causeway.Runtime`: one NIF call per event, on the caller's scheduler, no
//! process hop. Each checks the capture flags, stamps an id, updates the
//! process context, encodes its terms under the budget and pushes to the
//! calling scheduler's ring.

use crate::beam::{monotonic_ns, pid_word, term_bytes, word};
use crate::error::arg_error;
use crate::handle::Handle;
use crate::term::{self, Budget};
use causeway_core::context::Frame;
use causeway_core::event::{EventType, LinkKind, RawEvent, RawPid, Source};
use causeway_core::pipeline::Pipeline;
use rustler::{Atom, Env, NifResult, ResourceArc, Term, TermType};
use std::sync::atomic::Ordering;

fn self_raw(env: Env) -> u64 {
    pid_word(env, &env.pid())
}

fn budget<'h>(p: &Pipeline, h: &'h Handle) -> Budget<'h> {
    Budget {
        max_bytes: p.tun.max_term_bytes.load(Ordering::Relaxed),
        max_depth: p.tun.max_depth.load(Ordering::Relaxed),
        redact: &h.redact,
    }
}

/// A pid argument: local pids by their word, remote ones by their bytes.
fn raw_pid(t: Term, what: &str) -> NifResult<RawPid> {
    if t.get_type() != TermType::Pid {
        return Err(arg_error(format!("{what} must be a pid, got: {t:?}")));
    }
    if let Ok(p) = t.decode::<rustler::LocalPid>() {
        return Ok(RawPid::Local(pid_word(t.get_env(), &p)));
    }
    match term_bytes(t.get_env().as_c_arg(), t.as_c_arg()) {
        Some(b) => Ok(RawPid::External(b)),
        None => Err(arg_error(format!("{what} could not be encoded"))),
    }
}

fn local_pid(t: Term, what: &str) -> NifResult<u64> {
    match t.decode::<rustler::LocalPid>() {
        Ok(p) => Ok(pid_word(t.get_env(), &p)),
        Err(_) => Err(arg_error(format!("{what} must be a local pid, got: {t:?}"))),
    }
}

struct Ev {
    kind: EventType,
    pid: u64,
    module: u64,
    function: u64,
    arity: u32,
    call_id: u64,
    parent: Option<(u64, LinkKind)>,
    peer: RawPid,
    data: Vec<u8>,
}

fn push(p: &Pipeline, shard: usize, (id, mono, wall): (u64, i64, i64), e: Ev) {
    let (parent_id, parent_link) = match e.parent {
        // an exit's parent is its own entry: the correlator links it when both are seen
        Some((id, _)) if e.kind == EventType::FunctionExit => (id, None),
        Some((id, k)) => (id, Some(k)),
        None => (0, None),
    };
    p.push(
        shard,
        RawEvent {
            id,
            kind: Some(e.kind),
            mono_ns: mono,
            wall_ns: wall,
            pid: e.pid,
            module: e.module,
            function: e.function,
            arity: e.arity,
            call_id: e.call_id,
            parent_id,
            parent_link,
            peer: e.peer,
            data: e.data,
            source: Source::Runtime,
        },
    );
}

#[rustler::nif]
fn rt_function_entry<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    module: Atom,
    function: Atom,
    args: Term<'a>,
) -> NifResult<u64> {
    let Some(p) = &h.pipeline else { return Ok(0) };
    if !args.is_list() && !args.is_empty_list() {
        return Err(arg_error(format!("args must be a list, got: {args:?}")));
    }
    let pid = self_raw(env);
    let m = word(module.as_c_arg());
    if !p.admit(EventType::FunctionEntry, pid, m) {
        return Ok(0);
    }
    let mono = monotonic_ns();
    let (shard, id, wall) = p.stamp(mono);
    let (data, arity) = term::encode_list_len(env, args, &budget(p, &h));
    let f = word(function.as_c_arg());
    let parent = p.contexts.enter(
        pid,
        Frame {
            call_id: id,
            module: m,
            function: f,
            arity,
        },
        mono,
    );
    push(
        p,
        shard,
        (id, mono, wall),
        Ev {
            kind: EventType::FunctionEntry,
            pid,
            module: m,
            function: f,
            arity,
            call_id: id,
            parent,
            peer: RawPid::None,
            data,
        },
    );
    Ok(id)
}

#[rustler::nif]
fn rt_function_exit<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    call_id: u64,
    result: Term<'a>,
) -> NifResult<Atom> {
    let Some(p) = &h.pipeline else {
        return Ok(crate::atoms::ok());
    };
    if call_id == 0 {
        return Ok(crate::atoms::ok()); // its entry was not captured
    }
    let pid = self_raw(env);
    let mono = monotonic_ns();
    let frame = p.contexts.exit(pid, call_id, mono).unwrap_or_default();
    if !p.admit(EventType::FunctionExit, pid, frame.module) {
        return Ok(crate::atoms::ok());
    }
    let (shard, id, wall) = p.stamp(mono);
    let data = term::encode(env, result, &budget(p, &h));
    push(
        p,
        shard,
        (id, mono, wall),
        Ev {
            kind: EventType::FunctionExit,
            pid,
            module: frame.module,
            function: frame.function,
            arity: frame.arity,
            call_id,
            parent: Some((call_id, LinkKind::Completes)),
            peer: RawPid::None,
            data,
        },
    );
    Ok(crate::atoms::ok())
}

fn simple<'a>(
    env: Env<'a>,
    h: &Handle,
    kind: EventType,
    pid: u64,
    peer: RawPid,
    encode: impl FnOnce(&Budget) -> Vec<u8>,
    context: impl FnOnce(&Pipeline, u64, i64) -> Option<(u64, LinkKind)>,
) -> NifResult<Atom> {
    let _ = env;
    let Some(p) = &h.pipeline else {
        return Ok(crate::atoms::ok());
    };
    if !p.admit(kind, pid, 0) {
        return Ok(crate::atoms::ok());
    }
    let mono = monotonic_ns();
    let (shard, id, wall) = p.stamp(mono);
    let parent = context(p, id, mono);
    let data = encode(&budget(p, h));
    push(
        p,
        shard,
        (id, mono, wall),
        Ev {
            kind,
            pid,
            module: 0,
            function: 0,
            arity: 0,
            call_id: 0,
            parent,
            peer,
            data,
        },
    );
    Ok(crate::atoms::ok())
}

#[rustler::nif]
fn rt_message_send<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    to: Term<'a>,
    message: Term<'a>,
) -> NifResult<Atom> {
    let peer = raw_pid(to, "the receiver")?;
    let me = self_raw(env);
    simple(
        env,
        &h,
        EventType::MessageSend,
        me,
        peer,
        |b| term::encode(env, message, b),
        |p, _, _| p.contexts.current_call(me).map(|c| (c, LinkKind::CausedBy)),
    )
}

#[rustler::nif]
fn rt_message_receive<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    from: Term<'a>,
    message: Term<'a>,
) -> NifResult<Atom> {
    let peer = if from.is_atom()
        && from
            .decode::<Atom>()
            .is_ok_and(|a| a == crate::atoms::nil())
    {
        RawPid::None
    } else {
        raw_pid(from, "the sender")?
    };
    let me = self_raw(env);
    simple(
        env,
        &h,
        EventType::MessageReceive,
        me,
        peer,
        |b| term::encode(env, message, b),
        |p, id, mono| {
            p.contexts.receive(me, id, mono);
            None
        },
    )
}

#[rustler::nif]
fn rt_state_change<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    old: Term<'a>,
    new: Term<'a>,
) -> NifResult<Atom> {
    let me = self_raw(env);
    simple(
        env,
        &h,
        EventType::StateChange,
        me,
        RawPid::None,
        |b| term::encode_tuple(env, &[old, new], b),
        |p, _, _| p.contexts.cause(me),
    )
}

#[rustler::nif]
fn rt_process_spawn<'a>(env: Env<'a>, h: ResourceArc<Handle>, child: Term<'a>) -> NifResult<Atom> {
    let peer = raw_pid(child, "the child")?;
    let me = self_raw(env);
    simple(
        env,
        &h,
        EventType::ProcessSpawn,
        me,
        peer,
        |b| term::encode(env, child, b),
        |p, _, _| p.contexts.current_call(me).map(|c| (c, LinkKind::CausedBy)),
    )
}

#[rustler::nif]
fn rt_process_exit<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    pid: Term<'a>,
    reason: Term<'a>,
) -> NifResult<Atom> {
    let who = local_pid(pid, "the exiting process")?;
    simple(
        env,
        &h,
        EventType::ProcessExit,
        who,
        RawPid::None,
        |b| term::encode(env, reason, b),
        |p, _, _| {
            p.contexts.forget(who);
            None
        },
    )
}

#[rustler::nif]
fn rt_error<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    kind: Term<'a>,
    reason: Term<'a>,
    stacktrace: Term<'a>,
) -> NifResult<Atom> {
    let me = self_raw(env);
    simple(
        env,
        &h,
        EventType::Error,
        me,
        RawPid::None,
        |b| term::encode_tuple(env, &[kind, reason, stacktrace], b),
        |p, _, _| p.contexts.current_call(me).map(|c| (c, LinkKind::CausedBy)),
    )
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
