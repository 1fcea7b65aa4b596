//! The on-disk event codec: the MessagePack reader and its rmp_serde
//! fallback, through Store::decode_stored on a real (empty) store.
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
    let id = data.len() as u64 * 1_000_003;
    let _ = store().decode_stored(id, data);
});
