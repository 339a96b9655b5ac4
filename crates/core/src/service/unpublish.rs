//! Giving a volume back: unbind a consumer's target; the last consumer
//! out unmounts and detaches.

use super::*;

impl VolumeService {
    /// Release `consumer`; the last one out unmounts and detaches. An
    /// unknown consumer is a logged no-op.
    pub fn unmount(&self, name: &str, consumer: &ConsumerRef) -> Result<Volume> {
        self.unpublish(name, consumer, Wait::Block)
    }

    /// Release `consumer`, unbinding its target if it has one; the last one
    /// out unmounts and detaches. An unknown consumer is a logged no-op.
    pub fn unpublish(&self, name: &str, consumer: &ConsumerRef, wait: Wait) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Unmount, driver, || {
            self.unpublish_op(name, consumer, wait)
        })
    }

    pub(crate) fn unpublish_op(
        &self,
        name: &str,
        consumer: &ConsumerRef,
        wait: Wait,
    ) -> Result<Volume> {
        validate_name("volume", name)?;
        validate_consumer_id(&consumer.id)?;
        let _g = self.lock_op(name, wait)?;
        let mut vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        self.check_here(&vol)?;
        let key = consumer.key();
        let Some(c) = vol.consumers.get_mut(&key) else {
            tracing::info!(volume = name, consumer = %key, "unmount of an unknown consumer: nothing to do");
            return Ok(vol);
        };
        if c.count > 1 {
            c.count -= 1;
            self.persist(Txn::new(), name, Some(&vol), None, None)?;
            return Ok(vol);
        }
        let target = c.target.clone();
        let before = vol.clone();
        vol.consumers.remove(&key);
        if !vol.consumers.is_empty() || vol.staging.is_none() {
            if let Some(t) = &target {
                self.begin(
                    Txn::new(),
                    name,
                    &before,
                    IntentOp::Unpublish {
                        consumer: consumer.clone(),
                    },
                    &before,
                )?;
                if let Err(e) = self.unbind(&before, t) {
                    let _ = self.persist(
                        Txn::new(),
                        name,
                        Some(&before),
                        Some(IntentWrite::Clear),
                        None,
                    );
                    return Err(e);
                }
            }
            let ev = self.event(EventKind::Unmount, &vol, format!("released by {key}"));
            self.persist(
                Txn::new(),
                name,
                Some(&vol),
                target.as_ref().map(|_| IntentWrite::Clear),
                Some(ev),
            )?;
            return Ok(vol);
        }
        self.begin(
            Txn::new(),
            name,
            &before,
            IntentOp::Unstage {
                consumer: consumer.clone(),
            },
            &before,
        )?;
        self.failpoints.hit("unstage.after_intent");
        match self.unstage_steps(&before) {
            Ok(()) => {}
            Err(e) => {
                // Still mounted (busy): the consumer stays recorded.
                let _ = self.persist(
                    Txn::new(),
                    name,
                    Some(&before),
                    Some(IntentWrite::Clear),
                    None,
                );
                return Err(e);
            }
        }
        vol.state = VolumeState::Available;
        vol.staging = None;
        let ev = self.event(
            EventKind::Unmount,
            &vol,
            format!("released by {key}; unmounted and detached"),
        );
        self.persist(
            Txn::new(),
            name,
            Some(&vol),
            Some(IntentWrite::Clear),
            Some(ev),
        )?;
        Ok(vol)
    }

    /// Unmount a consumer's target. Not mounted is fine; busy is an error.
    pub(crate) fn unbind(&self, vol: &Volume, target: &Path) -> Result<()> {
        match self.host.unmount(target) {
            Ok(()) => Ok(()),
            Err(crate::host::HostError::Busy { .. }) => Err(Error::Busy {
                kind: "volume",
                name: vol.name.clone(),
                detail: format!("{} is still in use on the host", target.display()),
            }),
            Err(e) => Err(DriverError::from(e).into()),
        }
    }

    /// Whether the volume's staged device is mounted anywhere in our mount
    /// namespace.
    pub(crate) fn device_mounted_here(&self, vol: &Volume) -> Result<bool> {
        let Some(device) = vol.staging.as_ref().and_then(|s| s.device.as_ref()) else {
            return Ok(false);
        };
        let mounts = self.host.mounts().map_err(DriverError::from)?;
        Ok(mounts.iter().any(|m| Path::new(&m.source) == device))
    }

    /// Unmount the staging mount and detach the device. Idempotent.
    pub(crate) fn unstage_steps(&self, vol: &Volume) -> Result<()> {
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        let node = driver.node();
        for c in vol.consumers.values() {
            if let Some(t) = &c.target {
                self.unbind(vol, t)?;
            }
        }
        let mountpoint = vol
            .staging
            .as_ref()
            .map_or_else(|| self.mountpoint_for(&vol.name), |s| s.mountpoint.clone());
        let unmounted = if vol.block {
            Ok(())
        } else {
            node.unmount(vol, &mountpoint)
        };
        match unmounted {
            Ok(()) => {}
            Err(DriverError::Host(crate::host::HostError::Busy { .. })) => {
                return Err(Error::Busy {
                    kind: "volume",
                    name: vol.name.clone(),
                    detail: format!("{} is still in use on the host", mountpoint.display()),
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.failpoints.hit("unstage.after_umount");
        match node.detach(&pool, vol) {
            Ok(()) => {}
            // Unmounted here, but a mount namespace made while it was mounted
            // (any container start) still holds a copy of the mount. The
            // device has autoclear: the kernel frees it when that copy goes,
            // and a mount before then reuses it (one device, one filesystem
            // instance per image). For us the volume is unstaged.
            Err(DriverError::Host(crate::host::HostError::Busy { .. }))
                if !vol.block && !self.device_mounted_here(vol)? =>
            {
                tracing::info!(volume = %vol.name, "unmounted; the loop device is still referenced from another mount namespace and is left for autoclear");
            }
            // A raw block volume's device held open, or the device mounted
            // elsewhere in our own namespace: really in use.
            Err(DriverError::Host(crate::host::HostError::Busy { .. })) => {
                return Err(Error::Busy {
                    kind: "volume",
                    name: vol.name.clone(),
                    detail: "its device is still in use on the host".into(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.failpoints.hit("unstage.after_detach");
        if !vol.block && mountpoint.starts_with(&self.config.mounts_dir) {
            remove_mountpoint(&mountpoint);
        }
        Ok(())
    }

    // ----- resize ------------------------------------------------------
}

pub(crate) fn remove_mountpoint(path: &Path) {
    match std::fs::remove_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove mountpoint"),
    }
}
