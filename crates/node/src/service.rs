//! The client-facing gRPC services: queues (`proto/client.proto`) and
//! cluster status (`proto/admin.proto`). Requests are checked here, turned
//! into state machine commands stamped with this leader's clock, and proposed
//! through Raft; nothing is answered before its entry is committed and
//! applied.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use quorumq_proto::admin as admin_pb;
use quorumq_proto::client as pb;
use quorumq_raft_state_machine as qsm;
use quorumq_raft_state_machine::Command;
use quorumq_raft_state_machine::Outcome;
use quorumq_raft_state_machine::QueueError;
use quorumq_raft_state_machine::limits as sm_limits;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::convert::*;
use crate::errors;
use crate::limits;
use crate::receipt;
use crate::sm_store::StateMachineStore;
use crate::types::*;

/// What the services share: this node's Raft group and its settings.
pub struct NodeCtx {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub message_bytes_max: usize,
    pub push_consumers: Arc<crate::consume::ConsumerCounts>,
    /// Resource alarms of this node and its voters: sends are refused while
    /// any is on.
    pub alarms: Arc<crate::alarms::Alarms>,
    /// Every command is proposed through it (group commit, `batcher.rs`).
    pub batcher: crate::batcher::Batcher,
}

/// Wall-clock milliseconds since the Unix epoch: the leader's timestamp for
/// the commands it proposes.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long this request may take here: 90% of the caller's `grpc-timeout`
/// (so that our own answer, even a timeout, reaches the caller before its
/// clock runs out), capped; a default when the caller set none.
fn write_timeout<T>(request: &Request<T>) -> Duration {
    caller_budget(request).unwrap_or(limits::WRITE_TIMEOUT_DEFAULT)
}

/// How long a membership change may take: the caller's budget (adding a
/// node waits for it to copy the log), or a default.
fn membership_timeout<T>(request: &Request<T>) -> Duration {
    budget_capped(request, limits::MEMBERSHIP_TIMEOUT_MAX).unwrap_or(limits::MEMBERSHIP_TIMEOUT_DEFAULT)
}

fn caller_budget<T>(request: &Request<T>) -> Option<Duration> {
    budget_capped(request, limits::WRITE_TIMEOUT_MAX)
}

/// 90% of the caller's `grpc-timeout`, at most `max`.
fn budget_capped<T>(request: &Request<T>, max: Duration) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|d| (d * 9 / 10).min(max))
}

fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (value, unit) = s.split_at(s.len().checked_sub(1)?);
    let value: u64 = value.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn check_queue_name(name: &str) -> Result<(), Status> {
    qsm::validate_queue_name(name).map_err(|e| errors::queue_error(&e))
}

/// The leader this node knows, with its address.
fn leader_hint(raft: &Raft) -> Option<(NodeId, String)> {
    let metrics = raft.metrics().borrow_watched().clone();
    let leader = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&leader)?.clone();
    Some((leader, node.addr))
}

/// NOT_LEADER, with the leader's address when known, unless this node leads.
pub(crate) fn require_leader(raft: &Raft) -> Result<(), Status> {
    if raft.is_leader() { Ok(()) } else { Err(errors::not_leader(leader_hint(raft))) }
}

impl NodeCtx {
    pub(crate) fn require_leader(&self) -> Result<(), Status> {
        require_leader(&self.raft)
    }

    /// Proposes a command, stamped with this leader's clock, in an entry of
    /// its own or with concurrent commands (group commit, `batcher.rs`), and
    /// waits until it is committed by a majority and applied, or until
    /// `timeout` (then the outcome is unknown to us).
    pub(crate) async fn write(&self, command: Command, timeout: Duration) -> Result<Outcome, Status> {
        match tokio::time::timeout(timeout, self.batcher.write(command)).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "not confirmed by a quorum within {timeout:?}: the outcome is unknown (is a majority of nodes up?)"
            ))),
            Ok(result) => result,
        }
    }

    /// Waits until this node is confirmed leader by a quorum and has applied
    /// everything committed before the call: reads after it are linearizable.
    async fn linearizable(&self, timeout: Duration) -> Result<(), Status> {
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Err(_) => {
                Err(Status::deadline_exceeded(format!("leadership not confirmed by a quorum within {timeout:?}")))
            }
            Ok(Err(e)) => Err(errors::read_error(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    pub(crate) fn state_now(&self) -> u64 {
        now_ms().max(self.sm.read(|a| a.state.now_ms()))
    }

    /// Ack, Nack and ChangeVisibility share this: decode receipts (a
    /// malformed one fails alone), propose the well-formed ones, and merge
    /// the results back in request order.
    pub(crate) async fn receipts_command(
        &self,
        queue: String,
        receipts: Vec<String>,
        timeout: Duration,
        make: impl FnOnce(String, Vec<qsm::Receipt>) -> Command,
    ) -> Result<Vec<pb::ReceiptResult>, Status> {
        check_queue_name(&queue)?;
        check_receipt_count(receipts.len())?;
        let decoded: Vec<Option<qsm::Receipt>> = receipts.iter().map(|r| receipt::decode(r)).collect();
        let valid: Vec<qsm::Receipt> = decoded.iter().flatten().copied().collect();
        let mut outcomes = if valid.is_empty() {
            Vec::new()
        } else {
            match self.write(make(queue, valid), timeout).await? {
                Outcome::Receipts(results) => results,
                other => return Err(unexpected(other)),
            }
        }
        .into_iter();
        let results: Vec<pb::ReceiptResult> = receipts
            .into_iter()
            .zip(decoded)
            .map(|(text, decoded)| {
                let error = match decoded {
                    None => Some(pb::EntryError {
                        code: tonic::Code::InvalidArgument as i32,
                        message: format!("malformed receipt {:?}", text.chars().take(64).collect::<String>()),
                    }),
                    Some(_) => match outcomes.next().expect("one result per proposed receipt") {
                        Ok(()) => None,
                        Err(e) => Some(errors::entry_error(&e)),
                    },
                };
                pb::ReceiptResult { receipt: text, error }
            })
            .collect();
        let failures: Vec<_> = results.iter().map(|r| r.error.as_ref()).collect();
        single_entry_failure(&failures)?;
        Ok(results)
    }

    /// The messages of a Receive's deliveries, bodies read from the store.
    pub(crate) fn messages_for(
        &self,
        queue: &str,
        queue_id: qsm::QueueId,
        deliveries: &[qsm::Delivery],
    ) -> Result<Vec<pb::Message>, Status> {
        let mut messages = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let record = self
                .sm
                .load_message(queue_id, d.receipt.seq)
                .map_err(|e| Status::internal(format!("reading message: {e}")))?;
            let Some(record) = record else {
                tracing::error!(queue = %queue, seq = d.receipt.seq.0, "delivered message has no stored record");
                continue;
            };
            messages.push(message_to_pb(queue_id, d, record));
        }
        Ok(messages)
    }
}

fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

fn attribute_len(v: &pb::AttributeValue) -> usize {
    match &v.value {
        Some(pb::attribute_value::Value::StringValue(s)) => s.len(),
        Some(pb::attribute_value::Value::BinaryValue(b)) => b.len(),
        None => 0,
    }
}

/// Request-level checks on a receipt batch.
fn check_receipt_count(n: usize) -> Result<(), Status> {
    if n == 0 {
        return Err(Status::invalid_argument("no receipts given"));
    }
    if n > sm_limits::RECEIPT_BATCH_ENTRIES_MAX {
        return Err(Status::invalid_argument(format!(
            "{n} receipts in one request, more than the limit of {}",
            sm_limits::RECEIPT_BATCH_ENTRIES_MAX
        )));
    }
    Ok(())
}

/// A one-entry request whose entry failed fails as a whole, with that
/// entry's status (see proto/client.proto).
fn single_entry_failure(errors: &[Option<&pb::EntryError>]) -> Result<(), Status> {
    match errors {
        [Some(e)] => Err(errors::entry_status(e)),
        _ => Ok(()),
    }
}

pub struct QueueService {
    ctx: Arc<NodeCtx>,
}

impl QueueService {
    pub fn new(ctx: Arc<NodeCtx>) -> QueueService {
        QueueService { ctx }
    }
}

#[tonic::async_trait]
impl pb::queues_server::Queues for QueueService {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let timeout = write_timeout(&request);
        let request = request.into_inner();
        check_queue_name(&request.name)?;
        let config = queue_config_from_pb(request.config)?;
        match self.ctx.write(Command::CreateQueue { name: request.name, config }, timeout).await? {
            Outcome::QueueCreated { queue, created } => {
                Ok(Response::new(pb::CreateQueueResponse { queue: Some(queue_info_to_pb(queue)), created }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let timeout = write_timeout(&request);
        let name = request.into_inner().name;
        check_queue_name(&name)?;
        match self.ctx.write(Command::DeleteQueue { name }, timeout).await? {
            Outcome::QueueDeleted { messages_deleted } => {
                Ok(Response::new(pb::DeleteQueueResponse { messages_deleted }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.ctx.linearizable(write_timeout(&request)).await?;
        let now = self.ctx.state_now();
        let queues = self.ctx.sm.read(|a| a.state.list_queues(now));
        Ok(Response::new(pb::ListQueuesResponse { queues: queues.into_iter().map(queue_info_to_pb).collect() }))
    }

    async fn get_queue(&self, request: Request<pb::GetQueueRequest>) -> Result<Response<pb::GetQueueResponse>, Status> {
        let timeout = write_timeout(&request);
        let name = request.into_inner().name;
        check_queue_name(&name)?;
        self.ctx.linearizable(timeout).await?;
        let now = self.ctx.state_now();
        let info = self
            .ctx
            .sm
            .read(|a| a.state.queue_info(&name, now))
            .ok_or_else(|| errors::queue_error(&QueueError::QueueNotFound { name }))?;
        Ok(Response::new(pb::GetQueueResponse { queue: Some(queue_info_to_pb(info)) }))
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let timeout = write_timeout(&request);
        let name = request.into_inner().name;
        check_queue_name(&name)?;
        match self.ctx.write(Command::PurgeQueue { name }, timeout).await? {
            Outcome::QueuePurged { messages_deleted } => Ok(Response::new(pb::PurgeQueueResponse { messages_deleted })),
            other => Err(unexpected(other)),
        }
    }

    async fn send(&self, request: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        let timeout = write_timeout(&request);
        let request = request.into_inner();
        check_queue_name(&request.queue)?;
        // A resource alarm on any voter blocks producers, every entry of
        // every send; consumers keep draining (alarms.rs).
        if let Some(refusal) = self.ctx.alarms.send_refusal() {
            return Err(errors::resource_alarm(refusal));
        }
        let count = request.messages.len();
        if count == 0 {
            return Err(Status::invalid_argument("no messages given"));
        }
        if count > sm_limits::SEND_BATCH_ENTRIES_MAX {
            return Err(Status::invalid_argument(format!(
                "{count} messages in one send, more than the limit of {}",
                sm_limits::SEND_BATCH_ENTRIES_MAX
            )));
        }
        let total: usize = request
            .messages
            .iter()
            .map(|m| m.body.len() + m.attributes.iter().map(|(k, v)| k.len() + attribute_len(v)).sum::<usize>())
            .sum();
        if total > sm_limits::SEND_BATCH_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "{total} bytes in one send, more than the limit of {} bytes",
                sm_limits::SEND_BATCH_BYTES_MAX
            )));
        }
        // Entries that break a limit fail alone; the rest are proposed.
        let checked: Vec<Result<qsm::NewMessage, QueueError>> =
            request.messages.into_iter().map(|m| new_message_from_pb(m, self.ctx.message_bytes_max)).collect();
        let ids: Vec<Option<String>> = checked.iter().map(|c| c.as_ref().ok().and_then(|m| m.id.clone())).collect();
        let valid: Vec<qsm::NewMessage> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let (queue_id, mut outcomes) = if valid.is_empty() {
            (qsm::QueueId(0), Vec::new().into_iter())
        } else {
            match self.ctx.write(Command::Send { queue: request.queue, messages: valid }, timeout).await? {
                Outcome::Sent { queue_id, results } => (queue_id, results.into_iter()),
                other => return Err(unexpected(other)),
            }
        };
        let results: Vec<pb::SendResult> = checked
            .into_iter()
            .zip(ids)
            .map(|(checked, id)| {
                let result = match checked {
                    Err(e) => Err(e),
                    Ok(_) => outcomes.next().expect("one result per proposed message"),
                };
                match result {
                    Ok(sent) => pb::SendResult {
                        id: qsm::message_id(queue_id, sent.seq, id.as_deref()),
                        seq: sent.seq.0,
                        duplicate: sent.duplicate,
                        error: None,
                    },
                    Err(e) => pb::SendResult {
                        id: id.unwrap_or_default(),
                        seq: 0,
                        duplicate: false,
                        error: Some(errors::entry_error(&e)),
                    },
                }
            })
            .collect();
        let failures: Vec<_> = results.iter().map(|r| r.error.as_ref()).collect();
        single_entry_failure(&failures)?;
        Ok(Response::new(pb::SendResponse { results }))
    }

    async fn receive(&self, request: Request<pb::ReceiveRequest>) -> Result<Response<pb::ReceiveResponse>, Status> {
        let budget = caller_budget(&request);
        let request = request.into_inner();
        let queue = request.queue;
        check_queue_name(&queue)?;
        let max_messages = request.max_messages.max(1);
        if max_messages > sm_limits::RECEIVE_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "cannot receive {max_messages} messages at once; the limit is {}",
                sm_limits::RECEIVE_MESSAGES_MAX
            )));
        }
        if let Some(v) = request.visibility_timeout_ms {
            qsm::validate_visibility_timeout(v).map_err(|e| errors::queue_error(&e))?;
        }
        let wait = Duration::from_millis(request.wait_ms);
        if wait > limits::LONG_POLL_WAIT_MAX {
            return Err(Status::invalid_argument(format!(
                "cannot wait {wait:?}; long polls wait at most {:?}",
                limits::LONG_POLL_WAIT_MAX
            )));
        }
        // The whole call, wait and Receive write included, must end within
        // the caller's budget: stop waiting while a fifth of it is left.
        let timeout = budget.unwrap_or(wait + limits::WRITE_TIMEOUT_DEFAULT);
        let started = Instant::now();
        let budget_end = started + timeout;
        let until = (started + wait).min(budget_end - timeout / 5);
        loop {
            // Register for wake-ups before looking, so that a message applied
            // between the look and the wait is not missed.
            let notify = self.ctx.sm.notifier().queue(&queue);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            self.ctx.require_leader()?;
            let now = self.ctx.state_now();
            let (visible, next_visible_at) =
                self.ctx.sm.read(|a| (a.state.has_visible(&queue, now), a.state.next_visible_at(&queue)));
            // Proposing a Receive costs a Raft round; skip it when the local
            // state shows nothing to deliver.
            if visible.map_err(|e| errors::queue_error(&e))? {
                let command = Command::Receive {
                    queue: queue.clone(),
                    max_messages,
                    visibility_timeout_ms: request.visibility_timeout_ms,
                };
                let write_budget = budget_end.saturating_duration_since(Instant::now()).max(timeout / 5);
                let (queue_id, deliveries) = match self.ctx.write(command, write_budget).await? {
                    Outcome::Received { queue_id, deliveries } => (queue_id, deliveries),
                    other => return Err(unexpected(other)),
                };
                if !deliveries.is_empty() {
                    let messages = self.ctx.messages_for(&queue, queue_id, &deliveries)?;
                    return Ok(Response::new(pb::ReceiveResponse { messages }));
                }
            }
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Response::new(pb::ReceiveResponse { messages: Vec::new() }));
            }
            // Wake when a message is applied, when an in-flight message's
            // visibility timeout ends, or when the wait is over.
            let mut sleep_for = remaining;
            if let Some(at) = next_visible_at {
                sleep_for = sleep_for.min(Duration::from_millis(at.saturating_sub(now) + 1));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(sleep_for) => {}
            }
        }
    }

    async fn set_queue(&self, request: Request<pb::SetQueueRequest>) -> Result<Response<pb::SetQueueResponse>, Status> {
        let timeout = write_timeout(&request);
        let request = request.into_inner();
        check_queue_name(&request.name)?;
        let current_fifo = self.ctx.sm.read(|a| a.state.queue_info(&request.name, 0).map(|q| q.config.fifo));
        let update = queue_update_from_pb(request.config.unwrap_or_default(), current_fifo)?;
        match self.ctx.write(Command::SetQueue { name: request.name, update }, timeout).await? {
            Outcome::QueueUpdated { queue } => {
                Ok(Response::new(pb::SetQueueResponse { queue: Some(queue_info_to_pb(queue)) }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn redrive(&self, request: Request<pb::RedriveRequest>) -> Result<Response<pb::RedriveResponse>, Status> {
        let timeout = write_timeout(&request);
        let request = request.into_inner();
        check_queue_name(&request.queue)?;
        let to = (!request.to_queue.is_empty()).then_some(request.to_queue);
        if let Some(to) = &to {
            check_queue_name(to)?;
        }
        let command = Command::Redrive { queue: request.queue, to, max_messages: request.max_messages };
        match self.ctx.write(command, timeout).await? {
            Outcome::Redriven { moved, remaining, skipped } => {
                Ok(Response::new(pb::RedriveResponse { moved, remaining, skipped }))
            }
            other => Err(unexpected(other)),
        }
    }

    type ConsumeStream = crate::consume::ConsumeStream;

    async fn consume(
        &self,
        request: Request<tonic::Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        crate::consume::start(self.ctx.clone(), request.into_inner()).await.map(Response::new)
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let timeout = write_timeout(&request);
        let r = request.into_inner();
        let results = self
            .ctx
            .receipts_command(r.queue, r.receipts, timeout, |queue, receipts| Command::Ack { queue, receipts })
            .await?;
        Ok(Response::new(pb::AckResponse { results }))
    }

    async fn nack(&self, request: Request<pb::NackRequest>) -> Result<Response<pb::NackResponse>, Status> {
        let timeout = write_timeout(&request);
        let r = request.into_inner();
        let (delay_ms, dead_letter) = (r.delay_ms, r.dead_letter);
        let results = self
            .ctx
            .receipts_command(r.queue, r.receipts, timeout, |queue, receipts| Command::Nack {
                queue,
                receipts,
                delay_ms,
                dead_letter,
            })
            .await?;
        Ok(Response::new(pb::NackResponse { results }))
    }

    async fn change_visibility(
        &self,
        request: Request<pb::ChangeVisibilityRequest>,
    ) -> Result<Response<pb::ChangeVisibilityResponse>, Status> {
        let timeout = write_timeout(&request);
        let r = request.into_inner();
        let visibility_timeout_ms = r.visibility_timeout_ms;
        qsm::validate_visibility_timeout(visibility_timeout_ms).map_err(|e| errors::queue_error(&e))?;
        let results = self
            .ctx
            .receipts_command(r.queue, r.receipts, timeout, |queue, receipts| Command::ChangeVisibility {
                queue,
                receipts,
                visibility_timeout_ms,
            })
            .await?;
        Ok(Response::new(pb::ChangeVisibilityResponse { results }))
    }
}

pub struct ClusterService {
    ctx: Arc<NodeCtx>,
}

impl ClusterService {
    pub fn new(ctx: Arc<NodeCtx>) -> ClusterService {
        ClusterService { ctx }
    }
}

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl admin_pb::cluster_server::Cluster for ClusterService {
    async fn node_status(
        &self,
        _request: Request<admin_pb::NodeStatusRequest>,
    ) -> Result<Response<admin_pb::NodeStatusResponse>, Status> {
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let members = crate::membership::members_of(&m);
        let leader_address =
            m.current_leader.and_then(|id| membership.get_node(&id).map(|n| n.addr.clone())).unwrap_or_default();
        let initialized = m.last_log_index.is_some() || m.vote.leader_id().term > 0;
        Ok(Response::new(admin_pb::NodeStatusResponse {
            id: self.ctx.id,
            address: self.ctx.addr.clone(),
            role: role_name(m.state).to_string(),
            leader_id: m.current_leader,
            leader_address,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map_or(0, |id| id.index()),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index()),
            members,
            initialized,
            millis_since_quorum_ack: m
                .last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64),
            snapshot_index: m.snapshot.as_ref().map_or(0, |id| id.index()),
            purged_index: m.purged.as_ref().map_or(0, |id| id.index()),
            alarms: self.ctx.alarms.local_wire(),
        }))
    }

    async fn add_node(
        &self,
        request: Request<admin_pb::AddNodeRequest>,
    ) -> Result<Response<admin_pb::MembershipResponse>, Status> {
        let timeout = membership_timeout(&request);
        let r = request.into_inner();
        let members = crate::membership::add_node(&self.ctx.raft, r.id, &r.address, r.learner_only, timeout).await?;
        Ok(Response::new(admin_pb::MembershipResponse { members }))
    }

    async fn remove_node(
        &self,
        request: Request<admin_pb::RemoveNodeRequest>,
    ) -> Result<Response<admin_pb::MembershipResponse>, Status> {
        let timeout = membership_timeout(&request);
        let members = crate::membership::remove_node(&self.ctx.raft, request.into_inner().id, timeout).await?;
        Ok(Response::new(admin_pb::MembershipResponse { members }))
    }

    async fn transfer_leader(
        &self,
        request: Request<admin_pb::TransferLeaderRequest>,
    ) -> Result<Response<admin_pb::TransferLeaderResponse>, Status> {
        let timeout = membership_timeout(&request).min(limits::TRANSFER_LEADER_TIMEOUT_MAX);
        let (leader_id, leader_address, term) =
            crate::membership::transfer_leader(&self.ctx.raft, request.into_inner().id, timeout).await?;
        Ok(Response::new(admin_pb::TransferLeaderResponse { leader_id, leader_address, term }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// grpc-timeout headers in every unit parse; garbage does not.
    #[test]
    fn grpc_timeout_header() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }
}
