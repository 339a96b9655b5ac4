//! The `rbd` driver: each volume is an RBD image `<vol id>` in a Ceph pool,
//! reached from every node. Control calls (create, resize, snapshots,
//! clones, fencing) go through librados/librbd ([`ballast_ceph`]).
//!
//! On a node the image is mapped by the best path the kernel offers. Here
//! that is always `rbd-fuse` (one helper process per volume, serving the
//! image as a file) plus a direct-I/O loop device over that file: it needs
//! neither the rbd nor the nbd module. The helper is a daemon of its own,
//! so a restart of ballast never interrupts I/O; the next start finds the
//! mount, the helper and the loop device and adopts them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_ceph::{CephError, ClientConf, Cluster, IMAGE_FEATURES};
use ballast_core::backups::VolumeData;
use ballast_core::driver::{NodeOps, PoolUsage, SourceRef};
use ballast_core::host::{Host, LoopDevice};
use ballast_core::model::{CephPool, DriverKind, Pool, Snapshot, Volume};
use ballast_core::progress::Progress;
use ballast_core::{Driver, DriverError};

use crate::loopback::LoopNode;

/// Connecting and every monitor or OSD call: an unreachable cluster is a
/// clear error within this, never a hang.
pub const CEPH_TIMEOUT: Duration = Duration::from_secs(4);
/// How long rbd-fuse may take to open the image and mount.
const MAP_TIMEOUT: Duration = Duration::from_secs(20);
/// A mapped image's file must answer a stat within this, or its helper is
/// taken for hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The OSDs drop the watch of a client that died without closing its image
/// after `osd_client_watch_timeout` (30 s by default).
const WATCH_GONE: Duration = Duration::from_secs(40);
/// rbd-fuse closes its image and exits once its mount is gone.
const HELPER_EXIT: Duration = Duration::from_secs(10);

/// Connections, one per cluster and identity, shared by the control and
/// node sides.
#[derive(Default)]
struct Clients(Mutex<HashMap<ClientConf, Cluster>>);

impl Clients {
    fn get(&self, ceph: &CephPool) -> Result<Cluster, DriverError> {
        let conf = client_conf(ceph);
        if let Some(c) = self.0.lock().unwrap().get(&conf) {
            return Ok(c.clone());
        }
        // Not under the lock: a connect to unreachable monitors takes the
        // whole timeout, and must not hold up other pools.
        let c = Cluster::connect(&conf).map_err(|e| connect_error(ceph, e))?;
        self.0.lock().unwrap().insert(conf, c.clone());
        Ok(c)
    }
}

fn client_conf(ceph: &CephPool) -> ClientConf {
    ClientConf {
        conf: ceph.conf.clone(),
        user: ceph.user.clone(),
        keyring: ceph.keyring.clone(),
        timeout: CEPH_TIMEOUT,
    }
}

fn connect_error(ceph: &CephPool, e: CephError) -> DriverError {
    let who = format!(
        "client.{} of the cluster in {}",
        ceph.user.as_deref().unwrap_or("admin"),
        ceph.conf.display()
    );
    match e.errno() {
        Some(libc::ETIMEDOUT) => DriverError::Timeout(format!(
            "{who}: no monitor answered within {}s ({e})",
            CEPH_TIMEOUT.as_secs()
        )),
        Some(libc::ENOENT) => DriverError::NotFound(format!(
            "{who}: a file it needs is missing or names no monitor (ceph.conf, keyring): {e}"
        )),
        Some(libc::EACCES | libc::EPERM) => DriverError::Unavailable(format!(
            "{who}: the monitors refused the key (check --keyring and --ceph-user): {e}"
        )),
        Some(libc::EINVAL) => {
            DriverError::Unavailable(format!("{who}: the configuration is not usable: {e}"))
        }
        _ => DriverError::Unavailable(format!("{who}: {e}")),
    }
}

/// Classify a librbd or librados failure by its errno.
fn ceph_error(e: CephError) -> DriverError {
    let text = e.to_string();
    match e.errno() {
        Some(libc::ENOENT) => DriverError::NotFound(text),
        Some(libc::EEXIST) => DriverError::AlreadyExists(text),
        Some(libc::ENOSPC | libc::EDQUOT) => DriverError::NoSpace(text),
        Some(libc::EBUSY | libc::ENOTEMPTY) => DriverError::Busy(text),
        Some(libc::ETIMEDOUT) => DriverError::Timeout(text),
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => DriverError::Unsupported(text),
        _ => DriverError::Unavailable(text),
    }
}

fn ceph_of(pool: &Pool) -> Result<&CephPool, DriverError> {
    pool.ceph.as_ref().ok_or_else(|| {
        DriverError::Unsupported(format!("pool {} has no Ceph cluster recorded", pool.name))
    })
}

pub struct RbdDriver {
    clients: Arc<Clients>,
    node: RbdNode,
}

pub struct RbdNode {
    clients: Arc<Clients>,
    host: Arc<dyn Host>,
    loops: LoopNode,
    /// `<maps>/<vol id>`: where rbd-fuse serves each mapped image.
    maps_dir: PathBuf,
}

impl RbdDriver {
    /// `maps_dir` is this node's own (under its state directory): the FUSE
    /// mounts of mapped images.
    pub fn new(host: Arc<dyn Host>, maps_dir: PathBuf) -> Self {
        let clients = Arc::new(Clients::default());
        RbdDriver {
            node: RbdNode {
                clients: clients.clone(),
                loops: LoopNode::new(host.clone()),
                host,
                maps_dir,
            },
            clients,
        }
    }

    fn rados_pool(&self, pool: &Pool) -> Result<ballast_ceph::Pool, DriverError> {
        let ceph = ceph_of(pool)?;
        let cluster = self.clients.get(ceph)?;
        cluster.pool(&ceph.pool).map_err(|e| match e.errno() {
            Some(libc::ENOENT) => DriverError::NotFound(format!(
                "ceph pool {:?} does not exist in the cluster of {}",
                ceph.pool,
                ceph.conf.display()
            )),
            _ => ceph_error(e),
        })
    }

    fn open(&self, pool: &Pool, image: &str) -> Result<ballast_ceph::Image, DriverError> {
        self.rados_pool(pool)?
            .open(image, None)
            .map_err(|e| match e.errno() {
                Some(libc::ENOENT) => DriverError::NotFound(format!(
                    "image {}/{image} is gone from the cluster",
                    ceph_of(pool).map(|c| c.pool.as_str()).unwrap_or("?")
                )),
                _ => ceph_error(e),
            })
    }

    /// Clone `parent@snap` as the volume's image, grow it to the volume's
    /// size and flatten it, so it no longer depends on the snapshot.
    fn clone_flattened(
        &self,
        pool: &Pool,
        vol: &Volume,
        parent: &str,
        snap: &str,
        progress: &Progress,
    ) -> Result<(), DriverError> {
        let rp = self.rados_pool(pool)?;
        match rp.clone_image(parent, snap, &vol.id, IMAGE_FEATURES) {
            Ok(()) => {}
            // A repeat after a crash finds its own clone (the id is unique).
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(ceph_error(e)),
        }
        let img = self.open(pool, &vol.id)?;
        if img.size().map_err(ceph_error)? < vol.size_bytes {
            img.resize(vol.size_bytes).map_err(ceph_error)?;
        }
        img.flatten(|done, total| {
            progress.set_total(total);
            let (seen, _) = progress.get();
            progress.advance(done.saturating_sub(seen));
        })
        .map_err(ceph_error)
    }

    fn remove_snap(&self, pool: &Pool, image: &str, snap: &str) -> Result<(), DriverError> {
        let img = match self.open(pool, image) {
            Ok(i) => i,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !img.snap_exists(snap).map_err(ceph_error)? {
            return Ok(());
        }
        if img.snap_is_protected(snap).map_err(ceph_error)? {
            img.snap_unprotect(snap).map_err(|e| match e.errno() {
                Some(libc::EBUSY) => DriverError::Busy(format!(
                    "snapshot {image}@{snap} still has clones that depend on it"
                )),
                _ => ceph_error(e),
            })?;
        }
        match img.snap_remove(snap) {
            Err(e) if e.errno() != Some(libc::ENOENT) => Err(ceph_error(e)),
            _ => Ok(()),
        }
    }
}

impl Driver for RbdDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Rbd
    }

    /// Reach the cluster and the pool: a pool record is only made for a
    /// cluster that answers with this configuration and key.
    fn init_pool(&self, pool: &Pool) -> Result<(), DriverError> {
        self.rados_pool(pool).map(drop)
    }

    fn usage(&self, pool: &Pool) -> Result<PoolUsage, DriverError> {
        let rp = self.rados_pool(pool)?;
        let cluster = self.clients.get(ceph_of(pool)?)?;
        let (_, _, avail) = cluster.stat().map_err(ceph_error)?;
        Ok(PoolUsage {
            backing_avail_bytes: avail,
            volumes_used_bytes: rp.used_bytes().map_err(ceph_error)?,
        })
    }

    fn create(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let rp = self.rados_pool(pool)?;
        match rp.create_image(&vol.id, vol.size_bytes, IMAGE_FEATURES) {
            Ok(()) => Ok(()),
            // A repeat after a crash finds its own image (the id is unique).
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(ceph_error(e)),
        }
    }

    fn delete(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let rp = self.rados_pool(pool)?;
        // A helper that just unmounted closes the image a moment later, and
        // a killed one's watch lasts until the OSDs time it out (30 s): a
        // watched image is retried for a while before it counts as in use.
        let deadline = std::time::Instant::now() + WATCH_GONE;
        let mut removed = rp.remove_image(&vol.id);
        while removed
            .as_ref()
            .is_err_and(|e| e.errno() == Some(libc::EBUSY))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(500));
            removed = rp.remove_image(&vol.id);
        }
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOTEMPTY) => Err(DriverError::Busy(format!(
                "image {} of volume {} has snapshots; delete them first",
                vol.id, vol.name
            ))),
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                let who = self
                    .open(pool, &vol.id)
                    .and_then(|i| i.watchers().map_err(ceph_error))
                    .map(|w| {
                        w.iter()
                            .map(|w| w.addr.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                Err(DriverError::Busy(format!(
                    "image {} of volume {} is still open by {who}",
                    vol.id, vol.name
                )))
            }
            Err(e) => Err(ceph_error(e)),
        }
    }

    fn resize(&self, pool: &Pool, vol: &Volume, new_size: u64) -> Result<(), DriverError> {
        let img = self.open(pool, &vol.id)?;
        if img.size().map_err(ceph_error)? < new_size {
            img.resize(new_size).map_err(ceph_error)?;
        }
        Ok(())
    }

    /// An RBD snapshot, protected so clones can be made of it.
    fn snapshot_data(&self, pool: &Pool, snap: &Snapshot) -> Result<VolumeData, DriverError> {
        let img = self
            .rados_pool(pool)?
            .open(&snap.source_volume_id, Some(&snap.id))
            .map_err(ceph_error)?;
        Ok(VolumeData::Block(Box::new(RbdBlock(img))))
    }

    fn volume_data(&self, pool: &Pool, vol: &Volume) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Block(Box::new(RbdBlock(
            self.open(pool, &vol.id)?,
        ))))
    }

    fn snapshot(
        &self,
        pool: &Pool,
        vol: &Volume,
        snap: &Snapshot,
        _progress: &Progress,
    ) -> Result<(), DriverError> {
        let img = self.open(pool, &vol.id)?;
        if !img.snap_exists(&snap.id).map_err(ceph_error)? {
            img.snap_create(&snap.id).map_err(ceph_error)?;
        }
        if !img.snap_is_protected(&snap.id).map_err(ceph_error)? {
            img.snap_protect(&snap.id).map_err(ceph_error)?;
        }
        Ok(())
    }

    fn delete_snapshot(&self, pool: &Pool, snap: &Snapshot) -> Result<(), DriverError> {
        self.remove_snap(pool, &snap.source_volume_id, &snap.id)
    }

    fn create_from(
        &self,
        pool: &Pool,
        vol: &Volume,
        source: SourceRef<'_>,
        progress: &Progress,
    ) -> Result<(), DriverError> {
        match source {
            SourceRef::Snapshot(s) => {
                self.clone_flattened(pool, vol, &s.source_volume_id, &s.id, progress)
            }
            SourceRef::Volume(src) => {
                // A clone needs a snapshot: a temporary one, gone once the
                // copy no longer depends on it.
                let tmp = format!("ballast-clone-{}", vol.id);
                let img = self.open(pool, &src.id)?;
                if !img.snap_exists(&tmp).map_err(ceph_error)? {
                    img.snap_create(&tmp).map_err(ceph_error)?;
                }
                if !img.snap_is_protected(&tmp).map_err(ceph_error)? {
                    img.snap_protect(&tmp).map_err(ceph_error)?;
                }
                drop(img);
                let made = self.clone_flattened(pool, vol, &src.id, &tmp, progress);
                let removed = self.remove_snap(pool, &src.id, &tmp);
                made.and(removed)
            }
        }
    }

    fn backing_file(&self, _pool: &Pool, vol: &Volume) -> Option<PathBuf> {
        Some(self.node.image_file(vol))
    }

    fn allocated_bytes(&self, pool: &Pool, vol: &Volume) -> Result<u64, DriverError> {
        self.open(pool, &vol.id)?
            .allocated_bytes()
            .map_err(ceph_error)
    }

    fn node(&self) -> &dyn NodeOps {
        &self.node
    }

    fn fence_targets(
        &self,
        pool: &Pool,
        vol: &Volume,
        addrs: &[String],
    ) -> Result<Vec<String>, DriverError> {
        let cluster = self.clients.get(ceph_of(pool)?)?;
        let me = cluster.addrs().map_err(ceph_error)?;
        let mut fence: Vec<String> = addrs.to_vec();
        // Whoever still watches the image is the old holder's (this node
        // has not mapped it yet); our own control client is not.
        match self.open(pool, &vol.id) {
            Ok(img) => {
                for w in img.watchers().map_err(ceph_error)? {
                    if !me.contains(&w.addr) && !fence.contains(&w.addr) {
                        fence.push(w.addr);
                    }
                }
            }
            Err(DriverError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(fence)
    }

    fn fence(&self, pool: &Pool, addrs: &[String], expire: Duration) -> Result<(), DriverError> {
        let cluster = self.clients.get(ceph_of(pool)?)?;
        for a in addrs {
            cluster.blocklist_add(a, expire).map_err(|e| {
                DriverError::Unavailable(format!("fence {a} (osd blocklist add): {e}"))
            })?;
        }
        // Our next operations are judged by the map that has the entries.
        cluster.wait_for_latest_osdmap().map_err(ceph_error)
    }

    fn unfence(&self, pool: &Pool, addrs: &[String]) -> Result<(), DriverError> {
        let cluster = self.clients.get(ceph_of(pool)?)?;
        for a in addrs {
            cluster.blocklist_rm(a).map_err(|e| {
                DriverError::Unavailable(format!("unfence {a} (osd blocklist rm): {e}"))
            })?;
        }
        Ok(())
    }
}

impl RbdNode {
    /// The FUSE mount serving the volume's image.
    fn fuse_dir(&self, vol: &Volume) -> PathBuf {
        self.maps_dir.join(&vol.id)
    }

    /// The image as a file, under its FUSE mount.
    pub fn image_file(&self, vol: &Volume) -> PathBuf {
        self.fuse_dir(vol).join(&vol.id)
    }

    fn fuse_mounted(&self, dir: &Path) -> Result<bool, DriverError> {
        Ok(self.host.mounts()?.iter().any(|m| m.target == dir))
    }

    /// Start rbd-fuse for the volume's image, unless a live one serves it.
    fn map(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let ceph = ceph_of(pool)?;
        let dir = self.fuse_dir(vol);
        if self.fuse_mounted(&dir)? {
            if self.host.responds(&self.image_file(vol), PROBE_TIMEOUT) {
                return Ok(());
            }
            tracing::warn!(volume = %vol.name, dir = %dir.display(), "the image's rbd-fuse does not answer; mapping it again");
            self.host.fuse_helper_kill(&dir)?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| DriverError::io(&dir, e))?;
        let mut argv = vec![
            "rbd-fuse".to_string(),
            "-c".into(),
            ceph.conf.display().to_string(),
        ];
        if let Some(u) = &ceph.user {
            argv.extend(["--id".into(), u.clone()]);
        }
        if let Some(k) = &ceph.keyring {
            argv.extend(["--keyring".into(), k.display().to_string()]);
        }
        argv.extend([
            "-p".into(),
            ceph.pool.clone(),
            "-r".into(),
            vol.id.clone(),
            dir.display().to_string(),
        ]);
        self.host.fuse_helper_start(&argv, &dir, MAP_TIMEOUT)?;
        // rbd-fuse mounts even when the image cannot be opened (it then
        // serves an empty directory): the file is the proof.
        if !self.host.responds(&self.image_file(vol), PROBE_TIMEOUT) {
            let _ = self.host.fuse_helper_kill(&dir);
            return Err(DriverError::NotFound(format!(
                "rbd-fuse mapped nothing for image {}/{} of volume {} (deleted behind ballast's back?)",
                ceph.pool, vol.id, vol.name
            )));
        }
        Ok(())
    }
}

impl NodeOps for RbdNode {
    fn attach(&self, pool: &Pool, vol: &Volume) -> Result<Option<LoopDevice>, DriverError> {
        self.map(pool, vol)?;
        let file = self.image_file(vol);
        if let Some(l) = self
            .host
            .loop_devices()?
            .into_iter()
            .find(|l| l.backing_file == file)
        {
            return Ok(Some(LoopDevice {
                path: l.device,
                hold: None,
            }));
        }
        match self.host.loop_attach(&file) {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                // No half mapping: the helper goes with the failed attach.
                let _ = self.host.fuse_helper_kill(&self.fuse_dir(vol));
                Err(e.into())
            }
        }
    }

    fn format(&self, vol: &Volume, device: &Path) -> Result<(), DriverError> {
        self.loops.format(vol, device)
    }

    fn mount(
        &self,
        pool: &Pool,
        vol: &Volume,
        device: Option<&Path>,
        mountpoint: &Path,
    ) -> Result<PathBuf, DriverError> {
        self.loops.mount(pool, vol, device, mountpoint)
    }

    fn mount_read_only(
        &self,
        _pool: &Pool,
        vol: &Volume,
        device: Option<&Path>,
        mountpoint: &Path,
    ) -> Result<PathBuf, DriverError> {
        let ro = ballast_core::host::MountOptions {
            read_only: true,
            ..Default::default()
        };
        self.loops.mount_with(vol, device, mountpoint, ro)
    }

    fn unmount(&self, vol: &Volume, mountpoint: &Path) -> Result<(), DriverError> {
        self.loops.unmount(vol, mountpoint)
    }

    fn detach(&self, _pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let file = self.image_file(vol);
        for l in self.host.loop_devices()? {
            if l.backing_file == file {
                self.host.loop_detach(&l.device)?;
            }
        }
        let dir = self.fuse_dir(vol);
        if self.fuse_mounted(&dir)? {
            // rbd-fuse flushes and exits when its mount goes; one that does
            // not answer has nothing left worth flushing.
            if self.host.unmount(&dir).is_err() {
                self.host.fuse_helper_kill(&dir)?;
            }
        }
        // Let it close the image (its watch goes with it), then make sure.
        let deadline = std::time::Instant::now() + HELPER_EXIT;
        while !self.host.fuse_helper_pids(&dir)?.is_empty() {
            if std::time::Instant::now() > deadline {
                self.host.fuse_helper_kill(&dir)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    fn grow_fs(
        &self,
        vol: &Volume,
        device: &Path,
        mountpoint: Option<&Path>,
    ) -> Result<(), DriverError> {
        self.loops.grow_fs(vol, device, mountpoint)
    }

    fn can_grow_online(&self, vol: &Volume) -> bool {
        self.loops.can_grow_online(vol)
    }

    fn grows_offline(&self, vol: &Volume) -> bool {
        self.loops.grows_offline(vol)
    }

    fn is_mounted(&self, vol: &Volume, mountpoint: &Path) -> Result<bool, DriverError> {
        self.loops.is_mounted(vol, mountpoint)
    }

    fn clients(&self, pool: &Pool, vol: &Volume) -> Result<Vec<String>, DriverError> {
        let ceph = ceph_of(pool)?;
        let cluster = self.clients.get(ceph)?;
        let me = cluster.addrs().map_err(ceph_error)?;
        // This node's own address, without port and nonce: the helper's
        // client shares it and differs in the nonce.
        let ip = me
            .split(['[', ',', ']'])
            .filter_map(|a| {
                a.rsplit_once(':').map(|(ip, _)| {
                    ip.trim_start_matches("v1:")
                        .trim_start_matches("v2:")
                        .to_string()
                })
            })
            .next()
            .unwrap_or_default();
        let img = cluster
            .pool(&ceph.pool)
            .and_then(|p| p.open(&vol.id, None))
            .map_err(ceph_error)?;
        Ok(img
            .watchers()
            .map_err(ceph_error)?
            .into_iter()
            .map(|w| w.addr)
            .filter(|a| !me.contains(a.as_str()) && a.starts_with(&format!("{ip}:")))
            .collect())
    }

    fn abandon(&self, _pool: &Pool, vol: &Volume, mountpoint: &Path) {
        let dir = self.fuse_dir(vol);
        // The helper first: with it gone nothing more reaches the image,
        // and whatever waits on it gets an error instead of hanging.
        let _ = self.host.fuse_helper_kill(&dir);
        let _ = self.host.unmount_lazy(mountpoint);
        let file = self.image_file(vol);
        if let Ok(loops) = self.host.loop_devices() {
            for l in loops.into_iter().filter(|l| l.backing_file == file) {
                let _ = self.host.loop_detach(&l.device);
            }
        }
        let _ = self.host.unmount_lazy(&dir);
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(mountpoint);
    }

    fn mapping(&self) -> Option<String> {
        let krbd = Path::new("/sys/bus/rbd").exists();
        let nbd = Path::new("/sys/module/nbd").exists();
        Some(format!(
            "rbd-fuse + direct-I/O loop device (krbd {}, nbd {})",
            if krbd { "present, unused" } else { "absent" },
            if nbd { "present, unused" } else { "absent" }
        ))
    }

    fn watchdog(&self) -> Vec<String> {
        let mut killed = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.maps_dir) else {
            return killed;
        };
        let Ok(mounts) = self.host.mounts() else {
            return killed;
        };
        for e in rd.flatten() {
            let dir = e.path();
            if !mounts.iter().any(|m| m.target == dir) {
                continue;
            }
            let file = dir.join(e.file_name());
            if self.host.responds(&file, PROBE_TIMEOUT) {
                continue;
            }
            tracing::warn!(dir = %dir.display(), "an rbd-fuse helper stopped answering; killing it");
            if self.host.fuse_helper_kill(&dir).is_ok() {
                killed.push(dir.display().to_string());
            }
        }
        killed
    }
}

/// An rbd image (or snapshot) read and written through librbd, for
/// backups and restores.
struct RbdBlock(ballast_ceph::Image);

fn rbd_io(e: CephError) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno().unwrap_or(libc::EIO))
}

impl ballast_core::backups::BlockIo for RbdBlock {
    fn size(&self) -> u64 {
        self.0.size().unwrap_or(0)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf).map_err(rbd_io)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf).map_err(rbd_io)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(rbd_io)
    }
}
