//! Deleting a volume and its storage.

use super::*;

impl VolumeService {
    /// Delete a volume. A volume with consumers needs `force`, which
    /// unmounts it first.
    pub fn delete_volume(&self, name: &str, force: bool) -> Result<()> {
        self.delete_volume_with(name, force, Wait::Block)
    }

    /// [`VolumeService::delete_volume`] with a choice of waiting.
    pub fn delete_volume_with(&self, name: &str, force: bool, wait: Wait) -> Result<()> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Delete, driver, || {
            self.delete_volume_op(name, force, wait)
        })
    }

    pub(crate) fn delete_volume_op(&self, name: &str, force: bool, wait: Wait) -> Result<()> {
        validate_name("volume", name)?;
        let _g = self.lock_op(name, wait)?;
        let vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        self.check_not_moving(&vol)?;
        self.check_here(&vol)?;
        if !vol.consumers.is_empty() && !force {
            return Err(Error::InUse {
                name: name.to_string(),
                consumers: vol.consumers.len(),
            });
        }
        let mut deleting = vol.clone();
        deleting.state = VolumeState::Deleting;
        self.begin(Txn::new(), name, &deleting, IntentOp::Delete, &vol)?;
        self.failpoints.hit("delete.after_intent");
        if let Err(e) = self.delete_steps(&vol) {
            let _ = self.persist(Txn::new(), name, Some(&vol), Some(IntentWrite::Clear), None);
            return Err(e);
        }
        Ok(())
    }

    /// Unstage, remove the storage, drop the record. Idempotent.
    pub(crate) fn delete_steps(&self, vol: &Volume) -> Result<()> {
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        self.unstage_steps(vol)?;
        self.failpoints.hit("delete.after_unstage");
        driver.delete(&pool, vol)?;
        self.failpoints.hit("delete.after_image");
        let ev = self.event(EventKind::Delete, vol, "deleted".to_string());
        self.persist(
            Txn::new(),
            &vol.name,
            None,
            Some(IntentWrite::Clear),
            Some(ev),
        )
    }

    // ----- autogrow ------------------------------------------------------
}
