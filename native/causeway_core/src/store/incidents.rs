//! Incidents of the flight recorder (`persist: {:on_trigger, ...}`): one
//! record per trigger in the `meta` column family, `incident:` · id (8,
//! big-endian) → the record (MessagePack), rewritten as its after-phase
//! persists more events.

use super::*;

const META_INCIDENT: &[u8] = b"incident:";

/// What a trigger of the flight recorder persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// 1, 2, 3, … per store.
    pub id: u64,
    /// `exit`, `error`, `slow_call`, `queue_wait`, `snapshot` or `telemetry`.
    pub trigger: String,
    /// What fired it, readable (an exit reason's kind, a call's duration,
    /// the reason given to a snapshot).
    pub detail: String,
    /// The event that fired it (0 for a snapshot).
    pub trigger_event: u64,
    /// Wall-clock time of the trigger, ns since the Unix epoch.
    pub wall_ns: i64,
    /// The id span of what it persisted: the oldest event of its window
    /// (or where the window would begin) to the newest of its after-phase.
    pub first_id: u64,
    pub last_id: u64,
    /// Events and payload bytes written for it.
    pub events: u64,
    pub bytes: u64,
    /// Whether only the causal cone of the trigger was kept.
    pub cone: bool,
}

fn incident_key(id: u64) -> Vec<u8> {
    let mut k = META_INCIDENT.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    /// Writes (or rewrites) an incident record.
    pub fn put_incident(&self, inc: &Incident) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        let bytes = rmp_serde::to_vec(inc).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.db.put_cf_opt(
            self.cf(CF_META)?,
            incident_key(inc.id),
            bytes,
            &self.write_opts,
        )?;
        Ok(())
    }

    /// Every incident recorded in this store, oldest first. A record that
    /// does not decode is an error naming its id, not a silent gap.
    pub fn incidents(&self) -> Result<Vec<Incident>> {
        let end = keys::prefix_end(META_INCIDENT);
        let mut out = Vec::new();
        self.scan_keys(CF_META, META_INCIDENT, end.as_deref(), false, |k, v| {
            let inc = rmp_serde::from_slice::<Incident>(v).map_err(|e| {
                Error::Corrupt(format!(
                    "incident record {:?}: {e}",
                    &k[META_INCIDENT.len().min(k.len())..]
                ))
            })?;
            out.push(inc);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The incident with this id, if recorded.
    pub fn incident(&self, id: u64) -> Result<Option<Incident>> {
        match self.db.get_pinned_cf(self.cf(CF_META)?, incident_key(id))? {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("incident record {id}: {e}"))),
        }
    }
}
