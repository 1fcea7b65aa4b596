//! RocksDB storage: one column family of events keyed by their time-ordered id,
//! and secondary indexes designed for bounded range scans.
//!
//! | column family | key                                               | value |
//! |---------------|---------------------------------------------------|-------|
//! | `events`      | id (8, big-endian)                                | `DiskEvent` (msgpack array) |
//! | `by_pid`      | pid number (4) · serial (4) · first id (8)        | the batch's events of that process (ids + stored bytes: a covering list) |
//! | `by_mfa`      | module (4) · function (4) · arity (4) · first id (8) | ids (posting list; names interned) |
//! | `by_type`     | type (1) · first id (8)                           | ids (posting list) |
//! | `by_call`     | first call id (8) · last call id (8)              | (call id, exit id) pairs |
//! | `links`       | from id (8) · kind (1) · to id (8)                | — |
//! | `state`       | pid number (4) · serial (4) · first id (8)        | ids of state changes (posting list) |
//! | `meta`        | `schema_version`, `application`, `name` · id (4)  | value |
//!
//! Every scan sets both iterate bounds, so it never runs past its prefix.
//!
//! Links are stored once where another key already holds the relation: an
//! event's capture-time parent is in the event (`parent_id`, `parent_link`)
//! and only the reverse link (`calls`, `causes`) is a `links` key; an exit
//! `completes` the entry named by its call id and the entry finds its exit in
//! `by_call`. Only the correlator's matches (`receives`, `exit_of`) are stored
//! in both directions. Module, function and node names are interned: the
//! `meta` table maps small integers to names, written in the same batch as the
//! first event that uses them.

use crate::event::{EventType, Link, LinkKind, Name, PidRec, Source, StoredEvent};
use crate::ids::id_to_wall_ns;
use crate::store_faults;
use crate::{Error, Result};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::RwLock;

pub const SCHEMA_VERSION: u32 = 1;
pub const CF_EVENTS: &str = "events";
pub const CF_BY_PID: &str = "by_pid";
pub const CF_BY_MFA: &str = "by_mfa";
pub const CF_BY_TYPE: &str = "by_type";
pub const CF_BY_CALL: &str = "by_call";
pub const CF_LINKS: &str = "links";
pub const CF_STATE: &str = "state";
pub const CF_META: &str = "meta";
pub const ALL_CFS: [&str; 8] = [
    CF_EVENTS, CF_BY_PID, CF_BY_MFA, CF_BY_TYPE, CF_BY_CALL, CF_LINKS, CF_STATE, CF_META,
];
const META_SCHEMA: &[u8] = b"schema_version";
const META_NAME: &[u8] = b"name:";
const META_APP: &[u8] = b"application";
const META_FLOOR: &[u8] = b"retention_floor";
const APP_NAME: &[u8] = b"causeway";

/// Key layouts, shared by the writer and the queries.
pub mod keys {
    pub fn id(id: u64) -> [u8; 8] {
        id.to_be_bytes()
    }

    /// The trailing event id of an index key.
    pub fn trailing_id(key: &[u8]) -> Option<u64> {
        let n = key.len();
        if n < 8 {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[n - 8..]);
        Some(u64::from_be_bytes(b))
    }

    pub fn pid(pid_key: [u8; 8], id: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&pid_key);
        k[8..].copy_from_slice(&id.to_be_bytes());
        k
    }

    /// `module · [function · [arity]]` (interned name ids).
    pub fn mfa_prefix(module: u32, function: Option<u32>, arity: Option<u32>) -> Vec<u8> {
        let mut k = Vec::with_capacity(20);
        k.extend_from_slice(&module.to_be_bytes());
        if let Some(f) = function {
            k.extend_from_slice(&f.to_be_bytes());
            if let Some(a) = arity {
                k.extend_from_slice(&a.to_be_bytes());
            }
        }
        k
    }

    pub fn mfa(module: u32, function: u32, arity: u32, id: u64) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..4].copy_from_slice(&module.to_be_bytes());
        k[4..8].copy_from_slice(&function.to_be_bytes());
        k[8..12].copy_from_slice(&arity.to_be_bytes());
        k[12..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn typed(kind: u8, id: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = kind;
        k[1..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn call(call_id: u64, id: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&call_id.to_be_bytes());
        k[8..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn link(from: u64, kind: u8, to: u64) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[..8].copy_from_slice(&from.to_be_bytes());
        k[8] = kind;
        k[9..].copy_from_slice(&to.to_be_bytes());
        k
    }

    /// The smallest key greater than every key starting with `prefix`.
    pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }
}

/// Posting lists: the secondary indexes of pid, type, module/function/arity
/// and state hold, per key prefix and per written batch, one entry
/// `prefix · first id` whose value lists the batch's ids under that prefix
/// (delta varints). A posting never spans more than `SPAN` of id space, so a
/// scan of `[lo, hi]` reads the entries from `lo − SPAN` and merges them in
/// order. One RocksDB key per prefix per batch instead of one per event.
pub mod postings {
    use crate::{Error, Result};

    /// ~1.07 s of id space (ids are nanoseconds).
    pub const SPAN: u64 = 1 << 30;
    /// The narrower span of the `by_call` pair lists (~16.8 ms): looking up
    /// the exit of one call reads only the lists written around its entry.
    pub const CALL_SPAN: u64 = 1 << 24;

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

    /// A covering list (`by_pid`): for each event its id (delta from the
    /// previous, the first from `first`) and its stored bytes, so a process's
    /// events are read in one sequential scan.
    pub fn encode_covering(first: u64, events: &[(u64, &[u8])]) -> Vec<u8> {
        let bytes: usize = events.iter().map(|e| e.1.len() + 4).sum();
        let mut out = Vec::with_capacity(bytes + 5);
        out.push(PID_EVENTS);
        varint(&mut out, events.len() as u64);
        let mut prev = first;
        for &(id, ev) in events {
            varint(&mut out, id - prev);
            varint(&mut out, ev.len() as u64);
            out.extend_from_slice(ev);
            prev = id;
        }
        out
    }

    fn decode_covering(first: u64, bytes: &[u8]) -> Result<Vec<(u64, &[u8])>> {
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
            out.push((cur, ev));
        }
        Ok(out)
    }

    /// `by_pid` values start with a format byte: ids only, or the events.
    pub const PID_IDS: u8 = 0;
    pub const PID_EVENTS: u8 = 1;

    /// A `by_pid` list: ids (events fetched by id) or the events themselves.
    pub enum PidList<'a> {
        Ids(Vec<u64>),
        Events(Vec<(u64, &'a [u8])>),
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

    /// The exits recorded for `call` in one pair list (binary search).
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
}

/// The column families that hold posting lists.
pub fn is_posting_cf(cf: &str) -> bool {
    matches!(cf, CF_BY_PID | CF_BY_TYPE | CF_BY_MFA | CF_STATE)
}

/// Limits on what a store keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Events older than this many nanoseconds are deleted.
    pub max_age_ns: Option<u64>,
    /// Oldest events are deleted while live data exceeds this many bytes.
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    pub fn is_active(&self) -> bool {
        self.max_age_ns.is_some() || self.max_bytes.is_some()
    }
}

/// What a retention pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionStats {
    pub events: u64,
    pub chunks: u64,
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub read_only: bool,
    /// Sync the WAL on every batch (slower; `flush` syncs anyway).
    pub sync_writes: bool,
    /// Keep each process's events a second time inside the `by_pid` index
    /// (the default): queries by pid read them in one scan, ~5× faster than a
    /// point lookup per event, for ~1.4× the bytes (`mix bench query`).
    pub covering_pid_index: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            read_only: false,
            sync_writes: false,
            covering_pid_index: true,
        }
    }
}

pub struct Store {
    db: DB,
    path: PathBuf,
    opts: StoreOptions,
    read_only: bool,
    write_opts: WriteOptions,
    names: RwLock<Names>,
    /// Batches are written under its read side, each retention chunk (scan,
    /// index trims, deletes) under its write side: a batch never lands
    /// between a chunk's scan and its deletes, and two retention passes
    /// never rewrite the same posting list from stale reads.
    retention_lock: RwLock<()>,
    /// Set on close: a retention pass stops between chunks and rounds.
    interrupted: std::sync::atomic::AtomicBool,
    /// The newest event id written, and (under its lock) the newest the
    /// durability mark on disk names (see `store_faults`).
    written_max: std::sync::atomic::AtomicU64,
    marked: std::sync::Mutex<u64>,
    /// Retention deleted every event below this id.
    floor: std::sync::atomic::AtomicU64,
    recovery_note: Option<String>,
    /// Test hook: runs between a retention chunk's scan and its deletes.
    #[cfg(test)]
    after_scan: std::sync::Mutex<Option<Box<dyn FnMut() + Send>>>,
}

/// Interned names (modules, functions, nodes): id 0 means "none". A slot
/// left empty (an id a store written by an earlier version allocated but never
/// persisted) reads as no name.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    names: Vec<Option<Name>>,
}

impl Names {
    /// The name, shared (no copy).
    fn shared(&self, id: u32) -> Option<&Name> {
        if id == 0 {
            None
        } else {
            self.names.get(id as usize - 1).and_then(Option::as_ref)
        }
    }
}

/// A pid on disk: node (name id), number, serial, creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DiskPid(u32, u32, u32, u32);

/// An event on disk (its id is the key). Times are deltas: `wall_ns` from the
/// time the id stands for (0..63 ns unless a burst ran ids ahead), and the
/// monotonic time by its offset to wall time (the same for a whole run), so
/// both compress to almost nothing.
/// Written borrowing the payload (`Cow::Borrowed`), read owning it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskEvent<'a> {
    kind: u8,
    wall_delta: i64,
    mono_offset: i64,
    pid: DiskPid,
    call_id: u64,
    parent_id: u64,
    parent_link: u8,
    module: u32,
    function: u32,
    arity: u32,
    peer: Option<DiskPid>,
    #[serde(serialize_with = "cow_bytes", deserialize_with = "cow_bytes_owned")]
    data: std::borrow::Cow<'a, [u8]>,
    source: u8,
}

#[allow(clippy::ptr_arg)] // serde's `serialize_with` hands over `&FieldType`
fn cow_bytes<S: serde::Serializer>(
    v: &std::borrow::Cow<'_, [u8]>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Reads msgpack `bin` (or an array of integers) into an owned payload.
fn cow_bytes_owned<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<std::borrow::Cow<'static, [u8]>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(
            self,
            v: Vec<u8>,
        ) -> std::result::Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> std::result::Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = a.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(V).map(std::borrow::Cow::Owned)
}

/// A reader of the MessagePack subset `DiskEvent`s are written in (arrays,
/// integers, nil, bin), for the hot read path: `rmp_serde` goes through
/// serde's dynamic dispatch for every field. Anything it does not expect
/// gives `None`, and the caller decodes with `rmp_serde` instead; a test
/// checks both agree on every shape of event.
struct MsgpackReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> MsgpackReader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(v)
    }

    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// Any integer, widened.
    fn int(&mut self) -> Option<i128> {
        Some(match self.byte()? {
            m @ 0x00..=0x7f => m as i128,
            m @ 0xe0..=0xff => m as i8 as i128,
            0xcc => self.byte()? as i128,
            0xcd => u16::from_be_bytes(self.be()?) as i128,
            0xce => u32::from_be_bytes(self.be()?) as i128,
            0xcf => u64::from_be_bytes(self.be()?) as i128,
            0xd0 => self.byte()? as i8 as i128,
            0xd1 => i16::from_be_bytes(self.be()?) as i128,
            0xd2 => i32::from_be_bytes(self.be()?) as i128,
            0xd3 => i64::from_be_bytes(self.be()?) as i128,
            _ => return None,
        })
    }

    fn num<T: TryFrom<i128>>(&mut self) -> Option<T> {
        T::try_from(self.int()?).ok()
    }

    fn array(&mut self) -> Option<usize> {
        Some(match self.byte()? {
            m @ 0x90..=0x9f => (m & 0x0f) as usize,
            0xdc => u16::from_be_bytes(self.be()?) as usize,
            0xdd => u32::from_be_bytes(self.be()?) as usize,
            _ => return None,
        })
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            0xc4 => self.byte()? as usize,
            0xc5 => u16::from_be_bytes(self.be()?) as usize,
            0xc6 => u32::from_be_bytes(self.be()?) as usize,
            _ => return None,
        };
        self.bytes(n)
    }

    fn pid(&mut self) -> Option<DiskPid> {
        if self.array()? != 4 {
            return None;
        }
        Some(DiskPid(self.num()?, self.num()?, self.num()?, self.num()?))
    }

    /// A whole `DiskEvent` (13 fields, as `rmp_serde` writes it), nothing after.
    fn disk_event(bytes: &'a [u8]) -> Option<DiskEvent<'static>> {
        let mut r = MsgpackReader { b: bytes, pos: 0 };
        if r.array()? != 13 {
            return None;
        }
        let d = DiskEvent {
            kind: r.num()?,
            wall_delta: r.num()?,
            mono_offset: r.num()?,
            pid: r.pid()?,
            call_id: r.num()?,
            parent_id: r.num()?,
            parent_link: r.num()?,
            module: r.num()?,
            function: r.num()?,
            arity: r.num()?,
            peer: if r.b.get(r.pos) == Some(&0xc0) {
                r.pos += 1;
                None
            } else {
                Some(r.pid()?)
            },
            data: std::borrow::Cow::Owned(r.bin()?.to_vec()),
            source: r.num()?,
        };
        (r.pos == bytes.len()).then_some(d)
    }
}

/// What RocksDB may hold in memory in this process, whatever is captured:
/// one block cache for every column family of every store (data, index and
/// filter blocks), and the memtables of every store charged to it (a write
/// buffer manager that flushes the biggest memtable once they pass
/// `MEMTABLE_CAP`). Without the charge, 8 column families × 2 memtables of
/// 64 MiB could hold 1 GiB beside the cache, and an overload soak's RSS grew
/// by 270 MB that no metric showed.
pub const STORAGE_MEMORY_CAP: u64 = 256 << 20;
const MEMTABLE_CAP: usize = 64 << 20;

/// The shared block cache, in 16 shards of 16 MiB (RocksDB's default for
/// this size is 64 shards of 4 MiB, and a block bigger than its shard is
/// read from the file again on every access).
fn block_cache() -> &'static rocksdb::Cache {
    static CACHE: std::sync::OnceLock<rocksdb::Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let mut o = rocksdb::LruCacheOptions::default();
        o.set_capacity(STORAGE_MEMORY_CAP as usize);
        o.set_num_shard_bits(4);
        rocksdb::Cache::new_lru_cache_opts(&o)
    })
}

fn write_buffer_manager() -> &'static rocksdb::WriteBufferManager {
    static WBM: std::sync::OnceLock<rocksdb::WriteBufferManager> = std::sync::OnceLock::new();
    WBM.get_or_init(|| {
        rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
            MEMTABLE_CAP,
            false,
            block_cache().clone(),
        )
    })
}

/// RocksDB's memory in this process (every store), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMemory {
    /// Everything the block cache holds, memtables charged to it included.
    pub block_cache: u64,
    /// Of which memtables.
    pub memtables: u64,
    /// Table readers outside the cache (the pinned top-level index and filter
    /// partitions live in the cache; this is the rest).
    pub table_readers: u64,
}

impl StorageMemory {
    pub fn total(&self) -> u64 {
        self.block_cache + self.table_readers
    }
}

/// Events are read one by one (point lookups from the indexes): small blocks
/// and a bloom filter; the indexes are read in ranges: larger blocks.
///
/// Every level, memtable flushes included, is compressed with zstd. Event ids
/// only grow, so the files of the events column family never overlap and
/// leveled compaction *moves* them down without rewriting them: whatever
/// compression a flush picks is what the data keeps for its lifetime. With
/// LZ4 at flush and zstd only at the bottom, a long-running store stayed ~40%
/// bigger than the same data after a forced compaction.
fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::Zstd);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(block_cache());
    // Index and filter in 4 KiB partitions under a small top-level block that
    // stays pinned: a monolithic index or filter of a big file runs to
    // megabytes (5.5 MB in a 10M-event store), is evicted by any scan, and is
    // then read whole again by the next point lookup.
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_metadata_block_size(4 * 1024);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if name == CF_EVENTS {
        table.set_block_size(4 * 1024);
        table.set_bloom_filter(10.0, false);
        table.set_partition_filters(true);
    } else {
        table.set_block_size(16 * 1024);
    }
    o.set_block_based_table_factory(&table);
    o
}

fn path_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Path {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// How many bytes of write-ahead log a store keeps at most (RocksDB's
/// `max_total_wal_size`): past it, the memtables that hold the oldest log
/// are flushed and the log deleted. It bounds what an open replays (a
/// read-only open of a store being written replays all of it) and the disk a
/// store needs on top of its data to recover after a full disk.
pub const MAX_WAL_BYTES: u64 = 64 << 20;

/// RocksDB's own info logs (`LOG`, `LOG.old.*`): warnings only, at most
/// this many files of at most `INFO_LOG_BYTES` (every open starts a new one;
/// unbounded, a writer reopening a store on a full disk filled it with them).
const INFO_LOG_FILES: usize = 3;
const INFO_LOG_BYTES: usize = 1 << 20;

/// How long a read-only open keeps retrying the transient states of a store
/// that a live writer is changing (a file replaced by a flush or compaction
/// between reading the manifest and opening the file).
const LIVE_OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn db_options(create: bool, recovery: rocksdb::DBRecoveryMode) -> Options {
    let mut o = Options::default();
    o.create_if_missing(create);
    o.create_missing_column_families(create);
    o.set_max_background_jobs(2);
    o.set_write_buffer_size(32 << 20);
    o.set_compression_type(DBCompressionType::Zstd);
    o.set_wal_recovery_mode(recovery);
    o.set_max_total_wal_size(MAX_WAL_BYTES);
    o.set_log_level(rocksdb::LogLevel::Warn);
    o.set_keep_log_file_num(INFO_LOG_FILES);
    o.set_max_log_file_size(INFO_LOG_BYTES);
    o.set_write_buffer_manager(write_buffer_manager());
    o
}

impl Store {
    /// Opens (creating if needed) the store at `path`. A directory holding
    /// something that is not a Causeway store of this schema is refused and
    /// left untouched.
    ///
    /// Faults (see `store_faults`): a directory whose lock another writer
    /// holds is `Busy`; damaged or missing files are `Corrupt`, naming them.
    /// A writable open first replays the write-ahead log in RocksDB's
    /// *absolute consistency* mode (any damaged record fails the open). If
    /// that fails, the store is probed read-only in *point-in-time* mode
    /// (the log replayed up to its first damaged record, nothing written):
    /// if the result still holds every event a flush made durable (the
    /// durability mark), the damage is a log tail that was being written
    /// when the process died or the disk filled, and the store opens in
    /// point-in-time mode, saying so in `recovery_note`; if flushed events
    /// are missing, the open fails as `Corrupt` and nothing is changed.
    /// A read-only open replays in point-in-time mode (a live writer's log
    /// always ends mid-record), checks the mark the same way, and retries
    /// for up to 5 s while another writer holds the directory and changes
    /// its files under it.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let exists = path.join("CURRENT").is_file();
        if !exists {
            if opts.read_only {
                return Err(path_error(
                    &path,
                    "no Causeway store here (no RocksDB CURRENT file)",
                ));
            }
            match std::fs::read_dir(&path) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(Error::Incompatible {
                            path: path.display().to_string(),
                            reason: "directory is not empty and holds no RocksDB database".into(),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::store_perms::create_private_dir(&path)?;
                }
                Err(e) => return Err(path_error(&path, e)),
            }
            crate::store_perms::check_owner(&path)?;
            crate::store_perms::tighten(&path);
            let probe = path.join(".causeway-write-probe");
            std::fs::write(&probe, b"")
                .map_err(|e| path_error(&path, format!("not writable: {e}")))?;
            let _ = std::fs::remove_file(&probe);
            return Store::attempt(
                &path,
                &opts,
                false,
                rocksdb::DBRecoveryMode::AbsoluteConsistency,
            );
        }
        if opts.read_only {
            Store::open_read_only(&path, &opts)
        } else {
            crate::store_perms::check_owner(&path)?;
            let store = Store::open_writable(&path, &opts)?;
            crate::store_perms::tighten(&path);
            Ok(store)
        }
    }

    fn open_read_only(path: &Path, opts: &StoreOptions) -> Result<Store> {
        let deadline = std::time::Instant::now() + LIVE_OPEN_RETRY;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let live = store_faults::lock_holder(path).is_some();
            // read before the open: everything up to it is in what the open reads
            let mark = store_faults::read_mark(path).ok().flatten();
            let r = Store::attempt(path, opts, true, rocksdb::DBRecoveryMode::PointInTime)
                .and_then(|s| s.check_mark(mark).map(|()| s));
            match r {
                Ok(s) => return Ok(s),
                // a live writer (there before or since our reads: one may
                // be opening the store) replaced a file under us: read again
                Err(Error::Corrupt(_))
                    if (live || store_faults::lock_holder(path).is_some())
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_writable(path: &Path, opts: &StoreOptions) -> Result<Store> {
        let mark = store_faults::read_mark(path).ok().flatten();
        match Store::attempt(
            path,
            opts,
            true,
            rocksdb::DBRecoveryMode::AbsoluteConsistency,
        ) {
            Ok(s) => {
                s.check_mark(mark)?;
                Ok(s)
            }
            Err(Error::Corrupt(first)) => {
                // what does the log hold up to its first damaged record?
                let ro = StoreOptions {
                    read_only: true,
                    ..opts.clone()
                };
                let probe = Store::attempt(path, &ro, true, rocksdb::DBRecoveryMode::PointInTime)?;
                probe.check_mark(mark)?;
                let newest = probe.max_id()?;
                drop(probe);
                let mut s = Store::attempt(path, opts, true, rocksdb::DBRecoveryMode::PointInTime)?;
                s.recovery_note = Some(format!(
                    "the write-ahead log ended in a damaged or incomplete record after the \
                     last flush ({first}); the store was recovered up to event {newest}, \
                     and what was captured after it and never flushed is lost"
                ));
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    /// One open of an existing (`exists`) or new store.
    fn attempt(
        path: &Path,
        opts: &StoreOptions,
        exists: bool,
        recovery: rocksdb::DBRecoveryMode,
    ) -> Result<Store> {
        if exists {
            let cfs = DB::list_cf(&Options::default(), path).map_err(|e| {
                match store_faults::classify_open(path, e) {
                    Error::Path { path, reason } => Error::Incompatible {
                        path,
                        reason: format!("cannot read its column families: {reason}"),
                    },
                    other => other,
                }
            })?;
            let missing: Vec<&str> = ALL_CFS
                .iter()
                .copied()
                .filter(|cf| !cfs.iter().any(|c| c == cf))
                .collect();
            if missing.len() == ALL_CFS.len() {
                return Err(Error::Incompatible {
                    path: path.display().to_string(),
                    reason: format!("not a Causeway store (missing column families {missing:?})"),
                });
            }
            if !missing.is_empty() {
                // some of ours and not the others: a manifest that lost records
                return Err(Error::Corrupt(format!(
                    "{}: column families {missing:?} are missing from its MANIFEST \
                     (a truncated or damaged MANIFEST file)",
                    path.display()
                )));
            }
        }
        let db_opts = db_options(!exists, recovery);
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n)));
        let db = if opts.read_only {
            DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false)
        } else {
            DB::open_cf_descriptors(&db_opts, path, cfs)
        }
        .map_err(|e| store_faults::classify_open(path, e))?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync_writes);
        let store = Store {
            db,
            path: path.to_path_buf(),
            opts: opts.clone(),
            read_only: opts.read_only,
            write_opts,
            names: RwLock::new(Names::default()),
            retention_lock: RwLock::new(()),
            interrupted: std::sync::atomic::AtomicBool::new(false),
            written_max: std::sync::atomic::AtomicU64::new(0),
            marked: std::sync::Mutex::new(0),
            floor: std::sync::atomic::AtomicU64::new(0),
            recovery_note: None,
            #[cfg(test)]
            after_scan: std::sync::Mutex::new(None),
        };
        store.check_schema(exists)?;
        store.load_names()?;
        store.load_floor()?;
        if let Ok(Some(m)) = store_faults::read_mark(path) {
            if let Ok(mut marked) = store.marked.lock() {
                *marked = m;
            }
        }
        Ok(store)
    }

    /// Fails (`Corrupt`) if the store no longer holds the events up to
    /// `mark` that a flush made durable (retention may have deleted them).
    fn check_mark(&self, mark: Option<u64>) -> Result<()> {
        let Some(mark) = mark else {
            return Ok(());
        };
        let newest = self.max_id()?.max(self.floor.load(Ordering::Relaxed));
        if newest >= mark {
            Ok(())
        } else {
            Err(store_faults::lost_flushed(&self.path, mark, newest))
        }
    }

    fn load_floor(&self) -> Result<()> {
        if let Some(v) = self.db.get_cf(self.cf(CF_META)?, META_FLOOR)? {
            let f = <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt("retention floor".into()))?;
            self.floor.store(f, Ordering::Relaxed);
        }
        Ok(())
    }

    /// What a writable open had to accept to open the store (a damaged
    /// tail of the write-ahead log after the last flush), if anything.
    pub fn recovery_note(&self) -> Option<&str> {
        self.recovery_note.as_deref()
    }

    /// Opens the same directory again with the same options: a read-only
    /// store sees what was written since it was opened.
    pub fn reopen(&self) -> Result<Store> {
        Store::open(&self.path, self.opts.clone())
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Corrupt(format!("column family {name} is missing")))
    }

    fn check_schema(&self, existed: bool) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let incompatible = |reason: String| Error::Incompatible {
            path: self.path.display().to_string(),
            reason,
        };
        match self.db.get_cf(meta, META_SCHEMA)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| incompatible("unreadable schema version".into()))?;
                if found != SCHEMA_VERSION {
                    return Err(incompatible(format!(
                        "schema version {found}, this Causeway reads version {SCHEMA_VERSION}"
                    )));
                }
                Ok(())
            }
            // every Causeway store has one from its first write: with all our
            // column families there, its absence is damage (a MANIFEST that
            // lost the records of the files holding it)
            None if existed => Err(Error::Corrupt(format!(
                "{}: its column families are there but its schema version is not: \
                 files are missing from it (a truncated or damaged MANIFEST?)",
                self.path.display()
            ))),
            None => {
                if self.read_only {
                    return Err(incompatible("no schema version recorded".into()));
                }
                let mut b = WriteBatch::default();
                b.put_cf(meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
                b.put_cf(meta, META_APP, APP_NAME);
                self.db.write_opt(b, &self.write_opts)?;
                self.db.flush_wal(true)?;
                Ok(())
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options this store was opened with.
    pub fn options(&self) -> StoreOptions {
        self.opts.clone()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn load_names(&self) -> Result<()> {
        let mut n = Names::default();
        let end = keys::prefix_end(META_NAME);
        self.scan_keys(CF_META, META_NAME, end.as_deref(), false, |k, v| {
            let id = <[u8; 4]>::try_from(&k[META_NAME.len()..])
                .map(u32::from_be_bytes)
                .map_err(|_| Error::Corrupt("name table key".into()))?;
            let name = String::from_utf8_lossy(v).into_owned();
            // keys come in id order; a gap stays an empty slot and its id is
            // never handed out again
            if id == 0 || (id as usize) <= n.names.len() {
                return Err(Error::Corrupt(format!("name table: id {id} out of order")));
            }
            n.names.resize(id as usize - 1, None);
            n.ids.insert(name.clone(), id);
            n.names.push(Some(name.into()));
            Ok(true)
        })?;
        if let Ok(mut names) = self.names.write() {
            *names = n;
        }
        Ok(())
    }

    /// The id of `name`, if it was ever stored.
    pub fn name_id(&self, name: &str) -> Option<u32> {
        self.names
            .read()
            .ok()
            .and_then(|n| n.ids.get(name).copied())
    }

    /// Interns `name`. A new name is written to the store on its own, under
    /// the table's lock, before its id is handed to anyone: every batch that
    /// uses the id comes later in the WAL, so no crash or failed write can
    /// leave an event whose name is not on disk, and concurrent writers never
    /// see an id that might still be taken back.
    fn intern(&self, name: &str, meta: &rocksdb::ColumnFamily) -> Result<u32> {
        if let Some(id) = self.name_id(name) {
            return Ok(id);
        }
        let mut n = self
            .names
            .write()
            .map_err(|_| Error::Corrupt("name table lock".into()))?;
        if let Some(&id) = n.ids.get(name) {
            return Ok(id);
        }
        let id = u32::try_from(n.names.len() + 1)
            .map_err(|_| Error::Corrupt("name table full".into()))?;
        let mut k = META_NAME.to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        self.db
            .put_cf_opt(meta, k, name.as_bytes(), &self.write_opts)?;
        n.names.push(Some(name.into()));
        n.ids.insert(name.to_string(), id);
        Ok(id)
    }

    fn pid_of(&self, d: DiskPid, names: &Names) -> PidRec {
        PidRec {
            node: names.shared(d.0).cloned().unwrap_or_default(),
            id: d.1,
            serial: d.2,
            creation: d.3,
        }
    }

    /// Writes events, their index entries and links in one atomic `WriteBatch`.
    /// Links the store can derive (capture-time parents, exit → entry) are not
    /// stored twice; see the module doc.
    pub fn write<'e>(&self, events: &'e [StoredEvent], links: &[Link]) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        let _shared = self
            .retention_lock
            .read()
            .map_err(|_| Error::Corrupt("retention lock".into()))?;
        let (cf_ev, cf_pid, cf_mfa, cf_type, cf_call, cf_links, cf_state, cf_meta) = (
            self.cf(CF_EVENTS)?,
            self.cf(CF_BY_PID)?,
            self.cf(CF_BY_MFA)?,
            self.cf(CF_BY_TYPE)?,
            self.cf(CF_BY_CALL)?,
            self.cf(CF_LINKS)?,
            self.cf(CF_STATE)?,
            self.cf(CF_META)?,
        );
        let mut b = WriteBatch::default();
        let mut buf = Vec::with_capacity(256);
        // (column family, prefix) → ids, written as posting lists below
        // prefixes are at most 12 bytes: a fixed key, no allocation per event
        let mut groups: HashMap<(u8, u8, [u8; 12]), Vec<u64>, crate::fasthash::FastBuild> =
            HashMap::default();
        let mut post = |cf: u8, prefix: &[u8], id: u64| {
            let mut k = [0u8; 12];
            k[..prefix.len()].copy_from_slice(prefix);
            groups
                .entry((cf, prefix.len() as u8, k))
                .or_default()
                .push(id);
        };
        // the names of a batch repeat: look each up once per batch
        let mut names: Vec<(&str, u32)> = Vec::with_capacity(16);
        // exits by call id, written as pair lists below
        let mut calls: Vec<(u64, u64)> = Vec::new();
        // each event's stored bytes, for the covering by_pid lists
        let mut arena: Vec<u8> = Vec::with_capacity(events.len() * 64);
        let mut by_pid: HashMap<[u8; 8], Vec<(u64, usize, usize)>, crate::fasthash::FastBuild> =
            HashMap::default();
        for ev in events {
            let mut id_of = |name: &'e str| -> Result<u32> {
                if let Some((_, id)) = names.iter().find(|(n, _)| *n == name) {
                    return Ok(*id);
                }
                let id = self.intern(name, cf_meta)?;
                if names.len() < 64 {
                    names.push((name, id));
                }
                Ok(id)
            };
            let module = match ev.module.as_deref() {
                Some(m) => id_of(m)?,
                None => 0,
            };
            let function = match ev.function.as_deref() {
                Some(f) => id_of(f)?,
                None => 0,
            };
            let node = id_of(&ev.pid.node)?;
            let peer_node = match &ev.peer {
                Some(p) => id_of(&p.node)?,
                None => 0,
            };
            let peer = ev
                .peer
                .as_ref()
                .map(|p| DiskPid(peer_node, p.id, p.serial, p.creation));
            let disk = DiskEvent {
                kind: ev.kind as u8,
                wall_delta: ev.wall_ns.wrapping_sub(id_to_wall_ns(ev.id) as i64),
                mono_offset: ev.wall_ns.wrapping_sub(ev.mono_ns),
                pid: DiskPid(node, ev.pid.id, ev.pid.serial, ev.pid.creation),
                call_id: ev.call_id,
                parent_id: ev.parent_id,
                parent_link: ev.parent_link.map_or(0, |k| k as u8),
                module,
                function,
                arity: ev.arity,
                peer,
                data: std::borrow::Cow::Borrowed(&ev.data),
                source: ev.source as u8,
            };
            buf.clear();
            rmp_serde::encode::write(&mut buf, &disk)?;
            b.put_cf(cf_ev, keys::id(ev.id), &buf);
            let pid_key = ev.pid.key();
            let entry = (ev.id, arena.len(), buf.len());
            by_pid.entry(pid_key).or_default().push(entry);
            if self.opts.covering_pid_index {
                arena.extend_from_slice(&buf);
            }
            post(1, &[ev.kind as u8], ev.id);
            if module != 0 {
                post(
                    2,
                    &keys::mfa_prefix(module, Some(function), Some(ev.arity)),
                    ev.id,
                );
            }
            if ev.kind == EventType::FunctionExit && ev.call_id != 0 {
                calls.push((ev.call_id, ev.id));
            }
            if ev.kind == EventType::StateChange {
                post(3, &pid_key, ev.id);
            }
            if let (Some(kind), true) = (ev.parent_link, ev.parent_id != 0 && ev.parent_id != ev.id)
            {
                b.put_cf(
                    cf_links,
                    keys::link(ev.parent_id, kind.reverse() as u8, ev.id),
                    [],
                );
            }
        }
        calls.sort_unstable();
        calls.dedup();
        let mut start = 0;
        for i in 0..=calls.len() {
            if i == calls.len() || calls[i].0 - calls[start].0 >= postings::CALL_SPAN {
                if i > start {
                    let key = postings::pair_key(calls[start].0, calls[i - 1].0);
                    b.put_cf(cf_call, key, postings::encode_pairs(&calls[start..i]));
                }
                start = i;
            }
        }
        for (pid_key, mut evs) in by_pid {
            evs.sort_unstable_by_key(|e| e.0);
            evs.dedup_by_key(|e| e.0);
            let mut start = 0;
            for i in 1..=evs.len() {
                if i == evs.len() || evs[i].0 - evs[start].0 >= postings::SPAN {
                    let first = evs[start].0;
                    let value = if self.opts.covering_pid_index {
                        let run: Vec<(u64, &[u8])> = evs[start..i]
                            .iter()
                            .map(|&(id, at, n)| (id, &arena[at..at + n]))
                            .collect();
                        postings::encode_covering(first, &run)
                    } else {
                        let ids: Vec<u64> = evs[start..i].iter().map(|e| e.0).collect();
                        postings::encode_pid_ids(&ids)
                    };
                    b.put_cf(cf_pid, keys::pid(pid_key, first), value);
                    start = i;
                }
            }
        }
        for ((cf, len, prefix), mut ids) in groups {
            let cf = [cf_pid, cf_type, cf_mfa, cf_state][cf as usize];
            ids.sort_unstable();
            ids.dedup();
            for run in postings::runs(&ids) {
                let mut k = prefix[..len as usize].to_vec();
                k.extend_from_slice(&run[0].to_be_bytes());
                b.put_cf(cf, k, postings::encode(run));
            }
        }
        for l in links.iter().filter(|l| {
            matches!(
                l.kind,
                LinkKind::Receives | LinkKind::ReceivedBy | LinkKind::ExitOf | LinkKind::ExitedBy
            )
        }) {
            b.put_cf(cf_links, keys::link(l.from, l.kind as u8, l.to), []);
            b.put_cf(
                cf_links,
                keys::link(l.to, l.kind.reverse() as u8, l.from),
                [],
            );
        }
        self.db.write_opt(b, &self.write_opts)?;
        if let Some(newest) = events.iter().map(|e| e.id).max() {
            self.written_max.fetch_max(newest, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Decodes an event's stored bytes (from `events` or a covering list).
    pub fn decode_stored(&self, id: u64, bytes: &[u8]) -> Result<StoredEvent> {
        self.decode_event(id, bytes)
    }

    fn decode_event(&self, id: u64, bytes: &[u8]) -> Result<StoredEvent> {
        let d: DiskEvent = match MsgpackReader::disk_event(bytes) {
            Some(d) => d,
            None => rmp_serde::from_slice(bytes)?,
        };
        let names = self
            .names
            .read()
            .map_err(|_| Error::Corrupt("name table lock".into()))?;
        let kind = EventType::from_u8(d.kind)
            .ok_or_else(|| Error::Corrupt(format!("event {id}: unknown type {}", d.kind)))?;
        let wall_ns = (id_to_wall_ns(id) as i64).wrapping_add(d.wall_delta);
        Ok(StoredEvent {
            id,
            kind,
            mono_ns: wall_ns.wrapping_sub(d.mono_offset),
            wall_ns,
            pid: self.pid_of(d.pid, &names),
            call_id: d.call_id,
            parent_id: d.parent_id,
            parent_link: LinkKind::from_u8(d.parent_link),
            module: names.shared(d.module).cloned(),
            function: names.shared(d.function).cloned(),
            arity: d.arity,
            peer: d.peer.map(|p| self.pid_of(p, &names)),
            data: d.data.into_owned(),
            source: match d.source {
                1 => Source::Tracer,
                2 => Source::Watch,
                _ => Source::Runtime,
            },
        })
    }

    /// Makes everything written so far durable (WAL synced to disk).
    /// Then records the newest event written in the durability mark, so a
    /// later open can tell whether the log still holds it.
    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let written = self.written_max.load(Ordering::Acquire);
        self.db.flush_wal(true)?;
        let mut marked = self
            .marked
            .lock()
            .map_err(|_| Error::Corrupt("durability mark lock".into()))?;
        if written > *marked {
            store_faults::write_mark(&self.path, written)?;
            *marked = written;
        }
        Ok(())
    }

    pub fn get(&self, id: u64) -> Result<Option<StoredEvent>> {
        match self.db.get_pinned_cf(self.cf(CF_EVENTS)?, keys::id(id))? {
            Some(v) => Ok(Some(self.decode_event(id, &v)?)),
            None => Ok(None),
        }
    }

    /// Fetches events by id, in the order given; ids with no event are skipped.
    pub fn get_many(&self, ids: &[u64]) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(ids.len());
        self.get_many_raw(ids, |id, bytes| {
            out.push(self.decode_event(id, bytes)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with the id and the stored bytes (see `decode_stored`) of
    /// each of `ids` that exists, in the order given.
    pub fn get_many_raw(
        &self,
        ids: &[u64],
        mut f: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let cf = self.cf(CF_EVENTS)?;
        // RocksDB reads sorted keys faster (one pass over each block); queries
        // hand ids in ascending or descending order.
        let descending = ids.windows(2).all(|w| w[0] > w[1]) && ids.len() > 1;
        let mut order: Vec<u64> = ids.to_vec();
        if descending {
            order.reverse();
        }
        let sorted = order.windows(2).all(|w| w[0] < w[1]);
        let ks: Vec<[u8; 8]> = order.iter().map(|&i| keys::id(i)).collect();
        let mut found: Vec<_> = self
            .db
            .batched_multi_get_cf(cf, &ks, sorted)
            .into_iter()
            .zip(order)
            .collect();
        if descending {
            found.reverse();
        }
        for (r, id) in found {
            if let Some(v) = r? {
                f(id, &v)?;
            }
        }
        Ok(())
    }

    /// Walks keys of `cf` in `[lo, hi)` (forward, or backward when `reverse`),
    /// calling `f` with each key until it returns false.
    pub fn scan_keys(
        &self,
        cf: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lo.to_vec());
        if let Some(hi) = hi {
            ro.set_iterate_upper_bound(hi.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        if reverse {
            it.seek_to_last();
        } else {
            it.seek(lo);
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !f(k, v)? {
                return Ok(());
            }
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        it.status()?;
        Ok(())
    }

    /// The stored links from `id`: `(kind, other event id)`.
    fn stored_links(&self, id: u64) -> Result<Vec<(LinkKind, u64)>> {
        let lo = keys::id(id);
        let hi = keys::id(id.wrapping_add(1));
        let mut out = Vec::new();
        let hi_opt = if id == u64::MAX { None } else { Some(&hi[..]) };
        self.scan_keys(CF_LINKS, &lo, hi_opt, false, |k, _| {
            if k.len() == 17 {
                if let (Some(kind), Some(to)) = (LinkKind::from_u8(k[8]), keys::trailing_id(k)) {
                    out.push((kind, to));
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The exits of a call (normally one), from the `by_call` pair lists.
    pub fn exits_of(&self, call_id: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let lo = postings::pair_key(call_id.saturating_sub(postings::CALL_SPAN), 0);
        let hi = call_id.checked_add(1).map(|c| postings::pair_key(c, 0));
        self.scan_keys(
            CF_BY_CALL,
            &lo,
            hi.as_ref().map(|h| &h[..]),
            false,
            |k, v| {
                // only lists whose range holds the call are searched
                if k.len() == 16 && keys::trailing_id(k).is_some_and(|last| last >= call_id) {
                    out.extend(postings::exits_in(v, call_id)?);
                }
                Ok(true)
            },
        )?;
        out.sort_unstable();
        Ok(out)
    }

    /// Every causal link of an event: stored ones and those derived from its
    /// own fields (parent, call id) and from `by_call`.
    pub fn links_of(&self, ev: &StoredEvent) -> Result<Vec<(LinkKind, u64)>> {
        let mut out = Vec::new();
        if let (Some(kind), true) = (ev.parent_link, ev.parent_id != 0 && ev.parent_id != ev.id) {
            out.push((kind, ev.parent_id));
        }
        let entry_exists = |call_id: u64| -> Result<bool> {
            Ok(self
                .db
                .get_pinned_cf(self.cf(CF_EVENTS)?, keys::id(call_id))?
                .is_some())
        };
        match ev.kind {
            EventType::FunctionExit
                if ev.call_id != 0 && ev.call_id != ev.id && entry_exists(ev.call_id)? =>
            {
                out.push((LinkKind::Completes, ev.call_id));
            }
            EventType::FunctionEntry => {
                for x in self.exits_of(ev.id)? {
                    out.push((LinkKind::CompletedBy, x));
                }
            }
            _ => {}
        }
        out.extend(self.stored_links(ev.id)?);
        Ok(out)
    }

    /// Deletes every event with an id below `cutoff` and everything that points
    /// at them: range deletes over each index's id range (per pid, per
    /// module/function/arity, per type), point deletes of the links that
    /// surviving events hold towards deleted ones, then a compaction of the
    /// deleted ranges. Works in chunks of `chunk` events so memory stays bounded.
    pub fn delete_before(&self, cutoff: u64, chunk: usize) -> Result<RetentionStats> {
        if self.read_only {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        let mut stats = RetentionStats::default();
        let chunk = chunk.max(1);
        loop {
            if self.interrupted.load(Ordering::Acquire) {
                break;
            }
            let _exclusive = self
                .retention_lock
                .write()
                .map_err(|_| Error::Corrupt("retention lock".into()))?;
            // the next chunk of doomed events, oldest first
            let mut doomed = Vec::with_capacity(chunk.min(65_536));
            let mut err = None;
            self.scan_keys(CF_EVENTS, &[], Some(&keys::id(cutoff)), false, |k, v| {
                if let Some(id) = keys::trailing_id(k) {
                    match self.decode_event(id, v) {
                        Ok(e) => doomed.push(e),
                        Err(e) => {
                            err = Some(e);
                            return Ok(false);
                        }
                    }
                }
                Ok(doomed.len() < chunk)
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            let Some(last) = doomed.last().map(|e| e.id) else {
                break;
            };
            let upto = if doomed.len() < chunk {
                cutoff
            } else {
                last + 1
            };
            #[cfg(test)]
            if let Some(hook) = self
                .after_scan
                .lock()
                .ok()
                .as_mut()
                .and_then(|h| h.as_mut())
            {
                hook();
            }
            self.delete_chunk(&doomed, upto)?;
            stats.events += doomed.len() as u64;
            stats.chunks += 1;
            if upto >= cutoff {
                break;
            }
        }
        if stats.events > 0 && !self.interrupted.load(Ordering::Acquire) {
            for cf in ALL_CFS {
                if cf != CF_META {
                    self.db.compact_range_cf(
                        self.cf(cf)?,
                        None::<&[u8]>,
                        Some(&keys::id(cutoff)[..]),
                    );
                }
            }
            let evs = self.cf(CF_EVENTS)?;
            self.db
                .compact_range_cf(evs, None::<&[u8]>, Some(&keys::id(cutoff)[..]));
        }
        Ok(stats)
    }

    /// Removes `doomed` (all ids < `upto`) and their index entries in one batch.
    fn delete_chunk(&self, doomed: &[StoredEvent], upto: u64) -> Result<()> {
        use std::collections::BTreeSet;
        let mut pids = BTreeSet::new();
        let mut mfas = BTreeSet::new();
        let mut dangling = Vec::new();
        {
            let names = self
                .names
                .read()
                .map_err(|_| Error::Corrupt("name table lock".into()))?;
            for e in doomed {
                pids.insert(e.pid.key());
                if let (Some(m), Some(f)) = (&e.module, &e.function) {
                    if let (Some(&m), Some(&f)) = (names.ids.get(&**m), names.ids.get(&**f)) {
                        mfas.insert(keys::mfa_prefix(m, Some(f), Some(e.arity)));
                    }
                }
            }
        }
        for e in doomed {
            for (kind, other) in self.stored_links(e.id)? {
                if other >= upto {
                    dangling.push(keys::link(other, kind.reverse() as u8, e.id));
                }
            }
        }
        let mut b = WriteBatch::default();
        let id_range = |prefix: &[u8]| {
            let mut lo = prefix.to_vec();
            lo.extend_from_slice(&0u64.to_be_bytes());
            let mut hi = prefix.to_vec();
            hi.extend_from_slice(&upto.to_be_bytes());
            (lo, hi)
        };
        let (lo, hi) = id_range(&[]);
        b.delete_range_cf(self.cf(CF_EVENTS)?, &lo, &hi);
        b.delete_range_cf(self.cf(CF_LINKS)?, &lo, &hi);
        // by_call is keyed by call ids: exits of deleted calls go with them
        self.trim_calls(&mut b, upto)?;
        let types: Vec<[u8; 1]> = EventType::ALL.iter().map(|t| [*t as u8]).collect();
        let lists: [(&str, Vec<&[u8]>); 4] = [
            (CF_BY_TYPE, types.iter().map(|t| &t[..]).collect()),
            (CF_BY_PID, pids.iter().map(|p| &p[..]).collect()),
            (CF_STATE, pids.iter().map(|p| &p[..]).collect()),
            (CF_BY_MFA, mfas.iter().map(|m| &m[..]).collect()),
        ];
        for (cf_name, prefixes) in lists {
            let cf = self.cf(cf_name)?;
            for prefix in prefixes {
                self.trim_postings(&mut b, cf, cf_name, prefix, upto)?;
            }
        }
        for k in dangling {
            b.delete_cf(self.cf(CF_LINKS)?, k);
        }
        // what a flush made durable and retention then deleted is not lost
        let floor = self.floor.load(Ordering::Relaxed).max(upto);
        b.put_cf(self.cf(CF_META)?, META_FLOOR, floor.to_be_bytes());
        self.db.write_opt(b, &self.write_opts)?;
        self.floor.fetch_max(floor, Ordering::Relaxed);
        Ok(())
    }

    /// Removes ids below `upto` from the posting lists under `prefix`: lists
    /// that start before `upto − SPAN` hold only such ids and are range-deleted;
    /// the few that straddle `upto` are rewritten without them.
    fn trim_postings(
        &self,
        b: &mut WriteBatch,
        cf: &rocksdb::ColumnFamily,
        cf_name: &str,
        prefix: &[u8],
        upto: u64,
    ) -> Result<()> {
        let with = |id: u64| {
            let mut k = prefix.to_vec();
            k.extend_from_slice(&id.to_be_bytes());
            k
        };
        let straddle = upto.saturating_sub(postings::SPAN);
        b.delete_range_cf(cf, with(0), with(straddle));
        let mut rewrites = Vec::new();
        self.scan_keys(
            cf_name,
            &with(straddle),
            Some(&with(upto)),
            false,
            |k, v| {
                let first =
                    keys::trailing_id(k).ok_or_else(|| Error::Corrupt("posting key".into()))?;
                if cf_name == CF_BY_PID {
                    let value = match postings::decode_pid_list(first, v)? {
                        postings::PidList::Ids(ids) => {
                            let kept: Vec<u64> = ids.into_iter().filter(|&id| id >= upto).collect();
                            (!kept.is_empty()).then(|| {
                                let mut out = vec![postings::PID_IDS];
                                out.extend(postings::encode_from(first, &kept));
                                out
                            })
                        }
                        postings::PidList::Events(evs) => {
                            let kept: Vec<(u64, &[u8])> =
                                evs.into_iter().filter(|e| e.0 >= upto).collect();
                            (!kept.is_empty()).then(|| postings::encode_covering(first, &kept))
                        }
                    };
                    rewrites.push((k.to_vec(), value));
                } else {
                    let kept: Vec<u64> = postings::decode(first, v)?
                        .into_iter()
                        .filter(|&id| id >= upto)
                        .collect();
                    let value = if kept.is_empty() {
                        None
                    } else {
                        Some(postings::encode_from(first, &kept))
                    };
                    rewrites.push((k.to_vec(), value));
                }
                Ok(true)
            },
        )?;
        // a rewritten list keeps its key: every id is still ≥ it and within SPAN of it
        for (k, value) in rewrites {
            match value {
                Some(v) => b.put_cf(cf, &k, v),
                None => b.delete_cf(cf, k),
            }
        }
        Ok(())
    }

    /// Removes the pairs of calls below `upto` from the `by_call` lists.
    fn trim_calls(&self, b: &mut WriteBatch, upto: u64) -> Result<()> {
        let cf = self.cf(CF_BY_CALL)?;
        let straddle = upto.saturating_sub(postings::CALL_SPAN);
        b.delete_range_cf(
            cf,
            postings::pair_key(0, 0),
            postings::pair_key(straddle, 0),
        );
        let mut rewrites = Vec::new();
        self.scan_keys(
            CF_BY_CALL,
            &postings::pair_key(straddle, 0),
            Some(&postings::pair_key(upto, 0)),
            false,
            |k, v| {
                let kept: Vec<(u64, u64)> = postings::decode_pairs(v)?
                    .into_iter()
                    .filter(|p| p.0 >= upto)
                    .collect();
                rewrites.push((k.to_vec(), kept));
                Ok(true)
            },
        )?;
        for (k, kept) in rewrites {
            b.delete_cf(cf, &k);
            if let (Some(first), Some(last)) = (kept.first(), kept.last()) {
                b.put_cf(
                    cf,
                    postings::pair_key(first.0, last.0),
                    postings::encode_pairs(&kept),
                );
            }
        }
        Ok(())
    }

    /// Applies `policy` at wall-clock time `now_wall_ns`.
    pub fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now_wall_ns: u64,
    ) -> Result<RetentionStats> {
        let mut total = RetentionStats::default();
        if let Some(age) = policy.max_age_ns {
            let cutoff = crate::ids::wall_ns_to_id(now_wall_ns.saturating_sub(age));
            let s = self.delete_before(cutoff, 10_000)?;
            total.events += s.events;
            total.chunks += s.chunks;
        }
        if let Some(max) = policy.max_bytes {
            // Delete the oldest share of the id range that the excess stands for,
            // then measure again (sizes are known only after compaction).
            for _round in 0..16 {
                if self.interrupted.load(Ordering::Acquire) {
                    break;
                }
                let live = self.live_bytes();
                if live <= max {
                    break;
                }
                let (Some(lo), hi) = (self.min_id()?, self.max_id()?) else {
                    break;
                };
                if hi <= lo {
                    break;
                }
                let share = ((live - max) as f64 / live as f64).clamp(0.05, 1.0);
                let cutoff = lo + (((hi - lo) as f64) * share).ceil() as u64;
                let s = self.delete_before(cutoff.max(lo + 1), 10_000)?;
                total.events += s.events;
                total.chunks += s.chunks;
                self.compact_all()?;
            }
        }
        Ok(total)
    }

    /// Makes a running retention pass stop at its next chunk (on close: the
    /// pass resumes where it stopped on the next open).
    pub fn interrupt_maintenance(&self) {
        self.interrupted.store(true, Ordering::Release);
    }

    /// The smallest event id stored (`None` for an empty store).
    pub fn min_id(&self) -> Result<Option<u64>> {
        let mut min = None;
        self.scan_keys(CF_EVENTS, &[], None, false, |k, _| {
            min = keys::trailing_id(k);
            Ok(false)
        })?;
        Ok(min)
    }

    /// Bytes of live data: SST files and memtables of every column family.
    pub fn live_bytes(&self) -> u64 {
        ALL_CFS
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .map(|cf| {
                let sst = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.live-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum()
    }

    /// RocksDB's memory: the shared cache (memtables charged to it) and this
    /// store's table readers.
    pub fn memory(&self) -> StorageMemory {
        let readers = ALL_CFS
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.estimate-table-readers-mem")
                    .ok()
                    .flatten()
            })
            .sum();
        StorageMemory {
            block_cache: block_cache().get_usage() as u64,
            memtables: write_buffer_manager().get_usage() as u64,
            table_readers: readers,
        }
    }

    /// Flushes every memtable to SST files (no compaction).
    pub fn flush_all(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?)?;
        }
        Ok(())
    }

    /// Flushes memtables to SST files and rewrites every file, the bottommost
    /// level included (used to measure bytes per event and after large
    /// deletions).
    pub fn compact_all(&self) -> Result<()> {
        self.flush_all()?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
        for name in ALL_CFS {
            self.db
                .compact_range_cf_opt(self.cf(name)?, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// The largest event id stored (0 for an empty store).
    pub fn max_id(&self) -> Result<u64> {
        let mut max = 0;
        self.scan_keys(CF_EVENTS, &[], None, true, |k, _| {
            max = keys::trailing_id(k).unwrap_or(0);
            Ok(false)
        })?;
        Ok(max)
    }

    /// Bytes the store takes on disk (every file under its directory).
    pub fn size_on_disk(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.path)
    }

    pub fn db(&self) -> &DB {
        &self.db
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{PidRec, Source};

    pub(crate) fn event(id: u64, pid: u32, kind: EventType) -> StoredEvent {
        StoredEvent {
            id,
            kind,
            mono_ns: id as i64,
            wall_ns: id as i64,
            pid: PidRec {
                node: "nonode@nohost".into(),
                id: pid,
                serial: 0,
                creation: 0,
            },
            call_id: if kind == EventType::FunctionEntry {
                id
            } else {
                0
            },
            parent_id: 0,
            parent_link: None,
            module: Some("Elixir.M".into()),
            function: Some("f".into()),
            arity: 1,
            peer: None,
            data: vec![131, 97, (id % 200) as u8],
            source: Source::Runtime,
        }
    }

    #[test]
    fn a_process_s_events_come_in_id_order_from_interleaved_lists_both_ways() {
        use crate::query::{self, Filter, PidMatch};
        for covering in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(
                dir.path(),
                StoreOptions {
                    covering_pid_index: covering,
                    ..Default::default()
                },
            )
            .unwrap();
            // three writers' batches for one process, their ids interleaved:
            // the posting lists overlap, and one list has a single event
            let ids = |r: std::ops::Range<u64>, step: u64, off: u64| -> Vec<u64> {
                r.map(|i| (i * step + off) * 64).collect()
            };
            for batch in [
                ids(0..40, 3, 1),
                ids(0..40, 3, 2),
                ids(0..40, 3, 3),
                vec![77 * 64 + 32],
            ] {
                let evs: Vec<_> = batch
                    .iter()
                    .map(|&id| event(id, 7, EventType::FunctionEntry))
                    .chain([event(batch[0] + 1, 8, EventType::FunctionEntry)])
                    .collect();
                s.write(&evs, &[]).unwrap();
            }
            let mut all: Vec<u64> = (1..=120).map(|i| i * 64).collect();
            all.push(77 * 64 + 32);
            all.sort_unstable();
            for reverse in [false, true] {
                let mut want = all.clone();
                if reverse {
                    want.reverse();
                }
                let f = Filter {
                    pid: Some(PidMatch {
                        id: 7,
                        serial: 0,
                        node: None,
                    }),
                    limit: 1000,
                    reverse,
                    ..Default::default()
                };
                let got: Vec<u64> = query::events(&s, &f)
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.id)
                    .collect();
                assert_eq!(got, want, "covering {covering}, reverse {reverse}");
                // and in pages of 7
                let mut paged = Vec::new();
                let mut after = None;
                loop {
                    let page = query::events(
                        &s,
                        &Filter {
                            limit: 7,
                            after,
                            ..f.clone()
                        },
                    )
                    .unwrap();
                    paged.extend(page.events.iter().map(|e| e.id));
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                assert_eq!(paged, want, "paged: covering {covering}, reverse {reverse}");
            }
        }
    }

    mod msgpack {
        use super::super::{DiskEvent, DiskPid, MsgpackReader};
        use proptest::prelude::*;
        use std::borrow::Cow;

        fn pid() -> impl Strategy<Value = DiskPid> {
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(a, b, c, d)| DiskPid(a, b, c, d))
        }

        fn edge_i64() -> impl Strategy<Value = i64> {
            prop_oneof![
                any::<i64>(),
                -40i64..300,
                Just(i64::MIN),
                Just(i64::MAX),
                Just(-129),
                Just(-32769),
                Just(65536),
            ]
        }

        fn edge_u64() -> impl Strategy<Value = u64> {
            prop_oneof![
                any::<u64>(),
                0u64..300,
                Just(u64::MAX),
                Just(65536),
                Just(1 << 32)
            ]
        }

        prop_compose! {
            fn disk_event()(
                kind in any::<u8>(),
                wall_delta in edge_i64(),
                mono_offset in edge_i64(),
                pid in pid(),
                call_id in edge_u64(),
                parent_id in edge_u64(),
                parent_link in any::<u8>(),
                module in any::<u32>(),
                function in any::<u32>(),
                arity in any::<u32>(),
                peer in proptest::option::of(pid()),
                data in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec(any::<u8>(), 65_530..65_540),
                ],
                source in any::<u8>(),
            ) -> DiskEvent<'static> {
                DiskEvent {
                    kind, wall_delta, mono_offset, pid, call_id, parent_id, parent_link,
                    module, function, arity, peer, data: Cow::Owned(data), source,
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn the_fast_reader_reads_what_rmp_serde_writes(d in disk_event()) {
                let mut buf = Vec::new();
                rmp_serde::encode::write(&mut buf, &d).unwrap();
                let slow: DiskEvent = rmp_serde::from_slice(&buf).unwrap();
                prop_assert_eq!(MsgpackReader::disk_event(&buf), Some(slow));
                // anything cut short or with trailing bytes is left to rmp_serde
                prop_assert_eq!(MsgpackReader::disk_event(&buf[..buf.len() - 1]), None);
                buf.push(0);
                prop_assert_eq!(MsgpackReader::disk_event(&buf), None);
            }
        }
    }

    #[test]
    fn round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<_> = (1..=100)
            .map(|i| event(i * 64, (i % 3) as u32, EventType::FunctionEntry))
            .collect();
        let mut exit = event(6464, 0, EventType::FunctionExit);
        exit.call_id = 64;
        exit.parent_id = 64;
        let mut recv = event(6528, 1, EventType::MessageReceive);
        recv.module = None;
        recv.function = None;
        recv.parent_id = 6464;
        recv.parent_link = Some(LinkKind::CausedBy);
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.write(&evs, &[]).unwrap();
            s.write(
                &[exit.clone(), recv.clone()],
                &[Link {
                    from: 6528,
                    kind: LinkKind::Receives,
                    to: 128,
                }],
            )
            .unwrap();
            s.sync().unwrap();
        }
        let s = Store::open(
            dir.path(),
            StoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.get(64 * 7).unwrap().as_ref(), Some(&evs[6]));
        assert_eq!(s.get(65).unwrap(), None);
        assert_eq!(s.get(6528).unwrap().as_ref(), Some(&recv));
        assert_eq!(s.max_id().unwrap(), 6528);
        let entry = s.get(64).unwrap().unwrap();
        assert_eq!(
            s.links_of(&entry).unwrap(),
            vec![(LinkKind::CompletedBy, 6464)]
        );
        let exit = s.get(6464).unwrap().unwrap();
        assert_eq!(
            s.links_of(&exit).unwrap(),
            vec![(LinkKind::Completes, 64), (LinkKind::Causes, 6528)]
        );
        let recv = s.get(6528).unwrap().unwrap();
        assert_eq!(
            s.links_of(&recv).unwrap(),
            vec![(LinkKind::CausedBy, 6464), (LinkKind::Receives, 128)]
        );
        let send = s.get(128).unwrap().unwrap();
        assert!(s
            .links_of(&send)
            .unwrap()
            .contains(&(LinkKind::ReceivedBy, 6528)));
        assert_eq!(s.name_id("Elixir.M"), Some(1));
        assert_eq!(s.name_id("nope"), None);
        let mut n = 0;
        s.scan_keys(
            CF_BY_PID,
            &keys::pid(evs[0].pid.key(), 0),
            Some(&keys::pid(evs[0].pid.key(), u64::MAX)),
            false,
            |_, _| {
                n += 1;
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(n, 2, "two batches: two posting lists");
        assert!(
            s.write(&evs, &[]).is_err(),
            "read-only store refuses writes"
        );
    }

    /// Every index entry and link points at an event that exists.
    fn assert_consistent(s: &Store) {
        for cf in [CF_BY_PID, CF_BY_MFA, CF_BY_TYPE, CF_BY_CALL, CF_STATE] {
            s.scan_keys(cf, &[], None, false, |k, v| {
                let last = keys::trailing_id(k).unwrap();
                let ids = if cf == CF_BY_CALL {
                    postings::decode_pairs(v)
                        .unwrap()
                        .into_iter()
                        .map(|p| p.1)
                        .collect()
                } else if is_posting_cf(cf) {
                    postings::decode_ids(cf, last, v).unwrap()
                } else {
                    vec![last]
                };
                assert!(!ids.is_empty(), "{cf}: empty posting list");
                for id in ids {
                    assert!(
                        s.get(id).unwrap().is_some(),
                        "{cf} points at deleted event {id}"
                    );
                }
                Ok(true)
            })
            .unwrap();
        }
        s.scan_keys(CF_LINKS, &[], None, false, |k, _| {
            let from = u64::from_be_bytes(k[..8].try_into().unwrap());
            let to = keys::trailing_id(k).unwrap();
            assert!(
                s.get(from).unwrap().is_some() && s.get(to).unwrap().is_some(),
                "dangling link {from} -> {to}"
            );
            Ok(true)
        })
        .unwrap();
    }

    #[test]
    fn retention_deletes_exactly_the_old_events_and_keeps_indexes_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut evs = Vec::new();
        for i in 1..=300u64 {
            let kind = [
                EventType::FunctionEntry,
                EventType::FunctionExit,
                EventType::StateChange,
                EventType::MessageSend,
            ][(i % 4) as usize];
            let mut e = event(i * 64, (i % 5) as u32, kind);
            e.module = Some(format!("Elixir.M{}", i % 3).into());
            if kind == EventType::FunctionExit {
                e.call_id = (i - 1) * 64;
            }
            if i > 1 && i % 7 == 0 {
                e.parent_id = (i - 1) * 64;
                e.parent_link = Some(LinkKind::CausedBy);
            }
            evs.push(e);
        }
        // cross links between old and new events
        let links: Vec<Link> = (1..=100u64)
            .map(|i| Link {
                from: (i + 200) * 64,
                kind: LinkKind::Receives,
                to: i * 64,
            })
            .collect();
        s.write(&evs, &links).unwrap();
        assert_consistent(&s);

        let stats = s.delete_before(150 * 64, 40).unwrap();
        assert_eq!(stats.events, 149);
        assert!(stats.chunks >= 4, "chunked: {stats:?}");
        assert_eq!(s.min_id().unwrap(), Some(150 * 64));
        assert_eq!(s.get(149 * 64).unwrap(), None);
        assert!(s.get(150 * 64).unwrap().is_some());
        assert_consistent(&s);
        // a second pass finds nothing more
        assert_eq!(s.delete_before(150 * 64, 40).unwrap().events, 0);
        let n = crate::query::events(&s, &crate::query::Filter::default())
            .unwrap()
            .events
            .len();
        assert_eq!(n, 151);
    }

    #[test]
    fn a_batch_never_lands_between_a_retention_scan_and_its_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        let evs: Vec<_> = (1..=100u64)
            .map(|i| event(i * 64, 1, EventType::StateChange))
            .collect();
        s.write(&evs, &[]).unwrap();
        // right after the first chunk's scan, another writer commits an old
        // event of a process the scan did not see
        let late = std::sync::Arc::new(std::sync::Mutex::new(None));
        {
            let (s2, late) = (s.clone(), late.clone());
            *s.after_scan.lock().unwrap() = Some(Box::new(move || {
                let s3 = s2.clone();
                let h = std::thread::spawn(move || {
                    s3.write(&[event(50 * 64 + 1, 999, EventType::StateChange)], &[])
                        .unwrap();
                });
                std::thread::sleep(std::time::Duration::from_millis(100));
                *late.lock().unwrap() = Some(h);
            }));
        }
        s.delete_before(200 * 64, 1_000).unwrap();
        *s.after_scan.lock().unwrap() = None;
        if let Some(h) = late.lock().unwrap().take() {
            h.join().unwrap();
        }
        // whatever the first pass left, a second one cleans up consistently
        s.delete_before(200 * 64, 1_000).unwrap();
        assert_consistent(&s);
    }

    #[test]
    fn an_interrupted_store_stops_retention_between_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let evs: Vec<_> = (1..=100u64)
            .map(|i| event(i * 64, 1, EventType::StateChange))
            .collect();
        s.write(&evs, &[]).unwrap();
        s.interrupt_maintenance();
        assert_eq!(s.delete_before(200 * 64, 10).unwrap().events, 0);
        let policy = RetentionPolicy {
            max_bytes: Some(1),
            ..Default::default()
        };
        assert_eq!(s.enforce_retention(&policy, u64::MAX).unwrap().events, 0);
        assert!(s.get(64).unwrap().is_some());
    }

    #[test]
    fn covering_pid_lists_answer_the_same_and_survive_retention() {
        let plain = tempfile::tempdir().unwrap();
        let covering = tempfile::tempdir().unwrap();
        let a = Store::open(
            plain.path(),
            StoreOptions {
                covering_pid_index: false,
                ..Default::default()
            },
        )
        .unwrap();
        let b = Store::open(covering.path(), StoreOptions::default()).unwrap();
        let evs: Vec<_> = (1..=400u64)
            .map(|i| event(i * 64, (i % 3) as u32, EventType::StateChange))
            .collect();
        for chunk in evs.chunks(50) {
            a.write(chunk, &[]).unwrap();
            b.write(chunk, &[]).unwrap();
        }
        let pid = crate::query::PidMatch {
            id: 1,
            serial: 0,
            node: None,
        };
        for reverse in [false, true] {
            let f = crate::query::Filter {
                pid: Some(pid.clone()),
                reverse,
                since_id: Some(64 * 37),
                until_id: Some(64 * 301),
                ..Default::default()
            };
            let x = crate::query::events(&a, &f).unwrap().events;
            let y = crate::query::events(&b, &f).unwrap().events;
            assert_eq!(x.len(), 89);
            assert_eq!(x, y);
        }
        b.delete_before(64 * 200, 30).unwrap();
        assert_consistent(&b);
        let f = crate::query::Filter {
            pid: Some(pid),
            ..Default::default()
        };
        assert!(crate::query::events(&b, &f)
            .unwrap()
            .events
            .iter()
            .all(|e| e.id >= 64 * 200));
    }

    #[test]
    fn retention_by_age_and_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let base = 1_790_000_000_000_000_000u64;
        let sec = 1_000_000_000u64;
        let evs: Vec<_> = (0..2000u64)
            .map(|i| {
                let wall = base + i * sec / 10; // 10 events per second, 200 s
                let mut e = event(
                    crate::ids::wall_ns_to_id(wall),
                    (i % 7) as u32,
                    EventType::StateChange,
                );
                e.wall_ns = wall as i64;
                // incompressible payloads, so the data dwarfs the fixed size of the files
                let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                e.data = vec![131, 109, 0, 0, 2, 0]
                    .into_iter()
                    .chain((0..512).map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    }))
                    .collect();
                e
            })
            .collect();
        s.write(&evs, &[]).unwrap();
        // keep the last 100 s
        let now = base + 200 * sec;
        let st = s
            .enforce_retention(
                &RetentionPolicy {
                    max_age_ns: Some(100 * sec),
                    max_bytes: None,
                },
                now,
            )
            .unwrap();
        assert_eq!(st.events, 1000);
        let oldest = s.get(s.min_id().unwrap().unwrap()).unwrap().unwrap();
        assert!(oldest.wall_ns as u64 >= now - 100 * sec);
        assert_consistent(&s);
        // then at most a third of the bytes
        s.compact_all().unwrap();
        let before = s.live_bytes();
        let st = s
            .enforce_retention(
                &RetentionPolicy {
                    max_age_ns: None,
                    max_bytes: Some(before / 3),
                },
                now,
            )
            .unwrap();
        assert!(st.events > 0);
        assert!(
            s.live_bytes() <= before / 3,
            "{} > {}",
            s.live_bytes(),
            before / 3
        );
        assert_eq!(
            s.max_id().unwrap(),
            evs.last().unwrap().id,
            "the newest event is kept"
        );
        assert_consistent(&s);
    }

    #[test]
    fn posting_lists_round_trip_and_split_by_span() {
        let ids = [5, 6, 100, 1 << 20, (1 << 30) + 5, (1 << 30) + 6, 3 << 30];
        let runs = postings::runs(&ids);
        assert_eq!(runs, vec![&ids[..4], &ids[4..6], &ids[6..]]);
        for run in runs {
            assert_eq!(
                postings::decode(run[0], &postings::encode(run)).unwrap(),
                run
            );
        }
        assert!(postings::decode(1, &[5, 1]).is_err(), "truncated");
        let pairs = [(10, 9), (10, 15), (12, 100), (40, 41)];
        let enc = postings::encode_pairs(&pairs);
        assert_eq!(postings::decode_pairs(&enc).unwrap(), pairs);
        assert_eq!(postings::exits_in(&enc, 10).unwrap(), vec![9, 15]);
        assert_eq!(postings::exits_in(&enc, 40).unwrap(), vec![41]);
        assert!(postings::exits_in(&enc, 11).unwrap().is_empty());
        assert!(postings::decode_pairs(&enc[..17]).is_err());
        assert!(postings::decode(1, &[0xff; 12]).is_err(), "runaway varint");
    }

    #[test]
    fn garbage_on_disk_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for bytes in [&[][..], &[0xc1, 0x00, 0xff], &[0x93, 1, 2, 3]] {
            s.db.put_cf(s.cf(CF_EVENTS).unwrap(), keys::id(5), bytes)
                .unwrap();
            assert!(s.get(5).is_err());
        }
    }

    #[test]
    fn an_event_on_disk_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let wall = 1_790_000_000_000_000_000i64;
        let id = crate::ids::wall_ns_to_id(wall as u64) | 3;
        let mut e = event(id, 77, EventType::FunctionEntry);
        e.wall_ns = wall;
        e.mono_ns = wall - 1_700_000_000_000_000_000;
        e.call_id = id;
        e.data = vec![
            131, 108, 0, 0, 0, 3, 97, 1, 119, 1, b'a', 109, 0, 0, 0, 1, b'b', 106,
        ];
        s.write(&[e.clone()], &[]).unwrap();
        let raw =
            s.db.get_cf(s.cf(CF_EVENTS).unwrap(), keys::id(id))
                .unwrap()
                .unwrap();
        assert!(
            raw.len() < 60,
            "{} bytes on disk before compression",
            raw.len()
        );
        assert_eq!(s.get(id).unwrap(), Some(e));
    }

    #[test]
    fn flushed_data_is_as_small_as_compacted_data() {
        // Append-only events are moved down the levels, never rewritten: the
        // size right after a flush is the size a long-running store keeps.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let wall = 1_790_000_000_000_000_000u64;
        let evs: Vec<_> = (0..40_000u64)
            .map(|i| {
                let w = wall + i * 1_000;
                let mut e = event(
                    crate::ids::wall_ns_to_id(w) | (i & 63),
                    (i % 50) as u32,
                    if i % 2 == 0 {
                        EventType::FunctionEntry
                    } else {
                        EventType::FunctionExit
                    },
                );
                e.wall_ns = w as i64;
                e.mono_ns = w as i64 - 1_700_000_000_000_000_000;
                // an ETF list of a few small integers and a short binary
                e.data = vec![
                    131,
                    108,
                    0,
                    0,
                    0,
                    3,
                    97,
                    (i % 251) as u8,
                    97,
                    (i % 13) as u8,
                    109,
                    0,
                    0,
                    0,
                    4,
                    b'u',
                    b's',
                    b'e',
                    (b'0' + (i % 10) as u8),
                    106,
                ];
                e
            })
            .collect();
        for chunk in evs.chunks(512) {
            s.write(chunk, &[]).unwrap();
        }
        s.flush_all().unwrap();
        let flushed = s.live_bytes();
        s.compact_all().unwrap();
        let compacted = s.live_bytes();
        // (a bottommost rewrite also zeroes sequence numbers: ~15% here; LZ4 at
        // flush time was 1.7×)
        assert!(
            flushed * 100 <= compacted * 130,
            "{flushed} bytes flushed vs {compacted} compacted"
        );
        assert_eq!(s.get(evs[777].id).unwrap().as_ref(), Some(&evs[777]));
        // index and filter come in partitions (a monolithic one of a big file
        // outgrew its cache shard and was re-read by every lookup)
        let props =
            s.db.property_value_cf(
                s.cf(CF_EVENTS).unwrap(),
                "rocksdb.aggregated-table-properties",
            )
            .unwrap()
            .unwrap();
        let partitions: u64 = props
            .split(';')
            .find_map(|kv| kv.trim().strip_prefix("# index partitions="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index partitions in {props}"));
        assert!(partitions > 1, "{props}");
    }

    #[test]
    fn refuses_foreign_directories_without_touching_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let e = Store::open(dir.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "incompatible");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A RocksDB that is not ours.
        let other = tempfile::tempdir().unwrap();
        {
            let mut o = Options::default();
            o.create_if_missing(true);
            let db = DB::open(&o, other.path()).unwrap();
            db.put(b"k", b"v").unwrap();
        }
        let e = Store::open(other.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "incompatible", "{e}");
    }

    #[test]
    fn names_reach_the_disk_before_any_event_that_uses_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            // interned for a batch that then never lands (a crash, a failed write)
            let id = s.intern("Elixir.Lonely", s.cf(CF_META).unwrap()).unwrap();
            assert_eq!(s.name_id("Elixir.Lonely"), Some(id));
        }
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(s.name_id("Elixir.Lonely").is_some());
    }

    #[test]
    fn a_gap_in_the_name_table_is_not_fatal() {
        // stores written before names were persisted on their own could lose
        // a name whose batch failed while a later one landed
        let dir = tempfile::tempdir().unwrap();
        let mut e = event(64, 1, EventType::FunctionEntry);
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.write(std::slice::from_ref(&e), &[]).unwrap();
            let m = s.name_id("Elixir.M").unwrap();
            let meta = s.cf(CF_META).unwrap();
            let mut k = META_NAME.to_vec();
            k.extend_from_slice(&m.to_be_bytes());
            s.db.delete_cf(meta, k).unwrap();
        }
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.name_id("Elixir.M"), None);
        let got = s.get(64).unwrap().unwrap();
        assert_eq!(got.module, None, "a missing name reads as none");
        assert_eq!(got.function.as_deref(), Some("f"));
        // new names never reuse the lost id
        e.id = 128;
        e.module = Some("Elixir.N".into());
        s.write(std::slice::from_ref(&e), &[]).unwrap();
        let n = s.name_id("Elixir.N").unwrap();
        assert!(n > s.name_id("f").unwrap() && n > s.name_id("nonode@nohost").unwrap());
        assert_eq!(
            s.get(128).unwrap().unwrap().module.as_deref(),
            Some("Elixir.N")
        );
        assert_eq!(s.get(64).unwrap().unwrap().module, None);
    }

    #[test]
    fn refuses_another_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.db.put_cf(s.cf(CF_META).unwrap(), META_SCHEMA, 99u32.to_be_bytes())
                .unwrap();
        }
        let e = Store::open(dir.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    #[test]
    fn unusable_paths_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let target = file.join("store");
        let e = Store::open(&target, StoreOptions::default()).err().unwrap();
        assert_eq!(e.kind(), "path");
        assert!(e.to_string().contains(&target.display().to_string()), "{e}");
        let e = Store::open(
            dir.path().join("nope"),
            StoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn store_counts_from_posting_lists_what_the_events_are() {
        use crate::query::{self, Filter};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let kinds = [
            EventType::FunctionEntry,
            EventType::StateChange,
            EventType::MessageSend,
        ];
        let evs: Vec<_> = (1..=9_000u64)
            .map(|i| event(i * 64, (i % 5) as u32, kinds[(i % 3) as usize]))
            .collect();
        for chunk in evs.chunks(700) {
            s.write(chunk, &[]).unwrap();
        }
        let by_scan = |f: &Filter| query::events(&s, f).unwrap().events.len() as u64;
        let all = Filter::default();
        assert_eq!(query::count(&s, &all).unwrap(), (9_000, "by_type"));
        let states = Filter {
            types: vec![EventType::StateChange, EventType::StateChange],
            ..Default::default()
        };
        assert_eq!(query::count(&s, &states).unwrap().0, 3_000);
        let capped = Filter {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(query::count(&s, &capped).unwrap().0, 10);
        // retention trims the lists: still the same answer
        s.delete_before(2_000 * 64, 500).unwrap();
        assert_eq!(query::count(&s, &all).unwrap().0, by_scan(&all));
        assert_eq!(query::count(&s, &all).unwrap().0, 9_000 - 1_999);
        // other filters count page by page
        let one_pid = Filter {
            pid: Some(crate::query::PidMatch {
                node: None,
                id: 3,
                serial: 0,
            }),
            ..Default::default()
        };
        assert_eq!(query::count(&s, &one_pid).unwrap().0, by_scan(&one_pid));
    }

    #[test]
    fn prefix_end_bounds_scans() {
        assert_eq!(keys::prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(keys::prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(keys::prefix_end(&[0xff]), None);
    }
}
