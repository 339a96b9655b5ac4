//! Moving a node-local volume to another node (or pool): the record that
//! drives it, and the traits of the stream that carries its data.
//!
//! `move/<volume>` is written by the requester and from then on only by the
//! volume's node (the source), which does the whole move: it streams the
//! data to the target node's transfer endpoint, stops writers for the final
//! pass, and switches the volume's placement in one transaction once the
//! target has read back and verified every checksum. The target writes no
//! record: it accepts a stream only for a move its copy of the store shows,
//! carrying that move's secret, and keeps a local journal of what it
//! received (see `service/moves.rs`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::desired::RemoteError;
use crate::driver::DriverError;
use crate::model::DriverKind;
use crate::progress::Progress;

pub const MOVE_PREFIX: &str = "move/";

pub fn move_key(volume: &str) -> String {
    format!("{MOVE_PREFIX}{volume}")
}

/// Where a node accepts move streams: its address and the SHA-256 of its
/// certificate, which the sender pins (the store is the trust root: only a
/// member of the cluster reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferEndpoint {
    pub address: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// Copying while the volume stays in use (first pass).
    Copying,
    /// Writers are kept off (`moving`); the final pass and the check run.
    CuttingOver,
    /// The placement switched; the source still deletes its copy.
    Committed,
    /// Stopped (cancelled, or failed: `failed` says why); the volume is
    /// back as it was on the source.
    Failed,
}

/// Bytes moved in the current pass, for progress bars on any node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes per second over the pass so far.
    pub rate: u64,
    /// 1: the live pass; 2: the final pass.
    pub pass: u32,
}

/// `move/<volume>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveRecord {
    /// One request: the target's journal and the streams name it.
    pub id: String,
    pub volume: String,
    /// The volume's id when the move was asked: a volume of that name made
    /// later is never moved by it.
    pub volume_id: String,
    pub driver: DriverKind,
    pub size_bytes: u64,
    pub from_node: String,
    pub from_pool: String,
    pub to_node: String,
    pub to_pool: String,
    pub requester: String,
    pub requested_at: DateTime<Utc>,
    /// Wait for the volume's writers to go before the final pass, instead
    /// of failing.
    #[serde(default)]
    pub wait_idle: bool,
    /// The target accepts a stream only with this (random, per move).
    #[schema(ignore)]
    pub secret: String,
    pub phase: MovePhase,
    #[serde(default)]
    pub progress: MoveProgress,
    /// An operator asked to stop it.
    #[serde(default)]
    pub cancel: bool,
    #[serde(default)]
    pub failed: Option<RemoteError>,
    /// When the phase last changed.
    pub updated_at: DateTime<Utc>,
}

impl MoveRecord {
    /// Still going: neither committed nor failed.
    pub fn in_flight(&self) -> bool {
        matches!(self.phase, MovePhase::Copying | MovePhase::CuttingOver)
    }
}

/// What the sender says first on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveHello {
    pub move_id: String,
    pub volume: String,
    pub secret: String,
    pub size_bytes: u64,
    pub driver: DriverKind,
}

/// A volume's data as the driver lays it out, on either side of a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveData {
    /// A sparse image file (loop): fixed chunks, each with a checksum.
    Image(PathBuf),
    /// A btrfs subvolume, sent as read-only snapshots: on the source the
    /// volume's subvolume and the directory its move snapshots go to; on
    /// the target the directory `btrfs receive` fills.
    Subvolume { path: PathBuf, work: PathBuf },
}

/// What one pass sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Bytes of data that crossed the wire.
    pub sent_bytes: u64,
    /// Bytes the pass looked at.
    pub scanned_bytes: u64,
}

/// This node's side of move streams (`crates/transfer`).
pub trait MoveTransport: Send + Sync {
    fn endpoint(&self) -> TransferEndpoint;
    /// Open a stream to another node and introduce the move; the target
    /// answers once it has prepared to receive.
    fn connect(
        &self,
        to: &TransferEndpoint,
        hello: &MoveHello,
    ) -> Result<Box<dyn MoveLink>, DriverError>;
}

/// An open stream to a move's target.
pub trait MoveLink: Send {
    /// Send what the target lacks of `src`: everything the first time,
    /// what changed since on a later pass.
    fn pass(
        &mut self,
        src: &MoveData,
        progress: &Progress,
        cancel: &AtomicBool,
    ) -> Result<PassStats, DriverError>;
    /// Have the target make its data durable, read it back and compare
    /// every checksum with the source's; Ok only if all match.
    fn verify(&mut self, src: &MoveData) -> Result<(), DriverError>;
    /// Have the target put what it received where the volume's data lives
    /// (still no volume until the placement switches).
    fn install(&mut self) -> Result<(), DriverError>;
}

/// The receiving node, as the transport asks it.
pub trait MoveReceiver: Send + Sync {
    /// Check a hello against the store (a move to this node, its secret)
    /// and prepare where its data goes.
    fn accept(&self, hello: &MoveHello) -> Result<MoveData, crate::Error>;
    /// Put the received data in place.
    fn install(&self, hello: &MoveHello) -> Result<(), crate::Error>;
}
