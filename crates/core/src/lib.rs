//! Ballast's core: the volume model, the one `VolumeService` that holds all
//! volume logic, and the traits it drives (`Driver`, `NodeOps`, `Host`, `Store`).
//!
//! Front-ends (REST, Docker plugin, CSI) translate into calls on
//! `VolumeService` and hold no volume logic of their own.

pub mod host;
pub mod model;
pub mod store;
