//! The intent journal: what an operation records before its first side
//! effect, and the one transaction that writes a result, clears the intent
//! and appends the event.

use super::*;

impl VolumeService {
    /// Unfinished intents (normally none outside an operation).
    pub fn intents(&self) -> Result<Vec<(String, Intent)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(INTENT_PREFIX)? {
            let intent: Intent =
                serde_json::from_slice(&v).map_err(|e| crate::store::StoreError::Corrupt {
                    path: k.clone(),
                    detail: e.to_string(),
                })?;
            out.push((k[INTENT_PREFIX.len()..].to_string(), intent));
        }
        Ok(out)
    }

    // ----- pools -------------------------------------------------------

    /// Record an operation's intent before its first side effect, with the
    /// volume's record as it should read meanwhile, in one transaction.
    pub(crate) fn begin(
        &self,
        txn: Txn,
        name: &str,
        record: &Volume,
        op: IntentOp,
        before: &Volume,
    ) -> Result<()> {
        let intent = Intent {
            op,
            before: before.clone(),
            started: Utc::now(),
            owner: self.config.node_id.clone(),
        };
        self.persist(
            txn,
            name,
            Some(record),
            Some(IntentWrite::Set(Box::new(intent))),
            None,
        )
    }

    pub(crate) fn event(&self, kind: EventKind, vol: &Volume, message: String) -> Event {
        self.events
            .next(kind, Some(&vol.pool), Some(&vol.name), message)
    }

    /// Write a volume's record (or its removal), its intent and an event in
    /// one transaction, then update the in-memory copy.
    ///
    /// `record` is the volume as this node sees it: the placement and shape
    /// go to `vol/<name>`, the staging and consumers to this node's
    /// `attachment/<name>/<node>` (deleted when empty). Both writes compare
    /// on the revisions last seen, so a record another node changed meanwhile
    /// is never overwritten: the write fails with [`Error::Conflict`], the
    /// keys are read again, and a retry works on the fresh copy.
    pub(crate) fn persist(
        &self,
        mut txn: Txn,
        name: &str,
        record: Option<&Volume>,
        intent: Option<IntentWrite>,
        event: Option<Event>,
    ) -> Result<()> {
        let node = self.config.node_id.clone();
        let vkey = vol_key(name);
        let akey = attachment_key(name, &node);
        txn = self.compare_seen(txn, &vkey);
        txn = self.compare_seen(txn, &akey);
        let attachment = record.and_then(|v| {
            (v.staging.is_some() || !v.consumers.is_empty()).then(|| Attachment {
                volume_id: v.id.clone(),
                node: node.clone(),
                boot_id: self.boot_id.clone(),
                staging: v.staging.clone(),
                consumers: v.consumers.clone(),
            })
        });
        txn = match record {
            Some(v) => txn.put(vkey.clone(), to_json(&stored_record(v))),
            None => txn.delete(vkey.clone()),
        };
        let had_attachment = self.revs.lock().get(&akey).is_some_and(|&(_, live)| live);
        txn = match &attachment {
            Some(a) => txn.put(akey.clone(), to_json(a)),
            None if had_attachment => txn.delete(akey.clone()),
            None => txn,
        };
        txn = match &intent {
            Some(IntentWrite::Set(i)) => txn.put(intent_key(name), to_json(i)),
            Some(IntentWrite::Clear) => txn.delete(intent_key(name)),
            None => txn,
        };
        if let Some(e) = &event {
            txn = e.add_to(txn);
        }
        let revision = match self.store.txn(txn) {
            Ok(r) => r,
            Err(crate::store::StoreError::Conflict { key }) => {
                tracing::warn!(
                    volume = name,
                    key,
                    "record changed in the store since read; re-reading"
                );
                self.reread(&[&vkey, &akey]);
                return Err(Error::Conflict {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(self.write_failed(name, e)),
        };
        {
            let mut revs = self.revs.lock();
            revs.insert(vkey, (revision, record.is_some()));
            if attachment.is_some() || had_attachment {
                revs.insert(akey, (revision, attachment.is_some()));
            }
        }
        {
            let mut atts = self.attachments.write();
            match &attachment {
                Some(a) => {
                    atts.entry(name.to_string())
                        .or_default()
                        .insert(node, a.clone());
                }
                None => {
                    if let Some(m) = atts.get_mut(name) {
                        m.remove(&node);
                        if m.is_empty() {
                            atts.remove(name);
                        }
                    }
                }
            }
            let mut vols = self.volumes.write();
            match record {
                Some(v) => {
                    vols.insert(name.to_string(), v.clone());
                }
                None => {
                    vols.remove(name);
                    atts.remove(name);
                }
            }
        }
        if let Some(mut e) = event {
            e.seq = revision;
            self.events.publish(e);
        }
        Ok(())
    }

    /// Commit `txn` with `event` in it, then publish the event with the
    /// revision that recorded it.
    pub(crate) fn commit_event(&self, txn: Txn, event: Option<Event>) -> Result<u64> {
        let txn = match &event {
            Some(e) => e.add_to(txn),
            None => txn,
        };
        let revision = self.store.txn(txn)?;
        if let Some(mut e) = event {
            e.seq = revision;
            self.events.publish(e);
        }
        Ok(revision)
    }

    /// A write of `name`'s records failed: when the store did not answer,
    /// the write may still land, so the volume is settled before its next
    /// operation (see [`Self::settle_uncertain`]).
    pub(crate) fn write_failed(&self, name: &str, e: crate::store::StoreError) -> Error {
        if e.is_retryable() {
            tracing::warn!(volume = name, error = %e, "a write's outcome is unknown; the volume is read back before its next operation");
            self.uncertain.lock().insert(name.to_string());
        }
        e.into()
    }

    /// Read back a volume whose last write's outcome is unknown, and finish
    /// or undo the operation if its intent landed. The caller holds the
    /// volume's lock.
    pub(crate) fn settle_uncertain(&self, name: &str) -> Result<()> {
        let me = self.config.node_id.clone();
        let keys = [vol_key(name), attachment_key(name, &me), intent_key(name)];
        let mut read = Vec::new();
        for key in &keys {
            read.push(self.store.get_kv(key)?);
        }
        for (key, kv) in keys.iter().zip(&read) {
            match kv {
                Some(kv) => self.apply_record(key, Some(&kv.value), kv.mod_revision),
                None => {
                    let rev = self.revs.lock().get(key).map_or(0, |&(r, _)| r + 1);
                    self.apply_record(key, None, rev);
                }
            }
        }
        if let Some(kv) = &read[2] {
            let intent: Intent = serde_json::from_slice(&kv.value).map_err(|e| {
                crate::store::StoreError::Corrupt {
                    path: kv.key.clone(),
                    detail: e.to_string(),
                }
            })?;
            if intent.owner.is_empty() || intent.owner == me {
                let mut report = crate::reconcile::ReconcileReport::default();
                self.settle_intent(name, &intent, false, &mut report)?;
                tracing::warn!(
                    volume = name,
                    ?report,
                    "settled an operation whose write's outcome was unknown"
                );
                if !report.failed.is_empty() {
                    return Err(Error::Unavailable(format!(
                        "volume {name:?}: an interrupted {} could not be settled yet",
                        intent.op.name()
                    )));
                }
            }
        }
        self.uncertain.lock().remove(name);
        Ok(())
    }

    /// Settle what can be settled now (the store watch calls this when the
    /// store answers again); a volume whose operation runs is left to it.
    pub(crate) fn settle_uncertain_all(&self) {
        let names: Vec<String> = self.uncertain.lock().iter().cloned().collect();
        for name in names {
            let Some(_g) = self.locks.try_lock(&name) else {
                continue;
            };
            if let Err(e) = self.settle_uncertain(&name) {
                tracing::debug!(volume = %name, error = %e, "not settled yet");
            }
        }
    }

    /// Add a compare on the revision this service last saw of `key` (absent
    /// when it never saw one).
    pub(crate) fn compare_seen(&self, txn: Txn, key: &str) -> Txn {
        match self.revs.lock().get(key) {
            Some(&(r, true)) => txn.require_revision(key, r),
            _ => txn.require_absent(key),
        }
    }

    /// After a conflict: take the store's current records of these keys
    /// into the in-memory copy (and their revisions).
    pub(crate) fn reread(&self, keys: &[&str]) {
        for key in keys {
            match self.store.get_kv(key) {
                Ok(Some(kv)) => self.apply_record(&kv.key, Some(&kv.value), kv.mod_revision),
                Ok(None) => {
                    // Gone: whatever revision deleted it is newer than ours.
                    let rev = self.revs.lock().get(*key).map_or(0, |&(r, _)| r + 1);
                    self.apply_record(key, None, rev);
                }
                Err(e) => tracing::warn!(key, error = %e, "cannot re-read a record"),
            }
        }
    }

    /// Store and publish an event that changes no record (a warning). An
    /// event that cannot be stored is logged, never allowed to fail the
    /// operation that observed it.
    pub(crate) fn record_event(&self, ev: Event) {
        let message = ev.message.clone();
        if let Err(e) = self.commit_event(Txn::new(), Some(ev)) {
            tracing::warn!(error = %e, event = %message, "cannot store an event");
        }
    }
}
