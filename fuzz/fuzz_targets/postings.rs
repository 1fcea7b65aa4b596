//! Posting lists as they come from disk: plain id lists, covering lists of
//! a pid (ids with their events' bytes) and their length prefix. Any bytes
//! must give Ok or Err, never a panic, a hang or an allocation past the
//! input's size (make fuzz runs with -malloc_limit_mb).
#![no_main]
use causeway_core::store::postings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = data.first().map_or(0, |b| u64::from(*b) << 20);
    let _ = postings::len(data);
    let _ = postings::decode(first, data);
    let _ = postings::decode_pid_list(first, data);
    for cf in ["by_pid", "by_mfa", "by_type", "by_call", "links"] {
        let _ = postings::decode_ids(cf, first, data);
    }
});
