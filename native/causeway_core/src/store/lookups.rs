//! The point lookups of one query — events by id, an event's stored links,
//! a call's exits and an event's children — through one iterator per
//! column family, created on its first use and moved forward from lookup
//! to lookup.
//!
//! Creating a RocksDB iterator (a super-version reference, an iterator per
//! level and file) cost more than the lookup itself, and a call tree of 3
//! calls made 15 of them. A seek through every level is the next cost: a
//! query that looks up keys in ascending order (a call tree read depth
//! first: entry, nested calls, exit) finds the next key a few steps ahead
//! of the last one, so a `Cursor` steps there with `next` and seeks only
//! when the key is behind it or farther away. The `by_call` pair lists a
//! lookup reads (those of the `call_window` before the call) are kept while
//! the next, later calls may need them. Everything is dropped with the query, so
//! the snapshot the iterators hold lives no longer than it.

use super::*;
use std::collections::VecDeque;

/// An iterator over one column family, positioned by `seek` on the first
/// key ≥ a target.
struct Cursor<'a> {
    it: rocksdb::DBRawIterator<'a>,
    /// No key lies in `[floor, current key)`; `None` before the first seek.
    floor: Option<Vec<u8>>,
}

impl<'a> Cursor<'a> {
    /// How many keys `seek` steps over before it seeks instead.
    const STEPS: usize = 16;

    fn new(store: &'a Store, cf: &str) -> Result<Cursor<'a>> {
        Ok(Cursor {
            it: store
                .db
                .raw_iterator_cf_opt(store.cf(cf)?, ReadOptions::default()),
            floor: None,
        })
    }

    /// Places the iterator on the first key ≥ `target` (or past the last).
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        if self.floor.as_deref().is_some_and(|floor| floor <= target) {
            for _ in 0..=Self::STEPS {
                match self.it.key() {
                    Some(k) if k >= target => return Ok(()),
                    Some(_) => self.next(),
                    None => break,
                }
            }
        }
        self.it.seek(target);
        self.floor = Some(target.to_vec());
        self.it.status()?;
        Ok(())
    }

    /// The current key and value.
    fn entry(&self) -> Option<(&[u8], &[u8])> {
        match (self.it.key(), self.it.value()) {
            (Some(k), Some(v)) if self.it.valid() => Some((k, v)),
            _ => None,
        }
    }

    /// Steps past the current key.
    fn next(&mut self) {
        if let (Some(k), Some(floor)) = (self.it.key(), self.floor.as_mut()) {
            // the smallest key after `k`
            floor.clear();
            floor.extend_from_slice(k);
            floor.push(0);
        }
        self.it.next();
    }

    fn status(&self) -> Result<()> {
        self.it.status()?;
        Ok(())
    }
}

/// The `by_call` pair lists of a window of call ids, copied from disk.
struct PairLists<'a> {
    store: &'a Store,
    cursor: Cursor<'a>,
    /// Of the lists whose first call id is in `span` (inclusive), those whose
    /// range reaches the last call looked up (the others cannot hold it or
    /// any call after it), in key order: (key, value).
    lists: VecDeque<(Vec<u8>, Vec<u8>)>,
    span: Option<(u64, u64)>,
    /// The last call looked up.
    last: u64,
}

/// Whether the pair list with key `k` can hold `call` (or a later call).
fn reaches(k: &[u8], call: u64) -> bool {
    postings::parse_pair_key(k).is_some_and(|(_, last, _)| last >= call)
}

impl PairLists<'_> {
    /// What is paired with `call` (an entry's exits, a call's or a
    /// message's children), with the kind byte of the list (`None`: exits):
    /// from the lists whose first id is in `[call − call_window, call]` and
    /// whose range holds the call.
    fn pairs_of(&mut self, call: u64) -> Result<Vec<(Option<u8>, u64)>> {
        let lo = call.saturating_sub(self.store.call_window(call));
        let lo_key = postings::pair_key(lo, 0);
        let hi_key = call.checked_add(1).map(|c| postings::pair_key(c, 0));
        match self.span {
            // the window moves forward: drop what it left, read what it reached
            Some((start, end)) if lo >= start && lo <= end && call >= self.last => {
                self.lists
                    .retain(|(k, _)| k.as_slice() >= &lo_key[..] && reaches(k, call));
                if call > end {
                    self.extend(hi_key.as_ref(), call)?;
                }
                self.span = Some((lo, end.max(call)));
            }
            _ => {
                self.lists.clear();
                self.cursor.seek(&lo_key)?;
                self.extend(hi_key.as_ref(), call)?;
                self.span = Some((lo, call));
            }
        }
        self.last = call;
        let mut out = Vec::new();
        for (k, v) in &self.lists {
            if hi_key.as_ref().is_some_and(|h| k.as_slice() >= &h[..]) {
                break;
            }
            // only lists whose range holds the call are searched
            if let Some((_, last, kind)) = postings::parse_pair_key(k) {
                if last >= call {
                    out.extend(postings::exits_in(v, call)?.into_iter().map(|x| (kind, x)));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Reads the lists from the cursor's position up to `hi` (exclusive),
    /// keeping those that reach `call`.
    fn extend(&mut self, hi: Option<&[u8; 16]>, call: u64) -> Result<()> {
        while let Some((k, v)) = self.cursor.entry() {
            if hi.is_some_and(|h| k >= &h[..]) {
                break;
            }
            if reaches(k, call) {
                self.lists.push_back((k.to_vec(), v.to_vec()));
            }
            self.cursor.next();
        }
        self.cursor.status()
    }
}

/// The lookups of one query (see the module doc).
pub struct Lookups<'a> {
    store: &'a Store,
    events: Option<Cursor<'a>>,
    links: Option<Cursor<'a>>,
    calls: Option<PairLists<'a>>,
}

impl<'a> Lookups<'a> {
    pub(super) fn new(store: &'a Store) -> Lookups<'a> {
        Lookups {
            store,
            events: None,
            links: None,
            calls: None,
        }
    }

    pub fn store(&self) -> &'a Store {
        self.store
    }

    fn cursor<'s>(
        store: &'a Store,
        slot: &'s mut Option<Cursor<'a>>,
        cf: &str,
    ) -> Result<&'s mut Cursor<'a>> {
        if slot.is_none() {
            *slot = Some(Cursor::new(store, cf)?);
        }
        slot.as_mut()
            .ok_or_else(|| Error::Corrupt("lookup iterator".into()))
    }

    /// The event with this id (as `Store::get`), read through the cursor:
    /// for queries that read events in ascending id order.
    pub fn event(&mut self, id: u64) -> Result<Option<StoredEvent>> {
        let c = Self::cursor(self.store, &mut self.events, CF_EVENTS)?;
        let k = keys::id(id);
        c.seek(&k)?;
        match c.entry() {
            Some((key, v)) if key == k => Ok(Some(self.store.decode_event(id, v)?)),
            _ => Ok(None),
        }
    }

    /// The stored links from `id`: `(kind, other event id)`.
    pub fn stored_links(&mut self, id: u64) -> Result<Vec<(LinkKind, u64)>> {
        let c = Self::cursor(self.store, &mut self.links, CF_LINKS)?;
        let lo = keys::id(id);
        let mut out = Vec::new();
        c.seek(&lo)?;
        while let Some((k, _)) = c.entry() {
            if !k.starts_with(&lo) {
                break;
            }
            if k.len() == 17 {
                if let (Some(kind), Some(to)) = (LinkKind::from_u8(k[8]), keys::trailing_id(k)) {
                    out.push((kind, to));
                }
            }
            c.next();
        }
        c.status()?;
        Ok(out)
    }

    /// The exits of a call (normally one), from the `by_call` pair lists.
    pub fn exits_of(&mut self, call_id: u64) -> Result<Vec<u64>> {
        Ok(self
            .pairs_of(call_id)?
            .into_iter()
            .filter_map(|(kind, x)| kind.is_none().then_some(x))
            .collect())
    }

    /// The children of `id` (`calls`, `causes`) from the `by_call` lists of
    /// schema 5 (a store's older ones are `links` keys: `stored_links`).
    pub fn children_of(&mut self, id: u64) -> Result<Vec<(LinkKind, u64)>> {
        self.linked_pairs(id, false)
    }

    /// `id`'s children, and its exits if it is an entry (`with_exits`).
    fn linked_pairs(&mut self, id: u64, with_exits: bool) -> Result<Vec<(LinkKind, u64)>> {
        let mut out = Vec::new();
        for (kind, x) in self.pairs_of(id)? {
            match kind {
                None if with_exits => out.push((LinkKind::CompletedBy, x)),
                None => {}
                Some(k) => out.push((
                    LinkKind::from_u8(k).ok_or_else(|| {
                        Error::Corrupt(format!("by_call list of unknown link kind {k}"))
                    })?,
                    x,
                )),
            }
        }
        Ok(out)
    }

    /// What the `by_call` pair lists pair with `id`: its exits (kind `None`)
    /// and its children (the kind byte of their list).
    fn pairs_of(&mut self, call_id: u64) -> Result<Vec<(Option<u8>, u64)>> {
        if self.calls.is_none() {
            self.calls = Some(PairLists {
                store: self.store,
                cursor: Cursor::new(self.store, CF_BY_CALL)?,
                lists: VecDeque::new(),
                span: None,
                last: 0,
            });
        }
        match self.calls.as_mut() {
            Some(calls) => calls.pairs_of(call_id),
            None => Err(Error::Corrupt("lookup iterator".into())),
        }
    }

    /// Every causal link of an event: stored ones and those derived from its
    /// own fields (parent, call id) and from `by_call`.
    pub fn links_of(&mut self, ev: &StoredEvent) -> Result<Vec<(LinkKind, u64)>> {
        self.links_of_known(ev, None)
    }

    /// `links_of`, told that the event `known` exists (an exit's entry the
    /// caller holds: no read to find it).
    pub fn links_of_known(
        &mut self,
        ev: &StoredEvent,
        known: Option<u64>,
    ) -> Result<Vec<(LinkKind, u64)>> {
        let mut out = Vec::new();
        if let (Some(kind), true) = (ev.parent_link, ev.parent_id != 0 && ev.parent_id != ev.id) {
            out.push((kind, ev.parent_id));
        }
        let store = self.store;
        let entry_exists = |call_id: u64| -> Result<bool> {
            if known == Some(call_id) {
                return Ok(true);
            }
            Ok(store
                .db
                .get_pinned_cf(store.cf(CF_EVENTS)?, keys::id(call_id))?
                .is_some())
        };
        if ev.kind == EventType::FunctionExit
            && ev.call_id != 0
            && ev.call_id != ev.id
            && entry_exists(ev.call_id)?
        {
            out.push((LinkKind::Completes, ev.call_id));
        }
        // Only calls and received messages are parents (capture takes a
        // parent from the process's open call or the message it handles:
        // `Contexts::enter`, `Contexts::cause`): other events have no pair
        // lists to read, and reading them cost every event/1 ~4 µs
        match ev.kind {
            EventType::FunctionEntry => out.extend(self.linked_pairs(ev.id, true)?),
            EventType::MessageReceive => out.extend(self.linked_pairs(ev.id, false)?),
            _ => {}
        }
        out.extend(self.stored_links(ev.id)?);
        Ok(out)
    }
}
