//! `Causeway.Query`: every query runs on a dirty I/O scheduler.

use crate::beam::term_bytes;
use crate::convert::{atom, event_struct, links_term, TermCache};
use crate::error::{arg_error, core_error, Nif};
use crate::handle::Handle;
use causeway_core::etf;
use causeway_core::event::EventType;
use causeway_core::query::{self, CallNode, Filter, PidMatch};
use causeway_core::store::{Lookups, Store, StoreOptions};
use rustler::{Encoder, Env, NifMap, NifResult, ResourceArc, Term};
use std::sync::Arc;

pub fn pid_match(t: Term, what: &str) -> NifResult<PidMatch> {
    if t.get_type() != rustler::TermType::Pid {
        return Err(arg_error(format!("{what} must be a pid, got: {t:?}")));
    }
    let bytes = term_bytes(t.get_env().as_c_arg(), t.as_c_arg())
        .ok_or_else(|| arg_error(format!("{what} could not be encoded")))?;
    let p = etf::parse_pid(&bytes).map_err(|e| arg_error(format!("{what}: {e}")))?;
    // another node's pid matches only events of that node (stores of several
    // nodes hold each other's pid numbers); this node's pid matches by number
    // and serial, as its events may be stored under the name the node had
    // before it was distributed
    let local = t.decode::<rustler::LocalPid>().is_ok();
    Ok(PidMatch {
        id: p.id,
        serial: p.serial,
        node: (!local).then(|| p.node.to_string()),
    })
}

#[derive(NifMap)]
struct QueryFilter<'a> {
    pid: Term<'a>,
    types: Vec<String>,
    module: Option<String>,
    function: Option<String>,
    arity: Option<u32>,
    call_id: Option<u64>,
    since: Option<u64>,
    until: Option<u64>,
    limit: usize,
    reverse: bool,
    after: Option<u64>,
    links: bool,
    scan: bool,
}

fn filter_of(q: &QueryFilter) -> NifResult<Filter> {
    let pid = if q.pid.is_atom() {
        None
    } else {
        Some(pid_match(q.pid, ":pid")?)
    };
    let mut types = Vec::new();
    for t in &q.types {
        types.push(
            EventType::from_name(t)
                .ok_or_else(|| arg_error(format!("unknown event type {t:?}")))?,
        );
    }
    Ok(Filter {
        pid,
        types,
        module: q.module.clone(),
        function: q.function.clone(),
        arity: q.arity,
        call_id: q.call_id,
        limit: q.limit,
        reverse: q.reverse,
        after: q.after,
        force_scan: q.scan,
        ..Default::default()
    }
    .with_time(
        q.since.map(|s| s.min(i64::MAX as u64) as i64),
        q.until.map(|u| u.min(i64::MAX as u64) as i64),
    ))
}

fn with_links<'a>(
    env: Env<'a>,
    lk: &mut Lookups,
    e: &causeway_core::event::StoredEvent,
    links: bool,
    cache: &mut TermCache<'a>,
) -> NifResult<Term<'a>> {
    if links {
        let l = lk.links_of(e).nif()?;
        Ok(event_struct(env, e, Some(&l), cache))
    } else {
        Ok(event_struct(env, e, None, cache))
    }
}

/// `{:ok, {events, next_cursor | nil, index}}`
#[rustler::nif(schedule = "DirtyIo")]
fn query_events<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    q: QueryFilter<'a>,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut lk = store.lookups();
    let mut cache = TermCache::default();
    let f = filter_of(&q)?;
    let page = query::events(&store, &f).nif()?;
    let mut out = Vec::with_capacity(page.events.len());
    for e in &page.events {
        out.push(with_links(env, &mut lk, e, q.links, &mut cache)?);
    }
    let next = match page.next {
        Some(n) => n.encode(env),
        None => crate::atoms::nil().encode(env),
    };
    Ok((
        crate::atoms::ok(),
        (out, next, atom(env, page.index)).encode(env),
    ))
}

#[rustler::nif(schedule = "DirtyIo")]
fn query_event<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    id: u64,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut lk = store.lookups();
    let mut cache = TermCache::default();
    match store.get(id).nif()? {
        Some(e) => Ok((
            crate::atoms::ok(),
            with_links(env, &mut lk, &e, true, &mut cache)?,
        )),
        None => Err(core_error(causeway_core::Error::NotFound(format!(
            "event {id}"
        )))),
    }
}

/// `{entry, exit | nil, [child]}`, built bottom-up with an explicit stack:
/// a tree records a recursion, which can be deeper than this dirty
/// scheduler's stack.
fn node_term<'a>(env: Env<'a>, root: &CallNode, cache: &mut TermCache<'a>) -> NifResult<Term<'a>> {
    struct Open<'n, 'a> {
        node: &'n CallNode,
        next: usize,
        kids: Vec<Term<'a>>,
    }
    fn open<'n, 'a>(node: &'n CallNode) -> Open<'n, 'a> {
        Open {
            node,
            next: 0,
            kids: Vec::with_capacity(node.children.len()),
        }
    }
    let mut stack = vec![open(root)];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.node.children.get(top.next) {
            top.next += 1;
            stack.push(open(child));
            continue;
        }
        let Some(done) = stack.pop() else { break };
        let n = done.node;
        let entry = event_struct(env, &n.entry, Some(&n.entry_links), cache);
        let exit = match &n.exit {
            Some(x) => event_struct(env, x, Some(&n.exit_links), cache),
            None => crate::atoms::nil().encode(env),
        };
        let term = (entry, exit, done.kids).encode(env);
        match stack.last_mut() {
            Some(parent) => parent.kids.push(term),
            None => return Ok(term),
        }
    }
    Err(rustler::Error::Term(Box::new("empty call tree")))
}

/// A call id → `{:ok, node}`; a pid → `{:ok, [node]}` (its top-level calls).
#[rustler::nif(schedule = "DirtyIo")]
fn query_call_tree<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    root: Term<'a>,
    max_nodes: usize,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut cache = TermCache::default();
    if let Ok(id) = root.decode::<u64>() {
        let n = query::call_tree(&store, id, max_nodes).nif()?;
        return Ok((crate::atoms::ok(), node_term(env, &n, &mut cache)?));
    }
    let pid = pid_match(root, "call_tree's argument (a call id or a pid)")?;
    let trees = query::call_trees_of(&store, &pid, max_nodes).nif()?;
    let mut out = Vec::with_capacity(trees.len());
    for t in &trees {
        out.push(node_term(env, t, &mut cache)?);
    }
    Ok((crate::atoms::ok(), out.encode(env)))
}

/// `{:ok, [{event, via_link | nil}]}` from the event back to its root cause.
#[rustler::nif(schedule = "DirtyIo")]
fn query_causal_chain<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    id: u64,
    max: usize,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut lk = store.lookups();
    let mut cache = TermCache::default();
    let chain = query::causal_chain(&store, id, max.max(1)).nif()?;
    let mut out = Vec::with_capacity(chain.len());
    for (e, via) in &chain {
        let via = match via {
            Some(k) => atom(env, k.name()),
            None => crate::atoms::nil().encode(env),
        };
        out.push((with_links(env, &mut lk, e, true, &mut cache)?, via).encode(env));
    }
    Ok((crate::atoms::ok(), out.encode(env)))
}

/// `{:ok, [{send, receive | nil}]}` between two processes, oldest first.
#[rustler::nif(schedule = "DirtyIo")]
fn query_message_flow<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    a: Term<'a>,
    b: Term<'a>,
    limit: usize,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut lk = store.lookups();
    let mut cache = TermCache::default();
    let (a, b) = (
        pid_match(a, "the first pid")?,
        pid_match(b, "the second pid")?,
    );
    let flow = query::message_flow(&store, &a, &b, limit).nif()?;
    let mut out = Vec::with_capacity(flow.len());
    for (s, r) in &flow {
        let r = match r {
            Some(r) => with_links(env, &mut lk, r, true, &mut cache)?,
            None => crate::atoms::nil().encode(env),
        };
        out.push((with_links(env, &mut lk, s, true, &mut cache)?, r).encode(env));
    }
    Ok((crate::atoms::ok(), out.encode(env)))
}

#[rustler::nif(schedule = "DirtyIo")]
fn query_state_history<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    pid: Term<'a>,
    since: Option<u64>,
    until: Option<u64>,
    limit: usize,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut lk = store.lookups();
    let mut cache = TermCache::default();
    let pid = pid_match(pid, "state_history's argument")?;
    let wall = |t: Option<u64>| t.map(|t| t.min(i64::MAX as u64) as i64);
    let evs = query::state_history(&store, &pid, wall(since), wall(until), limit).nif()?;
    let mut out = Vec::with_capacity(evs.len());
    for e in &evs {
        out.push(with_links(env, &mut lk, e, true, &mut cache)?);
    }
    Ok((crate::atoms::ok(), out.encode(env)))
}

#[rustler::nif(schedule = "DirtyIo")]
fn query_state_at<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    pid: Term<'a>,
    wall_ns: u64,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let mut lk = store.lookups();
    let mut cache = TermCache::default();
    let pid = pid_match(pid, "state_at's pid")?;
    match query::state_at(&store, &pid, wall_ns).nif()? {
        Some(e) => Ok((
            crate::atoms::ok(),
            with_links(env, &mut lk, &e, true, &mut cache)?,
        )),
        None => Ok((crate::atoms::ok(), crate::atoms::nil().encode(env))),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn query_links<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    id: u64,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let l = match store.get(id).nif()? {
        Some(e) => store.links_of(&e).nif()?,
        None => Vec::new(),
    };
    Ok((crate::atoms::ok(), links_term(env, &l)))
}

/// Runs a query and returns only how many events matched (decoded in Rust,
/// nothing built for Elixir): `{:ok, {count, index}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn query_count<'a>(
    env: Env<'a>,
    h: ResourceArc<Handle>,
    q: QueryFilter<'a>,
) -> NifResult<(rustler::Atom, Term<'a>)> {
    let store = h.store()?;
    let f = filter_of(&q)?;
    let (n, index) = query::count(&store, &f).nif()?;
    Ok((crate::atoms::ok(), (n, atom(env, index)).encode(env)))
}

/// Flushes memtables to SST files, no compaction.
#[rustler::nif(schedule = "DirtyIo")]
fn store_flush(h: ResourceArc<Handle>) -> NifResult<rustler::Atom> {
    h.store()?.flush_all().nif()?;
    Ok(crate::atoms::ok())
}

/// Flushes memtables and compacts the whole store.
#[rustler::nif(schedule = "DirtyIo")]
fn store_compact(h: ResourceArc<Handle>) -> NifResult<rustler::Atom> {
    h.store()?.compact_all().nif()?;
    Ok(crate::atoms::ok())
}

/// `%{live_bytes: n, disk_bytes: n, min_id: id | nil, max_id: id}`
#[rustler::nif(schedule = "DirtyIo")]
fn store_stats(env: Env, h: ResourceArc<Handle>) -> NifResult<Term> {
    let store = h.store()?;
    let keys = ["live_bytes", "disk_bytes", "min_id", "max_id"].map(|k| atom(env, k));
    let vals = [
        store.live_bytes().encode(env),
        store.size_on_disk().encode(env),
        match store.min_id().nif()? {
            Some(i) => i.encode(env),
            None => crate::atoms::nil().encode(env),
        },
        store.max_id().nif()?.encode(env),
    ];
    Ok(Term::map_from_term_arrays(env, &keys, &vals)
        .unwrap_or_else(|_| crate::atoms::nil().encode(env)))
}

/// Lets go of a store opened with `store_open` (it closes when no query holds it).
#[rustler::nif(schedule = "DirtyIo")]
fn store_close(h: ResourceArc<Handle>) -> NifResult<rustler::Atom> {
    if h.pipeline.is_some() {
        return Err(crate::error::core_error(
            causeway_core::Error::InvalidArgument(
                "this handle belongs to a running instance, not to a store from open/2: \
                 stop the instance with Causeway.stop/1"
                    .into(),
            ),
        ));
    }
    h.close().nif()?;
    Ok(crate::atoms::ok())
}

/// Reopens a read-only store opened with `store_open`, so it sees what its
/// writer wrote since (a read-only RocksDB instance sees only what existed
/// when it opened). A writable store, or a running instance's, already sees
/// its own writes: nothing to do.
#[rustler::nif(schedule = "DirtyIo")]
fn store_refresh(h: ResourceArc<Handle>) -> NifResult<rustler::Atom> {
    let old = h.store()?;
    if h.pipeline.is_none() && old.is_read_only() {
        let new = Arc::new(old.reopen().nif()?);
        if let Ok(mut slot) = h.store.lock() {
            // closed meanwhile: stay closed
            if slot.is_some() {
                *slot = Some(new);
            }
        }
    }
    Ok(crate::atoms::ok())
}

/// Opens a store for queries only (`read_only: true`), or writable without a
/// pipeline (maintenance).
#[rustler::nif(schedule = "DirtyIo")]
fn store_open(env: Env, dir: String, read_only: bool, atom_limit: u64) -> NifResult<Term> {
    let store = Store::open(
        &dir,
        StoreOptions {
            read_only,
            ..Default::default()
        },
    )
    .nif()?;
    let mut h = Handle::new(None, Arc::new(store));
    if atom_limit > 0 {
        h.atoms = Some(Arc::new(crate::atom_budget::AtomBudget::new(atom_limit)));
    }
    Ok((crate::atoms::ok(), ResourceArc::new(h)).encode(env))
}
