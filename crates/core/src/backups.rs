//! Backups to object storage: the targets, the record of a backup in
//! flight, and the trait of the engine that stores chunks (`crates/backup`).
//!
//! The target is the truth about which backups exist: a backup is its
//! manifest there, written last, so one without a manifest does not exist.
//! The store keeps the targets (`backup-target/<name>`), the backups in
//! flight (`backup/<id>`, written by the requester, then only by the
//! volume's node, which does the work) and the schedules
//! (`backup-schedule/<volume>`).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::desired::RemoteError;
use crate::driver::DriverError;
use crate::model::{DriverKind, FsType};
use crate::progress::Progress;

pub const TARGET_PREFIX: &str = "backup-target/";
pub const BACKUP_PREFIX: &str = "backup/";
pub const SCHEDULE_PREFIX: &str = "backup-schedule/";

pub fn target_key(name: &str) -> String {
    format!("{TARGET_PREFIX}{name}")
}

pub fn backup_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}{id}")
}

pub fn schedule_key(volume: &str) -> String {
    format!("{SCHEDULE_PREFIX}{volume}")
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TargetLocation {
    /// An S3 bucket (AWS, Ceph's RADOS Gateway, MinIO...).
    S3 {
        /// The endpoint, e.g. `http://127.0.0.1:7480`.
        url: String,
        bucket: String,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        access_key: Option<String>,
        /// Kept in the store, which only members of the cluster read; never
        /// shown.
        #[serde(default)]
        #[schema(ignore)]
        secret_key: Option<String>,
    },
    /// A directory (a local disk, an NFS mount).
    Path {
        #[schema(value_type = String)]
        dir: PathBuf,
    },
}

/// `backup-target/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupTarget {
    pub name: String,
    pub location: TargetLocation,
    pub created_at: DateTime<Utc>,
}

impl BackupTarget {
    /// The target as shown: the secret key replaced by whether there is one.
    pub fn redacted(&self) -> BackupTarget {
        let mut t = self.clone();
        if let TargetLocation::S3 { secret_key, .. } = &mut t.location {
            if secret_key.is_some() {
                *secret_key = Some("(set)".into());
            }
        }
        t
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupPhase {
    /// Asked for; the volume's node has not started it.
    Pending,
    /// Snapshot taken (or being taken); chunks going up.
    Running,
    /// The manifest is written: the backup exists.
    Done,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes per second so far.
    pub rate: u64,
    /// Bytes of chunk data sent to the target (chunks it already held
    /// are not sent again).
    pub uploaded_bytes: u64,
}

/// `backup/<id>`: a backup asked for, running, or just finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupRecord {
    pub id: String,
    pub volume: String,
    pub volume_id: String,
    pub target: String,
    /// The node that does it: the volume's (or, for shared storage, the
    /// requester's).
    pub node: String,
    pub requested_at: DateTime<Utc>,
    /// The run fails with a timeout event past this.
    pub deadline: DateTime<Utc>,
    pub phase: BackupPhase,
    #[serde(default)]
    pub progress: BackupProgress,
    #[serde(default)]
    pub failed: Option<RemoteError>,
    /// Made by a schedule (retention applies after it).
    #[serde(default)]
    pub scheduled: bool,
    pub updated_at: DateTime<Utc>,
}

impl BackupRecord {
    pub fn in_flight(&self) -> bool {
        matches!(self.phase, BackupPhase::Pending | BackupPhase::Running)
    }
}

/// `backup-schedule/<volume>`: back the volume up every `every_secs` and
/// keep the newest `keep` of its scheduled backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupSchedule {
    pub volume: String,
    pub target: String,
    pub every_secs: u64,
    pub keep: u32,
    /// Each run's deadline.
    pub deadline_secs: u64,
    #[serde(default)]
    pub last_run: Option<DateTime<Utc>>,
}

/// What a backup is of, as its manifest records it (enough to make the
/// volume again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupMeta {
    pub id: String,
    pub volume: String,
    pub volume_id: String,
    pub driver: DriverKind,
    pub size_bytes: u64,
    pub fs: Option<FsType>,
    pub block: bool,
    pub formatted: bool,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub scheduled: bool,
}

/// A backup as the target holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupInfo {
    #[serde(flatten)]
    pub meta: BackupMeta,
    /// The target's name (not in the manifest: filled in when listed).
    #[serde(default)]
    pub target: String,
    pub chunk_size: u64,
    /// Chunks the backup refers to (zero chunks are not stored).
    pub chunks: u64,
    pub data_bytes: u64,
    /// What this backup sent: the chunks the target did not hold yet.
    pub uploaded_bytes: u64,
    pub finished_at: DateTime<Utc>,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcStats {
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
    pub chunks_kept: u64,
}

/// A block device or image read and written at offsets (rbd).
pub trait BlockIo: Send {
    fn size(&self) -> u64;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// A volume's or snapshot's data as a backup reads it or a restore writes
/// it.
pub enum VolumeData {
    /// An image file (loop): fixed chunks of its bytes.
    Image(PathBuf),
    /// A directory tree (btrfs subvolume, dir): each file in fixed chunks.
    Tree(PathBuf),
    Block(Box<dyn BlockIo>),
}

impl std::fmt::Debug for VolumeData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeData::Image(p) => write!(f, "Image({})", p.display()),
            VolumeData::Tree(p) => write!(f, "Tree({})", p.display()),
            VolumeData::Block(b) => write!(f, "Block({} bytes)", b.size()),
        }
    }
}

/// When a call must give up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    pub fn left(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// How a backup reports and is stopped.
pub struct BackupRun<'a> {
    /// Bytes read of the volume's data.
    pub progress: &'a Progress,
    /// Called with the bytes sent so far, after each chunk that went up.
    pub uploaded: &'a dyn Fn(u64),
    pub cancel: &'a AtomicBool,
    pub deadline: Deadline,
}

/// The chunk store (`crates/backup`). Every call ends by `deadline` (or
/// when `cancel` is set) with an error.
pub trait BackupEngine: Send + Sync {
    /// Reach the target and list it: bad credentials, a missing bucket or
    /// an unreachable gateway fail here.
    fn check(&self, target: &BackupTarget, deadline: Deadline) -> Result<(), DriverError>;
    /// Store `data` as backup `meta.id`: the chunks the target lacks, then
    /// the manifest.
    fn backup(
        &self,
        target: &BackupTarget,
        meta: &BackupMeta,
        data: &mut VolumeData,
        run: &BackupRun<'_>,
    ) -> Result<BackupInfo, DriverError>;
    /// Write backup `id` into `data` (a new, empty volume of at least its
    /// size), checking every chunk's hash.
    fn restore(
        &self,
        target: &BackupTarget,
        id: &str,
        data: &mut VolumeData,
        progress: &Progress,
        deadline: Deadline,
    ) -> Result<BackupInfo, DriverError>;
    fn get(
        &self,
        target: &BackupTarget,
        id: &str,
        deadline: Deadline,
    ) -> Result<BackupInfo, DriverError>;
    fn list(
        &self,
        target: &BackupTarget,
        deadline: Deadline,
    ) -> Result<Vec<BackupInfo>, DriverError>;
    /// Remove the manifest of `id`.
    fn delete(
        &self,
        target: &BackupTarget,
        id: &str,
        deadline: Deadline,
    ) -> Result<(), DriverError>;
    /// Remove the chunks no manifest refers to, but for those written
    /// since `keep_since` (a backup in flight may be about to refer to
    /// them).
    fn gc(
        &self,
        target: &BackupTarget,
        keep_since: Option<DateTime<Utc>>,
        deadline: Deadline,
    ) -> Result<GcStats, DriverError>;
}

/// A new backup's id: its time first, so ids sort by age.
pub fn new_backup_id(now: DateTime<Utc>) -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &rand[..8])
}

/// `30s`, `15m`, `1h`, `2d`: a positive whole number and one unit.
pub fn parse_interval(s: &str) -> Result<Duration, crate::model::InvalidInput> {
    use crate::model::InvalidInput;
    let bad = || {
        InvalidInput::new(
            format!("interval {s:?}"),
            "must be a positive whole number with a unit s, m, h or d (e.g. 1h)",
        )
    };
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()]
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(bad)?;
    if !s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .filter(|secs| *secs <= 366 * 86400)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_strictly() {
        assert_eq!(parse_interval("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_interval("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_interval("2d").unwrap(), Duration::from_secs(172800));
        for bad in [
            "", "h", "0h", "-1h", "+1h", "1", "1hh", "1.5h", "1 h", "999d", "1w",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_backup_id("2026-01-02T03:04:05Z".parse().unwrap());
        let b = new_backup_id("2026-01-02T03:04:06Z".parse().unwrap());
        assert!(a < b);
        assert!(a.starts_with("20260102T030405Z-"));
    }

    #[test]
    fn the_secret_is_never_shown() {
        let t = BackupTarget {
            name: "t".into(),
            location: TargetLocation::S3 {
                url: "http://x".into(),
                bucket: "b".into(),
                region: None,
                access_key: Some("a".into()),
                secret_key: Some("hunter2".into()),
            },
            created_at: Utc::now(),
        };
        assert!(!serde_json::to_string(&t.redacted())
            .unwrap()
            .contains("hunter2"));
    }
}
