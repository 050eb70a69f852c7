//! Rust types generated from `proto/` (see `worker/build.rs`).

/// `textrec.v1`: textrec's own recognition API.
#[allow(missing_docs, clippy::all)]
pub mod textrec {
    tonic::include_proto!("textrec.v1");
}

/// `inference`: the Open Inference Protocol (KServe V2).
#[allow(missing_docs, clippy::all)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Encoded descriptors of every service above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("textrec_descriptor");
