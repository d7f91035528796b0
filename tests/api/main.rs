//! Integration tests: the real server over real HTTP.

mod auth;
mod cache;
mod cli;
mod create;
mod expiry;
mod grpc;
mod helpers;
mod logs;
mod ops;
mod orgs;
mod quickstart;
mod read;
mod revoke;
mod verify;
