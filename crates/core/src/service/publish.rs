//! Making a volume usable: attach, format on first use, mount at the
//! staging path, bind onto a consumer's target.

use super::*;

impl VolumeService {
    /// Record `consumer` on the volume, staging it (attach, format on first
    /// use, mount) if it is not staged yet. Returns the volume with its
    /// mountpoint.
    pub fn mount(&self, name: &str, consumer: ConsumerRef) -> Result<Volume> {
        self.publish(name, consumer, None, Wait::Block)
    }

    /// Like [`VolumeService::mount`], and with a target, bind-mount the
    /// volume (its staging path, or a block volume's device) onto it for
    /// this consumer. Publishing the same consumer again with the same
    /// target is a no-op; with other options it is `AlreadyExists`.
    pub fn publish(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        wait: Wait,
    ) -> Result<Volume> {
        self.publish_with(name, consumer, target, Sharing::Unspecified, wait)
    }

    /// [`VolumeService::publish`] for a workload's target that may share
    /// the volume with other workloads' targets, or must be its only one
    /// ([`Sharing`]): an exclusive target is refused while another
    /// workload's is there, and refuses any later one. Recorded on the
    /// consumer, and part of the idempotency check.
    pub fn publish_with(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
        wait: Wait,
    ) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Mount, driver, || {
            self.publish_op(name, consumer, target, sharing, false, wait)
        })
    }

    /// [`VolumeService::publish_with`] that takes a shared volume over from
    /// a live node holding it (REX-Ray's `preempt`): that node is fenced
    /// first.
    pub fn publish_preempt(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
        wait: Wait,
    ) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Mount, driver, || {
            self.publish_op(name, consumer, target, sharing, true, wait)
        })
    }

    pub(crate) fn publish_op(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
        preempt: bool,
        wait: Wait,
    ) -> Result<Volume> {
        // Only a target asks anything of others.
        let sharing = if target.is_some() {
            sharing
        } else {
            Sharing::Unspecified
        };
        validate_name("volume", name)?;
        validate_consumer_id(&consumer.id)?;
        if let Some(t) = &target {
            validate_target(&t.path)?;
        }
        let _g = self.lock_op(name, wait)?;
        let mut vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        self.check_here(&vol)?;
        let key = consumer.key();
        if let Some(existing) = vol.consumers.get(&key) {
            if target.is_some() || existing.target.is_some() {
                let same = target.as_ref().is_some_and(|t| {
                    existing.target.as_deref() == Some(t.path.as_path())
                        && existing.read_only == t.read_only
                        && existing.flags == t.flags
                        && existing.sharing == sharing
                });
                if same {
                    return Ok(vol);
                }
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: name.to_string(),
                    detail: format!("{key} is already published with other options"),
                });
            }
        }
        if target.is_some() {
            if let Some(other) = vol.sharing_conflict(&key, sharing) {
                let at = other
                    .target
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let detail = if sharing == Sharing::Exclusive {
                    format!("published at {at}; an exclusive publish needs the volume alone")
                } else {
                    format!("published for exclusive use at {at}")
                };
                return Err(Error::Busy {
                    kind: "volume",
                    name: name.to_string(),
                    detail,
                });
            }
        }
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        let node = driver.node();
        if let Some(staging) = &vol.staging {
            // The record may say staged while the mount is gone (unmounted
            // behind our back, or a record from before a failed unstage):
            // never serve a bare directory as the volume.
            if !vol.block
                && !node.serves_in_place()
                && !node.is_mounted(&vol, &staging.mountpoint)?
            {
                tracing::warn!(volume = name, mountpoint = %staging.mountpoint.display(), "the staging mount is gone; staging again");
                vol.staging = None;
                vol.state = VolumeState::Available;
            }
        }
        if vol.staging.is_none() {
            return self.stage_and_publish(&pool, vol, consumer, target, sharing, preempt);
        }
        let Some(target) = target else {
            add_consumer(&mut vol, &consumer, None, sharing);
            let ev = self.event(EventKind::Mount, &vol, format!("mounted for {key}"));
            self.persist(Txn::new(), name, Some(&vol), None, Some(ev))?;
            return Ok(vol);
        };
        self.begin(
            Txn::new(),
            name,
            &vol,
            IntentOp::Publish {
                consumer: consumer.clone(),
                target: target.clone(),
            },
            &vol,
        )?;
        // A failed bind_target leaves no bind of its own behind, and must
        // not take down a mount that was there before it.
        if let Err(e) = self.bind_target(&vol, &target) {
            let _ = node;
            let _ = self.persist(Txn::new(), name, Some(&vol), Some(IntentWrite::Clear), None);
            return Err(e);
        }
        add_consumer(&mut vol, &consumer, Some(&target), sharing);
        let ev = self.event(
            EventKind::Mount,
            &vol,
            format!("published at {} for {key}", target.path.display()),
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

    /// Bind the volume onto a consumer's target. Idempotent.
    pub(crate) fn bind_target(&self, vol: &Volume, target: &PublishTarget) -> Result<()> {
        let staging = vol.staging.as_ref().ok_or_else(|| Error::Busy {
            kind: "volume",
            name: vol.name.clone(),
            detail: "not staged".into(),
        })?;
        let source = if vol.block {
            staging
                .device
                .clone()
                .unwrap_or_else(|| staging.mountpoint.clone())
        } else {
            staging.mountpoint.clone()
        };
        let mounted = self
            .host
            .mounts()
            .map_err(DriverError::from)?
            .iter()
            .any(|m| m.target == target.path);
        let opts = MountOptions {
            read_only: target.read_only,
            flags: target.flags,
        };
        if mounted {
            // Ours (a retry after an undo that failed): set its flags, which
            // an earlier attempt may have left otherwise. Anything else
            // mounted there is not ours to serve through or to change.
            if !self
                .host
                .is_bind_of(&source, &target.path)
                .map_err(DriverError::from)?
            {
                return Err(Error::AlreadyExists {
                    kind: "target",
                    name: target.path.display().to_string(),
                    detail: format!("something other than volume {} is mounted there", vol.name),
                });
            }
            self.host
                .set_bind_flags(&source, &target.path, opts)
                .map_err(DriverError::from)?;
        } else {
            self.host
                .bind_mount(&source, &target.path, opts)
                .map_err(DriverError::from)?;
        }
        Ok(())
    }

    pub(crate) fn stage_and_publish(
        &self,
        pool: &Pool,
        mut vol: Volume,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
        preempt: bool,
    ) -> Result<Volume> {
        let name = vol.name.clone();
        let driver = self.driver(pool.driver)?;
        let node = driver.node();
        let read_only = target.as_ref().is_some_and(|t| t.read_only);
        if pool.is_shared() && read_only && !vol.formatted && !vol.block {
            // Readers on several nodes must not each make the filesystem.
            return Err(Error::Busy {
                kind: "volume",
                name: name.clone(),
                detail: "it has no filesystem yet for readers; stage it read-write once first"
                    .into(),
            });
        }
        self.claim_shared(pool, &vol, read_only, preempt)?;
        if target.is_none() && node.serves_in_place() {
            // Nothing is attached or mounted (dir, btrfs): staging is one
            // record update, and there is nothing an intent would undo.
            let data = node.mount(pool, &vol, None, &self.mountpoint_for(&name))?;
            vol.state = VolumeState::Mounted;
            vol.staging = Some(Staging {
                device: None,
                mountpoint: data,
                clients: Vec::new(),
            });
            add_consumer(&mut vol, &consumer, None, sharing);
            let ev = self.event(
                EventKind::Mount,
                &vol,
                format!("staged and mounted for {}", consumer.key()),
            );
            self.persist(Txn::new(), &name, Some(&vol), None, Some(ev))?;
            return Ok(vol);
        }
        self.begin(
            Txn::new(),
            &name,
            &vol,
            IntentOp::Stage {
                consumer: consumer.clone(),
                target: target.clone(),
            },
            &vol,
        )?;
        self.failpoints.hit("stage.after_intent");
        let mountpoint = self.mountpoint_for(&name);
        let staged = (|| -> Result<(Option<LoopDevice>, PathBuf, Vec<String>)> {
            let dev = node.attach(pool, &vol)?;
            self.failpoints.hit("stage.after_attach");
            let dev_path = dev.as_ref().map(|d| d.path.clone());
            if vol.block {
                // A raw block volume is only attached; it must outlive this
                // process's hold on it, since no mount will hold it.
                let path = dev_path.clone().ok_or_else(|| {
                    DriverError::Unsupported(format!("pool {} has no block devices", pool.name))
                })?;
                self.host
                    .loop_set_autoclear(&path, false)
                    .map_err(DriverError::from)?;
                let clients = node.clients(pool, &vol)?;
                return Ok((dev, path, clients));
            }
            if let (Some(path), false) = (&dev_path, vol.formatted) {
                node.format(&vol, path)?;
            }
            self.failpoints.hit("stage.after_format");
            let offline_grow = vol.fs_grow_pending && node.grows_offline(&vol);
            if let (Some(path), true) = (&dev_path, offline_grow) {
                node.grow_fs(&vol, path, None)?;
            }
            std::fs::create_dir_all(&mountpoint).map_err(|e| DriverError::io(&mountpoint, e))?;
            let data = if pool.is_shared() && read_only {
                node.mount_read_only(pool, &vol, dev_path.as_deref(), &mountpoint)?
            } else {
                node.mount(pool, &vol, dev_path.as_deref(), &mountpoint)?
            };
            if data != mountpoint {
                // The backend serves its data in place (dir driver).
                remove_mountpoint(&mountpoint);
            }
            self.failpoints.hit("stage.after_mount");
            if let (Some(path), true) = (&dev_path, vol.fs_grow_pending && !offline_grow) {
                node.grow_fs(&vol, path, Some(&data))?;
            }
            let clients = node.clients(pool, &vol)?;
            Ok((dev, data, clients))
        })();
        let (dev, data, clients) = match staged {
            Ok(v) => v,
            Err(e) => {
                self.undo_stage(pool, &vol, target.as_ref());
                return Err(e);
            }
        };
        let before = vol.clone();
        vol.formatted = vol.formatted || (dev.is_some() && !vol.block);
        vol.fs_grow_pending = false;
        vol.state = VolumeState::Mounted;
        vol.staging = Some(Staging {
            device: dev.as_ref().map(|d| d.path.clone()),
            mountpoint: data,
            clients,
        });
        if let Some(t) = &target {
            // bind_target cleans up after itself; the target is not ours
            // to unmount.
            if let Err(e) = self.bind_target(&vol, t) {
                self.undo_stage(pool, &before, None);
                return Err(e);
            }
        }
        add_consumer(&mut vol, &consumer, target.as_ref(), sharing);
        let ev = self.event(
            EventKind::Mount,
            &vol,
            format!("staged and mounted for {}", consumer.key()),
        );
        if let Err(e) = self.persist(
            Txn::new(),
            &name,
            Some(&vol),
            Some(IntentWrite::Clear),
            Some(ev),
        ) {
            self.undo_stage(pool, &before, target.as_ref());
            return Err(e);
        }
        // The mount now holds the loop device; autoclear frees it on umount.
        drop(dev);
        Ok(vol)
    }

    /// Take back what a failed or interrupted stage did: unbind the target,
    /// unmount, detach, remove the mountpoint, restore the record, drop the
    /// intent.
    pub(crate) fn undo_stage(&self, pool: &Pool, before: &Volume, target: Option<&PublishTarget>) {
        let mountpoint = self.mountpoint_for(&before.name);
        let result = (|| -> Result<()> {
            let driver = self.driver(pool.driver)?;
            let node = driver.node();
            if let Some(t) = target {
                self.host.unmount(&t.path).map_err(DriverError::from)?;
            }
            // Only our own mount: a stage that failed because something
            // else is mounted there must leave that alone.
            if self.our_mount_at(pool, before, &mountpoint)? {
                node.unmount(before, &mountpoint)?;
            }
            node.detach(pool, before)?;
            remove_mountpoint(&mountpoint);
            self.persist(
                Txn::new(),
                &before.name,
                Some(before),
                Some(IntentWrite::Clear),
                None,
            )
        })();
        if let Err(e) = result {
            tracing::error!(volume = %before.name, error = %e, "undo stage failed; the intent stays for the reconciler");
        }
    }

    /// Whether the mount visible at `mountpoint` is this volume's: a loop
    /// device backed by its image (drivers without an image serve in place
    /// and decide for themselves).
    pub(crate) fn our_mount_at(
        &self,
        pool: &Pool,
        vol: &Volume,
        mountpoint: &Path,
    ) -> Result<bool> {
        let Some(image) = self.driver(pool.driver)?.backing_file(pool, vol) else {
            return Ok(true);
        };
        let mounts = self.host.mounts().map_err(DriverError::from)?;
        let Some(top) = mounts.iter().rev().find(|m| m.target == mountpoint) else {
            return Ok(false);
        };
        let loops = self.host.loop_devices().map_err(DriverError::from)?;
        Ok(loops
            .iter()
            .any(|l| l.backing_file == image && Path::new(&top.source) == l.device))
    }
}

pub(crate) fn add_consumer(
    vol: &mut Volume,
    consumer: &ConsumerRef,
    target: Option<&PublishTarget>,
    sharing: Sharing,
) {
    let entry = vol
        .consumers
        .entry(consumer.key())
        .or_insert_with(|| Consumer {
            kind: consumer.kind,
            id: consumer.id.clone(),
            count: 0,
            since: Utc::now(),
            target: target.map(|t| t.path.clone()),
            read_only: target.is_some_and(|t| t.read_only),
            flags: target.map(|t| t.flags).unwrap_or_default(),
            sharing,
        });
    entry.count = if consumer.kind.counted() && !consumer.id.is_empty() {
        entry.count.saturating_add(1)
    } else {
        1
    };
}
