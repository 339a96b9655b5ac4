//! `volume move`: a node-local volume goes to another node or pool.
//!
//! The source node (the volume's) does the move, driven by `move/<volume>`
//! (see [`crate::moves`]):
//! 1. first pass: the data streams to the target while the volume stays in
//!    use;
//! 2. cut-over: under the volume's lock, a volume nobody stages is marked
//!    `moving` (mounts refused) in the same transaction that moves the
//!    record to `cutting_over`; a staged one fails the move, or with
//!    `--wait-idle` waits;
//! 3. final pass (only what changed), then the target makes its copy
//!    durable, reads it back and compares every checksum, and installs it;
//! 4. one transaction switches `vol/<name>` to the target node and pool and
//!    marks the move committed; then the source deletes its copy and the
//!    record.
//!
//! Before 4 nothing but the source's copy is a volume; from 4 on the
//! source refuses it (another node's). A restart of the source resumes from
//! the phase recorded (the target kept what it received, so the next pass
//! sends only what it lacks); a failure that does not heal within
//! [`MOVE_STALL`] rolls back: the volume is `available` on the source again
//! and the target discards what it received.
//!
//! The target writes no record. Its journal is a file per move under
//! `<state>/moves/` written before anything is received; a pass over it
//! (at start and with every agent pass) deletes what a move that failed,
//! or that no longer exists, left, after reading the move and the volume
//! from the store itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::desired::{ErrorClass, RemoteError};
use crate::moves::{
    move_key, MoveData, MoveHello, MovePhase, MoveProgress, MoveReceiver, MoveRecord, MoveTransport,
};

/// A move whose stream keeps failing this long without a pass completing
/// is rolled back.
pub const MOVE_STALL: Duration = Duration::from_secs(60);

/// How often the source writes progress into the record (and reads a
/// cancel).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A request to move a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The target node (default: the volume's own node, with `to_pool`).
    pub to_node: Option<String>,
    /// The target pool (default: the target node's default pool).
    pub to_pool: Option<String>,
    pub wait_idle: bool,
}

/// The target's journal entry of one move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Incoming {
    move_id: String,
    volume: String,
    volume_id: String,
    pool: String,
    size_bytes: u64,
    /// Moved to where the volume's data lives (not yet a volume).
    #[serde(default)]
    installed: bool,
}

impl VolumeService {
    pub(crate) fn moves_dir(&self) -> PathBuf {
        self.config.pools_dir.with_file_name("moves")
    }

    /// The transport of move streams (set by the daemon when it listens).
    pub fn set_move_transport(&self, t: Arc<dyn MoveTransport>) {
        let _ = self.mover.set(t);
    }

    pub fn list_moves(&self) -> Vec<MoveRecord> {
        self.moves.read().values().cloned().collect()
    }

    pub fn get_move(&self, volume: &str) -> Result<MoveRecord> {
        self.moves
            .read()
            .get(volume)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "move of volume",
                name: volume.to_string(),
            })
    }

    /// Refuse what a move in flight would lose (a resize, a delete, a
    /// snapshot of its source).
    pub(crate) fn check_not_moving(&self, vol: &Volume) -> Result<()> {
        match self.moves.read().get(&vol.name) {
            Some(m) if m.in_flight() && m.volume_id == vol.id => Err(Error::Busy {
                kind: "volume",
                name: vol.name.clone(),
                detail: format!(
                    "it is being moved to node {:?}; wait, or `ballast volume move {} --cancel`",
                    m.to_node, vol.name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Ask for a move: validated here, done by the volume's node.
    pub fn request_move(&self, name: &str, req: &MoveRequest) -> Result<MoveRecord> {
        validate_name("volume", name)?;
        if let Some(n) = &req.to_node {
            validate_name("node", n)?;
        }
        if let Some(p) = &req.to_pool {
            validate_name("pool", p)?;
        }
        let vol = self.get_volume(name)?;
        let from_pool = self.get_pool(&vol.pool)?;
        let Some(from_node) = vol.node.clone() else {
            return Err(InvalidInput::new("move", format!(
                "volume {name:?} is on shared storage (pool {:?}): every node can mount it, there is nothing to move",
                vol.pool
            ))
            .into());
        };
        if !matches!(vol.driver, DriverKind::Loop | DriverKind::Btrfs) {
            return Err(InvalidInput::new(
                "move",
                format!(
                    "volume {name:?} is a {} volume: moves are for loop and btrfs volumes",
                    vol.driver
                ),
            )
            .into());
        }
        if vol.block {
            return Err(InvalidInput::new(
                "move",
                format!("volume {name:?} is a raw block volume: moves are for filesystem volumes"),
            )
            .into());
        }
        let to_node = req.to_node.clone().unwrap_or_else(|| from_node.clone());
        let to_pool = match &req.to_pool {
            Some(p) => self.get_pool(p)?,
            None if to_node == from_node => {
                return Err(InvalidInput::new("move", format!(
                    "volume {name:?} is already on node {to_node:?}: give --to another node, or --to-pool"
                ))
                .into())
            }
            None => self.default_pool_of(&to_node).ok_or_else(|| {
                Error::from(InvalidInput::new("move", format!(
                    "node {to_node:?} has no default pool; give --pool"
                )))
            })?,
        };
        if !to_pool.is_on(&to_node) || to_pool.is_shared() {
            return Err(InvalidInput::new(
                "move",
                format!("pool {:?} is not a pool of node {to_node:?}", to_pool.name),
            )
            .into());
        }
        if to_pool.name == from_pool.name {
            return Err(InvalidInput::new(
                "move",
                format!("volume {name:?} is already in pool {:?}", to_pool.name),
            )
            .into());
        }
        if to_pool.driver != vol.driver {
            return Err(InvalidInput::new(
                "move",
                format!(
                    "pool {:?} is a {} pool; a {} volume moves to a pool of its own driver",
                    to_pool.name, to_pool.driver, vol.driver
                ),
            )
            .into());
        }
        let view = self.list_nodes().into_iter().find(|n| n.id == to_node);
        match &view {
            None => {
                return Err(Error::NotFound {
                    kind: "node",
                    name: to_node,
                })
            }
            Some(v) if v.state != crate::nodes::NodeState::Ready => {
                return Err(Error::Unavailable(format!(
                    "node {to_node:?} is unreachable (its lease lapsed)"
                )))
            }
            Some(v) if v.cordoned && to_node != from_node => {
                return Err(Error::Busy {
                    kind: "node",
                    name: to_node,
                    detail: "it is cordoned: nothing moves onto it".into(),
                })
            }
            Some(v)
                if v.record
                    .as_ref()
                    .and_then(|r| r.transfer.as_ref())
                    .is_none() =>
            {
                return Err(Error::Unavailable(format!(
                    "node {to_node:?} accepts no move streams (it runs without a transfer listener)"
                )))
            }
            Some(_) => {}
        }
        let existing = self.moves.read().get(name).cloned();
        if let Some(m) = &existing {
            if m.in_flight() || m.phase == MovePhase::Committed {
                if m.volume_id == vol.id
                    && m.to_node == to_node
                    && m.to_pool == to_pool.name
                    && m.phase != MovePhase::Committed
                {
                    return Ok(m.clone());
                }
                return Err(Error::Busy {
                    kind: "volume",
                    name: name.to_string(),
                    detail: format!(
                        "a move to node {:?} pool {:?} is in flight",
                        m.to_node, m.to_pool
                    ),
                });
            }
        }
        {
            let _admit = self.admission.lock();
            let room = self.placement_available(&to_pool)?;
            if room < vol.size_bytes {
                return Err(Error::Capacity {
                    pool: to_pool.name.clone(),
                    requested: vol.size_bytes,
                    available: room,
                });
            }
            let now = Utc::now();
            let rec = MoveRecord {
                id: uuid::Uuid::new_v4().simple().to_string(),
                volume: name.to_string(),
                volume_id: vol.id.clone(),
                driver: vol.driver,
                size_bytes: vol.size_bytes,
                from_node,
                from_pool: from_pool.name.clone(),
                to_node,
                to_pool: to_pool.name.clone(),
                requester: self.config.node_id.clone(),
                requested_at: now,
                wait_idle: req.wait_idle,
                secret: random_secret(),
                phase: MovePhase::Copying,
                progress: MoveProgress::default(),
                cancel: false,
                failed: None,
                updated_at: now,
            };
            let txn = self.put_move(&rec);
            let event = self.events.next(
                EventKind::Move,
                Some(&vol.pool),
                Some(name),
                format!(
                    "move of volume {name:?} to node {:?} pool {:?} requested",
                    rec.to_node, rec.to_pool
                ),
            );
            self.write_move(txn, &rec, Some(event))?;
            tracing::info!(volume = name, to = %rec.to_node, pool = %rec.to_pool, id = %rec.id, "move requested");
            Ok(rec)
        }
    }

    /// Ask a move in flight to stop; the source rolls it back.
    pub fn cancel_move(&self, name: &str) -> Result<MoveRecord> {
        validate_name("volume", name)?;
        for _ in 0..10 {
            let mut rec = self.get_move(name)?;
            match rec.phase {
                MovePhase::Committed => {
                    return Err(Error::Busy {
                        kind: "volume",
                        name: name.to_string(),
                        detail: format!(
                            "its move already switched it to node {:?}; move it back instead",
                            rec.to_node
                        ),
                    })
                }
                MovePhase::Failed => return Ok(rec),
                _ => {}
            }
            if rec.cancel {
                return Ok(rec);
            }
            rec.cancel = true;
            let txn = self.put_move(&rec);
            match self.write_move(txn, &rec, None) {
                Ok(()) => return Ok(rec),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            name: name.to_string(),
        })
    }

    /// A transaction writing `rec`, compared on the revision last seen.
    fn put_move(&self, rec: &MoveRecord) -> Txn {
        let key = move_key(&rec.volume);
        self.compare_seen(Txn::new(), &key)
            .put(key.clone(), to_json(rec))
    }

    /// Commit `txn` (which writes `rec`), then take it into the copy.
    fn write_move(&self, txn: Txn, rec: &MoveRecord, event: Option<Event>) -> Result<()> {
        let key = move_key(&rec.volume);
        let txn = match &event {
            Some(e) => e.add_to(txn),
            None => txn,
        };
        match self.store.txn(txn) {
            Ok(rev) => {
                self.apply_record(&key, Some(&to_json(rec)), rev);
                if let Some(mut e) = event {
                    e.seq = rev;
                    self.events.publish(e);
                }
                Ok(())
            }
            Err(crate::store::StoreError::Conflict { .. }) => {
                self.reread(&[&key]);
                Err(Error::Conflict {
                    name: rec.volume.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn delete_move(&self, rec: &MoveRecord) {
        let key = move_key(&rec.volume);
        let txn = self.compare_seen(Txn::new(), &key).delete(key.clone());
        match self.store.txn(txn) {
            Ok(rev) => self.apply_record(&key, None, rev),
            Err(e) => {
                tracing::debug!(volume = %rec.volume, error = %e, "cannot delete a move record yet");
                self.reread(&[&key]);
            }
        }
    }

    /// One look at the moves (from the agent's pass): start the ones this
    /// node does, finish committed ones, clean the journal.
    pub(crate) fn moves_pass(self: &Arc<Self>) {
        let me = self.config.node_id.clone();
        let moves: Vec<MoveRecord> = self.moves.read().values().cloned().collect();
        for m in &moves {
            if m.from_node != me {
                continue;
            }
            if m.in_flight() || m.phase == MovePhase::Committed {
                self.start_move_worker(m.clone());
            }
        }
        // A volume left `moving` by a move that is gone.
        let stuck: Vec<String> = self
            .volumes
            .read()
            .values()
            .filter(|v| v.state == VolumeState::Moving && v.node.as_deref() == Some(me.as_str()))
            .filter(|v| {
                !moves
                    .iter()
                    .any(|m| m.volume == v.name && m.volume_id == v.id && m.in_flight())
            })
            .map(|v| v.name.clone())
            .collect();
        for name in stuck {
            if let Err(e) = self.unmark_moving(&name, None) {
                tracing::warn!(volume = %name, error = %e, "cannot give back a volume a vanished move left");
            }
        }
        self.clean_incoming();
    }

    fn start_move_worker(self: &Arc<Self>, rec: MoveRecord) {
        let id = rec.id.clone();
        if !self.move_workers.lock().insert(id.clone()) {
            return;
        }
        let svc = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("move".into())
            .spawn(move || {
                let id = rec.id.clone();
                svc.run_move(rec);
                svc.move_workers.lock().remove(&id);
                svc.want_signal.notify();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a move worker");
            self.move_workers.lock().remove(&id);
        }
    }

    /// The source's whole move, from whatever phase the record is in.
    fn run_move(self: &Arc<Self>, rec: MoveRecord) {
        let name = rec.volume.clone();
        if rec.phase == MovePhase::Committed {
            self.finish_committed(&rec);
            return;
        }
        let op = self.operations.start(
            "move",
            &name,
            &format!("{} → {}", rec.from_node, rec.to_node),
        );
        let cancel = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let reporter = self.start_progress_reporter(&rec, &op, &cancel, &done);
        let mut last_progress = Instant::now();
        // Progress is the count changing (a pass restarts it from 0), not
        // the count being above 0: an attempt that never gets to send
        // leaves the last one's count where it was.
        let mut last_done = op.progress().get().0;
        let result = loop {
            match self.move_attempt(&name, &rec.id, op.progress(), &cancel) {
                Ok(()) => break Ok(()),
                Err(e) if cancel.load(Ordering::Relaxed) => {
                    break Err(Error::Busy {
                        kind: "move of volume",
                        name: name.clone(),
                        detail: format!("cancelled ({e})"),
                    })
                }
                Err(e) if is_final(&e) => break Err(e),
                Err(e) => {
                    let (done_bytes, _) = op.progress().get();
                    if done_bytes != last_done {
                        last_done = done_bytes;
                        last_progress = Instant::now();
                    }
                    if last_progress.elapsed() > MOVE_STALL {
                        break Err(Error::Unavailable(format!(
                            "the move made no progress for {}s: {e}",
                            MOVE_STALL.as_secs()
                        )));
                    }
                    tracing::warn!(volume = %name, error = %e, "move attempt failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        done.store(true, Ordering::Relaxed);
        if let Some(r) = reporter {
            let _ = r.join();
        }
        drop(op);
        match result {
            Ok(()) => {
                let rec = self.moves.read().get(&name).cloned();
                if let Some(rec) = rec.filter(|r| r.phase == MovePhase::Committed) {
                    self.finish_committed(&rec);
                }
            }
            Err(e) => self.fail_move(&name, &rec.id, &e),
        }
    }

    /// Write progress into the record every second and turn a stored
    /// cancel into the flag the passes read.
    fn start_progress_reporter(
        self: &Arc<Self>,
        rec: &MoveRecord,
        op: &crate::progress::OperationGuard,
        cancel: &Arc<AtomicBool>,
        done: &Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let svc = Arc::downgrade(self);
        let progress = op.progress_arc();
        let (cancel, done) = (Arc::clone(cancel), Arc::clone(done));
        let (name, id) = (rec.volume.clone(), rec.id.clone());
        std::thread::Builder::new()
            .name("move-progress".into())
            .spawn(move || {
                // A pass restarts the count: the rate is of this pass.
                let mut pass_start = Instant::now();
                let mut last_done = 0u64;
                let mut written = (0u64, 0u64);
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let Some(svc) = svc.upgrade() else { return };
                    let Some(mut rec) = svc.moves.read().get(&name).cloned() else {
                        return;
                    };
                    if rec.id != id {
                        return;
                    }
                    if rec.cancel {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    let (d, t) = progress.get();
                    if d < last_done {
                        pass_start = Instant::now();
                    }
                    last_done = d;
                    if (d, t) == written {
                        continue;
                    }
                    let ms = u64::try_from(pass_start.elapsed().as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    rec.progress = MoveProgress {
                        done_bytes: d,
                        total_bytes: t,
                        rate: d.saturating_mul(1000) / ms,
                        pass: if rec.phase == MovePhase::Copying {
                            1
                        } else {
                            2
                        },
                    };
                    let txn = svc.put_move(&rec);
                    if svc.write_move(txn, &rec, None).is_ok() {
                        written = (d, t);
                    }
                    drop(svc);
                    std::thread::sleep(PROGRESS_EVERY);
                }
            })
            .ok()
    }

    /// One try at the move from its recorded phase: Ok once committed.
    fn move_attempt(
        &self,
        name: &str,
        id: &str,
        progress: &crate::progress::Progress,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let rec = self.current_move(name, id)?;
        let vol = self.get_volume(name)?;
        if vol.id != rec.volume_id {
            return Err(gone(name, "the volume was deleted and made again"));
        }
        self.check_here(&vol)?;
        let pool = self.get_pool(&rec.from_pool)?;
        let driver = self.driver(vol.driver)?.clone();
        let src = driver.move_source(&pool, &vol, &rec.id)?;
        let transport = self.mover.get().cloned().ok_or_else(|| {
            Error::Unavailable("this node runs without a transfer listener".into())
        })?;
        let endpoint = self
            .nodes
            .read()
            .get(&rec.to_node)
            .and_then(|n| n.transfer.clone())
            .ok_or_else(|| {
                Error::Unavailable(format!("node {:?} is not reachable for moves", rec.to_node))
            })?;
        let hello = MoveHello {
            move_id: rec.id.clone(),
            volume: name.to_string(),
            secret: rec.secret.clone(),
            size_bytes: vol.size_bytes,
            driver: vol.driver,
        };
        let mut link = transport.connect(&endpoint, &hello)?;
        self.failpoints.hit("move.connected");
        if rec.phase == MovePhase::Copying {
            // A volume nobody uses is held at once and moved in one pass:
            // a live pass first would only have the final pass read and
            // hash all of it again.
            let idle = self
                .get_volume(name)
                .is_ok_and(|v| v.staging.is_none() && v.consumers.is_empty());
            if !idle {
                let stats = link.pass(&src, progress, cancel)?;
                tracing::info!(
                    volume = name,
                    sent = stats.sent_bytes,
                    "move: first pass done"
                );
            }
            self.failpoints.hit("move.first_pass");
            self.cut_over(name, id, cancel)?;
            self.failpoints.hit("move.cut_over");
        }
        let stats = link.pass(&src, progress, cancel)?;
        tracing::info!(
            volume = name,
            sent = stats.sent_bytes,
            "move: final pass done"
        );
        self.failpoints.hit("move.final_pass");
        link.verify(&src)?;
        self.failpoints.hit("move.verified");
        link.install()?;
        self.failpoints.hit("move.installed");
        self.commit_move(name, id)?;
        self.failpoints.hit("move.committed");
        Ok(())
    }

    fn current_move(&self, name: &str, id: &str) -> Result<MoveRecord> {
        match self.moves.read().get(name) {
            Some(m) if m.id == id => Ok(m.clone()),
            _ => Err(gone(name, "its move record is gone")),
        }
    }

    /// Keep writers off for the final pass: mark the volume `moving`, with
    /// the record's phase, once nothing stages it.
    fn cut_over(&self, name: &str, id: &str, cancel: &AtomicBool) -> Result<()> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Busy {
                    kind: "move of volume",
                    name: name.to_string(),
                    detail: "cancelled".into(),
                });
            }
            let rec = self.current_move(name, id)?;
            let _g = self.lock_op(name, Wait::Block)?;
            let vol = self.get_volume(name)?;
            let in_use = vol.staging.is_some() || !vol.consumers.is_empty();
            if in_use {
                if !rec.wait_idle {
                    return Err(Error::Busy {
                        kind: "volume",
                        name: name.to_string(),
                        detail: format!(
                            "it is mounted ({} consumer(s)): the final pass needs it unused; unmount it, or move with --wait-idle",
                            vol.consumers.len()
                        ),
                    });
                }
                drop(_g);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            let mut moving = vol.clone();
            moving.state = VolumeState::Moving;
            let mut next = rec.clone();
            next.phase = MovePhase::CuttingOver;
            next.updated_at = Utc::now();
            let txn = self.put_move(&next);
            let ev = self.event(
                EventKind::Move,
                &vol,
                format!(
                    "volume {name:?} is held for the final pass of its move to node {:?}",
                    rec.to_node
                ),
            );
            self.persist(txn, name, Some(&moving), None, Some(ev))?;
            self.take_move(&next);
            return Ok(());
        }
    }

    /// The move's record as this node just wrote it in a volume's
    /// transaction (persist updated the revision of `vol/` only).
    fn take_move(&self, rec: &MoveRecord) {
        self.reread(&[&move_key(&rec.volume)]);
        let _ = rec;
    }

    /// Switch the placement: the volume is the target's from this
    /// transaction on.
    fn commit_move(&self, name: &str, id: &str) -> Result<()> {
        let _g = self.lock_op(name, Wait::Block)?;
        let rec = self.current_move(name, id)?;
        let vol = self.get_volume(name)?;
        if vol.state != VolumeState::Moving {
            return Err(Error::Internal(format!(
                "volume {name:?} is {} at the commit of its move",
                vol.state.as_str()
            )));
        }
        let mut moved = vol.clone();
        moved.node = Some(rec.to_node.clone());
        moved.pool = rec.to_pool.clone();
        moved.state = VolumeState::Available;
        let mut next = rec.clone();
        next.phase = MovePhase::Committed;
        next.updated_at = Utc::now();
        let txn = self.put_move(&next);
        let ev = self.events.next(
            EventKind::Move,
            Some(&rec.to_pool),
            Some(name),
            format!(
                "volume {name:?} moved from node {:?} pool {:?} to node {:?} pool {:?}; every checksum matched",
                rec.from_node, rec.from_pool, rec.to_node, rec.to_pool
            ),
        );
        self.persist(txn, name, Some(&moved), None, Some(ev))?;
        self.take_move(&next);
        tracing::info!(volume = name, to = %rec.to_node, "move committed");
        Ok(())
    }

    /// After the switch: delete the source's copy, then the record.
    fn finish_committed(&self, rec: &MoveRecord) {
        let pool = match self.get_pool(&rec.from_pool) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(volume = %rec.volume, error = %e, "cannot find the source pool of a committed move");
                return;
            }
        };
        let Ok(driver) = self.driver(rec.driver).cloned() else {
            return;
        };
        // The volume as it was here: its id and pool name the data.
        let mut old = Volume::placeholder(&rec.volume, &rec.volume_id, &rec.from_pool);
        old.driver = rec.driver;
        old.size_bytes = rec.size_bytes;
        old.node = Some(rec.from_node.clone());
        let r = driver
            .delete(&pool, &old)
            .and_then(|()| driver.move_cleanup(&pool, &old, &rec.id));
        if let Err(e) = r {
            tracing::warn!(volume = %rec.volume, error = %e, "cannot delete the source copy of a moved volume yet");
            return;
        }
        self.failpoints.hit("move.source_deleted");
        self.delete_move(rec);
    }

    /// Roll a failed move back: the volume is the source's, usable, and the
    /// record says why.
    fn fail_move(&self, name: &str, id: &str, e: &Error) {
        tracing::warn!(volume = name, error = %e, "move failed; rolling back");
        let failed = RemoteError {
            node: self.config.node_id.clone(),
            class: ErrorClass::from(e),
            message: e.to_string(),
        };
        for _ in 0..30 {
            let rec = match self.current_move(name, id) {
                Ok(r) => r,
                Err(_) => return,
            };
            if rec.phase == MovePhase::Committed {
                return;
            }
            let mut next = rec.clone();
            next.phase = MovePhase::Failed;
            next.failed = Some(failed.clone());
            next.updated_at = Utc::now();
            match self.unmark_moving(name, Some(&next)) {
                Ok(()) => {
                    if let (Ok(pool), Ok(vol)) =
                        (self.get_pool(&rec.from_pool), self.get_volume(name))
                    {
                        if let Ok(d) = self.driver(vol.driver) {
                            if let Err(e) = d.move_cleanup(&pool, &vol, id) {
                                tracing::warn!(volume = name, error = %e, "cannot remove a failed move's snapshots");
                            }
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(volume = name, error = %e, "cannot record a failed move yet; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// The volume back to `available` (if it was held), with `rec` written
    /// in the same transaction.
    fn unmark_moving(&self, name: &str, rec: Option<&MoveRecord>) -> Result<()> {
        let _g = self.lock_op(name, Wait::Block)?;
        let vol = self.get_volume(name)?;
        let txn = rec.map_or_else(Txn::new, |r| self.put_move(r));
        if vol.state == VolumeState::Moving
            && vol.node.as_deref() == Some(self.config.node_id.as_str())
        {
            let mut back = vol.clone();
            back.state = VolumeState::Available;
            let ev = self.event(
                EventKind::Warning,
                &vol,
                match rec.and_then(|r| r.failed.as_ref()) {
                    Some(f) => format!(
                        "the move of volume {name:?} failed and was rolled back: {}",
                        f.message
                    ),
                    None => format!("volume {name:?} is usable again: its move is gone"),
                },
            );
            self.persist(txn, name, Some(&back), None, Some(ev))?;
            if let Some(r) = rec {
                self.take_move(r);
            }
            Ok(())
        } else if let Some(r) = rec {
            let ev = self.event(
                EventKind::Warning,
                &vol,
                format!(
                    "the move of volume {name:?} failed: {}",
                    r.failed.as_ref().map_or("", |f| f.message.as_str())
                ),
            );
            self.write_move(txn, r, Some(ev))
        } else {
            Ok(())
        }
    }

    // ----- the target's side -------------------------------------------

    fn incoming_file(&self, move_id: &str) -> PathBuf {
        self.moves_dir().join(format!("{move_id}.json"))
    }

    fn read_incoming(&self) -> Vec<Incoming> {
        let Ok(dir) = std::fs::read_dir(self.moves_dir()) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let bytes = std::fs::read(e.path()).ok()?;
                serde_json::from_slice(&bytes).ok()
            })
            .collect()
    }

    fn write_incoming(&self, inc: &Incoming) -> Result<()> {
        let dir = self.moves_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::Driver(DriverError::io(&dir, e)))?;
        let path = self.incoming_file(&inc.move_id);
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&to_json(inc))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| Error::Driver(DriverError::io(&path, e)))
    }

    /// The move a stream names, if it is one to this node with that secret.
    fn move_for(&self, hello: &MoveHello) -> Result<MoveRecord> {
        let refuse = |why: &str| {
            Error::InvalidArgument(InvalidInput::new(
                "move",
                format!(
                    "refusing a move stream for volume {:?}: {why}",
                    hello.volume
                ),
            ))
        };
        validate_name("volume", &hello.volume)?;
        // The watch may not have brought a just-written record yet.
        let key = move_key(&hello.volume);
        let cached = self.moves.read().get(&hello.volume).cloned();
        let rec = match cached {
            Some(r) if r.id == hello.move_id => r,
            _ => {
                self.reread(&[&key]);
                self.moves
                    .read()
                    .get(&hello.volume)
                    .cloned()
                    .filter(|r| r.id == hello.move_id)
                    .ok_or_else(|| refuse("no such move"))?
            }
        };
        if !constant_time_eq(rec.secret.as_bytes(), hello.secret.as_bytes()) {
            return Err(refuse("wrong secret"));
        }
        if rec.to_node != self.config.node_id {
            return Err(refuse("the move goes to another node"));
        }
        if !rec.in_flight() {
            return Err(refuse("the move is over"));
        }
        if hello.driver != rec.driver || hello.size_bytes < rec.size_bytes {
            return Err(refuse("its shape differs from the move's"));
        }
        Ok(rec)
    }

    /// A placeholder of the volume in the target pool (only its id and
    /// size matter to the driver).
    fn incoming_volume(&self, rec: &MoveRecord, size: u64) -> Result<Volume> {
        let mut vol = self
            .volumes
            .read()
            .get(&rec.volume)
            .cloned()
            .ok_or_else(|| gone(&rec.volume, "the volume is gone"))?;
        vol.id = rec.volume_id.clone();
        vol.pool = rec.to_pool.clone();
        vol.node = Some(rec.to_node.clone());
        vol.size_bytes = size;
        vol.staging = None;
        vol.consumers.clear();
        Ok(vol)
    }

    /// Delete what moves to this node left behind: a move that failed or
    /// is gone, whose volume did not become this node's. Decided from the
    /// store, not the copy.
    pub(crate) fn clean_incoming(&self) {
        for inc in self.read_incoming() {
            let Some(_g) = self.locks.try_lock(&format!("move:{}", inc.move_id)) else {
                continue;
            };
            let vol = match self.store.get(&vol_key(&inc.volume)) {
                Ok(v) => v.and_then(|b| serde_json::from_slice::<Volume>(&b).ok()),
                Err(_) => continue,
            };
            let ours = vol.as_ref().is_some_and(|v| {
                v.id == inc.volume_id
                    && v.node.as_deref() == Some(self.config.node_id.as_str())
                    && v.pool == inc.pool
            });
            if ours {
                let _ = std::fs::remove_file(self.incoming_file(&inc.move_id));
                continue;
            }
            let live = match self.store.get(&move_key(&inc.volume)) {
                Ok(m) => m
                    .and_then(|b| serde_json::from_slice::<MoveRecord>(&b).ok())
                    .is_some_and(|m| m.id == inc.move_id && m.phase != MovePhase::Failed),
                Err(_) => continue,
            };
            if live {
                continue;
            }
            if let Err(e) = self.discard_incoming(&inc) {
                tracing::warn!(volume = %inc.volume, error = %e, "cannot discard what a failed move left");
                continue;
            }
            tracing::info!(volume = %inc.volume, id = %inc.move_id, "discarded what a failed move received");
            let _ = std::fs::remove_file(self.incoming_file(&inc.move_id));
        }
    }

    fn discard_incoming(&self, inc: &Incoming) -> Result<()> {
        let pool = self.get_pool(&inc.pool)?;
        let driver = self.driver(pool.driver)?.clone();
        let mut vol = Volume::placeholder(&inc.volume, &inc.volume_id, &inc.pool);
        vol.size_bytes = inc.size_bytes;
        vol.driver = pool.driver;
        driver.move_discard(&pool, &vol, &inc.move_id, inc.installed)?;
        Ok(())
    }
}

impl MoveReceiver for VolumeService {
    fn accept(&self, hello: &MoveHello) -> Result<MoveData> {
        let rec = self.move_for(hello)?;
        let _g = self
            .locks
            .lock_for(&format!("move:{}", rec.id), Duration::from_secs(10))
            .ok_or_else(|| Error::Conflict {
                name: rec.volume.clone(),
            })?;
        let pool = self.get_pool(&rec.to_pool)?;
        self.check_pool_here(&pool)?;
        let vol = self.incoming_volume(&rec, hello.size_bytes)?;
        let known = self
            .read_incoming()
            .into_iter()
            .find(|i| i.move_id == rec.id);
        let inc = match known {
            Some(i) => i,
            None => {
                let i = Incoming {
                    move_id: rec.id.clone(),
                    volume: rec.volume.clone(),
                    volume_id: rec.volume_id.clone(),
                    pool: pool.name.clone(),
                    size_bytes: hello.size_bytes,
                    installed: false,
                };
                // The journal first: what follows is found again after a crash.
                self.write_incoming(&i)?;
                i
            }
        };
        let driver = self.driver(pool.driver)?.clone();
        let data = driver.move_incoming(&pool, &vol, &rec.id, inc.installed)?;
        self.failpoints.hit("move.target_prepared");
        Ok(data)
    }

    fn install(&self, hello: &MoveHello) -> Result<()> {
        let rec = self.move_for(hello)?;
        let _g = self
            .locks
            .lock_for(&format!("move:{}", rec.id), Duration::from_secs(10))
            .ok_or_else(|| Error::Conflict {
                name: rec.volume.clone(),
            })?;
        let pool = self.get_pool(&rec.to_pool)?;
        let vol = self.incoming_volume(&rec, hello.size_bytes)?;
        let mut inc = self
            .read_incoming()
            .into_iter()
            .find(|i| i.move_id == rec.id)
            .ok_or_else(|| gone(&rec.volume, "nothing was received for this move"))?;
        if inc.installed {
            return Ok(());
        }
        let driver = self.driver(pool.driver)?.clone();
        driver.move_install(&pool, &vol, &rec.id)?;
        inc.installed = true;
        self.write_incoming(&inc)?;
        self.failpoints.hit("move.target_installed");
        Ok(())
    }
}

/// Errors a retry cannot mend.
fn is_final(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument(_)
            | Error::NotFound { .. }
            | Error::Busy { .. }
            | Error::InUse { .. }
            | Error::OtherNode { .. }
            | Error::Capacity { .. }
            | Error::NoSpace(_)
    ) || matches!(e, Error::Driver(DriverError::Corrupt(_)))
}

fn gone(name: &str, why: &str) -> Error {
    Error::NotFound {
        kind: "move of volume",
        name: format!("{name} ({why})"),
    }
}

fn random_secret() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
