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
use quorumq_proto::client as pb;
use quorumq_raft_state_machine as qsm;
use quorumq_raft_state_machine::Command;
use quorumq_raft_state_machine::Outcome;
use quorumq_raft_state_machine::limits as sm_limits;
use tokio::sync::mpsc;
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
        tx,
    };
    tokio::spawn(consumer.run(input));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

struct Consumer {
    ctx: Arc<NodeCtx>,
    queue: String,
    prefetch: u32,
    timeout: Duration,
    /// Unacknowledged deliveries: receipt text → (receipt, when the consumer
    /// timeout ends).
    outstanding: BTreeMap<String, (qsm::Receipt, Instant)>,
    tx: mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    #[allow(dead_code)]
    registration: Registration,
}

type MakeCommand = Box<dyn FnOnce(String, Vec<qsm::Receipt>) -> Command + Send>;

enum Step {
    Continue,
    End(Option<Status>),
}

impl Consumer {
    async fn run(mut self, mut input: Streaming<pb::ConsumeRequest>) {
        let end = loop {
            match self.step(&mut input).await {
                Step::Continue => {}
                Step::End(status) => break status,
            }
        };
        if let Some(status) = end {
            let _ = self.tx.send(Err(status)).await;
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

    fn free(&self) -> u32 {
        self.prefetch.saturating_sub(self.outstanding.len() as u32)
    }

    /// Forgets deliveries that were acked or nacked outside the stream (or
    /// timed out and were delivered again).
    fn settle_elsewhere(&mut self) {
        let queue = &self.queue;
        let in_flight: Vec<String> = self.ctx.sm.read(|a| {
            self.outstanding
                .iter()
                .filter(|(_, (r, _))| !a.state.is_in_flight(queue, r))
                .map(|(k, _)| k.clone())
                .collect()
        });
        for key in in_flight {
            self.outstanding.remove(&key);
        }
    }

    async fn step(&mut self, input: &mut Streaming<pb::ConsumeRequest>) -> Step {
        let notify = self.ctx.sm.notifier().queue(&self.queue);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        if let Err(status) = self.ctx.require_leader() {
            return Step::End(Some(status));
        }
        // The consumer timeout is checked before looking for deliveries
        // settled elsewhere: a delivery held too long must end the stream,
        // not be mistaken for one acked outside it.
        if self.outstanding.values().any(|(_, t)| *t <= Instant::now()) {
            return Step::End(Some(self.timed_out()));
        }
        self.settle_elsewhere();
        let now = self.ctx.state_now();
        let (visible, ready, next_visible_at) = match self.ctx.sm.read(|a| {
            let info = a.state.queue_info(&self.queue, now);
            (a.state.has_visible(&self.queue, now), info.map(|q| q.stats.ready), a.state.next_visible_at(&self.queue))
        }) {
            (Err(e), _, _) => return Step::End(Some(errors::queue_error(&e))),
            (Ok(v), r, n) => (v, r.unwrap_or(0), n),
        };
        let free = self.free();
        if free > 0 && visible {
            let share = (ready as usize).div_ceil(self.ctx.push_consumers.get(&self.queue)).max(1) as u32;
            let command = Command::Receive {
                queue: self.queue.clone(),
                max_messages: free.min(share),
                // Longer than the consumer timeout, so that the stream ends
                // (and releases the delivery) before the delivery times out.
                visibility_timeout_ms: Some(
                    (self.timeout.as_millis() as u64).saturating_mul(2).min(sm_limits::VISIBILITY_TIMEOUT_MS_MAX),
                ),
            };
            match self.ctx.write(command, limits::WRITE_TIMEOUT_DEFAULT).await {
                Err(status) => return Step::End(Some(status)),
                Ok(Outcome::Received { queue_id, deliveries }) if !deliveries.is_empty() => {
                    let messages = match self.ctx.messages_for(&self.queue, queue_id, &deliveries) {
                        Ok(m) => m,
                        Err(status) => return Step::End(Some(status)),
                    };
                    let deadline = Instant::now() + self.timeout;
                    for d in &deliveries {
                        self.outstanding.insert(receipt::encode(&d.receipt), (d.receipt, deadline));
                    }
                    for message in messages {
                        let response =
                            pb::ConsumeResponse { response: Some(pb::consume_response::Response::Message(message)) };
                        if self.tx.send(Ok(response)).await.is_err() {
                            return Step::End(None);
                        }
                    }
                    return Step::Continue;
                }
                Ok(_) => {}
            }
        }

        // Wait for: a request on the stream, the client going away, new
        // messages (when there is room), the next in-flight message becoming
        // visible, or the oldest delivery's consumer timeout.
        let room = self.free() > 0;
        let earliest = self.outstanding.values().map(|(_, t)| *t).min();
        let visibility_wait = next_visible_at.map(|at| Duration::from_millis(at.saturating_sub(now) + 1));
        // When full, look again now and then for acks made outside the
        // stream.
        let poll =
            if room { visibility_wait.unwrap_or(limits::CONSUME_IDLE_RECHECK) } else { limits::CONSUME_FULL_RECHECK };
        tokio::select! {
            request = input.message() => match request {
                Ok(Some(request)) => self.handle(request).await,
                Ok(None) | Err(_) => Step::End(None),
            },
            _ = self.tx.closed() => Step::End(None),
            _ = &mut notified, if room => Step::Continue,
            _ = tokio::time::sleep(poll) => Step::Continue,
            _ = tokio::time::sleep_until(earliest.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if earliest.is_some() => {
                Step::Continue
            }
        }
    }

    async fn handle(&mut self, request: pb::ConsumeRequest) -> Step {
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
                return Step::End(Some(Status::invalid_argument("the consume stream was already started")));
            }
            None => return Step::End(Some(Status::invalid_argument("empty consume request"))),
        };
        if !queue.is_empty() && queue != self.queue {
            return Step::End(Some(Status::invalid_argument(format!(
                "this stream consumes \"{}\", not \"{queue}\"",
                self.queue
            ))));
        }
        let settled = receipts.clone();
        let results = match self
            .ctx
            .receipts_command(self.queue.clone(), receipts, limits::WRITE_TIMEOUT_DEFAULT, make)
            .await
        {
            Ok(results) => results,
            // A one-receipt request that failed as a whole: report it on
            // the stream rather than ending it.
            Err(status)
                if settled.len() == 1
                    && !matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) =>
            {
                vec![pb::ReceiptResult {
                    receipt: settled[0].clone(),
                    error: Some(pb::EntryError { code: status.code() as i32, message: status.message().to_string() }),
                }]
            }
            Err(status) => return Step::End(Some(status)),
        };
        for r in &settled {
            self.outstanding.remove(r);
        }
        let response = pb::ConsumeResponse {
            response: Some(pb::consume_response::Response::Results(pb::ReceiptResults { results })),
        };
        if self.tx.send(Ok(response)).await.is_err() {
            return Step::End(None);
        }
        Step::Continue
    }
}
