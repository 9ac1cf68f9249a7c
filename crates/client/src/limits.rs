//! Every bound the client keeps, in one place, each with what it costs.
//!
//! The server is authoritative for the limits of the queue API (batch sizes,
//! message sizes, long-poll waits); the client does not repeat them, so that a
//! server configured differently is not second-guessed. The bounds here are
//! the client's own: memory it holds and loops it runs.

use std::time::Duration;

/// Addresses the client remembers (seeds, leader hints, members reported by
/// `cluster_status`). Each costs an address string and at most one cached
/// gRPC channel (one HTTP/2 connection). Hints beyond this are still followed
/// once, but not remembered.
pub const KNOWN_NODES_MAX: usize = 64;

/// Cached channels, one per address. Each holds one HTTP/2 connection and a
/// small background task. Kept equal to [`KNOWN_NODES_MAX`] so that every
/// known node can keep its connection; other addresses (an arbitrary
/// `node_status` target) get a channel that is dropped after the call.
pub const CHANNELS_MAX: usize = KNOWN_NODES_MAX;

/// Leader hints followed back to back without a pause. Two nodes with stale
/// views can point at each other; after this many immediate redirects the
/// client backs off before following the next hint, so a hint loop costs
/// backoff time instead of a busy loop.
pub const REDIRECTS_WITHOUT_BACKOFF_MAX: u32 = 3;

/// How much earlier than the client the server is told (by the
/// `grpc-timeout` header) to give up on an attempt, at most. The server then
/// answers DEADLINE_EXCEEDED — "alive, outcome unknown", retried on the same
/// node — before the client's own timeout fires, which would count the node
/// as failed. Covers a round trip on a loaded network. An attempt of `t`
/// with a long-poll wait `w` gives the server `t - min((t - w) / 5, margin)`.
pub const SERVER_TIMEOUT_MARGIN: Duration = Duration::from_millis(100);

/// Largest gRPC message the client sends or accepts (tonic's default is
/// 4 MiB, below one full send batch). The biggest answer is a receive of many
/// large messages; an answer above this fails (as `InvalidArgument`, from
/// gRPC's OUT_OF_RANGE), and the messages it held become visible again after their visibility timeout.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A PING is sent on a connection that has received nothing for this long
/// (with requests in flight or not), so that a node that went silent (host
/// gone, network cut: no reset to notice) is noticed without waiting for
/// TCP or the attempt timeout. A busy connection sends no PINGs; an idle one
/// costs a few bytes each interval.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a PING may go unanswered before the connection is closed and
/// the calls on it go to another node. Together with the interval this
/// bounds how long a silent leader holds its callers (0.75 s); a node that
/// cannot answer a PING for this long is unusable anyway, and a send that
/// was on the connection is retried with its id (no duplicate).
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(500);

/// A node that failed (connection refused or broken, PING unanswered) is
/// tried after the other nodes for this long, and a hint naming it is
/// followed only after a pause: it is probably dead, and behind a silent
/// network each connection attempt to it costs the connect timeout.
pub const FAILED_NODE_AVOID: Duration = Duration::from_secs(1);

/// While looking for a new leader, one call of a client (the prober) pauses
/// at most the initial backoff between attempts, for this long; the other
/// calls back off exponentially and are woken as soon as any call reaches
/// the new leader. An election takes about the nodes' election timeout
/// (0.1–0.3 s with the defaults), so this covers several elections; after
/// it, the prober backs off too.
pub const LEADER_PROBE_FAST_WINDOW: Duration = Duration::from_secs(2);

/// Rounds of `cluster_status`: the first asks the known nodes, each further
/// round asks the members that the previous round reported and that were not
/// asked yet. Two rounds reach every member that any reachable known node
/// knows about; each round costs at most one attempt timeout.
pub const CLUSTER_STATUS_ROUNDS_MAX: usize = 2;

/// Bits of randomness in a generated message id. By the birthday bound, even
/// 2^40 ids alive in one deduplication window collide with a chance of about
/// 2^-49, far below the rate of undetected disk errors.
pub const GENERATED_ID_RANDOM_BITS: u32 = 128;

/// Prefix of message ids that the client generates, so that they can be told
/// apart from producer-chosen ids in logs. With 32 hex digits the id is 34
/// bytes, well within the server's 128-byte limit on ids.
pub const GENERATED_ID_PREFIX: &str = "c-";

/// Receipts in one ack or nack sent on a subscription's stream, and in one
/// unary nack of the deliveries a failed stream left unsettled. This
/// repeats the server's limit on receipts per request (1000) on purpose: on
/// a stream, a request the node refuses as a whole ends the stream, so a
/// larger batch goes through the unary call instead, where a refusal fails
/// only that call.
pub const STREAM_RECEIPTS_MAX: usize = 1000;

/// Receipts a subscription remembers as handed out and not yet settled, to
/// nack them when it reconnects. Each costs a receipt string (~40 bytes).
/// The node stops pushing at the prefetch (at most 1000), so only a caller
/// that settles deliveries outside the subscription gets near it; the
/// oldest receipts are then forgotten, and their messages come back after
/// their visibility timeout instead of at once.
pub const SUBSCRIPTION_HELD_MAX: usize = 4096;

/// Acks and nacks a subscription sends on its stream before the node has
/// answered them; more wait in the unary calls instead. Each costs its
/// receipts and a waiting task. The node answers them one by one, in order.
pub const SUBSCRIPTION_SETTLES_PENDING_MAX: usize = 1024;

/// Requests queued for a subscription's stream before the transport takes
/// them; when full, acks and nacks go through the unary calls.
pub const SUBSCRIPTION_REQUESTS_QUEUED_MAX: usize = 64;

// A generated id must fit the server's limit of 128 bytes on message ids.
const _: () = assert!(GENERATED_ID_PREFIX.len() + (GENERATED_ID_RANDOM_BITS as usize / 4) <= 128);
const _: () = assert!(CHANNELS_MAX >= KNOWN_NODES_MAX);

/// Send calls per queue running at a time for one-message sends
/// ([`crate::Client::send`]); sends beyond them wait and share the next call
/// (`coalesce.rs`). Each call is one HTTP/2 stream; the leader's own
/// batcher merges what arrives meanwhile, so a few suffice to keep it busy.
pub const COALESCE_CALLS_IN_FLIGHT: usize = 4;

/// Messages in one coalesced Send call, at most (the server takes 1000).
pub const COALESCE_MESSAGES_MAX: usize = 256;

/// Bytes in one coalesced Send call, roughly, at most (the server takes
/// 8 MiB); a larger single message still goes out, alone.
pub const COALESCE_BYTES_MAX: usize = 1024 * 1024;

/// How long past its deadline a coalesced send waits for its call to answer
/// before it answers DEADLINE_EXCEEDED itself: the call's own error (which
/// says what its attempts saw) normally comes first.
pub const COALESCE_WAIT_GRACE: Duration = Duration::from_millis(50);
