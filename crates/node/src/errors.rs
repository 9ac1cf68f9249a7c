//! The one place where errors become gRPC statuses.

use openraft::errors::ClientWriteError;
use openraft::errors::ForwardToLeader;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use quorumq_proto::client as pb;
use quorumq_raft_state_machine::ErrorKind;
use quorumq_raft_state_machine::QueueError;
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::types::*;

pub const META_ERROR: &str = "quorumq-error";
pub const META_LEADER_ID: &str = "quorumq-leader-id";
pub const META_LEADER_ADDR: &str = "quorumq-leader-addr";
/// On a not-leader answer: `unknown` when the request had been proposed
/// before leadership was lost, so it may still commit.
pub const META_OUTCOME: &str = "quorumq-outcome";

pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
    }
}

pub fn queue_error(e: &QueueError) -> Status {
    Status::new(code(e.kind()), e.to_string())
}

pub fn entry_error(e: &QueueError) -> pb::EntryError {
    pb::EntryError { code: code(e.kind()) as i32, message: e.to_string() }
}

pub fn entry_status(e: &pb::EntryError) -> Status {
    Status::new(Code::from_i32(e.code), e.message.clone())
}

/// RESOURCE_EXHAUSTED for a send refused because a resource alarm is on
/// (`alarms.rs`), with metadata `quorumq-error: resource-alarm`; `message`
/// names the alarms.
pub fn resource_alarm(message: String) -> Status {
    let mut status = Status::resource_exhausted(message);
    status.metadata_mut().insert(META_ERROR, MetadataValue::from_static("resource-alarm"));
    status
}

/// UNAVAILABLE with the leader's id and address when known, so the client
/// can go straight there.
pub fn not_leader(leader: Option<(NodeId, String)>) -> Status {
    let message = match &leader {
        Some((id, addr)) => format!("not the leader; the leader is node {id} at {addr}"),
        None => "not the leader, and no leader is known (an election may be under way)".to_string(),
    };
    let mut status = Status::unavailable(message);
    let meta = status.metadata_mut();
    meta.insert(META_ERROR, MetadataValue::from_static("not-leader"));
    if let Some((id, addr)) = leader {
        meta.insert(META_LEADER_ID, MetadataValue::from(id));
        if let Ok(addr) = addr.parse() {
            meta.insert(META_LEADER_ADDR, addr);
        }
    }
    status
}

fn forward(f: &ForwardToLeader<TypeConfig>) -> Status {
    not_leader(match (&f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => Some((*id, node.addr.clone())),
        _ => None,
    })
}

pub fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward(&f),
        // Our entry was overwritten by a new leader's log: it did not commit
        // here, but the caller cannot know whether a retry is needed; it
        // retries (sends carry ids, so a retry is never a duplicate).
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            let mut status = forward(&f);
            status.metadata_mut().insert(META_OUTCOME, MetadataValue::from_static("unknown"));
            status
        }
        RaftError::APIError(other) => Status::internal(other.to_string()),
        RaftError::Fatal(fatal) => Status::unavailable(format!("this node's raft has stopped: {fatal}")),
    }
}

pub fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => forward(&f),
        RaftError::APIError(other) => Status::unavailable(other.to_string()),
        RaftError::Fatal(fatal) => Status::unavailable(format!("this node's raft has stopped: {fatal}")),
    }
}
