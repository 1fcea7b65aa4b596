//! Pipeline configuration: fixed at start (`Config`) and the part that can be
//! changed while running (`Tunables`, read with relaxed atomics on hot paths).

use crate::ring::Overflow;
use crate::{Error, Result};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[derive(Clone, Debug)]
pub struct Config {
    /// Ring shards (one per scheduler thread is the default on the Elixir side).
    pub shards: usize,
    /// Events per shard; a power of two.
    pub ring_size: usize,
    pub overflow: Overflow,
    pub workers_min: usize,
    pub workers_max: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    /// Byte budget of one captured term (args, result, message, state).
    pub max_term_bytes: usize,
    /// Nesting depth budget of one captured term.
    pub max_depth: usize,
    /// How long a half-correlation waits for its counterpart.
    pub correlation_ttl_ms: u64,
    /// Bound on pending half-correlations.
    pub max_pending: u64,
    /// Bound on per-process capture contexts.
    pub max_processes: usize,
    /// In the emergency level, keep one non-critical event in this many.
    pub emergency_sample: u32,
    /// Retries of a failed batch before it is dropped (and counted).
    pub max_retries: u32,
    pub retry_base_ms: u64,
    /// Native memory budget in bytes: the ring slots plus the payloads that
    /// do not fit in them. Captures that would take it further are refused
    /// and counted (`DropReason::MemoryBudget`). 0 = the slots + 512 MiB.
    pub memory_budget: u64,
    pub sync_writes: bool,
    /// What the store keeps (enforced in the background).
    pub retention: crate::store::RetentionPolicy,
    pub retention_interval_ms: u64,
    /// Keys whose values are never captured, as raw atom words (opaque here;
    /// the NIF glue compares them with the keys of captured maps and tuples).
    pub redact: Vec<u64>,
    /// `Some`: the flight recorder (events persisted only on a trigger).
    pub flight: Option<crate::pipeline::flight::FlightConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shards: 2,
            ring_size: 65_536,
            overflow: Overflow::DropNewest,
            workers_min: 2,
            workers_max: 16,
            batch_size: 1_000,
            flush_interval_ms: 5,
            max_term_bytes: 2_048,
            max_depth: 16,
            correlation_ttl_ms: 300_000,
            max_pending: 250_000,
            max_processes: 1_000_000,
            emergency_sample: 100,
            max_retries: 8,
            retry_base_ms: 10,
            memory_budget: 0,
            sync_writes: false,
            redact: Vec::new(),
            retention: crate::store::RetentionPolicy::default(),
            retention_interval_ms: 60_000,
            flight: None,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !self.ring_size.is_power_of_two() || self.ring_size < 2 {
            return bad(format!(
                "ring_size must be a power of two >= 2, got {}",
                self.ring_size
            ));
        }
        if self.ring_size > MAX_RING_SIZE {
            return bad(format!(
                "ring_size must be at most {MAX_RING_SIZE} (2^24), got {}",
                self.ring_size
            ));
        }
        if self.shards == 0 || self.shards > crate::ids::MAX_SHARDS {
            return bad(format!(
                "shards must be in 1..={}, got {}",
                crate::ids::MAX_SHARDS,
                self.shards
            ));
        }
        check_slot_memory(self.shards, self.ring_size, self.memory_budget)?;
        validate_workers(self.workers_min, self.workers_max)?;
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return bad(format!(
                "batch_size must be in 1..=1000000, got {}",
                self.batch_size
            ));
        }
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 60_000 {
            return bad(format!(
                "flush_interval_ms must be in 1..=60000, got {}",
                self.flush_interval_ms
            ));
        }
        check_term_budget(Some(self.max_term_bytes), Some(self.max_depth))?;
        if self.emergency_sample == 0 {
            return bad("emergency_sample must be at least 1".into());
        }
        Ok(())
    }
}

/// The largest ring, in events per shard (2 GiB of 128-byte slots).
pub const MAX_RING_SIZE: usize = 1 << 24;

/// The physical memory of this machine in bytes (`None` if unknown).
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it returns -1 when unknown.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return None;
    }
    (pages as u64).checked_mul(page as u64)
}

/// Checks what the rings would allocate up front (`shards` x `ring_size`
/// slots) before anything is allocated: it must fit in a quarter of the
/// machine's memory and, when a `memory_budget` is given, stay below it.
pub fn check_slot_memory(shards: usize, ring_size: usize, memory_budget: u64) -> Result<()> {
    let bytes = crate::ring::Rings::slot_bytes_for(shards, ring_size);
    let shape = format!(
        "{shards} shards x {ring_size} events x {} B",
        crate::ring::SLOT_BYTES
    );
    if let Some(phys) = physical_memory() {
        if bytes > phys / 4 {
            return Err(Error::InvalidArgument(format!(
                "the rings would take {bytes} B ({shape}), more than a quarter of this machine's \
                 {phys} B of memory; lower ring_size or shards"
            )));
        }
    }
    let fixed = bytes.saturating_add(crate::context::Contexts::table_bytes());
    if memory_budget != 0 && fixed >= memory_budget {
        return Err(Error::InvalidArgument(format!(
            "memory_budget ({memory_budget} B) must exceed the ring slots and the context table \
             ({fixed} B: {shape}, and {} B); raise it or lower ring_size or shards",
            crate::context::Contexts::table_bytes()
        )));
    }
    Ok(())
}

/// The deepest a captured term is walked: the encoder recurses on the
/// caller's scheduler stack, and reading a term back recurses on a dirty
/// scheduler's (320 KB by default).
pub const MAX_DEPTH_LIMIT: usize = 1_000;
/// The largest `max_term_bytes` (ETF lengths are 32-bit; a capture this big
/// already costs the traced process milliseconds).
pub const MAX_TERM_BYTES_LIMIT: usize = 64 << 20;

/// `max_term_bytes` in 64..=64 MiB and `max_depth` in 1..=1000, when given.
pub fn check_term_budget(max_term_bytes: Option<usize>, max_depth: Option<usize>) -> Result<()> {
    if let Some(b) = max_term_bytes {
        if !(64..=MAX_TERM_BYTES_LIMIT).contains(&b) {
            return Err(Error::InvalidArgument(format!(
                "max_term_bytes must be in 64..={MAX_TERM_BYTES_LIMIT}, got {b}"
            )));
        }
    }
    if let Some(d) = max_depth {
        if !(1..=MAX_DEPTH_LIMIT).contains(&d) {
            return Err(Error::InvalidArgument(format!(
                "max_depth must be in 1..={MAX_DEPTH_LIMIT}, got {d}"
            )));
        }
    }
    Ok(())
}

pub fn validate_workers(min: usize, max: usize) -> Result<()> {
    if min < 1 || max > 16 || min > max {
        return Err(Error::InvalidArgument(format!(
            "workers must be {{min, max}} with 1 <= min <= max <= 16, got {{{min}, {max}}}"
        )));
    }
    Ok(())
}

/// The settings `Causeway.configure/1` may change while running.
pub struct Tunables {
    pub batch_size: AtomicUsize,
    pub flush_interval_ms: AtomicU64,
    pub workers_min: AtomicUsize,
    pub workers_max: AtomicUsize,
    pub max_term_bytes: AtomicUsize,
    pub max_depth: AtomicUsize,
    pub emergency_sample: AtomicU32,
    pub memory_budget: AtomicU64,
}

impl Tunables {
    pub fn new(c: &Config) -> Tunables {
        Tunables {
            batch_size: AtomicUsize::new(c.batch_size),
            flush_interval_ms: AtomicU64::new(c.flush_interval_ms),
            workers_min: AtomicUsize::new(c.workers_min),
            workers_max: AtomicUsize::new(c.workers_max),
            max_term_bytes: AtomicUsize::new(c.max_term_bytes),
            max_depth: AtomicUsize::new(c.max_depth),
            emergency_sample: AtomicU32::new(c.emergency_sample),
            memory_budget: AtomicU64::new(c.memory_budget),
        }
    }

    pub fn get(&self, a: &AtomicUsize) -> usize {
        a.load(Ordering::Relaxed)
    }
}

/// A runtime change: only the fields that are `Some` change.
#[derive(Clone, Debug, Default)]
pub struct ConfigUpdate {
    pub batch_size: Option<usize>,
    pub flush_interval_ms: Option<u64>,
    pub workers: Option<(usize, usize)>,
    pub max_term_bytes: Option<usize>,
    pub max_depth: Option<usize>,
    pub emergency_sample: Option<u32>,
    pub correlation_ttl_ms: Option<u64>,
    pub memory_budget: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::default().validate().unwrap();
        let c = Config {
            ring_size: 1000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("ring_size"));
        let c = Config {
            workers_min: 4,
            workers_max: 2,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("workers"));
        let c = Config {
            workers_max: 17,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            batch_size: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        for (shards, ring) in [(1, 1 << 40), (64, 1 << 24), (1, 1 << 25)] {
            let c = Config {
                shards,
                ring_size: ring,
                ..Config::default()
            };
            assert!(c.validate().unwrap_err().to_string().contains("ring"));
        }
        let c = Config {
            ring_size: 1 << 16,
            memory_budget: 1 << 20,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("memory_budget"));
        for (bytes, depth, what) in [
            (63, 16, "max_term_bytes"),
            (MAX_TERM_BYTES_LIMIT + 1, 16, "max_term_bytes"),
            (2048, 0, "max_depth"),
            (2048, MAX_DEPTH_LIMIT + 1, "max_depth"),
        ] {
            let c = Config {
                max_term_bytes: bytes,
                max_depth: depth,
                ..Config::default()
            };
            assert!(c.validate().unwrap_err().to_string().contains(what));
        }
    }
}
