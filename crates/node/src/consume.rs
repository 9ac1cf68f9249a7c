//! Push consumers: the `Consume` stream.
//!
//! A consumer task per stream, on the leader. While the consumer has fewer
//! unacknowledged deliveries than its prefetch, the task proposes Receives
//! (as soon as messages are applied: it waits on the queue's notifier, not a
//! timer) and pushes what they return. Acks and nacks arrive on the stream
//! or through the unary calls; the task notices both. When the stream ends,
//! the task nacks what is still unacknowledged, so that those messages are
//! visible again at once. A delivery held longer than the consumer timeout
//! ends the stream.
//!
//! Pipelining: the task never waits for one write before starting the next.
//! Up to [`limits::CONSUME_RECEIVES_IN_FLIGHT`] Receives and
//! [`limits::CONSUME_SETTLES_IN_FLIGHT`] acks/nacks are proposed at a time,
//! so they share Raft entries through the batcher; deliveries are pushed in
//! the order their Receives were proposed, answers in the order their
//! requests came. Waiting for each write in turn (receive, push, wait for the
//! ack, propose it, wait for its commit, receive again) held one consumer
//! with prefetch 256 to 8.5k msgs/s; pipelined it reached 27.6-39.3k on the same
//! machine (BENCHMARKS.md).
//!
//! Fairness: a consumer takes at most its share of what is visible (the
//! visible count divided by the queue's push consumers on this node), so
//! that competing consumers split a burst instead of the first to wake
//! taking it all.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use quorumq_proto::client as pb;
use quorumq_raft_state_machine as qsm;
use quorumq_raft_state_machine::Command;
use quorumq_raft_state_machine::Outcome;
use quorumq_raft_state_machine::limits as sm_limits;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tonic::Streaming;

use crate::errors;
use crate::limits;
use crate::receipt;
use crate::service::NodeCtx;

pub type ConsumeStream = Pin<Box<dyn Stream<Item = Result<pb::ConsumeResponse, Status>> + Send>>;

/// Push consumers per queue on this node.
#[derive(Default)]
pub struct ConsumerCounts {
    counts: Mutex<HashMap<String, usize>>,
}

struct Registration {
    counts: Arc<ConsumerCounts>,
    queue: String,
}

impl ConsumerCounts {
    fn register(self: &Arc<Self>, queue: &str) -> Registration {
        *self.counts.lock().expect("consumer counts").entry(queue.to_string()).or_default() += 1;
        Registration { counts: self.clone(), queue: queue.to_string() }
    }

    fn get(&self, queue: &str) -> usize {
        self.counts.lock().expect("consumer counts").get(queue).copied().unwrap_or(0).max(1)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().expect("consumer counts");
        if let Some(n) = counts.get_mut(&self.queue) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.queue);
            }
        }
    }
}

/// Checks the first request and starts the consumer task.
pub async fn start(ctx: Arc<NodeCtx>, mut input: Streaming<pb::ConsumeRequest>) -> Result<ConsumeStream, Status> {
    let first = input.message().await?.ok_or_else(|| Status::invalid_argument("empty consume stream"))?;
    let Some(pb::consume_request::Request::Start(start)) = first.request else {
        return Err(Status::invalid_argument("the first request of a consume stream must be `start`"));
    };
    qsm::validate_queue_name(&start.queue).map_err(|e| errors::queue_error(&e))?;
    let prefetch = if start.prefetch == 0 { 10 } else { start.prefetch };
    if prefetch > sm_limits::RECEIVE_MESSAGES_MAX {
        return Err(Status::invalid_argument(format!(
            "prefetch {prefetch} is more than the limit of {}",
            sm_limits::RECEIVE_MESSAGES_MAX
        )));
    }
    ctx.require_leader()?;
    let queue_timeout = ctx
        .sm
        .read(|a| a.state.queue_info(&start.queue, 0).map(|q| q.config.visibility_timeout_ms))
        .ok_or_else(|| errors::queue_error(&qsm::QueueError::QueueNotFound { name: start.queue.clone() }))?;
    let consumer_timeout_ms = start.consumer_timeout_ms.unwrap_or(queue_timeout);
    qsm::validate_visibility_timeout(consumer_timeout_ms).map_err(|e| errors::queue_error(&e))?;
    if consumer_timeout_ms == 0 {
        return Err(Status::invalid_argument("the consumer timeout must be positive"));
    }
    let (tx, rx) = mpsc::channel(prefetch as usize + limits::CONSUME_CHANNEL_SLACK);
    let consumer = Consumer {
        registration: ctx.push_consumers.register(&start.queue),
        ctx,
        queue: start.queue,
        prefetch,
        timeout: Duration::from_millis(consumer_timeout_ms),
        outstanding: BTreeMap::new(),
        requested: 0,
        tx,
    };
    tokio::spawn(consumer.run(input));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Unacknowledged deliveries: receipt text → (receipt, when the consumer
/// timeout ends).
type Outstanding = BTreeMap<String, (qsm::Receipt, Instant)>;

/// What a Receive proposed by the consumer brings back: the deliveries and
/// the messages read for them (a delivery whose record is missing has no
/// message, see [`NodeCtx::messages_for`]).
type Received = Result<(Vec<qsm::Delivery>, Vec<pb::Message>), Status>;

/// A Receive in flight: the task proposing it, and how many messages it
/// asked for.
type Receiving = JoinHandle<(u32, Received)>;

/// What an ack or nack request on the stream comes to: the answer to push,
/// or the status that ends the stream together with the deliveries it was
/// about (they count as unsettled again, to be released).
type Settled = Result<pb::ConsumeResponse, (Status, Outstanding)>;

struct Consumer {
    ctx: Arc<NodeCtx>,
    queue: String,
    prefetch: u32,
    timeout: Duration,
    outstanding: Outstanding,
    /// Messages asked for by the Receives in flight.
    requested: u32,
    tx: mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    #[allow(dead_code)]
    registration: Registration,
}

type MakeCommand = Box<dyn FnOnce(String, Vec<qsm::Receipt>) -> Command + Send>;

/// What the consumer does next when it has no Receive in flight.
enum Plan {
    /// A Receive was proposed.
    Receiving(Receiving),
    /// Nothing to receive now; look again after this long at the latest.
    Wait(Duration),
}

fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, Status> {
    result.map_err(|e| Status::internal(format!("consumer task failed: {e}")))
}

impl Consumer {
    /// The consumer's loop. Receives and settles are pipelined: up to
    /// [`limits::CONSUME_RECEIVES_IN_FLIGHT`] Receives may be in flight
    /// (their deliveries are pushed in the order they were proposed, which
    /// FIFO groups need) while acks and nacks from the stream are proposed
    /// (each in a task of its own, so they reach the batcher at once and
    /// share Raft entries with each other and with the Receive), and their
    /// answers are pushed in request order as they complete. A delivery
    /// counts as settled from the moment its ack or nack is taken from the
    /// stream, so the next Receive can be proposed while that ack commits;
    /// it is proposed after the ack, so the ack applies first.
    async fn run(mut self, mut input: Streaming<pb::ConsumeRequest>) {
        let mut receiving: FuturesOrdered<Receiving> = FuturesOrdered::new();
        let mut settling: FuturesOrdered<JoinHandle<Settled>> = FuturesOrdered::new();
        // Set after a Receive that found nothing: wait for a wake-up before
        // the next one, so that a `has_visible` that keeps saying yes cannot
        // spin.
        let mut found_nothing = false;
        let end: Option<Status> = loop {
            let notify = self.ctx.sm.notifier().queue(&self.queue);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if let Err(status) = self.ctx.require_leader() {
                break Some(status);
            }
            // The consumer timeout is checked before looking for deliveries
            // settled elsewhere: a delivery held too long must end the
            // stream, not be mistaken for one acked outside it.
            if self.outstanding.values().any(|(_, t)| *t <= Instant::now()) {
                break Some(self.timed_out());
            }
            let mut poll = limits::CONSUME_IDLE_RECHECK;
            if receiving.len() < limits::CONSUME_RECEIVES_IN_FLIGHT && !found_nothing {
                match self.plan() {
                    Err(status) => break Some(status),
                    Ok(Plan::Receiving(handle)) => receiving.push_back(handle),
                    Ok(Plan::Wait(wait)) => poll = wait,
                }
            }
            found_nothing = false;
            let room = receiving.len() < limits::CONSUME_RECEIVES_IN_FLIGHT && self.free() > 0;
            let earliest = self.outstanding.values().map(|(_, t)| *t).min();

            // Wait for: a request on the stream (while not too many settles
            // are pending), a settle's answer, the Receive's deliveries, the
            // client going away, new messages (when there is room), the next
            // in-flight message becoming visible, or the oldest delivery's
            // consumer timeout.
            tokio::select! {
                request = input.message(), if settling.len() < limits::CONSUME_SETTLES_IN_FLIGHT => match request {
                    Ok(Some(request)) => match self.settle(request) {
                        Ok(handle) => settling.push_back(handle),
                        Err(status) => break Some(status),
                    },
                    Ok(None) | Err(_) => break None,
                },
                Some(done) = settling.next(), if !settling.is_empty() => match joined(done) {
                    Ok(Ok(response)) => {
                        if self.tx.send(Ok(response)).await.is_err() {
                            break None;
                        }
                    }
                    Ok(Err((status, unsettled))) => {
                        self.outstanding.extend(unsettled);
                        break Some(status);
                    }
                    Err(status) => break Some(status),
                },
                Some(done) = receiving.next(), if !receiving.is_empty() => {
                    let (requested, result) = match joined(done) {
                        Ok(done) => done,
                        Err(status) => break Some(status),
                    };
                    self.requested -= requested;
                    match self.received(result).await {
                        Err(end) => break end,
                        Ok(found) => found_nothing = !found,
                    }
                }
                _ = self.tx.closed() => break None,
                _ = &mut notified, if room => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tokio::time::sleep_until(earliest.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if earliest.is_some() => {}
            }
        };
        if let Some(status) = end {
            let _ = self.tx.send(Err(status)).await;
        }
        // What is still in flight finishes first: a Receive's deliveries are
        // released with the rest, a failed settle's deliveries too.
        while let Some(done) = receiving.next().await {
            if let Ok((_, Ok((deliveries, _)))) = done {
                self.track(&deliveries);
            }
        }
        while let Some(done) = settling.next().await {
            if let Ok(Err((_, unsettled))) = done {
                self.outstanding.extend(unsettled);
            }
        }
        // Whatever is still unacknowledged becomes visible again now.
        if !self.outstanding.is_empty() {
            let receipts: Vec<String> = self.outstanding.keys().cloned().collect();
            let queue = self.queue.clone();
            let result = self
                .ctx
                .receipts_command(queue, receipts, limits::WRITE_TIMEOUT_DEFAULT, |queue, receipts| Command::Nack {
                    queue,
                    receipts,
                    delay_ms: 0,
                    dead_letter: false,
                })
                .await;
            if let Err(status) = result {
                tracing::info!(queue = %self.queue, %status, "could not release a closed consumer's deliveries; they come back after their timeout");
            }
        }
    }

    fn timed_out(&self) -> Status {
        Status::deadline_exceeded(format!(
            "consumer timeout: a delivery was not acked or nacked within {:?}",
            self.timeout
        ))
    }

    /// Room for more deliveries: the prefetch less the unsettled ones and
    /// those the Receive in flight may bring.
    fn free(&self) -> u32 {
        self.prefetch.saturating_sub(self.outstanding.len() as u32).saturating_sub(self.requested)
    }

    /// Forgets deliveries that were acked or nacked outside the stream (or
    /// timed out and were delivered again).
    fn settle_elsewhere(&mut self) {
        let queue = &self.queue;
        let gone: Vec<String> = self.ctx.sm.read(|a| {
            self.outstanding
                .iter()
                .filter(|(_, (r, _))| !a.state.is_in_flight(queue, r))
                .map(|(k, _)| k.clone())
                .collect()
        });
        for key in gone {
            self.outstanding.remove(&key);
        }
    }

    /// Proposes a Receive when there is room and something visible.
    fn plan(&mut self) -> Result<Plan, Status> {
        if self.free() == 0 {
            // Full: deliveries acked through the unary calls free room too.
            self.settle_elsewhere();
            if self.free() == 0 {
                return Ok(Plan::Wait(limits::CONSUME_FULL_RECHECK));
            }
        }
        let now = self.ctx.state_now();
        let (visible, ready, next_visible_at) = match self.ctx.sm.read(|a| {
            let info = a.state.queue_info(&self.queue, now);
            (a.state.has_visible(&self.queue, now), info.map(|q| q.stats.ready), a.state.next_visible_at(&self.queue))
        }) {
            (Err(e), _, _) => return Err(errors::queue_error(&e)),
            (Ok(v), r, n) => (v, r.unwrap_or(0), n),
        };
        if !visible {
            let visibility_wait = next_visible_at.map(|at| Duration::from_millis(at.saturating_sub(now) + 1));
            return Ok(Plan::Wait(visibility_wait.unwrap_or(limits::CONSUME_IDLE_RECHECK)));
        }
        let share = (ready as usize).div_ceil(self.ctx.push_consumers.get(&self.queue)).max(1) as u32;
        let max_messages = self.free().min(share);
        let command = Command::Receive {
            queue: self.queue.clone(),
            max_messages,
            // Longer than the consumer timeout, so that the stream ends (and
            // releases the delivery) before the delivery times out.
            visibility_timeout_ms: Some(
                (self.timeout.as_millis() as u64).saturating_mul(2).min(sm_limits::VISIBILITY_TIMEOUT_MS_MAX),
            ),
        };
        self.requested += max_messages;
        let (ctx, queue) = (self.ctx.clone(), self.queue.clone());
        Ok(Plan::Receiving(tokio::spawn(async move {
            let received = async {
                match ctx.write(command, limits::WRITE_TIMEOUT_DEFAULT).await? {
                    Outcome::Received { queue_id, deliveries } => {
                        let messages = ctx.messages_for(&queue, queue_id, &deliveries)?;
                        Ok((deliveries, messages))
                    }
                    _ => Ok((Vec::new(), Vec::new())),
                }
            };
            (max_messages, received.await)
        })))
    }

    fn track(&mut self, deliveries: &[qsm::Delivery]) {
        let deadline = Instant::now() + self.timeout;
        for d in deliveries {
            self.outstanding.insert(receipt::encode(&d.receipt), (d.receipt, deadline));
        }
    }

    /// Takes a Receive's result: `Ok(found)` whether it delivered anything,
    /// `Err(end)` when the stream ends.
    async fn received(&mut self, result: Received) -> Result<bool, Option<Status>> {
        let (deliveries, messages) = result.map_err(Some)?;
        self.track(&deliveries);
        for message in messages {
            let response = pb::ConsumeResponse { response: Some(pb::consume_response::Response::Message(message)) };
            if self.tx.send(Ok(response)).await.is_err() {
                return Err(None);
            }
        }
        Ok(!deliveries.is_empty())
    }

    /// Takes an ack or nack from the stream: its deliveries count as settled
    /// from now on, and a task proposes it and makes the answer.
    fn settle(&mut self, request: pb::ConsumeRequest) -> Result<JoinHandle<Settled>, Status> {
        let (receipts, queue, make): (Vec<String>, String, MakeCommand) = match request.request {
            Some(pb::consume_request::Request::Ack(a)) => {
                (a.receipts, a.queue, Box::new(|queue, receipts| Command::Ack { queue, receipts }))
            }
            Some(pb::consume_request::Request::Nack(n)) => {
                let (delay_ms, dead_letter) = (n.delay_ms, n.dead_letter);
                (
                    n.receipts,
                    n.queue,
                    Box::new(move |queue, receipts| Command::Nack { queue, receipts, delay_ms, dead_letter }),
                )
            }
            Some(pb::consume_request::Request::Start(_)) => {
                return Err(Status::invalid_argument("the consume stream was already started"));
            }
            None => return Err(Status::invalid_argument("empty consume request")),
        };
        if !queue.is_empty() && queue != self.queue {
            return Err(Status::invalid_argument(format!("this stream consumes \"{}\", not \"{queue}\"", self.queue)));
        }
        let mut settled = Outstanding::new();
        for r in &receipts {
            if let Some(entry) = self.outstanding.remove(r) {
                settled.insert(r.clone(), entry);
            }
        }
        let (ctx, queue) = (self.ctx.clone(), self.queue.clone());
        Ok(tokio::spawn(async move {
            let single = (receipts.len() == 1).then(|| receipts[0].clone());
            let results = match ctx.receipts_command(queue, receipts, limits::WRITE_TIMEOUT_DEFAULT, make).await {
                Ok(results) => results,
                // A one-receipt request that failed as a whole: report it on
                // the stream rather than ending it.
                Err(status)
                    if single.is_some()
                        && !matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) =>
                {
                    vec![pb::ReceiptResult {
                        receipt: single.unwrap_or_default(),
                        error: Some(pb::EntryError {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        }),
                    }]
                }
                Err(status) => return Err((status, settled)),
            };
            Ok(pb::ConsumeResponse {
                response: Some(pb::consume_response::Response::Results(pb::ReceiptResults { results })),
            })
        }))
    }
}
