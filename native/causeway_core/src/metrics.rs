//! The dashboard's numbers (seed diagram 8): counters, capture→persisted latency
//! histograms, per-second rates computed by the pipeline manager, and the
//! history of backpressure decisions.

use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why events were dropped. Every drop is counted under exactly one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Refused by a full ring (drop-newest).
    RingFull,
    /// Overwritten in a full ring (drop-oldest).
    Overwritten,
    /// Sampled out in the emergency level.
    Sampled,
    /// Its batch could not be written after every retry.
    Storage,
    /// Its batch panicked a worker on every retry.
    Panic,
    /// Refused at capture: its payload would have taken the rings' heap
    /// memory past `memory_budget`.
    MemoryBudget,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::RingFull,
        DropReason::Overwritten,
        DropReason::Sampled,
        DropReason::Storage,
        DropReason::Panic,
        DropReason::MemoryBudget,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::RingFull => "ring_full",
            DropReason::Overwritten => "overwritten",
            DropReason::Sampled => "sampled",
            DropReason::Storage => "storage",
            DropReason::Panic => "panic",
            DropReason::MemoryBudget => "memory_budget",
        }
    }
}

/// A counter that many scheduler threads add to at once (an event sampled
/// out at the emergency level, for every call of an overloaded host): one
/// cache line per stripe, each thread on its own stripe (given on its first
/// add), read as the sum. One shared atomic made every producer's drop a
/// cache-line transfer between cores: 4 % of a pipeline bench's CPU.
pub struct Striped {
    stripes: Box<[Padded]>,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

const STRIPES: usize = 16;

impl Default for Striped {
    fn default() -> Self {
        Striped {
            stripes: (0..STRIPES).map(|_| Padded::default()).collect(),
        }
    }
}

impl Striped {
    #[inline]
    pub fn add(&self, n: u64) {
        self.stripes[thread_stripe() % STRIPES]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of every stripe (exact once the adders have returned).
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// This thread's stripe, handed out round-robin on first use.
#[inline]
pub fn thread_stripe() -> usize {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed);
        s.set(v);
        v
    })
}

#[derive(Default)]
pub struct Counters {
    pub persisted: AtomicU64,
    pub batches: AtomicU64,
    /// Events sampled out at the emergency level.
    pub sampled: Striped,
    pub over_budget: AtomicU64,
    pub dropped_storage: AtomicU64,
    pub dropped_panic: AtomicU64,
    pub write_errors: AtomicU64,
    pub retries: AtomicU64,
    pub worker_panics: AtomicU64,
    pub recoveries: AtomicU64,
    pub busy_ns: AtomicU64,
}

impl Counters {
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// Latency in microseconds, 1 µs .. 1 h, 3 significant digits.
pub struct Latency {
    window: Mutex<(Histogram<u64>, Histogram<u64>)>,
    total: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            window: Mutex::new((histogram(), histogram())),
            total: Mutex::new(histogram()),
        }
    }
}

impl Latency {
    /// Records a batch of latencies (µs) collected by one worker: each value
    /// straight into the shared histograms, under one lock each. (Adding a
    /// worker's own histogram instead walked its ~23 000 buckets twice per
    /// batch, after clearing them: ~600 bytes of memory traffic per event of
    /// a 1 000-event batch.)
    pub fn record_all(&self, values_us: &[u64]) {
        if let Ok(mut w) = self.window.lock() {
            for &v in values_us {
                w.0.saturating_record(v);
            }
        }
        if let Ok(mut t) = self.total.lock() {
            for &v in values_us {
                t.saturating_record(v);
            }
        }
    }

    /// Starts a new window; the one that ends becomes "recent".
    pub fn rotate(&self) {
        if let Ok(mut w) = self.window.lock() {
            let (cur, prev) = &mut *w;
            std::mem::swap(cur, prev);
            cur.reset();
        }
    }

    /// Recent latency: the last complete window plus the current one.
    pub fn recent(&self) -> Percentiles {
        match self.window.lock() {
            Ok(w) => {
                let mut h = w.1.clone();
                let _ = h.add(&w.0);
                percentiles(&h)
            }
            Err(_) => Percentiles::default(),
        }
    }

    pub fn total(&self) -> Percentiles {
        self.total
            .lock()
            .map(|t| percentiles(&t))
            .unwrap_or_default()
    }

    /// A worker's buffer of one batch's latencies, for `record_all`.
    pub fn new_local() -> Vec<u64> {
        Vec::new()
    }
}

/// Rates over the last measuring interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub events_per_s: f64,
    pub batches_per_s: f64,
    pub correlations_per_s: f64,
    pub captured_per_s: f64,
    /// Share of worker time spent processing, 0..1.
    pub worker_load: f64,
}

/// One decision of the backpressure manager.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub at_ms: u64,
    pub level: &'static str,
    pub utilization: f64,
    pub workers: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
}

pub struct History {
    items: Mutex<VecDeque<Decision>>,
    cap: usize,
}

impl History {
    pub fn new(cap: usize) -> History {
        History {
            items: Mutex::new(VecDeque::with_capacity(cap)),
            cap,
        }
    }

    pub fn push(&self, d: Decision) {
        if let Ok(mut v) = self.items.lock() {
            if v.len() == self.cap {
                v.pop_front();
            }
            v.push_back(d);
        }
    }

    pub fn snapshot(&self) -> Vec<Decision> {
        self.items
            .lock()
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counts_add_up_across_threads() {
        let c = std::sync::Arc::new(Striped::default());
        let hs: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1_000).for_each(|_| c.add(1)))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().expect("adder"));
        c.add(5);
        assert_eq!(c.get(), 20_005);
    }

    #[test]
    fn latency_percentiles_follow_the_data() {
        let l = Latency::default();
        let mut h = Latency::new_local();
        h.extend(1..=1000u64);
        l.record_all(&h);
        let p = l.recent();
        assert_eq!(p.count, 1000);
        assert!((495..=505).contains(&p.p50_us), "{p:?}");
        assert!((985..=995).contains(&p.p99_us), "{p:?}");
        l.rotate();
        assert_eq!(l.recent().count, 1000, "last window still counts");
        l.rotate();
        assert_eq!(l.recent().count, 0);
        assert_eq!(l.total().count, 1000);
    }

    #[test]
    fn history_is_bounded() {
        let h = History::new(3);
        for i in 0..5 {
            h.push(Decision {
                at_ms: i,
                level: "normal",
                utilization: 0.0,
                workers: 2,
                batch_size: 1,
                flush_interval_ms: 5,
            });
        }
        let s = h.snapshot();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].at_ms, 2);
    }
}
