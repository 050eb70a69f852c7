//! Compiles the `.proto` files of `proto/` into Rust (prost messages, tonic clients and servers)
//! and writes their descriptor set, which the server's reflection service publishes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build script compiled for one checkout is reused by
    // another that shares the target directory, and must look at its own sources.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        proto_root.join("textrec/v1/recognizer.proto"),
        proto_root.join("inference/grpc_service.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("textrec_descriptor.bin"))
        // Image payloads are handed around without copies.
        .bytes(".textrec.v1.RecognizeRequest.image")
        .compile_protos(&protos, &[proto_root])?;
    Ok(())
}
