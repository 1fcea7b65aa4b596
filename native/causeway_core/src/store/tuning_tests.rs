//! Tests of the RocksDB tuning a store opens with: the options every column
//! family gets (as RocksDB itself records them), and the size of the events
//! column family's files, which bounds what each compaction of L0 rewrites.

use super::tests::{event, incompressible_binary};
use super::*;

/// The options RocksDB recorded for column family `cf` in the store's
/// newest OPTIONS file: `name=value` lines of its `[CFOptions "cf"]` section.
fn recorded_options(dir: &Path, cf: &str) -> HashMap<String, String> {
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("OPTIONS-"))
        .max_by_key(|n| n[8..].parse::<u64>().unwrap_or(0))
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(dir.join(newest)).unwrap();
    let header = format!("[CFOptions \"{cf}\"]");
    let mut in_section = false;
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == header;
        } else if in_section {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    assert!(!out.is_empty(), "no section {header}");
    out
}

#[test]
fn every_column_family_may_hold_several_memtables_waiting_for_a_flush() {
    // With RocksDB's default of 2, writes stopped whenever a column family
    // switched memtables while its last one still waited for the (one)
    // flush thread: 44 stops of the events column family in a 60 s
    // CPU-bound run. 4 memtables of 32 MiB hold at most what 2 of 64 did.
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
    for cf in ALL_CFS {
        let o = recorded_options(dir.path(), cf);
        assert_eq!(
            o.get("max_write_buffer_number").map(String::as_str),
            Some(tuning::MEMTABLES_PER_CF.to_string().as_str()),
            "{cf}"
        );
        // (RocksDB's default is 64 MiB: a size set on the store's options
        // alone applies to the default column family only)
        assert_eq!(
            o.get("write_buffer_size"),
            Some(&tuning::MEMTABLE_BYTES.to_string()),
            "{cf}"
        );
    }
    let o = recorded_options(dir.path(), CF_EVENTS);
    assert_eq!(
        o.get("target_file_size_base"),
        Some(&tuning::EVENTS_FILE_BYTES.to_string())
    );
}

#[test]
fn the_events_files_stay_small_so_a_compaction_rewrites_little_of_what_it_moved_down() {
    // Event ids grow with time, so a compaction of L0 overlaps only the
    // newest files of the bottom level; with RocksDB's 64 MiB files that
    // one file was the whole of a young store's events, rewritten by every
    // compaction
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut id = 1_000u64;
    // 24 flushes of ~1.2 MB that do not compress: ~28 MB in all
    for _ in 0..24 {
        let evs: Vec<StoredEvent> = (0..1_000)
            .map(|i| {
                id += 64;
                let mut e = event(id, 100 + i % 5, EventType::FunctionEntry);
                e.data = incompressible_binary(1_200, &mut x);
                e
            })
            .collect();
        for chunk in evs.chunks(250) {
            s.write(chunk, &[]).unwrap();
        }
        s.flush_all().unwrap();
    }
    s.compact_all().unwrap();
    let files: Vec<(i32, usize)> =
        s.db.live_files()
            .unwrap()
            .into_iter()
            .filter(|f| f.column_family_name == CF_EVENTS)
            .map(|f| (f.level, f.size))
            .collect();
    let total: usize = files.iter().map(|f| f.1).sum();
    assert!(total > 24 << 20, "{total} bytes of events files");
    assert!(files.len() >= 3, "{files:?}");
    // (a file ends at the first key past the target size: one block over)
    let most = tuning::EVENTS_FILE_BYTES as usize + (256 << 10);
    assert!(files.iter().all(|f| f.1 <= most), "{files:?}");
    // and every event reads back after the compactions
    assert_eq!(s.get(id).unwrap().map(|e| e.id), Some(id));
    assert_eq!(s.get(1_064).unwrap().map(|e| e.id), Some(1_064));
}
