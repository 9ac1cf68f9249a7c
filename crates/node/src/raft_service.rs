//! The server side of the node-to-node Raft transport: each frame is checked
//! (right node, known group, well-formed payload) and handed to the group's
//! openraft instance.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use openraft::raft::AppendEntriesRequest;
use quorumq_proto::raft as pb;
use quorumq_proto::raft::raft_server::Raft as RaftRpc;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::codec::decode;
use crate::codec::encode;
use crate::network::STREAM_GROUP;
use crate::network::STREAM_TARGET;
use crate::sm_store::SnapshotFile;
use crate::sm_store::StateMachineStore;
use crate::types::*;

/// One Raft group on this node.
#[derive(Clone)]
pub struct Group {
    pub raft: Raft,
    pub sm: StateMachineStore,
}

/// The Raft groups of this node by id. One today (the queues group); the
/// transport already routes by group so that more can be added.
#[derive(Clone)]
pub struct Router {
    pub self_id: NodeId,
    groups: Arc<HashMap<GroupId, Group>>,
}

impl Router {
    pub fn new(self_id: NodeId, groups: HashMap<GroupId, Group>) -> Router {
        Router { self_id, groups: Arc::new(groups) }
    }

    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id)
    }

    fn route(&self, group_id: GroupId, target: NodeId) -> Result<&Group, Status> {
        if target != self.self_id {
            // The sender's idea of who answers at this address is wrong (a
            // node was moved or replaced): refuse rather than act as another.
            return Err(Status::failed_precondition(format!("this is node {}, not node {target}", self.self_id)));
        }
        self.groups.get(&group_id).ok_or_else(|| Status::not_found(format!("no raft group {group_id} on this node")))
    }
}

pub struct RaftService {
    router: Router,
}

impl RaftService {
    pub fn new(router: Router) -> RaftService {
        RaftService { router }
    }

    fn open<T: DeserializeOwned>(&self, request: &pb::RaftRequest) -> Result<(&Group, T), Status> {
        let group = self.router.route(request.group_id, request.target_node_id)?;
        let message = decode(&request.payload).map_err(|e| Status::invalid_argument(format!("bad payload: {e}")))?;
        Ok((group, message))
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Result<Response<pb::RaftReply>, Status> {
    match result {
        Ok(value) => {
            let payload = encode(&value).map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(pb::RaftReply { payload: payload.into(), error: String::new() }))
        }
        Err(e) => Ok(Response::new(pb::RaftReply { payload: Default::default(), error: e.to_string() })),
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::RaftReply, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let (group, rpc) = self.open(request.get_ref())?;
        reply(group.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let (group, rpc) = self.open(request.get_ref())?;
        reply(group.raft.pre_vote(rpc).await)
    }

    async fn append_entries(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let (group, rpc) = self.open(request.get_ref())?;
        reply(group.raft.append_entries(rpc).await)
    }

    async fn transfer_leader(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let (group, rpc) = self.open(request.get_ref())?;
        reply(group.raft.handle_transfer_leader(rpc).await)
    }

    type StreamAppendStream = ReplyStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::RaftRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let header = |name: &str| -> Result<u64, Status> {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Status::invalid_argument(format!("append stream without {name}")))
        };
        let (group_id, target) = (header(STREAM_GROUP)?, header(STREAM_TARGET)?);
        let group = self.router.route(group_id, target)?.clone();
        let input = request.into_inner();
        // The stream ends at the first frame that is malformed or meant for
        // another node or group; the leader then opens a new one.
        let requests = input.scan((), move |_, frame| {
            let parsed = match frame {
                Ok(frame) if frame.group_id == group_id && frame.target_node_id == target => {
                    decode::<AppendEntriesRequest<TypeConfig>>(&frame.payload).ok()
                }
                Ok(_) => None,
                Err(status) => {
                    tracing::debug!(%status, "append stream from leader ended");
                    None
                }
            };
            futures::future::ready(parsed)
        });
        let replies = group.raft.stream_append(requests).map(|result| match result {
            Ok(item) => encode(&item)
                .map(|payload| pb::RaftReply { payload: payload.into(), error: String::new() })
                .map_err(|e| Status::internal(e.to_string())),
            Err(fatal) => Err(Status::unavailable(format!("raft stopped: {fatal}"))),
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let group = self.router.route(first.group_id, first.target_node_id)?.clone();
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&first.meta).map_err(|e| Status::invalid_argument(format!("bad snapshot meta: {e}")))?;
        let path = group.sm.incoming_snapshot_path();
        let received = async {
            let mut file = tokio::fs::File::create(&path).await?;
            file.write_all(&first.data).await?;
            while let Some(chunk) = input.message().await.map_err(std::io::Error::other)? {
                if chunk.group_id != first.group_id || chunk.target_node_id != first.target_node_id {
                    return Err(std::io::Error::other("snapshot chunk for another group or node"));
                }
                file.write_all(&chunk.data).await?;
            }
            file.sync_all().await?;
            SnapshotFile::open(&path)
        }
        .await;
        let snapshot_file = match received {
            Ok(file) => file,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::aborted(format!("snapshot transfer failed: {e}")));
            }
        };
        let result = group.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: snapshot_file }).await;
        // Installing moves the file into place; if it was refused (a stale
        // leader), remove what is left.
        let _ = tokio::fs::remove_file(&path).await;
        reply(result)
    }
}
