//! The store's tests: round trips, retention consistency, on-disk size,
//! and what a damaged or foreign directory gives.

use super::*;
use crate::event::{PidRec, Source};

/// An ETF binary of `len` bytes that do not compress (xorshift from `x`).
pub(crate) fn incompressible_binary(len: u32, x: &mut u64) -> Vec<u8> {
    let mut data = vec![131, 109];
    data.extend_from_slice(&len.to_be_bytes());
    data.extend((0..len).map(|_| {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x as u8
    }));
    data
}

pub(crate) fn event(id: u64, pid: u32, kind: EventType) -> StoredEvent {
    StoredEvent {
        id,
        kind,
        mono_ns: id as i64,
        wall_ns: id as i64,
        pid: PidRec {
            node: "nonode@nohost".into(),
            id: pid,
            serial: 0,
            creation: 0,
        },
        call_id: if kind == EventType::FunctionEntry {
            id
        } else {
            0
        },
        parent_id: 0,
        parent_link: None,
        module: Some("Elixir.M".into()),
        function: Some("f".into()),
        arity: 1,
        peer: None,
        data: vec![131, 97, (id % 200) as u8],
        source: Source::Runtime,
    }
}

#[test]
fn a_process_s_events_come_in_id_order_from_interleaved_lists_both_ways() {
    use crate::query::{self, Filter, PidMatch};
    for covering in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            StoreOptions {
                covering_pid_index: covering,
                ..Default::default()
            },
        )
        .unwrap();
        // three writers' batches for one process, their ids interleaved:
        // the posting lists overlap, and one list has a single event
        let ids = |r: std::ops::Range<u64>, step: u64, off: u64| -> Vec<u64> {
            r.map(|i| (i * step + off) * 64).collect()
        };
        for batch in [
            ids(0..40, 3, 1),
            ids(0..40, 3, 2),
            ids(0..40, 3, 3),
            vec![77 * 64 + 32],
        ] {
            let evs: Vec<_> = batch
                .iter()
                .map(|&id| event(id, 7, EventType::FunctionEntry))
                .chain([event(batch[0] + 1, 8, EventType::FunctionEntry)])
                .collect();
            s.write(&evs, &[]).unwrap();
        }
        let mut all: Vec<u64> = (1..=120).map(|i| i * 64).collect();
        all.push(77 * 64 + 32);
        all.sort_unstable();
        for reverse in [false, true] {
            let mut want = all.clone();
            if reverse {
                want.reverse();
            }
            let f = Filter {
                pid: Some(PidMatch {
                    id: 7,
                    serial: 0,
                    node: None,
                }),
                limit: 1000,
                reverse,
                ..Default::default()
            };
            let got: Vec<u64> = query::events(&s, &f)
                .unwrap()
                .events
                .iter()
                .map(|e| e.id)
                .collect();
            assert_eq!(got, want, "covering {covering}, reverse {reverse}");
            // and in pages of 7
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let page = query::events(
                    &s,
                    &Filter {
                        limit: 7,
                        after,
                        ..f.clone()
                    },
                )
                .unwrap();
                paged.extend(page.events.iter().map(|e| e.id));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(paged, want, "paged: covering {covering}, reverse {reverse}");
        }
    }
}

#[test]
fn round_trip_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let evs: Vec<_> = (1..=100)
        .map(|i| event(i * 64, (i % 3) as u32, EventType::FunctionEntry))
        .collect();
    let mut exit = event(6464, 0, EventType::FunctionExit);
    exit.call_id = 64;
    exit.parent_id = 64;
    let mut recv = event(6528, 1, EventType::MessageReceive);
    recv.module = None;
    recv.function = None;
    recv.parent_id = 64;
    recv.parent_link = Some(LinkKind::CausedBy);
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.write(&evs, &[]).unwrap();
        s.write(
            &[exit.clone(), recv.clone()],
            &[Link {
                from: 6528,
                kind: LinkKind::Receives,
                to: 128,
            }],
        )
        .unwrap();
        s.sync().unwrap();
    }
    let s = Store::open(
        dir.path(),
        StoreOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.get(64 * 7).unwrap().as_ref(), Some(&evs[6]));
    assert_eq!(s.get(65).unwrap(), None);
    assert_eq!(s.get(6528).unwrap().as_ref(), Some(&recv));
    assert_eq!(s.max_id().unwrap(), 6528);
    let entry = s.get(64).unwrap().unwrap();
    assert_eq!(
        s.links_of(&entry).unwrap(),
        vec![(LinkKind::CompletedBy, 6464), (LinkKind::Causes, 6528)]
    );
    let exit = s.get(6464).unwrap().unwrap();
    assert_eq!(s.links_of(&exit).unwrap(), vec![(LinkKind::Completes, 64)]);
    let recv = s.get(6528).unwrap().unwrap();
    assert_eq!(
        s.links_of(&recv).unwrap(),
        vec![(LinkKind::CausedBy, 64), (LinkKind::Receives, 128)]
    );
    let send = s.get(128).unwrap().unwrap();
    assert!(s
        .links_of(&send)
        .unwrap()
        .contains(&(LinkKind::ReceivedBy, 6528)));
    assert_eq!(s.name_id("Elixir.M"), Some(1));
    assert_eq!(s.name_id("nope"), None);
    let mut n = 0;
    s.scan_keys(
        CF_BY_PID,
        &keys::pid(evs[0].pid.key(), 0),
        Some(&keys::pid(evs[0].pid.key(), u64::MAX)),
        false,
        |_, _| {
            n += 1;
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!(n, 2, "two batches: two posting lists");
    assert!(
        s.write(&evs, &[]).is_err(),
        "read-only store refuses writes"
    );
}

/// Every index entry and link points at an event that exists.
fn assert_consistent(s: &Store) {
    for cf in [CF_BY_PID, CF_BY_MFA, CF_BY_TYPE, CF_BY_CALL, CF_STATE] {
        s.scan_keys(cf, &[], None, false, |k, v| {
            let last = keys::trailing_id(k).unwrap();
            let ids = if cf == CF_BY_CALL {
                postings::decode_pairs(v)
                    .unwrap()
                    .into_iter()
                    .map(|p| p.1)
                    .collect()
            } else if is_posting_cf(cf) {
                postings::decode_ids(cf, last, v).unwrap()
            } else {
                vec![last]
            };
            assert!(!ids.is_empty(), "{cf}: empty posting list");
            for id in ids {
                assert!(
                    s.get(id).unwrap().is_some(),
                    "{cf} points at deleted event {id}"
                );
            }
            Ok(true)
        })
        .unwrap();
    }
    s.scan_keys(CF_LINKS, &[], None, false, |k, _| {
        let from = u64::from_be_bytes(k[..8].try_into().unwrap());
        let to = keys::trailing_id(k).unwrap();
        assert!(
            s.get(from).unwrap().is_some() && s.get(to).unwrap().is_some(),
            "dangling link {from} -> {to}"
        );
        Ok(true)
    })
    .unwrap();
}

#[test]
fn retention_deletes_exactly_the_old_events_and_keeps_indexes_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut evs = Vec::new();
    for i in 1..=300u64 {
        let kind = [
            EventType::FunctionEntry,
            EventType::FunctionExit,
            EventType::StateChange,
            EventType::MessageSend,
        ][(i % 4) as usize];
        let mut e = event(i * 64, (i % 5) as u32, kind);
        e.module = Some(format!("Elixir.M{}", i % 3).into());
        if kind == EventType::FunctionExit {
            e.call_id = (i - 1) * 64;
        }
        if i > 1 && i % 7 == 0 {
            e.parent_id = (i - 1) * 64;
            e.parent_link = Some(LinkKind::CausedBy);
        }
        evs.push(e);
    }
    // cross links between old and new events
    let links: Vec<Link> = (1..=100u64)
        .map(|i| Link {
            from: (i + 200) * 64,
            kind: LinkKind::Receives,
            to: i * 64,
        })
        .collect();
    s.write(&evs, &links).unwrap();
    assert_consistent(&s);

    let stats = s.delete_before(150 * 64, 40).unwrap();
    assert_eq!(stats.events, 149);
    assert!(stats.chunks >= 4, "chunked: {stats:?}");
    assert_eq!(s.min_id().unwrap(), Some(150 * 64));
    assert_eq!(s.get(149 * 64).unwrap(), None);
    assert!(s.get(150 * 64).unwrap().is_some());
    assert_consistent(&s);
    // a second pass finds nothing more
    assert_eq!(s.delete_before(150 * 64, 40).unwrap().events, 0);
    let n = crate::query::events(&s, &crate::query::Filter::default())
        .unwrap()
        .events
        .len();
    assert_eq!(n, 151);
}

#[test]
fn a_batch_never_lands_between_a_retention_scan_and_its_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
    let evs: Vec<_> = (1..=100u64)
        .map(|i| event(i * 64, 1, EventType::StateChange))
        .collect();
    s.write(&evs, &[]).unwrap();
    // right after the first chunk's scan, another writer commits an old
    // event of a process the scan did not see
    let late = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let (s2, late) = (s.clone(), late.clone());
        *s.after_scan.lock().unwrap() = Some(Box::new(move || {
            let s3 = s2.clone();
            let h = std::thread::spawn(move || {
                s3.write(&[event(50 * 64 + 1, 999, EventType::StateChange)], &[])
                    .unwrap();
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            *late.lock().unwrap() = Some(h);
        }));
    }
    s.delete_before(200 * 64, 1_000).unwrap();
    *s.after_scan.lock().unwrap() = None;
    if let Some(h) = late.lock().unwrap().take() {
        h.join().unwrap();
    }
    // whatever the first pass left, a second one cleans up consistently
    s.delete_before(200 * 64, 1_000).unwrap();
    assert_consistent(&s);
}

#[test]
fn an_interrupted_store_stops_retention_between_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let evs: Vec<_> = (1..=100u64)
        .map(|i| event(i * 64, 1, EventType::StateChange))
        .collect();
    s.write(&evs, &[]).unwrap();
    s.interrupt_maintenance();
    assert_eq!(s.delete_before(200 * 64, 10).unwrap().events, 0);
    let policy = RetentionPolicy {
        max_bytes: Some(1),
        ..Default::default()
    };
    assert_eq!(s.enforce_retention(&policy, u64::MAX).unwrap().events, 0);
    assert!(s.get(64).unwrap().is_some());
}

/// Two fresh stores: `covering_pid_index: false`, and the default (true),
/// with their directories.
fn plain_and_covering() -> (tempfile::TempDir, tempfile::TempDir, Store, Store) {
    let plain = tempfile::tempdir().unwrap();
    let covering = tempfile::tempdir().unwrap();
    let a = Store::open(
        plain.path(),
        StoreOptions {
            covering_pid_index: false,
            ..Default::default()
        },
    )
    .unwrap();
    let b = Store::open(covering.path(), StoreOptions::default()).unwrap();
    (plain, covering, a, b)
}

#[test]
fn covering_pid_lists_answer_the_same_and_survive_retention() {
    let (_plain, _covering, a, b) = plain_and_covering();
    let evs: Vec<_> = (1..=400u64)
        .map(|i| event(i * 64, (i % 3) as u32, EventType::StateChange))
        .collect();
    for chunk in evs.chunks(50) {
        a.write(chunk, &[]).unwrap();
        b.write(chunk, &[]).unwrap();
    }
    let pid = crate::query::PidMatch {
        id: 1,
        serial: 0,
        node: None,
    };
    for reverse in [false, true] {
        let f = crate::query::Filter {
            pid: Some(pid.clone()),
            reverse,
            since_id: Some(64 * 37),
            until_id: Some(64 * 301),
            ..Default::default()
        };
        let x = crate::query::events(&a, &f).unwrap().events;
        let y = crate::query::events(&b, &f).unwrap().events;
        assert_eq!(x.len(), 89);
        assert_eq!(x, y);
    }
    b.delete_before(64 * 200, 30).unwrap();
    assert_consistent(&b);
    let f = crate::query::Filter {
        pid: Some(pid),
        ..Default::default()
    };
    assert!(crate::query::events(&b, &f)
        .unwrap()
        .events
        .iter()
        .all(|e| e.id >= 64 * 200));
}

/// `ev` with a binary of `n` bytes as its data (ETF).
fn with_binary(mut ev: StoredEvent, n: usize) -> StoredEvent {
    ev.data = [131, 109]
        .into_iter()
        .chain((n as u32).to_be_bytes())
        .collect();
    ev.data.extend(std::iter::repeat_n(b'x', n));
    ev
}

#[test]
fn covering_lists_hold_big_events_by_reference_and_answer_the_same() {
    use crate::query::{self, Filter, PidMatch};
    let (_plain, covering, a, b) = plain_and_covering();
    // sizes from 0 to ~1 KB around the limit, three processes
    let evs: Vec<_> = (1..=600u64)
        .map(|i| {
            let e = event(i * 64, (i % 3) as u32, EventType::FunctionEntry);
            with_binary(e, (i as usize * 37) % 1000)
        })
        .collect();
    for chunk in evs.chunks(70) {
        a.write(chunk, &[]).unwrap();
        b.write(chunk, &[]).unwrap();
    }
    // the lists hold the small events and only the ids of the big ones
    let (mut inline, mut by_ref) = (0, 0);
    b.scan_keys(CF_BY_PID, &[], None, false, |k, v| {
        let first = keys::trailing_id(k).unwrap();
        let postings::PidList::Events(list) = postings::decode_pid_list(first, v).unwrap() else {
            panic!("a covering store wrote an id list");
        };
        for (id, bytes) in list {
            let stored =
                b.db.get_cf(b.cf(CF_EVENTS).unwrap(), keys::id(id))
                    .unwrap()
                    .unwrap();
            match bytes {
                Some(bytes) => {
                    assert!(stored.len() <= postings::COVERED_MAX);
                    assert_eq!(bytes, &stored[..]);
                    inline += 1;
                }
                None => {
                    assert!(stored.len() > postings::COVERED_MAX, "event {id}");
                    by_ref += 1;
                }
            }
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(inline + by_ref, 600);
    assert!(
        inline > 100 && by_ref > 300,
        "{inline} inline, {by_ref} by reference"
    );
    let same = |a: &Store, b: &Store| {
        for pid in 0..3 {
            for reverse in [false, true] {
                for limit in [1000, 7] {
                    let f = Filter {
                        pid: Some(PidMatch {
                            id: pid,
                            serial: 0,
                            node: None,
                        }),
                        since_id: Some(64 * 37),
                        until_id: Some(64 * 555),
                        limit,
                        reverse,
                        ..Default::default()
                    };
                    let page = |s: &Store| {
                        let mut all = Vec::new();
                        let mut after = None;
                        loop {
                            let p = query::events(s, &Filter { after, ..f.clone() }).unwrap();
                            all.extend(p.events);
                            match p.next {
                                Some(n) => after = Some(n),
                                None => return all,
                            }
                        }
                    };
                    let (x, y) = (page(a), page(b));
                    assert!(!x.is_empty());
                    assert_eq!(x, y, "pid {pid}, reverse {reverse}, limit {limit}");
                }
            }
        }
    };
    same(&a, &b);
    // retention through the middle of lists keeps both kinds of entry right
    a.delete_before(64 * 301 + 1, 30).unwrap();
    b.delete_before(64 * 301 + 1, 30).unwrap();
    assert_consistent(&b);
    same(&a, &b);
    drop(b);
    let b = Store::open(covering.path(), StoreOptions::default()).unwrap();
    same(&a, &b);
}

/// The covering lists as a version-2 store holds them: every event's bytes
/// in the list, big ones included.
fn rewrite_as_version_2(s: &Store) {
    let mut lists = Vec::new();
    s.scan_keys(CF_BY_PID, &[], None, false, |k, v| {
        let first = keys::trailing_id(k).unwrap();
        let postings::PidList::Events(list) = postings::decode_pid_list(first, v).unwrap() else {
            panic!("not a covering list");
        };
        let full: Vec<(u64, Vec<u8>)> = list
            .into_iter()
            .map(|(id, _)| {
                let cf = s.cf(CF_EVENTS).unwrap();
                (id, s.db.get_cf(cf, keys::id(id)).unwrap().unwrap())
            })
            .collect();
        let full: Vec<(u64, Option<&[u8]>)> =
            full.iter().map(|(id, b)| (*id, Some(&b[..]))).collect();
        let mut out = Vec::new();
        postings::encode_covering(&mut out, first, &full);
        lists.push((k.to_vec(), out));
        Ok(true)
    })
    .unwrap();
    for (k, v) in lists {
        s.db.put_cf(s.cf(CF_BY_PID).unwrap(), k, v).unwrap();
    }
    s.db.put_cf(s.cf(CF_META).unwrap(), META_SCHEMA, 2u32.to_be_bytes())
        .unwrap();
}

#[test]
fn a_version_2_store_whose_lists_copy_big_events_reads_on_and_is_marked_current() {
    use crate::query::{self, Filter, PidMatch};
    let dir = tempfile::tempdir().unwrap();
    let evs = |base: u64| -> Vec<StoredEvent> {
        (0..200u64)
            .map(|i| {
                with_binary(
                    event(base + i * 64, 5, EventType::FunctionEntry),
                    (i as usize * 53) % 900,
                )
            })
            .collect()
    };
    let f = Filter {
        pid: Some(PidMatch {
            id: 5,
            serial: 0,
            node: None,
        }),
        limit: 10_000,
        ..Default::default()
    };
    let old = evs(1 << 40);
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.write(&old, &[]).unwrap();
        rewrite_as_version_2(&s);
        s.sync().unwrap();
    }
    let want: Vec<StoredEvent> = old.clone();
    {
        let r = Store::open(
            dir.path(),
            StoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(query::events(&r, &f).unwrap().events, want);
        let v = r.db.get_cf(r.cf(CF_META).unwrap(), META_SCHEMA).unwrap();
        assert_eq!(v.as_deref(), Some(&2u32.to_be_bytes()[..]));
    }
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let v = s.db.get_cf(s.cf(CF_META).unwrap(), META_SCHEMA).unwrap();
    assert_eq!(v.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
    let new = evs(1 << 41);
    s.write(&new, &[]).unwrap();
    let all: Vec<StoredEvent> = want.iter().chain(&new).cloned().collect();
    assert_eq!(query::events(&s, &f).unwrap().events, all);
}

#[test]
fn retention_by_age_and_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let base = 1_790_000_000_000_000_000u64;
    let sec = 1_000_000_000u64;
    let evs: Vec<_> = (0..2000u64)
        .map(|i| {
            let wall = base + i * sec / 10; // 10 events per second, 200 s
            let mut e = event(
                crate::ids::wall_ns_to_id(wall),
                (i % 7) as u32,
                EventType::StateChange,
            );
            e.wall_ns = wall as i64;
            // incompressible payloads, so the data dwarfs the fixed size of the files
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            e.data = vec![131, 109, 0, 0, 2, 0]
                .into_iter()
                .chain((0..512).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }))
                .collect();
            e
        })
        .collect();
    s.write(&evs, &[]).unwrap();
    // keep the last 100 s
    let now = base + 200 * sec;
    let st = s
        .enforce_retention(
            &RetentionPolicy {
                max_age_ns: Some(100 * sec),
                max_bytes: None,
            },
            now,
        )
        .unwrap();
    assert_eq!(st.events, 1000);
    let oldest = s.get(s.min_id().unwrap().unwrap()).unwrap().unwrap();
    assert!(oldest.wall_ns as u64 >= now - 100 * sec);
    assert_consistent(&s);
    // then at most a third of the bytes
    s.compact_all().unwrap();
    let before = s.live_bytes();
    let st = s
        .enforce_retention(
            &RetentionPolicy {
                max_age_ns: None,
                max_bytes: Some(before / 3),
            },
            now,
        )
        .unwrap();
    assert!(st.events > 0);
    assert!(
        s.live_bytes() <= before / 3,
        "{} > {}",
        s.live_bytes(),
        before / 3
    );
    assert_eq!(
        s.max_id().unwrap(),
        evs.last().unwrap().id,
        "the newest event is kept"
    );
    assert_consistent(&s);
}

#[test]
fn posting_lists_round_trip_and_split_by_span() {
    let ids = [5, 6, 100, 1 << 20, (1 << 30) + 5, (1 << 30) + 6, 3 << 30];
    let runs = postings::runs(&ids);
    assert_eq!(runs, vec![&ids[..4], &ids[4..6], &ids[6..]]);
    for run in runs {
        assert_eq!(
            postings::decode(run[0], &postings::encode(run)).unwrap(),
            run
        );
    }
    assert!(postings::decode(1, &[5, 1]).is_err(), "truncated");
    let pairs = [(10, 9), (10, 15), (12, 100), (40, 41)];
    let enc = postings::encode_pairs(&pairs);
    assert_eq!(postings::decode_pairs(&enc).unwrap(), pairs);
    assert_eq!(postings::exits_in(&enc, 10).unwrap(), vec![9, 15]);
    assert_eq!(postings::exits_in(&enc, 40).unwrap(), vec![41]);
    assert!(postings::exits_in(&enc, 11).unwrap().is_empty());
    assert!(postings::decode_pairs(&enc[..17]).is_err());
    assert!(postings::decode(1, &[0xff; 12]).is_err(), "runaway varint");
}

#[test]
fn garbage_on_disk_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for bytes in [&[][..], &[0xc1, 0x00, 0xff], &[0x93, 1, 2, 3]] {
        s.db.put_cf(s.cf(CF_EVENTS).unwrap(), keys::id(5), bytes)
            .unwrap();
        assert!(s.get(5).is_err());
    }
}

#[test]
fn incidents_round_trip_survive_reopen_and_a_damaged_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.incidents().unwrap(), vec![]);
    let mut a = Incident {
        id: 1,
        trigger: "exit".into(),
        detail: "abnormal exit".into(),
        trigger_event: 77,
        wall_ns: 1_700_000_000_000_000_000,
        first_id: 10,
        last_id: 90,
        events: 12,
        bytes: 300,
        cone: true,
    };
    s.put_incident(&a).unwrap();
    a.events = 15;
    s.put_incident(&a).unwrap();
    let b = Incident {
        id: 2,
        trigger: "snapshot".into(),
        ..a.clone()
    };
    s.put_incident(&b).unwrap();
    drop(s);
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.incidents().unwrap(), vec![a.clone(), b]);
    assert_eq!(s.incident(1).unwrap(), Some(a));
    assert_eq!(s.incident(3).unwrap(), None);
    let mut key = b"incident:".to_vec();
    key.extend_from_slice(&3u64.to_be_bytes());
    s.db.put_cf(s.cf(CF_META).unwrap(), key, [0xc1, 0x00])
        .unwrap();
    let e = s.incidents().unwrap_err().to_string();
    assert!(e.contains("incident record"), "{e}");
}

#[test]
fn an_event_on_disk_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let wall = 1_790_000_000_000_000_000i64;
    let id = crate::ids::wall_ns_to_id(wall as u64) | 3;
    let mut e = event(id, 77, EventType::FunctionEntry);
    e.wall_ns = wall;
    e.mono_ns = wall - 1_700_000_000_000_000_000;
    e.call_id = id;
    e.data = vec![
        131, 108, 0, 0, 0, 3, 97, 1, 119, 1, b'a', 109, 0, 0, 0, 1, b'b', 106,
    ];
    s.write(&[e.clone()], &[]).unwrap();
    let raw =
        s.db.get_cf(s.cf(CF_EVENTS).unwrap(), keys::id(id))
            .unwrap()
            .unwrap();
    assert!(
        raw.len() < 60,
        "{} bytes on disk before compression",
        raw.len()
    );
    assert_eq!(s.get(id).unwrap(), Some(e));
}

#[test]
fn a_store_settles_at_its_compacted_size() {
    // Memtable flushes write LZ4 (L0); when L0 compacts, every one of its
    // files is rewritten in zstd (a file is moved down unchanged only if its
    // compression is the target level's): the size a long-running store
    // keeps, once its compactions have run, is its compacted size.
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let wall = 1_790_000_000_000_000_000u64;
    let evs: Vec<_> = (0..40_000u64)
        .map(|i| {
            let w = wall + i * 1_000;
            let mut e = event(
                crate::ids::wall_ns_to_id(w) | (i & 63),
                (i % 50) as u32,
                if i % 2 == 0 {
                    EventType::FunctionEntry
                } else {
                    EventType::FunctionExit
                },
            );
            e.wall_ns = w as i64;
            e.mono_ns = w as i64 - 1_700_000_000_000_000_000;
            // an ETF list of a few small integers and a short binary
            e.data = vec![
                131,
                108,
                0,
                0,
                0,
                3,
                97,
                (i % 251) as u8,
                97,
                (i % 13) as u8,
                109,
                0,
                0,
                0,
                4,
                b'u',
                b's',
                b'e',
                (b'0' + (i % 10) as u8),
                106,
            ];
            e
        })
        .collect();
    // sixteen memtable flushes: L0 compacts at every four files, and at most
    // three (of sixteen) stay in L0
    for part in evs.chunks(2_500) {
        for chunk in part.chunks(512) {
            s.write(chunk, &[]).unwrap();
        }
        s.flush_all().unwrap();
    }
    let at_rest = |name: &str| {
        let cf = s.cf(name).unwrap();
        let int = |p: &str| s.db.property_int_value_cf(cf, p).unwrap().unwrap_or(0);
        int("rocksdb.compaction-pending") == 0
            && int("rocksdb.num-running-compactions") == 0
            && int("rocksdb.num-files-at-level0") < 4
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ALL_CFS.iter().all(|cf| at_rest(cf)) {
        assert!(
            std::time::Instant::now() < deadline,
            "compactions never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let settled = s.live_bytes();
    s.compact_all().unwrap();
    let compacted = s.live_bytes();
    // (a bottommost rewrite also zeroes sequence numbers; the LZ4 files left
    // in L0 are 1.3–1.7× their zstd size; had the others been moved down
    // without a rewrite, the store would stay ~1.5× its compacted size)
    assert!(
        settled * 100 <= compacted * 130,
        "{settled} bytes at rest vs {compacted} compacted"
    );
    assert_eq!(s.get(evs[777].id).unwrap().as_ref(), Some(&evs[777]));
    // index and filter come in partitions (a monolithic one of a big file
    // outgrew its cache shard and was re-read by every lookup)
    let props =
        s.db.property_value_cf(
            s.cf(CF_EVENTS).unwrap(),
            "rocksdb.aggregated-table-properties",
        )
        .unwrap()
        .unwrap();
    let partitions: u64 = props
        .split(';')
        .find_map(|kv| kv.trim().strip_prefix("# index partitions="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no index partitions in {props}"));
    assert!(partitions > 1, "{props}");
}

#[test]
fn refuses_foreign_directories_without_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let e = Store::open(dir.path(), StoreOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), "incompatible");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A RocksDB that is not ours.
    let other = tempfile::tempdir().unwrap();
    {
        let mut o = Options::default();
        o.create_if_missing(true);
        let db = DB::open(&o, other.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let e = Store::open(other.path(), StoreOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), "incompatible", "{e}");
}

#[test]
fn names_reach_the_disk_before_any_event_that_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        // interned for a batch that then never lands (a crash, a failed write)
        let id = s.intern("Elixir.Lonely", s.cf(CF_META).unwrap()).unwrap();
        assert_eq!(s.name_id("Elixir.Lonely"), Some(id));
    }
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(s.name_id("Elixir.Lonely").is_some());
}

#[test]
fn a_gap_in_the_name_table_is_not_fatal() {
    // stores written before names were persisted on their own could lose
    // a name whose batch failed while a later one landed
    let dir = tempfile::tempdir().unwrap();
    let mut e = event(64, 1, EventType::FunctionEntry);
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.write(std::slice::from_ref(&e), &[]).unwrap();
        let m = s.name_id("Elixir.M").unwrap();
        let meta = s.cf(CF_META).unwrap();
        let mut k = META_NAME.to_vec();
        k.extend_from_slice(&m.to_be_bytes());
        s.db.delete_cf(meta, k).unwrap();
    }
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.name_id("Elixir.M"), None);
    let got = s.get(64).unwrap().unwrap();
    assert_eq!(got.module, None, "a missing name reads as none");
    assert_eq!(got.function.as_deref(), Some("f"));
    // new names never reuse the lost id
    e.id = 128;
    e.module = Some("Elixir.N".into());
    s.write(std::slice::from_ref(&e), &[]).unwrap();
    let n = s.name_id("Elixir.N").unwrap();
    assert!(n > s.name_id("f").unwrap() && n > s.name_id("nonode@nohost").unwrap());
    assert_eq!(
        s.get(128).unwrap().unwrap().module.as_deref(),
        Some("Elixir.N")
    );
    assert_eq!(s.get(64).unwrap().unwrap().module, None);
}

/// Events as a version-1 store holds them: the type as it is, call and
/// parent ids as they are (what `Store::write` wrote before version 2).
fn rewrite_as_version_1(s: &Store) {
    let cf = s.cf(CF_EVENTS).unwrap();
    let mut old = Vec::new();
    s.scan_keys(CF_EVENTS, &[], None, false, |k, v| {
        old.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    for (k, v) in old {
        let id = keys::trailing_id(&k).unwrap();
        let mut d: DiskEvent = rmp_serde::from_slice(&v).unwrap();
        assert!(d.kind >= codec::KIND_V2, "written as version 2");
        d.kind -= codec::KIND_V2;
        d.call_id = codec::id_forward(id, d.call_id);
        d.parent_id = codec::id_forward(id, d.parent_id);
        let mut buf = Vec::new();
        rmp_serde::encode::write(&mut buf, &d).unwrap();
        s.db.put_cf(cf, &k, &buf).unwrap();
    }
    s.db.put_cf(s.cf(CF_META).unwrap(), META_SCHEMA, 1u32.to_be_bytes())
        .unwrap();
}

/// A call (entry, a nested call, its exit, the exit) with ids `base`… : the
/// ids the version-2 encoding writes relative to the event's own.
fn call_events(base: u64) -> Vec<StoredEvent> {
    let mut entry = event(base, 1, EventType::FunctionEntry);
    entry.parent_id = 0;
    let mut inner = event(base + 64, 1, EventType::FunctionEntry);
    inner.parent_id = base;
    inner.parent_link = Some(LinkKind::CalledFrom);
    let mut inner_exit = event(base + 128, 1, EventType::FunctionExit);
    inner_exit.call_id = base + 64;
    inner_exit.parent_id = base + 64;
    inner_exit.parent_link = Some(LinkKind::CalledFrom);
    let mut exit = event(base + 192, 1, EventType::FunctionExit);
    exit.call_id = base;
    vec![entry, inner, inner_exit, exit]
}

#[test]
fn a_version_1_store_opens_reads_its_old_events_and_takes_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        covering_pid_index: false,
        ..Default::default()
    };
    let old = call_events(1 << 40);
    {
        let s = Store::open(dir.path(), opts.clone()).unwrap();
        s.write(&old, &[]).unwrap();
        rewrite_as_version_1(&s);
        s.sync().unwrap();
    }
    // read-only: read as they are, nothing written
    {
        let r = Store::open(
            dir.path(),
            StoreOptions {
                read_only: true,
                ..opts.clone()
            },
        )
        .unwrap();
        for e in &old {
            assert_eq!(r.get(e.id).unwrap().as_ref(), Some(e));
        }
        let v = r.db.get_cf(r.cf(CF_META).unwrap(), META_SCHEMA).unwrap();
        assert_eq!(v.as_deref(), Some(&1u32.to_be_bytes()[..]));
    }
    // writable: marked with the current version, old and new events side by side
    let new = call_events(1 << 41);
    {
        let s = Store::open(dir.path(), opts.clone()).unwrap();
        let v = s.db.get_cf(s.cf(CF_META).unwrap(), META_SCHEMA).unwrap();
        assert_eq!(v.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
        s.write(&new, &[]).unwrap();
        s.sync().unwrap();
    }
    let s = Store::open(dir.path(), opts).unwrap();
    for e in old.iter().chain(&new) {
        assert_eq!(s.get(e.id).unwrap().as_ref(), Some(e), "event {}", e.id);
    }
    let mut lk = s.lookups();
    assert_eq!(lk.exits_of(1 << 40).unwrap(), vec![(1 << 40) + 192]);
    assert_eq!(lk.exits_of(1 << 41).unwrap(), vec![(1 << 41) + 192]);
}

#[test]
fn version_2_writes_call_and_parent_ids_in_a_few_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let evs = call_events(0x0123_4567_89ab_cdc0);
    s.write(&evs, &[]).unwrap();
    let cf = s.cf(CF_EVENTS).unwrap();
    for e in &evs {
        let v2 = s.db.get_cf(cf, keys::id(e.id)).unwrap().unwrap();
        let mut d: DiskEvent = rmp_serde::from_slice(&v2).unwrap();
        d.kind -= codec::KIND_V2;
        d.call_id = e.call_id;
        d.parent_id = e.parent_id;
        let mut v1 = Vec::new();
        rmp_serde::encode::write(&mut v1, &d).unwrap();
        let ids = usize::from(e.call_id != 0) + usize::from(e.parent_id != 0);
        // each id of the call: 2 bytes or fewer instead of 9
        assert!(
            v1.len() >= v2.len() + 7 * ids,
            "{} vs {}",
            v1.len(),
            v2.len()
        );
        assert_eq!(s.get(e.id).unwrap().as_ref(), Some(e));
    }
}

#[test]
fn refuses_another_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.db.put_cf(s.cf(CF_META).unwrap(), META_SCHEMA, 99u32.to_be_bytes())
            .unwrap();
    }
    let e = Store::open(dir.path(), StoreOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("schema version 99"), "{e}");
}

#[test]
fn unusable_paths_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let target = file.join("store");
    let e = Store::open(&target, StoreOptions::default()).err().unwrap();
    assert_eq!(e.kind(), "path");
    assert!(e.to_string().contains(&target.display().to_string()), "{e}");
    let e = Store::open(
        dir.path().join("nope"),
        StoreOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("nope"));
}

#[test]
fn store_counts_from_posting_lists_what_the_events_are() {
    use crate::query::{self, Filter};
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let kinds = [
        EventType::FunctionEntry,
        EventType::StateChange,
        EventType::MessageSend,
    ];
    let evs: Vec<_> = (1..=9_000u64)
        .map(|i| event(i * 64, (i % 5) as u32, kinds[(i % 3) as usize]))
        .collect();
    for chunk in evs.chunks(700) {
        s.write(chunk, &[]).unwrap();
    }
    let by_scan = |f: &Filter| query::events(&s, f).unwrap().events.len() as u64;
    let all = Filter::default();
    assert_eq!(query::count(&s, &all).unwrap(), (9_000, "by_type"));
    let states = Filter {
        types: vec![EventType::StateChange, EventType::StateChange],
        ..Default::default()
    };
    assert_eq!(query::count(&s, &states).unwrap().0, 3_000);
    let capped = Filter {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(query::count(&s, &capped).unwrap().0, 10);
    // retention trims the lists: still the same answer
    s.delete_before(2_000 * 64, 500).unwrap();
    assert_eq!(query::count(&s, &all).unwrap().0, by_scan(&all));
    assert_eq!(query::count(&s, &all).unwrap().0, 9_000 - 1_999);
    // other filters count page by page
    let one_pid = Filter {
        pid: Some(crate::query::PidMatch {
            node: None,
            id: 3,
            serial: 0,
        }),
        ..Default::default()
    };
    assert_eq!(query::count(&s, &one_pid).unwrap().0, by_scan(&one_pid));
}

#[test]
fn prefix_end_bounds_scans() {
    assert_eq!(keys::prefix_end(&[1, 2]), Some(vec![1, 3]));
    assert_eq!(keys::prefix_end(&[1, 0xff]), Some(vec![2]));
    assert_eq!(keys::prefix_end(&[0xff]), None);
}

/// One `Lookups` moved from lookup to lookup, in ascending order, backward,
/// by small steps and by jumps wider than `CALL_SPAN`, answers what a full
/// scan of the column families does.
#[test]
fn lookups_reused_across_a_query_answer_like_full_scans() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    // ids a sixteenth of CALL_SPAN apart: many pair lists, several per span
    let ms = (postings::CALL_SPAN / 16) & !63;
    let n = 400u64;
    let mut evs = Vec::new();
    for i in 1..=n {
        let id = i * ms;
        let mut e = match i % 4 {
            0 => {
                // the exit of the entry 2 steps earlier, or of the one 299
                // earlier (a list written long after its call started)
                let mut x = event(id, (i % 5) as u32, EventType::FunctionExit);
                x.call_id = if i % 40 == 0 && i > 300 {
                    (i - 299) * ms
                } else {
                    (i - 3) * ms
                };
                x
            }
            _ => event(id, (i % 5) as u32, EventType::FunctionEntry),
        };
        if i % 3 == 0 && i > 1 {
            e.parent_id = (i - 1) * ms;
            e.parent_link = Some(LinkKind::CalledFrom);
        }
        evs.push(e);
    }
    // a second exit for one call, in a later batch
    let mut twice = event((n + 1) * ms, 0, EventType::FunctionExit);
    twice.call_id = 5 * ms;
    evs.push(twice);
    for batch in evs.chunks(7) {
        s.write(batch, &[]).unwrap();
    }
    s.flush_all().unwrap();

    // what every pair list of `kind` (None: exits) pairs with `call`
    let pairs_by_scan = |call: u64, kind: Option<u8>| {
        let mut out = Vec::new();
        s.scan_keys(CF_BY_CALL, &[], None, false, |k, v| {
            let (first, last, k_kind) = postings::parse_pair_key(k).unwrap();
            if first <= call && last >= call && k_kind == kind {
                out.extend(postings::exits_in(v, call)?);
            }
            Ok(true)
        })
        .unwrap();
        out.sort_unstable();
        out
    };
    let exits_by_scan = |call: u64| pairs_by_scan(call, None);
    let links_by_scan = |id: u64| {
        let mut out = Vec::new();
        s.scan_keys(CF_LINKS, &[], None, false, |k, _| {
            if k[..8] == keys::id(id) {
                out.push((
                    LinkKind::from_u8(k[8]).unwrap(),
                    keys::trailing_id(k).unwrap(),
                ));
            }
            Ok(true)
        })
        .unwrap();
        out
    };
    // every id and the ids between them, in several orders
    let all: Vec<u64> = (0..=(n + 2) * 2).map(|i| i * ms / 2).collect();
    let mut shuffled = all.clone();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..shuffled.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        shuffled.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let descending: Vec<u64> = all.iter().rev().copied().collect();
    let jumps: Vec<u64> = all.iter().step_by(37).copied().collect();
    let (mut exits_seen, mut children_seen) = (0, 0);
    for order in [&all, &descending, &shuffled, &jumps] {
        let mut lk = s.lookups();
        for &id in order.iter() {
            let exits = lk.exits_of(id).unwrap();
            assert_eq!(exits, exits_by_scan(id), "exits of {id}");
            exits_seen += exits.len();
            assert_eq!(
                lk.stored_links(id).unwrap(),
                links_by_scan(id),
                "links of {id}"
            );
            let calls: Vec<_> = pairs_by_scan(id, Some(LinkKind::Calls as u8))
                .into_iter()
                .map(|c| (LinkKind::Calls, c))
                .collect();
            children_seen += calls.len();
            assert_eq!(lk.children_of(id).unwrap(), calls, "children of {id}");
            assert_eq!(lk.event(id).unwrap(), s.get(id).unwrap(), "event {id}");
        }
    }
    assert!(exits_seen > 250, "the test finds exits: {exits_seen}");
    assert!(
        children_seen > 250,
        "the test finds children: {children_seen}"
    );
    assert_eq!(s.exits_of(5 * ms).unwrap(), vec![8 * ms, (n + 1) * ms]);
}

#[test]
fn a_send_to_a_registered_name_keeps_the_name_and_is_no_function() {
    use crate::query::{self, Filter};
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    // a send to {counter, b@host}: the name in `function`, the node in `module`
    let mut send = event(64, 1, EventType::MessageSend);
    send.module = Some("b@host".into());
    send.function = Some("counter".into());
    let call = event(128, 1, EventType::FunctionEntry);
    s.write(&[send.clone(), call], &[]).unwrap();
    assert_eq!(s.get(64).unwrap(), Some(send));
    let ids = |f: Filter| -> Vec<u64> {
        let page = query::events(&s, &f).unwrap();
        page.events.iter().map(|e| e.id).collect()
    };
    let by_module = |m: &str| Filter {
        module: Some(m.into()),
        ..Default::default()
    };
    // neither the index nor a scan takes it for a call of b@host:counter
    assert_eq!(ids(by_module("b@host")), Vec::<u64>::new());
    let by_function = Filter {
        function: Some("counter".into()),
        ..Default::default()
    };
    assert_eq!(ids(by_function), Vec::<u64>::new());
    assert_eq!(ids(by_module("Elixir.M")), vec![128]);
    let sends = Filter {
        types: vec![EventType::MessageSend],
        ..Default::default()
    };
    assert_eq!(ids(sends), vec![64]);
}
