//! Posting lists: the secondary indexes of pid, type, module/function/arity
//! and state hold, per key prefix and per written batch, one entry
//! `prefix · first id` whose value lists the batch's ids under that prefix
//! (delta varints). A posting never spans more than `SPAN` of id space, so a
//! scan of `[lo, hi]` reads the entries from `lo − SPAN` and merges them in
//! order. One RocksDB key per prefix per batch instead of one per event.

use crate::{Error, Result};

/// ~1.07 s of id space (ids are nanoseconds).
pub const SPAN: u64 = 1 << 30;
/// The narrower span of the `by_call` pair lists (~262 µs): looking up the
/// exit of one call reads only the lists written around its entry. A
/// batch's pairs are split into runs no wider than this, and a lookup reads
/// the lists that begin up to this far before the call: ~4 lists and 25 KB
/// in a store written at ~1.5 M events/s, against ~10 and 69 KB for
/// 1.05 ms. The split costs at most one key per span per writer (~3,800
/// keys a second each), whatever the load.
pub const CALL_SPAN: u64 = 1 << 18;
/// The span of the pair lists written by schema versions 1 to 3 (~16.8 ms):
/// a lookup in a store upgraded from those reads this far back for the
/// calls that such lists may hold (see `Store::call_window`). Its window
/// held ~31 lists and 214 KB at a million events a second, and an entry's
/// `event/1` cost 38 µs at the median against 12 µs for an exit.
pub const CALL_SPAN_V3: u64 = 1 << 24;

/// Encodes sorted ids (all within `SPAN` of the first, which is the id
/// in the entry's key).
pub fn encode(ids: &[u64]) -> Vec<u8> {
    encode_from(ids.first().copied().unwrap_or(0), ids)
}

/// Encodes sorted ids, all ≥ `first` and within `SPAN` of it, relative to
/// `first` (the id in the entry's key).
pub fn encode_from(first: u64, ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 3 + 4);
    varint(&mut out, ids.len() as u64);
    let mut prev = first;
    for &id in ids {
        varint(&mut out, id - prev);
        prev = id;
    }
    out
}

/// How many ids a posting list holds (its first varint), without
/// decoding them.
pub fn len(bytes: &[u8]) -> Result<u64> {
    read_varint(bytes, &mut 0)
}

/// The ids of a posting whose first id is `first`.
pub fn decode(first: u64, bytes: &[u8]) -> Result<Vec<u64>> {
    let mut pos = 0;
    let n = read_varint(bytes, &mut pos)? as usize;
    if n > bytes.len() {
        return Err(Error::Corrupt("posting list length".into()));
    }
    let mut out = Vec::with_capacity(n);
    let mut cur = first;
    for _ in 0..n {
        cur = cur
            .checked_add(read_varint(bytes, &mut pos)?)
            .ok_or_else(|| Error::Corrupt("posting list delta".into()))?;
        out.push(cur);
    }
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b
            .get(*pos)
            .ok_or_else(|| Error::Corrupt("posting list truncated".into()))?;
        *pos += 1;
        if shift >= 64 {
            return Err(Error::Corrupt("posting list varint".into()));
        }
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

/// The biggest stored event a covering list holds itself. A bigger one is
/// listed by reference (its id, with no bytes) and read from the events
/// column family: its bytes are written, flushed and compacted once, not
/// twice, and the extra point read is small beside decoding it. (Schema
/// version 3; earlier versions covered every event.)
pub const COVERED_MAX: usize = 256;

/// A covering list (`by_pid`): for each event its id (delta from the
/// previous, the first from `first`) and its stored bytes, so a process's
/// events are read in one sequential scan. An event listed by reference
/// (`None`) has a length of 0 and no bytes (a stored event is never empty).
/// Appended to `out`.
pub fn encode_covering(out: &mut Vec<u8>, first: u64, events: &[(u64, Option<&[u8]>)]) {
    let bytes: usize = events.iter().map(|e| e.1.map_or(0, <[u8]>::len) + 4).sum();
    out.reserve(bytes + 5);
    out.push(PID_EVENTS);
    varint(out, events.len() as u64);
    let mut prev = first;
    for &(id, ev) in events {
        varint(out, id - prev);
        let ev = ev.unwrap_or_default();
        varint(out, ev.len() as u64);
        out.extend_from_slice(ev);
        prev = id;
    }
}

/// A covering list's entries: id and stored bytes (`None`: by reference).
pub type CoveredEvents<'a> = Vec<(u64, Option<&'a [u8]>)>;

fn decode_covering(first: u64, bytes: &[u8]) -> Result<CoveredEvents<'_>> {
    let mut pos = 0;
    let n = read_varint(bytes, &mut pos)? as usize;
    if n > bytes.len() {
        return Err(Error::Corrupt("event list length".into()));
    }
    let mut out = Vec::with_capacity(n);
    let mut cur = first;
    for _ in 0..n {
        cur = cur
            .checked_add(read_varint(bytes, &mut pos)?)
            .ok_or_else(|| Error::Corrupt("event list delta".into()))?;
        let len = read_varint(bytes, &mut pos)? as usize;
        let ev = bytes
            .get(
                pos..pos
                    .checked_add(len)
                    .ok_or_else(|| Error::Corrupt("event list entry".into()))?,
            )
            .ok_or_else(|| Error::Corrupt("event list truncated".into()))?;
        pos += len;
        out.push((cur, (len > 0).then_some(ev)));
    }
    Ok(out)
}

/// `by_pid` values start with a format byte: ids only, or the events.
pub const PID_IDS: u8 = 0;
pub const PID_EVENTS: u8 = 1;

/// A `by_pid` list: ids (events fetched by id) or the events themselves
/// (`None`: listed by reference, fetched by id).
pub enum PidList<'a> {
    Ids(Vec<u64>),
    Events(CoveredEvents<'a>),
}

pub fn encode_pid_ids(ids: &[u64]) -> Vec<u8> {
    let mut out = vec![PID_IDS];
    out.extend(encode(ids));
    out
}

pub fn decode_pid_list(first: u64, bytes: &[u8]) -> Result<PidList<'_>> {
    match bytes.split_first() {
        Some((&PID_IDS, rest)) => Ok(PidList::Ids(decode(first, rest)?)),
        Some((&PID_EVENTS, rest)) => Ok(PidList::Events(decode_covering(first, rest)?)),
        _ => Err(Error::Corrupt("by_pid list format".into())),
    }
}

/// The ids of a list of column family `cf`.
pub fn decode_ids(cf: &str, first: u64, bytes: &[u8]) -> Result<Vec<u64>> {
    if cf == super::CF_BY_PID {
        Ok(match decode_pid_list(first, bytes)? {
            PidList::Ids(ids) => ids,
            PidList::Events(evs) => evs.into_iter().map(|e| e.0).collect(),
        })
    } else {
        decode(first, bytes)
    }
}

/// `(call id, exit id)` pairs sorted by call id, as fixed-width big-endian
/// records so a lookup binary-searches the value without decoding it.
pub fn encode_pairs(pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.len() * 16);
    for &(call, exit) in pairs {
        out.extend_from_slice(&call.to_be_bytes());
        out.extend_from_slice(&exit.to_be_bytes());
    }
    out
}

fn pair_at(bytes: &[u8], i: usize) -> (u64, u64) {
    let r = &bytes[i * 16..i * 16 + 16];
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&r[..8]);
    b.copy_from_slice(&r[8..]);
    (u64::from_be_bytes(a), u64::from_be_bytes(b))
}

pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<(u64, u64)>> {
    if !bytes.len().is_multiple_of(16) {
        return Err(Error::Corrupt("call list length".into()));
    }
    Ok((0..bytes.len() / 16).map(|i| pair_at(bytes, i)).collect())
}

/// The second ids paired with `call` in one pair list (binary search): the
/// exits of the call in an exit list, its children in a kind list.
pub fn exits_in(bytes: &[u8], call: u64) -> Result<Vec<u64>> {
    if !bytes.len().is_multiple_of(16) {
        return Err(Error::Corrupt("call list length".into()));
    }
    let n = bytes.len() / 16;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if pair_at(bytes, mid).0 < call {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut out = Vec::new();
    while lo < n && pair_at(bytes, lo).0 == call {
        out.push(pair_at(bytes, lo).1);
        lo += 1;
    }
    Ok(out)
}

/// The key of a pair list: first and last call id.
pub fn pair_key(first: u64, last: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&first.to_be_bytes());
    k[8..].copy_from_slice(&last.to_be_bytes());
    k
}

/// The key of a pair list of schema 5: `pair_key`, the kind byte of the
/// link from the first ids to the second (`EXITS`: an entry's exits; else
/// a `LinkKind`, the children of a call or a message: `calls`, `causes`)
/// and the list's smallest second id. (That id makes the key unique: a
/// call's children come in many batches, and lists of the same first and
/// last parent replaced each other; so did the 16-byte exit lists of
/// schema 4 when two batches held exits of the same calls.)
pub fn kind_pair_key(first: u64, last: u64, kind: u8, child: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..16].copy_from_slice(&pair_key(first, last));
    k[16] = kind;
    k[17..].copy_from_slice(&child.to_be_bytes());
    k
}

/// The kind byte of an exit list.
pub const EXITS: u8 = 0;

/// A pair list key's first and last id and kind byte (`None`: an exit
/// list, of 16 bytes before schema 5); `None` for a key of another shape.
pub fn parse_pair_key(k: &[u8]) -> Option<(u64, u64, Option<u8>)> {
    let id = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
    match k.len() {
        16 => Some((id(&k[..8])?, id(&k[8..16])?, None)),
        25 => Some((
            id(&k[..8])?,
            id(&k[8..16])?,
            (k[16] != EXITS).then_some(k[16]),
        )),
        _ => None,
    }
}

/// Splits `pairs` (sorted) into runs whose first ids span less than
/// `CALL_SPAN`, and hands each run with its key (`kind` `None`: exits) to
/// `put`.
pub fn pair_runs(pairs: &[(u64, u64)], kind: Option<u8>, mut put: impl FnMut(Vec<u8>, Vec<u8>)) {
    let mut start = 0;
    for i in 0..=pairs.len() {
        if i == pairs.len() || pairs[i].0 - pairs[start].0 >= CALL_SPAN {
            if i > start {
                let (first, last) = (pairs[start].0, pairs[i - 1].0);
                let child = pairs[start..i].iter().map(|p| p.1).min().unwrap_or(0);
                let key = kind_pair_key(first, last, kind.unwrap_or(EXITS), child);
                put(key.to_vec(), encode_pairs(&pairs[start..i]));
            }
            start = i;
        }
    }
}

/// Splits sorted ids into runs no wider than `SPAN`.
pub fn runs(ids: &[u64]) -> Vec<&[u64]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..ids.len() {
        if ids[i] - ids[start] >= SPAN {
            out.push(&ids[start..i]);
            start = i;
        }
    }
    if !ids.is_empty() {
        out.push(&ids[start..]);
    }
    out
}
