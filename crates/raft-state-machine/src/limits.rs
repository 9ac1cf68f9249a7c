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
