//! A cheap monotonic clock for the capture path: the CPU's invariant time
//! stamp counter scaled to `CLOCK_MONOTONIC` nanoseconds.
//!
//! `clock_gettime` through the vDSO costs ~30 ns on these machines; `rdtsc`
//! ~12 ns, and a capture reads the clock once per event. The TSC is used only
//! where it is safe: x86_64, a CPU that says its TSC is invariant, and a
//! kernel whose own clocksource is `tsc` (the kernel checked that the counter
//! is synchronised between CPUs and did not stop trusting it). Anywhere else,
//! or with `CAUSEWAY_CLOCK=os`, it is `clock_gettime(CLOCK_MONOTONIC)`.
//!
//! The scale follows `CLOCK_MONOTONIC`: every 10 ms the first reader past
//! the deadline compares the line with the OS clock and starts a new line at
//! the current value (continuous), whose slope is the long-run rate
//! corrected by at most ±1% to absorb the difference. A clock more than 1 ms
//! behind (a paused VM) is stepped forward. The line is published under a
//! sequence lock: a reader never sees half an update (it retries the few
//! instructions of one, longer only if the OS preempts the recalibrating
//! thread in the middle of it).
//!
//! Not strictly monotonic across a switch of lines: a reader still on the
//! old line, between the new line's start and its publication, can be ahead
//! of the new line by that window times the change of slope (nanoseconds;
//! more only if the recalibrating thread is preempted in that window right
//! after a large correction). The VM-offset calibration on top of this clock
//! (`causeway_nif::beam`) moves in steps of that order anyway.
//!
//! The kernel may stop trusting the TSC after start (and switch its
//! clocksource); the pipeline's manager thread calls `recheck` every second,
//! which falls back to the OS clock from then on.

use std::sync::atomic::{fence, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// How often the line is compared with the OS clock.
const PERIOD_NS: i64 = 10_000_000;
/// An error larger than this (clock behind) is stepped, not slewed.
const STEP_NS: i64 = 1_000_000;
/// The error is absorbed over this horizon...
const HORIZON_NS: i64 = 100_000_000;
/// ...with the slope changed by at most this fraction (1/100).
const MAX_CORRECTION_DIV: i128 = 100;
/// Fixed-point fraction bits of the scale (ns per tick).
const FRAC: u32 = 32;

const UNINIT: u8 = 0;
const TSC: u8 = 1;
const OS: u8 = 2;

/// `CLOCK_MONOTONIC` in ns: one vDSO call.
#[inline]
pub fn os_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // CLOCK_MONOTONIC cannot fail on Linux with a valid pointer
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn ticks() -> u64 {
    0
}

/// One line of the clock: `ns = base_ns + (ticks - base_ticks) * scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub base_ticks: u64,
    pub base_ns: i64,
    /// ns per tick, fixed point with `FRAC` fraction bits.
    pub scale: u64,
}

impl Line {
    #[inline]
    pub fn at(&self, t: u64) -> i64 {
        let dt = t.wrapping_sub(self.base_ticks) as i64 as i128;
        self.base_ns + ((dt * self.scale as i128) >> FRAC) as i64
    }
}

/// The line to switch to at `t` (ticks), when the OS clock reads `os` there
/// and `rate` (fixed point, like `Line::scale`) is the long-run ns per tick.
/// Starts where the old line is at `t` (never back), unless the old line is
/// more than `STEP_NS` behind, and bends its slope by at most 1% towards the
/// OS clock.
pub fn next_line(old: &Line, t: u64, os: i64, rate: u64) -> Line {
    let cur = old.at(t);
    let err = os - cur;
    if err > STEP_NS {
        return Line {
            base_ticks: t,
            base_ns: os,
            scale: rate,
        };
    }
    let rate_i = rate as i128;
    let max = rate_i / MAX_CORRECTION_DIV;
    let correction = (rate_i * err as i128 / HORIZON_NS as i128).clamp(-max, max);
    Line {
        base_ticks: t,
        base_ns: cur,
        scale: (rate_i + correction).max(1) as u64,
    }
}

/// A `(ticks, os ns)` pair read as close together as this thread can: the
/// narrowest of a few tries, with the ticks taken halfway.
fn sample() -> (u64, i64) {
    let mut best = (u64::MAX, 0u64, 0i64);
    for _ in 0..5 {
        let a = ticks();
        let ns = os_ns();
        let b = ticks();
        let width = b.wrapping_sub(a);
        if width < best.0 {
            best = (width, a + width / 2, ns);
        }
    }
    (best.1, best.2)
}

/// The rate between two samples (fixed point ns per tick), if plausible
/// (a counter between 100 MHz and 20 GHz).
fn rate_between(a: (u64, i64), b: (u64, i64)) -> Option<u64> {
    let dt = b.0.checked_sub(a.0)?;
    let dns = b.1.checked_sub(a.1)?;
    if dt == 0 || dns <= 0 {
        return None;
    }
    let r = ((dns as u128) << FRAC) / dt as u128;
    let lo = (1u128 << FRAC) / 20; // 0.05 ns per tick
    let hi = (1u128 << FRAC) * 10; // 10 ns per tick
    (lo..=hi).contains(&r).then_some(r as u64)
}

struct Clock {
    mode: AtomicU8,
    seq: AtomicU64,
    base_ticks: AtomicU64,
    base_ns: AtomicI64,
    scale: AtomicU64,
    /// Ticks past which the next reader recalibrates.
    next_ticks: AtomicU64,
    /// The first sample (for the long-run rate); held by the recalibrator.
    anchor: Mutex<(u64, i64)>,
}

static CLOCK: Clock = Clock {
    mode: AtomicU8::new(UNINIT),
    seq: AtomicU64::new(0),
    base_ticks: AtomicU64::new(0),
    base_ns: AtomicI64::new(0),
    scale: AtomicU64::new(0),
    next_ticks: AtomicU64::new(u64::MAX),
    anchor: Mutex::new((0, 0)),
};

/// Monotonic nanoseconds (the `CLOCK_MONOTONIC` scale) on any thread.
#[inline]
pub fn now_ns() -> i64 {
    if CLOCK.mode.load(Ordering::Acquire) == TSC {
        tsc_now()
    } else {
        os_ns()
    }
}

/// Which source `now_ns` reads: `"tsc"` or `"os"` (`"uninit"` before `init`).
pub fn source() -> &'static str {
    match CLOCK.mode.load(Ordering::Relaxed) {
        TSC => "tsc",
        OS => "os",
        _ => "uninit",
    }
}

#[inline]
fn tsc_now() -> i64 {
    let c = &CLOCK;
    loop {
        let s1 = c.seq.load(Ordering::Acquire);
        let line = Line {
            base_ticks: c.base_ticks.load(Ordering::Relaxed),
            base_ns: c.base_ns.load(Ordering::Relaxed),
            scale: c.scale.load(Ordering::Relaxed),
        };
        let t = ticks();
        fence(Ordering::Acquire);
        if s1 & 1 == 0 && c.seq.load(Ordering::Relaxed) == s1 {
            let ns = line.at(t);
            if t >= c.next_ticks.load(Ordering::Relaxed) {
                recalibrate();
            }
            return ns;
        }
        std::hint::spin_loop();
    }
}

fn publish(line: Line, next: u64) {
    let c = &CLOCK;
    let s = c.seq.load(Ordering::Relaxed);
    c.seq.store(s.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    c.base_ticks.store(line.base_ticks, Ordering::Relaxed);
    c.base_ns.store(line.base_ns, Ordering::Relaxed);
    c.scale.store(line.scale, Ordering::Relaxed);
    c.next_ticks.store(next, Ordering::Relaxed);
    c.seq.store(s.wrapping_add(2), Ordering::Release);
}

fn current_line() -> Line {
    let c = &CLOCK;
    // only the recalibrator (holding the anchor lock) publishes: no torn read
    Line {
        base_ticks: c.base_ticks.load(Ordering::Relaxed),
        base_ns: c.base_ns.load(Ordering::Relaxed),
        scale: c.scale.load(Ordering::Relaxed),
    }
}

#[cold]
fn recalibrate() {
    let c = &CLOCK;
    let Ok(anchor) = c.anchor.try_lock() else {
        return; // another thread is at it
    };
    let old = current_line();
    let now = sample();
    let Some(rate) = rate_between(*anchor, now) else {
        // the counter went backwards or stalled: trust the OS from now on
        c.mode.store(OS, Ordering::Relaxed);
        return;
    };
    let period = ((PERIOD_NS as u128) << FRAC) / rate as u128;
    // The new line starts at the last moment before it is published, where
    // the OS clock is extrapolated from the sample: a reader still on the old
    // line read its ticks before that moment, so it saw no later time.
    let t = ticks();
    let os = Line {
        base_ticks: now.0,
        base_ns: now.1,
        scale: rate,
    }
    .at(t);
    let line = next_line(&old, t, os, rate);
    publish(line, t.saturating_add(period as u64));
}

fn tsc_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var("CAUSEWAY_CLOCK").is_ok_and(|v| v == "os") {
            return false;
        }
        // CPUID 0x8000_0007 EDX bit 8: invariant TSC
        let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_0007 {
            return false;
        }
        let invariant = core::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0;
        invariant && kernel_uses_tsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Falls back to the OS clock if the kernel's clocksource is no longer the
/// TSC (it reads a sysfs file: call it off the capture path, e.g. once a
/// second from a manager thread).
pub fn recheck() {
    if CLOCK.mode.load(Ordering::Relaxed) == TSC && !kernel_uses_tsc() {
        CLOCK.mode.store(OS, Ordering::Relaxed);
    }
}

fn kernel_uses_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
}

/// Picks the source and, for the TSC, measures its rate over ~2 ms. Call
/// once before captures start (later calls do nothing); until then `now_ns`
/// reads the OS clock.
pub fn init() {
    let c = &CLOCK;
    let Ok(mut anchor) = c.anchor.lock() else {
        return;
    };
    if c.mode.load(Ordering::Relaxed) != UNINIT {
        return;
    }
    if !tsc_usable() {
        c.mode.store(OS, Ordering::Relaxed);
        return;
    }
    let a = sample();
    while os_ns() - a.1 < 2_000_000 {
        std::hint::spin_loop();
    }
    let b = sample();
    let Some(rate) = rate_between(a, b) else {
        c.mode.store(OS, Ordering::Relaxed);
        return;
    };
    *anchor = a;
    let period = ((PERIOD_NS as u128) << FRAC) / rate as u128;
    publish(
        Line {
            base_ticks: b.0,
            base_ns: b.1,
            scale: rate,
        },
        b.0.saturating_add(period as u64),
    );
    c.mode.store(TSC, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: u64 = 1 << FRAC;

    #[test]
    fn a_line_scales_ticks() {
        let l = Line {
            base_ticks: 1000,
            base_ns: 5,
            scale: ONE / 2,
        };
        assert_eq!(l.at(1000), 5);
        assert_eq!(l.at(3000), 1005);
        // a reader whose ticks predate the line extrapolates backwards
        assert_eq!(l.at(800), -95);
    }

    #[test]
    fn a_new_line_starts_where_the_old_one_is() {
        let old = Line {
            base_ticks: 0,
            base_ns: 0,
            scale: ONE,
        };
        // OS clock 500 ns ahead, then 500 ns behind: continuous, slope bent
        // towards it by a bounded amount
        let ahead = next_line(&old, 10_000_000, 10_000_500, ONE);
        assert_eq!(ahead.base_ns, 10_000_000);
        assert!(ahead.scale > ONE && ahead.scale <= ONE + ONE / 100);
        let behind = next_line(&old, 10_000_000, 9_999_500, ONE);
        assert_eq!(behind.base_ns, 10_000_000);
        assert!(behind.scale < ONE && behind.scale >= ONE - ONE / 100);
        // a huge error is absorbed at no more than 1%
        let far = next_line(&old, 10_000_000, 9_000_000, ONE);
        assert_eq!(far.scale, ONE - ONE / 100);
        // far behind (a paused VM): stepped forward
        let stepped = next_line(&old, 10_000_000, 12_000_000, ONE);
        assert_eq!(stepped.base_ns, 12_000_000);
    }

    #[test]
    fn switching_lines_never_steps_back() {
        let mut line = Line {
            base_ticks: 0,
            base_ns: 0,
            scale: ONE,
        };
        // the OS clock runs 0.5% slow: the line follows it, never backwards
        let mut last = i64::MIN;
        let mut t = 0u64;
        for _ in 0..1000 {
            t += 1_000_000;
            let os = (t as f64 * 0.995) as i64;
            let before = line.at(t);
            line = next_line(&line, t, os, ONE - ONE / 200);
            assert_eq!(line.at(t), before);
            for dt in [1u64, 1000, 999_999] {
                let v = line.at(t + dt);
                assert!(v >= last, "{v} < {last}");
                last = v;
            }
        }
        // and ends close to it
        let os = (t as f64 * 0.995) as i64;
        assert!((line.at(t) - os).abs() < 20_000, "{} vs {}", line.at(t), os);
    }

    #[test]
    fn rates_outside_a_plausible_counter_are_refused() {
        assert_eq!(rate_between((0, 0), (1000, 1000)), Some(ONE));
        assert_eq!(rate_between((0, 0), (0, 1000)), None);
        assert_eq!(rate_between((1000, 0), (0, 1000)), None);
        assert_eq!(rate_between((0, 0), (1000, 100_000)), None);
    }

    #[test]
    fn the_source_is_the_tsc_exactly_where_it_is_usable_and_a_recheck_keeps_it() {
        init();
        let expected = if tsc_usable() { "tsc" } else { "os" };
        assert_eq!(source(), expected);
        recheck();
        assert_eq!(source(), expected);
    }

    #[test]
    fn the_clock_follows_the_os_clock_and_is_monotonic_per_thread() {
        init();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let start = os_ns();
                    let mut last = now_ns();
                    let mut worst = 0i64;
                    while os_ns() - start < 150_000_000 {
                        let a = os_ns();
                        let v = now_ns();
                        let b = os_ns();
                        assert!(v >= last, "went back: {v} < {last}");
                        last = v;
                        // v should lie within [a, b], give or take the tracking error
                        worst = worst.max(a - v).max(v - b);
                    }
                    worst
                })
            })
            .collect();
        for t in threads {
            let worst = t.join().expect("thread");
            eprintln!("clock source {}, worst tracking error {worst} ns", source());
            // 150 ms, 15 recalibrations: within 50 µs of CLOCK_MONOTONIC
            assert!(worst < 50_000, "{} source off by {worst} ns", source());
        }
    }
}
