//! `lean_nif!`: registers a NIF the way `#[rustler::nif]` does, minus the
//! `Vec` of arguments that rustler 0.39's generated wrapper allocates and
//! frees on every call (a malloc and a free: ~7% of a capture, measured with
//! perf). The arguments are handed over as an array on the stack; decoding,
//! panics (caught, raised as `:nif_panicked`) and errors are handled exactly
//! as rustler does; a success is encoded directly. Used for the calls that
//! run on the traced code's path: the `Causeway.Runtime` captures and the
//! erl_tracer callbacks.

/// The NIF signature `enif_schedule_nif` takes.
pub type RawNif = unsafe extern "C" fn(
    *mut rustler::sys::ErlNifEnv,
    rustler::codegen_runtime::c_int,
    *const rustler::sys::ErlNifTerm,
) -> rustler::sys::ErlNifTerm;

/// Moves the running NIF call to `func` on a dirty scheduler of kind
/// `flags`, with the same arguments.
///
/// # Safety
/// `env`, `argc` and `argv` must be those the running NIF was called with,
/// and `name` must end with a NUL byte.
pub unsafe fn reschedule(
    env: *mut rustler::sys::ErlNifEnv,
    name: &'static str,
    flags: rustler::sys::ErlNifDirtyTaskFlags,
    func: RawNif,
    argc: rustler::codegen_runtime::c_int,
    argv: *const rustler::sys::ErlNifTerm,
) -> rustler::sys::ErlNifTerm {
    unsafe {
        rustler::sys::enif_schedule_nif(
            env,
            name.as_ptr() as *const rustler::codegen_runtime::c_char,
            flags as i32,
            func,
            argc,
            argv,
        )
    }
}

/// `lean_nif!("erlang_name", arity, |env, args| expr)`: `expr` is a
/// `rustler::NifResult<T>` (`T: Encoder`) computed from `env` and `args`
/// (`[Term; arity]`); `?` works inside it.
/// `lean_nif!("erlang_name", arity, dirty_if pred, |env, args| expr)`: the
/// same, for a capture: when `pred(&args)` says the call would be long (a
/// big term to encode), it is moved to a dirty CPU scheduler with
/// `enif_schedule_nif` and runs there instead of holding the caller's
/// normal scheduler; and under `overflow: :wait`, when the ring is nearly
/// full (`runtime::must_wait`), it moves to a dirty I/O scheduler, waits
/// there for room and records (the caller waits; no scheduler spins).
macro_rules! lean_nif {
    ($erl:literal, $arity:literal, |$env:ident, $args:ident| $call:expr) => {
        lean_nif!(@nif $erl, $arity, (|_a: &[rustler::Term]| false), false, |$env, $args| $call);
    };
    ($erl:literal, $arity:literal, dirty_if $pred:path, |$env:ident, $args:ident| $call:expr) => {
        lean_nif!(@nif $erl, $arity, $pred, true, |$env, $args| $call);
    };
    (@nif $erl:literal, $arity:literal, $pred:expr, $waits:expr, |$env:ident, $args:ident| $call:expr) => {
        rustler::codegen_runtime::inventory::submit!(rustler::Nif {
            name: concat!($erl, "\0").as_ptr() as *const rustler::codegen_runtime::c_char,
            arity: $arity,
            flags: rustler::SchedulerFlags::Normal as rustler::codegen_runtime::c_uint,
            raw_func: {
                unsafe fn body(
                    nif_env: *mut rustler::sys::ErlNifEnv,
                    argc: rustler::codegen_runtime::c_int,
                    argv: *const rustler::sys::ErlNifTerm,
                    may_move: bool,
                ) -> rustler::sys::ErlNifTerm {
                    let lifetime = ();
                    let $env = unsafe { rustler::Env::new(&lifetime, nif_env) };
                    if argc != $arity {
                        // the VM calls a NIF with the arity it was registered with
                        return unsafe { rustler::sys::enif_make_badarg(nif_env) };
                    }
                    let raw: &[rustler::sys::ErlNifTerm] = if $arity == 0 || argv.is_null() {
                        &[]
                    } else {
                        unsafe { std::slice::from_raw_parts(argv, $arity) }
                    };
                    let $args: [rustler::Term; $arity] =
                        std::array::from_fn(|i| unsafe { rustler::Term::new($env, raw[i]) });
                    // the closure borrows the arguments: moving them in costs a
                    // store-forwarding stall per call (8-byte stores read back as 16)
                    let $args = &$args;
                    if may_move && $waits && crate::runtime::must_wait() {
                        // overflow: :wait and the ring nearly full: wait on a
                        // dirty I/O scheduler, never on this one
                        return unsafe {
                            $crate::lean::reschedule(
                                nif_env,
                                concat!($erl, "\0"),
                                rustler::sys::ERL_NIF_DIRTY_JOB_IO_BOUND,
                                wait_func,
                                argc,
                                argv,
                            )
                        };
                    }
                    if may_move {
                        let pred = $pred;
                        let long = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            pred(&$args[..])
                        }))
                        .unwrap_or(false);
                        if long {
                            return unsafe {
                                $crate::lean::reschedule(
                                    nif_env,
                                    concat!($erl, "\0"),
                                    rustler::sys::ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                    dirty_func,
                                    argc,
                                    argv,
                                )
                            };
                        }
                    }
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                        || -> rustler::NifResult<_> { $call },
                    ));
                    match result {
                        // the common case, without building a `NifReturned`
                        Ok(Ok(v)) => rustler::Encoder::encode(&v, $env).as_c_arg(),
                        other => unsafe {
                            rustler::codegen_runtime::handle_nif_result(other, $env).apply($env)
                        },
                    }
                }
                unsafe extern "C" fn dirty_func(
                    nif_env: *mut rustler::sys::ErlNifEnv,
                    argc: rustler::codegen_runtime::c_int,
                    argv: *const rustler::sys::ErlNifTerm,
                ) -> rustler::sys::ErlNifTerm {
                    causeway_core::ring::with_blocking(|| unsafe { body(nif_env, argc, argv, false) })
                }
                #[allow(dead_code)]
                unsafe extern "C" fn wait_func(
                    nif_env: *mut rustler::sys::ErlNifEnv,
                    argc: rustler::codegen_runtime::c_int,
                    argv: *const rustler::sys::ErlNifTerm,
                ) -> rustler::sys::ErlNifTerm {
                    crate::runtime::wait_for_room();
                    causeway_core::ring::with_blocking(|| unsafe { body(nif_env, argc, argv, false) })
                }
                unsafe extern "C" fn nif_func(
                    nif_env: *mut rustler::sys::ErlNifEnv,
                    argc: rustler::codegen_runtime::c_int,
                    argv: *const rustler::sys::ErlNifTerm,
                ) -> rustler::sys::ErlNifTerm {
                    unsafe { body(nif_env, argc, argv, true) }
                }
                nif_func
            },
        });
    };
}
