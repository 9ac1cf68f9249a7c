//! Membership changes and leadership transfer: `cluster add`, `cluster
//! remove`, `cluster transfer-leader`, and the hand-over of a graceful
//! shutdown.
//!
//! Every change goes through openraft's joint consensus
//! (`change_membership`), so it commits only with a majority of both the old
//! and the new voter set; a node joins as a learner first and becomes a
//! voter only once it has caught up, so a new node never weakens a quorum
//! while it is still copying the log.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use quorumq_proto::admin as pb;
use tonic::Status;

use crate::errors;
use crate::types::*;

/// How often a waiting membership call looks at the metrics again.
const POLL: Duration = Duration::from_millis(20);

/// The members as the admin API lists them.
pub fn members(raft: &Raft) -> Vec<pb::Member> {
    members_of(&raft.metrics().borrow_watched())
}

/// The members of the membership in `m`, as the admin API lists them.
pub fn members_of(m: &openraft::RaftMetrics<TypeConfig>) -> Vec<pb::Member> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| pb::Member { id: *id, address: node.addr.clone(), voter: voters.contains(id) })
        .collect()
}

/// A membership change that failed: a rule of the change is FAILED_PRECONDITION,
/// routing errors keep the not-leader form.
fn change_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => match e {
            ChangeMembershipError::InProgress(_) => {
                Status::failed_precondition(format!("another membership change is in progress; try again: {e}"))
            }
            other => Status::failed_precondition(other.to_string()),
        },
        other => errors::write_error(other),
    }
}

/// Checks an address a node is to be reached at: HOST:PORT with a port.
fn check_address(address: &str) -> Result<(), Status> {
    let bad = || Status::invalid_argument(format!("node address {address:?} is not HOST:PORT"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) || address.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}

/// Adds node `id` at `address`: as a learner, waits for it to catch up,
/// then (unless `learner_only`) promotes it to voter. Idempotent.
pub async fn add_node(
    raft: &Raft,
    id: NodeId,
    address: &str,
    learner_only: bool,
    timeout: Duration,
) -> Result<Vec<pb::Member>, Status> {
    if id == 0 {
        return Err(Status::invalid_argument("node ids start at 1"));
    }
    check_address(address)?;
    crate::service::require_leader(raft)?;
    let current = members(raft);
    if let Some(other) = current.iter().find(|m| m.address == address && m.id != id) {
        return Err(Status::failed_precondition(format!(
            "address {address} belongs to node {}; remove that node first",
            other.id
        )));
    }
    if let Some(existing) = current.iter().find(|m| m.id == id) {
        if existing.address != address {
            return Err(Status::failed_precondition(format!(
                "node {id} is a member at {}; remove it before adding it at {address}",
                existing.address
            )));
        }
        if existing.voter || learner_only {
            return Ok(current);
        }
    }
    let node = Node { addr: address.to_string() };
    // Blocking: returns once the leader sees the learner caught up.
    match tokio::time::timeout(timeout, raft.add_learner(id, node, true)).await {
        Ok(result) => {
            result.map_err(change_error)?;
        }
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "node {id} was added as a learner but did not catch up within {timeout:?}; is it running at \
                 {address}? Run the command again to finish, or remove it"
            )));
        }
    }
    // openraft's "caught up" allows a lag (replication_lag_threshold); wait
    // until the learner holds everything the leader had when it was added,
    // so that promoting it never leaves a voter that cannot yet help a
    // quorum.
    let target = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = raft.metrics().borrow_watched().clone();
        crate::service::require_leader(raft)?;
        let matched =
            m.replication.as_ref().and_then(|r| r.get(&id).cloned()).flatten().map_or(0, |log_id| log_id.index());
        if matched >= target {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "node {id} was added as a learner but has replicated only up to {matched} of {target} within \
                 {timeout:?}; run the command again to finish, or remove it"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(id, address, matched = target, "node added as a learner and caught up");
    if !learner_only {
        let ids = BTreeSet::from([id]);
        match tokio::time::timeout(timeout, raft.change_membership(ChangeMembers::AddVoterIds(ids), false)).await {
            Ok(result) => {
                result.map_err(change_error)?;
            }
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "node {id} caught up as a learner, but making it a voter did not commit within {timeout:?}"
                )));
            }
        }
        tracing::info!(id, address, "node is a voter");
    }
    Ok(members(raft))
}

/// Removes node `id` (voter or learner). Removing the leader itself works:
/// openraft hands leadership to the most up-to-date remaining voter once
/// the change has committed.
pub async fn remove_node(raft: &Raft, id: NodeId, timeout: Duration) -> Result<Vec<pb::Member>, Status> {
    crate::service::require_leader(raft)?;
    let current = members(raft);
    let Some(member) = current.iter().find(|m| m.id == id) else {
        return Err(Status::not_found(format!("node {id} is not a member of the cluster")));
    };
    let ids = BTreeSet::from([id]);
    let change = if member.voter {
        if current.iter().filter(|m| m.voter).count() == 1 {
            return Err(Status::failed_precondition(format!("node {id} is the only voter; it cannot be removed")));
        }
        ChangeMembers::RemoveVoters(ids)
    } else {
        ChangeMembers::RemoveNodes(ids)
    };
    match tokio::time::timeout(timeout, raft.change_membership(change, false)).await {
        Ok(result) => {
            result.map_err(change_error)?;
        }
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "removing node {id} did not commit within {timeout:?} (are a majority of the voters up?)"
            )));
        }
    }
    tracing::info!(id, "node removed from the cluster");
    Ok(members(raft))
}

/// Hands leadership to voter `to` and waits until it has taken over.
/// Returns the new leader's id, address and term.
pub async fn transfer_leader(raft: &Raft, to: NodeId, timeout: Duration) -> Result<(NodeId, String, u64), Status> {
    crate::service::require_leader(raft)?;
    let current = members(raft);
    let Some(target) = current.iter().find(|m| m.id == to) else {
        return Err(Status::not_found(format!("node {to} is not a member of the cluster")));
    };
    if !target.voter {
        return Err(Status::failed_precondition(format!("node {to} is a learner; only a voter can lead")));
    }
    let address = target.address.clone();
    let m = raft.metrics().borrow_watched().clone();
    if m.id == to {
        return Ok((to, address, m.current_term));
    }
    match hand_over(raft, to, timeout).await {
        Some(term) => Ok((to, address, term)),
        None => Err(Status::unavailable(format!(
            "node {to} did not take over leadership within {timeout:?}; is it up and caught up?"
        ))),
    }
}

/// Asks `to` to take over and waits up to `timeout` until some node other
/// than this one reports `to` as leader in a newer term. Returns that term.
async fn hand_over(raft: &Raft, to: NodeId, timeout: Duration) -> Option<u64> {
    let term_before = raft.metrics().borrow_watched().current_term;
    if raft.trigger().transfer_leader(to).await.is_err() {
        return None;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader == Some(to) && m.current_term > term_before {
            return Some(m.current_term);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Before a graceful shutdown: if this node leads and another voter is
/// reachable, hands leadership to the voter that has replicated the most,
/// so that clients see a leader change instead of an election timeout.
pub async fn step_down_before_shutdown(raft: &Raft, timeout: Duration) {
    let m = raft.metrics().borrow_watched().clone();
    if m.state != ServerState::Leader {
        return;
    }
    let all_voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    if !all_voters.contains(&m.id) {
        // Removed from the cluster: openraft hands leadership over itself.
        return;
    }
    let voters: BTreeSet<NodeId> = all_voters.into_iter().filter(|id| *id != m.id).collect();
    let Some(replication) = &m.replication else { return };
    let best = replication
        .iter()
        .filter(|(id, _)| voters.contains(id))
        .filter_map(|(id, matched)| matched.as_ref().map(|log_id| (log_id.index(), *id)))
        .max();
    let Some((_, to)) = best else {
        tracing::info!("leader with no caught-up voter to hand over to; stopping");
        return;
    };
    match hand_over(raft, to, timeout).await {
        Some(term) => tracing::info!(to, term, "handed leadership over before stopping"),
        None => tracing::warn!(to, "leadership hand-over did not complete; stopping anyway"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(check_address("10.0.0.4:7001").is_ok());
        assert!(check_address("node4.example:7001").is_ok());
        assert!(check_address("[::1]:7001").is_ok());
        for bad in ["", "10.0.0.4", ":7001", "host:", "host:0", "host:70000", "host:x", "a b:1"] {
            assert!(check_address(bad).is_err(), "{bad:?} accepted");
        }
    }
}
