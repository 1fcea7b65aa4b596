//! Writing: one atomic `WriteBatch` per batch of events (the events, their
//! index entries and links), and `sync`, the durability barrier.

use super::*;
use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    /// A writer thread's buffers, kept between its batches: the covering
    /// lists' arena, and the buffer each stored value is encoded in.
    static ARENA: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static VALUE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest buffer kept for the next batch (a bigger one is freed).
const KEPT: usize = 4 << 20;

/// This thread's `cell` buffer, emptied.
fn scratch(cell: &'static LocalKey<Cell<Vec<u8>>>) -> Vec<u8> {
    let mut v = cell.take();
    v.clear();
    v
}

/// Keeps `v` in `cell` for the next batch, unless it is too big.
fn keep(cell: &'static LocalKey<Cell<Vec<u8>>>, v: Vec<u8>) {
    if v.capacity() <= KEPT {
        cell.set(v);
    }
}

impl Store {
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
        // sized for the batch up front: a batch of big payloads grown by
        // doubling was a chain of allocations and copies (above 128 KiB each
        // one an mmap, and its munmap a TLB shootdown on every CPU the VM
        // runs on, the schedulers' included)
        // (and the bytes the covering lists copy: events up to COVERED_MAX)
        let (payload, covered) = events.iter().fold((0, 0), |(all, small), e| {
            let n = e.data.len() + 48;
            let copied = self.opts.covering_pid_index && n <= postings::COVERED_MAX;
            (all + n, small + if copied { n } else { 0 })
        });
        let mut b = WriteBatch::with_capacity_bytes(payload + covered + events.len() * 64);
        let mut buf = scratch(&VALUE);
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
        // exits by call id, and children by parent id and link kind
        // (`calls`, `causes`), written as pair lists below
        let mut calls: Vec<(u64, u64)> = Vec::new();
        let mut children: Vec<(u8, u64, u64)> = Vec::new();
        // each event's stored bytes, for the covering by_pid lists (this
        // thread's buffer of the last batch, reused)
        let mut arena = scratch(&ARENA);
        arena.reserve(covered);
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
                kind: ev.kind as u8 + codec::KIND_V2,
                wall_delta: ev.wall_ns.wrapping_sub(id_to_wall_ns(ev.id) as i64),
                mono_offset: ev.wall_ns.wrapping_sub(ev.mono_ns),
                pid: DiskPid(node, ev.pid.id, ev.pid.serial, ev.pid.creation),
                call_id: codec::id_back(ev.id, ev.call_id),
                parent_id: codec::id_back(ev.id, ev.parent_id),
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
            // a big event is listed by reference (no bytes): written once
            let inline = self.opts.covering_pid_index && buf.len() <= postings::COVERED_MAX;
            let entry = (ev.id, arena.len(), if inline { buf.len() } else { 0 });
            by_pid.entry(pid_key).or_default().push(entry);
            if inline {
                arena.extend_from_slice(&buf);
            }
            post(1, &[ev.kind as u8], ev.id);
            if module != 0 && ev.has_mfa() {
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
                children.push((kind.reverse() as u8, ev.parent_id, ev.id));
            }
        }
        calls.sort_unstable();
        calls.dedup();
        postings::pair_runs(&calls, None, |k, v| b.put_cf(cf_call, k, v));
        children.sort_unstable();
        children.dedup();
        for run in children.chunk_by(|a, b| a.0 == b.0) {
            let pairs: Vec<(u64, u64)> = run.iter().map(|&(_, p, c)| (p, c)).collect();
            postings::pair_runs(&pairs, Some(run[0].0), |k, v| b.put_cf(cf_call, k, v));
        }
        for (pid_key, mut evs) in by_pid {
            evs.sort_unstable_by_key(|e| e.0);
            evs.dedup_by_key(|e| e.0);
            let mut start = 0;
            for i in 1..=evs.len() {
                if i == evs.len() || evs[i].0 - evs[start].0 >= postings::SPAN {
                    let first = evs[start].0;
                    let key = keys::pid(pid_key, first);
                    if self.opts.covering_pid_index {
                        let run: Vec<(u64, Option<&[u8]>)> = evs[start..i]
                            .iter()
                            .map(|&(id, at, n)| (id, (n > 0).then(|| &arena[at..at + n])))
                            .collect();
                        // (into the reused buffer: the batch copies it)
                        buf.clear();
                        postings::encode_covering(&mut buf, first, &run);
                        b.put_cf(cf_pid, key, &buf);
                    } else {
                        let ids: Vec<u64> = evs[start..i].iter().map(|e| e.0).collect();
                        b.put_cf(cf_pid, key, postings::encode_pid_ids(&ids));
                    }
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
        keep(&ARENA, arena);
        keep(&VALUE, buf);
        self.db.write_opt(b, &self.write_opts)?;
        if let Some(newest) = events.iter().map(|e| e.id).max() {
            self.written_max.fetch_max(newest, Ordering::AcqRel);
        }
        Ok(())
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
}
