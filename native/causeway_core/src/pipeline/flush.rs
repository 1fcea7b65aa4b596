//! The flush barrier: `request_flush` records which ring positions a token
//! waits for, and the writers answer it once everything before it is durable.

use super::*;

impl Pipeline {
    /// Asks for a durability barrier: `notifier.flushed(token, ..)` is called
    /// once every event accepted before this call is persisted (or counted as
    /// dropped) and the WAL is synced.
    pub fn request_flush(&self, token: u64) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(why) = self.outage_message() {
            return Err(Error::StorageDown(why));
        }
        let targets = self.rings.flush_targets();
        if let Ok(mut f) = self.flushes.lock() {
            f.push(FlushReq { token, targets });
            self.flush_pending.fetch_add(1, Ordering::Release);
        }
        // Answered by a worker (or the manager), never on the caller's thread.
        Ok(())
    }

    pub(super) fn check_flushes(&self) {
        if self.flush_pending.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(why) = self.outage_message() {
            // nothing will be durable until the store is back: say so now
            let waiting: Vec<u64> = match self.flushes.lock() {
                Ok(mut f) => {
                    self.flush_pending.store(0, Ordering::Release);
                    f.drain(..).map(|r| r.token).collect()
                }
                Err(_) => Vec::new(),
            };
            for token in waiting {
                self.notifier
                    .flushed(token, Err(format!("storage is failing: {why}")));
            }
            return;
        }
        let done: Vec<u64> = {
            let Ok(mut f) = self.flushes.lock() else {
                return;
            };
            let mut done = Vec::new();
            f.retain_mut(|r| {
                if self.rings.reached(&mut r.targets) {
                    done.push(r.token);
                    false
                } else {
                    true
                }
            });
            self.flush_pending.store(f.len(), Ordering::Release);
            done
        };
        if done.is_empty() {
            return;
        }
        let result = match self.store() {
            Some(s) => s.sync().map_err(|e| e.to_string()),
            None if self.closed.load(Ordering::Acquire) => Err("closed".to_string()),
            None => {
                Err("storage unavailable: the store is being reopened after a failure".to_string())
            }
        };
        for token in done {
            self.notifier.flushed(token, result.clone());
        }
    }
}
