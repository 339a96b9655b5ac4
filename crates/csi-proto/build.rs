//! Compiles `proto/csi.proto` without a system `protoc`: `protox` parses it
//! into a `FileDescriptorSet` (well-known imports included), which is saved
//! for gRPC reflection and handed to `tonic-prost-build` for code generation.

use std::path::PathBuf;

use prost::Message;

const PROTO: &str = "proto/csi.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");

    let fds = protox::compile([PROTO], ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("csi_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
