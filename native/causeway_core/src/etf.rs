//! A small Erlang external term format (ETF) writer and the few readers the core
//! needs (pids). Producers encode captured terms with `EtfWriter` under a byte
//! budget; the BEAM decodes the bytes with `binary_to_term/2` at query time.

use crate::event::PidRec;
use crate::{Error, Result};

pub const VERSION: u8 = 131;
pub const SMALL_INTEGER_EXT: u8 = 97;
pub const INTEGER_EXT: u8 = 98;
pub const NEW_FLOAT_EXT: u8 = 70;
pub const ATOM_EXT: u8 = 100;
pub const SMALL_ATOM_EXT: u8 = 115;
pub const ATOM_UTF8_EXT: u8 = 118;
pub const SMALL_ATOM_UTF8_EXT: u8 = 119;
pub const SMALL_TUPLE_EXT: u8 = 104;
pub const LARGE_TUPLE_EXT: u8 = 105;
pub const NIL_EXT: u8 = 106;
pub const STRING_EXT: u8 = 107;
pub const LIST_EXT: u8 = 108;
pub const BINARY_EXT: u8 = 109;
pub const BIT_BINARY_EXT: u8 = 77;
pub const SMALL_BIG_EXT: u8 = 110;
pub const MAP_EXT: u8 = 116;
pub const PID_EXT: u8 = 103;
pub const NEW_PID_EXT: u8 = 88;

/// Appends ETF items to a buffer. The caller decides the structure; the writer
/// only knows the encodings. `len()` lets a caller roll back a partly written item.
/// Captured payloads up to this many bytes live inline in the ring slot: the
/// common small event costs no allocation (and no cross-thread free).
pub const INLINE_PAYLOAD: usize = 48;

/// An event payload: inline when small, on the heap otherwise.
pub type Payload = smallvec::SmallVec<[u8; INLINE_PAYLOAD]>;

/// The writer's buffer: the first `STACK` bytes on the stack (appends are a
/// bounds check and a copy), all of it on the heap once it grows past that.
/// `STACK` is what a payload keeps inline, so a small payload leaves as a
/// fixed-size move (no copy of a variable length), a big one as its `Vec`;
/// and the whole writer stays small enough to move without a `memcpy` call.
pub struct Buf {
    len: usize,
    stack: [u8; Buf::STACK],
    heap: Vec<u8>,
    spilled: bool,
}

impl Default for Buf {
    #[inline]
    fn default() -> Self {
        Buf {
            len: 0,
            stack: [0; Buf::STACK],
            heap: Vec::new(),
            spilled: false,
        }
    }
}

impl Clone for Buf {
    fn clone(&self) -> Self {
        let mut b = Buf::default();
        b.extend_from_slice(self.as_slice());
        b
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl Buf {
    pub const STACK: usize = INLINE_PAYLOAD;

    #[inline]
    pub fn len(&self) -> usize {
        if self.spilled {
            self.heap.len()
        } else {
            self.len
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        if self.spilled {
            &self.heap
        } else {
            &self.stack[..self.len]
        }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.spilled {
            &mut self.heap
        } else {
            &mut self.stack[..self.len]
        }
    }

    /// Moves the bytes to the heap: a pooled buffer (`bufpool`) of at least
    /// 256 bytes.
    #[cold]
    fn spill(&mut self, extra: usize) {
        let mut v = crate::bufpool::take(self.len + extra);
        v.extend_from_slice(self.as_slice());
        self.heap = v;
        self.spilled = true;
    }

    #[inline]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if !self.spilled {
            if self.len + bytes.len() <= Self::STACK {
                // SAFETY: in bounds (checked above), regions do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        self.stack.as_mut_ptr().add(self.len),
                        bytes.len(),
                    );
                }
                self.len += bytes.len();
                return;
            }
            self.spill(bytes.len());
        }
        self.heap.extend_from_slice(bytes);
    }

    #[inline]
    pub fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    pub fn truncate(&mut self, len: usize) {
        if self.spilled {
            self.heap.truncate(len);
        } else {
            self.len = self.len.min(len);
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Buf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Sink for Buf {
    #[inline]
    fn len(&self) -> usize {
        Buf::len(self)
    }
    #[inline]
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Buf::extend_from_slice(self, bytes)
    }
    #[inline]
    fn truncate(&mut self, len: usize) {
        Buf::truncate(self, len)
    }
    #[inline]
    fn as_slice(&self) -> &[u8] {
        Buf::as_slice(self)
    }
    #[inline]
    fn as_mut_slice(&mut self) -> &mut [u8] {
        Buf::as_mut_slice(self)
    }
    #[inline]
    fn extend_words(&mut self, words: &[u64; 3], len: usize) {
        debug_assert!(len <= 24, "extend_words takes at most 24 bytes");
        if !self.spilled && self.len + 24 <= Self::STACK && len <= 24 {
            // SAFETY: 24 bytes from `len` are within the stack bytes
            unsafe { store_words(self.stack.as_mut_ptr().add(self.len), words) };
            self.len += len;
        } else {
            words_as_bytes(self, words, len);
        }
    }
}

/// Where an `EtfWriter` puts its bytes: its own `Buf`, or a payload where it
/// is kept (`InPlace`).
pub trait Sink {
    fn len(&self) -> usize;
    fn extend_from_slice(&mut self, bytes: &[u8]);
    fn truncate(&mut self, len: usize);
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    /// Appends the first `len` bytes (at most 24) of `words` (little-endian
    /// bytes). Where 24 bytes fit, all three words are stored whole and only
    /// `len` kept: three stores instead of a copy of a byte array, whose
    /// wide loads would wait for the narrow stores that built it.
    #[inline]
    fn extend_words(&mut self, words: &[u64; 3], len: usize) {
        words_as_bytes(self, words, len);
    }
}

/// `Sink::extend_words` the slow way: the words as a byte array, copied.
fn words_as_bytes<S: Sink + ?Sized>(sink: &mut S, words: &[u64; 3], len: usize) {
    let mut bytes = [0u8; 24];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    sink.extend_from_slice(&bytes[..len.min(24)]);
}

/// Stores `words` at `dst` (24 bytes, any alignment).
///
/// # Safety
/// `dst` is valid for 24 bytes of writes.
#[inline(always)]
pub unsafe fn store_words(dst: *mut u8, words: &[u64; 3]) {
    unsafe {
        for (i, w) in words.iter().enumerate() {
            (dst.add(i * 8) as *mut u64).write_unaligned(w.to_le());
        }
    }
}

/// Writes into a payload where it is kept (a ring slot's), so the bytes
/// are never copied after: bytes written one store at a time and then
/// copied with wide loads make each load wait until those stores have
/// landed (a failed store-to-load forward), which perf showed as the
/// hottest instruction of a capture when payloads were encoded on the stack
/// and moved into the slot. The length and room are kept here, inline or
/// on the heap (`SmallVec` would look its inline/heap state up on every
/// append), and the length given to the payload when the writer is dropped;
/// the heap buffers come from `bufpool`.
pub struct InPlace<'p> {
    /// The payload, reached only through this raw pointer while the writer
    /// lives (a `&mut` kept next to `ptr` would be re-borrowed by every move
    /// of the writer and invalidate `ptr` under Rust's aliasing rules).
    p: *mut Payload,
    /// The payload's bytes: inline, or its heap buffer once spilled.
    ptr: *mut u8,
    len: usize,
    /// Room at `ptr`: an append within it is a bounds check and a copy,
    /// inline or not (the payload's own length is set on drop and when it
    /// grows).
    cap: usize,
    _borrow: std::marker::PhantomData<&'p mut Payload>,
}

impl<'p> InPlace<'p> {
    /// A writer appending to `p` (emptied first), the version byte written
    /// before the writer is made: the writer is then a plain value, which
    /// the compiler keeps in registers instead of building it in memory and
    /// copying it.
    #[inline(always)]
    pub fn with_version(p: &'p mut Payload) -> Self {
        p.clear();
        let p: *mut Payload = p;
        // SAFETY: `p` comes from a live `&mut`, held for `'p` by `_borrow`;
        // every payload has room for at least one byte
        let (ptr, cap) = unsafe {
            let ptr = (*p).as_mut_ptr();
            ptr.write(VERSION);
            (ptr, (*p).capacity())
        };
        InPlace {
            p,
            ptr,
            len: 1,
            cap,
            _borrow: std::marker::PhantomData,
        }
    }

    /// The payload itself (for the slow path).
    #[inline]
    fn payload(&mut self) -> &mut Payload {
        // SAFETY: the pointer is the `&'p mut` this writer was made from,
        // and `&mut self` makes this the only use of it
        unsafe { &mut *self.p }
    }

    /// Moves the bytes to a pooled buffer of the class `len + bytes` needs
    /// (the old buffer, if any, goes back to the pool), then appends. A
    /// payload's first buffer is of the class the last payload that spilled
    /// on this thread ended in, when that is bigger (`LAST_SPILL`, at most
    /// the pool's largest class): a run of big terms goes straight to its
    /// size instead of through each class.
    #[cold]
    #[inline(never)]
    fn grow_and_extend(&mut self, bytes: &[u8]) {
        let len = self.len;
        let first = self.cap <= INLINE_PAYLOAD;
        let need = len + bytes.len();
        let need = if first {
            need.max(LAST_SPILL.get().min(crate::bufpool::MAX_CLASS))
        } else {
            need
        };
        let mut v = crate::bufpool::take(need);
        // SAFETY: the first `len` bytes at `ptr` were written by us
        v.extend_from_slice(unsafe { std::slice::from_raw_parts(self.ptr, len) });
        v.extend_from_slice(bytes);
        let p = self.payload();
        // SAFETY: as above (the old storage's length, for it to be dropped whole)
        unsafe { p.set_len(len) };
        let old = std::mem::replace(p, Payload::from_vec(v));
        if old.spilled() {
            crate::bufpool::give(old.into_vec());
        }
        let p = self.payload();
        let (ptr, cap, len) = (p.as_mut_ptr(), p.capacity(), p.len());
        (self.ptr, self.cap, self.len) = (ptr, cap, len);
    }
}

thread_local! {
    /// The length of the last payload that spilled on this thread.
    static LAST_SPILL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Drop for InPlace<'_> {
    #[inline]
    fn drop(&mut self) {
        let len = self.len;
        if self.cap > INLINE_PAYLOAD {
            LAST_SPILL.set(len);
        }
        // SAFETY: the first `len` bytes were written by us, within `cap`
        unsafe { self.payload().set_len(len) };
    }
}

impl Sink for InPlace<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() <= self.cap {
            // SAFETY: within the storage's room (checked above); no overlap
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.len), bytes.len());
            }
            self.len += bytes.len();
            return;
        }
        self.grow_and_extend(bytes);
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    #[inline]
    fn extend_words(&mut self, words: &[u64; 3], len: usize) {
        debug_assert!(len <= 24, "extend_words takes at most 24 bytes");
        if self.len + 24 <= self.cap && len <= 24 {
            // SAFETY: 24 bytes from `len` are within the storage's room
            unsafe { store_words(self.ptr.add(self.len), words) };
            self.len += len;
        } else {
            words_as_bytes(self, words, len);
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by us
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `self` is borrowed mutably
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

#[derive(Debug, Default, Clone)]
pub struct EtfWriter<S: Sink = Buf> {
    pub buf: S,
}

impl EtfWriter {
    #[inline]
    pub fn new() -> Self {
        EtfWriter {
            buf: Buf::default(),
        }
    }

    /// A writer whose buffer starts with the version byte.
    #[inline]
    pub fn with_version() -> Self {
        let mut w = EtfWriter::new();
        w.buf.push(VERSION);
        w
    }

    pub fn into_bytes(self) -> Vec<u8> {
        if self.buf.spilled {
            self.buf.heap
        } else {
            self.buf.as_slice().to_vec()
        }
    }

    #[inline]
    pub fn into_payload(self) -> Payload {
        if self.buf.spilled {
            Payload::from_vec(self.buf.heap)
        } else {
            Payload::from_buf_and_len(self.buf.stack, self.buf.len)
        }
    }
}

impl<'p> EtfWriter<InPlace<'p>> {
    /// A writer into `payload` where it is (emptied), version byte first.
    #[inline(always)]
    pub fn into_payload_at(payload: &'p mut Payload) -> Self {
        EtfWriter {
            buf: InPlace::with_version(payload),
        }
    }
}

impl<S: Sink> EtfWriter<S> {
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    #[inline]
    pub fn int(&mut self, v: i64) {
        if (0..=255).contains(&v) {
            self.buf.push(SMALL_INTEGER_EXT);
            self.buf.push(v as u8);
        } else if v >= i32::MIN as i64 && v <= i32::MAX as i64 {
            self.buf.push(INTEGER_EXT);
            self.buf.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            self.big(v < 0, v.unsigned_abs());
        }
    }

    #[inline]
    pub fn uint(&mut self, v: u64) {
        if v <= i32::MAX as u64 {
            self.int(v as i64);
        } else {
            self.big(false, v);
        }
    }

    fn big(&mut self, negative: bool, mut magnitude: u64) {
        let mut digits = [0u8; 8];
        let mut n = 0;
        while magnitude > 0 {
            digits[n] = (magnitude & 0xff) as u8;
            magnitude >>= 8;
            n += 1;
        }
        self.buf.push(SMALL_BIG_EXT);
        self.buf.push(n as u8);
        self.buf.push(negative as u8);
        self.buf.extend_from_slice(&digits[..n]);
    }

    #[inline]
    pub fn float(&mut self, v: f64) {
        self.buf.push(NEW_FLOAT_EXT);
        self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    /// An atom from its Latin-1 name (what `enif_get_atom` gives on OTP 25).
    #[inline]
    pub fn atom_latin1(&mut self, name: &[u8]) {
        if name.len() <= 255 {
            self.buf.push(SMALL_ATOM_EXT);
            self.buf.push(name.len() as u8);
        } else {
            self.buf.push(ATOM_EXT);
            self.buf
                .extend_from_slice(&(name.len() as u16).to_be_bytes());
        }
        self.buf.extend_from_slice(name);
    }

    /// An atom from a UTF-8 name.
    pub fn atom(&mut self, name: &str) {
        if name.len() <= 255 {
            self.buf.push(SMALL_ATOM_UTF8_EXT);
            self.buf.push(name.len() as u8);
        } else {
            self.buf.push(ATOM_UTF8_EXT);
            self.buf
                .extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
    }

    #[inline]
    pub fn tuple_header(&mut self, arity: usize) {
        if arity <= 255 {
            self.buf.push(SMALL_TUPLE_EXT);
            self.buf.push(arity as u8);
        } else {
            self.buf.push(LARGE_TUPLE_EXT);
            self.buf.extend_from_slice(&(arity as u32).to_be_bytes());
        }
    }

    #[inline]
    pub fn nil(&mut self) {
        self.buf.push(NIL_EXT);
    }

    /// Writes a list header with a placeholder length; returns where to patch it.
    #[inline]
    pub fn list_header_placeholder(&mut self) -> usize {
        self.buf.push(LIST_EXT);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        at
    }

    #[inline]
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf.as_mut_slice()[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn map_header_placeholder(&mut self) -> usize {
        self.buf.push(MAP_EXT);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        at
    }

    #[inline]
    pub fn binary(&mut self, bytes: &[u8]) {
        self.buf.push(BINARY_EXT);
        self.buf
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// Raw bytes of an already encoded term (without its version byte).
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_slice()
    }

    pub fn raw(&mut self, encoded: &[u8]) {
        let body = if encoded.first() == Some(&VERSION) {
            &encoded[1..]
        } else {
            encoded
        };
        self.buf.extend_from_slice(body);
    }

    /// `{:truncated, size}`: stands in for a term larger than the budget.
    pub fn truncated(&mut self, size: u64) {
        self.tuple_header(2);
        self.atom("truncated");
        self.uint(size);
    }

    /// `{:truncated, reason_atom}`: stands in for a term cut for another reason
    /// (`:max_depth`).
    pub fn truncated_because(&mut self, reason: &str) {
        self.tuple_header(2);
        self.atom("truncated");
        self.atom(reason);
    }
}

/// A 64-bit hash of bytes (used to match a sent message with its receive).
/// Multiply-rotate over 8-byte words: fast, good enough for matching keys.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^ (h >> 29)
}

fn read_atom(bytes: &[u8], pos: &mut usize) -> Result<String> {
    let bad = || Error::Corrupt("atom in pid encoding".into());
    let tag = *bytes.get(*pos).ok_or_else(bad)?;
    *pos += 1;
    let len = match tag {
        SMALL_ATOM_UTF8_EXT | SMALL_ATOM_EXT => {
            let l = *bytes.get(*pos).ok_or_else(bad)? as usize;
            *pos += 1;
            l
        }
        ATOM_UTF8_EXT | ATOM_EXT => {
            let b = bytes.get(*pos..*pos + 2).ok_or_else(bad)?;
            *pos += 2;
            u16::from_be_bytes([b[0], b[1]]) as usize
        }
        _ => return Err(bad()),
    };
    let name = bytes.get(*pos..*pos + len).ok_or_else(bad)?;
    *pos += len;
    Ok(if tag == ATOM_EXT || tag == SMALL_ATOM_EXT {
        name.iter().map(|&b| b as char).collect()
    } else {
        String::from_utf8_lossy(name).into_owned()
    })
}

/// Whether a process exit reason (its `term_to_binary` bytes) is one OTP
/// counts as normal: `normal`, `shutdown` or `{shutdown, _}`. Anything
/// else, bytes that do not decode included, is abnormal.
pub fn is_normal_exit_reason(bytes: &[u8]) -> bool {
    let mut pos = usize::from(bytes.first() == Some(&VERSION));
    match bytes.get(pos) {
        Some(&SMALL_TUPLE_EXT) => {
            if bytes.get(pos + 1) != Some(&2) {
                return false;
            }
            pos += 2;
            matches!(read_atom(bytes, &mut pos).as_deref(), Ok("shutdown"))
        }
        Some(_) => matches!(
            read_atom(bytes, &mut pos).as_deref(),
            Ok("normal" | "shutdown")
        ),
        None => false,
    }
}

/// Reads an atom's name from `term_to_binary(atom)` bytes.
pub fn parse_atom(bytes: &[u8]) -> Result<String> {
    let mut pos = usize::from(bytes.first() == Some(&VERSION));
    read_atom(bytes, &mut pos)
}

fn read_u32(bytes: &[u8], pos: &mut usize) -> Result<u32> {
    let b = bytes
        .get(*pos..*pos + 4)
        .ok_or_else(|| Error::Corrupt("short pid encoding".into()))?;
    *pos += 4;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a pid from `term_to_binary(pid)` bytes (NEW_PID_EXT or PID_EXT).
pub fn parse_pid(bytes: &[u8]) -> Result<PidRec> {
    let mut pos = usize::from(bytes.first() == Some(&VERSION));
    let tag = *bytes
        .get(pos)
        .ok_or_else(|| Error::Corrupt("empty pid encoding".into()))?;
    pos += 1;
    if tag != NEW_PID_EXT && tag != PID_EXT {
        return Err(Error::Corrupt(format!("not a pid encoding (tag {tag})")));
    }
    let node = read_atom(bytes, &mut pos)?;
    let id = read_u32(bytes, &mut pos)?;
    let serial = read_u32(bytes, &mut pos)?;
    let creation = if tag == NEW_PID_EXT {
        read_u32(bytes, &mut pos)?
    } else {
        *bytes
            .get(pos)
            .ok_or_else(|| Error::Corrupt("short pid encoding".into()))? as u32
    };
    Ok(PidRec {
        node: node.into(),
        id,
        serial,
        creation,
    })
}

/// `term_to_binary`-style bytes (with version byte) for a stored pid.
pub fn encode_pid(pid: &PidRec) -> Vec<u8> {
    let mut w = EtfWriter::with_version();
    w.buf.push(NEW_PID_EXT);
    w.atom(&pid.node);
    w.buf.extend_from_slice(&pid.id.to_be_bytes());
    w.buf.extend_from_slice(&pid.serial.to_be_bytes());
    w.buf.extend_from_slice(&pid.creation.to_be_bytes());
    w.into_bytes()
}

/// Latin-1 bytes (as atoms come out of `enif_get_atom`) to a Rust string.
pub fn latin1_to_string(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        // ASCII is valid UTF-8; the common case costs one copy.
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        bytes.iter().map(|&b| b as char).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_exit_reasons_are_told_from_abnormal_ones() {
        let term = |f: &dyn Fn(&mut EtfWriter)| {
            let mut w = EtfWriter::with_version();
            f(&mut w);
            w.into_bytes()
        };
        for normal in ["normal", "shutdown"] {
            assert!(is_normal_exit_reason(&term(&|w| w.atom(normal))));
        }
        assert!(is_normal_exit_reason(&term(&|w| {
            w.tuple_header(2);
            w.atom("shutdown");
            w.int(3);
        })));
        for abnormal in [
            term(&|w| w.atom("killed")),
            term(&|w| {
                w.tuple_header(2);
                w.atom("badarg");
                w.nil();
            }),
            term(&|w| {
                w.tuple_header(3);
                w.atom("shutdown");
                w.nil();
                w.nil();
            }),
            vec![131],
            vec![],
            vec![131, 104, 2],
        ] {
            assert!(!is_normal_exit_reason(&abnormal), "{abnormal:?}");
        }
    }

    #[test]
    fn pid_round_trip() {
        let p = PidRec {
            node: "a@b".into(),
            id: 77,
            serial: 3,
            creation: 1_700_000_000,
        };
        assert_eq!(parse_pid(&encode_pid(&p)).unwrap(), p);
    }

    #[test]
    fn parse_pid_rejects_garbage() {
        assert!(parse_pid(&[]).is_err());
        assert!(parse_pid(&[131, 97, 1]).is_err());
        assert!(parse_pid(&[131, 88, 119, 200, 1]).is_err());
    }

    #[test]
    fn integers_pick_the_smallest_encoding() {
        let mut w = EtfWriter::new();
        w.int(5);
        assert_eq!(w.buf.as_slice(), &[SMALL_INTEGER_EXT, 5]);
        let mut w = EtfWriter::new();
        w.int(-1);
        assert_eq!(w.buf.as_slice(), &[INTEGER_EXT, 255, 255, 255, 255]);
        let mut w = EtfWriter::new();
        w.int(1 << 40);
        assert_eq!(w.buf.as_slice(), &[SMALL_BIG_EXT, 6, 0, 0, 0, 0, 0, 0, 1]);
        let mut w = EtfWriter::new();
        w.int(i64::MIN);
        assert_eq!(w.buf[..3], [SMALL_BIG_EXT, 8, 1]);
    }

    #[test]
    fn buffer_spills_to_the_heap_and_keeps_every_byte() {
        let mut w = EtfWriter::new();
        let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        w.buf.extend_from_slice(&big[..100]);
        w.buf.extend_from_slice(&big[100..]);
        let at = 10;
        w.buf[at..at + 4].copy_from_slice(&[9, 9, 9, 9]);
        let mut want = big.clone();
        want[10..14].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(w.clone().into_bytes(), want);
        assert_eq!(w.into_payload().as_slice(), &want[..]);
    }

    /// The same items through an owned `Buf` and through `InPlace` into a
    /// payload: inline, across the spill, with patches and truncation.
    #[test]
    fn in_place_writes_what_an_own_buffer_writes() {
        let big: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let words = [
            0x0807_0605_0403_0201u64,
            0x100f_0e0d_0c0b_0a09,
            0x1817_1615_1413_1211,
        ];
        enum Op {
            Bytes(Vec<u8>),
            Words(usize),
            Truncate(usize),
        }
        use Op::*;
        let scenarios = [
            vec![Bytes(b"abc".to_vec())],
            vec![Words(5)],
            // exactly inline
            vec![Words(24), Bytes(b"0123456789012345678901".to_vec())],
            // spills
            vec![Words(3), Bytes(big[..60].to_vec()), Words(7)],
            // inline room for 8: the words take the slow way
            vec![Bytes(big[..40].to_vec()), Words(20)],
            vec![Bytes(big.clone()), Truncate(100), Bytes(b"end".to_vec())],
            vec![Bytes(big[..30].to_vec()), Truncate(10), Words(24)],
            // through several buffer classes (each move keeps the bytes)
            vec![
                Bytes(big.clone()),
                Words(24),
                Bytes(big.repeat(3)),
                Words(9),
                Bytes(big.repeat(30)),
                Truncate(500),
                Bytes(big.repeat(2)),
            ],
        ];
        fn run<S: Sink>(w: &mut EtfWriter<S>, ops: &[Op], words: &[u64; 3]) {
            for op in ops {
                match op {
                    Bytes(b) => w.buf.extend_from_slice(b),
                    Words(n) => w.buf.extend_words(words, *n),
                    Truncate(n) => w.truncate(*n),
                }
            }
        }
        // into an inline payload, and into one already on the heap (a
        // payload written again)
        let starts = [
            Payload::from_slice(b"left over"),
            Payload::from_vec(vec![7; 1000]),
        ];
        for (i, ops) in scenarios.iter().enumerate() {
            for start in &starts {
                let mut own = EtfWriter::with_version();
                run(&mut own, ops, &words);
                let mut payload = start.clone();
                {
                    let mut at = EtfWriter::into_payload_at(&mut payload);
                    run(&mut at, ops, &words);
                    assert_eq!(at.buf.as_slice(), own.buf.as_slice(), "scenario {i}");
                    assert_eq!(at.len(), own.len(), "scenario {i}");
                }
                assert_eq!(
                    payload.as_slice(),
                    own.into_payload().as_slice(),
                    "scenario {i}"
                );
                assert_eq!(payload[0], VERSION);
                assert!(payload.len() <= payload.capacity());
            }
        }
    }

    /// A payload's first heap buffer is as big as the last one that spilled
    /// on its thread ended up (no walk through each class for a run of big
    /// terms); a payload that stays inline does not change that.
    #[test]
    fn a_spill_starts_at_the_size_the_last_one_reached() {
        std::thread::spawn(|| {
            let mut first = Payload::new();
            {
                let mut w = EtfWriter::into_payload_at(&mut first);
                w.buf.extend_from_slice(&[1; 3000]);
            }
            assert_eq!(first.len(), 3001);
            let mut small = Payload::new();
            {
                let mut w = EtfWriter::into_payload_at(&mut small);
                w.buf.extend_from_slice(&[2; 10]);
            }
            assert!(!small.spilled());
            let mut next = Payload::new();
            {
                let mut w = EtfWriter::into_payload_at(&mut next);
                w.buf.extend_from_slice(&[3; 100]);
                assert!(w.buf.cap >= 3001, "first buffer: {} bytes", w.buf.cap);
                w.buf.extend_from_slice(&[4; 2000]);
            }
            let mut want = vec![VERSION];
            want.extend_from_slice(&[3; 100]);
            want.extend_from_slice(&[4; 2000]);
            assert_eq!(next.as_slice(), &want[..]);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn hash_differs_for_different_bytes() {
        assert_ne!(hash_bytes(b"hello"), hash_bytes(b"hellp"));
        assert_ne!(hash_bytes(b""), hash_bytes(b"\0"));
        assert_eq!(
            hash_bytes(b"same bytes here!"),
            hash_bytes(b"same bytes here!")
        );
    }

    #[test]
    fn latin1_names() {
        assert_eq!(latin1_to_string(b"Elixir.Foo"), "Elixir.Foo");
        assert_eq!(latin1_to_string(&[0x63, 0xe9]), "cé");
    }
}
