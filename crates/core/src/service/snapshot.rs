//! Snapshots: a copy of a volume kept in its pool, and their removal.

use super::*;

impl VolumeService {
    pub fn list_snapshots(&self) -> Vec<Snapshot> {
        self.snapshots.read().values().cloned().collect()
    }

    pub fn get_snapshot(&self, name: &str) -> Result<Snapshot> {
        validate_name("snapshot", name)?;
        self.snapshots
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("snapshot", name))
    }

    /// Snapshot a volume: a consistent copy of its data now. The same
    /// request again returns the same snapshot.
    pub fn create_snapshot(&self, volume: &str, name: &str, wait: Wait) -> Result<Snapshot> {
        let driver = self.volume_driver_label(volume);
        self.timed(Operation::Snapshot, driver, || {
            self.create_snapshot_op(volume, name, wait)
        })
    }

    pub(crate) fn create_snapshot_op(
        &self,
        volume: &str,
        name: &str,
        wait: Wait,
    ) -> Result<Snapshot> {
        validate_name("volume", volume)?;
        validate_name("snapshot", name)?;
        let _g = self.lock_op(volume, wait)?;
        let _s = self.lock_op(&format!("snapshot:{name}"), wait)?;
        if let Some(existing) = self.snapshots.read().get(name).cloned() {
            if existing.source_volume == volume {
                return Ok(existing);
            }
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: name.to_string(),
                detail: format!("it is a snapshot of volume {}", existing.source_volume),
            });
        }
        let vol = self.get_volume(volume)?;
        self.check_settled(&vol)?;
        self.check_not_moving(&vol)?;
        self.check_here(&vol)?;
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        let cow = driver.copies_share_extents(&pool)?;
        let snap = Snapshot {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_string(),
            source_volume: vol.name.clone(),
            source_volume_id: vol.id.clone(),
            pool: pool.name.clone(),
            size_bytes: vol.size_bytes,
            fs: vol.fs,
            block: vol.block,
            formatted: vol.formatted,
            created_at: Utc::now(),
            ready: false,
            cow,
        };
        {
            let _admit = self.admission.lock();
            self.admit(&pool, if cow { 0 } else { snap.size_bytes })?;
            let intent = Intent {
                op: IntentOp::Snapshot {
                    snapshot: snap.clone(),
                },
                before: vol.clone(),
                started: Utc::now(),
                owner: self.config.node_id.clone(),
            };
            self.store
                .commit(
                    Txn::new()
                        .require_absent(snap_key(name))
                        .put(snap_key(name), to_json(&snap))
                        .put(intent_key(volume), to_json(&intent)),
                )
                .map_err(|e| self.write_failed(volume, e))?;
            self.snapshots
                .write()
                .insert(name.to_string(), snap.clone());
        }
        let op = self.operations.start("snapshot", name, volume);
        let copied = self.with_still(&vol, || {
            let r = driver.snapshot(&pool, &vol, &snap, op.progress());
            self.failpoints.hit("snapshot.after_copy");
            r
        });
        if let Err(e) = copied {
            self.undo_snapshot(&pool, volume, &snap);
            return Err(e);
        }
        let mut done = snap;
        done.ready = true;
        let ev = self.event(EventKind::Snapshot, &vol, format!("snapshot {name} taken"));
        let revision = self
            .store
            .txn(
                ev.add_to(
                    Txn::new()
                        .put(snap_key(name), to_json(&done))
                        .delete(intent_key(volume)),
                ),
            )
            .map_err(|e| self.write_failed(volume, e))?;
        self.snapshots
            .write()
            .insert(name.to_string(), done.clone());
        self.events.publish(Event {
            seq: revision,
            ..ev
        });
        Ok(done)
    }

    /// Take back an interrupted snapshot: its storage, its record, the intent.
    pub(crate) fn undo_snapshot(&self, pool: &Pool, volume: &str, snap: &Snapshot) {
        let result = (|| -> Result<()> {
            self.driver(pool.driver)?.delete_snapshot(pool, snap)?;
            self.store
                .commit(
                    Txn::new()
                        .delete(snap_key(&snap.name))
                        .delete(intent_key(volume)),
                )
                .map_err(|e| self.write_failed(volume, e))?;
            self.snapshots.write().remove(&snap.name);
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(snapshot = %snap.name, error = %e, "undo snapshot failed; the intent stays for the reconciler");
        }
    }

    /// Delete a snapshot. Its storage goes first, so a crash in between
    /// leaves a record whose delete can simply be repeated.
    pub fn delete_snapshot(&self, name: &str, wait: Wait) -> Result<()> {
        let driver = self.snapshot_driver_label(name);
        self.timed(Operation::DeleteSnapshot, driver, || {
            self.delete_snapshot_op(name, wait)
        })
    }

    pub(crate) fn delete_snapshot_op(&self, name: &str, wait: Wait) -> Result<()> {
        validate_name("snapshot", name)?;
        let _s = self.lock_op(&format!("snapshot:{name}"), wait)?;
        let snap = self.get_snapshot(name)?;
        if !snap.ready {
            return Err(Error::Busy {
                kind: "snapshot",
                name: name.to_string(),
                detail: "the snapshot is still being made".into(),
            });
        }
        let pool = self.get_pool(&snap.pool)?;
        // Its data is on its pool's node: removed anywhere else, the record
        // would go and the data stay there for ever.
        self.check_pool_here(&pool)?;
        self.driver(pool.driver)?.delete_snapshot(&pool, &snap)?;
        let ev = self.events.next(
            EventKind::Snapshot,
            Some(&snap.pool),
            Some(&snap.source_volume),
            format!("snapshot {name} deleted"),
        );
        let revision = self
            .store
            .txn(ev.add_to(Txn::new().delete(snap_key(name))))?;
        self.snapshots.write().remove(name);
        self.events.publish(Event {
            seq: revision,
            ..ev
        });
        Ok(())
    }
}
