//! Tests of how queries use the shared block cache: a long scan of the
//! events column family reads on without filling it, and gives the same
//! events as a cached scan.

use super::tests::{event, incompressible_binary};
use super::*;
use crate::query::{self, Filter, SCAN_CACHED_EVENTS};
use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};

/// Blocks this thread read from files (not from the block cache) in `f`.
fn block_reads<T>(f: impl FnOnce() -> T) -> (T, u64) {
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut ctx = PerfContext::default();
    ctx.reset();
    let r = f();
    let n = ctx.metric(PerfMetric::BlockReadCount);
    set_perf_stats(PerfStatsLevel::Disable);
    (r, n)
}

#[test]
fn a_long_time_scan_reads_on_without_filling_the_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let n = 5 * SCAN_CACHED_EVENTS as u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let evs: Vec<StoredEvent> = (1..=n)
        .map(|i| {
            let mut e = event(
                1_000 + i * 64,
                100 + (i % 7) as u32,
                EventType::FunctionEntry,
            );
            // a binary of 300 bytes that does not compress: many blocks
            e.data = incompressible_binary(300, &mut x);
            e
        })
        .collect();
    for chunk in evs.chunks(1000) {
        s.write(chunk, &[]).unwrap();
    }
    s.compact_all().unwrap();
    let all: Vec<u64> = evs.iter().map(|e| e.id).collect();
    for reverse in [false, true] {
        let f = Filter {
            reverse,
            ..Default::default()
        };
        let ids = |p: query::Page| p.events.iter().map(|e| e.id).collect::<Vec<_>>();
        let (first, read1) = block_reads(|| ids(query::events(&s, &f).unwrap()));
        let (second, read2) = block_reads(|| ids(query::events(&s, &f).unwrap()));
        let mut want = all.clone();
        if reverse {
            want.reverse();
        }
        // every event once, in order, across the switch to uncached reads
        assert_eq!(first, want, "reverse {reverse}");
        assert_eq!(second, want, "reverse {reverse}");
        // the second scan reads again what the first did not cache: all
        // but its first SCAN_CACHED_EVENTS events' blocks (cached, it
        // would read nothing from the files)
        assert!(read1 > 100, "first scan read {read1} blocks");
        assert!(
            read2 * 10 >= read1 * 6,
            "second scan read {read2} blocks, the first {read1} (reverse {reverse})"
        );
    }
    // a short scan is cached: read again, it reads no block from the files
    let f = Filter {
        limit: SCAN_CACHED_EVENTS / 2,
        ..Default::default()
    };
    let (a, _) = block_reads(|| query::events(&s, &f).unwrap().events.len());
    let (b, read) = block_reads(|| query::events(&s, &f).unwrap().events.len());
    assert_eq!((a, b), (SCAN_CACHED_EVENTS / 2, SCAN_CACHED_EVENTS / 2));
    assert_eq!(read, 0, "a short scan read again read {read} blocks");
}
