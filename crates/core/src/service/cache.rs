//! The in-memory copy of the store, and how other nodes' writes reach it.
//!
//! Reads are served from memory. This node is the only writer of its own
//! records (its pools, the volumes in them, its attachments, its intents),
//! so it updates the copy itself as it commits. Records of other nodes arrive
//! through one watch on the whole key space, started at the revision the
//! opening read saw, so nothing written in between is missed; a watch that
//! fell behind a compaction reads everything afresh and watches from there.
//!
//! Every record key carries the revision this service last saw, in `revs`:
//! writes compare on it (see `persist`), and a change older than what is
//! already here is ignored (a re-read after a conflict can overtake the
//! watch).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::*;
use crate::desired::{Want, WANT_PREFIX};
use crate::moves::{MoveRecord, MOVE_PREFIX};
use crate::nodes::{CONTROLLER_KEY, NODE_CONF_PREFIX, NODE_PREFIX};
use crate::store::{KeyValue, StoreError, WatchEvent};

/// What the service last saw of a key: its revision, and whether it exists.
pub(crate) type Seen = (u64, bool);

/// How long one watch poll waits; bounds how late a dropped service's
/// thread notices and ends.
const WATCH_POLL: Duration = Duration::from_millis(500);

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring a record that does not parse");
            None
        }
    }
}

/// The record of a volume as `vol/<name>` holds it: what happens on a node
/// is in that node's attachment.
pub(crate) fn stored_record(v: &Volume) -> Volume {
    let mut v = v.clone();
    v.staging = None;
    v.consumers.clear();
    v
}

impl VolumeService {
    /// The node whose attachment a volume's view shows: the node that holds
    /// it, or this one for a volume of a shared pool.
    fn view_node<'a>(&'a self, vol: &'a Volume) -> &'a str {
        vol.node.as_deref().unwrap_or(&self.config.node_id)
    }

    /// A volume's record with the staging and consumers of its attachment
    /// on the node that holds it.
    pub(crate) fn merged(
        &self,
        mut vol: Volume,
        atts: Option<&BTreeMap<String, Attachment>>,
    ) -> Volume {
        let att = atts.and_then(|m| m.get(self.view_node(&vol)));
        match att {
            Some(a) if a.volume_id == vol.id => {
                vol.staging = a.staging.clone();
                vol.consumers = a.consumers.clone();
            }
            _ => {
                vol.staging = None;
                vol.consumers.clear();
            }
        }
        vol
    }

    /// Whether this node writes the record under `key` (then the copy here
    /// is already the newest, and watch events of it are our own echoes).
    fn written_here(&self, key: &str) -> bool {
        let me = self.config.node_id.as_str();
        if let Some(rest) = key.strip_prefix(ATTACH_PREFIX) {
            return rest.rsplit_once('/').is_some_and(|(_, node)| node == me);
        }
        if let Some(name) = key.strip_prefix(VOL_PREFIX) {
            return self
                .volumes
                .read()
                .get(name)
                .is_some_and(|v| v.node.as_deref() == Some(me));
        }
        if let Some(name) = key.strip_prefix(POOL_PREFIX) {
            return self
                .pools
                .read()
                .get(name)
                .is_some_and(|p| p.node.as_deref() == Some(me));
        }
        if let Some(name) = key.strip_prefix(SNAP_PREFIX) {
            let pools = self.pools.read();
            return self
                .snapshots
                .read()
                .get(name)
                .and_then(|s| pools.get(&s.pool))
                .is_some_and(|p| p.node.as_deref() == Some(me));
        }
        false
    }

    /// Take one change into the in-memory copy: a put (`value`) or a delete
    /// at revision `rev`, unless a change as new is already here.
    pub(crate) fn apply_record(&self, key: &str, value: Option<&[u8]>, rev: u64) {
        // Held until the copy is updated: two changes of one key applied at
        // once (the watch and a re-read) must land in revision order, or an
        // older one could overwrite the newer in the copy.
        let mut revs = self.revs.lock();
        if revs.get(key).is_some_and(|&(seen, _)| seen >= rev) {
            return;
        }
        revs.insert(key.to_string(), (rev, value.is_some()));
        if let Some(name) = key.strip_prefix(VOL_PREFIX) {
            let atts = self.attachments.read();
            let mut vols = self.volumes.write();
            match value.and_then(|b| decode::<Volume>(key, b)) {
                Some(v) => {
                    let v = self.merged(v, atts.get(name));
                    vols.insert(name.to_string(), v);
                }
                None => {
                    vols.remove(name);
                }
            }
        } else if let Some(rest) = key.strip_prefix(ATTACH_PREFIX) {
            let Some((name, node)) = rest.rsplit_once('/') else {
                return;
            };
            let mut atts = self.attachments.write();
            match value.and_then(|b| decode::<Attachment>(key, b)) {
                Some(a) => {
                    atts.entry(name.to_string())
                        .or_default()
                        .insert(node.to_string(), a);
                }
                None => {
                    if let Some(m) = atts.get_mut(name) {
                        m.remove(node);
                        if m.is_empty() {
                            atts.remove(name);
                        }
                    }
                }
            }
            let mut vols = self.volumes.write();
            if let Some(v) = vols.remove(name) {
                let v = self.merged(v, atts.get(name));
                vols.insert(name.to_string(), v);
            }
        } else if let Some(name) = key.strip_prefix(POOL_PREFIX) {
            let mut pools = self.pools.write();
            match value.and_then(|b| decode::<Pool>(key, b)) {
                Some(p) => pools.insert(name.to_string(), p),
                None => pools.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(SNAP_PREFIX) {
            let mut snaps = self.snapshots.write();
            match value.and_then(|b| decode::<Snapshot>(key, b)) {
                Some(s) => snaps.insert(name.to_string(), s),
                None => snaps.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(WANT_PREFIX) {
            {
                let mut wants = self.wants.write();
                match value.and_then(|b| decode::<Want>(key, b)) {
                    Some(w) => wants.insert(name.to_string(), w),
                    None => wants.remove(name),
                };
            }
            self.want_signal.notify();
        } else if let Some(name) = key.strip_prefix(MOVE_PREFIX) {
            {
                let mut moves = self.moves.write();
                match value.and_then(|b| decode::<MoveRecord>(key, b)) {
                    Some(m) => moves.insert(name.to_string(), m),
                    None => moves.remove(name),
                };
            }
            self.want_signal.notify();
        } else if key == CONTROLLER_KEY {
            *self.controller.write() =
                value.and_then(|b| decode::<crate::nodes::ControllerRecord>(key, b));
            self.want_signal.notify();
        } else if let Some(id) = key.strip_prefix(NODE_CONF_PREFIX) {
            let mut confs = self.node_confs.write();
            match value.and_then(|b| decode::<crate::nodes::NodeConf>(key, b)) {
                Some(c) => confs.insert(id.to_string(), c),
                None => confs.remove(id),
            };
        } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
            let mut nodes = self.nodes.write();
            let gone_or_new = match value.and_then(|b| decode::<crate::nodes::NodeRecord>(key, b)) {
                Some(n) => nodes.insert(id.to_string(), n).is_none(),
                None => nodes.remove(id).is_some(),
            };
            drop(nodes);
            if gone_or_new {
                self.want_signal.notify();
            }
        }
    }

    /// Load every record of a consistent read (at open, and after a watch
    /// fell behind a compaction): what the read lacks is gone.
    pub(crate) fn load_records(&self, kvs: &[KeyValue]) {
        let mut pools = BTreeMap::new();
        let mut bases = BTreeMap::new();
        let mut snaps = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        let mut confs = BTreeMap::new();
        let mut controller = None;
        let mut wants = BTreeMap::new();
        let mut moves = BTreeMap::new();
        let mut atts: BTreeMap<String, BTreeMap<String, Attachment>> = BTreeMap::new();
        let mut revs = HashMap::new();
        for kv in kvs {
            let key = kv.key.as_str();
            if let Some(name) = key.strip_prefix(VOL_PREFIX) {
                if let Some(v) = decode::<Volume>(key, &kv.value) {
                    bases.insert(name.to_string(), v);
                }
            } else if let Some(rest) = key.strip_prefix(ATTACH_PREFIX) {
                if let (Some((name, node)), Some(a)) =
                    (rest.rsplit_once('/'), decode::<Attachment>(key, &kv.value))
                {
                    atts.entry(name.to_string())
                        .or_default()
                        .insert(node.to_string(), a);
                }
            } else if let Some(name) = key.strip_prefix(POOL_PREFIX) {
                if let Some(p) = decode::<Pool>(key, &kv.value) {
                    pools.insert(name.to_string(), p);
                }
            } else if let Some(name) = key.strip_prefix(SNAP_PREFIX) {
                if let Some(s) = decode::<Snapshot>(key, &kv.value) {
                    snaps.insert(name.to_string(), s);
                }
            } else if key == CONTROLLER_KEY {
                controller = decode::<crate::nodes::ControllerRecord>(key, &kv.value);
            } else if let Some(name) = key.strip_prefix(WANT_PREFIX) {
                if let Some(w) = decode::<Want>(key, &kv.value) {
                    wants.insert(name.to_string(), w);
                }
            } else if let Some(name) = key.strip_prefix(MOVE_PREFIX) {
                if let Some(m) = decode::<MoveRecord>(key, &kv.value) {
                    moves.insert(name.to_string(), m);
                }
            } else if let Some(id) = key.strip_prefix(NODE_CONF_PREFIX) {
                if let Some(c) = decode::<crate::nodes::NodeConf>(key, &kv.value) {
                    confs.insert(id.to_string(), c);
                }
            } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
                if let Some(n) = decode::<crate::nodes::NodeRecord>(key, &kv.value) {
                    nodes.insert(id.to_string(), n);
                }
            } else {
                continue;
            }
            revs.insert(kv.key.clone(), (kv.mod_revision, true));
        }
        let vols = bases
            .into_iter()
            .map(|(name, v)| {
                let v = self.merged(v, atts.get(&name));
                (name, v)
            })
            .collect();
        *self.pools.write() = pools;
        *self.snapshots.write() = snaps;
        *self.nodes.write() = nodes;
        *self.node_confs.write() = confs;
        *self.controller.write() = controller;
        *self.wants.write() = wants;
        *self.moves.write() = moves;
        self.want_signal.notify();
        *self.attachments.write() = atts;
        *self.volumes.write() = vols;
        *self.revs.lock() = revs;
    }

    /// Follow other nodes' writes, from the revision the opening read saw,
    /// for as long as the service lives.
    pub fn follow_store(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        let after = self.store_revision;
        std::thread::Builder::new()
            .name("store-watch".into())
            .spawn(move || watch_loop(weak, after))
            .map(|_| ())
    }

    fn apply_events(&self, events: &[WatchEvent]) {
        for ev in events {
            let key = ev.key();
            if let (WatchEvent::Put(kv), Some((node, _))) =
                (ev, crate::events::parse_event_key(key))
            {
                if node != self.config.node_id {
                    if let Some(e) = Event::from_record(key, &kv.value, kv.mod_revision) {
                        self.events.publish(e);
                    }
                }
                continue;
            }
            if !is_record_key(key) || self.written_here(key) {
                continue;
            }
            match ev {
                WatchEvent::Put(kv) => self.apply_record(key, Some(&kv.value), kv.mod_revision),
                WatchEvent::Delete { mod_revision, .. } => {
                    self.apply_record(key, None, *mod_revision)
                }
            }
        }
    }
}

fn is_record_key(key: &str) -> bool {
    [
        VOL_PREFIX,
        ATTACH_PREFIX,
        POOL_PREFIX,
        SNAP_PREFIX,
        NODE_PREFIX,
        NODE_CONF_PREFIX,
        CONTROLLER_KEY,
        WANT_PREFIX,
        MOVE_PREFIX,
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

fn watch_loop(weak: Weak<VolumeService>, mut after: u64) {
    let mut watch = None;
    loop {
        let Some(svc) = weak.upgrade() else {
            return;
        };
        let w = match &mut watch {
            Some(w) => w,
            None => match svc.store.watch("", after) {
                Ok(w) => watch.insert(w),
                Err(StoreError::Compacted { .. }) => {
                    after = resync(&svc).unwrap_or(after);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the store; retrying");
                    drop(svc);
                    std::thread::sleep(WATCH_POLL);
                    continue;
                }
            },
        };
        match w.recv_timeout(WATCH_POLL) {
            Ok(Some(events)) => {
                if let Some(last) = events.last() {
                    after = after.max(last.revision());
                }
                svc.apply_events(&events);
                svc.settle_uncertain_all();
            }
            Ok(None) => svc.settle_uncertain_all(),
            Err(StoreError::Compacted { .. }) => {
                watch = None;
                after = resync(&svc).unwrap_or(after);
            }
            Err(e) => {
                // Unreachable store: reads keep the copy; the watch resumes
                // from its last revision when the store is back.
                tracing::debug!(error = %e, "store watch interrupted");
                drop(svc);
                std::thread::sleep(WATCH_POLL);
            }
        }
    }
}

/// Read everything afresh after the watch fell behind; returns the read's
/// revision to watch from.
fn resync(svc: &VolumeService) -> Option<u64> {
    match svc.store.range("") {
        Ok(range) => {
            tracing::warn!(
                revision = range.revision,
                "store watch fell behind a compaction; reloaded every record"
            );
            // Our own records are ours to keep: the reload must not roll
            // back a write committed after the read.
            let theirs: Vec<KeyValue> = range
                .kvs
                .into_iter()
                .filter(|kv| !svc.written_here(&kv.key))
                .collect();
            for kv in &theirs {
                svc.apply_record(&kv.key, Some(&kv.value), kv.mod_revision);
            }
            let present: std::collections::HashSet<&str> =
                theirs.iter().map(|kv| kv.key.as_str()).collect();
            let known: Vec<String> = svc
                .revs
                .lock()
                .iter()
                .filter(|(k, &(_, live))| live && !present.contains(k.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            for key in known {
                if !svc.written_here(&key) {
                    svc.apply_record(&key, None, range.revision);
                }
            }
            Some(range.revision)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot reload the store after a compaction");
            None
        }
    }
}
