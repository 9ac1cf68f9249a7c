//! The client handle and the queue operations.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumq_proto::client as pc;
use quorumq_proto::client::queues_client::QueuesClient;
use tonic::transport::Channel;

use crate::call::CallFailure;
use crate::route::Router;
use crate::{
    ClientConfig, CreatedQueue, EntryError, Error, Message, NackOptions, OutgoingMessage, QueueInfo, QueueOptions,
    ReceiveOptions, RedriveOptions, RedriveResult, SendReceipt, convert, limits,
};

/// A handle to a quorumq cluster.
///
/// Cheap to clone; clones share the connections and the knowledge of who
/// the leader is. Every operation follows the leader, fails over to the next
/// known node, and retries with exponential backoff and full jitter until it
/// gets a definite answer or its deadline passes; it never runs past the
/// deadline.
///
/// ```no_run
/// # async fn demo() -> Result<(), quorumq_client::Error> {
/// use quorumq_client::{Client, QueueOptions, ReceiveOptions};
///
/// let client = Client::connect(["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"])?;
/// client.create_queue("jobs", QueueOptions::default()).await?;
/// client.send("jobs", "hello").await?;
/// for message in client.receive("jobs", ReceiveOptions::default()).await? {
///     println!("{:?}", message.body);
///     client.ack("jobs", message.receipt).await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// Per handle, so that `with_deadline` clones can differ.
    pub(crate) deadline: Duration,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) router: Router,
    pub(crate) attempt_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) coalescer: crate::coalesce::Coalescer,
}

impl Client {
    /// A client for the cluster that `config.seeds` belong to. Checks the
    /// configuration; connects lazily, on the first operation, so a node
    /// that is down now does not fail this call.
    ///
    /// ```
    /// use quorumq_client::{Client, ClientConfig};
    ///
    /// let client = Client::new(ClientConfig::new(["127.0.0.1:7000"])).unwrap();
    /// assert_eq!(client.known_nodes(), vec!["127.0.0.1:7000".to_string()]);
    /// assert!(Client::new(ClientConfig::new(["nonsense"])).is_err());
    /// ```
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        let seeds = config.normalized_seeds()?;
        Ok(Client {
            inner: Arc::new(Inner {
                router: Router::new(seeds, config.connect_timeout),
                attempt_timeout: config.attempt_timeout,
                backoff_initial: config.backoff_initial,
                backoff_max: config.backoff_max,
                coalescer: Default::default(),
            }),
            deadline: config.deadline,
        })
    }

    /// A client with these seeds and default timeouts.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000", "127.0.0.1:7001"]).unwrap();
    /// assert_eq!(client.known_nodes().len(), 2);
    /// ```
    pub fn connect<I, S>(seeds: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::new(ClientConfig::new(seeds))
    }

    /// A clone whose operations have another deadline (total time including
    /// retries). The clones share connections and leader knowledge.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// let impatient = client.with_deadline(Duration::from_millis(500));
    /// assert_eq!(impatient.deadline(), Duration::from_millis(500));
    /// assert_eq!(client.deadline(), Duration::from_secs(10));
    /// ```
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        Client { inner: Arc::clone(&self.inner), deadline }
    }

    /// The deadline of this handle's operations.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.deadline(), std::time::Duration::from_secs(10));
    /// ```
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The address of the node last known to be the leader, if any.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.leader_address(), None); // nothing asked yet
    /// ```
    pub fn leader_address(&self) -> Option<String> {
        self.inner.router.leader()
    }

    /// The addresses the client knows: the seeds, then addresses learnt from
    /// leader hints and from `cluster_status`.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["http://127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.known_nodes(), vec!["127.0.0.1:7000".to_string()]);
    /// ```
    pub fn known_nodes(&self) -> Vec<String> {
        self.inner.router.known()
    }

    /// Creates a queue, or finds it if it exists with the same
    /// configuration (`created` is then false). A queue of that name with
    /// another configuration gives [`Error::AlreadyExists`].
    ///
    /// Retried on failures of unknown outcome: the retry finds the queue the
    /// first attempt created and reports `created: false`.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// use quorumq_client::QueueOptions;
    ///
    /// let options = QueueOptions { visibility_timeout: Some(Duration::from_secs(60)), ..Default::default() };
    /// let created = client.create_queue("jobs", options).await?;
    /// assert_eq!(created.queue.name, "jobs");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_queue(&self, name: &str, options: QueueOptions) -> Result<CreatedQueue, Error> {
        let request = pc::CreateQueueRequest { name: name.to_string(), config: Some(convert::queue_config(&options)) };
        let response = self
            .call("create_queue", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).create_queue(request).await }
            })
            .await?;
        Ok(CreatedQueue { queue: convert::required_queue(response.queue, "create_queue")?, created: response.created })
    }

    /// Deletes a queue and every message in it; returns how many messages
    /// were deleted.
    ///
    /// Retried on failures of unknown outcome. When an earlier attempt's
    /// outcome is unknown (timeout, lost connection, a leader that lost
    /// leadership after proposing it) and a retry finds no such queue, the
    /// earlier attempt most likely deleted it, and the call reports success
    /// with 0 messages deleted. So a delete of a queue that never existed can
    /// also report success, when a node failed during the call. A plain
    /// not-leader answer (request rejected before it was proposed) is not
    /// such a failure: deleting a missing queue through a follower still
    /// gives [`Error::NotFound`].
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let deleted = client.delete_queue("jobs").await?;
    /// println!("{deleted} messages deleted");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_queue(&self, name: &str) -> Result<u64, Error> {
        let request = pc::DeleteQueueRequest { name: name.to_string() };
        let outcome = self
            .call("delete_queue", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).delete_queue(request).await }
            })
            .await;
        match outcome {
            Ok(response) => Ok(response.messages_deleted),
            Err(CallFailure { error: Error::NotFound(_), ambiguous: true }) => Ok(0),
            Err(failure) => Err(failure.error),
        }
    }

    /// Every queue with its configuration and counters.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// for queue in client.list_queues().await? {
    ///     println!("{}: {} ready", queue.name, queue.stats.ready);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let response = self
            .call("list_queues", Duration::ZERO, |attempt| {
                let request = attempt.request(pc::ListQueuesRequest {});
                async move { queues(attempt.channel).list_queues(request).await }
            })
            .await?;
        Ok(response.queues.into_iter().map(convert::queue_info).collect())
    }

    /// One queue's configuration and counters ([`Error::NotFound`] if it
    /// does not exist).
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let info = client.get_queue("jobs").await?;
    /// println!("{} in flight", info.stats.in_flight);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        let request = pc::GetQueueRequest { name: name.to_string() };
        let response = self
            .call("get_queue", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).get_queue(request).await }
            })
            .await?;
        convert::required_queue(response.queue, "get_queue")
    }

    /// Deletes every message of a queue, keeping the queue; returns how many
    /// were deleted. Retried on failures of unknown outcome, in which case
    /// the count is that of the last attempt only.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let purged = client.purge_queue("jobs").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn purge_queue(&self, name: &str) -> Result<u64, Error> {
        let request = pc::PurgeQueueRequest { name: name.to_string() };
        let response = self
            .call("purge_queue", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).purge_queue(request).await }
            })
            .await?;
        Ok(response.messages_deleted)
    }

    /// Changes attributes of an existing queue and returns it as it is now.
    /// Only the fields that are `Some` change; see [`QueueOptions`] for the
    /// values that remove a setting (`Some(Duration::ZERO)` for the message
    /// TTL, `Some(0)` for a length limit, [`DeadLetterPolicy::none`] for the
    /// dead-letter queue, [`RedeliveryBackoff::off`] for the backoff).
    /// `fifo` cannot change: giving the queue's current value is accepted,
    /// another gives [`Error::InvalidArgument`]. A dead-letter queue must
    /// exist when it is set.
    ///
    /// Retried on failures of unknown outcome: setting the same attributes
    /// again changes nothing more.
    ///
    /// [`DeadLetterPolicy::none`]: crate::DeadLetterPolicy::none
    /// [`RedeliveryBackoff::off`]: crate::RedeliveryBackoff::off
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// use quorumq_client::{DeadLetterPolicy, QueueOptions};
    ///
    /// // Dead-letter after 5 receives, and keep messages for a day at most.
    /// let options = QueueOptions { retention: Some(Duration::from_secs(86_400)), ..Default::default() }
    ///     .with_dead_letter("jobs-dlq", 5);
    /// let info = client.set_queue("jobs", options).await?;
    /// assert_eq!(info.config.dead_letter.unwrap().queue, "jobs-dlq");
    ///
    /// // Remove the dead-letter policy and the length limit; nothing else changes.
    /// let remove = QueueOptions {
    ///     dead_letter: Some(DeadLetterPolicy::none()),
    ///     max_messages: Some(0),
    ///     ..Default::default()
    /// };
    /// client.set_queue("jobs", remove).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_queue(&self, name: &str, options: QueueOptions) -> Result<QueueInfo, Error> {
        let request = pc::SetQueueRequest { name: name.to_string(), config: Some(convert::queue_config(&options)) };
        let response = self
            .call("set_queue", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).set_queue(request).await }
            })
            .await?;
        convert::required_queue(response.queue, "set_queue")
    }

    /// Moves up to `options.max_messages` (at most 1000) messages out of a
    /// dead-letter queue, oldest first, as one replicated command: back to
    /// the queues they came from, or all to `options.to`. Call again until
    /// `remaining` is 0 or a call moves nothing: messages without a source
    /// queue to return to (it was deleted, or they were never
    /// dead-lettered) stay, counted in `skipped` (and, by today's server,
    /// in `remaining` too); in-flight messages wait for their visibility
    /// timeout.
    /// A moved message keeps its id and body and loses its dead-letter
    /// information.
    ///
    /// Retried on failures of unknown outcome, in which case `moved` counts
    /// the last attempt only (an earlier attempt may have moved messages
    /// too).
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// use quorumq_client::RedriveOptions;
    ///
    /// loop {
    ///     let result = client.redrive("jobs-dlq", RedriveOptions::default()).await?;
    ///     println!("moved {}, {} left", result.moved, result.remaining);
    ///     if result.remaining == 0 || result.moved == 0 {
    ///         break;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redrive(&self, queue: &str, options: RedriveOptions) -> Result<RedriveResult, Error> {
        let request = pc::RedriveRequest {
            queue: queue.to_string(),
            to_queue: options.to.unwrap_or_default(),
            max_messages: options.max_messages,
        };
        let response = self
            .call("redrive", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).redrive(request).await }
            })
            .await?;
        Ok(convert::redrive_result(response))
    }

    /// Sends one message. It is acknowledged once a majority of nodes holds
    /// it on disk.
    ///
    /// Concurrent sends to the same queue through one client (and its
    /// clones of the same deadline) share Send calls: at most four calls per
    /// queue run at a time, and sends arriving meanwhile leave together in
    /// the next one, each with its own result. A send with no other in
    /// flight leaves at once, alone. Use [`Client::send_batch`] to choose
    /// the batches yourself.
    ///
    /// The client gives the message a random id before the first attempt and
    /// sends the same id on every retry, so a retry after an attempt of
    /// unknown outcome (timeout, lost connection, leader change) is
    /// deduplicated by the server instead of enqueuing the message twice —
    /// as long as the queue's deduplication window outlasts the deadline.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let receipt = client.send("jobs", "resize image 17").await?;
    /// println!("sent {} at position {}", receipt.id, receipt.seq);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, queue: &str, body: impl Into<Bytes>) -> Result<SendReceipt, Error> {
        self.send_one(queue, OutgoingMessage::new(body)).await
    }

    /// Sends one message with a producer-chosen id (1 to 128 printable ASCII
    /// characters). A second send with the same id within the queue's
    /// deduplication window enqueues nothing and returns the first send's id
    /// and position with `duplicate: true`.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let first = client.send_with_id("jobs", "order-17", "charge card").await?;
    /// let again = client.send_with_id("jobs", "order-17", "charge card").await?;
    /// assert!(again.duplicate);
    /// assert_eq!(first.seq, again.seq);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_with_id(
        &self,
        queue: &str,
        id: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<SendReceipt, Error> {
        self.send_one(queue, OutgoingMessage::new(body).with_id(id)).await
    }

    /// Sends a batch of messages as one replicated entry. Returns one result
    /// per message, in order; a message that failed (too large, bad id)
    /// does not affect the others. Errors of the batch as a whole (unknown
    /// queue, empty or oversized batch) are the call's error; so is the
    /// error of the only message of a one-message batch, as the server
    /// reports it that way.
    ///
    /// Messages without an id get a generated one before the first attempt,
    /// as in [`Client::send`], which makes the batch safe to retry; the
    /// server is told these ids are generated (`id_generated`), so that a
    /// queue with content-based deduplication still deduplicates such
    /// messages by their body.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// use quorumq_client::OutgoingMessage;
    ///
    /// let batch = vec![OutgoingMessage::new("a"), OutgoingMessage::new("b").with_id("b-1")];
    /// for result in client.send_batch("jobs", batch).await? {
    ///     match result {
    ///         Ok(receipt) => println!("sent {}", receipt.id),
    ///         Err(entry) => eprintln!("not sent: {entry}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<SendReceipt, EntryError>>, Error> {
        if messages.is_empty() {
            return Err(Error::InvalidArgument("a batch needs at least one message".into()));
        }
        let mut wire = Vec::with_capacity(messages.len());
        for message in messages {
            let (id, generated) = match message.id.clone() {
                Some(id) if id.is_empty() => {
                    // The server reads an empty id as "none" and would not
                    // deduplicate retries.
                    return Err(Error::InvalidArgument(
                        "a message id must not be empty; use None to have one generated".into(),
                    ));
                }
                Some(id) => (id, false),
                None => (generate_message_id(), true),
            };
            wire.push(convert::outgoing(message, id, generated));
        }
        let entries = wire.len();
        let request = pc::SendRequest { queue: queue.to_string(), messages: wire };
        let response = self
            .call("send", Duration::ZERO, |attempt| {
                let request = attempt.request(request.clone());
                async move { queues(attempt.channel).send(request).await }
            })
            .await?;
        convert::check_result_count("send", entries, response.results.len())?;
        Ok(response.results.into_iter().map(convert::send_result).collect())
    }

    /// One message: concurrent ones to the same queue share Send calls
    /// (`coalesce.rs`).
    async fn send_one(&self, queue: &str, message: OutgoingMessage) -> Result<SendReceipt, Error> {
        self.send_coalesced(queue, message).await
    }

    /// Receives up to `options.max_messages` messages, making them invisible
    /// to other consumers for the visibility timeout. With a `wait`, the
    /// call long-polls: it returns as soon as a message is available, or
    /// empty when the wait ends. The deadline counts from the end of the
    /// wait.
    ///
    /// Receiving changes state (the messages go in flight), so a receive
    /// whose outcome is unknown cannot be undone. The client still retries
    /// it, on every retryable failure: a lost answer leaves its messages in
    /// flight until their visibility timeout, after which they are delivered
    /// again. That is the at-least-once contract of any queue of this kind,
    /// and it beats failing the consumer during every leader change.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// use quorumq_client::ReceiveOptions;
    ///
    /// let options = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(20), ..Default::default() };
    /// for message in client.receive("jobs", options).await? {
    ///     client.ack("jobs", message.receipt).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn receive(&self, queue: &str, options: ReceiveOptions) -> Result<Vec<Message>, Error> {
        let request = pc::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: options.max_messages,
            visibility_timeout_ms: options.visibility_timeout.map(convert::millis),
            wait_ms: 0,
        };
        let response = self
            .call("receive", options.wait, |attempt| {
                let request =
                    attempt.request(pc::ReceiveRequest { wait_ms: convert::millis(attempt.wait), ..request.clone() });
                async move { queues(attempt.channel).receive(request).await }
            })
            .await?;
        Ok(response.messages.into_iter().map(convert::message).collect())
    }

    /// Acknowledges (deletes) a delivered message by its receipt.
    ///
    /// Retried on failures of unknown outcome; acking a message that is
    /// already deleted succeeds, so a retry is harmless. A receipt of an
    /// earlier delivery gives [`Error::FailedPrecondition`].
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, message: quorumq_client::Message) -> Result<(), quorumq_client::Error> {
    /// client.ack("jobs", message.receipt).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack(&self, queue: &str, receipt: impl Into<String>) -> Result<(), Error> {
        single(self.settle(Settle::Ack, queue, vec![receipt.into()]).await?)
    }

    /// Acknowledges a batch of deliveries; one result per receipt, in order.
    /// See [`Client::send_batch`] for how batch and entry errors differ.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, messages: Vec<quorumq_client::Message>) -> Result<(), quorumq_client::Error> {
    /// let results = client.ack_batch("jobs", messages.into_iter().map(|m| m.receipt)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack_batch<I, S>(&self, queue: &str, receipts: I) -> Result<Vec<Result<(), EntryError>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let receipts = receipts.into_iter().map(Into::into).collect();
        self.settle(Settle::Ack, queue, receipts).await
    }

    /// Gives a delivered message back: it becomes visible again now (or
    /// after the queue's redelivery backoff, when it has one; see
    /// [`Client::nack_with`] for a delay of your own or a reject). Nacking
    /// a message that is no longer in flight is a no-op, so a retry is
    /// harmless, unless the message was delivered again in between (then
    /// the receipt is stale: [`Error::FailedPrecondition`]).
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, message: quorumq_client::Message) -> Result<(), quorumq_client::Error> {
    /// client.nack("jobs", message.receipt).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack(&self, queue: &str, receipt: impl Into<String>) -> Result<(), Error> {
        self.nack_with(queue, receipt, NackOptions::default()).await
    }

    /// Gives a delivered message back with options: visible again after
    /// `options.delay`, or (with `dead_letter`) rejected: moved to the
    /// queue's dead-letter queue, or dropped when it has none. A zero delay
    /// makes the message visible now, or after the queue's redelivery
    /// backoff when it has one.
    ///
    /// Retried on failures of unknown outcome; a retry of a nack that was
    /// applied finds the message no longer in flight (or no longer in the
    /// queue) and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, message: quorumq_client::Message) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// use quorumq_client::NackOptions;
    ///
    /// // Try again in a minute.
    /// client.nack_with("jobs", &message.receipt, NackOptions { delay: Duration::from_secs(60), ..Default::default() }).await?;
    /// # Ok(())
    /// # }
    /// # async fn reject(client: quorumq_client::Client, message: quorumq_client::Message) -> Result<(), quorumq_client::Error> {
    /// # use quorumq_client::NackOptions;
    /// // Poison: straight to the dead-letter queue.
    /// client.nack_with("jobs", message.receipt, NackOptions { dead_letter: true, ..Default::default() }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack_with(&self, queue: &str, receipt: impl Into<String>, options: NackOptions) -> Result<(), Error> {
        single(self.settle(Settle::Nack(options), queue, vec![receipt.into()]).await?)
    }

    /// Nacks a batch of deliveries; one result per receipt, in order.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// let results = client.nack_batch("jobs", receipts).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack_batch<I, S>(&self, queue: &str, receipts: I) -> Result<Vec<Result<(), EntryError>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.nack_batch_with(queue, receipts, NackOptions::default()).await
    }

    /// Nacks a batch of deliveries with options (see [`Client::nack_with`]);
    /// one result per receipt, in order.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// use quorumq_client::NackOptions;
    /// let results = client.nack_batch_with("jobs", receipts, NackOptions { dead_letter: true, ..Default::default() }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack_batch_with<I, S>(
        &self,
        queue: &str,
        receipts: I,
        options: NackOptions,
    ) -> Result<Vec<Result<(), EntryError>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let receipts = receipts.into_iter().map(Into::into).collect();
        self.settle(Settle::Nack(options), queue, receipts).await
    }

    /// Sets a delivery's visibility timeout to `timeout` from now (zero
    /// makes the message visible at once), for example to keep working on a
    /// long job. Retrying it sets the same timeout again, from a slightly
    /// later now.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, message: quorumq_client::Message) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// client.change_visibility("jobs", &message.receipt, Duration::from_secs(120)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn change_visibility(
        &self,
        queue: &str,
        receipt: impl Into<String>,
        timeout: Duration,
    ) -> Result<(), Error> {
        single(self.settle(Settle::ChangeVisibility(timeout), queue, vec![receipt.into()]).await?)
    }

    /// Changes the visibility timeout of a batch of deliveries; one result
    /// per receipt, in order.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client, receipts: Vec<String>) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// let results = client.change_visibility_batch("jobs", receipts, Duration::from_secs(60)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn change_visibility_batch<I, S>(
        &self,
        queue: &str,
        receipts: I,
        timeout: Duration,
    ) -> Result<Vec<Result<(), EntryError>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let receipts = receipts.into_iter().map(Into::into).collect();
        self.settle(Settle::ChangeVisibility(timeout), queue, receipts).await
    }

    /// Ack, nack or change visibility of a batch of receipts.
    async fn settle(
        &self,
        settle: Settle,
        queue: &str,
        receipts: Vec<String>,
    ) -> Result<Vec<Result<(), EntryError>>, Error> {
        let op = settle.name();
        if receipts.is_empty() {
            return Err(Error::InvalidArgument(format!("{op} needs at least one receipt")));
        }
        let entries = receipts.len();
        let results = self
            .call(op, Duration::ZERO, |attempt| {
                let queue = queue.to_string();
                let receipts = receipts.clone();
                async move {
                    let mut client = queues(attempt.channel.clone());
                    match settle {
                        Settle::Ack => client
                            .ack(attempt.request(pc::AckRequest { queue, receipts }))
                            .await
                            .map(|r| r.map(|r| r.results)),
                        Settle::Nack(options) => client
                            .nack(attempt.request(pc::NackRequest {
                                queue,
                                receipts,
                                delay_ms: convert::millis(options.delay),
                                dead_letter: options.dead_letter,
                            }))
                            .await
                            .map(|r| r.map(|r| r.results)),
                        Settle::ChangeVisibility(timeout) => client
                            .change_visibility(attempt.request(pc::ChangeVisibilityRequest {
                                queue,
                                receipts,
                                visibility_timeout_ms: convert::millis(timeout),
                            }))
                            .await
                            .map(|r| r.map(|r| r.results)),
                    }
                }
            })
            .await?;
        convert::check_result_count(op, entries, results.len())?;
        Ok(results.into_iter().map(convert::receipt_result).collect())
    }
}

/// What to do with a batch of receipts.
#[derive(Clone, Copy, Debug)]
enum Settle {
    Ack,
    Nack(NackOptions),
    ChangeVisibility(Duration),
}

impl Settle {
    fn name(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Nack(_) => "nack",
            Settle::ChangeVisibility(_) => "change_visibility",
        }
    }
}

/// The one result of a one-entry batch, as a plain result.
fn single(mut results: Vec<Result<(), EntryError>>) -> Result<(), Error> {
    let result = results.pop().expect("the result count was checked");
    result.map_err(Error::from)
}

/// A queue service client on `channel`, with the client's frame limits.
pub(crate) fn queues(channel: Channel) -> QueuesClient<Channel> {
    QueuesClient::new(channel)
        .max_decoding_message_size(limits::FRAME_BYTES_MAX)
        .max_encoding_message_size(limits::FRAME_BYTES_MAX)
}

/// A fresh message id: a prefix and 128 random bits in hex.
///
/// ```
/// let id = quorumq_client::generate_message_id();
/// assert!(id.starts_with("c-"));
/// assert_eq!(id.len(), 34);
/// assert_ne!(id, quorumq_client::generate_message_id());
/// ```
pub fn generate_message_id() -> String {
    let bits: u128 = rand::random();
    format!("{}{bits:032x}", limits::GENERATED_ID_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn clients_and_their_futures_can_move_between_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Client>();
        let client = Client::connect(["127.0.0.1:1"]).unwrap();
        assert_send(&client.send("q", "x"));
        assert_send(&client.send_batch("q", vec![]));
        assert_send(&client.receive("q", ReceiveOptions::default()));
        assert_send(&client.ack_batch("q", ["r"]));
        assert_send(&client.delete_queue("q"));
        assert_send(&client.cluster_status());
        let mut consumer = client.consumer("q", Default::default());
        assert_send(&consumer.next());
        let mut subscription = client.subscribe("q", Default::default());
        assert_send(&subscription.ack("r"));
        assert_send(&subscription.next());
        assert_send(&subscription.acker().nack("r", Default::default()));
        assert_send(&client.redrive("q", Default::default()));
        assert_send(&client.set_queue("q", Default::default()));
    }

    #[test]
    fn generated_ids_are_distinct_and_fit_the_server_limit() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| generate_message_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() <= 128 && id.is_ascii()));
    }
}
