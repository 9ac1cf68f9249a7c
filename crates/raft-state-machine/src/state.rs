//! The queues and the function that applies commands to them.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use crate::limits;
use crate::types::*;

/// All queues of one Raft group. Holds only metadata: message bodies are
/// handed out as [`Effect::PutMessage`] and never kept here.
///
/// Time comes only from [`Request::now_ms`], made monotonic: a new leader
/// whose clock is behind the old one's cannot move time backwards.
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
    /// Every live message, by sequence number.
    messages: BTreeMap<u64, MessageMeta>,
    /// Visible messages in delivery order (FIFO by sequence number; a message
    /// made visible again returns to its original place).
    ready: BTreeSet<u64>,
    /// Delivered messages by the time their visibility timeout ends. Entries
    /// whose deadline has passed are moved to `ready` lazily, at the start of
    /// the next command on the queue, with that command's time.
    in_flight: BTreeSet<(u64, u64)>,
    dedup: BTreeMap<IdHash, DedupEntry>,
    dedup_expiry: BTreeSet<(u64, IdHash)>,
    counters: Counters,
}

/// 16 bytes of SHA-256 of a producer's message id: fixed size, and the same
/// on every node (unlike the std hasher, which is seeded at random).
type IdHash = [u8; 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MessageMeta {
    receive_count: u32,
    body_bytes: u32,
    sent_at_ms: u64,
    first_received_at_ms: u64,
    /// `Some(deadline)` while in flight.
    in_flight_until_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DedupEntry {
    seq: u64,
    expires_at_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    bytes: u64,
    sent_total: u64,
    acked_total: u64,
    received_total: u64,
    dedup_evicted_total: u64,
}

fn id_hash(id: &str) -> IdHash {
    let digest = Sha256::digest(id.as_bytes());
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

impl State {
    pub fn new() -> Self {
        State::default()
    }

    /// The state machine's clock: the largest `now_ms` applied so far.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Applies one command. Effects are appended to `effects`, in the order
    /// the node must carry them out.
    pub fn apply(&mut self, request: Request, effects: &mut Vec<Effect>) -> Response {
        self.now_ms = self.now_ms.max(request.now_ms);
        let now = self.now_ms;
        match request.command {
            Command::CreateQueue { name, config } => self.create_queue(name, config, now),
            Command::DeleteQueue { name } => {
                let queue = self.queues.remove(&name).ok_or(QueueError::QueueNotFound { name })?;
                effects.push(Effect::DeleteMessages { queue_id: queue.id, before: Seq(u64::MAX) });
                Ok(Outcome::QueueDeleted { messages_deleted: queue.messages.len() as u64 })
            }
            Command::PurgeQueue { name } => {
                let queue = self.queue_mut(&name)?;
                let messages_deleted = queue.messages.len() as u64;
                queue.messages.clear();
                queue.ready.clear();
                queue.in_flight.clear();
                queue.counters.bytes = 0;
                effects.push(Effect::DeleteMessages { queue_id: queue.id, before: Seq(queue.next_seq) });
                Ok(Outcome::QueuePurged { messages_deleted })
            }
            Command::Send { queue, messages } => {
                let q = self.queue_mut(&queue)?;
                q.expire(now);
                let results = q.send(messages, now, effects)?;
                if results.iter().any(|r| matches!(r, Ok(Sent { duplicate: false, .. }))) {
                    effects.push(Effect::MessagesAvailable { queue });
                }
                Ok(Outcome::Sent { queue_id: q.id, results })
            }
            Command::Receive { queue, max_messages, visibility_timeout_ms } => {
                let q = self.queue_mut(&queue)?;
                q.expire(now);
                let deliveries = q.receive(max_messages, visibility_timeout_ms, now)?;
                Ok(Outcome::Received { queue_id: q.id, deliveries })
            }
            Command::Ack { queue, receipts } => {
                let q = self.queue_mut(&queue)?;
                check_receipt_batch(&receipts)?;
                q.expire(now);
                let results = receipts.iter().map(|r| q.ack(&queue, r, effects)).collect();
                Ok(Outcome::Receipts(results))
            }
            Command::Nack { queue, receipts } => {
                let q = self.queue_mut(&queue)?;
                check_receipt_batch(&receipts)?;
                q.expire(now);
                let results: Vec<_> = receipts.iter().map(|r| q.nack(&queue, r)).collect();
                if results.iter().any(|r| matches!(r, Ok(true))) {
                    effects.push(Effect::MessagesAvailable { queue: queue.clone() });
                }
                Ok(Outcome::Receipts(results.into_iter().map(|r| r.map(|_| ())).collect()))
            }
            Command::ChangeVisibility { queue, receipts, visibility_timeout_ms } => {
                validate_visibility_timeout(visibility_timeout_ms)?;
                let q = self.queue_mut(&queue)?;
                check_receipt_batch(&receipts)?;
                q.expire(now);
                let results: Vec<_> =
                    receipts.iter().map(|r| q.change_visibility(&queue, r, visibility_timeout_ms, now)).collect();
                if results.iter().any(|r| matches!(r, Ok(true))) {
                    effects.push(Effect::MessagesAvailable { queue: queue.clone() });
                }
                Ok(Outcome::Receipts(results.into_iter().map(|r| r.map(|_| ())).collect()))
            }
        }
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
        if self.queues.len() >= limits::QUEUES_MAX {
            return Err(QueueError::TooManyQueues { max: limits::QUEUES_MAX });
        }
        self.next_queue_id += 1;
        let queue = Queue {
            id: QueueId(self.next_queue_id),
            config,
            created_at_ms: now,
            next_seq: 1,
            messages: BTreeMap::new(),
            ready: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            dedup: BTreeMap::new(),
            dedup_expiry: BTreeSet::new(),
            counters: Counters::default(),
        };
        let info = queue.info(&name, now);
        self.queues.insert(name, queue);
        Ok(Outcome::QueueCreated { queue: info, created: true })
    }

    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, QueueError> {
        self.queues.get_mut(name).ok_or_else(|| QueueError::QueueNotFound { name: name.to_string() })
    }

    /// A queue's configuration and counters as they are at `now_ms` (a
    /// read-only view: in-flight messages whose timeout has passed count as
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

    /// Whether a Receive at `now_ms` would return a message. Lets the leader
    /// skip proposing a Receive that would find nothing.
    pub fn has_visible(&self, name: &str, now_ms: u64) -> Result<bool, QueueError> {
        let q = self.queues.get(name).ok_or_else(|| QueueError::QueueNotFound { name: name.to_string() })?;
        Ok(!q.ready.is_empty() || q.in_flight.first().is_some_and(|&(deadline, _)| deadline <= now_ms))
    }

    /// When the next in-flight message of the queue becomes visible again.
    pub fn next_visible_at(&self, name: &str) -> Option<u64> {
        self.queues.get(name).and_then(|q| q.in_flight.first().map(|&(deadline, _)| deadline))
    }

    /// Every stored message, for building a snapshot: `(queue id, seq)` in
    /// key order.
    pub fn message_keys(&self) -> impl Iterator<Item = (QueueId, Seq)> + '_ {
        let mut queues: Vec<&Queue> = self.queues.values().collect();
        queues.sort_by_key(|q| q.id);
        queues.into_iter().flat_map(|q| q.messages.keys().map(move |&seq| (q.id, Seq(seq))))
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
            // Ids are never reused, so receipts of a deleted queue cannot
            // touch a new one.
            if q.id.0 == 0 || q.id.0 > self.next_queue_id || !ids.insert(q.id) {
                return Err(format!("queue {name}: id {} reused or outside 1..={}", q.id.0, self.next_queue_id));
            }
            q.check_invariants().map_err(|e| format!("queue {name}: {e}"))?;
        }
        Ok(())
    }
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
    fn info(&self, name: &str, now_ms: u64) -> QueueInfo {
        let expired = self.in_flight.range(..=(now_ms, u64::MAX)).count() as u64;
        QueueInfo {
            name: name.to_string(),
            id: self.id,
            config: self.config.clone(),
            created_at_ms: self.created_at_ms,
            stats: QueueStats {
                ready: self.ready.len() as u64 + expired,
                in_flight: self.in_flight.len() as u64 - expired,
                bytes: self.counters.bytes,
                sent_total: self.counters.sent_total,
                acked_total: self.counters.acked_total,
                received_total: self.counters.received_total,
                dedup_evicted_total: self.counters.dedup_evicted_total,
                oldest_sent_at_ms: self.messages.first_key_value().map_or(0, |(_, m)| m.sent_at_ms),
            },
        }
    }

    /// Makes in-flight messages whose visibility timeout ended by `now`
    /// visible again.
    fn expire(&mut self, now: u64) {
        while let Some(&(deadline, seq)) = self.in_flight.first() {
            if deadline > now {
                break;
            }
            self.in_flight.pop_first();
            let meta = self.messages.get_mut(&seq).expect("in-flight message exists");
            assert_eq!(meta.in_flight_until_ms, Some(deadline), "in-flight index agrees with message");
            meta.in_flight_until_ms = None;
            self.ready.insert(seq);
        }
    }

    fn prune_dedup(&mut self, now: u64) {
        while let Some(&(expires_at_ms, hash)) = self.dedup_expiry.first() {
            if expires_at_ms > now {
                break;
            }
            self.dedup_expiry.pop_first();
            self.dedup.remove(&hash);
        }
    }

    fn send(
        &mut self,
        messages: Vec<NewMessage>,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<Vec<Result<Sent, QueueError>>, QueueError> {
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
        let batch_bytes: usize = messages.iter().map(|m| m.body.len()).sum();
        if batch_bytes > limits::SEND_BATCH_BYTES_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "{batch_bytes} bytes in one send, more than the limit of {} bytes",
                limits::SEND_BATCH_BYTES_MAX
            )));
        }
        self.prune_dedup(now);
        let results = messages.into_iter().map(|m| self.send_one(m, now, effects)).collect();
        Ok(results)
    }

    fn send_one(&mut self, message: NewMessage, now: u64, effects: &mut Vec<Effect>) -> Result<Sent, QueueError> {
        if message.body.len() > limits::MESSAGE_BYTES_HARD_MAX {
            return Err(QueueError::MessageTooLarge {
                bytes: message.body.len(),
                bytes_max: limits::MESSAGE_BYTES_HARD_MAX,
            });
        }
        let hash = match &message.id {
            Some(id) => {
                validate_message_id(id)?;
                let hash = id_hash(id);
                if let Some(entry) = self.dedup.get(&hash) {
                    return Ok(Sent { seq: Seq(entry.seq), duplicate: true });
                }
                Some(hash)
            }
            None => None,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        // A window of 0 ms is empty: the id is remembered for no time at all,
        // so not even a second copy in the same batch is a duplicate. (Were
        // it recorded, it would deduplicate within its own batch but not
        // against a later batch at the same instant, which prunes it first.)
        if let Some(hash) = hash.filter(|_| self.config.dedup_window_ms > 0) {
            let expires_at_ms = now.saturating_add(self.config.dedup_window_ms);
            self.dedup.insert(hash, DedupEntry { seq, expires_at_ms });
            self.dedup_expiry.insert((expires_at_ms, hash));
            if self.dedup.len() > limits::DEDUP_ENTRIES_PER_QUEUE_MAX {
                let (_, oldest) = self.dedup_expiry.pop_first().expect("dedup index is not empty");
                self.dedup.remove(&oldest);
                self.counters.dedup_evicted_total += 1;
            }
        }
        let body_bytes = message.body.len();
        self.messages.insert(
            seq,
            MessageMeta {
                receive_count: 0,
                body_bytes: body_bytes as u32,
                sent_at_ms: now,
                first_received_at_ms: 0,
                in_flight_until_ms: None,
            },
        );
        self.ready.insert(seq);
        self.counters.bytes += body_bytes as u64;
        self.counters.sent_total += 1;
        effects.push(Effect::PutMessage {
            queue_id: self.id,
            seq: Seq(seq),
            record: MessageRecord { id: message.id, sent_at_ms: now, body: message.body },
        });
        Ok(Sent { seq: Seq(seq), duplicate: false })
    }

    fn receive(
        &mut self,
        max_messages: u32,
        visibility_timeout_ms: Option<u64>,
        now: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max_messages > limits::RECEIVE_MESSAGES_MAX {
            return Err(QueueError::InvalidArgument(format!(
                "cannot receive {max_messages} messages at once; the limit is {}",
                limits::RECEIVE_MESSAGES_MAX
            )));
        }
        let timeout = visibility_timeout_ms.unwrap_or(self.config.visibility_timeout_ms);
        validate_visibility_timeout(timeout)?;
        let deadline = now.saturating_add(timeout);
        let max = max_messages.max(1) as usize;
        let mut deliveries = Vec::with_capacity(max.min(self.ready.len()));
        while deliveries.len() < max {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            let meta = self.messages.get_mut(&seq).expect("ready message exists");
            assert!(meta.in_flight_until_ms.is_none(), "a ready message is not in flight");
            // Test the count, not the time: 0 is a valid time for a first
            // delivery, so it cannot double as "never received".
            if meta.receive_count == 0 {
                meta.first_received_at_ms = now;
            }
            meta.receive_count = meta.receive_count.saturating_add(1);
            meta.in_flight_until_ms = Some(deadline);
            self.in_flight.insert((deadline, seq));
            self.counters.received_total += 1;
            deliveries.push(Delivery {
                receipt: Receipt { queue_id: self.id, seq: Seq(seq), receive_count: meta.receive_count },
                sent_at_ms: meta.sent_at_ms,
                first_received_at_ms: meta.first_received_at_ms,
                visible_again_at_ms: deadline,
            });
        }
        Ok(deliveries)
    }

    /// Finds the message a receipt names. `Ok(None)` when the message was
    /// already deleted (acked, purged): acking it again is harmless.
    fn check_receipt(&self, queue: &str, receipt: &Receipt) -> Result<Option<MessageMeta>, QueueError> {
        if receipt.queue_id != self.id {
            return Err(QueueError::ReceiptOfOtherQueue { queue: queue.to_string() });
        }
        if receipt.seq.0 == 0 || receipt.seq.0 >= self.next_seq || receipt.receive_count == 0 {
            return Err(QueueError::UnknownReceipt);
        }
        match self.messages.get(&receipt.seq.0) {
            None => Ok(None),
            Some(meta) if meta.receive_count == receipt.receive_count => Ok(Some(*meta)),
            Some(meta) if meta.receive_count > receipt.receive_count => Err(QueueError::StaleReceipt {
                receipt_count: receipt.receive_count,
                current_count: meta.receive_count,
            }),
            Some(_) => Err(QueueError::UnknownReceipt),
        }
    }

    fn ack(&mut self, queue: &str, receipt: &Receipt, effects: &mut Vec<Effect>) -> Result<(), QueueError> {
        let Some(meta) = self.check_receipt(queue, receipt)? else {
            return Ok(());
        };
        let seq = receipt.seq.0;
        match meta.in_flight_until_ms {
            Some(deadline) => assert!(self.in_flight.remove(&(deadline, seq)), "in-flight index has the message"),
            None => assert!(self.ready.remove(&seq), "ready index has the message"),
        }
        self.messages.remove(&seq);
        self.counters.bytes -= meta.body_bytes as u64;
        self.counters.acked_total += 1;
        effects.push(Effect::DeleteMessage { queue_id: self.id, seq: Seq(seq) });
        Ok(())
    }

    /// Returns whether a message became visible.
    fn nack(&mut self, queue: &str, receipt: &Receipt) -> Result<bool, QueueError> {
        let Some(meta) = self.check_receipt(queue, receipt)? else {
            return Ok(false);
        };
        let Some(deadline) = meta.in_flight_until_ms else {
            return Ok(false);
        };
        self.make_visible(receipt.seq.0, deadline);
        Ok(true)
    }

    /// Returns whether a message became visible.
    fn change_visibility(
        &mut self,
        queue: &str,
        receipt: &Receipt,
        timeout_ms: u64,
        now: u64,
    ) -> Result<bool, QueueError> {
        let meta = self
            .check_receipt(queue, receipt)?
            .ok_or_else(|| QueueError::InvalidArgument("the message has been deleted".into()))?;
        let Some(deadline) = meta.in_flight_until_ms else {
            return Err(QueueError::NotInFlight);
        };
        let seq = receipt.seq.0;
        if timeout_ms == 0 {
            self.make_visible(seq, deadline);
            return Ok(true);
        }
        let new_deadline = now.saturating_add(timeout_ms);
        assert!(self.in_flight.remove(&(deadline, seq)), "in-flight index has the message");
        self.in_flight.insert((new_deadline, seq));
        self.messages.get_mut(&seq).expect("message exists").in_flight_until_ms = Some(new_deadline);
        Ok(false)
    }

    fn make_visible(&mut self, seq: u64, deadline: u64) {
        assert!(self.in_flight.remove(&(deadline, seq)), "in-flight index has the message");
        self.messages.get_mut(&seq).expect("message exists").in_flight_until_ms = None;
        self.ready.insert(seq);
    }

    fn check_invariants(&self) -> Result<(), String> {
        if self.ready.len() + self.in_flight.len() != self.messages.len() {
            return Err(format!(
                "{} ready + {} in flight != {} messages",
                self.ready.len(),
                self.in_flight.len(),
                self.messages.len()
            ));
        }
        let mut bytes = 0u64;
        for (&seq, meta) in &self.messages {
            if seq == 0 || seq >= self.next_seq {
                return Err(format!("message {seq} outside 1..{}", self.next_seq));
            }
            bytes += meta.body_bytes as u64;
            match meta.in_flight_until_ms {
                Some(deadline) if !self.in_flight.contains(&(deadline, seq)) => {
                    return Err(format!("message {seq} in flight but not indexed"));
                }
                None if !self.ready.contains(&seq) => {
                    return Err(format!("message {seq} ready but not indexed"));
                }
                Some(_) if meta.receive_count == 0 => {
                    return Err(format!("message {seq} in flight but never received"));
                }
                _ => {}
            }
        }
        if bytes != self.counters.bytes {
            return Err(format!("bytes counter {} != {} stored", self.counters.bytes, bytes));
        }
        if self.dedup.len() != self.dedup_expiry.len() {
            return Err("dedup map and expiry index differ in size".into());
        }
        for (hash, entry) in &self.dedup {
            if !self.dedup_expiry.contains(&(entry.expires_at_ms, *hash)) {
                return Err(format!("dedup entry of message {} missing from the expiry index", entry.seq));
            }
            if entry.seq == 0 || entry.seq >= self.next_seq {
                return Err(format!("dedup entry names message {} outside 1..{}", entry.seq, self.next_seq));
            }
        }
        Ok(())
    }
}
