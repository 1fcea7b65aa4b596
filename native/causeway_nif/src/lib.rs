//! Causeway's NIF glue: term conversion, the pipeline resource, NIF entry
//! points and messages back to the BEAM. The logic lives in `causeway_core`.

#[macro_use]
mod lean;

mod beam;
mod convert;
mod error;
mod handle;
mod pipeline;
mod query;
mod runtime;
mod term;
mod tracer;

pub mod atoms {
    rustler::atoms! {
        ok,
        error,
        nil,
        undefined,
        truncated,
        causeway_native,
        flushed,
        backpressure,
        worker,
        global,
        module,
        pid,
        runtime,
        tracer,
        undecodable,
        drop_newest,
        drop_oldest,
        panic,
        write_error,
        pause,
        previous,
        utilization,
        workers,
        batch_size,
        flush_interval_ms,
        dropped,
        __struct__,
        __exception__,
        message,
    }
}

rustler::init!("Elixir.Causeway.Native");
