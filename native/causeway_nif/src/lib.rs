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

/// The first CPU feature this build was compiled for (`.cargo/config.toml`)
/// that the CPU running it lacks: checked before anything else runs.
fn missing_cpu_feature() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("sse4.2") {
            return Some("SSE4.2");
        }
        if !std::arch::is_x86_feature_detected!("pclmulqdq") {
            return Some("PCLMULQDQ");
        }
        if !std::arch::is_x86_feature_detected!("popcnt") {
            return Some("POPCNT");
        }
    }
    None
}

fn load(env: rustler::Env, _info: rustler::Term) -> bool {
    if let Some(missing) = missing_cpu_feature() {
        // load_nif then fails with {:error, {:load_failed, _}}; the VM stays up
        eprintln!(
            "causeway: this CPU lacks {missing}, which this build of the native library \
             needs (see .cargo/config.toml); not loading it"
        );
        return false;
    }
    term::check_words(env);
    // (the clock is calibrated when an instance starts, on a dirty scheduler:
    // it spins ~2 ms)
    true
}
