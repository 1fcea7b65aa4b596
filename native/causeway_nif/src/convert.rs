//! Stored events → terms. Nothing read from disk creates an atom that does not
//! exist already (unless the store was opened with `atoms: :create`, within
//! its budget): names that are not atoms in this VM come back as binaries, and
//! a stored term whose atoms are unknown here is decoded by our own reader with
//! those atoms as binaries.

use crate::atoms;
use causeway_core::etf;
use causeway_core::event::{LinkKind, PidRec, StoredEvent};
use rustler::sys;
use rustler::{Atom, Encoder, Env, Term};

/// An atom if it exists in this VM, else the name as a binary.
/// With `atoms: :create` (see `atom_budget`), a new atom within the budget.
pub fn name<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    match Atom::existing_from_utf8_bytes(env, s.as_bytes()) {
        Ok(a) => a.encode(env),
        Err(_) if s.chars().count() <= 255 && crate::atom_budget::may_create() => {
            Atom::from_str(env, s)
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| s.encode(env))
        }
        Err(_) => s.encode(env),
    }
}

/// A fixed atom we know exists (our own vocabulary).
pub fn atom<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    Atom::from_str(env, s)
        .map(|a| a.encode(env))
        .unwrap_or_else(|_| s.encode(env))
}

/// `binary_to_term(bytes, [:safe])`, or our reader when atoms are unknown here.
/// `binary_to_term(bytes, [:safe])`: the term and the bytes it used, or
/// `None` (unknown atoms, bad data).
fn safe_binary_to_term<'a>(env: Env<'a>, bytes: &[u8]) -> Option<(Term<'a>, usize)> {
    let mut t = sys::ErlNifTerm::default();
    let n = unsafe {
        sys::enif_binary_to_term(
            env.as_c_arg(),
            bytes.as_ptr(),
            bytes.len(),
            &mut t,
            sys::ERL_NIF_BIN2TERM_SAFE,
        )
    };
    (n > 0).then(|| (unsafe { Term::new(env, t) }, n))
}

/// The stored term, or `Err({:undecodable, bytes})` when even the
/// fallback reader cannot rebuild it.
pub fn decode_checked<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Term<'a>> {
    if let Some((t, _)) = safe_binary_to_term(env, bytes) {
        return Ok(t);
    }
    let mut pos = usize::from(bytes.first() == Some(&etf::VERSION));
    match (Reader {
        env,
        bytes,
        depth: 0,
    })
    .term(&mut pos)
    {
        Some(t) => Ok(t),
        None => Err((
            atoms::undecodable(),
            rustler::Binary::from_owned(owned(bytes), env),
        )
            .encode(env)),
    }
}

fn owned(b: &[u8]) -> rustler::OwnedBinary {
    rustler::OwnedBinary::from_slice(b)
}

struct Reader<'a, 'b> {
    env: Env<'a>,
    bytes: &'b [u8],
    depth: usize,
}

impl<'a> Reader<'a, '_> {
    fn take(&self, pos: &mut usize, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(*pos..pos.checked_add(n)?)?;
        *pos += n;
        Some(s)
    }
    fn u8(&self, pos: &mut usize) -> Option<u8> {
        self.take(pos, 1).map(|b| b[0])
    }
    fn u16(&self, pos: &mut usize) -> Option<usize> {
        self.take(pos, 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&self, pos: &mut usize) -> Option<usize> {
        self.take(pos, 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// Skips an atom encoding (any of the four atom tags).
    fn atom_len(&self, pos: &mut usize) -> Option<()> {
        let n = match self.u8(pos)? {
            etf::ATOM_EXT | etf::ATOM_UTF8_EXT => self.u16(pos)?,
            etf::SMALL_ATOM_EXT | etf::SMALL_ATOM_UTF8_EXT => self.u8(pos)? as usize,
            _ => return None,
        };
        self.take(pos, n).map(|_| ())
    }

    fn term(&mut self, pos: &mut usize) -> Option<Term<'a>> {
        self.depth += 1;
        // captures are at most 1000 deep (config::MAX_DEPTH_LIMIT); this
        // recursion runs on a dirty scheduler's 320 KB stack
        if self.depth > causeway_core::config::MAX_DEPTH_LIMIT + 8 {
            return None;
        }
        let env = self.env;
        let start = *pos;
        let tag = self.u8(pos)?;
        let t = match tag {
            etf::SMALL_INTEGER_EXT => (self.u8(pos)? as i64).encode(env),
            etf::INTEGER_EXT => {
                let b = self.take(pos, 4)?;
                (i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64).encode(env)
            }
            etf::NEW_FLOAT_EXT => {
                let b = self.take(pos, 8)?;
                f64::from_bits(u64::from_be_bytes(b.try_into().ok()?)).encode(env)
            }
            etf::SMALL_ATOM_UTF8_EXT | etf::SMALL_ATOM_EXT | etf::ATOM_UTF8_EXT | etf::ATOM_EXT => {
                let len = if tag == etf::SMALL_ATOM_UTF8_EXT || tag == etf::SMALL_ATOM_EXT {
                    self.u8(pos)? as usize
                } else {
                    self.u16(pos)?
                };
                let raw = self.take(pos, len)?;
                let s = if tag == etf::ATOM_EXT || tag == etf::SMALL_ATOM_EXT {
                    etf::latin1_to_string(raw)
                } else {
                    String::from_utf8_lossy(raw).into_owned()
                };
                name(env, &s)
            }
            etf::SMALL_TUPLE_EXT | etf::LARGE_TUPLE_EXT => {
                let n = if tag == etf::SMALL_TUPLE_EXT {
                    self.u8(pos)? as usize
                } else {
                    self.u32(pos)?
                };
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.term(pos)?);
                }
                rustler::types::tuple::make_tuple(env, &items)
            }
            etf::NIL_EXT => Term::list_new_empty(env),
            etf::STRING_EXT => {
                let n = self.u16(pos)?;
                let b = self.take(pos, n)?;
                let items: Vec<Term> = b.iter().map(|&c| (c as i64).encode(env)).collect();
                items.encode(env)
            }
            etf::LIST_EXT => {
                let n = self.u32(pos)?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.term(pos)?);
                }
                let mut list = self.term(pos)?; // tail
                for it in items.into_iter().rev() {
                    list = list.list_prepend(it);
                }
                list
            }
            etf::BINARY_EXT => {
                let n = self.u32(pos)?;
                let b = self.take(pos, n)?;
                rustler::Binary::from_owned(owned(b), env).encode(env)
            }
            etf::MAP_EXT => {
                let n = self.u32(pos)?;
                let mut map = Term::map_new(env);
                for _ in 0..n {
                    let k = self.term(pos)?;
                    let v = self.term(pos)?;
                    map = map.map_put(k, v).ok()?;
                }
                map
            }
            etf::SMALL_BIG_EXT => {
                let n = self.u8(pos)? as usize;
                let sign = self.u8(pos)?;
                let digits = self.take(pos, n)?;
                if n <= 8 {
                    let mut v: u64 = 0;
                    for (i, d) in digits.iter().enumerate() {
                        v |= (*d as u64) << (8 * i);
                    }
                    if sign == 0 {
                        v.encode(env)
                    } else if v <= i64::MAX as u64 + 1 {
                        ((v as i128).wrapping_neg() as i64).encode(env)
                    } else {
                        return None;
                    }
                } else {
                    return None;
                }
            }
            etf::NEW_PID_EXT | etf::PID_EXT => {
                // a pid of a node this VM does not know (another node's store)
                // is shown as pid_term shows the event's own pid
                let mut buf = vec![etf::VERSION];
                buf.extend_from_slice(self.bytes.get(start..)?);
                match safe_binary_to_term(env, &buf) {
                    Some((term, used)) => {
                        *pos = start + used - 1;
                        term
                    }
                    None => {
                        let p = etf::parse_pid(&buf).ok()?;
                        // node atom, then id, serial and creation (4 bytes, 1 in PID_EXT)
                        let mut at = start + 1;
                        self.atom_len(&mut at)?;
                        let rest = if tag == etf::NEW_PID_EXT { 12 } else { 9 };
                        self.take(&mut at, rest)?;
                        *pos = at;
                        pid_term(env, &p)
                    }
                }
            }
            _ => {
                // References, ports, funs...: they name no new atoms only if
                // their node is known; hand the rest of the bytes to the VM safely.
                let mut buf = vec![etf::VERSION];
                buf.extend_from_slice(self.bytes.get(start..)?);
                let (term, used) = safe_binary_to_term(env, &buf)?;
                *pos = start + used - 1;
                term
            }
        };
        self.depth -= 1;
        Some(t)
    }
}

/// A stored pid as a pid term when its node is known here, else a string.
pub fn pid_term<'a>(env: Env<'a>, p: &PidRec) -> Term<'a> {
    let bytes = etf::encode_pid(p);
    if let Some((t, _)) = safe_binary_to_term(env, &bytes) {
        t
    } else {
        format!("<0.{}.{}>@{}", p.id, p.serial, p.node).encode(env)
    }
}

fn nil_if_zero<'a>(env: Env<'a>, v: u64) -> Term<'a> {
    if v == 0 {
        atoms::nil().encode(env)
    } else {
        v.encode(env)
    }
}

pub fn links_term<'a>(env: Env<'a>, links: &[(LinkKind, u64)]) -> Term<'a> {
    let items: Vec<Term> = links
        .iter()
        .map(|(k, id)| (atom(env, k.name()), *id).encode(env))
        .collect();
    items.encode(env)
}

mod struct_atoms {
    rustler::atoms! {
        __struct__,
        elixir_event = "Elixir.Causeway.Event",
        elixir_datetime = "Elixir.DateTime",
        elixir_iso = "Elixir.Calendar.ISO",
        id, type_ = "type", timestamp, wall_time, node, pid, call_id, parent_id,
        module, function, arity, data, source, links, file, line,
        calendar, year, month, day, hour, minute, second, microsecond,
        time_zone, zone_abbr, utc_offset, std_offset,
        to, from, message, old, new, child, reason, kind, stacktrace,
        function_entry, function_exit, message_send, message_receive, state_change,
        process_spawn, process_exit, error,
        runtime, tracer, watch,
        completes, completed_by, called_from, calls, receives, received_by,
        caused_by, causes, exit_of, exited_by,
    }
}

use std::collections::HashMap;

type FastMap<K, V> = HashMap<K, V, causeway_core::fasthash::FastBuild>;

/// Terms made once per query for the names and pids that repeat across events.
#[derive(Default)]
pub struct TermCache<'a> {
    names: FastMap<String, Term<'a>>,
    /// (number, serial, creation) → (node, pid) for each node seen.
    pids: FastMap<(u32, u32, u32), Vec<(causeway_core::event::Name, Term<'a>)>>,
    /// `"Etc/UTC"` and `"UTC"` for `%DateTime{}`.
    utc: Option<(Term<'a>, Term<'a>)>,
    /// The last `%DateTime{}` built and the second it stands for: events of
    /// the same second are that map with another `microsecond`.
    last_second: Option<(i64, Term<'a>)>,
}

impl<'a> TermCache<'a> {
    fn name(&mut self, env: Env<'a>, s: &str) -> Term<'a> {
        if let Some(t) = self.names.get(s) {
            return *t;
        }
        let t = name(env, s);
        self.names.insert(s.to_string(), t);
        t
    }

    fn pid(&mut self, env: Env<'a>, p: &PidRec) -> Term<'a> {
        let same_node = self.pids.entry((p.id, p.serial, p.creation)).or_default();
        if let Some((_, t)) = same_node.iter().find(|(node, _)| *node == p.node) {
            return *t;
        }
        let t = pid_term(env, p);
        same_node.push((p.node.clone(), t));
        t
    }

    fn utc(&mut self, env: Env<'a>) -> (Term<'a>, Term<'a>) {
        *self
            .utc
            .get_or_insert_with(|| ("Etc/UTC".encode(env), "UTC".encode(env)))
    }
}

fn type_atom(t: causeway_core::event::EventType) -> Atom {
    use causeway_core::event::EventType::*;
    use struct_atoms as a;
    match t {
        FunctionEntry => a::function_entry(),
        FunctionExit => a::function_exit(),
        MessageSend => a::message_send(),
        MessageReceive => a::message_receive(),
        StateChange => a::state_change(),
        ProcessSpawn => a::process_spawn(),
        ProcessExit => a::process_exit(),
        Error => a::error(),
    }
}

fn link_atom(k: LinkKind) -> Atom {
    use struct_atoms as a;
    match k {
        LinkKind::Completes => a::completes(),
        LinkKind::CompletedBy => a::completed_by(),
        LinkKind::CalledFrom => a::called_from(),
        LinkKind::Calls => a::calls(),
        LinkKind::Receives => a::receives(),
        LinkKind::ReceivedBy => a::received_by(),
        LinkKind::CausedBy => a::caused_by(),
        LinkKind::Causes => a::causes(),
        LinkKind::ExitOf => a::exit_of(),
        LinkKind::ExitedBy => a::exited_by(),
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Map keys in term order — atoms compare by name — so that
/// `enif_make_map_from_arrays`, whose check is an insertion sort, does one
/// pass instead of sorting. Gives the atoms and, for the test, their names.
macro_rules! sorted_keys {
    ($name:ident, $names:ident: $($k:ident),+) => {
        fn $name() -> [Atom; [$(stringify!($k)),+].len()] {
            [$(struct_atoms::$k()),+]
        }
        const $names: &[&str] = &[$(stringify!($k)),+];
        const _: () = assert!(names_sorted($names), "map keys out of term order");
    };
}

/// Whether `names` are in ascending byte order (checked at compile time;
/// `type_` stands for `type`, which sorts the same against its neighbours).
const fn names_sorted(names: &[&str]) -> bool {
    let mut n = 1;
    while n < names.len() {
        let (a, b) = (names[n - 1].as_bytes(), names[n].as_bytes());
        let mut i = 0;
        while i < a.len() && i < b.len() && a[i] == b[i] {
            i += 1;
        }
        let less = if i < a.len() && i < b.len() {
            a[i] < b[i]
        } else {
            a.len() < b.len()
        };
        if !less {
            return false;
        }
        n += 1;
    }
    true
}

sorted_keys!(event_keys, EVENT_KEY_NAMES:
    __struct__, arity, call_id, data, file, function, id, line, links, module, node,
    parent_id, pid, source, timestamp, type_, wall_time);

sorted_keys!(datetime_keys, DATETIME_KEY_NAMES:
    __struct__, calendar, day, hour, microsecond, minute, month, second, std_offset,
    time_zone, utc_offset, year, zone_abbr);

fn map_of<'a, const N: usize>(env: Env<'a>, keys: [Atom; N], values: [Term<'a>; N]) -> Term<'a> {
    let ks = keys.map(|k| k.encode(env));
    Term::map_from_term_arrays(env, &ks, &values).unwrap_or_else(|_| atoms::nil().encode(env))
}

/// A UTC `%DateTime{}` (microsecond precision) for wall-clock nanoseconds.
pub fn datetime<'a>(env: Env<'a>, wall_ns: i64, cache: &mut TermCache<'a>) -> Term<'a> {
    use struct_atoms as a;
    let secs = wall_ns.div_euclid(1_000_000_000);
    let us = wall_ns.rem_euclid(1_000_000_000) / 1_000;
    // a map put of a key it has shares the map's keys tuple: 19 words a
    // DateTime instead of 40 (the bulk of a pid query's heap is these)
    if let Some((s, dt)) = cache.last_second {
        if s == secs {
            if let Ok(t) = dt.map_put(a::microsecond().encode(env), (us, 6).encode(env)) {
                return t;
            }
        }
    }
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (zone, abbr) = cache.utc(env);
    let zero = 0.encode(env);
    let dt = map_of(
        env,
        datetime_keys(),
        [
            a::elixir_datetime().encode(env),
            a::elixir_iso().encode(env),
            d.encode(env),
            (sod / 3600).encode(env),
            (us, 6).encode(env),
            (sod % 3600 / 60).encode(env),
            m.encode(env),
            (sod % 60).encode(env),
            zero,
            zone,
            zero,
            y.encode(env),
            abbr,
        ],
    );
    cache.last_second = Some((secs, dt));
    dt
}

/// The event's `data`, shaped by type (see `Causeway.Event`).
fn shaped_data<'a>(env: Env<'a>, e: &StoredEvent, peer: Term<'a>) -> Term<'a> {
    use causeway_core::event::EventType::*;
    use struct_atoms as a;
    let (raw, whole) = match decode_checked(env, &e.data) {
        Ok(t) => (t, true),
        Err(marker) => (marker, false),
    };
    // an {:undecodable, bytes} marker is never taken for {old, new}
    let elems = |n: usize| {
        rustler::types::tuple::get_tuple(raw)
            .ok()
            .filter(|t| whole && t.len() == n)
    };
    match e.kind {
        MessageSend => map_of(env, [a::message(), a::to()], [raw, peer]),
        MessageReceive => map_of(env, [a::from(), a::message()], [peer, raw]),
        StateChange => match elems(2) {
            Some(t) => map_of(env, [a::new(), a::old()], [t[1], t[0]]),
            None => raw,
        },
        ProcessSpawn => map_of(env, [a::child()], [peer]),
        ProcessExit => map_of(env, [a::reason()], [raw]),
        Error => match elems(3) {
            Some(t) => map_of(
                env,
                [a::kind(), a::reason(), a::stacktrace()],
                [t[0], t[1], t[2]],
            ),
            None => raw,
        },
        FunctionEntry | FunctionExit => raw,
    }
}

/// A `%Causeway.Event{}` built here (no Elixir-side conversion per event).
pub fn event_struct<'a>(
    env: Env<'a>,
    e: &StoredEvent,
    links: Option<&[(LinkKind, u64)]>,
    cache: &mut TermCache<'a>,
) -> Term<'a> {
    use struct_atoms as a;
    let nil = atoms::nil().encode(env);
    let opt_name = |cache: &mut TermCache<'a>, s: &Option<causeway_core::event::Name>| match s {
        Some(s) => cache.name(env, s),
        None => nil,
    };
    let peer = match &e.peer {
        Some(p) => cache.pid(env, p),
        // a send to a registered name: `name` or `{name, node}`
        None if e.kind == causeway_core::event::EventType::MessageSend => {
            match (&e.function, &e.module) {
                (Some(name), Some(node)) => {
                    (cache.name(env, name), cache.name(env, node)).encode(env)
                }
                (Some(name), None) => cache.name(env, name),
                _ => nil,
            }
        }
        None => nil,
    };
    // a send's module and function name its registered receiver (above)
    let (module, function) = if e.has_mfa() {
        (opt_name(cache, &e.module), opt_name(cache, &e.function))
    } else {
        (nil, nil)
    };
    let links = match links {
        Some(l) => l
            .iter()
            .map(|(k, id)| (link_atom(*k), *id).encode(env))
            .collect::<Vec<_>>()
            .encode(env),
        None => nil,
    };
    let arity = if e.has_mfa() {
        e.arity.encode(env)
    } else {
        nil
    };
    let source = match e.source {
        causeway_core::event::Source::Runtime => a::runtime(),
        causeway_core::event::Source::Tracer => a::tracer(),
        causeway_core::event::Source::Watch => a::watch(),
    };
    let data = shaped_data(env, e, peer);
    let node = cache.name(env, &e.pid.node);
    let pid = cache.pid(env, &e.pid);
    let wall_time = datetime(env, e.wall_ns, cache);
    map_of(
        env,
        event_keys(),
        [
            a::elixir_event().encode(env),
            arity,
            nil_if_zero(env, e.call_id),
            data,
            // file and line: filled in by Causeway.Event.from_native for
            // instrumented code (known at compile time, not stored per event)
            atoms::nil().encode(env),
            function,
            e.id.encode(env),
            atoms::nil().encode(env),
            links,
            module,
            node,
            nil_if_zero(env, e.parent_id),
            pid,
            source.encode(env),
            e.mono_ns.encode(env),
            type_atom(e.kind).encode(env),
            wall_time,
        ],
    )
}
