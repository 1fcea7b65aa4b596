//! Criterion benchmarks of the query path without a BEAM: a process's events
//! by pid + time range, decoded in Rust, from the id index and from the
//! covering index, next to a full scan of the same range (the baseline).

use causeway_core::event::{EventType, PidRec, Source, StoredEvent};
use causeway_core::query::{self, Filter, PidMatch};
use causeway_core::store::{Store, StoreOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const PROCS: u64 = 20;
const EVENTS: u64 = 400_000;

fn workload() -> Vec<StoredEvent> {
    let base = 1_790_000_000_000_000_000u64;
    (0..EVENTS)
        .map(|i| {
            let wall = base + i * 1_000;
            let id = causeway_core::ids::wall_ns_to_id(wall) | (i & 63);
            let entry = i % 2 == 0;
            StoredEvent {
                id,
                kind: if entry {
                    EventType::FunctionEntry
                } else {
                    EventType::FunctionExit
                },
                mono_ns: wall as i64 - 1_700_000_000_000_000_000,
                wall_ns: wall as i64,
                pid: PidRec {
                    node: "nonode@nohost".into(),
                    id: 100 + (i / 2 % PROCS) as u32,
                    serial: 0,
                    creation: 1,
                },
                call_id: id & !1,
                parent_id: 0,
                parent_link: None,
                module: Some("Elixir.Shop.Cart".into()),
                function: Some(if i % 6 < 2 { "checkout" } else { "add_item" }.into()),
                arity: 2,
                peer: None,
                // [{:item, n}, "user-n"]
                data: vec![
                    131,
                    108,
                    0,
                    0,
                    0,
                    2,
                    104,
                    2,
                    119,
                    4,
                    b'i',
                    b't',
                    b'e',
                    b'm',
                    97,
                    (i % 251) as u8,
                    109,
                    0,
                    0,
                    0,
                    6,
                    b'u',
                    b's',
                    b'e',
                    b'r',
                    b'-',
                    b'0' + (i % 10) as u8,
                    106,
                ],
                source: Source::Runtime,
            }
        })
        .collect()
}

fn build(covering: bool) -> (tempfile::TempDir, Store, Filter, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            covering_pid_index: covering,
            ..Default::default()
        },
    )
    .expect("open");
    let evs = workload();
    for chunk in evs.chunks(1024) {
        store.write(chunk, &[]).expect("write");
    }
    store.compact_all().expect("compact");
    let f = Filter {
        pid: Some(PidMatch {
            id: 100,
            serial: 0,
            node: None,
        }),
        since_id: Some(evs[evs.len() / 4].id),
        until_id: Some(evs[3 * evs.len() / 4].id),
        ..Default::default()
    };
    let n = query::events(&store, &f).expect("query").events.len();
    assert!(n > 5_000, "{n} events in range");
    (dir, store, f, n)
}

fn pid_range(c: &mut Criterion) {
    let mut g = c.benchmark_group("events by pid + time range");
    g.sample_size(20);
    for covering in [false, true] {
        let (_dir, store, f, n) = build(covering);
        g.throughput(Throughput::Elements(n as u64));
        if !covering {
            let scan = Filter {
                force_scan: true,
                ..f.clone()
            };
            g.bench_function("full scan of the range (baseline)", |b| {
                b.iter(|| black_box(query::events(&store, &scan).expect("scan")))
            });
        }
        let name = if covering {
            "covering pid index"
        } else {
            "pid index (ids)"
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(query::events(&store, &f).expect("query")))
        });
    }
    g.finish();
}

criterion_group!(benches, pid_range);
criterion_main!(benches);
