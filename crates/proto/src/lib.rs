//! Generated gRPC code for quorumq. No logic lives here.

/// The queue API (`proto/client.proto`).
pub mod client {
    tonic::include_proto!("quorumq.v1");
}

/// Cluster administration (`proto/admin.proto`).
pub mod admin {
    tonic::include_proto!("quorumq.admin.v1");
}

/// Node-to-node Raft transport (`proto/raft.proto`).
pub mod raft {
    tonic::include_proto!("quorumq.raft.v1");
}
