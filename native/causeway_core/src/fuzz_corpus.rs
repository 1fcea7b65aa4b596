//! Seed corpora for the fuzz targets (`fuzz/`), taken from a real store:
//! `CAUSEWAY_FUZZ_CORPUS=fuzz/corpus cargo test --release -p causeway_core
//! fuzz_corpus -- --ignored` (what `make fuzz` runs first) writes a store
//! of calls, exits, state changes and sends between processes of two nodes,
//! then dumps its column families' values (and the meta keys) as files,
//! one directory per fuzz target.

#[cfg(test)]
mod tests {
    use crate::event::{EventType, LinkKind, PidRec};
    use crate::store::tests::event;
    use crate::store::{Store, StoreOptions, ALL_CFS};

    #[test]
    #[ignore = "writes the fuzz seed corpus; run by make fuzz"]
    fn fuzz_corpus() {
        let Ok(out) = std::env::var("CAUSEWAY_FUZZ_CORPUS") else {
            return;
        };
        let out = std::path::PathBuf::from(out);
        let dir = tempfile::tempdir().unwrap();
        for covering in [true, false] {
            let path = dir.path().join(format!("s{covering}"));
            let s = Store::open(
                &path,
                StoreOptions {
                    covering_pid_index: covering,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut evs = Vec::new();
            let mut links = Vec::new();
            for i in 1..=300u64 {
                let id = i << 20;
                let kind = match i % 5 {
                    0 => EventType::FunctionEntry,
                    1 => EventType::FunctionExit,
                    2 => EventType::StateChange,
                    3 => EventType::MessageSend,
                    _ => EventType::MessageReceive,
                };
                let mut e = event(id, (i % 3) as u32 + 1, kind);
                e.module = Some(format!("Elixir.Shop.M{}", i % 4).into());
                e.function = Some(format!("f{}", i % 6).into());
                e.data = (0..(i % 40) as u8).collect();
                if i % 7 == 0 {
                    // bigger than a covering list holds: listed by reference
                    e.data = vec![b'x'; crate::store::postings::COVERED_MAX + i as usize];
                }
                if kind == EventType::MessageSend {
                    e.peer = Some(PidRec {
                        node: "b@127.0.0.1".into(),
                        id: 7,
                        serial: 1,
                        creation: 3,
                    });
                }
                if kind == EventType::FunctionExit {
                    e.call_id = (i - 1) << 20;
                    e.parent_id = (i - 1) << 20;
                    links.push(crate::event::Link {
                        from: id,
                        kind: LinkKind::Completes,
                        to: (i - 1) << 20,
                    });
                }
                evs.push(e);
            }
            s.write(&evs, &links).unwrap();
            s.db().flush().unwrap();
            let target = |cf: &str| match cf {
                "events" => "stored_event",
                "by_call" => "pairs",
                "meta" => "etf_terms",
                _ => "postings",
            };
            for cf in ALL_CFS {
                let t = out.join(target(cf));
                std::fs::create_dir_all(&t).unwrap();
                let handle = s.db().cf_handle(cf).unwrap();
                for (n, kv) in s
                    .db()
                    .iterator_cf(handle, rocksdb::IteratorMode::Start)
                    .take(60)
                    .enumerate()
                {
                    let (k, v) = kv.unwrap();
                    std::fs::write(t.join(format!("{cf}-{covering}-{n}")), &v).unwrap();
                    if cf == "meta" {
                        std::fs::write(t.join(format!("{cf}-key-{covering}-{n}")), &k).unwrap();
                    }
                }
            }
        }
    }
}
