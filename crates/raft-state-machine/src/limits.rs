//! Every bound the state machine enforces, in one place.
//!
//! These are constants, not configuration: the state machine must give the
//! same answer on every node, so it may only depend on the log and on values
//! compiled into every node. Limits that operators tune (the default message
//! size limit, for example) are checked by the leader before it proposes a
//! command, and must stay at or below the hard caps here.

/// Queue names are `[A-Za-z0-9_-]{1,80}`, as SQS's.
pub const QUEUE_NAME_BYTES_MAX: usize = 80;

/// Queues per cluster. Each costs a few hundred bytes of RAM plus its
/// messages.
pub const QUEUES_MAX: usize = 10_000;

/// Producer-supplied message ids: 1 to 128 printable ASCII characters, as
/// SQS's MessageDeduplicationId.
pub const MESSAGE_ID_BYTES_MAX: usize = 128;

/// Hard cap on one message body. The cluster's configured limit (1 MiB by
/// default, as SQS) may be raised up to this.
pub const MESSAGE_BYTES_HARD_MAX: usize = 8 * 1024 * 1024;

/// Default limit on one message body, as SQS today.
pub const MESSAGE_BYTES_DEFAULT: usize = 1024 * 1024;

/// Messages in one Send. One Send is one Raft entry, so this also bounds the
/// entry count of a batch.
pub const SEND_BATCH_ENTRIES_MAX: usize = 1000;

/// Body bytes in one Send (one Raft entry). Bounds the size of a log entry
/// and of an AppendEntries frame.
pub const SEND_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Messages one Receive may return.
pub const RECEIVE_MESSAGES_MAX: u32 = 1000;

/// Receipts in one Ack, Nack or ChangeVisibility.
pub const RECEIPT_BATCH_ENTRIES_MAX: usize = 1000;

/// Default visibility timeout, as SQS.
pub const VISIBILITY_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Longest visibility timeout, as SQS (12 hours).
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * 60 * 60 * 1000;

/// Default deduplication window, as SQS FIFO queues (5 minutes).
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 5 * 60 * 1000;

/// Longest deduplication window.
pub const DEDUP_WINDOW_MS_MAX: u64 = 60 * 60 * 1000;

/// Remembered message ids per queue. Each costs about 60 bytes of RAM; when a
/// queue receives more ids than this within its window, the oldest are
/// forgotten first (and counted in `dedup_evicted_total`).
pub const DEDUP_ENTRIES_PER_QUEUE_MAX: usize = 2_000_000;
/// How long after a remembered id's window ends a Tick comes to forget it
/// when nothing else happens on its queue ([`crate::State::next_dedup_prune_ms`]).
/// A busy queue forgets ids in its own commands first, so the slack keeps
/// Ticks away from queues with traffic.
pub const DEDUP_PRUNE_SLACK_MS: u64 = 10_000;

/// Queue retention: how long a message is kept at most (SQS's range).
pub const RETENTION_MS_MIN: u64 = 60 * 1000;
pub const RETENTION_MS_MAX: u64 = 14 * 24 * 60 * 60 * 1000;
pub const RETENTION_MS_DEFAULT: u64 = 4 * 24 * 60 * 60 * 1000;

/// Per-queue and per-message time to live: at most the longest retention.
pub const MESSAGE_TTL_MS_MAX: u64 = RETENTION_MS_MAX;

/// Send delays, queue default or per message (SQS's range).
pub const DELAY_MS_MAX: u64 = 15 * 60 * 1000;

/// A nack's delay before the message is visible again.
pub const NACK_DELAY_MS_MAX: u64 = VISIBILITY_TIMEOUT_MS_MAX;

/// Message priorities on standard queues: 0 (default) to 9, higher first.
pub const PRIORITY_MAX: u8 = 9;

/// User attributes per message, and the length of their names (SQS: 10).
pub const ATTRIBUTES_MAX: usize = 10;
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 256;

/// FIFO message group names.
pub const GROUP_BYTES_MAX: usize = 128;

/// Dead-letter policy: at most this many receives before the move.
pub const MAX_RECEIVES_MAX: u32 = 1000;

/// Redelivery backoff: the longest delay, and the factor's range (in
/// thousandths: 1000 = constant, 10000 = tenfold per delivery).
pub const BACKOFF_MS_MAX: u64 = VISIBILITY_TIMEOUT_MS_MAX;
pub const BACKOFF_FACTOR_MILLI_MIN: u32 = 1000;
pub const BACKOFF_FACTOR_MILLI_MAX: u32 = 10_000;

/// Messages one Redrive command moves.
pub const REDRIVE_MESSAGES_MAX: u32 = 1000;
