//! The volume model: validated names and sizes, pools, volumes, consumers.
//!
//! These types are what the store holds (as JSON) and what every front-end
//! shows. Parsing here is strict: anything that is not clearly valid is an
//! [`InvalidInput`] naming what was wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest volume, pool or consumer name.
pub const MAX_NAME_LEN: usize = 128;

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct InvalidInput {
    pub what: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Check a volume or pool name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
///
/// The rule keeps names safe as path components and mount point names: no
/// `/`, no `..`-only names, no leading `-` (read as a flag by tools), no
/// control characters.
pub fn validate_name(kind: &str, name: &str) -> Result<(), InvalidInput> {
    let bad = |reason: &str| Err(InvalidInput::new(format!("{kind} name {name:?}"), reason));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("is longer than 128 characters");
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(&format!(
            "contains {c:?}; allowed are letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// A consumer ID (Docker mount ID, CLI mount ID). Printable, no control
/// characters, bounded; it is only ever a key, never a path.
pub fn validate_consumer_id(id: &str) -> Result<(), InvalidInput> {
    // Characters, not bytes: the limit a JSON Schema `maxLength` states.
    if id.chars().count() > 256 {
        return Err(InvalidInput::new(
            "consumer id",
            "is longer than 256 characters",
        ));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(InvalidInput::new(
            "consumer id",
            "contains control characters",
        ));
    }
    Ok(())
}

/// Parse a size strictly: digits, optionally followed by a binary unit.
///
/// `64M` is 64 MiB, as Docker and REX-Ray users write it. Accepted units:
/// `B`, `K`/`KB`/`Ki`/`KiB`, and the same for M, G, T, P. No decimals, no
/// exponents, no signs, no zero.
pub fn parse_size(s: &str) -> Result<u64, InvalidInput> {
    let bad = |reason: &str| Err(InvalidInput::new(format!("size {s:?}"), reason));
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return bad("must start with a number (for example 64M or 10G)");
    }
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KB" | "Ki" | "KiB" | "k" => 10,
        "M" | "MB" | "Mi" | "MiB" => 20,
        "G" | "GB" | "Gi" | "GiB" => 30,
        "T" | "TB" | "Ti" | "TiB" => 40,
        "P" | "PB" | "Pi" | "PiB" => 50,
        _ => return bad("has an unknown unit; use B, K, M, G, T or P (binary units)"),
    };
    let n: u64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => return bad("is too large"),
    };
    if n == 0 {
        return bad("must be greater than zero");
    }
    match n.checked_mul(1u64 << shift) {
        Some(v) => Ok(v),
        None => bad("is too large"),
    }
}

/// Format bytes for people: the largest binary unit that divides evenly,
/// else one decimal in the largest unit below the value.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let div = 1u64 << (10 * unit);
    if bytes.is_multiple_of(div) {
        format!("{}{}", bytes / div, UNITS[unit])
    } else {
        #[allow(clippy::cast_precision_loss)] // display only
        let v = bytes as f64 / div as f64;
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Filesystem of a block-backed volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

/// xfs refuses filesystems below 300 MiB.
pub const XFS_MIN_SIZE: u64 = 300 << 20;
/// Below this ext4 has no room for a journal worth having.
pub const EXT4_MIN_SIZE: u64 = 8 << 20;

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
    pub fn min_size(self) -> u64 {
        match self {
            FsType::Ext4 => EXT4_MIN_SIZE,
            FsType::Xfs => XFS_MIN_SIZE,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(InvalidInput::new(
                format!("filesystem {s:?}"),
                "is not supported; use ext4 or xfs",
            )),
        }
    }
}

/// Which backend a pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Sparse image files on loop devices: hard size limits.
    Loop,
    /// Plain directories: the size is advisory.
    Dir,
    /// Subvolumes of a btrfs filesystem with qgroup limits: hard size
    /// limits, O(1) snapshots and clones, disks added online.
    Btrfs,
    /// RBD images in a Ceph pool: shared storage, mapped on whichever node
    /// uses the volume, one writer at a time.
    Rbd,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Loop => "loop",
            DriverKind::Dir => "dir",
            DriverKind::Btrfs => "btrfs",
            DriverKind::Rbd => "rbd",
        }
    }
}

impl FromStr for DriverKind {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "loop" => Ok(DriverKind::Loop),
            "dir" => Ok(DriverKind::Dir),
            "btrfs" => Ok(DriverKind::Btrfs),
            "rbd" => Ok(DriverKind::Rbd),
            _ => Err(InvalidInput::new(
                format!("driver {s:?}"),
                "is not supported; use loop, dir, btrfs or rbd",
            )),
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pool: where volumes of one driver live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    pub driver: DriverKind,
    /// Directory holding the pool's images or directories.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Provisioned bytes may reach this multiple of what the backing
    /// filesystem can hold. 1.0 means every byte promised can be written.
    pub overcommit_ratio: f64,
    pub created_at: DateTime<Utc>,
    /// When and how the pool adds capacity by itself.
    #[serde(default)]
    pub growth: PoolGrowth,
    /// The disks of a filesystem ballast made or extended (btrfs); empty
    /// for pools on a plain directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<PoolDisk>,
    /// A disk being added: recorded before the add's first side effect and
    /// cleared with its result, so a crash in between is reconciled at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adding: Option<PoolDisk>,
    /// The filesystem was mounted by someone else and adopted (`--path`):
    /// ballast never mounts or unmounts it.
    #[serde(default)]
    pub adopted: bool,
    #[serde(default)]
    pub state: PoolState,
    /// The node whose storage this is (every pool of today's drivers is
    /// node-local). None in records from before nodes: the node that opens
    /// them takes them as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// An rbd pool's cluster: shared by every node, so `node` is None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephPool>,
}

/// Where an rbd pool's images are. The paths must be the same on every
/// node that maps its volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CephPool {
    #[schema(value_type = String)]
    pub conf: PathBuf,
    /// The RADOS pool holding the images.
    pub pool: String,
    /// The cephx id without `client.` [default: admin].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub keyring: Option<PathBuf>,
    /// The filesystem of volumes that ask for none [default: ext4].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsType>,
}

impl Pool {
    /// Whether this pool's storage is on `node` (a shared pool's is on
    /// every node).
    pub fn is_on(&self, node: &str) -> bool {
        self.is_shared() || self.node.as_deref().is_none_or(|n| n == node)
    }

    /// Storage every node reaches (rbd): no node owns it.
    pub fn is_shared(&self) -> bool {
        self.ceph.is_some()
    }

    /// A ready pool with default growth settings and no disks of its own.
    pub fn new(name: &str, driver: DriverKind, path: PathBuf, overcommit_ratio: f64) -> Self {
        Pool {
            name: name.to_string(),
            driver,
            path,
            overcommit_ratio,
            created_at: Utc::now(),
            growth: PoolGrowth::default(),
            disks: Vec::new(),
            adding: None,
            node: None,
            ceph: None,
            adopted: false,
            state: PoolState::Ready,
        }
    }

    /// Bytes of the pool's own disks.
    pub fn disks_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size_bytes).sum()
    }
}

/// Whether a pool is usable or still being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    #[default]
    Ready,
    /// A create is in flight (or was interrupted: undone at start).
    Creating,
}

/// Used percentage of a pool above which its watcher acts, unless set.
pub const DEFAULT_HIGH_WATERMARK: u8 = 80;

/// The smallest disk ballast puts in a btrfs pool: mkfs.btrfs needs about
/// 109 MiB per device (DUP metadata and system chunks).
pub const BTRFS_MIN_DISK_SIZE: u64 = 128 << 20;

/// A pool's self-remediation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolGrowth {
    /// Used percentage (1-99) above which the watcher adds capacity, or
    /// warns when it cannot.
    #[serde(default = "default_high_watermark")]
    pub high_watermark: u8,
    /// Size of each disk file the watcher adds; None: no disk files.
    #[serde(default)]
    pub grow_step: Option<u64>,
    /// The pool never grows past this many bytes of disks.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Where new disk files go (the directory of `--disk-file`).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub disk_dir: Option<PathBuf>,
    /// Block devices the watcher may add, in order; each leaves the list
    /// when it joins the pool.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub spare_disks: Vec<PathBuf>,
}

fn default_high_watermark() -> u8 {
    DEFAULT_HIGH_WATERMARK
}

impl Default for PoolGrowth {
    fn default() -> Self {
        PoolGrowth {
            high_watermark: DEFAULT_HIGH_WATERMARK,
            grow_step: None,
            max_size: None,
            disk_dir: None,
            spare_disks: Vec::new(),
        }
    }
}

/// What a pool disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// An image file ballast made, attached on a loop device.
    File,
    /// A block device given by the operator.
    Device,
}

/// One disk of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolDisk {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub kind: DiskKind,
    pub size_bytes: u64,
}

/// The largest overcommit ratio: past it a pool's promise means nothing,
/// and capacity figures would only overflow.
pub const MAX_OVERCOMMIT_RATIO: f64 = 100.0;

/// Check an overcommit ratio: a finite number, 0 < r <= 100.
pub fn validate_overcommit_ratio(r: f64) -> Result<f64, InvalidInput> {
    if r.is_finite() && r > 0.0 && r <= MAX_OVERCOMMIT_RATIO {
        Ok(r)
    } else {
        Err(InvalidInput::new(
            format!("overcommit ratio {r}"),
            format!("must be a number above 0 and at most {MAX_OVERCOMMIT_RATIO}"),
        ))
    }
}

/// `bytes` times an overcommit ratio, saturating: a ratio outside
/// (0, [`MAX_OVERCOMMIT_RATIO`]] (a record older than the check) is taken
/// as the nearest bound, and no product exceeds `u64::MAX`.
pub fn overcommitted(bytes: u64, ratio: f64) -> u64 {
    let r = if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, MAX_OVERCOMMIT_RATIO)
    };
    // In millionths, exactly in u128: 2^64 * 10^8 fits with room to spare.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micros = (r * 1e6).round() as u128;
    u64::try_from(u128::from(bytes) * micros / 1_000_000).unwrap_or(u64::MAX)
}

/// Parse a high watermark: `80%` or `80`, from 1% to 99%.
pub fn parse_watermark(s: &str) -> Result<u8, InvalidInput> {
    let digits = s.strip_suffix('%').unwrap_or(s);
    let bad = || {
        InvalidInput::new(
            format!("high watermark {s:?}"),
            "must be a percentage between 1% and 99%, such as 80%",
        )
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match digits.parse::<u8>() {
        Ok(n) if (1..=99).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

/// Capacity figures for a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct PoolCapacity {
    /// Bytes the pool can back: what its volumes already occupy plus the
    /// backing filesystem's free space.
    pub capacity_bytes: u64,
    /// Bytes the pool's volumes occupy on the backing filesystem.
    pub used_bytes: u64,
    /// Sum of the sizes of the pool's volumes and snapshots (nominal).
    pub provisioned_bytes: u64,
    /// What the pool's volumes and snapshots are charged, which admission
    /// counts: each at its size, except copy-on-write snapshots and clones
    /// (btrfs, reflinked images), at the bytes they hold exclusively now.
    #[serde(default)]
    pub exclusive_bytes: u64,
    /// Bytes a new volume may still be given under the overcommit ratio.
    pub available_bytes: u64,
}

/// The kind of consumer holding a volume mounted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerKind {
    /// A Docker mount ID; counted, since `docker cp` reuses a running
    /// container's ID for a Mount/Unmount pair of its own.
    Docker,
    /// A CSI target path; set-like.
    Csi,
    /// A CLI mount (`ballast volume mount --id`); set-like.
    Cli,
}

impl ConsumerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Docker => "docker",
            ConsumerKind::Csi => "csi",
            ConsumerKind::Cli => "cli",
        }
    }
    /// Whether repeated mounts with one ID stack up (and need as many unmounts).
    pub fn counted(self) -> bool {
        matches!(self, ConsumerKind::Docker)
    }
}

/// Who wants a volume mounted: a kind and an opaque ID ("" for anonymous).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct ConsumerRef {
    pub kind: ConsumerKind,
    pub id: String,
}

impl ConsumerRef {
    pub fn new(kind: ConsumerKind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }
    /// The key under which this consumer is recorded on its volume.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

/// A recorded consumer of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Consumer {
    pub kind: ConsumerKind,
    pub id: String,
    /// How many mounts with this ID are outstanding (1 for set-like kinds).
    pub count: u32,
    pub since: DateTime<Utc>,
    /// Where the volume is bind-mounted for this consumer (CSI publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub target: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    /// Per-mount flags of the consumer's own mount.
    #[serde(default, skip_serializing_if = "MountFlags::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub flags: MountFlags,
    /// What the consumer's target asks of the volume's other targets.
    #[serde(default, skip_serializing_if = "Sharing::is_unspecified")]
    pub sharing: Sharing,
}

/// Whether a workload's target may share the volume with other workloads'
/// targets (CSI: SINGLE_NODE_MULTI_WRITER or a reader) or must be its only
/// one (SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_WRITER). A target that says
/// nothing (a staging path, a node-level mount) neither asks nor counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    #[default]
    Unspecified,
    Shared,
    Exclusive,
}

impl Sharing {
    pub fn is_unspecified(&self) -> bool {
        *self == Sharing::Unspecified
    }
}

/// A consumer's own mount of the volume: a bind mount of the staging path
/// (or, for a block volume, of its device) onto `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTarget {
    pub path: PathBuf,
    pub read_only: bool,
    #[serde(default)]
    pub flags: MountFlags,
}

/// Flags of one mount point that a consumer may ask for on its own bind
/// mount (CSI `mount_flags`, a StorageClass's `mountOptions`). They are
/// per-mount in the kernel, so one consumer's flags never change another's
/// view of the volume; filesystem options (`discard`, `data=...`) would,
/// and are refused. Recorded as their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct MountFlags {
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub atime: Option<AtimeFlag>,
    pub nodiratime: bool,
}

/// How a mount updates access times (one at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtimeFlag {
    Noatime,
    Relatime,
    Strictatime,
}

impl MountFlags {
    /// The flags ballast applies, as `mount_flags` names them.
    pub const SUPPORTED: &'static [&'static str] = &[
        "nodev",
        "nosuid",
        "noexec",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "ro",
        "rw",
        "defaults",
    ];

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Parse `mount_flags`; also returns whether `ro` was among them. `rw`
    /// and `defaults` ask for nothing. Unknown, repeated-conflicting or
    /// filesystem-level flags are refused by name.
    pub fn parse<S: AsRef<str>>(flags: &[S]) -> Result<(MountFlags, bool), InvalidInput> {
        let mut out = MountFlags::default();
        let mut read_only = false;
        for flag in flags {
            let flag = flag.as_ref();
            let atime = |out: &mut MountFlags, a: AtimeFlag| match out.atime {
                Some(prev) if prev != a => Err(InvalidInput::new(
                    format!("mount flag {flag:?}"),
                    "conflicts with another access-time flag",
                )),
                _ => {
                    out.atime = Some(a);
                    Ok(())
                }
            };
            match flag {
                "nodev" => out.nodev = true,
                "nosuid" => out.nosuid = true,
                "noexec" => out.noexec = true,
                "nodiratime" => out.nodiratime = true,
                "noatime" => atime(&mut out, AtimeFlag::Noatime)?,
                "relatime" => atime(&mut out, AtimeFlag::Relatime)?,
                "strictatime" => atime(&mut out, AtimeFlag::Strictatime)?,
                "ro" => read_only = true,
                "rw" | "defaults" => {}
                other => {
                    return Err(InvalidInput::new(
                        format!("mount flag {other:?}"),
                        format!(
                            "is not supported: ballast applies per-mount flags only ({})",
                            Self::SUPPORTED.join(", ")
                        ),
                    ))
                }
            }
        }
        if read_only && flags.iter().any(|f| f.as_ref() == "rw") {
            return Err(InvalidInput::new(
                "mount flags \"ro\" and \"rw\"",
                "ask for opposite things",
            ));
        }
        Ok((out, read_only))
    }

    /// The flags' names, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.nodev {
            v.push("nodev");
        }
        if self.nosuid {
            v.push("nosuid");
        }
        if self.noexec {
            v.push("noexec");
        }
        match self.atime {
            Some(AtimeFlag::Noatime) => v.push("noatime"),
            Some(AtimeFlag::Relatime) => v.push("relatime"),
            Some(AtimeFlag::Strictatime) => v.push("strictatime"),
            None => {}
        }
        if self.nodiratime {
            v.push("nodiratime");
        }
        v
    }
}

/// From a stored record: names this version does not know (a newer one
/// wrote them) are skipped rather than making the record unreadable.
impl From<Vec<String>> for MountFlags {
    fn from(v: Vec<String>) -> Self {
        let known: Vec<&String> = v
            .iter()
            .filter(|n| Self::SUPPORTED.contains(&n.as_str()))
            .collect();
        MountFlags::parse(&known)
            .map(|(f, _)| f)
            .unwrap_or_default()
    }
}

impl From<MountFlags> for Vec<String> {
    fn from(f: MountFlags) -> Self {
        f.names().into_iter().map(String::from).collect()
    }
}

/// Where a volume is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// An operation is creating it.
    Creating,
    /// Exists, not mounted on this host.
    Available,
    /// Attached and mounted at its staging path.
    Mounted,
    /// A resize is in flight.
    Resizing,
    /// A delete is in flight.
    Deleting,
    /// Held for the final pass of a move: nothing may mount it.
    Moving,
}

impl VolumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::Mounted => "mounted",
            VolumeState::Resizing => "resizing",
            VolumeState::Deleting => "deleting",
            VolumeState::Moving => "moving",
        }
    }
}

/// Where a volume is attached and mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Staging {
    /// The loop device, for block-backed volumes.
    #[schema(value_type = Option<String>)]
    pub device: Option<PathBuf>,
    /// Where the filesystem is mounted; what consumers bind or use.
    #[schema(value_type = String)]
    pub mountpoint: PathBuf,
    /// Shared storage: the cluster clients this node's mapping registered,
    /// what a node taking the volume over fences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
}

/// A volume record as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    /// Stable unique ID; names the backing image so a reused name never
    /// meets another volume's data.
    pub id: String,
    pub name: String,
    pub pool: String,
    pub driver: DriverKind,
    pub size_bytes: u64,
    /// None for `dir` volumes.
    pub fs: Option<FsType>,
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub state: VolumeState,
    /// Whether the filesystem has been made (it is made on first mount).
    pub formatted: bool,
    /// A raw block volume: never formatted or mounted; consumers get the
    /// device itself.
    #[serde(default)]
    pub block: bool,
    /// The image was grown while unmounted: grow the filesystem on next mount.
    #[serde(default)]
    pub fs_grow_pending: bool,
    /// Grow online before the filesystem fills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autogrow: Option<Autogrow>,
    /// What the volume was copied from; a repeated create naming a source
    /// must name this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CreateSource>,
    /// A copy-on-write clone (btrfs snapshot, reflinked image): it shares
    /// its source's extents and is charged only what it holds exclusively.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cow: bool,
    /// Where the volume lives: the node of its pool (None for a shared
    /// pool, and in records from before nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// This node's attachment: where it is staged here. Stored apart from
    /// the volume, in `attachment/<name>/<node>`; the record in `vol/`
    /// holds none.
    pub staging: Option<Staging>,
    /// Keyed by [`ConsumerRef::key`]. This node's, as `staging`.
    pub consumers: BTreeMap<String, Consumer>,
}

/// What happens to a volume on one node: its staging and its consumers
/// there (`attachment/<volume>/<node>`). Only that node writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// The volume's ID: an attachment never outlives into a re-created name.
    pub volume_id: String,
    pub node: String,
    /// The node's boot when this was written.
    pub boot_id: String,
    pub staging: Option<Staging>,
    pub consumers: BTreeMap<String, Consumer>,
}

impl Volume {
    /// A volume known by its name, id and pool only: enough for a driver
    /// to find its data (what a move left behind).
    pub fn placeholder(name: &str, id: &str, pool: &str) -> Volume {
        Volume {
            id: id.to_string(),
            name: name.to_string(),
            pool: pool.to_string(),
            driver: DriverKind::Loop,
            size_bytes: 0,
            fs: None,
            labels: BTreeMap::new(),
            created_at: Utc::now(),
            state: VolumeState::Available,
            formatted: false,
            block: false,
            fs_grow_pending: false,
            autogrow: None,
            source: None,
            cow: false,
            node: None,
            staging: None,
            consumers: BTreeMap::new(),
        }
    }

    /// Whether the volume's storage is on `node` (or shared).
    pub fn is_on(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }

    pub fn mountpoint(&self) -> Option<&std::path::Path> {
        self.staging.as_ref().map(|s| s.mountpoint.as_path())
    }

    /// Whether the volume is at `path` on this host: its staging path or a
    /// consumer's target.
    pub fn is_at(&self, path: &std::path::Path) -> bool {
        self.mountpoint() == Some(path)
            || self
                .consumers
                .values()
                .any(|c| c.target.as_deref() == Some(path))
    }

    /// The other consumer (not `key`) whose target rules out a new target
    /// asking for `sharing`: an exclusive target is the volume's only
    /// workload, so it refuses a second one and is refused while another is
    /// there.
    pub fn sharing_conflict(&self, key: &str, sharing: Sharing) -> Option<&Consumer> {
        if sharing.is_unspecified() {
            return None;
        }
        self.consumers.iter().find_map(|(k, c)| {
            let clash = k != key
                && c.target.is_some()
                && !c.sharing.is_unspecified()
                && (sharing == Sharing::Exclusive || c.sharing == Sharing::Exclusive);
            clash.then_some(c)
        })
    }
}

/// A point-in-time copy of a volume, kept in the volume's pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// Stable unique ID; names the snapshot's storage.
    pub id: String,
    pub name: String,
    /// The volume it was taken from (which may since be gone).
    pub source_volume: String,
    pub source_volume_id: String,
    pub pool: String,
    pub size_bytes: u64,
    pub fs: Option<FsType>,
    #[serde(default)]
    pub block: bool,
    /// Whether the source had a filesystem yet.
    pub formatted: bool,
    pub created_at: DateTime<Utc>,
    /// False while the copy is being made.
    pub ready: bool,
    /// A copy-on-write snapshot (btrfs, a reflinked image): it shares its
    /// source's extents and is charged only what it holds exclusively; a
    /// full copy is charged its size.
    #[serde(default)]
    pub cow: bool,
}

/// How much an autogrowing volume grows each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrowStep {
    /// A percentage of the current size.
    Percent(u32),
    Bytes(u64),
}

/// Grow a mounted volume online when its filesystem use crosses
/// `threshold_pct`, by `step`, never past `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Autogrow {
    pub threshold_pct: u8,
    pub step: GrowStep,
    pub max_bytes: u64,
}

impl Autogrow {
    /// The size after one step from `current`, in 4 KiB units, capped at max.
    pub fn next_size(&self, current: u64) -> u64 {
        let step = match self.step {
            GrowStep::Bytes(b) => b,
            GrowStep::Percent(p) => current / 100 * u64::from(p),
        };
        current
            .saturating_add(step.max(4096))
            .min(self.max_bytes)
            .next_multiple_of(4096)
            .min(self.max_bytes.next_multiple_of(4096))
    }
}

impl fmt::Display for Autogrow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            GrowStep::Percent(p) => write!(
                f,
                "{}%:+{p}%:max={}",
                self.threshold_pct,
                format_size(self.max_bytes)
            ),
            GrowStep::Bytes(b) => write!(
                f,
                "{}%:+{}:max={}",
                self.threshold_pct,
                format_size(b),
                format_size(self.max_bytes)
            ),
        }
    }
}

/// Parse `THRESHOLD%:+STEP:max=SIZE`, e.g. `90%:+20%:max=10G` or
/// `80%:+1G:max=100G`.
pub fn parse_autogrow(s: &str) -> Result<Autogrow, InvalidInput> {
    let bad = |reason: &str| InvalidInput::new(format!("autogrow {s:?}"), reason.to_string());
    let parts: Vec<&str> = s.split(':').collect();
    let [threshold, step, max] = parts[..] else {
        return Err(bad(
            "use THRESHOLD%:+STEP:max=SIZE, for example 90%:+20%:max=10G",
        ));
    };
    let threshold: u8 = threshold
        .strip_suffix('%')
        .and_then(|t| t.parse().ok())
        .filter(|t| (1..=99).contains(t))
        .ok_or_else(|| bad("the threshold must be a percentage from 1% to 99%"))?;
    let step = step
        .strip_prefix('+')
        .ok_or_else(|| bad("the step must start with '+', for example +20% or +1G"))?;
    let step = match step.strip_suffix('%') {
        Some(p) => GrowStep::Percent(
            p.parse()
                .ok()
                .filter(|p| (1..=1000).contains(p))
                .ok_or_else(|| bad("a percentage step must be from 1% to 1000%"))?,
        ),
        None => GrowStep::Bytes(parse_size(step).map_err(|e| bad(&format!("step: {}", e.reason)))?),
    };
    let max = max
        .strip_prefix("max=")
        .ok_or_else(|| bad("the last part must be max=SIZE"))?;
    let max_bytes = parse_size(max).map_err(|e| bad(&format!("max: {}", e.reason)))?;
    Ok(Autogrow {
        threshold_pct: threshold,
        step,
        max_bytes,
    })
}

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreateSource {
    Snapshot(String),
    Volume(String),
    /// Restored from a backup on a target.
    Backup {
        target: String,
        id: String,
    },
}

impl CreateSource {
    /// The snapshot's or volume's name.
    pub fn name(&self) -> &str {
        match self {
            CreateSource::Snapshot(n) | CreateSource::Volume(n) => n,
            CreateSource::Backup { id, .. } => id,
        }
    }
}

/// Labels given as `K=V`: the key is non-empty and has no control characters.
pub fn parse_label(s: &str) -> Result<(String, String), InvalidInput> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(InvalidInput::new(
            format!("label {s:?}"),
            "must have the form KEY=VALUE",
        ));
    };
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

pub fn validate_label(k: &str, v: &str) -> Result<(), InvalidInput> {
    if k.is_empty() || k.chars().count() > 256 || k.chars().any(|c| c.is_control() || c == '=') {
        return Err(InvalidInput::new(
            format!("label key {k:?}"),
            "must be 1 to 256 characters without '=' or control characters",
        ));
    }
    if v.chars().count() > 4096 || v.chars().any(|c| c.is_control()) {
        return Err(InvalidInput::new(
            format!("label {k:?} value"),
            "must be at most 4096 characters without control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "A9", "es-1-data", "x.y_z", &"a".repeat(128)] {
            validate_name("volume", ok).unwrap();
        }
        let long = "a".repeat(129);
        for bad in [
            "", "../x", "a/b", "..", ".x", "-x", "_x", "a\0b", "a\tb", "a\nb", "a b", "a:b", "é",
            &long,
        ] {
            assert!(validate_name("volume", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn overcommit_ratios() {
        for ok in [0.001, 0.5, 1.0, 2.5, 100.0] {
            assert_eq!(validate_overcommit_ratio(ok).unwrap(), ok);
        }
        for bad in [
            0.0,
            -0.0,
            -1.0,
            100.000_001,
            101.0,
            1e308,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            let e = validate_overcommit_ratio(bad).unwrap_err();
            assert!(e.reason.contains("at most 100"), "{bad}: {e}");
        }
    }

    #[test]
    fn overcommitted_bytes_saturate() {
        assert_eq!(overcommitted(1 << 30, 1.0), 1 << 30);
        assert_eq!(overcommitted(1 << 30, 2.5), 5 << 29);
        assert_eq!(overcommitted(1000, 0.5), 500);
        // Out-of-range ratios of old records are clamped, never overflow.
        assert_eq!(overcommitted(1 << 30, 1e308), 100 << 30);
        assert_eq!(overcommitted(1 << 30, f64::INFINITY), 100 << 30);
        assert_eq!(overcommitted(1 << 30, -3.0), 0);
        assert_eq!(overcommitted(1 << 30, f64::NAN), 1 << 30);
        assert_eq!(overcommitted(u64::MAX, 100.0), u64::MAX);
        assert_eq!(overcommitted(u64::MAX, 1.0), u64::MAX);
        assert_eq!(overcommitted(u64::MAX / 50, 100.0), u64::MAX);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2Ti").unwrap(), 2 << 40);
        for bad in [
            "",
            "0",
            "0M",
            "-1",
            "10Q",
            "1e3",
            "1.5G",
            " 1G",
            "1G ",
            "+1",
            "M",
            "99999999999P",
            "18446744073709551616",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn format() {
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1536 << 20), "1.5GiB");
        assert_eq!(format_size(12), "12B");
    }

    #[test]
    fn autogrow_specs() {
        let a = parse_autogrow("80%:+50%:max=256M").unwrap();
        assert_eq!(a.threshold_pct, 80);
        assert_eq!(a.step, GrowStep::Percent(50));
        assert_eq!(a.max_bytes, 256 << 20);
        assert_eq!(a.next_size(64 << 20), 96 << 20);
        assert_eq!(a.next_size(200 << 20), 256 << 20);
        assert_eq!(a.next_size(256 << 20), 256 << 20);
        let b = parse_autogrow("90%:+1G:max=10G").unwrap();
        assert_eq!(b.next_size(1 << 30), 2 << 30);
        assert_eq!(parse_autogrow(&b.to_string()).unwrap(), b);
        for bad in [
            "",
            "80%",
            "80:+1G:max=2G",
            "0%:+1G:max=2G",
            "100%:+1G:max=2G",
            "80%:1G:max=2G",
            "80%:+0:max=2G",
            "80%:+1G:2G",
            "80%:+1G:max=",
            "80%:+1Q:max=2G",
            "80%:+0%:max=1G",
            "80%:+1G:max=2G:x",
        ] {
            assert!(parse_autogrow(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_label("ab").is_err());
        assert!(parse_label("=b").is_err());
    }

    #[test]
    fn an_exclusive_target_is_a_volumes_only_workload() {
        let consumer = |target: Option<&str>, sharing: Sharing| Consumer {
            kind: ConsumerKind::Csi,
            id: String::new(),
            count: 1,
            since: Utc::now(),
            target: target.map(PathBuf::from),
            read_only: false,
            flags: MountFlags::default(),
            sharing,
        };
        let with = |cs: &[(&str, Option<&str>, Sharing)]| Volume {
            id: "id".into(),
            name: "v".into(),
            pool: "p".into(),
            driver: DriverKind::Loop,
            size_bytes: 1,
            fs: None,
            labels: BTreeMap::new(),
            created_at: Utc::now(),
            state: VolumeState::Mounted,
            formatted: true,
            block: false,
            fs_grow_pending: false,
            autogrow: None,
            source: None,
            cow: false,
            node: None,
            staging: None,
            consumers: cs
                .iter()
                .map(|(k, t, s)| (k.to_string(), consumer(*t, *s)))
                .collect(),
        };
        use Sharing::{Exclusive, Shared, Unspecified};
        // A staging path and a node-level mount neither ask nor count.
        let staged = with(&[
            ("csi:stage:/s", Some("/s"), Unspecified),
            ("cli:", None, Unspecified),
        ]);
        for s in [Exclusive, Shared, Unspecified] {
            assert!(staged.sharing_conflict("csi:/t2", s).is_none(), "{s:?}");
        }
        let shared = with(&[("csi:/t1", Some("/t1"), Shared)]);
        assert!(shared.sharing_conflict("csi:/t2", Shared).is_none());
        assert!(shared.sharing_conflict("csi:/t2", Exclusive).is_some());
        let alone = with(&[("csi:/t1", Some("/t1"), Exclusive)]);
        assert!(alone.sharing_conflict("csi:/t2", Shared).is_some());
        assert!(alone.sharing_conflict("csi:/t2", Exclusive).is_some());
        assert!(alone.sharing_conflict("csi:/t2", Unspecified).is_none());
        // The consumer itself, published again, is no second workload.
        assert!(alone.sharing_conflict("csi:/t1", Exclusive).is_none());
    }
}
