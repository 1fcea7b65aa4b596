//! Causeway's native core: everything but the BEAM glue.
//!
//! - [`event`]: the event model, [`etf`]: the term format writer;
//! - [`ring`]: Layer 1 lock-free sharded rings (on [`mpmc`] queues),
//!   [`inflight`]: per-CPU section counts, [`ids`]: time-ordered ids,
//!   [`context`]: per-process capture context, [`clock`]: the capture clock;
//! - [`pipeline`]: Layer 2 writer pool and manager, [`correlator`],
//!   [`backpressure`], [`metrics`];
//! - [`store`]: RocksDB schema, [`store_faults`]: what faults on disk mean,
//!   [`store_perms`]: who may read and write a store directory,
//!   [`query`]: the queries.

pub mod backpressure;
pub mod clock;
pub mod config;
pub mod context;
pub mod correlator;
pub mod error;
pub mod etf;
pub mod event;
pub mod fasthash;
mod fuzz_corpus;
pub mod ids;
pub mod inflight;
pub mod metrics;
pub mod mpmc;
pub mod pipeline;
pub mod query;
pub mod ring;
pub mod store;
pub mod store_faults;
pub mod store_perms;

pub use error::{Error, Result};
