//! Compiles proto/ with protox (pure Rust, no system protoc), generates prost types and
//! their proto3 JSON mapping with pbjson.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: one compiled build script serves every
    // checkout that shares a target directory (CI clones afresh into new paths).
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        proto_root.join("fanout/v1/events.proto"),
        proto_root.join("fanout/v1/internal.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("fanout_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    // google.protobuf.Struct (MessageEvent.data) comes from pbjson-types, which carries
    // its proto3 JSON mapping (a plain JSON object).
    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    let descriptor_bytes = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".fanout.v1"])?;
    Ok(())
}
