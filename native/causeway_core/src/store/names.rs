//! Interned names (modules, functions, nodes): the `meta` table maps small
//! integers to names, written in the same batch as the first event that
//! uses them.

use super::*;

/// Interned names (modules, functions, nodes): id 0 means "none". A slot
/// left empty (an id a store written by an earlier version allocated but never
/// persisted) reads as no name.
#[derive(Default)]
pub(super) struct Names {
    pub(super) ids: HashMap<String, u32>,
    pub(super) names: Vec<Option<Name>>,
}

impl Names {
    /// The name, shared (no copy).
    pub(super) fn shared(&self, id: u32) -> Option<&Name> {
        if id == 0 {
            None
        } else {
            self.names.get(id as usize - 1).and_then(Option::as_ref)
        }
    }
}

impl Store {
    pub(super) fn load_names(&self) -> Result<()> {
        let mut n = Names::default();
        let end = keys::prefix_end(META_NAME);
        self.scan_keys(CF_META, META_NAME, end.as_deref(), false, |k, v| {
            let id = <[u8; 4]>::try_from(&k[META_NAME.len()..])
                .map(u32::from_be_bytes)
                .map_err(|_| Error::Corrupt("name table key".into()))?;
            let name = String::from_utf8_lossy(v).into_owned();
            // keys come in id order; a gap stays an empty slot and its id is
            // never handed out again
            if id == 0 || (id as usize) <= n.names.len() {
                return Err(Error::Corrupt(format!("name table: id {id} out of order")));
            }
            n.names.resize(id as usize - 1, None);
            n.ids.insert(name.clone(), id);
            n.names.push(Some(name.into()));
            Ok(true)
        })?;
        if let Ok(mut names) = self.names.write() {
            *names = n;
        }
        Ok(())
    }

    /// The id of `name`, if it was ever stored.
    pub fn name_id(&self, name: &str) -> Option<u32> {
        self.names
            .read()
            .ok()
            .and_then(|n| n.ids.get(name).copied())
    }

    /// Interns `name`. A new name is written to the store on its own, under
    /// the table's lock, before its id is handed to anyone: every batch that
    /// uses the id comes later in the WAL, so no crash or failed write can
    /// leave an event whose name is not on disk, and concurrent writers never
    /// see an id that might still be taken back.
    pub(super) fn intern(&self, name: &str, meta: &rocksdb::ColumnFamily) -> Result<u32> {
        if let Some(id) = self.name_id(name) {
            return Ok(id);
        }
        let mut n = self
            .names
            .write()
            .map_err(|_| Error::Corrupt("name table lock".into()))?;
        if let Some(&id) = n.ids.get(name) {
            return Ok(id);
        }
        let id = u32::try_from(n.names.len() + 1)
            .map_err(|_| Error::Corrupt("name table full".into()))?;
        let mut k = META_NAME.to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        self.db
            .put_cf_opt(meta, k, name.as_bytes(), &self.write_opts)?;
        n.names.push(Some(name.into()));
        n.ids.insert(name.to_string(), id);
        Ok(id)
    }

    pub(super) fn pid_of(&self, d: DiskPid, names: &Names) -> PidRec {
        PidRec {
            node: names.shared(d.0).cloned().unwrap_or_default(),
            id: d.1,
            serial: d.2,
            creation: d.3,
        }
    }
}
