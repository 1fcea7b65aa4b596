//! BackpressureManager (seed diagrams 3 and 4): ring utilization → level →
//! workers, batch size, flush interval and sampling, with hysteresis.
//!
//! | utilization | level       | check every | workers            | batch | flush      |
//! |-------------|-------------|-------------|--------------------|-------|------------|
//! | < 50%       | `normal`    | 100 ms      | back down to min   | 1×    | configured |
//! | 50–80%      | `elevated`  | 50 ms       | +1 per check, ≤ 6  | 2×    | ½          |
//! | 80–95%      | `high`      | 10 ms       | max                | 4×    | 1 ms       |
//! | ≥ 95%       | `emergency` | 5 ms        | max                | 4×    | 1 ms, only critical events kept, the rest sampled |
//!
//! The emergency level's sampling adapts to what the writers keep up with:
//! it keeps one non-critical event in `sample_every`, which starts at the
//! sparsest allowed (`emergency_sample`, to relieve the rings at once) and
//! then halves on each check that finds the rings under `SAMPLE_DENSER_BELOW`
//! and doubles on each that finds them over `SAMPLE_SPARSER_ABOVE` (the
//! capture path doubles it too, on the fill checks of its pushes, between
//! two checks). A fixed one in 100 left the writers idle two thirds of the
//! time under a CPU-bound producer (~190 k events/s persisted of the ~560 k/s they persist
//! losslessly): the rings drained, and stayed drained for as long as the
//! level was held. The level steps down from `emergency` only once the
//! sampling has come back to keeping every event (`sample_every` 1) and the
//! rings stayed calm at that.
//!
//! A level is raised at once (also from the capture path, which sees its shard's
//! fill level on every push); it is lowered one step at a time, only after the
//! utilization stayed 10 points under the step's threshold for `CALM_CHECKS`
//! checks in a row *and* for a hold time. The hold starts at `HOLD_MIN_MS`
//! and doubles, up to `HOLD_MAX_MS`, whenever the level has to be raised
//! again soon after stepping down (a flap: under sustained overload the
//! emergency level's own sampling empties the rings, which looks calm); it
//! halves again after a long stretch without a raise. Counting checks alone
//! (5 ms apart at `emergency`) let a sustained overload flap ~6 times a
//! second. Workers above the level's band are retired one per second.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Normal = 0,
    Elevated = 1,
    High = 2,
    Emergency = 3,
}

pub const CALM_CHECKS: u32 = 10;
/// The shortest and the longest a level is held calm before stepping down.
pub const HOLD_MIN_MS: u64 = 1_000;
pub const HOLD_MAX_MS: u64 = 60_000;
const SCALE_DOWN_EVERY_MS: u64 = 1_000;
/// The "normal" worker band of diagram 4 is 4–6: elevated load ramps up to its top.
const ELEVATED_WORKERS: usize = 6;
/// At `emergency`, a check finding the rings fuller than this samples
/// sparser (doubles `sample_every`), one finding them emptier than
/// `SAMPLE_DENSER_BELOW` denser (halves it); in between it holds.
pub const SAMPLE_SPARSER_ABOVE: f64 = 0.90;
pub const SAMPLE_DENSER_BELOW: f64 = 0.50;

impl Level {
    pub fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Normal,
            1 => Level::Elevated,
            2 => Level::High,
            _ => Level::Emergency,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::High => "high",
            Level::Emergency => "emergency",
        }
    }

    pub fn for_utilization(u: f64) -> Level {
        if u >= 0.95 {
            Level::Emergency
        } else if u >= 0.80 {
            Level::High
        } else if u >= 0.50 {
            Level::Elevated
        } else {
            Level::Normal
        }
    }

    /// Utilization below which this level may step down.
    fn calm_below(self) -> f64 {
        match self {
            Level::Normal => 0.0,
            Level::Elevated => 0.40,
            Level::High => 0.70,
            Level::Emergency => 0.85,
        }
    }

    pub fn check_interval_ms(self) -> u64 {
        match self {
            Level::Normal => 100,
            Level::Elevated => 50,
            Level::High => 10,
            Level::Emergency => 5,
        }
    }

    fn down(self) -> Level {
        Level::from_u8((self as u8).saturating_sub(1))
    }
}

/// What the pipeline should run with after a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub level: Level,
    pub workers: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    /// At `emergency`, one non-critical event in this many is kept; 0 at
    /// every other level (no sampling).
    pub sample_every: u32,
}

pub struct Controller {
    level: Level,
    calm: u32,
    /// When the utilization went (and stayed) calm at this level.
    calm_since_ms: Option<u64>,
    /// How long it must stay calm before the level steps down.
    hold_ms: u64,
    /// When the level last stepped down, and when it was last raised.
    stepped_down_ms: Option<u64>,
    raised_ms: u64,
    workers: usize,
    last_scale_down_ms: u64,
    /// The emergency level's sampling (see the module doc); 0 outside it.
    sample_every: u32,
}

impl Controller {
    pub fn new(workers_min: usize) -> Controller {
        Controller {
            level: Level::Normal,
            calm: 0,
            calm_since_ms: None,
            hold_ms: HOLD_MIN_MS,
            stepped_down_ms: None,
            raised_ms: 0,
            workers: workers_min,
            last_scale_down_ms: 0,
            sample_every: 0,
        }
    }

    /// How long a level is now held calm before stepping down.
    pub fn hold_ms(&self) -> u64 {
        self.hold_ms
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// The capture path made the emergency level's sampling sparser (one
    /// in `every`) between two checks: the next check starts from there.
    pub fn sampled_sparser(&mut self, every: u32) {
        if self.level == Level::Emergency && every > self.sample_every {
            self.sample_every = every;
        }
    }

    /// One check. `floor` is a level already raised by the capture path;
    /// `sparsest` is the configured `emergency_sample`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        utilization: f64,
        floor: Level,
        now_ms: u64,
        min: usize,
        max: usize,
        base_batch: usize,
        base_flush_ms: u64,
        sparsest: u32,
    ) -> Plan {
        let sparsest = sparsest.max(1);
        let wanted = Level::for_utilization(utilization).max(floor);
        let was_emergency = self.level == Level::Emergency;
        // leaving `emergency` waits for its sampling to have stopped
        let may_calm = self.level != Level::Emergency || self.sample_every <= 1;
        if wanted > self.level {
            // raised again soon after stepping down: hold longer next time
            if self
                .stepped_down_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < self.hold_ms.saturating_mul(2))
            {
                self.hold_ms = self.hold_ms.saturating_mul(2).min(HOLD_MAX_MS);
            }
            self.level = wanted;
            self.calm = 0;
            self.calm_since_ms = None;
            self.raised_ms = now_ms;
        } else if wanted < self.level && utilization < self.level.calm_below() && may_calm {
            self.calm = self.calm.saturating_add(1);
            let since = *self.calm_since_ms.get_or_insert(now_ms);
            if self.calm >= CALM_CHECKS && now_ms.saturating_sub(since) >= self.hold_ms {
                self.level = self.level.down();
                self.calm = 0;
                self.calm_since_ms = None;
                self.stepped_down_ms = Some(now_ms);
            }
        } else {
            self.calm = 0;
            self.calm_since_ms = None;
        }
        // a long stretch without a raise: the load has changed, relax the hold
        if self.hold_ms > HOLD_MIN_MS
            && now_ms.saturating_sub(self.raised_ms) >= self.hold_ms.saturating_mul(4)
        {
            self.hold_ms = (self.hold_ms / 2).max(HOLD_MIN_MS);
            self.raised_ms = now_ms;
        }

        self.sample_every = match (self.level, was_emergency) {
            (Level::Emergency, false) => sparsest,
            (Level::Emergency, true) if utilization > SAMPLE_SPARSER_ABOVE => {
                self.sample_every.saturating_mul(2).min(sparsest)
            }
            (Level::Emergency, true) if utilization < SAMPLE_DENSER_BELOW => {
                (self.sample_every / 2).max(1)
            }
            (Level::Emergency, true) => self.sample_every.clamp(1, sparsest),
            _ => 0,
        };

        let band_top = match self.level {
            Level::Normal => min,
            Level::Elevated => ELEVATED_WORKERS.clamp(min, max),
            Level::High | Level::Emergency => max,
        };
        if self.workers < band_top {
            self.workers = match self.level {
                Level::Elevated => self.workers + 1,
                _ => band_top,
            };
            self.last_scale_down_ms = now_ms;
        } else if self.workers > band_top
            && now_ms.saturating_sub(self.last_scale_down_ms) >= SCALE_DOWN_EVERY_MS
        {
            self.workers -= 1;
            self.last_scale_down_ms = now_ms;
        }
        self.workers = self.workers.clamp(min, max);

        let max_batch = base_batch.saturating_mul(4).min(100_000);
        let (batch_size, flush_interval_ms) = match self.level {
            Level::Normal => (base_batch, base_flush_ms),
            Level::Elevated => (
                base_batch.saturating_mul(2).min(max_batch),
                (base_flush_ms / 2).max(1),
            ),
            Level::High | Level::Emergency => (max_batch, 1),
        };
        Plan {
            level: self.level,
            workers: self.workers,
            batch_size,
            flush_interval_ms,
            sample_every: self.sample_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(c: &mut Controller, u: f64, t: u64) -> Plan {
        c.step(u, Level::Normal, t, 2, 16, 1000, 5, 100)
    }

    #[test]
    fn levels_follow_diagram_3() {
        let mut c = Controller::new(2);
        let p = step(&mut c, 0.1, 0);
        assert_eq!(
            (p.level, p.workers, p.batch_size, p.flush_interval_ms),
            (Level::Normal, 2, 1000, 5)
        );
        let p = step(&mut c, 0.6, 1);
        assert_eq!(
            (p.level, p.workers, p.batch_size, p.flush_interval_ms),
            (Level::Elevated, 3, 2000, 2)
        );
        let p = step(&mut c, 0.6, 2);
        assert_eq!(p.workers, 4, "ramps up one worker per check");
        let p = step(&mut c, 0.85, 3);
        assert_eq!(
            (
                p.level,
                p.workers,
                p.batch_size,
                p.flush_interval_ms,
                p.sample_every
            ),
            (Level::High, 16, 4000, 1, 0)
        );
        let p = step(&mut c, 0.97, 4);
        assert_eq!((p.level, p.sample_every), (Level::Emergency, 100));
        assert_eq!(Level::Emergency.check_interval_ms(), 5);
    }

    #[test]
    fn hysteresis_steps_down_slowly_and_one_level_at_a_time() {
        let mut c = Controller::new(2);
        step(&mut c, 0.99, 0);
        // 0.9 is under emergency but not 10 points under: stays
        for t in 1..50 {
            assert_eq!(step(&mut c, 0.90, t).level, Level::Emergency);
        }
        // oscillating around a threshold does not flap
        for t in 50..100 {
            let u = if t % 2 == 0 { 0.5 } else { 0.9 };
            assert_eq!(step(&mut c, u, t).level, Level::Emergency);
        }
        let mut t = 100;
        let mut seen = vec![];
        while c.level() != Level::Normal {
            let p = step(&mut c, 0.0, t);
            if seen.last() != Some(&p.level) {
                seen.push(p.level);
            }
            t += 5;
        }
        assert_eq!(
            seen,
            vec![
                Level::Emergency,
                Level::High,
                Level::Elevated,
                Level::Normal
            ]
        );
        assert!(
            t - 100 >= 3 * HOLD_MIN_MS,
            "each step down waits the hold time"
        );
    }

    /// A sustained overload as the manager sees it: while sampling
    /// (`emergency`) the rings drain and look calm; one step down and they
    /// fill again at once. Checks run every 5 ms at `emergency` and every
    /// 10 ms at `high`.
    #[test]
    fn sustained_overload_changes_level_a_handful_of_times_not_thousands() {
        let mut c = Controller::new(2);
        let (mut t, mut changes, mut last) = (0u64, 0u32, Level::Normal);
        let mut in_emergency_ms = 0u64;
        while t < 300_000 {
            let u = if c.level() == Level::Emergency {
                0.05
            } else {
                0.99
            };
            let p = step(&mut c, u, t);
            if p.level != last {
                changes += 1;
                last = p.level;
            }
            let dt = p.level.check_interval_ms();
            if p.level == Level::Emergency {
                in_emergency_ms += dt;
            }
            t += dt;
        }
        // 1 907 changes in 300 s before the hold time
        assert!(changes <= 30, "{changes} level changes in 300 s");
        assert!(
            in_emergency_ms >= 290_000,
            "{in_emergency_ms} ms in emergency"
        );
        assert_eq!(c.hold_ms(), HOLD_MAX_MS);
    }

    /// A producer offering `offered` events per ms against writers that
    /// persist `capacity` per ms, through a ring of `ring` events, checked
    /// every `check_interval_ms`. Returns what was persisted and the last plan.
    fn simulate(
        c: &mut Controller,
        t: &mut u64,
        until: u64,
        offered: f64,
        capacity: f64,
        ring: f64,
        fill: &mut f64,
    ) -> (f64, Plan) {
        let mut persisted = 0.0;
        let mut p = step(c, *fill / ring, *t);
        while *t < until {
            let dt = p.level.check_interval_ms();
            let kept = match p.sample_every {
                0 => offered,
                n => offered / n as f64,
            };
            let out = (*fill + kept * dt as f64).min(capacity * dt as f64);
            *fill = (*fill + (kept - capacity) * dt as f64).clamp(0.0, ring);
            persisted += out;
            *t += dt;
            p = step(c, *fill / ring, *t);
        }
        (persisted, p)
    }

    #[test]
    fn emergency_sampling_keeps_what_the_writers_keep_up_with() {
        let mut c = Controller::new(2);
        let (mut t, mut fill, ring) = (0u64, 0.0, 65_536.0);
        // 10 M events/s offered, 500 k/s persisted: a fixed one in 100 would
        // keep 100 k/s and leave the writers idle four fifths of the time
        let (offered, capacity) = (10_000.0, 500.0);
        simulate(&mut c, &mut t, 1_000, offered, capacity, ring, &mut fill);
        let (persisted, p) = simulate(&mut c, &mut t, 11_000, offered, capacity, ring, &mut fill);
        assert_eq!(p.level, Level::Emergency);
        let rate = persisted / 10_000.0;
        assert!(
            rate >= 0.9 * capacity,
            "persisted {rate:.0}/ms of the writers' {capacity}/ms"
        );
        assert!(
            (4..=100).contains(&p.sample_every),
            "one in {}",
            p.sample_every
        );
        // the overload ends: sampling stops first, then the levels step down
        let (_, p) = simulate(&mut c, &mut t, 60_000, 100.0, capacity, ring, &mut fill);
        assert_eq!((p.level, p.sample_every), (Level::Normal, 0));
    }

    #[test]
    fn emergency_is_left_only_once_sampling_has_stopped() {
        let mut c = Controller::new(2);
        assert_eq!(step(&mut c, 0.99, 0).sample_every, 100);
        let mut t = 0;
        let mut everies = vec![];
        while c.level() == Level::Emergency {
            t += 5;
            let p = step(&mut c, 0.0, t);
            everies.push(p.sample_every);
        }
        let sampled: Vec<u32> = everies.iter().copied().take_while(|&n| n > 1).collect();
        assert_eq!(sampled, [50, 25, 12, 6, 3], "halves on each calm check");
        assert!(t >= HOLD_MIN_MS);
        // capped by the configured sparsest, also when it changes
        let mut c = Controller::new(2);
        c.step(0.99, Level::Normal, 0, 2, 16, 1000, 5, 8);
        for t in 1..20 {
            let p = c.step(0.99, Level::Normal, t, 2, 16, 1000, 5, 8);
            assert_eq!(p.sample_every, 8);
        }
        let p = c.step(0.99, Level::Normal, 20, 2, 16, 1000, 5, 3);
        assert_eq!(p.sample_every, 3);
    }

    #[test]
    fn the_hold_relaxes_once_the_load_has_gone() {
        let mut c = Controller::new(2);
        let mut t = 0;
        // flap a few times
        for _ in 0..4 {
            while c.level() != Level::Emergency {
                step(&mut c, 0.99, t);
                t += 5;
            }
            while c.level() == Level::Emergency {
                step(&mut c, 0.0, t);
                t += 5;
            }
        }
        assert!(c.hold_ms() > HOLD_MIN_MS);
        // then quiet for long
        for _ in 0..100_000 {
            step(&mut c, 0.0, t);
            t += 100;
        }
        assert_eq!(c.level(), Level::Normal);
        assert_eq!(c.hold_ms(), HOLD_MIN_MS);
    }

    #[test]
    fn workers_scale_down_one_per_second_to_the_minimum() {
        let mut c = Controller::new(2);
        assert_eq!(step(&mut c, 0.9, 0).workers, 16);
        let mut t = 0;
        for _ in 0..(4 * CALM_CHECKS) {
            t += 100;
            step(&mut c, 0.0, t);
        }
        assert_eq!(c.level(), Level::Normal);
        let mut counts = vec![];
        for _ in 0..20 {
            t += 1_000;
            counts.push(step(&mut c, 0.0, t).workers);
        }
        assert_eq!(*counts.last().unwrap(), 2);
        assert!(counts.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
    }

    #[test]
    fn floor_from_the_capture_path_raises_at_once() {
        let mut c = Controller::new(2);
        let p = c.step(0.0, Level::Emergency, 0, 2, 16, 1000, 5, 100);
        assert_eq!(p.level, Level::Emergency);
    }
}
