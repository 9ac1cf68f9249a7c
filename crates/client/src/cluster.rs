//! Cluster status: one node's own view, and a merged view of every node.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use quorumq_proto::admin as pa;
use quorumq_proto::admin::cluster_client::ClusterClient;

use crate::config::normalize_address;
use crate::error::{Failure, classify};
use crate::{Client, Error, convert, limits};

/// The Raft role a node reports.
///
/// ```
/// use quorumq_client::Role;
/// assert_eq!(Role::parse("leader"), Role::Leader);
/// assert_eq!(Role::parse("sleepy"), Role::Unknown);
/// assert_eq!(Role::Follower.to_string(), "follower");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts writes for the cluster.
    Leader,
    /// Replicates the leader's log and votes.
    Follower,
    /// Standing for election.
    Candidate,
    /// Replicates the log without a vote.
    Learner,
    /// Stopping.
    Shutdown,
    /// Not reported (the node was unreachable) or not understood.
    #[default]
    Unknown,
}

impl Role {
    /// Reads the role string of the admin API.
    ///
    /// ```
    /// assert_eq!(quorumq_client::Role::parse("Candidate"), quorumq_client::Role::Candidate);
    /// ```
    pub fn parse(role: &str) -> Role {
        match role.trim().to_ascii_lowercase().as_str() {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            "candidate" => Role::Candidate,
            "learner" => Role::Learner,
            "shutdown" => Role::Shutdown,
            _ => Role::Unknown,
        }
    }

    /// The role as the admin API spells it.
    ///
    /// ```
    /// assert_eq!(quorumq_client::Role::Learner.as_str(), "learner");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member of the cluster as a node knows it.
///
/// ```
/// let m = quorumq_client::Member { id: 1, address: "10.0.0.1:7000".into(), voter: true };
/// assert!(m.voter);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Member {
    /// The node id.
    pub id: u64,
    /// The node's `host:port`.
    pub address: String,
    /// False for a learner.
    pub voter: bool,
}

/// One node's own view of itself and the cluster (admin `NodeStatus`).
///
/// ```
/// use quorumq_client::{NodeStatus, Role};
/// let s = NodeStatus { role: Role::Leader, applied_index: 5, committed_index: 7, ..Default::default() };
/// assert!(s.applied_index <= s.committed_index);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u64,
    /// The address the node advertises.
    pub address: String,
    /// Its Raft role.
    pub role: Role,
    /// The leader it follows, if it knows one.
    pub leader_id: Option<u64>,
    /// The leader's address, if it knows one.
    pub leader_address: Option<String>,
    /// Its current term.
    pub term: u64,
    /// Index of the last entry in its log (0 when empty).
    pub last_log_index: u64,
    /// Highest index it knows to be committed.
    pub committed_index: u64,
    /// Highest index it has applied to its queues.
    pub applied_index: u64,
    /// The membership it knows.
    pub members: Vec<Member>,
    /// True once it belongs to an initialised cluster.
    pub initialized: bool,
    /// On the leader: milliseconds since it last heard from a quorum.
    pub millis_since_quorum_ack: Option<u64>,
    /// Last log index covered by its latest snapshot (0: none yet).
    pub snapshot_index: u64,
    /// Highest index purged from its log (0: none).
    pub purged_index: u64,
    /// Resource alarms on this node, each `KIND: DETAIL` with KIND `disk`
    /// or `memory`. While any voter has one, sends fail with
    /// [`Error::ResourceExhausted`].
    pub alarms: Vec<String>,
}

/// One node in a [`ClusterStatus`].
///
/// ```
/// let node = quorumq_client::ClusterNode { address: "10.0.0.1:7000".into(), ..Default::default() };
/// assert!(!node.reachable);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterNode {
    /// The address that was asked.
    pub address: String,
    /// Whether the node answered. When false, the fields below are zero or
    /// `None`, except `id` when another node's member list names it.
    pub reachable: bool,
    /// The node id.
    pub id: Option<u64>,
    /// Its Raft role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// Index of the last entry in its log.
    pub last_log_index: u64,
    /// Highest index it knows to be committed.
    pub committed_index: u64,
    /// Highest index it has applied.
    pub applied_index: u64,
    /// The leader it follows.
    pub leader_id: Option<u64>,
    /// Its resource alarms (see [`NodeStatus::alarms`]).
    pub alarms: Vec<String>,
    /// Why it did not answer, when unreachable.
    pub error: Option<Error>,
}

/// Every known node's view, merged.
///
/// ```
/// let status = quorumq_client::ClusterStatus::default();
/// assert!(status.leader().is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The leader: a reachable node that says it leads (the one with the
    /// highest term if several do), else the leader id that most reachable
    /// nodes name.
    pub leader_id: Option<u64>,
    /// The highest term any reachable node reports.
    pub term: u64,
    /// One entry per node, reachable or not: the known nodes in order, then
    /// members learnt from them.
    pub nodes: Vec<ClusterNode>,
}

impl ClusterStatus {
    /// The leader's entry, if the leader is among the nodes.
    ///
    /// ```
    /// use quorumq_client::{ClusterNode, ClusterStatus};
    /// let status = ClusterStatus {
    ///     leader_id: Some(2),
    ///     term: 3,
    ///     nodes: vec![ClusterNode { id: Some(2), reachable: true, ..Default::default() }],
    /// };
    /// assert_eq!(status.leader().unwrap().id, Some(2));
    /// ```
    pub fn leader(&self) -> Option<&ClusterNode> {
        let leader = self.leader_id?;
        self.nodes.iter().find(|n| n.id == Some(leader))
    }

    /// How many nodes answered.
    ///
    /// ```
    /// assert_eq!(quorumq_client::ClusterStatus::default().reachable_count(), 0);
    /// ```
    pub fn reachable_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.reachable).count()
    }
}

impl ClusterNode {
    fn reachable(address: String, status: &NodeStatus) -> ClusterNode {
        ClusterNode {
            address,
            reachable: true,
            id: Some(status.id),
            role: status.role,
            term: status.term,
            last_log_index: status.last_log_index,
            committed_index: status.committed_index,
            applied_index: status.applied_index,
            leader_id: status.leader_id,
            alarms: status.alarms.clone(),
            error: None,
        }
    }

    fn unreachable(address: String, error: Error) -> ClusterNode {
        ClusterNode { address, error: Some(error), ..ClusterNode::default() }
    }
}

impl Client {
    /// The status of the node at `address`, asked directly: no leader
    /// following, no retries, at most one attempt timeout (or the deadline,
    /// if shorter).
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let status = client.node_status("10.0.0.1:7000").await?;
    /// println!("node {} is {} in term {}", status.id, status.role, status.term);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn node_status(&self, address: &str) -> Result<NodeStatus, Error> {
        let address = normalize_address(address)?;
        let router = &self.inner.router;
        let channel = router.channel(&address)?;
        let limit = self.inner.attempt_timeout.min(self.deadline);
        let mut admin = ClusterClient::new(channel);
        let request = admin.node_status(pa::NodeStatusRequest {});
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(response)) => Ok(convert::node_status(response.into_inner())),
            Ok(Err(status)) => Err(match classify(&status) {
                Failure::NodeFailed { error, .. } => {
                    router.drop_channel(&address);
                    error
                }
                Failure::NotLeader { .. } => {
                    Error::Unavailable(format!("{address} answered a status request with not-leader"))
                }
                Failure::Unknown { error } | Failure::Final(error) => error,
            }),
            Err(_elapsed) => {
                router.drop_channel(&address);
                Err(Error::DeadlineExceeded(format!("{address} did not answer within {limit:?}")))
            }
        }
    }

    /// Asks every known node (the seeds, plus members reported by any node)
    /// for its status, concurrently, and merges the answers. Unreachable
    /// nodes are listed with `reachable: false`; the call itself fails only
    /// on a bad address, so that it can show a cluster that is down.
    ///
    /// Members that the answers name and that were not asked yet are asked
    /// in a second round and remembered as known nodes. The call takes at
    /// most two attempt timeouts.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let status = client.cluster_status().await?;
    /// for node in &status.nodes {
    ///     println!("{} {:?} {} reachable={}", node.address, node.id, node.role, node.reachable);
    /// }
    /// println!("leader {:?} in term {}", status.leader_id, status.term);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let mut asked: HashSet<String> = HashSet::new();
        let mut member_ids: HashMap<String, u64> = HashMap::new();
        let mut nodes: Vec<ClusterNode> = Vec::new();
        let mut pending = self.known_nodes();
        for _round in 0..limits::CLUSTER_STATUS_ROUNDS_MAX {
            if pending.is_empty() {
                break;
            }
            asked.extend(pending.iter().cloned());
            let answers = futures::future::join_all(pending.iter().map(|a| self.node_status(a))).await;
            let mut next: Vec<String> = Vec::new();
            for (address, answer) in pending.into_iter().zip(answers) {
                let status = match answer {
                    Ok(status) => status,
                    Err(error) => {
                        nodes.push(ClusterNode::unreachable(address, error));
                        continue;
                    }
                };
                for member in &status.members {
                    let Ok(member_address) = normalize_address(&member.address) else {
                        tracing::warn!(address = %member.address, "ignoring unusable member address");
                        continue;
                    };
                    member_ids.insert(member_address.clone(), member.id);
                    if !asked.contains(&member_address)
                        && !next.contains(&member_address)
                        && asked.len() + next.len() < limits::KNOWN_NODES_MAX
                    {
                        self.inner.router.learn(&member_address);
                        next.push(member_address);
                    }
                }
                nodes.push(ClusterNode::reachable(address, &status));
            }
            pending = next;
        }
        Ok(merge(nodes, &member_ids))
    }
}

/// Fills in ids of unreachable members, drops entries that name a node
/// already listed under another address, and picks the leader and term.
fn merge(mut nodes: Vec<ClusterNode>, member_ids: &HashMap<String, u64>) -> ClusterStatus {
    for node in nodes.iter_mut().filter(|n| !n.reachable) {
        node.id = member_ids.get(&node.address).copied();
    }
    // A seed and a member address can be two spellings of one node
    // ("localhost:7000", "127.0.0.1:7000"): keep its first answer.
    let answered: HashSet<u64> = nodes.iter().filter(|n| n.reachable).filter_map(|n| n.id).collect();
    let mut listed: HashSet<u64> = HashSet::new();
    nodes.retain(|n| match n.id {
        None => true,
        Some(id) if n.reachable => listed.insert(id),
        Some(id) => !answered.contains(&id) && listed.insert(id),
    });
    let reachable = || nodes.iter().filter(|n| n.reachable);
    let term = reachable().map(|n| n.term).max().unwrap_or(0);
    let self_declared = reachable().filter(|n| n.role == Role::Leader).max_by_key(|n| n.term).and_then(|n| n.id);
    let leader_id = self_declared.or_else(|| {
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for id in reachable().filter_map(|n| n.leader_id) {
            *votes.entry(id).or_default() += 1;
        }
        votes.into_iter().max_by_key(|&(id, count)| (count, Reverse(id))).map(|(id, _)| id)
    });
    ClusterStatus { leader_id, term, nodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(address: &str, id: u64, role: Role, term: u64, leader: Option<u64>) -> ClusterNode {
        ClusterNode {
            address: address.into(),
            reachable: true,
            id: Some(id),
            role,
            term,
            leader_id: leader,
            ..Default::default()
        }
    }

    #[test]
    fn the_self_declared_leader_of_the_highest_term_wins() {
        let nodes = vec![
            answered("a:1", 1, Role::Leader, 3, Some(1)),
            answered("b:2", 2, Role::Leader, 4, Some(2)),
            answered("c:3", 3, Role::Follower, 4, Some(2)),
        ];
        let status = merge(nodes, &HashMap::new());
        assert_eq!(status.leader_id, Some(2));
        assert_eq!(status.term, 4);
    }

    #[test]
    fn without_a_reachable_leader_the_most_named_leader_wins() {
        let nodes = vec![
            answered("b:2", 2, Role::Follower, 5, Some(1)),
            answered("c:3", 3, Role::Follower, 5, Some(1)),
            ClusterNode::unreachable("a:1".into(), Error::Unavailable("refused".into())),
        ];
        let ids = HashMap::from([("a:1".to_string(), 1)]);
        let status = merge(nodes, &ids);
        assert_eq!(status.leader_id, Some(1));
        assert_eq!(status.nodes[2].id, Some(1));
        assert!(!status.nodes[2].reachable);
    }

    #[test]
    fn two_spellings_of_one_node_are_listed_once() {
        let nodes = vec![
            answered("localhost:1", 1, Role::Leader, 2, Some(1)),
            answered("127.0.0.1:1", 1, Role::Leader, 2, Some(1)),
            ClusterNode::unreachable("10.0.0.1:1".into(), Error::Unavailable("no route".into())),
        ];
        let ids = HashMap::from([("10.0.0.1:1".to_string(), 1)]);
        let status = merge(nodes, &ids);
        assert_eq!(status.nodes.len(), 1);
        assert_eq!(status.nodes[0].address, "localhost:1");
    }
}

/// Who leads after [`Client::transfer_leader`].
///
/// ```
/// let t = quorumq_client::LeaderTransfer { leader_id: 2, leader_address: "10.0.0.2:7001".into(), term: 5 };
/// assert_eq!(t.leader_id, 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeaderTransfer {
    /// The node that leads now.
    pub leader_id: u64,
    /// Its address.
    pub leader_address: String,
    /// The term it leads in.
    pub term: u64,
}

fn members(response: pa::MembershipResponse) -> Vec<Member> {
    response.members.into_iter().map(|m| Member { id: m.id, address: m.address, voter: m.voter }).collect()
}

impl Client {
    /// Adds node `id`, reachable at `address`, to the cluster: as a
    /// learner first, then, once it has caught up with the leader's log, as
    /// a voter. The node must be running (started with `quorumq server
    /// --join`). Waits up to `timeout` for the catch-up (plus the client's
    /// deadline to reach the leader); returns the membership after the
    /// change. Adding a member again at the same address changes nothing,
    /// so a call that failed can simply be repeated.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// let members = client.add_node(4, "10.0.0.4:7001", Duration::from_secs(300)).await?;
    /// assert!(members.iter().any(|m| m.id == 4 && m.voter));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_node(&self, id: u64, address: &str, timeout: Duration) -> Result<Vec<Member>, Error> {
        self.add(id, address, false, timeout).await
    }

    /// Like [`Client::add_node`], but the node stays a learner: it receives
    /// the log and does not vote.
    pub async fn add_learner(&self, id: u64, address: &str, timeout: Duration) -> Result<Vec<Member>, Error> {
        self.add(id, address, true, timeout).await
    }

    async fn add(&self, id: u64, address: &str, learner_only: bool, timeout: Duration) -> Result<Vec<Member>, Error> {
        let address = normalize_address(address)?;
        let request = pa::AddNodeRequest { id, address, learner_only };
        let response = self
            .call("add_node", timeout, |attempt| {
                let request = attempt.request(request.clone());
                async move { ClusterClient::new(attempt.channel).add_node(request).await }
            })
            .await?;
        Ok(members(response))
    }

    /// Removes node `id` (a voter or a learner) from the cluster. Removing
    /// the leader is allowed: it hands leadership to another voter once the
    /// change has committed. Stop the removed node's process afterwards.
    /// A retry after a failure of unknown outcome that finds the node
    /// already gone succeeds.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let members = client.remove_node(3, std::time::Duration::from_secs(30)).await?;
    /// assert!(members.iter().all(|m| m.id != 3));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn remove_node(&self, id: u64, timeout: Duration) -> Result<Vec<Member>, Error> {
        let request = pa::RemoveNodeRequest { id };
        let result = self
            .call("remove_node", timeout, |attempt| {
                let request = attempt.request(request);
                async move { ClusterClient::new(attempt.channel).remove_node(request).await }
            })
            .await;
        match result {
            Ok(response) => Ok(members(response)),
            // An earlier attempt removed it.
            Err(failure) if failure.ambiguous && matches!(failure.error, Error::NotFound(_)) => {
                let status = self.cluster_status().await?;
                Ok(status
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        Some(Member { id: n.id?, address: n.address.clone(), voter: n.role != Role::Learner })
                    })
                    .filter(|m| m.id != id)
                    .collect())
            }
            Err(failure) => Err(failure.error),
        }
    }

    /// Hands leadership to voter `id` and waits (up to `timeout`, at most
    /// 10 s on the server) until it has taken over.
    ///
    /// ```no_run
    /// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let now = client.transfer_leader(2, std::time::Duration::from_secs(10)).await?;
    /// assert_eq!(now.leader_id, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transfer_leader(&self, id: u64, timeout: Duration) -> Result<LeaderTransfer, Error> {
        let request = pa::TransferLeaderRequest { id };
        let response = self
            .call("transfer_leader", timeout, |attempt| {
                let request = attempt.request(request);
                async move { ClusterClient::new(attempt.channel).transfer_leader(request).await }
            })
            .await?;
        // The leader changed: the next call finds it by the usual redirect.
        self.inner.router.set_leader(&normalize_address(&response.leader_address)?);
        Ok(LeaderTransfer {
            leader_id: response.leader_id,
            leader_address: response.leader_address,
            term: response.term,
        })
    }
}
