//! Tests of schema 5's children lists: the reverse of a capture-time parent
//! link (`calls`, `causes`) is a pair in a `by_call` list of its kind, not a
//! `links` key per child; the `links` keys of older stores are still read,
//! and retention trims the lists with the events they name.

use super::tests::event;
use super::*;

const MS: u64 = 1_000_000;

/// A call every millisecond with two nested calls and a state change it
/// causes, the odd calls also causing a state change through a message
/// they receive: written in batches of `batch` events.
fn write_tree(s: &Store, calls: u64, batch: usize) -> Vec<StoredEvent> {
    let mut evs = Vec::new();
    for i in 1..=calls {
        let top = i * MS;
        evs.push(event(top, 1, EventType::FunctionEntry));
        for (j, kind) in [(64, LinkKind::CalledFrom), (128, LinkKind::CalledFrom)] {
            let mut e = event(top + j, 1, EventType::FunctionEntry);
            (e.parent_id, e.parent_link) = (top, Some(kind));
            evs.push(e);
        }
        let mut sc = event(top + 192, 1, EventType::StateChange);
        (sc.parent_id, sc.parent_link) = (top, Some(LinkKind::CausedBy));
        evs.push(sc);
        if i % 2 == 1 {
            let recv = event(top + 256, 1, EventType::MessageReceive);
            let mut caused = event(top + 320, 1, EventType::StateChange);
            (caused.parent_id, caused.parent_link) = (recv.id, Some(LinkKind::CausedBy));
            evs.push(recv);
            evs.push(caused);
        }
    }
    for chunk in evs.chunks(batch) {
        s.write(chunk, &[]).unwrap();
    }
    evs
}

/// The children of `parent` in `evs`: (reverse kind, child id), sorted.
fn children_in(evs: &[StoredEvent], parent: u64) -> Vec<(LinkKind, u64)> {
    let mut out: Vec<(LinkKind, u64)> = evs
        .iter()
        .filter(|e| e.parent_id == parent && e.id != parent)
        .filter_map(|e| e.parent_link.map(|k| (k.reverse(), e.id)))
        .collect();
    out.sort_unstable_by_key(|&(k, id)| (k as u8, id));
    out
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

#[test]
fn children_are_pair_lists_of_their_kind_not_link_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // batches that cut trees apart: a parent's children in a later batch
    let evs = write_tree(&s, 300, 7);
    s.flush_all().unwrap();
    let mut link_keys = 0;
    s.scan_keys(CF_LINKS, &[], None, false, |_, _| {
        link_keys += 1;
        Ok(true)
    })
    .unwrap();
    assert_eq!(link_keys, 0, "no links key per child");
    let mut kinds = std::collections::BTreeSet::new();
    s.scan_keys(CF_BY_CALL, &[], None, false, |k, _| {
        let (first, last, kind) = postings::parse_pair_key(k).expect("a pair list key");
        assert!(last - first < postings::CALL_SPAN);
        kinds.insert(kind);
        Ok(true)
    })
    .unwrap();
    let want = [LinkKind::Calls as u8, LinkKind::Causes as u8].map(Some);
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), want);
    // every event's links list its children, through one Lookups moved
    // forward and through the store; a parent's own link is still there
    let mut lk = s.lookups();
    let mut found = 0;
    for e in &evs {
        let want = children_in(&evs, e.id);
        found += want.len();
        assert_eq!(lk.children_of(e.id).unwrap(), want, "children of {}", e.id);
        let links = s.links_of(e).unwrap();
        assert!(want.iter().all(|c| links.contains(c)), "{links:?}");
        if let Some(kind) = e.parent_link {
            assert!(links.contains(&(kind, e.parent_id)), "{links:?}");
        }
    }
    assert_eq!(found, 300 * 3 + 150);
}

#[test]
fn a_store_with_children_as_link_keys_still_lists_them() {
    // a store of schema 4 kept each child as a `links` key: written here
    // as it did, beside a child written now
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let parent = event(MS, 1, EventType::FunctionEntry);
    let mut old_child = event(MS + 64, 1, EventType::FunctionEntry);
    (old_child.parent_id, old_child.parent_link) = (MS, Some(LinkKind::CalledFrom));
    s.write(&[parent.clone(), old_child.clone()], &[]).unwrap();
    let mut b = WriteBatch::default();
    b.put_cf(
        s.cf(CF_LINKS).unwrap(),
        keys::link(MS, LinkKind::Calls as u8, MS + 64),
        [],
    );
    // (and the pair list the new code wrote for it is not there)
    b.delete_range_cf(
        s.cf(CF_BY_CALL).unwrap(),
        postings::pair_key(0, 0),
        postings::pair_key(u64::MAX, 0),
    );
    s.db.write(b).unwrap();
    let mut new_child = event(MS + 128, 1, EventType::StateChange);
    (new_child.parent_id, new_child.parent_link) = (MS, Some(LinkKind::CausedBy));
    s.write(std::slice::from_ref(&new_child), &[]).unwrap();
    let links = s.links_of(&parent).unwrap();
    assert!(links.contains(&(LinkKind::Calls, MS + 64)), "{links:?}");
    assert!(links.contains(&(LinkKind::Causes, MS + 128)), "{links:?}");
    assert_eq!(links.len(), 2, "{links:?}");
}

#[test]
fn retention_trims_children_lists_with_their_parents() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // one batch: its lists straddle the cut
    let evs = write_tree(&s, 40, 10_000);
    let cutoff = 20 * MS + 100;
    s.delete_before(cutoff, 1_000).unwrap();
    s.scan_keys(CF_BY_CALL, &[], None, false, |k, v| {
        let (first, _, kind) = postings::parse_pair_key(k).expect("a pair list key");
        assert!(first >= cutoff, "a list of deleted parents is left: {k:?}");
        assert!(
            postings::decode_pairs(v)?.iter().all(|p| p.0 >= cutoff),
            "pairs of deleted parents are left"
        );
        assert!(kind.is_some(), "only children lists here");
        Ok(true)
    })
    .unwrap();
    let mut lk = s.lookups();
    for e in evs.iter().filter(|e| e.id >= cutoff) {
        // (the children of the kept part of the straddling call: all kept)
        let want: Vec<_> = children_in(&evs, e.id);
        assert_eq!(lk.children_of(e.id).unwrap(), want, "children of {}", e.id);
    }
    // the call at 20 ms is deleted, its children after the cut stay, and
    // the list that held them was rewritten without them
    assert_eq!(s.lookups().children_of(20 * MS).unwrap(), vec![]);
    assert!(s.get(20 * MS + 128).unwrap().is_some());
}
