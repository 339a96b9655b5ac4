//! Desired state: work asked for on one node and done by another.
//!
//! A request that another node must carry out (a create the controller
//! places, a delete or resize of a volume that lives elsewhere) is written as
//! `want/<volume>`; no node calls another. The lifecycle of a want:
//!
//! 1. the requester writes it (`node` unset for a create to place, else the
//!    volume's node);
//! 2. the controller places an unplaced create: it picks a node and pool and
//!    rewrites the want with them, in one compare-and-swap, so a placement
//!    happens once; the placed want reserves its size in that pool until its
//!    volume exists;
//! 3. the agent of the named node runs the ordinary local operation (with its
//!    intent journal, so a crash there is reconciled like any other) and
//!    deletes the want, or writes why it failed;
//! 4. the requester, which follows the want through the store watch, answers
//!    when it is gone (done) or failed, and deletes a failed one.
//!
//! Agents act on level, not on events: every pass looks at all wants, so a
//! node that was down converges when it returns, and a new controller
//! places what the old one left. The agent's first write of a create
//! compares on the want's revision: a want the controller moved elsewhere
//! (its node was unreachable before starting) cannot also be done by the
//! node it left.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::model::{validate_name, DriverKind, InvalidInput, Pool, Volume};
use crate::nodes::NodeState;
use crate::service::{to_json, CreateVolume, VolumeService, Wait};
use crate::store::{StoreError, Txn};

pub const WANT_PREFIX: &str = "want/";

/// How long a request waits for another node to do its work before it
/// answers that the work goes on without it.
pub const WANT_WAIT: Duration = Duration::from_secs(60);

/// How long a failed want whose requester never came back stays.
const FAILED_KEEP: Duration = Duration::from_secs(60);

/// How many wants one agent works on at once.
const AGENT_WORKERS: usize = 8;

/// How often an idle agent looks at the wants again (a wake-up comes with
/// every change; this is the floor for changes of node liveness).
const AGENT_TICK: Duration = Duration::from_millis(500);

pub fn want_key(name: &str) -> String {
    format!("{WANT_PREFIX}{name}")
}

/// Where a new volume may go. Empty: anywhere the controller likes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: Option<String>,
    /// Node labels that must all match.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// A node label whose values the volumes spread over: the value with
    /// the fewest volumes wins, then the most room.
    #[serde(default)]
    pub spread: Option<String>,
    /// Only these nodes (a CSI requisite topology); empty: any.
    #[serde(default)]
    pub among: Vec<String>,
    /// These nodes first, in this order (a CSI preferred topology).
    #[serde(default)]
    pub prefer: Vec<String>,
}

impl Placement {
    pub fn on(node: &str) -> Placement {
        Placement {
            node: Some(node.to_string()),
            ..Placement::default()
        }
    }

    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(n) = &self.node {
            validate_name("node", n)?;
        }
        for (k, v) in &self.selector {
            crate::model::validate_label(k, v)?;
        }
        if let Some(s) = &self.spread {
            crate::model::validate_label(s, "")?;
        }
        Ok(())
    }
}

/// `want/<volume>`: work on a volume that a node other than the requester's
/// may have to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Want {
    /// One request: an answer is matched to it, not to the name.
    pub id: String,
    pub requester: String,
    pub requested_at: DateTime<Utc>,
    pub op: WantOp,
    /// The node that does it (None: a create the controller has not placed).
    pub node: Option<String>,
    /// Why it could not be done; the requester reads and deletes it.
    #[serde(default)]
    pub failed: Option<RemoteError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum WantOp {
    /// `req.pool` is set once placed.
    Create {
        req: Box<CreateVolume>,
        placement: Placement,
        /// The size the placement reserved in the pool.
        #[serde(default)]
        reserved_bytes: u64,
    },
    Delete {
        force: bool,
    },
    Resize {
        size_bytes: u64,
    },
}

impl WantOp {
    pub fn name(&self) -> &'static str {
        match self {
            WantOp::Create { .. } => "create",
            WantOp::Delete { .. } => "delete",
            WantOp::Resize { .. } => "resize",
        }
    }
}

/// An error as another node answered it: its class (which decides the
/// status every surface answers) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoteError {
    pub node: String,
    pub class: ErrorClass,
    pub message: String,
}

/// What kind of failure an error is, independent of where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// In use, busy, on another node, or no node fits: the cluster's state
    /// is in the way.
    FailedPrecondition,
    Capacity,
    /// Retry later.
    Unavailable,
    /// A driver, store or internal failure.
    Failed,
}

impl From<&Error> for ErrorClass {
    fn from(e: &Error) -> Self {
        match e {
            Error::InvalidArgument(_) => ErrorClass::InvalidArgument,
            Error::NotFound { .. } => ErrorClass::NotFound,
            Error::AlreadyExists { .. } => ErrorClass::AlreadyExists,
            Error::InUse { .. }
            | Error::Busy { .. }
            | Error::OtherNode { .. }
            | Error::Unplaceable { .. } => ErrorClass::FailedPrecondition,
            Error::Capacity { .. } | Error::NoSpace(_) => ErrorClass::Capacity,
            Error::Conflict { .. } | Error::Unavailable(_) => ErrorClass::Unavailable,
            Error::Remote(r) => r.class,
            Error::Driver(_) | Error::Internal(_) | Error::Store(_) => ErrorClass::Failed,
        }
    }
}

/// What became of a want the requester follows.
enum Outcome {
    Done,
    Failed(RemoteError),
}

impl VolumeService {
    /// Whether this service takes part in a cluster (an agent runs): then
    /// creates are placed by the controller and work on other nodes'
    /// volumes goes through wants. A service without one (tests of the
    /// library, tools) does everything here.
    pub fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::Relaxed)
    }

    /// Create a volume where the placement allows: on the node the
    /// controller picks, which may be another one. Returns when the volume
    /// exists there, or fails with why.
    pub fn create_volume_placed(
        &self,
        req: CreateVolume,
        placement: Placement,
        wait: Wait,
    ) -> Result<Volume> {
        placement.validate()?;
        validate_name("volume", &req.name)?;
        if let Some(existing) = self.volumes.read().get(&req.name).cloned() {
            if let Some(n) = &placement.node {
                if existing.node.as_ref().is_some_and(|m| m != n) {
                    return Err(Error::AlreadyExists {
                        kind: "volume",
                        name: req.name.clone(),
                        detail: format!("it lives on node {:?}", existing.node.unwrap()),
                    });
                }
            }
            return crate::service::check_same(&existing, &req).map(|()| existing);
        }
        // Shared storage (rbd) is every node's: nothing to place, and the
        // volume lives on no node; topology, selectors and spread do not
        // constrain it.
        if req
            .pool
            .as_ref()
            .is_some_and(|p| self.pools.read().get(p).is_some_and(|p| p.is_shared()))
        {
            // Reachable from every node, so only a requirement naming no
            // node at all cannot be met.
            let me = self.config.node_id.as_str();
            let known = |n: &String| n == me || self.nodes.read().contains_key(n.as_str());
            if !placement.among.is_empty() && !placement.among.iter().any(known) {
                return Err(Error::Unplaceable {
                    volume: req.name.clone(),
                    reasons: format!(
                        "the topology asks for {}, none of which is a node of this cluster",
                        placement.among.join(", ")
                    ),
                });
            }
            return self.create_volume_with(req, wait);
        }
        // A copy is made where its source is.
        if let Some(source) = req
            .source
            .as_ref()
            .filter(|s| !matches!(s, crate::model::CreateSource::Backup { .. }))
        {
            // A backup is on a target every node reaches: placed as any
            // create. A source that does not resolve gets its error from the local
            // create, which checks it fully.
            let node = match self.source_node(source) {
                Ok(node) if node != self.config.node_id && self.is_clustered() => node,
                _ => return self.create_volume_with(req, wait),
            };
            return self.create_elsewhere(req, placement, Some(node));
        }
        if !self.is_clustered() {
            return self.create_volume_with(req, wait);
        }
        self.precheck_placement(&req, &placement)?;
        if !self.is_controller() {
            return self.create_elsewhere(req, placement, None);
        }
        let name = req.name.clone();
        // Nothing to choose when the request names a pool of this node, or
        // this node: the local create admits it (and takes the volume's lock
        // before it measures the pool, which may hang).
        let here = self.config.node_id.as_str();
        let pinned_here = match &req.pool {
            Some(p) => self.pools.read().get(p).is_some_and(|p| p.is_on(here)),
            None => placement.node.as_deref() == Some(here),
        };
        if pinned_here
            && placement.selector.is_empty()
            && placement.among.is_empty()
            && placement.spread.is_none()
        {
            return self.create_volume_with(req, wait);
        }
        // A create placed here is admitted again by the local create; a
        // concurrent one may have taken the last room meanwhile, and the
        // next choice sees that.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let admit = self.admission.lock();
            let (node, pool, size) = self.choose(&req, &placement, None)?;
            let mut placed = req.clone();
            placed.pool = Some(pool.name);
            if node == self.config.node_id {
                drop(admit);
                match self.create_volume_with(placed, wait) {
                    Err(Error::Capacity { .. }) if attempts < 3 && req.pool.is_none() => continue,
                    r => return r,
                }
            }
            let want = self.new_want(
                WantOp::Create {
                    req: Box::new(placed),
                    placement,
                    reserved_bytes: size,
                },
                Some(node),
            );
            self.submit_want(&name, &want)?;
            drop(admit);
            self.follow(&name, &want)?;
            return self.created(&name);
        }
    }

    /// Ask for a create through a want: for `node`, or for the controller
    /// to place (None).
    fn create_elsewhere(
        &self,
        req: CreateVolume,
        placement: Placement,
        node: Option<String>,
    ) -> Result<Volume> {
        let name = req.name.clone();
        self.remote(
            &name,
            WantOp::Create {
                req: Box::new(req),
                placement,
                reserved_bytes: 0,
            },
            node,
        )?;
        self.created(&name)
    }

    /// The volume a want created, once the want is gone. The copy here has
    /// it unless the watch is behind the store: then it is read there.
    fn created(&self, name: &str) -> Result<Volume> {
        if let Ok(v) = self.get_volume(name) {
            return Ok(v);
        }
        self.reread(&[&crate::service::vol_key(name)]);
        self.get_volume(name).map_err(|_| {
            tracing::warn!(volume = name, "a create's want is done but the volume is not in the store");
            Error::Unavailable(format!(
                "the create of volume {name:?} was carried out elsewhere but the volume is not there now; retry"
            ))
        })
    }

    /// Delete a volume wherever it lives.
    pub fn delete_volume_anywhere(&self, name: &str, force: bool, wait: Wait) -> Result<()> {
        match self.elsewhere(name) {
            Some(node) => self.remote(name, WantOp::Delete { force }, Some(node)),
            None => self.delete_volume_with(name, force, wait),
        }
    }

    /// Grow a volume wherever it lives.
    pub fn resize_anywhere(&self, name: &str, size_bytes: u64, wait: Wait) -> Result<Volume> {
        match self.elsewhere(name) {
            Some(node) => {
                self.remote(name, WantOp::Resize { size_bytes }, Some(node))?;
                self.get_volume(name)
            }
            None => self.resize_with(name, size_bytes, wait),
        }
    }

    /// The other node a volume lives on, when a want must carry the work
    /// there.
    /// (A name that does not resolve is left to the local call, which
    /// answers and counts its error.)
    fn elsewhere(&self, name: &str) -> Option<String> {
        let vol = self.get_volume(name).ok()?;
        if !self.is_clustered() {
            return None;
        }
        let me = &self.config.node_id;
        match vol.node {
            Some(n) => (n != *me).then_some(n),
            // Shared storage: the work goes where the volume is staged (a
            // grow is the mounting node's; a delete must see its consumers).
            None => {
                let atts = self.attachments.read();
                let holders = atts.get(name)?;
                if holders.contains_key(me) {
                    return None;
                }
                let live = self.nodes.read();
                holders
                    .keys()
                    .find(|n| live.contains_key(n.as_str()))
                    .cloned()
            }
        }
    }

    fn source_node(&self, source: &crate::model::CreateSource) -> Result<String> {
        let pool = match source {
            crate::model::CreateSource::Volume(n) => self.get_volume(n)?.pool,
            crate::model::CreateSource::Snapshot(n) => self.get_snapshot(n)?.pool,
            crate::model::CreateSource::Backup { .. } => return Ok(self.config.node_id.clone()),
        };
        Ok(self
            .get_pool(&pool)?
            .node
            .unwrap_or_else(|| self.config.node_id.clone()))
    }

    fn new_want(&self, op: WantOp, node: Option<String>) -> Want {
        Want {
            id: uuid::Uuid::new_v4().simple().to_string(),
            requester: self.config.node_id.clone(),
            requested_at: Utc::now(),
            op,
            node,
            failed: None,
        }
    }

    /// Write a want for another node (or the controller) and follow it.
    ///
    /// A node that is down gets the want all the same (it converges when it
    /// returns), but the caller hears at once that it waits.
    fn remote(&self, name: &str, op: WantOp, node: Option<String>) -> Result<()> {
        let down = node
            .as_ref()
            .filter(|n| !self.nodes.read().contains_key(n.as_str()))
            .cloned();
        let what = op.name();
        let want = self.new_want(op, node);
        self.submit_want(name, &want)?;
        if let Some(n) = down {
            return Err(Error::Unavailable(format!(
                "node {n:?}, where volume {name:?} lives, is unreachable; the {what} is recorded and happens when it returns"
            )));
        }
        self.follow(name, &want)
    }

    fn submit_want(&self, name: &str, want: &Want) -> Result<()> {
        let key = want_key(name);
        // A failed want only waits for its requester to read it: a new
        // request takes its place.
        let failed = self
            .wants
            .read()
            .get(name)
            .is_some_and(|w| w.failed.is_some());
        let txn = if failed {
            self.compare_seen(Txn::new(), &key)
        } else {
            Txn::new().require_absent(&key)
        };
        match self.store.txn(txn.put(&key, to_json(want))) {
            Ok(rev) => {
                self.apply_record(&key, Some(&to_json(want)), rev);
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                self.reread(&[&key]);
                Err(Error::Busy {
                    kind: "volume",
                    name: name.to_string(),
                    detail: "another request for it is in flight in the cluster".into(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Wait for the want to be done or failed; answer as the local call
    /// would.
    fn follow(&self, name: &str, want: &Want) -> Result<()> {
        let deadline = Instant::now() + WANT_WAIT;
        let outcome = loop {
            let seen = self.want_signal.generation();
            match self.wants.read().get(name) {
                Some(w) if w.id == want.id => {
                    if let Some(f) = &w.failed {
                        break Outcome::Failed(f.clone());
                    }
                }
                _ => break Outcome::Done,
            }
            let now = Instant::now();
            if now >= deadline {
                let node = self
                    .wants
                    .read()
                    .get(name)
                    .and_then(|w| w.node.clone())
                    .unwrap_or_else(|| "the controller".into());
                return Err(Error::Unavailable(format!(
                    "the {} of volume {name:?} waits on node {node:?}, which has not done it in {} s; it goes on there",
                    want.op.name(),
                    WANT_WAIT.as_secs()
                )));
            }
            self.want_signal.wait_change(seen, deadline - now);
        };
        match outcome {
            Outcome::Done => Ok(()),
            Outcome::Failed(f) => {
                self.delete_want(name, &want.id);
                Err(Error::Remote(f))
            }
        }
    }

    /// Delete the want if it is still this request's.
    fn delete_want(&self, name: &str, id: &str) {
        let key = want_key(name);
        if self.wants.read().get(name).is_none_or(|w| w.id != id) {
            return;
        }
        let txn = self.compare_seen(Txn::new(), &key).delete(&key);
        match self.store.txn(txn) {
            Ok(rev) => self.apply_record(&key, None, rev),
            Err(StoreError::Conflict { .. }) => self.reread(&[&key]),
            Err(e) => tracing::warn!(key, error = %e, "cannot delete a want"),
        }
    }

    /// Rewrite a want (compare on its revision); false when it changed.
    fn rewrite_want(&self, name: &str, want: &Want) -> bool {
        let key = want_key(name);
        let bytes = to_json(want);
        let txn = self.compare_seen(Txn::new(), &key).put(&key, bytes.clone());
        match self.store.txn(txn) {
            Ok(rev) => {
                self.apply_record(&key, Some(&bytes), rev);
                true
            }
            Err(StoreError::Conflict { .. }) => {
                self.reread(&[&key]);
                false
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot write a want");
                false
            }
        }
    }

    /// The errors this node can tell without the controller: an unknown
    /// node or pool, a selector no ready node matches.
    fn precheck_placement(&self, req: &CreateVolume, placement: &Placement) -> Result<()> {
        if let Some(n) = &placement.node {
            let node = self.get_node(n)?;
            if let Some(p) = &req.pool {
                let pool = self.get_pool(p)?;
                if pool.node.as_ref().is_some_and(|pn| pn != n) {
                    return Err(InvalidInput::new(
                        format!("pool {p:?}"),
                        format!("is on node {:?}, not {n:?}", pool.node.unwrap()),
                    )
                    .into());
                }
            }
            if node.cordoned {
                return Err(cordoned(n));
            }
            if node.state != NodeState::Ready {
                return Err(unreachable_node(n));
            }
        } else if let Some(p) = &req.pool {
            validate_name("pool", p)?;
            self.get_pool(p)?;
        }
        Ok(())
    }

    /// The default pool of a node: the one its daemon makes at start.
    pub(crate) fn default_pool_of(&self, node: &str) -> Option<Pool> {
        let pools = self.pools.read();
        match pools.get("default") {
            Some(p) if p.node.as_deref() == Some(node) => Some(p.clone()),
            _ => pools.get(&format!("default-{node}")).cloned(),
        }
    }

    /// Pick the node and pool for a create (the controller does, under the
    /// admission lock): among ready, uncordoned nodes matching the
    /// placement, the pool given or each node's default pool, that can back
    /// the shape with room after every reservation; spread first, then most
    /// room. `exclude` is a node not to use (one found unreachable).
    pub(crate) fn choose(
        &self,
        req: &CreateVolume,
        placement: &Placement,
        exclude: Option<&str>,
    ) -> Result<(String, Pool, u64)> {
        let nodes = self.list_nodes();
        // Why each node considered cannot take it.
        let mut refusals: Vec<Error> = Vec::new();
        let mut fits: Vec<(String, Pool, u64, u64, Option<String>)> = Vec::new();
        for n in &nodes {
            if placement.node.as_ref().is_some_and(|want| *want != n.id)
                || (!placement.among.is_empty() && !placement.among.contains(&n.id))
            {
                continue;
            }
            let record = match &n.record {
                Some(r) if exclude != Some(n.id.as_str()) => r,
                _ => {
                    refusals.push(unreachable_node(&n.id));
                    continue;
                }
            };
            if n.cordoned {
                refusals.push(cordoned(&n.id));
                continue;
            }
            if !placement
                .selector
                .iter()
                .all(|(k, v)| record.labels.get(k) == Some(v))
            {
                refusals.push(Error::Unplaceable {
                    volume: req.name.clone(),
                    reasons: format!("node {:?} does not match the selector", n.id),
                });
                continue;
            }
            let pool = match &req.pool {
                Some(p) => match self.pools.read().get(p) {
                    Some(pool) if pool.node.as_deref() == Some(n.id.as_str()) => pool.clone(),
                    _ => continue,
                },
                None => match self.default_pool_of(&n.id) {
                    Some(p) => p,
                    None => {
                        refusals.push(Error::Unplaceable {
                            volume: req.name.clone(),
                            reasons: format!("node {:?} has no default pool", n.id),
                        });
                        continue;
                    }
                },
            };
            let (size, _) = match self.resolve_shape(req, &pool) {
                Ok(s) => s,
                Err(e) => {
                    refusals.push(e);
                    continue;
                }
            };
            let available = self.placement_available(&pool)?;
            if pool.driver != DriverKind::Dir && size > available {
                refusals.push(Error::Capacity {
                    pool: pool.name.clone(),
                    requested: size,
                    available,
                });
                continue;
            }
            let zone = placement
                .spread
                .as_ref()
                .and_then(|k| record.labels.get(k).cloned());
            fits.push((n.id.clone(), pool, size, available, zone));
        }
        if fits.is_empty() {
            if let Some(n) = &placement.node {
                if !nodes.iter().any(|v| v.id == *n) {
                    return Err(Error::not_found("node", n));
                }
            }
            // One node in question: its own answer (a full pool is a
            // capacity error wherever it is asked).
            if refusals.len() == 1 {
                return Err(refusals.remove(0));
            }
            let reasons = if refusals.is_empty() {
                "no node is ready".to_string()
            } else {
                refusals
                    .iter()
                    .map(|e| match e {
                        Error::Unplaceable { reasons, .. } => reasons.clone(),
                        e => e.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(Error::Unplaceable {
                volume: req.name.clone(),
                reasons,
            });
        }
        // Spread: count the volumes (and placed creates) per label value.
        let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
        if let Some(key) = &placement.spread {
            let zone_of: BTreeMap<String, String> = nodes
                .iter()
                .filter_map(|n| {
                    let r = n.record.as_ref()?;
                    Some((n.id.clone(), r.labels.get(key)?.clone()))
                })
                .collect();
            let count = |node: &str, per_zone: &mut BTreeMap<String, usize>| {
                if let Some(z) = zone_of.get(node) {
                    *per_zone.entry(z.clone()).or_default() += 1;
                }
            };
            for v in self.volumes.read().values() {
                if let Some(n) = &v.node {
                    count(n, &mut per_zone);
                }
            }
            for w in self.wants.read().values() {
                if let (WantOp::Create { .. }, Some(n)) = (&w.op, &w.node) {
                    count(n, &mut per_zone);
                }
            }
        }
        let rank = |node: &str| {
            placement
                .prefer
                .iter()
                .position(|p| p == node)
                .unwrap_or(usize::MAX)
        };
        fits.sort_by(|a, b| {
            let za =
                a.4.as_ref()
                    .map_or(0, |z| per_zone.get(z).copied().unwrap_or(0));
            let zb =
                b.4.as_ref()
                    .map_or(0, |z| per_zone.get(z).copied().unwrap_or(0));
            rank(&a.0)
                .cmp(&rank(&b.0))
                .then(za.cmp(&zb))
                .then(b.3.cmp(&a.3))
                .then_with(|| a.0.cmp(&b.0))
        });
        let (node, pool, size, _, _) = fits.swap_remove(0);
        Ok((node, pool, size))
    }

    /// What a pool can still admit as the controller counts it: its node's
    /// latest capacity figure, less every volume and placed create in it
    /// that the figure may not count yet.
    pub(crate) fn placement_available(&self, pool: &Pool) -> Result<u64> {
        let cap = self.pool_capacity(pool)?;
        if pool.is_on(&self.config.node_id) {
            // Measured now, and its charges count the reservations.
            return Ok(cap.available_bytes);
        }
        let limit = cap.available_bytes.saturating_add(cap.exclusive_bytes);
        let (_, charged) = self.pool_charges_without_measure(pool);
        Ok(limit.saturating_sub(charged.max(cap.exclusive_bytes)))
    }

    /// What a new volume could get on `node` now: in `pool`, or the node's
    /// default pool; 0 where nothing can be placed (unknown, unreachable or
    /// cordoned node, a pool of another node). CSI's GetCapacity per
    /// topology segment.
    pub fn available_on(&self, node: &str, pool: Option<&str>) -> Result<u64> {
        validate_name("node", node)?;
        let Some(view) = self.list_nodes().into_iter().find(|n| n.id == node) else {
            return Ok(0);
        };
        if view.state != NodeState::Ready || view.cordoned {
            return Ok(0);
        }
        let pool = match pool {
            Some(p) => match self.pools.read().get(p) {
                Some(pool) if pool.is_on(node) => pool.clone(),
                _ => return Ok(0),
            },
            None => match self.default_pool_of(node) {
                Some(p) => p,
                None => return Ok(0),
            },
        };
        self.placement_available(&pool)
    }

    /// Bytes that placed creates reserve in a pool: those whose volume does
    /// not exist yet.
    pub(crate) fn reserved_in(&self, pool: &str) -> u64 {
        let vols = self.volumes.read();
        let moving_in: u64 = self
            .moves
            .read()
            .values()
            .filter(|m| m.in_flight() && m.to_pool == pool)
            .map(|m| m.size_bytes)
            .sum();
        moving_in
            + self
                .wants
                .read()
                .iter()
                .filter(|(name, _)| !vols.contains_key(name.as_str()))
                .filter_map(|(_, w)| match &w.op {
                    WantOp::Create {
                        req,
                        reserved_bytes,
                        ..
                    } if w.failed.is_none() && req.pool.as_deref() == Some(pool) => {
                        Some(*reserved_bytes)
                    }
                    _ => None,
                })
                .sum::<u64>()
    }

    /// Start this node's agent: it places wants while this node is the
    /// controller and does the wants placed on this node, for as long as
    /// the service lives.
    pub fn start_agent(self: &Arc<Self>) -> std::io::Result<()> {
        self.clustered.store(true, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || agent_loop(weak))
            .map(|_| ())
    }

    /// One look at every want.
    fn agent_pass(self: &Arc<Self>) {
        let me = self.config.node_id.clone();
        let controller = self.is_controller();
        let wants: Vec<(String, Want)> = self
            .wants
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let ready: HashSet<String> = self.nodes.read().keys().cloned().collect();
        for (name, w) in wants {
            if let Some(f) = &w.failed {
                let stale = (Utc::now() - w.requested_at)
                    .to_std()
                    .is_ok_and(|age| age > WANT_WAIT + FAILED_KEEP);
                if controller && stale {
                    tracing::info!(volume = %name, error = %f.message, "dropping a failed want nobody read");
                    self.delete_want(&name, &w.id);
                }
                continue;
            }
            match &w.node {
                None if controller => self.place_want(&name, w, None),
                Some(n) if *n == me => self.start_work(&name, w),
                // Placed on a node that went away before it started: place
                // it again, unless the request named that node.
                Some(n)
                    if controller
                        && !ready.contains(n)
                        && matches!(&w.op, WantOp::Create { req, placement, .. }
                            if placement.node.is_none() && req.source.is_none())
                        && !self.volumes.read().contains_key(&name) =>
                {
                    let n = n.clone();
                    self.place_want(&name, w, Some(&n));
                }
                _ => {}
            }
        }
        self.moves_pass();
    }

    /// Place an unplaced (or stranded) create: rewrite the want with its
    /// node and pool, or with why no node can take it.
    fn place_want(&self, name: &str, mut w: Want, exclude: Option<&str>) {
        let WantOp::Create {
            req,
            placement,
            reserved_bytes,
        } = &mut w.op
        else {
            return;
        };
        let _admit = self.admission.lock();
        let mut pick = req.clone();
        if exclude.is_some() && placement.node.is_none() {
            // The pool was the stranded placement's choice, not the user's.
            pick.pool = None;
        }
        match self.choose(&pick, placement, exclude) {
            Ok((node, pool, size)) => {
                tracing::info!(volume = %name, node, pool = %pool.name, requester = %w.requester, "placed");
                req.pool = Some(pool.name);
                *reserved_bytes = size;
                w.node = Some(node);
            }
            Err(e) => {
                w.failed = Some(RemoteError {
                    node: self.config.node_id.clone(),
                    class: ErrorClass::from(&e),
                    message: e.to_string(),
                });
            }
        }
        self.rewrite_want(name, &w);
    }

    /// Run a want placed here in a worker, unless it already runs.
    fn start_work(self: &Arc<Self>, name: &str, w: Want) {
        {
            let mut busy = self.want_workers.lock();
            if busy.len() >= AGENT_WORKERS || !busy.insert(w.id.clone()) {
                return;
            }
        }
        let svc = Arc::clone(self);
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("agent-work".into())
            .spawn(move || {
                let id = w.id.clone();
                svc.do_want(&name, w);
                svc.want_workers.lock().remove(&id);
                svc.want_signal.notify();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start an agent worker");
        }
    }

    /// Do the work of a want placed on this node, then delete the want or
    /// record why it failed.
    fn do_want(&self, name: &str, w: Want) {
        let key = want_key(name);
        let result = match &w.op {
            WantOp::Create { req, .. } => {
                let rev = self.revs.lock().get(&key).map(|&(r, _)| r);
                match rev {
                    Some(rev) => self
                        .create_volume_for_want((**req).clone(), &key, rev)
                        .map(|_| ()),
                    None => return,
                }
            }
            WantOp::Delete { force } => match self.delete_volume_with(name, *force, Wait::Block) {
                Err(Error::NotFound { .. }) => Ok(()),
                r => r,
            },
            WantOp::Resize { size_bytes } => {
                self.resize_with(name, *size_bytes, Wait::Block).map(|_| ())
            }
        };
        match result {
            Ok(()) => self.delete_want(name, &w.id),
            // The want moved (placed elsewhere) or went: not ours any more.
            Err(Error::Conflict { name: k }) if k == key => {}
            Err(e) => {
                tracing::warn!(volume = name, op = w.op.name(), error = %e, "a want failed");
                let mut failed = w;
                failed.failed = Some(RemoteError {
                    node: self.config.node_id.clone(),
                    class: ErrorClass::from(&e),
                    message: e.to_string(),
                });
                self.rewrite_want(name, &failed);
            }
        }
    }

    /// Mark a create placed on this node failed: its daemon died in the
    /// middle and the restart undid it.
    pub(crate) fn fail_create_want(&self, name: &str) {
        let Some(mut w) = self.wants.read().get(name).cloned() else {
            return;
        };
        if w.failed.is_some()
            || w.node.as_deref() != Some(self.config.node_id.as_str())
            || !matches!(w.op, WantOp::Create { .. })
        {
            return;
        }
        w.failed = Some(RemoteError {
            node: self.config.node_id.clone(),
            class: ErrorClass::Unavailable,
            message: format!(
                "the create of volume {name:?} was interrupted by a restart of node {:?} and undone; retry",
                self.config.node_id
            ),
        });
        self.rewrite_want(name, &w);
    }

    /// Events of nodes going and coming, recorded once (by the controller).
    pub(crate) fn note_node_changes(&self, before: &HashSet<String>, after: &HashSet<String>) {
        if !self.is_controller() {
            return;
        }
        for gone in before.difference(after) {
            self.record_event(self.events.next(
                EventKind::Warning,
                None,
                None,
                format!("node {gone:?} is unreachable: its lease lapsed"),
            ));
        }
        for back in after.difference(before) {
            self.record_event(self.events.next(
                EventKind::Reconcile,
                None,
                None,
                format!("node {back:?} is ready"),
            ));
        }
    }
}

fn cordoned(node: &str) -> Error {
    Error::Busy {
        kind: "node",
        name: node.to_string(),
        detail: "it is cordoned: no new volumes are placed on it; `ballast node uncordon` it first"
            .into(),
    }
}

fn unreachable_node(node: &str) -> Error {
    Error::Unavailable(format!(
        "node {node:?} is unreachable (its lease lapsed); nothing can be placed on it now"
    ))
}

fn agent_loop(weak: Weak<VolumeService>) {
    // Changes from what the node found at start are news; the start is not.
    let mut ready: HashSet<String> = match weak.upgrade() {
        Some(svc) => svc.nodes.read().keys().cloned().collect(),
        None => return,
    };
    loop {
        let Some(svc) = weak.upgrade() else {
            return;
        };
        let seen = svc.want_signal.generation();
        // The controller's key went with its node's lease: stand now (the
        // compare-and-swap lets one node win).
        // (The read guard must end before campaign() writes the cache.)
        let lease = *svc.node_lease.lock();
        let no_controller = svc.controller.read().is_none();
        if let (true, Some(lease)) = (no_controller, lease) {
            if let Err(e) = svc.campaign(lease) {
                tracing::debug!(error = %e, "standing for controller failed; the heartbeat tries again");
            }
        }
        let now: HashSet<String> = svc.nodes.read().keys().cloned().collect();
        if now != ready {
            svc.note_node_changes(&ready, &now);
            ready = now;
        }
        svc.agent_pass();
        let signal = Arc::clone(&svc.want_signal);
        drop(svc);
        signal.wait_change(seen, AGENT_TICK);
    }
}

/// A counter bumped by every change of a want (or of node liveness); waiters
/// sleep until it moves.
#[derive(Default)]
pub(crate) struct Signal {
    generation: parking_lot::Mutex<u64>,
    changed: parking_lot::Condvar,
}

impl Signal {
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    pub(crate) fn notify(&self) {
        *self.generation.lock() += 1;
        self.changed.notify_all();
    }

    /// Wait until the generation is past `seen`, at most `timeout`.
    pub(crate) fn wait_change(&self, seen: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut g = self.generation.lock();
        while *g == seen {
            if self.changed.wait_until(&mut g, deadline).timed_out() {
                return;
            }
        }
    }
}
