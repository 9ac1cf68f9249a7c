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

/// Group commit (`batcher.rs`): most client commands in one Raft entry.
pub const BATCH_COMMANDS_MAX: usize = 1024;

/// Group commit: most bytes (bodies, ids, attributes, roughly) of the
/// commands of one entry, beyond the first command (a Send may be larger on
/// its own). Half a Send's maximum, so a batch entry stays within the
/// per-entry room `RAFT_FRAME_BYTES_MAX` assumes.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Group commit: entries proposed and not yet applied at a time. Commands
/// arriving while all are taken gather into the next entry.
pub const BATCH_PROPOSALS_IN_FLIGHT: usize = 2;

/// Group commit: an entry pending longer than this (a leader cut off from a
/// majority, a stalled disk) stops counting against the entries in flight.
pub const BATCH_SLOT_HOLD_MAX: Duration = Duration::from_secs(1);

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

/// Longest a membership change may run (adding a node waits for it to copy
/// the log, which for a large backlog takes a while).
pub const MEMBERSHIP_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 60);

/// A membership change's time when the caller sets no deadline.
pub const MEMBERSHIP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Longest a leadership transfer is waited for.
pub const TRANSFER_LEADER_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// How long a leader stopping gracefully (SIGTERM) waits for another voter
/// to take over before it stops anyway.
pub const SHUTDOWN_HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a node samples its resident memory and free disk space for the
/// resource alarms (a few system calls).
pub const ALARM_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Default of `--disk-free-min`: RabbitMQ's default disk free limit (50 MB).
pub const DISK_FREE_MIN_DEFAULT_BYTES: u64 = 50_000_000;

/// How often a node asks every other member for its status (alarms,
/// leadership), and how long it waits for each answer.
pub const PEER_STATUS_INTERVAL: Duration = Duration::from_secs(1);
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// A member's status answer counts (its alarms block sends) for this long;
/// an alarmed node that stops answering stops blocking sends after it.
pub const PEER_STATUS_STALE_AFTER: Duration = Duration::from_secs(5);

/// Readiness: the leader must have heard from a quorum, and a follower from
/// its leader, within this long.
pub const READY_LEADER_CONTACT_MAX: Duration = Duration::from_secs(3);

/// Readiness: a node whose applied index is more than this many entries
/// behind the commit index it knows (its own, or the one its leader last
/// reported) is not ready. Generous, so that a follower does not flap under
/// a burst of writes; small next to a snapshot interval (20,000 by default).
pub const READY_LAG_ENTRIES_MAX: u64 = 1000;

/// Entries (files and directories) the data directory walk of the
/// disk-use metric looks at, at most: sled keeps a handful of files and the
/// snapshot directory one or two, so this bound is only a guard against a
/// data directory someone filled with other things.
pub const DATA_DIR_WALK_ENTRIES_MAX: usize = 100_000;

/// Acks and nacks taken from one consume stream and not yet answered; past
/// it, the consumer reads no more requests until one is answered.
pub const CONSUME_SETTLES_IN_FLIGHT: usize = 64;

/// Receives one push consumer may have proposed and not yet delivered. More
/// than one lets the next Receive commit while the previous one's messages
/// travel to the client and their acks come back.
pub const CONSUME_RECEIVES_IN_FLIGHT: usize = 2;
