//! Stored events → terms. Nothing read from disk creates an atom that does not
//! exist already: names that are not atoms in this VM come back as binaries, and
//! a stored term whose atoms are unknown here is decoded by our own reader with
//! those atoms as binaries.

use crate::atoms;
use causeway_core::etf;
use causeway_core::event::{LinkKind, PidRec, StoredEvent};
use rustler::sys;
use rustler::{Atom, Encoder, Env, Term};

/// An atom if it exists in this VM, else the name as a binary.
pub fn name<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    match Atom::existing_from_utf8_bytes(env, s.as_bytes()) {
        Ok(a) => a.encode(env),
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
pub fn decode_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
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
    if n > 0 {
        return unsafe { Term::new(env, t) };
    }
    let mut pos = usize::from(bytes.first() == Some(&etf::VERSION));
    match (Reader {
        env,
        bytes,
        depth: 0,
    })
    .term(&mut pos)
    {
        Some(t) => t,
        None => (
            atoms::undecodable(),
            rustler::Binary::from_owned(owned(bytes), env),
        )
            .encode(env),
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

    fn term(&mut self, pos: &mut usize) -> Option<Term<'a>> {
        self.depth += 1;
        if self.depth > 10_000 {
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
            _ => {
                // Pids, references, funs...: they name no new atoms only if their
                // node is known; hand the rest of the bytes to the VM safely.
                let mut t = sys::ErlNifTerm::default();
                let mut buf = vec![etf::VERSION];
                buf.extend_from_slice(&self.bytes[start..]);
                let used = unsafe {
                    sys::enif_binary_to_term(
                        env.as_c_arg(),
                        buf.as_ptr(),
                        buf.len(),
                        &mut t,
                        sys::ERL_NIF_BIN2TERM_SAFE,
                    )
                };
                if used == 0 {
                    return None;
                }
                *pos = start + used - 1;
                unsafe { Term::new(env, t) }
            }
        };
        self.depth -= 1;
        Some(t)
    }
}

/// A stored pid as a pid term when its node is known here, else a string.
pub fn pid_term<'a>(env: Env<'a>, p: &PidRec) -> Term<'a> {
    let bytes = etf::encode_pid(p);
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
    if n > 0 {
        unsafe { Term::new(env, t) }
    } else {
        format!("<0.{}.{}>@{}", p.id, p.serial, p.node).encode(env)
    }
}

fn opt_name<'a>(env: Env<'a>, s: &Option<String>) -> Term<'a> {
    match s {
        Some(s) => name(env, s),
        None => atoms::nil().encode(env),
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

/// `{id, type, mono_ns, wall_ns, node, pid, call_id, parent_id, module,
///   function, arity, data, peer, source, links}` — `Causeway.Event.from_native/1`.
pub fn event_term<'a>(
    env: Env<'a>,
    e: &StoredEvent,
    links: Option<&[(LinkKind, u64)]>,
) -> Term<'a> {
    let items = [
        e.id.encode(env),
        atom(env, e.kind.name()),
        e.mono_ns.encode(env),
        e.wall_ns.encode(env),
        name(env, &e.pid.node),
        pid_term(env, &e.pid),
        nil_if_zero(env, e.call_id),
        nil_if_zero(env, e.parent_id),
        opt_name(env, &e.module),
        opt_name(env, &e.function),
        if e.module.is_some() {
            e.arity.encode(env)
        } else {
            atoms::nil().encode(env)
        },
        decode_term(env, &e.data),
        match &e.peer {
            Some(p) => pid_term(env, p),
            None => atoms::nil().encode(env),
        },
        atom(env, e.source.name()),
        match links {
            Some(l) => links_term(env, l),
            None => atoms::nil().encode(env),
        },
    ];
    rustler::types::tuple::make_tuple(env, &items)
}
