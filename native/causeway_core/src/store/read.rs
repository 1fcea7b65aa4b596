//! Reading: events by id, raw scans of a column family, and the causal links
//! of an event (stored and derived).

use super::*;

impl Store {
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

    /// Fetches events by id in one batched read: the event of each of `ids`
    /// (`None` where there is none), in the order given.
    pub fn get_each(&self, ids: &[u64]) -> Result<Vec<Option<StoredEvent>>> {
        match ids {
            [] => Ok(Vec::new()),
            [id] => Ok(vec![self.get(*id)?]),
            _ => {
                let cf = self.cf(CF_EVENTS)?;
                let sorted = ids.windows(2).all(|w| w[0] < w[1]);
                let ks: Vec<[u8; 8]> = ids.iter().map(|&i| keys::id(i)).collect();
                self.db
                    .batched_multi_get_cf(cf, &ks, sorted)
                    .into_iter()
                    .zip(ids)
                    .map(|(r, &id)| match r? {
                        Some(v) => Ok(Some(self.decode_event(id, &v)?)),
                        None => Ok(None),
                    })
                    .collect()
            }
        }
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
    pub(super) fn stored_links(&self, id: u64) -> Result<Vec<(LinkKind, u64)>> {
        self.lookups().stored_links(id)
    }

    /// The exits of a call (normally one), from the `by_call` pair lists.
    pub fn exits_of(&self, call_id: u64) -> Result<Vec<u64>> {
        self.lookups().exits_of(call_id)
    }

    /// Every causal link of an event: stored ones and those derived from its
    /// own fields (parent, call id) and from `by_call`.
    pub fn links_of(&self, ev: &StoredEvent) -> Result<Vec<(LinkKind, u64)>> {
        self.lookups().links_of(ev)
    }

    /// Lookups for one query (see `Lookups`).
    pub fn lookups(&self) -> Lookups<'_> {
        Lookups {
            store: self,
            links: None,
            calls: None,
        }
    }
}

/// The link and exit lookups of one query, each column family read through
/// one iterator created on its first use and re-seeked for every lookup
/// after. Creating a RocksDB iterator (a super-version reference and an
/// iterator per level and file, several µs) cost more than the seek itself,
/// and a call tree of 3 calls made 15 of them. The iterators have no bounds
/// (a bound is fixed when an iterator is made): each lookup stops at the
/// first key past its range. Dropped at the end of the query, so the
/// snapshot they hold lives no longer than it.
pub struct Lookups<'a> {
    store: &'a Store,
    links: Option<rocksdb::DBRawIterator<'a>>,
    calls: Option<rocksdb::DBRawIterator<'a>>,
}

impl<'a> Lookups<'a> {
    pub fn store(&self) -> &'a Store {
        self.store
    }

    fn iter<'s>(
        store: &'a Store,
        slot: &'s mut Option<rocksdb::DBRawIterator<'a>>,
        cf: &str,
    ) -> Result<&'s mut rocksdb::DBRawIterator<'a>> {
        if slot.is_none() {
            let it = store
                .db
                .raw_iterator_cf_opt(store.cf(cf)?, ReadOptions::default());
            *slot = Some(it);
        }
        slot.as_mut()
            .ok_or_else(|| Error::Corrupt("lookup iterator".into()))
    }

    /// The stored links from `id`: `(kind, other event id)`.
    pub fn stored_links(&mut self, id: u64) -> Result<Vec<(LinkKind, u64)>> {
        let it = Self::iter(self.store, &mut self.links, CF_LINKS)?;
        let lo = keys::id(id);
        let mut out = Vec::new();
        it.seek(lo);
        while it.valid() {
            let Some(k) = it.key() else { break };
            if !k.starts_with(&lo) {
                break;
            }
            if k.len() == 17 {
                if let (Some(kind), Some(to)) = (LinkKind::from_u8(k[8]), keys::trailing_id(k)) {
                    out.push((kind, to));
                }
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The exits of a call (normally one), from the `by_call` pair lists.
    pub fn exits_of(&mut self, call_id: u64) -> Result<Vec<u64>> {
        let it = Self::iter(self.store, &mut self.calls, CF_BY_CALL)?;
        let mut out = Vec::new();
        // lists whose first call id is in [call_id − CALL_SPAN, call_id]
        it.seek(postings::pair_key(
            call_id.saturating_sub(postings::CALL_SPAN),
            0,
        ));
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let Some(first) = k.get(..8).and_then(keys::trailing_id) else {
                break;
            };
            if first > call_id {
                break;
            }
            // only lists whose range holds the call are searched
            if k.len() == 16 && keys::trailing_id(k).is_some_and(|last| last >= call_id) {
                out.extend(postings::exits_in(v, call_id)?);
            }
            it.next();
        }
        it.status()?;
        out.sort_unstable();
        Ok(out)
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
}
