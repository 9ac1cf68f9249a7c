//! Coalescing of concurrent one-message sends ([`Client::send`],
//! [`Client::send_with_id`]) to the same queue into one Send call.
//!
//! Every gRPC call costs the client and the leader tens of microseconds of
//! CPU (HTTP/2 framing, headers, a task per request), more than the message
//! itself: a producer keeping hundreds of sends in flight was bound by that
//! cost, not by the disk. So, per queue, at most
//! [`limits::COALESCE_CALLS_IN_FLIGHT`] Send calls run at a time; a send
//! arriving while they all run waits, and the next call takes every waiting
//! message (up to [`limits::COALESCE_MESSAGES_MAX`] messages and
//! [`limits::COALESCE_BYTES_MAX`] bytes). Nothing waits for company: a send
//! arriving while a call slot is free goes out at once, so a lone producer
//! sees no added latency. Each send still gets its own result: the per-message
//! result of the batch, or the call's error when the call as a whole failed
//! (unknown queue, alarm, deadline).
//!
//! Every message gets its id before the first attempt, exactly as in
//! [`Client::send_batch`] (which does the sending), so retries stay
//! deduplicated. Handles with different deadlines ([`Client::with_deadline`])
//! have lanes of their own, so a call runs under the deadline of every send
//! in it; a send that waited for a slot also stops waiting at its deadline
//! (DEADLINE_EXCEEDED: it may still go out).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::AttributeValue;
use crate::Client;
use crate::Error;
use crate::OutgoingMessage;
use crate::SendReceipt;
use crate::limits;

type Reply = oneshot::Sender<Result<SendReceipt, Error>>;

struct Waiting {
    message: OutgoingMessage,
    bytes: usize,
    reply: Reply,
}

#[derive(Default)]
struct Lane {
    /// Send calls of this lane running now.
    calls: usize,
    waiting: VecDeque<Waiting>,
}

/// The lanes of one client (shared by its clones), by queue name.
#[derive(Default)]
pub(crate) struct Coalescer {
    lanes: Mutex<HashMap<(String, Duration), Lane>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

/// Roughly what a message adds to a Send request.
fn message_bytes(message: &OutgoingMessage) -> usize {
    const FIXED: usize = 64;
    FIXED
        + message.body.len()
        + message.id.as_ref().map_or(0, String::len)
        + message.group.as_ref().map_or(0, String::len)
        + message
            .attributes
            .iter()
            .map(|(name, value)| {
                FIXED
                    + name.len()
                    + match value {
                        AttributeValue::String(text) => text.len(),
                        AttributeValue::Binary(bytes) => bytes.len(),
                    }
            })
            .sum::<usize>()
}

impl Coalescer {
    /// Queues `message` on `queue`'s lane; returns true when the caller must
    /// start a call (a slot was free).
    fn push(&self, lane: &(String, Duration), message: OutgoingMessage, reply: Reply) -> bool {
        let bytes = message_bytes(&message);
        let mut lanes = self.lanes.lock().expect("coalescer lock");
        let lane = lanes.entry(lane.clone()).or_default();
        lane.waiting.push_back(Waiting { message, bytes, reply });
        if lane.calls < limits::COALESCE_CALLS_IN_FLIGHT {
            lane.calls += 1;
            true
        } else {
            false
        }
    }

    /// The next batch of `queue`'s lane, or `None` (and the call slot given
    /// back) when nothing waits. Messages whose sender has gone are dropped.
    fn next_batch(&self, key: &(String, Duration)) -> Option<Vec<Waiting>> {
        let mut lanes = self.lanes.lock().expect("coalescer lock");
        let lane = lanes.get_mut(key).expect("a lane with a running call");
        let mut batch: Vec<Waiting> = Vec::new();
        let mut bytes = 0;
        while let Some(next) = lane.waiting.front() {
            if next.reply.is_closed() {
                lane.waiting.pop_front();
                continue;
            }
            if !batch.is_empty()
                && (batch.len() == limits::COALESCE_MESSAGES_MAX || bytes + next.bytes > limits::COALESCE_BYTES_MAX)
            {
                break;
            }
            bytes += next.bytes;
            batch.extend(lane.waiting.pop_front());
        }
        if batch.is_empty() {
            lane.calls -= 1;
            if lane.calls == 0 && lane.waiting.is_empty() {
                lanes.remove(key);
            }
            return None;
        }
        Some(batch)
    }
}

impl Client {
    /// Sends one message through the queue's lane (see the module docs).
    pub(crate) async fn send_coalesced(&self, queue: &str, message: OutgoingMessage) -> Result<SendReceipt, Error> {
        if message.id.as_ref().is_some_and(String::is_empty) {
            return Err(Error::InvalidArgument(
                "a message id must not be empty; use None to have one generated".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let lane = (queue.to_string(), self.deadline);
        if self.inner.coalescer.push(&lane, message, reply) {
            let client = self.clone();
            tokio::spawn(async move { client.run_lane(&lane).await });
        }
        // A little past the deadline, so that a call that started at once
        // answers with its own, more telling error.
        match tokio::time::timeout(self.deadline + limits::COALESCE_WAIT_GRACE, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Internal("the send was dropped before it got an answer".into())),
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "no answer within the deadline ({:?}); the message may have been sent",
                self.deadline
            ))),
        }
    }

    /// One call slot of a lane: sends batches while messages wait.
    async fn run_lane(&self, lane: &(String, Duration)) {
        let queue = lane.0.as_str();
        while let Some(batch) = self.inner.coalescer.next_batch(lane) {
            let (messages, replies): (Vec<OutgoingMessage>, Vec<Reply>) =
                batch.into_iter().map(|w| (w.message, w.reply)).unzip();
            match self.send_batch(queue, messages).await {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result.map_err(Error::from));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
