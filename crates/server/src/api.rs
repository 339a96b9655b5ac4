//! The REST API's wire types: what clients send and receive. Stable and
//! documented in the OpenAPI document; the CLI's `-o json` prints these.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ballast_core::claims::{parse_ttl, AcquireClaim, Claim, ClaimStatus};
use ballast_core::model::{
    format_size, parse_size, parse_watermark, Consumer, CreateSource, DriverKind, FsType,
    InvalidInput, Pool, PoolCapacity, PoolDisk, PoolGrowth, Snapshot, Volume, VolumeState,
};
use ballast_core::pools::CreatePool;
use ballast_core::{CreateVolume, VolumeUsage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/volumes`. Unknown fields are rejected by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeBody {
    pub name: String,
    /// Size with an optional binary unit: `64M`, `10G`, `1073741824`.
    #[serde(default)]
    pub size: Option<String>,
    /// `ext4` or `xfs` (loop pools only).
    #[serde(default)]
    pub fs: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Copy the new volume from this snapshot.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Copy the new volume from this volume (a clone).
    #[serde(default)]
    pub from_volume: Option<String>,
    /// Grow online before the filesystem fills: `THRESHOLD%:+STEP:max=SIZE`,
    /// e.g. `90%:+20%:max=10G`.
    #[serde(default)]
    pub autogrow: Option<String>,
}

impl CreateVolumeBody {
    pub fn into_request(self) -> Result<CreateVolume, InvalidInput> {
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
        Ok(CreateVolume {
            autogrow,
            source,
            name: self.name,
            size_bytes: self.size.as_deref().map(parse_size).transpose()?,
            fs: self.fs.as_deref().map(str::parse::<FsType>).transpose()?,
            pool: self.pool,
            labels: self.labels,
            block: false,
        })
    }
}

/// Body of `POST /v1/volumes/{name}/mount` and `/unmount`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountBody {
    /// Consumer ID; omitted or empty is the one anonymous CLI consumer.
    #[serde(default)]
    pub id: Option<String>,
}

/// Body of `POST /v1/volumes/{name}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    pub size: String,
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
    /// Where the data is on this host while mounted.
    pub mountpoint: Option<String>,
    pub device: Option<String>,
    pub consumers: Vec<Consumer>,
    /// Filesystem usage; present on inspect of a mounted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<VolumeUsage>,
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
            mountpoint,
            device,
            consumers: v.consumers.into_values().collect(),
            usage,
        }
    }
}

/// A pool and its capacity figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    pub driver: DriverKind,
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
}

impl PoolView {
    pub fn new(p: Pool, capacity: PoolCapacity, volumes: usize) -> Self {
        Self {
            name: p.name,
            driver: p.driver,
            path: p.path.display().to_string(),
            overcommit_ratio: p.overcommit_ratio,
            created_at: p.created_at,
            volumes,
            capacity,
            growth: p.growth,
            disks: p.disks,
            adopted: p.adopted,
        }
    }
}

/// Body of `POST /v1/pools`. Unknown fields are rejected by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolBody {
    pub name: String,
    /// `loop` (the default), `dir` or `btrfs`.
    #[serde(default)]
    pub driver: Option<String>,
    /// btrfs: block devices to make the filesystem on.
    #[serde(default)]
    pub disks: Vec<String>,
    /// btrfs: an image file ballast makes and attaches on a loop device as
    /// the first disk (with `disk_size`); disk files the pool adds go in its
    /// directory.
    #[serde(default)]
    pub disk_file: Option<String>,
    /// Size of `disk_file`: `1G`.
    #[serde(default)]
    pub disk_size: Option<String>,
    /// loop, dir: the pool's directory [default: <state-dir>/pools/NAME];
    /// btrfs: the mountpoint of a btrfs to adopt as it is.
    #[serde(default)]
    pub path: Option<String>,
    /// Used space above which the pool adds capacity (or warns): `80%`
    /// [default], 1% to 99%.
    #[serde(default)]
    pub high_watermark: Option<String>,
    /// btrfs: size of each disk file the pool adds (needs `disk_file` and
    /// `max_size`).
    #[serde(default)]
    pub grow_step: Option<String>,
    /// btrfs: the pool never grows its disks past this.
    #[serde(default)]
    pub max_size: Option<String>,
    /// btrfs: block devices the pool may add, in order, before disk files.
    #[serde(default)]
    pub spare_disks: Vec<String>,
    /// Provisioned bytes may reach this multiple of the pool's capacity
    /// (for a pool that can grow: of its max size) [default: 1.0].
    #[serde(default)]
    pub overcommit_ratio: Option<f64>,
}

impl CreatePoolBody {
    pub fn into_request(self) -> Result<CreatePool, InvalidInput> {
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
    pub name: String,
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
    /// The claim's volumes by short name: `data` is the volume
    /// `GROUP-N-data`. At least one, no duplicates, no `-`.
    pub volumes: Vec<String>,
    /// Size of the volumes this acquire creates; volumes that exist are
    /// reused as they are.
    #[serde(default)]
    pub size: Option<String>,
    /// Pool of the volumes this acquire creates [default: default].
    #[serde(default)]
    pub pool: Option<String>,
    /// The claim lapses unless renewed within this: `500ms`, `2s`, `5m`,
    /// `1h`. Omitted: held until released.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Who holds the claim; renew and release must name the same holder.
    pub holder: String,
}

impl AcquireClaimBody {
    pub fn into_request(self, group: String) -> Result<AcquireClaim, InvalidInput> {
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
    pub holder: String,
    /// A new TTL (`500ms`, `2s`, `5m`, `1h`); omitted: the claim's own.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Body of `POST /v1/claims/{group}/{ordinal}/release`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseClaimBody {
    pub holder: String,
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
}

impl From<Claim> for ClaimView {
    fn from(c: Claim) -> Self {
        Self {
            group: c.group,
            ordinal: c.ordinal,
            volumes: c.volumes,
            holder: c.holder,
            expires_at: c.expires_at,
        }
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
            claim: s.claim.into(),
            expired: s.expired,
        }
    }
}
