//! Records of the `meta` column family and message bytes read back from a
//! store: an incident record (through `Store::incidents`, as written by
//! another VM or damaged on disk), and the correlation key and exit-reason
//! check every stored message and exit reason goes through.
#![no_main]
#[path = "common.rs"]
mod common;

use common::store;
use libfuzzer_sys::fuzz_target;

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
