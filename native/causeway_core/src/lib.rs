//! Causeway's native core: everything but the BEAM glue.
//!
//! - [`event`]: the event model, [`etf`]: the term format writer;
//! - [`ring`]: Layer 1 lock-free sharded rings (on [`mpmc`] queues),
//!   [`inflight`]: per-CPU section counts, [`ids`]: time-ordered ids,
//!   [`context`]: per-process capture context, [`clock`]: the capture clock;
//! - [`pipeline`]: Layer 2 writer pool and manager, [`correlator`],
//!   [`backpressure`], [`metrics`];
//! - [`store`]: RocksDB schema and storage (keys, posting lists, the on-disk
//!   codec, names, writing, reading, retention, tuning, what faults on disk
//!   mean, who may read and write a store directory), [`query`]: the queries.

pub mod backpressure;
pub mod bufpool;
pub mod clock;
pub mod config;
pub mod context;
pub mod correlator;
pub mod error;
pub mod etf;
pub mod event;
pub mod exit_guard;
pub mod fasthash;
mod fuzz_corpus;
pub mod heap;
pub mod ids;
pub mod inflight;
pub mod message_key;
pub mod metrics;
pub mod mpmc;
pub mod pipeline;
pub mod query;
pub mod ring;
pub mod store;

pub use error::{Error, Result};
