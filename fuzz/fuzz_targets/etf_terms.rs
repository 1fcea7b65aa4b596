//! The ETF readers for names and pids stored in the name table (atoms and
//! pids of other VMs), and key parsing of index keys.
#![no_main]
use causeway_core::etf;
use causeway_core::store::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = etf::parse_atom(data);
    let _ = etf::parse_pid(data);
    let _ = etf::latin1_to_string(data);
    let _ = keys::trailing_id(data);
    let _ = keys::prefix_end(data);
});
