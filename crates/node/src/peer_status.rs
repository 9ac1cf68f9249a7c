//! What this node last heard from each other member: every
//! [`limits::PEER_STATUS_INTERVAL`] it asks each member of the membership it
//! knows for its `NodeStatus`, over the channels Raft already uses. Two
//! things read the answers: the resource alarms (a leader refuses sends
//! while a voter reports an alarm, `alarms.rs`) and readiness (a follower is
//! ready only while its leader answers, `http.rs`).
//!
//! Polling costs one small RPC per member pair and interval (6 a second in a
//! 3-node cluster, 42 in a 7-node one). Every node polls, not only the
//! leader, so that a newly elected leader already knows its voters' alarms.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use quorumq_proto::admin as admin_pb;

use crate::limits;
use crate::network::Channels;
use crate::types::*;

/// A member's latest answer.
#[derive(Clone, Debug)]
pub struct PeerReport {
    pub status: admin_pb::NodeStatusResponse,
    pub answered_at: Instant,
    /// Whether it was a voter in this node's membership when asked.
    pub voter: bool,
}

/// The latest answer of each other member.
#[derive(Default)]
pub struct PeerStatuses {
    reports: Mutex<BTreeMap<NodeId, PeerReport>>,
}

impl PeerStatuses {
    /// Reports no older than `max_age`.
    pub fn fresh(&self, max_age: Duration) -> Vec<(NodeId, PeerReport)> {
        let reports = self.reports.lock().expect("peer status lock");
        reports.iter().filter(|(_, r)| r.answered_at.elapsed() <= max_age).map(|(id, r)| (*id, r.clone())).collect()
    }

    /// The latest answer of `id`, however old.
    pub fn get(&self, id: NodeId) -> Option<PeerReport> {
        self.reports.lock().expect("peer status lock").get(&id).cloned()
    }

    pub fn record(&self, id: NodeId, report: PeerReport) {
        self.reports.lock().expect("peer status lock").insert(id, report);
    }

    /// Forgets nodes that are no longer members.
    fn retain(&self, members: &BTreeSet<NodeId>) {
        self.reports.lock().expect("peer status lock").retain(|id, _| members.contains(id));
    }
}

/// Asks every other member for its status, forever.
pub async fn poll(self_id: NodeId, raft: Raft, channels: Channels, statuses: std::sync::Arc<PeerStatuses>) {
    let mut interval = tokio::time::interval(limits::PEER_STATUS_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (members, voters) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            let membership = metrics.membership_config.membership();
            let members: Vec<(NodeId, String)> =
                membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            (members, voters)
        };
        statuses.retain(&members.iter().map(|(id, _)| *id).collect());
        let asks = members.into_iter().filter(|(id, _)| *id != self_id).map(|(id, addr)| {
            let channels = channels.clone();
            async move {
                let channel = channels.get(&addr).ok()?;
                let mut client = admin_pb::cluster_client::ClusterClient::new(channel);
                let answer = tokio::time::timeout(
                    limits::PEER_STATUS_TIMEOUT,
                    client.node_status(admin_pb::NodeStatusRequest {}),
                )
                .await;
                match answer {
                    Ok(Ok(response)) => Some((id, response.into_inner())),
                    Ok(Err(status)) => {
                        tracing::debug!(peer = id, %addr, error = %status, "peer status");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(peer = id, %addr, "peer status: no answer in time");
                        None
                    }
                }
            }
        });
        for (id, status) in futures::future::join_all(asks).await.into_iter().flatten() {
            if status.id != id {
                tracing::warn!(expected = id, found = status.id, "a member's address answers as another node");
                continue;
            }
            let voter = voters.contains(&id);
            statuses.record(id, PeerReport { status, answered_at: Instant::now(), voter });
        }
    }
}
