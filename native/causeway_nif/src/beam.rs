//! The BEAM side of the core's `Resolver` and `Notifier`: raw term words to
//! names, clocks, and messages to the owner process.

use crate::atoms;
use causeway_core::backpressure::Level;
use causeway_core::etf;
use causeway_core::event::PidRec;
use causeway_core::pipeline::{LevelInfo, Notifier, Resolver};
use rustler::sys;
use rustler::{Atom, Encoder, LocalPid, OwnedEnv, Term};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicI64, Ordering};

thread_local! {
    static ENV: OwnedEnv = OwnedEnv::new();
}

/// The machine word of a term (atoms and local pids are immediates: their word
/// identifies them for the life of the VM).
#[inline]
pub fn word(t: sys::ErlNifTerm) -> u64 {
    // ErlNifTerm is #[repr(transparent)] over the platform word.
    unsafe { std::mem::transmute::<sys::ErlNifTerm, usize>(t) as u64 }
}

/// The term of a machine word taken from `word`.
#[inline]
pub fn term_of(w: u64) -> sys::ErlNifTerm {
    unsafe { std::mem::transmute::<usize, sys::ErlNifTerm>(w as usize) }
}

/// The word of a local pid.
#[inline]
pub fn pid_word(env: rustler::Env, p: &LocalPid) -> u64 {
    word(p.encode(env).as_c_arg())
}

/// Erlang monotonic time (ns), on any thread, cheaply: our own monotonic
/// clock (the TSC, or one vDSO call) plus a calibrated difference to the
/// VM's clock. The difference is re-read from the VM (`enif_monotonic_time`,
/// which only works on scheduler threads and is several times dearer) at
/// most every 10 ms, by whichever scheduler thread captures first after that.
#[inline]
pub fn monotonic_ns() -> i64 {
    let own = own_ns();
    if own.wrapping_sub(CALIB_OWN_AT.load(Ordering::Relaxed)) > 10_000_000 {
        recalibrate(own);
    }
    own + CALIB_DIFF.load(Ordering::Relaxed)
}

#[cold]
fn recalibrate(own: i64) {
    let t = unsafe { sys::enif_monotonic_time(sys::ErlNifTimeUnit::ERL_NIF_NSEC) };
    if t == i64::MIN {
        return; // not a scheduler thread: keep the last calibration
    }
    CALIB_DIFF.store(t - own_ns(), Ordering::Relaxed);
    CALIB_OWN_AT.store(own, Ordering::Relaxed);
    let o = unsafe { sys::enif_time_offset(sys::ErlNifTimeUnit::ERL_NIF_NSEC) };
    if o != i64::MIN {
        OFFSET.store(o, Ordering::Relaxed);
    }
}

/// When (our clock) the calibration was last refreshed.
static CALIB_OWN_AT: AtomicI64 = AtomicI64::new(i64::MIN / 2);
/// Erlang monotonic time minus our clock: one word, so a reader never sees
/// half of an update.
static CALIB_DIFF: AtomicI64 = AtomicI64::new(0);
/// Erlang system time minus Erlang monotonic time.
static OFFSET: AtomicI64 = AtomicI64::new(0);

/// Our monotonic clock (`CLOCK_MONOTONIC` ns, read from the TSC where that
/// is safe: see `causeway_core::clock`).
#[inline]
fn own_ns() -> i64 {
    causeway_core::clock::now_ns()
}

/// Calibrates now (call from a scheduler thread, e.g. when a pipeline starts).
pub fn calibrate() {
    causeway_core::clock::init();
    recalibrate(own_ns());
}

/// Erlang system time minus monotonic time (ns), as of the last calibration.
#[inline]
pub fn time_offset_ns() -> i64 {
    OFFSET.load(Ordering::Relaxed)
}

/// `term_to_binary` of a term into owned bytes (None if the VM refuses).
pub fn term_bytes(env: *mut sys::ErlNifEnv, t: sys::ErlNifTerm) -> Option<Vec<u8>> {
    let mut bin = MaybeUninit::<sys::ErlNifBinary>::uninit();
    if unsafe { sys::enif_term_to_binary(env, t, bin.as_mut_ptr()) } == 0 {
        return None;
    }
    let mut bin = unsafe { bin.assume_init() };
    let v = unsafe { std::slice::from_raw_parts(bin.data, bin.size) }.to_vec();
    unsafe { sys::enif_release_binary(&mut bin) };
    Some(v)
}

pub struct Beam;

impl Resolver for Beam {
    fn pid(&self, raw: u64) -> PidRec {
        ENV.with(|e| {
            e.run(|env| {
                term_bytes(env.as_c_arg(), term_of(raw))
                    .and_then(|b| etf::parse_pid(&b).ok())
                    .unwrap_or_default()
            })
        })
    }

    fn atom(&self, raw: u64) -> Option<String> {
        ENV.with(|e| {
            e.run(|env| {
                let mut buf = [0u8; 256];
                let n = unsafe {
                    sys::enif_get_atom(
                        env.as_c_arg(),
                        term_of(raw),
                        buf.as_mut_ptr() as *mut std::os::raw::c_char,
                        buf.len() as u32,
                        sys::ErlNifCharEncoding::ERL_NIF_LATIN1,
                    )
                };
                if n > 0 {
                    return Some(etf::latin1_to_string(&buf[..n as usize - 1]));
                }
                // Not Latin-1: read its UTF-8 name from the external format.
                let b = term_bytes(env.as_c_arg(), term_of(raw))?;
                etf::parse_atom(&b).ok()
            })
        })
    }

    fn now_mono_ns(&self) -> i64 {
        monotonic_ns()
    }
    fn time_offset_ns(&self) -> i64 {
        time_offset_ns()
    }
}

/// Sends `{:causeway_native, ...}` messages to the owner process.
pub struct OwnerNotifier {
    pub owner: LocalPid,
}

fn on_managed_thread() -> bool {
    unsafe { sys::enif_thread_type() != sys::ERL_NIF_THR_UNDEFINED }
}

impl OwnerNotifier {
    fn send<F>(&self, make: F)
    where
        F: for<'a> FnOnce(rustler::Env<'a>) -> Term<'a> + Send + 'static,
    {
        let owner = self.owner;
        let job = move || {
            let mut env = OwnedEnv::new();
            let _ = env.send_and_clear(&owner, make);
        };
        if on_managed_thread() {
            // enif_send from a scheduler needs that scheduler's env; a helper
            // thread keeps this path simple (it is taken only on close).
            let _ = std::thread::Builder::new()
                .name("causeway-notify".into())
                .spawn(job);
        } else {
            job();
        }
    }
}

impl Notifier for OwnerNotifier {
    fn flushed(&self, token: u64, result: Result<(), String>) {
        self.send(move |env| {
            let r = match result {
                Ok(()) => atoms::ok().encode(env),
                Err(m) => (atoms::error(), m).encode(env),
            };
            (atoms::causeway_native(), atoms::flushed(), token, r).encode(env)
        });
    }

    fn backpressure(&self, level: Level, info: &LevelInfo) {
        let info = info.clone();
        self.send(move |env| {
            let lvl = Atom::from_str(env, level.name())
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| atoms::nil().encode(env));
            let prev = Atom::from_str(env, info.previous.name())
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| atoms::nil().encode(env));
            let keys = [
                atoms::previous().encode(env),
                atoms::utilization().encode(env),
                atoms::workers().encode(env),
                atoms::batch_size().encode(env),
                atoms::flush_interval_ms().encode(env),
                atoms::dropped().encode(env),
            ];
            let vals = [
                prev,
                info.utilization.encode(env),
                info.workers.encode(env),
                info.batch_size.encode(env),
                info.flush_interval_ms.encode(env),
                info.dropped.encode(env),
            ];
            let map = Term::map_from_term_arrays(env, &keys, &vals)
                .unwrap_or_else(|_| atoms::nil().encode(env));
            (atoms::causeway_native(), atoms::backpressure(), lvl, map).encode(env)
        });
    }

    fn worker_event(&self, worker: usize, what: &str, detail: &str) {
        let what = what.to_string();
        let detail = detail.to_string();
        self.send(move |env| {
            let w = Atom::from_str(env, &what)
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| atoms::error().encode(env));
            let idx: i64 = if worker == usize::MAX {
                -1
            } else {
                worker as i64
            };
            (atoms::causeway_native(), atoms::worker(), w, idx, detail).encode(env)
        });
    }

    fn incident(&self, incident: &causeway_core::store::Incident) {
        let inc = incident.clone();
        self.send(move |env| {
            (
                atoms::causeway_native(),
                atoms::incident(),
                crate::flight::incident_term(env, &inc),
            )
                .encode(env)
        });
    }
}
