//! Enrichment: a raw captured event becomes a `StoredEvent` (pids and atoms
//! resolved through a per-worker cache, wall time from the id).

use super::*;

impl Pipeline {
    /// Deserialize + enrich: raw words to names, pid, node and wall time
    /// (the payload is left to the caller: `data` is empty).
    pub(super) fn enrich(
        &self,
        r: &RawEvent,
        cache: &mut EnrichCache,
    ) -> (StoredEvent, Option<LinkKind>) {
        let pid = cache.pid(&*self.resolver, r.pid);
        let peer = match &r.peer {
            RawPid::None => None,
            RawPid::Local(w) => Some(cache.pid(&*self.resolver, *w)),
            RawPid::External(b) => crate::etf::parse_pid(b).ok(),
        };
        let module = if r.module != 0 {
            cache.atom(&*self.resolver, r.module)
        } else {
            None
        };
        let function = if r.function != 0 {
            cache.atom(&*self.resolver, r.function)
        } else {
            None
        };
        (
            StoredEvent {
                id: r.id,
                kind: r.kind(),
                mono_ns: r.mono_ns,
                // as the id was stamped (the offset only moves under
                // multi-time-warp, by the warp)
                wall_ns: self.wall_ns(r.mono_ns),
                pid,
                call_id: r.call_id(),
                parent_id: r.parent_id,
                parent_link: r.parent_link,
                module,
                function,
                arity: r.arity,
                peer,
                data: Vec::new(),
                source: r.source,
            },
            r.parent_link,
        )
    }
}

#[derive(Default)]
pub(super) struct EnrichCache {
    // (raw VM words: the fast hasher; SipHash was ~1.5 % of a CPU-bound
    // run's writer CPU, for three lookups per event)
    pub(super) pids: HashMap<u64, PidRec, FastBuild>,
    pub(super) atoms: HashMap<u64, Option<crate::event::Name>, FastBuild>,
    pub(super) correlated: bool,
    pub(super) links: Vec<crate::event::Link>,
    /// The batch's events, kept empty between batches (for its capacity).
    pub(super) events: Vec<StoredEvent>,
}

impl EnrichCache {
    const MAX: usize = 65_536;

    pub(super) fn pid(&mut self, r: &dyn Resolver, raw: u64) -> PidRec {
        if let Some(p) = self.pids.get(&raw) {
            return p.clone();
        }
        if self.pids.len() >= Self::MAX {
            self.pids.clear();
        }
        let p = r.pid(raw);
        self.pids.insert(raw, p.clone());
        p
    }

    pub(super) fn atom(&mut self, r: &dyn Resolver, raw: u64) -> Option<crate::event::Name> {
        if let Some(a) = self.atoms.get(&raw) {
            return a.clone();
        }
        if self.atoms.len() >= Self::MAX {
            self.atoms.clear();
        }
        let a = r.atom(raw).map(Into::into);
        self.atoms.insert(raw, a.clone());
        a
    }
}
