//! Plain Rust types of the state machine: its input (commands), its output
//! (outcomes, errors, effects), and the values they carry.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use crate::limits;

/// A queue's identity. Never reused: a queue deleted and created again gets a
/// new id, so receipts of the old queue cannot touch the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub u64);

/// A message's position in its queue, assigned in send order, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

/// Names one delivery of one message. A message delivered again has a higher
/// receive count, which makes receipts of earlier deliveries stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    pub queue_id: QueueId,
    pub seq: Seq,
    pub receive_count: u32,
}

/// What a queue does when a send would exceed one of its length limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overflow {
    /// Refuse the messages that do not fit (RESOURCE_EXHAUSTED each).
    #[default]
    RejectPublish,
    /// Accept them, and dead-letter (or drop) the oldest messages that are
    /// not in flight to make room.
    DropHead,
}

/// Where a queue's failed messages go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPolicy {
    pub queue: String,
    /// A message received this many times moves instead of being delivered
    /// again; 0: never for this reason.
    pub max_receives: u32,
}

/// Delay before a nacked or timed-out message is visible again:
/// `min(max, min * factor^(receive_count - 1))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
    /// Growth per delivery in thousandths (2000 doubles).
    pub factor_milli: u32,
}

impl Backoff {
    /// The delay after the `receive_count`-th delivery, rounded down to the
    /// millisecond.
    ///
    /// The growth is carried in billionths of a millisecond, not in whole
    /// milliseconds: rounding down at every step would lose the growth of
    /// small delays (1 ms times 1.5 stays 1 ms forever) and drift below the
    /// formula for larger ones. The loop ends once the delay reaches `max_ms`,
    /// so it runs at most about 17,600 times (factor 1.001 from 1 ms to
    /// `BACKOFF_MS_MAX`), whatever the receive count.
    pub fn delay_ms(&self, receive_count: u32) -> u64 {
        const SCALE: u128 = 1_000_000_000;
        let max = self.max_ms as u128 * SCALE;
        let mut delay = self.min_ms as u128 * SCALE;
        if self.factor_milli > 1000 {
            for _ in 1..receive_count.max(1) {
                if delay >= max {
                    break;
                }
                delay = delay * self.factor_milli as u128 / 1000;
            }
        }
        (delay.min(max) / SCALE) as u64
    }
}

/// A queue's attributes, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub visibility_timeout_ms: u64,
    pub dedup_window_ms: u64,
    pub retention_ms: u64,
    /// Time to live of every message (a message's own TTL, when shorter,
    /// wins).
    pub message_ttl_ms: Option<u64>,
    /// Default delay of new messages.
    pub delay_ms: u64,
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter: Option<DeadLetterPolicy>,
    pub redelivery_backoff: Option<Backoff>,
    pub fifo: bool,
    pub content_based_dedup: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_ms: limits::VISIBILITY_TIMEOUT_MS_DEFAULT,
            dedup_window_ms: limits::DEDUP_WINDOW_MS_DEFAULT,
            retention_ms: limits::RETENTION_MS_DEFAULT,
            message_ttl_ms: None,
            delay_ms: 0,
            max_messages: None,
            max_bytes: None,
            overflow: Overflow::RejectPublish,
            dead_letter: None,
            redelivery_backoff: None,
            fifo: false,
            content_based_dedup: false,
        }
    }
}

fn invalid(message: String) -> QueueError {
    QueueError::InvalidArgument(message)
}

impl QueueConfig {
    /// Checks the attributes on their own (the dead-letter target's
    /// existence is checked by the state).
    pub fn validate(&self) -> Result<(), QueueError> {
        validate_visibility_timeout(self.visibility_timeout_ms)?;
        if self.dedup_window_ms > limits::DEDUP_WINDOW_MS_MAX {
            return Err(invalid(format!(
                "dedup window {} ms is longer than the maximum of {} ms",
                self.dedup_window_ms,
                limits::DEDUP_WINDOW_MS_MAX
            )));
        }
        if !(limits::RETENTION_MS_MIN..=limits::RETENTION_MS_MAX).contains(&self.retention_ms) {
            return Err(invalid(format!(
                "retention {} ms is outside {} ms (1 min) to {} ms (14 days)",
                self.retention_ms,
                limits::RETENTION_MS_MIN,
                limits::RETENTION_MS_MAX
            )));
        }
        if let Some(ttl) = self.message_ttl_ms {
            validate_ttl(ttl)?;
        }
        validate_delay(self.delay_ms)?;
        if self.max_messages == Some(0) || self.max_bytes == Some(0) {
            return Err(invalid("a length limit must be positive (leave it unset for none)".into()));
        }
        if let Some(policy) = &self.dead_letter {
            validate_queue_name(&policy.queue)?;
            if policy.max_receives > limits::MAX_RECEIVES_MAX {
                return Err(invalid(format!(
                    "max receives {} is more than the limit of {}",
                    policy.max_receives,
                    limits::MAX_RECEIVES_MAX
                )));
            }
        }
        if let Some(b) = &self.redelivery_backoff {
            if b.min_ms == 0 || b.max_ms < b.min_ms || b.max_ms > limits::BACKOFF_MS_MAX {
                return Err(invalid(format!(
                    "redelivery backoff needs 0 < min <= max <= {} ms (got min {} ms, max {} ms)",
                    limits::BACKOFF_MS_MAX,
                    b.min_ms,
                    b.max_ms
                )));
            }
            if !(limits::BACKOFF_FACTOR_MILLI_MIN..=limits::BACKOFF_FACTOR_MILLI_MAX).contains(&b.factor_milli) {
                return Err(invalid(format!(
                    "redelivery backoff factor {} is outside 1 to 10",
                    b.factor_milli as f64 / 1000.0
                )));
            }
        }
        Ok(())
    }
}

/// A change of queue attributes: `None` leaves an attribute as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfigUpdate {
    pub visibility_timeout_ms: Option<u64>,
    pub dedup_window_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    /// `Some(None)` removes the queue's TTL.
    pub message_ttl_ms: Option<Option<u64>>,
    pub delay_ms: Option<u64>,
    pub max_messages: Option<Option<u64>>,
    pub max_bytes: Option<Option<u64>>,
    pub overflow: Option<Overflow>,
    pub dead_letter: Option<Option<DeadLetterPolicy>>,
    pub redelivery_backoff: Option<Option<Backoff>>,
    pub content_based_dedup: Option<bool>,
}

impl QueueConfigUpdate {
    pub fn apply_to(&self, config: &QueueConfig) -> QueueConfig {
        let mut c = config.clone();
        if let Some(v) = self.visibility_timeout_ms {
            c.visibility_timeout_ms = v;
        }
        if let Some(v) = self.dedup_window_ms {
            c.dedup_window_ms = v;
        }
        if let Some(v) = self.retention_ms {
            c.retention_ms = v;
        }
        if let Some(v) = self.message_ttl_ms {
            c.message_ttl_ms = v;
        }
        if let Some(v) = self.delay_ms {
            c.delay_ms = v;
        }
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            c.max_bytes = v;
        }
        if let Some(v) = self.overflow {
            c.overflow = v;
        }
        if let Some(v) = &self.dead_letter {
            c.dead_letter = v.clone();
        }
        if let Some(v) = self.redelivery_backoff {
            c.redelivery_backoff = v;
        }
        if let Some(v) = self.content_based_dedup {
            c.content_based_dedup = v;
        }
        c
    }
}

pub fn validate_visibility_timeout(ms: u64) -> Result<(), QueueError> {
    if ms > limits::VISIBILITY_TIMEOUT_MS_MAX {
        return Err(invalid(format!(
            "visibility timeout {} ms is longer than the maximum of {} ms (12 h)",
            ms,
            limits::VISIBILITY_TIMEOUT_MS_MAX
        )));
    }
    Ok(())
}

pub fn validate_delay(ms: u64) -> Result<(), QueueError> {
    if ms > limits::DELAY_MS_MAX {
        return Err(invalid(format!(
            "delay {} ms is longer than the maximum of {} ms (15 min)",
            ms,
            limits::DELAY_MS_MAX
        )));
    }
    Ok(())
}

pub fn validate_ttl(ms: u64) -> Result<(), QueueError> {
    if ms == 0 || ms > limits::MESSAGE_TTL_MS_MAX {
        return Err(invalid(format!(
            "time to live {} ms is outside 1 ms to {} ms (14 days)",
            ms,
            limits::MESSAGE_TTL_MS_MAX
        )));
    }
    Ok(())
}

/// Queue names are `[A-Za-z0-9_-]{1,80}`.
pub fn validate_queue_name(name: &str) -> Result<(), QueueError> {
    let ok = !name.is_empty()
        && name.len() <= limits::QUEUE_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(QueueError::InvalidQueueName { name: truncate_for_error(name) }) }
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Message ids are 1 to 128 printable ASCII characters.
pub fn validate_message_id(id: &str) -> Result<(), QueueError> {
    if printable(id, limits::MESSAGE_ID_BYTES_MAX) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid message id {:?}: it must be 1 to {} printable ASCII characters without spaces",
            truncate_for_error(id),
            limits::MESSAGE_ID_BYTES_MAX
        )))
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(100).collect()
}

/// A user attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeValue {
    String(String),
    Binary(Bytes),
}

impl AttributeValue {
    pub fn len(&self) -> usize {
        match self {
            AttributeValue::String(s) => s.len(),
            AttributeValue::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One message of a Send.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The message id, which makes the send idempotent within the queue's
    /// deduplication window.
    pub id: Option<String>,
    /// The id was generated by the client for retry safety, not chosen by
    /// the producer: on a queue with content-based deduplication the body
    /// decides what is a duplicate.
    pub id_generated: bool,
    pub body: Bytes,
    /// Overrides the queue's delay (standard queues only).
    pub delay_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
    /// FIFO queues: the message group (required there).
    pub group: Option<String>,
    pub priority: u8,
    pub attributes: BTreeMap<String, AttributeValue>,
}

impl NewMessage {
    pub fn new(body: impl Into<Bytes>) -> NewMessage {
        NewMessage { body: body.into(), ..NewMessage::default() }
    }

    /// Bytes that count toward the message size limit: the body and the
    /// attributes' names and values.
    pub fn size(&self) -> usize {
        self.body.len() + self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    /// Checks the message on its own (limits that do not depend on the queue).
    pub fn validate(&self) -> Result<(), QueueError> {
        if let Some(id) = &self.id {
            validate_message_id(id)?;
        }
        if let Some(d) = self.delay_ms {
            validate_delay(d)?;
        }
        if let Some(t) = self.ttl_ms {
            validate_ttl(t)?;
        }
        if let Some(g) = &self.group
            && !printable(g, limits::GROUP_BYTES_MAX)
        {
            return Err(invalid(format!(
                "invalid message group {:?}: 1 to {} printable ASCII characters",
                truncate_for_error(g),
                limits::GROUP_BYTES_MAX
            )));
        }
        if self.priority > limits::PRIORITY_MAX {
            return Err(invalid(format!(
                "priority {} is above the maximum of {}",
                self.priority,
                limits::PRIORITY_MAX
            )));
        }
        if self.attributes.len() > limits::ATTRIBUTES_MAX {
            return Err(invalid(format!(
                "{} attributes, more than the limit of {}",
                self.attributes.len(),
                limits::ATTRIBUTES_MAX
            )));
        }
        for name in self.attributes.keys() {
            let ok = !name.is_empty()
                && name.len() <= limits::ATTRIBUTE_NAME_BYTES_MAX
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !ok {
                return Err(invalid(format!(
                    "invalid attribute name {:?}: 1 to {} characters of A-Z, a-z, 0-9, _, - and .",
                    truncate_for_error(name),
                    limits::ATTRIBUTE_NAME_BYTES_MAX
                )));
            }
        }
        Ok(())
    }
}

/// A state change, proposed by the leader through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateQueue {
        name: String,
        config: QueueConfig,
    },
    SetQueue {
        name: String,
        update: QueueConfigUpdate,
    },
    DeleteQueue {
        name: String,
    },
    PurgeQueue {
        name: String,
    },
    Send {
        queue: String,
        messages: Vec<NewMessage>,
    },
    Receive {
        queue: String,
        max_messages: u32,
        visibility_timeout_ms: Option<u64>,
    },
    Ack {
        queue: String,
        receipts: Vec<Receipt>,
    },
    /// Makes messages visible again after `delay_ms` (0: now, or the queue's
    /// redelivery backoff), or moves them to the dead-letter queue.
    Nack {
        queue: String,
        receipts: Vec<Receipt>,
        delay_ms: u64,
        dead_letter: bool,
    },
    ChangeVisibility {
        queue: String,
        receipts: Vec<Receipt>,
        visibility_timeout_ms: u64,
    },
    /// Moves up to `max_messages` messages out of a dead-letter queue, to
    /// their source queues or to `to`.
    Redrive {
        queue: String,
        to: Option<String>,
        max_messages: u32,
    },
    /// Carries out what time made due (expiries and their dead-lettering)
    /// in every queue. The leader proposes it when `State::next_due_ms`
    /// has passed.
    Tick,
    /// Several commands in one log entry (the node's group commit, see
    /// `crates/node/src/batcher.rs`), applied in order at the entry's time,
    /// each exactly as it would be on its own. The outcome is
    /// [`Outcome::Batch`], one result per command: one failing command does
    /// not fail the others. A batch inside a batch fails (InvalidArgument).
    Batch(Vec<Command>),
}

/// The payload of one Raft log entry: a command and the leader's clock when
/// it proposed it. The state machine's only source of time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub now_ms: u64,
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Command::CreateQueue { name, .. } => write!(f, "create-queue({name})"),
            Command::SetQueue { name, .. } => write!(f, "set-queue({name})"),
            Command::DeleteQueue { name } => write!(f, "delete-queue({name})"),
            Command::PurgeQueue { name } => write!(f, "purge-queue({name})"),
            Command::Send { queue, messages } => write!(f, "send({queue}, {} messages)", messages.len()),
            Command::Receive { queue, max_messages, .. } => write!(f, "receive({queue}, max {max_messages})"),
            Command::Ack { queue, receipts } => write!(f, "ack({queue}, {} receipts)", receipts.len()),
            Command::Nack { queue, receipts, .. } => write!(f, "nack({queue}, {} receipts)", receipts.len()),
            Command::ChangeVisibility { queue, receipts, .. } => {
                write!(f, "change-visibility({queue}, {} receipts)", receipts.len())
            }
            Command::Redrive { queue, max_messages, .. } => write!(f, "redrive({queue}, max {max_messages})"),
            Command::Tick => write!(f, "tick"),
            Command::Batch(commands) => write!(f, "batch({} commands)", commands.len()),
        }?;
        write!(f, "@{}", self.now_ms)
    }
}

/// What a Send did with one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub seq: Seq,
    /// True when the id was seen within the window: nothing was enqueued and
    /// `seq` is the first send's.
    pub duplicate: bool,
}

/// One delivery made by a Receive. The body, id, attributes and dead-letter
/// details live in the message store (see [`Effect::PutMessage`]); the node
/// reads them by `(queue_id, seq)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub receipt: Receipt,
    pub sent_at_ms: u64,
    pub first_received_at_ms: u64,
    pub visible_again_at_ms: u64,
    pub priority: u8,
}

/// Counters and gauges of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub ready: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub bytes: u64,
    pub sent_total: u64,
    pub acked_total: u64,
    pub received_total: u64,
    pub dedup_evicted_total: u64,
    pub dead_lettered_total: u64,
    pub expired_total: u64,
    pub dropped_total: u64,
    pub rejected_total: u64,
    pub oldest_sent_at_ms: u64,
}

/// A queue as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    pub id: QueueId,
    pub config: QueueConfig,
    pub created_at_ms: u64,
    pub stats: QueueStats,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Entries that are not commands (blank and membership entries), and Tick.
    None,
    QueueCreated {
        queue: QueueInfo,
        created: bool,
    },
    QueueUpdated {
        queue: QueueInfo,
    },
    QueueDeleted {
        messages_deleted: u64,
    },
    QueuePurged {
        messages_deleted: u64,
    },
    Sent {
        queue_id: QueueId,
        results: Vec<Result<Sent, QueueError>>,
    },
    Received {
        queue_id: QueueId,
        deliveries: Vec<Delivery>,
    },
    /// Per receipt, in request order (Ack, Nack and ChangeVisibility).
    Receipts(Vec<Result<(), QueueError>>),
    Redriven {
        moved: u64,
        remaining: u64,
        skipped: u64,
    },
    /// Per command of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

/// What the client gets back for one log entry.
pub type Response = Result<Outcome, QueueError>;

/// The class of an error, which the node maps to a gRPC status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
}

/// Errors of commands. Operating errors only: programmer errors are
/// assertions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum QueueError {
    #[error("queue \"{name}\" does not exist")]
    QueueNotFound { name: String },
    #[error("queue \"{name}\" already exists with a different configuration")]
    QueueExists { name: String },
    #[error("invalid queue name {name:?}: it must be 1 to 80 characters of A-Z, a-z, 0-9, _ and -")]
    InvalidQueueName { name: String },
    #[error("too many queues: the cluster holds at most {max}")]
    TooManyQueues { max: usize },
    #[error("message is {bytes} bytes, more than the limit of {bytes_max} bytes")]
    MessageTooLarge { bytes: usize, bytes_max: usize },
    #[error("queue \"{queue}\" is full ({limit}) and refuses new messages (overflow: reject-publish)")]
    QueueFull { queue: String, limit: String },
    #[error(
        "receipt is stale: the message was delivered again since (this receipt is delivery {receipt_count}, the latest is {current_count})"
    )]
    StaleReceipt { receipt_count: u32, current_count: u32 },
    #[error("receipt does not belong to queue \"{queue}\"")]
    ReceiptOfOtherQueue { queue: String },
    #[error("receipt names a message that was never sent")]
    UnknownReceipt,
    #[error("message is not in flight: its visibility timeout has expired")]
    NotInFlight,
    #[error("the message has been deleted")]
    MessageDeleted,
    #[error("{0}")]
    InvalidArgument(String),
}

impl QueueError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueueError::QueueNotFound { .. } => ErrorKind::NotFound,
            QueueError::QueueExists { .. } => ErrorKind::AlreadyExists,
            QueueError::InvalidQueueName { .. } => ErrorKind::InvalidArgument,
            QueueError::TooManyQueues { .. } => ErrorKind::ResourceExhausted,
            QueueError::MessageTooLarge { .. } => ErrorKind::InvalidArgument,
            QueueError::QueueFull { .. } => ErrorKind::ResourceExhausted,
            QueueError::StaleReceipt { .. } => ErrorKind::FailedPrecondition,
            QueueError::ReceiptOfOtherQueue { .. } => ErrorKind::InvalidArgument,
            QueueError::UnknownReceipt => ErrorKind::InvalidArgument,
            QueueError::NotInFlight => ErrorKind::FailedPrecondition,
            QueueError::MessageDeleted => ErrorKind::FailedPrecondition,
            QueueError::InvalidArgument(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// Why a message was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterReason {
    /// Received the maximum number of times without an ack.
    MaxReceives,
    /// Its retention or time to live ended.
    Expired,
    /// A consumer rejected it (a nack that dead-letters).
    Rejected,
    /// Dropped from the head to make room (overflow drop-head).
    Overflow,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MaxReceives => "max-receives",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Overflow => "overflow",
        }
    }
}

/// What a dead-lettered message gains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    pub reason: DeadLetterReason,
    pub source_queue: String,
    pub receive_count: u32,
    pub at_ms: u64,
}

/// What the state is stored as outside RAM: one record per message, written
/// and deleted by the node as the state machine asks (see [`Effect`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: Option<String>,
    pub sent_at_ms: u64,
    pub body: Bytes,
    pub attributes: BTreeMap<String, AttributeValue>,
    pub group: Option<String>,
    pub priority: u8,
    pub dead_letter: Option<DeadLetterInfo>,
}

/// Side effects of applying a command, for the node to carry out in order.
/// Keeping bodies out of the in-memory state lets a queue's backlog exceed
/// RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    PutMessage {
        queue_id: QueueId,
        seq: Seq,
        record: MessageRecord,
    },
    DeleteMessage {
        queue_id: QueueId,
        seq: Seq,
    },
    /// Delete every stored message of the queue whose seq is below `before`.
    /// Bounded, so that carrying it out late (the node defers deletions while
    /// it copies a snapshot) cannot touch messages sent after it.
    DeleteMessages {
        queue_id: QueueId,
        before: Seq,
    },
    /// Move a stored record to another queue and seq, setting its
    /// dead-letter details (`None`: clearing them, as a redrive does).
    MoveMessage {
        from: (QueueId, Seq),
        to: (QueueId, Seq),
        dead_letter: Option<DeadLetterInfo>,
    },
    /// Messages became visible in the queue: wake its long polls.
    MessagesAvailable {
        queue: String,
    },
}

/// The id a client sees for a message: the producer's, or one derived from
/// the message's position when the producer gave none.
pub fn message_id(queue_id: QueueId, seq: Seq, producer_id: Option<&str>) -> String {
    match producer_id {
        Some(id) => id.to_string(),
        None => format!("q{}-{}", queue_id.0, seq.0),
    }
}
