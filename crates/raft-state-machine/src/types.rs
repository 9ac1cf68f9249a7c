//! Plain Rust types of the state machine: its input (commands), its output
//! (outcomes, errors, effects), and the values they carry.

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

/// A queue's attributes, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub visibility_timeout_ms: u64,
    pub dedup_window_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_ms: limits::VISIBILITY_TIMEOUT_MS_DEFAULT,
            dedup_window_ms: limits::DEDUP_WINDOW_MS_DEFAULT,
        }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), QueueError> {
        validate_visibility_timeout(self.visibility_timeout_ms)?;
        if self.dedup_window_ms > limits::DEDUP_WINDOW_MS_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "dedup window {} ms is longer than the maximum of {} ms",
                self.dedup_window_ms,
                limits::DEDUP_WINDOW_MS_MAX
            )));
        }
        Ok(())
    }
}

pub fn validate_visibility_timeout(ms: u64) -> Result<(), QueueError> {
    if ms > limits::VISIBILITY_TIMEOUT_MS_MAX {
        return Err(QueueError::InvalidArgument(format!(
            "visibility timeout {} ms is longer than the maximum of {} ms (12 h)",
            ms,
            limits::VISIBILITY_TIMEOUT_MS_MAX
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

/// Message ids are 1 to 128 printable ASCII characters.
pub fn validate_message_id(id: &str) -> Result<(), QueueError> {
    let ok =
        !id.is_empty() && id.len() <= limits::MESSAGE_ID_BYTES_MAX && id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(QueueError::InvalidArgument(format!(
            "invalid message id {:?}: it must be 1 to {} printable ASCII characters without spaces",
            truncate_for_error(id),
            limits::MESSAGE_ID_BYTES_MAX
        )))
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(100).collect()
}

/// One message of a Send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The producer's id, which makes the send idempotent within the queue's
    /// deduplication window.
    pub id: Option<String>,
    pub body: Bytes,
}

/// A state change, proposed by the leader through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateQueue { name: String, config: QueueConfig },
    DeleteQueue { name: String },
    PurgeQueue { name: String },
    Send { queue: String, messages: Vec<NewMessage> },
    Receive { queue: String, max_messages: u32, visibility_timeout_ms: Option<u64> },
    Ack { queue: String, receipts: Vec<Receipt> },
    Nack { queue: String, receipts: Vec<Receipt> },
    ChangeVisibility { queue: String, receipts: Vec<Receipt>, visibility_timeout_ms: u64 },
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
            Command::DeleteQueue { name } => write!(f, "delete-queue({name})"),
            Command::PurgeQueue { name } => write!(f, "purge-queue({name})"),
            Command::Send { queue, messages } => {
                write!(f, "send({queue}, {} messages)", messages.len())
            }
            Command::Receive { queue, max_messages, .. } => write!(f, "receive({queue}, max {max_messages})"),
            Command::Ack { queue, receipts } => {
                write!(f, "ack({queue}, {} receipts)", receipts.len())
            }
            Command::Nack { queue, receipts } => {
                write!(f, "nack({queue}, {} receipts)", receipts.len())
            }
            Command::ChangeVisibility { queue, receipts, .. } => {
                write!(f, "change-visibility({queue}, {} receipts)", receipts.len())
            }
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

/// One delivery made by a Receive. The body and id live in the message store
/// (see [`Effect::PutMessage`]); the node reads them by `(queue_id, seq)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub receipt: Receipt,
    pub sent_at_ms: u64,
    pub first_received_at_ms: u64,
    pub visible_again_at_ms: u64,
}

/// Counters and gauges of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub ready: u64,
    pub in_flight: u64,
    pub bytes: u64,
    pub sent_total: u64,
    pub acked_total: u64,
    pub received_total: u64,
    pub dedup_evicted_total: u64,
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
    /// Entries that are not commands (blank and membership entries).
    None,
    QueueCreated {
        queue: QueueInfo,
        created: bool,
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
            QueueError::StaleReceipt { .. } => ErrorKind::FailedPrecondition,
            QueueError::ReceiptOfOtherQueue { .. } => ErrorKind::InvalidArgument,
            QueueError::UnknownReceipt => ErrorKind::InvalidArgument,
            QueueError::NotInFlight => ErrorKind::FailedPrecondition,
            QueueError::InvalidArgument(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// What the state is stored as outside RAM: one record per message, written
/// and deleted by the node as the state machine asks (see [`Effect`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: Option<String>,
    pub sent_at_ms: u64,
    pub body: Bytes,
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
