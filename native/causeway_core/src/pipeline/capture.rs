//! The capture side of a pipeline, called on BEAM schedulers: admission
//! (enabled, per module and pid, backpressure sampling), id stamping, pushes
//! into the rings and the payload memory budget.

use super::*;

impl Pipeline {
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    pub fn is_open(&self) -> bool {
        !self.closing.load(Ordering::Relaxed)
    }

    /// Whether an event of `kind` from `pid` in `module` (raw words, 0 = any)
    /// should be captured. Disabled capture costs these flag checks; an event
    /// sampled out in the emergency level is counted as dropped.
    #[inline]
    pub fn admit(&self, kind: EventType, pid: u64, module: u64) -> bool {
        self.admit_as(kind, pid, module, false)
    }

    /// `admit`, where `paired` says the event completes one that was kept (an
    /// exit whose entry was captured): it is not sampled on its own, so the
    /// emergency level keeps or drops calls whole and leaves no half waiting
    /// for a partner that will never come.
    #[inline]
    pub fn admit_as(&self, kind: EventType, pid: u64, module: u64, paired: bool) -> bool {
        if !self.enabled.load(Ordering::Relaxed) || self.closing.load(Ordering::Relaxed) {
            return false;
        }
        if self.any_disabled.load(Ordering::Relaxed) > 0
            && ((pid != 0 && self.disabled_pids.contains(&pid))
                || (module != 0 && self.disabled_modules.contains(&module)))
        {
            return false;
        }
        if !paired
            && self.level.load(Ordering::Relaxed) == Level::Emergency as u8
            && !kind.is_critical()
            && self.config.overflow != crate::ring::Overflow::Wait
        {
            let every = self.sample_divisor() as u64;
            if !sample_tick().is_multiple_of(every) {
                self.counters.sampled.add(1);
                return false;
            }
        }
        true
    }

    /// The id of an event for `shard` at Erlang monotonic time `mono_ns`.
    #[inline]
    pub fn stamp_on(&self, shard: usize, mono_ns: i64) -> u64 {
        self.ids.next(shard, self.wall_ns(mono_ns) as u64)
    }

    /// Wall-clock (Erlang system) time of Erlang monotonic time `mono_ns`.
    #[inline]
    pub(super) fn wall_ns(&self, mono_ns: i64) -> i64 {
        mono_ns
            .saturating_add(self.resolver.time_offset_ns())
            .max(0)
    }

    /// Puts an event into its shard; raises the level at once if the shard is
    /// filling up (the check runs on every push, not on a timer). An event
    /// whose payload lives outside its slot is refused (and counted) when it
    /// would take its shard past its share of the memory budget.
    #[inline(always)]
    pub fn push(&self, shard: usize, ev: RawEvent) -> PushOutcome {
        let bytes = ev.heap_bytes();
        if bytes > 0 && self.over_budget(shard, bytes) {
            Counters::add(&self.counters.over_budget, 1);
            return PushOutcome::Rejected;
        }
        let outcome = self.rings.push(shard, ev);
        self.after_push(shard, outcome);
        outcome
    }

    /// `push` of an event made in its slot by `fill` (which completes a
    /// default event there; see `Rings::push_in_place`), for events whose
    /// payload is encoded right into the ring. `fill` is not called when the
    /// event is refused (`Rejected`). It is handed back (`Err`) when a
    /// payload of up to `max_heap` bytes outside the slot could take the
    /// shard past its memory budget: the caller then makes the event first
    /// and `push`es it, which checks its exact size.
    #[inline(always)]
    pub fn push_in_place<F: FnOnce(&mut RawEvent)>(
        &self,
        shard: usize,
        max_heap: u64,
        fill: F,
    ) -> std::result::Result<PushOutcome, F> {
        if self.over_budget(shard, max_heap) {
            return Err(fill);
        }
        let outcome = self.rings.push_in_place(shard, fill);
        self.after_push(shard, outcome);
        Ok(outcome)
    }

    /// Raises the level at once when a push finds its shard filling up, and
    /// at `emergency` samples sparser at once when it finds the shard over
    /// `SAMPLE_SPARSER_ABOVE` (the manager, which makes it denser again,
    /// looks only every 5 ms: a small ring fills faster than that).
    #[inline(always)]
    pub(super) fn after_push(&self, shard: usize, outcome: PushOutcome) {
        if outcome != PushOutcome::Stored || self.rings.time_to_check(shard) {
            let u = self.rings.utilization(shard);
            if u >= 0.5 {
                let l = Level::for_utilization(u) as u8;
                let was = self.level.fetch_max(l, Ordering::Relaxed);
                if was < l {
                    self.wake_manager();
                } else if was == Level::Emergency as u8
                    && u > crate::backpressure::SAMPLE_SPARSER_ABOVE
                {
                    self.sample_sparser();
                }
            }
        }
    }

    /// One in how many non-critical events the emergency level keeps: the
    /// manager's `sample_every`, or the sparsest before it has decided.
    #[inline]
    pub(super) fn sample_divisor(&self) -> u32 {
        match self.sample_every.load(Ordering::Relaxed) {
            0 => self.tun.emergency_sample.load(Ordering::Relaxed),
            n => n,
        }
        .max(1)
    }

    /// Doubles the emergency level's `sample_every`, up to `emergency_sample`.
    #[cold]
    fn sample_sparser(&self) {
        let sparsest = self.tun.emergency_sample.load(Ordering::Relaxed).max(1);
        let _ = self
            .sample_every
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n != 0 && n < sparsest).then(|| n.saturating_mul(2).min(sparsest))
            });
    }

    /// Would `bytes` more take `shard`'s payloads past its share of the
    /// budget (what the fixed allocations leave of it, split evenly between
    /// shards)?
    #[inline]
    pub(super) fn over_budget(&self, shard: usize, bytes: u64) -> bool {
        let budget = self.tun.memory_budget.load(Ordering::Relaxed);
        let for_payloads = budget.saturating_sub(fixed_bytes(&self.rings)) as u128;
        // `held > for_payloads / shards`, without a division on every capture
        let held = (self.rings.heap_bytes(shard) + bytes) as u128;
        held * self.rings.shard_count() as u128 > for_payloads
    }

    /// Runs `f` as a capture that `close` waits for; `None` (and `f` not
    /// run) once the pipeline is closing.
    pub fn guarded_capture<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _inside = self.in_capture.enter();
        (!self.closing.load(Ordering::SeqCst)).then(f)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_module_enabled(&self, module: u64, on: bool) {
        if on {
            self.disabled_modules.remove(&module);
        } else {
            self.disabled_modules.insert(module);
        }
        self.any_disabled.store(
            self.disabled_modules.len() + self.disabled_pids.len(),
            Ordering::Relaxed,
        );
    }

    pub fn set_pid_enabled(&self, pid: u64, on: bool) {
        if on {
            self.disabled_pids.remove(&pid);
        } else {
            self.disabled_pids.insert(pid);
        }
        self.any_disabled.store(
            self.disabled_modules.len() + self.disabled_pids.len(),
            Ordering::Relaxed,
        );
    }

    pub fn now_mono_ns(&self) -> i64 {
        self.resolver.now_mono_ns()
    }
}

/// This thread's count of events that met emergency sampling: one in every
/// `sample_every` of them is kept, counted per scheduler thread (a
/// shared atomic was a cache-line transfer between cores on every call of an
/// overloaded host).
#[inline]
fn sample_tick() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static TICK: Cell<u64> = const { Cell::new(0) };
    }
    TICK.with(|t| {
        let n = t.get();
        t.set(n.wrapping_add(1));
        n
    })
}
