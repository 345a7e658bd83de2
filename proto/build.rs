//! Compiles every .proto file with `protox` (pure Rust), so a fresh machine needs no `protoc`.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/trading/v1/trading.proto",
    "proto/portfolio/v1/portfolio.proto",
    "proto/events/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
