//! Generates the Rust code for the `.proto` files with a `protoc` that comes from crates.io
//! (`protoc-bin-vendored`), so a build needs no system package and no network.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["chat/v1/events.proto", "chat/v1/chat.proto", "chat/v1/gateway.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("chat_v1_descriptor.bin")).compile_with_config(
        config,
        &files,
        &["."],
    )?;
    Ok(())
}
