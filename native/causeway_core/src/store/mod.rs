//! RocksDB storage: one column family of events keyed by their time-ordered id,
//! and secondary indexes designed for bounded range scans.
//!
//! | column family | key                                               | value |
//! |---------------|---------------------------------------------------|-------|
//! | `events`      | id (8, big-endian)                                | `DiskEvent` (msgpack array) |
//! | `by_pid`      | pid number (4) · serial (4) · first id (8)        | the batch's events of that process (ids + stored bytes of those up to 256 bytes, bigger ones by reference: a covering list) |
//! | `by_mfa`      | module (4) · function (4) · arity (4) · first id (8) | ids (posting list; names interned) |
//! | `by_type`     | type (1) · first id (8)                           | ids (posting list) |
//! | `by_call`     | first id (8) · last id (8) · kind (1) · first second id (8) | (call id, exit id) pairs (kind 0), or (parent id, child id) pairs: what a call `calls`, what a call or message `causes` (the link kind); before schema 5, exit lists only, keyed by first and last call id |
//! | `links`       | from id (8) · kind (1) · to id (8)                | — |
//! | `state`       | pid number (4) · serial (4) · first id (8)        | ids of state changes (posting list) |
//! | `meta`        | `schema_version`, `application`, `name` · id (4)  | value |
//!
//! Every scan sets both iterate bounds, so it never runs past its prefix.
//!
//! Links are stored once where another key already holds the relation: an
//! event's capture-time parent is in the event (`parent_id`, `parent_link`)
//! and the reverse link (`calls`, `causes`) is a pair in a `by_call` list of
//! its kind (schema 5; before, a `links` key per child, which stays readable
//! there: those keys cost an eighth of a CPU-bound producer's lossless
//! throughput, 566 and 549 k events/s against 620 and 638 k/s without them,
//! as one RocksDB key per nested call); an exit
//! `completes` the entry named by its call id and the entry finds its exit in
//! `by_call`. Only the correlator's matches (`receives`, `exit_of`) are stored
//! in both directions. Module, function and node names are interned: the
//! `meta` table maps small integers to names, written in the same batch as the
//! first event that uses them.

use crate::event::{EventType, Link, LinkKind, Name, PidRec, Source, StoredEvent};
use crate::ids::id_to_wall_ns;
use crate::{Error, Result};
use faults as store_faults;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::RwLock;

/// Version 2 writes events with their call and parent ids relative to the
/// event's id (see `codec`); version 3 lists events bigger than
/// `postings::COVERED_MAX` in the covering `by_pid` lists by reference
/// instead of copying them. A store of an earlier version opens, its events
/// and lists read as they are, and a writable open marks it with this
/// version (an older Causeway then refuses it instead of misreading what is
/// new). Version 4 writes the `by_call` pair lists in runs of
/// `postings::CALL_SPAN` instead of `CALL_SPAN_V3`; an upgraded store
/// records the newest event id at the upgrade (`META_V3_CALLS`), and the
/// lookups of calls up to it read the wider window. Version 5 writes the
/// reverse of capture-time parent links (`calls`, `causes`) as `by_call`
/// pair lists of their kind instead of one `links` key per child (an older
/// Causeway would not see them); the `links` keys of older versions are
/// still read.
pub const SCHEMA_VERSION: u32 = 5;
/// The oldest schema version this Causeway reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;
pub const CF_EVENTS: &str = "events";
pub const CF_BY_PID: &str = "by_pid";
pub const CF_BY_MFA: &str = "by_mfa";
pub const CF_BY_TYPE: &str = "by_type";
pub const CF_BY_CALL: &str = "by_call";
pub const CF_LINKS: &str = "links";
pub const CF_STATE: &str = "state";
pub const CF_META: &str = "meta";
pub const ALL_CFS: [&str; 8] = [
    CF_EVENTS, CF_BY_PID, CF_BY_MFA, CF_BY_TYPE, CF_BY_CALL, CF_LINKS, CF_STATE, CF_META,
];
const META_SCHEMA: &[u8] = b"schema_version";
const META_NAME: &[u8] = b"name:";
const META_APP: &[u8] = b"application";
const META_FLOOR: &[u8] = b"retention_floor";
/// In a store upgraded from schema 1–3: its newest event id at the upgrade
/// (no pair list written before it holds a later call).
const META_V3_CALLS: &[u8] = b"v3_call_lists_until";
const APP_NAME: &[u8] = b"causeway";

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod call_span_tests;
#[cfg(test)]
mod children_tests;
mod claim;
mod codec;
pub mod faults;
mod incidents;
pub mod keys;
mod lookups;
mod names;
pub mod perms;
pub mod postings;
mod read;
mod retention;
#[cfg(test)]
pub(crate) mod tests;
mod tuning;
#[cfg(test)]
mod tuning_tests;
mod write;

use codec::{DiskEvent, DiskPid};
pub use incidents::Incident;
pub use lookups::Lookups;
use names::Names;
pub use retention::{RetentionPolicy, RetentionStats};
use tuning::{block_cache, cf_options, db_options, write_buffer_manager, LIVE_OPEN_RETRY};
pub use tuning::{StorageMemory, MAX_WAL_BYTES, STORAGE_MEMORY_CAP};

/// The column families that hold posting lists.
pub fn is_posting_cf(cf: &str) -> bool {
    matches!(cf, CF_BY_PID | CF_BY_TYPE | CF_BY_MFA | CF_STATE)
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub read_only: bool,
    /// Sync the WAL on every batch (slower; `flush` syncs anyway).
    pub sync_writes: bool,
    /// Keep each process's events a second time inside the `by_pid` index
    /// (the default): queries by pid read them in one scan, ~5× faster than a
    /// point lookup per event, for ~1.4× the bytes (`mix bench query`).
    pub covering_pid_index: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            read_only: false,
            sync_writes: false,
            covering_pid_index: true,
        }
    }
}

pub struct Store {
    db: DB,
    path: PathBuf,
    opts: StoreOptions,
    read_only: bool,
    write_opts: WriteOptions,
    names: RwLock<Names>,
    /// Batches are written under its read side, each retention chunk (scan,
    /// index trims, deletes) under its write side: a batch never lands
    /// between a chunk's scan and its deletes, and two retention passes
    /// never rewrite the same posting list from stale reads.
    retention_lock: RwLock<()>,
    /// Set on close: a retention pass stops between chunks and rounds.
    interrupted: std::sync::atomic::AtomicBool,
    /// The newest event id written, and (under its lock) the newest the
    /// durability mark on disk names (see `store_faults`).
    written_max: std::sync::atomic::AtomicU64,
    marked: std::sync::Mutex<u64>,
    /// Retention deleted every event below this id.
    floor: std::sync::atomic::AtomicU64,
    /// Calls up to this id may be in pair lists of schema 1–3, as wide as
    /// `postings::CALL_SPAN_V3` (0: none are; see `call_window`).
    v3_calls_until: std::sync::atomic::AtomicU64,
    recovery_note: Option<String>,
    /// A writer's claim on its directory (see `claim`): declared after `db`,
    /// so it is released only once the database is closed.
    claim: Option<claim::WriterClaim>,
    /// Test hook: runs between a retention chunk's scan and its deletes.
    #[cfg(test)]
    after_scan: std::sync::Mutex<Option<Box<dyn FnMut() + Send>>>,
}

fn path_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Path {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`. A directory holding
    /// something that is not a Causeway store of this schema is refused and
    /// left untouched.
    ///
    /// Faults (see `store_faults`): a directory whose lock another writer
    /// holds is `Busy`; damaged or missing files are `Corrupt`, naming them.
    /// A writable open first replays the write-ahead log in RocksDB's
    /// *absolute consistency* mode (any damaged record fails the open). If
    /// that fails, the store is probed read-only in *point-in-time* mode
    /// (the log replayed up to its first damaged record, nothing written):
    /// if the result still holds every event a flush made durable (the
    /// durability mark), the damage is a log tail that was being written
    /// when the process died or the disk filled, and the store opens in
    /// point-in-time mode, saying so in `recovery_note`; if flushed events
    /// are missing, the open fails as `Corrupt` and nothing is changed.
    /// A read-only open replays in point-in-time mode (a live writer's log
    /// always ends mid-record), checks the mark the same way, and retries
    /// for up to 5 s while another writer holds the directory and changes
    /// its files under it.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let exists = path.join("CURRENT").is_file();
        if !exists {
            if opts.read_only {
                return Err(path_error(
                    &path,
                    "no Causeway store here (no RocksDB CURRENT file)",
                ));
            }
            match std::fs::read_dir(&path) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(Error::Incompatible {
                            path: path.display().to_string(),
                            reason: "directory is not empty and holds no RocksDB database".into(),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::store::perms::create_private_dir(&path)?;
                }
                Err(e) => return Err(path_error(&path, e)),
            }
            crate::store::perms::check_owner(&path)?;
            crate::store::perms::tighten(&path);
            let probe = path.join(".causeway-write-probe");
            std::fs::write(&probe, b"")
                .map_err(|e| path_error(&path, format!("not writable: {e}")))?;
            let _ = std::fs::remove_file(&probe);
            let claim = claim::claim(&path)?;
            let mut store = Store::attempt(
                &path,
                &opts,
                false,
                rocksdb::DBRecoveryMode::AbsoluteConsistency,
            )?;
            store.claim = Some(claim);
            return Ok(store);
        }
        if opts.read_only {
            Store::open_read_only(&path, &opts)
        } else {
            crate::store::perms::check_owner(&path)?;
            let store = Store::open_writable(&path, &opts)?;
            crate::store::perms::tighten(&path);
            Ok(store)
        }
    }

    fn open_read_only(path: &Path, opts: &StoreOptions) -> Result<Store> {
        let deadline = std::time::Instant::now() + LIVE_OPEN_RETRY;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let live = store_faults::lock_holder(path).is_some();
            // read before the open: everything up to it is in what the open reads
            let mark = store_faults::read_mark(path).ok().flatten();
            let r = Store::attempt(path, opts, true, rocksdb::DBRecoveryMode::PointInTime)
                .and_then(|s| s.check_mark(mark).map(|()| s));
            match r {
                Ok(s) => return Ok(s),
                // a live writer (there before or since our reads: one may
                // be opening the store) replaced or deleted a file under us,
                // in the open or in the reads after it: read again
                Err(e)
                    if store_faults::is_transient_while_live(&e)
                        && (live || store_faults::lock_holder(path).is_some())
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_writable(path: &Path, opts: &StoreOptions) -> Result<Store> {
        // another OS process writes it: busy, whatever its files look like
        // while they change (read before RocksDB takes its lock, a MANIFEST
        // being written looks damaged, or like no store at all)
        let busy = |what: &str| {
            Error::Busy(format!(
                "{} is open for writing by {}{what}",
                path.display(),
                store_faults::holder_text(path)
            ))
        };
        let other_writer =
            || store_faults::lock_holder(path).is_some_and(|pid| pid != std::process::id());
        // a writer of this process, under this name or another (a symlink,
        // a bind mount): RocksDB's in-process check compares names only
        let claim = claim::claim(path)?;
        if other_writer() {
            return Err(busy(""));
        }
        let mark = store_faults::read_mark(path).ok().flatten();
        match Store::attempt(
            path,
            opts,
            true,
            rocksdb::DBRecoveryMode::AbsoluteConsistency,
        ) {
            Ok(mut s) => {
                s.check_mark(mark)?;
                s.claim = Some(claim);
                Ok(s)
            }
            // a writer that came meanwhile: no recovery probe of a live store
            Err(e @ (Error::Corrupt(_) | Error::Incompatible { .. })) if other_writer() => {
                Err(busy(&format!(" (read while it changed: {e})")))
            }
            Err(Error::Corrupt(first)) => {
                // what does the log hold up to its first damaged record?
                let ro = StoreOptions {
                    read_only: true,
                    ..opts.clone()
                };
                let probe = Store::attempt(path, &ro, true, rocksdb::DBRecoveryMode::PointInTime)?;
                probe.check_mark(mark)?;
                let newest = probe.max_id()?;
                drop(probe);
                let mut s = Store::attempt(path, opts, true, rocksdb::DBRecoveryMode::PointInTime)?;
                s.recovery_note = Some(format!(
                    "the write-ahead log ended in a damaged or incomplete record after the \
                     last flush ({first}); the store was recovered up to event {newest}, \
                     and what was captured after it and never flushed is lost"
                ));
                s.claim = Some(claim);
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    /// One open of an existing (`exists`) or new store.
    fn attempt(
        path: &Path,
        opts: &StoreOptions,
        exists: bool,
        recovery: rocksdb::DBRecoveryMode,
    ) -> Result<Store> {
        if exists {
            let cfs = DB::list_cf(&Options::default(), path).map_err(|e| {
                match store_faults::classify_open(path, e) {
                    Error::Path { path, reason } => Error::Incompatible {
                        path,
                        reason: format!("cannot read its column families: {reason}"),
                    },
                    other => other,
                }
            })?;
            let missing: Vec<&str> = ALL_CFS
                .iter()
                .copied()
                .filter(|cf| !cfs.iter().any(|c| c == cf))
                .collect();
            if missing.len() == ALL_CFS.len() {
                return Err(Error::Incompatible {
                    path: path.display().to_string(),
                    reason: format!("not a Causeway store (missing column families {missing:?})"),
                });
            }
            if !missing.is_empty() {
                // some of ours and not the others: a manifest that lost records
                return Err(Error::Corrupt(format!(
                    "{}: column families {missing:?} are missing from its MANIFEST \
                     (a truncated or damaged MANIFEST file)",
                    path.display()
                )));
            }
        }
        let mut db_opts = db_options(!exists, recovery);
        if opts.read_only {
            if let Some(dir) = tuning::read_only_log_dir() {
                db_opts.set_db_log_dir(dir);
            }
        }
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n)));
        let db = if opts.read_only {
            DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false)
        } else {
            DB::open_cf_descriptors(&db_opts, path, cfs)
        }
        .map_err(|e| store_faults::classify_open(path, e))?;
        // RocksDB's statics exist now: end the process before they are destroyed
        crate::exit_guard::install();

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync_writes);
        let store = Store {
            db,
            path: path.to_path_buf(),
            opts: opts.clone(),
            read_only: opts.read_only,
            write_opts,
            names: RwLock::new(Names::default()),
            retention_lock: RwLock::new(()),
            interrupted: std::sync::atomic::AtomicBool::new(false),
            written_max: std::sync::atomic::AtomicU64::new(0),
            marked: std::sync::Mutex::new(0),
            floor: std::sync::atomic::AtomicU64::new(0),
            v3_calls_until: std::sync::atomic::AtomicU64::new(0),
            recovery_note: None,
            claim: None,
            #[cfg(test)]
            after_scan: std::sync::Mutex::new(None),
        };
        store.check_schema(exists)?;
        store.load_names()?;
        store.load_floor()?;
        if let Ok(Some(m)) = store_faults::read_mark(path) {
            if let Ok(mut marked) = store.marked.lock() {
                *marked = m;
            }
        }
        Ok(store)
    }

    /// Fails (`Corrupt`) if the store no longer holds the events up to
    /// `mark` that a flush made durable (retention may have deleted them).
    fn check_mark(&self, mark: Option<u64>) -> Result<()> {
        let Some(mark) = mark else {
            return Ok(());
        };
        let newest = self.max_id()?.max(self.floor.load(Ordering::Relaxed));
        if newest >= mark {
            Ok(())
        } else {
            Err(store_faults::lost_flushed(&self.path, mark, newest))
        }
    }

    fn load_floor(&self) -> Result<()> {
        if let Some(v) = self.db.get_cf(self.cf(CF_META)?, META_FLOOR)? {
            let f = <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt("retention floor".into()))?;
            self.floor.store(f, Ordering::Relaxed);
        }
        Ok(())
    }

    /// What a writable open had to accept to open the store (a damaged
    /// tail of the write-ahead log after the last flush), if anything.
    pub fn recovery_note(&self) -> Option<&str> {
        self.recovery_note.as_deref()
    }

    /// Opens the same directory again with the same options: a read-only
    /// store sees what was written since it was opened.
    pub fn reopen(&self) -> Result<Store> {
        Store::open(&self.path, self.opts.clone())
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Corrupt(format!("column family {name} is missing")))
    }

    fn check_schema(&self, existed: bool) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let incompatible = |reason: String| Error::Incompatible {
            path: self.path.display().to_string(),
            reason,
        };
        match self.db.get_cf(meta, META_SCHEMA)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| incompatible("unreadable schema version".into()))?;
                if !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&found) {
                    return Err(incompatible(format!(
                        "schema version {found}, this Causeway reads versions \
                         {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}"
                    )));
                }
                // a store of schema 1–3 has the wide pair lists, up to its
                // newest event (read-only: it may still be written as such)
                let v3_until = if found >= 4 {
                    match self.db.get_cf(meta, META_V3_CALLS)? {
                        Some(v) => <[u8; 8]>::try_from(v.as_slice())
                            .map(u64::from_be_bytes)
                            .map_err(|_| Error::Corrupt("v3 call lists mark".into()))?,
                        None => 0,
                    }
                } else if self.read_only {
                    u64::MAX
                } else {
                    self.max_id()?
                };
                self.v3_calls_until.store(v3_until, Ordering::Relaxed);
                if found < SCHEMA_VERSION && !self.read_only {
                    // its old events read as they are; the new ones need this
                    let mut b = WriteBatch::default();
                    b.put_cf(meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
                    if found < 4 {
                        b.put_cf(meta, META_V3_CALLS, v3_until.to_be_bytes());
                    }
                    self.db.write_opt(b, &self.write_opts)?;
                    self.db.flush_wal(true)?;
                }
                Ok(())
            }
            // every Causeway store has one from its first write: with all our
            // column families there, its absence is damage (a MANIFEST that
            // lost the records of the files holding it)
            None if existed => Err(Error::Corrupt(format!(
                "{}: its column families are there but its schema version is not: \
                 files are missing from it (a truncated or damaged MANIFEST?)",
                self.path.display()
            ))),
            None => {
                if self.read_only {
                    return Err(incompatible("no schema version recorded".into()));
                }
                let mut b = WriteBatch::default();
                b.put_cf(meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
                b.put_cf(meta, META_APP, APP_NAME);
                self.db.write_opt(b, &self.write_opts)?;
                self.db.flush_wal(true)?;
                Ok(())
            }
        }
    }

    /// How far before `call` a `by_call` pair list holding it may begin:
    /// `postings::CALL_SPAN`, or `CALL_SPAN_V3` for a call up to the newest
    /// event of a store upgraded from schema 1–3 (all of it when such a
    /// store is opened read-only).
    pub(super) fn call_window(&self, call: u64) -> u64 {
        if call <= self.v3_calls_until.load(Ordering::Relaxed) {
            postings::CALL_SPAN_V3
        } else {
            postings::CALL_SPAN
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options this store was opened with.
    pub fn options(&self) -> StoreOptions {
        self.opts.clone()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The smallest event id stored (`None` for an empty store).
    pub fn min_id(&self) -> Result<Option<u64>> {
        let mut min = None;
        self.scan_keys(CF_EVENTS, &[], None, false, |k, _| {
            min = keys::trailing_id(k);
            Ok(false)
        })?;
        Ok(min)
    }

    /// Bytes of live data: SST files and memtables of every column family.
    pub fn live_bytes(&self) -> u64 {
        ALL_CFS
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .map(|cf| {
                let sst = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.live-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum()
    }

    /// RocksDB's memory: the shared cache (memtables charged to it) and this
    /// store's table readers.
    pub fn memory(&self) -> StorageMemory {
        let readers = ALL_CFS
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.estimate-table-readers-mem")
                    .ok()
                    .flatten()
            })
            .sum();
        StorageMemory {
            block_cache: block_cache().get_usage() as u64,
            memtables: write_buffer_manager().get_usage() as u64,
            table_readers: readers,
        }
    }

    /// Flushes every memtable to SST files (no compaction).
    pub fn flush_all(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?)?;
        }
        Ok(())
    }

    /// Flushes memtables to SST files and rewrites every file, the bottommost
    /// level included (used to measure bytes per event and after large
    /// deletions).
    pub fn compact_all(&self) -> Result<()> {
        self.flush_all()?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
        for name in ALL_CFS {
            self.db
                .compact_range_cf_opt(self.cf(name)?, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// The largest event id stored (0 for an empty store).
    pub fn max_id(&self) -> Result<u64> {
        let mut max = 0;
        self.scan_keys(CF_EVENTS, &[], None, true, |k, _| {
            max = keys::trailing_id(k).unwrap_or(0);
            Ok(false)
        })?;
        Ok(max)
    }

    /// Bytes the store takes on disk (every file under its directory).
    pub fn size_on_disk(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.path)
    }

    pub fn db(&self) -> &DB {
        &self.db
    }
}
