//! Health and usage of volumes: live filesystem use, conditions for CSI.

use super::*;

impl VolumeService {
    /// Filesystem usage of a mounted volume; None when it is not mounted.
    pub fn volume_usage(&self, vol: &Volume) -> Option<VolumeUsage> {
        let staging = vol.staging.as_ref()?;
        if let Some(u) = self.backend_volume_usage(vol) {
            return Some(u);
        }
        let st = self.host.fs_stats(&staging.mountpoint).ok()?;
        Some(VolumeUsage {
            used_bytes: st.total_bytes.saturating_sub(st.free_bytes),
            total_bytes: st.total_bytes,
            used_inodes: st.total_inodes.saturating_sub(st.free_inodes),
            total_inodes: st.total_inodes,
        })
    }

    /// Usage a backend accounts for itself (btrfs: the subvolume's qgroup
    /// against its limit), where statvfs would show the whole pool.
    pub(crate) fn backend_volume_usage(&self, vol: &Volume) -> Option<VolumeUsage> {
        let pool = self.get_pool(&vol.pool).ok()?;
        let (used, total) = self
            .driver(pool.driver)
            .ok()?
            .volume_usage(&pool, vol)
            .ok()??;
        Some(VolumeUsage {
            used_bytes: used,
            total_bytes: total,
            used_inodes: 0,
            total_inodes: 0,
        })
    }

    /// What is wrong with a volume on this host, if anything: a staged
    /// volume whose mount or device has gone, or a consumer's target that is
    /// no longer mounted.
    pub fn volume_condition(&self, vol: &Volume) -> Option<String> {
        let staging = vol.staging.as_ref()?;
        let mounts = match self.host.mounts() {
            Ok(m) => m,
            Err(e) => return Some(format!("cannot read the mount table: {e}")),
        };
        if let Some(dev) = &staging.device {
            let attached = self
                .host
                .loop_devices()
                .map(|l| l.iter().any(|d| &d.device == dev))
                .unwrap_or(false);
            if !attached {
                return Some(format!("device {} is gone", dev.display()));
            }
        }
        // The driver knows what "mounted" is for its volumes (a btrfs or
        // dir volume is a directory on its pool, not a mount of its own).
        let staged = match self
            .get_pool(&vol.pool)
            .and_then(|p| self.driver(p.driver).cloned())
        {
            Ok(d) => d
                .node()
                .is_mounted(vol, &staging.mountpoint)
                .unwrap_or(false),
            Err(_) => mounts.iter().any(|m| m.target == staging.mountpoint),
        };
        if !vol.block && !staged {
            return Some(format!(
                "{} is no longer mounted",
                staging.mountpoint.display()
            ));
        }
        for c in vol.consumers.values() {
            if let Some(t) = &c.target {
                if !mounts.iter().any(|m| &m.target == t) {
                    return Some(format!("{} is no longer mounted", t.display()));
                }
            }
        }
        None
    }

    /// Usage of a volume as seen at one of its paths on this host (its
    /// staging path or a consumer's target). An unknown path is not found.
    pub fn path_usage(&self, name: &str, path: &Path) -> Result<(VolumeUsage, Option<String>)> {
        let vol = self.get_volume(name)?;
        let known = vol.mountpoint() == Some(path)
            || vol
                .consumers
                .values()
                .any(|c| c.target.as_deref() == Some(path));
        if !known {
            return Err(Error::not_found("volume path", &path.display().to_string()));
        }
        let condition = self.volume_condition(&vol);
        if vol.block {
            let usage = VolumeUsage {
                total_bytes: vol.size_bytes,
                ..VolumeUsage::default()
            };
            return Ok((usage, condition));
        }
        if let Some(u) = self.backend_volume_usage(&vol) {
            return Ok((u, condition));
        }
        let st = self.host.fs_stats(path).map_err(DriverError::from)?;
        let usage = VolumeUsage {
            used_bytes: st.total_bytes.saturating_sub(st.free_bytes),
            total_bytes: st.total_bytes,
            used_inodes: st.total_inodes.saturating_sub(st.free_inodes),
            total_inodes: st.total_inodes,
        };
        Ok((usage, condition))
    }
}
