//! Conversions between the wire types of `quorumq-proto` and the client's
//! own types. The only module besides the RPC calls that knows prost types.

use std::time::Duration;

use bytes::Bytes;
use quorumq_proto::admin as pa;
use quorumq_proto::client as pc;

use crate::cluster::{Member, NodeStatus, Role};
use crate::{
    AttributeValue, DeadLetterInfo, DeadLetterPolicy, DeadLetterReason, EntryError, Error, Message, OutgoingMessage,
    Overflow, QueueInfo, QueueOptions, QueueStats, RedeliveryBackoff, RedriveResult, SendReceipt,
};

/// Whole milliseconds, rounded up so that a short non-zero duration never
/// becomes zero (which means "now" or "default" on the wire).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

pub(crate) fn queue_config(options: &QueueOptions) -> pc::QueueConfig {
    pc::QueueConfig {
        visibility_timeout_ms: options.visibility_timeout.map(millis),
        dedup_window_ms: options.dedup_window.map(millis),
        retention_ms: options.retention.map(millis),
        message_ttl_ms: options.message_ttl.map(millis),
        delay_ms: options.delay.map(millis),
        max_messages: options.max_messages,
        max_bytes: options.max_bytes,
        overflow: options.overflow.map(|o| overflow_to_wire(o) as i32),
        dead_letter: options
            .dead_letter
            .as_ref()
            .map(|p| pc::DeadLetterPolicy { queue: p.queue.clone(), max_receives: p.max_receives }),
        redelivery_backoff: options.redelivery_backoff.map(|b| pc::RedeliveryBackoff {
            min_ms: millis(b.min),
            max_ms: millis(b.max),
            factor_milli: b.factor_milli,
        }),
        fifo: options.fifo,
        content_based_dedup: options.content_based_dedup,
    }
}

fn overflow_to_wire(overflow: Overflow) -> pc::Overflow {
    match overflow {
        Overflow::RejectPublish => pc::Overflow::RejectPublish,
        Overflow::DropHead => pc::Overflow::DropHead,
    }
}

/// The server's overflow policy; an unspecified or unknown value is what the
/// server does without one (reject-publish).
fn overflow_from_wire(value: i32) -> Overflow {
    match pc::Overflow::try_from(value) {
        Ok(pc::Overflow::DropHead) => Overflow::DropHead,
        Ok(pc::Overflow::RejectPublish | pc::Overflow::Unspecified) | Err(_) => Overflow::RejectPublish,
    }
}

pub(crate) fn queue_options(config: pc::QueueConfig) -> QueueOptions {
    QueueOptions {
        visibility_timeout: config.visibility_timeout_ms.map(Duration::from_millis),
        dedup_window: config.dedup_window_ms.map(Duration::from_millis),
        retention: config.retention_ms.map(Duration::from_millis),
        message_ttl: config.message_ttl_ms.map(Duration::from_millis),
        delay: config.delay_ms.map(Duration::from_millis),
        max_messages: config.max_messages,
        max_bytes: config.max_bytes,
        overflow: config.overflow.map(overflow_from_wire),
        dead_letter: config
            .dead_letter
            .map(|p| DeadLetterPolicy { queue: p.queue, max_receives: p.max_receives })
            .filter(|p| !p.is_none()),
        redelivery_backoff: config
            .redelivery_backoff
            .map(|b| RedeliveryBackoff {
                min: Duration::from_millis(b.min_ms),
                max: Duration::from_millis(b.max_ms),
                factor_milli: b.factor_milli,
            })
            .filter(|b| !b.is_off()),
        fifo: config.fifo,
        content_based_dedup: config.content_based_dedup,
    }
}

pub(crate) fn queue_info(info: pc::QueueInfo) -> QueueInfo {
    let stats = info.stats.unwrap_or_default();
    QueueInfo {
        name: info.name,
        config: queue_options(info.config.unwrap_or_default()),
        stats: QueueStats {
            ready: stats.ready,
            in_flight: stats.in_flight,
            bytes: stats.bytes,
            sent_total: stats.sent_total,
            acked_total: stats.acked_total,
            received_total: stats.received_total,
            oldest_sent_at_ms: stats.oldest_sent_at_ms,
            delayed: stats.delayed,
            dead_lettered_total: stats.dead_lettered_total,
            expired_total: stats.expired_total,
            dropped_total: stats.dropped_total,
            rejected_total: stats.rejected_total,
        },
        created_at_ms: info.created_at_ms,
    }
}

/// The queue of an answer that must hold one.
pub(crate) fn required_queue(info: Option<pc::QueueInfo>, op: &str) -> Result<QueueInfo, Error> {
    info.map(queue_info).ok_or_else(|| Error::Internal(format!("the server's answer to {op} holds no queue")))
}

fn attribute_to_wire(value: AttributeValue) -> pc::AttributeValue {
    let value = match value {
        AttributeValue::String(s) => pc::attribute_value::Value::StringValue(s),
        AttributeValue::Binary(b) => pc::attribute_value::Value::BinaryValue(b),
    };
    pc::AttributeValue { value: Some(value) }
}

/// An attribute without a value (which the server never sends) reads as an
/// empty binary value rather than failing the whole answer.
fn attribute_from_wire(value: pc::AttributeValue) -> AttributeValue {
    match value.value {
        Some(pc::attribute_value::Value::StringValue(s)) => AttributeValue::String(s),
        Some(pc::attribute_value::Value::BinaryValue(b)) => AttributeValue::Binary(b),
        None => AttributeValue::Binary(Bytes::new()),
    }
}

/// The wire form of a message whose id has been settled: the producer's
/// (`generated` false) or one the client made up (`generated` true).
pub(crate) fn outgoing(message: OutgoingMessage, id: String, generated: bool) -> pc::OutgoingMessage {
    pc::OutgoingMessage {
        body: message.body,
        id,
        id_generated: generated,
        delay_ms: message.delay.map(millis),
        ttl_ms: message.ttl.map(millis),
        group: message.group.unwrap_or_default(),
        priority: message.priority,
        attributes: message.attributes.into_iter().map(|(k, v)| (k, attribute_to_wire(v))).collect(),
    }
}

pub(crate) fn entry_error(error: pc::EntryError) -> EntryError {
    EntryError { code: tonic::Code::from_i32(error.code), message: error.message }
}

pub(crate) fn send_result(result: pc::SendResult) -> Result<SendReceipt, EntryError> {
    match result.error {
        Some(error) => Err(entry_error(error)),
        None => Ok(SendReceipt { id: result.id, seq: result.seq, duplicate: result.duplicate }),
    }
}

pub(crate) fn receipt_result(result: pc::ReceiptResult) -> Result<(), EntryError> {
    match result.error {
        Some(error) => Err(entry_error(error)),
        None => Ok(()),
    }
}

/// Checks that a batch answer has one result per entry.
pub(crate) fn check_result_count(op: &str, entries: usize, results: usize) -> Result<(), Error> {
    if entries == results {
        Ok(())
    } else {
        Err(Error::Internal(format!("the server answered {op} of {entries} entries with {results} results")))
    }
}

pub(crate) fn message(m: pc::Message) -> Message {
    Message {
        id: m.id,
        body: m.body,
        receipt: m.receipt,
        receive_count: m.receive_count,
        seq: m.seq,
        sent_at_ms: m.sent_at_ms,
        first_received_at_ms: m.first_received_at_ms,
        attributes: m.attributes.into_iter().map(|(k, v)| (k, attribute_from_wire(v))).collect(),
        group: Some(m.group).filter(|g| !g.is_empty()),
        priority: m.priority,
        dead_letter: (!m.dead_letter_reason.is_empty()).then(|| DeadLetterInfo {
            reason: DeadLetterReason::parse(&m.dead_letter_reason),
            source_queue: m.dead_letter_source_queue,
            receive_count: m.dead_letter_receive_count,
        }),
    }
}

pub(crate) fn redrive_result(r: pc::RedriveResponse) -> RedriveResult {
    RedriveResult { moved: r.moved, remaining: r.remaining, skipped: r.skipped }
}

pub(crate) fn node_status(s: pa::NodeStatusResponse) -> NodeStatus {
    NodeStatus {
        id: s.id,
        address: s.address,
        role: Role::parse(&s.role),
        leader_id: s.leader_id,
        leader_address: Some(s.leader_address).filter(|a| !a.is_empty()),
        term: s.term,
        last_log_index: s.last_log_index,
        committed_index: s.committed_index,
        applied_index: s.applied_index,
        members: s.members.into_iter().map(|m| Member { id: m.id, address: m.address, voter: m.voter }).collect(),
        initialized: s.initialized,
        millis_since_quorum_ack: s.millis_since_quorum_ack,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        alarms: s.alarms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn queue_options_round_trip_through_the_wire() {
        let options = QueueOptions {
            visibility_timeout: Some(Duration::from_secs(60)),
            dedup_window: Some(Duration::from_secs(600)),
            retention: Some(Duration::from_secs(86_400)),
            message_ttl: Some(Duration::from_secs(3600)),
            delay: Some(Duration::from_millis(1500)),
            max_messages: Some(1000),
            max_bytes: Some(1 << 20),
            overflow: Some(Overflow::DropHead),
            dead_letter: Some(DeadLetterPolicy { queue: "dlq".into(), max_receives: 3 }),
            redelivery_backoff: Some(RedeliveryBackoff {
                min: Duration::from_secs(1),
                max: Duration::from_secs(60),
                factor_milli: 3000,
            }),
            fifo: Some(true),
            content_based_dedup: Some(true),
        };
        assert_eq!(queue_options(queue_config(&options)), options);
        assert_eq!(queue_options(queue_config(&QueueOptions::default())), QueueOptions::default());
        let wire = queue_config(&options);
        assert_eq!(wire.overflow, Some(pc::Overflow::DropHead as i32));
        assert_eq!(wire.delay_ms, Some(1500));
    }

    #[test]
    fn removal_values_have_their_wire_form() {
        let wire = queue_config(&QueueOptions::remove_all_policies());
        assert_eq!(wire.message_ttl_ms, Some(0));
        assert_eq!(wire.max_messages, Some(0));
        assert_eq!(wire.max_bytes, Some(0));
        assert_eq!(wire.dead_letter.as_ref().map(|p| p.queue.as_str()), Some(""));
        assert_eq!(wire.redelivery_backoff.as_ref().map(|b| b.min_ms), Some(0));
        assert_eq!(wire.visibility_timeout_ms, None);
        // Read back, "no policy" is None, whether omitted or spelt empty.
        let options = queue_options(wire);
        assert_eq!(options.dead_letter, None);
        assert_eq!(options.redelivery_backoff, None);
        assert_eq!(overflow_from_wire(0), Overflow::RejectPublish);
        assert_eq!(overflow_from_wire(99), Overflow::RejectPublish);
    }

    #[test]
    fn outgoing_messages_carry_every_field() {
        let message = OutgoingMessage::new("b")
            .with_delay(Duration::from_micros(1))
            .with_ttl(Duration::from_secs(2))
            .with_group("g")
            .with_priority(3)
            .with_attribute("s", "text")
            .with_attribute("b", vec![1u8, 2]);
        let wire = outgoing(message.clone(), "id-1".into(), true);
        assert_eq!(wire.id, "id-1");
        assert!(wire.id_generated);
        assert_eq!(wire.delay_ms, Some(1), "a short delay rounds up, not to zero");
        assert_eq!(wire.ttl_ms, Some(2000));
        assert_eq!(wire.group, "g");
        assert_eq!(wire.priority, 3);
        assert_eq!(wire.attributes["s"].value, Some(pc::attribute_value::Value::StringValue("text".into())));
        let plain = outgoing(OutgoingMessage::new("b"), "mine".into(), false);
        assert!(!plain.id_generated);
        assert_eq!((plain.delay_ms, plain.ttl_ms, plain.group.as_str()), (None, None, ""));

        // What a receive gives back.
        let received = message_from(pc::Message {
            attributes: wire.attributes,
            group: "g".into(),
            priority: 3,
            dead_letter_reason: "max-receives".into(),
            dead_letter_source_queue: "jobs".into(),
            dead_letter_receive_count: 5,
            ..Default::default()
        });
        assert_eq!(received.attributes, message.attributes);
        assert_eq!(received.group.as_deref(), Some("g"));
        assert_eq!(
            received.dead_letter,
            Some(DeadLetterInfo {
                reason: DeadLetterReason::MaxReceives,
                source_queue: "jobs".into(),
                receive_count: 5
            })
        );
        let plain = message_from(pc::Message::default());
        assert_eq!((plain.group, plain.dead_letter), (None, None));
    }

    fn message_from(m: pc::Message) -> Message {
        message(m)
    }

    #[test]
    fn entry_errors_keep_their_code() {
        let result = pc::SendResult {
            error: Some(pc::EntryError { code: 3, message: "too large".into() }),
            ..Default::default()
        };
        assert_eq!(
            send_result(result),
            Err(EntryError { code: tonic::Code::InvalidArgument, message: "too large".into() })
        );
    }
}
