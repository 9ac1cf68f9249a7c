//! The client side of the node-to-node Raft transport (`proto/raft.proto`):
//! openraft's messages, postcard-encoded, over one cached tonic channel per
//! peer address.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use openraft::AnyError;
use openraft::OptionalSend;
use openraft::RaftNetworkFactory;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use quorumq_proto::raft as pb;
use quorumq_proto::raft::raft_client::RaftClient;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::codec::decode;
use crate::codec::encode;
use crate::codec::encode_bodies;
use crate::limits;
use crate::sm_store::SnapshotFile;
use crate::types::*;

/// Metadata naming the group and target node of an append stream.
pub const STREAM_GROUP: &str = "quorumq-group";
pub const STREAM_TARGET: &str = "quorumq-target";

/// One lazily connected channel per address, shared by every user (Raft
/// replication, bootstrap, status queries). tonic reconnects a lazy channel
/// by itself after a failure.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.inner.lock().expect("channel map lock");
        if let Some(channel) = map.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("invalid peer address {addr:?}: {e}"))?
            .connect_timeout(limits::PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(limits::PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(limits::PEER_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Builds a [`Connection`] per peer for openraft.
pub struct Network {
    pub self_id: NodeId,
    pub group: GroupId,
    pub channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            self_id: self.self_id,
            group: self.group,
            target,
            addr: node.addr.clone(),
            channel: self.channels.get(&node.addr),
            stream_retry: Arc::new(Mutex::new(StreamRetry::default())),
        }
    }
}

pub struct Connection {
    self_id: NodeId,
    group: GroupId,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
    stream_retry: Arc<Mutex<StreamRetry>>,
}

/// Backoff for replication streams. openraft (0.10.0-alpha.37) applies its
/// backoff only while it produces a stream's requests, and starts a new
/// stream session at once when opening one fails; without this, a leader
/// spins on a dead follower (a core of CPU and megabytes of log a second).
#[derive(Default)]
struct StreamRetry {
    failures: u32,
    not_before: Option<tokio::time::Instant>,
}

impl StreamRetry {
    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let delay = limits::STREAM_RETRY_DELAY_MIN
            .saturating_mul(1 << self.failures.saturating_sub(1).min(8))
            .min(limits::STREAM_RETRY_DELAY_MAX);
        self.not_before = Some(tokio::time::Instant::now() + delay);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network_error(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// Maps a transport status. Anything that suggests the peer is down, paused
/// or cut off is `Unreachable`, so openraft backs off instead of spinning.
fn status_error(addr: &str, status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(format!("{addr}: {}", status.message()))
        }
        _ => network_error(format!("{addr}: {:?}: {}", status.code(), status.message())),
    }
}

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        let channel = self.channel.clone().map_err(unreachable)?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(limits::RAFT_FRAME_BYTES_MAX)
            .max_encoding_message_size(limits::RAFT_FRAME_BYTES_MAX))
    }

    fn request<T: serde::Serialize>(&self, message: &T) -> Result<pb::RaftRequest, RPCError<TypeConfig>> {
        Ok(pb::RaftRequest {
            group_id: self.group,
            target_node_id: self.target,
            from_node_id: self.self_id,
            payload: encode(message).map_err(network_error)?.into(),
        })
    }

    fn reply<T: serde::de::DeserializeOwned>(&self, reply: pb::RaftReply) -> Result<T, RPCError<TypeConfig>> {
        if !reply.error.is_empty() {
            return Err(unreachable(format!("node {} refused: {}", self.target, reply.error)));
        }
        decode(&reply.payload).map_err(network_error)
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        message: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, pb::RaftRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftReply>, tonic::Status>>,
    {
        let request = self.request(message)?;
        let client = self.client()?;
        match tokio::time::timeout(option.soft_ttl(), call(client, request)).await {
            Err(_) => Err(unreachable(format!("{}: no answer within {:?}", self.addr, option.soft_ttl()))),
            Ok(Err(status)) => Err(status_error(&self.addr, status)),
            Ok(Ok(reply)) => self.reply(reply.into_inner()),
        }
    }
    async fn open_stream<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let (group, target, from) = (self.group, self.target, self.self_id);
        // Requests sent and not yet answered: a stream with none outstanding
        // is idle, not stalled.
        let outstanding = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent = outstanding.clone();
        let requests = input.map(move |rpc| {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pb::RaftRequest {
                group_id: group,
                target_node_id: target,
                from_node_id: from,
                // Encoding our own in-memory types cannot fail; if it ever
                // did, an empty payload makes the follower end the stream.
                payload: encode_bodies(&rpc).unwrap_or_default().into(),
            }
        });
        let mut client = self.client()?;
        let ttl = option.soft_ttl();
        // The server routes the stream before its first frame arrives
        // (openraft produces frames only once the stream is open).
        let mut request = tonic::Request::new(requests);
        let meta = request.metadata_mut();
        meta.insert(STREAM_GROUP, group.into());
        meta.insert(STREAM_TARGET, target.into());
        let setup = ttl.max(limits::STREAM_SETUP_TIMEOUT_MIN);
        let response = match tokio::time::timeout(setup, client.stream_append(request)).await {
            Err(_) => return Err(unreachable(format!("{}: stream not accepted within {setup:?}", self.addr))),
            Ok(Err(status)) => return Err(status_error(&self.addr, status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        let addr = self.addr.clone();
        // A follower that stops answering requests (paused, cut off) must end
        // the stream: while requests are outstanding, some answer has to
        // arrive every `reply_timeout`. An idle stream may stay silent; HTTP/2
        // keepalives catch a dead link under it.
        let reply_timeout = ttl.max(limits::STREAM_REPLY_TIMEOUT_MIN);
        let replies = futures::stream::unfold(Some(response), move |state| {
            let (addr, outstanding) = (addr.clone(), outstanding.clone());
            async move {
                let mut response = state?;
                let mut waited = Duration::ZERO;
                let next = loop {
                    let check = reply_timeout / 4;
                    match tokio::time::timeout(check, response.message()).await {
                        Ok(next) => break Ok(next),
                        Err(_) if outstanding.load(std::sync::atomic::Ordering::Relaxed) == 0 => {
                            waited = Duration::ZERO
                        }
                        Err(_) => {
                            waited += check;
                            if waited >= reply_timeout {
                                break Err(());
                            }
                        }
                    }
                };
                if matches!(next, Ok(Ok(Some(_)))) {
                    outstanding.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                match next {
                    Err(()) => Some((Err(unreachable(format!("{addr}: append stream stalled"))), None)),
                    Ok(Err(status)) => Some((Err(status_error(&addr, status)), None)),
                    Ok(Ok(None)) => None,
                    Ok(Ok(Some(reply))) => {
                        if !reply.error.is_empty() {
                            return Some((Err(unreachable(format!("{addr}: {}", reply.error))), None));
                        }
                        let item = decode::<StreamAppendResult<TypeConfig>>(&reply.payload).map_err(network_error);
                        let next = if item.is_ok() { Some(response) } else { None };
                        Some((item, next))
                    }
                }
            }
        });
        Ok(Box::pin(replies) as BoxStream<'s, _>)
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.append_entries(r).await }).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let retry = self.stream_retry.clone();
            let not_before = retry.lock().expect("retry lock").not_before;
            if let Some(at) = not_before {
                tokio::time::sleep_until(at).await;
            }
            let result = self.open_stream(input, option).await;
            match &result {
                Ok(_) => retry.lock().expect("retry lock").succeeded(),
                Err(_) => retry.lock().expect("retry lock").failed(),
            }
            result
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, &option, |mut c, r| async move { c.transfer_leader(r).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let into_streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(NetworkError::new(&AnyError::error(other.to_string()))),
        };
        let mut client = self.client().map_err(into_streaming)?;
        let meta = encode(&(vote, snapshot.meta.clone())).map_err(|e| into_streaming(network_error(e)))?;
        let header = (self.group, self.target, self.self_id);
        let mut reader = snapshot.snapshot.reader();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        // Read the file in bounded chunks on a blocking thread; the channel's
        // small capacity keeps at most a few chunks in memory.
        let sender = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut first = Some(meta);
            loop {
                let mut data = vec![0u8; limits::SNAPSHOT_CHUNK_BYTES];
                let mut filled = 0;
                while filled < data.len() {
                    let n = reader.read(&mut data[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                data.truncate(filled);
                let done = filled == 0;
                if done && first.is_none() {
                    return Ok(());
                }
                let chunk = pb::SnapshotChunk {
                    group_id: header.0,
                    target_node_id: header.1,
                    from_node_id: header.2,
                    meta: first.take().unwrap_or_default().into(),
                    data: data.into(),
                };
                if tx.blocking_send(chunk).is_err() || done {
                    return Ok(());
                }
            }
        });
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            closed = cancel => {
                sender.abort();
                return Err(StreamingError::Closed(closed));
            }
            reply = call => reply,
        };
        match sender.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))),
        }
        let reply = reply.map_err(|s| into_streaming(status_error(&self.addr, s)))?;
        self.reply(reply.into_inner()).map_err(into_streaming)
    }

    fn backoff(&self) -> Option<Backoff> {
        // Retry an unreachable peer soon: a restarted follower should rejoin
        // within a fraction of a second, not after a long backoff.
        let delays = [50u64, 100, 200, 400].into_iter().chain(std::iter::repeat(500));
        Some(Backoff::new(delays.map(Duration::from_millis)))
    }
}
