//! Compiles `proto/eddy/v1/*.proto` with protox (no system `protoc`) into Rust with tonic's
//! generator, and saves the encoded descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/eddy/v1/control.proto", "proto/eddy/v1/hub.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("eddy_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // For `eddyctl -o json` and other scripts' consumers.
        .type_attribute(".eddy.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
