//! A quorumq node.

pub mod alarms;
pub mod batcher;
pub mod body_store;
pub mod codec;
pub mod config;
pub mod consume;
pub mod convert;
pub mod errors;
pub mod http;
pub mod leader_watch;
pub mod limits;
pub mod log_store;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod peer_status;
pub mod raft_service;
pub mod receipt;
pub mod server;
pub mod service;
pub mod sm_store;
pub mod snapshot_file;
pub mod types;
