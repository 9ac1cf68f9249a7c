//! A quorumq node.

pub mod codec;
pub mod config;
pub mod consume;
pub mod convert;
pub mod errors;
pub mod limits;
pub mod log_store;
pub mod network;
pub mod raft_service;
pub mod receipt;
pub mod server;
pub mod service;
pub mod sm_store;
pub mod snapshot_file;
pub mod types;
