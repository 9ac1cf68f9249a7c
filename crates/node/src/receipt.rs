//! The wire form of a receipt handle: 21 bytes (version, queue id, seq,
//! receive count) in URL-safe base64. Opaque to clients.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use quorumq_raft_state_machine::QueueId;
use quorumq_raft_state_machine::Receipt;
use quorumq_raft_state_machine::Seq;

const VERSION: u8 = 1;
const ENCODED_LEN: usize = 28;

pub fn encode(receipt: &Receipt) -> String {
    let mut bytes = [0u8; 21];
    bytes[0] = VERSION;
    bytes[1..9].copy_from_slice(&receipt.queue_id.0.to_be_bytes());
    bytes[9..17].copy_from_slice(&receipt.seq.0.to_be_bytes());
    bytes[17..21].copy_from_slice(&receipt.receive_count.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `None` when the string is not a receipt this server issued.
pub fn decode(s: &str) -> Option<Receipt> {
    if s.len() != ENCODED_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    if bytes.len() != 21 || bytes[0] != VERSION {
        return None;
    }
    Some(Receipt {
        queue_id: QueueId(u64::from_be_bytes(bytes[1..9].try_into().ok()?)),
        seq: Seq(u64::from_be_bytes(bytes[9..17].try_into().ok()?)),
        receive_count: u32::from_be_bytes(bytes[17..21].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt survives encoding, and strings that are not receipts are
    /// refused rather than misread.
    #[test]
    fn round_trip_and_rejects_garbage() {
        let r = Receipt { queue_id: QueueId(7), seq: Seq(123_456), receive_count: 3 };
        let s = encode(&r);
        assert_eq!(s.len(), ENCODED_LEN);
        assert_eq!(decode(&s), Some(r));
        assert_eq!(decode(""), None);
        assert_eq!(decode("not-a-receipt"), None);
        assert_eq!(decode(&"A".repeat(ENCODED_LEN)), None);
        assert_eq!(decode(&s[1..]), None);
    }
}
