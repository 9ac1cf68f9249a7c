//! Unit tests of the queue state machine: one test per behaviour, error path
//! and limit, each driving `State::apply` the way the node does.

use bytes::Bytes;
use quorumq_raft_state_machine::limits;
use quorumq_raft_state_machine::*;

/// A state machine plus the effects of the last command applied.
struct Harness {
    state: State,
    effects: Vec<Effect>,
}

impl Harness {
    fn new() -> Self {
        Harness { state: State::new(), effects: Vec::new() }
    }

    /// A state with one queue, "q", created at time 0 with `config`.
    fn with_queue(config: QueueConfig) -> Self {
        let mut h = Harness::new();
        h.apply(0, create("q", config)).expect("create q");
        h
    }

    /// Applies one command, keeping only its effects.
    fn apply(&mut self, now_ms: u64, command: Command) -> Response {
        self.effects.clear();
        let response = self.state.apply(Request { now_ms, command }, &mut self.effects);
        if let Err(e) = self.state.check_invariants() {
            panic!("invariants broken after a command: {e}");
        }
        response
    }

    fn send(&mut self, now_ms: u64, queue: &str, messages: Vec<NewMessage>) -> Vec<Result<Sent, QueueError>> {
        match self.apply(now_ms, send_cmd(queue, messages)) {
            Ok(Outcome::Sent { results, .. }) => results,
            other => panic!("send failed: {other:?}"),
        }
    }

    /// Sends one message without an id and returns its seq.
    fn send_one(&mut self, now_ms: u64, body: &str) -> Seq {
        match self.send(now_ms, "q", vec![msg(None, body)]).as_slice() {
            [Ok(Sent { seq, duplicate: false })] => *seq,
            other => panic!("send failed: {other:?}"),
        }
    }

    fn receive(&mut self, now_ms: u64, max: u32, visibility_timeout_ms: Option<u64>) -> Vec<Delivery> {
        match self.apply(now_ms, receive_cmd("q", max, visibility_timeout_ms)) {
            Ok(Outcome::Received { deliveries, .. }) => deliveries,
            other => panic!("receive failed: {other:?}"),
        }
    }

    fn receipts(&mut self, now_ms: u64, command: Command) -> Vec<Result<(), QueueError>> {
        match self.apply(now_ms, command) {
            Ok(Outcome::Receipts(results)) => results,
            other => panic!("receipt command failed: {other:?}"),
        }
    }

    fn stats(&self, now_ms: u64) -> QueueStats {
        self.state.queue_info("q", now_ms).expect("queue q exists").stats
    }
}

fn create(name: &str, config: QueueConfig) -> Command {
    Command::CreateQueue { name: name.into(), config }
}

fn msg(id: Option<&str>, body: &str) -> NewMessage {
    NewMessage { id: id.map(String::from), body: Bytes::copy_from_slice(body.as_bytes()), ..NewMessage::default() }
}

fn send_cmd(queue: &str, messages: Vec<NewMessage>) -> Command {
    Command::Send { queue: queue.into(), messages }
}

fn receive_cmd(queue: &str, max_messages: u32, visibility_timeout_ms: Option<u64>) -> Command {
    Command::Receive { queue: queue.into(), max_messages, visibility_timeout_ms }
}

fn ack(receipts: Vec<Receipt>) -> Command {
    Command::Ack { queue: "q".into(), receipts }
}

fn nack(receipts: Vec<Receipt>) -> Command {
    Command::Nack { queue: "q".into(), receipts, delay_ms: 0, dead_letter: false }
}

fn change_visibility(receipts: Vec<Receipt>, visibility_timeout_ms: u64) -> Command {
    Command::ChangeVisibility { queue: "q".into(), receipts, visibility_timeout_ms }
}

fn config(visibility_timeout_ms: u64, dedup_window_ms: u64) -> QueueConfig {
    QueueConfig { visibility_timeout_ms, dedup_window_ms, ..QueueConfig::default() }
}

fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.receipt.seq.0).collect()
}

fn is_invalid_argument<T: std::fmt::Debug>(r: &Result<T, QueueError>) -> bool {
    matches!(r, Err(QueueError::InvalidArgument(_)))
}

/// The record a Send without attributes, group or priority stores.
fn record(id: Option<&str>, sent_at_ms: u64, body: &str) -> MessageRecord {
    MessageRecord {
        id: id.map(String::from),
        sent_at_ms,
        body: Bytes::copy_from_slice(body.as_bytes()),
        attributes: Default::default(),
        group: None,
        priority: 0,
        dead_letter: None,
    }
}

fn available(queue: &str) -> Effect {
    Effect::MessagesAvailable { queue: queue.into() }
}

// ---------------------------------------------------------------- queues

#[test]
fn create_queue_returns_its_info_and_ids_count_up() {
    // Proves CreateQueue answers created=true with the config, time and a fresh id, and emits no effects.
    let mut h = Harness::new();
    let Ok(Outcome::QueueCreated { queue, created }) = h.apply(7, create("jobs", config(1_000, 2_000))) else {
        panic!("create failed");
    };
    assert!(created);
    assert_eq!(queue.name, "jobs");
    assert_eq!(queue.id, QueueId(1));
    assert_eq!(queue.config, config(1_000, 2_000));
    assert_eq!(queue.created_at_ms, 7);
    assert_eq!(queue.stats, QueueStats::default());
    assert!(h.effects.is_empty());
    let Ok(Outcome::QueueCreated { queue, .. }) = h.apply(8, create("other", QueueConfig::default())) else {
        panic!("create failed");
    };
    assert_eq!(queue.id, QueueId(2));
    assert_eq!(h.state.queue_id("jobs"), Some(QueueId(1)));
    let names: Vec<String> = h.state.list_queues(8).into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["jobs", "other"]);
}

#[test]
fn create_queue_with_same_config_is_idempotent() {
    // Proves creating an existing queue with the same config succeeds with created=false and the current info.
    let mut h = Harness::with_queue(config(1_000, 2_000));
    h.send_one(5, "x");
    let Ok(Outcome::QueueCreated { queue, created }) = h.apply(10, create("q", config(1_000, 2_000))) else {
        panic!("second create failed");
    };
    assert!(!created);
    assert_eq!(queue.id, QueueId(1));
    assert_eq!(queue.created_at_ms, 0);
    assert_eq!(queue.stats.ready, 1);
    assert_eq!(h.state.list_queues(10).len(), 1);
}

#[test]
fn create_queue_with_other_config_is_queue_exists() {
    // Proves creating an existing queue with a different config fails with QueueExists and changes nothing.
    let mut h = Harness::with_queue(config(1_000, 2_000));
    let err = h.apply(1, create("q", config(1_000, 3_000))).unwrap_err();
    assert_eq!(err, QueueError::QueueExists { name: "q".into() });
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(h.state.queue_info("q", 1).unwrap().config, config(1_000, 2_000));
}

#[test]
fn queue_names_are_validated() {
    // Proves names must be 1 to 80 characters of [A-Za-z0-9_-].
    let mut h = Harness::new();
    let long_ok = "a".repeat(limits::QUEUE_NAME_BYTES_MAX);
    for good in ["a", "Az09_-", long_ok.as_str()] {
        assert!(h.apply(0, create(good, QueueConfig::default())).is_ok(), "{good:?}");
    }
    let too_long = "a".repeat(limits::QUEUE_NAME_BYTES_MAX + 1);
    for bad in ["", "has space", "dot.name", "slash/name", "é", "tab\t", too_long.as_str()] {
        let err = h.apply(0, create(bad, QueueConfig::default())).unwrap_err();
        assert!(matches!(err, QueueError::InvalidQueueName { .. }), "{bad:?}: {err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(h.state.list_queues(0).len(), 3);
}

#[test]
fn invalid_queue_name_error_is_truncated() {
    // Proves a huge invalid name is not echoed in full in the error.
    let mut h = Harness::new();
    let huge = "x ".repeat(1_000);
    let Err(QueueError::InvalidQueueName { name }) = h.apply(0, create(&huge, QueueConfig::default())) else {
        panic!("expected InvalidQueueName");
    };
    assert_eq!(name.chars().count(), 100);
}

#[test]
fn queue_config_limits_are_enforced() {
    // Proves a visibility timeout over 12 h or a dedup window over 1 h is rejected, and the maxima are accepted.
    let mut h = Harness::new();
    let max = config(limits::VISIBILITY_TIMEOUT_MS_MAX, limits::DEDUP_WINDOW_MS_MAX);
    assert!(h.apply(0, create("max", max)).is_ok());
    assert!(h.apply(0, create("zero", config(0, 0))).is_ok());
    let vt = config(limits::VISIBILITY_TIMEOUT_MS_MAX + 1, 0);
    assert!(is_invalid_argument(&h.apply(0, create("vt", vt))));
    let dedup = config(0, limits::DEDUP_WINDOW_MS_MAX + 1);
    assert!(is_invalid_argument(&h.apply(0, create("dedup", dedup))));
    assert_eq!(h.state.queue_id("vt"), None);
    assert_eq!(h.state.queue_id("dedup"), None);
}

#[test]
fn queue_count_is_limited() {
    // Proves at most QUEUES_MAX queues exist, and re-creating an existing one still works at the cap.
    let mut h = Harness::new();
    for i in 0..limits::QUEUES_MAX {
        h.state
            .apply(Request { now_ms: 0, command: create(&format!("q{i}"), QueueConfig::default()) }, &mut h.effects)
            .expect("create below the cap");
    }
    let err = h.apply(0, create("one-more", QueueConfig::default())).unwrap_err();
    assert_eq!(err, QueueError::TooManyQueues { max: limits::QUEUES_MAX });
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(matches!(
        h.apply(0, create("q0", QueueConfig::default())),
        Ok(Outcome::QueueCreated { created: false, .. })
    ));
    assert!(h.apply(0, Command::DeleteQueue { name: "q0".into() }).is_ok());
    assert!(h.apply(0, create("one-more", QueueConfig::default())).is_ok());
}

#[test]
fn commands_on_a_missing_queue_are_queue_not_found() {
    // Proves every queue command on an unknown queue fails with QueueNotFound and no effects.
    let mut h = Harness::new();
    let receipt = Receipt { queue_id: QueueId(1), seq: Seq(1), receive_count: 1 };
    let commands = vec![
        Command::DeleteQueue { name: "nope".into() },
        Command::PurgeQueue { name: "nope".into() },
        send_cmd("nope", vec![msg(None, "x")]),
        receive_cmd("nope", 1, None),
        Command::Ack { queue: "nope".into(), receipts: vec![receipt] },
        Command::Nack { queue: "nope".into(), receipts: vec![receipt], delay_ms: 0, dead_letter: false },
        Command::ChangeVisibility { queue: "nope".into(), receipts: vec![receipt], visibility_timeout_ms: 1 },
        Command::SetQueue { name: "nope".into(), update: QueueConfigUpdate::default() },
        Command::Redrive { queue: "nope".into(), to: None, max_messages: 0 },
    ];
    for command in commands {
        let err = h.apply(0, command.clone()).unwrap_err();
        assert_eq!(err, QueueError::QueueNotFound { name: "nope".into() }, "{command:?}");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(h.effects.is_empty());
    }
    assert_eq!(h.state.queue_info("nope", 0), None);
    assert!(h.state.has_visible("nope", 0).is_err());
    assert_eq!(h.state.next_visible_at("nope"), None);
}

#[test]
fn delete_queue_deletes_its_messages_and_a_new_queue_gets_a_new_id() {
    // Proves DeleteQueue emits one unbounded DeleteMessages effect, counts messages, and old receipts cannot touch a re-created queue.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(1, "a");
    h.send_one(1, "b");
    let old = h.receive(2, 1, None)[0].receipt;
    assert_eq!(
        h.apply(3, Command::DeleteQueue { name: "q".into() }),
        Ok(Outcome::QueueDeleted { messages_deleted: 2 })
    );
    assert_eq!(h.effects, [Effect::DeleteMessages { queue_id: QueueId(1), before: Seq(u64::MAX) }]);
    assert_eq!(h.state.queue_id("q"), None);
    assert_eq!(h.state.message_count(), 0);

    h.apply(4, create("q", QueueConfig::default())).unwrap();
    assert_eq!(h.state.queue_id("q"), Some(QueueId(2)));
    assert_eq!(h.send_one(5, "c"), Seq(1));
    let results = h.receipts(6, ack(vec![old]));
    assert_eq!(results, [Err(QueueError::ReceiptOfOtherQueue { queue: "q".into() })]);
    assert!(h.effects.is_empty());
    assert_eq!(h.stats(6).ready, 1);
}

#[test]
fn purge_deletes_every_message_and_keeps_the_queue() {
    // Proves PurgeQueue empties the queue (ready and in flight), emits DeleteMessages below the next seq, and seqs are not reused.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(1, "a");
    h.send_one(1, "bb");
    h.send_one(1, "ccc");
    let receipt = h.receive(2, 1, None)[0].receipt;
    assert_eq!(h.apply(3, Command::PurgeQueue { name: "q".into() }), Ok(Outcome::QueuePurged { messages_deleted: 3 }));
    // Bounded by the next seq, so that a late deletion cannot touch later sends.
    assert_eq!(h.effects, [Effect::DeleteMessages { queue_id: QueueId(1), before: Seq(4) }]);
    let stats = h.stats(3);
    assert_eq!((stats.ready, stats.in_flight, stats.bytes, stats.oldest_sent_at_ms), (0, 0, 0, 0));
    assert_eq!(stats.sent_total, 3);
    assert_eq!(h.state.message_count(), 0);
    assert!(h.receive(4, 10, None).is_empty());
    // The purged message's receipt acks as already deleted.
    assert_eq!(h.receipts(5, ack(vec![receipt])), [Ok(())]);
    assert!(h.effects.is_empty());
    assert_eq!(h.send_one(6, "d"), Seq(4));
    // Purging an empty queue still succeeds.
    h.apply(7, Command::PurgeQueue { name: "q".into() }).unwrap();
    h.apply(8, Command::PurgeQueue { name: "q".into() }).unwrap();
    assert_eq!(h.effects, [Effect::DeleteMessages { queue_id: QueueId(1), before: Seq(5) }]);
}

// ---------------------------------------------------------------- send

#[test]
fn send_enqueues_with_increasing_seqs_and_put_effects() {
    // Proves Send assigns seqs 1, 2, … and emits one PutMessage per message, then one MessagesAvailable.
    let mut h = Harness::with_queue(QueueConfig::default());
    let results = h.send(10, "q", vec![msg(Some("id-1"), "hello"), msg(None, "")]);
    assert_eq!(results, [Ok(Sent { seq: Seq(1), duplicate: false }), Ok(Sent { seq: Seq(2), duplicate: false })]);
    assert_eq!(
        h.effects,
        [
            Effect::PutMessage { queue_id: QueueId(1), seq: Seq(1), record: record(Some("id-1"), 10, "hello") },
            Effect::PutMessage { queue_id: QueueId(1), seq: Seq(2), record: record(None, 10, "") },
            available("q"),
        ]
    );
    let stats = h.stats(10);
    assert_eq!((stats.ready, stats.bytes, stats.sent_total, stats.oldest_sent_at_ms), (2, 5, 2, 10));
    assert_eq!(h.state.message_keys().collect::<Vec<_>>(), [(QueueId(1), Seq(1)), (QueueId(1), Seq(2))]);
    assert_eq!(message_id(QueueId(1), Seq(2), None), "q1-2");
    assert_eq!(message_id(QueueId(1), Seq(1), Some("id-1")), "id-1");
}

#[test]
fn send_of_an_empty_batch_is_rejected() {
    // Proves a Send without messages fails as a whole with InvalidArgument.
    let mut h = Harness::with_queue(QueueConfig::default());
    assert!(is_invalid_argument(&h.apply(0, send_cmd("q", vec![]))));
    assert!(h.effects.is_empty());
}

#[test]
fn send_batch_entry_count_is_limited() {
    // Proves SEND_BATCH_ENTRIES_MAX messages are accepted in one Send and one more is rejected as a whole.
    let mut h = Harness::with_queue(QueueConfig::default());
    let batch = |n| (0..n).map(|_| msg(None, "x")).collect::<Vec<_>>();
    assert!(is_invalid_argument(&h.apply(0, send_cmd("q", batch(limits::SEND_BATCH_ENTRIES_MAX + 1)))));
    assert!(h.effects.is_empty());
    assert_eq!(h.stats(0).ready, 0);
    let results = h.send(0, "q", batch(limits::SEND_BATCH_ENTRIES_MAX));
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(h.stats(0).ready, limits::SEND_BATCH_ENTRIES_MAX as u64);
}

#[test]
fn send_batch_bytes_are_limited() {
    // Proves a Send whose bodies total more than SEND_BATCH_BYTES_MAX is rejected as a whole; exactly the limit is accepted.
    let mut h = Harness::with_queue(QueueConfig::default());
    let quarter = limits::SEND_BATCH_BYTES_MAX / 4;
    assert!(quarter <= limits::MESSAGE_BYTES_HARD_MAX);
    let body = |n| NewMessage::new(vec![0u8; n]);
    let full = vec![body(quarter); 4];
    let mut over = full.clone();
    over.push(body(limits::SEND_BATCH_BYTES_MAX - 4 * quarter + 1));
    assert!(is_invalid_argument(&h.apply(0, send_cmd("q", over))));
    assert!(h.effects.is_empty());
    assert_eq!(h.stats(0).ready, 0);
    let mut exact = full;
    exact.push(body(limits::SEND_BATCH_BYTES_MAX - 4 * quarter));
    let results = h.send(0, "q", exact);
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(h.stats(0).bytes, limits::SEND_BATCH_BYTES_MAX as u64);
}

#[test]
fn too_large_message_is_rejected() {
    // Proves a body over MESSAGE_BYTES_HARD_MAX is never enqueued: MessageTooLarge for its entry alone when the batch cap allows such a body, else the whole Send fails.
    let mut h = Harness::with_queue(QueueConfig::default());
    let big = NewMessage { id: Some("big".into()), ..NewMessage::new(vec![0u8; limits::MESSAGE_BYTES_HARD_MAX + 1]) };
    let response = h.apply(0, send_cmd("q", vec![big, msg(None, "ok")]));
    if limits::MESSAGE_BYTES_HARD_MAX + 3 <= limits::SEND_BATCH_BYTES_MAX {
        let err = QueueError::MessageTooLarge {
            bytes: limits::MESSAGE_BYTES_HARD_MAX + 1,
            bytes_max: limits::MESSAGE_BYTES_HARD_MAX,
        };
        let Ok(Outcome::Sent { results, .. }) = response else {
            panic!("send failed: {response:?}");
        };
        assert_eq!(results, [Err(err), Ok(Sent { seq: Seq(1), duplicate: false })]);
        assert_eq!(h.effects.iter().filter(|e| matches!(e, Effect::PutMessage { .. })).count(), 1);
    } else {
        // The batch cap is at most the message cap, so the batch check
        // catches the body first and MessageTooLarge is unreachable here.
        assert!(is_invalid_argument(&response), "{response:?}");
        assert!(h.effects.is_empty());
    }
    assert_eq!(h.stats(0).bytes, h.stats(0).ready * 2);
    // The failed message's id was not remembered: a later valid send with it is new.
    assert!(matches!(h.send(1, "q", vec![msg(Some("big"), "small")]).as_slice(), [Ok(Sent { duplicate: false, .. })]));
    // A body of exactly the largest size both caps allow is accepted.
    let max = limits::MESSAGE_BYTES_HARD_MAX.min(limits::SEND_BATCH_BYTES_MAX);
    let results = h.send(2, "q", vec![NewMessage::new(vec![0u8; max])]);
    assert!(matches!(results.as_slice(), [Ok(_)]), "{results:?}");
    assert_eq!(QueueError::MessageTooLarge { bytes: 1, bytes_max: 0 }.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn invalid_message_ids_fail_alone() {
    // Proves ids must be 1 to 128 printable ASCII characters without spaces, per entry.
    let mut h = Harness::with_queue(QueueConfig::default());
    let long_ok = "i".repeat(limits::MESSAGE_ID_BYTES_MAX);
    let too_long = "i".repeat(limits::MESSAGE_ID_BYTES_MAX + 1);
    let bad = ["", "has space", "tab\t", "nul\0", "é", "\u{7f}", too_long.as_str()];
    let mut batch: Vec<NewMessage> = bad.iter().map(|id| msg(Some(id), "x")).collect();
    batch.push(msg(Some(&long_ok), "x"));
    batch.push(msg(Some("~!\"#"), "x"));
    let results = h.send(0, "q", batch);
    for (id, result) in bad.iter().zip(&results) {
        assert!(is_invalid_argument(result), "{id:?}: {result:?}");
    }
    assert_eq!(
        results[bad.len()..],
        [Ok(Sent { seq: Seq(1), duplicate: false }), Ok(Sent { seq: Seq(2), duplicate: false })]
    );
    assert_eq!(h.stats(0).ready, 2);
}

#[test]
fn send_with_only_failures_wakes_nobody() {
    // Proves MessagesAvailable is emitted only when a message was actually enqueued.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send(0, "q", vec![msg(Some(""), "x")]);
    assert!(h.effects.is_empty());
    h.send(0, "q", vec![msg(Some("a"), "x")]);
    assert_eq!(h.effects.last(), Some(&available("q")));
    h.send(1, "q", vec![msg(Some("a"), "x")]);
    assert!(h.effects.is_empty());
}

// ---------------------------------------------------------------- dedup

#[test]
fn duplicate_send_within_window_returns_first_seq() {
    // Proves a second send with the same id within the window enqueues nothing and returns the first seq.
    let mut h = Harness::with_queue(config(30_000, 10_000));
    h.send_one(0, "other");
    let first = h.send(100, "q", vec![msg(Some("a"), "one")]);
    assert_eq!(first, [Ok(Sent { seq: Seq(2), duplicate: false })]);
    let again = h.send(200, "q", vec![msg(Some("a"), "two")]);
    assert_eq!(again, [Ok(Sent { seq: Seq(2), duplicate: true })]);
    assert!(h.effects.is_empty());
    let stats = h.stats(200);
    assert_eq!((stats.ready, stats.sent_total), (2, 2));
    // The id stays remembered after the message is acked.
    let deliveries = h.receive(300, 10, None);
    h.receipts(300, ack(deliveries.iter().map(|d| d.receipt).collect()));
    let after_ack = h.send(400, "q", vec![msg(Some("a"), "three")]);
    assert_eq!(after_ack, [Ok(Sent { seq: Seq(2), duplicate: true })]);
}

#[test]
fn duplicate_within_one_batch_is_detected() {
    // Proves two messages with the same id in one Send enqueue once; the second reports the first's seq.
    let mut h = Harness::with_queue(QueueConfig::default());
    let results = h.send(0, "q", vec![msg(Some("a"), "1"), msg(Some("b"), "2"), msg(Some("a"), "3")]);
    assert_eq!(
        results,
        [
            Ok(Sent { seq: Seq(1), duplicate: false }),
            Ok(Sent { seq: Seq(2), duplicate: false }),
            Ok(Sent { seq: Seq(1), duplicate: true }),
        ]
    );
    assert_eq!(h.effects.iter().filter(|e| matches!(e, Effect::PutMessage { .. })).count(), 2);
}

#[test]
fn dedup_window_expires() {
    // Proves an id is a duplicate until sent_at + window - 1 and is new again from sent_at + window.
    let mut h = Harness::with_queue(config(30_000, 10_000));
    h.send(1_000, "q", vec![msg(Some("a"), "1")]);
    assert_eq!(h.send(10_999, "q", vec![msg(Some("a"), "2")]), [Ok(Sent { seq: Seq(1), duplicate: true })]);
    assert_eq!(h.send(11_000, "q", vec![msg(Some("a"), "3")]), [Ok(Sent { seq: Seq(2), duplicate: false })]);
    // The new send opens a new window, counted from its own time.
    assert_eq!(h.send(20_999, "q", vec![msg(Some("a"), "4")]), [Ok(Sent { seq: Seq(2), duplicate: true })]);
    assert_eq!(h.send(21_000, "q", vec![msg(Some("a"), "5")]), [Ok(Sent { seq: Seq(3), duplicate: false })]);
}

#[test]
fn dedup_window_of_zero_deduplicates_nothing() {
    // Proves a queue with a 0 ms window never reports duplicates, not even within one batch at one instant.
    let mut h = Harness::with_queue(config(30_000, 0));
    let results = h.send(5, "q", vec![msg(Some("a"), "1"), msg(Some("a"), "2")]);
    assert_eq!(results, [Ok(Sent { seq: Seq(1), duplicate: false }), Ok(Sent { seq: Seq(2), duplicate: false })]);
    assert_eq!(h.send(5, "q", vec![msg(Some("a"), "3")]), [Ok(Sent { seq: Seq(3), duplicate: false })]);
}

#[test]
fn dedup_is_per_queue() {
    // Proves the same id in two queues names two messages.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.apply(0, create("r", QueueConfig::default())).unwrap();
    h.send(1, "q", vec![msg(Some("a"), "1")]);
    assert_eq!(h.send(1, "r", vec![msg(Some("a"), "1")]), [Ok(Sent { seq: Seq(1), duplicate: false })]);
}

// ---------------------------------------------------------------- time

#[test]
fn time_never_moves_backwards() {
    // Proves a request with an older now_ms is applied at the latest time seen (sent_at, deadlines, dedup).
    let mut h = Harness::with_queue(config(1_000, 5_000));
    h.send(10_000, "q", vec![msg(Some("a"), "1")]);
    assert_eq!(h.state.now_ms(), 10_000);
    h.send(3_000, "q", vec![msg(None, "2")]);
    assert_eq!(h.state.now_ms(), 10_000);
    let Effect::PutMessage { record, .. } = &h.effects[0] else {
        panic!("expected a put");
    };
    assert_eq!(record.sent_at_ms, 10_000);
    let deliveries = h.receive(0, 1, None);
    assert_eq!(deliveries[0].visible_again_at_ms, 11_000);
    assert_eq!(deliveries[0].first_received_at_ms, 10_000);
    // Still within the window, whatever the request says.
    assert_eq!(h.send(14_999, "q", vec![msg(Some("a"), "3")])[0], Ok(Sent { seq: Seq(1), duplicate: true }));
    assert_eq!(h.send(1, "q", vec![msg(Some("a"), "3")])[0], Ok(Sent { seq: Seq(1), duplicate: true }));
    // A failing command advances the clock too: the clock is the log's.
    h.apply(20_000, Command::DeleteQueue { name: "none".into() }).unwrap_err();
    assert_eq!(h.state.now_ms(), 20_000);
}

// ---------------------------------------------------------------- receive

#[test]
fn receive_delivers_in_fifo_order_up_to_max() {
    // Proves Receive returns the lowest seqs first, at most max_messages, with receipts and times.
    let mut h = Harness::with_queue(config(5_000, 0));
    for i in 0..5 {
        h.send_one(100 + i, "m");
    }
    let first = h.receive(200, 2, None);
    assert_eq!(seqs(&first), [1, 2]);
    assert_eq!(
        first[0],
        Delivery {
            receipt: Receipt { queue_id: QueueId(1), seq: Seq(1), receive_count: 1 },
            sent_at_ms: 100,
            first_received_at_ms: 200,
            visible_again_at_ms: 5_200,
            priority: 0,
        }
    );
    assert!(h.effects.is_empty());
    assert_eq!(seqs(&h.receive(201, 10, None)), [3, 4, 5]);
    assert!(h.receive(202, 10, None).is_empty());
    let stats = h.stats(202);
    assert_eq!((stats.ready, stats.in_flight, stats.received_total), (0, 5, 5));
}

#[test]
fn receive_of_zero_messages_means_one() {
    // Proves max_messages = 0 is taken as 1, as the proto documents.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    h.send_one(0, "b");
    assert_eq!(seqs(&h.receive(1, 0, None)), [1]);
}

#[test]
fn receive_max_is_limited() {
    // Proves RECEIVE_MESSAGES_MAX is accepted and one more is InvalidArgument, delivering nothing.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    assert!(is_invalid_argument(&h.apply(1, receive_cmd("q", limits::RECEIVE_MESSAGES_MAX + 1, None))));
    assert_eq!(h.stats(1).ready, 1);
    assert_eq!(h.receive(1, limits::RECEIVE_MESSAGES_MAX, None).len(), 1);
}

#[test]
fn receive_visibility_timeout_is_limited() {
    // Proves a Receive visibility timeout over 12 h is rejected and exactly 12 h is accepted.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    assert!(is_invalid_argument(&h.apply(1, receive_cmd("q", 1, Some(limits::VISIBILITY_TIMEOUT_MS_MAX + 1)))));
    assert_eq!(h.stats(1).in_flight, 0);
    let d = h.receive(1, 1, Some(limits::VISIBILITY_TIMEOUT_MS_MAX));
    assert_eq!(d[0].visible_again_at_ms, 1 + limits::VISIBILITY_TIMEOUT_MS_MAX);
}

#[test]
fn receive_uses_the_queue_timeout_unless_overridden() {
    // Proves the deadline is now + the queue's timeout, or now + the request's when given.
    let mut h = Harness::with_queue(config(7_000, 0));
    h.send_one(0, "a");
    h.send_one(0, "b");
    assert_eq!(h.receive(10, 1, None)[0].visible_again_at_ms, 7_010);
    assert_eq!(h.receive(10, 1, Some(3))[0].visible_again_at_ms, 13);
}

#[test]
fn in_flight_message_is_hidden_until_its_deadline() {
    // Proves an in-flight message is not delivered before its deadline and is delivered at exactly the deadline.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    h.receive(100, 1, None);
    assert!(h.receive(1_099, 1, None).is_empty());
    let again = h.receive(1_100, 1, None);
    assert_eq!(seqs(&again), [1]);
}

#[test]
fn redelivery_after_timeout_has_receive_count_two() {
    // Proves a timed-out message is delivered again with receive_count 2 and its first-receive time kept.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    let first = h.receive(100, 1, None);
    let second = h.receive(5_000, 1, None);
    assert_eq!(second[0].receipt.receive_count, 2);
    assert_eq!(second[0].receipt.seq, first[0].receipt.seq);
    assert_eq!(second[0].sent_at_ms, 0);
    assert_eq!(second[0].first_received_at_ms, 100);
    assert_eq!(second[0].visible_again_at_ms, 6_000);
    assert_eq!(h.stats(5_000).received_total, 2);
}

#[test]
fn first_received_time_survives_a_first_receive_at_time_zero() {
    // Proves first_received_at_ms is the time of the first delivery even when that time is 0.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    assert_eq!(h.receive(0, 1, None)[0].first_received_at_ms, 0);
    let second = h.receive(2_000, 1, None);
    assert_eq!(second[0].receipt.receive_count, 2);
    assert_eq!(second[0].first_received_at_ms, 0);
}

#[test]
fn redelivered_message_keeps_its_place() {
    // Proves a message that times out comes back before messages sent after it (FIFO by seq).
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    h.send_one(0, "b");
    h.send_one(0, "c");
    assert_eq!(seqs(&h.receive(10, 1, None)), [1]);
    assert_eq!(seqs(&h.receive(20, 1, Some(10_000))), [2]);
    assert_eq!(seqs(&h.receive(2_000, 10, None)), [1, 3]);
}

#[test]
fn receive_with_zero_timeout_leaves_message_visible() {
    // Proves a visibility timeout of 0 delivers the message and leaves it visible for the next Receive.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    h.send_one(0, "b");
    let first = h.receive(5, 10, Some(0));
    assert_eq!(seqs(&first), [1, 2]);
    assert_eq!(first[0].visible_again_at_ms, 5);
    let stats = h.stats(5);
    assert_eq!((stats.ready, stats.in_flight), (2, 0));
    assert!(h.state.has_visible("q", 5).unwrap());
    let again = h.receive(5, 1, None);
    assert_eq!(again[0].receipt.receive_count, 2);
    assert_eq!(seqs(&again), [1]);
}

#[test]
fn receive_from_an_empty_queue_returns_nothing() {
    // Proves Receive on an empty queue succeeds with no deliveries and no effects.
    let mut h = Harness::with_queue(QueueConfig::default());
    assert_eq!(
        h.apply(1, receive_cmd("q", 10, None)),
        Ok(Outcome::Received { queue_id: QueueId(1), deliveries: vec![] })
    );
    assert!(h.effects.is_empty());
}

// ---------------------------------------------------------------- receipts

#[test]
fn ack_deletes_the_message_once() {
    // Proves Ack deletes the message with one DeleteMessage effect, and acking again is an idempotent Ok.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "abc");
    h.send_one(0, "d");
    let receipt = h.receive(1, 1, None)[0].receipt;
    assert_eq!(h.receipts(2, ack(vec![receipt])), [Ok(())]);
    assert_eq!(h.effects, [Effect::DeleteMessage { queue_id: QueueId(1), seq: Seq(1) }]);
    let stats = h.stats(2);
    assert_eq!((stats.ready, stats.in_flight, stats.bytes, stats.acked_total), (1, 0, 1, 1));
    assert_eq!(h.receipts(3, ack(vec![receipt, receipt])), [Ok(()), Ok(())]);
    assert!(h.effects.is_empty());
    assert_eq!(h.stats(3).acked_total, 1);
}

#[test]
fn ack_after_timeout_but_before_redelivery_succeeds() {
    // Proves the latest receipt still deletes a message whose timeout passed but that was not delivered again.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    let receipt = h.receive(1, 1, None)[0].receipt;
    assert_eq!(h.stats(5_000).ready, 1);
    assert_eq!(h.receipts(5_000, ack(vec![receipt])), [Ok(())]);
    assert_eq!(h.state.message_count(), 0);
}

#[test]
fn stale_receipt_is_rejected_after_redelivery() {
    // Proves the receipt of an earlier delivery fails with StaleReceipt for Ack, Nack and ChangeVisibility.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    let old = h.receive(0, 1, None)[0].receipt;
    let new = h.receive(1_000, 1, None)[0].receipt;
    let stale = QueueError::StaleReceipt { receipt_count: 1, current_count: 2 };
    assert_eq!(stale.kind(), ErrorKind::FailedPrecondition);
    let stale = vec![Err(stale)];
    assert_eq!(h.receipts(1_001, ack(vec![old])), stale);
    assert_eq!(h.receipts(1_001, nack(vec![old])), stale);
    assert_eq!(h.receipts(1_001, change_visibility(vec![old], 5)), stale);
    assert!(h.effects.is_empty());
    assert_eq!(h.stats(1_001).in_flight, 1);
    assert_eq!(h.receipts(1_001, ack(vec![new])), [Ok(())]);
}

#[test]
fn receipts_never_issued_are_unknown() {
    // Proves receipts with seq 0, a seq not yet assigned, receive_count 0 or a count above the current are UnknownReceipt.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    h.send_one(0, "b");
    let issued = h.receive(1, 1, None)[0].receipt;
    let forged = [
        Receipt { seq: Seq(0), ..issued },
        Receipt { seq: Seq(3), ..issued },
        Receipt { receive_count: 0, ..issued },
        Receipt { receive_count: 2, ..issued },
        // Message 2 was never received.
        Receipt { seq: Seq(2), ..issued },
    ];
    for command in [ack(forged.to_vec()), nack(forged.to_vec()), change_visibility(forged.to_vec(), 10)] {
        let results = h.receipts(2, command);
        assert!(results.iter().all(|r| *r == Err(QueueError::UnknownReceipt)), "{results:?}");
        assert!(h.effects.is_empty());
    }
    assert_eq!(QueueError::UnknownReceipt.kind(), ErrorKind::InvalidArgument);
    assert_eq!(h.stats(2).in_flight, 1);
}

#[test]
fn receipt_of_another_queue_is_rejected() {
    // Proves a receipt issued by another queue fails with ReceiptOfOtherQueue naming the queue addressed.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.apply(0, create("r", QueueConfig::default())).unwrap();
    h.send(0, "r", vec![msg(None, "x")]);
    h.send_one(0, "y");
    let Ok(Outcome::Received { deliveries, .. }) = h.apply(1, receive_cmd("r", 1, None)) else {
        panic!("receive failed");
    };
    let theirs = deliveries[0].receipt;
    let err = vec![Err(QueueError::ReceiptOfOtherQueue { queue: "q".into() })];
    assert_eq!(h.receipts(2, ack(vec![theirs])), err);
    assert_eq!(h.receipts(2, nack(vec![theirs])), err);
    assert_eq!(h.receipts(2, change_visibility(vec![theirs], 0)), err);
    assert_eq!(h.state.queue_info("r", 2).unwrap().stats.in_flight, 1);
}

#[test]
fn receipt_batches_are_bounded() {
    // Proves Ack, Nack and ChangeVisibility reject empty batches and batches over RECEIPT_BATCH_ENTRIES_MAX, and accept the max.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    let receipt = h.receive(0, 1, None)[0].receipt;
    let max = vec![receipt; limits::RECEIPT_BATCH_ENTRIES_MAX];
    let over = vec![receipt; limits::RECEIPT_BATCH_ENTRIES_MAX + 1];
    for receipts in [vec![], over] {
        assert!(is_invalid_argument(&h.apply(1, ack(receipts.clone()))));
        assert!(is_invalid_argument(&h.apply(1, nack(receipts.clone()))));
        assert!(is_invalid_argument(&h.apply(1, change_visibility(receipts, 10))));
        assert!(h.effects.is_empty());
    }
    assert_eq!(h.stats(1).in_flight, 1);
    let results = h.receipts(1, change_visibility(max.clone(), 10));
    assert_eq!(results.len(), limits::RECEIPT_BATCH_ENTRIES_MAX);
    let results = h.receipts(1, ack(max));
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(h.effects.len(), 1);
}

#[test]
fn receipt_results_are_per_entry_in_request_order() {
    // Proves a batch mixing good and bad receipts answers each in order and acts on the good ones.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    h.send_one(0, "b");
    let d = h.receive(1, 2, None);
    let bad = Receipt { seq: Seq(99), ..d[0].receipt };
    let results = h.receipts(2, ack(vec![d[1].receipt, bad, d[0].receipt]));
    assert_eq!(results, [Ok(()), Err(QueueError::UnknownReceipt), Ok(())]);
    assert_eq!(
        h.effects,
        [
            Effect::DeleteMessage { queue_id: QueueId(1), seq: Seq(2) },
            Effect::DeleteMessage { queue_id: QueueId(1), seq: Seq(1) }
        ]
    );
}

#[test]
fn nack_makes_message_visible_now_in_its_place() {
    // Proves Nack makes an in-flight message ready at once, wakes long polls, and it is delivered before later messages.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    h.send_one(0, "b");
    let receipt = h.receive(1, 1, None)[0].receipt;
    assert_eq!(h.receipts(2, nack(vec![receipt])), [Ok(())]);
    assert_eq!(h.effects, [available("q")]);
    assert_eq!(h.stats(2).in_flight, 0);
    let again = h.receive(3, 10, None);
    assert_eq!(seqs(&again), [1, 2]);
    assert_eq!(again[0].receipt.receive_count, 2);
}

#[test]
fn nack_of_a_message_not_in_flight_is_a_quiet_ok() {
    // Proves Nack of an already nacked, timed-out or deleted message succeeds without effects.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    h.send_one(0, "b");
    let d = h.receive(1, 2, None);
    h.receipts(2, nack(vec![d[0].receipt]));
    assert_eq!(h.receipts(3, nack(vec![d[0].receipt])), [Ok(())]);
    assert!(h.effects.is_empty());
    h.receipts(3, ack(vec![d[0].receipt]));
    assert_eq!(h.receipts(4, nack(vec![d[0].receipt])), [Ok(())]);
    assert!(h.effects.is_empty());
    // d[1] timed out at 1_001. The only effect is the wake-up for that
    // timeout, which the command carries out on its way.
    assert_eq!(h.receipts(5_000, nack(vec![d[1].receipt])), [Ok(())]);
    assert_eq!(h.effects, [available("q")]);
    assert_eq!(h.receipts(5_001, nack(vec![d[1].receipt])), [Ok(())]);
    assert!(h.effects.is_empty());
}

#[test]
fn change_visibility_moves_the_deadline() {
    // Proves ChangeVisibility sets the deadline to now + timeout, both shorter and longer than before.
    let mut h = Harness::with_queue(config(10_000, 0));
    h.send_one(0, "a");
    let receipt = h.receive(0, 1, None)[0].receipt;
    assert_eq!(h.receipts(100, change_visibility(vec![receipt], 50)), [Ok(())]);
    assert!(h.effects.is_empty());
    assert_eq!(h.state.next_visible_at("q"), Some(150));
    assert!(h.receive(149, 1, None).is_empty());
    assert_eq!(h.receipts(149, change_visibility(vec![receipt], 20_000)), [Ok(())]);
    assert_eq!(h.state.next_visible_at("q"), Some(20_149));
    assert!(h.receive(10_000, 1, None).is_empty());
    let again = h.receive(20_149, 1, None);
    assert_eq!(again[0].receipt.receive_count, 2);
}

#[test]
fn change_visibility_to_zero_makes_message_visible() {
    // Proves ChangeVisibility with timeout 0 makes the message ready now and wakes long polls.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    let receipt = h.receive(0, 1, None)[0].receipt;
    assert_eq!(h.receipts(1, change_visibility(vec![receipt], 0)), [Ok(())]);
    assert_eq!(h.effects, [available("q")]);
    let stats = h.stats(1);
    assert_eq!((stats.ready, stats.in_flight), (1, 0));
    assert_eq!(h.state.next_visible_at("q"), None);
}

#[test]
fn change_visibility_of_a_message_not_in_flight_fails() {
    // Proves ChangeVisibility of a timed-out or nacked message is NotInFlight and of a deleted one is MessageDeleted.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    h.send_one(0, "b");
    h.send_one(0, "c");
    let d = h.receive(0, 3, None);
    h.receipts(900, change_visibility(vec![d[1].receipt], 10_000));
    h.receipts(900, nack(vec![d[2].receipt]));
    h.receipts(900, ack(vec![d[0].receipt]));
    let results = h.receipts(1_000, change_visibility(vec![d[1].receipt, d[2].receipt, d[0].receipt], 5));
    assert_eq!(results[0], Ok(()), "d1 was extended");
    assert_eq!(results[1], Err(QueueError::NotInFlight));
    assert_eq!(QueueError::NotInFlight.kind(), ErrorKind::FailedPrecondition);
    // A deleted message has its own error now, of the same class as NotInFlight.
    assert_eq!(results[2], Err(QueueError::MessageDeleted));
    assert_eq!(QueueError::MessageDeleted.kind(), ErrorKind::FailedPrecondition);
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "a");
    let r = h.receive(0, 1, None)[0].receipt;
    // Timed out exactly at its deadline.
    assert_eq!(h.receipts(1_000, change_visibility(vec![r], 5)), [Err(QueueError::NotInFlight)]);
}

#[test]
fn change_visibility_timeout_is_limited() {
    // Proves a ChangeVisibility timeout over 12 h fails the whole request; exactly 12 h is accepted.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    let receipt = h.receive(0, 1, None)[0].receipt;
    assert!(is_invalid_argument(&h.apply(0, change_visibility(vec![receipt], limits::VISIBILITY_TIMEOUT_MS_MAX + 1))));
    // At the time of the receive, 12 h from now is also 12 h from the receive
    // (the cap counted from the receive is tested below).
    assert_eq!(h.receipts(0, change_visibility(vec![receipt], limits::VISIBILITY_TIMEOUT_MS_MAX)), [Ok(())]);
    assert_eq!(h.state.next_visible_at("q"), Some(limits::VISIBILITY_TIMEOUT_MS_MAX));
}

// ---------------------------------------------------------------- stats

#[test]
fn stats_count_timed_out_messages_as_ready() {
    // Proves queue_info counts in-flight messages whose deadline passed as ready, before any command expires them.
    let mut h = Harness::with_queue(config(1_000, 0));
    h.send_one(0, "aa");
    h.send_one(10, "b");
    h.send_one(20, "c");
    h.receive(100, 1, None);
    h.receive(200, 1, Some(5_000));
    let at = |h: &Harness, now| {
        let s = h.stats(now);
        (s.ready, s.in_flight)
    };
    assert_eq!(at(&h, 200), (1, 2));
    assert_eq!(at(&h, 1_099), (1, 2));
    assert_eq!(at(&h, 1_100), (2, 1));
    assert_eq!(at(&h, 5_200), (3, 0));
    assert!(h.state.has_visible("q", 200).unwrap());
    let stats = h.stats(5_200);
    assert_eq!(
        stats,
        QueueStats {
            ready: 3,
            in_flight: 0,
            bytes: 4,
            sent_total: 3,
            acked_total: 0,
            received_total: 2,
            oldest_sent_at_ms: 0,
            ..QueueStats::default()
        }
    );
    assert_eq!(h.state.list_queues(1_100)[0].stats.ready, 2);
}

#[test]
fn has_visible_and_next_visible_at_follow_deadlines() {
    // Proves has_visible is true iff a Receive would deliver, and next_visible_at is the earliest deadline.
    let mut h = Harness::with_queue(config(1_000, 0));
    assert!(!h.state.has_visible("q", 0).unwrap());
    assert_eq!(h.state.next_visible_at("q"), None);
    h.send_one(0, "a");
    h.send_one(0, "b");
    assert!(h.state.has_visible("q", 0).unwrap());
    h.receive(0, 1, None);
    h.receive(0, 1, Some(500));
    assert!(!h.state.has_visible("q", 499).unwrap());
    assert_eq!(h.state.next_visible_at("q"), Some(500));
    assert!(h.state.has_visible("q", 500).unwrap());
    assert_eq!(seqs(&h.receive(500, 10, Some(5_000))), [2]);
    assert_eq!(h.state.next_visible_at("q"), Some(1_000));
}

#[test]
fn oldest_sent_at_follows_the_oldest_live_message() {
    // Proves oldest_sent_at_ms is the send time of the oldest message still held, and 0 when empty.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(10, "a");
    h.send_one(20, "b");
    assert_eq!(h.stats(20).oldest_sent_at_ms, 10);
    let d = h.receive(30, 1, None);
    h.receipts(30, ack(vec![d[0].receipt]));
    assert_eq!(h.stats(30).oldest_sent_at_ms, 20);
    let d = h.receive(30, 1, None);
    h.receipts(30, ack(vec![d[0].receipt]));
    assert_eq!(h.stats(30).oldest_sent_at_ms, 0);
}

// ---------------------------------------------------------------- snapshots

#[test]
fn snapshot_round_trips_with_postcard() {
    // Proves a State serialised with postcard reads back equal, passes check_invariants and behaves the same.
    let mut h = Harness::with_queue(config(1_000, 60_000));
    h.apply(0, create("r", QueueConfig::default())).unwrap();
    h.send(1, "q", vec![msg(Some("a"), "one"), msg(None, "two"), msg(Some("b"), "three")]);
    h.send(1, "r", vec![msg(Some("a"), "x")]);
    let d = h.receive(2, 1, None);
    h.receive(3, 1, Some(10));
    h.receipts(4, ack(vec![d[0].receipt]));
    h.apply(5, Command::DeleteQueue { name: "r".into() }).unwrap();
    h.apply(6, create("r", QueueConfig::default())).unwrap();

    let bytes = postcard::to_stdvec(&h.state).expect("serialise");
    let mut restored: State = postcard::from_bytes(&bytes).expect("deserialise");
    assert_eq!(restored, h.state);
    restored.check_invariants().expect("restored state is consistent");
    assert_eq!(restored.now_ms(), 6);
    assert_eq!(restored.message_keys().collect::<Vec<_>>(), h.state.message_keys().collect::<Vec<_>>());

    // Both copies give the same answers and effects from here on.
    let commands = vec![
        send_cmd("q", vec![msg(Some("a"), "dup"), msg(None, "new")]),
        receive_cmd("q", 10, None),
        create("r", QueueConfig::default()),
    ];
    for command in commands {
        let mut e1 = Vec::new();
        let mut e2 = Vec::new();
        let request = Request { now_ms: 50, command };
        assert_eq!(h.state.apply(request.clone(), &mut e1), restored.apply(request, &mut e2));
        assert_eq!(e1, e2);
    }
    assert_eq!(restored, h.state);
}

#[test]
fn request_display_names_the_command() {
    // Proves Request's Display shows the command, its queue and its time, for logs.
    let request = Request { now_ms: 9, command: send_cmd("q", vec![msg(None, "a")]) };
    assert_eq!(request.to_string(), "send(q, 1 messages)@9");
}

// ================================================================ queue semantics
//
// Retention, time to live, dead-lettering, overflow, delays, backoff, FIFO,
// content-based deduplication, priorities, attributes, SetQueue, Redrive and
// Tick.

impl Harness {
    fn create_at(&mut self, now_ms: u64, name: &str, config: QueueConfig) -> QueueId {
        match self.apply(now_ms, create(name, config)) {
            Ok(Outcome::QueueCreated { queue, created: true }) => queue.id,
            other => panic!("create {name} failed: {other:?}"),
        }
    }

    fn receive_from(
        &mut self,
        now_ms: u64,
        queue: &str,
        max: u32,
        visibility_timeout_ms: Option<u64>,
    ) -> Vec<Delivery> {
        match self.apply(now_ms, receive_cmd(queue, max, visibility_timeout_ms)) {
            Ok(Outcome::Received { deliveries, .. }) => deliveries,
            other => panic!("receive from {queue} failed: {other:?}"),
        }
    }

    fn stats_of(&self, queue: &str, now_ms: u64) -> QueueStats {
        self.state.queue_info(queue, now_ms).expect("queue exists").stats
    }

    fn tick(&mut self, now_ms: u64) {
        assert_eq!(self.apply(now_ms, Command::Tick), Ok(Outcome::None));
    }

    fn config_of(&self, queue: &str) -> QueueConfig {
        self.state.queue_info(queue, 0).expect("queue exists").config
    }
}

fn dead_letter_to(queue: &str, max_receives: u32) -> Option<DeadLetterPolicy> {
    Some(DeadLetterPolicy { queue: queue.into(), max_receives })
}

fn nack_on(queue: &str, receipts: Vec<Receipt>, delay_ms: u64, dead_letter: bool) -> Command {
    Command::Nack { queue: queue.into(), receipts, delay_ms, dead_letter }
}

fn ack_on(queue: &str, receipts: Vec<Receipt>) -> Command {
    Command::Ack { queue: queue.into(), receipts }
}

fn in_group(group: &str, body: &str) -> NewMessage {
    NewMessage { group: Some(group.into()), ..NewMessage::new(body.to_string()) }
}

fn moved(from: (u64, u64), to: (u64, u64), dead_letter: Option<DeadLetterInfo>) -> Effect {
    Effect::MoveMessage { from: (QueueId(from.0), Seq(from.1)), to: (QueueId(to.0), Seq(to.1)), dead_letter }
}

fn dead_lettered(reason: DeadLetterReason, source: &str, receive_count: u32, at_ms: u64) -> Option<DeadLetterInfo> {
    Some(DeadLetterInfo { reason, source_queue: source.into(), receive_count, at_ms })
}

fn deleted(queue_id: u64, seq: u64) -> Effect {
    Effect::DeleteMessage { queue_id: QueueId(queue_id), seq: Seq(seq) }
}

fn full(queue: &str, limit: &str) -> QueueError {
    QueueError::QueueFull { queue: queue.into(), limit: limit.into() }
}

fn sent(seq: u64) -> Result<Sent, QueueError> {
    Ok(Sent { seq: Seq(seq), duplicate: false })
}

fn duplicate_of(seq: u64) -> Result<Sent, QueueError> {
    Ok(Sent { seq: Seq(seq), duplicate: true })
}

fn receipts_of(deliveries: &[Delivery]) -> Vec<Receipt> {
    deliveries.iter().map(|d| d.receipt).collect()
}

// ---------------------------------------------------------------- config

#[test]
fn new_queue_attributes_are_validated() {
    // Proves retention outside 1 min..14 d, a TTL of 0 or over 14 d, a delay over 15 min, zero length limits, max receives over the limit and bad backoffs are refused, and the bounds are accepted.
    let mut h = Harness::new();
    let day = 24 * 60 * 60 * 1000;
    let good = [
        QueueConfig { retention_ms: limits::RETENTION_MS_MIN, ..QueueConfig::default() },
        QueueConfig { retention_ms: limits::RETENTION_MS_MAX, message_ttl_ms: Some(1), ..QueueConfig::default() },
        QueueConfig {
            message_ttl_ms: Some(limits::MESSAGE_TTL_MS_MAX),
            delay_ms: limits::DELAY_MS_MAX,
            ..QueueConfig::default()
        },
        QueueConfig {
            max_messages: Some(1),
            max_bytes: Some(1),
            overflow: Overflow::DropHead,
            ..QueueConfig::default()
        },
        QueueConfig {
            redelivery_backoff: Some(Backoff { min_ms: 1, max_ms: limits::BACKOFF_MS_MAX, factor_milli: 10_000 }),
            ..QueueConfig::default()
        },
    ];
    for (i, config) in good.into_iter().enumerate() {
        assert!(h.apply(0, create(&format!("good{i}"), config.clone())).is_ok(), "{config:?}");
    }
    let backoff = |min_ms, max_ms, factor_milli| Some(Backoff { min_ms, max_ms, factor_milli });
    let bad = [
        QueueConfig { retention_ms: limits::RETENTION_MS_MIN - 1, ..QueueConfig::default() },
        QueueConfig { retention_ms: 14 * day + 1, ..QueueConfig::default() },
        QueueConfig { message_ttl_ms: Some(0), ..QueueConfig::default() },
        QueueConfig { message_ttl_ms: Some(14 * day + 1), ..QueueConfig::default() },
        QueueConfig { delay_ms: limits::DELAY_MS_MAX + 1, ..QueueConfig::default() },
        QueueConfig { max_messages: Some(0), ..QueueConfig::default() },
        QueueConfig { max_bytes: Some(0), ..QueueConfig::default() },
        QueueConfig { dead_letter: dead_letter_to("good0", limits::MAX_RECEIVES_MAX + 1), ..QueueConfig::default() },
        QueueConfig { redelivery_backoff: backoff(0, 10, 2000), ..QueueConfig::default() },
        QueueConfig { redelivery_backoff: backoff(10, 9, 2000), ..QueueConfig::default() },
        QueueConfig { redelivery_backoff: backoff(10, limits::BACKOFF_MS_MAX + 1, 2000), ..QueueConfig::default() },
        QueueConfig { redelivery_backoff: backoff(10, 20, 999), ..QueueConfig::default() },
        QueueConfig { redelivery_backoff: backoff(10, 20, 10_001), ..QueueConfig::default() },
    ];
    for config in bad {
        assert!(is_invalid_argument(&h.apply(0, create("bad", config.clone()))), "{config:?}");
    }
    let bad_name = QueueConfig { dead_letter: dead_letter_to("bad name", 1), ..QueueConfig::default() };
    assert!(matches!(h.apply(0, create("bad", bad_name)), Err(QueueError::InvalidQueueName { .. })));
    assert_eq!(h.state.queue_id("bad"), None);
}

// ---------------------------------------------------------------- expiry

#[test]
fn retention_drops_expired_messages_without_a_dead_letter_queue() {
    // Proves a message is deleted exactly when its retention ends (counted expired and dropped), and only the expired one.
    let mut h = Harness::with_queue(QueueConfig { retention_ms: 60_000, ..QueueConfig::default() });
    h.send_one(0, "a");
    h.send_one(10, "b");
    assert_eq!(h.state.next_due_ms(), Some(60_000));
    h.tick(59_999);
    assert!(h.effects.is_empty());
    h.tick(60_000);
    assert_eq!(h.effects, [deleted(1, 1)]);
    let stats = h.stats(60_000);
    assert_eq!((stats.ready, stats.expired_total, stats.dropped_total, stats.dead_lettered_total), (1, 1, 1, 0));
    assert_eq!(stats.oldest_sent_at_ms, 10);
    assert_eq!(seqs(&h.receive(60_009, 10, None)), [2]);
    // In flight past its expiry: due when its visibility timeout ends.
    assert_eq!(h.state.next_due_ms(), Some(60_009 + limits::VISIBILITY_TIMEOUT_MS_DEFAULT));
}

#[test]
fn a_tick_forgets_the_ids_of_an_idle_queue_after_their_window() {
    // Proves an idle queue's remembered ids are due for a Tick a little after their window ends, the Tick forgets them (nothing is due afterwards and the id is no longer a duplicate), and the messages themselves are untouched.
    let mut h = Harness::with_queue(config(30_000, 60_000));
    assert_eq!(h.state.next_dedup_prune_ms(), None);
    assert_eq!(h.send(0, "q", vec![msg(Some("a"), "1")]), [Ok(Sent { seq: Seq(1), duplicate: false })]);
    assert_eq!(h.send(5, "q", vec![msg(Some("b"), "2")]), [Ok(Sent { seq: Seq(2), duplicate: false })]);
    assert_eq!(h.state.next_dedup_prune_ms(), Some(60_000 + limits::DEDUP_PRUNE_SLACK_MS));
    assert_eq!(h.state.remembered_ids(), 2);
    assert_eq!(h.state.next_due_ms(), Some(limits::RETENTION_MS_DEFAULT));
    h.tick(60_000 + limits::DEDUP_PRUNE_SLACK_MS);
    assert!(h.effects.is_empty());
    assert_eq!(h.state.next_dedup_prune_ms(), None, "both ids were forgotten by the one Tick");
    assert_eq!(h.state.remembered_ids(), 0);
    assert_eq!(h.stats(60_000 + limits::DEDUP_PRUNE_SLACK_MS).ready, 2);
    let at = 60_000 + limits::DEDUP_PRUNE_SLACK_MS + 1;
    assert_eq!(h.send(at, "q", vec![msg(Some("a"), "1")]), [Ok(Sent { seq: Seq(3), duplicate: false })]);
}

#[test]
fn queue_ttl_and_retention_whichever_is_shorter_wins() {
    // Proves a queue TTL shorter than the retention expires messages at the TTL, a longer one at the retention, and an expired message is never delivered.
    let mut h = Harness::with_queue(QueueConfig { message_ttl_ms: Some(5_000), ..QueueConfig::default() });
    h.send_one(100, "a");
    assert_eq!(h.state.next_due_ms(), Some(5_100));
    assert!(h.receive(5_100, 10, None).is_empty());
    assert_eq!(h.effects, [deleted(1, 1)]);
    let stats = h.stats(5_100);
    assert_eq!((stats.received_total, stats.expired_total, stats.dropped_total), (0, 1, 1));

    let long_ttl = QueueConfig { retention_ms: 60_000, message_ttl_ms: Some(120_000), ..QueueConfig::default() };
    let mut h = Harness::with_queue(long_ttl);
    h.send_one(0, "a");
    assert_eq!(h.state.next_due_ms(), Some(60_000));
}

#[test]
fn message_ttl_expires_that_message_alone() {
    // Proves a message's own TTL expires it (and not its neighbours), and the queue's shorter TTL wins over a longer own TTL.
    let mut h = Harness::with_queue(QueueConfig::default());
    let short = NewMessage { ttl_ms: Some(1_000), ..NewMessage::new("short") };
    h.send(0, "q", vec![short, msg(None, "long")]);
    assert_eq!(h.state.next_due_ms(), Some(1_000));
    assert_eq!(seqs(&h.receive(999, 1, Some(0))), [1], "alive until its TTL ends");
    assert_eq!(seqs(&h.receive(1_000, 10, None)), [2]);
    assert_eq!(h.effects[0], deleted(1, 1));
    assert_eq!(h.stats(1_000).expired_total, 1);

    let mut h = Harness::with_queue(QueueConfig { message_ttl_ms: Some(2_000), ..QueueConfig::default() });
    h.send(0, "q", vec![NewMessage { ttl_ms: Some(5_000), ..NewMessage::new("x") }]);
    assert_eq!(h.state.next_due_ms(), Some(2_000));
}

#[test]
fn expired_message_is_dead_lettered_with_a_fresh_retention_clock() {
    // Proves expiry moves a message to an existing dead-letter queue (MoveMessage with reason, source, count and time), where it keeps sent_at and gets a new retention.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig { retention_ms: 60_000, ..QueueConfig::default() });
    let policy = dead_letter_to("dlq", 0);
    h.create_at(0, "q", QueueConfig { retention_ms: 60_000, dead_letter: policy, ..QueueConfig::default() });
    h.send(5, "q", vec![msg(Some("m"), "body")]);
    h.tick(60_005);
    assert_eq!(
        h.effects,
        [moved((2, 1), (1, 1), dead_lettered(DeadLetterReason::Expired, "q", 0, 60_005)), available("dlq")]
    );
    let q = h.stats_of("q", 60_005);
    assert_eq!((q.ready, q.expired_total, q.dead_lettered_total, q.dropped_total), (0, 1, 1, 0));
    let dlq = h.stats_of("dlq", 60_005);
    assert_eq!((dlq.ready, dlq.sent_total, dlq.bytes, dlq.oldest_sent_at_ms), (1, 0, 4, 5));
    // Its retention in the dead-letter queue counts from its arrival.
    assert_eq!(h.state.next_due_ms(), Some(120_005));
    let d = h.receive_from(60_006, "dlq", 1, None);
    assert_eq!((d[0].sent_at_ms, d[0].receipt.seq), (5, Seq(1)));
}

#[test]
fn in_flight_message_expires_only_when_visible_again() {
    // Proves an in-flight message outlives its TTL until its visibility timeout ends (it can still be acked), and expires at that moment.
    let config = QueueConfig { message_ttl_ms: Some(1_000), visibility_timeout_ms: 5_000, ..QueueConfig::default() };
    let mut h = Harness::with_queue(config);
    h.send_one(0, "a");
    let d = h.receive(500, 1, None);
    assert_eq!(h.state.next_due_ms(), Some(5_500));
    h.tick(2_000);
    assert!(h.effects.is_empty());
    assert_eq!((h.stats(2_000).in_flight, h.stats(2_000).expired_total), (1, 0));
    assert_eq!(h.receipts(3_000, ack(receipts_of(&d))), [Ok(())]);
    assert_eq!(h.effects, [deleted(1, 1)]);
    assert_eq!((h.stats(3_000).acked_total, h.stats(3_000).expired_total), (1, 0));

    h.send_one(3_000, "b");
    h.receive(3_100, 1, None);
    assert_eq!(h.state.next_due_ms(), Some(8_100));
    h.tick(8_099);
    assert!(h.effects.is_empty());
    h.tick(8_100);
    // The timeout's wake-up comes along although the message expires at
    // once: harmless, a woken long poll finds nothing.
    assert_eq!(h.effects, [deleted(1, 2), available("q")]);
    assert_eq!(h.stats(8_100).expired_total, 1);
}

#[test]
fn tick_without_traffic_dead_letters_expired_messages_of_every_queue() {
    // Proves one Tick carries out due expiries in every queue (moves and drops), touches nothing else, and leaves nothing due.
    let mut h = Harness::new();
    assert_eq!(h.apply(0, Command::Tick), Ok(Outcome::None));
    assert!(h.effects.is_empty());
    h.create_at(0, "dlq", QueueConfig::default());
    let short = |dead_letter| QueueConfig { message_ttl_ms: Some(1_000), dead_letter, ..QueueConfig::default() };
    h.create_at(0, "a", short(dead_letter_to("dlq", 0)));
    h.create_at(0, "b", short(None));
    h.create_at(0, "c", QueueConfig::default());
    for queue in ["a", "b", "c"] {
        h.send(0, queue, vec![msg(None, queue)]);
    }
    assert_eq!(h.state.next_due_ms(), Some(1_000));
    h.tick(1_000);
    assert_eq!(
        h.effects,
        [
            moved((2, 1), (1, 1), dead_lettered(DeadLetterReason::Expired, "a", 0, 1_000)),
            available("dlq"),
            deleted(3, 1)
        ]
    );
    assert_eq!(h.stats_of("c", 1_000).ready, 1);
    assert_eq!(h.state.next_due_ms(), Some(limits::RETENTION_MS_DEFAULT));
    assert_eq!(Request { now_ms: 1, command: Command::Tick }.to_string(), "tick@1");
}

#[test]
fn next_due_ms_looks_past_in_flight_messages() {
    // Proves an in-flight message at the head (due only at its deadline) does not hide the earlier expiry of a message behind it, for retention and for own TTLs.
    let mut h = Harness::with_queue(QueueConfig { retention_ms: 60_000, ..QueueConfig::default() });
    assert_eq!(h.state.next_due_ms(), None);
    h.send_one(0, "a");
    h.send_one(1, "b");
    h.receive(2, 1, Some(limits::VISIBILITY_TIMEOUT_MS_MAX));
    assert_eq!(h.state.next_due_ms(), Some(60_001));
    h.tick(60_001);
    assert_eq!(h.effects, [deleted(1, 2)]);

    let mut h = Harness::with_queue(QueueConfig::default());
    let ttl = |ms, body: &str| NewMessage { ttl_ms: Some(ms), ..NewMessage::new(body.to_string()) };
    h.send(0, "q", vec![ttl(1_000, "a"), ttl(2_000, "b")]);
    h.receive(0, 1, Some(10_000));
    assert_eq!(h.state.next_due_ms(), Some(2_000));
    // The earliest over all queues.
    h.apply(0, create("r", QueueConfig { message_ttl_ms: Some(1_500), ..QueueConfig::default() })).unwrap();
    h.send(0, "r", vec![msg(None, "r")]);
    assert_eq!(h.state.next_due_ms(), Some(1_500));
}

#[test]
fn expired_messages_leave_in_queue_order() {
    // Proves messages expiring together, by the queue's TTL and by their own, reach the dead-letter queue in their original order.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    let config =
        QueueConfig { message_ttl_ms: Some(100), dead_letter: dead_letter_to("dlq", 0), ..QueueConfig::default() };
    h.create_at(0, "q", config);
    h.send(0, "q", vec![msg(None, "1")]);
    h.send(1, "q", vec![NewMessage { ttl_ms: Some(10), ..NewMessage::new("2") }]);
    h.send(2, "q", vec![NewMessage { ttl_ms: Some(5), ..NewMessage::new("3") }]);
    h.tick(100);
    let moves: Vec<(Seq, Seq)> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::MoveMessage { from, to, .. } => Some((from.1, to.1)),
            _ => None,
        })
        .collect();
    assert_eq!(moves, [(Seq(1), Seq(1)), (Seq(2), Seq(2)), (Seq(3), Seq(3))]);
}

// ---------------------------------------------------------------- dead letters

#[test]
fn message_is_dead_lettered_after_exactly_max_receives() {
    // Proves a message with max_receives = 2 is delivered exactly twice, then moved (reason MaxReceives) instead of a third delivery.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    let config =
        QueueConfig { visibility_timeout_ms: 1_000, dead_letter: dead_letter_to("dlq", 2), ..QueueConfig::default() };
    h.create_at(0, "q", config);
    h.send(0, "q", vec![msg(None, "a")]);
    assert_eq!(h.receive_from(0, "q", 1, None)[0].receipt.receive_count, 1);
    assert_eq!(h.receive_from(1_000, "q", 1, None)[0].receipt.receive_count, 2);
    assert!(h.receive_from(2_000, "q", 1, None).is_empty());
    assert_eq!(
        h.effects,
        [
            available("q"),
            moved((2, 1), (1, 1), dead_lettered(DeadLetterReason::MaxReceives, "q", 2, 2_000)),
            available("dlq")
        ]
    );
    let q = h.stats_of("q", 2_000);
    assert_eq!((q.received_total, q.dead_lettered_total, q.expired_total, q.ready), (2, 1, 0, 0));
    // The dead-letter queue counts its own deliveries (the source's count
    // is in the dead-letter details).
    assert_eq!(h.receive_from(2_000, "dlq", 1, None)[0].receipt.receive_count, 1);
}

#[test]
fn max_receives_with_a_missing_target_keeps_delivering() {
    // Proves that when the dead-letter queue no longer exists, a message past max_receives is delivered again rather than dropped.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    let config =
        QueueConfig { visibility_timeout_ms: 1_000, dead_letter: dead_letter_to("dlq", 1), ..QueueConfig::default() };
    h.create_at(0, "q", config);
    h.apply(0, Command::DeleteQueue { name: "dlq".into() }).unwrap();
    h.send(0, "q", vec![msg(None, "a")]);
    for (now, count) in [(0, 1), (1_000, 2), (2_000, 3)] {
        assert_eq!(h.receive_from(now, "q", 1, None)[0].receipt.receive_count, count);
    }
    let q = h.stats_of("q", 2_000);
    assert_eq!((q.dead_lettered_total, q.dropped_total), (0, 0));
}

#[test]
fn nack_with_dead_letter_rejects_the_message() {
    // Proves a dead-lettering nack moves the message (reason Rejected) to the dead-letter queue, or deletes it when there is none.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    h.create_at(0, "q", QueueConfig { dead_letter: dead_letter_to("dlq", 0), ..QueueConfig::default() });
    h.send(0, "q", vec![msg(None, "a")]);
    let d = h.receive_from(0, "q", 1, None);
    assert_eq!(h.receipts(10, nack_on("q", receipts_of(&d), 0, true)), [Ok(())]);
    assert_eq!(
        h.effects,
        [moved((2, 1), (1, 1), dead_lettered(DeadLetterReason::Rejected, "q", 1, 10)), available("dlq")]
    );
    assert_eq!(h.stats_of("q", 10).dead_lettered_total, 1);
    // The receipt now names a deleted message.
    assert_eq!(h.receipts(11, nack_on("q", receipts_of(&d), 0, true)), [Ok(())]);
    assert!(h.effects.is_empty());

    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    let d = h.receive(0, 1, None);
    assert_eq!(h.receipts(1, nack_on("q", receipts_of(&d), 0, true)), [Ok(())]);
    assert_eq!(h.effects, [deleted(1, 1)]);
    let stats = h.stats(1);
    assert_eq!((stats.dropped_total, stats.dead_lettered_total, stats.ready), (1, 0, 0));
}

#[test]
fn nack_delay_is_limited() {
    // Proves a nack delay over 12 h fails the whole request before anything happens.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    let d = h.receive(0, 1, None);
    assert!(is_invalid_argument(&h.apply(1, nack_on("q", receipts_of(&d), limits::NACK_DELAY_MS_MAX + 1, false))));
    assert_eq!(h.stats(1).in_flight, 1);
    assert_eq!(h.receipts(1, nack_on("q", receipts_of(&d), limits::NACK_DELAY_MS_MAX, false)), [Ok(())]);
    assert_eq!(h.state.next_visible_at("q"), Some(1 + limits::NACK_DELAY_MS_MAX));
}

#[test]
fn a_dead_letter_queue_must_be_of_the_same_kind() {
    // Proves a FIFO queue's dead-letter queue must be FIFO and a standard queue's standard (as SQS), at creation and on SetQueue, so groups are never lost.
    let mut h = Harness::new();
    h.create_at(0, "std-dlq", QueueConfig::default());
    h.create_at(0, "fifo-dlq", QueueConfig { fifo: true, ..QueueConfig::default() });
    let fifo_to_std = QueueConfig { fifo: true, dead_letter: dead_letter_to("std-dlq", 0), ..QueueConfig::default() };
    assert!(matches!(h.apply(0, create("a", fifo_to_std)), Err(QueueError::InvalidArgument(_))));
    let std_to_fifo = QueueConfig { dead_letter: dead_letter_to("fifo-dlq", 0), ..QueueConfig::default() };
    assert!(matches!(h.apply(0, create("b", std_to_fifo)), Err(QueueError::InvalidArgument(_))));
    h.create_at(0, "c", QueueConfig::default());
    let update = QueueConfigUpdate { dead_letter: Some(dead_letter_to("fifo-dlq", 0)), ..QueueConfigUpdate::default() };
    assert!(matches!(h.apply(0, Command::SetQueue { name: "c".into(), update }), Err(QueueError::InvalidArgument(_))));
}

// ---------------------------------------------------------------- overflow

#[test]
fn reject_publish_refuses_exactly_the_entries_that_do_not_fit() {
    // Proves under reject-publish each entry that would exceed max_messages or max_bytes gets QueueFull (counted), later entries that fit are accepted, and a refused id is not remembered.
    let config = QueueConfig { max_messages: Some(3), max_bytes: Some(10), ..QueueConfig::default() };
    let mut h = Harness::with_queue(config);
    let batch = vec![
        msg(Some("a"), "aaaa"),
        msg(Some("b"), "bbbb"),
        msg(Some("c"), "ccc"),
        msg(Some("d"), "dd"),
        msg(Some("e"), "e"),
    ];
    let results = h.send(0, "q", batch);
    let limit = "at most 3 messages and 10 bytes";
    assert_eq!(results, [sent(1), sent(2), Err(full("q", limit)), sent(3), Err(full("q", limit))]);
    assert_eq!(full("q", limit).kind(), ErrorKind::ResourceExhausted);
    assert_eq!(h.effects.iter().filter(|e| matches!(e, Effect::PutMessage { .. })).count(), 3);
    let stats = h.stats(0);
    assert_eq!((stats.ready, stats.bytes, stats.sent_total, stats.rejected_total), (3, 10, 3, 2));
    let d = h.receive(1, 1, None);
    h.receipts(1, ack(receipts_of(&d)));
    assert_eq!(h.send(2, "q", vec![msg(Some("c"), "ccc")]), [sent(4)]);
}

#[test]
fn drop_head_drops_the_oldest_messages_not_in_flight() {
    // Proves drop-head deletes the oldest message that is not in flight to make room (counted dropped), and refuses without dropping when only in-flight messages are left.
    let config = QueueConfig { max_messages: Some(2), overflow: Overflow::DropHead, ..QueueConfig::default() };
    let mut h = Harness::with_queue(config);
    h.send_one(0, "a");
    h.send_one(0, "b");
    h.receive(1, 1, None);
    assert_eq!(h.send_one(2, "c"), Seq(3));
    assert_eq!(h.effects[0], deleted(1, 2));
    let stats = h.stats(2);
    assert_eq!((stats.ready, stats.in_flight, stats.dropped_total), (1, 1, 1));
    h.receive(3, 1, None);
    assert_eq!(h.send(4, "q", vec![msg(None, "d")]), [Err(full("q", "at most 2 messages"))]);
    assert!(h.effects.is_empty());
    let stats = h.stats(4);
    assert_eq!((stats.in_flight, stats.dropped_total, stats.rejected_total), (2, 1, 1));
}

#[test]
fn drop_head_dead_letters_and_never_drops_in_vain() {
    // Proves drop-head moves dropped messages to the dead-letter queue (reason Overflow), drops nothing when dropping could not make room, and refuses a message larger than max_bytes.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    let config = QueueConfig {
        max_bytes: Some(10),
        overflow: Overflow::DropHead,
        dead_letter: dead_letter_to("dlq", 0),
        ..QueueConfig::default()
    };
    h.create_at(0, "q", config);
    h.send(0, "q", vec![msg(None, "aaaa"), msg(None, "bb")]);
    h.receive_from(1, "q", 1, None);
    // 4 in flight + 2 ready + 7 = 13; even without the 2 ready it is 11 > 10.
    assert_eq!(h.send(2, "q", vec![msg(None, "ccccccc")]), [Err(full("q", "at most 10 bytes"))]);
    assert!(h.effects.is_empty());
    let stats = h.stats_of("q", 2);
    assert_eq!((stats.ready, stats.dropped_total, stats.dead_lettered_total, stats.rejected_total), (1, 0, 0, 1));
    // 4 + 5 = 9 once the 2 ready bytes are gone.
    assert_eq!(h.send(3, "q", vec![msg(None, "ccccc")]), [sent(3)]);
    assert_eq!(
        h.effects[1..],
        [available("q"), moved((2, 2), (1, 1), dead_lettered(DeadLetterReason::Overflow, "q", 0, 3)), available("dlq")]
    );
    assert_eq!(h.send(4, "q", vec![msg(None, "xxxxxxxxxxx")]), [Err(full("q", "at most 10 bytes"))]);
    assert!(h.effects.is_empty());
}

#[test]
fn dead_letter_queue_with_drop_head_makes_room_for_arrivals() {
    // Proves arrivals are never refused; a drop-head dead-letter queue deletes its oldest messages to make room (not moving them on), a reject-publish one grows past its limit.
    let mut h = Harness::new();
    h.create_at(
        0,
        "dlq",
        QueueConfig { max_messages: Some(1), overflow: Overflow::DropHead, ..QueueConfig::default() },
    );
    h.create_at(0, "q", QueueConfig { dead_letter: dead_letter_to("dlq", 0), ..QueueConfig::default() });
    h.send(0, "q", vec![msg(None, "a"), msg(None, "b")]);
    let d = h.receive_from(1, "q", 2, None);
    h.receipts(2, nack_on("q", receipts_of(&d), 0, true));
    let info = |count| dead_lettered(DeadLetterReason::Rejected, "q", count, 2);
    assert_eq!(
        h.effects,
        [
            moved((2, 1), (1, 1), info(1)),
            available("dlq"),
            deleted(1, 1),
            moved((2, 2), (1, 2), info(1)),
            available("dlq")
        ]
    );
    let dlq = h.stats_of("dlq", 2);
    assert_eq!((dlq.ready, dlq.dropped_total, dlq.dead_lettered_total), (1, 1, 0));

    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig { max_messages: Some(1), ..QueueConfig::default() });
    h.create_at(0, "q", QueueConfig { dead_letter: dead_letter_to("dlq", 0), ..QueueConfig::default() });
    h.send(0, "q", vec![msg(None, "a"), msg(None, "b")]);
    let d = h.receive_from(1, "q", 2, None);
    h.receipts(2, nack_on("q", receipts_of(&d), 0, true));
    let dlq = h.stats_of("dlq", 2);
    assert_eq!((dlq.ready, dlq.dropped_total, dlq.rejected_total), (2, 0, 0));
}

// ---------------------------------------------------------------- delays

#[test]
fn queue_delay_hides_new_messages_until_it_ends() {
    // Proves a queue's delay keeps a new message invisible (counted as delayed, no wake-up at send) until exactly its end.
    let mut h = Harness::with_queue(QueueConfig { delay_ms: 1_000, ..QueueConfig::default() });
    h.send_one(0, "a");
    assert!(matches!(h.effects.as_slice(), [Effect::PutMessage { .. }]));
    let stats = h.stats(0);
    assert_eq!((stats.ready, stats.delayed), (0, 1));
    assert_eq!((h.stats(1_000).ready, h.stats(1_000).delayed), (1, 0));
    assert!(!h.state.has_visible("q", 999).unwrap());
    assert!(h.state.has_visible("q", 1_000).unwrap());
    assert_eq!(h.state.next_visible_at("q"), Some(1_000));
    assert!(h.receive(999, 10, None).is_empty());
    assert_eq!(seqs(&h.receive(1_000, 10, None)), [1]);
    assert_eq!(h.effects, [available("q")]);
}

#[test]
fn message_delay_overrides_the_queue_delay() {
    // Proves a message's own delay (0 included) replaces the queue's, and a delay over 15 min fails that entry alone.
    let mut h = Harness::with_queue(QueueConfig { delay_ms: 1_000, ..QueueConfig::default() });
    let delayed = |ms, body: &str| NewMessage { delay_ms: Some(ms), ..NewMessage::new(body.to_string()) };
    let results = h.send(
        0,
        "q",
        vec![delayed(0, "now"), delayed(5_000, "later"), msg(None, "queue"), delayed(limits::DELAY_MS_MAX + 1, "x")],
    );
    assert_eq!(results[..3], [sent(1), sent(2), sent(3)]);
    assert!(is_invalid_argument(&results[3]));
    assert_eq!((h.stats(0).ready, h.stats(0).delayed), (1, 2));
    assert_eq!(seqs(&h.receive(0, 10, None)), [1]);
    assert_eq!(seqs(&h.receive(1_000, 10, None)), [3]);
    assert!(h.receive(4_999, 10, None).is_empty());
    assert_eq!(seqs(&h.receive(5_000, 10, None)), [2]);
}

// ---------------------------------------------------------------- visibility

#[test]
fn change_visibility_is_capped_at_12h_from_the_deliverys_receive() {
    // Proves ChangeVisibility may keep a message invisible up to 12 h after this delivery's receive and no longer, each delivery counting from its own receive.
    let mut h = Harness::with_queue(QueueConfig { visibility_timeout_ms: 10_000, ..QueueConfig::default() });
    h.send_one(0, "a");
    let r = h.receive(1_000, 1, None)[0].receipt;
    let max = limits::VISIBILITY_TIMEOUT_MS_MAX;
    let results = h.receipts(5_000, change_visibility(vec![r], max - 3_999));
    assert!(is_invalid_argument(&results[0]), "{results:?}");
    assert_eq!(h.state.next_visible_at("q"), Some(11_000));
    assert_eq!(h.receipts(5_000, change_visibility(vec![r], max - 4_000)), [Ok(())]);
    assert_eq!(h.state.next_visible_at("q"), Some(1_000 + max));
    h.receipts(6_000, change_visibility(vec![r], 0));
    let r = h.receive(7_000, 1, None)[0].receipt;
    assert_eq!(h.receipts(7_000, change_visibility(vec![r], max)), [Ok(())]);
    assert_eq!(h.state.next_visible_at("q"), Some(7_000 + max));
}

#[test]
fn is_in_flight_ends_with_the_timeout() {
    // Proves is_in_flight is true for the latest delivery until its timeout ends by the state's clock (even before a command carries the timeout out), and false once acked.
    let mut h = Harness::with_queue(QueueConfig { visibility_timeout_ms: 1_000, ..QueueConfig::default() });
    h.send_one(0, "a");
    h.send_one(0, "b");
    let d = h.receive(0, 2, None);
    assert!(h.state.is_in_flight("q", &d[0].receipt));
    assert!(!h.state.is_in_flight("other", &d[0].receipt));
    h.receipts(999, ack(vec![d[1].receipt]));
    assert!(!h.state.is_in_flight("q", &d[1].receipt));
    assert!(h.state.is_in_flight("q", &d[0].receipt));
    // A command on another queue moves the clock past the deadline.
    h.apply(1_000, create("other", QueueConfig::default())).unwrap();
    assert!(!h.state.is_in_flight("q", &d[0].receipt));
}

// ---------------------------------------------------------------- backoff

#[test]
fn backoff_delay_follows_the_formula_without_rounding_drift() {
    // Proves Backoff::delay_ms is min(max, floor(min * factor^(n-1))) even for small minimums (no stalling at 1 ms), and stays cheap for huge receive counts.
    let b = Backoff { min_ms: 1, max_ms: 1_000, factor_milli: 1_500 };
    let delays: Vec<u64> = (0..=10).map(|n| b.delay_ms(n)).collect();
    // 1.5^(n-1): 1, 1.5, 2.25, 3.4, 5.1, 7.6, 11.4, 17.1, 25.6, 38.4
    assert_eq!(delays, [1, 1, 1, 2, 3, 5, 7, 11, 17, 25, 38]);
    let b = Backoff { min_ms: 3, max_ms: 1_000, factor_milli: 1_500 };
    assert_eq!(b.delay_ms(6), 22, "3 * 1.5^5 = 22.8");
    let b = Backoff { min_ms: 100, max_ms: 1_000, factor_milli: 2_000 };
    assert_eq!([1, 2, 3, 4, 5, 99].map(|n| b.delay_ms(n)), [100, 200, 400, 800, 1_000, 1_000]);
    let constant = Backoff { min_ms: 7, max_ms: 7, factor_milli: 1_000 };
    assert_eq!(constant.delay_ms(u32::MAX), 7);
    let slow = Backoff { min_ms: 1, max_ms: limits::BACKOFF_MS_MAX, factor_milli: 1_001 };
    assert_eq!(slow.delay_ms(u32::MAX), limits::BACKOFF_MS_MAX);
}

#[test]
fn nack_applies_the_redelivery_backoff_growing_to_its_cap() {
    // Proves a nack with delay 0 hides the message for the backoff of its receive count (100, 200, 400, 800, then the 1000 cap), and an explicit nack delay wins.
    let config = QueueConfig {
        redelivery_backoff: Some(Backoff { min_ms: 100, max_ms: 1_000, factor_milli: 2_000 }),
        ..QueueConfig::default()
    };
    let mut h = Harness::with_queue(config);
    h.send_one(0, "a");
    let mut now = 0;
    for (count, delay) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (6, 1_000)] {
        let d = h.receive(now, 1, None);
        assert_eq!(d[0].receipt.receive_count, count);
        assert_eq!(h.receipts(now, nack(receipts_of(&d))), [Ok(())]);
        assert!(h.effects.is_empty(), "a delayed message wakes nobody");
        assert_eq!(h.state.next_visible_at("q"), Some(now + delay));
        assert_eq!((h.stats(now).delayed, h.stats(now + delay).ready), (1, 1));
        assert!(h.receive(now + delay - 1, 1, None).is_empty());
        now += delay;
    }
    let d = h.receive(now, 1, None);
    h.receipts(now, nack_on("q", receipts_of(&d), 50, false));
    assert_eq!(h.state.next_visible_at("q"), Some(now + 50));
}

#[test]
fn timeout_applies_the_redelivery_backoff_from_the_deadline() {
    // Proves a timed-out message becomes visible a backoff after its deadline, counted as delayed meanwhile (even before a command carries the timeout out).
    let config = QueueConfig {
        visibility_timeout_ms: 1_000,
        redelivery_backoff: Some(Backoff { min_ms: 500, max_ms: 10_000, factor_milli: 3_000 }),
        ..QueueConfig::default()
    };
    let mut h = Harness::with_queue(config);
    h.send_one(0, "a");
    h.receive(0, 1, None);
    let stats = h.stats(1_200);
    assert_eq!((stats.in_flight, stats.delayed, stats.ready), (0, 1, 0));
    assert_eq!(h.stats(1_500).ready, 1);
    assert!(h.receive(1_200, 1, None).is_empty());
    assert_eq!(h.state.next_visible_at("q"), Some(1_500));
    assert!(!h.state.has_visible("q", 1_499).unwrap());
    assert_eq!(h.receive(1_500, 1, None)[0].receipt.receive_count, 2);
    // Deadline 2_500, backoff 500 * 3 = 1_500.
    assert!(h.receive(3_999, 1, None).is_empty());
    assert_eq!(h.receive(4_000, 1, None)[0].receipt.receive_count, 3);
}

// ---------------------------------------------------------------- FIFO

fn fifo() -> QueueConfig {
    QueueConfig { fifo: true, visibility_timeout_ms: 1_000, ..QueueConfig::default() }
}

#[test]
fn fifo_delivers_a_group_in_order_and_holds_it_while_in_flight() {
    // Proves a FIFO group's messages come in send order, one group is held while a member is in flight, other groups are delivered meanwhile, and an ack frees the group (with a wake-up).
    let mut h = Harness::with_queue(fifo());
    h.send(0, "q", vec![in_group("a", "a1"), in_group("b", "b1"), in_group("a", "a2")]);
    let a1 = h.receive(1, 1, None);
    assert_eq!(seqs(&a1), [1]);
    let b1 = h.receive(1, 1, None);
    assert_eq!(seqs(&b1), [2]);
    assert!(h.receive(1, 1, None).is_empty());
    assert!(!h.state.has_visible("q", 1).unwrap());
    h.receipts(2, ack(receipts_of(&a1)));
    assert_eq!(h.effects, [deleted(1, 1), available("q")]);
    assert!(h.state.has_visible("q", 2).unwrap());
    let a2 = h.receive(2, 1, None);
    assert_eq!(seqs(&a2), [3]);
    h.receipts(2, ack(receipts_of(&b1).into_iter().chain(receipts_of(&a2)).collect()));
    // A timeout frees the group too; order is kept.
    h.send(3, "q", vec![in_group("c", "c1"), in_group("c", "c2")]);
    assert_eq!(seqs(&h.receive(3, 1, None)), [4]);
    assert_eq!(seqs(&h.receive(1_003, 2, None)), [4, 5]);
}

#[test]
fn fifo_receive_returns_consecutive_members_then_other_groups() {
    // Proves one Receive takes several consecutive ready members of a group, then moves on to the next group by oldest head.
    let mut h = Harness::with_queue(fifo());
    h.send(0, "q", vec![in_group("a", "a1"), in_group("b", "b1"), in_group("a", "a2"), in_group("a", "a3")]);
    assert_eq!(seqs(&h.receive(1, 3, None)), [1, 3, 4]);
    assert_eq!(seqs(&h.receive(1, 10, None)), [2]);
    let mut h = Harness::with_queue(fifo());
    h.send(0, "q", vec![in_group("a", "a1"), in_group("b", "b1"), in_group("a", "a2"), in_group("a", "a3")]);
    assert_eq!(seqs(&h.receive(1, 10, None)), [1, 3, 4, 2]);
}

#[test]
fn fifo_receive_stops_a_group_at_a_member_not_ready() {
    // Proves the members taken together stop at the first one that is not ready (here nacked with a delay), which keeps the group's order.
    let mut h = Harness::with_queue(QueueConfig { visibility_timeout_ms: 10_000, ..fifo() });
    h.send(0, "q", vec![in_group("a", "a1"), in_group("a", "a2"), in_group("a", "a3")]);
    let d = h.receive(0, 3, None);
    assert_eq!(seqs(&d), [1, 2, 3]);
    h.receipts(1, nack(vec![d[0].receipt]));
    h.receipts(1, nack_on("q", vec![d[1].receipt], 5_000, false));
    h.receipts(1, ack(vec![d[2].receipt]));
    let again = h.receive(1, 10, None);
    assert_eq!(seqs(&again), [1]);
    h.receipts(2, ack(receipts_of(&again)));
    assert!(h.receive(5_000, 10, None).is_empty());
    assert_eq!(seqs(&h.receive(5_001, 10, None)), [2]);
}

#[test]
fn fifo_refuses_messages_without_group_or_with_delay_or_priority() {
    // Proves a FIFO queue refuses, per entry, a message without a group, with its own delay (even 0) or with a priority, while accepting the queue's delay.
    let mut h = Harness::with_queue(fifo());
    let results = h.send(
        0,
        "q",
        vec![
            msg(None, "no group"),
            NewMessage { delay_ms: Some(0), ..in_group("a", "delayed") },
            NewMessage { priority: 1, ..in_group("a", "urgent") },
            in_group("a", "fine"),
        ],
    );
    assert!(results[..3].iter().all(is_invalid_argument), "{results:?}");
    assert_eq!(results[3], sent(1));
    let mut h = Harness::with_queue(QueueConfig { delay_ms: 1_000, ..fifo() });
    h.send(0, "q", vec![in_group("a", "x")]);
    assert_eq!(h.stats(0).delayed, 1);
}

#[test]
fn fifo_expiry_of_a_blocking_head_frees_its_group() {
    // Proves that when a delayed group head expires, has_visible says so before any command runs, and the Tick that removes it wakes long polls.
    let mut h = Harness::with_queue(fifo());
    let head = NewMessage { ttl_ms: Some(5_000), ..in_group("g", "head") };
    h.send(0, "q", vec![head, in_group("g", "next")]);
    let d = h.receive(0, 1, None);
    h.receipts(10, nack_on("q", receipts_of(&d), 60_000, false));
    assert!(!h.state.has_visible("q", 4_999).unwrap());
    assert!(h.state.has_visible("q", 5_000).unwrap());
    h.tick(5_000);
    assert_eq!(h.effects, [deleted(1, 1), available("q")]);
    assert_eq!(seqs(&h.receive(5_000, 1, None)), [2]);
}

// ---------------------------------------------------------------- dedup

#[test]
fn content_based_dedup_uses_the_body_when_no_id_is_chosen() {
    // Proves content-based dedup treats equal bodies without a producer id (or with a generated one) as duplicates, lets a chosen id decide otherwise, and never confuses an id with a body.
    let mut h = Harness::with_queue(QueueConfig { content_based_dedup: true, ..QueueConfig::default() });
    assert_eq!(h.send(0, "q", vec![NewMessage::new("order-1")]), [sent(1)]);
    assert_eq!(h.send(1, "q", vec![NewMessage::new("order-1")]), [duplicate_of(1)]);
    let generated = NewMessage { id: Some("gen-7".into()), id_generated: true, ..NewMessage::new("order-1") };
    assert_eq!(h.send(2, "q", vec![generated]), [duplicate_of(1)]);
    // An id equal to an earlier body is not a duplicate of it.
    assert_eq!(h.send(3, "q", vec![msg(Some("order-1"), "other")]), [sent(2)]);
    assert_eq!(h.send(4, "q", vec![msg(Some("order-1"), "x")]), [duplicate_of(2)]);
    assert_eq!(h.send(5, "q", vec![NewMessage::new("different")]), [sent(3)]);
    // The window applies as for ids.
    assert_eq!(h.send(limits::DEDUP_WINDOW_MS_DEFAULT, "q", vec![NewMessage::new("order-1")]), [sent(4)]);

    let mut h = Harness::with_queue(QueueConfig::default());
    assert_eq!(h.send(0, "q", vec![NewMessage::new("a"), NewMessage::new("a")]), [sent(1), sent(2)]);
}

// ---------------------------------------------------------------- priorities

#[test]
fn priorities_deliver_higher_first_and_in_send_order_within_a_level() {
    // Proves standard queues deliver priority 9 before 5 before 0, in send order within a level, a nacked message returns to its place, and priority 10 is refused.
    let mut h = Harness::with_queue(QueueConfig::default());
    let p = |priority, body: &str| NewMessage { priority, ..NewMessage::new(body.to_string()) };
    let results = h.send(0, "q", vec![p(0, "a"), p(5, "b"), p(9, "c"), p(5, "d"), p(10, "x")]);
    assert!(is_invalid_argument(&results[4]));
    let Effect::PutMessage { record, .. } = &h.effects[2] else { panic!("expected a put") };
    assert_eq!(record.priority, 9);
    let d = h.receive(1, 2, None);
    assert_eq!(seqs(&d), [3, 2]);
    h.receipts(2, nack(receipts_of(&d)));
    let all = h.receive(3, 10, None);
    assert_eq!(seqs(&all), [3, 2, 4, 1]);
    assert_eq!(all.iter().map(|d| d.priority).collect::<Vec<_>>(), [9, 5, 5, 0]);
}

// ---------------------------------------------------------------- attributes

#[test]
fn attributes_are_limited_and_count_toward_the_size() {
    // Proves up to 10 attributes with valid names are stored with the message and counted in its size (stats and length limits); more, or bad names, fail the entry.
    let mut h = Harness::with_queue(QueueConfig::default());
    let with = |attributes: Vec<(String, AttributeValue)>| NewMessage {
        attributes: attributes.into_iter().collect(),
        ..NewMessage::new("body")
    };
    let ten: Vec<(String, AttributeValue)> =
        (0..10).map(|i| (format!("k.{i}"), AttributeValue::String("vv".into()))).collect();
    let eleven: Vec<(String, AttributeValue)> =
        (0..11).map(|i| (format!("k{i}"), AttributeValue::Binary(Bytes::new()))).collect();
    let long_ok = "n".repeat(limits::ATTRIBUTE_NAME_BYTES_MAX);
    let too_long = "n".repeat(limits::ATTRIBUTE_NAME_BYTES_MAX + 1);
    let results = h.send(
        0,
        "q",
        vec![
            with(ten.clone()),
            with(eleven),
            with(vec![(String::new(), AttributeValue::String("v".into()))]),
            with(vec![("bad name".into(), AttributeValue::String("v".into()))]),
            with(vec![(too_long, AttributeValue::String("v".into()))]),
            with(vec![(long_ok.clone(), AttributeValue::Binary(Bytes::from_static(b"\x00\x01")))]),
        ],
    );
    assert_eq!(results[0], sent(1));
    assert!(results[1..5].iter().all(is_invalid_argument), "{results:?}");
    assert_eq!(results[5], sent(2));
    let Effect::PutMessage { record, .. } = &h.effects[0] else { panic!("expected a put") };
    assert_eq!(record.attributes, ten.iter().cloned().collect());
    // body 4 + 10 * (3 + 2), and body 4 + 256 + 2.
    assert_eq!(h.stats(0).bytes, 54 + 4 + limits::ATTRIBUTE_NAME_BYTES_MAX as u64 + 2);

    let mut h = Harness::with_queue(QueueConfig { max_bytes: Some(10), ..QueueConfig::default() });
    let sized = |value: &str| NewMessage {
        attributes: [("k".to_string(), AttributeValue::String(value.into()))].into(),
        ..NewMessage::new("12345")
    };
    assert!(matches!(h.send(0, "q", vec![sized("vvv")]).as_slice(), [Ok(_)]), "5 + 1 + 3 bytes fit");
    let mut h = Harness::with_queue(QueueConfig { max_bytes: Some(10), ..QueueConfig::default() });
    assert!(matches!(h.send(0, "q", vec![sized("vvvvv")]).as_slice(), [Err(QueueError::QueueFull { .. })]));
}

// ---------------------------------------------------------------- SetQueue

#[test]
fn set_queue_changes_what_it_names_and_keeps_the_rest() {
    // Proves SetQueue applies the given attributes (Some(None) clears an optional one), keeps the others, answers the new info, and refuses invalid values changing nothing.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send_one(0, "a");
    let update = QueueConfigUpdate {
        visibility_timeout_ms: Some(5_000),
        message_ttl_ms: Some(Some(10_000)),
        max_messages: Some(Some(5)),
        overflow: Some(Overflow::DropHead),
        redelivery_backoff: Some(Some(Backoff { min_ms: 10, max_ms: 20, factor_milli: 1_000 })),
        content_based_dedup: Some(true),
        ..QueueConfigUpdate::default()
    };
    let expected = QueueConfig {
        visibility_timeout_ms: 5_000,
        message_ttl_ms: Some(10_000),
        max_messages: Some(5),
        overflow: Overflow::DropHead,
        redelivery_backoff: Some(Backoff { min_ms: 10, max_ms: 20, factor_milli: 1_000 }),
        content_based_dedup: true,
        ..QueueConfig::default()
    };
    let Ok(Outcome::QueueUpdated { queue }) = h.apply(1, Command::SetQueue { name: "q".into(), update }) else {
        panic!("set-queue failed");
    };
    assert_eq!((queue.config, queue.stats.ready, queue.id), (expected.clone(), 1, QueueId(1)));
    assert!(h.effects.is_empty());
    // The new TTL applies to messages already there, counted from their entry.
    assert_eq!(h.state.next_due_ms(), Some(10_000));
    let clear = QueueConfigUpdate { message_ttl_ms: Some(None), ..QueueConfigUpdate::default() };
    h.apply(2, Command::SetQueue { name: "q".into(), update: clear }).unwrap();
    assert_eq!(h.config_of("q"), QueueConfig { message_ttl_ms: None, ..expected.clone() });
    let bad =
        QueueConfigUpdate { retention_ms: Some(1), visibility_timeout_ms: Some(1), ..QueueConfigUpdate::default() };
    assert!(is_invalid_argument(&h.apply(3, Command::SetQueue { name: "q".into(), update: bad })));
    assert_eq!(h.config_of("q"), QueueConfig { message_ttl_ms: None, ..expected });
    let name_err = h.apply(3, Command::SetQueue { name: "bad name".into(), update: QueueConfigUpdate::default() });
    assert!(matches!(name_err, Err(QueueError::InvalidQueueName { .. })));
    assert_eq!(
        Request { now_ms: 4, command: Command::SetQueue { name: "q".into(), update: QueueConfigUpdate::default() } }
            .to_string(),
        "set-queue(q)@4"
    );
}

#[test]
fn fifo_is_fixed_at_creation() {
    // Proves SetQueue cannot change whether a queue is FIFO (the update has no such attribute) and CreateQueue with the other kind is QueueExists.
    let mut h = Harness::with_queue(fifo());
    let update = QueueConfigUpdate { delay_ms: Some(10), ..QueueConfigUpdate::default() };
    h.apply(1, Command::SetQueue { name: "q".into(), update }).unwrap();
    assert!(h.config_of("q").fifo);
    let standard = QueueConfig { fifo: false, delay_ms: 10, ..fifo() };
    assert_eq!(h.apply(2, create("q", standard)), Err(QueueError::QueueExists { name: "q".into() }));
}

#[test]
fn set_queue_dedup_window_of_zero_forgets_remembered_ids() {
    // Proves setting the dedup window to 0 forgets the ids remembered so far, so they are new again even after the window is restored.
    let mut h = Harness::with_queue(QueueConfig::default());
    h.send(0, "q", vec![msg(Some("a"), "1")]);
    for window in [0, limits::DEDUP_WINDOW_MS_DEFAULT] {
        let update = QueueConfigUpdate { dedup_window_ms: Some(window), ..QueueConfigUpdate::default() };
        h.apply(1, Command::SetQueue { name: "q".into(), update }).unwrap();
    }
    assert_eq!(h.send(2, "q", vec![msg(Some("a"), "2")]), [sent(2)]);
}

#[test]
fn dead_letter_target_must_exist_and_not_be_the_queue_itself() {
    // Proves CreateQueue and SetQueue refuse a dead-letter queue that does not exist (QueueNotFound) or is the queue itself (InvalidArgument), and accept an existing one.
    let mut h = Harness::new();
    let with = |target: &str| QueueConfig { dead_letter: dead_letter_to(target, 1), ..QueueConfig::default() };
    assert_eq!(h.apply(0, create("q", with("dlq"))), Err(QueueError::QueueNotFound { name: "dlq".into() }));
    assert!(is_invalid_argument(&h.apply(0, create("q", with("q")))));
    assert_eq!(h.state.queue_id("q"), None);
    h.create_at(0, "dlq", QueueConfig::default());
    h.create_at(0, "q", with("dlq"));
    let set = |target: &str| Command::SetQueue {
        name: "q".into(),
        update: QueueConfigUpdate { dead_letter: Some(dead_letter_to(target, 0)), ..QueueConfigUpdate::default() },
    };
    assert!(is_invalid_argument(&h.apply(1, set("q"))));
    assert_eq!(h.apply(1, set("none")), Err(QueueError::QueueNotFound { name: "none".into() }));
    assert_eq!(h.config_of("q").dead_letter, dead_letter_to("dlq", 1));
    // A policy left as it is stays valid after its target is deleted.
    h.apply(2, Command::DeleteQueue { name: "dlq".into() }).unwrap();
    let other = QueueConfigUpdate { delay_ms: Some(5), ..QueueConfigUpdate::default() };
    assert!(h.apply(3, Command::SetQueue { name: "q".into(), update: other }).is_ok());
    let remove = QueueConfigUpdate { dead_letter: Some(None), ..QueueConfigUpdate::default() };
    h.apply(3, Command::SetQueue { name: "q".into(), update: remove }).unwrap();
    assert_eq!(h.config_of("q").dead_letter, None);
}

// ---------------------------------------------------------------- Redrive

/// A source queue "src" (id 2) whose `count` messages were rejected into
/// "dlq" (id 1) at time 1.
fn dead_lettered_harness(count: usize) -> Harness {
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    h.create_at(0, "src", QueueConfig { dead_letter: dead_letter_to("dlq", 0), ..QueueConfig::default() });
    h.send(0, "src", (0..count).map(|i| msg(None, &format!("m{i}"))).collect());
    let d = h.receive_from(0, "src", count as u32, None);
    h.receipts(1, nack_on("src", receipts_of(&d), 0, true));
    assert_eq!(h.stats_of("dlq", 1).ready, count as u64);
    h
}

fn redrive(queue: &str, to: Option<&str>, max_messages: u32) -> Command {
    Command::Redrive { queue: queue.into(), to: to.map(String::from), max_messages }
}

#[test]
fn redrive_moves_dead_lettered_messages_back_to_their_source() {
    // Proves Redrive moves up to max messages, oldest first, back to their source queues with the dead-letter details cleared and the receive count reset.
    let mut h = dead_lettered_harness(3);
    assert_eq!(h.apply(10, redrive("dlq", None, 2)), Ok(Outcome::Redriven { moved: 2, remaining: 1, skipped: 0 }));
    assert_eq!(h.effects, [moved((1, 1), (2, 4), None), moved((1, 2), (2, 5), None), available("src")]);
    let d = h.receive_from(11, "src", 10, None);
    assert_eq!(seqs(&d), [4, 5]);
    assert!(d.iter().all(|d| d.receipt.receive_count == 1 && d.first_received_at_ms == 11 && d.sent_at_ms == 0));
    // 0 means as many as allowed.
    assert_eq!(h.apply(12, redrive("dlq", None, 0)), Ok(Outcome::Redriven { moved: 1, remaining: 0, skipped: 0 }));
    assert_eq!(Request { now_ms: 1, command: redrive("dlq", None, 0) }.to_string(), "redrive(dlq, max 0)@1");
}

#[test]
fn redrive_to_another_queue_and_skipping_sources_that_are_gone() {
    // Proves Redrive skips messages whose source queue was deleted, moves them to `to` when given, and leaves in-flight messages alone.
    let mut h = dead_lettered_harness(3);
    let other = h.create_at(1, "other", QueueConfig::default());
    h.apply(2, Command::DeleteQueue { name: "src".into() }).unwrap();
    assert_eq!(h.apply(3, redrive("dlq", None, 0)), Ok(Outcome::Redriven { moved: 0, remaining: 0, skipped: 3 }));
    assert!(h.effects.is_empty());
    // A new queue with the old name is not the source.
    h.create_at(3, "src", QueueConfig::default());
    assert_eq!(h.apply(4, redrive("dlq", None, 0)), Ok(Outcome::Redriven { moved: 0, remaining: 0, skipped: 3 }));
    assert_eq!(
        h.apply(5, redrive("dlq", Some("other"), 1)),
        Ok(Outcome::Redriven { moved: 1, remaining: 2, skipped: 0 })
    );
    assert_eq!(h.effects, [moved((1, 1), (other.0, 1), None), available("other")]);
    h.receive_from(6, "dlq", 1, None);
    assert_eq!(
        h.apply(7, redrive("dlq", Some("other"), 0)),
        Ok(Outcome::Redriven { moved: 1, remaining: 0, skipped: 0 })
    );
    assert_eq!(h.stats_of("dlq", 7).in_flight, 1);
}

#[test]
fn redrive_arguments_are_checked() {
    // Proves Redrive refuses more than REDRIVE_MESSAGES_MAX, a target that is the queue itself, an invalid or missing target, and a missing queue, moving nothing.
    let mut h = dead_lettered_harness(1);
    assert!(is_invalid_argument(&h.apply(2, redrive("dlq", None, limits::REDRIVE_MESSAGES_MAX + 1))));
    assert!(is_invalid_argument(&h.apply(2, redrive("dlq", Some("dlq"), 0))));
    assert!(matches!(h.apply(2, redrive("dlq", Some("bad name"), 0)), Err(QueueError::InvalidQueueName { .. })));
    assert_eq!(h.apply(2, redrive("dlq", Some("none"), 0)), Err(QueueError::QueueNotFound { name: "none".into() }));
    assert_eq!(h.apply(2, redrive("none", None, 0)), Err(QueueError::QueueNotFound { name: "none".into() }));
    assert_eq!(h.stats_of("dlq", 2).ready, 1);
    assert!(matches!(
        h.apply(2, redrive("dlq", None, limits::REDRIVE_MESSAGES_MAX)),
        Ok(Outcome::Redriven { moved: 1, .. })
    ));
}

#[test]
fn oldest_sent_at_counts_messages_moved_in() {
    // Proves oldest_sent_at_ms is the send time of the oldest message held even when an older message was dead-lettered into the queue after a newer one.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig::default());
    h.create_at(0, "q", QueueConfig { dead_letter: dead_letter_to("dlq", 0), ..QueueConfig::default() });
    h.send(0, "q", vec![msg(None, "old")]);
    h.send(100, "q", vec![msg(None, "new")]);
    let d = h.receive_from(200, "q", 2, None);
    h.receipts(300, nack_on("q", vec![d[1].receipt], 0, true));
    assert_eq!(h.stats_of("dlq", 300).oldest_sent_at_ms, 100);
    h.receipts(400, nack_on("q", vec![d[0].receipt], 0, true));
    assert_eq!(h.stats_of("dlq", 400).oldest_sent_at_ms, 0);
    let first = h.receive_from(500, "dlq", 1, None);
    h.receipts(500, ack_on("dlq", receipts_of(&first)));
    assert_eq!(h.stats_of("dlq", 500).oldest_sent_at_ms, 0);
}

// ---------------------------------------------------------------- snapshots

#[test]
fn snapshot_with_every_structure_populated_round_trips() {
    // Proves a State with FIFO groups, priorities, delays, backoffs, TTLs, in-flight and dead-lettered messages and dedup entries reads back equal from postcard, passes check_invariants and behaves the same.
    let mut h = Harness::new();
    h.create_at(0, "dlq", QueueConfig { retention_ms: 60_000, ..QueueConfig::default() });
    h.create_at(0, "fifo-dlq", QueueConfig { fifo: true, ..QueueConfig::default() });
    let fifo_config = QueueConfig {
        fifo: true,
        content_based_dedup: true,
        visibility_timeout_ms: 1_000,
        dead_letter: dead_letter_to("fifo-dlq", 2),
        redelivery_backoff: Some(Backoff { min_ms: 100, max_ms: 1_000, factor_milli: 2_000 }),
        ..QueueConfig::default()
    };
    h.create_at(0, "fifo", fifo_config);
    let std_config = QueueConfig {
        max_messages: Some(10),
        overflow: Overflow::DropHead,
        message_ttl_ms: Some(30_000),
        dedup_window_ms: 60_000,
        dead_letter: dead_letter_to("dlq", 0),
        ..QueueConfig::default()
    };
    h.create_at(0, "std", std_config);
    h.send(1, "fifo", vec![in_group("a", "a1"), in_group("a", "a2"), in_group("b", "b1"), in_group("c", "c1")]);
    let attributes = [("trace".to_string(), AttributeValue::String("t".into()))].into();
    h.send(
        1,
        "std",
        vec![
            NewMessage { id: Some("x".into()), priority: 3, attributes, ..NewMessage::new("x") },
            NewMessage { ttl_ms: Some(5_000), ..NewMessage::new("short") },
            NewMessage { delay_ms: Some(60_000), ..NewMessage::new("late") },
            msg(Some("y"), "y"),
        ],
    );
    let f = h.receive_from(2, "fifo", 2, None);
    h.receipts(3, nack_on("fifo", vec![f[1].receipt], 0, false));
    let s = h.receive_from(3, "std", 2, None);
    h.receipts(4, nack_on("std", vec![s[1].receipt], 0, true));
    h.receive_from(5, "fifo", 1, Some(10));
    // The fifo timeouts pass and back off; the in-flight std message stays.
    h.apply(1_500, create("other", QueueConfig::default())).unwrap();
    h.receive_from(1_500, "fifo", 0, None);

    let bytes = postcard::to_stdvec(&h.state).expect("serialise");
    let mut restored: State = postcard::from_bytes(&bytes).expect("deserialise");
    assert_eq!(restored, h.state);
    restored.check_invariants().expect("restored state is consistent");
    assert_eq!(restored.message_keys().collect::<Vec<_>>(), h.state.message_keys().collect::<Vec<_>>());
    assert_eq!(restored.list_queues(2_000), h.state.list_queues(2_000));
    assert_eq!(restored.next_due_ms(), h.state.next_due_ms());
    let stats = h.stats_of("fifo", 1_500);
    assert!(stats.in_flight + stats.delayed > 0, "{stats:?}");
    assert!(h.stats_of("dlq", 1_500).ready > 0);

    let commands = vec![
        send_cmd("fifo", vec![in_group("a", "a1"), in_group("d", "d1")]),
        send_cmd("std", vec![msg(Some("x"), "dup"), NewMessage { priority: 9, ..NewMessage::new("p9") }]),
        receive_cmd("fifo", 10, None),
        receive_cmd("std", 10, None),
        Command::Tick,
        redrive("dlq", None, 0),
        receive_cmd("fifo", 10, None),
    ];
    for (i, command) in commands.into_iter().enumerate() {
        let mut e1 = Vec::new();
        let mut e2 = Vec::new();
        let request = Request { now_ms: 2_000 + 40_000 * i as u64, command };
        assert_eq!(h.state.apply(request.clone(), &mut e1), restored.apply(request, &mut e2));
        assert_eq!(e1, e2);
    }
    assert_eq!(restored, h.state);
    restored.check_invariants().expect("still consistent");
}

// ---------------------------------------------------------------- batches

fn batch_results(h: &mut Harness, now_ms: u64, commands: Vec<Command>) -> Vec<Response> {
    match h.apply(now_ms, Command::Batch(commands)) {
        Ok(Outcome::Batch(results)) => results,
        other => panic!("a batch always succeeds as a whole, got {other:?}"),
    }
}

#[test]
fn batch_applies_each_command_with_its_own_result() {
    // Proves a batch of mixed commands applies them in order, one failing (unknown queue, stale or malformed receipts, a request-level error) without touching the others, and emits their effects in order.
    let mut h = Harness::with_queue(config(1_000, 60_000));
    let first = h.send_one(1, "old");
    let stale = h.receive(2, 1, Some(0))[0].receipt;
    let current = h.receive(3, 1, None)[0].receipt;
    assert!(current.receive_count > stale.receive_count);

    let results = batch_results(
        &mut h,
        10,
        vec![
            send_cmd("q", vec![msg(Some("a"), "one")]),
            send_cmd("missing", vec![msg(None, "lost")]),
            ack(vec![stale]),
            ack(Vec::new()),
            send_cmd("q", vec![msg(Some("a"), "again"), msg(None, "two")]),
            ack(vec![current]),
            receive_cmd("q", 10, None),
        ],
    );
    assert_eq!(results.len(), 7);
    let Ok(Outcome::Sent { queue_id, results: sent }) = &results[0] else { panic!("{:?}", results[0]) };
    assert_eq!(sent, &vec![Ok(Sent { seq: Seq(2), duplicate: false })]);
    assert_eq!(results[1], Err(QueueError::QueueNotFound { name: "missing".into() }));
    assert!(matches!(&results[2], Ok(Outcome::Receipts(r)) if matches!(r[..], [Err(QueueError::StaleReceipt { .. })])));
    assert!(is_invalid_argument(&results[3]));
    let Ok(Outcome::Sent { results: sent, .. }) = &results[4] else { panic!("{:?}", results[4]) };
    assert_eq!(sent, &vec![Ok(Sent { seq: Seq(2), duplicate: true }), Ok(Sent { seq: Seq(3), duplicate: false })]);
    assert_eq!(results[5], Ok(Outcome::Receipts(vec![Ok(())])));
    let Ok(Outcome::Received { deliveries, .. }) = &results[6] else { panic!("{:?}", results[6]) };
    assert_eq!(seqs(deliveries), vec![2, 3], "the ack earlier in the batch removed seq {}", first.0);
    assert!(deliveries.iter().all(|d| d.sent_at_ms == 10 && d.visible_again_at_ms == 1_010));
    assert_eq!(
        h.effects,
        vec![
            Effect::PutMessage { queue_id: *queue_id, seq: Seq(2), record: record(Some("a"), 10, "one") },
            available("q"),
            Effect::PutMessage { queue_id: *queue_id, seq: Seq(3), record: record(None, 10, "two") },
            available("q"),
            Effect::DeleteMessage { queue_id: *queue_id, seq: first },
        ]
    );
    assert_eq!(h.stats(10).in_flight, 2);
}

#[test]
fn batch_inside_a_batch_fails_alone() {
    // Proves a nested batch is refused (InvalidArgument) and changes nothing, while the commands around it apply; an empty batch is a no-op.
    let mut h = Harness::with_queue(QueueConfig::default());
    let results = batch_results(
        &mut h,
        5,
        vec![
            send_cmd("q", vec![msg(None, "x")]),
            Command::Batch(vec![send_cmd("q", vec![msg(None, "nested")])]),
            send_cmd("q", vec![msg(None, "y")]),
        ],
    );
    assert!(is_invalid_argument(&results[1]), "{:?}", results[1]);
    assert!(matches!(results[0], Ok(Outcome::Sent { .. })) && matches!(results[2], Ok(Outcome::Sent { .. })));
    assert_eq!(h.stats(5).ready, 2);
    assert_eq!(batch_results(&mut h, 6, Vec::new()), Vec::<Response>::new());
    assert!(h.effects.is_empty());
    assert_eq!(h.state.now_ms(), 6);
}

#[test]
fn batch_uses_one_time_for_all_its_commands() {
    // Proves every command of a batch runs at the entry's time (made monotonic), so a batch is the same as its commands applied one by one at that time, effects and state included.
    let commands = vec![
        create("other", QueueConfig::default()),
        send_cmd("q", vec![msg(Some("m"), "1"), NewMessage { delay_ms: Some(50), ..msg(None, "d") }]),
        receive_cmd("q", 1, Some(100)),
        send_cmd("other", vec![msg(None, "o")]),
        Command::PurgeQueue { name: "other".into() },
        Command::Tick,
        Command::DeleteQueue { name: "nope".into() },
    ];
    let mut batched = Harness::with_queue(QueueConfig::default());
    let mut single = Harness::with_queue(QueueConfig::default());
    batched.apply(1_000, Command::Tick).unwrap();
    single.apply(1_000, Command::Tick).unwrap();
    // Behind the state's clock: every command runs at 1,000.
    let results = batch_results(&mut batched, 900, commands.clone());
    let mut effects = Vec::new();
    for (command, result) in commands.into_iter().zip(results) {
        assert_eq!(single.apply(900, command), result);
        effects.append(&mut single.effects);
    }
    assert_eq!(batched.effects, effects);
    assert_eq!(batched.state, single.state);
    assert_eq!(batched.state.now_ms(), 1_000);
}

#[test]
fn batch_request_displays_its_size() {
    // Proves a batch entry is named by its command count in logs.
    let request = Request { now_ms: 3, command: Command::Batch(vec![Command::Tick, Command::Tick]) };
    assert_eq!(request.to_string(), "batch(2 commands)@3");
}
