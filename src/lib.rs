#![recursion_limit = "256"]
//! PMM's control plane, rebuilt as an event-sourced CQRS system.
//!
//! Map of the crate (see `../shared/DESIGN.md` for the architecture):
//! - [`domain`]: nodes, services, agents, settings, labels, and the in-memory [`domain::State`]
//!   folded from events by `evolve`.
//! - [`events`]: the event enum, its codec and schema versions, the hash chain, redaction.
//! - [`commands`]: command types, the pure `decide`, and the dispatcher (the one entry point,
//!   with group commit).
//! - [`store`]: PostgreSQL: the event log, command results, query tables, verify and rebuild.
//! - [`crypto`]: the cluster key and the cipher that seals secrets before they become events.
//! - [`embedded_pg`]: the private PostgreSQL the server starts when no database is configured.
//! - [`config`] and [`app`]: configuration (flags and environment) and the server's wiring.
//! - [`raft`]: openraft over PostgreSQL, the gRPC network between nodes, cluster operations;
//!   [`cluster`] is the `pmm-cp cluster` command.
//! - [`api`]: the query API (REST).
//! - [`grpc`]: PMM's public API (gRPC and its REST gateway); [`files`]: the generated files;
//!   [`agents`]: the pmm-agent streams and their simulator.
//! - [`bench`], [`bench_cluster`] and [`bench_api`]: the benchmarks behind `pmm-cp bench`,
//!   `pmm-cp bench-cluster` and `pmm-cp bench-api`.

pub mod admin;
pub mod agents;
pub mod api;
pub mod app;
pub mod bench;
pub mod bench_agents;
pub mod bench_api;
pub mod bench_cluster;
pub mod bench_files;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod embedded_pg;
pub mod events;
pub mod files;
pub mod grpc;
pub mod raft;
pub mod store;
