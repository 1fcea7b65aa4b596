//! Captured terms → ETF bytes under a byte and depth budget, with redaction.
//!
//! Runs on the caller's scheduler, so it is bounded: it stops at `max_bytes`
//! (binaries larger than what is left become `{:truncated, byte_size}`;
//! containers cut short end with `{:truncated, :max_bytes}`), at `max_depth`
//! (`{:truncated, :max_depth}`), and replaces the value of any map key or
//! keyword/2-tuple key listed in `redact` by `:redacted` before a byte of it is
//! written.

use crate::beam::word;
use causeway_core::etf::{self, EtfWriter, Payload, Sink};
use rustler::sys::{self, ErlNifBinary, ErlNifMapIterator, ErlNifTerm as ERL_NIF_TERM};
use rustler::{Env, Term};
use std::mem::MaybeUninit;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// Whether the encoder reads small integers, atoms, `[]` and list cells
/// straight from their term words, without a call into the VM per element.
/// These are the 64-bit BEAM's tagging, unchanged for decades: a small
/// integer is `(v << 4) | 0xF`, an atom `(index << 6) | 0x0B`, `[]` is `0x3B`,
/// a list cell is a pointer to its head and tail words, tagged `0b01`.
/// `check_words` verifies all of it against terms the VM makes when the
/// library loads; if anything differs, every term goes through the `enif_*`
/// calls.
static DIRECT_WORDS: AtomicBool = AtomicBool::new(false);

const SMALL_MASK: u64 = 0xF;
const SMALL_TAG: u64 = 0xF;
const NIL: u64 = 0x3B;
const CONS_MASK: u64 = 0x3;
const CONS_TAG: u64 = 0x1;
/// Tag bits of a pointer term (primary tag, and the literal tag some builds use).
const PTR_TAG_BITS: u64 = 0x7;
const ATOM_MASK: u64 = 0x3F;
const ATOM_TAG: u64 = 0x0B;
const BOXED_MASK: u64 = 0x3;
const BOXED_TAG: u64 = 0x2;
/// The header of a heap binary (a binary of up to 64 bytes that lives on
/// the process heap): `(words << 6) | (0x9 << 2)`, followed by its byte
/// size and its bytes.
const HEADER_SUBTAG_MASK: u64 = 0x3F;
const HEAP_BIN_SUBTAG: u64 = 0x24;
/// A float: its header (subtag `0x6 << 2`), then the 8 bytes of the double.
const FLOAT_SUBTAG: u64 = 0x18;
/// A tuple: its header is `(arity << 6) | 0`, then the element words.
const ARITYVAL_SUBTAG: u64 = 0x00;

/// Whether the encoder reads heap binaries, floats and tuples straight
/// from the heap (their header, then size and bytes, the double, or the
/// element words), without `enif_*` calls. Checked by `check_words` like
/// `DIRECT_WORDS`, on its own: a VM whose boxed terms are laid out
/// otherwise keeps the direct reads of the immediate terms.
static DIRECT_BOXED: AtomicBool = AtomicBool::new(false);

#[inline]
fn direct() -> bool {
    DIRECT_WORDS.load(Ordering::Relaxed)
}

/// Whether `check_words` turned the direct reads on.
pub fn direct_words() -> bool {
    direct()
}

/// Whether `check_words` turned the direct reads of boxed terms on.
pub fn direct_boxed() -> bool {
    DIRECT_BOXED.load(Ordering::Relaxed)
}

/// Is `t` an atom (by its tag when the direct reads are on)?
#[inline]
pub fn is_atom(t: Term) -> bool {
    if direct() {
        word(t.as_c_arg()) & ATOM_MASK == ATOM_TAG
    } else {
        t.is_atom()
    }
}

/// The element words of a tuple, in place (`None` for anything else).
///
/// # Safety
/// The slice lives as long as the tuple: `env`'s call, for a term of it.
#[inline]
unsafe fn tuple_words<'t>(env: *mut sys::ErlNifEnv, t: ERL_NIF_TERM) -> Option<&'t [ERL_NIF_TERM]> {
    let mut arity: std::os::raw::c_int = 0;
    let mut arr: *const ERL_NIF_TERM = std::ptr::null();
    if unsafe { sys::enif_get_tuple(env, t, &mut arity, &mut arr) } == 0 {
        return None;
    }
    Some(unsafe { std::slice::from_raw_parts(arr, arity.max(0) as usize) })
}

/// The elements of a tuple of exactly `N` elements (rustler's `get_tuple`
/// copies them into a `Vec`: an allocation per call on the tracer's path).
#[inline]
pub fn tuple_of<const N: usize>(t: Term) -> Option<[Term; N]> {
    let env = t.get_env();
    // SAFETY: the elements live as long as `t`
    let words = unsafe { tuple_words(env.as_c_arg(), t.as_c_arg()) }?;
    let words: &[ERL_NIF_TERM; N] = words.try_into().ok()?;
    Some(words.map(|w| unsafe { Term::new(env, w) }))
}

/// Is `t` a list (`[]` or a list cell)?
#[inline]
pub fn is_list(t: Term) -> bool {
    if direct() {
        let w = word(t.as_c_arg());
        w == NIL || w & CONS_MASK == CONS_TAG
    } else {
        t.is_list() || t.is_empty_list()
    }
}

/// The head and tail words of a list cell word.
///
/// The low three bits are masked off, as ERTS's own `list_val` does: on
/// builds that tag pointers into literal areas (debug emulators, platforms
/// without physical memory reservation) bit 2 of a literal list is set too.
///
/// # Safety
/// `w` is a live list cell term (its tag is `CONS_TAG`) and `check_words`
/// passed.
#[inline]
unsafe fn cons_cell(w: u64) -> (ERL_NIF_TERM, ERL_NIF_TERM) {
    let p = (w & !PTR_TAG_BITS) as *const u64;
    unsafe { (crate::beam::term_of(*p), crate::beam::term_of(*p.add(1))) }
}

/// Encoded atoms by term word. Captured atoms repeat (`:ok`, map keys,
/// module names), and reading a name from the VM copies it out of the atom
/// table on every capture. An atom's word names it for the life of the VM
/// (atoms are never collected), so its encoding can be kept: here, for names
/// up to 22 bytes, in a direct-mapped table whose entries are each under a
/// sequence lock (a reader never waits and never takes half an entry; a
/// writer that finds an entry being written does not cache).
struct AtomEntry {
    seq: AtomicU64,
    key: AtomicU64,
    bytes: [AtomicU64; 3],
}

const ATOM_CACHE: usize = 1024;
const ATOM_CACHED_BYTES: usize = 24;

static ATOMS: [AtomEntry; ATOM_CACHE] = [const {
    AtomEntry {
        seq: AtomicU64::new(0),
        key: AtomicU64::new(0),
        bytes: [const { AtomicU64::new(0) }; 3],
    }
}; ATOM_CACHE];

#[inline]
fn atom_entry(w: u64) -> &'static AtomEntry {
    // the atom index is above the 6 tag bits: consecutive atoms spread out
    &ATOMS[(w >> 6) as usize % ATOM_CACHE]
}

/// The cached encoding of atom word `w` (its bytes as little-endian words,
/// its length).
#[inline]
fn cached_atom(w: u64) -> Option<([u64; 3], usize)> {
    let e = atom_entry(w);
    let s1 = e.seq.load(Ordering::Acquire);
    let key = e.key.load(Ordering::Relaxed);
    let b = [
        e.bytes[0].load(Ordering::Relaxed),
        e.bytes[1].load(Ordering::Relaxed),
        e.bytes[2].load(Ordering::Relaxed),
    ];
    fence(Ordering::Acquire);
    if s1 & 1 != 0 || key != w || e.seq.load(Ordering::Relaxed) != s1 {
        return None;
    }
    // SMALL_ATOM_EXT, length, name
    let len = ((b[0] >> 8) & 0xFF) as usize + 2;
    (len <= ATOM_CACHED_BYTES).then_some((b, len))
}

fn cache_atom(w: u64, encoded: &[u8]) {
    if encoded.len() > ATOM_CACHED_BYTES {
        return;
    }
    let e = atom_entry(w);
    let s = e.seq.load(Ordering::Relaxed);
    if s & 1 != 0
        || e.seq
            .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    fence(Ordering::Release);
    let mut padded = [0u8; ATOM_CACHED_BYTES];
    padded[..encoded.len()].copy_from_slice(encoded);
    e.key.store(w, Ordering::Relaxed);
    for (i, slot) in e.bytes.iter().enumerate() {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&padded[i * 8..i * 8 + 8]);
        slot.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
    e.seq.store(s + 2, Ordering::Release);
}

/// The header word of a boxed term and a pointer to it (`None` for an
/// immediate or a list cell).
///
/// # Safety
/// `w` is a live term of the current call.
#[inline(always)]
unsafe fn boxed(w: u64) -> Option<(u64, *const u64)> {
    if w & BOXED_MASK != BOXED_TAG {
        return None;
    }
    let p = (w & !PTR_TAG_BITS) as *const u64;
    Some((unsafe { *p }, p))
}

/// The bytes of a heap binary term word (`None` for anything else).
///
/// # Safety
/// `w` is a live term of the current call, and `DIRECT_BOXED` is on.
#[inline]
unsafe fn heap_binary<'t>(w: u64) -> Option<&'t [u8]> {
    let (header, p) = unsafe { boxed(w) }?;
    if header & HEADER_SUBTAG_MASK != HEAP_BIN_SUBTAG {
        return None;
    }
    unsafe {
        let size = *p.add(1) as usize;
        Some(std::slice::from_raw_parts(p.add(2) as *const u8, size))
    }
}

/// The value of a float term word (`None` for anything else).
///
/// # Safety
/// As `heap_binary`.
#[inline]
unsafe fn boxed_float(w: u64) -> Option<f64> {
    let (header, p) = unsafe { boxed(w) }?;
    (header & HEADER_SUBTAG_MASK == FLOAT_SUBTAG)
        .then(|| f64::from_bits(unsafe { p.add(1).read_unaligned() }))
}

/// The element words of a tuple term word (`None` for anything else).
///
/// # Safety
/// As `heap_binary`.
#[inline]
unsafe fn boxed_tuple<'t>(w: u64) -> Option<&'t [u64]> {
    let (header, p) = unsafe { boxed(w) }?;
    (header & HEADER_SUBTAG_MASK == ARITYVAL_SUBTAG)
        .then(|| unsafe { std::slice::from_raw_parts(p.add(1), (header >> 6) as usize) })
}

/// Checks the boxed layouts `DIRECT_BOXED` relies on: heap binaries of 0,
/// 3 and 64 bytes, floats and tuples the VM makes read back as theirs, and
/// no other boxed term (a larger, reference-counted binary, a sub-binary, a
/// bignum, a reference, a map, a pid) looks like any of them.
fn check_boxed(e: *mut sys::ErlNifEnv) -> bool {
    unsafe {
        let make = |bytes: &[u8]| {
            let mut t = ERL_NIF_TERM::default();
            let data = sys::enif_make_new_binary(e, bytes.len(), &mut t);
            if !data.is_null() {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
            }
            t
        };
        let long: Vec<u8> = (0..64u8).collect();
        let heap_ok = [&b""[..], b"abc", &long[..]].iter().all(|bytes| {
            let t = make(bytes);
            word(t) & BOXED_MASK == BOXED_TAG && heap_binary(word(t)) == Some(*bytes)
        });
        let refc = make(&[7u8; 200]);
        let sub = sys::enif_make_sub_binary(e, refc, 1, 3);
        let head = sys::enif_make_int64(e, 7);
        let mut me = MaybeUninit::<sys::ErlNifPid>::uninit();
        let pid = if sys::enif_self(e, me.as_mut_ptr()).is_null() {
            head
        } else {
            sys::enif_make_pid(e, me.assume_init())
        };
        let others = [
            refc,
            sub,
            sys::enif_make_double(e, 1.5),
            sys::enif_make_int64(e, i64::MAX), // a bignum
            sys::enif_make_tuple_from_array(e, [head].as_ptr(), 1),
            sys::enif_make_tuple_from_array(e, std::ptr::null(), 0),
            sys::enif_make_ref(e),
            sys::enif_make_new_map(e),
            pid,
        ];
        let floats = [1.5, -0.0, 1e300, f64::MIN_POSITIVE];
        let floats_ok = floats.iter().all(|&v| {
            let t = sys::enif_make_double(e, v);
            let w = word(t);
            boxed_float(w).map(f64::to_bits) == Some(v.to_bits())
                && heap_binary(w).is_none()
                && boxed_tuple(w).is_none()
        });
        let elems = [head, sys::enif_make_int64(e, 8), refc];
        let tuples_ok = (0..=elems.len()).all(|n| {
            let t = sys::enif_make_tuple_from_array(e, elems.as_ptr(), n as u32);
            let w = word(t);
            let want: Vec<u64> = elems[..n].iter().map(|&x| word(x)).collect();
            boxed_tuple(w) == Some(&want[..])
                && heap_binary(w).is_none()
                && boxed_float(w).is_none()
        });
        let not_tuples_or_floats = [refc, sub, others[3], others[6], others[7], others[8]];
        let others_ok = others.iter().all(|&t| heap_binary(word(t)).is_none())
            && not_tuples_or_floats
                .iter()
                .all(|&t| boxed_tuple(word(t)).is_none() && boxed_float(word(t)).is_none())
            && [&b""[..], b"abc"].iter().all(|bytes| {
                let w = word(make(bytes));
                boxed_tuple(w).is_none() && boxed_float(w).is_none()
            });
        heap_ok && floats_ok && tuples_ok && others_ok
    }
}

/// Checks the tagging `DIRECT_WORDS` relies on against the VM's own terms,
/// and turns the direct reads on only if all of it holds.
pub fn check_words(env: Env) {
    let e = env.as_c_arg();
    let ok = unsafe {
        let small_ok = [0i64, 5, -3, (1 << 59) - 1, -(1 << 59)]
            .iter()
            .all(|&v| word(sys::enif_make_int64(e, v)) == (((v << 4) as u64) | SMALL_TAG));
        let nil = sys::enif_make_list_from_array(e, std::ptr::null(), 0);
        let head = sys::enif_make_int64(e, 7);
        let tail = sys::enif_make_list_cell(e, sys::enif_make_int64(e, 8), nil);
        let list = sys::enif_make_list_cell(e, head, tail);
        let lw = word(list);
        let cons_ok = lw & CONS_MASK == CONS_TAG && {
            let (h, t) = cons_cell(lw);
            word(h) == word(head) && word(t) == word(tail)
        };
        // nothing else may look like a small integer, `[]` or a list cell
        let others = [
            sys::enif_make_atom_len(e, b"ok".as_ptr() as *const _, 2),
            sys::enif_make_double(e, 1.5),
            sys::enif_make_int64(e, i64::MAX), // a bignum
            sys::enif_make_tuple_from_array(e, [head].as_ptr(), 1),
            sys::enif_make_ref(e),
            sys::enif_make_new_map(e),
        ];
        let others_ok = others[1..].iter().all(|&t| word(t) & ATOM_MASK != ATOM_TAG)
            && others.iter().all(|&t| {
                let w = word(t);
                w & SMALL_MASK != SMALL_TAG && w != NIL && w & CONS_MASK != CONS_TAG
            });
        let atoms_ok = [&b""[..], b"ok", b"\xfcn\xef"].iter().all(|name| {
            let a = sys::enif_make_atom_len(e, name.as_ptr() as *const _, name.len());
            word(a) & ATOM_MASK == ATOM_TAG
        });
        let mut me = MaybeUninit::<sys::ErlNifPid>::uninit();
        let pid_ok = sys::enif_self(e, me.as_mut_ptr()).is_null() || {
            let w = word(sys::enif_make_pid(e, me.assume_init()));
            w & ATOM_MASK != ATOM_TAG && w & SMALL_MASK != SMALL_TAG && w & CONS_MASK != CONS_TAG
        };
        let nonatoms_ok = [head, nil, list]
            .iter()
            .all(|&t| word(t) & ATOM_MASK != ATOM_TAG);
        small_ok && word(nil) == NIL && cons_ok && others_ok && atoms_ok && pid_ok && nonatoms_ok
    };
    DIRECT_WORDS.store(ok, Ordering::Relaxed);
    DIRECT_BOXED.store(ok && check_boxed(e), Ordering::Relaxed);
}

pub struct Budget<'r> {
    pub max_bytes: usize,
    pub max_depth: usize,
    /// Raw atom words of the keys whose values are blanked.
    pub redact: &'r [u64],
}

const MARK_MAX_BYTES: &str = "max_bytes";
const MARK_MAX_DEPTH: &str = "max_depth";

/// The encoder, writing into a buffer of its own (`etf::Buf`) or into a
/// payload where it is kept (`etf::InPlace`: a ring slot's).
struct Enc<'a, 'e, 'r, S: Sink = etf::Buf> {
    renv: Env<'a>,
    env: *mut sys::ErlNifEnv,
    w: EtfWriter<S>,
    b: &'e Budget<'r>,
}

/// Encodes `term` (with the ETF version byte).
pub fn encode(env: Env, term: Term, b: &Budget) -> Payload {
    let mut e = Enc::new(env, b);
    e.term(term.as_c_arg(), 0);
    e.w.into_payload()
}

/// Encodes a tuple made of `items` without building it on the heap.
pub fn encode_tuple(env: Env, items: &[Term], b: &Budget) -> Payload {
    let mut e = Enc::new(env, b);
    e.w.tuple_header(items.len());
    for t in items {
        e.term(t.as_c_arg(), 0);
    }
    e.w.into_payload()
}

/// `encode_tuple`, into `out` where it is.
pub fn encode_tuple_into(env: Env, items: &[Term], b: &Budget, out: &mut Payload) {
    let mut e = Enc::at(env, b, out);
    e.w.tuple_header(items.len());
    for t in items {
        e.term(t.as_c_arg(), 0);
    }
}

/// Encodes an argument list; returns it and its length (`arity`).
pub fn encode_list_len(env: Env, list: Term, b: &Budget) -> (Payload, u32) {
    let mut e = Enc::new(env, b);
    // the argument list is an envelope: each argument starts at depth 0
    e.list(list.as_c_arg(), 0);
    (e.w.into_payload(), arity(list))
}

/// The most list cells `arity` counts (the BEAM's largest arity is 255).
const MAX_ARITY_COUNTED: u32 = 256;

/// The number of proper elements of an argument list, counted up to 256:
/// the arity a call is recorded with, whether or not its arguments fit the
/// byte budget and whether or not its entry was stored.
pub fn arity(list: Term) -> u32 {
    let env = list.get_env().as_c_arg();
    let mut cur = list.as_c_arg();
    let mut n = 0;
    while n < MAX_ARITY_COUNTED {
        let next = if direct() {
            let w = word(cur);
            // SAFETY: a term word tagged 0b01 is a list cell; `list` is
            // alive for the call; `check_words` passed
            (w & CONS_MASK == CONS_TAG).then(|| unsafe { cons_cell(w) }.1)
        } else {
            let mut head = ERL_NIF_TERM::default();
            let mut tail = ERL_NIF_TERM::default();
            (unsafe { sys::enif_get_list_cell(env, cur, &mut head, &mut tail) } != 0)
                .then_some(tail)
        };
        let Some(tail) = next else { break };
        n += 1;
        cur = tail;
    }
    n
}

/// `encode`, into `out` where it is (e.g. a ring slot's payload).
#[inline]
pub fn encode_into(env: Env, term: Term, b: &Budget, out: &mut Payload) {
    if flat_allowed(b) {
        // SAFETY: `term` is alive for the call; the direct reads are on
        if unsafe { flat::term(word(term.as_c_arg()), out, &flat_limits(b)) } {
            return;
        }
    }
    let mut e = Enc::at(env, b, out);
    e.term(term.as_c_arg(), 0);
}

/// Encodes an argument list into `out` where it is; returns its length.
#[inline]
pub fn encode_list_len_into(env: Env, list: Term, b: &Budget, out: &mut Payload) -> u32 {
    if flat_allowed(b) {
        // SAFETY: `list` is alive for the call; the direct reads are on
        if let Some(n) = unsafe { flat::list(word(list.as_c_arg()), out, &flat_limits(b)) } {
            return n;
        }
    }
    let mut e = Enc::at(env, b, out);
    // the argument list is an envelope: each argument starts at depth 0
    e.list(list.as_c_arg(), 0);
    arity(list)
}

#[inline(always)]
fn flat_limits(b: &Budget) -> flat::Limits {
    flat::Limits {
        max_depth: b.max_depth,
        redacting: !b.redact.is_empty(),
    }
}

/// Whether a payload may take the flat path: the direct reads are on, and
/// whatever fits inline also fits the byte budget.
#[inline(always)]
fn flat_allowed(b: &Budget) -> bool {
    direct() && b.max_bytes >= etf::INLINE_PAYLOAD
}

/// The flat path: the terms most calls capture (small integers, atoms
/// already in the cache, `[]`, heap binaries, floats, and lists and tuples
/// of these, two levels deep at most) encoded straight into a payload's
/// inline bytes, with the length kept in a register and no call into the VM.
/// Anything else, or anything that would not fit inline, and it gives up
/// before the payload's length is touched: the general encoder then starts
/// over. The bytes are the ones the general encoder writes (message
/// payloads are matched by their bytes). (Measured: the general encoder
/// took ~40 ns for `[i, :a, "b"]` in the fast machine state, this path ~12,
/// the trivial NIF call ~19.)
mod flat {
    use super::*;

    const CAP: usize = etf::INLINE_PAYLOAD;

    /// What bounds the walk: containers at `max_depth` or deeper are the
    /// general encoder's (it writes a marker for them), and so are tuples
    /// when keys are redacted.
    pub(super) struct Limits {
        pub max_depth: usize,
        pub redacting: bool,
    }

    /// Containers this deep or deeper are left to the general encoder.
    const MAX_NESTING: usize = 2;

    /// Appends the encoding of `w` (at `depth` in the captured term) at
    /// `at`; the new end, or `None` for a term this path does not take (or
    /// one that does not fit).
    ///
    /// # Safety
    /// `dst` has `CAP` writable bytes, `at <= CAP`; `w` is a live term; the
    /// direct reads are on.
    #[inline(always)]
    unsafe fn item(w: u64, dst: *mut u8, at: usize, depth: usize, lim: &Limits) -> Option<usize> {
        unsafe {
            if w & SMALL_MASK == SMALL_TAG {
                let v = w as i64 >> 4;
                if (0..=255).contains(&v) && at + 2 <= CAP {
                    *dst.add(at) = etf::SMALL_INTEGER_EXT;
                    *dst.add(at + 1) = v as u8;
                    return Some(at + 2);
                }
                if i32::try_from(v).is_ok() && at + 5 <= CAP {
                    *dst.add(at) = etf::INTEGER_EXT;
                    (dst.add(at + 1) as *mut [u8; 4]).write_unaligned((v as i32).to_be_bytes());
                    return Some(at + 5);
                }
                return None;
            }
            if w & ATOM_MASK == ATOM_TAG {
                let (words, len) = cached_atom(w)?;
                if at + ATOM_CACHED_BYTES > CAP {
                    return None;
                }
                etf::store_words(dst.add(at), &words);
                return Some(at + len);
            }
            if w == NIL {
                if at < CAP {
                    *dst.add(at) = etf::NIL_EXT;
                    return Some(at + 1);
                }
                return None;
            }
            if DIRECT_BOXED.load(Ordering::Relaxed) {
                if let Some(bytes) = heap_binary(w) {
                    let end = at + 5 + bytes.len();
                    if end > CAP {
                        return None;
                    }
                    *dst.add(at) = etf::BINARY_EXT;
                    (dst.add(at + 1) as *mut [u8; 4])
                        .write_unaligned((bytes.len() as u32).to_be_bytes());
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.add(at + 5), bytes.len());
                    return Some(end);
                }
            }
            nested(w, dst, at, depth, lim)
        }
    }

    /// `item` for lists, floats and tuples (out of line: immediates and
    /// binaries are what most arguments are).
    ///
    /// # Safety
    /// As `item`.
    #[inline(never)]
    unsafe fn nested(w: u64, dst: *mut u8, at: usize, depth: usize, lim: &Limits) -> Option<usize> {
        unsafe {
            let container_ok = depth < lim.max_depth && depth < MAX_NESTING;
            if w & CONS_MASK == CONS_TAG {
                return if container_ok {
                    list_at(w, dst, at, depth + 1, lim).map(|(end, _)| end)
                } else {
                    None
                };
            }
            if !DIRECT_BOXED.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(v) = boxed_float(w) {
                if at + 9 > CAP {
                    return None;
                }
                *dst.add(at) = etf::NEW_FLOAT_EXT;
                (dst.add(at + 1) as *mut [u8; 8]).write_unaligned(v.to_bits().to_be_bytes());
                return Some(at + 9);
            }
            if let Some(items) = boxed_tuple(w) {
                if !container_ok || lim.redacting || at + 5 > CAP {
                    return None;
                }
                // the general encoder's header: LARGE_TUPLE_EXT, 4-byte arity
                *dst.add(at) = etf::LARGE_TUPLE_EXT;
                (dst.add(at + 1) as *mut [u8; 4])
                    .write_unaligned((items.len() as u32).to_be_bytes());
                let mut end = at + 5;
                for &item_w in items {
                    end = item(item_w, dst, end, depth + 1, lim)?;
                }
                return Some(end);
            }
            None
        }
    }

    /// Appends the proper list `w` (a list cell) whose elements are at
    /// `depth`; the new end and its length.
    ///
    /// # Safety
    /// As `item`.
    #[inline(always)]
    unsafe fn list_at(
        w: u64,
        dst: *mut u8,
        at: usize,
        depth: usize,
        lim: &Limits,
    ) -> Option<(usize, u32)> {
        if at + 6 > CAP {
            return None;
        }
        unsafe {
            *dst.add(at) = etf::LIST_EXT;
            let mut end = at + 5;
            let mut n: u32 = 0;
            let mut cur = w;
            while cur != NIL {
                if cur & CONS_MASK != CONS_TAG {
                    return None; // an improper tail
                }
                let (head, tail) = cons_cell(cur);
                end = item(word(head), dst, end, depth, lim)?;
                n += 1;
                cur = word(tail);
            }
            if end >= CAP {
                return None;
            }
            (dst.add(at + 1) as *mut [u8; 4]).write_unaligned(n.to_be_bytes());
            *dst.add(end) = etf::NIL_EXT;
            Some((end + 1, n))
        }
    }

    /// The payload's inline bytes, when it is inline (and is emptied).
    #[inline(always)]
    fn inline_bytes(out: &mut Payload) -> Option<*mut u8> {
        (!out.spilled()).then(|| out.as_mut_ptr())
    }

    /// A flat term as a whole payload (version byte first).
    ///
    /// # Safety
    /// `w` is a live term of the current call; the direct reads are on.
    #[inline]
    pub(super) unsafe fn term(w: u64, out: &mut Payload, lim: &Limits) -> bool {
        let Some(dst) = inline_bytes(out) else {
            return false;
        };
        unsafe {
            *dst = etf::VERSION;
            match item(w, dst, 1, 0, lim) {
                Some(end) => {
                    out.set_len(end);
                    true
                }
                None => false,
            }
        }
    }

    /// A proper list of flat terms (an argument list: its elements at depth
    /// 0) as a whole payload; its length.
    ///
    /// # Safety
    /// `w` is a live term of the current call; the direct reads are on.
    #[inline]
    pub(super) unsafe fn list(w: u64, out: &mut Payload, lim: &Limits) -> Option<u32> {
        let dst = inline_bytes(out)?;
        unsafe {
            *dst = etf::VERSION;
            if w == NIL {
                *dst.add(1) = etf::NIL_EXT;
                out.set_len(2);
                return Some(0);
            }
            if w & CONS_MASK != CONS_TAG {
                return None;
            }
            let (end, n) = list_at(w, dst, 1, 0, lim)?;
            out.set_len(end);
            Some(n)
        }
    }
}

impl<'a, 'e, 'r> Enc<'a, 'e, 'r> {
    /// An encoder writing a fresh payload (version byte first).
    #[inline]
    fn new(env: Env<'a>, b: &'e Budget<'r>) -> Self {
        Enc {
            renv: env,
            env: env.as_c_arg(),
            w: EtfWriter::with_version(),
            b,
        }
    }
}

impl<'a, 'e, 'r, 'p> Enc<'a, 'e, 'r, etf::InPlace<'p>> {
    /// An encoder writing into `out` (emptied, version byte first).
    #[inline(always)]
    fn at(env: Env<'a>, b: &'e Budget<'r>, out: &'p mut Payload) -> Self {
        Enc {
            renv: env,
            env: env.as_c_arg(),
            w: EtfWriter::into_payload_at(out),
            b,
        }
    }
}

impl<'a, 'e, 'r, S: Sink> Enc<'a, 'e, 'r, S> {
    fn over(&self) -> bool {
        self.w.len() >= self.b.max_bytes
    }

    fn left(&self) -> usize {
        self.b.max_bytes.saturating_sub(self.w.len())
    }

    fn is_redacted_key(&self, key: ERL_NIF_TERM) -> bool {
        !self.b.redact.is_empty() && self.b.redact.contains(&crate::beam::word(key))
    }

    /// `depth` counts the containers around `t` inside the captured term; a
    /// container at `max_depth` is replaced by the marker (scalars always fit).
    fn term(&mut self, t: ERL_NIF_TERM, depth: usize) {
        if direct() {
            let w = word(t);
            if w & SMALL_MASK == SMALL_TAG {
                self.w.int(w as i64 >> 4);
                return;
            }
            if w & ATOM_MASK == ATOM_TAG {
                self.atom(t);
                return;
            }
            if DIRECT_BOXED.load(Ordering::Relaxed) {
                // SAFETY: `t` is alive for the call; `check_binaries` passed
                if let Some(bytes) = unsafe { heap_binary(w) } {
                    self.bytes(bytes);
                    return;
                }
            }
        }
        let ty = unsafe { sys::enif_term_type(self.env, t) };
        use sys::ErlNifTermType::*;
        if depth >= self.b.max_depth
            && matches!(
                ty,
                ERL_NIF_TERM_TYPE_LIST | ERL_NIF_TERM_TYPE_TUPLE | ERL_NIF_TERM_TYPE_MAP
            )
        {
            if unsafe { sys::enif_is_empty_list(self.env, t) } != 0 {
                self.w.nil();
            } else {
                self.w.truncated_because(MARK_MAX_DEPTH);
            }
            return;
        }
        match ty {
            ERL_NIF_TERM_TYPE_ATOM => self.atom(t),
            ERL_NIF_TERM_TYPE_INTEGER => {
                let mut v: i64 = 0;
                if unsafe { sys::enif_get_int64(self.env, t, &mut v) } != 0 {
                    self.w.int(v);
                } else {
                    self.opaque(t);
                }
            }
            ERL_NIF_TERM_TYPE_FLOAT => {
                let mut v: f64 = 0.0;
                unsafe { sys::enif_get_double(self.env, t, &mut v) };
                self.w.float(v);
            }
            ERL_NIF_TERM_TYPE_BITSTRING => {
                let mut bin = MaybeUninit::<ErlNifBinary>::uninit();
                if unsafe { sys::enif_inspect_binary(self.env, t, bin.as_mut_ptr()) } != 0 {
                    let bin = unsafe { bin.assume_init() };
                    self.bytes(unsafe { std::slice::from_raw_parts(bin.data, bin.size) });
                } else {
                    self.opaque(t); // a bitstring that is not whole bytes
                }
            }
            ERL_NIF_TERM_TYPE_LIST => {
                self.list(t, depth + 1);
            }
            ERL_NIF_TERM_TYPE_TUPLE => self.tuple(t, depth),
            ERL_NIF_TERM_TYPE_MAP => self.map(t, depth),
            ERL_NIF_TERM_TYPE_FUN => self.fun(t),
            _ => self.opaque(t), // pid, port, reference
        }
    }

    /// A binary, or `{:truncated, size}` when it does not fit what is left.
    #[inline]
    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.len() + 5 > self.left() {
            self.w.truncated(bytes.len() as u64);
        } else {
            self.w.binary(bytes);
        }
    }

    fn atom(&mut self, t: ERL_NIF_TERM) {
        let w = word(t);
        if let Some((words, len)) = cached_atom(w) {
            self.w.buf.extend_words(&words, len);
            return;
        }
        // not zeroed: the VM writes the name and its NUL, we read only those
        let mut buf = MaybeUninit::<[u8; 256]>::uninit();
        let n = unsafe {
            sys::enif_get_atom(
                self.env,
                t,
                buf.as_mut_ptr() as *mut std::os::raw::c_char,
                256,
                sys::ErlNifCharEncoding::ERL_NIF_LATIN1,
            )
        };
        if n > 0 {
            let name =
                unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize - 1) };
            let start = self.w.len();
            self.w.atom_latin1(name);
            if name.len() + 2 <= ATOM_CACHED_BYTES {
                cache_atom(w, &self.w.buf.as_slice()[start..]);
            }
        } else {
            self.opaque(t); // not Latin-1 (OTP 25 cannot give it to us another way)
        }
    }

    /// A fun as `{:fun, "#Fun<m.i.u>"}` or `{:fun, "&m:f/a"}`: its name, never
    /// its environment (a closure can hold any amount of data, and
    /// `term_to_binary` would copy all of it on the traced process's scheduler).
    fn fun(&mut self, t: ERL_NIF_TERM) {
        let room = self.left().saturating_sub(16).min(200);
        if room < 8 {
            self.w.truncated_because(MARK_MAX_BYTES);
            return;
        }
        let name = format!("{:?}", unsafe { Term::new(self.renv, t) });
        let name = name.as_bytes();
        let name = &name[..name.len().min(room)];
        self.w.tuple_header(2);
        self.w.atom("fun");
        self.w.binary(name);
    }

    /// Anything we do not walk ourselves: `term_to_binary`, bounded after the fact.
    fn opaque(&mut self, t: ERL_NIF_TERM) {
        let mut bin = MaybeUninit::<ErlNifBinary>::uninit();
        if unsafe { sys::enif_term_to_binary(self.env, t, bin.as_mut_ptr()) } == 0 {
            self.w.truncated_because("unencodable");
            return;
        }
        let mut bin = unsafe { bin.assume_init() };
        let bytes = unsafe { std::slice::from_raw_parts(bin.data, bin.size) };
        if bytes.len() > self.left() {
            self.w.truncated(bytes.len() as u64);
        } else {
            self.w.raw(bytes);
        }
        unsafe { sys::enif_release_binary(&mut bin) };
    }

    /// The head and tail of a list cell (`None` for anything else).
    #[inline]
    fn cell(&self, t: ERL_NIF_TERM) -> Option<(ERL_NIF_TERM, ERL_NIF_TERM)> {
        if direct() {
            let w = word(t);
            // SAFETY: a term word tagged 0b01 is a list cell; `t` is alive
            // for the call; `check_words` passed
            return (w & CONS_MASK == CONS_TAG).then(|| unsafe { cons_cell(w) });
        }
        let mut head: ERL_NIF_TERM = ERL_NIF_TERM::default();
        let mut tail: ERL_NIF_TERM = ERL_NIF_TERM::default();
        (unsafe { sys::enif_get_list_cell(self.env, t, &mut head, &mut tail) } != 0)
            .then_some((head, tail))
    }

    #[inline]
    fn is_nil(&self, t: ERL_NIF_TERM) -> bool {
        if direct() {
            word(t) == NIL
        } else {
            unsafe { sys::enif_is_empty_list(self.env, t) != 0 }
        }
    }

    /// Writes a list whose elements are at `depth`; returns the number of
    /// proper elements.
    fn list(&mut self, t: ERL_NIF_TERM, depth: usize) -> u32 {
        if self.cell(t).is_none() {
            self.w.nil();
            return 0;
        }
        let at = self.w.list_header_placeholder();
        let mut n: u32 = 0;
        let mut cur = t;
        loop {
            let Some((head, tail)) = self.cell(cur) else {
                // end: [] or an improper tail
                if self.is_nil(cur) {
                    self.w.nil();
                } else {
                    self.term(cur, depth);
                }
                break;
            };
            if self.over() {
                // cut here: the rest becomes the improper tail marker
                self.w.truncated_because(MARK_MAX_BYTES);
                break;
            }
            self.element(head, depth);
            n += 1;
            cur = tail;
        }
        self.w.patch_u32(at, n);
        n
    }

    /// A list or tuple element: `{key, value}` pairs with a redacted key are blanked.
    fn element(&mut self, t: ERL_NIF_TERM, depth: usize) {
        if !self.b.redact.is_empty() {
            // SAFETY: `t` lives for the call
            if let Some(items) = unsafe { tuple_words(self.env, t) } {
                if self.redacted_pair(items) {
                    return;
                }
            }
        }
        self.term(t, depth);
    }

    /// Writes `{key, :redacted}` for a pair whose key is redacted; false
    /// (nothing written) for anything else.
    fn redacted_pair(&mut self, items: &[ERL_NIF_TERM]) -> bool {
        let &[key, _] = items else {
            return false;
        };
        if !self.is_redacted_key(key) {
            return false;
        }
        self.w.tuple_header(2);
        self.atom(key);
        self.w.atom("redacted");
        true
    }

    fn tuple(&mut self, t: ERL_NIF_TERM, depth: usize) {
        // SAFETY: `t` lives for the call
        let Some(items) = (unsafe { tuple_words(self.env, t) }) else {
            self.opaque(t);
            return;
        };
        if self.redacted_pair(items) {
            return;
        }
        // Large header so the arity can be patched if the budget cuts the tuple.
        self.w.buf.push(etf::LARGE_TUPLE_EXT);
        let at = self.w.len();
        self.w.buf.extend_from_slice(&[0, 0, 0, 0]);
        let mut n: u32 = 0;
        for &item in items {
            if self.over() {
                self.w.truncated_because(MARK_MAX_BYTES);
                n += 1;
                break;
            }
            self.term(item, depth + 1);
            n += 1;
        }
        self.w.patch_u32(at, n);
    }

    fn map(&mut self, t: ERL_NIF_TERM, depth: usize) {
        let mut iter = MaybeUninit::<ErlNifMapIterator>::uninit();
        if unsafe {
            sys::enif_map_iterator_create(
                self.env,
                t,
                iter.as_mut_ptr(),
                sys::ErlNifMapIteratorEntry::ERL_NIF_MAP_ITERATOR_HEAD,
            )
        } == 0
        {
            self.opaque(t);
            return;
        }
        let mut iter = unsafe { iter.assume_init() };
        let at = self.w.map_header_placeholder();
        let mut n: u32 = 0;
        let mut k: ERL_NIF_TERM = ERL_NIF_TERM::default();
        let mut v: ERL_NIF_TERM = ERL_NIF_TERM::default();
        while unsafe { sys::enif_map_iterator_get_pair(self.env, &mut iter, &mut k, &mut v) } != 0 {
            if self.over() {
                self.w.truncated_because(MARK_MAX_BYTES);
                self.w.atom("more");
                n += 1;
                break;
            }
            self.term(k, depth + 1);
            if self.is_redacted_key(k) {
                self.w.atom("redacted");
            } else {
                self.term(v, depth + 1);
            }
            n += 1;
            unsafe { sys::enif_map_iterator_next(self.env, &mut iter) };
        }
        unsafe { sys::enif_map_iterator_destroy(self.env, &mut iter) };
        self.w.patch_u32(at, n);
    }
}
