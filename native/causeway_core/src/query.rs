//! Queries over the store, each served from the index that fits (never a full
//! scan when a filter names a pid, a call, a module or a type; a time range
//! alone is a range of the primary key, since ids are time-ordered).

use crate::event::{EventType, LinkKind, StoredEvent};
use crate::ids::wall_ns_to_id;
use crate::store::{
    is_posting_cf, keys, postings, Lookups, Store, CF_BY_CALL, CF_BY_MFA, CF_BY_PID, CF_BY_TYPE,
    CF_EVENTS, CF_STATE,
};
use crate::{Error, Result};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

/// A pid to match: number and serial, and the node when it is known to be the
/// node that wrote the events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PidMatch {
    pub id: u32,
    pub serial: u32,
    pub node: Option<String>,
}

impl PidMatch {
    fn key(&self) -> [u8; 8] {
        let mut k = [0u8; 8];
        k[..4].copy_from_slice(&self.id.to_be_bytes());
        k[4..].copy_from_slice(&self.serial.to_be_bytes());
        k
    }

    pub fn matches(&self, p: &crate::event::PidRec) -> bool {
        p.id == self.id
            && p.serial == self.serial
            && self.node.as_ref().is_none_or(|n| **n == *p.node)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pid: Option<PidMatch>,
    pub types: Vec<EventType>,
    pub module: Option<String>,
    pub function: Option<String>,
    pub arity: Option<u32>,
    pub call_id: Option<u64>,
    /// Inclusive lower bound on the id (`ids::wall_ns_to_id` of a time).
    pub since_id: Option<u64>,
    /// Inclusive upper bound on the id.
    pub until_id: Option<u64>,
    /// Inclusive bounds on the wall-clock time (ns), checked on each event.
    pub since_wall: Option<i64>,
    pub until_wall: Option<i64>,
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
    /// Resume strictly after this id (in the order of the scan).
    pub after: Option<u64>,
    /// Ignore the indexes and scan the primary key range (a baseline for benchmarks).
    pub force_scan: bool,
}

/// How far ahead of its capture time an id may run (bursts faster than one
/// event per 64 ns on one shard push ids forward).
pub const ID_SLACK_NS: u64 = 1_000_000;

/// One page of results and the cursor to continue from, if there may be more.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    pub next: Option<u64>,
    /// Which index served the query (for tests, benches and `explain`).
    pub index: &'static str,
}

impl Filter {
    fn id_range(&self) -> (u64, u64) {
        let mut lo = self.since_id.unwrap_or(0);
        let mut hi = self.until_id.unwrap_or(u64::MAX);
        if let Some(a) = self.after {
            if self.reverse {
                hi = hi.min(a.saturating_sub(1));
            } else {
                lo = lo.max(a.saturating_add(1));
            }
        }
        (lo, hi)
    }

    fn matches(&self, e: &StoredEvent) -> bool {
        if let Some(p) = &self.pid {
            if !p.matches(&e.pid) {
                return false;
            }
        }
        if !self.types.is_empty() && !self.types.contains(&e.kind) {
            return false;
        }
        if (self.module.is_some() || self.function.is_some() || self.arity.is_some())
            && !e.has_mfa()
        {
            return false;
        }
        if let Some(m) = &self.module {
            if e.module.as_deref() != Some(m.as_str()) {
                return false;
            }
        }
        if let Some(f) = &self.function {
            if e.function.as_deref() != Some(f.as_str()) {
                return false;
            }
        }
        if let Some(a) = self.arity {
            if e.module.is_none() || e.arity != a {
                return false;
            }
        }
        if let Some(c) = self.call_id {
            if e.call_id != c {
                return false;
            }
        }
        if self.since_wall.is_some_and(|s| e.wall_ns < s)
            || self.until_wall.is_some_and(|u| e.wall_ns > u)
        {
            return false;
        }
        true
    }

    /// Sets the time bounds (wall-clock ns, inclusive). Ids never lag their
    /// capture time but may run a little ahead of it in a burst, so the id
    /// range is widened by `ID_SLACK_NS` at the top and each event's own time
    /// decides.
    pub fn with_time(mut self, since_wall: Option<i64>, until_wall: Option<i64>) -> Filter {
        self.since_wall = since_wall;
        self.until_wall = until_wall;
        self.since_id = since_wall.map(|s| wall_ns_to_id(s.max(0) as u64));
        self.until_id =
            until_wall.map(|u| wall_ns_to_id((u.max(0) as u64).saturating_add(ID_SLACK_NS)) | 63);
        self
    }
}

/// A key range of one column family whose keys are `prefix · id`, so it
/// yields ids in order.
struct Source {
    cf: &'static str,
    prefix: Vec<u8>,
    /// Restricts the source to this one id (a point lookup in the merge).
    only: Option<u64>,
}

fn bounds(prefix: &[u8], lo: u64, hi: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut l = prefix.to_vec();
    l.extend_from_slice(&lo.to_be_bytes());
    let h = if hi == u64::MAX {
        keys::prefix_end(prefix)
    } else {
        let mut h = prefix.to_vec();
        h.extend_from_slice(&(hi + 1).to_be_bytes());
        Some(h)
    };
    (l, h)
}

/// An iterator over the keys `prefix ++ id` with `lo <= id <= hi`, placed on
/// the first (or, in reverse, the last) of them; the blocks it reads are
/// kept in the block cache or not (`fill_cache`).
fn key_range<'a>(
    store: &'a Store,
    cf: &impl rocksdb::AsColumnFamilyRef,
    prefix: &[u8],
    lo: u64,
    hi: u64,
    reverse: bool,
    fill_cache: bool,
) -> rocksdb::DBRawIterator<'a> {
    let (l, h) = bounds(prefix, lo, hi);
    let mut ro = rocksdb::ReadOptions::default();
    ro.fill_cache(fill_cache);
    ro.set_iterate_lower_bound(l.clone());
    if let Some(h) = h {
        ro.set_iterate_upper_bound(h);
    }
    let mut it = store.db().raw_iterator_cf_opt(cf, ro);
    if reverse {
        it.seek_to_last();
    } else {
        it.seek(&l);
    }
    it
}

/// The ids of one source, in order: either keys that end in an id, or
/// posting lists merged on the fly (see `store::postings`).
enum Stream<'a> {
    Fixed(std::vec::IntoIter<u64>),
    Keys(rocksdb::DBRawIterator<'a>),
    Postings {
        cf: &'static str,
        lo: u64,
        hi: u64,
        lists: ListMerge<'a, u64>,
    },
}

/// Something held in a `ListMerge`: ordered by its event id.
trait Keyed: Ord {
    fn id(&self) -> u64;
}

impl Keyed for u64 {
    fn id(&self) -> u64 {
        *self
    }
}

/// The items of posting lists (one per key, the key ending in the list's first
/// id, a list spanning less than `postings::SPAN`), merged in id order in
/// either direction: the next list is opened while it may hold items before
/// the best one buffered. A k-way merge: the heap holds one entry per open
/// list (its next item), not every buffered item, so taking an item costs
/// O(log lists) instead of O(log items) and moves two words, not the item.
struct ListMerge<'a, T> {
    it: rocksdb::DBRawIterator<'a>,
    reverse: bool,
    /// Open lists, each ordered so that its next item is its last.
    lists: Vec<Vec<T>>,
    /// (merge key of a list's next item, the list's slot); best on top.
    heads: BinaryHeap<(u64, usize)>,
    /// Slots of exhausted lists.
    free: Vec<usize>,
}

impl<'a, T: Keyed> ListMerge<'a, T> {
    fn new(it: rocksdb::DBRawIterator<'a>, reverse: bool) -> Self {
        ListMerge {
            it,
            reverse,
            lists: Vec::new(),
            heads: BinaryHeap::new(),
            free: Vec::new(),
        }
    }

    /// The max-heap key of `id`: larger for the item to take first. Its own
    /// inverse: the id of a key is `key(key)`.
    fn key(&self, id: u64) -> u64 {
        if self.reverse {
            id
        } else {
            !id
        }
    }

    /// Adds an opened list to the merge.
    fn add(&mut self, mut items: Vec<T>) {
        // lists are stored in id order; a list that is not is sorted
        if !items.windows(2).all(|w| w[0].id() <= w[1].id()) {
            items.sort_unstable_by_key(|t| t.id());
        }
        if !self.reverse {
            items.reverse(); // ascending merge: the smallest id last
        }
        let Some(next) = items.last() else {
            return;
        };
        let key = self.key(next.id());
        let slot = match self.free.pop() {
            Some(slot) => {
                self.lists[slot] = items;
                slot
            }
            None => {
                self.lists.push(items);
                self.lists.len() - 1
            }
        };
        self.heads.push((key, slot));
    }

    /// The next item; `open(first, value)` decodes one list.
    fn next(&mut self, mut open: impl FnMut(u64, &[u8]) -> Result<Vec<T>>) -> Result<Option<T>> {
        loop {
            if self.it.valid() {
                let first = self
                    .it
                    .key()
                    .and_then(keys::trailing_id)
                    .ok_or_else(|| Error::Corrupt("posting key".into()))?;
                let wanted = match self.heads.peek() {
                    None => true,
                    Some(&(key, _)) => {
                        let top = self.key(key);
                        if self.reverse {
                            first.saturating_add(postings::SPAN) > top
                        } else {
                            first <= top
                        }
                    }
                };
                if wanted {
                    let items = open(first, self.it.value().unwrap_or(&[]))?;
                    self.add(items);
                    if self.reverse {
                        self.it.prev();
                    } else {
                        self.it.next();
                    }
                    continue;
                }
            } else {
                self.it.status()?;
            }
            let Some((_, slot)) = self.heads.pop() else {
                return Ok(None);
            };
            let item = self.lists[slot].pop();
            match self.lists[slot].last() {
                Some(next) => {
                    let key = self.key(next.id());
                    self.heads.push((key, slot));
                }
                None => self.free.push(slot),
            }
            return Ok(item);
        }
    }
}

impl Stream<'_> {
    fn next(&mut self, reverse: bool) -> Result<Option<u64>> {
        match self {
            Stream::Fixed(ids) => Ok(ids.next()),
            Stream::Keys(it) => {
                if !it.valid() {
                    it.status()?;
                    return Ok(None);
                }
                let id = it.key().and_then(keys::trailing_id);
                if reverse {
                    it.prev();
                } else {
                    it.next();
                }
                Ok(id)
            }
            Stream::Postings { cf, lo, hi, lists } => {
                let (cf, lo, hi) = (*cf, *lo, *hi);
                lists.next(|first, value| {
                    Ok(postings::decode_ids(cf, first, value)?
                        .into_iter()
                        .filter(|id| (lo..=hi).contains(id))
                        .collect())
                })
            }
        }
    }
}

/// Sorted-merge of several sources: ids in ascending (or descending) order.
struct Merge<'a> {
    streams: Vec<Stream<'a>>,
    heap: BinaryHeap<(Reverse<u64>, usize)>,
    heap_rev: BinaryHeap<(u64, usize)>,
    reverse: bool,
}

impl<'a> Merge<'a> {
    fn new(
        store: &'a Store,
        sources: &[Source],
        lo: u64,
        hi: u64,
        reverse: bool,
    ) -> Result<Merge<'a>> {
        let mut m = Merge {
            streams: Vec::new(),
            heap: BinaryHeap::new(),
            heap_rev: BinaryHeap::new(),
            reverse,
        };
        for src in sources {
            let cf = store.cf(src.cf)?;
            let (lo0, hi0) = (lo, hi);
            let (lo, hi) = match src.only {
                Some(id) if src.cf != CF_BY_CALL => (lo.max(id), hi.min(id)),
                _ => (lo, hi),
            };
            if lo > hi {
                continue;
            }
            if src.cf == CF_BY_CALL {
                // the exits of one call: a short list, looked up directly
                let call = src.only.unwrap_or(0);
                let mut ids: Vec<u64> = store
                    .exits_of(call)?
                    .into_iter()
                    .filter(|x| *x >= lo0 && *x <= hi0)
                    .collect();
                if reverse {
                    ids.reverse();
                }
                let i = m.streams.len();
                m.streams.push(Stream::Fixed(ids.into_iter()));
                m.advance(i)?;
                continue;
            }
            let posting = is_posting_cf(src.cf);
            // a posting list that starts up to SPAN before `lo` may reach into the range
            let key_lo = if posting {
                lo.saturating_sub(postings::SPAN)
            } else {
                lo
            };
            let it = key_range(store, cf, &src.prefix, key_lo, hi, reverse, true);
            it.status()?;
            let stream = if posting {
                Stream::Postings {
                    cf: src.cf,
                    lo,
                    hi,
                    lists: ListMerge::new(it, reverse),
                }
            } else {
                Stream::Keys(it)
            };
            let i = m.streams.len();
            m.streams.push(stream);
            m.advance(i)?;
        }
        Ok(m)
    }

    fn advance(&mut self, i: usize) -> Result<()> {
        if let Some(id) = self.streams[i].next(self.reverse)? {
            if self.reverse {
                self.heap_rev.push((id, i));
            } else {
                self.heap.push((Reverse(id), i));
            }
        }
        Ok(())
    }

    /// Appends the next ids to `ids` until it holds `n` or the sources end.
    fn fill(&mut self, ids: &mut Vec<u64>, n: usize) -> Result<()> {
        while ids.len() < n {
            match self.next_id()? {
                Some(id) => ids.push(id),
                None => break,
            }
        }
        Ok(())
    }

    fn next_id(&mut self) -> Result<Option<u64>> {
        let top = if self.reverse {
            self.heap_rev.pop()
        } else {
            self.heap.pop().map(|(Reverse(id), i)| (id, i))
        };
        let Some((id, i)) = top else { return Ok(None) };
        self.advance(i)?;
        Ok(Some(id))
    }
}

/// Ids under one prefix of one column family in `[lo, hi]`, in order.
pub fn ids_in(
    store: &Store,
    cf: &'static str,
    prefix: &[u8],
    lo: u64,
    hi: u64,
    reverse: bool,
    limit: usize,
) -> Result<Vec<u64>> {
    let mut m = Merge::new(
        store,
        &[Source {
            cf,
            prefix: prefix.to_vec(),
            only: None,
        }],
        lo,
        hi,
        reverse,
    )?;
    let mut out = Vec::new();
    m.fill(&mut out, limit)?;
    Ok(out)
}

/// The distinct `len·module·len·function·arity` groups under an mfa prefix.
fn mfa_groups(store: &Store, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut groups = Vec::new();
    let mut start = prefix.to_vec();
    let end = keys::prefix_end(prefix);
    loop {
        let mut found = None;
        store.scan_keys(CF_BY_MFA, &start, end.as_deref(), false, |k, _| {
            if k.len() > 8 {
                found = Some(k[..k.len() - 8].to_vec());
            }
            Ok(false)
        })?;
        match found {
            Some(g) => {
                start = match keys::prefix_end(&g) {
                    Some(s) => s,
                    None => {
                        groups.push(g);
                        break;
                    }
                };
                groups.push(g);
            }
            None => break,
        }
        if groups.len() > 100_000 {
            return Err(Error::Busy("module has too many functions to merge".into()));
        }
    }
    Ok(groups)
}

fn plan(store: &Store, f: &Filter) -> Result<(Vec<Source>, &'static str)> {
    if f.force_scan {
        return Ok((
            vec![Source {
                cf: CF_EVENTS,
                prefix: Vec::new(),
                only: None,
            }],
            "scan",
        ));
    }
    if let Some(c) = f.call_id {
        // the entry is the event whose id is the call id; its exits are in by_call
        return Ok((
            vec![
                Source {
                    cf: CF_EVENTS,
                    prefix: Vec::new(),
                    only: Some(c),
                },
                Source {
                    cf: CF_BY_CALL,
                    prefix: c.to_be_bytes().to_vec(),
                    only: Some(c),
                },
            ],
            "by_call",
        ));
    }
    if let Some(p) = &f.pid {
        return Ok((
            vec![Source {
                cf: CF_BY_PID,
                prefix: p.key().to_vec(),
                only: None,
            }],
            "by_pid",
        ));
    }
    if let Some(m) = &f.module {
        // names never stored match nothing
        let Some(module) = store.name_id(m) else {
            return Ok((Vec::new(), "by_mfa"));
        };
        let function = match &f.function {
            Some(name) => match store.name_id(name) {
                Some(id) => Some(id),
                None => return Ok((Vec::new(), "by_mfa")),
            },
            None => None,
        };
        let prefix = keys::mfa_prefix(module, function, function.and(f.arity));
        let groups = if f.function.is_some() && f.arity.is_some() {
            vec![prefix]
        } else {
            mfa_groups(store, &prefix)?
        };
        return Ok((
            groups
                .into_iter()
                .map(|prefix| Source {
                    cf: CF_BY_MFA,
                    prefix,
                    only: None,
                })
                .collect(),
            "by_mfa",
        ));
    }
    if !f.types.is_empty() {
        let mut ts = f.types.clone();
        ts.sort();
        ts.dedup();
        return Ok((
            ts.into_iter()
                .map(|t| Source {
                    cf: CF_BY_TYPE,
                    prefix: vec![t as u8],
                    only: None,
                })
                .collect(),
            "by_type",
        ));
    }
    Ok((
        vec![Source {
            cf: CF_EVENTS,
            prefix: Vec::new(),
            only: None,
        }],
        "time",
    ))
}

/// A process's events from its `by_pid` lists: covering lists are one
/// sequential scan with no point lookups, id lists are fetched with one
/// multi-get per list; lists are merged in id order as in `Stream::Postings`.
fn events_by_pid(
    store: &Store,
    f: &Filter,
    pid_key: &[u8],
    lo: u64,
    hi: u64,
    limit: usize,
    page: &mut Page,
) -> Result<()> {
    let cf = store.cf(CF_BY_PID)?;
    let it = key_range(
        store,
        cf,
        pid_key,
        lo.saturating_sub(postings::SPAN),
        hi,
        f.reverse,
        true,
    );
    let mut lists = ListMerge::new(it, f.reverse);
    let in_range = |id: &u64| (lo..=hi).contains(id);
    // Events wait in the merge in their disk form (a slot in a copy of their
    // list) and are decoded once, when their turn comes.
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut waiting: Vec<usize> = Vec::new();
    loop {
        let next = lists.next(|first, value| {
            let b = bufs.len() as u32;
            let mut buf = Vec::with_capacity(value.len());
            let mut slots = Vec::new();
            let mut keep = |id: u64, bytes: &[u8]| {
                slots.push(Slot {
                    id,
                    buf: b,
                    off: buf.len() as u32,
                    len: bytes.len() as u32,
                });
                buf.extend_from_slice(bytes);
                Ok(())
            };
            match postings::decode_pid_list(first, value)? {
                postings::PidList::Events(mut evs) => {
                    evs.retain(|(id, _)| in_range(id));
                    // the big events, listed by reference: one multi-get,
                    // then kept in the list's order
                    let refs: Vec<u64> =
                        evs.iter().filter(|e| e.1.is_none()).map(|e| e.0).collect();
                    let mut fetched_bytes = Vec::new();
                    let mut fetched = Vec::with_capacity(refs.len());
                    if !refs.is_empty() {
                        store.get_many_raw(&refs, |id, bytes| {
                            fetched.push((id, fetched_bytes.len(), bytes.len()));
                            fetched_bytes.extend_from_slice(bytes);
                            Ok(())
                        })?;
                    }
                    let mut fetched = fetched.into_iter().peekable();
                    for (id, bytes) in evs {
                        match bytes {
                            Some(bytes) => keep(id, bytes)?,
                            // (an event retention has deleted since is skipped)
                            None => {
                                if let Some((_, at, n)) = fetched.next_if(|f| f.0 == id) {
                                    keep(id, &fetched_bytes[at..at + n])?;
                                }
                            }
                        }
                    }
                }
                postings::PidList::Ids(ids) => {
                    let ids: Vec<u64> = ids.into_iter().filter(in_range).collect();
                    store.get_many_raw(&ids, keep)?;
                }
            }
            bufs.push(buf);
            waiting.push(slots.len());
            Ok(slots)
        })?;
        let Some(slot) = next else {
            return Ok(());
        };
        let b = slot.buf as usize;
        let bytes = bufs[b]
            .get(slot.off as usize..(slot.off + slot.len) as usize)
            .ok_or_else(|| Error::Corrupt("by_pid slot".into()))?;
        let e = store.decode_stored(slot.id, bytes)?;
        waiting[b] -= 1;
        if waiting[b] == 0 {
            bufs[b] = Vec::new();
        }
        if f.matches(&e) {
            page.events.push(e);
            if page.events.len() >= limit {
                page.next = Some(slot.id);
                return Ok(());
            }
        }
    }
}

/// How many events a scan of the events column family reads into the block
/// cache before it reads on without caching (see `events_in_time`).
pub const SCAN_CACHED_EVENTS: usize = 4096;

/// Events in an id (time) range, straight from the events column family:
/// one sequential read, each value decoded where the iterator holds it.
///
/// The scan is resistant: only its first `SCAN_CACHED_EVENTS` events (and
/// none of a continuation page, `after:`) fill the block cache. A scan of
/// every process's events over a long range reads the widest column family
/// there is; cached, it evicts the blocks that point lookups, call trees and
/// pid queries live on (a 10 M-event store: a by-pid query after a full scan
/// decoded 1.2 M events/s instead of 2.8 M/s with its blocks still cached).
fn events_in_time(
    store: &Store,
    f: &Filter,
    lo: u64,
    hi: u64,
    limit: usize,
    page: &mut Page,
) -> Result<()> {
    let cf = store.cf(CF_EVENTS)?;
    let mut cached = if f.after.is_none() {
        SCAN_CACHED_EVENTS
    } else {
        0
    };
    let mut it = key_range(store, cf, &[], lo, hi, f.reverse, cached > 0);
    while it.valid() {
        let Some(id) = it.key().and_then(keys::trailing_id) else {
            return Err(Error::Corrupt("event key".into()));
        };
        if cached > 0 {
            cached -= 1;
            if cached == 0 {
                // on from this event, reading without filling the cache
                let (l, h) = if f.reverse { (lo, id) } else { (id, hi) };
                it.status()?;
                it = key_range(store, cf, &[], l, h, f.reverse, false);
                continue;
            }
        }
        let Some(bytes) = it.value() else {
            return Err(Error::Corrupt("event key".into()));
        };
        let e = store.decode_stored(id, bytes)?;
        if f.matches(&e) {
            page.events.push(e);
            if page.events.len() >= limit {
                page.next = Some(id);
                return Ok(());
            }
        }
        if f.reverse {
            it.prev();
        } else {
            it.next();
        }
    }
    it.status()?;
    Ok(())
}

/// An event of a `by_pid` list in its disk form: bytes `off..off + len` of
/// the copy `buf` of its list. Ordered by id (ids are unique).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    id: u64,
    buf: u32,
    off: u32,
    len: u32,
}

impl Keyed for Slot {
    fn id(&self) -> u64 {
        self.id
    }
}

/// Events matching `f`, at most `f.limit` (0 = no limit), in id order.
pub fn events(store: &Store, f: &Filter) -> Result<Page> {
    let (sources, index) = plan(store, f)?;
    let (lo, hi) = f.id_range();
    let mut page = Page {
        events: Vec::new(),
        next: None,
        index,
    };
    if lo > hi {
        return Ok(page);
    }
    let limit = if f.limit == 0 { usize::MAX } else { f.limit };
    match (&sources[..], index) {
        ([src], "by_pid") => {
            events_by_pid(store, f, &src.prefix, lo, hi, limit, &mut page)?;
            return Ok(page);
        }
        ([src], "time" | "scan") if src.cf == CF_EVENTS && src.only.is_none() => {
            events_in_time(store, f, lo, hi, limit, &mut page)?;
            return Ok(page);
        }
        _ => {}
    }
    let mut merge = Merge::new(store, &sources, lo, hi, f.reverse)?;
    let mut ids = Vec::with_capacity(256);
    'outer: loop {
        ids.clear();
        merge.fill(&mut ids, 1024)?;
        if ids.is_empty() {
            break;
        }
        let evs = store.get_many(&ids)?;
        for e in evs {
            if f.matches(&e) {
                let id = e.id;
                page.events.push(e);
                if page.events.len() >= limit {
                    page.next = Some(id);
                    break 'outer;
                }
            }
        }
    }
    Ok(page)
}

/// How many events match `f` (at most `f.limit`, 0 = no limit), and the
/// index that counted them. A filter on types alone (or none at all) is
/// counted from the `by_type` posting lists, one per type per written
/// batch, without reading an event: the count of a growing store costs
/// its batches, not its events (14.5 M events took 12.6 s to count one by
/// one). Other filters count what `events` would return, without keeping
/// the events.
pub fn count(store: &Store, f: &Filter) -> Result<(u64, &'static str)> {
    let types_only = f.pid.is_none()
        && f.module.is_none()
        && f.function.is_none()
        && f.arity.is_none()
        && f.call_id.is_none()
        && f.since_id.is_none()
        && f.until_id.is_none()
        && f.since_wall.is_none()
        && f.until_wall.is_none()
        && f.after.is_none()
        && !f.force_scan;
    let limit = if f.limit == 0 {
        u64::MAX
    } else {
        f.limit as u64
    };
    if types_only {
        let mut types = if f.types.is_empty() {
            EventType::ALL.to_vec()
        } else {
            f.types.clone()
        };
        types.sort_unstable_by_key(|t| *t as u8);
        types.dedup();
        let mut n = 0u64;
        for t in types {
            let prefix = [t as u8];
            let end = keys::prefix_end(&prefix);
            store.scan_keys(CF_BY_TYPE, &prefix, end.as_deref(), false, |_, v| {
                n = n.saturating_add(postings::len(v)?);
                Ok(n < limit)
            })?;
        }
        return Ok((n.min(limit), "by_type"));
    }
    let mut counted = Filter {
        limit: f.limit,
        ..f.clone()
    };
    let mut n = 0u64;
    // in pages, so the events counted are never all held at once
    loop {
        counted.limit = (limit - n).min(10_000) as usize;
        let page = events(store, &counted)?;
        n += page.events.len() as u64;
        match page.next {
            Some(next) if n < limit => counted.after = Some(next),
            _ => return Ok((n, page.index)),
        }
    }
}

/// Backward links in the order a causal chain prefers them.
const CHAIN_ORDER: [LinkKind; 5] = [
    LinkKind::Completes,
    LinkKind::CausedBy,
    LinkKind::Receives,
    LinkKind::CalledFrom,
    LinkKind::ExitOf,
];

/// From an event back to its root cause: `[event, cause, cause of cause, ...]`.
pub fn causal_chain(
    store: &Store,
    id: u64,
    max: usize,
) -> Result<Vec<(StoredEvent, Option<LinkKind>)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = store
        .get(id)?
        .ok_or_else(|| Error::NotFound(format!("event {id}")))?;
    let mut via = None;
    let mut lk = store.lookups();
    loop {
        seen.insert(cur.id);
        let links = lk.links_of(&cur)?;
        let next = CHAIN_ORDER.iter().find_map(|k| {
            links
                .iter()
                .find(|(lk, to)| lk == k && !seen.contains(to))
                .copied()
        });
        out.push((cur, via));
        if out.len() >= max {
            break;
        }
        let Some((kind, to)) = next else { break };
        match store.get(to)? {
            Some(e) => {
                cur = e;
                via = Some(kind);
            }
            None => break,
        }
    }
    Ok(out)
}

/// A call with its exit and nested calls, and the links of both events (as
/// `Store::links_of` gives them), read while the tree was built.
#[derive(Clone, Debug)]
pub struct CallNode {
    pub entry: StoredEvent,
    pub exit: Option<StoredEvent>,
    pub children: Vec<CallNode>,
    pub entry_links: Vec<(LinkKind, u64)>,
    /// Empty when there is no exit.
    pub exit_links: Vec<(LinkKind, u64)>,
}

/// Trees are as deep as the recursion they record (thousands of levels):
/// dropped level by level, not by the recursive drop glue a dirty
/// scheduler's small stack could not hold.
impl Drop for CallNode {
    fn drop(&mut self) {
        let mut doomed = std::mem::take(&mut self.children);
        while let Some(mut n) = doomed.pop() {
            doomed.append(&mut n.children);
        }
    }
}

/// A node being built: the ids of its calls not yet visited wait in
/// `pending`, its exit is read when it is done.
struct OpenCall {
    entry: StoredEvent,
    entry_links: Vec<(LinkKind, u64)>,
    exit_id: Option<u64>,
    pending: std::vec::IntoIter<u64>,
    children: Vec<CallNode>,
}

/// Opens the call of `entry` (whose links are `links` when the caller has
/// read them).
fn open_call(
    lk: &mut Lookups,
    entry: StoredEvent,
    links: Option<Vec<(LinkKind, u64)>>,
) -> Result<OpenCall> {
    let links = match links {
        Some(l) => l,
        None => lk.links_of(&entry)?,
    };
    let exit_id = links
        .iter()
        .find(|(k, _)| *k == LinkKind::CompletedBy)
        .map(|(_, x)| *x);
    let mut child_ids: Vec<u64> = links
        .iter()
        .filter(|(k, _)| *k == LinkKind::Calls)
        .map(|(_, c)| *c)
        .collect();
    child_ids.sort_unstable();
    Ok(OpenCall {
        entry,
        entry_links: links,
        exit_id,
        pending: child_ids.into_iter(),
        children: Vec::new(),
    })
}

/// A call whose nested calls are all done: its exit and the exit's links.
fn close_call(lk: &mut Lookups, done: OpenCall) -> Result<CallNode> {
    let exit = match done.exit_id {
        Some(x) => lk.event(x)?,
        None => None,
    };
    let exit_links = match &exit {
        Some(x) => lk.links_of_known(x, Some(done.entry.id))?,
        None => Vec::new(),
    };
    Ok(CallNode {
        entry: done.entry,
        exit,
        children: done.children,
        entry_links: done.entry_links,
        exit_links,
    })
}

/// The tree under `entry`, depth first, with an explicit stack (no recursion:
/// a recorded recursion can be deeper than any thread's stack); every node
/// below the root spends one unit of `budget` (calls whose entry is not in
/// the store are left out and spend nothing). Events and links are read in
/// the order of their ids in a call that ran in one process (entry, nested
/// calls, exit), so the lookups' cursors mostly step forward.
fn call_node(
    lk: &mut Lookups,
    entry: StoredEvent,
    links: Option<Vec<(LinkKind, u64)>>,
    budget: &mut usize,
) -> Result<CallNode> {
    let mut stack = vec![open_call(lk, entry, links)?];
    'walk: loop {
        let Some(top) = stack.last_mut() else {
            return Err(Error::Corrupt("call tree stack".into()));
        };
        if *budget > 0 {
            for id in top.pending.by_ref() {
                if let Some(child) = lk.event(id)? {
                    *budget -= 1;
                    let open = open_call(lk, child, None)?;
                    stack.push(open);
                    continue 'walk;
                }
            }
        }
        let Some(done) = stack.pop() else {
            return Err(Error::Corrupt("call tree stack".into()));
        };
        let node = close_call(lk, done)?;
        match stack.last_mut() {
            Some(parent) => parent.children.push(node),
            None => return Ok(node),
        }
    }
}

/// The tree of one call (by its call id = its entry's id).
pub fn call_tree(store: &Store, call_id: u64, max_nodes: usize) -> Result<CallNode> {
    let mut lk = store.lookups();
    let entry = lk
        .event(call_id)?
        .ok_or_else(|| Error::NotFound(format!("call {call_id}")))?;
    if entry.kind != EventType::FunctionEntry {
        return Err(Error::InvalidArgument(format!(
            "event {call_id} is a {}, not a function_entry",
            entry.kind.name()
        )));
    }
    let mut budget = max_nodes;
    call_node(&mut lk, entry, None, &mut budget)
}

/// Every top-level call of a process (calls with no instrumented caller), at
/// most `max_nodes` nodes in all; reading stops when the budget is spent.
pub fn call_trees_of(store: &Store, pid: &PidMatch, max_nodes: usize) -> Result<Vec<CallNode>> {
    let f = Filter {
        pid: Some(pid.clone()),
        types: vec![EventType::FunctionEntry],
        ..Default::default()
    };
    let mut budget = max_nodes;
    let mut out = Vec::new();
    let mut lk = store.lookups();
    for_each_event(store, &f, |e| {
        if budget == 0 {
            return Ok(false);
        }
        let links = lk.links_of(&e)?;
        if !links.iter().any(|(k, _)| *k == LinkKind::CalledFrom) {
            budget -= 1;
            out.push(call_node(&mut lk, e, Some(links), &mut budget)?);
        }
        Ok(budget > 0)
    })?;
    Ok(out)
}

/// Messages between two processes (both directions), each send with its receive.
pub fn message_flow(
    store: &Store,
    a: &PidMatch,
    b: &PidMatch,
    limit: usize,
) -> Result<Vec<(StoredEvent, Option<StoredEvent>)>> {
    // each direction in id order, stopping at `limit`: the first `limit` of
    // their merge are among those
    let want = if limit == 0 { usize::MAX } else { limit };
    let mut out = Vec::new();
    let mut lk = store.lookups();
    for (from, to) in [(a, b), (b, a)] {
        let f = Filter {
            pid: Some(from.clone()),
            types: vec![EventType::MessageSend],
            ..Default::default()
        };
        let mut taken = 0;
        for_each_event(store, &f, |s| {
            if s.peer.as_ref().is_some_and(|p| to.matches(p)) {
                let recv = match lk
                    .links_of(&s)?
                    .iter()
                    .find(|(k, _)| *k == LinkKind::ReceivedBy)
                {
                    Some((_, r)) => store.get(*r)?,
                    None => None,
                };
                out.push((s, recv));
                taken += 1;
            }
            Ok(taken < want)
        })?;
        if a == b {
            break;
        }
    }
    out.sort_by_key(|(s, _)| s.id);
    out.truncate(want);
    Ok(out)
}

/// State changes of a process within the wall-clock window `since..=until`
/// (ns, either open), oldest first; `limit` 0 = all. Reads stop at the limit.
pub fn state_history(
    store: &Store,
    pid: &PidMatch,
    since_wall: Option<i64>,
    until_wall: Option<i64>,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let f = Filter::default().with_time(since_wall, until_wall);
    let (lo, hi) = f.id_range();
    let want = if limit == 0 { usize::MAX } else { limit };
    let mut out = Vec::new();
    if lo > hi {
        return Ok(out);
    }
    let mut m = Merge::new(
        store,
        &[Source {
            cf: CF_STATE,
            prefix: pid.key().to_vec(),
            only: None,
        }],
        lo,
        hi,
        false,
    )?;
    let mut ids = Vec::with_capacity(256);
    while out.len() < want {
        ids.clear();
        m.fill(&mut ids, 256)?;
        if ids.is_empty() {
            break;
        }
        out.extend(
            store
                .get_many(&ids)?
                .into_iter()
                .filter(|e| pid.matches(&e.pid) && f.matches(e)),
        );
    }
    out.truncate(want);
    Ok(out)
}

/// Calls `each` with the events matching `f`, in order, a page at a time
/// (memory stays bounded however many match), until it returns false.
fn for_each_event(
    store: &Store,
    f: &Filter,
    mut each: impl FnMut(StoredEvent) -> Result<bool>,
) -> Result<()> {
    let mut f = f.clone();
    f.limit = 1024;
    loop {
        let page = events(store, &f)?;
        for e in page.events {
            if !each(e)? {
                return Ok(());
            }
        }
        match page.next {
            Some(id) => f.after = Some(id),
            None => return Ok(()),
        }
    }
}

/// The last state change of `pid` at or before wall-clock `wall_ns`.
pub fn state_at(store: &Store, pid: &PidMatch, wall_ns: u64) -> Result<Option<StoredEvent>> {
    let until =
        wall_ns_to_id(wall_ns.saturating_add(ID_SLACK_NS)) | ((1u64 << crate::ids::SHARD_BITS) - 1);
    let mut m = Merge::new(
        store,
        &[Source {
            cf: CF_STATE,
            prefix: pid.key().to_vec(),
            only: None,
        }],
        0,
        until,
        true,
    )?;
    while let Some(id) = m.next_id()? {
        if let Some(e) = store.get(id)? {
            if pid.matches(&e.pid) && e.wall_ns as u64 <= wall_ns {
                return Ok(Some(e));
            }
        }
    }
    Ok(None)
}
