//! EventCorrelator (seed diagrams 2, 5 and 7): links every event to its cause.
//!
//! Four strategies, one shared structure for all writer workers:
//! - function calls: an exit `completes` its entry (the call id *is* the entry's
//!   id); a nested entry is `called_from` its caller (known at capture);
//! - messages: a receive `receives` the matching send, matched per receiver and
//!   message hash in FIFO order (by sender too when the receive names it);
//! - state: a state change is `caused_by` the message or call being handled;
//! - process lifecycle: a spawn is `caused_by` the spawning call, a process exit
//!   is the `exit_of` its spawn.
//!
//! Each pending half waits in one map entry with its counterpart, so a check and
//! an insert happen under one lock and two workers seeing the halves out of order
//! still link them. Pending halves expire after the TTL: a first half (entry,
//! send, spawn) that never met its second becomes a *missing correlation*; a
//! second half (exit, receive, process exit) that never met its first becomes an
//! *orphaned event*. The maps are bounded; what does not fit is counted as missing.

use crate::event::{EventType, Link, LinkKind, PidRec, StoredEvent};
use crate::fasthash::FastBuild;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

type ProcKey = (u64, u64);

fn proc_key(p: &PidRec) -> ProcKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.node.hash(&mut h);
    (((p.id as u64) << 32) | p.serial as u64, h.finish())
}

/// A pending function-call correlation. `Fresh` exists only while a worker
/// holds the entry's lock and decides what to put there.
#[derive(Debug)]
enum CallHalf {
    Fresh,
    EntryOpen { at: i64 },
    ExitFirst { exit: u64, at: i64 },
}

#[derive(Debug)]
enum ProcHalf {
    Fresh,
    Spawned { spawn: u64, at: i64 },
    ExitFirst { exit: u64, at: i64 },
}

#[derive(Debug, Clone)]
struct PendingSend {
    id: u64,
    sender: ProcKey,
    at: i64,
}

#[derive(Debug, Clone)]
struct PendingReceive {
    id: u64,
    from: Option<ProcKey>,
    at: i64,
}

#[derive(Debug, Default)]
struct MsgSlot {
    sends: VecDeque<PendingSend>,
    receives: VecDeque<PendingReceive>,
}

/// Ids are capture times (ns) from per-CPU streams that can differ by a few
/// hundred ns: a send and its receive may look this much out of order, never
/// more (a message takes longer than that to be received).
const ORDER_SLACK: u64 = 1_000;

/// Counters of the correlator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// Links made (each counted once, though stored in both directions).
    pub links: u64,
    /// Pairs matched (exit↔entry, receive↔send, process exit↔spawn).
    pub matched: u64,
    /// First halves that expired or could not be kept.
    pub missing: u64,
    /// Second halves that expired without their first half.
    pub orphaned: u64,
    /// Receives that had several candidate sends from different senders.
    pub ambiguous: u64,
    /// Halves waiting for their counterpart now.
    pub pending: u64,
}

impl CorrelatorStats {
    /// matched / (matched + missing + orphaned), 1.0 when nothing was attempted.
    pub fn success_rate(&self) -> f64 {
        let total = self.matched + self.missing + self.orphaned;
        if total == 0 {
            1.0
        } else {
            self.matched as f64 / total as f64
        }
    }
}

pub struct Correlator {
    ttl_ns: AtomicI64,
    max_pending: u64,
    calls: DashMap<u64, CallHalf, FastBuild>,
    messages: DashMap<(ProcKey, u64), MsgSlot, FastBuild>,
    procs: DashMap<ProcKey, ProcHalf, FastBuild>,
    pending: AtomicU64,
    links: AtomicU64,
    matched: AtomicU64,
    missing: AtomicU64,
    orphaned: AtomicU64,
    ambiguous: AtomicU64,
}

impl Correlator {
    pub fn new(ttl_ns: i64, max_pending: u64) -> Correlator {
        Correlator {
            ttl_ns: AtomicI64::new(ttl_ns),
            max_pending,
            calls: DashMap::with_hasher(FastBuild::default()),
            messages: DashMap::with_hasher(FastBuild::default()),
            procs: DashMap::with_hasher(FastBuild::default()),
            pending: AtomicU64::new(0),
            links: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            orphaned: AtomicU64::new(0),
            ambiguous: AtomicU64::new(0),
        }
    }

    pub fn set_ttl_ns(&self, ttl: i64) {
        self.ttl_ns.store(ttl, Ordering::Relaxed);
    }

    pub fn ttl_ns(&self) -> i64 {
        self.ttl_ns.load(Ordering::Relaxed)
    }

    fn room(&self) -> bool {
        if self.pending.load(Ordering::Relaxed) >= self.max_pending {
            self.missing.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            self.pending.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    fn settled(&self, n: u64) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }

    fn link(&self, out: &mut Vec<Link>, from: u64, kind: LinkKind, to: u64) {
        self.links.fetch_add(1, Ordering::Relaxed);
        out.push(Link { from, kind, to });
    }

    fn matched(&self) {
        self.matched.fetch_add(1, Ordering::Relaxed);
    }

    /// Correlates one event; the links found are appended to `out`.
    /// `parent_link` is the kind of the capture-time parent (`ev.parent_id`).
    pub fn correlate(
        &self,
        ev: &StoredEvent,
        parent_link: Option<LinkKind>,
        now: i64,
        out: &mut Vec<Link>,
    ) {
        if ev.parent_id != 0 && ev.parent_id != ev.id {
            if let Some(kind) = parent_link {
                self.link(out, ev.id, kind, ev.parent_id);
            }
        }
        match ev.kind {
            EventType::FunctionEntry => self.on_entry(ev, now, out),
            EventType::FunctionExit => self.on_exit(ev, now, out),
            EventType::MessageSend => self.on_send(ev, now, out),
            EventType::MessageReceive => self.on_receive(ev, now, out),
            EventType::ProcessSpawn => self.on_spawn(ev, now, out),
            EventType::ProcessExit => self.on_process_exit(ev, now, out),
            EventType::StateChange | EventType::Error => {}
        }
    }

    fn on_entry(&self, ev: &StoredEvent, now: i64, out: &mut Vec<Link>) {
        let call = ev.id;
        let mut e = self.calls.entry(call).or_insert(CallHalf::Fresh);
        match *e {
            CallHalf::ExitFirst { exit, .. } => {
                drop(e);
                self.calls.remove(&call);
                self.settled(1);
                self.matched();
                self.link(out, exit, LinkKind::Completes, call);
            }
            CallHalf::Fresh => {
                if self.room() {
                    *e = CallHalf::EntryOpen { at: now };
                } else {
                    drop(e);
                    self.calls.remove(&call);
                }
            }
            CallHalf::EntryOpen { .. } => {} // the same entry twice: keep the first
        }
    }

    fn on_exit(&self, ev: &StoredEvent, now: i64, out: &mut Vec<Link>) {
        let call = ev.call_id;
        if call == 0 {
            self.orphaned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut e = self.calls.entry(call).or_insert(CallHalf::Fresh);
        match *e {
            CallHalf::EntryOpen { .. } => {
                drop(e);
                self.calls.remove(&call);
                self.settled(1);
                self.matched();
                self.link(out, ev.id, LinkKind::Completes, call);
            }
            CallHalf::Fresh => {
                if self.room() {
                    *e = CallHalf::ExitFirst {
                        exit: ev.id,
                        at: now,
                    };
                } else {
                    drop(e);
                    self.calls.remove(&call);
                }
            }
            CallHalf::ExitFirst { .. } => {
                // a second exit for one call: nothing to match it with
                self.orphaned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_send(&self, ev: &StoredEvent, now: i64, out: &mut Vec<Link>) {
        let Some(receiver) = ev.peer.as_ref().map(proc_key) else {
            return;
        };
        let sender = proc_key(&ev.pid);
        let hash = ev.msg_hash();
        let mut slot = self.messages.entry((receiver, hash)).or_default();
        // only a receive captured after the send can be its receive
        let waiting = slot.receives.iter().position(|r| {
            (r.from.is_none() || r.from == Some(sender)) && r.id.saturating_add(ORDER_SLACK) > ev.id
        });
        match waiting {
            Some(i) => {
                let r = slot.receives.remove(i).map(|r| r.id);
                let empty = slot.sends.is_empty() && slot.receives.is_empty();
                drop(slot);
                if empty {
                    self.messages.remove_if(&(receiver, hash), |_, s| {
                        s.sends.is_empty() && s.receives.is_empty()
                    });
                }
                if let Some(r) = r {
                    self.settled(1);
                    self.matched();
                    self.link(out, r, LinkKind::Receives, ev.id);
                }
            }
            None => {
                if self.room() {
                    slot.sends.push_back(PendingSend {
                        id: ev.id,
                        sender,
                        at: now,
                    });
                } else if slot.sends.is_empty() && slot.receives.is_empty() {
                    // no room: leave no empty slot behind either
                    drop(slot);
                    self.messages.remove_if(&(receiver, hash), |_, s| {
                        s.sends.is_empty() && s.receives.is_empty()
                    });
                }
            }
        }
    }

    fn on_receive(&self, ev: &StoredEvent, now: i64, out: &mut Vec<Link>) {
        let receiver = proc_key(&ev.pid);
        let from = ev.peer.as_ref().map(proc_key);
        let hash = ev.msg_hash();
        let mut slot = self.messages.entry((receiver, hash)).or_default();
        // only a send captured before the receive can be its send
        let before = |s: &PendingSend| s.id < ev.id.saturating_add(ORDER_SLACK);
        let candidate = match from {
            Some(f) => slot.sends.iter().position(|s| s.sender == f && before(s)),
            None => match slot.sends.iter().position(before) {
                Some(i) => {
                    let first = slot.sends[i].sender;
                    if slot.sends.iter().any(|s| s.sender != first && before(s)) {
                        self.ambiguous.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(i)
                }
                None => None,
            },
        };
        match candidate {
            Some(i) => {
                let s = slot.sends.remove(i).map(|s| s.id);
                let empty = slot.sends.is_empty() && slot.receives.is_empty();
                drop(slot);
                if empty {
                    self.messages.remove_if(&(receiver, hash), |_, s| {
                        s.sends.is_empty() && s.receives.is_empty()
                    });
                }
                if let Some(s) = s {
                    self.settled(1);
                    self.matched();
                    self.link(out, ev.id, LinkKind::Receives, s);
                }
            }
            None => {
                if self.room() {
                    slot.receives.push_back(PendingReceive {
                        id: ev.id,
                        from,
                        at: now,
                    });
                } else if slot.sends.is_empty() && slot.receives.is_empty() {
                    drop(slot);
                    self.messages.remove_if(&(receiver, hash), |_, s| {
                        s.sends.is_empty() && s.receives.is_empty()
                    });
                }
            }
        }
    }

    fn on_spawn(&self, ev: &StoredEvent, now: i64, out: &mut Vec<Link>) {
        let Some(child) = ev.peer.as_ref().map(proc_key) else {
            return;
        };
        let mut e = self.procs.entry(child).or_insert(ProcHalf::Fresh);
        match *e {
            ProcHalf::ExitFirst { exit, .. } => {
                drop(e);
                self.procs.remove(&child);
                self.settled(1);
                self.matched();
                self.link(out, exit, LinkKind::ExitOf, ev.id);
            }
            ProcHalf::Fresh => {
                if self.room() {
                    *e = ProcHalf::Spawned {
                        spawn: ev.id,
                        at: now,
                    };
                } else {
                    drop(e);
                    self.procs.remove(&child);
                }
            }
            ProcHalf::Spawned { .. } => {}
        }
    }

    fn on_process_exit(&self, ev: &StoredEvent, now: i64, out: &mut Vec<Link>) {
        let who = proc_key(&ev.pid);
        let mut e = self.procs.entry(who).or_insert(ProcHalf::Fresh);
        match *e {
            ProcHalf::Spawned { spawn, .. } => {
                drop(e);
                self.procs.remove(&who);
                self.settled(1);
                self.matched();
                self.link(out, ev.id, LinkKind::ExitOf, spawn);
            }
            ProcHalf::Fresh => {
                if self.room() {
                    *e = ProcHalf::ExitFirst {
                        exit: ev.id,
                        at: now,
                    };
                } else {
                    drop(e);
                    self.procs.remove(&who);
                }
            }
            ProcHalf::ExitFirst { .. } => {
                self.orphaned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Expires halves older than the TTL; returns (missing, orphaned) added.
    pub fn expire(&self, now: i64) -> (u64, u64) {
        let cutoff = now.saturating_sub(self.ttl_ns());
        let (mut missing, mut orphaned) = (0u64, 0u64);
        self.calls.retain(|_, h| match *h {
            CallHalf::EntryOpen { at } if at < cutoff => {
                missing += 1;
                false
            }
            CallHalf::ExitFirst { at, .. } if at < cutoff => {
                orphaned += 1;
                false
            }
            CallHalf::Fresh => false,
            _ => true,
        });
        self.procs.retain(|_, h| match *h {
            ProcHalf::Spawned { at, .. } if at < cutoff => {
                missing += 1;
                false
            }
            ProcHalf::ExitFirst { at, .. } if at < cutoff => {
                orphaned += 1;
                false
            }
            ProcHalf::Fresh => false,
            _ => true,
        });
        self.messages.retain(|_, slot| {
            let before = (slot.sends.len(), slot.receives.len());
            slot.sends.retain(|s| s.at >= cutoff);
            slot.receives.retain(|r| r.at >= cutoff);
            missing += (before.0 - slot.sends.len()) as u64;
            orphaned += (before.1 - slot.receives.len()) as u64;
            !(slot.sends.is_empty() && slot.receives.is_empty())
        });
        self.settled(missing + orphaned);
        self.missing.fetch_add(missing, Ordering::Relaxed);
        self.orphaned.fetch_add(orphaned, Ordering::Relaxed);
        (missing, orphaned)
    }

    /// Forgets the pending halves among `ids`: their batch was dropped, so
    /// they will never be stored and nothing may be linked to them. Returns
    /// how many were forgotten (they are counted as dropped, not as missing).
    pub fn forget_events(&self, ids: &std::collections::HashSet<u64>) -> u64 {
        let mut gone = 0u64;
        self.calls.retain(|&call, h| {
            let drop = match *h {
                CallHalf::EntryOpen { .. } => ids.contains(&call),
                CallHalf::ExitFirst { exit, .. } => ids.contains(&exit),
                CallHalf::Fresh => false,
            };
            gone += u64::from(drop);
            !drop
        });
        self.procs.retain(|_, h| {
            let drop = match *h {
                ProcHalf::Spawned { spawn, .. } => ids.contains(&spawn),
                ProcHalf::ExitFirst { exit, .. } => ids.contains(&exit),
                ProcHalf::Fresh => false,
            };
            gone += u64::from(drop);
            !drop
        });
        self.messages.retain(|_, slot| {
            let before = slot.sends.len() + slot.receives.len();
            slot.sends.retain(|s| !ids.contains(&s.id));
            slot.receives.retain(|r| !ids.contains(&r.id));
            gone += (before - slot.sends.len() - slot.receives.len()) as u64;
            !(slot.sends.is_empty() && slot.receives.is_empty())
        });
        self.settled(gone);
        gone
    }

    pub fn stats(&self) -> CorrelatorStats {
        CorrelatorStats {
            links: self.links.load(Ordering::Relaxed),
            matched: self.matched.load(Ordering::Relaxed),
            missing: self.missing.load(Ordering::Relaxed),
            orphaned: self.orphaned.load(Ordering::Relaxed),
            ambiguous: self.ambiguous.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;

    fn pid(n: u32) -> PidRec {
        PidRec {
            node: "n@h".into(),
            id: n,
            serial: 0,
            creation: 1,
        }
    }

    fn ev(id: u64, kind: EventType, p: u32) -> StoredEvent {
        StoredEvent {
            id,
            kind,
            mono_ns: 0,
            wall_ns: 0,
            pid: pid(p),
            call_id: 0,
            parent_id: 0,
            parent_link: None,
            module: None,
            function: None,
            arity: 0,
            peer: None,
            data: vec![131, 100, 0, 1, b'x'],
            source: Source::Runtime,
        }
    }

    fn msg(id: u64, kind: EventType, p: u32, peer: Option<u32>, body: u8) -> StoredEvent {
        let mut e = ev(id, kind, p);
        e.peer = peer.map(pid);
        e.data = vec![131, 97, body];
        e
    }

    #[test]
    fn exit_completes_entry_in_either_order() {
        let c = Correlator::new(1_000, 100);
        let mut out = Vec::new();
        let mut entry = ev(10, EventType::FunctionEntry, 1);
        entry.call_id = 10;
        let mut exit = ev(20, EventType::FunctionExit, 1);
        exit.call_id = 10;
        exit.parent_id = 10;
        c.correlate(&entry, None, 0, &mut out);
        c.correlate(&exit, None, 0, &mut out);
        assert_eq!(
            out,
            vec![Link {
                from: 20,
                kind: LinkKind::Completes,
                to: 10
            }]
        );

        out.clear();
        let mut entry2 = ev(30, EventType::FunctionEntry, 1);
        entry2.call_id = 30;
        entry2.parent_id = 10;
        let mut exit2 = ev(40, EventType::FunctionExit, 1);
        exit2.call_id = 30;
        c.correlate(&exit2, None, 0, &mut out);
        assert!(out.is_empty());
        c.correlate(&entry2, Some(LinkKind::CalledFrom), 0, &mut out);
        assert_eq!(
            out,
            vec![
                Link {
                    from: 30,
                    kind: LinkKind::CalledFrom,
                    to: 10
                },
                Link {
                    from: 40,
                    kind: LinkKind::Completes,
                    to: 30
                }
            ]
        );
        let s = c.stats();
        assert_eq!((s.matched, s.pending, s.missing, s.orphaned), (2, 0, 0, 0));
        assert_eq!(s.success_rate(), 1.0);
    }

    #[test]
    fn a_receive_never_links_to_a_send_captured_after_it() {
        let c = Correlator::new(10_000_000_000, 100);
        let mut out = Vec::new();
        // a timer message received by 3 whose send was not captured
        c.correlate(
            &msg(1_000, EventType::MessageReceive, 3, None, 7),
            None,
            0,
            &mut out,
        );
        // later, 1 sends the same term to 3, and 3 receives it
        c.correlate(
            &msg(5_000_000, EventType::MessageSend, 1, Some(3), 7),
            None,
            0,
            &mut out,
        );
        assert!(out.is_empty(), "linked to an earlier receive: {out:?}");
        c.correlate(
            &msg(5_020_000, EventType::MessageReceive, 3, None, 7),
            None,
            0,
            &mut out,
        );
        assert_eq!(
            out,
            vec![Link {
                from: 5_020_000,
                kind: LinkKind::Receives,
                to: 5_000_000
            }]
        );
        // and a send seen after its receive (out of order arrival) still links
        out.clear();
        c.correlate(
            &msg(9_000_500, EventType::MessageReceive, 4, Some(1), 8),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(9_000_000, EventType::MessageSend, 1, Some(4), 8),
            None,
            0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn halves_of_a_dropped_batch_are_forgotten() {
        let c = Correlator::new(10_000_000_000, 100);
        let mut out = Vec::new();
        let mut entry = ev(10, EventType::FunctionEntry, 1);
        entry.call_id = 10;
        c.correlate(&entry, None, 0, &mut out);
        c.correlate(
            &msg(20, EventType::MessageSend, 1, Some(3), 7),
            None,
            0,
            &mut out,
        );
        assert_eq!(c.stats().pending, 2);
        // their batch is dropped
        let dropped: std::collections::HashSet<u64> = [10, 20].into_iter().collect();
        assert_eq!(c.forget_events(&dropped), 2);
        assert_eq!(c.stats().pending, 0);
        // a later exit and receive link to nothing that was never stored
        let mut exit = ev(30, EventType::FunctionExit, 1);
        exit.call_id = 10;
        exit.parent_id = 10;
        c.correlate(&exit, None, 0, &mut out);
        c.correlate(
            &msg(40, EventType::MessageReceive, 3, Some(1), 7),
            None,
            0,
            &mut out,
        );
        assert!(
            out.iter()
                .all(|l| l.to != 10 && l.to != 20 && l.from != 10 && l.from != 20),
            "{out:?}"
        );
    }

    #[test]
    fn duplicate_messages_match_fifo_and_by_sender() {
        let c = Correlator::new(1_000, 100);
        let mut out = Vec::new();
        // two senders (1, 2) send the same message to 3; a third copy from 1
        c.correlate(
            &msg(1, EventType::MessageSend, 1, Some(3), 7),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(2, EventType::MessageSend, 2, Some(3), 7),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(3, EventType::MessageSend, 1, Some(3), 7),
            None,
            0,
            &mut out,
        );
        // receive naming sender 2 takes 2's send
        c.correlate(
            &msg(10, EventType::MessageReceive, 3, Some(2), 7),
            None,
            0,
            &mut out,
        );
        // anonymous receives take the rest in order
        c.correlate(
            &msg(11, EventType::MessageReceive, 3, None, 7),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(12, EventType::MessageReceive, 3, None, 7),
            None,
            0,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                Link {
                    from: 10,
                    kind: LinkKind::Receives,
                    to: 2
                },
                Link {
                    from: 11,
                    kind: LinkKind::Receives,
                    to: 1
                },
                Link {
                    from: 12,
                    kind: LinkKind::Receives,
                    to: 3
                },
            ]
        );
        assert_eq!(c.stats().ambiguous, 0, "both left were from sender 1");
        // a different message body does not match
        out.clear();
        c.correlate(
            &msg(20, EventType::MessageSend, 1, Some(3), 8),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(21, EventType::MessageReceive, 3, None, 9),
            None,
            0,
            &mut out,
        );
        assert!(out.is_empty());
        // a receive seen before its send still links
        c.correlate(
            &msg(22, EventType::MessageReceive, 4, None, 5),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(23, EventType::MessageSend, 1, Some(4), 5),
            None,
            0,
            &mut out,
        );
        assert_eq!(
            out,
            vec![Link {
                from: 22,
                kind: LinkKind::Receives,
                to: 23
            }]
        );
    }

    #[test]
    fn ambiguity_is_counted() {
        let c = Correlator::new(1_000, 100);
        let mut out = Vec::new();
        c.correlate(
            &msg(1, EventType::MessageSend, 1, Some(3), 7),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(2, EventType::MessageSend, 2, Some(3), 7),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(3, EventType::MessageReceive, 3, None, 7),
            None,
            0,
            &mut out,
        );
        assert_eq!(c.stats().ambiguous, 1);
        assert_eq!(
            out,
            vec![Link {
                from: 3,
                kind: LinkKind::Receives,
                to: 1
            }]
        );
    }

    #[test]
    fn ttl_turns_pending_halves_into_missing_and_orphaned() {
        let c = Correlator::new(100, 1_000);
        let mut out = Vec::new();
        let mut entry = ev(1, EventType::FunctionEntry, 1);
        entry.call_id = 1;
        c.correlate(&entry, None, 0, &mut out);
        c.correlate(
            &msg(2, EventType::MessageSend, 1, Some(2), 1),
            None,
            0,
            &mut out,
        );
        c.correlate(
            &msg(3, EventType::MessageReceive, 5, None, 1),
            None,
            0,
            &mut out,
        );
        let mut exit = ev(4, EventType::FunctionExit, 1);
        exit.call_id = 999;
        c.correlate(&exit, None, 50, &mut out);
        assert_eq!(c.stats().pending, 4);
        assert_eq!(
            c.expire(120),
            (2, 1),
            "entry+send missing, receive orphaned"
        );
        assert_eq!(c.expire(1_000), (0, 1), "the late exit expires later");
        let s = c.stats();
        assert_eq!((s.pending, s.missing, s.orphaned, s.matched), (0, 2, 2, 0));
        assert_eq!(s.success_rate(), 0.0);
    }

    #[test]
    fn spawn_and_exit_link_in_either_order() {
        let c = Correlator::new(1_000, 100);
        let mut out = Vec::new();
        let mut spawn = ev(1, EventType::ProcessSpawn, 1);
        spawn.peer = Some(pid(2));
        c.correlate(&spawn, None, 0, &mut out);
        c.correlate(&ev(2, EventType::ProcessExit, 2), None, 0, &mut out);
        c.correlate(&ev(3, EventType::ProcessExit, 9), None, 0, &mut out);
        let mut spawn9 = ev(4, EventType::ProcessSpawn, 1);
        spawn9.peer = Some(pid(9));
        c.correlate(&spawn9, None, 0, &mut out);
        assert_eq!(
            out,
            vec![
                Link {
                    from: 2,
                    kind: LinkKind::ExitOf,
                    to: 1
                },
                Link {
                    from: 3,
                    kind: LinkKind::ExitOf,
                    to: 4
                }
            ]
        );
    }

    #[test]
    fn bounded_pending_counts_overflow_as_missing() {
        let c = Correlator::new(1_000, 2);
        let mut out = Vec::new();
        for i in 1..=5 {
            let mut e = ev(i, EventType::FunctionEntry, 1);
            e.call_id = i;
            c.correlate(&e, None, 0, &mut out);
        }
        let s = c.stats();
        assert_eq!((s.pending, s.missing), (2, 3));
    }

    #[test]
    fn concurrent_out_of_order_halves_always_link() {
        use std::sync::Arc;
        for _round in 0..20 {
            let c = Arc::new(Correlator::new(1_000_000, 1_000_000));
            let n = 2_000u64;
            let a = {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..n {
                        c.correlate(
                            &msg(
                                i * 2 + 1,
                                EventType::MessageSend,
                                1,
                                Some(2),
                                (i % 250) as u8,
                            ),
                            None,
                            0,
                            &mut out,
                        );
                    }
                    out.len()
                })
            };
            let b = {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..n {
                        c.correlate(
                            &msg(
                                i * 2 + 2,
                                EventType::MessageReceive,
                                2,
                                Some(1),
                                (i % 250) as u8,
                            ),
                            None,
                            0,
                            &mut out,
                        );
                    }
                    out.len()
                })
            };
            let links = a.join().unwrap() + b.join().unwrap();
            assert_eq!(links as u64, n);
            assert_eq!(c.stats().pending, 0);
        }
    }
}
