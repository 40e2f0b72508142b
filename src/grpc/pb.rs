//! Generated types of PMM v3's public API, with grpc-gateway-shaped serde (pbjson).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod common {
    tonic::include_proto!("common");
    include!(concat!(env!("OUT_DIR"), "/common.serde.rs"));
}

pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("inventory.v1");
        include!(concat!(env!("OUT_DIR"), "/inventory.v1.serde.rs"));
    }
}

pub mod management {
    pub mod v1 {
        tonic::include_proto!("management.v1");
        include!(concat!(env!("OUT_DIR"), "/management.v1.serde.rs"));
    }
}

pub mod alerting {
    pub mod v1 {
        tonic::include_proto!("alerting.v1");
        include!(concat!(env!("OUT_DIR"), "/alerting.v1.serde.rs"));
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("agent.v1");
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod server {
    pub mod v1 {
        tonic::include_proto!("server.v1");
        include!(concat!(env!("OUT_DIR"), "/server.v1.serde.rs"));
    }
}

/// The encoded descriptor set of every compiled proto file: gRPC reflection serves it and
/// the OpenAPI document is built from it.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The public API's files only (with their imports): what gRPC reflection shows.
pub const PUBLIC_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/public_descriptors.bin"));
