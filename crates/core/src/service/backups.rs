//! Backups: targets, backups asked for and run by the volume's node,
//! schedules with retention, and restores (a create whose data comes from
//! a backup, see `create.rs`).
//!
//! A backup's run is recorded before its first side effect (the record is
//! `pending`, then `running`), so a node killed mid-run starts it again at
//! its next pass: the snapshot it took is reused, and the chunks it had
//! sent are found on the target and not sent twice. Only the manifest,
//! written last, makes the backup exist.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::progress::Progress;

use crate::backups::*;

use super::*;

/// A run that names no deadline gets this.
pub const BACKUP_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// Listing or reading a target.
const TARGET_CALL: Duration = Duration::from_secs(60);
/// A restore's data.
const RESTORE_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// Finished records stay this long for whoever follows them.
const FINISHED_KEPT: Duration = Duration::from_secs(3600);

/// A backup asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupRequest {
    /// The target; may be left out when there is only one.
    #[serde(default)]
    pub target: Option<String>,
    /// Fail the run after this many seconds.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// A restore asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreRequest {
    /// The new volume.
    pub to: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
}

fn snapshot_name(id: &str) -> String {
    format!("backup-{id}")
}

fn validate_location(loc: &TargetLocation) -> Result<()> {
    match loc {
        TargetLocation::S3 {
            url,
            bucket,
            region,
            access_key,
            secret_key,
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() > 2048
                || url.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(InvalidInput::new(
                    format!("s3 url {url:?}"),
                    "must be an http:// or https:// URL",
                )
                .into());
            }
            // S3's own bucket naming rules.
            let ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && bucket.as_bytes()[0].is_ascii_alphanumeric();
            if !ok {
                return Err(InvalidInput::new(
                    format!("bucket {bucket:?}"),
                    "must be 3-63 lowercase letters, digits, '-' or '.'",
                )
                .into());
            }
            for (what, v) in [
                ("region", region),
                ("access key", access_key),
                ("secret key", secret_key),
            ] {
                if let Some(v) = v {
                    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                        return Err(
                            InvalidInput::new(what, "must be 1-256 printable characters").into(),
                        );
                    }
                }
            }
            if access_key.is_some() != secret_key.is_some() {
                return Err(InvalidInput::new(
                    "credentials",
                    "an access key needs its secret key, and the other way round",
                )
                .into());
            }
            Ok(())
        }
        TargetLocation::Path { dir } => {
            if !dir.is_absolute() || dir.as_os_str().len() > 4096 {
                return Err(InvalidInput::new(
                    format!("path {}", dir.display()),
                    "must be an absolute directory",
                )
                .into());
            }
            Ok(())
        }
    }
}

impl VolumeService {
    /// Give the service its chunk store (the daemon does, at start).
    pub fn set_backup_engine(&self, engine: Arc<dyn BackupEngine>) {
        let _ = self.backup_engine.set(engine);
    }

    fn engine(&self) -> Result<Arc<dyn BackupEngine>> {
        self.backup_engine.get().cloned().ok_or_else(|| {
            DriverError::Unsupported("this daemon has no backup engine".into()).into()
        })
    }

    fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Internal(format!("{key}: {e}"))),
            None => Ok(None),
        }
    }

    fn scan_records<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        Ok(self
            .store
            .scan(prefix)?
            .into_iter()
            .filter_map(|(k, v)| match serde_json::from_slice(&v) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(key = %k, error = %e, "unreadable record skipped");
                    None
                }
            })
            .collect())
    }

    // ----- targets ----------------------------------------------------

    /// Add a target once it answers (bad credentials and a missing bucket
    /// fail here, and nothing is kept). The same target again is fine.
    pub fn add_backup_target(&self, name: &str, location: TargetLocation) -> Result<BackupTarget> {
        validate_name("backup target", name)?;
        validate_location(&location)?;
        let _g = self.lock_op(&format!("backup-target:{name}"), Wait::Block)?;
        if let Some(existing) = self.read::<BackupTarget>(&target_key(name))? {
            if existing.location == location {
                return Ok(existing.redacted());
            }
            return Err(Error::AlreadyExists {
                kind: "backup target",
                name: name.to_string(),
                detail: "it has another location or credentials".into(),
            });
        }
        let target = BackupTarget {
            name: name.to_string(),
            location,
            created_at: Utc::now(),
        };
        self.engine()?
            .check(&target, Deadline::after(Duration::from_secs(30)))?;
        self.store.commit(
            Txn::new()
                .require_absent(target_key(name))
                .put(target_key(name), to_json(&target)),
        )?;
        Ok(target.redacted())
    }

    pub fn list_backup_targets(&self) -> Result<Vec<BackupTarget>> {
        Ok(self
            .scan_records::<BackupTarget>(TARGET_PREFIX)?
            .iter()
            .map(BackupTarget::redacted)
            .collect())
    }

    fn target(&self, name: Option<&str>) -> Result<BackupTarget> {
        match name {
            Some(n) => {
                validate_name("backup target", n)?;
                self.read(&target_key(n))?
                    .ok_or_else(|| Error::not_found("backup target", n))
            }
            None => {
                let mut all = self.scan_records::<BackupTarget>(TARGET_PREFIX)?;
                match all.len() {
                    1 => Ok(all.remove(0)),
                    0 => Err(InvalidInput::new(
                        "target",
                        "there is no backup target; add one with `ballast backup target add`",
                    )
                    .into()),
                    _ => Err(InvalidInput::new(
                        "target",
                        "there are several backup targets: name one with --target",
                    )
                    .into()),
                }
            }
        }
    }

    /// Forget a target (its backups stay where they are). Refused while a
    /// schedule or a backup in flight uses it.
    pub fn remove_backup_target(&self, name: &str) -> Result<()> {
        let t = self.target(Some(name))?;
        if let Some(s) = self
            .scan_records::<BackupSchedule>(SCHEDULE_PREFIX)?
            .into_iter()
            .find(|s| s.target == t.name)
        {
            return Err(Error::Busy {
                kind: "backup target",
                name: name.to_string(),
                detail: format!("volume {}'s backup schedule uses it", s.volume),
            });
        }
        if self
            .backup_records()?
            .iter()
            .any(|r| r.target == t.name && r.in_flight())
        {
            return Err(Error::Busy {
                kind: "backup target",
                name: name.to_string(),
                detail: "a backup to it is in flight".into(),
            });
        }
        self.store.commit(Txn::new().delete(target_key(name)))?;
        Ok(())
    }

    // ----- backups ----------------------------------------------------

    pub fn backup_records(&self) -> Result<Vec<BackupRecord>> {
        self.scan_records(BACKUP_PREFIX)
    }

    pub fn backup_record(&self, id: &str) -> Result<BackupRecord> {
        validate_name("backup", id)?;
        self.read(&backup_key(id))?
            .ok_or_else(|| Error::not_found("backup run", id))
    }

    /// Ask for a backup of `volume`; its node runs it (follow the record).
    pub fn request_backup(&self, volume: &str, req: &BackupRequest) -> Result<BackupRecord> {
        validate_name("volume", volume)?;
        let target = self.target(req.target.as_deref())?;
        let deadline = match req.deadline_secs {
            Some(0) => {
                return Err(InvalidInput::new("deadline", "must be at least 1 second").into())
            }
            Some(s) if s > 7 * 86400 => {
                return Err(InvalidInput::new("deadline", "must be at most 7 days").into())
            }
            Some(s) => Duration::from_secs(s),
            None => BACKUP_DEADLINE,
        };
        self.new_backup(volume, &target.name, deadline, false)
    }

    fn new_backup(
        &self,
        volume: &str,
        target: &str,
        deadline: Duration,
        scheduled: bool,
    ) -> Result<BackupRecord> {
        let vol = self.get_volume(volume)?;
        if vol.block && vol.driver != DriverKind::Loop && vol.driver != DriverKind::Rbd {
            return Err(DriverError::Unsupported(format!("{} block volumes", vol.driver)).into());
        }
        if let Some(r) = self
            .backup_records()?
            .into_iter()
            .find(|r| r.volume == volume && r.in_flight())
        {
            return Err(Error::Busy {
                kind: "volume",
                name: volume.to_string(),
                detail: format!("backup {} of it is in flight", r.id),
            });
        }
        let now = Utc::now();
        let rec = BackupRecord {
            id: new_backup_id(now),
            volume: vol.name.clone(),
            volume_id: vol.id.clone(),
            target: target.to_string(),
            node: vol
                .node
                .clone()
                .unwrap_or_else(|| self.config.node_id.clone()),
            requested_at: now,
            deadline: now
                + chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::hours(6)),
            phase: BackupPhase::Pending,
            progress: BackupProgress::default(),
            failed: None,
            scheduled,
            updated_at: now,
        };
        self.store.commit(
            Txn::new()
                .require_absent(backup_key(&rec.id))
                .put(backup_key(&rec.id), to_json(&rec)),
        )?;
        Ok(rec)
    }

    /// Backups the targets hold, newest last; of one volume, or in one
    /// target, if asked.
    pub fn list_backups(
        &self,
        target: Option<&str>,
        volume: Option<&str>,
    ) -> Result<Vec<BackupInfo>> {
        if let Some(v) = volume {
            validate_name("volume", v)?;
        }
        let targets = match target {
            Some(t) => vec![self.target(Some(t))?],
            None => self.scan_records::<BackupTarget>(TARGET_PREFIX)?,
        };
        let engine = self.engine()?;
        let mut out = Vec::new();
        for t in &targets {
            out.extend(
                engine
                    .list(t, Deadline::after(TARGET_CALL))?
                    .into_iter()
                    .filter(|b| volume.is_none_or(|v| b.meta.volume == v)),
            );
        }
        out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        Ok(out)
    }

    /// The backup `id` and the target that holds it.
    fn find_backup(&self, id: &str, target: Option<&str>) -> Result<(BackupTarget, BackupInfo)> {
        validate_name("backup", id)?;
        let targets = match target {
            Some(t) => vec![self.target(Some(t))?],
            None => self.scan_records::<BackupTarget>(TARGET_PREFIX)?,
        };
        let engine = self.engine()?;
        for t in targets {
            match engine.get(&t, id, Deadline::after(TARGET_CALL)) {
                Ok(info) => return Ok((t, info)),
                Err(DriverError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::not_found("backup", id))
    }

    pub fn get_backup(&self, id: &str, target: Option<&str>) -> Result<BackupInfo> {
        self.find_backup(id, target).map(|(_, b)| b)
    }

    /// Remove a backup: its manifest, then the chunks nothing refers to
    /// any more.
    pub fn delete_backup(&self, id: &str, target: Option<&str>) -> Result<GcStats> {
        let (t, _) = self.find_backup(id, target)?;
        let engine = self.engine()?;
        engine.delete(&t, id, Deadline::after(TARGET_CALL))?;
        self.collect_garbage(&t)
    }

    fn collect_garbage(&self, t: &BackupTarget) -> Result<GcStats> {
        // A run in flight may be about to name any chunk the target holds
        // (it lists them once and sends only the others): collect later.
        if let Some(r) = self
            .backup_records()?
            .iter()
            .find(|r| r.target == t.name && r.in_flight())
        {
            tracing::info!(target = %t.name, run = %r.id, "garbage collection deferred: a backup to the target is in flight");
            return Ok(GcStats::default());
        }
        Ok(self
            .engine()?
            .gc(t, None, Deadline::after(Duration::from_secs(600)))?)
    }

    /// Make volume `req.to` from backup `id`, on the node or pool asked (or
    /// where the placement puts it).
    pub fn restore_backup(&self, id: &str, req: &RestoreRequest) -> Result<Volume> {
        validate_name("volume", &req.to)?;
        let (t, info) = self.find_backup(id, req.target.as_deref())?;
        let create = CreateVolume {
            name: req.to.clone(),
            size_bytes: Some(info.meta.size_bytes),
            fs: info.meta.fs,
            pool: req.pool.clone(),
            labels: BTreeMap::new(),
            block: info.meta.block,
            source: Some(CreateSource::Backup {
                target: t.name.clone(),
                id: id.to_string(),
            }),
            autogrow: None,
        };
        let placement = crate::desired::Placement {
            node: req.node.clone(),
            ..Default::default()
        };
        self.create_volume_placed(create, placement, Wait::Block)
    }

    /// The data of backup `id` into `vol`, just made empty in `pool` (from
    /// the create, which undoes the volume if this fails).
    pub(crate) fn restore_into(
        &self,
        pool: &Pool,
        vol: &Volume,
        target: &str,
        id: &str,
        progress: &Progress,
    ) -> Result<()> {
        let t = self.target(Some(target))?;
        let driver = self.driver(pool.driver)?;
        let mut data = driver.volume_data(pool, vol)?;
        self.engine()?.restore(
            &t,
            id,
            &mut data,
            progress,
            Deadline::after(RESTORE_DEADLINE),
        )?;
        Ok(())
    }

    /// What a restore makes: the backup's shape, checked against the pool.
    pub(crate) fn restored_shape(&self, pool: &Pool, target: &str, id: &str) -> Result<BackupMeta> {
        let t = self.target(Some(target))?;
        let info = self.engine()?.get(&t, id, Deadline::after(TARGET_CALL))?;
        let image = |d: DriverKind| matches!(d, DriverKind::Loop | DriverKind::Rbd);
        if image(info.meta.driver) != image(pool.driver) {
            return Err(InvalidInput::new(
                format!("pool {}", pool.name),
                format!(
                    "backup {id} is of a {} volume ({}); pool {} is {} ({})",
                    info.meta.driver,
                    if image(info.meta.driver) {
                        "an image"
                    } else {
                        "a directory tree"
                    },
                    pool.name,
                    pool.driver,
                    if image(pool.driver) {
                        "images"
                    } else {
                        "directory trees"
                    },
                ),
            )
            .into());
        }
        Ok(info.meta)
    }

    // ----- schedules --------------------------------------------------

    /// Back `volume` up every `every` and keep its newest `keep` scheduled
    /// backups (the first run is due at once).
    pub fn set_backup_schedule(
        &self,
        volume: &str,
        target: Option<&str>,
        every: Duration,
        keep: u32,
        deadline: Option<Duration>,
    ) -> Result<BackupSchedule> {
        validate_name("volume", volume)?;
        self.get_volume(volume)?;
        let t = self.target(target)?;
        if keep == 0 || keep > 10_000 {
            return Err(InvalidInput::new("keep", "must be 1 to 10000").into());
        }
        if every < Duration::from_secs(1) {
            return Err(InvalidInput::new("every", "must be at least 1s").into());
        }
        let deadline = deadline.unwrap_or(every).min(BACKUP_DEADLINE);
        let s = BackupSchedule {
            volume: volume.to_string(),
            target: t.name,
            every_secs: every.as_secs(),
            keep,
            deadline_secs: deadline.as_secs().max(1),
            last_run: None,
        };
        self.store
            .commit(Txn::new().put(schedule_key(volume), to_json(&s)))?;
        Ok(s)
    }

    /// Stop a volume's schedule; a volume without one is fine (the same
    /// request again changes nothing).
    pub fn remove_backup_schedule(&self, volume: &str) -> Result<()> {
        validate_name("volume", volume)?;
        if self
            .read::<BackupSchedule>(&schedule_key(volume))?
            .is_none()
        {
            // A schedule outlives its volume; only a name that is neither
            // is unknown.
            return self.get_volume(volume).map(drop);
        }
        self.store.commit(Txn::new().delete(schedule_key(volume)))?;
        Ok(())
    }

    pub fn list_backup_schedules(&self) -> Result<Vec<BackupSchedule>> {
        self.scan_records(SCHEDULE_PREFIX)
    }

    // ----- the runner -------------------------------------------------

    /// Run this node's backups and schedules, once a second, on a thread.
    pub fn start_backups(self: &Arc<Self>) -> std::io::Result<()> {
        let svc = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("backups".into())
            .spawn(move || loop {
                let Some(svc) = svc.upgrade() else { return };
                if let Err(e) = svc.backups_pass() {
                    tracing::debug!(error = %e, "backup pass");
                }
                drop(svc);
                std::thread::sleep(Duration::from_secs(1));
            })?;
        Ok(())
    }

    fn backups_pass(self: &Arc<Self>) -> Result<()> {
        let me = self.config.node_id.clone();
        let now = Utc::now();
        let records = self.backup_records()?;
        *self.backup_runs.write() = records.clone();
        for r in &records {
            if r.node != me {
                continue;
            }
            if r.in_flight() && self.overdue(r, now) {
                // Its worker is stuck (a read that does not return): the
                // run is over all the same.
                self.fail_overdue(r.clone());
            } else if r.in_flight() {
                self.start_backup_worker(r.clone());
            } else if now - r.updated_at
                > chrono::Duration::from_std(FINISHED_KEPT).unwrap_or_default()
            {
                let _ = self.store.commit(Txn::new().delete(backup_key(&r.id)));
            }
        }
        for s in self.list_backup_schedules()? {
            let Ok(vol) = self.get_volume(&s.volume) else {
                continue;
            };
            if vol.node.as_deref().unwrap_or(&me) != me {
                continue;
            }
            let due = s.last_run.is_none_or(|t| {
                now - t
                    >= chrono::Duration::seconds(i64::try_from(s.every_secs).unwrap_or(i64::MAX))
            });
            if !due
                || records
                    .iter()
                    .any(|r| r.volume == s.volume && r.in_flight())
            {
                continue;
            }
            let mut next = s.clone();
            next.last_run = Some(now);
            self.store
                .commit(Txn::new().put(schedule_key(&s.volume), to_json(&next)))?;
            match self.new_backup(
                &s.volume,
                &s.target,
                Duration::from_secs(s.deadline_secs),
                true,
            ) {
                Ok(r) => self.start_backup_worker(r),
                Err(e) => {
                    tracing::warn!(volume = %s.volume, error = %e, "scheduled backup not started")
                }
            }
        }
        Ok(())
    }

    /// A run still going a minute past its deadline while a worker holds it.
    fn overdue(&self, r: &BackupRecord, now: chrono::DateTime<Utc>) -> bool {
        now > r.deadline + chrono::Duration::minutes(1)
            && self.backup_workers.lock().contains(&r.id)
    }

    fn fail_overdue(&self, mut r: BackupRecord) {
        let message = format!(
            "backup {} to {} timed out after {} s: its worker did not return",
            r.id,
            r.target,
            (r.deadline - r.requested_at).num_seconds()
        );
        tracing::warn!(volume = %r.volume, "{message}");
        r.phase = BackupPhase::Failed;
        r.updated_at = Utc::now();
        r.failed = Some(crate::desired::RemoteError {
            node: self.config.node_id.clone(),
            class: crate::desired::ErrorClass::Unavailable,
            message: message.clone(),
        });
        let ev = self
            .events
            .next(EventKind::Warning, None, Some(&r.volume), message);
        if let Err(e) = self.put_backup(&r, Some(ev)) {
            tracing::warn!(backup = %r.id, error = %e, "cannot record an overdue backup");
        }
    }

    fn start_backup_worker(self: &Arc<Self>, rec: BackupRecord) {
        if !self.backup_workers.lock().insert(rec.id.clone()) {
            return;
        }
        let svc = Arc::clone(self);
        let id = rec.id.clone();
        let spawned = std::thread::Builder::new()
            .name("backup".into())
            .spawn(move || {
                let id = rec.id.clone();
                svc.run_backup(rec);
                svc.backup_workers.lock().remove(&id);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a backup worker");
            self.backup_workers.lock().remove(&id);
        }
    }

    fn put_backup(&self, rec: &BackupRecord, event: Option<Event>) -> Result<()> {
        let txn = Txn::new().put(backup_key(&rec.id), to_json(rec));
        let txn = match &event {
            Some(e) => e.add_to(txn),
            None => txn,
        };
        let rev = self.store.txn(txn)?;
        if let Some(e) = event {
            self.events.publish(Event { seq: rev, ..e });
        }
        Ok(())
    }

    fn run_backup(self: &Arc<Self>, mut rec: BackupRecord) {
        let snap = snapshot_name(&rec.id);
        let result = self.backup_attempt(&mut rec, &snap);
        // The snapshot goes whatever happened; a crash before this leaves
        // it to the next run of the same record.
        if self.snapshots.read().contains_key(&snap) {
            if let Err(e) = self.delete_snapshot_op(&snap, Wait::Block) {
                tracing::warn!(snapshot = %snap, error = %e, "cannot delete a backup's snapshot");
            }
        }
        let vol_pool = self.get_volume(&rec.volume).ok().map(|v| v.pool);
        let now = Utc::now();
        rec.updated_at = now;
        let (kind, message) = match result {
            Ok(info) => {
                rec.phase = BackupPhase::Done;
                rec.progress.uploaded_bytes = info.uploaded_bytes;
                (
                    EventKind::Backup,
                    format!(
                        "backup {} to {}: {} bytes, {} sent",
                        rec.id, rec.target, info.data_bytes, info.uploaded_bytes
                    ),
                )
            }
            Err(e) => {
                rec.phase = BackupPhase::Failed;
                let timed_out =
                    matches!(&e, Error::Driver(DriverError::Timeout(_))) || now >= rec.deadline;
                let message = if timed_out {
                    format!(
                        "backup {} to {} timed out after {} s: {e}",
                        rec.id,
                        rec.target,
                        (rec.deadline - rec.requested_at).num_seconds()
                    )
                } else {
                    format!("backup {} to {} failed: {e}", rec.id, rec.target)
                };
                tracing::warn!(volume = %rec.volume, "{message}");
                rec.failed = Some(crate::desired::RemoteError {
                    node: self.config.node_id.clone(),
                    class: crate::desired::ErrorClass::from(&e),
                    message: message.clone(),
                });
                (EventKind::Warning, message)
            }
        };
        let ev = self
            .events
            .next(kind, vol_pool.as_deref(), Some(&rec.volume), message);
        for _ in 0..30 {
            match self.put_backup(&rec, Some(ev.clone())) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(backup = %rec.id, error = %e, "cannot record a finished backup yet; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        if rec.phase == BackupPhase::Done && rec.scheduled {
            if let Err(e) = self.retain(&rec) {
                tracing::warn!(volume = %rec.volume, error = %e, "backup retention failed");
            }
        }
    }

    fn backup_attempt(self: &Arc<Self>, rec: &mut BackupRecord, snap: &str) -> Result<BackupInfo> {
        let deadline = Deadline::after((rec.deadline - Utc::now()).to_std().map_err(|_| {
            DriverError::Timeout("the deadline passed before the run began".into())
        })?);
        let target = self.target(Some(&rec.target))?;
        let vol = self.get_volume(&rec.volume)?;
        if vol.id != rec.volume_id {
            return Err(Error::not_found("volume", &rec.volume));
        }
        rec.phase = BackupPhase::Running;
        rec.updated_at = Utc::now();
        self.put_backup(rec, None)?;
        self.failpoints.hit("backup.running");
        let snapshot = self.create_snapshot_op(&vol.name, snap, Wait::Block)?;
        self.failpoints.hit("backup.snapshot_taken");
        let pool = self.get_pool(&snapshot.pool)?;
        let driver = self.driver(pool.driver)?;
        let mut data = driver.snapshot_data(&pool, &snapshot)?;
        let meta = BackupMeta {
            id: rec.id.clone(),
            volume: vol.name.clone(),
            volume_id: vol.id.clone(),
            driver: vol.driver,
            size_bytes: vol.size_bytes,
            fs: vol.fs,
            block: vol.block,
            formatted: vol.formatted,
            created_at: snapshot.created_at,
            scheduled: rec.scheduled,
        };
        let op = self.operations.start("backup", &vol.name, &rec.target);
        let started = std::time::Instant::now();
        let last = Mutex::new(std::time::Instant::now());
        let report = |uploaded: u64| {
            self.failpoints.hit("backup.uploading");
            let mut l = last.lock();
            if l.elapsed() < Duration::from_secs(1) {
                return;
            }
            *l = std::time::Instant::now();
            let (done, total) = op.progress().get();
            let mut r = rec.clone();
            r.progress = BackupProgress {
                done_bytes: done,
                total_bytes: total,
                rate: done.saturating_mul(1000)
                    / u64::try_from(started.elapsed().as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                uploaded_bytes: uploaded,
            };
            r.updated_at = Utc::now();
            if let Err(e) = self.put_backup(&r, None) {
                tracing::debug!(error = %e, "backup progress not recorded");
            }
        };
        let cancel = AtomicBool::new(false);
        let run = BackupRun {
            progress: op.progress(),
            uploaded: &report,
            cancel: &cancel,
            deadline,
        };
        let info = self.engine()?.backup(&target, &meta, &mut data, &run)?;
        self.failpoints.hit("backup.manifest_written");
        let (done, total) = op.progress().get();
        rec.progress.done_bytes = done;
        rec.progress.total_bytes = total;
        Ok(info)
    }

    /// Keep the newest `keep` scheduled backups of the volume.
    fn retain(&self, rec: &BackupRecord) -> Result<()> {
        let Some(s) = self.read::<BackupSchedule>(&schedule_key(&rec.volume))? else {
            return Ok(());
        };
        let t = self.target(Some(&s.target))?;
        let engine = self.engine()?;
        let mine: Vec<BackupInfo> = engine
            .list(&t, Deadline::after(TARGET_CALL))?
            .into_iter()
            .filter(|b| b.meta.volume_id == rec.volume_id && b.meta.scheduled)
            .collect();
        let excess = mine.len().saturating_sub(s.keep as usize);
        for old in &mine[..excess] {
            engine.delete(&t, &old.meta.id, Deadline::after(TARGET_CALL))?;
            tracing::info!(backup = %old.meta.id, volume = %rec.volume, "expired by retention");
        }
        if excess > 0 {
            self.collect_garbage(&t)?;
        }
        Ok(())
    }
}
