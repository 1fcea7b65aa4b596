//! `Causeway.Watch`'s capture: the one NIF its `:sys` debug function calls,
//! inside the watched process, to record what OTP's hooks report — a
//! message handled, a reply sent, a state after it — with `source: :watch`
//! and the watch's own byte budget for terms.

use crate::error::arg_error;
use crate::runtime::{capture_as, raw_pid, receive_as, rt_message_handled, self_raw};
use crate::term;
use causeway_core::config::MAX_TERM_BYTES_LIMIT;
use causeway_core::event::{EventType, LinkKind, RawPid, Source};
use rustler::{Atom, Env, NifResult, Term};

lean_nif!("rt_watch", 4, dirty_if crate::runtime::long_encoding, |env, a| {
    rt_watch(env, a[0].decode()?, a[1], a[2], a[3].decode()?)
});
/// `kind` is `:receive` (`a` the sender or `nil`, `b` the message), `:send`
/// (`a` the receiver, `b` the message: a reply), `:state` (`a` the old
/// state, `b` the new) or `:handled` (the message's handling is over).
/// `max_bytes` (64..=64 MiB) is the byte budget of the terms.
fn rt_watch<'a>(
    env: Env<'a>,
    kind: Atom,
    a: Term<'a>,
    b: Term<'a>,
    max_bytes: u64,
) -> NifResult<Atom> {
    use crate::atoms;
    let max = usize::try_from(max_bytes)
        .ok()
        .filter(|m| (64..=MAX_TERM_BYTES_LIMIT).contains(m))
        .ok_or_else(|| {
            arg_error(format!(
                "max_state_bytes must be in 64..={MAX_TERM_BYTES_LIMIT}, got {max_bytes}"
            ))
        })?;
    let me = self_raw(env);
    if kind == atoms::receive() {
        receive_as(env, Source::Watch, Some(max), a, b)
    } else if kind == atoms::send() {
        let peer = raw_pid(a, "the receiver")?;
        Ok(capture_as(
            Source::Watch,
            Some(max),
            EventType::MessageSend,
            me,
            peer,
            |bud, out| term::encode_into(env, b, bud, out),
            // a reply: caused by the message being handled
            |p, _, _| p.contexts.cause(me).map(|(c, _)| (c, LinkKind::CausedBy)),
        ))
    } else if kind == atoms::state() {
        Ok(capture_as(
            Source::Watch,
            Some(max),
            EventType::StateChange,
            me,
            RawPid::None,
            |bud, out| term::encode_tuple_into(env, &[a, b], bud, out),
            |p, _, _| p.contexts.cause(me),
        ))
    } else if kind == atoms::handled() {
        Ok(rt_message_handled(env))
    } else {
        Err(arg_error(format!(
            "rt_watch kind must be :receive, :send, :state or :handled, got {kind:?}"
        )))
    }
}
