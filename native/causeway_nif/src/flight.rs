//! The flight recorder's NIFs: a snapshot of the window on demand, the
//! incidents a store holds, and how an incident looks in Elixir (a map the
//! Elixir side turns into `%Causeway.Incident{}`).

use crate::error::Nif;
use crate::handle::Handle;
use causeway_core::store::Incident;
use rustler::{Encoder, Env, NifMap, NifResult, ResourceArc, Term};

#[derive(NifMap)]
struct IncidentMap {
    id: u64,
    trigger: String,
    detail: String,
    trigger_event: u64,
    wall_ns: i64,
    first_id: u64,
    last_id: u64,
    events: u64,
    bytes: u64,
    cone: bool,
}

/// An incident as a map with string `trigger` (the Elixir side maps it to
/// one of its fixed atoms).
pub fn incident_term<'a>(env: Env<'a>, i: &Incident) -> Term<'a> {
    IncidentMap {
        id: i.id,
        trigger: i.trigger.clone(),
        detail: i.detail.clone(),
        trigger_event: i.trigger_event,
        wall_ns: i.wall_ns,
        first_id: i.first_id,
        last_id: i.last_id,
        events: i.events,
        bytes: i.bytes,
        cone: i.cone,
    }
    .encode(env)
}

/// Persists the window now: `{:ok, incident}`. `telemetry` marks a snapshot
/// made by a `:telemetry` event.
#[rustler::nif(schedule = "DirtyIo")]
fn pipeline_snapshot<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    telemetry: bool,
    reason: String,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let kind = if telemetry { "telemetry" } else { "snapshot" };
    let inc = h.pipeline()?.flight_snapshot(kind, &reason).nif()?;
    Ok((crate::atoms::ok(), incident_term(env, &inc)))
}

/// Every incident recorded in the store, oldest first.
#[rustler::nif(schedule = "DirtyIo")]
fn store_incidents<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let all = h.store()?.incidents().nif()?;
    let terms: Vec<Term> = all.iter().map(|i| incident_term(env, i)).collect();
    Ok((crate::atoms::ok(), terms.encode(env)))
}
