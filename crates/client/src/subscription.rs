//! The push consumer: a `Consume` stream that the leader pushes messages
//! into, with acks and nacks on the same stream, that follows the leader
//! when it moves.
//!
//! One task per open stream reads it: pushed messages go into a buffer that
//! [`Subscription::next`] hands out, and the answers to acks and nacks (which
//! the node sends in request order) complete the waiting calls in order.
//! Reconnecting runs in `next`, so a subscription that is not polled holds no
//! stream open for long: the node's consumer timeout ends it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quorumq_proto::client as pc;
use quorumq_proto::client::consume_request::Request as ConsumeRequestKind;
use quorumq_proto::client::consume_response::Response as ConsumeResponseKind;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Streaming;

use crate::client::queues;
use crate::error::{Failure, classify};
use crate::route::Backoff;
use crate::{Client, EntryError, Error, Message, NackOptions, convert, limits};

/// How a [`Subscription`] consumes.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::SubscribeOptions;
///
/// let options = SubscribeOptions { prefetch: 50, consumer_timeout: Some(Duration::from_secs(120)) };
/// assert_eq!(SubscribeOptions::default().prefetch, 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscribeOptions {
    /// Most deliveries the node pushes before they are acked or nacked
    /// (server limit 1000). Both those handed out by
    /// [`Subscription::next`] and those buffered in the client count.
    pub prefetch: u32,
    /// A delivery neither acked nor nacked within this long ends the stream
    /// (server limit 12 h); `None`: the queue's visibility timeout. It is
    /// also the deliveries' visibility timeout.
    pub consumer_timeout: Option<Duration>,
}

impl Default for SubscribeOptions {
    /// Prefetch 10, the queue's visibility timeout as consumer timeout.
    fn default() -> SubscribeOptions {
        SubscribeOptions { prefetch: 10, consumer_timeout: None }
    }
}

/// A push consumer of one queue, made by [`Client::subscribe`].
///
/// The leader pushes messages as soon as they are applied, up to
/// `prefetch` unsettled deliveries at a time; [`Subscription::ack`] and
/// [`Subscription::nack`] settle them on the same stream and wait for the
/// node's answer. Other tasks can settle through an [`Acker`].
///
/// # Across a reconnect
///
/// When the stream fails because its node is not (or no longer) the
/// leader, is unavailable, or the connection broke, the next call to
/// [`Subscription::next`] reconnects: with backoff and full jitter between
/// streams, following the leader, within the client's deadline per
/// reconnection (past it, `next` returns the error and the following call
/// tries again). Before it subscribes again it nacks, through the unary
/// `Nack` call on the new leader:
///
/// - every delivery handed out by `next` and not yet acked or nacked, and
/// - every delivery buffered but not yet handed out (the caller never sees
///   those from this subscription's old stream),
///
/// so that they are delivered again at once (after the queue's redelivery
/// backoff, when it has one, as when the node itself releases the
/// deliveries of a stream that ended) instead of after their timeout. Acks
/// and nacks sent on the old stream that got no answer are sent again
/// through the unary calls before that nack, and their callers get that
/// answer. While no stream is up, acks and nacks use the unary calls; one
/// made from another task (an [`Acker`]) while `next` is reconnecting may
/// reach the node before or after the reconnect's nack of the same
/// receipt. A message pushed before the stream failed, and handed out
/// before the client noticed the failure, counts as handed out.
///
/// So delivery is at-least-once: a message handed out before a reconnect
/// may be handed out again after it (with a higher `receive_count`), to
/// this or another consumer, even if the caller is still working on it.
/// Acking the old delivery's receipt after the reconnect succeeds when the
/// message has not been delivered again yet (it is deleted), and fails with
/// a stale receipt ([`Error::FailedPrecondition`]) when it has.
///
/// A stream that ends for another reason — the consumer timeout passed
/// (DEADLINE_EXCEEDED), the queue was deleted — makes `next` return that
/// error once (the node has released the deliveries); the call after that
/// subscribes again.
///
/// Dropping the subscription ends the stream, and the node makes its
/// unsettled deliveries visible again; [`Subscription::close`] does the
/// same and waits for it.
///
/// ```no_run
/// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
/// use quorumq_client::{NackOptions, SubscribeOptions};
///
/// let mut subscription = client.subscribe("jobs", SubscribeOptions::default());
/// loop {
///     let message = subscription.next().await?;
///     if message.body.is_empty() {
///         subscription.nack(&message.receipt, NackOptions { dead_letter: true, ..Default::default() }).await?;
///     } else {
///         subscription.ack(&message.receipt).await?;
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    acker: Acker,
    options: SubscribeOptions,
    backoff: Backoff,
    /// Streams opened so far.
    streams_opened: u64,
    /// Attempts to (re)connect so far, failed ones included: every attempt
    /// after the first waits a backoff pause, so that a caller calling
    /// `next` again after each error does not spin.
    connect_attempts: u64,
}

/// Settles deliveries of a [`Subscription`] from any task: on its stream
/// while it is up, else through the unary calls. Cheap to clone; it can
/// outlive the subscription (it then uses the unary calls).
///
/// ```no_run
/// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
/// let mut subscription = client.subscribe("jobs", Default::default());
/// let acker = subscription.acker();
/// let message = subscription.next().await?;
/// tokio::spawn(async move {
///     // … work on the message …
///     acker.ack(&message.receipt).await
/// });
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Acker {
    client: Client,
    queue: Arc<str>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes `next` when a message arrives or the stream ends. One waiter
    /// at most (`next` takes `&mut self`), so `notify_one`'s stored permit
    /// makes lost wake-ups impossible.
    wake: Notify,
}

#[derive(Debug)]
struct State {
    link: Link,
    /// Bumped for each stream; a reader acts on the state only while it is
    /// the current one.
    generation: u64,
    /// Pushed messages not yet handed out.
    buffer: VecDeque<Message>,
    /// Receipts handed out and not yet settled through this subscription,
    /// oldest first; at most [`limits::SUBSCRIPTION_HELD_MAX`].
    held: VecDeque<String>,
    /// Acks and nacks sent on the current stream, waiting for their
    /// answers, in request order.
    pending: VecDeque<Pending>,
    /// The current stream delivered a message (then the next reconnect
    /// starts its backoff over).
    delivered: bool,
    reader: Option<JoinHandle<()>>,
}

#[derive(Debug)]
enum Link {
    /// No stream: `next` opens one, after nacking what it held.
    Down,
    /// A stream is open; requests go in through `requests`.
    Up { requests: mpsc::Sender<pc::ConsumeRequest> },
    /// The stream ended; its reader is settling the requests that got no
    /// answer through the unary calls.
    Closing,
    /// The stream ended with an error the caller sees once from `next`.
    Failed(Error),
}

#[derive(Clone, Copy, Debug)]
enum Settle {
    Ack,
    Nack(NackOptions),
}

type Results = Result<Vec<Result<(), EntryError>>, Error>;

#[derive(Debug)]
struct Pending {
    settle: Settle,
    receipts: Vec<String>,
    reply: oneshot::Sender<Results>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, even when
        // interrupted by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn hold(&mut self, receipt: String) {
        if self.held.len() == limits::SUBSCRIPTION_HELD_MAX {
            // Forgotten receipts are not nacked on a reconnect; their
            // messages come back after their visibility timeout instead.
            self.held.pop_front();
        }
        self.held.push_back(receipt);
    }

    fn release(&mut self, receipts: &[String]) {
        self.held.retain(|held| !receipts.contains(held));
    }
}

impl Client {
    /// A push consumer of `queue` (see [`Subscription`]). Connects on the
    /// first call to [`Subscription::next`].
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// let subscription = client.subscribe("jobs", Default::default());
    /// assert_eq!(subscription.queue(), "jobs");
    /// assert_eq!(subscription.buffered(), 0);
    /// ```
    pub fn subscribe(&self, queue: &str, options: SubscribeOptions) -> Subscription {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                link: Link::Down,
                generation: 0,
                buffer: VecDeque::new(),
                held: VecDeque::new(),
                pending: VecDeque::new(),
                delivered: false,
                reader: None,
            }),
            wake: Notify::new(),
        });
        Subscription {
            acker: Acker { client: self.clone(), queue: Arc::from(queue), shared },
            options,
            backoff: Backoff::new(self.inner.backoff_initial, self.inner.backoff_max),
            streams_opened: 0,
            connect_attempts: 0,
        }
    }
}

impl Subscription {
    /// The next pushed message. Opens the stream on the first call, and
    /// again after it failed (see [`Subscription`] for what a reconnect
    /// does); waits as long as it takes for a message.
    ///
    /// Errors: the reconnection's deadline passed (the cluster is
    /// unavailable), the queue does not exist, or the stream ended with an
    /// error such as the consumer timeout. Calling `next` again after an
    /// error reconnects.
    ///
    /// Cancel-safe: dropping the future loses no message.
    ///
    /// ```no_run
    /// # async fn demo(mut subscription: quorumq_client::Subscription) -> Result<(), quorumq_client::Error> {
    /// let message = subscription.next().await?;
    /// println!("{:?}", message.body);
    /// subscription.ack(&message.receipt).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Result<Message, Error> {
        let shared = Arc::clone(&self.acker.shared);
        loop {
            let woken = shared.wake.notified();
            let reconnect = {
                let mut state = shared.state();
                match &state.link {
                    Link::Up { .. } => {
                        if let Some(message) = state.buffer.pop_front() {
                            state.hold(message.receipt.clone());
                            return Ok(message);
                        }
                        false
                    }
                    Link::Closing => false,
                    Link::Failed(_) => {
                        let Link::Failed(error) = std::mem::replace(&mut state.link, Link::Down) else {
                            unreachable!("matched above")
                        };
                        return Err(error);
                    }
                    Link::Down => true,
                }
            };
            if reconnect {
                self.reconnect().await?;
            } else {
                woken.await;
            }
        }
    }

    /// Acknowledges (deletes) a delivered message, on the stream when it is
    /// up (else through [`Client::ack`]), and waits for the node's answer.
    /// Acking a message that is already deleted succeeds; a receipt of an
    /// earlier delivery gives [`Error::FailedPrecondition`].
    ///
    /// ```no_run
    /// # async fn demo(mut subscription: quorumq_client::Subscription) -> Result<(), quorumq_client::Error> {
    /// let message = subscription.next().await?;
    /// subscription.ack(&message.receipt).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack(&self, receipt: impl Into<String>) -> Result<(), Error> {
        self.acker.ack(receipt).await
    }

    /// Acknowledges a batch of deliveries; one result per receipt, in order.
    ///
    /// ```no_run
    /// # async fn demo(subscription: quorumq_client::Subscription, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// let results = subscription.ack_batch(receipts).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack_batch<I, S>(&self, receipts: I) -> Results
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.acker.ack_batch(receipts).await
    }

    /// Gives a delivered message back (see [`Client::nack_with`]), on the
    /// stream when it is up, and waits for the node's answer.
    ///
    /// ```no_run
    /// # async fn demo(mut subscription: quorumq_client::Subscription) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// use quorumq_client::NackOptions;
    ///
    /// let message = subscription.next().await?;
    /// subscription.nack(&message.receipt, NackOptions { delay: Duration::from_secs(10), ..Default::default() }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack(&self, receipt: impl Into<String>, options: NackOptions) -> Result<(), Error> {
        self.acker.nack(receipt, options).await
    }

    /// Nacks a batch of deliveries; one result per receipt, in order.
    ///
    /// ```no_run
    /// # async fn demo(subscription: quorumq_client::Subscription, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// let results = subscription.nack_batch(receipts, Default::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack_batch<I, S>(&self, receipts: I, options: NackOptions) -> Results
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.acker.nack_batch(receipts, options).await
    }

    /// A handle that settles this subscription's deliveries from other
    /// tasks.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// let acker = client.subscribe("jobs", Default::default()).acker();
    /// assert_eq!(acker.queue(), "jobs");
    /// ```
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// The queue this subscription consumes.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.subscribe("jobs", Default::default()).queue(), "jobs");
    /// ```
    pub fn queue(&self) -> &str {
        &self.acker.queue
    }

    /// Messages pushed and not yet handed out by [`Subscription::next`].
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.subscribe("jobs", Default::default()).buffered(), 0);
    /// ```
    pub fn buffered(&self) -> usize {
        self.acker.shared.state().buffer.len()
    }

    /// Deliveries handed out and not yet acked or nacked through this
    /// subscription.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.subscribe("jobs", Default::default()).unsettled(), 0);
    /// ```
    pub fn unsettled(&self) -> usize {
        self.acker.shared.state().held.len()
    }

    /// True while a stream is open. A message buffered before the stream
    /// failed is still handed out by `next` until the failure is noticed
    /// here; after that, buffered messages are nacked instead.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert!(!client.subscribe("jobs", Default::default()).connected()); // connects on `next`
    /// ```
    pub fn connected(&self) -> bool {
        matches!(self.acker.shared.state().link, Link::Up { .. })
    }

    /// How many streams this subscription has opened: 1 after the first
    /// `next`, one more per reconnection.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.subscribe("jobs", Default::default()).streams_opened(), 0);
    /// ```
    pub fn streams_opened(&self) -> u64 {
        self.streams_opened
    }

    /// Ends the stream and waits (up to the client's deadline) until the
    /// node has answered every ack and nack sent on it and released the
    /// unsettled deliveries, which become visible again at once. Pushed
    /// messages not yet handed out are released too.
    ///
    /// ```no_run
    /// # async fn demo(mut subscription: quorumq_client::Subscription) -> Result<(), quorumq_client::Error> {
    /// let message = subscription.next().await?;
    /// subscription.ack(&message.receipt).await?;
    /// subscription.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(self) {
        let reader = {
            let mut state = self.acker.shared.state();
            if let Link::Up { .. } = state.link {
                // Dropping the sender half-closes the stream: the node
                // answers what it was sent, releases the rest and ends it.
                state.link = Link::Closing;
            }
            state.reader.take()
        };
        if let Some(mut reader) = reader
            && tokio::time::timeout(self.acker.client.deadline(), &mut reader).await.is_err()
        {
            reader.abort();
        }
    }

    /// Nacks what the last stream left unsettled, then opens a new stream,
    /// all within one client deadline.
    async fn reconnect(&mut self) -> Result<(), Error> {
        let delivered = std::mem::take(&mut self.acker.shared.state().delivered);
        if delivered {
            self.backoff.reset();
        }
        if self.connect_attempts > 0 {
            tokio::time::sleep(self.backoff.next_pause()).await;
        }
        self.connect_attempts += 1;
        let deadline_at = Instant::now() + self.acker.client.deadline();
        self.release_unsettled(deadline_at).await?;
        let client = self.acker.client.with_deadline(time_left(deadline_at)?);
        let (responses, requests) = open_stream(&client, &self.acker.queue, self.options).await?;
        let target = client.leader_address().unwrap_or_default();
        self.streams_opened += 1;
        let mut state = self.acker.shared.state();
        state.generation += 1;
        state.link = Link::Up { requests };
        state.delivered = false;
        let reader = tokio::spawn(read(self.acker.clone(), state.generation, target, responses));
        if let Some(old) = state.reader.replace(reader) {
            old.abort();
        }
        Ok(())
    }

    /// Nacks the held and buffered deliveries of the last stream through
    /// the unary call, so that they are delivered again at once. Receipts
    /// are forgotten once the nack got an answer (per-receipt errors such
    /// as a stale receipt mean there is nothing to give back) or failed for
    /// good; a failure that may pass keeps them for the next try.
    async fn release_unsettled(&mut self, deadline_at: Instant) -> Result<(), Error> {
        let receipts: Vec<String> = {
            let state = self.acker.shared.state();
            state.held.iter().cloned().chain(state.buffer.iter().map(|m| m.receipt.clone())).collect()
        };
        for chunk in receipts.chunks(limits::STREAM_RECEIPTS_MAX) {
            let client = self.acker.client.with_deadline(time_left(deadline_at)?);
            match client.nack_batch(&self.acker.queue, chunk.iter().cloned()).await {
                Ok(_) => {}
                Err(error) if error.is_retryable() => return Err(error),
                Err(error) => {
                    tracing::debug!(queue = %self.acker.queue, %error, "could not nack a closed stream's deliveries");
                }
            }
            let mut state = self.acker.shared.state();
            state.release(chunk);
            state.buffer.retain(|m| !chunk.contains(&m.receipt));
        }
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.acker.shared.state();
        // Ackers may keep the shared state alive: drop the request sender
        // and the reader here, which ends the stream.
        state.link = Link::Down;
        if let Some(reader) = state.reader.take() {
            reader.abort();
        }
    }
}

impl Acker {
    /// Acknowledges a delivered message; see [`Subscription::ack`].
    ///
    /// ```no_run
    /// # async fn demo(acker: quorumq_client::Acker, receipt: String) -> Result<(), quorumq_client::Error> {
    /// acker.ack(receipt).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack(&self, receipt: impl Into<String>) -> Result<(), Error> {
        single(self.settle(Settle::Ack, vec![receipt.into()]).await?)
    }

    /// Acknowledges a batch; see [`Subscription::ack_batch`].
    ///
    /// ```no_run
    /// # async fn demo(acker: quorumq_client::Acker, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// acker.ack_batch(receipts).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack_batch<I, S>(&self, receipts: I) -> Results
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settle(Settle::Ack, receipts.into_iter().map(Into::into).collect()).await
    }

    /// Gives a delivered message back; see [`Subscription::nack`].
    ///
    /// ```no_run
    /// # async fn demo(acker: quorumq_client::Acker, receipt: String) -> Result<(), quorumq_client::Error> {
    /// acker.nack(receipt, Default::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack(&self, receipt: impl Into<String>, options: NackOptions) -> Result<(), Error> {
        single(self.settle(Settle::Nack(options), vec![receipt.into()]).await?)
    }

    /// Nacks a batch; see [`Subscription::nack_batch`].
    ///
    /// ```no_run
    /// # async fn demo(acker: quorumq_client::Acker, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// acker.nack_batch(receipts, Default::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack_batch<I, S>(&self, receipts: I, options: NackOptions) -> Results
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settle(Settle::Nack(options), receipts.into_iter().map(Into::into).collect()).await
    }

    /// The queue whose deliveries it settles.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.subscribe("jobs", Default::default()).acker().queue(), "jobs");
    /// ```
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Sends the request on the stream when it is up and has room, and
    /// waits for its answer; otherwise (and when the stream ended before
    /// answering and the subscription is gone) uses the unary call.
    async fn settle(&self, settle: Settle, receipts: Vec<String>) -> Results {
        if receipts.is_empty() {
            return Err(Error::InvalidArgument("no receipts given".into()));
        }
        let answer = {
            let mut state = self.shared.state();
            state.release(&receipts);
            match &state.link {
                // A request the node refuses as a whole would end the
                // stream; an oversized one goes through the unary call.
                Link::Up { requests }
                    if receipts.len() <= limits::STREAM_RECEIPTS_MAX
                        && state.pending.len() < limits::SUBSCRIPTION_SETTLES_PENDING_MAX =>
                {
                    let request = stream_request(settle, &self.queue, receipts.clone());
                    match requests.try_send(request) {
                        Ok(()) => {
                            let (reply, answer) = oneshot::channel();
                            state.pending.push_back(Pending { settle, receipts: receipts.clone(), reply });
                            Some(answer)
                        }
                        Err(_) => None,
                    }
                }
                _ => None,
            }
        };
        if let Some(answer) = answer
            && let Ok(results) = answer.await
        {
            return results;
        }
        unary(&self.client, &self.queue, settle, receipts).await
    }
}

/// Opens a `Consume` stream on the leader, through the client's retry loop
/// (leader following, failover, backoff with jitter, the deadline). The
/// node checks the start request before it answers, so a not-leader node
/// or a missing queue fails this call rather than the stream.
async fn open_stream(
    client: &Client,
    queue: &str,
    options: SubscribeOptions,
) -> Result<(Streaming<pc::ConsumeResponse>, mpsc::Sender<pc::ConsumeRequest>), Error> {
    let start = pc::ConsumeRequest {
        request: Some(ConsumeRequestKind::Start(pc::ConsumeStart {
            queue: queue.to_string(),
            prefetch: options.prefetch,
            consumer_timeout_ms: options.consumer_timeout.map(convert::millis),
        })),
    };
    let opened = client
        .call("subscribe", Duration::ZERO, |attempt| {
            let (requests, mut outgoing) = mpsc::channel(limits::SUBSCRIPTION_REQUESTS_QUEUED_MAX);
            requests.try_send(start.clone()).expect("a new channel has room");
            // No grpc-timeout: it would end the stream, which lives as long
            // as the subscription.
            let request = tonic::Request::new(futures::stream::poll_fn(move |cx| outgoing.poll_recv(cx)));
            let channel = attempt.channel;
            async move { queues(channel).consume(request).await.map(|r| r.map(|stream| (stream, requests))) }
        })
        .await?;
    Ok(opened)
}

/// Reads one stream until it ends, then settles what got no answer and
/// tells `next` whether to reconnect or to report an error.
async fn read(acker: Acker, generation: u64, target: String, mut responses: Streaming<pc::ConsumeResponse>) {
    let shared = &acker.shared;
    let end = loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => break None,
            Err(status) => break Some(status),
        };
        let mut state = shared.state();
        if state.generation != generation {
            return;
        }
        match response.response {
            Some(ConsumeResponseKind::Message(message)) => {
                state.buffer.push_back(convert::message(message));
                state.delivered = true;
                drop(state);
                shared.wake.notify_one();
            }
            Some(ConsumeResponseKind::Results(results)) => {
                let Some(pending) = state.pending.pop_front() else {
                    tracing::warn!(queue = %acker.queue, "the node answered an ack or nack that was not sent");
                    continue;
                };
                drop(state);
                let answer = convert::check_result_count("settle", pending.receipts.len(), results.results.len())
                    .map(|()| results.results.into_iter().map(convert::receipt_result).collect());
                // The caller may have stopped waiting; the answer is moot then.
                let _ = pending.reply.send(answer);
            }
            None => {}
        }
    };
    let pending = {
        let mut state = shared.state();
        if state.generation != generation {
            return;
        }
        state.link = Link::Closing;
        std::mem::take(&mut state.pending)
    };
    let router = &acker.client.inner.router;
    let error = match end {
        None => None,
        Some(status) => match classify(&status) {
            Failure::NotLeader { hint: Some(hint), .. } => {
                tracing::debug!(queue = %acker.queue, from = %target, leader = %hint.address, "stream ended: not the leader");
                router.set_leader(&hint.address);
                None
            }
            Failure::NotLeader { hint: None, .. } => {
                router.forget_leader(&target);
                None
            }
            Failure::NodeFailed { error, .. } => {
                tracing::debug!(queue = %acker.queue, node = %target, %error, "stream failed");
                router.drop_channel(&target);
                router.forget_leader(&target);
                None
            }
            Failure::Unknown { error } | Failure::Final(error) => Some(error),
        },
    };
    // Requests the old stream did not answer may or may not have been
    // applied: send them again, which is harmless for acks and nacks.
    for pending in pending {
        let answer = unary(&acker.client, &acker.queue, pending.settle, pending.receipts).await;
        let _ = pending.reply.send(answer);
    }
    let mut state = shared.state();
    if state.generation == generation {
        state.link = match error {
            Some(error) => Link::Failed(error),
            None => Link::Down,
        };
        state.reader = None;
        drop(state);
        shared.wake.notify_one();
    }
}

fn stream_request(settle: Settle, queue: &str, receipts: Vec<String>) -> pc::ConsumeRequest {
    let queue = queue.to_string();
    let request = match settle {
        Settle::Ack => ConsumeRequestKind::Ack(pc::AckRequest { queue, receipts }),
        Settle::Nack(options) => ConsumeRequestKind::Nack(pc::NackRequest {
            queue,
            receipts,
            delay_ms: convert::millis(options.delay),
            dead_letter: options.dead_letter,
        }),
    };
    pc::ConsumeRequest { request: Some(request) }
}

async fn unary(client: &Client, queue: &str, settle: Settle, receipts: Vec<String>) -> Results {
    match settle {
        Settle::Ack => client.ack_batch(queue, receipts).await,
        Settle::Nack(options) => client.nack_batch_with(queue, receipts, options).await,
    }
}

/// The one result of a one-entry batch, as a plain result.
fn single(mut results: Vec<Result<(), EntryError>>) -> Result<(), Error> {
    let result = results.pop().ok_or_else(|| Error::Internal("an answer without results".into()))?;
    result.map_err(Error::from)
}

fn time_left(deadline_at: Instant) -> Result<Duration, Error> {
    let left = deadline_at.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::DeadlineExceeded("the reconnection's deadline passed".into()));
    }
    Ok(left)
}
