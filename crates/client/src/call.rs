//! The retry loop every cluster operation goes through: leader following,
//! failover to the next node, backoff with jitter, and the deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::{Failure, classify};
use crate::limits;
use crate::route::Backoff;
use crate::{Client, Error};

/// What one attempt is given: the channel to the node, the long-poll wait
/// that is left, and the time the server is told it has.
pub(crate) struct Attempt {
    pub(crate) channel: Channel,
    pub(crate) wait: Duration,
    server_timeout: Duration,
}

impl Attempt {
    /// A request carrying the attempt's time budget as `grpc-timeout`.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.server_timeout);
        request
    }
}

/// An operation that failed, and whether an earlier attempt may have been
/// executed by the cluster (its outcome was never learnt).
#[derive(Debug)]
pub(crate) struct CallFailure {
    pub(crate) error: Error,
    pub(crate) ambiguous: bool,
}

impl From<CallFailure> for Error {
    fn from(failure: CallFailure) -> Error {
        failure.error
    }
}

impl Client {
    /// Runs `attempt` against the leader until it gives a definite answer or
    /// the deadline passes.
    ///
    /// `long_poll` is the wait of a long-polling receive: the wait ends at a
    /// fixed instant however many attempts it takes, each attempt is given
    /// the wait that is left ([`Attempt::wait`]), and the deadline counts
    /// from the end of the wait.
    ///
    /// Every attempt runs under `timeout(min(time left, attempt_timeout +
    /// wait))`, and every pause is cut at the deadline, so the call returns
    /// by the deadline plus scheduling noise.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        long_poll: Duration,
        mut attempt: F,
    ) -> Result<T, CallFailure>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let router = &self.inner.router;
        let start = Instant::now();
        let wait_end = start + long_poll;
        let deadline_at = wait_end + self.deadline;
        let mut backoff = Backoff::new(self.inner.backoff_initial, self.inner.backoff_max);
        let mut target = router.first_target();
        let mut ambiguous = false;
        let mut redirects = 0u32;
        // Whether the last failure named a leader (no election under way).
        let mut leader_named;
        let mut failovers = 0u32;
        let mut probe = None;
        let mut attempts = 0u32;
        let mut last_error: Option<Error> = None;
        loop {
            let now = Instant::now();
            if now >= deadline_at {
                let error = give_up(op, now - start, attempts, last_error, ambiguous);
                return Err(CallFailure { error, ambiguous });
            }
            let wait = wait_end.saturating_duration_since(now);
            let limit = (deadline_at - now).min(self.inner.attempt_timeout.saturating_add(wait));
            let channel = router.channel(&target).map_err(|error| CallFailure { error, ambiguous })?;
            attempts += 1;
            // The margin comes out of the time beyond the long-poll wait, so
            // that the server can always wait out the wait it was asked for.
            let beyond_wait = limit.saturating_sub(wait);
            let server_timeout = limit - (beyond_wait / 5).min(limits::SERVER_TIMEOUT_MARGIN);
            let this = Attempt { channel, wait, server_timeout };
            let failure = match tokio::time::timeout(limit, attempt(this)).await {
                Ok(Ok(response)) => {
                    // Queue operations are served by the leader only, so the
                    // node that answered is the leader.
                    router.confirm_leader(&target);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => classify(&status),
                // The transport ends the call at `server_timeout` (it
                // enforces the grpc-timeout it sends), so this backstop fires
                // only when the transport itself is stuck: count the node as
                // failed and its connection as broken.
                Err(_elapsed) => Failure::NodeFailed {
                    error: Error::DeadlineExceeded(format!("{target} did not answer within {limit:?}")),
                    sent: true,
                },
            };
            leader_named = false;
            match failure {
                Failure::Final(error) => return Err(CallFailure { error, ambiguous }),
                Failure::NotLeader { hint: Some(hint), proposed } if router.recently_failed(&hint.address) => {
                    // The hint names a node that failed here a moment ago:
                    // the cluster has not noticed yet (its election timeout
                    // is still running). Going there would cost a refused
                    // connection, or a whole connect timeout behind a
                    // silent network; look for the next leader instead.
                    ambiguous |= proposed;
                    tracing::debug!(op, from = %target, leader = %hint.address, "not the leader; its hint names a node that just failed");
                    last_error = Some(Error::Unavailable(format!(
                        "{target} is not the leader; it named {}, which failed",
                        hint.address
                    )));
                    router.forget_leader(&hint.address);
                    target = router.next_after(&target);
                }
                Failure::NotLeader { hint: Some(hint), proposed } => {
                    ambiguous |= proposed;
                    tracing::debug!(op, from = %target, leader = %hint.address, leader_id = ?hint.id, "not the leader; following hint");
                    last_error =
                        Some(Error::Unavailable(format!("{target} is not the leader; it named {}", hint.address)));
                    router.set_leader(&hint.address);
                    leader_named = true;
                    let follow_now = hint.address != target && redirects < limits::REDIRECTS_WITHOUT_BACKOFF_MAX;
                    target = hint.address;
                    if follow_now {
                        redirects += 1;
                        continue;
                    }
                }
                Failure::NotLeader { hint: None, proposed } => {
                    ambiguous |= proposed;
                    tracing::debug!(op, from = %target, "not the leader and no leader known; trying the next node");
                    last_error = Some(Error::Unavailable(format!(
                        "{target} is not the leader and knows of none (election under way?)"
                    )));
                    router.forget_leader(&target);
                    target = router.next_after(&target);
                }
                Failure::NodeFailed { error, sent } => {
                    ambiguous |= sent;
                    tracing::debug!(op, node = %target, %error, "node failed; trying the next node");
                    router.drop_channel(&target);
                    router.forget_leader(&target);
                    router.mark_failed(&target);
                    last_error = Some(error);
                    let next = router.next_after(&target);
                    let failed = std::mem::replace(&mut target, next);
                    // Another node is probably up: try each other node once
                    // at once before pausing.
                    if target != failed && (failovers as usize) + 1 < router.known_len() {
                        failovers += 1;
                        continue;
                    }
                }
                Failure::Unknown { error } => {
                    // The request ran out of time with its fate unknown: no
                    // quorum, a slow disk, or a leader cut off from the
                    // majority that still believes it leads. Try the next
                    // node after a pause: a live leader is named again by
                    // any follower, while a stale one is left behind. The
                    // connection itself did not fail, so it is kept.
                    ambiguous = true;
                    tracing::debug!(op, node = %target, %error, "outcome unknown; trying the next node");
                    router.forget_leader(&target);
                    last_error = Some(error);
                    target = router.next_after(&target);
                }
            }
            redirects = 0;
            failovers = 0;
            // One call of the client probes with short pauses while a new
            // leader is being elected; the others back off, and all go to
            // the new leader as soon as any call has reached it. Nodes that
            // keep naming a leader that refuses (hints that go round in a
            // loop) are not an election: that call backs off.
            let probing_allowed = !leader_named && start.elapsed() < limits::LEADER_PROBE_FAST_WINDOW;
            if !probing_allowed {
                probe = None;
            } else if probe.is_none() {
                probe = router.try_probe();
            }
            let pause = if probe.is_some() { backoff.short_pause() } else { backoff.next_pause() };
            let pause = pause.min(deadline_at.saturating_duration_since(Instant::now()));
            let mut leader_found = router.watch_leader();
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                changed = leader_found.changed() => {
                    if changed.is_ok()
                        && let Some(leader) = router.leader()
                    {
                        tracing::debug!(op, leader = %leader, "another call found the leader; going there");
                        target = leader;
                    }
                }
            }
        }
    }
}

/// The error of an operation that ran out of time: `DeadlineExceeded` when
/// the last attempt timed out or any attempt's outcome was unknown, else
/// `Unavailable` carrying the last error (no attempt took effect).
fn give_up(op: &str, elapsed: Duration, attempts: u32, last: Option<Error>, ambiguous: bool) -> Error {
    let summary = format!("{op} gave up after {attempts} attempts in {elapsed:?}");
    match last {
        None => Error::DeadlineExceeded(summary),
        Some(Error::DeadlineExceeded(last)) => Error::DeadlineExceeded(format!("{summary}; last error: {last}")),
        // An earlier attempt may have taken effect: saying "unavailable"
        // would suggest it certainly did not.
        Some(last) if ambiguous => Error::DeadlineExceeded(format!(
            "{summary}; an earlier attempt's outcome is unknown; last error: {}",
            last.message()
        )),
        Some(last) => Error::Unavailable(format!("{summary}; last error: {}", last.message())),
    }
}
