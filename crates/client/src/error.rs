//! The client's errors, and the one place where a `tonic::Status` becomes one.

use std::error::Error as _;

use crate::config::normalize_address;

/// Metadata key the server sets on errors that need a machine-readable reason.
pub const ERROR_METADATA_KEY: &str = "quorumq-error";
/// Value of [`ERROR_METADATA_KEY`] on the answer of a node that is not the leader.
pub const NOT_LEADER: &str = "not-leader";
/// Metadata key with the leader's node id, on a not-leader answer, when known.
pub const LEADER_ID_METADATA_KEY: &str = "quorumq-leader-id";
/// Metadata key with the leader's `host:port`, on a not-leader answer, when known.
pub const LEADER_ADDR_METADATA_KEY: &str = "quorumq-leader-addr";
/// Optional metadata key on a not-leader answer: with the value
/// [`OUTCOME_UNKNOWN`] it says that the node had already proposed the request
/// when it lost leadership (openraft's `LogEntryDiscarded`), so the request
/// may still commit. Without it, a not-leader answer is taken to mean that
/// the request was rejected before it was proposed (openraft's
/// `ForwardToLeader`).
pub const OUTCOME_METADATA_KEY: &str = "quorumq-outcome";
/// Value of [`OUTCOME_METADATA_KEY`]: the request's fate is not known.
pub const OUTCOME_UNKNOWN: &str = "unknown";

/// An error of a client operation.
///
/// Each variant carries a human-readable message; [`Error::code`] gives the
/// matching gRPC code. Errors that the client gives up on after retrying
/// ([`Error::Unavailable`], [`Error::DeadlineExceeded`]) say so in
/// [`Error::is_retryable`]: the caller may try again later.
///
/// ```
/// use quorumq_client::Error;
///
/// let err = Error::NotFound("queue \"jobs\" does not exist".into());
/// assert_eq!(err.code(), tonic::Code::NotFound);
/// assert!(!err.is_retryable());
/// assert_eq!(err, Error::NotFound("queue \"jobs\" does not exist".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The queue (or another named thing) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The queue exists with another configuration.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is malformed: bad name, bad receipt, empty batch, bad address.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is well-formed but the state forbids it, for example a
    /// stale receipt or a message no longer in flight.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A limit was hit (too many queues, too large a batch).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// No node could serve the request before the deadline (nodes down, no
    /// leader elected), and no attempt can have taken effect; carries the
    /// last error seen.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed and the outcome is unknown: some attempt may
    /// have taken effect (it timed out, its connection broke after the
    /// request was sent, or the leader lost leadership after proposing it).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The server failed, or answered something the client cannot read.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The gRPC code of this error.
    ///
    /// ```
    /// assert_eq!(
    ///     quorumq_client::Error::Unavailable("no leader".into()).code(),
    ///     tonic::Code::Unavailable
    /// );
    /// ```
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The message, without the code.
    ///
    /// ```
    /// assert_eq!(quorumq_client::Error::Internal("boom".into()).message(), "boom");
    /// ```
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::InvalidArgument(m)
            | Error::FailedPrecondition(m)
            | Error::ResourceExhausted(m)
            | Error::Unavailable(m)
            | Error::DeadlineExceeded(m)
            | Error::Internal(m) => m,
        }
    }

    /// True for errors that may go away by themselves (no leader yet, nodes
    /// down, no quorum): the operation may be tried again later. Every
    /// operation already retried these within its deadline.
    ///
    /// ```
    /// use quorumq_client::Error;
    /// assert!(Error::DeadlineExceeded("no quorum".into()).is_retryable());
    /// assert!(!Error::InvalidArgument("bad name".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::DeadlineExceeded(_))
    }

    /// Maps a gRPC code and message to an error. Codes without a variant of
    /// their own go to the nearest one and keep their name in the message.
    fn from_code(code: tonic::Code, message: String) -> Error {
        let tagged = || format!("{code:?}: {message}");
        match code {
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::AlreadyExists => Error::AlreadyExists(message),
            tonic::Code::InvalidArgument => Error::InvalidArgument(message),
            tonic::Code::OutOfRange => Error::InvalidArgument(tagged()),
            tonic::Code::FailedPrecondition => Error::FailedPrecondition(message),
            tonic::Code::ResourceExhausted => Error::ResourceExhausted(message),
            tonic::Code::Unavailable => Error::Unavailable(message),
            tonic::Code::Aborted | tonic::Code::Cancelled => Error::Unavailable(tagged()),
            tonic::Code::DeadlineExceeded => Error::DeadlineExceeded(message),
            tonic::Code::Internal => Error::Internal(message),
            tonic::Code::Ok
            | tonic::Code::Unknown
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::Unimplemented
            | tonic::Code::DataLoss => Error::Internal(tagged()),
        }
    }
}

/// The error of one entry of a batch (one message of `send_batch`, one
/// receipt of `ack_batch`, …). The other entries of the batch are unaffected.
///
/// ```
/// use quorumq_client::{EntryError, Error};
///
/// let entry = EntryError { code: tonic::Code::FailedPrecondition, message: "stale receipt".into() };
/// assert_eq!(Error::from(entry), Error::FailedPrecondition("stale receipt".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct EntryError {
    /// The gRPC code of the entry's failure.
    pub code: tonic::Code,
    /// What went wrong, for humans.
    pub message: String,
}

impl From<EntryError> for Error {
    fn from(entry: EntryError) -> Error {
        Error::from_code(entry.code, entry.message)
    }
}

/// Where a not-leader answer says the leader is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaderHint {
    pub(crate) id: Option<u64>,
    /// Normalised `host:port`.
    pub(crate) address: String,
}

/// What one failed attempt tells the retry loop.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The node is not the leader. `proposed` is true when the node says it
    /// had proposed the request before it lost leadership, so that the
    /// request may still commit.
    NotLeader { hint: Option<LeaderHint>, proposed: bool },
    /// The node could not be reached, dropped the connection, or said it is
    /// unavailable. `sent` is false only when the connection failed before
    /// the request was written, which proves it was not executed.
    NodeFailed { error: Error, sent: bool },
    /// The request's time ran out before its outcome was learnt: the server
    /// answered DEADLINE_EXCEEDED (no quorum in time, slow disk) or gave up at
    /// the `grpc-timeout` the client sent, or the client's own transport
    /// ended the call at that timeout. The connection is not known to be
    /// broken.
    Unknown { error: Error },
    /// A definite answer; retrying would give the same.
    Final(Error),
}

/// Classifies a status. This is the only place where a `tonic::Status`
/// becomes an [`Error`].
pub(crate) fn classify(status: &tonic::Status) -> Failure {
    let metadata = status.metadata();
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    if text(ERROR_METADATA_KEY) == Some(NOT_LEADER) {
        let id = text(LEADER_ID_METADATA_KEY).and_then(|v| v.trim().parse().ok());
        let hint =
            text(LEADER_ADDR_METADATA_KEY).filter(|a| !a.trim().is_empty()).and_then(|a| match normalize_address(a) {
                Ok(address) => Some(LeaderHint { id, address }),
                Err(err) => {
                    tracing::warn!(address = a, %err, "ignoring unusable leader hint");
                    None
                }
            });
        let proposed = text(OUTCOME_METADATA_KEY) == Some(OUTCOME_UNKNOWN);
        return Failure::NotLeader { hint, proposed };
    }
    let error = Error::from_code(status.code(), status.message().to_string());
    // Statuses decoded from a server's answer carry no source; those that the
    // client's transport made up (connection refused, reset, keepalive
    // timeout) carry the transport error that caused them.
    if let Some(source) = status.source() {
        if chain_has::<tonic::TimeoutExpired>(source) {
            return Failure::Unknown {
                error: Error::DeadlineExceeded(format!(
                    "no answer within the attempt's grpc-timeout: {}",
                    status.message()
                )),
            };
        }
        return Failure::NodeFailed {
            error: Error::Unavailable(format!("{}: {}", status.message(), error_chain(source))),
            sent: !chain_has::<tonic::ConnectError>(source),
        };
    }
    match status.code() {
        tonic::Code::Unavailable => Failure::NodeFailed { error, sent: true },
        tonic::Code::DeadlineExceeded | tonic::Code::Aborted => Failure::Unknown { error },
        // A tonic server answers CANCELLED when the request's `grpc-timeout`
        // expires before the handler finishes: the same as
        // DEADLINE_EXCEEDED for the caller.
        tonic::Code::Cancelled => Failure::Unknown {
            error: Error::DeadlineExceeded(format!("the server gave up on the request: {}", status.message())),
        },
        _ => Failure::Final(error),
    }
}

/// True when the error chain holds an error of type `E`. A
/// `tonic::ConnectError` means that the connection failed before the request
/// was written; a `tonic::TimeoutExpired`, that the request's `grpc-timeout`
/// expired.
fn chain_has<E: std::error::Error + 'static>(mut err: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if err.is::<E>() {
            return true;
        }
        match err.source() {
            Some(next) => err = next,
            None => return false,
        }
    }
}

/// "outer: inner: innermost", for messages that keep the root cause.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_leader(addr: Option<&str>, id: Option<&str>) -> tonic::Status {
        let mut status = tonic::Status::unavailable("not the leader");
        let md = status.metadata_mut();
        md.insert(ERROR_METADATA_KEY, NOT_LEADER.parse().unwrap());
        if let Some(a) = addr {
            md.insert(LEADER_ADDR_METADATA_KEY, a.parse().unwrap());
        }
        if let Some(i) = id {
            md.insert(LEADER_ID_METADATA_KEY, i.parse().unwrap());
        }
        status
    }

    #[test]
    fn not_leader_with_hint_names_the_leader() {
        let failure = classify(&not_leader(Some("10.0.0.2:7000"), Some("2")));
        let Failure::NotLeader { hint: Some(hint), proposed: false } = failure else {
            panic!("expected a hint, got {failure:?}");
        };
        assert_eq!(hint, LeaderHint { id: Some(2), address: "10.0.0.2:7000".into() });
    }

    #[test]
    fn not_leader_after_proposal_is_marked() {
        let mut status = not_leader(None, None);
        status.metadata_mut().insert(OUTCOME_METADATA_KEY, OUTCOME_UNKNOWN.parse().unwrap());
        assert!(matches!(classify(&status), Failure::NotLeader { proposed: true, .. }));
    }

    #[test]
    fn not_leader_without_usable_hint_has_none() {
        for addr in [None, Some(""), Some("no-port")] {
            let failure = classify(&not_leader(addr, None));
            assert!(matches!(failure, Failure::NotLeader { hint: None, .. }), "{addr:?}: {failure:?}");
        }
    }

    #[test]
    fn server_codes_map_to_variants() {
        let f = classify(&tonic::Status::not_found("queue \"q\" does not exist"));
        assert!(matches!(f, Failure::Final(Error::NotFound(m)) if m == "queue \"q\" does not exist"));
        let f = classify(&tonic::Status::deadline_exceeded("no quorum"));
        assert!(matches!(f, Failure::Unknown { error: Error::DeadlineExceeded(_) }));
        let f = classify(&tonic::Status::unavailable("shutting down"));
        assert!(matches!(f, Failure::NodeFailed { sent: true, .. }));
        let f = classify(&tonic::Status::cancelled("Timeout expired"));
        assert!(matches!(f, Failure::Unknown { error: Error::DeadlineExceeded(_) }), "{f:?}");
        let f = classify(&tonic::Status::unimplemented("nope"));
        assert!(matches!(f, Failure::Final(Error::Internal(m)) if m.starts_with("Unimplemented")));
    }

    #[test]
    fn an_expired_grpc_timeout_is_an_unknown_outcome() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let f = classify(&status);
        assert!(matches!(f, Failure::Unknown { error: Error::DeadlineExceeded(_) }), "{f:?}");
    }

    #[test]
    fn connect_errors_prove_the_request_was_not_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        let f = classify(&status);
        assert!(matches!(f, Failure::NodeFailed { sent: false, error: Error::Unavailable(_) }), "{f:?}");
    }
}
