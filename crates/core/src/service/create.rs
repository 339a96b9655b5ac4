//! Creating volumes: empty, or copied from a snapshot or another volume;
//! shape, admission, and the undo of a create that did not finish.

use super::*;

impl VolumeService {
    /// Create a volume; the same request again returns the same volume.
    pub fn create_volume(&self, req: CreateVolume) -> Result<Volume> {
        self.create_volume_with(req, Wait::Block)
    }

    /// [`VolumeService::create_volume`], failing fast on a busy name when
    /// `wait` is [`Wait::Fail`].
    pub fn create_volume_with(&self, req: CreateVolume, wait: Wait) -> Result<Volume> {
        let op = if req.source.is_some() {
            Operation::Clone
        } else {
            Operation::Create
        };
        let driver = self.pool_driver_label(req.pool.as_deref());
        self.timed(op, driver, || self.create_volume_op(req, wait))
    }

    pub(crate) fn create_volume_op(&self, req: CreateVolume, wait: Wait) -> Result<Volume> {
        self.create_admitted(req, wait, Admission::Check)
    }

    /// Do a create the controller placed on this node (want `want_key` at
    /// revision `rev`): the placement reserved its room, and the first write
    /// compares on the want, so a want moved elsewhere meanwhile is not done
    /// here too.
    pub(crate) fn create_volume_for_want(
        &self,
        req: CreateVolume,
        want_key: &str,
        rev: u64,
    ) -> Result<Volume> {
        let op = if req.source.is_some() {
            Operation::Clone
        } else {
            Operation::Create
        };
        let driver = self.pool_driver_label(req.pool.as_deref());
        self.timed(op, driver, || {
            self.create_admitted(
                req,
                Wait::Block,
                Admission::Placed {
                    want_key: want_key.to_string(),
                    rev,
                },
            )
        })
    }

    fn create_admitted(
        &self,
        req: CreateVolume,
        wait: Wait,
        admission: Admission,
    ) -> Result<Volume> {
        validate_name("volume", &req.name)?;
        for (k, v) in &req.labels {
            validate_label(k, v)?;
        }
        let pool = match &req.pool {
            Some(p) => {
                validate_name("pool", p)?;
                self.get_pool(p)?
            }
            None => self.get_pool(&self.default_pool_name())?,
        };
        let _g = self.lock_op(&req.name, wait)?;
        if let Some(existing) = self.volumes.read().get(&req.name).cloned() {
            return check_same(&existing, &req).map(|()| existing);
        }
        let restore = match req.source.clone() {
            Some(CreateSource::Backup { target, id }) => Some((target, id)),
            Some(source) => return self.create_copy(req, source, wait),
            None => None,
        };
        self.check_pool_here(&pool)?;
        self.check_not_cordoned()?;
        let (size, fs) = self.resolve_shape(&req, &pool)?;
        let restored = match &restore {
            Some((target, id)) => Some(self.restored_shape(&pool, target, id)?),
            None => None,
        };
        Self::check_autogrow(&req, &pool, size)?;
        let vol = Volume {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: req.name.clone(),
            pool: pool.name.clone(),
            driver: pool.driver,
            size_bytes: size,
            fs,
            labels: req.labels.clone(),
            created_at: Utc::now(),
            state: VolumeState::Creating,
            // A restore brings the filesystem with the data.
            formatted: restored.as_ref().is_some_and(|m| m.formatted),
            block: req.block,
            fs_grow_pending: false,
            autogrow: req.autogrow,
            source: req.source.clone(),
            cow: false,
            // Shared storage is no node's: any node may stage it.
            node: (!pool.is_shared()).then(|| self.config.node_id.clone()),
            staging: None,
            consumers: BTreeMap::new(),
        };
        let driver = self.driver(pool.driver)?;
        {
            let intent = Intent {
                op: IntentOp::Create,
                before: vol.clone(),
                started: Utc::now(),
                owner: self.config.node_id.clone(),
            };
            let txn = Txn::new().require_absent(vol_key(&vol.name));
            let (_admit, txn) = match &admission {
                Admission::Check => {
                    let g = self.admission.lock();
                    self.admit(&pool, size)?;
                    (Some(g), txn)
                }
                Admission::Placed { want_key, rev } => {
                    (None, txn.require_revision(want_key.clone(), *rev))
                }
            };
            self.persist(
                txn,
                &vol.name,
                Some(&vol),
                Some(IntentWrite::Set(Box::new(intent))),
                None,
            )?;
        }
        self.failpoints.hit("create.after_intent");
        if let Err(e) = driver.create(&pool, &vol) {
            self.undo_create(&pool, &vol);
            return Err(e.into());
        }
        self.failpoints.hit("create.after_image");
        if let Some((target, id)) = &restore {
            let op = self.operations.start("restore", &vol.name, id);
            let r = self.restore_into(&pool, &vol, target, id, op.progress());
            self.failpoints.hit("restore.after_data");
            if let Err(e) = r {
                self.undo_create(&pool, &vol);
                return Err(e);
            }
        }
        let mut done = vol;
        done.state = VolumeState::Available;
        let what = match &restore {
            Some((target, id)) => format!("restored from backup {id} on {target}"),
            None => format!(
                "created {} volume of {} bytes",
                fs.map_or(pool.driver.as_str(), FsType::as_str),
                size
            ),
        };
        let ev = self.event(EventKind::Create, &done, what);
        if let Err(e) = self.persist(
            Txn::new(),
            &done.name,
            Some(&done),
            Some(IntentWrite::Clear),
            Some(ev),
        ) {
            self.undo_create(&pool, &done);
            return Err(e);
        }
        Ok(done)
    }

    /// Create a volume as a copy of a snapshot or of another volume, in the
    /// source's pool. The caller holds the new name's lock.
    pub(crate) fn create_copy(
        &self,
        req: CreateVolume,
        source: CreateSource,
        wait: Wait,
    ) -> Result<Volume> {
        // The source volume's lock keeps it still (no resize, unmount or
        // delete) during the copy.
        let (_src_guard, src_vol, src_snap) = match &source {
            CreateSource::Volume(name) => {
                validate_name("volume", name)?;
                if name == &req.name {
                    return Err(
                        InvalidInput::new("source volume", "is the volume being created").into(),
                    );
                }
                let g = self.lock_op(name, wait)?;
                let v = self.get_volume(name)?;
                self.check_settled(&v)?;
                (Some(g), Some(v), None)
            }
            CreateSource::Backup { .. } => unreachable!("restores are created in place"),
            CreateSource::Snapshot(name) => {
                let s = self.get_snapshot(name)?;
                if !s.ready {
                    return Err(Error::Busy {
                        kind: "snapshot",
                        name: name.clone(),
                        detail: "the snapshot is still being made".into(),
                    });
                }
                (None, None, Some(s))
            }
        };
        let (pool_name, src_size, fs, block, formatted) = match (&src_vol, &src_snap) {
            (Some(v), _) => (v.pool.clone(), v.size_bytes, v.fs, v.block, v.formatted),
            (None, Some(s)) => (s.pool.clone(), s.size_bytes, s.fs, s.block, s.formatted),
            (None, None) => unreachable!("one source is set"),
        };
        if req.pool.as_ref().is_some_and(|p| p != &pool_name) {
            return Err(InvalidInput::new(
                "pool",
                format!("a copy is made in its source's pool, {pool_name:?}"),
            )
            .into());
        }
        if req.fs.is_some() && req.fs != fs {
            return Err(InvalidInput::new(
                "fs",
                format!(
                    "the source's filesystem is {}",
                    fs.map_or("none", FsType::as_str)
                ),
            )
            .into());
        }
        if req.block && !block {
            return Err(
                InvalidInput::new("access type", "the source is not a block volume").into(),
            );
        }
        let size = req
            .size_bytes
            .unwrap_or(src_size)
            .checked_next_multiple_of(4096)
            .ok_or_else(|| InvalidInput::new("size", "is too large"))?;
        if size < src_size {
            return Err(InvalidInput::new(
                format!("size {size}"),
                format!("is smaller than the source's {src_size} bytes"),
            )
            .into());
        }
        let pool = self.get_pool(&pool_name)?;
        self.check_pool_here(&pool)?;
        self.check_not_cordoned()?;
        Self::check_autogrow(&req, &pool, size)?;
        let cow = self.driver(pool.driver)?.copies_share_extents(&pool)?;
        let vol = Volume {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: req.name.clone(),
            pool: pool.name.clone(),
            driver: pool.driver,
            size_bytes: size,
            fs,
            labels: req.labels.clone(),
            created_at: Utc::now(),
            state: VolumeState::Creating,
            formatted,
            block,
            fs_grow_pending: formatted && size > src_size,
            autogrow: req.autogrow,
            source: Some(source.clone()),
            cow,
            // Shared storage is no node's: any node may stage it.
            node: (!pool.is_shared()).then(|| self.config.node_id.clone()),
            staging: None,
            consumers: BTreeMap::new(),
        };
        let driver = self.driver(pool.driver)?;
        {
            let _admit = self.admission.lock();
            // A copy-on-write clone starts out holding nothing of its own.
            self.admit(&pool, if cow { 0 } else { size })?;
            self.begin(
                Txn::new().require_absent(vol_key(&vol.name)),
                &vol.name,
                &vol,
                IntentOp::Create,
                &vol,
            )?;
        }
        self.failpoints.hit("create.after_intent");
        let op = self.operations.start("copy", &vol.name, source.name());
        let copied = match (&src_vol, &src_snap) {
            (Some(v), _) => self.with_still(v, || {
                driver.create_from(&pool, &vol, SourceRef::Volume(v), op.progress())
            }),
            (None, Some(s)) => driver
                .create_from(&pool, &vol, SourceRef::Snapshot(s), op.progress())
                .map_err(Error::from),
            (None, None) => unreachable!("one source is set"),
        };
        if let Err(e) = copied {
            self.undo_create(&pool, &vol);
            return Err(e);
        }
        self.failpoints.hit("create.after_image");
        let mut done = vol;
        done.state = VolumeState::Available;
        let what = match &source {
            CreateSource::Volume(n) => format!("cloned from volume {n}"),
            CreateSource::Snapshot(n) => format!("restored from snapshot {n}"),
            CreateSource::Backup { id, .. } => format!("restored from backup {id}"),
        };
        let ev = self.event(EventKind::Create, &done, what);
        if let Err(e) = self.persist(
            Txn::new(),
            &done.name,
            Some(&done),
            Some(IntentWrite::Clear),
            Some(ev),
        ) {
            self.undo_create(&pool, &done);
            return Err(e);
        }
        Ok(done)
    }

    /// Run `f` with the volume's filesystem frozen if it is mounted, so a
    /// copy of its storage is consistent. Always thaws.
    pub(crate) fn with_still(
        &self,
        vol: &Volume,
        f: impl FnOnce() -> std::result::Result<(), DriverError>,
    ) -> Result<()> {
        let frozen = match &vol.staging {
            Some(s) if !vol.block && matches!(vol.driver, DriverKind::Loop | DriverKind::Rbd) => {
                self.host.freeze(&s.mountpoint).map_err(DriverError::from)?;
                Some(s.mountpoint.clone())
            }
            _ => None,
        };
        if frozen.is_some() {
            self.failpoints.hit("snapshot.after_freeze");
        }
        let result = f();
        if let Some(m) = &frozen {
            if let Err(e) = self.host.thaw(m) {
                tracing::error!(mountpoint = %m.display(), error = %e, "thaw failed");
            }
        }
        result.map_err(Error::from)
    }

    // ----- snapshots ---------------------------------------------------

    /// Autogrow needs a filesystem that can grow and room to grow into.
    pub(crate) fn check_autogrow(req: &CreateVolume, pool: &Pool, size: u64) -> Result<()> {
        let Some(a) = &req.autogrow else {
            return Ok(());
        };
        if req.block || pool.driver == DriverKind::Dir {
            return Err(InvalidInput::new(
                "autogrow",
                "needs a volume with a filesystem of its own (not block, not dir)",
            )
            .into());
        }
        if a.max_bytes < size {
            return Err(InvalidInput::new(
                format!("autogrow max {}", a.max_bytes),
                format!("is below the volume's size of {size} bytes"),
            )
            .into());
        }
        Ok(())
    }

    pub(crate) fn resolve_shape(
        &self,
        req: &CreateVolume,
        pool: &Pool,
    ) -> Result<(u64, Option<FsType>)> {
        let size = req.size_bytes.unwrap_or(self.config.default_size);
        if size == 0 {
            return Err(InvalidInput::new("size", "must be greater than zero").into());
        }
        // Loop devices and filesystems work in 4 KiB blocks.
        let size = size
            .checked_next_multiple_of(4096)
            .ok_or_else(|| InvalidInput::new("size", "is too large"))?;
        if req.block && pool.driver != DriverKind::Loop {
            return Err(InvalidInput::new(
                "access type block",
                format!(
                    "pool {:?} uses the {} driver, which has no block devices",
                    pool.name, pool.driver
                ),
            )
            .into());
        }
        if req.block && req.fs.is_some() {
            return Err(InvalidInput::new("fs", "a block volume has no filesystem").into());
        }
        let fs = match pool.driver {
            DriverKind::Loop if req.block => None,
            DriverKind::Dir | DriverKind::Btrfs => {
                if req.fs.is_some() {
                    return Err(InvalidInput::new(
                        "fs",
                        format!(
                            "pool {:?} uses the {} driver, whose volumes have no filesystem of their own",
                            pool.name, pool.driver
                        ),
                    )
                    .into());
                }
                None
            }
            DriverKind::Loop | DriverKind::Rbd => {
                let pool_fs = pool.ceph.as_ref().and_then(|c| c.fs);
                let fs = req.fs.or(pool_fs).unwrap_or(self.config.default_fs);
                if size < fs.min_size() {
                    return Err(InvalidInput::new(
                        format!("size {size}"),
                        format!(
                            "is below the {} minimum of {} bytes ({})",
                            fs,
                            fs.min_size(),
                            crate::model::format_size(fs.min_size())
                        ),
                    )
                    .into());
                }
                Some(fs)
            }
        };
        Ok((size, fs))
    }

    pub(crate) fn undo_create(&self, pool: &Pool, vol: &Volume) {
        if let Ok(driver) = self.driver(pool.driver) {
            if let Err(e) = driver.delete(pool, vol) {
                tracing::error!(volume = %vol.name, error = %e, "undo create: removing storage failed");
                return;
            }
        }
        if let Err(e) = self.persist(Txn::new(), &vol.name, None, Some(IntentWrite::Clear), None) {
            tracing::error!(volume = %vol.name, error = %e, "undo create: clearing record failed");
        }
    }

    // ----- mount / unmount -------------------------------------------
}

/// Whether a create checks the pool's room itself or was placed (and its
/// room reserved) by the controller.
enum Admission {
    Check,
    Placed { want_key: String, rev: u64 },
}

/// Create of an existing name: the parameters given must match.
pub(crate) fn check_same(existing: &Volume, req: &CreateVolume) -> Result<()> {
    let mut diffs = Vec::new();
    if let Some(pool) = &req.pool {
        if &existing.pool != pool {
            diffs.push(format!("pool is {}", existing.pool));
        }
    }
    if let Some(size) = req.size_bytes {
        // A size too large to round cannot be the existing one.
        if size.checked_next_multiple_of(4096) != Some(existing.size_bytes) {
            diffs.push(format!("size is {} bytes", existing.size_bytes));
        }
    }
    if let Some(fs) = req.fs {
        if Some(fs) != existing.fs {
            diffs.push(format!(
                "filesystem is {}",
                existing.fs.map_or("none", FsType::as_str)
            ));
        }
    }
    if req.autogrow.is_some() && req.autogrow != existing.autogrow {
        diffs.push(format!(
            "autogrow is {}",
            existing
                .autogrow
                .map_or("off".to_string(), |a| a.to_string())
        ));
    }
    if req.block != existing.block {
        diffs.push(format!(
            "access type is {}",
            if existing.block {
                "block"
            } else {
                "filesystem"
            }
        ));
    }
    if !req.labels.is_empty() && req.labels != existing.labels {
        diffs.push("labels differ".to_string());
    }
    if let Some(source) = &req.source {
        if existing.source.as_ref() != Some(source) {
            diffs.push(match &existing.source {
                Some(CreateSource::Snapshot(s)) => format!("source is snapshot {s}"),
                Some(CreateSource::Volume(v)) => format!("source is volume {v}"),
                Some(CreateSource::Backup { id, .. }) => format!("source is backup {id}"),
                None => "it was not made from a snapshot or volume".to_string(),
            });
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::AlreadyExists {
            kind: "volume",
            name: existing.name.clone(),
            detail: diffs.join(", "),
        })
    }
}
