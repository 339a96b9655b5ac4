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
    pub(crate) fn persist(
        &self,
        mut txn: Txn,
        name: &str,
        record: Option<&Volume>,
        intent: Option<IntentWrite>,
        event: Option<Event>,
    ) -> Result<()> {
        txn = match record {
            Some(v) => txn.put(vol_key(name), to_json(v)),
            None => txn.delete(vol_key(name)),
        };
        txn = match &intent {
            Some(IntentWrite::Set(i)) => txn.put(intent_key(name), to_json(i)),
            Some(IntentWrite::Clear) => txn.delete(intent_key(name)),
            None => txn,
        };
        if let Some(e) = &event {
            txn = txn.put(event_key(e.seq), to_json(e));
            if e.seq > KEEP {
                txn = txn.delete(event_key(e.seq - KEEP));
            }
        }
        self.store.commit(txn)?;
        {
            let mut vols = self.volumes.write();
            match record {
                Some(v) => {
                    vols.insert(name.to_string(), v.clone());
                }
                None => {
                    vols.remove(name);
                }
            }
        }
        if let Some(e) = event {
            self.events.publish(e);
        }
        Ok(())
    }

    /// Store and publish an event that changes no record (a warning). An
    /// event that cannot be stored is logged, never allowed to fail the
    /// operation that observed it.
    pub(crate) fn record_event(&self, ev: Event) {
        let mut txn = Txn::new().put(event_key(ev.seq), to_json(&ev));
        if ev.seq > KEEP {
            txn = txn.delete(event_key(ev.seq - KEEP));
        }
        match self.store.commit(txn) {
            Ok(()) => self.events.publish(ev),
            Err(e) => tracing::warn!(error = %e, event = %ev.message, "cannot store an event"),
        }
    }
}
