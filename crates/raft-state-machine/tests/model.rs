//! Model-based property test: random interleavings of every command, applied
//! both to the real `State` and to a small reference model written
//! independently: a `Vec` of messages per queue, linear scans, no indexes,
//! states derived from times where the real state keeps sorted sets. After
//! every step the test compares the response (with per-entry errors), the
//! effects, the message store the effects imply (moves between queues
//! included), the stats of every queue at several times, `has_visible`,
//! `next_visible_at`, `next_due_ms`, `is_in_flight` and `check_invariants()`.
//!
//! What time makes due (a timeout or delay ending, an expiry) is carried out
//! lazily, when a command touches the queue; that is specified behaviour
//! (stats, wake-ups and dead-letter moves depend on it), so the model does it
//! at the same moments: at the start of every command on a queue, and for
//! every queue on Tick.
//!
//! How to run and rerun:
//!
//! ```text
//! cargo test -p quorumq-raft-state-machine --test model              # 800 cases
//! PROPTEST_CASES=20000 cargo test -p quorumq-raft-state-machine --test model --release
//! PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n> cargo test -p quorumq-raft-state-machine --test model
//! ```
//!
//! On failure the test prints the minimal (shrunk) sequence of steps and the
//! exact command, with the seed, that reproduces it. Other `PROPTEST_*`
//! variables (such as `PROPTEST_MAX_SHRINK_ITERS`) apply as usual.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::hash::BuildHasher;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest::test_runner::RngSeed;
use proptest::test_runner::TestCaseError;
use proptest::test_runner::TestRunner;
use quorumq_raft_state_machine::limits;
use quorumq_raft_state_machine::*;

const CASES_DEFAULT: u32 = 800;

// ---------------------------------------------------------------- the model

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
    /// Remembered deduplication keys: (key, seq, forgotten at).
    dedup: Vec<(DedupKey, u64, u64)>,
    totals: Totals,
}

#[derive(Clone, Debug, Default)]
struct Totals {
    sent: u64,
    acked: u64,
    received: u64,
    dead_lettered: u64,
    expired: u64,
    dropped: u64,
    rejected: u64,
}

/// Ids and bodies are different things: a body never equals an id.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DedupKey {
    Id(String),
    Body(Bytes),
}

/// A message's state as last carried out (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Ready,
    Delayed { until: u64 },
    InFlight { deadline: u64, received_at: u64 },
}

#[derive(Clone, Debug)]
struct ModelMessage {
    seq: u64,
    /// The record as the store should hold it.
    record: MessageRecord,
    size: u64,
    /// Its group in this queue (FIFO queues only).
    group: Option<String>,
    /// Its priority in this queue (0 in FIFO queues).
    priority: u8,
    state: St,
    receive_count: u32,
    first_received_at: u64,
    /// When it entered this queue.
    entered_at: u64,
    /// Its own time to live's end.
    own_expiry: Option<u64>,
    /// The queue it was dead-lettered from.
    source: Option<QueueId>,
}

impl ModelMessage {
    fn in_flight(&self) -> bool {
        matches!(self.state, St::InFlight { .. })
    }
}

/// What a receipt names, in the model.
enum Named {
    /// The message is gone (acked, purged, expired, moved).
    Deleted,
    /// The index of the message it currently names.
    Current(usize),
}

/// The reference formula of the redelivery backoff,
/// `min(max, floor(min * (factor / 1000)^(receive_count - 1)))`, in exact
/// integer fractions (the factors the test uses keep them small).
fn backoff(b: &Backoff, receive_count: u32) -> u64 {
    fn gcd(a: u128, b: u128) -> u128 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = gcd(b.factor_milli as u128, 1000);
    let (p, q) = (b.factor_milli as u128 / g, 1000 / g);
    let (mut num, mut den) = (b.min_ms as u128, 1u128);
    for _ in 1..receive_count.max(1) {
        if num >= b.max_ms as u128 * den {
            break;
        }
        num = num.checked_mul(p).expect("test backoff factors keep fractions small");
        den = den.checked_mul(q).expect("test backoff factors keep fractions small");
    }
    (num / den).min(b.max_ms as u128) as u64
}

fn invalid() -> QueueError {
    // The text is not compared, see `normalise`.
    QueueError::InvalidArgument(String::new())
}

fn full(queue: &str) -> QueueError {
    // The limit's text is not compared, see `normalise`.
    QueueError::QueueFull { queue: queue.to_string(), limit: String::new() }
}

fn model_name_ok(name: &str) -> bool {
    (1..=limits::QUEUE_NAME_BYTES_MAX).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn model_printable(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.chars().all(|c| c.is_ascii_graphic())
}

/// The configuration checks, in the order the real state makes them.
fn model_check_config(c: &QueueConfig) -> Result<(), QueueError> {
    let day = 24 * 60 * 60 * 1000;
    if c.visibility_timeout_ms > 12 * 60 * 60 * 1000 || c.dedup_window_ms > 60 * 60 * 1000 {
        return Err(invalid());
    }
    if c.retention_ms < 60_000 || c.retention_ms > 14 * day {
        return Err(invalid());
    }
    if c.message_ttl_ms.is_some_and(|t| t == 0 || t > 14 * day) || c.delay_ms > 15 * 60 * 1000 {
        return Err(invalid());
    }
    if c.max_messages == Some(0) || c.max_bytes == Some(0) {
        return Err(invalid());
    }
    if let Some(p) = &c.dead_letter {
        if !model_name_ok(&p.queue) {
            return Err(QueueError::InvalidQueueName { name: p.queue.clone() });
        }
        if p.max_receives > 1000 {
            return Err(invalid());
        }
    }
    if let Some(b) = &c.redelivery_backoff
        && (b.min_ms == 0
            || b.max_ms < b.min_ms
            || b.max_ms > 12 * 60 * 60 * 1000
            || !(1000..=10_000).contains(&b.factor_milli))
    {
        return Err(invalid());
    }
    Ok(())
}

fn model_check_message(m: &NewMessage) -> Result<(), QueueError> {
    let day = 24 * 60 * 60 * 1000;
    let id_ok = m.id.as_deref().is_none_or(|id| model_printable(id, 128));
    let delay_ok = m.delay_ms.is_none_or(|d| d <= 15 * 60 * 1000);
    let ttl_ok = m.ttl_ms.is_none_or(|t| t >= 1 && t <= 14 * day);
    let group_ok = m.group.as_deref().is_none_or(|g| model_printable(g, 128));
    let attributes_ok = m.attributes.len() <= 10
        && m.attributes
            .keys()
            .all(|k| (1..=256).contains(&k.len()) && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
    if id_ok && delay_ok && ttl_ok && group_ok && m.priority <= 9 && attributes_ok { Ok(()) } else { Err(invalid()) }
}

fn model_size(m: &NewMessage) -> u64 {
    let attributes: usize = m
        .attributes
        .iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::String(s) => s.len(),
                    AttributeValue::Binary(b) => b.len(),
                }
        })
        .sum();
    (m.body.len() + attributes) as u64
}

/// What a command on one queue works with besides the queue.
struct Ctx {
    now: u64,
    name: String,
    /// The queue's dead-letter queue, if it exists.
    dead_letter_queue: Option<String>,
    effects: Vec<Effect>,
    departures: Vec<(ModelMessage, QueueId, String, DeadLetterInfo)>,
    woke: bool,
}

impl ModelQueue {
    fn lifetime(&self) -> u64 {
        match self.config.message_ttl_ms {
            Some(ttl) if ttl < self.config.retention_ms => ttl,
            _ => self.config.retention_ms,
        }
    }

    fn expiry(&self, m: &ModelMessage) -> u64 {
        let queue_limit = m.entered_at + self.lifetime();
        m.own_expiry.map_or(queue_limit, |own| own.min(queue_limit))
    }

    /// How a message counts in the stats at `t`.
    fn counted_as(&self, m: &ModelMessage, t: u64) -> St {
        match m.state {
            St::InFlight { deadline, .. } if deadline > t => m.state,
            St::InFlight { deadline, .. } => match &self.config.redelivery_backoff {
                Some(b) if deadline + backoff(b, m.receive_count) > t => St::Delayed { until: 0 },
                _ => St::Ready,
            },
            St::Delayed { until } if until > t => m.state,
            _ => St::Ready,
        }
    }

    fn info(&self, t: u64) -> QueueInfo {
        let count = |f: fn(&St) -> bool| self.messages.iter().filter(|m| f(&self.counted_as(m, t))).count() as u64;
        QueueInfo {
            name: self.name.clone(),
            id: self.id,
            config: self.config.clone(),
            created_at_ms: self.created_at,
            stats: QueueStats {
                ready: count(|s| *s == St::Ready),
                in_flight: count(|s| matches!(s, St::InFlight { .. })),
                delayed: count(|s| matches!(s, St::Delayed { .. })),
                bytes: self.messages.iter().map(|m| m.size).sum(),
                sent_total: self.totals.sent,
                acked_total: self.totals.acked,
                received_total: self.totals.received,
                dedup_evicted_total: 0,
                dead_lettered_total: self.totals.dead_lettered,
                expired_total: self.totals.expired,
                dropped_total: self.totals.dropped,
                rejected_total: self.totals.rejected,
                oldest_sent_at_ms: self.messages.iter().map(|m| m.record.sent_at_ms).min().unwrap_or(0),
            },
        }
    }

    /// The members of each FIFO group, in order.
    fn groups(&self) -> BTreeMap<String, Vec<usize>> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, m) in self.messages.iter().enumerate() {
            groups.entry(m.group.clone().expect("FIFO messages have groups")).or_default().push(i);
        }
        groups
    }

    /// The index of the head of the FIFO group with the oldest head among
    /// the groups with nothing in flight and a ready head.
    fn available_group_head(&self) -> Option<usize> {
        self.groups()
            .values()
            .filter(|members| {
                members.iter().all(|&i| !self.messages[i].in_flight()) && self.messages[members[0]].state == St::Ready
            })
            .map(|members| members[0])
            .min()
    }

    /// `has_visible` as documented: something is ready (FIFO: a group is
    /// available, or an expiry that may free one is due), or a timeout or
    /// delay has ended.
    fn has_visible(&self, t: u64) -> bool {
        let ready = if self.config.fifo {
            self.available_group_head().is_some() || self.next_due().is_some_and(|at| at <= t)
        } else {
            self.messages.iter().any(|m| m.state == St::Ready)
        };
        let due = self.messages.iter().any(|m| match m.state {
            St::InFlight { deadline, .. } => deadline <= t,
            St::Delayed { until } => until <= t,
            St::Ready => false,
        });
        ready || due
    }

    fn next_visible_at(&self) -> Option<u64> {
        self.messages
            .iter()
            .filter_map(|m| match m.state {
                St::InFlight { deadline, .. } => Some(deadline),
                St::Delayed { until } => Some(until),
                St::Ready => None,
            })
            .min()
    }

    fn next_due(&self) -> Option<u64> {
        self.messages
            .iter()
            .map(|m| match m.state {
                St::InFlight { deadline, .. } => self.expiry(m).max(deadline),
                _ => self.expiry(m),
            })
            .min()
    }

    /// Removes a message for `reason`: to the dead-letter queue if it
    /// exists, else deleted.
    fn remove(&mut self, index: usize, reason: DeadLetterReason, ctx: &mut Ctx) {
        let m = self.messages.remove(index);
        // Removing a FIFO message may free its group.
        ctx.woke |= self.config.fifo;
        if reason == DeadLetterReason::Expired {
            self.totals.expired += 1;
        }
        match &ctx.dead_letter_queue {
            Some(to) => {
                self.totals.dead_lettered += 1;
                let info = DeadLetterInfo {
                    reason,
                    source_queue: self.name.clone(),
                    receive_count: m.receive_count,
                    at_ms: ctx.now,
                };
                ctx.departures.push((m, self.id, to.clone(), info));
            }
            None => {
                self.totals.dropped += 1;
                ctx.effects.push(Effect::DeleteMessage { queue_id: self.id, seq: Seq(m.seq) });
            }
        }
    }

    /// Carries out what is due at `ctx.now`.
    fn touch(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let backoff_config = self.config.redelivery_backoff;
        for m in &mut self.messages {
            let before = m.state;
            if let St::InFlight { deadline, .. } = m.state
                && deadline <= now
            {
                m.state = match &backoff_config {
                    Some(b) => St::Delayed { until: deadline + backoff(b, m.receive_count) },
                    None => St::Ready,
                };
            }
            if let St::Delayed { until } = m.state
                && until <= now
            {
                m.state = St::Ready;
            }
            if before != St::Ready && m.state == St::Ready {
                ctx.woke = true;
            }
        }
        while let Some(i) = self.messages.iter().position(|m| !m.in_flight() && self.expiry(m) <= now) {
            self.remove(i, DeadLetterReason::Expired, ctx);
        }
        self.dedup.retain(|&(_, _, until)| until > now);
    }

    /// The oldest messages not in flight to drop so that one more of `size`
    /// bytes fits, or `None` when dropping all of them would not do.
    fn room_plan(&self, size: u64) -> Option<Vec<u64>> {
        let candidates: Vec<&ModelMessage> = self.messages.iter().filter(|m| !m.in_flight()).collect();
        (0..=candidates.len()).find_map(|k| {
            let dropped = &candidates[..k];
            let count = self.messages.len() - k + 1;
            let bytes =
                self.messages.iter().map(|m| m.size).sum::<u64>() - dropped.iter().map(|m| m.size).sum::<u64>() + size;
            let fits = self.config.max_messages.is_none_or(|max| count as u64 <= max)
                && self.config.max_bytes.is_none_or(|max| bytes <= max);
            fits.then(|| dropped.iter().map(|m| m.seq).collect())
        })
    }

    fn index_of(&self, seq: u64) -> usize {
        self.messages.iter().position(|m| m.seq == seq).expect("message exists")
    }

    fn send_one(&mut self, m: &NewMessage, ctx: &mut Ctx) -> Result<Sent, QueueError> {
        let now = ctx.now;
        let size = model_size(m);
        if size > limits::MESSAGE_BYTES_HARD_MAX as u64 {
            return Err(QueueError::MessageTooLarge {
                bytes: size as usize,
                bytes_max: limits::MESSAGE_BYTES_HARD_MAX,
            });
        }
        model_check_message(m)?;
        if self.config.fifo && (m.group.is_none() || m.delay_ms.is_some() || m.priority != 0) {
            return Err(invalid());
        }
        let key = if self.config.content_based_dedup && (m.id.is_none() || m.id_generated) {
            Some(DedupKey::Body(m.body.clone()))
        } else {
            m.id.clone().map(DedupKey::Id)
        };
        if let Some(&(_, seq, _)) = self.dedup.iter().find(|(k, _, _)| Some(k) == key.as_ref()) {
            return Ok(Sent { seq: Seq(seq), duplicate: true });
        }
        let Some(plan) = self.room_plan(size).filter(|p| p.is_empty() || self.config.overflow == Overflow::DropHead)
        else {
            self.totals.rejected += 1;
            return Err(full(&self.name));
        };
        for seq in plan {
            let i = self.index_of(seq);
            self.remove(i, DeadLetterReason::Overflow, ctx);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(key) = key
            && self.config.dedup_window_ms > 0
        {
            self.dedup.push((key, seq, now + self.config.dedup_window_ms));
        }
        let delay = m.delay_ms.unwrap_or(self.config.delay_ms);
        let record = MessageRecord {
            id: m.id.clone(),
            sent_at_ms: now,
            body: m.body.clone(),
            attributes: m.attributes.clone(),
            group: m.group.clone(),
            priority: m.priority,
            dead_letter: None,
        };
        ctx.effects.push(Effect::PutMessage { queue_id: self.id, seq: Seq(seq), record: record.clone() });
        self.messages.push(ModelMessage {
            seq,
            record,
            size,
            group: if self.config.fifo { m.group.clone() } else { None },
            priority: m.priority,
            state: if delay > 0 { St::Delayed { until: now + delay } } else { St::Ready },
            receive_count: 0,
            first_received_at: 0,
            entered_at: now,
            own_expiry: m.ttl_ms.map(|t| now + t),
            source: None,
        });
        self.totals.sent += 1;
        if delay == 0 {
            ctx.woke = true;
        }
        Ok(Sent { seq: Seq(seq), duplicate: false })
    }

    /// Delivers the message at `index`, unless it expired or was received
    /// `max_receives` times already (then it leaves instead).
    fn try_deliver(
        &mut self,
        index: usize,
        deadline: u64,
        max_receives: Option<u32>,
        ctx: &mut Ctx,
    ) -> Option<Delivery> {
        let now = ctx.now;
        if self.expiry(&self.messages[index]) <= now {
            self.remove(index, DeadLetterReason::Expired, ctx);
            return None;
        }
        if max_receives.is_some_and(|max| self.messages[index].receive_count >= max) {
            self.remove(index, DeadLetterReason::MaxReceives, ctx);
            return None;
        }
        let m = &mut self.messages[index];
        m.receive_count += 1;
        if m.receive_count == 1 {
            m.first_received_at = now;
        }
        m.state = St::InFlight { deadline, received_at: now };
        self.totals.received += 1;
        Some(Delivery {
            receipt: Receipt { queue_id: self.id, seq: Seq(m.seq), receive_count: m.receive_count },
            sent_at_ms: m.record.sent_at_ms,
            first_received_at_ms: m.first_received_at,
            visible_again_at_ms: deadline,
            priority: m.priority,
        })
    }

    fn receive(&mut self, max: u32, timeout: Option<u64>, ctx: &mut Ctx) -> Result<Vec<Delivery>, QueueError> {
        let timeout = timeout.unwrap_or(self.config.visibility_timeout_ms);
        if max > limits::RECEIVE_MESSAGES_MAX || timeout > limits::VISIBILITY_TIMEOUT_MS_MAX {
            return Err(invalid());
        }
        let want = max.max(1) as usize;
        let deadline = ctx.now + timeout;
        let max_receives = match &self.config.dead_letter {
            Some(p) if p.max_receives > 0 && ctx.dead_letter_queue.is_some() => Some(p.max_receives),
            _ => None,
        };
        let mut deliveries = Vec::new();
        while deliveries.len() < want {
            if !self.config.fifo {
                // Highest priority first, then oldest.
                let best = (0..self.messages.len())
                    .filter(|&i| self.messages[i].state == St::Ready)
                    .min_by_key(|&i| (std::cmp::Reverse(self.messages[i].priority), self.messages[i].seq));
                let Some(i) = best else { break };
                deliveries.extend(self.try_deliver(i, deadline, max_receives, ctx));
                continue;
            }
            let Some(head) = self.available_group_head() else { break };
            let (group, mut last) = (self.messages[head].group.clone(), self.messages[head].seq);
            let Some(delivery) = self.try_deliver(head, deadline, max_receives, ctx) else { continue };
            deliveries.push(delivery);
            // The group's next messages follow while they are ready.
            while deliveries.len() < want {
                let Some(i) = self.messages.iter().position(|m| m.group == group && m.seq > last) else { break };
                if self.messages[i].state != St::Ready {
                    break;
                }
                last = self.messages[i].seq;
                deliveries.extend(self.try_deliver(i, deadline, max_receives, ctx));
            }
        }
        Ok(deliveries)
    }

    fn find(&self, receipt: &Receipt) -> Result<Named, QueueError> {
        if receipt.queue_id != self.id {
            return Err(QueueError::ReceiptOfOtherQueue { queue: self.name.clone() });
        }
        let issued_seq = receipt.seq.0 >= 1 && receipt.seq.0 < self.next_seq;
        if !issued_seq || receipt.receive_count == 0 {
            return Err(QueueError::UnknownReceipt);
        }
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

    fn ack(&mut self, r: &Receipt, ctx: &mut Ctx) -> Result<(), QueueError> {
        if let Named::Current(i) = self.find(r)? {
            self.messages.remove(i);
            self.totals.acked += 1;
            ctx.effects.push(Effect::DeleteMessage { queue_id: self.id, seq: r.seq });
            // Acking a FIFO message may free its group.
            ctx.woke |= self.config.fifo;
        }
        Ok(())
    }

    fn nack(&mut self, r: &Receipt, delay: u64, dead_letter: bool, ctx: &mut Ctx) -> Result<(), QueueError> {
        let Named::Current(i) = self.find(r)? else { return Ok(()) };
        if dead_letter {
            self.remove(i, DeadLetterReason::Rejected, ctx);
            return Ok(());
        }
        let m = &mut self.messages[i];
        if m.in_flight() {
            m.state = match &self.config.redelivery_backoff {
                _ if delay > 0 => St::Delayed { until: ctx.now + delay },
                Some(b) => St::Delayed { until: ctx.now + backoff(b, m.receive_count) },
                None => St::Ready,
            };
            ctx.woke |= m.state == St::Ready;
        }
        Ok(())
    }

    fn change_visibility(&mut self, r: &Receipt, timeout: u64, ctx: &mut Ctx) -> Result<(), QueueError> {
        let Named::Current(i) = self.find(r)? else { return Err(QueueError::MessageDeleted) };
        let m = &mut self.messages[i];
        let St::InFlight { received_at, .. } = m.state else { return Err(QueueError::NotInFlight) };
        if timeout == 0 {
            m.state = St::Ready;
            ctx.woke = true;
        } else if ctx.now + timeout > received_at + limits::VISIBILITY_TIMEOUT_MS_MAX {
            return Err(invalid());
        } else {
            m.state = St::InFlight { deadline: ctx.now + timeout, received_at };
        }
        Ok(())
    }
}

impl Model {
    fn queue_index(&self, name: &str) -> Result<usize, QueueError> {
        self.queues.iter().position(|q| q.name == name).ok_or(QueueError::QueueNotFound { name: name.into() })
    }

    fn apply(&mut self, request: &Request) -> (Response, Vec<Effect>) {
        self.now = self.now.max(request.now_ms);
        let mut effects = Vec::new();
        let response = match &request.command {
            // A batch: its commands one after the other, at the same time.
            Command::Batch(commands) => {
                Ok(Outcome::Batch(commands.iter().map(|c| self.command(c, &mut effects)).collect()))
            }
            command => self.command(command, &mut effects),
        };
        (response, effects)
    }

    fn check_dead_letter_target(&self, name: &str, config: &QueueConfig) -> Result<(), QueueError> {
        match &config.dead_letter {
            Some(p) if p.queue == name => Err(invalid()),
            Some(p) => {
                let i = self.queue_index(&p.queue)?;
                if self.queues[i].config.fifo != config.fifo { Err(invalid()) } else { Ok(()) }
            }
            None => Ok(()),
        }
    }

    /// Runs `f` on a queue after carrying out what is due in it, then puts
    /// the messages that left it into their dead-letter queues.
    fn on_queue<R>(
        &mut self,
        name: &str,
        effects: &mut Vec<Effect>,
        f: impl FnOnce(&mut ModelQueue, &mut Ctx, &BTreeMap<QueueId, String>) -> Result<R, QueueError>,
    ) -> Result<R, QueueError> {
        let i = self.queue_index(name)?;
        let names: BTreeMap<QueueId, String> = self.queues.iter().map(|q| (q.id, q.name.clone())).collect();
        let dead_letter_queue =
            self.queues[i].config.dead_letter.as_ref().map(|p| p.queue.clone()).filter(|t| self.queue_index(t).is_ok());
        let mut ctx = Ctx {
            now: self.now,
            name: name.to_string(),
            dead_letter_queue,
            effects: Vec::new(),
            departures: Vec::new(),
            woke: false,
        };
        self.queues[i].touch(&mut ctx);
        let result = f(&mut self.queues[i], &mut ctx, &names);
        effects.append(&mut ctx.effects);
        if ctx.woke {
            effects.push(Effect::MessagesAvailable { queue: ctx.name.clone() });
        }
        for (m, from, to, info) in ctx.departures {
            let from_seq = m.seq;
            let (to_id, to_seq) = self.take_in(&to, m, Some(from), Some(info.clone()), effects);
            effects.push(Effect::MoveMessage {
                from: (from, Seq(from_seq)),
                to: (to_id, Seq(to_seq)),
                dead_letter: Some(info),
            });
            effects.push(Effect::MessagesAvailable { queue: to });
        }
        result
    }

    /// Puts a message arriving from another queue into `target`: never
    /// refused, but under drop-head the target's oldest messages not in
    /// flight are deleted to make room, when that is enough.
    fn take_in(
        &mut self,
        target: &str,
        mut m: ModelMessage,
        source: Option<QueueId>,
        dead_letter: Option<DeadLetterInfo>,
        effects: &mut Vec<Effect>,
    ) -> (QueueId, u64) {
        let now = self.now;
        let i = self.queue_index(target).expect("arrival target exists");
        let t = &mut self.queues[i];
        if t.config.overflow == Overflow::DropHead
            && let Some(plan) = t.room_plan(m.size)
        {
            for seq in plan {
                let index = t.index_of(seq);
                t.messages.remove(index);
                t.totals.dropped += 1;
                effects.push(Effect::DeleteMessage { queue_id: t.id, seq: Seq(seq) });
            }
        }
        let seq = t.next_seq;
        t.next_seq += 1;
        m.seq = seq;
        m.record.dead_letter = dead_letter;
        m.state = St::Ready;
        m.receive_count = 0;
        m.first_received_at = 0;
        m.entered_at = now;
        m.own_expiry = None;
        m.source = source;
        m.group = if t.config.fifo { Some(m.group.unwrap_or_else(|| "default".to_string())) } else { None };
        if t.config.fifo {
            m.priority = 0;
        }
        t.messages.push(m);
        (t.id, seq)
    }

    fn receipt_batch_ok(receipts: &[Receipt]) -> Result<(), QueueError> {
        if receipts.is_empty() || receipts.len() > limits::RECEIPT_BATCH_ENTRIES_MAX { Err(invalid()) } else { Ok(()) }
    }

    fn command(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response {
        let now = self.now;
        match command {
            // Only a batch inside a batch gets here.
            Command::Batch(_) => Err(invalid()),
            Command::CreateQueue { name, config } => {
                if !model_name_ok(name) {
                    return Err(QueueError::InvalidQueueName { name: name.clone() });
                }
                model_check_config(config)?;
                if let Ok(i) = self.queue_index(name) {
                    let q = &self.queues[i];
                    if q.config != *config {
                        return Err(QueueError::QueueExists { name: name.clone() });
                    }
                    return Ok(Outcome::QueueCreated { queue: q.info(now), created: false });
                }
                self.check_dead_letter_target(name, config)?;
                self.next_queue_id += 1;
                let q = ModelQueue {
                    name: name.clone(),
                    id: QueueId(self.next_queue_id),
                    config: config.clone(),
                    created_at: now,
                    next_seq: 1,
                    messages: Vec::new(),
                    dedup: Vec::new(),
                    totals: Totals::default(),
                };
                let info = q.info(now);
                self.queues.push(q);
                self.queues.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Outcome::QueueCreated { queue: info, created: true })
            }
            Command::SetQueue { name, update } => {
                if !model_name_ok(name) {
                    return Err(QueueError::InvalidQueueName { name: name.clone() });
                }
                let i = self.queue_index(name)?;
                let old = self.queues[i].config.clone();
                let config = QueueConfig {
                    visibility_timeout_ms: update.visibility_timeout_ms.unwrap_or(old.visibility_timeout_ms),
                    dedup_window_ms: update.dedup_window_ms.unwrap_or(old.dedup_window_ms),
                    retention_ms: update.retention_ms.unwrap_or(old.retention_ms),
                    message_ttl_ms: update.message_ttl_ms.unwrap_or(old.message_ttl_ms),
                    delay_ms: update.delay_ms.unwrap_or(old.delay_ms),
                    max_messages: update.max_messages.unwrap_or(old.max_messages),
                    max_bytes: update.max_bytes.unwrap_or(old.max_bytes),
                    overflow: update.overflow.unwrap_or(old.overflow),
                    dead_letter: update.dead_letter.clone().unwrap_or(old.dead_letter.clone()),
                    redelivery_backoff: update.redelivery_backoff.unwrap_or(old.redelivery_backoff),
                    fifo: old.fifo,
                    content_based_dedup: update.content_based_dedup.unwrap_or(old.content_based_dedup),
                };
                model_check_config(&config)?;
                if config.dead_letter != old.dead_letter {
                    self.check_dead_letter_target(name, &config)?;
                }
                let q = &mut self.queues[i];
                if config.dedup_window_ms == 0 {
                    q.dedup.clear();
                }
                q.config = config;
                Ok(Outcome::QueueUpdated { queue: q.info(now) })
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
            Command::Send { queue, messages } => self.on_queue(queue, effects, |q, ctx, _| {
                let total: u64 = messages.iter().map(model_size).sum();
                if messages.is_empty()
                    || messages.len() > limits::SEND_BATCH_ENTRIES_MAX
                    || total > limits::SEND_BATCH_BYTES_MAX as u64
                {
                    return Err(invalid());
                }
                let results = messages.iter().map(|m| q.send_one(m, ctx)).collect();
                Ok(Outcome::Sent { queue_id: q.id, results })
            }),
            Command::Receive { queue, max_messages, visibility_timeout_ms } => {
                self.on_queue(queue, effects, |q, ctx, _| {
                    let deliveries = q.receive(*max_messages, *visibility_timeout_ms, ctx)?;
                    Ok(Outcome::Received { queue_id: q.id, deliveries })
                })
            }
            Command::Ack { queue, receipts } => {
                Self::receipt_batch_ok(receipts)?;
                self.on_queue(queue, effects, |q, ctx, _| {
                    Ok(Outcome::Receipts(receipts.iter().map(|r| q.ack(r, ctx)).collect()))
                })
            }
            Command::Nack { queue, receipts, delay_ms, dead_letter } => {
                Self::receipt_batch_ok(receipts)?;
                if *delay_ms > limits::VISIBILITY_TIMEOUT_MS_MAX {
                    return Err(invalid());
                }
                self.on_queue(queue, effects, |q, ctx, _| {
                    Ok(Outcome::Receipts(receipts.iter().map(|r| q.nack(r, *delay_ms, *dead_letter, ctx)).collect()))
                })
            }
            Command::ChangeVisibility { queue, receipts, visibility_timeout_ms } => {
                if *visibility_timeout_ms > limits::VISIBILITY_TIMEOUT_MS_MAX {
                    return Err(invalid());
                }
                Self::receipt_batch_ok(receipts)?;
                self.on_queue(queue, effects, |q, ctx, _| {
                    Ok(Outcome::Receipts(
                        receipts.iter().map(|r| q.change_visibility(r, *visibility_timeout_ms, ctx)).collect(),
                    ))
                })
            }
            Command::Redrive { queue, to, max_messages } => {
                let max = if *max_messages == 0 { 1000 } else { *max_messages } as usize;
                if max > 1000 {
                    return Err(invalid());
                }
                if let Some(to) = to {
                    if !model_name_ok(to) {
                        return Err(QueueError::InvalidQueueName { name: to.clone() });
                    }
                    if to == queue {
                        return Err(invalid());
                    }
                    self.queue_index(to)?;
                }
                let (source_id, leaving, remaining, skipped) = self.on_queue(queue, effects, |q, ctx, names| {
                    let mut leaving: Vec<(ModelMessage, String)> = Vec::new();
                    let mut skipped = 0;
                    let mut i = 0;
                    while i < q.messages.len() && leaving.len() < max {
                        let m = &q.messages[i];
                        if m.in_flight() {
                            i += 1;
                            continue;
                        }
                        let target = match to {
                            Some(to) => Some(to.clone()),
                            None => m.source.and_then(|id| names.get(&id).cloned()),
                        };
                        match target.filter(|t| t != queue) {
                            None => {
                                skipped += 1;
                                i += 1;
                            }
                            Some(t) => {
                                leaving.push((q.messages.remove(i), t));
                                // Removing a FIFO message may free its group.
                                ctx.woke |= q.config.fifo;
                            }
                        }
                    }
                    let _ = skipped;
                    let resolvable = |m: &ModelMessage| {
                        to.is_some() || m.source.and_then(|id| names.get(&id)).is_some_and(|t| t != queue)
                    };
                    let left: Vec<&ModelMessage> = q.messages.iter().filter(|m| !m.in_flight()).collect();
                    let remaining = left.iter().filter(|m| resolvable(m)).count() as u64;
                    let skipped = left.iter().filter(|m| !resolvable(m)).count() as u64;
                    Ok((q.id, leaving, remaining, skipped))
                })?;
                let moved = leaving.len() as u64;
                let mut targets = BTreeSet::new();
                for (mut m, target) in leaving {
                    let from = (source_id, Seq(m.seq));
                    m.receive_count = 0;
                    m.first_received_at = 0;
                    let (to_id, to_seq) = self.take_in(&target, m, None, None, effects);
                    effects.push(Effect::MoveMessage { from, to: (to_id, Seq(to_seq)), dead_letter: None });
                    targets.insert(target);
                }
                for queue in targets {
                    effects.push(Effect::MessagesAvailable { queue });
                }
                Ok(Outcome::Redriven { moved, remaining, skipped })
            }
            Command::Tick => {
                let names: Vec<String> = self.queues.iter().map(|q| q.name.clone()).collect();
                for name in names {
                    self.on_queue(&name, effects, |_, _, _| Ok(()))?;
                }
                Ok(Outcome::None)
            }
        }
    }

    /// Every live message as the store should hold it.
    fn records(&self) -> BTreeMap<(QueueId, Seq), MessageRecord> {
        let mut records = BTreeMap::new();
        for q in &self.queues {
            for m in &q.messages {
                records.insert((q.id, Seq(m.seq)), m.record.clone());
            }
        }
        records
    }

    /// Whether a Receive of `queue` at `t` would deliver something (on a
    /// copy of the model).
    fn would_deliver(&self, queue: &str, t: u64) -> bool {
        let mut copy = self.clone();
        let receive = Command::Receive { queue: queue.to_string(), max_messages: 1, visibility_timeout_ms: None };
        let (response, _) = copy.apply(&Request { now_ms: t, command: receive });
        matches!(response, Ok(Outcome::Received { deliveries, .. }) if !deliveries.is_empty())
    }
}

/// Forgets the text of InvalidArgument errors and of the limit in QueueFull,
/// which the model does not copy.
fn normalise(response: Response) -> Response {
    fn error(e: QueueError) -> QueueError {
        match e {
            QueueError::InvalidArgument(_) => invalid(),
            QueueError::QueueFull { queue, .. } => full(&queue),
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
        Ok(Outcome::Batch(results)) => Ok(Outcome::Batch(results.into_iter().map(normalise).collect())),
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
                Effect::MoveMessage { from, to, dead_letter } => {
                    let record = self.records.remove(from);
                    prop_assert!(record.is_some(), "MoveMessage from {from:?}, which is not stored");
                    let record = MessageRecord { dead_letter: dead_letter.clone(), ..record.expect("checked") };
                    let old = self.records.insert(*to, record);
                    prop_assert!(old.is_none(), "MoveMessage overwrote {to:?}: seqs are never reused");
                }
                Effect::MessagesAvailable { .. } => {}
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- the steps

/// Queue names used: three valid ones and one invalid (never created).
const NAMES: [&str; 4] = ["a", "b", "c", "not valid!"];

const HOUR: u64 = 60 * 60 * 1000;
const DAY: u64 = 24 * HOUR;

fn queue_slot() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0usize), 5 => Just(1usize), 3 => Just(2usize), 1 => Just(3usize)]
}

fn visibility_timeout_config() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 3 => Just(1_000u64), 2 => Just(2_500u64), 1 => Just(30_000u64)]
}

fn dedup_window() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(5_000u64), Just(300_000u64)]
}

fn retention() -> impl Strategy<Value = u64> {
    prop_oneof![2 => Just(60_000u64), 1 => Just(90_000u64), 2 => Just(4 * DAY)]
}

fn queue_ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 1 => (1_000..40_000u64).prop_map(Some)]
}

fn queue_delay() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 1 => 300..3_000u64]
}

fn max_messages() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 2 => (1..6u64).prop_map(Some)]
}

fn max_bytes() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 1 => (4..25u64).prop_map(Some)]
}

fn overflow() -> impl Strategy<Value = Overflow> {
    prop_oneof![Just(Overflow::RejectPublish), Just(Overflow::DropHead)]
}

/// A dead-letter policy naming any valid queue (the queue itself, or one
/// that does not exist yet, is refused).
fn dead_letter_policy(targets: &'static [&'static str]) -> impl Strategy<Value = Option<DeadLetterPolicy>> {
    let policy = (proptest::sample::select(targets), 0..4u32)
        .prop_map(|(queue, max_receives)| DeadLetterPolicy { queue: queue.to_string(), max_receives });
    prop_oneof![1 => Just(None), 2 => policy.prop_map(Some)]
}

fn redelivery_backoff() -> impl Strategy<Value = Option<Backoff>> {
    // Factors whose fractions stay small for the model's exact arithmetic.
    let backoff = (100..1_000u64, 0..4_000u64, proptest::sample::select(vec![1000u32, 1500, 2000, 3000, 10_000]))
        .prop_map(|(min_ms, extra, factor_milli)| Backoff { min_ms, max_ms: min_ms + extra, factor_milli });
    prop_oneof![2 => Just(None), 1 => backoff.prop_map(Some)]
}

fn valid_config(targets: &'static [&'static str]) -> impl Strategy<Value = QueueConfig> {
    (
        (visibility_timeout_config(), dedup_window(), retention(), queue_ttl(), queue_delay()),
        (max_messages(), max_bytes(), overflow(), dead_letter_policy(targets), redelivery_backoff()),
        (prop::bool::weighted(0.4), prop::bool::weighted(0.3)),
    )
        .prop_map(
            |(
                (visibility_timeout_ms, dedup_window_ms, retention_ms, message_ttl_ms, delay_ms),
                (max_messages, max_bytes, overflow, dead_letter, redelivery_backoff),
                (fifo, content_based_dedup),
            )| QueueConfig {
                visibility_timeout_ms,
                dedup_window_ms,
                retention_ms,
                message_ttl_ms,
                delay_ms,
                max_messages,
                max_bytes,
                overflow,
                dead_letter,
                redelivery_backoff,
                fifo,
                content_based_dedup,
            },
        )
}

/// A configuration that is now and then invalid in one attribute.
fn any_config() -> impl Strategy<Value = QueueConfig> {
    let spoil = prop_oneof![
        12 => Just(0u8),
        1 => 1..=9u8,
    ];
    (valid_config(&["a", "b", "c"]), spoil).prop_map(|(mut c, spoil)| {
        match spoil {
            1 => c.visibility_timeout_ms = limits::VISIBILITY_TIMEOUT_MS_MAX + 1,
            2 => c.dedup_window_ms = limits::DEDUP_WINDOW_MS_MAX + 1,
            3 => c.retention_ms = limits::RETENTION_MS_MIN - 1,
            4 => c.message_ttl_ms = Some(0),
            5 => c.delay_ms = limits::DELAY_MS_MAX + 1,
            6 => c.max_messages = Some(0),
            7 => c.dead_letter = Some(DeadLetterPolicy { queue: "not valid!".into(), max_receives: 1 }),
            8 => c.redelivery_backoff = Some(Backoff { min_ms: 10, max_ms: 5, factor_milli: 2000 }),
            9 => c.retention_ms = 14 * DAY + 1,
            _ => {}
        }
        c
    })
}

fn config_update() -> impl Strategy<Value = QueueConfigUpdate> {
    fn maybe<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
        prop_oneof![3 => Just(None), 1 => s.prop_map(Some)]
    }
    (
        (maybe(visibility_timeout_config()), maybe(dedup_window()), maybe(retention()), maybe(queue_ttl())),
        (maybe(queue_delay()), maybe(max_messages()), maybe(max_bytes()), maybe(overflow())),
        (maybe(dead_letter_policy(&["a", "b", "c"])), maybe(redelivery_backoff()), maybe(any::<bool>())),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(
                (visibility_timeout_ms, dedup_window_ms, retention_ms, message_ttl_ms),
                (delay_ms, max_messages, max_bytes, overflow),
                (dead_letter, redelivery_backoff, content_based_dedup),
                spoil,
            )| QueueConfigUpdate {
                visibility_timeout_ms,
                dedup_window_ms,
                retention_ms: if spoil { Some(1) } else { retention_ms },
                message_ttl_ms,
                delay_ms,
                max_messages,
                max_bytes,
                overflow,
                dead_letter,
                redelivery_backoff,
                content_based_dedup,
            },
        )
}

/// A message, mostly valid for a FIFO queue and for a standard one, now and
/// then with one invalid attribute.
fn new_message() -> impl Strategy<Value = NewMessage> {
    let id = prop_oneof![
        5 => Just(None),
        5 => (0..4u8).prop_map(|i| Some(format!("m{i}"))),
        // Equal to a body below: an id never deduplicates against a body.
        1 => Just(Some("x".to_string())),
    ];
    let body = prop_oneof![
        3 => proptest::sample::select(vec!["", "x", "y", "xy"]).prop_map(|b: &str| Bytes::from(b)),
        2 => proptest::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from),
    ];
    let delay = prop_oneof![
        10 => Just(None),
        1 => Just(Some(0u64)),
        2 => (300..3_000u64).prop_map(Some),
    ];
    let ttl = prop_oneof![
        7 => Just(None),
        3 => (500..20_000u64).prop_map(Some),
    ];
    let group = prop_oneof![
        1 => Just(None),
        8 => (0..2u8).prop_map(|g| Some(format!("g{g}"))),
    ];
    let priority = prop_oneof![7 => Just(0u8), 3 => 0..=9u8];
    let attributes = prop_oneof![
        7 => Just(BTreeMap::new()),
        2 => proptest::collection::btree_map(
            proptest::sample::select(vec!["k", "trace.id", "a-b"]).prop_map(String::from),
            prop_oneof![
                (0..4usize).prop_map(|n| AttributeValue::String("v".repeat(n))),
                (0..4usize).prop_map(|n| AttributeValue::Binary(Bytes::from(vec![7u8; n]))),
            ],
            1..3,
        ),
    ];
    let spoil = prop_oneof![20 => Just(0u8), 1 => 1..=8u8];
    ((id, prop::bool::weighted(0.2), body), (delay, ttl, group, priority, attributes), spoil).prop_map(
        |((id, id_generated, body), (delay_ms, ttl_ms, group, priority, attributes), spoil)| {
            let mut m = NewMessage { id, id_generated, body, delay_ms, ttl_ms, group, priority, attributes };
            match spoil {
                1 => m.id = Some("has space".into()),
                2 => m.id = Some("x".repeat(limits::MESSAGE_ID_BYTES_MAX + 1)),
                3 => m.delay_ms = Some(limits::DELAY_MS_MAX + 1),
                4 => m.ttl_ms = Some(0),
                5 => m.group = Some(String::new()),
                6 => m.priority = limits::PRIORITY_MAX + 1,
                7 => m.attributes = (0..11).map(|i| (format!("k{i}"), AttributeValue::String(String::new()))).collect(),
                8 => m.attributes = [("bad name".to_string(), AttributeValue::String("v".into()))].into(),
                _ => {}
            }
            m
        },
    )
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
        config: QueueConfig,
    },
    SetQueue {
        queue: usize,
        update: QueueConfigUpdate,
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
        delay_ms: u64,
        dead_letter: bool,
    },
    ChangeVisibility {
        queue: usize,
        receipts: Vec<ReceiptPick>,
        visibility_timeout_ms: u64,
    },
    Redrive {
        queue: usize,
        to: Option<usize>,
        max_messages: u32,
    },
    Tick,
    /// Replace the real state by a postcard round trip of itself.
    Snapshot,
    /// Several commands in one entry (`Command::Batch`); a snapshot inside
    /// is left out, a batch inside is proposed as it is (and fails).
    Batch(Vec<Op>),
}

#[derive(Clone, Debug)]
enum Clock {
    Same,
    Forward(u64),
    /// A request whose now_ms is behind the state's clock.
    Back(u64),
    /// Just before, at or just after the next moment something becomes due
    /// (a timeout, delay, backoff, expiry or dedup window end), where
    /// off-by-one errors live.
    NextEvent(i8),
}

#[derive(Clone, Debug)]
struct Step {
    clock: Clock,
    op: Op,
}

fn receipt_pick() -> impl Strategy<Value = ReceiptPick> {
    prop_oneof![
        10 => (0..4usize).prop_map(ReceiptPick::Recent),
        3 => any::<usize>().prop_map(ReceiptPick::Any),
        1 => (prop::bool::weighted(0.2), 0..8u64, 0..4u32)
            .prop_map(|(next_queue, seq, receive_count)| ReceiptPick::Forged { next_queue, seq, receive_count }),
    ]
}

fn receipts() -> impl Strategy<Value = Vec<ReceiptPick>> {
    prop_oneof![
        12 => proptest::collection::vec(receipt_pick(), 1..5),
        1 => Just(Vec::new()),
    ]
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
        2 => (queue_slot(), any_config()).prop_map(|(queue, config)| Op::Create { queue, config }),
        2 => (queue_slot(), config_update()).prop_map(|(queue, update)| Op::SetQueue { queue, update }),
        1 => queue_slot().prop_map(|queue| Op::Delete { queue }),
        1 => queue_slot().prop_map(|queue| Op::Purge { queue }),
        10 => (queue_slot(), prop_oneof![12 => proptest::collection::vec(new_message(), 1..5), 1 => Just(Vec::new())])
            .prop_map(|(queue, messages)| Op::Send { queue, messages }),
        12 => (
            queue_slot(),
            prop_oneof![12 => 0..5u32, 1 => Just(limits::RECEIVE_MESSAGES_MAX), 1 => Just(limits::RECEIVE_MESSAGES_MAX + 1)],
            prop_oneof![1 => Just(None), 1 => visibility_timeout().prop_map(Some)],
        )
            .prop_map(|(queue, max_messages, visibility_timeout_ms)| Op::Receive {
                queue,
                max_messages,
                visibility_timeout_ms
            }),
        4 => (queue_slot(), receipts()).prop_map(|(queue, receipts)| Op::Ack { queue, receipts }),
        4 => (
            queue_slot(),
            receipts(),
            prop_oneof![4 => Just(0u64), 2 => 1..3_000u64, 1 => Just(limits::NACK_DELAY_MS_MAX + 1)],
            prop::bool::weighted(0.3),
        )
            .prop_map(|(queue, receipts, delay_ms, dead_letter)| Op::Nack { queue, receipts, delay_ms, dead_letter }),
        3 => (queue_slot(), receipts(), visibility_timeout()).prop_map(|(queue, receipts, visibility_timeout_ms)| {
            Op::ChangeVisibility { queue, receipts, visibility_timeout_ms }
        }),
        2 => (
            queue_slot(),
            prop_oneof![3 => Just(None), 2 => queue_slot().prop_map(Some)],
            prop_oneof![1 => Just(0u32), 4 => 1..3u32, 1 => Just(limits::REDRIVE_MESSAGES_MAX + 1)],
        )
            .prop_map(|(queue, to, max_messages)| Op::Redrive { queue, to, max_messages }),
        2 => Just(Op::Tick),
        1 => Just(Op::Snapshot),
    ]
}

/// A single command, or now and then a batch of them (rarely with a batch
/// inside).
fn op_or_batch() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        3 => proptest::collection::vec(op(), 0..8).prop_map(Op::Batch),
        1 => (proptest::collection::vec(op(), 0..3), proptest::collection::vec(op(), 0..3)).prop_map(|(mut a, b)| {
            a.push(Op::Batch(b));
            Op::Batch(a)
        }),
    ]
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        4 => Just(Clock::Same),
        6 => (1..2_000u64).prop_map(Clock::Forward),
        2 => (2_000..40_000u64).prop_map(Clock::Forward),
        1 => (40_000..400_000u64).prop_map(Clock::Forward),
        2 => (1..5_000u64).prop_map(Clock::Back),
        4 => (-1..=1i8).prop_map(Clock::NextEvent),
    ]
}

/// The configurations of "c", "b" and "a", created in that order before the
/// steps (so that each may name the ones before as dead-letter queue), and
/// the steps.
fn steps() -> impl Strategy<Value = ([QueueConfig; 3], Vec<Step>)> {
    let step = (clock(), op_or_batch()).prop_map(|(clock, op)| Step { clock, op });
    let setup = (valid_config(&["a"]), valid_config(&["c"]), valid_config(&["b", "c"])).prop_map(|(mut c, b, a)| {
        // "c" names "a", which does not exist yet: mostly no dead-letter queue.
        c.dead_letter = None;
        [c, b, a]
    });
    (setup, proptest::collection::vec(step, 1..50))
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

    /// The next moment after now at which something becomes due.
    fn next_event(&self) -> u64 {
        let now = self.model.now;
        let mut events = Vec::new();
        for q in &self.model.queues {
            for m in &q.messages {
                events.push(q.expiry(m));
                match m.state {
                    St::InFlight { deadline, .. } => {
                        events.push(deadline);
                        if let Some(b) = &q.config.redelivery_backoff {
                            events.push(deadline + backoff(b, m.receive_count));
                        }
                    }
                    St::Delayed { until } => events.push(until),
                    St::Ready => {}
                }
            }
            events.extend(q.dedup.iter().map(|&(_, _, until)| until));
        }
        events.into_iter().filter(|&at| at > now).min().unwrap_or(now + 1)
    }

    fn request(&mut self, step: &Step) -> Option<Request> {
        let now_ms = match step.clock {
            Clock::Same => self.last_now,
            Clock::Forward(ms) => self.model.now + ms,
            Clock::Back(ms) => self.model.now.saturating_sub(ms),
            Clock::NextEvent(offset) => self.next_event().saturating_add_signed(offset.into()),
        };
        self.last_now = now_ms;
        let command = self.command_of(&step.op)?;
        Some(Request { now_ms, command })
    }

    /// The command of an operation (none for a snapshot). Receipts are
    /// resolved against what was delivered before the step.
    fn command_of(&self, op: &Op) -> Option<Command> {
        let name = |queue: usize| NAMES[queue].to_string();
        let receipts = |queue: usize, picks: &[ReceiptPick]| {
            picks.iter().map(|p| self.resolve(NAMES[queue], p)).collect::<Vec<_>>()
        };
        let command = match op {
            Op::Create { queue, config } => Command::CreateQueue { name: name(*queue), config: config.clone() },
            Op::SetQueue { queue, update } => Command::SetQueue { name: name(*queue), update: update.clone() },
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
            Op::Nack { queue, receipts: picks, delay_ms, dead_letter } => Command::Nack {
                queue: name(*queue),
                receipts: receipts(*queue, picks),
                delay_ms: *delay_ms,
                dead_letter: *dead_letter,
            },
            Op::ChangeVisibility { queue, receipts: picks, visibility_timeout_ms } => Command::ChangeVisibility {
                queue: name(*queue),
                receipts: receipts(*queue, picks),
                visibility_timeout_ms: *visibility_timeout_ms,
            },
            Op::Redrive { queue, to, max_messages } => {
                Command::Redrive { queue: name(*queue), to: to.map(name), max_messages: *max_messages }
            }
            Op::Tick => Command::Tick,
            Op::Snapshot => return None,
            Op::Batch(ops) => Command::Batch(ops.iter().filter_map(|op| self.command_of(op)).collect()),
        };
        Some(command)
    }

    /// Applies one step; `label` names it in failure messages.
    fn step(&mut self, label: &str, step: &Step) -> Result<(), TestCaseError> {
        let Some(request) = self.request(step) else {
            self.state = snapshot_round_trip(&self.state)?;
            return self.compare(&format!("{label}: snapshot round trip"));
        };
        let what = format!("{label}: {request:?}");
        let before = matches!(request.command, Command::Batch(_)).then(|| self.state.clone());
        let mut effects = Vec::new();
        let response = self.state.apply(request.clone(), &mut effects);
        let (expected, expected_effects) = self.model.apply(&request);
        prop_assert_eq!(normalise(response.clone()), expected, "response of {}", what);
        prop_assert_eq!(&effects, &expected_effects, "effects of {}", what);
        if let Some(before) = before {
            batch_matches_sequential(before, &request, &response, &effects, &self.state, &what)?;
        }
        let results = match &response {
            Ok(Outcome::Batch(results)) => results.iter().collect(),
            single => vec![single],
        };
        for result in results {
            if let Ok(Outcome::Received { deliveries, .. }) = result {
                self.delivered.extend(deliveries.iter().map(|d| d.receipt));
            }
        }
        self.store.carry_out(&effects)?;
        if matches!(request.command, Command::Tick) {
            prop_assert!(
                self.state.next_due_ms().is_none_or(|due| due > self.model.now),
                "nothing is due right after a Tick ({})",
                what
            );
        }
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
        for later in [0, 999, 1_000, 2_500, 30_000, 100_000] {
            let at = model.now + later;
            let expected: Vec<QueueInfo> = model.queues.iter().map(|q| q.info(at)).collect();
            prop_assert_eq!(state.list_queues(at), expected, "list_queues({}) after {}", at, what);
            for q in &model.queues {
                let visible = state.has_visible(&q.name, at);
                prop_assert_eq!(&visible, &Ok(q.has_visible(at)), "has_visible({}, {}) after {}", &q.name, at, what);
                if later <= 1_000 && model.would_deliver(&q.name, at) {
                    prop_assert_eq!(visible, Ok(true), "has_visible({}, {}) when a Receive delivers", &q.name, at);
                }
            }
        }
        for q in &model.queues {
            prop_assert_eq!(state.queue_id(&q.name), Some(q.id));
            prop_assert_eq!(state.next_visible_at(&q.name), q.next_visible_at(), "next_visible_at({})", &q.name);
        }
        let due = model.queues.iter().filter_map(ModelQueue::next_due).min();
        prop_assert_eq!(state.next_due_ms(), due, "next_due_ms after {}", what);
        for receipt in self.delivered.iter().rev().take(20) {
            let expected = model.queues.iter().find(|q| q.id == receipt.queue_id).is_some_and(|q| {
                q.messages.iter().any(|m| {
                    m.seq == receipt.seq.0
                        && m.receive_count == receipt.receive_count
                        && matches!(m.state, St::InFlight { deadline, .. } if deadline > model.now)
                })
            });
            let name = model.queues.iter().find(|q| q.id == receipt.queue_id).map_or("a", |q| &q.name);
            prop_assert_eq!(state.is_in_flight(name, receipt), expected, "is_in_flight({:?}) after {}", receipt, what);
        }
        let records = model.records();
        prop_assert_eq!(&self.store.records, &records, "stored records (from effects) after {}", what);
        let keys: Vec<(QueueId, Seq)> = records.keys().copied().collect();
        prop_assert_eq!(state.message_keys().collect::<Vec<_>>(), keys, "message_keys after {}", what);
        prop_assert_eq!(state.message_count(), records.len() as u64, "message_count after {}", what);
        Ok(())
    }
}

/// A batch, applied to the real state, does exactly what its commands do
/// applied one by one as entries of their own with the batch's time: same
/// results, same effects in the same order, same state after. A batch inside
/// fails alone and changes nothing.
fn batch_matches_sequential(
    mut state: State,
    request: &Request,
    response: &Response,
    effects: &[Effect],
    after: &State,
    what: &str,
) -> Result<(), TestCaseError> {
    let Command::Batch(commands) = &request.command else { unreachable!("called for batches") };
    let mut sequential_effects = Vec::new();
    let mut results = Vec::new();
    // The entry's time moves the clock even when nothing in it applies (an
    // empty batch, or only batches inside); the model checks that part.
    let empty = state.apply(Request { now_ms: request.now_ms, command: Command::Batch(Vec::new()) }, &mut Vec::new());
    prop_assert_eq!(empty, Ok(Outcome::Batch(Vec::new())));
    for command in commands {
        if let Command::Batch(_) = command {
            results.push(Err(QueueError::InvalidArgument("a batch of commands cannot contain a batch".into())));
            continue;
        }
        let one = Request { now_ms: request.now_ms, command: command.clone() };
        results.push(state.apply(one, &mut sequential_effects));
    }
    prop_assert_eq!(response, &Ok(Outcome::Batch(results)), "batch results vs one by one, {}", what);
    prop_assert_eq!(effects, &sequential_effects[..], "batch effects vs one by one, {}", what);
    prop_assert_eq!(after, &state, "state after the batch vs one by one, {}", what);
    Ok(())
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

fn run_case(setup: &[QueueConfig; 3], steps: &[Step]) -> Result<(), TestCaseError> {
    let mut run = Run {
        state: State::new(),
        model: Model::default(),
        store: Store::default(),
        delivered: Vec::new(),
        last_now: 0,
    };
    // Most steps want the queues to exist; Delete and Create test the rest.
    for (queue, config) in [2, 1, 0].into_iter().zip(setup) {
        let create = Step { clock: Clock::Same, op: Op::Create { queue, config: config.clone() } };
        run.step(&format!("setup (create {})", NAMES[queue]), &create)?;
    }
    // Checkpoint captures taken along the way share the state's memory
    // copy-on-write: each must encode as the state did when it was taken,
    // however the state changed after it.
    let mut captures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if i % 5 == 2 {
            let bytes = postcard::to_stdvec(&run.state).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let captured = run.state.capture();
            prop_assert_eq!(postcard::to_stdvec(&captured).ok(), Some(bytes.clone()), "capture at steps[{}]", i);
            captures.push((i, captured, bytes));
        }
        run.step(&format!("steps[{i}]"), step)?;
    }
    snapshot_round_trip(&run.state)?;
    for (i, captured, bytes) in captures {
        prop_assert_eq!(postcard::to_stdvec(&captured).ok(), Some(bytes), "capture at steps[{}], at the end", i);
    }
    Ok(())
}

#[test]
fn backoff_reference_formula_matches() {
    // Proves Backoff::delay_ms equals the exact formula min(max, floor(min * factor^(n-1))) for the factors the model uses, including growth from 1 ms.
    for factor_milli in [1000, 1250, 1500, 2000, 2500, 3000, 10_000] {
        for min_ms in [1, 3, 7, 100, 999] {
            for max_ms in [min_ms, min_ms * 3 + 1, 100_000] {
                let b = Backoff { min_ms, max_ms, factor_milli };
                for n in 0..40 {
                    assert_eq!(b.delay_ms(n), backoff(&b, n), "{b:?} after delivery {n}");
                }
            }
        }
    }
}

#[test]
fn state_machine_matches_model() {
    // Proves that under random interleavings of every command, with random queue configurations and time moving both ways, the state machine answers, emits effects, stores and counts exactly as the reference model does.
    let config = Config::default();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT);
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => std::collections::hash_map::RandomState::new().hash_one("quorumq-model"),
    };
    // Replay is by seed, so no regression files are written into the tree.
    let config = Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..config };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps(), |(setup, steps)| run_case(&setup, &steps));
    if let Err(e) = result {
        panic!(
            "{e}\n\nRerun exactly this run (same cases, same shrinking) with:\n  \
             PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases} cargo test -p quorumq-raft-state-machine --test model\n"
        );
    }
}
