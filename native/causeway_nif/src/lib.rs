//! Causeway's NIF glue: term conversion, the pipeline resource, NIF entry
//! points and messages back to the BEAM. The logic lives in `causeway_core`.

#[macro_use]
mod lean;

mod atom_budget;
mod beam;
mod convert;
mod error;
mod flight;
mod handle;
mod pipeline;
mod query;
mod runtime;
mod term;
mod tracer;
mod watch;

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
        incident,
        retention,
        global,
        module,
        pid,
        runtime,
        tracer,
        watch,
        receive,
        send,
        state,
        handled,
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
        clock,
        direct_term_words,
        direct_boxed_terms,
    }
}

/// How this build captures on this machine (`Causeway.metrics().capture_path`):
/// the clock it reads (`:tsc` or `:os`, see `causeway_core::clock`; `:uninit`
/// until an instance has started) and whether the encoder reads small
/// integers, atoms and lists straight from their term words, and heap
/// binaries, floats and tuples from the heap (see `term.rs`).
#[rustler::nif]
fn native_info(env: rustler::Env) -> rustler::NifResult<rustler::Term> {
    use rustler::Encoder;
    let clock = rustler::Atom::from_str(env, causeway_core::clock::source())?;
    rustler::Term::map_new(env)
        .map_put(atoms::clock().encode(env), clock.encode(env))?
        .map_put(
            atoms::direct_term_words().encode(env),
            term::direct_words().encode(env),
        )?
        .map_put(
            atoms::direct_boxed_terms().encode(env),
            term::direct_boxed().encode(env),
        )
}

rustler::init!("Elixir.Causeway.Native", load = load);

fn load(env: rustler::Env, _info: rustler::Term) -> bool {
    term::check_words(env);
    // (the clock is calibrated when an instance starts, on a dirty scheduler:
    // it spins ~2 ms)
    true
}
