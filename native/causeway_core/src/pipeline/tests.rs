//! Pipeline tests: closing, the memory budget, panics in captures and
//! writers, overload level changes, and captures racing a close.

use super::*;
use crate::store::StoreOptions;
use std::sync::mpsc;

/// The BEAM's side, for a pipeline with no BEAM: names are made up.
struct Names;
impl Resolver for Names {
    fn pid(&self, raw: u64) -> PidRec {
        PidRec {
            id: raw as u32,
            ..Default::default()
        }
    }
    fn atom(&self, raw: u64) -> Option<String> {
        Some(format!("a{raw}"))
    }
    fn now_mono_ns(&self) -> i64 {
        crate::clock::now_ns()
    }
    fn time_offset_ns(&self) -> i64 {
        0
    }
}

struct Quiet;
impl Notifier for Quiet {
    fn flushed(&self, _token: u64, _result: std::result::Result<(), String>) {}
    fn backpressure(&self, _level: Level, _info: &LevelInfo) {}
    fn worker_event(&self, _worker: usize, _what: &str, _detail: &str) {}
}

/// A pipeline with default settings on a fresh directory.
fn started() -> (tempfile::TempDir, Arc<Pipeline>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
    let p =
        Pipeline::start(Config::default(), store, Arc::new(Names), Arc::new(Quiet)).expect("start");
    (dir, p)
}

#[test]
fn closing_waits_for_a_query_on_the_store_so_the_directory_reopens_at_once() {
    let (dir, p) = started();
    // a query in progress holds the store
    let query = p.store().expect("the store");
    let (done_tx, done_rx) = mpsc::channel();
    let closer = {
        let p = p.clone();
        std::thread::spawn(move || {
            let r = p.close();
            p.release_store();
            done_tx.send(r.is_ok()).expect("send");
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        done_rx.try_recv().is_err(),
        "close returned while a query still held the database open"
    );
    drop(query);
    assert!(done_rx.recv().expect("closer"), "close failed");
    closer.join().expect("closer thread");
    // the database is closed and its lock released: the same directory
    // opens again at once (a supervisor restarting the instance)
    Store::open(dir.path(), StoreOptions::default()).expect("reopened right after close");
}

#[test]
fn an_event_made_in_place_near_the_memory_budget_is_handed_back() {
    let (_dir, p) = started();
    let fixed = fixed_bytes(&p.rings);
    let shards = p.rings.shard_count() as u64;
    // room for 1 000 payload bytes per shard
    p.tun
        .memory_budget
        .store(fixed + 1_000 * shards, Ordering::Relaxed);
    let fill = |e: &mut RawEvent| e.id = 1;
    let Ok(PushOutcome::Stored) = p.push_in_place(0, 900, fill) else {
        panic!("900 bytes fit a budget of 1 000");
    };
    let Err(back) = p.push_in_place(0, 1_100, |e: &mut RawEvent| e.id = 2) else {
        panic!("1 100 bytes may not fit a budget of 1 000");
    };
    // the caller makes the event and pushes it: its exact size decides
    let mut e = exit_event(&p, 1);
    back(&mut e);
    assert_eq!(e.id, 2);
    assert_eq!(p.push(0, e), PushOutcome::Stored);
    p.close().expect("close");
}

#[test]
fn a_capture_that_panics_is_dropped_and_counted_and_the_rest_persisted() {
    let (_dir, p) = started();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.push_in_place(0, 1_000, |e: &mut RawEvent| {
            e.kind = Some(EventType::ProcessExit);
            panic!("while making the event");
        })
    }));
    assert!(caught.is_err());
    let kept = exit_event(&p, 7);
    let id = kept.id;
    p.push(0, kept);
    p.close().expect("close");
    assert_eq!(Counters::get(&p.counters.dropped_panic), 1);
    assert_eq!(Counters::get(&p.counters.persisted), 1);
    let store = p.store().expect("the store");
    assert!(store.get(id).expect("read").is_some());
}

/// A batch retried after storage failures and a writer panic is stored with
/// every payload whole: the writer lends the payloads to the attempt (no
/// copy) and takes them back after it, whatever its outcome.
#[test]
fn payloads_survive_retries_after_failed_writes_and_a_writer_panic() {
    let (_dir, p) = started();
    p.inject_write_errors(2);
    p.inject_panics(1);
    let payloads: Vec<Vec<u8>> = [10usize, 300, 5_000, 40_000]
        .iter()
        .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
        .collect();
    let mut ids = Vec::new();
    for (i, data) in payloads.iter().enumerate() {
        let mut e = exit_event(&p, 10 + i as u64);
        e.data = crate::etf::Payload::from_slice(data);
        ids.push(e.id);
        assert_eq!(p.push(0, e), PushOutcome::Stored);
    }
    // (a close gives a failing batch two more attempts only)
    let deadline = Instant::now() + Duration::from_secs(20);
    while Counters::get(&p.counters.persisted) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    p.close().expect("close");
    assert_eq!(Counters::get(&p.counters.persisted), 4);
    assert!(
        Counters::get(&p.counters.retries) >= 3,
        "the batch was retried"
    );
    let store = p.store().expect("the store");
    for (id, data) in ids.iter().zip(&payloads) {
        let ev = store.get(*id).expect("read").expect("stored");
        assert_eq!(&ev.data, data, "payload of {} bytes", data.len());
    }
}

fn exit_event(p: &Pipeline, pid: u64) -> RawEvent {
    let mono = crate::clock::now_ns();
    RawEvent {
        id: p.stamp_on(0, mono),
        kind: Some(EventType::ProcessExit),
        mono_ns: mono,
        pid,
        ..Default::default()
    }
}

/// Counts the level changes a subscriber would be sent.
#[derive(Default)]
struct Levels(AtomicU64, Mutex<Vec<Level>>);
impl Notifier for Levels {
    fn flushed(&self, _token: u64, _result: std::result::Result<(), String>) {}
    fn backpressure(&self, level: Level, _info: &LevelInfo) {
        self.0.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = self.1.lock() {
            v.push(level);
        }
    }
    fn worker_event(&self, _worker: usize, _what: &str, _detail: &str) {}
}

#[test]
fn a_sustained_overload_sends_a_handful_of_level_changes_not_one_per_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
    let levels = Arc::new(Levels::default());
    let config = Config {
        shards: 1,
        ring_size: 4096,
        ..Config::default()
    };
    let p = Pipeline::start(config, store, Arc::new(Names), levels.clone()).expect("start");
    // one producer far faster than the writers, for 6 s: at `emergency`
    // its sampling empties the ring, which looks calm
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        for _ in 0..1_000 {
            if p.admit(EventType::FunctionExit, 1, 0) {
                let mono = crate::clock::now_ns();
                let e = RawEvent {
                    id: p.stamp_on(0, mono),
                    kind: Some(EventType::FunctionExit),
                    mono_ns: mono,
                    pid: 1,
                    ..Default::default()
                };
                p.push(0, e);
            }
        }
    }
    let changes = levels.0.load(Ordering::Relaxed);
    let seen = levels.1.lock().map(|v| v.clone()).unwrap_or_default();
    p.close().expect("close");
    assert!(
        seen.contains(&Level::Emergency),
        "never overloaded: {seen:?}"
    );
    assert!(p.counters.sampled.get() > 0);
    // ~36 in 6 s when only checks were counted
    assert!(changes <= 12, "{changes} level changes in 6 s: {seen:?}");
}

#[test]
fn a_capture_under_way_when_close_begins_is_persisted_not_lost() {
    let (_dir, p) = started(); // (the directory lives until the end)
    let (in_tx, in_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    // a tracer probe admitted just before close, preempted before its push
    let probe = {
        let p = p.clone();
        std::thread::spawn(move || {
            p.guarded_capture(|| {
                in_tx.send(()).expect("send");
                go_rx.recv().expect("go");
                p.push(0, exit_event(&p, 7))
            })
        })
    };
    in_rx.recv().expect("probe started");
    let (done_tx, done_rx) = mpsc::channel();
    let closer = {
        let p = p.clone();
        std::thread::spawn(move || done_tx.send(p.close().is_ok()).expect("send"))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        done_rx.try_recv().is_err(),
        "close drained the rings while a capture was still under way"
    );
    go_tx.send(()).expect("go");
    assert_eq!(probe.join().expect("probe"), Some(PushOutcome::Stored));
    assert!(done_rx.recv().expect("closer"), "close failed");
    closer.join().expect("closer thread");
    let s = p.snapshot();
    assert_eq!((s.produced, s.persisted), (1, 1), "accepted and persisted");
    // and a capture after close is refused, not pushed into a closed pipeline
    assert_eq!(p.guarded_capture(|| ()), None);
}
