//! Integration tests: the real server over real HTTP.

mod abuse;
mod auth;
mod cache;
mod cli;
mod cli_users;
mod create;
mod docs;
mod expiry;
mod gateway;
mod grpc;
mod grpc_contract;
mod grpc_users;
mod helpers;
mod lifecycle;
mod logs;
mod multinode;
mod nginx;
mod ops;
mod orgs;
mod people;
mod python_client;
mod quickstart;
mod read;
mod revoke;
mod store_conformance;
mod verify;
