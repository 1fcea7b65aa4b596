//! The process's C heap — glibc's `malloc`, shared by RocksDB, the writer
//! threads and the BEAM's own `malloc` calls: what it holds in use and free,
//! and handing its free pages back to the OS.
//!
//! RocksDB's block cache and memtables churn blocks of many sizes from many
//! threads. glibc keeps what they free in its arenas: live data stays within
//! RocksDB's cap, but the resident set grows by the free chunks the arenas
//! hold and never return (a 9-minute overload soak: +13 MB of RSS outside
//! RocksDB's reported usage while a jemalloc heap profile of the same soak
//! showed every live allocation outside RocksDB's cache flat). [`tick`],
//! called once a second by each pipeline's manager thread, samples the heap
//! every [`SAMPLE_EVERY`] and, when more than [`TRIM_SLACK`] is held free,
//! calls `malloc_trim(0)`, which gives back the free pages inside the arenas
//! as well as their tops. The figures are process-wide and shown in
//! `metrics/0` as `heap`.
//!
//! Elsewhere than glibc (musl, macOS, or a `LD_PRELOAD`ed allocator whose
//! figures glibc cannot see), the figures are zero and nothing is trimmed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the heap is sampled (and trimmed if it holds too much free).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Free bytes the heap may hold before it is trimmed.
pub const TRIM_SLACK: u64 = 16 << 20;

/// The C heap's figures, in bytes, as last sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in allocated chunks (mmapped ones included).
    pub in_use: u64,
    /// Bytes the arenas hold free. A trim hands the whole pages inside
    /// free chunks back to the OS but leaves the chunks on the free lists,
    /// so this falls only by what was cut from the arenas' tops.
    pub free: u64,
    /// How many times the heap was trimmed.
    pub trims: u64,
    /// Bytes the trims handed back: the fall of the process's resident set
    /// across each `malloc_trim` call, summed.
    pub trimmed: u64,
}

static IN_USE: AtomicU64 = AtomicU64::new(0);
static FREE: AtomicU64 = AtomicU64::new(0);
static TRIMS: AtomicU64 = AtomicU64::new(0);
static TRIMMED: AtomicU64 = AtomicU64::new(0);
static LAST: Mutex<Option<Instant>> = Mutex::new(None);

/// The heap's figures as last sampled by [`tick`] (all zero before the
/// first sample and where the allocator is not glibc's).
pub fn stats() -> HeapStats {
    HeapStats {
        in_use: IN_USE.load(Ordering::Relaxed),
        free: FREE.load(Ordering::Relaxed),
        trims: TRIMS.load(Ordering::Relaxed),
        trimmed: TRIMMED.load(Ordering::Relaxed),
    }
}

/// Samples (and trims) the heap if [`SAMPLE_EVERY`] has passed since the
/// last sample by any thread; otherwise does nothing. Sampling walks the
/// arenas' free lists under their locks: call it from a background thread,
/// never from a scheduler.
pub fn tick() {
    {
        let Ok(mut last) = LAST.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < SAMPLE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    sample_and_trim(TRIM_SLACK);
}

/// Samples the heap, trims it if it holds more than `slack` bytes free, and
/// records the figures; returns the bytes the trim handed back (0 if none ran).
pub fn sample_and_trim(slack: u64) -> u64 {
    let Some((in_use, free)) = sys::sample() else {
        return 0;
    };
    let mut now_free = free;
    let mut given_back = 0;
    if free > slack {
        let rss_before = sys::resident();
        sys::trim();
        given_back = rss_before.saturating_sub(sys::resident());
        if let Some((_, after)) = sys::sample() {
            now_free = after;
        }
        TRIMS.fetch_add(1, Ordering::Relaxed);
        TRIMMED.fetch_add(given_back, Ordering::Relaxed);
    }
    IN_USE.store(in_use, Ordering::Relaxed);
    FREE.store(now_free, Ordering::Relaxed);
    given_back
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod sys {
    /// (in use, free) bytes of glibc's heap.
    pub fn sample() -> Option<(u64, u64)> {
        // SAFETY: mallinfo2 only reads the allocator's own bookkeeping
        let m = unsafe { libc::mallinfo2() };
        Some(((m.uordblks + m.hblkhd) as u64, m.fordblks as u64))
    }

    pub fn trim() {
        // SAFETY: malloc_trim only releases pages no allocation uses
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The process's resident set in bytes (0 if /proc cannot be read).
    pub fn resident() -> u64 {
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf only reads a system constant
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn sample() -> Option<(u64, u64)> {
        None
    }
    pub fn trim() {}
    pub fn resident() -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_is_seen_and_handed_back() {
        // many blocks, one in eight kept: runs of free pages between live
        // blocks, which the arena cannot give back from its top alone
        let mut blocks: Vec<Vec<u8>> = (0..16_000).map(|i| vec![i as u8; 4000]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(8).collect();
        let (_, free) = sys::sample().expect("glibc");
        assert!(free >= 30 << 20, "free {free}");
        let trims = stats().trims;
        let given_back = sample_and_trim(TRIM_SLACK);
        assert!(given_back > 0, "nothing handed back of {free} free");
        assert!(stats().trims > trims);
        assert!(stats().in_use >= kept.len() as u64 * 4000);
        drop(kept);
    }

    #[test]
    fn below_the_slack_nothing_is_trimmed() {
        let before = stats().trims;
        assert_eq!(sample_and_trim(u64::MAX), 0);
        assert_eq!(stats().trims, before);
    }
}
