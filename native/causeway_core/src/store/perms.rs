//! Who may read a store: its directory is created `0700` and, on each
//! writable open and close, tightened to `0700` with its files `0600`
//! (RocksDB creates files under the process umask; inside a `0700`
//! directory no other user reaches them either way). A writable open of a directory owned by
//! another user is refused: its owner's recorder would be written by us.

use crate::{Error, Result};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates `path` (and missing parents) with mode `0700`.
pub fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::Path {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Refuses a directory owned by another user than this process's.
pub fn check_owner(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Path {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(Error::Path {
            path: path.display().to_string(),
            reason: format!(
                "owned by uid {}, not by this process's uid {me}: refusing to write \
                 another user's store (open it with read_only: true to read a copy)",
                meta.uid()
            ),
        });
    }
    Ok(())
}

/// Mode `0700` on the directory and `0600` on its regular files (best
/// effort: a file RocksDB removes meanwhile is skipped).
pub fn tighten(path: &Path) {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

/// A writable store tightens its files once more when it closes, so files
/// RocksDB made while it was open end `0600` too.
impl Drop for crate::store::Store {
    fn drop(&mut self) {
        if !self.is_read_only() {
            tighten(self.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_is_private_and_another_users_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        create_private_dir(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::write(p.join("f"), b"x").unwrap();
        tighten(&p);
        let fmode = std::fs::metadata(p.join("f")).unwrap().permissions().mode() & 0o777;
        assert_eq!(fmode, 0o600);
        check_owner(&p).unwrap();
        // SAFETY: as above
        if unsafe { libc::geteuid() } == 0 {
            let other = dir.path().join("theirs");
            std::fs::create_dir(&other).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            let e = check_owner(&other).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }
}
