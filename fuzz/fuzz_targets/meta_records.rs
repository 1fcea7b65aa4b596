//! Records of the `meta` column family and message bytes read back from a
//! store: an incident record (through `Store::incidents`, as written by
//! another VM or damaged on disk), and the correlation key and exit-reason
//! check every stored message and exit reason goes through.
#![no_main]
use causeway_core::store::{Store, StoreOptions};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn store() -> &'static Store {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    let (_dir, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store =
            Store::open(dir.path().join("s"), StoreOptions::default()).expect("an empty store");
        (dir, store)
    });
    store
}

fuzz_target!(|data: &[u8]| {
    let _ = causeway_core::message_key::message_key(data);
    let _ = causeway_core::etf::is_normal_exit_reason(data);
    let s = store();
    if let Some(meta) = s.db().cf_handle("meta") {
        let mut key = b"incident:".to_vec();
        key.extend_from_slice(&1u64.to_be_bytes());
        if s.db().put_cf(meta, &key, data).is_ok() {
            let _ = s.incidents();
            let _ = s.incident(1);
        }
    }
});
