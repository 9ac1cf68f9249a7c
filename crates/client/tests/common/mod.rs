//! A scriptable fake quorumq node: a real tonic server on 127.0.0.1:0 that
//! serves the Queues and Cluster services from a tiny in-memory store, and
//! answers as a leader, as a follower (not-leader, with or without a hint),
//! or as scripted per call (unavailable, deadline exceeded, hang).
#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quorumq_proto::admin::cluster_server::{Cluster, ClusterServer};
use quorumq_proto::admin::{
    AddNodeRequest, Member, MembershipResponse, NodeStatusRequest, NodeStatusResponse, RemoveNodeRequest,
    TransferLeaderRequest, TransferLeaderResponse,
};
use quorumq_proto::client::queues_server::{Queues, QueuesServer};
use quorumq_proto::client::*;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// How a fake node answers calls that no script entry covers.
#[derive(Clone, Debug)]
pub enum Mode {
    Leader,
    /// Not the leader; names `(id, address)` when given.
    NotLeader(Option<(u64, String)>),
}

/// A one-off answer to the next call (of any method), taken before the mode.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Not the leader, naming `(id, address)` when given.
    NotLeader(Option<(u64, String)>),
    /// UNAVAILABLE without the not-leader reason (node starting, overloaded).
    Unavailable,
    /// Executes the request as a leader would, then answers
    /// DEADLINE_EXCEEDED: the write happened but the client cannot know.
    ApplyThenDeadlineExceeded,
    /// Never answers.
    Hang,
}

/// One call the node saw, before it decided how to answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    /// Message ids of a Send.
    pub ids: Vec<String>,
    /// `id_generated` of each message of a Send.
    pub generated: Vec<bool>,
    /// Receipts of an Ack or Nack (unary, or on a Consume stream:
    /// methods `consume_ack` and `consume_nack`).
    pub receipts: Vec<String>,
    /// wait_ms of a Receive.
    pub wait_ms: u64,
    /// The `grpc-timeout` the client sent.
    pub grpc_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
struct StoredMessage {
    id: String,
    body: Bytes,
    receive_count: u32,
    in_flight: bool,
    attributes: HashMap<String, AttributeValue>,
    group: String,
    priority: u32,
}

#[derive(Default)]
struct Store {
    queues: HashSet<String>,
    /// Configurations set by SetQueue (merged field by field).
    configs: HashMap<String, QueueConfig>,
    next_seq: u64,
    messages: BTreeMap<u64, StoredMessage>,
    seq_by_id: HashMap<String, u64>,
}

impl Store {
    /// Takes up to `max` messages that are not in flight, as a Receive.
    fn take_ready(&mut self, max: usize) -> Vec<Message> {
        let mut out = Vec::new();
        for (&seq, message) in self.messages.iter_mut() {
            if out.len() == max {
                break;
            }
            if message.in_flight {
                continue;
            }
            message.in_flight = true;
            message.receive_count += 1;
            out.push(Message {
                id: message.id.clone(),
                body: message.body.clone(),
                receipt: format!("r-{seq}-{}", message.receive_count),
                receive_count: message.receive_count,
                seq,
                sent_at_ms: 1,
                first_received_at_ms: 2,
                attributes: message.attributes.clone(),
                group: message.group.clone(),
                priority: message.priority,
                ..Default::default()
            });
        }
        out
    }

    fn ack(&mut self, receipt: &str) -> Option<EntryError> {
        match receipt_seq(receipt) {
            Some(seq) => {
                self.messages.remove(&seq);
                None
            }
            None => Some(entry_error(tonic::Code::FailedPrecondition, "stale receipt")),
        }
    }

    fn nack(&mut self, receipt: &str) {
        if let Some(message) = receipt_seq(receipt).and_then(|s| self.messages.get_mut(&s)) {
            message.in_flight = false;
        }
    }
}

fn receipt_seq(receipt: &str) -> Option<u64> {
    receipt.strip_prefix("r-").and_then(|r| r.split('-').next()).and_then(|s| s.parse::<u64>().ok())
}

pub struct FakeState {
    pub id: u64,
    pub address: String,
    mode: Mutex<Mode>,
    script: Mutex<VecDeque<Reply>>,
    calls: Mutex<Vec<Call>>,
    store: Mutex<Store>,
    /// Members reported by NodeStatus.
    members: Mutex<Vec<(u64, String)>>,
    sent: Notify,
    /// Open Consume streams' response senders.
    /// When set, Consume streams record acks and nacks but neither apply nor
    /// answer them (a node that is about to lose its leadership).
    mute_streams: std::sync::atomic::AtomicBool,
    /// Weak, so that a stream ends when its task ends.
    streams: Mutex<Vec<mpsc::WeakSender<Result<ConsumeResponse, Status>>>>,
}

impl FakeState {
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Queues one-off replies for the next calls, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    pub fn set_members(&self, members: Vec<(u64, String)>) {
        *self.members.lock().unwrap() = members;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method).collect()
    }

    pub fn add_queue(&self, name: &str) {
        self.store.lock().unwrap().queues.insert(name.to_string());
    }

    pub fn message_count(&self) -> usize {
        self.store.lock().unwrap().messages.len()
    }

    /// Messages delivered and neither acked nor nacked.
    pub fn in_flight_count(&self) -> usize {
        self.store.lock().unwrap().messages.values().filter(|m| m.in_flight).count()
    }

    /// Adds a message as a Send would, without a call.
    pub fn add_message(&self, body: &str) {
        let mut store = self.store.lock().unwrap();
        store.next_seq += 1;
        let seq = store.next_seq;
        store.messages.insert(
            seq,
            StoredMessage {
                id: format!("m-{seq}"),
                body: Bytes::copy_from_slice(body.as_bytes()),
                receive_count: 0,
                in_flight: false,
                attributes: HashMap::new(),
                group: String::new(),
                priority: 0,
            },
        );
        drop(store);
        self.sent.notify_waiters();
    }

    /// Open Consume streams.
    pub fn stream_count(&self) -> usize {
        let mut streams = self.streams.lock().unwrap();
        streams.retain(|s| s.upgrade().is_some_and(|s| !s.is_closed()));
        streams.len()
    }

    /// Makes Consume streams swallow acks and nacks without answering.
    pub fn mute_streams(&self) {
        self.mute_streams.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends every open Consume stream with `status`.
    pub fn end_streams(&self, status: Status) {
        for stream in self.streams.lock().unwrap().drain(..) {
            if let Some(stream) = stream.upgrade() {
                let _ = stream.try_send(Err(status.clone()));
            }
        }
    }

    fn record<T>(&self, request: &Request<T>, method: &'static str, ids: Vec<String>, wait_ms: u64) {
        self.record_call(request, Call { method, ids, wait_ms, ..Default::default() });
    }

    fn record_call<T>(&self, request: &Request<T>, mut call: Call) {
        call.grpc_timeout =
            request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        self.calls.lock().unwrap().push(call);
    }

    fn push_call(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    /// Decides how to answer: `Ok(true)` means execute and then answer
    /// DEADLINE_EXCEEDED, `Ok(false)` execute and answer normally.
    async fn gate(&self) -> Result<bool, Status> {
        let scripted = self.script.lock().unwrap().pop_front();
        match scripted {
            Some(Reply::NotLeader(hint)) => Err(not_leader(hint)),
            Some(Reply::Unavailable) => Err(Status::unavailable("starting up")),
            Some(Reply::ApplyThenDeadlineExceeded) => Ok(true),
            Some(Reply::Hang) => std::future::pending().await,
            None => match self.mode.lock().unwrap().clone() {
                Mode::Leader => Ok(false),
                Mode::NotLeader(hint) => Err(not_leader(hint)),
            },
        }
    }

    fn check_queue(store: &Store, queue: &str) -> Result<(), Status> {
        if store.queues.contains(queue) {
            Ok(())
        } else {
            Err(Status::not_found(format!("queue {queue:?} does not exist")))
        }
    }
}

pub fn not_leader(hint: Option<(u64, String)>) -> Status {
    let mut status = Status::unavailable("not the leader");
    let md = status.metadata_mut();
    md.insert("quorumq-error", "not-leader".parse().unwrap());
    if let Some((id, address)) = hint {
        md.insert("quorumq-leader-id", id.to_string().parse().unwrap());
        md.insert("quorumq-leader-addr", address.parse().unwrap());
    }
    status
}

fn entry_error(code: tonic::Code, message: &str) -> EntryError {
    EntryError { code: code as i32, message: message.into() }
}

/// Answers with `response`, or DEADLINE_EXCEEDED after executing when the
/// script said so.
fn answer<T>(ambiguous: bool, response: T) -> Result<Response<T>, Status> {
    if ambiguous { Err(Status::deadline_exceeded("no quorum in time")) } else { Ok(Response::new(response)) }
}

/// A one-entry batch whose entry failed answers with the entry's error.
fn single_entry_status(errors: &[Option<EntryError>]) -> Result<(), Status> {
    if let [Some(error)] = errors {
        return Err(Status::new(tonic::Code::from_i32(error.code), error.message.clone()));
    }
    Ok(())
}

#[derive(Clone)]
struct Service(Arc<FakeState>);

#[tonic::async_trait]
impl Queues for Service {
    async fn create_queue(
        &self,
        request: Request<CreateQueueRequest>,
    ) -> Result<Response<CreateQueueResponse>, Status> {
        self.0.record(&request, "create_queue", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let name = request.into_inner().name;
        let created = self.0.store.lock().unwrap().queues.insert(name.clone());
        answer(ambiguous, CreateQueueResponse { queue: Some(QueueInfo { name, ..Default::default() }), created })
    }

    async fn delete_queue(
        &self,
        request: Request<DeleteQueueRequest>,
    ) -> Result<Response<DeleteQueueResponse>, Status> {
        self.0.record(&request, "delete_queue", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let name = request.into_inner().name;
        let mut store = self.0.store.lock().unwrap();
        FakeState::check_queue(&store, &name)?;
        store.queues.remove(&name);
        let deleted = store.messages.len() as u64;
        store.messages.clear();
        answer(ambiguous, DeleteQueueResponse { messages_deleted: deleted })
    }

    async fn list_queues(&self, request: Request<ListQueuesRequest>) -> Result<Response<ListQueuesResponse>, Status> {
        self.0.record(&request, "list_queues", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let store = self.0.store.lock().unwrap();
        let queues = store.queues.iter().map(|name| QueueInfo { name: name.clone(), ..Default::default() }).collect();
        answer(ambiguous, ListQueuesResponse { queues })
    }

    async fn get_queue(&self, request: Request<GetQueueRequest>) -> Result<Response<GetQueueResponse>, Status> {
        self.0.record(&request, "get_queue", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let name = request.into_inner().name;
        let store = self.0.store.lock().unwrap();
        FakeState::check_queue(&store, &name)?;
        answer(ambiguous, GetQueueResponse { queue: Some(queue_info(&store, name)) })
    }

    async fn purge_queue(&self, request: Request<PurgeQueueRequest>) -> Result<Response<PurgeQueueResponse>, Status> {
        self.0.record(&request, "purge_queue", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let name = request.into_inner().name;
        let mut store = self.0.store.lock().unwrap();
        FakeState::check_queue(&store, &name)?;
        let deleted = store.messages.len() as u64;
        store.messages.clear();
        answer(ambiguous, PurgeQueueResponse { messages_deleted: deleted })
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let ids = request.get_ref().messages.iter().map(|m| m.id.clone()).collect();
        let generated = request.get_ref().messages.iter().map(|m| m.id_generated).collect();
        self.0.record_call(&request, Call { method: "send", ids, generated, ..Default::default() });
        let request = request.into_inner();
        let ambiguous = self.0.gate().await?;
        let results = {
            let mut store = self.0.store.lock().unwrap();
            FakeState::check_queue(&store, &request.queue)?;
            let mut results = Vec::new();
            for message in request.messages {
                if message.body.as_ref() == b"bad" {
                    results.push(SendResult {
                        error: Some(entry_error(tonic::Code::InvalidArgument, "bad body")),
                        ..Default::default()
                    });
                    continue;
                }
                if let Some(&seq) = store.seq_by_id.get(&message.id) {
                    results.push(SendResult { id: message.id, seq, duplicate: true, error: None });
                    continue;
                }
                store.next_seq += 1;
                let seq = store.next_seq;
                store.seq_by_id.insert(message.id.clone(), seq);
                store.messages.insert(
                    seq,
                    StoredMessage {
                        id: message.id.clone(),
                        body: message.body,
                        receive_count: 0,
                        in_flight: false,
                        attributes: message.attributes,
                        group: message.group,
                        priority: message.priority,
                    },
                );
                results.push(SendResult { id: message.id, seq, duplicate: false, error: None });
            }
            results
        };
        self.0.sent.notify_waiters();
        let errors: Vec<_> = results.iter().map(|r| r.error.clone()).collect();
        single_entry_status(&errors)?;
        answer(ambiguous, SendResponse { results })
    }

    async fn receive(&self, request: Request<ReceiveRequest>) -> Result<Response<ReceiveResponse>, Status> {
        self.0.record(&request, "receive", vec![], request.get_ref().wait_ms);
        let request = request.into_inner();
        let ambiguous = self.0.gate().await?;
        let wait = Duration::from_millis(request.wait_ms);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so that a send between
            // the look and the wait is not missed.
            let sent = self.0.sent.notified();
            let messages = {
                let mut store = self.0.store.lock().unwrap();
                FakeState::check_queue(&store, &request.queue)?;
                store.take_ready(request.max_messages.max(1) as usize)
            };
            if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
                return answer(ambiguous, ReceiveResponse { messages });
            }
            let _ = tokio::time::timeout_at(deadline, sent).await;
        }
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let receipts = request.get_ref().receipts.clone();
        self.0.record_call(&request, Call { method: "ack", receipts, ..Default::default() });
        let ambiguous = self.0.gate().await?;
        let request = request.into_inner();
        let mut store = self.0.store.lock().unwrap();
        FakeState::check_queue(&store, &request.queue)?;
        let results: Vec<ReceiptResult> = request
            .receipts
            .into_iter()
            .map(|receipt| {
                let error = store.ack(&receipt);
                ReceiptResult { receipt, error }
            })
            .collect();
        let errors: Vec<_> = results.iter().map(|r| r.error.clone()).collect();
        single_entry_status(&errors)?;
        answer(ambiguous, AckResponse { results })
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let receipts = request.get_ref().receipts.clone();
        self.0.record_call(&request, Call { method: "nack", receipts, ..Default::default() });
        let ambiguous = self.0.gate().await?;
        let request = request.into_inner();
        let mut store = self.0.store.lock().unwrap();
        let mut results = Vec::new();
        for receipt in request.receipts {
            store.nack(&receipt);
            results.push(ReceiptResult { receipt, error: None });
        }
        drop(store);
        self.0.sent.notify_waiters();
        answer(ambiguous, NackResponse { results })
    }

    async fn set_queue(&self, request: Request<SetQueueRequest>) -> Result<Response<SetQueueResponse>, Status> {
        self.do_set_queue(request).await
    }

    async fn redrive(&self, request: Request<RedriveRequest>) -> Result<Response<RedriveResponse>, Status> {
        self.do_redrive(request).await
    }

    type ConsumeStream = ConsumeResponseStream;

    async fn consume(
        &self,
        request: Request<tonic::Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        self.do_consume(request).await
    }

    async fn change_visibility(
        &self,
        request: Request<ChangeVisibilityRequest>,
    ) -> Result<Response<ChangeVisibilityResponse>, Status> {
        self.0.record(&request, "change_visibility", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let results =
            request.into_inner().receipts.into_iter().map(|receipt| ReceiptResult { receipt, error: None }).collect();
        answer(ambiguous, ChangeVisibilityResponse { results })
    }
}

fn queue_info(store: &Store, name: String) -> QueueInfo {
    let ready = store.messages.values().filter(|m| !m.in_flight).count() as u64;
    let in_flight = store.messages.len() as u64 - ready;
    let config = store.configs.get(&name).cloned().unwrap_or(QueueConfig {
        visibility_timeout_ms: Some(30_000),
        dedup_window_ms: Some(300_000),
        ..Default::default()
    });
    QueueInfo {
        name,
        config: Some(config),
        stats: Some(QueueStats { ready, in_flight, delayed: 1, dead_lettered_total: 2, ..Default::default() }),
        created_at_ms: 1,
    }
}

/// Sets the fields of `update` that are set, as SetQueue does.
fn merge_config(config: &mut QueueConfig, update: QueueConfig) {
    macro_rules! merge {
        ($($field:ident),*) => { $(if update.$field.is_some() { config.$field = update.$field; })* };
    }
    merge!(
        visibility_timeout_ms,
        dedup_window_ms,
        retention_ms,
        message_ttl_ms,
        delay_ms,
        max_messages,
        max_bytes,
        overflow,
        redelivery_backoff,
        fifo,
        content_based_dedup
    );
    if let Some(policy) = update.dead_letter {
        config.dead_letter = (!policy.queue.is_empty()).then_some(policy);
    }
}

impl Service {
    async fn do_set_queue(&self, request: Request<SetQueueRequest>) -> Result<Response<SetQueueResponse>, Status> {
        self.0.record(&request, "set_queue", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let request = request.into_inner();
        let mut store = self.0.store.lock().unwrap();
        FakeState::check_queue(&store, &request.name)?;
        let mut config = store.configs.get(&request.name).cloned().unwrap_or_default();
        merge_config(&mut config, request.config.unwrap_or_default());
        store.configs.insert(request.name.clone(), config);
        answer(ambiguous, SetQueueResponse { queue: Some(queue_info(&store, request.name)) })
    }

    async fn do_redrive(&self, request: Request<RedriveRequest>) -> Result<Response<RedriveResponse>, Status> {
        self.0.record(&request, "redrive", vec![], 0);
        let ambiguous = self.0.gate().await?;
        let request = request.into_inner();
        let mut store = self.0.store.lock().unwrap();
        FakeState::check_queue(&store, &request.queue)?;
        let max = if request.max_messages == 0 { 1000 } else { request.max_messages as usize };
        let seqs: Vec<u64> = store.messages.keys().copied().take(max).collect();
        for seq in &seqs {
            store.messages.remove(seq);
        }
        let remaining = store.messages.len() as u64;
        answer(ambiguous, RedriveResponse { moved: seqs.len() as u64, remaining, skipped: 0 })
    }

    /// A push consumer as the node serves it, minus timeouts: delivers up
    /// to the prefetch, answers acks and nacks in order, and nacks what is
    /// unsettled when the stream ends.
    async fn do_consume(
        &self,
        request: Request<tonic::Streaming<ConsumeRequest>>,
    ) -> Result<Response<ConsumeResponseStream>, Status> {
        self.0.record(&request, "consume", vec![], 0);
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("empty consume stream"))?;
        let Some(consume_request::Request::Start(start)) = first.request else {
            return Err(Status::invalid_argument("the first request must be start"));
        };
        self.0.gate().await?;
        FakeState::check_queue(&self.0.store.lock().unwrap(), &start.queue)?;
        let prefetch = if start.prefetch == 0 { 10 } else { start.prefetch as usize };
        let (tx, rx) = mpsc::channel(prefetch + 16);
        self.0.streams.lock().unwrap().push(tx.downgrade());
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            let mut outstanding: Vec<String> = Vec::new();
            loop {
                let sent = state.sent.notified();
                tokio::pin!(sent);
                sent.as_mut().enable();
                let messages = state.store.lock().unwrap().take_ready(prefetch.saturating_sub(outstanding.len()));
                for message in messages {
                    outstanding.push(message.receipt.clone());
                    let response = ConsumeResponse { response: Some(consume_response::Response::Message(message)) };
                    if tx.send(Ok(response)).await.is_err() {
                        break;
                    }
                }
                let request = tokio::select! {
                    request = input.message() => request,
                    _ = &mut sent => continue,
                    _ = tx.closed() => break,
                };
                let (method, receipts) = match request {
                    Ok(Some(ConsumeRequest { request: Some(consume_request::Request::Ack(a)) })) => {
                        ("consume_ack", a.receipts)
                    }
                    Ok(Some(ConsumeRequest { request: Some(consume_request::Request::Nack(n)) })) => {
                        ("consume_nack", n.receipts)
                    }
                    _ => break,
                };
                state.push_call(Call { method, receipts: receipts.clone(), ..Default::default() });
                if state.mute_streams.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let results = {
                    let mut store = state.store.lock().unwrap();
                    receipts
                        .into_iter()
                        .map(|receipt| {
                            let error = if method == "consume_ack" {
                                store.ack(&receipt)
                            } else {
                                store.nack(&receipt);
                                None
                            };
                            outstanding.retain(|r| *r != receipt);
                            ReceiptResult { receipt, error }
                        })
                        .collect()
                };
                let response =
                    ConsumeResponse { response: Some(consume_response::Response::Results(ReceiptResults { results })) };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            let mut store = state.store.lock().unwrap();
            for receipt in outstanding {
                store.nack(&receipt);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type ConsumeResponseStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ConsumeResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Cluster for Service {
    async fn node_status(&self, _request: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        let state = &self.0;
        let (role, leader) = match state.mode.lock().unwrap().clone() {
            Mode::Leader => ("leader", Some((state.id, state.address.clone()))),
            Mode::NotLeader(hint) => ("follower", hint),
        };
        Ok(Response::new(NodeStatusResponse {
            id: state.id,
            address: state.address.clone(),
            role: role.into(),
            leader_id: leader.as_ref().map(|(id, _)| *id),
            leader_address: leader.map(|(_, a)| a).unwrap_or_default(),
            term: 7,
            last_log_index: 10,
            committed_index: 10,
            applied_index: 9,
            members: state
                .members
                .lock()
                .unwrap()
                .iter()
                .map(|(id, address)| Member { id: *id, address: address.clone(), voter: true })
                .collect(),
            initialized: true,
            millis_since_quorum_ack: None,
            snapshot_index: 0,
            purged_index: 0,
            alarms: Vec::new(),
        }))
    }

    async fn add_node(&self, request: Request<AddNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        let ambiguous = self.0.gate().await?;
        let r = request.into_inner();
        let mut members = self.0.members.lock().unwrap();
        if !members.iter().any(|(id, _)| *id == r.id) {
            members.push((r.id, r.address));
        }
        answer(ambiguous, membership(&members))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        let ambiguous = self.0.gate().await?;
        let id = request.into_inner().id;
        let mut members = self.0.members.lock().unwrap();
        let before = members.len();
        members.retain(|(m, _)| *m != id);
        if members.len() == before {
            return Err(Status::not_found(format!("node {id} is not a member of the cluster")));
        }
        answer(ambiguous, membership(&members))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let ambiguous = self.0.gate().await?;
        let id = request.into_inner().id;
        let members = self.0.members.lock().unwrap();
        let Some((_, address)) = members.iter().find(|(m, _)| *m == id) else {
            return Err(Status::not_found(format!("node {id} is not a member of the cluster")));
        };
        answer(ambiguous, TransferLeaderResponse { leader_id: id, leader_address: address.clone(), term: 8 })
    }
}

fn membership(members: &[(u64, String)]) -> MembershipResponse {
    MembershipResponse {
        members: members
            .iter()
            .map(|(id, address)| Member { id: *id, address: address.clone(), voter: true })
            .collect(),
    }
}

/// A running fake node. Dropping it leaves the server running until the
/// test's runtime ends; [`FakeNode::stop`] closes its port.
pub struct FakeNode {
    pub address: String,
    pub state: Arc<FakeState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeNode {
    pub async fn start(id: u64, mode: Mode) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = Arc::new(FakeState {
            id,
            address: address.clone(),
            mode: Mutex::new(mode),
            script: Mutex::new(VecDeque::new()),
            calls: Mutex::new(Vec::new()),
            store: Mutex::new(Store::default()),
            members: Mutex::new(Vec::new()),
            sent: Notify::new(),
            streams: Mutex::new(Vec::new()),
            mute_streams: std::sync::atomic::AtomicBool::new(false),
        });
        let service = Service(Arc::clone(&state));
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(QueuesServer::new(service.clone()))
                .add_service(ClusterServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = signal.await;
                })
                .await
                .unwrap();
        });
        FakeNode { address, state, shutdown: Some(shutdown), task: Some(task) }
    }

    /// Shuts the server down and waits until its port is closed.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// An address on which nothing listens: connecting is refused.
pub async fn closed_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// Waits until `condition` holds, failing the test after `deadline`.
pub async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + deadline;
    while !condition() {
        assert!(tokio::time::Instant::now() < give_up, "gave up after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An address that accepts TCP connections and never says a word: a frozen
/// process or a network that drops everything after the handshake.
pub async fn black_hole_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    address
}
