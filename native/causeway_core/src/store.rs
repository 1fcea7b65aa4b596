//! RocksDB storage: one column family of events keyed by their time-ordered id,
//! and secondary indexes designed for bounded range scans.
//!
//! | column family | key                                               | value |
//! |---------------|---------------------------------------------------|-------|
//! | `events`      | id (8, big-endian)                                | `StoredEvent` (msgpack) |
//! | `by_pid`      | pid number (4) · serial (4) · id (8)              | — |
//! | `by_mfa`      | len (2) · module · len (2) · function · arity (4) · id (8) | — |
//! | `by_type`     | type (1) · id (8)                                 | — |
//! | `by_call`     | call id (8) · id (8)                              | — |
//! | `links`       | from id (8) · kind (1) · to id (8)                | — |
//! | `state`       | pid number (4) · serial (4) · id (8)              | — |
//! | `meta`        | name                                              | value |
//!
//! Every scan sets both iterate bounds, so it never runs past its prefix.

use crate::event::{EventType, Link, LinkKind, StoredEvent};
use crate::{Error, Result};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: u32 = 1;
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
const META_APP: &[u8] = b"application";
const APP_NAME: &[u8] = b"causeway";

/// Key layouts, shared by the writer and the queries.
pub mod keys {
    pub fn id(id: u64) -> [u8; 8] {
        id.to_be_bytes()
    }

    /// The trailing event id of an index key.
    pub fn trailing_id(key: &[u8]) -> Option<u64> {
        let n = key.len();
        if n < 8 {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[n - 8..]);
        Some(u64::from_be_bytes(b))
    }

    pub fn pid(pid_key: [u8; 8], id: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&pid_key);
        k[8..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn mfa_prefix(module: &str, function: Option<&str>, arity: Option<u32>) -> Vec<u8> {
        let mut k = Vec::with_capacity(module.len() + 16);
        k.extend_from_slice(&(module.len().min(u16::MAX as usize) as u16).to_be_bytes());
        k.extend_from_slice(module.as_bytes());
        if let Some(f) = function {
            k.extend_from_slice(&(f.len().min(u16::MAX as usize) as u16).to_be_bytes());
            k.extend_from_slice(f.as_bytes());
            if let Some(a) = arity {
                k.extend_from_slice(&a.to_be_bytes());
            }
        }
        k
    }

    pub fn mfa(module: &str, function: &str, arity: u32, id: u64) -> Vec<u8> {
        let mut k = mfa_prefix(module, Some(function), Some(arity));
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    pub fn typed(kind: u8, id: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = kind;
        k[1..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn call(call_id: u64, id: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&call_id.to_be_bytes());
        k[8..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn link(from: u64, kind: u8, to: u64) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[..8].copy_from_slice(&from.to_be_bytes());
        k[8] = kind;
        k[9..].copy_from_slice(&to.to_be_bytes());
        k
    }

    /// The smallest key greater than every key starting with `prefix`.
    pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }
}

#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub read_only: bool,
    /// Sync the WAL on every batch (slower; `flush` syncs anyway).
    pub sync_writes: bool,
}

pub struct Store {
    db: DB,
    path: PathBuf,
    read_only: bool,
    write_opts: WriteOptions,
}

fn cf_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(16 * 1024);
    o.set_block_based_table_factory(&table);
    o
}

fn path_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Path {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`. A directory holding
    /// something that is not a Causeway store of this schema is refused and left
    /// untouched.
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
                    std::fs::create_dir_all(&path).map_err(|e| path_error(&path, e))?;
                }
                Err(e) => return Err(path_error(&path, e)),
            }
            let probe = path.join(".causeway-write-probe");
            std::fs::write(&probe, b"")
                .map_err(|e| path_error(&path, format!("not writable: {e}")))?;
            let _ = std::fs::remove_file(&probe);
        } else {
            let cfs = DB::list_cf(&Options::default(), &path).map_err(|e| Error::Incompatible {
                path: path.display().to_string(),
                reason: format!("cannot read its column families: {e}"),
            })?;
            let missing: Vec<&str> = ALL_CFS
                .iter()
                .copied()
                .filter(|cf| !cfs.iter().any(|c| c == cf))
                .collect();
            if !missing.is_empty() {
                return Err(Error::Incompatible {
                    path: path.display().to_string(),
                    reason: format!("not a Causeway store (missing column families {missing:?})"),
                });
            }
        }

        let mut db_opts = Options::default();
        db_opts.create_if_missing(!exists);
        db_opts.create_missing_column_families(!exists);
        db_opts.set_max_background_jobs(2);
        db_opts.set_write_buffer_size(32 << 20);
        db_opts.set_compression_type(DBCompressionType::Lz4);
        let db = if opts.read_only {
            DB::open_cf_for_read_only(&db_opts, &path, ALL_CFS, false)
        } else {
            let cfs = ALL_CFS
                .iter()
                .map(|n| ColumnFamilyDescriptor::new(*n, cf_options()));
            DB::open_cf_descriptors(&db_opts, &path, cfs)
        }
        .map_err(|e| path_error(&path, e))?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync_writes);
        let store = Store {
            db,
            path: path.clone(),
            read_only: opts.read_only,
            write_opts,
        };
        store.check_schema(exists)?;
        Ok(store)
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
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
                if found != SCHEMA_VERSION {
                    return Err(incompatible(format!(
                        "schema version {found}, this Causeway reads version {SCHEMA_VERSION}"
                    )));
                }
                Ok(())
            }
            None if existed => Err(incompatible("no schema version recorded".into())),
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Writes events, their index entries and links in one atomic `WriteBatch`.
    pub fn write(&self, events: &[StoredEvent], links: &[Link]) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        let (cf_ev, cf_pid, cf_mfa, cf_type, cf_call, cf_links, cf_state) = (
            self.cf(CF_EVENTS)?,
            self.cf(CF_BY_PID)?,
            self.cf(CF_BY_MFA)?,
            self.cf(CF_BY_TYPE)?,
            self.cf(CF_BY_CALL)?,
            self.cf(CF_LINKS)?,
            self.cf(CF_STATE)?,
        );
        let mut b = WriteBatch::default();
        let mut buf = Vec::with_capacity(256);
        for ev in events {
            buf.clear();
            rmp_serde::encode::write(&mut buf, ev)?;
            b.put_cf(cf_ev, keys::id(ev.id), &buf);
            let pid_key = ev.pid.key();
            b.put_cf(cf_pid, keys::pid(pid_key, ev.id), []);
            b.put_cf(cf_type, keys::typed(ev.kind as u8, ev.id), []);
            if let (Some(m), Some(f)) = (&ev.module, &ev.function) {
                b.put_cf(cf_mfa, keys::mfa(m, f, ev.arity, ev.id), []);
            }
            if ev.call_id != 0 {
                b.put_cf(cf_call, keys::call(ev.call_id, ev.id), []);
            }
            if ev.kind == EventType::StateChange {
                b.put_cf(cf_state, keys::pid(pid_key, ev.id), []);
            }
        }
        for l in links {
            b.put_cf(cf_links, keys::link(l.from, l.kind as u8, l.to), []);
            b.put_cf(
                cf_links,
                keys::link(l.to, l.kind.reverse() as u8, l.from),
                [],
            );
        }
        self.db.write_opt(b, &self.write_opts)?;
        Ok(())
    }

    /// Makes everything written so far durable (WAL synced to disk).
    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.db.flush_wal(true)?;
        Ok(())
    }

    pub fn get(&self, id: u64) -> Result<Option<StoredEvent>> {
        match self.db.get_pinned_cf(self.cf(CF_EVENTS)?, keys::id(id))? {
            Some(v) => Ok(Some(StoredEvent::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Fetches events by id, in the order given; ids with no event are skipped.
    pub fn get_many(&self, ids: &[u64]) -> Result<Vec<StoredEvent>> {
        let cf = self.cf(CF_EVENTS)?;
        let ks: Vec<[u8; 8]> = ids.iter().map(|&i| keys::id(i)).collect();
        let mut out = Vec::with_capacity(ids.len());
        for r in self.db.batched_multi_get_cf(cf, &ks, false) {
            if let Some(v) = r? {
                out.push(StoredEvent::decode(&v)?);
            }
        }
        Ok(out)
    }

    /// Walks keys of `cf` in `[lo, hi)` (forward, or backward when `reverse`),
    /// calling `f` with each key until it returns false.
    pub fn scan_keys(
        &self,
        cf: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lo.to_vec());
        if let Some(hi) = hi {
            ro.set_iterate_upper_bound(hi.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        if reverse {
            it.seek_to_last();
        } else {
            it.seek(lo);
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !f(k, v)? {
                return Ok(());
            }
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        it.status()?;
        Ok(())
    }

    /// The links held by event `id`: `(kind, other event id)`.
    pub fn links_of(&self, id: u64) -> Result<Vec<(LinkKind, u64)>> {
        let lo = keys::id(id);
        let hi = keys::id(id.wrapping_add(1));
        let mut out = Vec::new();
        let hi_opt = if id == u64::MAX { None } else { Some(&hi[..]) };
        self.scan_keys(CF_LINKS, &lo, hi_opt, false, |k, _| {
            if k.len() == 17 {
                if let (Some(kind), Some(to)) = (LinkKind::from_u8(k[8]), keys::trailing_id(k)) {
                    out.push((kind, to));
                }
            }
            Ok(true)
        })?;
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{PidRec, Source};

    pub(crate) fn event(id: u64, pid: u32, kind: EventType) -> StoredEvent {
        StoredEvent {
            id,
            kind,
            mono_ns: id as i64,
            wall_ns: id as i64,
            pid: PidRec {
                node: "nonode@nohost".into(),
                id: pid,
                serial: 0,
                creation: 0,
            },
            call_id: if kind == EventType::FunctionEntry {
                id
            } else {
                0
            },
            parent_id: 0,
            module: Some("Elixir.M".into()),
            function: Some("f".into()),
            arity: 1,
            peer: None,
            data: vec![131, 97, (id % 200) as u8],
            source: Source::Runtime,
        }
    }

    #[test]
    fn round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<_> = (1..=100)
            .map(|i| event(i * 64, (i % 3) as u32, EventType::FunctionEntry))
            .collect();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.write(
                &evs,
                &[Link {
                    from: 128,
                    kind: LinkKind::Completes,
                    to: 64,
                }],
            )
            .unwrap();
            s.sync().unwrap();
        }
        let s = Store::open(
            dir.path(),
            StoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.get(64 * 7).unwrap().as_ref(), Some(&evs[6]));
        assert_eq!(s.get(65).unwrap(), None);
        assert_eq!(s.max_id().unwrap(), 6400);
        assert_eq!(s.links_of(64).unwrap(), vec![(LinkKind::CompletedBy, 128)]);
        assert_eq!(s.links_of(128).unwrap(), vec![(LinkKind::Completes, 64)]);
        let mut n = 0;
        s.scan_keys(
            CF_BY_PID,
            &keys::pid(evs[0].pid.key(), 0),
            Some(&keys::pid(evs[0].pid.key(), u64::MAX)),
            false,
            |_, _| {
                n += 1;
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(n, 34);
        assert!(
            s.write(&evs, &[]).is_err(),
            "read-only store refuses writes"
        );
    }

    #[test]
    fn refuses_foreign_directories_without_touching_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let e = Store::open(dir.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "incompatible");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A RocksDB that is not ours.
        let other = tempfile::tempdir().unwrap();
        {
            let mut o = Options::default();
            o.create_if_missing(true);
            let db = DB::open(&o, other.path()).unwrap();
            db.put(b"k", b"v").unwrap();
        }
        let e = Store::open(other.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "incompatible", "{e}");
    }

    #[test]
    fn refuses_another_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.db.put_cf(s.cf(CF_META).unwrap(), META_SCHEMA, 99u32.to_be_bytes())
                .unwrap();
        }
        let e = Store::open(dir.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    #[test]
    fn unusable_paths_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let target = file.join("store");
        let e = Store::open(&target, StoreOptions::default()).err().unwrap();
        assert_eq!(e.kind(), "path");
        assert!(e.to_string().contains(&target.display().to_string()), "{e}");
        let e = Store::open(
            dir.path().join("nope"),
            StoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn prefix_end_bounds_scans() {
        assert_eq!(keys::prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(keys::prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(keys::prefix_end(&[0xff]), None);
    }
}
