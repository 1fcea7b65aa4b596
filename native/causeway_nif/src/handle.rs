//! The resource Elixir holds: a running pipeline (and its store), or a store
//! opened read-only for queries.

use causeway_core::pipeline::Pipeline;
use causeway_core::store::Store;
use std::sync::{Arc, Mutex};

pub struct Handle {
    pub pipeline: Option<Arc<Pipeline>>,
    /// Taken out on close: the database closes when the last query using it
    /// ends, not when the BEAM happens to collect this handle.
    pub store: Mutex<Option<Arc<Store>>>,
    /// `atoms: :create`: the atoms its queries may still create.
    pub atoms: Option<Arc<crate::atom_budget::AtomBudget>>,
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
    /// With a pipeline, the pipeline owns the store (so it can reopen it after
    /// a storage failure); the handle keeps one only for query-only stores.
    pub fn new(pipeline: Option<Arc<Pipeline>>, store: Arc<Store>) -> Handle {
        let own = if pipeline.is_some() {
            None
        } else {
            Some(store)
        };
        Handle {
            pipeline,
            store: Mutex::new(own),
            atoms: None,
        }
    }

    pub fn pipeline(&self) -> Result<&Arc<Pipeline>, rustler::Error> {
        match &self.pipeline {
            Some(p) if !p.is_closed() => Ok(p),
            Some(_) => Err(crate::error::core_error(causeway_core::Error::Closed)),
            None => Err(crate::error::core_error(causeway_core::Error::ReadOnly(
                "this store was opened for queries only: no pipeline".into(),
            ))),
        }
    }

    /// The store, or `{:error, {:closed, _}}` once closed.
    pub fn store(&self) -> Result<Arc<Store>, rustler::Error> {
        crate::atom_budget::enter(self.atoms.clone());
        if let Some(b) = &self.atoms {
            if b.is_exhausted() {
                return Err(crate::error::core_error(
                    causeway_core::Error::InvalidArgument(format!(
                        "this store's queries created the {} atoms allowed by atoms: :create \
                         (names past it came back as binaries); open it again with a larger \
                         :atom_limit, or without atoms: :create",
                        b.limit
                    )),
                ));
            }
        }
        if let Some(p) = &self.pipeline {
            return p
                .store()
                .ok_or_else(|| crate::error::core_error(causeway_core::Error::Closed));
        }
        self.store
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| crate::error::core_error(causeway_core::Error::Closed))
    }

    /// Closes the pipeline (draining it) and lets go of the store.
    pub fn close(&self) -> causeway_core::Result<()> {
        let r = match &self.pipeline {
            Some(p) => {
                crate::runtime::clear_default_if(p);
                let r = p.close();
                p.release_store();
                r
            }
            None => Ok(()),
        };
        if let Ok(mut s) = self.store.lock() {
            s.take();
        }
        r
    }
}
