//! Autogrow: the watcher's pass that grows mounted volumes nearing full.

use super::*;

impl VolumeService {
    /// One pass of the autogrow watcher: grow every mounted autogrow volume
    /// whose filesystem use crossed its threshold, by its step, never past
    /// its max. Volumes busy with another operation are left for the next
    /// pass. Returns the volumes grown.
    ///
    /// The pass decides from the in-memory copy, read without any lock, so
    /// it never writes that copy back: the growth goes through `resize_with`
    /// (which takes the lock and reads afresh) and the warnings are events
    /// alone. A consumer added meanwhile is never erased.
    pub fn autogrow_tick(&self) -> Vec<Volume> {
        let mut grown = Vec::new();
        for vol in self.list_volumes() {
            let (Some(a), Some(_)) = (vol.autogrow, &vol.staging) else {
                continue;
            };
            let Some(usage) = self.volume_usage(&vol) else {
                continue;
            };
            if usage.total_bytes == 0
                || usage.used_bytes.saturating_mul(100)
                    < u64::from(a.threshold_pct).saturating_mul(usage.total_bytes)
            {
                continue;
            }
            let pct = usage.used_bytes * 100 / usage.total_bytes;
            self.failpoints.hit("autogrow.decided");
            let can_grow = self
                .get_pool(&vol.pool)
                .and_then(|p| {
                    self.driver(p.driver)
                        .map(|d| d.node().can_grow_online(&vol))
                })
                .unwrap_or(false);
            if !can_grow {
                // Growing the image alone would only inflate the size.
                if self.autogrow_at_max.lock().insert(vol.id.clone()) {
                    let ev = self.event(
                        EventKind::Warning,
                        &vol,
                        format!(
                            "autogrow cannot grow this {} filesystem while mounted on this host (online ext4 resize needs CAP_SYS_RESOURCE) at {pct}% use",
                            vol.fs.map_or("-", FsType::as_str)
                        ),
                    );
                    self.record_event(ev);
                }
                continue;
            }
            if vol.size_bytes >= a.max_bytes {
                if self.autogrow_at_max.lock().insert(vol.id.clone()) {
                    let ev = self.event(
                        EventKind::Warning,
                        &vol,
                        format!(
                            "autogrow reached its max of {} bytes at {pct}% use",
                            a.max_bytes
                        ),
                    );
                    self.record_event(ev);
                }
                continue;
            }
            let target = a.next_size(vol.size_bytes);
            match self.resize_with(&vol.name, target, Wait::Fail) {
                Ok(v) => {
                    let ev = self.event(
                        EventKind::Autogrow,
                        &v,
                        format!(
                            "autogrow at {pct}% use: {} -> {} bytes",
                            vol.size_bytes, v.size_bytes
                        ),
                    );
                    self.record_event(ev);
                    self.stats.record_autogrow(&v.pool);
                    grown.push(v);
                }
                Err(Error::Conflict { .. }) => {}
                Err(e) => {
                    tracing::warn!(volume = %vol.name, error = %e, "autogrow failed");
                }
            }
        }
        grown
    }
}
