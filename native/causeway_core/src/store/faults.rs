//! How the store meets faults on disk: which RocksDB errors mean a damaged
//! store (`:corrupt`), a directory another writer holds (`:busy`), or storage
//! that fails (`:storage`); the durability mark (the newest event a
//! `flush/0` promised, kept beside the database) and the check that a
//! recovered store still holds it; and whether a live writer holds a
//! directory (from `/proc/locks`, never by touching its `LOCK` file).
//!
//! Why a mark of our own: RocksDB's WAL recovery cannot tell "the tail of a
//! log was being written when the process died" (normal, nothing promised
//! is lost) from "a log was cut or overwritten" (promised events are gone),
//! and a log cut on a record boundary, or deleted, looks clean to every
//! recovery mode. The mark is written after the WAL is synced, so a store
//! that opens without an event at or after it has lost flushed events.

use crate::Error;
use std::path::{Path, PathBuf};

/// The file beside the database that holds the durability mark.
pub const MARK_FILE: &str = "CAUSEWAY-DURABLE";
const MARK_PREFIX: &str = "causeway-durable 1 ";

/// The mark of `dir`: `Ok(None)` if none was ever written, `Err` (with what
/// is wrong) if the file is there but unreadable.
pub fn read_mark(dir: &Path) -> std::result::Result<Option<u64>, String> {
    let p = dir.join(MARK_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) => s
            .strip_prefix(MARK_PREFIX)
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| format!("{}: unreadable durability mark", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Records that every event up to `id` is durable: a new file renamed over
/// the old one, so a reader sees the old mark or the new one, never half.
/// The file is not synced: after a power loss it may be older than the WAL
/// (the check is then weaker, never wrong), never newer.
pub fn write_mark(dir: &Path, id: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARK_FILE}.tmp"));
    std::fs::write(&tmp, format!("{MARK_PREFIX}{id}\n"))?;
    std::fs::rename(&tmp, dir.join(MARK_FILE))
}

/// The WAL files of a store directory, oldest first.
pub fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The OS process holding the RocksDB lock of `dir`, if any (Linux: read
/// from `/proc/locks`; `None` where that cannot be read). Opening the `LOCK`
/// file ourselves is not an option: closing any descriptor of it would drop
/// a lock this process holds through RocksDB.
pub fn lock_holder(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir.join("LOCK")).ok()?;
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", md.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        let i = f.iter().position(|x| *x == "POSIX" || *x == "OFDLCK")?;
        let (pid, file) = (f.get(i + 3)?, f.get(i + 4)?);
        (*file == want).then(|| pid.parse().ok()).flatten()
    })
}

/// A description of who holds `dir`, for `:busy` errors.
pub fn holder_text(dir: &Path) -> String {
    match lock_holder(dir) {
        Some(pid) if pid == std::process::id() => "this OS process".to_string(),
        Some(pid) => format!("OS process {pid}"),
        None => "another writer".to_string(),
    }
}

/// Whether a RocksDB error says the directory's lock is taken.
pub fn is_lock_error(msg: &str) -> bool {
    msg.contains("While lock file") || msg.contains("lock hold by current process")
}

/// Whether `e`, from an open or the reads that follow it, may be a live
/// writer's doing: a file it expected was gone or replaced (see
/// `is_missing_file`), at open (`Corrupt`) or in a read after it (`Storage`).
pub fn is_transient_while_live(e: &Error) -> bool {
    match e {
        Error::Corrupt(_) => true,
        Error::Storage(e) => is_missing_file(e.as_ref()),
        _ => false,
    }
}

/// Whether a RocksDB error says a file it expected is gone: during a live
/// writer's flush or compaction that is transient (the file was replaced);
/// in a store nobody writes it is damage.
pub fn is_missing_file(msg: &str) -> bool {
    msg.contains("No such file or directory") || msg.contains("PathNotFound")
}

fn is_no_space(msg: &str) -> bool {
    msg.contains("No space left on device") || msg.contains("NoSpace")
}

/// What a failed RocksDB open of `path` means.
pub fn classify_open(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    let at = path.display().to_string();
    if is_lock_error(&msg) {
        return Error::Busy(format!(
            "{at} is open for writing by {} (the RocksDB lock is held): {msg}",
            holder_text(path)
        ));
    }
    if e.kind() == rocksdb::ErrorKind::Corruption || is_missing_file(&msg) {
        return Error::Corrupt(format!("{at}: {msg}"));
    }
    if is_no_space(&msg) {
        return Error::Storage(e);
    }
    Error::Path {
        path: at,
        reason: msg,
    }
}

/// A `:corrupt` error for a store that opened without events a flush had
/// made durable. `newest` is the newest event it holds (or that retention
/// deleted up to).
pub fn lost_flushed(path: &Path, mark: u64, newest: u64) -> Error {
    let wals: Vec<String> = wal_files(path)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let wals = if wals.is_empty() {
        "no WAL file is left".to_string()
    } else {
        format!("WAL files {}", wals.join(", "))
    };
    Error::Corrupt(format!(
        "{}: events up to id {mark} were flushed (made durable) but the store now ends at \
         id {newest}: its write-ahead log was cut, overwritten or deleted ({wals}; RocksDB \
         recovered up to the first damaged record). To open it anyway and accept the loss, \
         remove {}",
        path.display(),
        path.join(MARK_FILE).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::store::tests::event;
    use crate::store::{Store, StoreOptions};
    use std::io::{Seek, SeekFrom, Write};

    /// `n` events with ids from `first`, in batches of 500.
    fn write_events(s: &Store, first: u64, n: u64) {
        let evs: Vec<_> = (first..first + n)
            .map(|i| event(i * 64, (i % 7) as u32, EventType::StateChange))
            .collect();
        for chunk in evs.chunks(500) {
            s.write(chunk, &[]).unwrap();
        }
    }

    fn count(s: &Store) -> usize {
        let mut n = 0;
        s.scan_keys(crate::store::CF_EVENTS, &[], None, false, |_, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
        n
    }

    fn ro() -> StoreOptions {
        StoreOptions {
            read_only: true,
            ..Default::default()
        }
    }

    /// A store of 20 000 flushed events, all still in its write-ahead log
    /// (a close does not flush memtables), and that log's path.
    fn flushed_store() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            write_events(&s, 1, 20_000);
            s.sync().unwrap();
        }
        let wal = wal_files(dir.path())
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("a WAL file");
        assert!(std::fs::metadata(&wal).unwrap().len() > 100_000);
        (dir, wal)
    }

    fn assert_corrupt_naming(e: Error, what: &str) {
        assert_eq!(e.kind(), "corrupt", "{e}");
        assert!(e.to_string().contains(what), "{e} does not name {what}");
    }

    #[test]
    fn store_with_a_wal_cut_in_half_fails_as_corrupt_and_is_left_as_it_was() {
        let (dir, wal) = flushed_store();
        let len = std::fs::metadata(&wal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let name = wal.file_name().unwrap().to_string_lossy().into_owned();
        for opts in [StoreOptions::default(), ro()] {
            let e = Store::open(dir.path(), opts).err().expect("must not open");
            assert_corrupt_naming(e, &name);
        }
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), len / 2, "untouched");
        // accepting the loss is explicit: remove the mark
        std::fs::remove_file(dir.path().join(MARK_FILE)).unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let n = count(&s);
        assert!(n > 0 && n < 20_000, "{n}");
    }

    #[test]
    fn store_with_garbage_in_the_middle_of_its_wal_fails_as_corrupt() {
        let (dir, wal) = flushed_store();
        let len = std::fs::metadata(&wal).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        f.write_all(&garbage).unwrap();
        drop(f);
        let name = wal.file_name().unwrap().to_string_lossy().into_owned();
        for opts in [StoreOptions::default(), ro()] {
            let e = Store::open(dir.path(), opts).err().expect("must not open");
            assert_corrupt_naming(e, &name);
        }
    }

    #[test]
    fn store_whose_wal_tail_after_the_last_flush_is_torn_opens_with_everything_flushed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            write_events(&s, 1, 10_000);
            s.sync().unwrap();
            // written, never flushed: what a crash may take
            write_events(&s, 10_001, 2_000);
        }
        let wal = wal_files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&wal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).expect("opens");
        let n = count(&s);
        assert!((10_000..12_000).contains(&n), "{n}");
        let note = s.recovery_note().expect("the damage is reported");
        assert!(note.contains("after the last flush"), "{note}");
        drop(s);
        // recovered once: the next open is clean
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.recovery_note(), None);
        assert_eq!(count(&s), n);
    }

    /// A store of flushed events in SST files (memtables flushed), and them.
    fn sst_store() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            write_events(&s, 1, 20_000);
            s.sync().unwrap();
            s.flush_all().unwrap();
        }
        let mut ssts: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .collect();
        ssts.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
        assert!(!ssts.is_empty());
        (dir, ssts)
    }

    #[test]
    fn store_with_a_truncated_sst_fails_as_corrupt_naming_it() {
        let (dir, ssts) = sst_store();
        let len = std::fs::metadata(&ssts[0]).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ssts[0])
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let name = ssts[0].file_name().unwrap().to_string_lossy().into_owned();
        for opts in [StoreOptions::default(), ro()] {
            let e = Store::open(dir.path(), opts).err().expect("must not open");
            assert_corrupt_naming(e, &name);
        }
    }

    #[test]
    fn store_with_a_deleted_sst_fails_as_corrupt_naming_it() {
        let (dir, ssts) = sst_store();
        std::fs::remove_file(&ssts[0]).unwrap();
        let name = ssts[0].file_name().unwrap().to_string_lossy().into_owned();
        for opts in [StoreOptions::default(), ro()] {
            let e = Store::open(dir.path(), opts).err().expect("must not open");
            assert_corrupt_naming(e, &name);
        }
    }

    /// Cuts the store's MANIFEST to `to(its length)` bytes.
    fn cut_manifest(dir: &Path, to: impl FnOnce(u64) -> u64) {
        let manifest = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST-"))
            })
            .unwrap();
        let len = std::fs::metadata(&manifest).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&manifest)
            .unwrap()
            .set_len(to(len))
            .unwrap();
    }

    #[test]
    fn store_with_a_truncated_manifest_fails_as_corrupt() {
        let (dir, _) = sst_store();
        cut_manifest(dir.path(), |len| len / 2);
        for opts in [StoreOptions::default(), ro()] {
            let e = Store::open(dir.path(), opts).err().expect("must not open");
            assert_eq!(e.kind(), "corrupt", "{e}");
        }
    }

    #[test]
    fn store_open_for_writing_twice_is_busy_not_a_path_error() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let e = Store::open(dir.path(), StoreOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "busy", "{e}");
        assert!(e.to_string().contains("this OS process"), "{e}");
        // a reader is welcome
        Store::open(dir.path(), ro()).unwrap();
    }

    #[test]
    fn store_open_for_writing_under_another_name_is_busy_and_reopens_with_everything() {
        // a symlink and /proc/self/root/… are other names for one directory.
        // RocksDB's in-process lock check compares names, so before writers
        // claimed directories by inode both opens succeeded; each writer then
        // deleted the other's table files as obsolete, and the next open
        // failed: "Corruption: … 0000NN.sst: No such file or directory"
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("store");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let via_proc = PathBuf::from(format!("/proc/self/root{}", real.display()));
        {
            let s = Store::open(&real, StoreOptions::default()).unwrap();
            write_events(&s, 1, 5_000);
            s.flush_all().unwrap();
            for alias in [&link, &via_proc] {
                let e = Store::open(alias, StoreOptions::default())
                    .err()
                    .expect("a second writer was refused");
                assert_eq!(e.kind(), "busy", "{}: {e}", alias.display());
                assert!(e.to_string().contains("the same directory"), "{e}");
            }
            // a reader under another name is welcome
            assert_eq!(count(&Store::open(&link, ro()).unwrap()), 5_000);
            write_events(&s, 5_001, 5_000);
            s.flush_all().unwrap();
            s.compact_all().unwrap();
        }
        let s = Store::open(&link, StoreOptions::default()).unwrap();
        assert_eq!(count(&s), 10_000);
        // and, closed, under its first name
        drop(s);
        assert_eq!(
            count(&Store::open(&real, StoreOptions::default()).unwrap()),
            10_000
        );
    }

    #[test]
    fn store_emptied_by_retention_after_a_flush_is_not_called_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            write_events(&s, 1, 1_000);
            s.sync().unwrap();
            s.delete_before(u64::MAX, 10_000).unwrap();
            assert_eq!(count(&s), 0);
        }
        Store::open(dir.path(), StoreOptions::default()).expect("retention is not loss");
        Store::open(dir.path(), ro()).expect("retention is not loss");
    }

    #[test]
    fn store_keeps_its_wal_and_info_logs_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let big = vec![7u8; 2_000];
            let mut max_wal = 0;
            for round in 0..80u64 {
                let evs: Vec<_> = (0..1_000u64)
                    .map(|i| {
                        let mut e = event((round * 1_000 + i + 1) * 64, 1, EventType::StateChange);
                        e.data = big.clone();
                        e
                    })
                    .collect();
                s.write(&evs, &[]).unwrap();
                let wal: u64 = wal_files(dir.path())
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum();
                max_wal = max_wal.max(wal);
            }
            // ~320 MB written (each event twice: events and the pid list);
            // the log in use and those whose flush is under way (slower on a
            // busy machine) come on top of the bound
            assert!(
                max_wal <= crate::store::MAX_WAL_BYTES * 3,
                "{max_wal} bytes of WAL"
            );
        }
        for _ in 0..20 {
            drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
        }
        let logs = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
            .count();
        assert!(logs <= 3, "{logs} info log files after 21 opens");
    }

    /// Runs `reads` while a thread writes the store at `dir` (open for
    /// writing here) batch after batch, `step` after each (from event `next`).
    fn with_live_writer(
        dir: &Path,
        step: impl Fn(&Store, u64) + Send + 'static,
        reads: impl FnOnce(),
    ) {
        let w = std::sync::Arc::new(Store::open(dir, StoreOptions::default()).unwrap());
        write_events(&w, 1, 2_000);
        w.flush_all().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (w, stop) = (w.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next = 2_001u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    write_events(&w, next, 500);
                    next += 500;
                    step(&w, next);
                }
            })
        };
        reads();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[test]
    fn store_read_only_open_never_calls_a_live_store_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let step = |w: &Store, next: u64| {
            w.sync().unwrap();
            if next % 10_000 == 1 {
                w.flush_all().unwrap();
            }
        };
        with_live_writer(dir.path(), step, || {
            for _ in 0..100 {
                let r = Store::open(dir.path(), ro());
                assert!(r.is_ok(), "{}", r.err().unwrap());
            }
        });
    }

    #[test]
    fn a_mark_round_trips_and_garbage_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_mark(dir.path()), Ok(None));
        write_mark(dir.path(), 12_345).unwrap();
        assert_eq!(read_mark(dir.path()), Ok(Some(12_345)));
        std::fs::write(dir.path().join(MARK_FILE), b"\0\0garbage").unwrap();
        assert!(read_mark(dir.path()).unwrap_err().contains(MARK_FILE));
    }

    /// A read-only open reads the store after opening it (schema, names,
    /// retention floor, newest event): a live writer's compaction may delete
    /// a table file those reads need, which is not damage either.
    #[test]
    fn store_read_only_open_of_a_compacting_store_always_opens() {
        let dir = tempfile::tempdir().unwrap();
        let step = |w: &Store, _| {
            w.flush_all().unwrap();
            w.compact_all().unwrap();
        };
        let mut failed = Vec::new();
        with_live_writer(dir.path(), step, || {
            for _ in 0..150 {
                if let Err(e) = Store::open(dir.path(), ro()) {
                    failed.push(e.to_string());
                }
            }
        });
        assert!(
            failed.is_empty(),
            "{} of 150 opens failed: {:?}",
            failed.len(),
            failed.first()
        );
    }

    /// Run as a child process by the test below: holds the RocksDB lock of
    /// `CAUSEWAY_HOLD_LOCK` (a POSIX lock, as RocksDB takes it) until its
    /// stdin closes. Does nothing in a normal test run.
    #[test]
    #[ignore]
    fn hold_lock_child() {
        let Ok(dir) = std::env::var("CAUSEWAY_HOLD_LOCK") else {
            return;
        };
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(std::path::Path::new(&dir).join("LOCK"))
            .expect("LOCK");
        // SAFETY: a plain fcntl on a descriptor we own, flock struct zeroed
        let rc = unsafe {
            let mut l: libc::flock = std::mem::zeroed();
            l.l_type = libc::F_WRLCK as libc::c_short;
            l.l_whence = libc::SEEK_SET as libc::c_short;
            libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &l)
        };
        assert_eq!(rc, 0, "lock taken");
        println!("CAUSEWAY-LOCKED");
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    }

    /// A store another OS process holds for writing is busy for a writable
    /// open, whatever its files look like while they change (here a MANIFEST
    /// cut short, as one being written is): the open neither calls it
    /// corrupt or no store nor probes it for a recovery. Once nobody holds
    /// it, the same bytes are what they are.
    #[test]
    fn store_read_as_damaged_while_another_process_writes_it_is_busy() {
        let (dir, _) = sst_store();
        cut_manifest(dir.path(), |len| len.min(64));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::faults::tests::hold_lock_child",
                "--ignored",
                "--nocapture",
            ])
            .env("CAUSEWAY_HOLD_LOCK", dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("child");
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains("CAUSEWAY-LOCKED"))),
            "the child took the lock"
        );
        let held = Store::open(dir.path(), StoreOptions::default())
            .err()
            .expect("not opened");
        drop(child.stdin.take());
        child.wait().unwrap();
        match held {
            Error::Busy(m) => assert!(m.contains("OS process"), "{m}"),
            other => panic!("expected busy, got {other:?}"),
        }
        // alone, the same bytes are what they are (a MANIFEST cut at 64
        // bytes names no column family: not a store)
        let alone = Store::open(dir.path(), StoreOptions::default())
            .err()
            .expect("not opened");
        assert!(matches!(alone, Error::Incompatible { .. }), "{alone:?}");
    }

    #[test]
    fn the_lock_holder_is_found_in_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lock_holder(dir.path()), None, "no LOCK file");
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, dir.path()).unwrap();
        if std::path::Path::new("/proc/locks").exists() {
            assert_eq!(lock_holder(dir.path()), Some(std::process::id()));
        }
        drop(db);
        assert_eq!(lock_holder(dir.path()), None, "released on close");
    }
}
