//! Reading: events by id, raw scans of a column family, and the causal links
//! of an event (stored and derived, through `Lookups`).

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
        Lookups::new(self)
    }
}
