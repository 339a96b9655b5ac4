//! Ceph for ballast: a connection to a cluster (librados), its pools, and
//! RBD images in them (librbd), behind a small safe API. The raw bindings
//! are generated at build time from the installed headers ([`sys`]).
//!
//! Every call that talks to the cluster is bounded by the timeouts the
//! connection was made with (`client_mount_timeout`, `rados_mon_op_timeout`,
//! `rados_osd_op_timeout`): librados returns ETIMEDOUT rather than waiting
//! for an unreachable monitor or OSD forever.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

/// The features every ballast image gets: clones (layering), one client
/// writing at a time in the normal case (exclusive-lock), and cheap usage
/// and diffs (object-map, fast-diff). Exclusive-lock is no fence: a second
/// client takes the lock over, which is why ballast blocklists.
pub const IMAGE_FEATURES: u64 = (sys::RBD_FEATURE_LAYERING
    | sys::RBD_FEATURE_EXCLUSIVE_LOCK
    | sys::RBD_FEATURE_OBJECT_MAP
    | sys::RBD_FEATURE_FAST_DIFF
    | sys::RBD_FEATURE_DEEP_FLATTEN) as u64;

#[derive(Debug, thiserror::Error)]
pub enum CephError {
    /// A librados or librbd call returned a negative errno.
    #[error("{what}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Call { what: String, errno: i32 },
    /// A monitor command failed; `status` is the monitor's own words.
    #[error("{what}: {status} ({})", std::io::Error::from_raw_os_error(*.errno))]
    Command {
        what: String,
        errno: i32,
        status: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl CephError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            CephError::Call { errno, .. } | CephError::Command { errno, .. } => Some(*errno),
            CephError::Invalid(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, CephError>;

fn check(what: impl FnOnce() -> String, rc: c_int) -> Result<c_int> {
    if rc < 0 {
        Err(CephError::Call {
            what: what(),
            errno: -rc,
        })
    } else {
        Ok(rc)
    }
}

fn cstr(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| CephError::Invalid(format!("{what} {s:?} contains NUL")))
}

/// How to reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientConf {
    /// A ceph.conf (monitor addresses, and the keyring unless given).
    pub conf: PathBuf,
    /// The cephx id without `client.` [default: admin].
    pub user: Option<String>,
    pub keyring: Option<PathBuf>,
    /// Bounds connecting and every monitor and OSD operation.
    pub timeout: Duration,
}

struct Handle(sys::rados_t);

// SAFETY: a rados_t is documented as safe to share between threads; every
// call on it takes its own locks.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create and every IoCtx holding
        // an Arc of it is gone by now.
        unsafe { sys::rados_shutdown(self.0) }
    }
}

/// A connected client of one cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    h: Arc<Handle>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cluster")
    }
}

fn set(h: sys::rados_t, key: &str, value: &str) -> Result<()> {
    let k = cstr("option", key)?;
    let v = cstr("value", value)?;
    // SAFETY: h is a live handle that is not connected yet; both strings
    // outlive the call.
    let rc = unsafe { sys::rados_conf_set(h, k.as_ptr(), v.as_ptr()) };
    check(|| format!("set {key}={value}"), rc).map(drop)
}

impl Cluster {
    /// Read the configuration, authenticate and connect, within
    /// `conf.timeout` (an unreachable monitor is ETIMEDOUT, not a hang).
    pub fn connect(conf: &ClientConf) -> Result<Cluster> {
        let user = conf.user.as_deref().unwrap_or("admin");
        let id = cstr("ceph user", user)?;
        let mut raw: sys::rados_t = ptr::null_mut();
        // SAFETY: raw is a valid out pointer; id outlives the call.
        let rc = unsafe { sys::rados_create(&mut raw, id.as_ptr()) };
        check(|| format!("make a client for {user}"), rc)?;
        // From here the Handle shuts the client down on every early return.
        let h = Handle(raw);
        let path = cstr("ceph.conf", &conf.conf.to_string_lossy())?;
        // SAFETY: live, unconnected handle; path outlives the call.
        let rc = unsafe { sys::rados_conf_read_file(h.0, path.as_ptr()) };
        check(|| format!("read {}", conf.conf.display()), rc)?;
        if let Some(k) = &conf.keyring {
            set(h.0, "keyring", &k.to_string_lossy())?;
        }
        let secs = format!("{}", conf.timeout.as_secs_f64().max(1.0));
        for key in [
            "client_mount_timeout",
            "rados_mon_op_timeout",
            "rados_osd_op_timeout",
        ] {
            set(h.0, key, &secs)?;
        }
        // One process holds many clients: no admin socket (its path would
        // collide) and no log files of their own.
        set(h.0, "admin_socket", "")?;
        set(h.0, "log_file", "")?;
        set(h.0, "log_to_stderr", "false")?;
        set(h.0, "err_to_stderr", "false")?;
        // SAFETY: live handle, configured.
        let rc = unsafe { sys::rados_connect(h.0) };
        check(
            || {
                format!(
                    "connect to the cluster of {} as client.{user}",
                    conf.conf.display()
                )
            },
            rc,
        )?;
        Ok(Cluster { h: Arc::new(h) })
    }

    /// Send a monitor command (a JSON object with a "prefix"), and return
    /// its output and status line.
    pub fn mon_command(&self, cmd: &serde_json::Value) -> Result<(Vec<u8>, String)> {
        let what = cmd
            .get("prefix")
            .and_then(|p| p.as_str())
            .unwrap_or("monitor command")
            .to_string();
        let text = cstr("command", &cmd.to_string())?;
        let cmds = [text.as_ptr()];
        let mut out: *mut c_char = ptr::null_mut();
        let mut out_len = 0usize;
        let mut status: *mut c_char = ptr::null_mut();
        let mut status_len = 0usize;
        // SAFETY: live connected handle; every pointer is valid for the
        // call; librados allocates the buffers, freed below.
        let rc = unsafe {
            sys::rados_mon_command(
                self.h.0,
                cmds.as_ptr() as *mut *const c_char,
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        // SAFETY: the buffers are librados's, of the lengths it returned.
        let (outv, statusv) = unsafe {
            let o = if out.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(out as *const u8, out_len).to_vec()
            };
            let s = if status.is_null() {
                String::new()
            } else {
                String::from_utf8_lossy(std::slice::from_raw_parts(status as *const u8, status_len))
                    .into_owned()
            };
            if !out.is_null() {
                sys::rados_buffer_free(out);
            }
            if !status.is_null() {
                sys::rados_buffer_free(status);
            }
            (o, s)
        };
        if rc < 0 {
            return Err(CephError::Command {
                what,
                errno: -rc,
                status: statusv,
            });
        }
        Ok((outv, statusv))
    }

    /// This client's own addresses, as watchers of images list them.
    pub fn addrs(&self) -> Result<String> {
        let mut p: *mut c_char = ptr::null_mut();
        // SAFETY: live handle; librados allocates the string.
        let rc = unsafe { sys::rados_getaddrs(self.h.0, &mut p) };
        check(|| "read the client's address".into(), rc)?;
        // SAFETY: a NUL-terminated string from librados, freed after copying.
        let s = unsafe {
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            libc::free(p as *mut c_void);
            s
        };
        Ok(s)
    }

    /// Wait until this client has the newest OSD map (after a blocklist
    /// entry, so the next operation is judged by it).
    pub fn wait_for_latest_osdmap(&self) -> Result<()> {
        // SAFETY: live handle.
        let rc = unsafe { sys::rados_wait_for_latest_osdmap(self.h.0) };
        check(|| "wait for the latest OSD map".into(), rc).map(drop)
    }

    /// Raw capacity of the whole cluster: (total, used, available) bytes.
    pub fn stat(&self) -> Result<(u64, u64, u64)> {
        let mut st = sys::rados_cluster_stat_t {
            kb: 0,
            kb_used: 0,
            kb_avail: 0,
            num_objects: 0,
        };
        // SAFETY: live handle; st is a valid out struct.
        let rc = unsafe { sys::rados_cluster_stat(self.h.0, &mut st) };
        check(|| "read the cluster's capacity".into(), rc)?;
        Ok((st.kb * 1024, st.kb_used * 1024, st.kb_avail * 1024))
    }

    /// Open a pool (ENOENT: it does not exist).
    pub fn pool(&self, name: &str) -> Result<Pool> {
        let n = cstr("pool", name)?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: live handle; n outlives the call; io is a valid out pointer.
        let rc = unsafe { sys::rados_ioctx_create(self.h.0, n.as_ptr(), &mut io) };
        check(|| format!("open pool {name}"), rc)?;
        Ok(Pool {
            io: Arc::new(IoCtx {
                io,
                _cluster: self.h.clone(),
            }),
            name: name.to_string(),
        })
    }

    /// Blocklist a client address until `expire` from now; returns once
    /// the monitors have recorded it.
    pub fn blocklist_add(&self, addr: &str, expire: Duration) -> Result<()> {
        self.mon_command(&serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "add",
            "addr": addr,
            "expire": expire.as_secs_f64(),
        }))
        .map(drop)
    }

    /// Lift a blocklist entry. One that is not there is fine.
    pub fn blocklist_rm(&self, addr: &str) -> Result<()> {
        match self.mon_command(&serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "rm",
            "addr": addr,
        })) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r.map(drop),
        }
    }

    /// The addresses blocklisted now.
    pub fn blocklist(&self) -> Result<Vec<String>> {
        let (out, _) = self.mon_command(&serde_json::json!({
            "prefix": "osd blocklist ls",
            "format": "json",
        }))?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| CephError::Invalid(format!("osd blocklist ls: {e}")))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("addr").and_then(|a| a.as_str()).map(str::to_string))
            .collect())
    }
}

struct IoCtx {
    io: sys::rados_ioctx_t,
    _cluster: Arc<Handle>,
}

// SAFETY: an ioctx is safe to use from several threads for the calls made
// here (librados serialises what needs it); it keeps its cluster alive.
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: the ioctx came from rados_ioctx_create, and every Image
        // holding an Arc of it is closed by now.
        unsafe { sys::rados_ioctx_destroy(self.io) }
    }
}

/// One RADOS pool, holding RBD images.
#[derive(Clone)]
pub struct Pool {
    io: Arc<IoCtx>,
    name: String,
}

/// A client watching an image: who has it open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// `ip:port/nonce`, what `osd blocklist add` takes.
    pub addr: String,
    /// The client's global id (`client.<id>`).
    pub id: i64,
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes the pool's objects hold.
    pub fn used_bytes(&self) -> Result<u64> {
        // SAFETY: an all-zero stat struct is a valid out value.
        let mut st: sys::rados_pool_stat_t = unsafe { std::mem::zeroed() };
        // SAFETY: live ioctx; st is a valid out struct.
        let rc = unsafe { sys::rados_ioctx_pool_stat(self.io.io, &mut st) };
        check(|| format!("read pool {}'s usage", self.name), rc)?;
        Ok(st.num_bytes)
    }

    /// Make a format-2 image with `features` (EEXIST if one is there).
    pub fn create_image(&self, name: &str, size: u64, features: u64) -> Result<()> {
        let n = cstr("image", name)?;
        let mut order: c_int = 0;
        // SAFETY: live ioctx; n outlives the call; order is a valid in/out.
        let rc = unsafe { sys::rbd_create2(self.io.io, n.as_ptr(), size, features, &mut order) };
        check(|| format!("create image {}/{name}", self.name), rc).map(drop)
    }

    /// Remove an image (ENOENT if it is gone; EBUSY while watched;
    /// ENOTEMPTY while it has snapshots).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let n = cstr("image", name)?;
        // SAFETY: live ioctx; n outlives the call.
        let rc = unsafe { sys::rbd_remove(self.io.io, n.as_ptr()) };
        check(|| format!("remove image {}/{name}", self.name), rc).map(drop)
    }

    /// The names of the pool's images.
    pub fn images(&self) -> Result<Vec<String>> {
        let mut cap = 64usize;
        loop {
            // SAFETY: an all-zero spec is a valid "empty" entry for librbd
            // to fill.
            let mut specs: Vec<sys::rbd_image_spec_t> =
                (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut n = cap;
            // SAFETY: live ioctx; specs has room for n entries.
            let rc = unsafe { sys::rbd_list2(self.io.io, specs.as_mut_ptr(), &mut n) };
            if rc == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check(|| format!("list images of {}", self.name), rc)?;
            let names = specs[..n]
                .iter()
                // SAFETY: librbd filled the first n entries with C strings.
                .map(|s| unsafe { CStr::from_ptr(s.name).to_string_lossy().into_owned() })
                .collect();
            // SAFETY: frees what librbd allocated in those n entries.
            unsafe { sys::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
            return Ok(names);
        }
    }

    /// Open an image read-write (None: a snapshot is not given) or at a
    /// snapshot, read-only.
    pub fn open(&self, name: &str, snap: Option<&str>) -> Result<Image> {
        let n = cstr("image", name)?;
        let s = snap.map(|s| cstr("snapshot", s)).transpose()?;
        let sp = s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut img: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: live ioctx; strings outlive the call; img a valid out.
        let rc = unsafe {
            if snap.is_some() {
                sys::rbd_open_read_only(self.io.io, n.as_ptr(), &mut img, sp)
            } else {
                sys::rbd_open(self.io.io, n.as_ptr(), &mut img, sp)
            }
        };
        check(|| format!("open image {}/{name}", self.name), rc)?;
        Ok(Image {
            img,
            name: name.to_string(),
            _io: self.io.clone(),
        })
    }

    /// Clone `parent@snap` (a protected snapshot) as `child` in this pool.
    pub fn clone_image(&self, parent: &str, snap: &str, child: &str, features: u64) -> Result<()> {
        let p = cstr("image", parent)?;
        let s = cstr("snapshot", snap)?;
        let c = cstr("image", child)?;
        let mut order: c_int = 0;
        // SAFETY: live ioctx (parent and child in the same pool); strings
        // outlive the call.
        let rc = unsafe {
            sys::rbd_clone2(
                self.io.io,
                p.as_ptr(),
                s.as_ptr(),
                self.io.io,
                c.as_ptr(),
                features,
                &mut order,
                0,
                0,
            )
        };
        check(
            || format!("clone {}/{parent}@{snap} as {child}", self.name),
            rc,
        )
        .map(drop)
    }
}

/// An open image. Closed on drop.
pub struct Image {
    img: sys::rbd_image_t,
    name: String,
    _io: Arc<IoCtx>,
}

// SAFETY: an image handle may move between threads; it is not shared
// (no Sync), so calls on it never run concurrently.
unsafe impl Send for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open*, closed once.
        unsafe {
            sys::rbd_close(self.img);
        }
    }
}

extern "C" fn progress_cb(offset: u64, total: u64, arg: *mut c_void) -> c_int {
    // SAFETY: arg is the &mut dyn FnMut passed by flatten, alive for the call.
    let f = unsafe { &mut *(arg as *mut &mut dyn FnMut(u64, u64)) };
    f(offset, total);
    0
}

extern "C" fn diff_cb(_off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: arg is the u64 counter passed by allocated_bytes.
    let sum = unsafe { &mut *(arg as *mut u64) };
    if exists != 0 {
        *sum += len as u64;
    }
    0
}

impl Image {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: open image; size is a valid out.
        let rc = unsafe { sys::rbd_get_size(self.img, &mut size) };
        check(|| format!("read the size of {}", self.name), rc)?;
        Ok(size)
    }

    /// Read up to `buf.len()` bytes at `offset`; the count read (short at
    /// the end of the image).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: open image; buf is valid for buf.len() bytes of writes.
        let rc = unsafe { sys::rbd_read(self.img, offset, buf.len(), buf.as_mut_ptr().cast()) };
        let rc = c_int::try_from(rc).unwrap_or(-libc::EOVERFLOW);
        let n = check(|| format!("read {} at {offset}", self.name), rc)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Write all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            // SAFETY: open image; the slice is valid for its length.
            let rc = unsafe {
                sys::rbd_write(self.img, at, buf.len() - done, buf[done..].as_ptr().cast())
            };
            let rc = c_int::try_from(rc).unwrap_or(-libc::EOVERFLOW);
            let n = check(|| format!("write {} at {at}", self.name), rc)?;
            if n == 0 {
                return Err(CephError::Call {
                    what: format!("write {} at {at}: wrote nothing", self.name),
                    errno: libc::EIO,
                });
            }
            done += usize::try_from(n).unwrap_or(0);
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        // SAFETY: open image.
        let rc = unsafe { sys::rbd_flush(self.img) };
        check(|| format!("flush {}", self.name), rc).map(drop)
    }

    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: open image.
        let rc = unsafe { sys::rbd_resize(self.img, size) };
        check(|| format!("resize {}", self.name), rc).map(drop)
    }

    fn snap_call(
        &self,
        what: &str,
        snap: &str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *const c_char) -> c_int,
    ) -> Result<()> {
        let s = cstr("snapshot", snap)?;
        // SAFETY: open image; s outlives the call.
        let rc = unsafe { f(self.img, s.as_ptr()) };
        check(|| format!("{what} {}@{snap}", self.name), rc).map(drop)
    }

    pub fn snap_create(&self, snap: &str) -> Result<()> {
        self.snap_call("snapshot", snap, sys::rbd_snap_create)
    }

    pub fn snap_remove(&self, snap: &str) -> Result<()> {
        self.snap_call("remove snapshot", snap, sys::rbd_snap_remove)
    }

    pub fn snap_protect(&self, snap: &str) -> Result<()> {
        self.snap_call("protect", snap, sys::rbd_snap_protect)
    }

    pub fn snap_unprotect(&self, snap: &str) -> Result<()> {
        self.snap_call("unprotect", snap, sys::rbd_snap_unprotect)
    }

    pub fn snap_exists(&self, snap: &str) -> Result<bool> {
        let s = cstr("snapshot", snap)?;
        let mut exists = false;
        // SAFETY: open image; s outlives the call; exists a valid out.
        let rc = unsafe { sys::rbd_snap_exists(self.img, s.as_ptr(), &mut exists) };
        check(|| format!("look up {}@{snap}", self.name), rc)?;
        Ok(exists)
    }

    pub fn snap_is_protected(&self, snap: &str) -> Result<bool> {
        let s = cstr("snapshot", snap)?;
        let mut p: c_int = 0;
        // SAFETY: open image; s outlives the call; p a valid out.
        let rc = unsafe { sys::rbd_snap_is_protected(self.img, s.as_ptr(), &mut p) };
        check(|| format!("read {}@{snap}", self.name), rc)?;
        Ok(p != 0)
    }

    /// Copy the parent's data into this clone so it no longer depends on
    /// it, reporting (done, total) bytes as it goes.
    pub fn flatten(&self, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let mut f: &mut dyn FnMut(u64, u64) = &mut progress;
        // SAFETY: open image; the callback's argument points at f, which
        // lives until the call returns.
        let rc = unsafe {
            sys::rbd_flatten_with_progress(
                self.img,
                Some(progress_cb),
                &mut f as *mut &mut dyn FnMut(u64, u64) as *mut c_void,
            )
        };
        match rc {
            r if r == -libc::EINVAL => Ok(()), // not a clone: nothing to do
            r => check(|| format!("flatten {}", self.name), r).map(drop),
        }
    }

    /// Bytes of the image that hold data (whole objects, from the object
    /// map), not counting a parent's.
    pub fn allocated_bytes(&self) -> Result<u64> {
        let size = self.size()?;
        let mut sum = 0u64;
        // SAFETY: open image; the callback's argument is sum, alive for the
        // call.
        let rc = unsafe {
            sys::rbd_diff_iterate2(
                self.img,
                ptr::null(),
                0,
                size,
                0,
                1,
                Some(diff_cb),
                &mut sum as *mut u64 as *mut c_void,
            )
        };
        check(|| format!("measure {}", self.name), rc)?;
        Ok(sum)
    }

    /// Who has the image open now.
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let mut cap = 8usize;
        loop {
            // SAFETY: an all-zero watcher is a valid entry for librbd to fill.
            let mut w: Vec<sys::rbd_image_watcher_t> =
                (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut n = cap;
            // SAFETY: open image; w has room for n entries.
            let rc = unsafe { sys::rbd_watchers_list(self.img, w.as_mut_ptr(), &mut n) };
            if rc == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check(|| format!("list watchers of {}", self.name), rc)?;
            let out = w[..n]
                .iter()
                .map(|x| Watcher {
                    // SAFETY: librbd filled the first n entries.
                    addr: unsafe { CStr::from_ptr(x.addr).to_string_lossy().into_owned() },
                    id: x.id,
                })
                .collect();
            // SAFETY: frees what librbd allocated in those n entries.
            unsafe { sys::rbd_watchers_list_cleanup(w.as_mut_ptr(), n) };
            return Ok(out);
        }
    }
}

/// Whether `path` looks like a ceph.conf we can read (a clear error before
/// librados's terse one).
pub fn check_conf(path: &Path) -> Result<()> {
    std::fs::metadata(path)
        .map_err(|e| CephError::Invalid(format!("ceph.conf {}: {e}", path.display())))
        .map(drop)
}
