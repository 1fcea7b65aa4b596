//! The on-disk event codec: the MessagePack reader and its rmp_serde
//! fallback, through Store::decode_stored on a real (empty) store.
#![no_main]
#[path = "common.rs"]
mod common;

use common::store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = data.len() as u64 * 1_000_003;
    let _ = store().decode_stored(id, data);
});
