//! Model-based property test: random interleavings of every command, applied
//! both to the real `State` and to a small reference model written
//! independently (a `Vec` of messages per queue, linear scans, eager time-outs
//! instead of lazy ones). After every step the test compares the response,
//! the effects, the stats of every queue, the store of message records that
//! the effects imply, and `check_invariants()`.
//!
//! How to run and rerun:
//!
//! ```text
//! cargo test -p quorumq-raft-state-machine --test model              # 1000 cases
//! PROPTEST_CASES=20000 cargo test -p quorumq-raft-state-machine --test model --release
//! PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n> cargo test -p quorumq-raft-state-machine --test model
//! ```
//!
//! On failure the test prints the minimal (shrunk) sequence of steps and the
//! exact command, with the seed, that reproduces it. Other `PROPTEST_*`
//! variables (such as `PROPTEST_MAX_SHRINK_ITERS`) apply as usual.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest::test_runner::RngSeed;
use proptest::test_runner::TestCaseError;
use proptest::test_runner::TestRunner;
use quorumq_raft_state_machine::limits;
use quorumq_raft_state_machine::*;

const CASES_DEFAULT: u32 = 1000;

// ---------------------------------------------------------------- the model

/// The reference model. Deliberately naive: a message is in flight exactly
/// while `deadline > now`, so nothing needs expiring.
#[derive(Clone, Debug, Default)]
struct Model {
    now: u64,
    next_queue_id: u64,
    /// Kept sorted by name, as `list_queues` lists them.
    queues: Vec<ModelQueue>,
}

#[derive(Clone, Debug)]
struct ModelQueue {
    name: String,
    id: QueueId,
    config: QueueConfig,
    created_at: u64,
    next_seq: u64,
    /// Live messages in seq order.
    messages: Vec<ModelMessage>,
    /// Every id ever enqueued: (id, seq, sent at).
    sent_ids: Vec<(String, u64, u64)>,
    sent_total: u64,
    acked_total: u64,
    received_total: u64,
}

#[derive(Clone, Debug)]
struct ModelMessage {
    seq: u64,
    id: Option<String>,
    body: Bytes,
    sent_at: u64,
    receive_count: u32,
    first_received_at: u64,
    deadline: Option<u64>,
}

impl ModelMessage {
    fn in_flight(&self, now: u64) -> bool {
        matches!(self.deadline, Some(d) if d > now)
    }
}

/// What a receipt names, in the model.
enum Named {
    /// The message is gone (acked, purged).
    Deleted,
    /// The index of the message it currently names.
    Current(usize),
}

fn invalid() -> QueueError {
    // The text is not compared, see `normalise`.
    QueueError::InvalidArgument(String::new())
}

fn model_name_ok(name: &str) -> bool {
    (1..=limits::QUEUE_NAME_BYTES_MAX).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn model_id_ok(id: &str) -> bool {
    (1..=limits::MESSAGE_ID_BYTES_MAX).contains(&id.len()) && id.chars().all(|c| c.is_ascii_graphic())
}

impl ModelQueue {
    fn info(&self, now: u64) -> QueueInfo {
        let in_flight = self.messages.iter().filter(|m| m.in_flight(now)).count() as u64;
        QueueInfo {
            name: self.name.clone(),
            id: self.id,
            config: self.config.clone(),
            created_at_ms: self.created_at,
            stats: QueueStats {
                ready: self.messages.len() as u64 - in_flight,
                in_flight,
                bytes: self.messages.iter().map(|m| m.body.len() as u64).sum(),
                sent_total: self.sent_total,
                acked_total: self.acked_total,
                received_total: self.received_total,
                dedup_evicted_total: 0,
                oldest_sent_at_ms: self.messages.iter().map(|m| m.sent_at).min().unwrap_or(0),
            },
        }
    }

    fn find(&self, receipt: &Receipt) -> Result<Named, QueueError> {
        if receipt.queue_id != self.id {
            return Err(QueueError::ReceiptOfOtherQueue { queue: self.name.clone() });
        }
        let issued_seq = receipt.seq.0 >= 1 && receipt.seq.0 < self.next_seq;
        if !issued_seq || receipt.receive_count == 0 {
            return Err(QueueError::UnknownReceipt);
        }
        // A deleted message keeps no history, so any receipt of it counts
        // as one of an earlier delivery.
        let Some(index) = self.messages.iter().position(|m| m.seq == receipt.seq.0) else {
            return Ok(Named::Deleted);
        };
        let current = self.messages[index].receive_count;
        if receipt.receive_count < current {
            Err(QueueError::StaleReceipt { receipt_count: receipt.receive_count, current_count: current })
        } else if receipt.receive_count > current {
            Err(QueueError::UnknownReceipt)
        } else {
            Ok(Named::Current(index))
        }
    }
}

impl Model {
    fn queue_index(&self, name: &str) -> Result<usize, QueueError> {
        self.queues.iter().position(|q| q.name == name).ok_or(QueueError::QueueNotFound { name: name.into() })
    }

    fn apply(&mut self, request: &Request) -> (Response, Vec<Effect>) {
        if request.now_ms > self.now {
            self.now = request.now_ms;
        }
        let mut effects = Vec::new();
        let response = self.command(&request.command, &mut effects);
        (response, effects)
    }

    fn command(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response {
        let now = self.now;
        match command {
            Command::CreateQueue { name, config } => {
                if !model_name_ok(name) {
                    return Err(QueueError::InvalidQueueName { name: name.clone() });
                }
                if config.visibility_timeout_ms > limits::VISIBILITY_TIMEOUT_MS_MAX
                    || config.dedup_window_ms > limits::DEDUP_WINDOW_MS_MAX
                {
                    return Err(invalid());
                }
                if let Ok(i) = self.queue_index(name) {
                    let q = &self.queues[i];
                    if q.config != *config {
                        return Err(QueueError::QueueExists { name: name.clone() });
                    }
                    return Ok(Outcome::QueueCreated { queue: q.info(now), created: false });
                }
                self.next_queue_id += 1;
                let q = ModelQueue {
                    name: name.clone(),
                    id: QueueId(self.next_queue_id),
                    config: config.clone(),
                    created_at: now,
                    next_seq: 1,
                    messages: Vec::new(),
                    sent_ids: Vec::new(),
                    sent_total: 0,
                    acked_total: 0,
                    received_total: 0,
                };
                let info = q.info(now);
                self.queues.push(q);
                self.queues.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Outcome::QueueCreated { queue: info, created: true })
            }
            Command::DeleteQueue { name } => {
                let q = self.queues.remove(self.queue_index(name)?);
                effects.push(Effect::DeleteMessages { queue_id: q.id, before: Seq(u64::MAX) });
                Ok(Outcome::QueueDeleted { messages_deleted: q.messages.len() as u64 })
            }
            Command::PurgeQueue { name } => {
                let i = self.queue_index(name)?;
                let q = &mut self.queues[i];
                let messages_deleted = q.messages.len() as u64;
                q.messages.clear();
                effects.push(Effect::DeleteMessages { queue_id: q.id, before: Seq(q.next_seq) });
                Ok(Outcome::QueuePurged { messages_deleted })
            }
            Command::Send { queue, messages } => {
                let i = self.queue_index(queue)?;
                let q = &mut self.queues[i];
                let total: usize = messages.iter().map(|m| m.body.len()).sum();
                if messages.is_empty()
                    || messages.len() > limits::SEND_BATCH_ENTRIES_MAX
                    || total > limits::SEND_BATCH_BYTES_MAX
                {
                    return Err(invalid());
                }
                let mut results = Vec::new();
                for m in messages {
                    if m.body.len() > limits::MESSAGE_BYTES_HARD_MAX {
                        results.push(Err(QueueError::MessageTooLarge {
                            bytes: m.body.len(),
                            bytes_max: limits::MESSAGE_BYTES_HARD_MAX,
                        }));
                        continue;
                    }
                    if let Some(id) = &m.id {
                        if !model_id_ok(id) {
                            results.push(Err(invalid()));
                            continue;
                        }
                        let window = q.config.dedup_window_ms;
                        let earlier = q.sent_ids.iter().rev().find(|(seen, _, at)| seen == id && now < at + window);
                        if let Some(&(_, seq, _)) = earlier {
                            results.push(Ok(Sent { seq: Seq(seq), duplicate: true }));
                            continue;
                        }
                    }
                    let seq = q.next_seq;
                    q.next_seq += 1;
                    if let Some(id) = &m.id {
                        q.sent_ids.push((id.clone(), seq, now));
                    }
                    q.messages.push(ModelMessage {
                        seq,
                        id: m.id.clone(),
                        body: m.body.clone(),
                        sent_at: now,
                        receive_count: 0,
                        first_received_at: 0,
                        deadline: None,
                    });
                    q.sent_total += 1;
                    effects.push(Effect::PutMessage {
                        queue_id: q.id,
                        seq: Seq(seq),
                        record: MessageRecord { id: m.id.clone(), sent_at_ms: now, body: m.body.clone() },
                    });
                    results.push(Ok(Sent { seq: Seq(seq), duplicate: false }));
                }
                if results.iter().any(|r| matches!(r, Ok(s) if !s.duplicate)) {
                    effects.push(Effect::MessagesAvailable { queue: queue.clone() });
                }
                Ok(Outcome::Sent { queue_id: q.id, results })
            }
            Command::Receive { queue, max_messages, visibility_timeout_ms } => {
                let i = self.queue_index(queue)?;
                let q = &mut self.queues[i];
                if *max_messages > limits::RECEIVE_MESSAGES_MAX {
                    return Err(invalid());
                }
                let timeout = visibility_timeout_ms.unwrap_or(q.config.visibility_timeout_ms);
                if timeout > limits::VISIBILITY_TIMEOUT_MS_MAX {
                    return Err(invalid());
                }
                let want = (*max_messages).max(1) as usize;
                let mut deliveries = Vec::new();
                // `messages` is in seq order, so this is FIFO.
                for m in q.messages.iter_mut().filter(|m| !m.in_flight(now)).take(want) {
                    m.receive_count += 1;
                    if m.receive_count == 1 {
                        m.first_received_at = now;
                    }
                    m.deadline = Some(now + timeout);
                    deliveries.push(Delivery {
                        receipt: Receipt { queue_id: q.id, seq: Seq(m.seq), receive_count: m.receive_count },
                        sent_at_ms: m.sent_at,
                        first_received_at_ms: m.first_received_at,
                        visible_again_at_ms: now + timeout,
                    });
                }
                q.received_total += deliveries.len() as u64;
                Ok(Outcome::Received { queue_id: q.id, deliveries })
            }
            Command::Ack { queue, receipts } => {
                let i = self.queue_index(queue)?;
                let q = &mut self.queues[i];
                if receipts.is_empty() || receipts.len() > limits::RECEIPT_BATCH_ENTRIES_MAX {
                    return Err(invalid());
                }
                let mut results = Vec::new();
                for r in receipts {
                    results.push(q.find(r).map(|named| {
                        if let Named::Current(index) = named {
                            q.messages.remove(index);
                            q.acked_total += 1;
                            effects.push(Effect::DeleteMessage { queue_id: q.id, seq: r.seq });
                        }
                    }));
                }
                Ok(Outcome::Receipts(results))
            }
            Command::Nack { queue, receipts } => {
                let i = self.queue_index(queue)?;
                let q = &mut self.queues[i];
                if receipts.is_empty() || receipts.len() > limits::RECEIPT_BATCH_ENTRIES_MAX {
                    return Err(invalid());
                }
                let mut woke = false;
                let mut results = Vec::new();
                for r in receipts {
                    results.push(q.find(r).map(|named| {
                        if let Named::Current(index) = named {
                            let m = &mut q.messages[index];
                            if m.in_flight(now) {
                                m.deadline = None;
                                woke = true;
                            }
                        }
                    }));
                }
                if woke {
                    effects.push(Effect::MessagesAvailable { queue: queue.clone() });
                }
                Ok(Outcome::Receipts(results))
            }
            Command::ChangeVisibility { queue, receipts, visibility_timeout_ms } => {
                if *visibility_timeout_ms > limits::VISIBILITY_TIMEOUT_MS_MAX {
                    return Err(invalid());
                }
                let i = self.queue_index(queue)?;
                let q = &mut self.queues[i];
                if receipts.is_empty() || receipts.len() > limits::RECEIPT_BATCH_ENTRIES_MAX {
                    return Err(invalid());
                }
                let mut woke = false;
                let mut results = Vec::new();
                for r in receipts {
                    let result = match q.find(r) {
                        Err(e) => Err(e),
                        Ok(Named::Deleted) => Err(invalid()),
                        Ok(Named::Current(index)) => {
                            let m = &mut q.messages[index];
                            if !m.in_flight(now) {
                                Err(QueueError::NotInFlight)
                            } else if *visibility_timeout_ms == 0 {
                                m.deadline = None;
                                woke = true;
                                Ok(())
                            } else {
                                m.deadline = Some(now + visibility_timeout_ms);
                                Ok(())
                            }
                        }
                    };
                    results.push(result);
                }
                if woke {
                    effects.push(Effect::MessagesAvailable { queue: queue.clone() });
                }
                Ok(Outcome::Receipts(results))
            }
        }
    }

    /// Every live message as the store should hold it.
    fn records(&self) -> BTreeMap<(QueueId, Seq), MessageRecord> {
        let mut records = BTreeMap::new();
        for q in &self.queues {
            for m in &q.messages {
                let record = MessageRecord { id: m.id.clone(), sent_at_ms: m.sent_at, body: m.body.clone() };
                records.insert((q.id, Seq(m.seq)), record);
            }
        }
        records
    }
}

/// Forgets the text of InvalidArgument errors, which the model does not copy.
fn normalise(response: Response) -> Response {
    fn error(e: QueueError) -> QueueError {
        match e {
            QueueError::InvalidArgument(_) => invalid(),
            other => other,
        }
    }
    match response {
        Err(e) => Err(error(e)),
        Ok(Outcome::Sent { queue_id, results }) => {
            Ok(Outcome::Sent { queue_id, results: results.into_iter().map(|r| r.map_err(error)).collect() })
        }
        Ok(Outcome::Receipts(results)) => {
            Ok(Outcome::Receipts(results.into_iter().map(|r| r.map_err(error)).collect()))
        }
        Ok(other) => Ok(other),
    }
}

/// The message store as the node keeps it, built only from effects.
#[derive(Default)]
struct Store {
    records: BTreeMap<(QueueId, Seq), MessageRecord>,
}

impl Store {
    fn carry_out(&mut self, effects: &[Effect]) -> Result<(), TestCaseError> {
        for effect in effects {
            match effect {
                Effect::PutMessage { queue_id, seq, record } => {
                    let old = self.records.insert((*queue_id, *seq), record.clone());
                    prop_assert!(old.is_none(), "PutMessage overwrote {queue_id:?}/{seq:?}: seqs are never reused");
                }
                Effect::DeleteMessage { queue_id, seq } => {
                    let old = self.records.remove(&(*queue_id, *seq));
                    prop_assert!(old.is_some(), "DeleteMessage of {queue_id:?}/{seq:?}, which is not stored");
                }
                Effect::DeleteMessages { queue_id, before } => {
                    self.records.retain(|(q, seq), _| q != queue_id || seq >= before);
                }
                Effect::MessagesAvailable { .. } => {}
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- the steps

/// Queue names used: two valid ones and one invalid (never created).
const NAMES: [&str; 3] = ["a", "b", "not valid!"];

/// Configurations used: default, short timeouts, zeros, and an invalid one.
fn configs() -> [QueueConfig; 5] {
    [
        QueueConfig::default(),
        QueueConfig { visibility_timeout_ms: 1_000, dedup_window_ms: 5_000 },
        QueueConfig { visibility_timeout_ms: 0, dedup_window_ms: 0 },
        QueueConfig { visibility_timeout_ms: 2_500, dedup_window_ms: 0 },
        QueueConfig { visibility_timeout_ms: limits::VISIBILITY_TIMEOUT_MS_MAX + 1, dedup_window_ms: 0 },
    ]
}

#[derive(Clone, Debug)]
enum ReceiptPick {
    /// The n-th most recent delivery by the queue addressed (often current).
    Recent(usize),
    /// Any delivery made so far, by any queue (often stale, acked, or of
    /// another or a deleted queue).
    Any(usize),
    /// A receipt that may never have been issued, of the queue addressed or
    /// (`next_queue`) of the queue id after it.
    Forged { next_queue: bool, seq: u64, receive_count: u32 },
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        queue: usize,
        config: usize,
    },
    Delete {
        queue: usize,
    },
    Purge {
        queue: usize,
    },
    Send {
        queue: usize,
        messages: Vec<NewMessage>,
    },
    Receive {
        queue: usize,
        max_messages: u32,
        visibility_timeout_ms: Option<u64>,
    },
    Ack {
        queue: usize,
        receipts: Vec<ReceiptPick>,
    },
    Nack {
        queue: usize,
        receipts: Vec<ReceiptPick>,
    },
    ChangeVisibility {
        queue: usize,
        receipts: Vec<ReceiptPick>,
        visibility_timeout_ms: u64,
    },
    /// Replace the real state by a postcard round trip of itself.
    Snapshot,
}

#[derive(Clone, Debug)]
enum Clock {
    Same,
    Forward(u64),
    /// A request whose now_ms is behind the state's clock.
    Back(u64),
    /// Just before, at or just after the next visibility deadline or dedup
    /// expiry, where off-by-one errors live.
    NextEvent(i8),
}

#[derive(Clone, Debug)]
struct Step {
    clock: Clock,
    op: Op,
}

fn queue_slot() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(0usize), 3 => Just(1usize), 1 => Just(2usize)]
}

fn new_message() -> impl Strategy<Value = NewMessage> {
    let id = prop_oneof![
        4 => Just(None),
        6 => (0..4u8).prop_map(|i| Some(format!("m{i}"))),
        1 => prop_oneof![Just(String::new()), Just("has space".to_string()), Just("x".repeat(129))].prop_map(Some),
    ];
    let body = proptest::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from);
    (id, body).prop_map(|(id, body)| NewMessage { id, body })
}

fn receipt_pick() -> impl Strategy<Value = ReceiptPick> {
    prop_oneof![
        6 => (0..4usize).prop_map(ReceiptPick::Recent),
        3 => any::<usize>().prop_map(ReceiptPick::Any),
        2 => (prop::bool::weighted(0.2), 0..8u64, 0..4u32)
            .prop_map(|(next_queue, seq, receive_count)| ReceiptPick::Forged { next_queue, seq, receive_count }),
    ]
}

fn receipts() -> impl Strategy<Value = Vec<ReceiptPick>> {
    proptest::collection::vec(receipt_pick(), 0..5)
}

fn visibility_timeout() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        6 => 1..3_000u64,
        1 => Just(limits::VISIBILITY_TIMEOUT_MS_MAX),
        1 => Just(limits::VISIBILITY_TIMEOUT_MS_MAX + 1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (queue_slot(), 0..5usize).prop_map(|(queue, config)| Op::Create { queue, config }),
        1 => queue_slot().prop_map(|queue| Op::Delete { queue }),
        1 => queue_slot().prop_map(|queue| Op::Purge { queue }),
        8 => (queue_slot(), proptest::collection::vec(new_message(), 0..5))
            .prop_map(|(queue, messages)| Op::Send { queue, messages }),
        8 => (
            queue_slot(),
            prop_oneof![8 => 0..5u32, 1 => Just(limits::RECEIVE_MESSAGES_MAX), 1 => Just(limits::RECEIVE_MESSAGES_MAX + 1)],
            prop_oneof![1 => Just(None), 3 => visibility_timeout().prop_map(Some)],
        )
            .prop_map(|(queue, max_messages, visibility_timeout_ms)| Op::Receive {
                queue,
                max_messages,
                visibility_timeout_ms
            }),
        5 => (queue_slot(), receipts()).prop_map(|(queue, receipts)| Op::Ack { queue, receipts }),
        3 => (queue_slot(), receipts()).prop_map(|(queue, receipts)| Op::Nack { queue, receipts }),
        3 => (queue_slot(), receipts(), visibility_timeout()).prop_map(|(queue, receipts, visibility_timeout_ms)| {
            Op::ChangeVisibility { queue, receipts, visibility_timeout_ms }
        }),
        1 => Just(Op::Snapshot),
    ]
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        4 => Just(Clock::Same),
        6 => (1..2_000u64).prop_map(Clock::Forward),
        2 => (2_000..40_000u64).prop_map(Clock::Forward),
        1 => (40_000..400_000u64).prop_map(Clock::Forward),
        2 => (1..5_000u64).prop_map(Clock::Back),
        3 => (-1..=1i8).prop_map(Clock::NextEvent),
    ]
}

/// The valid configurations of queues "a" and "b", created before the steps.
fn steps() -> impl Strategy<Value = ([usize; 2], Vec<Step>)> {
    let step = (clock(), op()).prop_map(|(clock, op)| Step { clock, op });
    ([0..4usize, 0..4usize], proptest::collection::vec(step, 1..60))
}

// ---------------------------------------------------------------- the run

struct Run {
    state: State,
    model: Model,
    store: Store,
    /// Every receipt handed out, oldest first.
    delivered: Vec<Receipt>,
    /// The now_ms of the last request (which may be behind the clock).
    last_now: u64,
}

impl Run {
    fn resolve(&self, queue: &str, pick: &ReceiptPick) -> Receipt {
        let model_queue = self.model.queue_index(queue).ok().map(|i| &self.model.queues[i]);
        let queue_id = model_queue.map_or(QueueId(1), |q| q.id);
        let own: Vec<Receipt> = self.delivered.iter().rev().filter(|r| r.queue_id == queue_id).copied().collect();
        let forged = |next_queue: bool, seq, receive_count| Receipt {
            queue_id: QueueId(queue_id.0 + u64::from(next_queue)),
            seq: Seq(seq),
            receive_count,
        };
        match *pick {
            ReceiptPick::Recent(n) if !own.is_empty() => own[n % own.len()],
            ReceiptPick::Any(n) if !self.delivered.is_empty() => self.delivered[n % self.delivered.len()],
            ReceiptPick::Forged { next_queue, seq, receive_count } => forged(next_queue, seq, receive_count),
            // Nothing delivered yet: name a live message as its latest
            // delivery would (unknown when it was never delivered).
            ReceiptPick::Recent(n) | ReceiptPick::Any(n) => match model_queue {
                Some(q) if !q.messages.is_empty() => {
                    let m = &q.messages[n % q.messages.len()];
                    forged(false, m.seq, m.receive_count.max(1))
                }
                _ => forged(false, 1, 1),
            },
        }
    }

    fn request(&mut self, step: &Step) -> Option<Request> {
        let now_ms = match step.clock {
            Clock::Same => self.last_now,
            Clock::Forward(ms) => self.model.now + ms,
            Clock::Back(ms) => self.model.now.saturating_sub(ms),
            Clock::NextEvent(offset) => {
                let now = self.model.now;
                let deadlines = self.model.queues.iter().flat_map(|q| q.messages.iter().filter_map(|m| m.deadline));
                let expiries = self
                    .model
                    .queues
                    .iter()
                    .flat_map(|q| q.sent_ids.iter().map(|&(_, _, at)| at + q.config.dedup_window_ms));
                let next = deadlines.chain(expiries).filter(|&at| at > now).min().unwrap_or(now + 1);
                next.saturating_add_signed(offset.into())
            }
        };
        self.last_now = now_ms;
        let name = |queue: usize| NAMES[queue].to_string();
        let receipts = |queue: usize, picks: &[ReceiptPick]| {
            picks.iter().map(|p| self.resolve(NAMES[queue], p)).collect::<Vec<_>>()
        };
        let command = match &step.op {
            Op::Create { queue, config } => {
                Command::CreateQueue { name: name(*queue), config: configs()[*config].clone() }
            }
            Op::Delete { queue } => Command::DeleteQueue { name: name(*queue) },
            Op::Purge { queue } => Command::PurgeQueue { name: name(*queue) },
            Op::Send { queue, messages } => Command::Send { queue: name(*queue), messages: messages.clone() },
            Op::Receive { queue, max_messages, visibility_timeout_ms } => Command::Receive {
                queue: name(*queue),
                max_messages: *max_messages,
                visibility_timeout_ms: *visibility_timeout_ms,
            },
            Op::Ack { queue, receipts: picks } => {
                Command::Ack { queue: name(*queue), receipts: receipts(*queue, picks) }
            }
            Op::Nack { queue, receipts: picks } => {
                Command::Nack { queue: name(*queue), receipts: receipts(*queue, picks) }
            }
            Op::ChangeVisibility { queue, receipts: picks, visibility_timeout_ms } => Command::ChangeVisibility {
                queue: name(*queue),
                receipts: receipts(*queue, picks),
                visibility_timeout_ms: *visibility_timeout_ms,
            },
            Op::Snapshot => return None,
        };
        Some(Request { now_ms, command })
    }

    /// Applies one step; `label` names it in failure messages.
    fn step(&mut self, label: &str, step: &Step) -> Result<(), TestCaseError> {
        let Some(request) = self.request(step) else {
            self.state = snapshot_round_trip(&self.state)?;
            return self.compare(&format!("{label}: snapshot round trip"));
        };
        let what = format!("{label}: {request:?}");
        let mut effects = Vec::new();
        let response = self.state.apply(request.clone(), &mut effects);
        let (expected, expected_effects) = self.model.apply(&request);
        prop_assert_eq!(normalise(response.clone()), expected, "response of {}", what);
        prop_assert_eq!(&effects, &expected_effects, "effects of {}", what);
        if let Ok(Outcome::Received { deliveries, .. }) = &response {
            self.delivered.extend(deliveries.iter().map(|d| d.receipt));
        }
        self.store.carry_out(&effects)?;
        self.compare(&what)
    }

    /// Compares everything observable of the real state with the model.
    fn compare(&self, what: &str) -> Result<(), TestCaseError> {
        let state = &self.state;
        let model = &self.model;
        if let Err(e) = state.check_invariants() {
            return Err(TestCaseError::fail(format!("invariants broken after {what}: {e}")));
        }
        prop_assert_eq!(state.now_ms(), model.now, "clock after {}", what);
        for later in [0, 999, 1_000, 2_500, 30_000] {
            let at = model.now + later;
            let expected: Vec<QueueInfo> = model.queues.iter().map(|q| q.info(at)).collect();
            prop_assert_eq!(state.list_queues(at), expected, "list_queues({}) after {}", at, what);
            for q in &model.queues {
                let visible = q.messages.iter().any(|m| !m.in_flight(at));
                prop_assert_eq!(state.has_visible(&q.name, at), Ok(visible), "has_visible({}) after {}", at, what);
            }
        }
        for q in &model.queues {
            prop_assert_eq!(state.queue_id(&q.name), Some(q.id));
            // Lazy expiry may leave a passed deadline first in line; only a
            // future deadline is comparable.
            let next = q.messages.iter().filter(|m| m.in_flight(model.now)).filter_map(|m| m.deadline).min();
            match state.next_visible_at(&q.name) {
                Some(at) if at <= model.now => {
                    prop_assert!(q.messages.iter().any(|m| m.deadline == Some(at)), "next_visible_at after {}", what)
                }
                real => prop_assert_eq!(real, next, "next_visible_at({}) after {}", &q.name, what),
            }
        }
        let records = model.records();
        prop_assert_eq!(&self.store.records, &records, "stored records (from effects) after {}", what);
        let keys: Vec<(QueueId, Seq)> = records.keys().copied().collect();
        prop_assert_eq!(state.message_keys().collect::<Vec<_>>(), keys, "message_keys after {}", what);
        prop_assert_eq!(state.message_count(), records.len() as u64, "message_count after {}", what);
        Ok(())
    }
}

fn snapshot_round_trip(state: &State) -> Result<State, TestCaseError> {
    let bytes = postcard::to_stdvec(state).map_err(|e| TestCaseError::fail(format!("serialise: {e}")))?;
    let restored: State = postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(format!("deserialise: {e}")))?;
    prop_assert_eq!(&restored, state, "snapshot round trip");
    if let Err(e) = restored.check_invariants() {
        return Err(TestCaseError::fail(format!("restored snapshot: {e}")));
    }
    Ok(restored)
}

fn run_case(first_configs: [usize; 2], steps: &[Step]) -> Result<(), TestCaseError> {
    let mut run = Run {
        state: State::new(),
        model: Model::default(),
        store: Store::default(),
        delivered: Vec::new(),
        last_now: 0,
    };
    // Most steps want the queues to exist; Delete and Create test the rest.
    for (queue, config) in first_configs.into_iter().enumerate() {
        let create = Step { clock: Clock::Same, op: Op::Create { queue, config } };
        run.step(&format!("setup (create {})", NAMES[queue]), &create)?;
    }
    for (i, step) in steps.iter().enumerate() {
        run.step(&format!("steps[{i}]"), step)?;
    }
    snapshot_round_trip(&run.state)?;
    Ok(())
}

#[test]
fn state_machine_matches_model() {
    // Proves that under random interleavings of every command the state machine answers, emits effects and counts exactly as the reference model does.
    let config = Config::default();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT);
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => std::collections::hash_map::RandomState::new().hash_one("quorumq-model"),
    };
    // Replay is by seed, so no regression files are written into the tree.
    let config = Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..config };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps(), |(first_configs, steps)| run_case(first_configs, &steps));
    if let Err(e) = result {
        panic!(
            "{e}\n\nRerun exactly this run (same cases, same shrinking) with:\n  \
             PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases} cargo test -p quorumq-raft-state-machine --test model\n"
        );
    }
}
