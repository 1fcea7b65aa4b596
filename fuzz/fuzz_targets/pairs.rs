//! Pair lists (call → exit) as they come from disk.
#![no_main]
use causeway_core::store::postings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = postings::decode_pairs(data);
    let call = data.get(..8).map_or(0, |b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    });
    let _ = postings::exits_in(data, call);
});
