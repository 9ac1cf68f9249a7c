//! A quorumq node.

pub mod codec;
pub mod log_store;
pub mod sm_store;
pub mod snapshot_file;
pub mod types;
pub mod limits;
pub mod network;
pub mod raft_service;
pub mod config;
pub mod errors;
pub mod receipt;
pub mod service;
pub mod server;
