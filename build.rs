//! Compiles the protocols with protox (pure Rust, no protoc needed):
//! - PMM v3's public API (`common`, `inventory.v1`, `management.v1`, `server.v1`) with
//!   pbjson serde impls in grpc-gateway's JSON shape, so one implementation serves gRPC and
//!   REST, and a descriptor set for gRPC reflection and the OpenAPI document;
//! - the internal cluster protocol, and an etcd client for the cluster benchmark (the
//!   etcd-client crate needs protoc).

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    for dir in [
        "common",
        "inventory/v1",
        "management/v1",
        "server/v1",
        "alerting/v1",
        "agent/v1",
        "google/rpc",
    ] {
        files.extend(protos_in(&Path::new("proto").join(dir))?);
    }
    files.push(PathBuf::from("proto/pmmcp/cluster/v1/cluster.proto"));
    files.push(PathBuf::from("proto/etcd/kv.proto"));
    let fds = protox::compile(&files, ["proto"])?;
    let bytes = prost::Message::encode_to_vec(&fds);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), &bytes)?;
    // Only the public API for gRPC reflection: the internal services are not on that port.
    let mut public = fds.clone();
    public
        .file
        .retain(|f| !f.package().starts_with("pmmcp") && !f.package().starts_with("etcd"));
    std::fs::write(
        out.join("public_descriptors.bin"),
        prost::Message::encode_to_vec(&public),
    )?;
    tonic_prost_build::configure()
        // No `XClient::connect(addr)` constructors: agent.v1's RPC is itself named Connect.
        // Clients are made with `XClient::new(channel)`.
        .build_transport(false)
        // Sorted maps in the agent protocol: a desired state encodes to the same bytes on
        // every node.
        .btree_map(".agent.v1")
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .preserve_proto_field_names()
        .build(&[
            ".common",
            ".inventory",
            ".management",
            ".server",
            ".alerting",
        ])?;
    Ok(())
}

/// The .proto files of one directory, sorted so the output does not depend on the file system.
fn protos_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    Ok(files)
}
