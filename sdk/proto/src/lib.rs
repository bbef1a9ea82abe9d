//! `eddy-proto`: the `eddy.v1` gRPC API of eddyd, generated from `proto/eddy/v1/*.proto`.
//! Generated code only: no logic belongs here (the client is `eddy-client`, the server lives
//! in eddyd).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("eddy.v1");
}

/// The encoded `FileDescriptorSet` of `eddy.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/eddy_v1_descriptor.bin"));
