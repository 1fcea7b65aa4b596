//! Tests of the `by_call` pair lists' span: a store writes them in runs no
//! wider than `postings::CALL_SPAN`, and a store of schema 1–3, whose lists
//! are up to `CALL_SPAN_V3` wide, still finds every exit after it opens
//! (read-only, or writable and upgraded) while its new lists are narrow;
//! lists of the same calls from two batches do not replace each other.

use super::tests::event;
use super::*;

/// A pair list: first call id, last call id, its (call, exit) pairs.
type PairList = (u64, u64, Vec<(u64, u64)>);

/// Every pair list of the store.
fn pair_lists(s: &Store) -> Vec<PairList> {
    let mut out = Vec::new();
    s.scan_keys(CF_BY_CALL, &[], None, false, |k, v| {
        let (first, last, _) = postings::parse_pair_key(k).expect("a pair list key");
        out.push((first, last, postings::decode_pairs(v)?));
        Ok(true)
    })
    .unwrap();
    out
}

/// Calls `step` apart, each exit right after its entry, and one call whose
/// exit comes `long` after its entry, all in one batch.
fn calls(base: u64, n: u64, step: u64, long: u64) -> Vec<StoredEvent> {
    let mut evs = Vec::new();
    for i in 0..n {
        let id = base + i * step;
        evs.push(event(id, 1, EventType::FunctionEntry));
        let mut x = event(id + 64, 1, EventType::FunctionExit);
        x.call_id = id;
        evs.push(x);
    }
    let mut x = event(base + long, 1, EventType::FunctionExit);
    x.call_id = base + 128;
    evs.push(event(base + 128, 1, EventType::FunctionEntry));
    evs.push(x);
    evs.sort_by_key(|e| e.id);
    evs
}

/// Every exit of `evs` is what looking up its call finds, through one
/// `Lookups` moved forward and through `Store::exits_of`.
fn assert_exits_found(s: &Store, evs: &[StoredEvent]) {
    let mut lk = s.lookups();
    for e in evs.iter().filter(|e| e.kind == EventType::FunctionExit) {
        let call = e.call_id;
        assert_eq!(lk.exits_of(call).unwrap(), vec![e.id], "call {call}");
        assert_eq!(s.exits_of(call).unwrap(), vec![e.id], "call {call}");
    }
}

fn open_read_only(dir: &Path) -> Store {
    let opts = StoreOptions {
        read_only: true,
        ..Default::default()
    };
    Store::open(dir, opts).unwrap()
}

#[test]
fn a_batch_s_pair_lists_are_no_wider_than_the_call_span_and_hold_every_exit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let base = 1u64 << 50;
    // 400 calls over ~25 call spans, and one that lasts 40 of them
    let step = (postings::CALL_SPAN / 16) & !255;
    let evs = calls(base, 400, step, 40 * postings::CALL_SPAN);
    s.write(&evs, &[]).unwrap();
    let lists = pair_lists(&s);
    assert!(lists.len() >= 25, "{} lists", lists.len());
    for (first, last, pairs) in &lists {
        assert!(last - first < postings::CALL_SPAN, "list {first}..{last}");
        assert_eq!((pairs[0].0, pairs[pairs.len() - 1].0), (*first, *last));
    }
    assert_exits_found(&s, &evs);
}

#[test]
fn a_version_3_store_s_wide_pair_lists_are_found_and_its_new_ones_are_narrow() {
    let dir = tempfile::tempdir().unwrap();
    let base = 1u64 << 50;
    let step = (postings::CALL_SPAN / 4) & !255;
    let old = calls(base, 40, step, 8 * postings::CALL_SPAN);
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.write(&old, &[]).unwrap();
        // as schema 3 wrote them: one list per CALL_SPAN_V3
        let cf = s.cf(CF_BY_CALL).unwrap();
        let mut pairs = Vec::new();
        for (_, _, p) in pair_lists(&s) {
            pairs.extend(p);
        }
        s.db.delete_range_cf(
            cf,
            postings::pair_key(0, 0),
            postings::pair_key(u64::MAX, 0),
        )
        .unwrap();
        pairs.sort_unstable();
        let (first, last) = (pairs[0].0, pairs[pairs.len() - 1].0);
        assert!(last - first > 4 * postings::CALL_SPAN);
        assert!(last - first < postings::CALL_SPAN_V3);
        s.db.put_cf(
            cf,
            postings::pair_key(first, last),
            postings::encode_pairs(&pairs),
        )
        .unwrap();
        s.db.put_cf(s.cf(CF_META).unwrap(), META_SCHEMA, 3u32.to_be_bytes())
            .unwrap();
        s.sync().unwrap();
    }
    // read-only: every call is looked up in the wide window
    assert_exits_found(&open_read_only(dir.path()), &old);
    // writable: upgraded, the old calls still found, the new lists narrow
    let newest_old = old.iter().map(|e| e.id).max().unwrap();
    let new = calls(
        base + 64 * postings::CALL_SPAN,
        40,
        step,
        8 * postings::CALL_SPAN,
    );
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let meta = s.cf(CF_META).unwrap();
        let v = s.db.get_cf(meta, META_SCHEMA).unwrap();
        assert_eq!(v.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
        let v = s.db.get_cf(meta, META_V3_CALLS).unwrap();
        assert_eq!(v.as_deref(), Some(&newest_old.to_be_bytes()[..]));
        assert_exits_found(&s, &old);
        s.write(&new, &[]).unwrap();
        s.sync().unwrap();
    }
    for s in [
        Store::open(dir.path(), StoreOptions::default()).unwrap(),
        open_read_only(dir.path()),
    ] {
        assert_eq!(s.call_window(newest_old), postings::CALL_SPAN_V3);
        assert_eq!(s.call_window(newest_old + 1), postings::CALL_SPAN);
        assert_exits_found(&s, &old);
        assert_exits_found(&s, &new);
        for (first, last, _) in pair_lists(&s).into_iter().filter(|l| l.0 > newest_old) {
            assert!(last - first < postings::CALL_SPAN, "list {first}..{last}");
        }
    }
}

#[test]
fn a_new_store_looks_up_every_call_in_the_narrow_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    s.write(&calls(1 << 50, 4, 1 << 10, 1 << 12), &[]).unwrap();
    drop(s);
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        s.db.get_cf(s.cf(CF_META).unwrap(), META_V3_CALLS).unwrap(),
        None
    );
    assert_eq!(s.call_window(1 << 50), postings::CALL_SPAN);
}

#[test]
fn exit_lists_of_the_same_calls_from_two_batches_are_both_kept() {
    // two exits of one call, in two batches: lists of the same first and
    // last call, which schema 4 keyed alike (the second replaced the first)
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let call = 1u64 << 40;
    s.write(&[event(call, 1, EventType::FunctionEntry)], &[])
        .unwrap();
    for at in [call + 64, call + 128] {
        let mut x = event(at, 1, EventType::FunctionExit);
        x.call_id = call;
        s.write(&[x], &[]).unwrap();
    }
    assert_eq!(s.exits_of(call).unwrap(), vec![call + 64, call + 128]);
    assert_eq!(pair_lists(&s).len(), 2);
}
