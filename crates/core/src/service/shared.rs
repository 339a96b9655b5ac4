//! Volumes on shared storage (rbd): one writer at a time, enforced.
//!
//! Any node may stage a shared volume, but a read-write staging exists on
//! at most one node. A node that finds another holder refuses, naming it,
//! unless that holder's lease has lapsed (dead, or cut off) or the caller
//! preempts; then it first fences the holder (its mappings' cluster
//! clients are blocklisted) and only maps once the cluster enforces that.
//!
//! `fence/<node>/<pool>` records each fence. The fenced node, once it is
//! back in touch with the store, tears down its stale mappings without
//! flushing them and marks the record cleaned; the controller then lifts
//! the blocklist entries and deletes the record. Nobody has to step in.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::DateTime;
use utoipa::ToSchema;

use super::*;
use crate::model::Attachment;

pub(crate) const FENCE_PREFIX: &str = "fence/";
/// A fence lasts this long at most, even if its node never comes back to
/// clean up (then the blocklist entry expires in the cluster by itself).
pub const FENCE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How often a node looks for fences of its own, and the controller for
/// fences to lift.
const FENCE_TICK: Duration = Duration::from_secs(1);
/// Mapping helpers are probed every this many ticks.
const WATCHDOG_EVERY: u64 = 5;

pub(crate) fn fence_key(node: &str, pool: &str) -> String {
    format!("{FENCE_PREFIX}{node}/{pool}")
}

/// One node cut off one shared pool's storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fence {
    /// The node fenced.
    pub node: String,
    pub pool: String,
    /// The cluster client addresses blocklisted.
    pub addrs: Vec<String>,
    /// The volumes it held there.
    pub volumes: Vec<String>,
    /// The node that fenced it.
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    /// The fenced node has torn down its mappings: the controller may lift
    /// the blocklist entries.
    #[serde(default)]
    pub cleaned: bool,
}

/// Who holds a shared volume on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Holder {
    pub node: String,
    /// When its first consumer there came.
    pub since: Option<DateTime<Utc>>,
    /// Whether every consumer there reads only.
    pub read_only: bool,
    /// Why, if it was fenced off the volume (it holds it no longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

/// Another node's hold, as a claim weighs it.
struct Hold {
    node: String,
    /// What its mapping registered (to fence).
    clients: Vec<String>,
    read_only: bool,
    since: Option<DateTime<Utc>>,
}

fn since(a: &Attachment) -> Option<DateTime<Utc>> {
    a.consumers.values().map(|c| c.since).min()
}

fn reads_only(a: &Attachment) -> bool {
    !a.consumers.is_empty() && a.consumers.values().all(|c| c.read_only)
}

impl VolumeService {
    /// Every node's hold on a shared volume, and fences of it, from the
    /// store (the one place that answers who holds it).
    pub fn holders(&self, name: &str) -> Result<Vec<Holder>> {
        let vol = self.get_volume(name)?;
        let fences = self.fences()?;
        let mut out = Vec::new();
        for a in self.attachments_in_store(&vol)? {
            let fenced = fences
                .iter()
                .find(|f| f.node == a.node && f.volumes.contains(&vol.name))
                .map(|f| format!("fenced by {} at {}: {}", f.by, f.at.to_rfc3339(), f.reason));
            out.push(Holder {
                since: since(&a),
                read_only: reads_only(&a),
                node: a.node,
                fenced,
            });
        }
        Ok(out)
    }

    /// Every fence in the store.
    pub fn fences(&self) -> Result<Vec<Fence>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(FENCE_PREFIX)? {
            match serde_json::from_slice::<Fence>(&v) {
                Ok(f) => out.push(f),
                Err(e) => tracing::warn!(key = k, error = %e, "unreadable fence record; skipped"),
            }
        }
        Ok(out)
    }

    fn attachments_in_store(&self, vol: &Volume) -> Result<Vec<Attachment>> {
        let prefix = format!("{ATTACH_PREFIX}{}/", vol.name);
        let mut out = Vec::new();
        for (k, v) in self.store.scan(&prefix)? {
            let a: Attachment =
                serde_json::from_slice(&v).map_err(|e| crate::store::StoreError::Corrupt {
                    path: k.clone(),
                    detail: e.to_string(),
                })?;
            if a.volume_id == vol.id && (a.staging.is_some() || !a.consumers.is_empty()) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Before this node stages a shared volume: refuse while another live
    /// node holds it (naming it), or fence a holder whose lease lapsed (or
    /// any holder, with `preempt`). Reads the store, not the cache, and
    /// leaves the volume's revision as read in the cache, so the stage's
    /// intent write fails if any node changed the volume meanwhile.
    pub(crate) fn claim_shared(
        &self,
        pool: &Pool,
        vol: &Volume,
        read_only: bool,
        preempt: bool,
    ) -> Result<()> {
        self.claim_shared_for(pool, vol, &self.config.node_id.clone(), read_only, preempt)
    }

    /// A CO's controller publish of a shared volume to `node` (CSI
    /// ControllerPublishVolume): the same check and fence as a stage there,
    /// made by whichever node the CO asks, before the node stages it.
    pub fn claim_for_node(&self, name: &str, node: &str, read_only: bool) -> Result<()> {
        validate_name("volume", name)?;
        let vol = self.get_volume(name)?;
        let pool = self.get_pool(&vol.pool)?;
        if !pool.is_shared() {
            return match &vol.node {
                Some(n) if n != node => Err(Error::OtherNode {
                    kind: "volume",
                    name: vol.name.clone(),
                    node: n.clone(),
                }),
                _ => Ok(()),
            };
        }
        self.claim_shared_for(&pool, &vol, node, read_only, false)
    }

    fn claim_shared_for(
        &self,
        pool: &Pool,
        vol: &Volume,
        me: &str,
        read_only: bool,
        preempt: bool,
    ) -> Result<()> {
        if !pool.is_shared() {
            return Ok(());
        }
        let me = me.to_string();
        let vkey = vol_key(&vol.name);
        if let Some(kv) = self.store.get_kv(&vkey)? {
            self.apply_record(&vkey, Some(&kv.value), kv.mod_revision);
        }
        let fences = self.fences()?;
        let mut holders: Vec<Hold> = self
            .attachments_in_store(vol)?
            .into_iter()
            .filter(|a| a.node != me)
            .map(|a| Hold {
                clients: a
                    .staging
                    .as_ref()
                    .map(|s| s.clients.clone())
                    .unwrap_or_default(),
                read_only: reads_only(&a),
                since: since(&a),
                node: a.node,
            })
            .collect();
        // A stage under way elsewhere holds the volume as much as a done one.
        if let Some(raw) = self.store.get(&intent_key(&vol.name))? {
            if let Ok(i) = serde_json::from_slice::<Intent>(&raw) {
                if i.owner != me && !holders.iter().any(|h| h.node == i.owner) {
                    holders.push(Hold {
                        node: i.owner,
                        clients: Vec::new(),
                        read_only: false,
                        since: Some(i.started),
                    });
                }
            }
        }
        for Hold {
            node,
            clients,
            read_only: their_ro,
            since,
        } in holders
        {
            if fences
                .iter()
                .any(|f| f.node == node && f.pool == pool.name && f.volumes.contains(&vol.name))
            {
                continue;
            }
            if read_only && their_ro {
                continue;
            }
            let live = self.store.get(&crate::nodes::node_key(&node))?.is_some();
            let reason = if !live {
                format!("node {node}'s lease lapsed (dead or cut off)")
            } else if preempt {
                format!("preempted by node {me}")
            } else {
                let since = since.map(|t| t.to_rfc3339()).unwrap_or_default();
                let mode = if their_ro { "read-only" } else { "read-write" };
                return Err(Error::Busy {
                    kind: "volume",
                    name: vol.name.clone(),
                    detail: format!(
                        "held {mode} by node {node} since {since}; it is alive, so this node will not take it over without --preempt"
                    ),
                });
            };
            self.fence_node(pool, vol, &node, &clients, &reason)?;
        }
        Ok(())
    }

    /// Blocklist `node`'s clients of the volume, recording the fence first
    /// (a crash in between leaves a record, so the fenced node still cleans
    /// up and the entries are still lifted). A fence that fails fails the
    /// attach: never two writers.
    fn fence_node(
        &self,
        pool: &Pool,
        vol: &Volume,
        node: &str,
        clients: &[String],
        reason: &str,
    ) -> Result<()> {
        let driver = self.driver(pool.driver)?;
        let addrs = driver.fence_targets(pool, vol, clients)?;
        let key = fence_key(node, &pool.name);
        let previous = self.store.get(&key)?;
        let mut fence = match &previous {
            Some(raw) => serde_json::from_slice::<Fence>(raw).ok(),
            None => None,
        }
        .unwrap_or(Fence {
            node: node.to_string(),
            pool: pool.name.clone(),
            addrs: Vec::new(),
            volumes: Vec::new(),
            by: String::new(),
            at: Utc::now(),
            reason: String::new(),
            cleaned: false,
        });
        let mut all: BTreeSet<String> = fence.addrs.drain(..).collect();
        all.extend(addrs.iter().cloned());
        fence.addrs = all.into_iter().collect();
        if !fence.volumes.contains(&vol.name) {
            fence.volumes.push(vol.name.clone());
        }
        fence.by = self.config.node_id.clone();
        fence.at = Utc::now();
        fence.reason = reason.to_string();
        fence.cleaned = false;
        self.store
            .commit(Txn::new().put(key.clone(), to_json(&fence)))?;
        self.failpoints.hit("fence.before_blocklist");
        if let Err(e) = driver.fence(pool, &addrs, FENCE_EXPIRY) {
            // Not fenced: the holder keeps the volume, and must not tear
            // its mapping down for a fence that never happened.
            let undo = match previous {
                Some(raw) => Txn::new().put(key, raw),
                None => Txn::new().delete(key),
            };
            if let Err(u) = self.store.commit(undo) {
                tracing::error!(node, error = %u, "taking back a failed fence's record failed");
            }
            return Err(e.into());
        }
        self.failpoints.hit("fence.after_blocklist");
        let ev = self.event(
            EventKind::Fence,
            vol,
            format!(
                "fenced node {node} off the volume ({reason}); blocklisted {}",
                if addrs.is_empty() {
                    "no client (none was mapped)".to_string()
                } else {
                    addrs.join(", ")
                }
            ),
        );
        self.commit_event(Txn::new(), Some(ev))?;
        tracing::warn!(volume = %vol.name, node, reason, ?addrs, "fenced");
        Ok(())
    }

    /// Fences of this node: tear down the stale mappings without flushing
    /// and report the fence cleaned. On the controller: lift cleaned
    /// fences.
    pub(crate) fn fence_pass(&self) {
        let fences = match self.fences() {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "reading fences failed; next pass");
                return;
            }
        };
        let me = self.config.node_id.clone();
        for f in fences {
            if f.node == me && !f.cleaned {
                self.clean_after_fence(f);
            } else if f.cleaned && self.is_controller() {
                self.lift_fence(f);
            }
        }
    }

    fn clean_after_fence(&self, mut f: Fence) {
        let me = self.config.node_id.clone();
        let Ok(pool) = self.get_pool(&f.pool) else {
            return;
        };
        let Ok(driver) = self.driver(pool.driver).cloned() else {
            return;
        };
        for name in &f.volumes {
            let akey = attachment_key(name, &me);
            let Ok(Some(kv)) = self.store.get_kv(&akey) else {
                continue;
            };
            let Ok(a) = serde_json::from_slice::<Attachment>(&kv.value) else {
                continue;
            };
            let Ok(mut vol) = self.get_volume(name) else {
                continue;
            };
            // The lock may be held by an operation stuck on the fenced
            // mapping: the teardown goes ahead without it, and kills what
            // it waits on.
            let _g = self.locks.lock_for(name, Duration::from_millis(100));
            vol.staging = a.staging.clone();
            vol.consumers = a.consumers.clone();
            for c in a.consumers.values() {
                if let Some(t) = &c.target {
                    let _ = self.host.unmount_lazy(t);
                }
            }
            driver
                .node()
                .abandon(&pool, &vol, &self.mountpoint_for(name));
            let txn = Txn::new().delete(akey.clone());
            match self.store.txn(txn) {
                Ok(rev) => self.apply_record(&akey, None, rev),
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "dropping the fenced attachment failed; next pass");
                    return;
                }
            }
            tracing::warn!(volume = %name, by = %f.by, "this node was fenced off the volume; its mapping is torn down");
        }
        f.cleaned = true;
        let ev = self.events.next(
            EventKind::Fence,
            Some(&f.pool),
            None,
            format!(
                "node {me} tore down its mappings of {} after being fenced; the fence can be lifted",
                f.volumes.join(", ")
            ),
        );
        let _ = self.commit_event(
            Txn::new().put(fence_key(&f.node, &f.pool), to_json(&f)),
            Some(ev),
        );
    }

    fn lift_fence(&self, f: Fence) {
        let Ok(pool) = self.get_pool(&f.pool) else {
            return;
        };
        let Ok(driver) = self.driver(pool.driver) else {
            return;
        };
        if let Err(e) = driver.unfence(&pool, &f.addrs) {
            tracing::warn!(node = %f.node, error = %e, "lifting a fence failed; next pass");
            return;
        }
        let ev = self.events.next(
            EventKind::Fence,
            Some(&f.pool),
            None,
            format!(
                "unfenced node {} (lifted {})",
                f.node,
                if f.addrs.is_empty() {
                    "nothing".to_string()
                } else {
                    f.addrs.join(", ")
                }
            ),
        );
        let key = fence_key(&f.node, &f.pool);
        let txn = Txn::new().delete(key);
        if let Err(e) = self.commit_event(txn, Some(ev)) {
            tracing::warn!(node = %f.node, error = %e, "deleting a lifted fence failed; next pass");
        }
    }

    /// Kill mapping helpers that stopped answering (a warning event each):
    /// I/O on them fails instead of hanging, and the next mount maps anew.
    fn watchdog_pass(&self) {
        for d in self.drivers.values() {
            for what in d.node().watchdog() {
                let ev = self.events.next(
                    EventKind::Warning,
                    None,
                    None,
                    format!("killed the mapping helper at {what}: it stopped answering"),
                );
                let _ = self.commit_event(Txn::new(), Some(ev));
            }
        }
    }

    /// Look for fences of this node and fences to lift, for as long as the
    /// service lives.
    pub fn start_fencing(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("fencing".into())
            .spawn(move || {
                for tick in 0u64.. {
                    let Some(svc) = weak.upgrade() else {
                        return;
                    };
                    svc.fence_pass();
                    if tick % WATCHDOG_EVERY == 0 {
                        svc.watchdog_pass();
                    }
                    drop(svc);
                    std::thread::sleep(FENCE_TICK);
                }
            })
            .map(|_| ())
    }
}
