//! The REST API's wire types: what clients send and receive. Stable and
//! documented in the OpenAPI document; the CLI's `-o json` prints these.

use std::collections::BTreeMap;

use ballast_core::model::{
    format_size, parse_size, Consumer, CreateSource, DriverKind, FsType, InvalidInput, Pool,
    PoolCapacity, Snapshot, Volume, VolumeState,
};
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
        Ok(CreateVolume {
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
        }
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
