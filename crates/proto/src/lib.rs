//! Generated gRPC code for quorumq. No logic lives here.

/// The queue API (`proto/client.proto`).
// `ConsumeResponse` holds a whole `Message` or a small `ReceiptResults`;
// boxing the message would change the generated API for one allocation per
// pushed message, which costs more than the enum's size.
#[allow(clippy::large_enum_variant)]
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
