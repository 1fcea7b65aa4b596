//! Which store directories this OS process holds for writing, by the
//! directory's identity (device and inode), not by the path it was named by.
//!
//! RocksDB's own guard against a second writer in one process is a set of
//! `LOCK` file *names*: `/tmp/s/LOCK` and `/tmp/link/LOCK` (a symlink to
//! `/tmp/s`), a bind mount or `/proc/self/cwd/s` are different names for
//! one file, and the `fcntl` lock it takes next never conflicts within one
//! process. Two writers on one directory then each delete the other's
//! table files as obsolete, and the store no longer opens ("Corruption: …
//! 000055.sst: No such file or directory. The file MANIFEST-… may be
//! corrupted"); and when one of them closes, its unlock drops the process's
//! `fcntl` lock for the other too, so a writer in another VM can start on
//! it. A claim is taken before RocksDB opens a directory for writing and
//! held until its database is closed.

use crate::{Error, Result};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// (device, inode) of a claimed directory → the path it was claimed by.
static CLAIMS: Mutex<Option<HashMap<(u64, u64), PathBuf>>> = Mutex::new(None);

/// This process's claim on a store directory; released when dropped.
#[derive(Debug)]
pub struct WriterClaim {
    key: (u64, u64),
}

/// Claims `dir` (which must exist) for a writer of this process: `Busy` if
/// a store of this process already writes that directory, under whatever
/// name it was opened.
pub fn claim(dir: &Path) -> Result<WriterClaim> {
    let md = std::fs::metadata(dir).map_err(|e| Error::Path {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let key = (md.dev(), md.ino());
    // (a panic cannot leave the map half-changed: a poisoned lock is taken as it is)
    let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
    let claims = claims.get_or_insert_with(HashMap::new);
    if let Some(holder) = claims.get(&key) {
        return Err(Error::Busy(if holder.as_path() == dir {
            format!("{} is open for writing by this OS process", dir.display())
        } else {
            format!(
                "{} is open for writing by this OS process, as {} (the same directory)",
                dir.display(),
                holder.display()
            )
        }));
    }
    claims.insert(key, dir.to_path_buf());
    Ok(WriterClaim { key })
}

impl Drop for WriterClaim {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = claims.as_mut() {
            c.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_is_claimed_once_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("store");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        let first = claim(&real).unwrap();
        let e = claim(&link).unwrap_err();
        assert!(matches!(e, Error::Busy(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("as ") && text.contains("store"), "{text}");
        assert!(matches!(claim(&real), Err(Error::Busy(_))));
        // another directory is not affected
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let _o = claim(&other).unwrap();

        drop(first);
        let _again = claim(&link).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_path_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = claim(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, Error::Path { .. }), "{e}");
    }
}
