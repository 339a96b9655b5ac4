//! CSI v1 over gRPC: Identity, Controller and Node, each RPC one
//! `VolumeService` call. This layer checks the spec's required fields,
//! translates CSI types, and maps the core's error to a gRPC code in
//! [`status`]; the volume logic is the core's.
//!
//! Volume IDs are ballast volume names. Staging is a consumer
//! `csi:stage:<staging_target_path>` bound at the staging path; each publish
//! is a consumer `csi:<target_path>` bound at the target. Operations on a
//! volume that is busy answer ABORTED instead of queueing, so the CO retries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_core::model::{
    ConsumerKind, ConsumerRef, CreateSource, FsType, MountFlags, PublishTarget, Sharing, Snapshot,
    Volume,
};
use ballast_core::{CreateVolume, Error, VolumeService, Wait};
use ballast_csi_proto::v1 as csi;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::AccessType;
use tonic::{Request, Response, Status};

use crate::run_blocking;
use ballast_core::desired::{ErrorClass, Placement};

/// The topology key of the node a volume lives on.
pub const TOPOLOGY_KEY: &str = "topology.ballast/node";
/// The plugin's name, as CSIDriver objects and StorageClasses refer to it.
pub const DRIVER_NAME: &str = "ballast.csi.dev";

/// The one mapping from the core's error to gRPC status codes.
pub fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument(_) => Status::invalid_argument(msg),
        Error::NotFound { .. } => Status::not_found(msg),
        Error::AlreadyExists { .. } => Status::already_exists(msg),
        Error::InUse { .. } => Status::failed_precondition(msg),
        Error::Busy { .. } => Status::failed_precondition(msg),
        Error::Capacity { .. } => Status::resource_exhausted(msg),
        Error::Conflict { .. } => Status::aborted(msg),
        Error::OtherNode { .. } => Status::failed_precondition(msg),
        Error::Unavailable(_) => Status::unavailable(msg),
        Error::NoSpace(_) => Status::resource_exhausted(msg),
        // Storage that refuses while something depends on it (an image
        // with snapshots, one still open elsewhere): the volume's state.
        Error::Driver(ballast_core::DriverError::Busy(_)) => Status::failed_precondition(msg),
        Error::Driver(_) | Error::Internal(_) => Status::internal(msg),
        Error::Store(_) => Status::internal(msg),
        // The CO places again elsewhere (external-provisioner reschedules).
        Error::Unplaceable { .. } => Status::resource_exhausted(msg),
        Error::Remote(r) => match r.class {
            ErrorClass::InvalidArgument => Status::invalid_argument(msg),
            ErrorClass::NotFound => Status::not_found(msg),
            ErrorClass::AlreadyExists => Status::already_exists(msg),
            ErrorClass::FailedPrecondition => Status::failed_precondition(msg),
            ErrorClass::Capacity => Status::resource_exhausted(msg),
            ErrorClass::Unavailable => Status::unavailable(msg),
            ErrorClass::Failed => Status::internal(msg),
        },
    }
}

/// Where CreateVolume may place a volume: on the requisite topology's nodes
/// (any, without one), the preferred ones first; with WaitForFirstConsumer
/// the first preferred is the node the pod is scheduled to. A topology no
/// ready node serves gets RESOURCE_EXHAUSTED, as the spec wants.
fn placement_for(req: Option<&csi::TopologyRequirement>) -> Placement {
    let node_of = |t: &csi::Topology| t.segments.get(TOPOLOGY_KEY).cloned();
    let Some(req) = req else {
        return Placement::default();
    };
    let prefer: Vec<String> = req.preferred.iter().filter_map(node_of).collect();
    let mut among: Vec<String> = req.requisite.iter().filter_map(node_of).collect();
    if among.is_empty() {
        among = prefer.clone();
    }
    Placement {
        among,
        prefer,
        ..Placement::default()
    }
}

/// ListVolumes and ListSnapshots page tokens. A token is opaque to the CO:
/// `base64url("v1:" + last name) + "." + base64url(HMAC-SHA256)` under a
/// key made at start, over the list's kind and the payload. So a token this
/// process did not issue (made up, edited, for the other list, or from
/// before a restart) is refused with ABORTED, as the spec wants, and the
/// CO starts its listing again; the version prefix lets the cursor change.
mod page_token {
    use std::sync::LazyLock;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    use ring::hmac;
    use tonic::Status;

    const VERSION: &str = "v1:";

    static KEY: LazyLock<hmac::Key> = LazyLock::new(|| {
        hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("the system random number generator works")
    });

    fn signed(kind: &str, payload: &[u8]) -> Vec<u8> {
        [kind.as_bytes(), b"\0", payload].concat()
    }

    /// The token whose page starts after `last`.
    pub fn issue(kind: &str, last: &str) -> String {
        let payload = format!("{VERSION}{last}");
        let tag = hmac::sign(&KEY, &signed(kind, payload.as_bytes()));
        format!("{}.{}", B64.encode(payload), B64.encode(tag.as_ref()))
    }

    /// The last name of the previous page, if `token` is one [`issue`] gave
    /// for `kind`.
    pub fn read(kind: &str, token: &str) -> Result<String, Status> {
        let refused = || {
            Status::aborted(format!(
                "starting_token {token:?} is not a token this plugin gave (or it gave it before a restart); list again from the start"
            ))
        };
        let (payload, tag) = token.split_once('.').ok_or_else(refused)?;
        let payload = B64.decode(payload).map_err(|_| refused())?;
        let tag = B64.decode(tag).map_err(|_| refused())?;
        hmac::verify(&KEY, &signed(kind, &payload), &tag).map_err(|_| refused())?;
        let payload = String::from_utf8(payload).map_err(|_| refused())?;
        payload
            .strip_prefix(VERSION)
            .map(str::to_string)
            .ok_or_else(refused)
    }
}

/// Which services this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsiMode {
    All,
    Controller,
    Node,
}

impl std::str::FromStr for CsiMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(CsiMode::All),
            "controller" => Ok(CsiMode::Controller),
            "node" => Ok(CsiMode::Node),
            other => Err(format!("csi mode {other:?}: use all, controller or node")),
        }
    }
}

/// The CSI plugin: one value serving all three services.
#[derive(Clone)]
pub struct CsiPlugin {
    pub service: Arc<VolumeService>,
    pub node_id: String,
}

fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

/// A path from the CO: absolute, no `.`/`..`, no control characters.
fn path_arg(value: &str, field: &str) -> Result<PathBuf, Status> {
    required(value, field)?;
    let p = PathBuf::from(value);
    // By segment: `components()` drops a `.` that is not first.
    if !p.is_absolute()
        || value.split('/').any(|s| s == "." || s == "..")
        || value.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(format!(
            "{field} {value:?} must be an absolute path without '.' or '..'"
        )));
    }
    Ok(p)
}

/// What a volume capability asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Mount { fs: Option<FsType> },
    Block,
}

/// What a capability asks for.
struct Asked {
    access: Access,
    /// By mode or by an `ro` mount flag.
    read_only: bool,
    /// The per-mount flags of a mount capability.
    flags: MountFlags,
    /// Whether a published target may share the volume with others.
    sharing: Sharing,
}

fn access(cap: &csi::VolumeCapability) -> Result<Asked, Status> {
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume_capability.access_mode is required"))?;
    // The spec's "published once as read/write at a single workload" (and
    // SINGLE_NODE_WRITER's "once as read/write on a single node", which
    // the CO asks of one workload too) is the core's exclusive target.
    let (read_only, sharing) = match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter) => (false, Sharing::Exclusive),
        Ok(Mode::SingleNodeMultiWriter) => (false, Sharing::Shared),
        Ok(Mode::SingleNodeReaderOnly) => (true, Sharing::Shared),
        // Readers on many nodes: only shared storage (rbd) has them, which
        // the callers check against the volume or pool.
        Ok(Mode::MultiNodeReaderOnly) => (true, Sharing::Shared),
        Ok(m @ (Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter)) => {
            return Err(Status::invalid_argument(format!(
                "access mode {} is not supported: a writer has a volume alone (rbd pools take MULTI_NODE_READER_ONLY)",
                m.as_str_name()
            )))
        }
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Status::invalid_argument("access mode is unknown"))
        }
    };
    match &cap.access_type {
        None => Err(Status::invalid_argument(
            "volume_capability.access_type (mount or block) is required",
        )),
        Some(AccessType::Block(_)) => Ok(Asked {
            access: Access::Block,
            read_only,
            flags: MountFlags::default(),
            sharing,
        }),
        Some(AccessType::Mount(m)) => {
            let (flags, flag_ro) = MountFlags::parse(&m.mount_flags)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !m.volume_mount_group.is_empty() {
                return Err(Status::invalid_argument(
                    "volume_mount_group is not supported",
                ));
            }
            let fs = match m.fs_type.as_str() {
                "" => None,
                other => Some(
                    other
                        .parse::<FsType>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                ),
            };
            Ok(Asked {
                access: Access::Mount { fs },
                read_only: read_only || flag_ro,
                flags,
                sharing,
            })
        }
    }
}

/// Whether a capability asks for readers on several nodes.
fn multi_node(cap: &csi::VolumeCapability) -> bool {
    cap.access_mode
        .as_ref()
        .is_some_and(|m| m.mode == Mode::MultiNodeReaderOnly as i32)
}

/// MULTI_NODE_READER_ONLY needs storage every node reaches: refused, as
/// before there was any, for node-local pools.
fn check_multi_node(caps: &[&csi::VolumeCapability], shared: bool) -> Result<(), Status> {
    if !shared && caps.iter().any(|c| multi_node(c)) {
        return Err(Status::invalid_argument(
            "access mode MULTI_NODE_READER_ONLY is not supported: this pool is node-local (rbd pools take it)",
        ));
    }
    Ok(())
}

fn is_shared(vol: &Volume) -> bool {
    vol.driver == ballast_core::model::DriverKind::Rbd
}

/// One access kind for all capabilities of a request.
fn common_access(caps: &[csi::VolumeCapability]) -> Result<Access, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    let mut found: Option<Access> = None;
    for cap in caps {
        let a = access(cap)?.access;
        match (&found, &a) {
            (None, _) => found = Some(a),
            (Some(Access::Block), Access::Block) => {}
            (Some(Access::Mount { fs: f1 }), Access::Mount { fs: f2 }) => {
                if f1.is_some() && f2.is_some() && f1 != f2 {
                    return Err(Status::invalid_argument(
                        "capabilities ask for different filesystems",
                    ));
                }
                if f1.is_none() {
                    found = Some(a);
                }
            }
            _ => {
                return Err(Status::invalid_argument(
                    "capabilities mix block and mount access",
                ))
            }
        }
    }
    found.ok_or_else(|| Status::invalid_argument("volume_capabilities is required"))
}

fn fits(vol: &Volume, access: &Access) -> bool {
    match access {
        Access::Block => vol.block,
        Access::Mount { fs } => !vol.block && (fs.is_none() || *fs == vol.fs),
    }
}

/// Remove `path` if it is an empty regular file (a block target we made).
fn remove_empty_file(path: &Path) -> std::io::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl CsiPlugin {
    fn has_shared_pools(&self) -> bool {
        self.service.list_pools().iter().any(|p| p.is_shared())
    }

    /// Whether the pool a request names (or the default) is shared.
    fn pool_is_shared(&self, pool: Option<&str>) -> bool {
        let name = pool.map_or_else(|| self.service.default_pool_name(), str::to_string);
        self.service
            .list_pools()
            .iter()
            .any(|p| p.name == name && p.is_shared())
    }

    fn topology(&self) -> csi::Topology {
        csi::Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.node_id.clone())]),
        }
    }

    fn csi_volume(&self, v: &Volume) -> csi::Volume {
        csi::Volume {
            capacity_bytes: i64_of(v.size_bytes),
            volume_id: v.id.clone(),
            volume_context: HashMap::from([
                ("pool".to_string(), v.pool.clone()),
                ("name".to_string(), v.name.clone()),
            ]),
            content_source: None,
            // A shared pool's volume (rbd) is reachable from every node:
            // no topology constrains where its pod goes.
            accessible_topology: if v.driver == ballast_core::model::DriverKind::Rbd {
                Vec::new()
            } else {
                vec![csi::Topology {
                    segments: HashMap::from([(
                        TOPOLOGY_KEY.to_string(),
                        v.node.clone().unwrap_or_else(|| self.node_id.clone()),
                    )]),
                }]
            },
        }
    }

    fn csi_volume_from(&self, v: &Volume, source: Option<csi::VolumeContentSource>) -> csi::Volume {
        csi::Volume {
            content_source: source,
            ..self.csi_volume(v)
        }
    }

    /// The name of the volume a CSI `volume_id` names. IDs are volumes'
    /// immutable uids, so a volume deleted and created again under its name
    /// is never taken for the old one; IDs handed out by releases before
    /// were names, and still resolve when no uid matches.
    fn name_of(&self, volume_id: &str) -> Result<String, Status> {
        required(volume_id, "volume_id")?;
        if let Some(v) = self.service.volume_by_id(volume_id) {
            return Ok(v.name);
        }
        match self.service.get_volume(volume_id) {
            Ok(v) => Ok(v.name),
            Err(_) => Err(Status::not_found(format!("volume {volume_id:?} not found"))),
        }
    }

    fn volume_of(&self, volume_id: &str) -> Result<Volume, Status> {
        let name = self.name_of(volume_id)?;
        self.service.get_volume(&name).map_err(status)
    }

    /// The `volume_path` of NodeGetVolumeStats and NodeExpandVolume: the
    /// volume is looked up first, so an unknown volume, or one that is not
    /// at that path, is NOT_FOUND whatever the path looks like (a path the
    /// volume is at was checked when it was published).
    fn volume_path(&self, volume_id: &str, volume_path: &str) -> Result<PathBuf, Status> {
        required(volume_id, "volume_id")?;
        required(volume_path, "volume_path")?;
        let vol = self.volume_of(volume_id)?;
        let path = PathBuf::from(volume_path);
        if !vol.is_at(&path) {
            return Err(Status::not_found(format!(
                "volume {volume_id:?} is not at {volume_path:?} on this node"
            )));
        }
        Ok(path)
    }

    async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(&VolumeService) -> ballast_core::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        run_blocking(&self.service, f).await.map_err(status)
    }
}

fn stage_consumer(staging: &Path) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Csi, format!("stage:{}", staging.display()))
}

fn target_consumer(target: &Path) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Csi, target.display().to_string())
}

/// Size for a capacity range: required if set, else the default capped by
/// the limit; at least `min`; rounded to 4 KiB; never past the limit.
fn size_for(range: Option<&csi::CapacityRange>, default: u64, min: u64) -> Result<u64, Status> {
    let (req, lim) = match range {
        Some(r) => {
            if r.required_bytes < 0 || r.limit_bytes < 0 {
                return Err(Status::invalid_argument(
                    "capacity_range must not be negative",
                ));
            }
            (
                r.required_bytes.unsigned_abs(),
                r.limit_bytes.unsigned_abs(),
            )
        }
        None => (0, 0),
    };
    if lim > 0 && req > lim {
        return Err(Status::out_of_range(format!(
            "required_bytes {req} is above limit_bytes {lim}"
        )));
    }
    let mut size = if req > 0 { req } else { default };
    if lim > 0 && size > lim {
        size = lim;
    }
    size = size.max(min).next_multiple_of(4096);
    if lim > 0 && size > lim {
        return Err(Status::out_of_range(format!(
            "no size of at least {min} bytes in 4 KiB steps fits limit_bytes {lim}"
        )));
    }
    Ok(size)
}

fn in_range(size: u64, range: Option<&csi::CapacityRange>) -> bool {
    range.is_none_or(|r| {
        size >= r.required_bytes.unsigned_abs()
            && (r.limit_bytes == 0 || size <= r.limit_bytes.unsigned_abs())
    })
}

#[tonic::async_trait]
impl csi::identity_server::Identity for CsiPlugin {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![
                svc(service::Type::ControllerService),
                svc(service::Type::VolumeAccessibilityConstraints),
                csi::PluginCapability {
                    r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl csi::controller_server::Controller for CsiPlugin {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.name, "name")?;
        let access = common_access(&r.volume_capabilities)?;
        let mut pool = None;
        let mut param_fs = None;
        for (k, v) in &r.parameters {
            match k.as_str() {
                "pool" => pool = Some(v.clone()),
                "fs" | "fsType" => {
                    param_fs = Some(
                        v.parse::<FsType>()
                            .map_err(|e| Status::invalid_argument(e.to_string()))?,
                    )
                }
                // Metadata the external-provisioner may add.
                k if k.starts_with("csi.storage.k8s.io/") => {}
                other => {
                    return Err(Status::invalid_argument(format!(
                        "parameter {other:?} is not known; ballast takes pool and fs"
                    )))
                }
            }
        }
        let caps: Vec<&csi::VolumeCapability> = r.volume_capabilities.iter().collect();
        check_multi_node(&caps, self.pool_is_shared(pool.as_deref()))?;
        let source = match r
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => None,
            Some(csi::volume_content_source::Type::Snapshot(s)) => {
                required(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
                // The spec wants NOT_FOUND for a missing source.
                self.service.get_snapshot(&s.snapshot_id).map_err(status)?;
                Some(CreateSource::Snapshot(s.snapshot_id.clone()))
            }
            Some(csi::volume_content_source::Type::Volume(v)) => {
                required(&v.volume_id, "volume_content_source.volume.volume_id")?;
                Some(CreateSource::Volume(self.name_of(&v.volume_id)?))
            }
        };
        let placement = placement_for(r.accessibility_requirements.as_ref());
        let (fs, block) = match access {
            Access::Block => {
                if param_fs.is_some() {
                    return Err(Status::invalid_argument("a block volume has no filesystem"));
                }
                (None, true)
            }
            Access::Mount { fs } => {
                if let (Some(a), Some(b)) = (fs, param_fs) {
                    if a != b {
                        return Err(Status::invalid_argument(format!(
                            "parameter fs {b} differs from the capability's fs_type {a}"
                        )));
                    }
                }
                (fs.or(param_fs), false)
            }
        };
        // Idempotency by name: a compatible existing volume is the answer.
        if let Ok(existing) = self.service.get_volume(&r.name) {
            let compatible = in_range(existing.size_bytes, r.capacity_range.as_ref())
                && fits(&existing, &access)
                && (param_fs.is_none() || existing.fs == param_fs)
                && pool.as_ref().is_none_or(|p| p == &existing.pool)
                && existing.source == source;
            if !compatible {
                return Err(Status::already_exists(format!(
                    "volume {:?} exists with incompatible parameters",
                    r.name
                )));
            }
            return Ok(Response::new(csi::CreateVolumeResponse {
                volume: Some(self.csi_volume_from(&existing, r.volume_content_source.clone())),
            }));
        }
        let min = if block {
            4096
        } else {
            fs.unwrap_or(FsType::Ext4).min_size()
        };
        let source_size = match &source {
            Some(CreateSource::Snapshot(n)) => {
                self.service.get_snapshot(n).map(|s| s.size_bytes).ok()
            }
            Some(CreateSource::Volume(n)) => self.service.get_volume(n).map(|v| v.size_bytes).ok(),
            // CSI names no backups as sources.
            Some(CreateSource::Backup { .. }) | None => None,
        };
        let min = min.max(source_size.unwrap_or(0));
        let default = source_size.unwrap_or_else(|| self.service.default_size());
        let size = size_for(r.capacity_range.as_ref(), default, min)?;
        let req = CreateVolume {
            name: r.name.clone(),
            size_bytes: Some(size),
            fs,
            pool,
            labels: Default::default(),
            block,
            source,
            autogrow: None,
        };
        let vol = self
            .call(move |s| s.create_volume_placed(req, placement, Wait::Fail))
            .await?;
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(self.csi_volume_from(&vol, r.volume_content_source)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let id = match self.name_of(&r.volume_id) {
            Ok(name) => name,
            // No volume has this ID: the spec's answer for a volume that
            // does not exist is OK.
            Err(_) => return Ok(Response::new(csi::DeleteVolumeResponse {})),
        };
        match self
            .call(move |s| s.delete_volume_anywhere(&id, false, Wait::Fail))
            .await
        {
            Ok(()) => {}
            // Deleting what is gone succeeds: the CO retries deletes.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    /// With shared (rbd) pools: the one-writer check before a node stages
    /// a volume, fencing a holder whose lease lapsed, so the node's stage
    /// right after succeeds instead of failing until the old watch times
    /// out. Node-local pools alone need no controller publish.
    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        if !self.has_shared_pools() {
            return Err(Status::unimplemented(
                "node-local pools need no controller publish",
            ));
        }
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        required(&r.node_id, "node_id")?;
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let asked = access(cap)?;
        check_multi_node(&[cap], self.has_shared_pools())?;
        let vol = self.volume_of(&r.volume_id)?;
        check_multi_node(&[cap], is_shared(&vol))?;
        let read_only = r.readonly || asked.read_only;
        let id = self.name_of(&r.volume_id)?;
        let node = r.node_id.clone();
        let known = node == self.node_id
            || self
                .service
                .list_nodes()
                .iter()
                .any(|n| n.id == node && n.record.is_some());
        if !known {
            // The spec's code for a node that does not exist.
            return Err(Status::not_found(format!(
                "node {node:?} is not a node of this cluster"
            )));
        }
        // A live holder elsewhere is Busy: FAILED_PRECONDITION, the spec's
        // code for "published to another node".
        self.call(move |s| s.claim_for_node(&id, &node, read_only))
            .await?;
        Ok(Response::new(csi::ControllerPublishVolumeResponse {
            publish_context: HashMap::new(),
        }))
    }

    /// Nothing to undo here: the node's unstage unmaps, and a dead node's
    /// hold is fenced by the next publish elsewhere.
    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        if !self.has_shared_pools() {
            return Err(Status::unimplemented(
                "node-local pools need no controller unpublish",
            ));
        }
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let vol = self.volume_of(&r.volume_id)?;
        let caps: Vec<&csi::VolumeCapability> = r.volume_capabilities.iter().collect();
        let ok = match common_access(&r.volume_capabilities) {
            Ok(a) => fits(&vol, &a) && check_multi_node(&caps, is_shared(&vol)).is_ok(),
            Err(_) => false,
        };
        Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: ok.then(|| csi::validate_volume_capabilities_response::Confirmed {
                volume_context: r.volume_context.clone(),
                volume_capabilities: r.volume_capabilities.clone(),
                parameters: r.parameters.clone(),
                mutable_parameters: r.mutable_parameters.clone(),
            }),
            message: if ok {
                String::new()
            } else {
                "the volume cannot serve these capabilities".into()
            },
        }))
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let r = request.into_inner();
        if r.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        // The token holds the last name of the previous page; names sort,
        // so the next page is every name after it, whatever changed
        // meanwhile.
        let after = match r.starting_token.as_str() {
            "" => None,
            t => Some(page_token::read("volumes", t)?),
        };
        let max = if r.max_entries == 0 {
            usize::MAX
        } else {
            usize::try_from(r.max_entries).unwrap_or(usize::MAX)
        };
        let (page, more) = self.service.volumes_page(after.as_deref(), max);
        let next_token = match page.last() {
            Some(v) if more => page_token::issue("volumes", &v.name),
            _ => String::new(),
        };
        let entries = page
            .into_iter()
            .map(|v| csi::list_volumes_response::Entry {
                volume: Some(self.csi_volume(&v)),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: vec![],
                    volume_condition: Some(condition(self.service.volume_condition(&v))),
                }),
            })
            .collect();
        Ok(Response::new(csi::ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let r = request.into_inner();
        let mut pool = None;
        for (k, v) in &r.parameters {
            match k.as_str() {
                "pool" => pool = Some(v.clone()),
                "fs" | "fsType" => {
                    v.parse::<FsType>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                }
                k if k.starts_with("csi.storage.k8s.io/") => {}
                other => {
                    return Err(Status::invalid_argument(format!(
                        "parameter {other:?} is not known; ballast takes pool and fs"
                    )))
                }
            }
        }
        for cap in &r.volume_capabilities {
            access(cap)?;
        }
        let caps: Vec<&csi::VolumeCapability> = r.volume_capabilities.iter().collect();
        check_multi_node(&caps, self.pool_is_shared(pool.as_deref()))?;
        // Per topology segment (one node), as Kubernetes' storage capacity
        // tracking asks; without one, this node's.
        let node = r
            .accessible_topology
            .as_ref()
            .and_then(|t| t.segments.get(TOPOLOGY_KEY).cloned())
            .unwrap_or_else(|| self.node_id.clone());
        // Capacity must serve every capability asked: an rbd pool has no
        // block volumes.
        let block = r
            .volume_capabilities
            .iter()
            .any(|c| matches!(c.access_type, Some(AccessType::Block(_))));
        let shared = self.pool_is_shared(pool.as_deref());
        let available = if block && shared {
            0
        } else {
            self.call(move |s| s.available_on(&node, pool.as_deref()))
                .await?
        };
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: i64_of(available),
            maximum_volume_size: Some(i64_of(available)),
            minimum_volume_size: Some(i64_of(ballast_core::model::EXT4_MIN_SIZE)),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::{rpc::Type, Rpc, Type as Cap};
        let caps = [
            Type::CreateDeleteVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::GetVolume,
            Type::SingleNodeMultiWriter,
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
        ];
        // The one-writer check of shared (rbd) volumes, for a CO that
        // attaches before it stages.
        let publish = self
            .has_shared_pools()
            .then_some(Type::PublishUnpublishVolume);
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .chain(publish)
                .map(|t| csi::ControllerServiceCapability {
                    r#type: Some(Cap::Rpc(Rpc { r#type: t as i32 })),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        required(&r.source_volume_id, "source_volume_id")?;
        required(&r.name, "name")?;
        if let Some(k) = r
            .parameters
            .keys()
            .find(|k| !k.starts_with("csi.storage.k8s.io/"))
        {
            return Err(Status::invalid_argument(format!(
                "parameter {k:?} is not known; snapshots take none"
            )));
        }
        let (vol, name) = (self.name_of(&r.source_volume_id)?, r.name.clone());
        let snap = self
            .call(move |s| s.create_snapshot(&vol, &name, Wait::Fail))
            .await?;
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snap)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        required(&r.snapshot_id, "snapshot_id")?;
        if ballast_core::model::validate_name("snapshot", &r.snapshot_id).is_err() {
            // No snapshot can have this ID: it does not exist, which is OK.
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        }
        let id = r.snapshot_id.clone();
        match self.call(move |s| s.delete_snapshot(&id, Wait::Fail)).await {
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        if r.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        let after = match r.starting_token.as_str() {
            "" => None,
            t => Some(page_token::read("snapshots", t)?),
        };
        let snaps: Vec<Snapshot> = self
            .service
            .list_snapshots()
            .into_iter()
            .filter(|s| s.ready)
            .filter(|s| r.snapshot_id.is_empty() || s.name == r.snapshot_id)
            .filter(|s| {
                r.source_volume_id.is_empty()
                    || s.source_volume_id == r.source_volume_id
                    || s.source_volume == r.source_volume_id
            })
            .collect();
        let start =
            snaps.partition_point(|s| after.as_deref().is_some_and(|a| s.name.as_str() <= a));
        let max = if r.max_entries == 0 {
            usize::MAX
        } else {
            usize::try_from(r.max_entries).unwrap_or(usize::MAX)
        };
        let page: Vec<&Snapshot> = snaps[start..].iter().take(max).collect();
        let next_token = match page.last() {
            Some(s) if start + page.len() < snaps.len() => page_token::issue("snapshots", &s.name),
            _ => String::new(),
        };
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries: page
                .into_iter()
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token,
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let r = request.into_inner();
        required(&r.snapshot_id, "snapshot_id")?;
        let snap = self.service.get_snapshot(&r.snapshot_id).map_err(status)?;
        Ok(Response::new(csi::GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&snap)),
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let range = r
            .capacity_range
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        // A malformed field is INVALID_ARGUMENT whether the volume exists or not.
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(Status::invalid_argument(
                "capacity_range must not be negative",
            ));
        }
        let vol = self.volume_of(&r.volume_id)?;
        let size = size_for(Some(&range), vol.size_bytes, vol.size_bytes)?;
        let id = self.name_of(&r.volume_id)?;
        let vol = self
            .call(move |s| s.resize_anywhere(&id, size, Wait::Fail))
            .await?;
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: i64_of(vol.size_bytes),
            node_expansion_required: vol.fs_grow_pending && vol.staging.is_some(),
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let vol = self.volume_of(&r.volume_id)?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(self.csi_volume(&vol)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition(self.service.volume_condition(&vol))),
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("volumes have no mutable parameters"))
    }
}

fn csi_snapshot(s: &Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64_of(s.size_bytes),
        snapshot_id: s.name.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_at.timestamp(),
            nanos: i32::try_from(s.created_at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
    }
}

fn condition(problem: Option<String>) -> csi::VolumeCondition {
    match problem {
        Some(message) => csi::VolumeCondition {
            abnormal: true,
            message,
        },
        None => csi::VolumeCondition {
            abnormal: false,
            message: "healthy".into(),
        },
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for CsiPlugin {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let staging = path_arg(&r.staging_target_path, "staging_target_path")?;
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let access = access(cap)?.access;
        // An argument no volume here could take, before the lookup.
        check_multi_node(&[cap], self.has_shared_pools())?;
        let vol = self.volume_of(&r.volume_id)?;
        check_multi_node(&[cap], is_shared(&vol))?;
        if !fits(&vol, &access) {
            // The spec's "exceeds capabilities" of the volume.
            return Err(Status::failed_precondition(format!(
                "volume {:?} cannot be staged with this capability",
                vol.name
            )));
        }
        // Readers on several nodes: the staging itself is read-only, so
        // no node writes the shared filesystem (not even its superblock).
        let stage_ro = multi_node(cap);
        let id = self.name_of(&r.volume_id)?;
        self.call(move |s| {
            let target = if access == Access::Block {
                None
            } else {
                std::fs::create_dir_all(&staging)
                    .map_err(|e| ballast_core::DriverError::io(&staging, e))?;
                // The flags are checked above but applied only where pods
                // see the volume: each published target gets them again.
                // Kubelet's staging path keeps plain flags, so a stage
                // repeated after a class's mountOptions changed still fits.
                Some(PublishTarget {
                    path: staging.clone(),
                    read_only: stage_ro,
                    flags: MountFlags::default(),
                })
            };
            s.publish(&id, stage_consumer(&staging), target, Wait::Fail)
        })
        .await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let staging = path_arg(&r.staging_target_path, "staging_target_path")?;
        let id = self.name_of(&r.volume_id)?;
        self.call(move |s| s.unpublish(&id, &stage_consumer(&staging), Wait::Fail))
            .await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let target = path_arg(&r.target_path, "target_path")?;
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let Asked {
            access,
            read_only: mode_ro,
            flags,
            sharing,
        } = access(cap)?;
        check_multi_node(&[cap], self.has_shared_pools())?;
        // The spec's own code for a plugin with STAGE_UNSTAGE_VOLUME.
        if r.staging_target_path.is_empty() {
            return Err(Status::failed_precondition(
                "staging_target_path is required: this plugin stages volumes before publishing them",
            ));
        }
        let staging = path_arg(&r.staging_target_path, "staging_target_path")?;
        let vol = self.volume_of(&r.volume_id)?;
        check_multi_node(&[cap], is_shared(&vol))?;
        if !fits(&vol, &access) {
            // The spec's "exceeds capabilities" of the volume.
            return Err(Status::failed_precondition(format!(
                "volume {:?} cannot be published with this capability",
                vol.name
            )));
        }
        if !vol.consumers.contains_key(&stage_consumer(&staging).key()) {
            return Err(Status::failed_precondition(format!(
                "volume {:?} is not staged at {}",
                vol.name,
                staging.display()
            )));
        }
        let read_only = r.readonly || mode_ro;
        let id = self.name_of(&r.volume_id)?;
        self.call(move |s| {
            // The CO makes the parent; the plugin makes the target itself,
            // and takes it away again when the publish is refused.
            let existed = target.symlink_metadata().is_ok();
            let made = if access == Access::Block {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map(drop)
            } else {
                std::fs::create_dir_all(&target)
            };
            made.map_err(|e| ballast_core::DriverError::io(&target, e))?;
            let published = s.publish_with(
                &id,
                target_consumer(&target),
                Some(PublishTarget {
                    path: target.clone(),
                    read_only,
                    flags,
                }),
                sharing,
                Wait::Fail,
            );
            if published.is_err() && !existed {
                // A failed publish mounts nothing here; only empty things go.
                let _ = std::fs::remove_dir(&target).or_else(|_| remove_empty_file(&target));
            }
            published
        })
        .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        required(&r.volume_id, "volume_id")?;
        let target = path_arg(&r.target_path, "target_path")?;
        let id = self.name_of(&r.volume_id)?;
        self.call(move |s| {
            s.unpublish(&id, &target_consumer(&target), Wait::Fail)?;
            // The target was made by NodePublish; take it away again.
            let _ = std::fs::remove_dir(&target).or_else(|_| {
                if target.is_file() {
                    std::fs::remove_file(&target)
                } else {
                    Ok(())
                }
            });
            Ok(())
        })
        .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let r = request.into_inner();
        let path = self.volume_path(&r.volume_id, &r.volume_path)?;
        let id = self.name_of(&r.volume_id)?;
        let (usage, problem) = self.call(move |s| s.path_usage(&id, &path)).await?;
        let bytes = csi::VolumeUsage {
            available: i64_of(usage.total_bytes.saturating_sub(usage.used_bytes)),
            total: i64_of(usage.total_bytes),
            used: i64_of(usage.used_bytes),
            unit: csi::volume_usage::Unit::Bytes as i32,
        };
        let mut out = vec![bytes];
        if usage.total_inodes > 0 {
            out.push(csi::VolumeUsage {
                available: i64_of(usage.total_inodes.saturating_sub(usage.used_inodes)),
                total: i64_of(usage.total_inodes),
                used: i64_of(usage.used_inodes),
                unit: csi::volume_usage::Unit::Inodes as i32,
            });
        }
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage: out,
            volume_condition: Some(condition(problem)),
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        self.volume_path(&r.volume_id, &r.volume_path)?;
        let id = self.name_of(&r.volume_id)?;
        let vol = self
            .call(move |s| s.expand_on_node(&id, Wait::Fail))
            .await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: i64_of(vol.size_bytes),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{rpc::Type, Rpc, Type as Cap};
        let caps = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ];
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|t| csi::NodeServiceCapability {
                    r#type: Some(Cap::Rpc(Rpc { r#type: t as i32 })),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(self.topology()),
        }))
    }
}

/// Serve the plugin on a unix socket until the task is dropped.
pub async fn serve(
    plugin: CsiPlugin,
    mode: CsiMode,
    listener: tokio::net::UnixListener,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt as _;
    // Any `:authority` is taken: C-core gRPC clients send the socket's path.
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(crate::h2_authority::AuthorityFix::new));
    let identity = csi::identity_server::IdentityServer::new(plugin.clone());
    let mut routes = tonic::service::Routes::new(identity);
    if mode != CsiMode::Node {
        routes = routes.add_service(csi::controller_server::ControllerServer::new(
            plugin.clone(),
        ));
    }
    if mode != CsiMode::Controller {
        routes = routes.add_service(csi::node_server::NodeServer::new(plugin));
    }
    // A service this mode does not serve: UNIMPLEMENTED, with the message
    // the spec requires of every error (tonic's own fallback has none).
    let served = match mode {
        CsiMode::All => "all",
        CsiMode::Controller => "controller",
        CsiMode::Node => "node",
    };
    let router = routes.into_axum_router().fallback(move || async move {
        Status::unimplemented(format!(
            "this endpoint serves CSI mode {served}, which does not include this service"
        ))
        .into_http::<axum::body::Body>()
    });
    tonic::transport::Server::builder()
        .add_routes(router.into())
        .serve_with_incoming(incoming)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_ranges() {
        let r = |req: i64, lim: i64| csi::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(size_for(None, 1 << 30, 8 << 20).unwrap(), 1 << 30);
        assert_eq!(
            size_for(Some(&r(100 << 20, 0)), 1 << 30, 8 << 20).unwrap(),
            100 << 20
        );
        assert_eq!(
            size_for(Some(&r(0, 64 << 20)), 1 << 30, 8 << 20).unwrap(),
            64 << 20
        );
        assert_eq!(size_for(Some(&r(1, 0)), 1 << 30, 8 << 20).unwrap(), 8 << 20);
        assert_eq!(
            size_for(Some(&r(2 << 20, 1 << 20)), 1 << 30, 8 << 20)
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            size_for(Some(&r(0, 1 << 20)), 1 << 30, 8 << 20)
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            size_for(Some(&r(-1, 0)), 1 << 30, 8 << 20)
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn a_busy_volume_is_aborted() {
        // The spec's "operation pending for volume": the CO backs off and
        // retries.
        let s = status(Error::Conflict { name: "v".into() });
        assert_eq!(s.code(), tonic::Code::Aborted);
        assert!(s.message().contains('v'), "{}", s.message());
    }

    #[test]
    fn page_tokens_are_ours_alone() {
        let t = page_token::issue("volumes", "vol-7");
        assert!(!t.contains("vol-7"), "opaque: {t}");
        assert_eq!(page_token::read("volumes", &t).unwrap(), "vol-7");
        // Not for the other list, not edited, not made up, not a bare name.
        let (payload, tag) = t.split_once('.').unwrap();
        let other = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v1:vol-8")
        };
        for bad in [
            page_token::issue("snapshots", "vol-7"),
            format!("{other}.{tag}"),
            format!("{payload}.{}", &tag[1..]),
            "vol-7".into(),
            "x.y".into(),
            ".".into(),
        ] {
            let e = page_token::read("volumes", &bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Aborted, "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(path_arg("/a/b", "p").is_ok());
        for bad in ["", "a/b", "/a/../b", "/a/./b", "/a\nb"] {
            assert_eq!(
                path_arg(bad, "p").unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }
}
