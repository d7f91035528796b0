//! Integration tests: the real server over real HTTP.

mod auth;
mod cli;
mod create;
mod expiry;
mod helpers;
mod logs;
mod ops;
mod orgs;
mod read;
mod revoke;
mod verify;
