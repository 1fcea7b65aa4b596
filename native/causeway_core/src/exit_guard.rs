//! How the OS process ends while RocksDB is working: before any C++ static
//! destructor runs.
//!
//! The BEAM's `halt` (and so `System.halt/1`, `:init.stop/0`, the end of
//! `mix run`) calls `exit()`, which runs the C++ static destructors while
//! the other threads go on: writer and retention threads, queries on dirty
//! schedulers, RocksDB's own flushes and compactions. RocksDB's statics are
//! destroyed under them — its zstd decompression context cache among them —
//! and a VM whose retention was running at its halt ended with SIGSEGV
//! (exit status 139, or 134) in about one halt of fifteen instead of 0.
//!
//! `install` (called by every store open) registers, with glibc's
//! `on_exit`, a handler that flushes C stdio and ends the process with the
//! status `exit()` was given (`_exit`). Exit handlers run last registered
//! first, and RocksDB's statics are made before a store opens, so the
//! handler runs before their destructors, and none of them runs at all.
//! Nothing of a store depends on them: RocksDB syncs and closes files only
//! when told (`flush/0`, a close), never in a static destructor. The cost is
//! that exit handlers registered before the first store opened (other NIF
//! libraries' `atexit` cleanups) do not run at exit either.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Opens that register the handler again (one registered after a static
/// made late is still ahead of it; past this many every static is made).
const MAX_INSTALLS: usize = 64;

static INSTALLED: AtomicUsize = AtomicUsize::new(0);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    /// glibc: like `atexit`, and the handler is given `exit()`'s status.
    fn on_exit(
        function: extern "C" fn(libc::c_int, *mut libc::c_void),
        arg: *mut libc::c_void,
    ) -> libc::c_int;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn end_now(status: libc::c_int, _arg: *mut libc::c_void) {
    // SAFETY: fflush(NULL) flushes every C stdio stream; _exit ends the
    // process at once, with exit()'s own status
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(status);
    }
}

/// Registers the exit handler (see the module doc), at most `MAX_INSTALLS`
/// times in a process.
pub fn install() {
    if INSTALLED.fetch_add(1, Ordering::Relaxed) >= MAX_INSTALLS {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: registers a plain function with no argument
    unsafe {
        on_exit(end_now, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use crate::event::EventType;
    use crate::store::tests::event;
    use crate::store::{Store, StoreOptions, CF_EVENTS};

    /// Run as a child process by the test below: scans the store at
    /// `CAUSEWAY_EXIT_CHILD` from four threads (reading its blocks from the
    /// files, decompressing them) and, meanwhile, calls `exit(3)` as the
    /// BEAM's halt does. Does nothing in a normal test run.
    #[test]
    #[ignore]
    fn exiting_child() {
        let Ok(dir) = std::env::var("CAUSEWAY_EXIT_CHILD") else {
            return;
        };
        let s = std::sync::Arc::new(Store::open(&dir, StoreOptions::default()).expect("open"));
        for _ in 0..4 {
            let s = s.clone();
            std::thread::spawn(move || loop {
                let _ = s.scan_keys(CF_EVENTS, &[], None, false, |_, _| Ok(true));
                let _ = s.compact_all();
            });
        }
        let pause = std::env::var("CAUSEWAY_EXIT_AFTER_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        std::thread::sleep(std::time::Duration::from_micros(pause));
        // SAFETY: what the BEAM's halt does: exit handlers and static
        // destructors run while the threads above are inside RocksDB
        unsafe { libc::exit(3) };
    }

    /// Without the handler, about one exit in ten of this child ended in
    /// SIGSEGV or SIGABRT (a static destructor of RocksDB run under a
    /// thread that decompressed a block).
    #[test]
    fn a_process_that_exits_while_rocksdb_reads_exits_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let evs: Vec<_> = (1..=40_000u64)
                .map(|i| {
                    let mut e = event(i * 64, (i % 7) as u32, EventType::StateChange);
                    e.data = (0..200).map(|b| ((i + b) % 251) as u8).collect();
                    e
                })
                .collect();
            for chunk in evs.chunks(1_000) {
                s.write(chunk, &[]).unwrap();
            }
            s.flush_all().unwrap();
        }
        let mut bad = Vec::new();
        for i in 0..60u64 {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "exit_guard::tests::exiting_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CAUSEWAY_EXIT_CHILD", dir.path())
                .env(
                    "CAUSEWAY_EXIT_AFTER_US",
                    (500 + i * 397 % 20_000).to_string(),
                )
                .output()
                .unwrap();
            if out.status.code() != Some(3) {
                bad.push(format!("{:?}", out.status));
            }
        }
        assert!(bad.is_empty(), "{} of 60 exits: {bad:?}", bad.len());
    }
}
