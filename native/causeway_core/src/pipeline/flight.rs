//! The flight recorder (`persist: {:on_trigger, ...}`): correlated batches
//! are kept in native memory for a sliding window (`window_ms`, and a byte
//! cap) instead of being written, and persisted only when a trigger fires —
//! an abnormal process exit, an `error` event, a call slower than
//! `slow_call_ms`, a message that waited longer than `queue_wait_ms` in a
//! mailbox, or a snapshot asked for from Elixir. Then the window before the
//! trigger (or only its causal cone) is written, then everything for
//! `after_ms` (or, with a cone, the trigger process's own events), and an
//! `Incident` is recorded in the store and sent to the owner.
//!
//! The decision for a batch is taken under the window's lock, so a batch is
//! either in the window a trigger persists or written after it, never lost
//! between them; a write that fails leaves the window as it was, and the
//! batch is retried like any other.

use super::*;
use crate::event::Link;
use crate::store::Incident;
use std::collections::{HashSet, VecDeque};

/// What a flight recorder keeps and what fires it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightConfig {
    pub window_ms: u64,
    /// Bytes the window may hold (payloads plus a fixed cost per event).
    pub max_bytes: u64,
    pub after_ms: u64,
    /// Persist only the causal cone of the trigger (and its process's events).
    pub cone: bool,
    pub on_exit: bool,
    pub on_error: bool,
    pub slow_call_ms: Option<u64>,
    pub queue_wait_ms: Option<u64>,
}

impl Default for FlightConfig {
    fn default() -> Self {
        FlightConfig {
            window_ms: 30_000,
            max_bytes: 64 << 20,
            after_ms: 1_000,
            cone: false,
            on_exit: true,
            on_error: true,
            slow_call_ms: None,
            queue_wait_ms: None,
        }
    }
}

/// What an event costs in the window beyond its payload (the struct, its
/// share of links and of the deque).
const EVENT_COST: u64 = 192;
/// How long after its after-phase an incident stops counting late batches.
const CLOSE_AFTER_NS: i64 = 5_000_000_000;
/// Incidents of one after-phase kept up to date (a storm of triggers
/// extends one phase; the older ones keep the counts they had).
const MAX_OPEN: usize = 64;
/// Events written per `WriteBatch` when a window is persisted.
const PERSIST_CHUNK: usize = 4_096;

/// The flight recorder's figures (in `Snapshot`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightStats {
    /// Events in the window now, and their bytes.
    pub window_events: u64,
    pub window_bytes: u64,
    /// Events that left the window by age (never persisted, as configured).
    pub expired: u64,
    /// Events pushed out by the byte cap before `window_ms` passed.
    pub evicted: u64,
    /// Events written because of a trigger.
    pub persisted: u64,
    pub incidents: u64,
}

struct Batch {
    events: Vec<StoredEvent>,
    links: Vec<Link>,
    bytes: u64,
    newest_mono: i64,
}

struct Window {
    batches: VecDeque<Batch>,
    events: u64,
    bytes: u64,
    /// The after-phase: batches captured before this (monotonic ns) are
    /// written as they come.
    until_mono: i64,
    /// With a cone, the processes whose events the after-phase writes.
    cone_pids: HashSet<(u32, u32)>,
    /// Incidents whose after-phase is running (rewritten as it persists).
    open: Vec<Incident>,
}

impl Window {
    /// Empties the window; returns how many events it held.
    fn clear(&mut self) -> u64 {
        let n = self.events;
        self.batches.clear();
        self.events = 0;
        self.bytes = 0;
        n
    }
}

impl Default for Window {
    fn default() -> Self {
        Window {
            batches: VecDeque::new(),
            events: 0,
            bytes: 0,
            // Erlang monotonic time is often negative: no after-phase yet
            // means before every time
            until_mono: i64::MIN,
            cone_pids: HashSet::new(),
            open: Vec::new(),
        }
    }
}

pub struct Flight {
    pub config: FlightConfig,
    window: Mutex<Window>,
    next_incident: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    persisted: AtomicU64,
    incidents: AtomicU64,
}

fn cost(e: &StoredEvent) -> u64 {
    e.data.len() as u64 + EVENT_COST
}

fn pid_key(p: &PidRec) -> (u32, u32) {
    (p.id, p.serial)
}

impl Flight {
    /// A recorder for `store` (incident ids continue after its last one).
    pub fn new(config: FlightConfig, store: &Store) -> Result<Flight> {
        let last = store.incidents()?.last().map_or(0, |i| i.id);
        Ok(Flight {
            config,
            window: Mutex::new(Window::default()),
            next_incident: AtomicU64::new(last + 1),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            incidents: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> FlightStats {
        let (events, bytes) = match self.window.lock() {
            Ok(w) => (w.events, w.bytes),
            Err(_) => (0, 0),
        };
        FlightStats {
            window_events: events,
            window_bytes: bytes,
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            persisted: self.persisted.load(Ordering::Relaxed),
            incidents: self.incidents.load(Ordering::Relaxed),
        }
    }

    /// Bytes the window holds (part of the pipeline's native memory).
    pub fn window_bytes(&self) -> u64 {
        self.window.lock().map_or(0, |w| w.bytes)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Window>> {
        self.window
            .lock()
            .map_err(|_| Error::Busy("flight recorder window poisoned".into()))
    }

    /// The triggers in a correlated batch, in event order.
    fn detect(&self, events: &[StoredEvent], links: &[Link]) -> Vec<Trigger> {
        let c = &self.config;
        let mut fired = Vec::new();
        for e in events {
            match e.kind {
                EventType::ProcessExit
                    if c.on_exit && !crate::etf::is_normal_exit_reason(&e.data) =>
                {
                    fired.push(Trigger::on(
                        "exit",
                        format!("abnormal exit of {}", e.pid),
                        e,
                    ))
                }
                EventType::Error if c.on_error => {
                    fired.push(Trigger::on("error", format!("error in {}", e.pid), e))
                }
                EventType::FunctionExit => {
                    if let Some(ms) = c.slow_call_ms {
                        let took = e.id.saturating_sub(e.call_id) / 1_000_000;
                        if e.call_id != 0 && took >= ms {
                            let detail = format!(
                                "{}.{}/{} took {took} ms",
                                e.module.as_deref().unwrap_or("?"),
                                e.function.as_deref().unwrap_or("?"),
                                e.arity
                            );
                            fired.push(Trigger::on("slow_call", detail, e));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(ms) = c.queue_wait_ms {
            for l in links {
                let (recv, send) = match l.kind {
                    LinkKind::Receives => (l.from, l.to),
                    LinkKind::ReceivedBy => (l.to, l.from),
                    _ => continue,
                };
                let waited = recv.saturating_sub(send) / 1_000_000;
                if waited < ms {
                    continue;
                }
                if let Some(e) = events.iter().find(|e| e.id == recv) {
                    let detail = format!("a message waited {waited} ms for {}", e.pid);
                    fired.push(Trigger::on("queue_wait", detail, e));
                }
            }
            fired.sort_by_key(|t| t.id);
        }
        fired
    }

    /// Handles one correlated batch: keeps it in the window, or (a trigger
    /// in it, or an after-phase running) writes what is due.
    pub(super) fn route(
        &self,
        store: &Store,
        events: Vec<StoredEvent>,
        links: &[Link],
        now_mono: i64,
        notifier: &dyn Notifier,
    ) -> Result<()> {
        let fired = self.detect(&events, links);
        let mut w = self.lock()?;
        // an after-phase long over: its incidents are final (a batch can
        // come late from another writer, so not at once)
        if !w.open.is_empty() && now_mono.saturating_sub(w.until_mono) > CLOSE_AFTER_NS {
            w.open.clear();
        }
        match fired.first() {
            Some(t) if t.mono >= w.until_mono => {
                self.fire(&mut w, store, events, links, fired, notifier)?
            }
            _ => self.after_phase(&mut w, store, events, links, fired, notifier)?,
        }
        self.evict(&mut w, now_mono);
        Ok(())
    }

    /// A snapshot asked for from Elixir: the whole window is persisted (with
    /// a cone too: there is no trigger event to take a cone of), and an
    /// after-phase starts now.
    pub fn snapshot(
        &self,
        store: &Store,
        reason: &str,
        trigger: &'static str,
        now_mono: i64,
        now_wall: i64,
        notifier: &dyn Notifier,
    ) -> Result<Incident> {
        let mut w = self.lock()?;
        let cutoff_wall = now_wall.saturating_sub(self.window_ns());
        let mut links: Vec<Link> = Vec::new();
        let mut chosen: Vec<StoredEvent> = Vec::new();
        for b in &w.batches {
            links.extend_from_slice(&b.links);
            chosen.extend(
                b.events
                    .iter()
                    .filter(|e| e.wall_ns >= cutoff_wall)
                    .cloned(),
            );
        }
        let (n, bytes) = write_chunks(store, &chosen, &links)?;
        self.expired.fetch_add(w.clear() - n, Ordering::Relaxed);
        self.persisted.fetch_add(n, Ordering::Relaxed);
        w.open.clear();
        w.cone_pids.clear();
        w.until_mono = now_mono.saturating_add(self.after_ns());
        let (lo, hi) = span(&chosen);
        let snapshot = Trigger {
            trigger,
            detail: reason.into(),
            id: 0,
            mono: now_mono,
            wall: now_wall,
            pid: (0, 0),
        };
        let inc = Incident {
            first_id: lo.unwrap_or(id_at(cutoff_wall)),
            last_id: hi.unwrap_or(id_at(now_wall)),
            events: n,
            bytes,
            ..snapshot.incident(self.next_id(), false)
        };
        self.record(&mut w, store, inc.clone(), notifier)?;
        Ok(inc)
    }

    fn next_id(&self) -> u64 {
        self.next_incident.fetch_add(1, Ordering::Relaxed)
    }

    fn window_ns(&self) -> i64 {
        (self.config.window_ms as i64).saturating_mul(1_000_000)
    }

    fn after_ns(&self) -> i64 {
        (self.config.after_ms as i64).saturating_mul(1_000_000)
    }

    /// Drops what is older than the window and what is over the byte cap.
    fn evict(&self, w: &mut Window, now_mono: i64) {
        let horizon = now_mono.saturating_sub(self.window_ns());
        while let Some(front) = w.batches.front() {
            let old = front.newest_mono < horizon;
            if !old && w.bytes <= self.config.max_bytes {
                break;
            }
            let Some(b) = w.batches.pop_front() else {
                break;
            };
            let n = b.events.len() as u64;
            w.events -= n;
            w.bytes -= b.bytes;
            if old {
                self.expired.fetch_add(n, Ordering::Relaxed);
            } else {
                self.evicted.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A trigger with no after-phase running: persists the window (or the
    /// cone) with this batch, records the incidents, starts the after-phase.
    fn fire(
        &self,
        w: &mut Window,
        store: &Store,
        batch: Vec<StoredEvent>,
        links: &[Link],
        fired: Vec<Trigger>,
        notifier: &dyn Notifier,
    ) -> Result<()> {
        let cutoff_wall = fired[0].wall.saturating_sub(self.window_ns());
        let mut all_links: Vec<Link> = w
            .batches
            .iter()
            .flat_map(|b| b.links.iter().copied())
            .collect();
        all_links.extend_from_slice(links);
        let candidates: Vec<&StoredEvent> = w
            .batches
            .iter()
            .flat_map(|b| b.events.iter())
            .chain(batch.iter())
            .filter(|e| e.wall_ns >= cutoff_wall)
            .collect();
        let keep: Option<HashSet<u64>> = if self.config.cone {
            let ids: HashSet<u64> = fired.iter().map(|t| t.id).collect();
            let triggers: Vec<&StoredEvent> = candidates
                .iter()
                .copied()
                .filter(|e| ids.contains(&e.id))
                .collect();
            Some(cone(&candidates, &all_links, &triggers))
        } else {
            None
        };
        let chosen: Vec<StoredEvent> = candidates
            .iter()
            .filter(|e| keep.as_ref().is_none_or(|k| k.contains(&e.id)))
            .map(|e| (*e).clone())
            .collect();
        let (n, bytes) = write_chunks(store, &chosen, &all_links)?;
        // written: the window is spent (with a cone, what was not in it
        // stays for a later trigger)
        match &keep {
            None => {
                let held = w.clear();
                self.expired
                    .fetch_add(held + batch.len() as u64 - n, Ordering::Relaxed);
            }
            Some(k) => {
                for b in w.batches.iter_mut() {
                    b.events.retain(|e| !k.contains(&e.id));
                    b.bytes = b.events.iter().map(cost).sum();
                }
                w.batches.retain(|b| !b.events.is_empty());
                w.events = w.batches.iter().map(|b| b.events.len() as u64).sum();
                w.bytes = w.batches.iter().map(|b| b.bytes).sum();
                let rest: Vec<StoredEvent> =
                    batch.into_iter().filter(|e| !k.contains(&e.id)).collect();
                push(w, rest, links);
            }
        }
        self.persisted.fetch_add(n, Ordering::Relaxed);
        let (lo, hi) = span(&chosen);
        let first_id = lo.unwrap_or(id_at(cutoff_wall));
        w.open.clear();
        w.cone_pids.clear();
        for (k, t) in fired.into_iter().enumerate() {
            w.until_mono = w.until_mono.max(t.mono.saturating_add(self.after_ns()));
            w.cone_pids.insert(t.pid);
            let inc = Incident {
                first_id,
                last_id: hi.unwrap_or(t.id).max(t.id),
                events: if k == 0 { n } else { 0 },
                bytes: if k == 0 { bytes } else { 0 },
                ..t.incident(self.next_id(), self.config.cone)
            };
            self.record(w, store, inc, notifier)?;
        }
        Ok(())
    }

    fn record(
        &self,
        w: &mut Window,
        store: &Store,
        inc: Incident,
        notifier: &dyn Notifier,
    ) -> Result<()> {
        store.put_incident(&inc)?;
        self.incidents.fetch_add(1, Ordering::Relaxed);
        notifier.incident(&inc);
        if w.open.len() >= MAX_OPEN {
            w.open.remove(0);
        }
        w.open.push(inc);
        Ok(())
    }

    /// A batch while no trigger starts a new incident: the events captured
    /// within a running after-phase are written (with a cone, only those of
    /// the trigger processes), the rest goes to the window. Triggers inside
    /// an after-phase make incidents of their own and extend it.
    fn after_phase(
        &self,
        w: &mut Window,
        store: &Store,
        batch: Vec<StoredEvent>,
        links: &[Link],
        fired: Vec<Trigger>,
        notifier: &dyn Notifier,
    ) -> Result<()> {
        let mut until = w.until_mono;
        let mut pids = w.cone_pids.clone();
        for t in &fired {
            until = until.max(t.mono.saturating_add(self.after_ns()));
            pids.insert(t.pid);
        }
        let due = |e: &StoredEvent| {
            e.mono_ns < until && (!self.config.cone || pids.contains(&pid_key(&e.pid)))
        };
        // the usual case, no after-phase covering the batch: all to the window
        let (chosen, rest): (Vec<StoredEvent>, Vec<StoredEvent>) =
            if batch.iter().all(|e| e.mono_ns >= until) {
                (Vec::new(), batch)
            } else {
                batch.into_iter().partition(due)
            };
        let (n, bytes) = write_chunks(store, &chosen, links)?;
        self.persisted.fetch_add(n, Ordering::Relaxed);
        let hi = span(&chosen).1;
        w.until_mono = until;
        w.cone_pids = pids;
        if let Some(hi) = hi {
            for inc in w.open.iter_mut() {
                inc.last_id = inc.last_id.max(hi);
                inc.events += n;
                inc.bytes += bytes;
                store.put_incident(inc)?;
            }
        }
        for t in fired {
            let inc = Incident {
                first_id: id_at(t.wall.saturating_sub(self.window_ns())),
                last_id: hi.unwrap_or(t.id).max(t.id),
                ..t.incident(self.next_id(), self.config.cone)
            };
            self.record(w, store, inc, notifier)?;
        }
        push(w, rest, links);
        Ok(())
    }
}

/// A trigger found in a batch (or a snapshot, with no event: id 0), with
/// what is needed once its batch has moved on.
struct Trigger {
    trigger: &'static str,
    detail: String,
    id: u64,
    mono: i64,
    wall: i64,
    pid: (u32, u32),
}

impl Trigger {
    fn on(trigger: &'static str, detail: String, e: &StoredEvent) -> Trigger {
        Trigger {
            trigger,
            detail,
            id: e.id,
            mono: e.mono_ns,
            wall: e.wall_ns,
            pid: pid_key(&e.pid),
        }
    }

    /// Its incident, numbered `id`, with nothing written yet.
    fn incident(self, id: u64, cone: bool) -> Incident {
        Incident {
            id,
            trigger: self.trigger.into(),
            detail: self.detail,
            trigger_event: self.id,
            wall_ns: self.wall,
            cone,
            ..Incident::default()
        }
    }
}

/// Puts events in the window as one batch.
fn push(w: &mut Window, events: Vec<StoredEvent>, links: &[Link]) {
    if events.is_empty() {
        return;
    }
    let bytes: u64 = events.iter().map(cost).sum();
    let newest_mono = events.iter().map(|e| e.mono_ns).max().unwrap_or(0);
    w.events += events.len() as u64;
    w.bytes += bytes;
    w.batches.push_back(Batch {
        events,
        links: links.to_vec(),
        bytes,
        newest_mono,
    });
}

/// The smallest id that can stand for wall-clock time `wall_ns`.
fn id_at(wall_ns: i64) -> u64 {
    crate::ids::wall_ns_to_id(wall_ns.max(0) as u64)
}

/// The smallest and largest id of `events`.
fn span(events: &[StoredEvent]) -> (Option<u64>, Option<u64>) {
    (
        events.iter().map(|e| e.id).min(),
        events.iter().map(|e| e.id).max(),
    )
}

/// Writes `events` in chunks (bounded write batches), links with the chunk
/// that holds their source. Returns (events, payload bytes) written.
fn write_chunks(store: &Store, events: &[StoredEvent], links: &[Link]) -> Result<(u64, u64)> {
    if events.is_empty() {
        return Ok((0, 0));
    }
    let mut sorted: Vec<&StoredEvent> = events.iter().collect();
    sorted.sort_unstable_by_key(|e| e.id);
    let present: HashSet<u64> = events.iter().map(|e| e.id).collect();
    let links: Vec<Link> = links
        .iter()
        .filter(|l| present.contains(&l.from))
        .copied()
        .collect();
    let mut bytes = 0u64;
    for chunk in sorted.chunks(PERSIST_CHUNK) {
        let evs: Vec<StoredEvent> = chunk.iter().map(|e| (*e).clone()).collect();
        let ids: HashSet<u64> = evs.iter().map(|e| e.id).collect();
        let ls: Vec<Link> = links
            .iter()
            .filter(|l| ids.contains(&l.from))
            .copied()
            .collect();
        store.write(&evs, &ls)?;
        bytes += evs.iter().map(|e| e.data.len() as u64).sum::<u64>();
    }
    Ok((events.len() as u64, bytes))
}

/// The causal cone of `triggers` among `events`: each trigger, every event
/// of a trigger's process, and everything their links, capture-time parents
/// and call entries reach backwards, across processes.
fn cone(events: &[&StoredEvent], links: &[Link], triggers: &[&StoredEvent]) -> HashSet<u64> {
    let by_id: HashMap<u64, &StoredEvent> = events.iter().map(|e| (e.id, *e)).collect();
    // effect → causes
    let mut causes: HashMap<u64, Vec<u64>> = HashMap::new();
    for l in links {
        let (effect, cause) = match l.kind {
            LinkKind::Completes
            | LinkKind::CalledFrom
            | LinkKind::Receives
            | LinkKind::CausedBy
            | LinkKind::ExitOf => (l.from, l.to),
            LinkKind::CompletedBy
            | LinkKind::Calls
            | LinkKind::ReceivedBy
            | LinkKind::Causes
            | LinkKind::ExitedBy => (l.to, l.from),
        };
        causes.entry(effect).or_default().push(cause);
    }
    let pids: HashSet<(u32, u32)> = triggers.iter().map(|t| pid_key(&t.pid)).collect();
    let mut out: HashSet<u64> = HashSet::new();
    let mut todo: Vec<u64> = triggers.iter().map(|t| t.id).collect();
    todo.extend(
        events
            .iter()
            .filter(|e| pids.contains(&pid_key(&e.pid)))
            .map(|e| e.id),
    );
    while let Some(id) = todo.pop() {
        let Some(e) = by_id.get(&id) else { continue };
        if !out.insert(id) {
            continue;
        }
        for c in [e.parent_id, e.call_id] {
            if c != 0 && c != id && !out.contains(&c) {
                todo.push(c);
            }
        }
        if let Some(cs) = causes.get(&id) {
            todo.extend(cs.iter().filter(|c| !out.contains(c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::event;

    #[test]
    fn a_cone_follows_links_parents_and_calls_backwards_across_processes() {
        // B: entry 10 sends 11 to A; A receives it (20) and exits (21);
        // C runs unrelated (5, 30); B's later call (40) is not a cause
        let mut e10 = event(10, 2, EventType::FunctionEntry);
        e10.parent_id = 3;
        let e3 = event(3, 2, EventType::MessageReceive);
        let mut e11 = event(11, 2, EventType::MessageSend);
        e11.parent_id = 10;
        let e20 = event(20, 1, EventType::MessageReceive);
        let e21 = event(21, 1, EventType::ProcessExit);
        let e19 = event(19, 1, EventType::FunctionEntry);
        let e5 = event(5, 3, EventType::FunctionEntry);
        let e30 = event(30, 3, EventType::FunctionEntry);
        let e40 = event(40, 2, EventType::FunctionEntry);
        let all = [&e3, &e5, &e10, &e11, &e19, &e20, &e21, &e30, &e40];
        let links = [Link {
            from: 11,
            kind: LinkKind::ReceivedBy,
            to: 20,
        }];
        let got = cone(&all, &links, &[&e21]);
        let mut ids: Vec<u64> = got.into_iter().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![3, 10, 11, 19, 20, 21]);
    }
}
