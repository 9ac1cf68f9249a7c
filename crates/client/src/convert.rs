//! Conversions between the wire types of `quorumq-proto` and the client's
//! own types. The only module besides the RPC calls that knows prost types.

use std::time::Duration;

use quorumq_proto::admin as pa;
use quorumq_proto::client as pc;

use crate::cluster::{Member, NodeStatus, Role};
use crate::{EntryError, Error, Message, OutgoingMessage, QueueInfo, QueueOptions, QueueStats, SendReceipt};

/// Whole milliseconds, rounded up so that a short non-zero duration never
/// becomes zero (which means "now" or "default" on the wire).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

pub(crate) fn queue_config(options: &QueueOptions) -> pc::QueueConfig {
    pc::QueueConfig {
        visibility_timeout_ms: options.visibility_timeout.map(millis),
        dedup_window_ms: options.dedup_window.map(millis),
    }
}

pub(crate) fn queue_info(info: pc::QueueInfo) -> QueueInfo {
    let config = info.config.unwrap_or_default();
    let stats = info.stats.unwrap_or_default();
    QueueInfo {
        name: info.name,
        config: QueueOptions {
            visibility_timeout: config.visibility_timeout_ms.map(Duration::from_millis),
            dedup_window: config.dedup_window_ms.map(Duration::from_millis),
        },
        stats: QueueStats {
            ready: stats.ready,
            in_flight: stats.in_flight,
            bytes: stats.bytes,
            sent_total: stats.sent_total,
            acked_total: stats.acked_total,
            received_total: stats.received_total,
            oldest_sent_at_ms: stats.oldest_sent_at_ms,
        },
        created_at_ms: info.created_at_ms,
    }
}

/// The queue of an answer that must hold one.
pub(crate) fn required_queue(info: Option<pc::QueueInfo>, op: &str) -> Result<QueueInfo, Error> {
    info.map(queue_info).ok_or_else(|| Error::Internal(format!("the server's answer to {op} holds no queue")))
}

/// The wire form of a message whose id has been settled.
pub(crate) fn outgoing(message: OutgoingMessage, id: String) -> pc::OutgoingMessage {
    pc::OutgoingMessage { body: message.body, id }
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
    }
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
