//! The REST API's wire types: what clients send and receive. Stable and
//! documented in the OpenAPI document; the CLI's `-o json` prints these.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ballast_core::claims::{parse_ttl, AcquireClaim, Claim, ClaimStatus};
use ballast_core::model::{
    format_size, parse_size, parse_watermark, Consumer, CreateSource, DriverKind, FsType,
    InvalidInput, Pool, PoolCapacity, PoolDisk, PoolGrowth, Snapshot, Volume, VolumeState,
    MAX_NAME_LEN,
};
use ballast_core::pools::CreatePool;
use ballast_core::{CreateVolume, VolumeUsage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::wire;
use ballast_core::desired::Placement;

/// Body of `POST /v1/volumes`. Unknown fields are rejected by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeBody {
    #[schema(schema_with = wire::s_volume_name)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_size)]
    pub size: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_fs)]
    pub fs: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_pool)]
    pub pool: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_labels)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_snapshot)]
    pub from_snapshot: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_volume)]
    pub from_volume: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_autogrow)]
    pub autogrow: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_node)]
    pub node: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_selector)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_spread)]
    pub spread: Option<String>,
}

impl CreateVolumeBody {
    pub fn into_request(self) -> Result<(CreateVolume, Placement), InvalidInput> {
        wire::check_name("volume", &self.name, MAX_NAME_LEN)?;
        for (k, v) in &self.selector {
            wire::check_label(k, v)?;
        }
        if let Some(k) = &self.spread {
            wire::check_label(k, "")?;
        }
        let placement = Placement {
            node: self.node.clone(),
            selector: self.selector.clone(),
            spread: self.spread.clone(),
            ..Placement::default()
        };
        for (what, n) in [
            ("node", &self.node),
            ("pool", &self.pool),
            ("snapshot", &self.from_snapshot),
            ("volume", &self.from_volume),
        ] {
            if let Some(n) = n {
                wire::check_name(what, n, MAX_NAME_LEN)?;
            }
        }
        if let Some(s) = &self.size {
            wire::check_size("size", s)?;
        }
        if let Some(a) = &self.autogrow {
            wire::check_autogrow(a)?;
        }
        for (k, v) in &self.labels {
            wire::check_label(k, v)?;
        }
        let source = match (self.from_snapshot, self.from_volume) {
            (Some(_), Some(_)) => {
                return Err(InvalidInput::new(
                    "from_snapshot and from_volume",
                    "are exclusive: give one source",
                ))
            }
            (Some(s), None) => Some(CreateSource::Snapshot(s)),
            (None, Some(v)) => Some(CreateSource::Volume(v)),
            (None, None) => None,
        };
        let autogrow = self
            .autogrow
            .as_deref()
            .map(ballast_core::model::parse_autogrow)
            .transpose()?;
        let req = CreateVolume {
            autogrow,
            source,
            name: self.name,
            size_bytes: self.size.as_deref().map(parse_size).transpose()?,
            fs: self.fs.as_deref().map(str::parse::<FsType>).transpose()?,
            pool: self.pool,
            labels: self.labels,
            block: false,
        };
        Ok((req, placement))
    }
}

/// Body of `POST /v1/volumes/{name}/mount` and `/unmount`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountBody {
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_consumer_id)]
    pub id: Option<String>,
    /// Mount only: take a shared (rbd) volume over from the live node
    /// holding it, fencing that node first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preempt: bool,
}

impl MountBody {
    /// The consumer ID, checked as the document states it.
    pub fn into_id(self) -> Result<String, InvalidInput> {
        let id = self.id.unwrap_or_default();
        wire::check_text("consumer id", &id, wire::MAX_ID_LEN)?;
        Ok(id)
    }
}

/// Body of `POST /v1/volumes/{name}/move`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The target node (default: the volume's own node, with `pool`).
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_node)]
    pub to: Option<String>,
    /// The target pool (default: the target node's default pool).
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_pool)]
    pub pool: Option<String>,
    /// Wait for the volume's consumers to go before the final pass instead
    /// of failing.
    #[serde(default)]
    pub wait_idle: bool,
}

/// A volume's move as the API shows it (the stream's secret is not shown).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MoveView {
    pub id: String,
    pub volume: String,
    pub from_node: String,
    pub from_pool: String,
    pub to_node: String,
    pub to_pool: String,
    pub size_bytes: u64,
    pub phase: ballast_core::moves::MovePhase,
    pub progress: ballast_core::moves::MoveProgress,
    pub wait_idle: bool,
    pub cancel: bool,
    /// Why it failed.
    pub error: Option<String>,
    pub requested_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ballast_core::moves::MoveRecord> for MoveView {
    fn from(m: ballast_core::moves::MoveRecord) -> Self {
        MoveView {
            id: m.id,
            volume: m.volume,
            from_node: m.from_node,
            from_pool: m.from_pool,
            to_node: m.to_node,
            to_pool: m.to_pool,
            size_bytes: m.size_bytes,
            phase: m.phase,
            progress: m.progress,
            wait_idle: m.wait_idle,
            cancel: m.cancel,
            error: m.failed.map(|f| f.message),
            requested_at: m.requested_at,
            updated_at: m.updated_at,
        }
    }
}

/// Body of `POST /v1/volumes/{name}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    #[schema(schema_with = wire::s_size)]
    pub size: String,
}

impl ResizeBody {
    pub fn into_size(self) -> Result<u64, InvalidInput> {
        wire::check_size("size", &self.size)?;
        parse_size(&self.size)
    }
}

/// A volume as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeView {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub driver: DriverKind,
    pub size_bytes: u64,
    /// `size_bytes` for people, e.g. `64MiB`.
    pub size: String,
    /// `ext4`, `xfs`, or null for dir volumes.
    pub fs: Option<FsType>,
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub state: VolumeState,
    /// The node whose pool holds the volume; null for a shared pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where the data is on this host while mounted.
    pub mountpoint: Option<String>,
    pub device: Option<String>,
    pub consumers: Vec<Consumer>,
    /// Filesystem usage; present on inspect of a mounted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<VolumeUsage>,
    /// Shared storage: every node's hold on the volume and fences of it
    /// (in a single volume's view only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<ballast_core::service::Holder>,
}

impl VolumeView {
    pub fn new(v: Volume, usage: Option<VolumeUsage>) -> Self {
        let (mountpoint, device) = match &v.staging {
            Some(s) => (
                Some(s.mountpoint.display().to_string()),
                s.device.as_ref().map(|d| d.display().to_string()),
            ),
            None => (None, None),
        };
        Self {
            size: format_size(v.size_bytes),
            id: v.id,
            name: v.name,
            pool: v.pool,
            driver: v.driver,
            size_bytes: v.size_bytes,
            fs: v.fs,
            labels: v.labels,
            created_at: v.created_at,
            state: v.state,
            node: v.node,
            mountpoint,
            device,
            consumers: v.consumers.into_values().collect(),
            usage,
            holders: Vec::new(),
        }
    }
}

/// A pool and its capacity figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    pub driver: DriverKind,
    /// The node whose disks hold the pool; null for a shared pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub path: String,
    pub overcommit_ratio: f64,
    pub created_at: DateTime<Utc>,
    pub volumes: usize,
    #[serde(flatten)]
    pub capacity: PoolCapacity,
    /// When and how the pool adds capacity by itself.
    #[serde(default)]
    pub growth: PoolGrowth,
    /// The disks of a filesystem ballast made or extended (btrfs).
    #[serde(default)]
    pub disks: Vec<PoolDisk>,
    /// A btrfs mounted by someone else that the pool uses as it is.
    #[serde(default)]
    pub adopted: bool,
    /// rbd: the Ceph cluster and pool holding the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<ballast_core::model::CephPool>,
}

impl PoolView {
    pub fn new(p: Pool, capacity: PoolCapacity, volumes: usize) -> Self {
        Self {
            name: p.name,
            driver: p.driver,
            node: p.node,
            path: p.path.display().to_string(),
            overcommit_ratio: p.overcommit_ratio,
            created_at: p.created_at,
            volumes,
            capacity,
            growth: p.growth,
            disks: p.disks,
            adopted: p.adopted,
            ceph: p.ceph,
        }
    }
}

/// Body of `POST /v1/pools`. Unknown fields are rejected by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolBody {
    #[schema(schema_with = wire::s_pool_name)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_driver)]
    pub driver: Option<String>,
    /// btrfs: block devices to make the filesystem on.
    #[serde(default)]
    #[schema(schema_with = wire::s_paths)]
    pub disks: Vec<String>,
    /// btrfs: an image file ballast makes and attaches on a loop device as
    /// the first disk (with `disk_size`); disk files the pool adds go in its
    /// directory.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_path)]
    pub disk_file: Option<String>,
    /// Size of `disk_file`: `1G`.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_size)]
    pub disk_size: Option<String>,
    /// loop, dir: the pool's directory [default: <state-dir>/pools/NAME];
    /// btrfs: the mountpoint of a btrfs to adopt as it is.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_path)]
    pub path: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_watermark)]
    pub high_watermark: Option<String>,
    /// btrfs: size of each disk file the pool adds (needs `disk_file` and
    /// `max_size`).
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_size)]
    pub grow_step: Option<String>,
    /// btrfs: the pool never grows its disks past this.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_size)]
    pub max_size: Option<String>,
    /// btrfs: block devices the pool may add, in order, before disk files.
    #[serde(default)]
    #[schema(schema_with = wire::s_paths)]
    pub spare_disks: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_ratio)]
    pub overcommit_ratio: Option<f64>,
    /// rbd: the ceph.conf naming the cluster's monitors (the same path on
    /// every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = wire::s_opt_path)]
    pub ceph_conf: Option<String>,
    /// rbd: the RADOS pool holding the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_pool: Option<String>,
    /// rbd: the cephx id, without `client.` [default: admin].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_user: Option<String>,
    /// rbd: the keyring with that id's key [default: ceph.conf's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = wire::s_opt_path)]
    pub keyring: Option<String>,
    /// rbd: the filesystem of volumes that ask for none, ext4 or xfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
}

impl CreatePoolBody {
    pub fn into_request(self) -> Result<CreatePool, InvalidInput> {
        wire::check_name("pool", &self.name, MAX_NAME_LEN)?;
        for (what, v) in [
            ("size", &self.disk_size),
            ("grow step", &self.grow_step),
            ("max size", &self.max_size),
        ] {
            if let Some(v) = v {
                wire::check_size(what, v)?;
            }
        }
        if let Some(w) = &self.high_watermark {
            wire::check_watermark(w)?;
        }
        for (what, p) in self
            .disks
            .iter()
            .map(|d| ("disk", d))
            .chain(self.spare_disks.iter().map(|d| ("spare disk", d)))
            .chain(self.disk_file.iter().map(|f| ("disk file", f)))
            .chain(self.path.iter().map(|p| ("path", p)))
            .chain(self.ceph_conf.iter().map(|p| ("ceph_conf", p)))
            .chain(self.keyring.iter().map(|p| ("keyring", p)))
        {
            wire::check_path(what, p)?;
        }
        if let Some(r) = self.overcommit_ratio {
            wire::check_ratio(r)?;
        }
        let disk_file = match (self.disk_file, self.disk_size) {
            (Some(f), Some(s)) => Some((PathBuf::from(f), parse_size(&s)?)),
            (Some(_), None) => {
                return Err(InvalidInput::new("disk_file", "needs disk_size"));
            }
            (None, Some(_)) => {
                return Err(InvalidInput::new("disk_size", "needs disk_file"));
            }
            (None, None) => None,
        };
        let size_of = |what: &str, v: Option<String>| -> Result<Option<u64>, InvalidInput> {
            v.map(|s| {
                parse_size(&s)
                    .map_err(|e| InvalidInput::new(format!("{what}: {}", e.what), e.reason))
            })
            .transpose()
        };
        let fs = self
            .fs
            .as_deref()
            .map(str::parse::<ballast_core::model::FsType>)
            .transpose()?;
        let ceph = match (self.ceph_conf, self.ceph_pool) {
            (Some(conf), Some(pool)) => Some(ballast_core::model::CephPool {
                conf: PathBuf::from(conf),
                pool,
                user: self.ceph_user,
                keyring: self.keyring.map(PathBuf::from),
                fs,
            }),
            (None, None) => {
                let given = [
                    ("ceph_user", self.ceph_user.is_some()),
                    ("keyring", self.keyring.is_some()),
                    ("fs", fs.is_some()),
                ];
                if let Some((what, _)) = given.iter().find(|(_, g)| *g) {
                    return Err(InvalidInput::new(
                        *what,
                        "applies to rbd pools only (with ceph_conf and ceph_pool)",
                    ));
                }
                None
            }
            (Some(_), None) => return Err(InvalidInput::new("ceph_conf", "needs ceph_pool")),
            (None, Some(_)) => return Err(InvalidInput::new("ceph_pool", "needs ceph_conf")),
        };
        Ok(CreatePool {
            name: self.name,
            driver: self.driver.as_deref().map(str::parse).transpose()?,
            disks: self.disks.into_iter().map(PathBuf::from).collect(),
            disk_file,
            path: self.path.map(PathBuf::from),
            high_watermark: self
                .high_watermark
                .as_deref()
                .map(parse_watermark)
                .transpose()?,
            grow_step: size_of("grow step", self.grow_step)?,
            max_size: size_of("max size", self.max_size)?,
            spare_disks: self.spare_disks.into_iter().map(PathBuf::from).collect(),
            overcommit_ratio: self.overcommit_ratio,
            ceph,
        })
    }
}

/// Body of `POST /v1/volumes/{name}/mount`'s reply.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MountReply {
    pub mountpoint: String,
    pub volume: VolumeView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionReply {
    pub version: String,
    pub api: String,
}

/// Every error reply.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorReply {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid_argument`, `not_found`,
    /// `already_exists`, `in_use`, `busy`, `capacity`, `conflict`, `driver`,
    /// `store`, `unauthorized`, `payload_too_large`, `method_not_allowed`,
    /// `internal`.
    pub code: String,
    pub message: String,
}

/// Body of `POST /v1/volumes/{name}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    #[schema(schema_with = wire::s_snapshot_name)]
    pub name: String,
}

impl SnapshotBody {
    pub fn into_name(self) -> Result<String, InvalidInput> {
        wire::check_name("snapshot", &self.name, MAX_NAME_LEN)?;
        Ok(self.name)
    }
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    pub id: String,
    pub name: String,
    pub source_volume: String,
    pub pool: String,
    pub size_bytes: u64,
    pub size: String,
    pub fs: Option<FsType>,
    pub block: bool,
    pub created_at: DateTime<Utc>,
    pub ready: bool,
}

impl From<Snapshot> for SnapshotView {
    fn from(s: Snapshot) -> Self {
        Self {
            size: format_size(s.size_bytes),
            id: s.id,
            name: s.name,
            source_volume: s.source_volume,
            pool: s.pool,
            size_bytes: s.size_bytes,
            fs: s.fs,
            block: s.block,
            created_at: s.created_at,
            ready: s.ready,
        }
    }
}

/// Body of `POST /v1/claims/{group}/acquire`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireClaimBody {
    #[schema(schema_with = wire::s_claim_volumes)]
    pub volumes: Vec<String>,
    /// Size of the volumes this acquire creates; volumes that exist are
    /// reused as they are.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_size)]
    pub size: Option<String>,
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_pool)]
    pub pool: Option<String>,
    /// The claim lapses unless renewed within this; omitted: held until
    /// released.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_ttl)]
    pub ttl: Option<String>,
    #[schema(schema_with = wire::s_holder)]
    pub holder: String,
}

impl AcquireClaimBody {
    pub fn into_request(self, group: String) -> Result<AcquireClaim, InvalidInput> {
        wire::check_name("claim group", &group, wire::MAX_CLAIM_PART_LEN)?;
        if self.volumes.is_empty() {
            return Err(InvalidInput::new(
                "volumes",
                "must name at least one volume (for example config,data)",
            ));
        }
        for v in &self.volumes {
            wire::check_claim_volume(v)?;
        }
        if let Some(p) = &self.pool {
            wire::check_name("pool", p, MAX_NAME_LEN)?;
        }
        if let Some(s) = &self.size {
            wire::check_size("size", s)?;
        }
        if let Some(t) = &self.ttl {
            wire::check_ttl(t)?;
        }
        wire::check_holder(&self.holder)?;
        Ok(AcquireClaim {
            group,
            volumes: self.volumes,
            size_bytes: self.size.as_deref().map(parse_size).transpose()?,
            pool: self.pool,
            ttl: self.ttl.as_deref().map(parse_ttl).transpose()?,
            holder: self.holder,
        })
    }
}

/// Body of `POST /v1/claims/{group}/{ordinal}/renew`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewClaimBody {
    #[schema(schema_with = wire::s_holder)]
    pub holder: String,
    /// A new TTL; omitted: the claim's own.
    #[serde(default)]
    #[schema(schema_with = wire::s_opt_ttl)]
    pub ttl: Option<String>,
}

impl RenewClaimBody {
    pub fn into_parts(self) -> Result<(String, Option<std::time::Duration>), InvalidInput> {
        wire::check_holder(&self.holder)?;
        let ttl = match &self.ttl {
            Some(t) => {
                wire::check_ttl(t)?;
                Some(parse_ttl(t)?)
            }
            None => None,
        };
        Ok((self.holder, ttl))
    }
}

/// Body of `POST /v1/claims/{group}/{ordinal}/release`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseClaimBody {
    #[schema(schema_with = wire::s_holder)]
    pub holder: String,
}

impl ReleaseClaimBody {
    pub fn into_holder(self) -> Result<String, InvalidInput> {
        wire::check_holder(&self.holder)?;
        Ok(self.holder)
    }
}

/// A claim: the reply to acquire, renew and release, and what
/// `ballast claim acquire -o json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimView {
    pub group: String,
    /// The claim's ordinal in its group, from 1.
    pub ordinal: u64,
    /// The claim's volume names, `GROUP-N-VOLUME`.
    pub volumes: Vec<String>,
    pub holder: String,
    /// When the claim lapses unless renewed; null: held until released.
    pub expires_at: Option<DateTime<Utc>>,
    /// The claim's volumes that live on another node than the one that
    /// answered, and that node: mount them there (moving them is not done
    /// here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub elsewhere: BTreeMap<String, String>,
}

impl From<Claim> for ClaimView {
    fn from(c: Claim) -> Self {
        Self {
            group: c.group,
            ordinal: c.ordinal,
            volumes: c.volumes,
            holder: c.holder,
            expires_at: c.expires_at,
            elsewhere: BTreeMap::new(),
        }
    }
}

impl ClaimView {
    /// The view, with which of its volumes live on another node.
    pub fn placed(c: Claim, service: &ballast_core::VolumeService) -> Self {
        let mut v = Self::from(c);
        for name in &v.volumes {
            if let Some(node) = service
                .get_volume(name)
                .ok()
                .and_then(|vol| vol.node)
                .filter(|n| n != service.node_id())
            {
                v.elsewhere.insert(name.clone(), node);
            }
        }
        v
    }
}

/// A claim as `GET /v1/claims` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimStatusView {
    #[serde(flatten)]
    pub claim: ClaimView,
    pub acquired_at: DateTime<Utc>,
    /// The TTL passed without a renew: the ordinal goes to the next acquire
    /// (until then the holder may still renew or release it).
    pub expired: bool,
}

impl From<ClaimStatus> for ClaimStatusView {
    fn from(s: ClaimStatus) -> Self {
        Self {
            acquired_at: s.claim.acquired_at,
            claim: ClaimView::from(s.claim),
            expired: s.expired,
        }
    }
}
