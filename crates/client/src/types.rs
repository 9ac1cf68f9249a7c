//! Plain Rust types of the client API. They know nothing of protobuf; the
//! conversions live in `convert.rs`.

use std::time::Duration;

use bytes::Bytes;

/// Attributes of a queue. `None` takes the server's default (visibility
/// timeout 30 s, deduplication window 5 min). Durations travel in whole
/// milliseconds, rounded up.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::QueueOptions;
///
/// let options = QueueOptions {
///     visibility_timeout: Some(Duration::from_secs(60)),
///     ..QueueOptions::default()
/// };
/// assert_eq!(options.dedup_window, None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueueOptions {
    /// How long a received message stays invisible before it is delivered
    /// again (server limit: 12 h).
    pub visibility_timeout: Option<Duration>,
    /// How long a message id deduplicates sends (server limit: 1 h). Retries
    /// of the idempotent producer rely on it being longer than the client's
    /// deadline.
    pub dedup_window: Option<Duration>,
}

/// Counters of a queue.
///
/// ```
/// let stats = quorumq_client::QueueStats::default();
/// assert_eq!(stats.ready + stats.in_flight, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueueStats {
    /// Messages that a receive may return now.
    pub ready: u64,
    /// Messages received and not yet acked, nacked or timed out.
    pub in_flight: u64,
    /// Body bytes held by the queue.
    pub bytes: u64,
    /// Messages sent since the queue was created (duplicates not counted).
    pub sent_total: u64,
    /// Messages acked since the queue was created.
    pub acked_total: u64,
    /// Deliveries since the queue was created.
    pub received_total: u64,
    /// Leader clock time (ms since the Unix epoch) of the oldest message
    /// still in the queue; 0 when the queue is empty.
    pub oldest_sent_at_ms: u64,
}

/// A queue's configuration and counters.
///
/// ```
/// let info = quorumq_client::QueueInfo { name: "jobs".into(), ..Default::default() };
/// assert_eq!(info.stats.ready, 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// The effective configuration, defaults filled in by the server
    /// (`None` only where the server sent nothing).
    pub config: QueueOptions,
    /// Counters at the time of the answer.
    pub stats: QueueStats,
    /// Leader clock time (ms since the Unix epoch) of the creation.
    pub created_at_ms: u64,
}

/// The answer to `create_queue`.
///
/// ```
/// let created = quorumq_client::CreatedQueue { queue: Default::default(), created: true };
/// assert!(created.created);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CreatedQueue {
    /// The queue as it is now.
    pub queue: QueueInfo,
    /// False when the queue already existed with this configuration. A
    /// creation retried after an attempt with unknown outcome may report
    /// false although this call created the queue.
    pub created: bool,
}

/// One message to send.
///
/// ```
/// use quorumq_client::OutgoingMessage;
///
/// let plain = OutgoingMessage::new("hello");
/// assert_eq!(plain.id, None);
/// let keyed = OutgoingMessage::new("hello").with_id("order-17");
/// assert_eq!(keyed.id.as_deref(), Some("order-17"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OutgoingMessage {
    /// A producer-chosen id (1 to 128 printable ASCII characters): a second
    /// send with the same id within the queue's deduplication window enqueues
    /// nothing. When `None`, the client generates a random id before the
    /// first attempt, so that its own retries are deduplicated.
    pub id: Option<String>,
    /// The message body.
    pub body: Bytes,
}

impl OutgoingMessage {
    /// A message without an id (the client will generate one).
    ///
    /// ```
    /// let m = quorumq_client::OutgoingMessage::new(vec![1u8, 2, 3]);
    /// assert_eq!(&m.body[..], &[1, 2, 3]);
    /// ```
    pub fn new(body: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage { id: None, body: body.into() }
    }

    /// The same message with a producer-chosen id.
    ///
    /// ```
    /// let m = quorumq_client::OutgoingMessage::new("x").with_id("k-1");
    /// assert_eq!(m.id.as_deref(), Some("k-1"));
    /// ```
    pub fn with_id(self, id: impl Into<String>) -> OutgoingMessage {
        OutgoingMessage { id: Some(id.into()), ..self }
    }
}

/// What the cluster did with one sent message.
///
/// ```
/// let r = quorumq_client::SendReceipt { id: "c-00ff".into(), seq: 7, duplicate: false };
/// assert_eq!(r.seq, 7);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SendReceipt {
    /// The message id (the producer's or the generated one).
    pub id: String,
    /// Position of the message in its queue (increasing).
    pub seq: u64,
    /// True when nothing was enqueued because a message with this id was
    /// sent before within the deduplication window; `id` and `seq` are the
    /// earlier send's. For a generated id this means that an earlier attempt
    /// of the same call was applied and its retry was deduplicated.
    pub duplicate: bool,
}

/// Options of one `receive`.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::ReceiveOptions;
///
/// let options = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(20), ..Default::default() };
/// assert_eq!(options.visibility_timeout, None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiveOptions {
    /// At most this many messages (server limit 1000; 0 means 1).
    pub max_messages: u32,
    /// Long polling: when no message is ready, wait up to this long for one
    /// (server limit 20 s). Zero answers at once.
    pub wait: Duration,
    /// Overrides the queue's visibility timeout for these deliveries.
    pub visibility_timeout: Option<Duration>,
}

impl Default for ReceiveOptions {
    /// One message, no waiting, the queue's visibility timeout.
    fn default() -> ReceiveOptions {
        ReceiveOptions { max_messages: 1, wait: Duration::ZERO, visibility_timeout: None }
    }
}

/// One delivery of a message.
///
/// ```
/// let m = quorumq_client::Message { receive_count: 1, ..Default::default() };
/// assert!(m.body.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Message {
    /// The message id.
    pub id: String,
    /// The message body.
    pub body: Bytes,
    /// Names this delivery; needed to ack, nack or change visibility. A
    /// receipt of an earlier delivery of the same message is stale.
    pub receipt: String,
    /// Deliveries of this message so far, this one included.
    pub receive_count: u32,
    /// Position of the message in its queue.
    pub seq: u64,
    /// Leader clock time (ms since the Unix epoch) of the send.
    pub sent_at_ms: u64,
    /// Leader clock time of the first delivery.
    pub first_received_at_ms: u64,
}
