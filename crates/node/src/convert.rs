//! Conversions between the wire types (`proto/client.proto`) and the state
//! machine's types, in one place.

use std::collections::BTreeMap;
use std::collections::HashMap;

use quorumq_proto::client as pb;
use quorumq_raft_state_machine as qsm;
use quorumq_raft_state_machine::QueueError;
use tonic::Status;

use crate::errors;
use crate::receipt;

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn overflow_from_pb(value: i32) -> Result<qsm::Overflow, Status> {
    match pb::Overflow::try_from(value) {
        Ok(pb::Overflow::RejectPublish) | Ok(pb::Overflow::Unspecified) => Ok(qsm::Overflow::RejectPublish),
        Ok(pb::Overflow::DropHead) => Ok(qsm::Overflow::DropHead),
        Err(_) => Err(invalid(format!("unknown overflow policy {value}"))),
    }
}

fn overflow_to_pb(o: qsm::Overflow) -> pb::Overflow {
    match o {
        qsm::Overflow::RejectPublish => pb::Overflow::RejectPublish,
        qsm::Overflow::DropHead => pb::Overflow::DropHead,
    }
}

/// `None` (no policy) for an empty queue name.
fn dead_letter_from_pb(p: pb::DeadLetterPolicy) -> Option<qsm::DeadLetterPolicy> {
    (!p.queue.is_empty()).then_some(qsm::DeadLetterPolicy { queue: p.queue, max_receives: p.max_receives })
}

/// `None` (no backoff) when `min_ms` is 0; the factor defaults to 2.
fn backoff_from_pb(b: pb::RedeliveryBackoff) -> Option<qsm::Backoff> {
    (b.min_ms > 0).then_some(qsm::Backoff {
        min_ms: b.min_ms,
        max_ms: b.max_ms,
        factor_milli: if b.factor_milli == 0 { 2000 } else { b.factor_milli },
    })
}

/// A new queue's configuration: given attributes, defaults for the rest.
pub fn queue_config_from_pb(config: Option<pb::QueueConfig>) -> Result<qsm::QueueConfig, Status> {
    let c = config.unwrap_or_default();
    let d = qsm::QueueConfig::default();
    let config = qsm::QueueConfig {
        visibility_timeout_ms: c.visibility_timeout_ms.unwrap_or(d.visibility_timeout_ms),
        dedup_window_ms: c.dedup_window_ms.unwrap_or(d.dedup_window_ms),
        retention_ms: c.retention_ms.unwrap_or(d.retention_ms),
        message_ttl_ms: c.message_ttl_ms.filter(|&t| t > 0),
        delay_ms: c.delay_ms.unwrap_or(d.delay_ms),
        max_messages: c.max_messages.filter(|&m| m > 0),
        max_bytes: c.max_bytes.filter(|&m| m > 0),
        overflow: c.overflow.map(overflow_from_pb).transpose()?.unwrap_or(d.overflow),
        dead_letter: c.dead_letter.and_then(dead_letter_from_pb),
        redelivery_backoff: c.redelivery_backoff.and_then(backoff_from_pb),
        fifo: c.fifo.unwrap_or(false),
        content_based_dedup: c.content_based_dedup.unwrap_or(false),
    };
    config.validate().map_err(|e| errors::queue_error(&e))?;
    Ok(config)
}

/// A change of attributes: only the fields set. `fifo` cannot change.
pub fn queue_update_from_pb(c: pb::QueueConfig, current_fifo: Option<bool>) -> Result<qsm::QueueConfigUpdate, Status> {
    if let Some(fifo) = c.fifo
        && Some(fifo) != current_fifo
    {
        return Err(invalid("a queue is FIFO or not from its creation; that cannot change"));
    }
    Ok(qsm::QueueConfigUpdate {
        visibility_timeout_ms: c.visibility_timeout_ms,
        dedup_window_ms: c.dedup_window_ms,
        retention_ms: c.retention_ms,
        message_ttl_ms: c.message_ttl_ms.map(|t| (t > 0).then_some(t)),
        delay_ms: c.delay_ms,
        max_messages: c.max_messages.map(|m| (m > 0).then_some(m)),
        max_bytes: c.max_bytes.map(|m| (m > 0).then_some(m)),
        overflow: c.overflow.map(overflow_from_pb).transpose()?,
        dead_letter: c.dead_letter.map(dead_letter_from_pb),
        redelivery_backoff: c.redelivery_backoff.map(backoff_from_pb),
        content_based_dedup: c.content_based_dedup,
    })
}

pub fn queue_config_to_pb(c: &qsm::QueueConfig) -> pb::QueueConfig {
    pb::QueueConfig {
        visibility_timeout_ms: Some(c.visibility_timeout_ms),
        dedup_window_ms: Some(c.dedup_window_ms),
        retention_ms: Some(c.retention_ms),
        message_ttl_ms: Some(c.message_ttl_ms.unwrap_or(0)),
        delay_ms: Some(c.delay_ms),
        max_messages: Some(c.max_messages.unwrap_or(0)),
        max_bytes: Some(c.max_bytes.unwrap_or(0)),
        overflow: Some(overflow_to_pb(c.overflow) as i32),
        dead_letter: c
            .dead_letter
            .as_ref()
            .map(|p| pb::DeadLetterPolicy { queue: p.queue.clone(), max_receives: p.max_receives }),
        redelivery_backoff: c.redelivery_backoff.map(|b| pb::RedeliveryBackoff {
            min_ms: b.min_ms,
            max_ms: b.max_ms,
            factor_milli: b.factor_milli,
        }),
        fifo: Some(c.fifo),
        content_based_dedup: Some(c.content_based_dedup),
    }
}

pub fn queue_info_to_pb(info: qsm::QueueInfo) -> pb::QueueInfo {
    let s = &info.stats;
    pb::QueueInfo {
        config: Some(queue_config_to_pb(&info.config)),
        stats: Some(pb::QueueStats {
            ready: s.ready,
            in_flight: s.in_flight,
            bytes: s.bytes,
            sent_total: s.sent_total,
            acked_total: s.acked_total,
            received_total: s.received_total,
            oldest_sent_at_ms: s.oldest_sent_at_ms,
            delayed: s.delayed,
            dead_lettered_total: s.dead_lettered_total,
            expired_total: s.expired_total,
            dropped_total: s.dropped_total,
            rejected_total: s.rejected_total,
        }),
        created_at_ms: info.created_at_ms,
        name: info.name,
    }
}

fn attribute_from_pb(name: &str, v: pb::AttributeValue) -> Result<qsm::AttributeValue, QueueError> {
    match v.value {
        Some(pb::attribute_value::Value::StringValue(s)) => Ok(qsm::AttributeValue::String(s)),
        Some(pb::attribute_value::Value::BinaryValue(b)) => Ok(qsm::AttributeValue::Binary(b)),
        None => Err(QueueError::InvalidArgument(format!("attribute {name:?} has no value"))),
    }
}

fn attributes_to_pb(attributes: BTreeMap<String, qsm::AttributeValue>) -> HashMap<String, pb::AttributeValue> {
    attributes
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                qsm::AttributeValue::String(s) => pb::attribute_value::Value::StringValue(s),
                qsm::AttributeValue::Binary(b) => pb::attribute_value::Value::BinaryValue(b),
            };
            (k, pb::AttributeValue { value: Some(value) })
        })
        .collect()
}

/// A message to send, checked on its own; `bytes_max` is the node's message
/// size limit (body plus attributes).
pub fn new_message_from_pb(m: pb::OutgoingMessage, bytes_max: usize) -> Result<qsm::NewMessage, QueueError> {
    let priority = u8::try_from(m.priority)
        .map_err(|_| QueueError::InvalidArgument(format!("priority {} is above the maximum of 9", m.priority)))?;
    let mut attributes = BTreeMap::new();
    for (name, value) in m.attributes {
        let value = attribute_from_pb(&name, value)?;
        attributes.insert(name, value);
    }
    let message = qsm::NewMessage {
        id: (!m.id.is_empty()).then_some(m.id),
        id_generated: m.id_generated,
        body: m.body,
        delay_ms: m.delay_ms,
        ttl_ms: m.ttl_ms,
        group: (!m.group.is_empty()).then_some(m.group),
        priority,
        attributes,
    };
    if message.size() > bytes_max {
        return Err(QueueError::MessageTooLarge { bytes: message.size(), bytes_max });
    }
    message.validate()?;
    Ok(message)
}

/// A delivery as the client sees it.
pub fn message_to_pb(queue_id: qsm::QueueId, d: &qsm::Delivery, record: qsm::MessageRecord) -> pb::Message {
    let dead_letter = record.dead_letter.as_ref();
    pb::Message {
        id: qsm::message_id(queue_id, d.receipt.seq, record.id.as_deref()),
        body: record.body,
        receipt: receipt::encode(&d.receipt),
        receive_count: d.receipt.receive_count,
        seq: d.receipt.seq.0,
        sent_at_ms: d.sent_at_ms,
        first_received_at_ms: d.first_received_at_ms,
        attributes: attributes_to_pb(record.attributes),
        group: record.group.unwrap_or_default(),
        priority: record.priority as u32,
        dead_letter_reason: dead_letter.map(|i| i.reason.as_str().to_string()).unwrap_or_default(),
        dead_letter_source_queue: dead_letter.map(|i| i.source_queue.clone()).unwrap_or_default(),
        dead_letter_receive_count: dead_letter.map_or(0, |i| i.receive_count),
    }
}
