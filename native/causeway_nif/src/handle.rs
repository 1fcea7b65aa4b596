//! The resource Elixir holds: a running pipeline (and its store), or a store
//! opened read-only for queries.

use causeway_core::pipeline::Pipeline;
use causeway_core::store::Store;
use std::sync::Arc;

pub struct Handle {
    pub pipeline: Option<Arc<Pipeline>>,
    pub store: Arc<Store>,
    /// Raw atom words of the keys whose values are never captured.
    pub redact: Vec<u64>,
}

#[rustler::resource_impl]
impl rustler::Resource for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // A handle collected without `close` still stops its threads; they drain
        // the rings and exit on their own (never blocking the collecting scheduler).
        if let Some(p) = &self.pipeline {
            p.shutdown_async();
        }
    }
}

impl Handle {
    pub fn pipeline(&self) -> Result<&Arc<Pipeline>, rustler::Error> {
        match &self.pipeline {
            Some(p) => Ok(p),
            None => Err(crate::error::core_error(causeway_core::Error::ReadOnly(format!(
                "{} was opened read-only: no pipeline",
                self.store.path().display()
            )))),
        }
    }
}

