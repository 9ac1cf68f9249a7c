//! Bounds and timings of the node, in one place. The state machine's own
//! limits (queue names, batch sizes, message sizes) are in
//! `quorumq_raft_state_machine::limits`.

use std::time::Duration;

use quorumq_raft_state_machine::limits as sm;

/// Largest client request or response frame: a full Send batch plus room
/// for ids and framing. Larger frames are refused by tonic with
/// RESOURCE_EXHAUSTED before any of it is read into a command.
pub const CLIENT_FRAME_BYTES_MAX: usize = sm::SEND_BATCH_BYTES_MAX + 4 * 1024 * 1024;

/// Entries per AppendEntries request (openraft's `max_payload_entries`).
pub const RAFT_PAYLOAD_ENTRIES_MAX: u64 = 64;

/// Largest node-to-node frame: an AppendEntries request of the most entries
/// allowed, each of the largest size a Send may have, plus framing. Anything
/// larger is not a message we sent and is refused.
pub const RAFT_FRAME_BYTES_MAX: usize = RAFT_PAYLOAD_ENTRIES_MAX as usize * (sm::SEND_BATCH_BYTES_MAX + 64 * 1024);

/// Snapshot chunk size on the wire; memory per snapshot transfer is a few
/// chunks.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Long polls wait at most this long, as SQS.
pub const LONG_POLL_WAIT_MAX: Duration = Duration::from_secs(20);

/// How long a write may wait for its entry to be committed and applied
/// before the client is told its outcome is unknown (DEADLINE_EXCEEDED).
/// A client's own `grpc-timeout`, when shorter, wins.
pub const WRITE_TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// Default for `WRITE_TIMEOUT_MAX` when the client sets no deadline.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed to open a replication stream (openraft's own budget, a
/// fraction of the heartbeat interval, is too short for a TCP connect on a
/// loaded machine).
pub const STREAM_SETUP_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// A replication stream whose follower answers nothing for this long is
/// dropped and reopened.
pub const STREAM_REPLY_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// Concurrent client streams per connection.
pub const CLIENT_CONCURRENT_STREAMS_MAX: u32 = 1024;

/// Backoff between attempts to open a replication stream to a peer that
/// cannot be reached: doubling from the minimum to the maximum. The maximum
/// bounds how long a restarted follower waits to be replicated to again.
pub const STREAM_RETRY_DELAY_MIN: Duration = Duration::from_millis(50);
pub const STREAM_RETRY_DELAY_MAX: Duration = Duration::from_millis(500);

/// Room in a push consumer's outgoing channel beyond its prefetch (for ack
/// results and the final status).
pub const CONSUME_CHANNEL_SLACK: usize = 16;

/// How often an idle push consumer with room looks again without being
/// woken (a safety net: applies wake it at once).
pub const CONSUME_IDLE_RECHECK: Duration = Duration::from_secs(1);

/// How often a push consumer whose prefetch is full looks for deliveries
/// acked outside its stream.
pub const CONSUME_FULL_RECHECK: Duration = Duration::from_millis(100);

/// How often the leader checks whether expiries are due (and proposes a
/// Tick).
pub const TICK_INTERVAL: Duration = Duration::from_millis(500);
