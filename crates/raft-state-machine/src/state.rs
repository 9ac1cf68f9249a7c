//! The queues and the function that applies commands to them.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use crate::compact::Messages;
use crate::compact::ReadySet;
use crate::dedup::DedupIds;
use crate::dedup::IdHash;
use crate::limits;
use crate::types::*;

/// All queues of one Raft group. Holds only metadata: message bodies are
/// handed out as [`Effect::PutMessage`] and never kept here.
///
/// Time comes only from [`Request::now_ms`], made monotonic: a new leader
/// whose clock is behind the old one's cannot move time backwards. Whatever
/// time makes due (a visibility timeout ending, a delay ending, an expiry) is
/// carried out lazily, at the start of the next command on the queue, with
/// that command's time; [`Command::Tick`] does it for every queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    now_ms: u64,
    next_queue_id: u64,
    queues: BTreeMap<String, Queue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Queue {
    id: QueueId,
    config: QueueConfig,
    created_at_ms: u64,
    next_seq: u64,
    /// Every live message, by sequence number (compact: see compact.rs).
    messages: Messages,
    /// Standard queues: visible messages in delivery order, `(9 - priority,
    /// seq)`: higher priority first, FIFO within a priority. A message made
    /// visible again returns to its original place.
    ready: ReadySet,
    /// FIFO queues: message groups.
    groups: Groups,
    /// Messages waiting for a delay or a redelivery backoff: `(visible_at,
    /// seq)`.
    delayed: BTreeSet<(u64, u64)>,
    /// Delivered messages by the end of their visibility timeout.
    in_flight: BTreeSet<(u64, u64)>,
    /// Messages with a time to live of their own: `(expires_at, seq)`.
    /// (Retention and the queue's TTL count from the time a message entered
    /// the queue, which grows with seq, so the oldest message is due first
    /// and needs no index.)
    ttl: BTreeSet<(u64, u64)>,
    /// Messages that were sent before they entered this queue (dead-lettered
    /// or redriven into it): `(sent_at, seq)`. Every other message was sent
    /// when it entered, and entry times grow with seq, so the oldest message
    /// is the first of this index or the first message.
    resent: BTreeSet<(u64, u64)>,
    /// Remembered message ids (serialized as the id map and the expiry
    /// set they replaced, see dedup.rs).
    dedup: DedupIds,
    counters: Counters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MessageState {
    Ready,
    Delayed { visible_at_ms: u64 },
    InFlight { deadline_ms: u64, received_at_ms: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageMeta {
    pub(crate) state: MessageState,
    pub(crate) receive_count: u32,
    pub(crate) priority: u8,
    /// FIFO queues: the message's group (an id local to the queue).
    pub(crate) group: Option<u32>,
    pub(crate) body_bytes: u32,
    /// When it was first sent (kept across dead-letter moves).
    pub(crate) sent_at_ms: u64,
    /// When it entered this queue: retention and the queue's TTL count from
    /// here.
    pub(crate) enqueued_at_ms: u64,
    pub(crate) first_received_at_ms: u64,
    /// Its own expiry, if it has a TTL of its own.
    pub(crate) expires_at_ms: Option<u64>,
    /// A dead-lettered message: the queue it came from (for redrive).
    pub(crate) source_queue: Option<QueueId>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    bytes: u64,
    sent_total: u64,
    acked_total: u64,
    received_total: u64,
    dedup_evicted_total: u64,
    dead_lettered_total: u64,
    expired_total: u64,
    dropped_total: u64,
    rejected_total: u64,
}

/// FIFO message groups. A group is available when its oldest message is
/// ready and none of its messages is in flight; a Receive takes available
/// groups in the order of their oldest messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Groups {
    ids: BTreeMap<String, u32>,
    next_id: u32,
    groups: BTreeMap<u32, Group>,
    /// `(seq of the group's oldest message, group)` for available groups.
    available: BTreeSet<(u64, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Group {
    name: String,
    /// Every live message of the group, in order.
    members: BTreeSet<u64>,
    in_flight: u32,
    /// The key under which the group is in `available`, if it is.
    available_at: Option<u64>,
}

fn hash16(bytes: &[u8]) -> IdHash {
    let digest = Sha256::digest(bytes);
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

/// The deduplication key of a body (content-based deduplication). It hashes
/// a NUL byte before the body, which no message id contains (ids are
/// printable ASCII), so that a body never collides with an id: without it,
/// a message with id "order-1" was a duplicate of an earlier id-less message
/// whose body was "order-1".
fn content_hash16(body: &[u8]) -> IdHash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(body);
    let digest = hasher.finalize();
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

fn rank(priority: u8) -> u8 {
    limits::PRIORITY_MAX - priority.min(limits::PRIORITY_MAX)
}

/// A message leaving a queue for a dead-letter queue, carried out once the
/// source queue is done with.
struct Departure {
    from_queue: QueueId,
    from_seq: u64,
    meta: MessageMeta,
    group: Option<String>,
    to_queue: String,
    info: DeadLetterInfo,
}

/// What a command on one queue hands to the state for other queues.
#[derive(Default)]
struct Spill {
    departures: Vec<Departure>,
}

/// A copy of a [`State`] for a checkpoint or a snapshot to encode in the
/// background. It serializes exactly as the state did when it was taken,
/// and shares the per-message parts of that state copy-on-write (the
/// chunks of its messages' metadata, the blocks of the remembered ids' expiry order),
/// so taking one in the state machine's task, which every apply waits for,
/// copies a few bytes per queued message instead of all of them; it has no
/// lookup table of remembered ids, so it can only be serialized.
#[derive(Serialize)]
#[serde(transparent)]
pub struct CapturedState(State);

impl State {
    pub fn new() -> Self {
        State::default()
    }

    /// A copy to encode: see [`CapturedState`].
    pub fn capture(&self) -> CapturedState {
        let mut copy = self.clone();
        for queue in copy.queues.values_mut() {
            queue.dedup = queue.dedup.for_encoding();
        }
        CapturedState(copy)
    }

    /// The state machine's clock: the largest `now_ms` applied so far.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Applies one log entry's command. Effects are appended to `effects`,
    /// in the order the node must carry them out.
    ///
    /// The commands of a [`Command::Batch`] are applied one after the other
    /// at the entry's time, each exactly as if it were an entry of its own
    /// with that time (the clock is monotonic, so it stays put within the
    /// batch); their effects follow each other in the same order.
    pub fn apply(&mut self, request: Request, effects: &mut Vec<Effect>) -> Response {
        self.now_ms = self.now_ms.max(request.now_ms);
        let now = self.now_ms;
        match request.command {
            Command::Batch(commands) => Ok(Outcome::Batch(
                commands.into_iter().map(|command| self.apply_command(command, now, effects)).collect(),
            )),
            command => self.apply_command(command, now, effects),
        }
    }

    /// Applies one command at `now`; a batch here is one inside a batch.
    fn apply_command(&mut self, command: Command, now: u64, effects: &mut Vec<Effect>) -> Response {
        match command {
            Command::Batch(_) => Err(QueueError::InvalidArgument("a batch of commands cannot contain a batch".into())),
            Command::CreateQueue { name, config } => self.create_queue(name, config, now),
            Command::SetQueue { name, update } => self.set_queue(name, update, now),
            Command::DeleteQueue { name } => {
                let queue = self.queues.remove(&name).ok_or(QueueError::QueueNotFound { name })?;
                effects.push(Effect::DeleteMessages { queue_id: queue.id, before: Seq(u64::MAX) });
                Ok(Outcome::QueueDeleted { messages_deleted: queue.messages.len() as u64 })
            }
            Command::PurgeQueue { name } => {
                let queue = self.queue_mut(&name)?;
                let messages_deleted = queue.messages.len() as u64;
                queue.purge();
                effects.push(Effect::DeleteMessages { queue_id: queue.id, before: Seq(queue.next_seq) });
                Ok(Outcome::QueuePurged { messages_deleted })
            }
            Command::Send { queue, messages } => self.with_queue(&queue, now, effects, |q, ctx| {
                let results = q.send(messages, ctx)?;
                Ok(Outcome::Sent { queue_id: q.id, results })
            }),
            Command::Receive { queue, max_messages, visibility_timeout_ms } => {
                self.with_queue(&queue, now, effects, |q, ctx| {
                    let deliveries = q.receive(max_messages, visibility_timeout_ms, ctx)?;
                    Ok(Outcome::Received { queue_id: q.id, deliveries })
                })
            }
            Command::Ack { queue, receipts } => {
                check_receipt_batch(&receipts)?;
                self.with_queue(&queue, now, effects, |q, ctx| {
                    Ok(Outcome::Receipts(receipts.iter().map(|r| q.ack(r, ctx)).collect()))
                })
            }
            Command::Nack { queue, receipts, delay_ms, dead_letter } => {
                check_receipt_batch(&receipts)?;
                if delay_ms > limits::NACK_DELAY_MS_MAX {
                    return Err(QueueError::InvalidArgument(format!(
                        "nack delay {delay_ms} ms is longer than the maximum of {} ms",
                        limits::NACK_DELAY_MS_MAX
                    )));
                }
                self.with_queue(&queue, now, effects, |q, ctx| {
                    Ok(Outcome::Receipts(receipts.iter().map(|r| q.nack(r, delay_ms, dead_letter, ctx)).collect()))
                })
            }
            Command::ChangeVisibility { queue, receipts, visibility_timeout_ms } => {
                validate_visibility_timeout(visibility_timeout_ms)?;
                check_receipt_batch(&receipts)?;
                self.with_queue(&queue, now, effects, |q, ctx| {
                    Ok(Outcome::Receipts(
                        receipts.iter().map(|r| q.change_visibility(r, visibility_timeout_ms, ctx)).collect(),
                    ))
                })
            }
            Command::Redrive { queue, to, max_messages } => self.redrive(queue, to, max_messages, now, effects),
            Command::Tick => {
                let names: Vec<String> = self.queues.keys().cloned().collect();
                for name in names {
                    self.with_queue(&name, now, effects, |_, _| Ok(Outcome::None))?;
                }
                Ok(Outcome::None)
            }
        }
    }

    /// Runs `f` on one queue (after carrying out what is due in it), then
    /// moves the messages it dead-lettered into their target queues.
    fn with_queue(
        &mut self,
        name: &str,
        now: u64,
        effects: &mut Vec<Effect>,
        f: impl FnOnce(&mut Queue, &mut Ctx) -> Response,
    ) -> Response {
        // The queue leaves the map while it works, so that it can ask whether
        // other queues (its dead-letter target) exist.
        let mut queue = self.queues.remove(name).ok_or_else(|| QueueError::QueueNotFound { name: name.to_string() })?;
        let existing: BTreeSet<String> = match &queue.config.dead_letter {
            Some(policy) if self.queues.contains_key(&policy.queue) => [policy.queue.clone()].into(),
            _ => BTreeSet::new(),
        };
        let mut ctx = Ctx { name, now, effects, spill: Spill::default(), existing: &existing, woke: false };
        queue.advance(&mut ctx);
        let result = f(&mut queue, &mut ctx);
        let (spill, woke) = (std::mem::take(&mut ctx.spill), ctx.woke);
        self.queues.insert(name.to_string(), queue);
        if woke {
            effects.push(Effect::MessagesAvailable { queue: name.to_string() });
        }
        for departure in spill.departures {
            self.arrive(departure, now, effects);
        }
        result
    }

    /// Puts a dead-lettered message into its target queue (which existed when
    /// the move was decided, and still does: nothing runs in between).
    fn arrive(&mut self, d: Departure, now: u64, effects: &mut Vec<Effect>) {
        let target = self.queues.get_mut(&d.to_queue).expect("dead-letter target exists");
        let seq = target.take_in(d.meta, d.group.as_deref(), Some(d.from_queue), now, effects);
        effects.push(Effect::MoveMessage {
            from: (d.from_queue, Seq(d.from_seq)),
            to: (target.id, Seq(seq)),
            dead_letter: Some(d.info),
        });
        effects.push(Effect::MessagesAvailable { queue: d.to_queue });
    }

    fn check_dead_letter_target(&self, name: &str, config: &QueueConfig) -> Result<(), QueueError> {
        if let Some(policy) = &config.dead_letter {
            if policy.queue == name {
                return Err(QueueError::InvalidArgument(format!(
                    "queue \"{name}\" cannot be its own dead-letter queue"
                )));
            }
            let Some(target) = self.queues.get(&policy.queue) else {
                return Err(QueueError::QueueNotFound { name: policy.queue.clone() });
            };
            // As SQS: a FIFO queue's messages keep their groups only in a
            // FIFO dead-letter queue, and a standard queue's have none.
            if target.config.fifo != config.fifo {
                return Err(QueueError::InvalidArgument(format!(
                    "the dead-letter queue of a {} queue must be {} too",
                    if config.fifo { "FIFO" } else { "standard" },
                    if config.fifo { "FIFO" } else { "standard" },
                )));
            }
        }
        Ok(())
    }

    fn create_queue(&mut self, name: String, config: QueueConfig, now: u64) -> Response {
        validate_queue_name(&name)?;
        config.validate()?;
        if let Some(existing) = self.queues.get(&name) {
            if existing.config == config {
                return Ok(Outcome::QueueCreated { queue: existing.info(&name, now), created: false });
            }
            return Err(QueueError::QueueExists { name });
        }
        self.check_dead_letter_target(&name, &config)?;
        if self.queues.len() >= limits::QUEUES_MAX {
            return Err(QueueError::TooManyQueues { max: limits::QUEUES_MAX });
        }
        self.next_queue_id += 1;
        let queue = Queue::new(QueueId(self.next_queue_id), config, now);
        let info = queue.info(&name, now);
        self.queues.insert(name, queue);
        Ok(Outcome::QueueCreated { queue: info, created: true })
    }

    fn set_queue(&mut self, name: String, update: QueueConfigUpdate, now: u64) -> Response {
        validate_queue_name(&name)?;
        let queue = self.queues.get(&name).ok_or_else(|| QueueError::QueueNotFound { name: name.clone() })?;
        let config = update.apply_to(&queue.config);
        config.validate()?;
        if config.dead_letter != queue.config.dead_letter {
            self.check_dead_letter_target(&name, &config)?;
        }
        let queue = self.queues.get_mut(&name).expect("checked above");
        queue.config = config;
        if queue.config.dedup_window_ms == 0 {
            queue.dedup.clear();
        }
        Ok(Outcome::QueueUpdated { queue: queue.info(&name, now) })
    }

    fn redrive(
        &mut self,
        name: String,
        to: Option<String>,
        max_messages: u32,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Response {
        let max = if max_messages == 0 { limits::REDRIVE_MESSAGES_MAX } else { max_messages };
        if max > limits::REDRIVE_MESSAGES_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "cannot redrive {max} messages at once; the limit is {}",
                limits::REDRIVE_MESSAGES_MAX
            )));
        }
        if let Some(to) = &to {
            validate_queue_name(to)?;
            if to == &name {
                return Err(QueueError::InvalidArgument("cannot redrive a queue into itself".into()));
            }
            if !self.queues.contains_key(to) {
                return Err(QueueError::QueueNotFound { name: to.clone() });
            }
        }
        let names_by_id: BTreeMap<QueueId, String> = self.queues.iter().map(|(n, q)| (q.id, n.clone())).collect();
        // Take the messages to move out of the dead-letter queue (oldest
        // first, not in flight), then put them into their targets.
        let mut leaving: Vec<(u64, MessageMeta, Option<String>, String)> = Vec::new();
        let mut skipped = 0u64;
        let mut remaining = 0u64;
        let mut source_id = QueueId(0);
        self.with_queue(&name, now, effects, |source, ctx| {
            source_id = source.id;
            let candidates: Vec<u64> = source
                .messages
                .iter()
                .filter(|(_, m)| !matches!(m.state, MessageState::InFlight { .. }))
                .map(|(seq, _)| seq)
                .collect();
            for seq in candidates {
                if leaving.len() as u32 >= max {
                    break;
                }
                let meta = source.meta(seq);
                let target = match &to {
                    Some(to) => Some(to.clone()),
                    None => meta.source_queue.and_then(|id| names_by_id.get(&id).cloned()),
                };
                let Some(target) = target.filter(|t| t != &name) else { continue };
                let group = source.group_name(&meta);
                source.unlink(seq);
                // Removing a FIFO message may free its group.
                ctx.woke |= source.config.fifo;
                leaving.push((seq, meta, group, target));
            }
            // What is left: movable messages, and those that stay because
            // their source queue is gone.
            let (mut movable, mut stuck) = (0u64, 0u64);
            for m in source.messages.values().filter(|m| !matches!(m.state, MessageState::InFlight { .. })) {
                let resolvable =
                    to.is_some() || m.source_queue.and_then(|id| names_by_id.get(&id)).is_some_and(|t| t != &name);
                if resolvable {
                    movable += 1;
                } else {
                    stuck += 1;
                }
            }
            remaining = movable;
            skipped = stuck;
            Ok(Outcome::None)
        })?;
        let moved = leaving.len() as u64;
        let mut woken = BTreeSet::new();
        for (seq, mut meta, group, target) in leaving {
            meta.receive_count = 0;
            meta.first_received_at_ms = 0;
            let target_queue = self.queues.get_mut(&target).expect("redrive target exists");
            let new_seq = target_queue.take_in(meta, group.as_deref(), None, now, effects);
            effects.push(Effect::MoveMessage {
                from: (source_id, Seq(seq)),
                to: (target_queue.id, Seq(new_seq)),
                dead_letter: None,
            });
            woken.insert(target);
        }
        for queue in woken {
            effects.push(Effect::MessagesAvailable { queue });
        }
        Ok(Outcome::Redriven { moved, remaining, skipped })
    }

    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, QueueError> {
        self.queues.get_mut(name).ok_or_else(|| QueueError::QueueNotFound { name: name.to_string() })
    }

    /// A queue's configuration and counters as they are at `now_ms` (a
    /// read-only view: messages whose timeout or delay has ended count as
    /// ready).
    pub fn queue_info(&self, name: &str, now_ms: u64) -> Option<QueueInfo> {
        self.queues.get(name).map(|q| q.info(name, now_ms))
    }

    pub fn list_queues(&self, now_ms: u64) -> Vec<QueueInfo> {
        self.queues.iter().map(|(name, q)| q.info(name, now_ms)).collect()
    }

    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.queues.get(name).map(|q| q.id)
    }

    /// Whether a Receive at `now_ms` may return a message. Lets the leader
    /// skip proposing a Receive that would find nothing; a `true` may still
    /// find nothing (the Receive decides), a `false` never misses one.
    pub fn has_visible(&self, name: &str, now_ms: u64) -> Result<bool, QueueError> {
        let q = self.queues.get(name).ok_or_else(|| QueueError::QueueNotFound { name: name.to_string() })?;
        let due = |set: &BTreeSet<(u64, u64)>| set.first().is_some_and(|&(at, _)| at <= now_ms);
        if due(&q.in_flight) || due(&q.delayed) {
            return Ok(true);
        }
        if !q.config.fifo {
            return Ok(!q.ready.is_empty());
        }
        // FIFO: an expiry may remove the delayed head of a group and so free
        // the ready messages behind it.
        Ok(!q.groups.available.is_empty() || q.next_expiry().is_some_and(|at| at <= now_ms))
    }

    /// Whether the delivery a receipt names is still in flight (not acked,
    /// nacked, timed out or delivered again). Timed out counts by the state's
    /// clock: a timeout that has ended but that no command has carried out
    /// yet is over all the same.
    pub fn is_in_flight(&self, name: &str, receipt: &Receipt) -> bool {
        self.queues.get(name).is_some_and(|q| {
            q.id == receipt.queue_id
                && q.messages.get(receipt.seq.0).is_some_and(|m| {
                    m.receive_count == receipt.receive_count
                        && matches!(m.state, MessageState::InFlight { deadline_ms, .. } if deadline_ms > self.now_ms)
                })
        })
    }

    /// When the next in-flight or delayed message of the queue becomes
    /// visible.
    pub fn next_visible_at(&self, name: &str) -> Option<u64> {
        let q = self.queues.get(name)?;
        [q.in_flight.first(), q.delayed.first()].into_iter().flatten().map(|&(at, _)| at).min()
    }

    /// The earliest time at which an expiry becomes due in some queue: when
    /// it has passed, the leader proposes a Tick. In-flight messages expire
    /// only once they are visible again, so they are counted from the end of
    /// their timeout.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.queues.values().filter_map(Queue::next_expiry).min()
    }

    /// When the leader should propose a Tick so that a queue with no
    /// traffic forgets the message ids whose deduplication window has
    /// passed (they cost RAM per message): the end of the earliest window,
    /// rounded up to a multiple of [`limits::DEDUP_PRUNE_SLACK_MS`], plus
    /// that slack, so that ids forgotten over minutes take a Tick every
    /// slack period, not one each. Kept apart from [`State::next_due_ms`],
    /// which says when messages change state.
    pub fn next_dedup_prune_ms(&self) -> Option<u64> {
        const SLACK: u64 = limits::DEDUP_PRUNE_SLACK_MS;
        self.queues
            .values()
            .filter_map(|q| {
                q.dedup.first_expiry().map(|at| at.div_ceil(SLACK).saturating_mul(SLACK).saturating_add(SLACK))
            })
            .min()
    }

    /// Every stored message, for building a snapshot: `(queue id, seq)` in
    /// key order.
    pub fn message_keys(&self) -> impl Iterator<Item = (QueueId, Seq)> + '_ {
        let mut queues: Vec<&Queue> = self.queues.values().collect();
        queues.sort_by_key(|q| q.id);
        queues.into_iter().flat_map(|q| q.messages.keys().map(move |seq| (q.id, Seq(seq))))
    }

    /// Message ids remembered for deduplication, across queues (each costs
    /// RAM until its window ends and a command or Tick forgets it).
    pub fn remembered_ids(&self) -> u64 {
        self.queues.values().map(|q| q.dedup.len() as u64).sum()
    }

    /// Total live messages across queues.
    pub fn message_count(&self) -> u64 {
        self.queues.values().map(|q| q.messages.len() as u64).sum()
    }

    /// Checks the internal consistency of every queue. For tests and for
    /// checking a snapshot after it is read back; returns what is wrong.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut ids = BTreeSet::new();
        for (name, q) in &self.queues {
            if q.id.0 == 0 || q.id.0 > self.next_queue_id || !ids.insert(q.id) {
                return Err(format!("queue {name}: id {} is not unique or not issued", q.id.0));
            }
            q.check_invariants().map_err(|e| format!("queue {name}: {e}"))?;
        }
        Ok(())
    }
}

/// What one command on one queue works with besides the queue.
struct Ctx<'a> {
    name: &'a str,
    now: u64,
    effects: &'a mut Vec<Effect>,
    spill: Spill,
    /// Other queues that exist (the queue's dead-letter target, if it does).
    existing: &'a BTreeSet<String>,
    /// Messages became visible: wake long polls.
    woke: bool,
}

fn check_receipt_batch(receipts: &[Receipt]) -> Result<(), QueueError> {
    if receipts.is_empty() {
        return Err(QueueError::InvalidArgument("no receipts given".into()));
    }
    if receipts.len() > limits::RECEIPT_BATCH_ENTRIES_MAX {
        return Err(QueueError::InvalidArgument(format!(
            "{} receipts in one request, more than the limit of {}",
            receipts.len(),
            limits::RECEIPT_BATCH_ENTRIES_MAX
        )));
    }
    Ok(())
}

impl Queue {
    fn new(id: QueueId, config: QueueConfig, now: u64) -> Queue {
        Queue {
            id,
            config,
            created_at_ms: now,
            next_seq: 1,
            messages: Messages::default(),
            ready: ReadySet::default(),
            groups: Groups::default(),
            delayed: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            ttl: BTreeSet::new(),
            resent: BTreeSet::new(),
            dedup: DedupIds::default(),
            counters: Counters::default(),
        }
    }

    fn info(&self, name: &str, now_ms: u64) -> QueueInfo {
        // A message whose visibility timeout has ended is ready again, or,
        // with a redelivery backoff, delayed until the backoff ends too.
        let mut timed_out = 0u64;
        let mut backing_off = 0u64;
        for &(deadline, seq) in self.in_flight.range(..=(now_ms, u64::MAX)) {
            timed_out += 1;
            if let Some(b) = self.config.redelivery_backoff
                && now_ms - deadline < b.max_ms
                && deadline.saturating_add(b.delay_ms(self.meta(seq).receive_count)) > now_ms
            {
                backing_off += 1;
            }
        }
        let undelayed = self.delayed.range(..=(now_ms, u64::MAX)).count() as u64;
        let in_flight = self.in_flight.len() as u64 - timed_out;
        let delayed = self.delayed.len() as u64 - undelayed + backing_off;
        QueueInfo {
            name: name.to_string(),
            id: self.id,
            config: self.config.clone(),
            created_at_ms: self.created_at_ms,
            stats: QueueStats {
                ready: self.messages.len() as u64 - in_flight - delayed,
                in_flight,
                delayed,
                bytes: self.counters.bytes,
                sent_total: self.counters.sent_total,
                acked_total: self.counters.acked_total,
                received_total: self.counters.received_total,
                dedup_evicted_total: self.counters.dedup_evicted_total,
                dead_lettered_total: self.counters.dead_lettered_total,
                expired_total: self.counters.expired_total,
                dropped_total: self.counters.dropped_total,
                rejected_total: self.counters.rejected_total,
                oldest_sent_at_ms: [
                    self.messages.first().map(|(_, m)| m.sent_at_ms),
                    self.resent.first().map(|&(at, _)| at),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(0),
            },
        }
    }

    /// The metadata of a live message.
    fn meta(&self, seq: u64) -> MessageMeta {
        self.messages.get(seq).expect("message exists")
    }

    fn purge(&mut self) {
        self.messages.clear();
        self.ready.clear();
        self.groups = Groups { ids: BTreeMap::new(), next_id: self.groups.next_id, ..Groups::default() };
        self.delayed.clear();
        self.in_flight.clear();
        self.ttl.clear();
        self.resent.clear();
        self.counters.bytes = 0;
    }

    /// How long messages live here counting from when they entered: the
    /// retention, or the queue's TTL when shorter.
    fn lifetime_ms(&self) -> u64 {
        self.config.message_ttl_ms.map_or(self.config.retention_ms, |t| t.min(self.config.retention_ms))
    }

    fn expires_at(&self, meta: &MessageMeta) -> u64 {
        let queue_limit = meta.enqueued_at_ms.saturating_add(self.lifetime_ms());
        meta.expires_at_ms.map_or(queue_limit, |own| own.min(queue_limit))
    }

    /// When the next expiry is due. An in-flight message expires at the
    /// end of its timeout at the earliest, so it may be due after messages
    /// behind it: the scans go on past in-flight messages, to the first one
    /// that is not in flight (every later one is due no earlier than it).
    fn next_expiry(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut scan = |entries: &mut dyn Iterator<Item = (u64, u64)>| {
            for (at, seq) in entries {
                if next.is_some_and(|n| n <= at) {
                    break;
                }
                let due = match self.meta(seq).state {
                    MessageState::InFlight { deadline_ms, .. } => at.max(deadline_ms),
                    _ => {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        break;
                    }
                };
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        };
        // Retention and the queue's TTL, in seq order (which is the order
        // of entry times), then each message's own TTL.
        let lifetime = self.lifetime_ms();
        scan(&mut self.messages.iter().map(|(seq, m)| (m.enqueued_at_ms.saturating_add(lifetime), seq)));
        scan(&mut self.ttl.iter().copied());
        next
    }

    fn group_name(&self, meta: &MessageMeta) -> Option<String> {
        meta.group.and_then(|g| self.groups.groups.get(&g)).map(|g| g.name.clone())
    }

    // --- Index maintenance. A message is in exactly one of: `ready` (or
    // its group's available head), `delayed`, `in_flight`.

    /// Removes a message from the state index it is in (and its group's
    /// availability), leaving `messages` and the group membership alone.
    fn unindex(&mut self, seq: u64) {
        let meta = self.meta(seq);
        match meta.state {
            MessageState::Ready => {
                if !self.config.fifo {
                    assert!(self.ready.remove(&(rank(meta.priority), seq)), "ready index has the message");
                }
            }
            MessageState::Delayed { visible_at_ms } => {
                assert!(self.delayed.remove(&(visible_at_ms, seq)), "delayed index has the message")
            }
            MessageState::InFlight { deadline_ms, .. } => {
                assert!(self.in_flight.remove(&(deadline_ms, seq)), "in-flight index has the message");
                if let Some(g) = meta.group {
                    self.groups.groups.get_mut(&g).expect("group exists").in_flight -= 1;
                }
            }
        }
    }

    /// Sets a message's state and indexes it there.
    fn set_state(&mut self, seq: u64, state: MessageState) {
        let meta = self.messages.update(seq, |meta| meta.state = state);
        let (priority, group) = (meta.priority, meta.group);
        match state {
            MessageState::Ready => {
                if !self.config.fifo {
                    self.ready.insert((rank(priority), seq));
                }
            }
            MessageState::Delayed { visible_at_ms } => {
                self.delayed.insert((visible_at_ms, seq));
            }
            MessageState::InFlight { deadline_ms, .. } => {
                self.in_flight.insert((deadline_ms, seq));
                if let Some(g) = group {
                    self.groups.groups.get_mut(&g).expect("group exists").in_flight += 1;
                }
            }
        }
        if let Some(g) = group {
            self.refresh_group(g);
        }
    }

    fn move_to(&mut self, seq: u64, state: MessageState) {
        self.unindex(seq);
        self.set_state(seq, state);
    }

    /// Recomputes whether a FIFO group is available for delivery.
    fn refresh_group(&mut self, g: u32) {
        let group = self.groups.groups.get_mut(&g).expect("group exists");
        if let Some(key) = group.available_at.take() {
            self.groups.available.remove(&(key, g));
        }
        let Some(&head) = group.members.first() else { return };
        if group.in_flight == 0 && self.messages.get(head).is_some_and(|m| m.state == MessageState::Ready) {
            group.available_at = Some(head);
            self.groups.available.insert((head, g));
        }
    }

    /// Takes a message out of the queue entirely (indexes, group, counters).
    /// The caller emits the storage effect.
    fn unlink(&mut self, seq: u64) -> MessageMeta {
        self.unindex(seq);
        let meta = self.messages.remove(seq).expect("message exists");
        if let Some(at) = meta.expires_at_ms {
            self.ttl.remove(&(at, seq));
        }
        self.resent.remove(&(meta.sent_at_ms, seq));
        if let Some(g) = meta.group {
            let group = self.groups.groups.get_mut(&g).expect("group exists");
            group.members.remove(&seq);
            if group.members.is_empty() {
                if let Some(key) = group.available_at {
                    self.groups.available.remove(&(key, g));
                }
                let name = self.groups.groups.remove(&g).expect("group exists").name;
                self.groups.ids.remove(&name);
            } else {
                self.refresh_group(g);
            }
        }
        self.counters.bytes -= meta.body_bytes as u64;
        meta
    }

    fn group_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.groups.ids.get(name) {
            return id;
        }
        self.groups.next_id += 1;
        let id = self.groups.next_id;
        self.groups.ids.insert(name.to_string(), id);
        self.groups.groups.insert(id, Group { name: name.to_string(), ..Group::default() });
        id
    }

    /// Adds a message that arrives from another queue (dead-lettered or
    /// redriven), making room first under drop-head; returns its seq.
    ///
    /// Length limits do not refuse it: a dead-letter queue's job is to keep
    /// failed messages. Drop-head still makes room, when dropping the oldest
    /// messages not in flight is enough; those are deleted (counted in
    /// `dropped_total`), not dead-lettered again, so that one command's moves
    /// cannot cascade from queue to queue, or run around a cycle of
    /// dead-letter queues for ever.
    fn take_in(
        &mut self,
        meta: MessageMeta,
        group: Option<&str>,
        source: Option<QueueId>,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> u64 {
        if self.config.overflow == Overflow::DropHead
            && let Some(plan) = self.room_plan(meta.body_bytes as u64)
        {
            for seq in plan {
                self.unlink(seq);
                self.counters.dropped_total += 1;
                effects.push(Effect::DeleteMessage { queue_id: self.id, seq: Seq(seq) });
            }
        }
        self.admit(meta, group, source, now)
    }

    /// Adds a message that arrives from another queue: visible at once, a
    /// fresh retention clock, no TTL of its own.
    fn admit(&mut self, mut meta: MessageMeta, group: Option<&str>, source: Option<QueueId>, now: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        meta.state = MessageState::Ready;
        // A fresh start in the target: its own receive count (the source's
        // count travels in the dead-letter details), retention and TTL.
        meta.receive_count = 0;
        meta.first_received_at_ms = 0;
        meta.enqueued_at_ms = now;
        meta.expires_at_ms = None;
        meta.source_queue = source;
        meta.group = if self.config.fifo { Some(self.group_id(group.unwrap_or("default"))) } else { None };
        if self.config.fifo {
            meta.priority = 0;
        }
        self.counters.bytes += meta.body_bytes as u64;
        self.messages.insert(seq, meta);
        if meta.sent_at_ms < now {
            self.resent.insert((meta.sent_at_ms, seq));
        }
        if let Some(g) = meta.group {
            self.groups.groups.get_mut(&g).expect("group exists").members.insert(seq);
        }
        self.set_state(seq, MessageState::Ready);
        seq
    }

    // --- Time.

    /// Carries out what is due at `ctx.now`: visibility timeouts and delays
    /// that ended, and expiries.
    fn advance(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        while let Some(&(deadline, seq)) = self.in_flight.first() {
            if deadline > now {
                break;
            }
            let receive_count = self.meta(seq).receive_count;
            let state = match self.config.redelivery_backoff {
                Some(b) => MessageState::Delayed { visible_at_ms: deadline.saturating_add(b.delay_ms(receive_count)) },
                None => MessageState::Ready,
            };
            self.move_to(seq, state);
            if self.is_visible(seq, now) {
                ctx.woke = true;
            }
        }
        while let Some(&(visible_at, seq)) = self.delayed.first() {
            if visible_at > now {
                break;
            }
            self.move_to(seq, MessageState::Ready);
            ctx.woke = true;
        }
        // Expiries: by retention or the queue's TTL (due first for the
        // oldest messages), or by a message's own TTL. In-flight messages
        // expire when they are visible again. They leave in seq order, so
        // that a dead-letter queue receives them in the order they were in.
        let lifetime = self.lifetime_ms();
        let mut due: BTreeSet<u64> = self
            .messages
            .iter()
            .take_while(|(_, m)| m.enqueued_at_ms.saturating_add(lifetime) <= now)
            .map(|(seq, _)| seq)
            .collect();
        due.extend(self.ttl.range(..=(now, u64::MAX)).map(|&(_, seq)| seq));
        for seq in due {
            if !matches!(self.meta(seq).state, MessageState::InFlight { .. }) {
                self.dead_letter_or_drop(seq, DeadLetterReason::Expired, ctx);
            }
        }
        self.prune_dedup(now);
    }

    fn is_visible(&self, seq: u64, now: u64) -> bool {
        match self.meta(seq).state {
            MessageState::Ready => true,
            MessageState::Delayed { visible_at_ms } => visible_at_ms <= now,
            MessageState::InFlight { .. } => false,
        }
    }

    fn is_expired(&self, seq: u64, now: u64) -> bool {
        self.expires_at(&self.meta(seq)) <= now
    }

    /// Removes a message for `reason`, moving it to the dead-letter queue if
    /// the queue has one that exists, else dropping it.
    fn dead_letter_or_drop(&mut self, seq: u64, reason: DeadLetterReason, ctx: &mut Ctx) {
        let target = self.config.dead_letter.as_ref().map(|p| p.queue.clone()).filter(|t| ctx.existing.contains(t));
        let group = self.group_name(&self.meta(seq));
        let meta = self.unlink(seq);
        // Removing a FIFO message may free its group (as acking does).
        ctx.woke |= self.config.fifo;
        if reason == DeadLetterReason::Expired {
            self.counters.expired_total += 1;
        }
        match target {
            Some(to_queue) => {
                self.counters.dead_lettered_total += 1;
                ctx.spill.departures.push(Departure {
                    from_queue: self.id,
                    from_seq: seq,
                    meta,
                    group,
                    to_queue,
                    info: DeadLetterInfo {
                        reason,
                        source_queue: ctx.name.to_string(),
                        receive_count: meta.receive_count,
                        at_ms: ctx.now,
                    },
                });
            }
            None => {
                self.counters.dropped_total += 1;
                ctx.effects.push(Effect::DeleteMessage { queue_id: self.id, seq: Seq(seq) });
            }
        }
    }

    fn prune_dedup(&mut self, now: u64) {
        while self.dedup.first_expiry().is_some_and(|at| at <= now) {
            self.dedup.pop_first();
        }
    }

    // --- Commands.

    fn send(&mut self, messages: Vec<NewMessage>, ctx: &mut Ctx) -> Result<Vec<Result<Sent, QueueError>>, QueueError> {
        if messages.is_empty() {
            return Err(QueueError::InvalidArgument("no messages given".into()));
        }
        if messages.len() > limits::SEND_BATCH_ENTRIES_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "{} messages in one send, more than the limit of {}",
                messages.len(),
                limits::SEND_BATCH_ENTRIES_MAX
            )));
        }
        let batch_bytes: usize = messages.iter().map(NewMessage::size).sum();
        if batch_bytes > limits::SEND_BATCH_BYTES_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "{batch_bytes} bytes in one send, more than the limit of {} bytes",
                limits::SEND_BATCH_BYTES_MAX
            )));
        }
        Ok(messages.into_iter().map(|m| self.send_one(m, ctx)).collect())
    }

    fn send_one(&mut self, message: NewMessage, ctx: &mut Ctx) -> Result<Sent, QueueError> {
        let now = ctx.now;
        let size = message.size();
        if size > limits::MESSAGE_BYTES_HARD_MAX {
            return Err(QueueError::MessageTooLarge { bytes: size, bytes_max: limits::MESSAGE_BYTES_HARD_MAX });
        }
        message.validate()?;
        if self.config.fifo {
            if message.group.is_none() {
                return Err(QueueError::InvalidArgument("a FIFO queue needs a message group on every message".into()));
            }
            if message.delay_ms.is_some() {
                return Err(QueueError::InvalidArgument(
                    "a FIFO queue has no per-message delay (set the queue's delay instead)".into(),
                ));
            }
            if message.priority != 0 {
                return Err(QueueError::InvalidArgument("a FIFO queue has no priorities".into()));
            }
        }
        let dedup_key = if self.config.content_based_dedup && (message.id.is_none() || message.id_generated) {
            Some(content_hash16(&message.body))
        } else {
            message.id.as_deref().map(|id| hash16(id.as_bytes()))
        };
        if let Some(key) = &dedup_key
            && let Some(seq) = self.dedup.seq_of(key)
        {
            return Ok(Sent { seq: Seq(seq), duplicate: true });
        }
        self.make_room(size as u64, ctx)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(key) = dedup_key
            && self.config.dedup_window_ms > 0
        {
            let expires_at_ms = now.saturating_add(self.config.dedup_window_ms);
            self.dedup.insert(key, seq, expires_at_ms);
            if self.dedup.len() > limits::DEDUP_ENTRIES_PER_QUEUE_MAX {
                self.dedup.pop_first();
                self.counters.dedup_evicted_total += 1;
            }
        }
        let group = message.group.as_deref().filter(|_| self.config.fifo).map(|g| self.group_id(g));
        let expires_at_ms = message.ttl_ms.map(|t| now.saturating_add(t));
        let delay = message.delay_ms.unwrap_or(self.config.delay_ms);
        self.messages.insert(
            seq,
            MessageMeta {
                state: MessageState::Ready,
                receive_count: 0,
                priority: message.priority,
                group,
                body_bytes: size as u32,
                sent_at_ms: now,
                enqueued_at_ms: now,
                first_received_at_ms: 0,
                expires_at_ms,
                source_queue: None,
            },
        );
        if let Some(at) = expires_at_ms {
            self.ttl.insert((at, seq));
        }
        if let Some(g) = group {
            self.groups.groups.get_mut(&g).expect("group exists").members.insert(seq);
        }
        let state = if delay > 0 {
            MessageState::Delayed { visible_at_ms: now.saturating_add(delay) }
        } else {
            MessageState::Ready
        };
        self.set_state(seq, state);
        if delay == 0 {
            ctx.woke = true;
        }
        self.counters.bytes += size as u64;
        self.counters.sent_total += 1;
        ctx.effects.push(Effect::PutMessage {
            queue_id: self.id,
            seq: Seq(seq),
            record: MessageRecord {
                id: message.id,
                sent_at_ms: now,
                body: message.body,
                attributes: message.attributes,
                group: message.group,
                priority: message.priority,
                dead_letter: None,
            },
        });
        Ok(Sent { seq: Seq(seq), duplicate: false })
    }

    /// The oldest messages not in flight whose removal makes room for one
    /// more message of `bytes` under the length limits (none when it fits
    /// already), or `None` when removing all of them would not be enough.
    fn room_plan(&self, bytes: u64) -> Option<Vec<u64>> {
        let fits = |count: u64, total: u64| {
            self.config.max_messages.is_none_or(|max| count <= max)
                && self.config.max_bytes.is_none_or(|max| total <= max)
        };
        let mut count = self.messages.len() as u64 + 1;
        let mut total = self.counters.bytes + bytes;
        let mut plan = Vec::new();
        for (seq, m) in self.messages.iter() {
            if fits(count, total) {
                return Some(plan);
            }
            if !matches!(m.state, MessageState::InFlight { .. }) {
                plan.push(seq);
                count -= 1;
                total -= m.body_bytes as u64;
            }
        }
        fits(count, total).then_some(plan)
    }

    /// Makes room for a message of `bytes` under the length limits, by the
    /// queue's overflow policy. Drop-head drops nothing unless that makes the
    /// message fit: a refused message leaves the queue as it was.
    fn make_room(&mut self, bytes: u64, ctx: &mut Ctx) -> Result<(), QueueError> {
        let fits = |q: &Queue| {
            q.config.max_messages.is_none_or(|max| (q.messages.len() as u64) < max)
                && q.config.max_bytes.is_none_or(|max| q.counters.bytes + bytes <= max)
        };
        if fits(self) {
            return Ok(());
        }
        let full = |q: &Queue| QueueError::QueueFull {
            queue: ctx.name.to_string(),
            limit: match (q.config.max_messages, q.config.max_bytes) {
                (Some(m), Some(b)) => format!("at most {m} messages and {b} bytes"),
                (Some(m), None) => format!("at most {m} messages"),
                (None, Some(b)) => format!("at most {b} bytes"),
                (None, None) => "no limit".to_string(),
            },
        };
        // Drop-head: the oldest messages not in flight go first.
        let plan = match self.config.overflow {
            Overflow::RejectPublish => None,
            Overflow::DropHead => self.room_plan(bytes),
        };
        let Some(plan) = plan else {
            self.counters.rejected_total += 1;
            return Err(full(self));
        };
        for seq in plan {
            self.dead_letter_or_drop(seq, DeadLetterReason::Overflow, ctx);
        }
        assert!(fits(self), "the drop-head plan made room");
        Ok(())
    }

    fn receive(
        &mut self,
        max_messages: u32,
        visibility_timeout_ms: Option<u64>,
        ctx: &mut Ctx,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max_messages > limits::RECEIVE_MESSAGES_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "cannot receive {max_messages} messages at once; the limit is {}",
                limits::RECEIVE_MESSAGES_MAX
            )));
        }
        let timeout = visibility_timeout_ms.unwrap_or(self.config.visibility_timeout_ms);
        validate_visibility_timeout(timeout)?;
        let now = ctx.now;
        let deadline = now.saturating_add(timeout);
        let max = max_messages.max(1) as usize;
        let max_receives = self
            .config
            .dead_letter
            .as_ref()
            .filter(|p| p.max_receives > 0 && ctx.existing.contains(&p.queue))
            .map(|p| p.max_receives);
        let mut deliveries = Vec::with_capacity(max.min(self.messages.len()));
        while deliveries.len() < max {
            let Some(seq) = self.next_deliverable() else { break };
            let Some(delivery) = self.deliver(seq, deadline, max_receives, ctx) else { continue };
            deliveries.push(delivery);
            // FIFO: the group's next messages follow in order in the same
            // Receive, as long as they are ready.
            if let Some(g) = self.meta(seq).group {
                let mut last = seq;
                while deliveries.len() < max {
                    let Some(next) =
                        self.groups.groups.get(&g).and_then(|group| group.members.range(last + 1..).next().copied())
                    else {
                        break;
                    };
                    if self.meta(next).state != MessageState::Ready {
                        break;
                    }
                    last = next;
                    if let Some(delivery) = self.deliver(next, deadline, max_receives, ctx) {
                        deliveries.push(delivery);
                    }
                }
            }
        }
        Ok(deliveries)
    }

    /// Delivers one visible message, unless it expired or was received too
    /// often (then it is dead-lettered or dropped instead).
    fn deliver(&mut self, seq: u64, deadline: u64, max_receives: Option<u32>, ctx: &mut Ctx) -> Option<Delivery> {
        let now = ctx.now;
        if self.is_expired(seq, now) {
            self.dead_letter_or_drop(seq, DeadLetterReason::Expired, ctx);
            return None;
        }
        if max_receives.is_some_and(|max| self.meta(seq).receive_count >= max) {
            self.dead_letter_or_drop(seq, DeadLetterReason::MaxReceives, ctx);
            return None;
        }
        self.move_to(seq, MessageState::InFlight { deadline_ms: deadline, received_at_ms: now });
        let meta = self.messages.update(seq, |meta| {
            if meta.receive_count == 0 {
                meta.first_received_at_ms = now;
            }
            meta.receive_count = meta.receive_count.saturating_add(1);
        });
        self.counters.received_total += 1;
        Some(Delivery {
            receipt: Receipt { queue_id: self.id, seq: Seq(seq), receive_count: meta.receive_count },
            sent_at_ms: meta.sent_at_ms,
            first_received_at_ms: meta.first_received_at_ms,
            visible_again_at_ms: deadline,
            priority: meta.priority,
        })
    }

    /// The next message a Receive would deliver: standard queues by
    /// (priority, seq); FIFO queues the oldest message of the available group
    /// with the oldest head.
    fn next_deliverable(&self) -> Option<u64> {
        if !self.config.fifo {
            return self.ready.first().map(|(_, seq)| seq);
        }
        self.groups.available.first().map(|&(head, _)| head)
    }

    /// Finds the message a receipt names. `Ok(None)` when the message was
    /// already deleted (acked, purged, expired): acking it again is harmless.
    fn check_receipt(&self, queue: &str, receipt: &Receipt) -> Result<Option<MessageMeta>, QueueError> {
        if receipt.queue_id != self.id {
            return Err(QueueError::ReceiptOfOtherQueue { queue: queue.to_string() });
        }
        if receipt.seq.0 == 0 || receipt.seq.0 >= self.next_seq || receipt.receive_count == 0 {
            return Err(QueueError::UnknownReceipt);
        }
        match self.messages.get(receipt.seq.0) {
            None => Ok(None),
            Some(meta) if meta.receive_count == receipt.receive_count => Ok(Some(meta)),
            Some(meta) if meta.receive_count > receipt.receive_count => Err(QueueError::StaleReceipt {
                receipt_count: receipt.receive_count,
                current_count: meta.receive_count,
            }),
            Some(_) => Err(QueueError::UnknownReceipt),
        }
    }

    fn ack(&mut self, receipt: &Receipt, ctx: &mut Ctx) -> Result<(), QueueError> {
        if self.check_receipt(ctx.name, receipt)?.is_none() {
            return Ok(());
        }
        let seq = receipt.seq.0;
        self.unlink(seq);
        self.counters.acked_total += 1;
        ctx.effects.push(Effect::DeleteMessage { queue_id: self.id, seq: Seq(seq) });
        // Acking a FIFO message may free its group.
        ctx.woke |= self.config.fifo;
        Ok(())
    }

    fn nack(&mut self, receipt: &Receipt, delay_ms: u64, dead_letter: bool, ctx: &mut Ctx) -> Result<(), QueueError> {
        let Some(meta) = self.check_receipt(ctx.name, receipt)? else { return Ok(()) };
        let seq = receipt.seq.0;
        if dead_letter {
            self.dead_letter_or_drop(seq, DeadLetterReason::Rejected, ctx);
            return Ok(());
        }
        let MessageState::InFlight { .. } = meta.state else { return Ok(()) };
        let now = ctx.now;
        let state = if delay_ms > 0 {
            MessageState::Delayed { visible_at_ms: now.saturating_add(delay_ms) }
        } else {
            match self.config.redelivery_backoff {
                Some(b) => MessageState::Delayed { visible_at_ms: now.saturating_add(b.delay_ms(meta.receive_count)) },
                None => MessageState::Ready,
            }
        };
        self.move_to(seq, state);
        if self.is_visible(seq, now) {
            ctx.woke = true;
        }
        Ok(())
    }

    fn change_visibility(&mut self, receipt: &Receipt, timeout_ms: u64, ctx: &mut Ctx) -> Result<(), QueueError> {
        let meta = self.check_receipt(ctx.name, receipt)?.ok_or(QueueError::MessageDeleted)?;
        let MessageState::InFlight { received_at_ms, .. } = meta.state else { return Err(QueueError::NotInFlight) };
        let seq = receipt.seq.0;
        let now = ctx.now;
        if timeout_ms == 0 {
            self.move_to(seq, MessageState::Ready);
            ctx.woke = true;
            return Ok(());
        }
        let deadline_ms = now.saturating_add(timeout_ms);
        if deadline_ms > received_at_ms.saturating_add(limits::VISIBILITY_TIMEOUT_MS_MAX) {
            return Err(QueueError::InvalidArgument(format!(
                "a message stays invisible at most 12 h after it was received; {} ms from now is past that",
                timeout_ms
            )));
        }
        self.move_to(seq, MessageState::InFlight { deadline_ms, received_at_ms });
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), String> {
        let (mut ready, mut delayed, mut in_flight) = (0usize, 0usize, 0usize);
        let mut bytes = 0u64;
        for (seq, meta) in self.messages.iter() {
            if seq == 0 || seq >= self.next_seq {
                return Err(format!("message {seq} outside 1..{}", self.next_seq));
            }
            bytes += meta.body_bytes as u64;
            match meta.state {
                MessageState::Ready => {
                    ready += 1;
                    if !self.config.fifo && !self.ready.contains(&(rank(meta.priority), seq)) {
                        return Err(format!("message {seq} ready but not indexed"));
                    }
                }
                MessageState::Delayed { visible_at_ms } => {
                    delayed += 1;
                    if !self.delayed.contains(&(visible_at_ms, seq)) {
                        return Err(format!("message {seq} delayed but not indexed"));
                    }
                }
                MessageState::InFlight { deadline_ms, .. } => {
                    in_flight += 1;
                    if meta.receive_count == 0 {
                        return Err(format!("message {seq} in flight but never received"));
                    }
                    if !self.in_flight.contains(&(deadline_ms, seq)) {
                        return Err(format!("message {seq} in flight but not indexed"));
                    }
                }
            }
            if let Some(at) = meta.expires_at_ms
                && !self.ttl.contains(&(at, seq))
            {
                return Err(format!("message {seq} has a TTL but is not in the TTL index"));
            }
            match (self.config.fifo, meta.group) {
                (true, Some(g)) => {
                    if !self.groups.groups.get(&g).is_some_and(|group| group.members.contains(&seq)) {
                        return Err(format!("message {seq} is not a member of its group {g}"));
                    }
                }
                (true, None) => return Err(format!("message {seq} of a FIFO queue has no group")),
                (false, Some(_)) => return Err(format!("message {seq} of a standard queue has a group")),
                (false, None) => {}
            }
        }
        if !self.config.fifo && ready != self.ready.len() {
            return Err(format!("{ready} ready messages, {} indexed", self.ready.len()));
        }
        if delayed != self.delayed.len() || in_flight != self.in_flight.len() {
            return Err("the delayed or in-flight index has entries without messages".into());
        }
        if self.ttl.len() != self.messages.values().filter(|m| m.expires_at_ms.is_some()).count() {
            return Err("the TTL index has entries without messages".into());
        }
        let resent: BTreeSet<(u64, u64)> = self
            .messages
            .iter()
            .filter(|(_, m)| m.sent_at_ms < m.enqueued_at_ms)
            .map(|(seq, m)| (m.sent_at_ms, seq))
            .collect();
        if resent != self.resent {
            return Err("the index of messages sent before they entered the queue is wrong".into());
        }
        let mut entered = 0;
        for meta in self.messages.values() {
            if meta.enqueued_at_ms < entered || meta.sent_at_ms > meta.enqueued_at_ms {
                return Err("entry times do not grow with seq, or a message entered before it was sent".into());
            }
            entered = meta.enqueued_at_ms;
        }
        if bytes != self.counters.bytes {
            return Err(format!("bytes counter {} != {} stored", self.counters.bytes, bytes));
        }
        for (g, group) in &self.groups.groups {
            if group.members.is_empty() {
                return Err(format!("group {g} is empty but kept"));
            }
            let flying =
                group.members.iter().filter(|&&s| matches!(self.meta(s).state, MessageState::InFlight { .. })).count()
                    as u32;
            if flying != group.in_flight {
                return Err(format!("group {g}: {flying} in flight, counted {}", group.in_flight));
            }
            let head = *group.members.first().expect("not empty");
            let available = flying == 0 && self.meta(head).state == MessageState::Ready;
            if available != group.available_at.is_some() || available != self.groups.available.contains(&(head, *g)) {
                return Err(format!("group {g}: availability index is wrong"));
            }
        }
        if self.groups.available.len() != self.groups.groups.values().filter(|g| g.available_at.is_some()).count() {
            return Err("the available-groups index has stale entries".into());
        }
        let mut previous = None;
        let mut counted = 0;
        for (hash, seq, expires_at_ms) in self.dedup.iter() {
            match seq {
                Some(seq) if seq >= 1 && seq < self.next_seq => {}
                _ => return Err("a dedup expiry entry does not match its dedup entry".into()),
            }
            if previous.is_some_and(|p| p > (expires_at_ms, hash)) {
                return Err("the dedup expiry index is out of order".into());
            }
            previous = Some((expires_at_ms, hash));
            counted += 1;
        }
        if counted != self.dedup.len() {
            return Err("dedup map and expiry index differ in size".into());
        }
        Ok(())
    }
}
