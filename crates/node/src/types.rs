//! openraft's type configuration for quorumq, and aliases used across the
//! node.

use quorumq_raft_state_machine::Request;
use quorumq_raft_state_machine::Response;

openraft::declare_raft_types!(
    /// One Raft group of queues.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig, crate::sm_store::StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::sm_store::SnapshotFile>;

/// Raft groups are named from day one so that each queue (or shard of
/// queues) can later be its own group. Today every queue lives in group 0.
pub type GroupId = u64;
pub const QUEUES_GROUP: GroupId = 0;
