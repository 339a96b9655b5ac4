//! Opening the service: load the store, then make it and the host agree.
//!
//! Runs once at start, before any front-end serves. In order:
//! 1. a new boot since the last run means no mount or loop device of ours
//!    survived: every staged volume is set back to available, consumers gone;
//! 2. every unfinished intent is rolled back (create, stage: the caller got
//!    no answer) or forward (unstage, resize, delete: the caller asked for an
//!    end state that is safe to reach);
//! 3. staged volumes whose mount has vanished are set back to unstaged;
//! 4. loop devices backed by our pools and mounts under our mounts directory
//!    that no staged volume owns are detached and unmounted.
//!
//! It never touches a file or device that is not ballast's own: loop devices
//! are matched by backing file inside a pool directory, mounts by path under
//! the mounts directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::driver::Driver;
use crate::error::Result;
use crate::events::{Event, EventKind, EventLog};
use crate::failpoint::Failpoints;
use crate::host::Host;
use crate::model::{DriverKind, Pool, Volume, VolumeState};
use crate::service::{
    IntentOp, IntentWrite, ServiceConfig, VolumeService, BOOT_ID_KEY, EVENT_PREFIX, POOL_PREFIX,
    VOL_PREFIX,
};
use crate::store::{Store, StoreError, Txn};

/// What the service is built from.
pub struct ServiceParts {
    pub store: Arc<dyn Store>,
    pub host: Arc<dyn Host>,
    pub drivers: Vec<Arc<dyn Driver>>,
    pub config: ServiceConfig,
    pub failpoints: Failpoints,
}

/// What reconciliation did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub rebooted: bool,
    pub rolled_back: Vec<String>,
    pub rolled_forward: Vec<String>,
    pub failed: Vec<String>,
    pub lost_mounts: Vec<String>,
    pub orphan_loops_detached: Vec<PathBuf>,
    pub orphan_mounts_removed: Vec<PathBuf>,
    /// Loop devices of unstaged volumes that another mount namespace still
    /// holds: left attached with autoclear, reused by the next mount.
    pub held_elsewhere: Vec<PathBuf>,
}

/// What a reboot does to a volume: no mount, no device, no consumer.
fn forget_staging(vol: &mut Volume) {
    vol.staging = None;
    vol.consumers.clear();
    if vol.state == VolumeState::Mounted {
        vol.state = VolumeState::Available;
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: key.to_string(),
        detail: format!("record does not parse: {e}"),
    })
}

impl VolumeService {
    /// Load state and reconcile it with the host.
    pub fn open(parts: ServiceParts) -> Result<(Self, ReconcileReport)> {
        let svc = Self::load(parts)?;
        let report = svc.reconcile()?;
        Ok((svc, report))
    }

    /// Load the records from one consistent read; returns the service and
    /// the read's revision (where a watch of other nodes' writes starts).
    fn load(parts: ServiceParts) -> Result<Self> {
        let store = parts.store;
        let range = store.range("")?;
        let events: Vec<Event> = range
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with(EVENT_PREFIX))
            .filter_map(|kv| Event::from_record(&kv.key, &kv.value, kv.mod_revision))
            .collect();
        for kv in &range.kvs {
            // A record that does not parse is a damaged store, not one to
            // serve with holes: refuse to start, as before.
            if kv.key.starts_with(VOL_PREFIX) {
                decode::<Volume>(&kv.key, &kv.value)?;
            } else if kv.key.starts_with(POOL_PREFIX) {
                decode::<Pool>(&kv.key, &kv.value)?;
            }
        }
        let drivers: HashMap<DriverKind, Arc<dyn Driver>> =
            parts.drivers.into_iter().map(|d| (d.kind(), d)).collect();
        let boot_id = parts.host.boot_id().unwrap_or_default();
        let node_id = parts.config.node_id.clone();
        let svc = VolumeService {
            store,
            host: parts.host,
            drivers,
            config: parts.config,
            volumes: RwLock::new(BTreeMap::new()),
            attachments: RwLock::new(BTreeMap::new()),
            nodes: RwLock::new(BTreeMap::new()),
            controller: RwLock::new(None),
            node_confs: RwLock::new(BTreeMap::new()),
            revs: Mutex::new(HashMap::new()),
            uncertain: Mutex::new(Default::default()),
            boot_id,
            store_revision: range.revision,
            pools: RwLock::new(BTreeMap::new()),
            locks: Default::default(),
            admission: Mutex::new(()),
            events: EventLog::new(&node_id, events),
            failpoints: parts.failpoints,
            usage_cache: Mutex::new(HashMap::new()),
            snapshots: RwLock::new(BTreeMap::new()),
            stats: Default::default(),
            autogrow_at_max: Mutex::new(Default::default()),
            pool_watch: Default::default(),
            operations: Default::default(),
            wants: RwLock::new(BTreeMap::new()),
            want_signal: Default::default(),
            want_workers: Mutex::new(Default::default()),
            moves: Default::default(),
            move_workers: Mutex::new(Default::default()),
            mover: Default::default(),
            backup_engine: Default::default(),
            backup_workers: Default::default(),
            backup_runs: Default::default(),
            node_lease: Mutex::new(None),
            clustered: Default::default(),
        };
        svc.load_records(&range.kvs);
        std::fs::create_dir_all(&svc.config.mounts_dir)
            .map_err(|e| crate::driver::DriverError::io(&svc.config.mounts_dir, e))?;
        svc.adopt_single_node_records(&range.kvs)?;
        Ok(svc)
    }

    /// Records written by single-node releases carry no node: their pools
    /// and volumes are the opening node's, and a volume's staging and
    /// consumers, kept inline, move into this node's attachment. The old
    /// store-wide boot id judges them first.
    fn adopt_single_node_records(&self, kvs: &[crate::store::KeyValue]) -> Result<()> {
        let me = self.config.node_id.clone();
        let old_boot = self.store.get(BOOT_ID_KEY)?;
        let rebooted = old_boot
            .as_deref()
            .is_some_and(|b| b != self.boot_id.as_bytes());
        for pool in self.list_pools() {
            if pool.node.is_none() && !pool.is_shared() {
                let mut p = pool.clone();
                p.node = Some(me.clone());
                self.persist_pool(&p.name.clone(), Some(&p), None)?;
            }
        }
        for kv in kvs.iter().filter(|kv| kv.key.starts_with(VOL_PREFIX)) {
            let mut vol: Volume = decode(&kv.key, &kv.value)?;
            // Shared storage (rbd) is no node's.
            if vol.node.is_some() || vol.driver == crate::model::DriverKind::Rbd {
                continue;
            }
            vol.node = Some(me.clone());
            if rebooted {
                forget_staging(&mut vol);
            }
            tracing::info!(volume = %vol.name, node = %me, "adopting a volume of a single-node release");
            self.persist(Txn::new(), &vol.name.clone(), Some(&vol), None, None)?;
        }
        if let Some(b) = old_boot {
            self.store.commit(
                Txn::new()
                    .put(crate::service::node_boot_key(&me), b)
                    .delete(BOOT_ID_KEY),
            )?;
        }
        Ok(())
    }

    fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        self.reconcile_boot(&mut report)?;
        // Pools first: volumes on a btrfs pool need it mounted.
        self.reconcile_pools(&mut report)?;
        self.thaw_all();
        self.reconcile_intents(&mut report)?;
        report.rolled_back.extend(
            self.reconcile_claims()?
                .into_iter()
                .map(|c| format!("acquire {c}")),
        );
        self.reconcile_mounts(&mut report)?;
        self.reconcile_orphans(&mut report)?;
        Ok(report)
    }

    /// This node's volumes, as this node sees them.
    fn volumes_here(&self) -> Vec<Volume> {
        let me = &self.config.node_id;
        self.list_volumes()
            .into_iter()
            .filter(|v| v.is_on(me))
            .collect()
    }

    /// An attachment written in an earlier boot of this node describes
    /// mounts and loop devices that no longer exist. Only this node's are
    /// judged: another node's boot is its own business.
    fn reconcile_boot(&self, report: &mut ReconcileReport) -> Result<()> {
        let me = self.config.node_id.clone();
        let key = crate::service::node_boot_key(&me);
        let stored = self.store.get(&key)?;
        report.rebooted = stored
            .as_deref()
            .is_some_and(|b| b != self.boot_id.as_bytes());
        let stale: Vec<String> = self
            .attachments
            .read()
            .iter()
            .filter(|(_, m)| m.get(&me).is_some_and(|a| a.boot_id != self.boot_id))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            report.rebooted = true;
            let Ok(mut vol) = self.get_volume(&name) else {
                continue;
            };
            forget_staging(&mut vol);
            let ev = self.event(
                EventKind::Reconcile,
                &vol,
                "host rebooted since last run: mounts and consumers cleared".into(),
            );
            self.persist(Txn::new(), &name, Some(&vol), None, Some(ev))?;
        }
        if stored.as_deref() != Some(self.boot_id.as_bytes()) {
            self.store
                .commit(Txn::new().put(key, self.boot_id.clone().into_bytes()))?;
        }
        Ok(())
    }

    fn reconcile_intents(&self, report: &mut ReconcileReport) -> Result<()> {
        let me = self.config.node_id.clone();
        for (name, intent) in self.intents()? {
            if !intent.owner.is_empty() && intent.owner != me {
                // Another node's operation: only it can finish or undo it.
                continue;
            }
            self.settle_intent(&name, &intent, report.rebooted, report)?;
        }
        Ok(())
    }

    /// Finish or undo one of this node's unfinished operations: at start,
    /// and when a write whose outcome was unknown (the store did not answer
    /// in time) turns out to have left its intent. The caller holds the
    /// volume's lock, or runs before any front-end serves.
    pub(crate) fn settle_intent(
        &self,
        name: &str,
        intent: &crate::service::Intent,
        rebooted: bool,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let name = name.to_string();
        let op = intent.op.name();
        let mut before = intent.before.clone();
        if rebooted {
            // The intent predates the reboot: whatever it saw attached
            // and mounted is gone, as step 1 recorded for the volumes.
            forget_staging(&mut before);
        }
        let pool = match self.get_pool(&before.pool) {
            Ok(p) => p,
            Err(e) => {
                report.failed.push(format!("{op} {name}: {e}"));
                return Ok(());
            }
        };
        let (forward, result) = match &intent.op {
            IntentOp::Create => {
                self.undo_create(&pool, &before);
                // Undone, not to be done again by the agent: the request
                // that asked for it hears why.
                self.fail_create_want(&name);
                (false, Ok(()))
            }
            IntentOp::Stage { target, .. } => {
                self.undo_stage(&pool, &before, target.as_ref());
                (false, Ok(()))
            }
            IntentOp::Publish { target, .. } => (
                false,
                self.unbind(&before, &target.path).and_then(|()| {
                    self.persist(
                        Txn::new(),
                        &name,
                        Some(&before),
                        Some(IntentWrite::Clear),
                        None,
                    )
                }),
            ),
            IntentOp::Unpublish { consumer } => {
                let target = before
                    .consumers
                    .get(&consumer.key())
                    .and_then(|c| c.target.clone());
                let unbound = match &target {
                    Some(t) => self.unbind(&before, t),
                    None => Ok(()),
                };
                (
                    true,
                    unbound.and_then(|()| {
                        let mut vol = before.clone();
                        vol.consumers.remove(&consumer.key());
                        self.persist(
                            Txn::new(),
                            &name,
                            Some(&vol),
                            Some(IntentWrite::Clear),
                            None,
                        )
                    }),
                )
            }
            IntentOp::Unstage { consumer } => (
                true,
                self.unstage_steps(&before).and_then(|()| {
                    let mut vol = before.clone();
                    vol.consumers.remove(&consumer.key());
                    vol.staging = None;
                    vol.state = VolumeState::Available;
                    self.persist(
                        Txn::new(),
                        &name,
                        Some(&vol),
                        Some(IntentWrite::Clear),
                        None,
                    )
                }),
            ),
            IntentOp::Resize { to, .. } => {
                (true, self.resize_steps(&pool, &before, *to).map(|_| ()))
            }
            IntentOp::Delete => (true, self.delete_steps(&before)),
            IntentOp::Snapshot { snapshot } => {
                self.undo_snapshot(&pool, &name, snapshot);
                (false, Ok(()))
            }
        };
        // Rollbacks log their own failures and keep the intent.
        let still_there = self
            .store
            .get(&crate::service::intent_key(&name))?
            .is_some();
        let msg = format!(
            "interrupted {op} of {name} {} at start",
            if forward { "finished" } else { "undone" }
        );
        match result {
            Ok(()) if !still_there => {
                tracing::warn!(volume = %name, op, forward, "{msg}");
                if forward {
                    report.rolled_forward.push(format!("{op} {name}"));
                } else {
                    report.rolled_back.push(format!("{op} {name}"));
                }
                let ev =
                    self.events
                        .next(EventKind::Reconcile, Some(&before.pool), Some(&name), msg);
                self.commit_event(Txn::new(), Some(ev))?;
            }
            Ok(()) => report
                .failed
                .push(format!("{op} {name}: could not be reconciled")),
            Err(e) => {
                tracing::error!(volume = %name, op, error = %e, "reconcile failed; intent kept");
                report.failed.push(format!("{op} {name}: {e}"));
            }
        }
        Ok(())
    }

    /// Only ballast freezes its volumes, and only during a copy: a frozen
    /// filesystem at start is one a crash left frozen.
    fn thaw_all(&self) {
        for vol in self.volumes_here() {
            if let (Some(s), false) = (&vol.staging, vol.block) {
                if let Err(e) = self.host.thaw(&s.mountpoint) {
                    tracing::debug!(volume = %vol.name, error = %e, "thaw at start");
                }
            }
        }
    }

    fn reconcile_mounts(&self, report: &mut ReconcileReport) -> Result<()> {
        for mut vol in self.volumes_here() {
            let Some(staging) = vol.staging.clone() else {
                continue;
            };
            let Ok(pool) = self.get_pool(&vol.pool) else {
                continue;
            };
            let node = self.driver(pool.driver)?.node();
            if node.is_mounted(&vol, &staging.mountpoint)? {
                continue;
            }
            // Someone unmounted it behind our back. Consumers stay recorded
            // (their unmounts will find nothing to do); the next mount
            // stages it again.
            vol.staging = None;
            vol.state = VolumeState::Available;
            let ev = self.event(
                EventKind::Warning,
                &vol,
                format!(
                    "{} was no longer mounted at start; marked unmounted",
                    staging.mountpoint.display()
                ),
            );
            self.persist(Txn::new(), &vol.name.clone(), Some(&vol), None, Some(ev))?;
            report.lost_mounts.push(vol.name.clone());
        }
        Ok(())
    }

    fn reconcile_orphans(&self, report: &mut ReconcileReport) -> Result<()> {
        let volumes = self.volumes_here();
        let staged_mounts: HashSet<PathBuf> = volumes
            .iter()
            .filter_map(|v| v.staging.as_ref().map(|s| s.mountpoint.clone()))
            .collect();
        for m in self
            .host
            .mounts()
            .map_err(crate::driver::DriverError::from)?
        {
            if m.target.starts_with(&self.config.mounts_dir)
                && m.target != self.config.mounts_dir
                && !staged_mounts.contains(&m.target)
            {
                tracing::warn!(mount = %m.target.display(), "unmounting a mount no volume owns");
                // A stray mount still in use must not keep the daemon from
                // starting: report it and go on.
                match self.host.unmount(&m.target) {
                    Ok(()) => report.orphan_mounts_removed.push(m.target.clone()),
                    Err(e) => {
                        tracing::error!(mount = %m.target.display(), error = %e, "could not unmount a mount no volume owns");
                        report
                            .failed
                            .push(format!("orphan mount {}: {e}", m.target.display()));
                    }
                }
            }
        }
        // Mountpoint directories left by an interrupted stage.
        if let Ok(rd) = std::fs::read_dir(&self.config.mounts_dir) {
            for entry in rd.flatten() {
                let p = entry.path();
                if !staged_mounts.contains(&p) {
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
        let me = self.config.node_id.clone();
        let pools: Vec<Pool> = self
            .list_pools()
            .into_iter()
            .filter(|p| p.is_on(&me))
            .collect();
        let mut owned: HashMap<PathBuf, bool> = HashMap::new();
        for v in &volumes {
            let Some(pool) = pools.iter().find(|p| p.name == v.pool) else {
                continue;
            };
            if let Some(f) = self.driver(pool.driver)?.backing_file(pool, v) {
                owned.insert(f, v.staging.is_some());
            }
        }
        let loop_pools: Vec<&Pool> = pools
            .iter()
            .filter(|p| p.driver == DriverKind::Loop)
            .collect();
        for l in self
            .host
            .loop_devices()
            .map_err(crate::driver::DriverError::from)?
        {
            let ours = loop_pools
                .iter()
                .any(|p| l.backing_file.starts_with(&p.path));
            if !ours || owned.get(&l.backing_file) == Some(&true) {
                continue;
            }
            tracing::warn!(device = %l.device.display(), image = %l.backing_file.display(), "detaching a loop device no staged volume owns");
            match self.host.loop_detach(&l.device) {
                Ok(()) => report.orphan_loops_detached.push(l.device.clone()),
                // Referenced from another mount namespace (see
                // `unstage_steps`): a known state, not a failure. The detach
                // left autoclear set; the kernel frees it when that goes.
                Err(crate::host::HostError::Busy { .. }) => {
                    tracing::info!(device = %l.device.display(), image = %l.backing_file.display(), "loop device still referenced elsewhere; left for autoclear");
                    report.held_elsewhere.push(l.device.clone());
                }
                Err(e) => {
                    tracing::error!(device = %l.device.display(), error = %e, "could not detach a loop device no volume owns");
                    report
                        .failed
                        .push(format!("orphan loop device {}: {e}", l.device.display()));
                }
            }
        }
        Ok(())
    }
}
