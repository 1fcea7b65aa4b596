//! Captured terms → ETF bytes under a byte and depth budget, with redaction.
//!
//! Runs on the caller's scheduler, so it is bounded: it stops at `max_bytes`
//! (binaries larger than what is left become `{:truncated, byte_size}`;
//! containers cut short end with `{:truncated, :max_bytes}`), at `max_depth`
//! (`{:truncated, :max_depth}`), and replaces the value of any map key or
//! keyword/2-tuple key listed in `redact` by `:redacted` before a byte of it is
//! written.

use crate::beam::word;
use causeway_core::etf::{self, EtfWriter, Payload};
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

#[inline]
fn direct() -> bool {
    DIRECT_WORDS.load(Ordering::Relaxed)
}

/// Whether `check_words` turned the direct reads on.
pub fn direct_words() -> bool {
    direct()
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

/// The cached encoding of atom word `w` (its bytes, its length).
#[inline]
fn cached_atom(w: u64) -> Option<([u8; ATOM_CACHED_BYTES], usize)> {
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
    let mut out = [0u8; ATOM_CACHED_BYTES];
    for (i, v) in b.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    // SMALL_ATOM_EXT, length, name
    let len = out[1] as usize + 2;
    (len <= ATOM_CACHED_BYTES).then_some((out, len))
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
}

pub struct Budget<'r> {
    pub max_bytes: usize,
    pub max_depth: usize,
    /// Raw atom words of the keys whose values are blanked.
    pub redact: &'r [u64],
}

const MARK_MAX_BYTES: &str = "max_bytes";
const MARK_MAX_DEPTH: &str = "max_depth";

struct Enc<'a, 'e, 'r> {
    renv: Env<'a>,
    env: *mut sys::ErlNifEnv,
    w: EtfWriter,
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

/// Encodes a list whose elements are `items` (e.g. `[a | rest]` pieces).
pub fn encode_list_len(env: Env, list: Term, b: &Budget) -> (Payload, u32) {
    let mut e = Enc::new(env, b);
    // the argument list is an envelope: each argument starts at depth 0
    let n = e.list(list.as_c_arg(), 0);
    (e.w.into_payload(), n)
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
                    let size = bin.size;
                    if size + 5 > self.left() {
                        self.w.truncated(size as u64);
                    } else {
                        let bytes = unsafe { std::slice::from_raw_parts(bin.data, size) };
                        self.w.binary(bytes);
                    }
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

    fn atom(&mut self, t: ERL_NIF_TERM) {
        let w = word(t);
        if let Some((bytes, len)) = cached_atom(w) {
            self.w.buf.extend_from_slice(&bytes[..len]);
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
                cache_atom(w, &self.w.buf[start..]);
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
