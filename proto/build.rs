//! Compiles the protos with protox (pure Rust, no system `protoc`), then generates prost message
//! types, tonic clients and servers, and proto3-JSON serde impls (pbjson) from one descriptor set.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "deepproto/proto/common/v1/common.proto",
    "deepproto/proto/resource/v1/resource.proto",
    "deepproto/proto/tracepoint/v1/tracepoint.proto",
    "deepproto/proto/poll/v1/poll.proto",
    "sonde/v1/sonde.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = fds.encode_to_vec();
    fs::write(out_dir.join("descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps make the encoding deterministic, so a content hash of it is stable.
        .btree_map(".")
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .build(&[".deepproto", ".sonde"])?;
    Ok(())
}
