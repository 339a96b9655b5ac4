//! Growing a volume: the image or quota, then the filesystem (online where
//! it can, else on the next mount).

use super::*;

impl VolumeService {
    /// Grow a volume to `new_size` bytes, online if it is mounted.
    pub fn resize(&self, name: &str, new_size: u64) -> Result<Volume> {
        self.resize_with(name, new_size, Wait::Block)
    }

    /// [`VolumeService::resize`] with a choice of waiting.
    pub fn resize_with(&self, name: &str, new_size: u64, wait: Wait) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Resize, driver, || {
            self.resize_op(name, new_size, wait)
        })
    }

    pub(crate) fn resize_op(&self, name: &str, new_size: u64, wait: Wait) -> Result<Volume> {
        validate_name("volume", name)?;
        let _g = self.lock_op(name, wait)?;
        let vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        self.check_not_moving(&vol)?;
        self.check_here(&vol)?;
        let new_size = new_size
            .checked_next_multiple_of(4096)
            .ok_or_else(|| InvalidInput::new("size", "is too large"))?;
        if new_size == vol.size_bytes {
            return Ok(vol);
        }
        if new_size < vol.size_bytes {
            return Err(InvalidInput::new(
                format!("size {new_size}"),
                format!(
                    "is smaller than the volume's {} bytes; shrinking is not supported",
                    vol.size_bytes
                ),
            )
            .into());
        }
        let pool = self.get_pool(&vol.pool)?;
        let mut growing = vol.clone();
        growing.state = VolumeState::Resizing;
        growing.size_bytes = new_size;
        {
            let _admit = self.admission.lock();
            // A copy-on-write clone is charged what it holds, not its size.
            self.admit(
                &pool,
                if vol.cow {
                    0
                } else {
                    new_size - vol.size_bytes
                },
            )?;
            self.begin(
                Txn::new(),
                name,
                &growing,
                IntentOp::Resize {
                    from: vol.size_bytes,
                    to: new_size,
                },
                &vol,
            )?;
        }
        self.failpoints.hit("resize.after_intent");
        match self.resize_steps(&pool, &vol, new_size) {
            Ok(done) => Ok(done),
            Err(e) => {
                // Growing the image is harmless to keep; the record keeps the
                // old size so accounting and the filesystem agree.
                let _ = self.persist(Txn::new(), name, Some(&vol), Some(IntentWrite::Clear), None);
                Err(e)
            }
        }
    }

    /// Grow the storage, then the filesystem, then record the result.
    /// Idempotent, so the reconciler rolls an interrupted resize forward.
    pub(crate) fn resize_steps(&self, pool: &Pool, vol: &Volume, new_size: u64) -> Result<Volume> {
        let driver = self.driver(pool.driver)?;
        driver.resize(pool, vol, new_size)?;
        self.failpoints.hit("resize.after_image");
        let mut done = vol.clone();
        done.size_bytes = new_size;
        let node = driver.node();
        let mut note = String::new();
        match &vol.staging {
            Some(Staging {
                device: Some(dev), ..
            }) if vol.block => {
                self.host
                    .loop_refresh_capacity(dev)
                    .map_err(DriverError::from)?;
            }
            None if vol.block => {}
            Some(Staging {
                device: Some(dev),
                mountpoint,
                ..
            }) if node.can_grow_online(vol) => {
                node.grow_fs(vol, dev, Some(mountpoint))?;
            }
            Some(Staging {
                device: Some(_), ..
            }) => {
                done.fs_grow_pending = true;
                note = "; the filesystem cannot grow online on this host (online ext4 resize needs CAP_SYS_RESOURCE) and grows at its next mount".into();
            }
            Some(Staging { device: None, .. }) => {}
            None => done.fs_grow_pending = vol.formatted,
        }
        self.failpoints.hit("resize.after_fsgrow");
        done.state = if done.staging.is_some() {
            VolumeState::Mounted
        } else {
            VolumeState::Available
        };
        let ev = self.event(
            EventKind::Resize,
            &done,
            format!("grown from {} to {} bytes{note}", vol.size_bytes, new_size),
        );
        self.persist(
            Txn::new(),
            &done.name,
            Some(&done),
            Some(IntentWrite::Clear),
            Some(ev),
        )?;
        Ok(done)
    }

    // ----- delete ------------------------------------------------------

    /// Finish a grow on this host: grow the mounted filesystem to its
    /// device if a grow is pending. Returns the volume.
    pub fn expand_on_node(&self, name: &str, wait: Wait) -> Result<Volume> {
        validate_name("volume", name)?;
        let _g = self.lock_op(name, wait)?;
        let mut vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        self.check_here(&vol)?;
        let (
            Some(Staging {
                device: Some(dev),
                mountpoint,
                ..
            }),
            true,
        ) = (vol.staging.clone(), vol.fs_grow_pending)
        else {
            return Ok(vol);
        };
        let pool = self.get_pool(&vol.pool)?;
        let node = self.driver(pool.driver)?.node();
        if !node.can_grow_online(&vol) {
            return Err(Error::Busy {
                kind: "volume",
                name: name.to_string(),
                detail: "the filesystem cannot grow while mounted on this host (online ext4 resize needs CAP_SYS_RESOURCE); it grows at its next mount".into(),
            });
        }
        node.grow_fs(&vol, &dev, Some(&mountpoint))?;
        vol.fs_grow_pending = false;
        self.persist(Txn::new(), name, Some(&vol), None, None)?;
        Ok(vol)
    }
}
