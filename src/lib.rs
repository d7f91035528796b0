//! Latchkey: a self-hosted API token authority. See `ARCHITECTURE.md` for the code map.

pub mod allocator;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod console;
pub mod edge;
pub mod error;
pub mod grpc;
pub mod http;
pub mod offline;
pub mod server;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod token;
