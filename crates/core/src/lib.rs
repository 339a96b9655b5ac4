//! Ballast's core: the volume model, the one [`VolumeService`] that holds all
//! volume logic, and the traits it drives ([`Driver`], [`NodeOps`], [`Host`],
//! [`Store`]).
//!
//! Front-ends (REST, Docker plugin, CSI) translate into calls on
//! `VolumeService` and hold no volume logic of their own.

pub mod backups;
pub mod claims;
pub mod desired;
pub mod driver;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod host;
pub(crate) mod locks;
pub mod model;
pub mod moves;
pub mod nodes;
pub mod pools;
pub mod progress;
pub mod reconcile;
pub mod remediation;
pub mod service;
pub mod stats;
pub mod store;
pub mod store_conformance;
pub mod testing;

pub use driver::{Driver, DriverError, NodeOps};
pub use error::{Error, Result};
pub use host::Host;
pub use reconcile::{ReconcileReport, ServiceParts};
pub use service::{CreateVolume, ServiceConfig, VolumeService, VolumeUsage, Wait};
pub use store::Store;
