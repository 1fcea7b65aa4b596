//! Criterion benchmarks of Layer 1 without a BEAM: ring push/pop, id
//! generation and the per-process context, single and contended.

use causeway_core::context::{Contexts, Frame};
use causeway_core::event::RawEvent;
use causeway_core::ids::IdGen;
use causeway_core::ring::{Overflow, Rings};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;

fn event(i: u64) -> RawEvent {
    RawEvent {
        id: i,
        data: smallvec::smallvec![131, 97, 1, 97, 2],
        ..Default::default()
    }
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));

    let r = Rings::new(1, 1 << 16, Overflow::DropNewest).unwrap();
    let mut out = Vec::with_capacity(1 << 16);
    g.bench_function("push (then drained every 64k)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            if r.push(0, event(i)) != causeway_core::ring::PushOutcome::Stored {
                out.clear();
                r.pop_batch(0, usize::MAX, &mut out);
            }
            i += 1;
        })
    });

    // The queue alone against the one the rings used before (crossbeam's
    // ArrayQueue, the same algorithm), plus the counter the rings then kept
    // after each push; both drained by pops every 64k.
    let q = crossbeam::queue::ArrayQueue::new(1 << 16);
    let accepted = std::sync::atomic::AtomicU64::new(0);
    g.bench_function("baseline: crossbeam ArrayQueue push + counter", |b| {
        let mut i = 0u64;
        b.iter(|| {
            if q.push(event(i)).is_err() {
                while q.pop().is_some() {}
            } else {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            i += 1;
        })
    });

    let mq = causeway_core::mpmc::Queue::new(1 << 16);
    g.bench_function("mpmc::Queue push (the rings' queue, alone)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            if mq.push(event(i)).is_err() {
                while mq.pop().is_some() {}
            }
            i += 1;
        })
    });

    let full = Rings::new(1, 1024, Overflow::DropNewest).unwrap();
    for i in 0..1024 {
        full.push(0, event(i));
    }
    g.bench_function("push into a full ring (drop-newest, counted)", |b| {
        b.iter(|| black_box(full.push(0, event(1))))
    });

    let oldest = Rings::new(1, 1024, Overflow::DropOldest).unwrap();
    g.bench_function("push with drop-oldest eviction", |b| {
        b.iter(|| black_box(oldest.push(0, event(1))))
    });

    g.throughput(Throughput::Elements(1000));
    g.bench_function("pop_batch of 1000", |b| {
        let r = Rings::new(1, 4096, Overflow::DropNewest).unwrap();
        let mut out = Vec::with_capacity(1000);
        b.iter_batched(
            || {
                for i in 0..1000 {
                    r.push(0, event(i));
                }
            },
            |_| {
                out.clear();
                r.pop_batch(0, 1000, &mut out)
            },
            // the setup right before each pop (a batch of setups first would
            // overflow the ring and leave later pops nothing to take)
            BatchSize::PerIteration,
        )
    });

    // two producers on one shard, one on each of two shards
    for (name, shards) in [
        ("2 producers, shared shard", 1),
        ("2 producers, own shards", 2),
    ] {
        g.throughput(Throughput::Elements(200_000));
        g.bench_function(name, |b| {
            b.iter_batched(
                || Arc::new(Rings::new(shards, 1 << 17, Overflow::DropNewest).unwrap()),
                |r| {
                    let hs: Vec<_> = (0..2)
                        .map(|t| {
                            let r = r.clone();
                            std::thread::spawn(move || {
                                for i in 0..100_000u64 {
                                    r.push(t % shards, event(i));
                                }
                            })
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn ids_and_context(c: &mut Criterion) {
    let mut g = c.benchmark_group("capture parts");
    g.throughput(Throughput::Elements(1));
    let ids = IdGen::new(2, 0);
    let mut t = 1_800_000_000_000_000_000u64;
    g.bench_function("IdGen::next", |b| {
        b.iter(|| {
            t += 100;
            black_box(ids.next(0, t))
        })
    });
    let ctx = Contexts::new(1_000_000);
    let mut id = 1u64;
    g.bench_function("context enter + exit", |b| {
        b.iter(|| {
            id += 1;
            ctx.enter(
                7,
                Frame {
                    call_id: id,
                    module: 1,
                    function: 2,
                    arity: 3,
                },
                0,
            );
            black_box(ctx.exit(7, id, 0))
        })
    });
    g.finish();
}

criterion_group!(benches, ring, ids_and_context);
criterion_main!(benches);
