//! Retention: deleting the oldest events by age or size in bounded chunks,
//! with every index trimmed in the same batch.

use super::*;

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

impl Store {
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
    pub(super) fn delete_chunk(&self, doomed: &[StoredEvent], upto: u64) -> Result<()> {
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
    pub(super) fn trim_postings(
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
                            let kept: Vec<(u64, Option<&[u8]>)> =
                                evs.into_iter().filter(|e| e.0 >= upto).collect();
                            (!kept.is_empty()).then(|| {
                                let mut out = Vec::new();
                                postings::encode_covering(&mut out, first, &kept);
                                out
                            })
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
    pub(super) fn trim_calls(&self, b: &mut WriteBatch, upto: u64) -> Result<()> {
        let cf = self.cf(CF_BY_CALL)?;
        let straddle = upto.saturating_sub(self.call_window(upto));
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
            // (a children list keeps its kind byte)
            let kind = postings::parse_pair_key(&k).and_then(|(_, _, kind)| kind);
            postings::pair_runs(&kept, kind, |k, v| b.put_cf(cf, k, v));
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
}
