//! What the fuzz targets share: one real (empty) store per process.
use causeway_core::store::{Store, StoreOptions};
use std::sync::OnceLock;

pub fn store() -> &'static Store {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    let (_dir, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store =
            Store::open(dir.path().join("s"), StoreOptions::default()).expect("an empty store");
        (dir, store)
    });
    store
}
