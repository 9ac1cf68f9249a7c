//! The quorumq queue state machine.
//!
//! Pure and deterministic: [`State::apply`] takes a [`Request`] (a command and
//! the leader's clock) and returns a [`Response`], appending the [`Effect`]s
//! the node must carry out (store or delete message records, wake long polls).
//! It reads no clock, draws no random numbers and does no I/O, so every node
//! applying the same log reaches the same state and the same answers.
//!
//! ```
//! use bytes::Bytes;
//! use quorumq_raft_state_machine::*;
//!
//! let mut state = State::new();
//! let mut effects = Vec::new();
//! let create = Command::CreateQueue { name: "jobs".into(), config: QueueConfig::default() };
//! state.apply(Request { now_ms: 1_000, command: create }, &mut effects).unwrap();
//!
//! let send = Command::Send {
//!     queue: "jobs".into(),
//!     messages: vec![NewMessage { id: Some("job-1".into()), ..NewMessage::new(Bytes::from("hello")) }],
//! };
//! state.apply(Request { now_ms: 1_001, command: send }, &mut effects).unwrap();
//!
//! let receive = Command::Receive { queue: "jobs".into(), max_messages: 10, visibility_timeout_ms: None };
//! let Ok(Outcome::Received { deliveries, .. }) = state.apply(Request { now_ms: 1_002, command: receive }, &mut effects)
//! else { panic!("receive failed") };
//! assert_eq!(deliveries.len(), 1);
//! assert_eq!(deliveries[0].receipt.receive_count, 1);
//! ```

mod compact;
mod dedup;
pub mod limits;
mod state;
mod types;

pub use state::CapturedState;
pub use state::State;
pub use types::*;
