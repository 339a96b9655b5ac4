//! The CSI v1.12.0 wire schema (`csi.v1`), compiled from
//! `proto/csi.proto`: prost messages, tonic clients and servers for every
//! CSI service, and the encoded descriptor set.
//!
//! This crate owns the protocol types only. It must not hold volume logic:
//! the CSI front-end maps these types onto `VolumeService` elsewhere.

/// Version of the CSI specification whose wire schema this crate carries.
pub const CSI_SPEC_VERSION: &str = "1.12.0";

/// Encoded `google.protobuf.FileDescriptorSet` for `csi.proto` and its
/// imports, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_descriptor.bin"));

/// Generated code for protobuf package `csi.v1`: one message type per
/// protobuf message, and `<service>_client` / `<service>_server` modules for
/// Identity, Controller, GroupController, SnapshotMetadata and Node.
// Generated code: lints are for ballast's own code, not prost/tonic output.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

#[cfg(test)]
mod tests;
