//! Nodes: each daemon registers `node/<id>` under a lease it keeps alive, so
//! every node (and the CLI on any of them) knows which nodes are up, what
//! they run and what their pools can hold. A node whose lease lapsed (dead,
//! or cut off from the store) loses its record; nodes still named by pools
//! or volumes are then shown unreachable.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::model::{validate_label, validate_name, DriverKind, FsType, InvalidInput, PoolCapacity};
use crate::service::CreateVolume;
use crate::service::{to_json, VolumeService};
use crate::store::{LeaseId, StoreError, Txn};

pub const NODE_PREFIX: &str = "node/";
/// `nodeconf/<id>`: what operators set on a node (cordoned); not leased, so
/// it outlives the node's restarts.
pub const NODE_CONF_PREFIX: &str = "nodeconf/";

/// How long a node's record outlives its last keepalive.
pub const NODE_TTL: Duration = Duration::from_secs(10);

/// The elected controller: one key, taken by compare-and-swap (absent) under
/// the winner's node lease, so it vanishes with the node.
pub const CONTROLLER_KEY: &str = "cluster/controller";

/// Who the controller is, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ControllerRecord {
    pub node: String,
    pub boot_id: String,
    pub since: DateTime<Utc>,
}

/// `ballast cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// None between a controller's death and the next election (at most
    /// about one node TTL).
    pub controller: Option<ControllerRecord>,
    /// The node answering.
    pub this_node: String,
    pub ready: usize,
    pub unreachable: usize,
    pub cordoned: usize,
}

pub fn node_key(id: &str) -> String {
    format!("{NODE_PREFIX}{id}")
}

pub fn node_conf_key(id: &str) -> String {
    format!("{NODE_CONF_PREFIX}{id}")
}

/// What an operator set on a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeConf {
    /// No new volumes are placed on the node; what lives there stays.
    pub cordoned: bool,
    pub since: Option<DateTime<Utc>>,
}

/// What a node says about itself in `node/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeRecord {
    pub id: String,
    pub boot_id: String,
    pub version: String,
    /// The node's REST/metrics listener (`--listen`), if it has one.
    pub address: Option<String>,
    /// Where it accepts move streams (see [`crate::moves`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<crate::moves::TransferEndpoint>,
    /// From the config: zone, rack, ...
    pub labels: BTreeMap<String, String>,
    pub started_at: DateTime<Utc>,
    /// This daemon process (made at each start): a second daemon with the
    /// same node id tells a live holder from its own dead predecessor by it.
    #[serde(default)]
    pub instance: String,
    /// When this record was last written (capacity is as of then).
    pub updated_at: DateTime<Utc>,
    pub pools: Vec<NodePool>,
    /// How the node maps shared storage, by driver (rbd: krbd, rbd-nbd or
    /// rbd-fuse, as its kernel offers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mappings: BTreeMap<String, String>,
}

/// A pool of the node and its capacity when the node last wrote its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodePool {
    pub name: String,
    pub driver: DriverKind,
    #[serde(flatten)]
    pub capacity: PoolCapacity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Its lease is alive.
    Ready,
    /// Named by pools or volumes, but its lease lapsed: down, or cut off.
    Unreachable,
}

/// A node as `node ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub state: NodeState,
    /// No new volumes are placed on it (`node cordon`, `node drain`).
    #[serde(default)]
    pub cordoned: bool,
    /// Its own record while it is ready.
    pub record: Option<NodeRecord>,
    /// Pools and volumes the store places on it.
    pub pools: Vec<String>,
    pub volumes: usize,
}

/// A place a volume of some shape could go now (`GET /v1/offers`): the
/// offers Polly described, storage offered like CPU and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Offer {
    pub node: String,
    pub pool: String,
    pub driver: DriverKind,
    /// What the pool can still admit (its node's latest figure).
    pub available_bytes: u64,
    pub labels: BTreeMap<String, String>,
}

/// The shape of a volume to place, and where it may go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OfferQuery {
    pub size_bytes: u64,
    pub fs: Option<FsType>,
    pub block: bool,
    /// Node labels that must all match.
    pub selector: BTreeMap<String, String>,
}

/// `zone=a,rack=r1`: node labels that must all match.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, InvalidInput> {
    let mut out = BTreeMap::new();
    if text.is_empty() {
        return Ok(out);
    }
    for pair in text.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(InvalidInput::new(
                format!("selector {pair:?}"),
                "use KEY=VALUE[,KEY=VALUE...]",
            ));
        };
        validate_label(k, v)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// What the daemon tells its heartbeat about itself.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// This process (see [`NodeRecord::instance`]).
    pub instance: String,
    /// The instance the previous daemon of this state directory wrote: a
    /// record of it is a dead predecessor's, which this daemon replaces.
    pub previous_instance: Option<String>,
    pub version: String,
    pub address: Option<String>,
    pub transfer: Option<crate::moves::TransferEndpoint>,
    pub labels: BTreeMap<String, String>,
}

impl VolumeService {
    /// Every node the store knows: those with a live record, and those that
    /// pools or volumes name, in id order.
    pub fn list_nodes(&self) -> Vec<NodeView> {
        let records = self.nodes.read().clone();
        let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
        fn view<'a>(views: &'a mut BTreeMap<String, NodeView>, id: &str) -> &'a mut NodeView {
            views.entry(id.to_string()).or_insert_with(|| NodeView {
                id: id.to_string(),
                state: NodeState::Unreachable,
                cordoned: false,
                record: None,
                pools: Vec::new(),
                volumes: 0,
            })
        }
        for (id, r) in &records {
            let v = view(&mut views, id);
            v.state = NodeState::Ready;
            v.record = Some(r.clone());
        }
        for p in self.list_pools() {
            if let Some(n) = &p.node {
                view(&mut views, n).pools.push(p.name.clone());
            }
        }
        for (id, conf) in self.node_confs.read().iter() {
            if let Some(v) = views.get_mut(id) {
                v.cordoned = conf.cordoned;
            }
        }
        for vol in self.volumes.read().values() {
            if let Some(n) = &vol.node {
                view(&mut views, n).volumes += 1;
            }
        }
        views.into_values().collect()
    }

    pub fn get_node(&self, id: &str) -> Result<NodeView> {
        validate_name("node", id)?;
        self.list_nodes()
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::not_found("node", id))
    }

    /// Cordon or uncordon a node (any node may): a cordoned node takes no
    /// new volumes; what lives there stays and works. Compares on the
    /// record's revision, like every record write.
    pub fn set_cordon(&self, id: &str, cordoned: bool) -> Result<NodeView> {
        validate_name("node", id)?;
        let known = self.get_node(id)?;
        let _g = self.locks.lock(&format!("node:{id}"));
        let key = node_conf_key(id);
        let conf = NodeConf {
            cordoned,
            since: cordoned.then(Utc::now),
        };
        if known.cordoned != cordoned {
            let txn = self
                .compare_seen(Txn::new(), &key)
                .put(key.clone(), to_json(&conf));
            let revision = match self.store.txn(txn) {
                Ok(r) => r,
                Err(StoreError::Conflict { .. }) => {
                    self.reread(&[&key]);
                    return Err(Error::Conflict {
                        name: format!("node:{id}"),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            self.revs.lock().insert(key, (revision, true));
            self.node_confs.write().insert(id.to_string(), conf);
            tracing::info!(node = id, cordoned, "node cordon changed");
        }
        self.get_node(id)
    }

    /// Every pool on a ready, uncordoned node whose labels match the
    /// selector that can back a volume of this shape now, most room first.
    /// This node's pools are measured now; other nodes' figures are what
    /// they last wrote (at most their refresh interval old).
    pub fn offers(&self, q: &OfferQuery) -> Result<Vec<Offer>> {
        let shape = CreateVolume {
            size_bytes: Some(q.size_bytes),
            fs: q.fs,
            block: q.block,
            ..CreateVolume::default()
        };
        let mut out = Vec::new();
        for n in self.list_nodes() {
            let Some(record) = &n.record else { continue };
            if n.state != NodeState::Ready || n.cordoned {
                continue;
            }
            if !q
                .selector
                .iter()
                .all(|(k, v)| record.labels.get(k) == Some(v))
            {
                continue;
            }
            for p in &record.pools {
                let Some(pool) = self.pools.read().get(&p.name).cloned() else {
                    continue;
                };
                let Ok((size, _)) = self.resolve_shape(&shape, &pool) else {
                    continue;
                };
                let available = if n.id == self.config.node_id {
                    self.pool_capacity(&pool)?.available_bytes
                } else {
                    p.capacity.available_bytes
                };
                // Dir pools do not enforce sizes: any size fits.
                if pool.driver != DriverKind::Dir && size > available {
                    continue;
                }
                out.push(Offer {
                    node: n.id.clone(),
                    pool: pool.name.clone(),
                    driver: pool.driver,
                    available_bytes: available,
                    labels: record.labels.clone(),
                });
            }
        }
        out.sort_by(|a, b| {
            b.available_bytes
                .cmp(&a.available_bytes)
                .then_with(|| (&a.node, &a.pool).cmp(&(&b.node, &b.pool)))
        });
        Ok(out)
    }

    /// The controller and the nodes by state, from the cache.
    pub fn cluster_status(&self) -> ClusterStatus {
        let nodes = self.list_nodes();
        let count = |f: &dyn Fn(&NodeView) -> bool| nodes.iter().filter(|n| f(n)).count();
        ClusterStatus {
            controller: self.controller.read().clone(),
            this_node: self.config.node_id.clone(),
            ready: count(&|n| n.state == NodeState::Ready),
            unreachable: count(&|n| n.state == NodeState::Unreachable),
            cordoned: count(&|n| n.cordoned),
        }
    }

    /// Whether this node is the controller now.
    pub fn is_controller(&self) -> bool {
        self.controller
            .read()
            .as_ref()
            .is_some_and(|c| c.node == self.config.node_id)
    }

    /// Take the controller key if nobody holds it: under this node's lease,
    /// so it goes when the node does and the next live node takes it.
    pub(crate) fn campaign(&self, lease: LeaseId) -> Result<(), StoreError> {
        if self.controller.read().is_some() {
            return Ok(());
        }
        let record = ControllerRecord {
            node: self.config.node_id.clone(),
            boot_id: self.boot_id.clone(),
            since: Utc::now(),
        };
        match self
            .store
            .txn(Txn::new().require_absent(CONTROLLER_KEY).put_with_lease(
                CONTROLLER_KEY,
                to_json(&record),
                lease,
            )) {
            Ok(revision) => {
                tracing::info!(node = %record.node, "this node is the controller");
                self.revs
                    .lock()
                    .insert(CONTROLLER_KEY.to_string(), (revision, true));
                *self.controller.write() = Some(record);
                Ok(())
            }
            // Another node won; its record arrives through the watch.
            Err(StoreError::Conflict { .. }) => {
                self.reread(&[CONTROLLER_KEY]);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Refuse a new volume on this node while it is cordoned.
    pub(crate) fn check_not_cordoned(&self) -> Result<()> {
        let me = &self.config.node_id;
        if self.node_confs.read().get(me).is_some_and(|c| c.cordoned) {
            return Err(Error::Busy {
                kind: "node",
                name: me.clone(),
                detail: "it is cordoned: no new volumes are placed on it; `ballast node uncordon` it first".into(),
            });
        }
        Ok(())
    }

    /// This node's record as of now (its pools' capacity measured).
    fn node_record(&self, info: &NodeInfo, started_at: DateTime<Utc>) -> NodeRecord {
        let me = &self.config.node_id;
        let pools = self
            .list_pools()
            .into_iter()
            .filter(|p| p.node.as_deref() == Some(me.as_str()))
            .filter_map(|p| {
                let capacity = self.pool_capacity(&p).ok()?;
                Some(NodePool {
                    name: p.name,
                    driver: p.driver,
                    capacity,
                })
            })
            .collect();
        NodeRecord {
            id: me.clone(),
            boot_id: self.boot_id.clone(),
            version: info.version.clone(),
            address: info.address.clone(),
            transfer: info.transfer.clone(),
            labels: info.labels.clone(),
            started_at,
            instance: info.instance.clone(),
            updated_at: Utc::now(),
            pools,
            mappings: self
                .drivers
                .iter()
                .filter_map(|(k, d)| Some((k.to_string(), d.node().mapping()?)))
                .collect(),
        }
    }

    /// Write this node's record under `lease` and take it into the cache.
    fn put_node_record(&self, record: &NodeRecord, lease: LeaseId) -> Result<(), StoreError> {
        self.store.commit(Txn::new().put_with_lease(
            node_key(&record.id),
            to_json(record),
            lease,
        ))?;
        self.nodes.write().insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Register this node (now, before the caller serves anything) and keep
    /// its record alive (a keepalive every third of `ttl`; the record
    /// rewritten when its content changed, at most every `refresh`) for as
    /// long as the service lives. A lapsed lease (the store was cut off longer
    /// than `ttl`) is replaced by a new one.
    ///
    /// A node id whose record another live daemon keeps alive is refused
    /// (after waiting out one `ttl`, in which a dead holder's lease lapses).
    pub fn start_heartbeat(
        self: &Arc<Self>,
        info: NodeInfo,
        ttl: Duration,
        refresh: Duration,
    ) -> Result<()> {
        self.check_node_id_free(&info, ttl)?;
        let mut beat = Heartbeat {
            info,
            ttl,
            refresh,
            started_at: Utc::now(),
            lease: None,
            written: None,
        };
        beat.tick(self);
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("node-heartbeat".into())
            .spawn(move || beat.run(weak))
            .map(|_| ())
            .map_err(|e| Error::Internal(format!("cannot start the node heartbeat: {e}")))
    }

    /// Wait (at most `ttl` and a second) for a record of this node id that
    /// is not our predecessor's to lapse; refuse to start if it does not.
    fn check_node_id_free(&self, info: &NodeInfo, ttl: Duration) -> Result<()> {
        let me = &self.config.node_id;
        let key = node_key(me);
        let deadline = Instant::now() + ttl + Duration::from_secs(1);
        let mut logged = false;
        loop {
            let held = match self.store.get_kv(&key) {
                Ok(Some(kv)) => serde_json::from_slice::<NodeRecord>(&kv.value).ok(),
                Ok(None) => None,
                // The heartbeat retries registering; nothing to judge now.
                Err(e) if e.is_retryable() => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let Some(rec) = held else { return Ok(()) };
            if info.previous_instance.as_deref() == Some(rec.instance.as_str())
                && !rec.instance.is_empty()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy {
                    kind: "node",
                    name: me.clone(),
                    detail: format!(
                        "a live daemon holds this node id (started {}, answering at {}); give this one another --node-id",
                        rec.started_at.to_rfc3339(),
                        rec.address.as_deref().unwrap_or("no TCP address"),
                    ),
                });
            }
            if !logged {
                tracing::warn!(node = %me, "another daemon's record holds this node id; waiting for its lease to lapse");
                logged = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The heartbeat's state between ticks.
struct Heartbeat {
    info: NodeInfo,
    ttl: Duration,
    refresh: Duration,
    started_at: DateTime<Utc>,
    lease: Option<LeaseId>,
    /// The record last written and when it was written or found unchanged.
    written: Option<(NodeRecord, Instant)>,
}

impl Heartbeat {
    fn run(mut self, weak: Weak<VolumeService>) {
        let tick = (self.ttl / 3).max(Duration::from_millis(100));
        loop {
            std::thread::sleep(tick);
            let Some(svc) = weak.upgrade() else {
                return;
            };
            self.tick(&svc);
        }
    }

    /// Register or keep alive, rewrite the record if it changed, and stand
    /// for controller.
    fn tick(&mut self, svc: &VolumeService) {
        let result = match self.lease {
            None => svc.store.lease_grant(self.ttl).and_then(|l| {
                let record = svc.node_record(&self.info, self.started_at);
                svc.put_node_record(&record, l)?;
                tracing::info!(node = %svc.config.node_id, ttl = ?self.ttl, "node registered");
                self.lease = Some(l);
                *svc.node_lease.lock() = Some(l);
                self.written = Some((record, Instant::now()));
                svc.campaign(l)
            }),
            Some(l) => svc.store.lease_keepalive(l).and_then(|()| {
                let due = self
                    .written
                    .as_ref()
                    .is_none_or(|(_, at)| at.elapsed() >= self.refresh);
                if due {
                    let record = svc.node_record(&self.info, self.started_at);
                    // Unchanged figures are not written again: an idle node
                    // costs the store a keepalive, nothing more.
                    let same = self.written.as_ref().is_some_and(|(w, _)| {
                        NodeRecord {
                            updated_at: w.updated_at,
                            ..record.clone()
                        } == *w
                    });
                    if same {
                        if let Some((_, at)) = self.written.as_mut() {
                            *at = Instant::now();
                        }
                    } else {
                        svc.put_node_record(&record, l)?;
                        self.written = Some((record, Instant::now()));
                    }
                }
                svc.campaign(l)
            }),
        };
        match result {
            Ok(()) => {}
            Err(StoreError::LeaseExpired(_)) => {
                tracing::warn!(node = %svc.config.node_id, "the node's lease lapsed; registering again");
                self.lease = None;
                *svc.node_lease.lock() = None;
            }
            Err(e) => {
                tracing::warn!(node = %svc.config.node_id, error = %e, "node keepalive failed")
            }
        }
    }
}
