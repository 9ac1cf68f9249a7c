//! Rust client for quorumq, a Raft-replicated message queue cluster.
//!
//! A [`Client`] is given a few seed addresses. It finds the leader (any node
//! names it), follows it when it moves, fails over to the next known node
//! when one is down, and retries with exponential backoff and full jitter —
//! all within a deadline per operation, never past it.
//!
//! Sends are idempotent: every message gets an id before the first attempt
//! (the producer's, or a random one), so that a retry after a lost answer is
//! deduplicated by the server instead of enqueuing the message twice.
//! Receives are at-least-once: a delivery that is not acked in its
//! visibility timeout is delivered again. Consumers either poll
//! ([`Client::receive`], [`Consumer`]) or subscribe ([`Client::subscribe`]):
//! the leader then pushes messages on a stream as soon as they are applied,
//! and the subscription follows the leader when it moves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorumq_client::Error> {
//! use quorumq_client::{Client, ConsumerOptions, QueueOptions};
//!
//! let client = Client::connect(["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"])?;
//! client.create_queue("jobs", QueueOptions::default()).await?;
//! client.send("jobs", "resize image 17").await?;
//!
//! let mut consumer = client.consumer("jobs", ConsumerOptions::default());
//! let delivery = consumer.next().await?;
//! println!("{:?}", delivery.body());
//! delivery.ack().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Retries and what they mean
//!
//! | operation | retried after an unknown outcome? | what a retry can show |
//! |---|---|---|
//! | `send`, `send_batch`, `send_with_id` | yes: ids are fixed before the first attempt | `duplicate: true` when the earlier attempt was applied |
//! | `receive`, `Consumer::next` | yes (at-least-once) | a lost answer's messages reappear after their visibility timeout |
//! | `ack`, `nack`, `nack_with`, `change_visibility` | yes: acking a deleted message succeeds | a stale-receipt error if the message was delivered again meanwhile |
//! | `create_queue` | yes | `created: false` |
//! | `set_queue` | yes | nothing: the same attributes are set again |
//! | `redrive` | yes | `moved` counts the last attempt only |
//! | `Subscription::next` | reconnects (see [`Subscription`]) | deliveries held across a reconnect are delivered again |
//! | `delete_queue` | yes | NOT_FOUND after an unknown outcome is reported as success (0 deleted) |
//! | `purge_queue` | yes | the count of the last attempt only |
//! | `node_status` | no (one attempt at one node) | — |
//!
//! An outcome is unknown after a timeout, a connection lost after the
//! request was written, DEADLINE_EXCEEDED from the server, or a not-leader
//! answer marked [`OUTCOME_UNKNOWN`]. Refused connections and plain
//! not-leader answers prove the request was not executed.
//!
//! Architecture invariants: this crate knows the wire format
//! (`quorumq-proto`) but nothing of the node's internals (it does not depend
//! on `quorumq-node`); prost types stay inside it, converted in one module;
//! a `tonic::Status` becomes an [`Error`] in one function.

#![warn(missing_docs)]

mod call;
mod client;
mod cluster;
mod coalesce;
mod config;
mod consumer;
mod convert;
mod error;
pub mod limits;
mod route;
mod subscription;
mod types;

pub use client::{Client, generate_message_id};
pub use cluster::{ClusterNode, ClusterStatus, LeaderTransfer, Member, NodeStatus, Role};
pub use config::{
    ATTEMPT_TIMEOUT_DEFAULT, BACKOFF_INITIAL_DEFAULT, BACKOFF_MAX_DEFAULT, CONNECT_TIMEOUT_DEFAULT, ClientConfig,
    DEADLINE_DEFAULT,
};
pub use consumer::{Consumer, ConsumerOptions, Delivery};
pub use error::{
    ERROR_METADATA_KEY, EntryError, Error, LEADER_ADDR_METADATA_KEY, LEADER_ID_METADATA_KEY, NOT_LEADER,
    OUTCOME_METADATA_KEY, OUTCOME_UNKNOWN,
};
pub use subscription::{Acker, SubscribeOptions, Subscription};
pub use types::{
    AttributeValue, CreatedQueue, DeadLetterInfo, DeadLetterPolicy, DeadLetterReason, Message, NackOptions,
    OutgoingMessage, Overflow, QueueInfo, QueueOptions, QueueStats, ReceiveOptions, RedeliveryBackoff, RedriveOptions,
    RedriveResult, SendReceipt,
};
