//! Group commit of client commands: concurrent commands become one Raft
//! entry (`Command::Batch`), so that the costs paid per entry (openraft's
//! bookkeeping, the log append, replication, the apply) are paid once for
//! many commands.
//!
//! Every write of the queue service ([`crate::service::NodeCtx::write`])
//! hands its command to [`Batcher::write`], which queues it for one task.
//! That task takes the oldest waiting command and everything else already
//! waiting (up to [`limits::BATCH_COMMANDS_MAX`] commands and
//! [`limits::BATCH_BYTES_MAX`] bytes), proposes them as one entry, and hands
//! each caller its own result. At most [`limits::BATCH_PROPOSALS_IN_FLIGHT`]
//! entries are proposed and not yet applied at a time; while they are,
//! new commands wait and gather, which is where batches come from. Nothing
//! waits for company: a command arriving while a slot is free is proposed at
//! once, alone (as a plain command, not a batch of one), so a lone caller
//! sees no added latency. A slot is also given back when its entry has been
//! pending for [`limits::BATCH_SLOT_HOLD_MAX`] or this node stops leading,
//! so that an entry that may never be applied here blocks nothing.
//!
//! A command whose caller has given up (its deadline passed, it answered
//! DEADLINE_EXCEEDED) before the command was taken is dropped instead of
//! proposed: "outcome unknown" covers "not done". Once proposed it may commit
//! after its caller has gone, as before batching.
//!
//! Errors of the proposal itself (not the leader, a discarded entry, Raft
//! stopped) reach every caller of the batch, mapped by
//! [`errors::write_error`] exactly as for a command proposed alone. Errors of
//! a command reach only its caller.

use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use quorumq_raft_state_machine as qsm;
use quorumq_raft_state_machine::Command;
use quorumq_raft_state_machine::Outcome;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;

use crate::errors;
use crate::limits;
use crate::types::*;

/// What the batcher counts, for `/metrics` (clones share the counts).
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// Client commands in each entry proposed (1: proposed alone).
    pub entry_commands: Histogram,
    /// Seconds the oldest command of each entry waited for a free slot.
    pub wait_seconds: Histogram,
    /// Seconds from proposing each entry to its outcome (committed by a
    /// majority and applied here, or refused).
    pub entry_seconds: Histogram,
}

impl Default for BatchStats {
    fn default() -> Self {
        // 1, 2, 4, … 1024 (BATCH_COMMANDS_MAX).
        let seconds = || Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        BatchStats {
            entry_commands: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            wait_seconds: seconds(),
            entry_seconds: seconds(),
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, Status>>;

struct Pending {
    command: Command,
    bytes: usize,
    reply: Reply,
    queued_at: Instant,
}

/// The handle the services write through; the task behind it ends when the
/// last handle is dropped.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts the batching task of `raft` (in the current runtime).
    pub fn start(raft: Raft) -> Batcher {
        Batcher::start_with(raft, limits::BATCH_PROPOSALS_IN_FLIGHT)
    }

    fn start_with(raft: Raft, in_flight: usize) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        tokio::spawn(run(raft, rx, stats.clone(), in_flight));
        Batcher { tx, stats }
    }

    pub fn stats(&self) -> Arc<BatchStats> {
        self.stats.clone()
    }

    /// Proposes `command` (in an entry of its own or with others) and waits
    /// until it is applied. No timeout here: the caller bounds the wait.
    pub async fn write(&self, command: Command) -> Result<Outcome, Status> {
        let (reply, answer) = oneshot::channel();
        let bytes = command_bytes(&command);
        self.tx.send(Pending { command, bytes, reply, queued_at: Instant::now() }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Status {
    Status::unavailable("this node is stopping: its write path has ended")
}

/// Roughly the bytes `command` adds to an entry: message bodies, ids and
/// attributes dominate; everything else is counted coarsely.
fn command_bytes(command: &Command) -> usize {
    const FIXED: usize = 64;
    match command {
        Command::Send { queue, messages } => {
            FIXED
                + queue.len()
                + messages
                    .iter()
                    .map(|m| {
                        FIXED
                            + m.size()
                            + m.attributes.len() * 8
                            + m.id.as_ref().map_or(0, String::len)
                            + m.group.as_ref().map_or(0, String::len)
                    })
                    .sum::<usize>()
        }
        Command::Ack { queue, receipts }
        | Command::Nack { queue, receipts, .. }
        | Command::ChangeVisibility { queue, receipts, .. } => FIXED + queue.len() + receipts.len() * 24,
        Command::Batch(commands) => commands.iter().map(command_bytes).sum(),
        _ => 4 * FIXED,
    }
}

/// The batching task: one entry per turn, at most `in_flight` entries
/// between proposal and apply.
async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>, stats: Arc<BatchStats>, in_flight: usize) {
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    // A command taken but left for the next entry (it did not fit).
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Commands arriving while every slot is taken gather behind `first`.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < limits::BATCH_COMMANDS_MAX {
            let Ok(next) = rx.try_recv() else { break };
            if next.reply.is_closed() {
                continue;
            }
            if bytes + next.bytes > limits::BATCH_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        stats.entry_commands.observe(batch.len() as f64);
        stats.wait_seconds.observe(batch[0].queued_at.elapsed().as_secs_f64());
        let (raft, stats) = (raft.clone(), stats.clone());
        tokio::spawn(async move {
            let proposed_at = Instant::now();
            let proposal = async {
                propose(&raft, batch).await;
                stats.entry_seconds.observe(proposed_at.elapsed().as_secs_f64());
            };
            tokio::pin!(proposal);
            // An entry of a leader cut off from a majority stays pending until
            // a new leader's log replaces it; it must not hold the slot that
            // long, or commands would wait here for nothing instead of being
            // refused with NOT_LEADER at once.
            tokio::select! {
                _ = &mut proposal => return,
                _ = tokio::time::sleep(limits::BATCH_SLOT_HOLD_MAX) => {}
                _ = until_not_leader(&raft) => {}
            }
            drop(slot);
            proposal.await;
        });
    }
}

/// Returns once this node is not the leader (at once if it is not).
async fn until_not_leader(raft: &Raft) {
    let mut metrics = raft.metrics();
    loop {
        if metrics.borrow_watched().state != ServerState::Leader {
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Proposes one entry and answers every caller in it.
async fn propose(raft: &Raft, mut batch: Vec<Pending>) {
    let now_ms = crate::service::now_ms();
    if batch.len() == 1 {
        let Pending { command, reply, .. } = batch.pop().expect("one command");
        let result = match raft.client_write(qsm::Request { now_ms, command }).await {
            Err(e) => Err(errors::write_error(e)),
            Ok(response) => response.data.map_err(|e| errors::queue_error(&e)),
        };
        let _ = reply.send(result);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    let results = match raft.client_write(qsm::Request { now_ms, command: Command::Batch(commands) }).await {
        Err(e) => Err(errors::write_error(e)),
        Ok(response) => match response.data {
            Ok(Outcome::Batch(results)) if results.len() == count => Ok(results),
            other => Err(Status::internal(format!("unexpected outcome of a batch of {count} commands: {other:?}"))),
        },
    };
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result.map_err(|e| errors::queue_error(&e)));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}
