//! Compiles the internal gRPC protocol with protox (pure Rust, no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/pmmcp/cluster/v1/cluster.proto",
        // A client of etcd for the cluster benchmark (the etcd-client crate needs protoc).
        "proto/etcd/kv.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(fds)?;
    Ok(())
}
