//! Plain Rust types of the client API. They know nothing of protobuf; the
//! conversions live in `convert.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// Attributes of a queue, for [`Client::create_queue`](crate::Client::create_queue)
/// and [`Client::set_queue`](crate::Client::set_queue), and as a queue reports
/// them in [`QueueInfo::config`].
///
/// Every field is optional. On creation, `None` takes the server's default
/// (visibility timeout 30 s, deduplication window 5 min, retention 4 days,
/// no TTL, no delay, no length limits, reject-publish, no dead-letter queue,
/// no redelivery backoff, a standard queue without content-based
/// deduplication). On `set_queue`, `None` leaves the attribute as it is, and
/// these values remove a setting:
///
/// | to remove | set |
/// |---|---|
/// | the message TTL | `message_ttl: Some(Duration::ZERO)` |
/// | a length limit | `max_messages: Some(0)`, `max_bytes: Some(0)` |
/// | the dead-letter queue | `dead_letter: Some(DeadLetterPolicy::none())` (an empty queue name) |
/// | the redelivery backoff | `redelivery_backoff: Some(RedeliveryBackoff::off())` (`min` zero) |
///
/// A queue read back from the server reports every attribute, with the same
/// conventions: `Some(ZERO)`/`Some(0)` for no TTL or limit, `None` for no
/// dead-letter policy or backoff. Durations travel in whole milliseconds,
/// rounded up.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::{Overflow, QueueOptions};
///
/// let options = QueueOptions {
///     visibility_timeout: Some(Duration::from_secs(60)),
///     max_messages: Some(10_000),
///     overflow: Some(Overflow::DropHead),
///     ..QueueOptions::default()
/// }
/// .with_dead_letter("jobs-dlq", 5);
/// assert_eq!(options.dedup_window, None);
/// assert_eq!(options.dead_letter.unwrap().max_receives, 5);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueueOptions {
    /// How long a received message stays invisible before it is delivered
    /// again (server limit: 12 h).
    pub visibility_timeout: Option<Duration>,
    /// How long a message id deduplicates sends (server limit: 1 h). Retries
    /// of the idempotent producer rely on it being longer than the client's
    /// deadline.
    pub dedup_window: Option<Duration>,
    /// How long a message is kept at most: 60 s to 14 days.
    pub retention: Option<Duration>,
    /// Time to live of every message (zero: none). A message's own, shorter
    /// TTL wins. Expired messages are dead-lettered when the queue has a
    /// dead-letter policy, dropped otherwise.
    pub message_ttl: Option<Duration>,
    /// Delay before a new message becomes visible: 0 to 15 min.
    pub delay: Option<Duration>,
    /// Most messages the queue holds (0: no limit).
    pub max_messages: Option<u64>,
    /// Most body bytes the queue holds (0: no limit).
    pub max_bytes: Option<u64>,
    /// What a send that would exceed a length limit does.
    pub overflow: Option<Overflow>,
    /// Where failed messages go (an empty queue name: nowhere).
    pub dead_letter: Option<DeadLetterPolicy>,
    /// Delay before a nacked or timed-out message is visible again (`min`
    /// zero: none).
    pub redelivery_backoff: Option<RedeliveryBackoff>,
    /// A FIFO queue: messages of one group are delivered in order, one at a
    /// time. Set at creation only; `set_queue` refuses a change.
    pub fifo: Option<bool>,
    /// Deduplicate messages without a producer id by the SHA-256 of their
    /// body, within the deduplication window.
    pub content_based_dedup: Option<bool>,
}

impl QueueOptions {
    /// The same options with a dead-letter policy.
    ///
    /// ```
    /// let options = quorumq_client::QueueOptions::default().with_dead_letter("dlq", 3);
    /// assert_eq!(options.dead_letter.unwrap().queue, "dlq");
    /// ```
    pub fn with_dead_letter(self, queue: impl Into<String>, max_receives: u32) -> QueueOptions {
        QueueOptions { dead_letter: Some(DeadLetterPolicy { queue: queue.into(), max_receives }), ..self }
    }

    /// The same options with a redelivery backoff.
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = quorumq_client::QueueOptions::default()
    ///     .with_redelivery_backoff(Duration::from_secs(1), Duration::from_secs(60));
    /// assert_eq!(options.redelivery_backoff.unwrap().factor_milli, 0); // the server's default, 2000
    /// ```
    pub fn with_redelivery_backoff(self, min: Duration, max: Duration) -> QueueOptions {
        QueueOptions { redelivery_backoff: Some(RedeliveryBackoff { min, max, factor_milli: 0 }), ..self }
    }

    /// For `set_queue`: options that change nothing but remove the
    /// dead-letter policy, the redelivery backoff, the message TTL and both
    /// length limits.
    ///
    /// ```
    /// let options = quorumq_client::QueueOptions::remove_all_policies();
    /// assert_eq!(options.max_messages, Some(0));
    /// assert!(options.dead_letter.unwrap().is_none());
    /// ```
    pub fn remove_all_policies() -> QueueOptions {
        QueueOptions {
            message_ttl: Some(Duration::ZERO),
            max_messages: Some(0),
            max_bytes: Some(0),
            dead_letter: Some(DeadLetterPolicy::none()),
            redelivery_backoff: Some(RedeliveryBackoff::off()),
            ..QueueOptions::default()
        }
    }
}

/// What a queue does when a send would exceed one of its length limits.
///
/// ```
/// use quorumq_client::Overflow;
/// assert_eq!(Overflow::default(), Overflow::RejectPublish);
/// assert_eq!(Overflow::DropHead.as_str(), "drop-head");
/// assert_eq!(Overflow::parse("reject-publish"), Some(Overflow::RejectPublish));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Refuse the messages that do not fit (RESOURCE_EXHAUSTED per message).
    #[default]
    RejectPublish,
    /// Accept them, and dead-letter (or drop) the oldest messages to make
    /// room.
    DropHead,
}

impl Overflow {
    /// The policy's name: `reject-publish` or `drop-head`.
    ///
    /// ```
    /// assert_eq!(quorumq_client::Overflow::RejectPublish.as_str(), "reject-publish");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::RejectPublish => "reject-publish",
            Overflow::DropHead => "drop-head",
        }
    }

    /// Reads a policy's name, as [`Overflow::as_str`] writes it.
    ///
    /// ```
    /// assert_eq!(quorumq_client::Overflow::parse("drop-head"), Some(quorumq_client::Overflow::DropHead));
    /// assert_eq!(quorumq_client::Overflow::parse("drop-tail"), None);
    /// ```
    pub fn parse(name: &str) -> Option<Overflow> {
        match name {
            "reject-publish" => Some(Overflow::RejectPublish),
            "drop-head" => Some(Overflow::DropHead),
            _ => None,
        }
    }
}

/// Where a queue's failed messages go: messages received more than
/// `max_receives` times without an ack, expired ones, rejected ones (a nack
/// with `dead_letter`) and ones pushed out by drop-head overflow.
///
/// ```
/// use quorumq_client::DeadLetterPolicy;
/// let policy = DeadLetterPolicy { queue: "jobs-dlq".into(), max_receives: 5 };
/// assert!(!policy.is_none());
/// assert!(DeadLetterPolicy::none().is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeadLetterPolicy {
    /// The dead-letter queue; it must exist when the policy is set. Empty:
    /// no policy (how `set_queue` removes one).
    pub queue: String,
    /// A message received more than this many times moves to the
    /// dead-letter queue instead of being delivered again (server limit
    /// 1000). Zero: only expiry, rejects and overflow move messages.
    pub max_receives: u32,
}

impl DeadLetterPolicy {
    /// The policy that means "none": `set_queue` with it removes the
    /// queue's dead-letter policy.
    ///
    /// ```
    /// assert_eq!(quorumq_client::DeadLetterPolicy::none().queue, "");
    /// ```
    pub fn none() -> DeadLetterPolicy {
        DeadLetterPolicy::default()
    }

    /// True for the policy that means "none" (an empty queue name).
    ///
    /// ```
    /// assert!(quorumq_client::DeadLetterPolicy::none().is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Delay before a nacked or timed-out message is visible again:
/// `min(max, min * factor^(receive_count - 1))`.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::RedeliveryBackoff;
/// let backoff = RedeliveryBackoff { min: Duration::from_secs(1), max: Duration::from_secs(60), factor_milli: 3000 };
/// assert!(!backoff.is_off());
/// assert!(RedeliveryBackoff::off().is_off());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedeliveryBackoff {
    /// The first delay. Zero: no backoff (how `set_queue` removes it).
    pub min: Duration,
    /// The longest delay (server limit: 12 h).
    pub max: Duration,
    /// Growth per delivery in thousandths: 2000 doubles, 1000 keeps it
    /// constant, at most 10000. Zero: the server's default, 2000.
    pub factor_milli: u32,
}

impl RedeliveryBackoff {
    /// The backoff that means "none": `set_queue` with it removes the
    /// queue's backoff.
    ///
    /// ```
    /// assert_eq!(quorumq_client::RedeliveryBackoff::off().min, std::time::Duration::ZERO);
    /// ```
    pub fn off() -> RedeliveryBackoff {
        RedeliveryBackoff::default()
    }

    /// True for the backoff that means "none" (`min` zero).
    ///
    /// ```
    /// assert!(quorumq_client::RedeliveryBackoff::default().is_off());
    /// ```
    pub fn is_off(&self) -> bool {
        self.min.is_zero()
    }
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
    /// Messages waiting for their delay (or redelivery backoff) to end.
    pub delayed: u64,
    /// Messages this queue moved to its dead-letter queue.
    pub dead_lettered_total: u64,
    /// Messages that expired (retention or TTL), dead-lettered or dropped.
    pub expired_total: u64,
    /// Messages dropped without a dead-letter queue to take them.
    pub dropped_total: u64,
    /// Messages refused by the reject-publish overflow policy.
    pub rejected_total: u64,
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

/// A user attribute value of a message: text or bytes.
///
/// ```
/// use quorumq_client::AttributeValue;
///
/// let text = AttributeValue::from("eu-west");
/// assert_eq!(text.as_str(), Some("eu-west"));
/// let binary = AttributeValue::from(vec![0u8, 255]);
/// assert_eq!(binary.as_bytes(), &[0, 255]);
/// assert_eq!(binary.as_str(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    /// A text value.
    String(String),
    /// A binary value.
    Binary(Bytes),
}

impl AttributeValue {
    /// The text of a text value.
    ///
    /// ```
    /// assert_eq!(quorumq_client::AttributeValue::from("x").as_str(), Some("x"));
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(s) => Some(s),
            AttributeValue::Binary(_) => None,
        }
    }

    /// The value's bytes (a text value's UTF-8).
    ///
    /// ```
    /// assert_eq!(quorumq_client::AttributeValue::from("ab").as_bytes(), b"ab");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            AttributeValue::String(s) => s.as_bytes(),
            AttributeValue::Binary(b) => b,
        }
    }
}

impl From<&str> for AttributeValue {
    fn from(s: &str) -> AttributeValue {
        AttributeValue::String(s.to_string())
    }
}

impl From<String> for AttributeValue {
    fn from(s: String) -> AttributeValue {
        AttributeValue::String(s)
    }
}

impl From<Bytes> for AttributeValue {
    fn from(b: Bytes) -> AttributeValue {
        AttributeValue::Binary(b)
    }
}

impl From<Vec<u8>> for AttributeValue {
    fn from(b: Vec<u8>) -> AttributeValue {
        AttributeValue::Binary(Bytes::from(b))
    }
}

impl From<&[u8]> for AttributeValue {
    fn from(b: &[u8]) -> AttributeValue {
        AttributeValue::Binary(Bytes::copy_from_slice(b))
    }
}

/// One message to send.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::OutgoingMessage;
///
/// let plain = OutgoingMessage::new("hello");
/// assert_eq!(plain.id, None);
/// let keyed = OutgoingMessage::new("hello").with_id("order-17");
/// assert_eq!(keyed.id.as_deref(), Some("order-17"));
/// let rich = OutgoingMessage::new("resize 17")
///     .with_delay(Duration::from_secs(30))
///     .with_priority(5)
///     .with_attribute("tenant", "acme")
///     .with_attribute("trace", vec![0u8, 1, 2]);
/// assert_eq!(rich.attributes.len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OutgoingMessage {
    /// A producer-chosen id (1 to 128 printable ASCII characters): a second
    /// send with the same id within the queue's deduplication window enqueues
    /// nothing. When `None`, the client generates a random id before the
    /// first attempt, so that its own retries are deduplicated, and tells
    /// the server the id is generated (on a queue with content-based
    /// deduplication the body then decides what is a duplicate).
    pub id: Option<String>,
    /// The message body.
    pub body: Bytes,
    /// Delay before the message becomes visible (server limit 15 min);
    /// `None`: the queue's delay. Not for FIFO queues.
    pub delay: Option<Duration>,
    /// Time to live; `None`: the queue's. The shorter of the two wins.
    pub ttl: Option<Duration>,
    /// FIFO queues: the message group (required there; 1 to 128 printable
    /// ASCII characters). Messages of one group are delivered in order.
    pub group: Option<String>,
    /// Standard queues: 0 (default) to 9; higher is delivered first.
    pub priority: u32,
    /// At most 10 user attributes; names are 1 to 256 characters of
    /// `A-Za-z0-9_-.`; names and values count toward the message size
    /// limit.
    pub attributes: BTreeMap<String, AttributeValue>,
}

impl OutgoingMessage {
    /// A message without an id (the client will generate one).
    ///
    /// ```
    /// let m = quorumq_client::OutgoingMessage::new(vec![1u8, 2, 3]);
    /// assert_eq!(&m.body[..], &[1, 2, 3]);
    /// ```
    pub fn new(body: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage { body: body.into(), ..OutgoingMessage::default() }
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

    /// The same message with a delay before it becomes visible.
    ///
    /// ```
    /// use std::time::Duration;
    /// let m = quorumq_client::OutgoingMessage::new("x").with_delay(Duration::from_secs(5));
    /// assert_eq!(m.delay, Some(Duration::from_secs(5)));
    /// ```
    pub fn with_delay(self, delay: Duration) -> OutgoingMessage {
        OutgoingMessage { delay: Some(delay), ..self }
    }

    /// The same message with a time to live.
    ///
    /// ```
    /// use std::time::Duration;
    /// let m = quorumq_client::OutgoingMessage::new("x").with_ttl(Duration::from_secs(60));
    /// assert_eq!(m.ttl, Some(Duration::from_secs(60)));
    /// ```
    pub fn with_ttl(self, ttl: Duration) -> OutgoingMessage {
        OutgoingMessage { ttl: Some(ttl), ..self }
    }

    /// The same message in a FIFO message group.
    ///
    /// ```
    /// let m = quorumq_client::OutgoingMessage::new("x").with_group("customer-7");
    /// assert_eq!(m.group.as_deref(), Some("customer-7"));
    /// ```
    pub fn with_group(self, group: impl Into<String>) -> OutgoingMessage {
        OutgoingMessage { group: Some(group.into()), ..self }
    }

    /// The same message with a priority (0 to 9, higher first).
    ///
    /// ```
    /// assert_eq!(quorumq_client::OutgoingMessage::new("x").with_priority(9).priority, 9);
    /// ```
    pub fn with_priority(self, priority: u32) -> OutgoingMessage {
        OutgoingMessage { priority, ..self }
    }

    /// The same message with one more attribute (replacing one of the same
    /// name).
    ///
    /// ```
    /// use quorumq_client::{AttributeValue, OutgoingMessage};
    /// let m = OutgoingMessage::new("x").with_attribute("k", "v");
    /// assert_eq!(m.attributes["k"], AttributeValue::String("v".into()));
    /// ```
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<AttributeValue>) -> OutgoingMessage {
        self.attributes.insert(name.into(), value.into());
        self
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

/// Why a message was dead-lettered.
///
/// ```
/// use quorumq_client::DeadLetterReason;
/// assert_eq!(DeadLetterReason::parse("max-receives"), DeadLetterReason::MaxReceives);
/// assert_eq!(DeadLetterReason::parse("later"), DeadLetterReason::Other("later".into()));
/// assert_eq!(DeadLetterReason::Expired.as_str(), "expired");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Received the maximum number of times without an ack.
    MaxReceives,
    /// Its retention or time to live ended.
    Expired,
    /// A consumer rejected it (a nack with `dead_letter`).
    Rejected,
    /// Pushed out of a full queue (drop-head overflow).
    Overflow,
    /// A reason this client does not know, as the server spelt it.
    Other(String),
}

impl DeadLetterReason {
    /// Reads the server's spelling.
    ///
    /// ```
    /// assert_eq!(quorumq_client::DeadLetterReason::parse("rejected").as_str(), "rejected");
    /// ```
    pub fn parse(reason: &str) -> DeadLetterReason {
        match reason {
            "max-receives" => DeadLetterReason::MaxReceives,
            "expired" => DeadLetterReason::Expired,
            "rejected" => DeadLetterReason::Rejected,
            "overflow" => DeadLetterReason::Overflow,
            other => DeadLetterReason::Other(other.to_string()),
        }
    }

    /// The server's spelling: `max-receives`, `expired`, `rejected`,
    /// `overflow`, or the unknown reason as given.
    ///
    /// ```
    /// assert_eq!(quorumq_client::DeadLetterReason::Overflow.as_str(), "overflow");
    /// ```
    pub fn as_str(&self) -> &str {
        match self {
            DeadLetterReason::MaxReceives => "max-receives",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Overflow => "overflow",
            DeadLetterReason::Other(other) => other,
        }
    }
}

/// Where a dead-lettered message came from, and why it moved.
///
/// ```
/// use quorumq_client::{DeadLetterInfo, DeadLetterReason};
/// let info = DeadLetterInfo { reason: DeadLetterReason::MaxReceives, source_queue: "jobs".into(), receive_count: 5 };
/// assert_eq!(info.source_queue, "jobs");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeadLetterInfo {
    /// Why it moved.
    pub reason: DeadLetterReason,
    /// The queue it moved from (where a redrive returns it).
    pub source_queue: String,
    /// Its receive count in the source queue.
    pub receive_count: u32,
}

/// One delivery of a message.
///
/// ```
/// let m = quorumq_client::Message { receive_count: 1, ..Default::default() };
/// assert!(m.body.is_empty());
/// assert!(m.dead_letter.is_none());
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
    /// The user attributes it was sent with.
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Its FIFO message group, on FIFO queues.
    pub group: Option<String>,
    /// Its priority (0 to 9).
    pub priority: u32,
    /// Set when the message was dead-lettered into this queue.
    pub dead_letter: Option<DeadLetterInfo>,
}

/// How [`Client::nack_with`](crate::Client::nack_with) gives messages back.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::NackOptions;
///
/// let retry_later = NackOptions { delay: Duration::from_secs(30), ..Default::default() };
/// let reject = NackOptions { dead_letter: true, ..Default::default() };
/// assert!(!retry_later.dead_letter && reject.delay.is_zero());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NackOptions {
    /// Visible again after this long (server limit 12 h). Zero: now, or
    /// after the queue's redelivery backoff when it has one.
    pub delay: Duration,
    /// Reject: move the message to the queue's dead-letter queue (or drop
    /// it when the queue has none) instead of delivering it again.
    pub dead_letter: bool,
}

/// What [`Client::redrive`](crate::Client::redrive) moves.
///
/// ```
/// let options = quorumq_client::RedriveOptions { to: Some("jobs".into()), max_messages: 100 };
/// assert_eq!(options.max_messages, 100);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedriveOptions {
    /// Where to: `None` for each message's source queue.
    pub to: Option<String>,
    /// At most this many messages in this call: 1 to 1000; 0 means 1000.
    pub max_messages: u32,
}

/// What one redrive did.
///
/// ```
/// let r = quorumq_client::RedriveResult { moved: 10, remaining: 0, skipped: 1 };
/// assert_eq!(r.moved + r.remaining, 10);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedriveResult {
    /// Messages moved.
    pub moved: u64,
    /// Messages left that a further call could move (ready or delayed;
    /// in-flight ones wait for their visibility timeout). Call again until
    /// it is 0.
    pub remaining: u64,
    /// Messages left in place because their source queue no longer exists.
    pub skipped: u64,
}
