//! Nemeses: the faults, how targets are chosen, and the schedule that mixes
//! them. Every fault is recorded as a `start` and a `stop` in the history so
//! that the checker and the report know when it was active.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quorumq_client::Client;
use quorumq_client::Role;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::seq::SliceRandom;
use serde_json::json;
use tokio::sync::Mutex;

use crate::db::Db;
use crate::db::Grudge;
use crate::db::NodeId;
use crate::history::OpType;
use crate::history::Recorder;
use crate::membership;
use crate::membership::Change;

/// The nemesis families a test may enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// SIGKILL a random node, the leader, a majority, or every node; restart
    /// them when the fault ends.
    Kill,
    /// SIGSTOP a random node or the leader; SIGCONT when the fault ends.
    Pause,
    /// Cut links: isolate a node, isolate the leader, random halves, a
    /// bridge, a ring.
    Partition,
    /// Stop and restart every node in turn (SIGTERM), as an upgrade would.
    Restart,
    /// Only SIGKILL of every node at once (the fault that exposes a node
    /// acknowledging before its write is durable).
    KillAll,
    /// Membership changes: replace a node (remove, wipe, rejoin empty with
    /// --join, add back), remove a voter and add it back later, transfer
    /// leadership to a follower (`membership.rs`).
    Membership,
}

impl Family {
    pub fn parse(s: &str) -> Result<Family, String> {
        match s.trim() {
            "kill" => Ok(Family::Kill),
            "pause" => Ok(Family::Pause),
            "partition" => Ok(Family::Partition),
            "restart" => Ok(Family::Restart),
            "kill-all" => Ok(Family::KillAll),
            "membership" => Ok(Family::Membership),
            other => Err(format!(
                "unknown nemesis {other:?}; expected kill, pause, partition, restart, kill-all or membership"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Kill => "kill",
            Family::Pause => "pause",
            Family::Partition => "partition",
            Family::Restart => "restart",
            Family::KillAll => "kill-all",
            Family::Membership => "membership",
        }
    }
}

/// One concrete fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill { label: &'static str, nodes: Vec<NodeId> },
    Pause { label: &'static str, nodes: Vec<NodeId> },
    Partition { label: &'static str, grudge: Grudge },
    RollingRestart,
    Membership { label: &'static str, change: Change, node: NodeId },
}

impl Fault {
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Kill { label, .. }
            | Fault::Pause { label, .. }
            | Fault::Partition { label, .. }
            | Fault::Membership { label, .. } => label,
            Fault::RollingRestart => "rolling-restart",
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Fault::Kill { label, nodes } | Fault::Pause { label, nodes } => json!({ "fault": label, "nodes": nodes }),
            Fault::Partition { label, grudge } => {
                let grudge: serde_json::Map<String, serde_json::Value> =
                    grudge.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                json!({ "fault": label, "drops": grudge })
            }
            Fault::RollingRestart => json!({ "fault": "rolling-restart" }),
            Fault::Membership { label, change: Change::ShrinkGrow { wipe }, node } => {
                json!({ "fault": label, "nodes": [node], "wipe": wipe })
            }
            Fault::Membership { label, node, .. } => json!({ "fault": label, "nodes": [node] }),
        }
    }
}

/// A grudge in which each node of `side` drops every node outside it and
/// vice versa.
pub fn split(nodes: &[NodeId], side: &BTreeSet<NodeId>) -> Grudge {
    let mut grudge = Grudge::new();
    for &a in nodes {
        let other: BTreeSet<NodeId> = nodes.iter().copied().filter(|b| side.contains(b) != side.contains(&a)).collect();
        if !other.is_empty() {
            grudge.insert(a, other);
        }
    }
    grudge
}

/// A bridge: two halves that cannot talk to each other, and one node that
/// talks to both.
pub fn bridge(nodes: &[NodeId], rng: &mut StdRng) -> Grudge {
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    let middle = shuffled[0];
    let rest = &shuffled[1..];
    let (left, right) = rest.split_at(rest.len() / 2);
    let mut grudge = Grudge::new();
    for &a in left {
        grudge.insert(a, right.iter().copied().collect());
    }
    for &b in right {
        grudge.insert(b, left.iter().copied().collect());
    }
    let _ = middle;
    grudge
}

/// A ring: each node hears only its two neighbours (a majority-free
/// partition in which every node still sees a majority including itself for
/// five nodes; for three nodes it is a full mesh, so no drops).
pub fn ring(nodes: &[NodeId], rng: &mut StdRng) -> Grudge {
    let mut ring = nodes.to_vec();
    ring.shuffle(rng);
    let n = ring.len();
    let mut grudge = Grudge::new();
    for (i, &a) in ring.iter().enumerate() {
        let neighbours: BTreeSet<NodeId> = [ring[(i + 1) % n], ring[(i + n - 1) % n]].into_iter().collect();
        let dropped: BTreeSet<NodeId> = ring.iter().copied().filter(|b| *b != a && !neighbours.contains(b)).collect();
        if !dropped.is_empty() {
            grudge.insert(a, dropped);
        }
    }
    grudge
}

/// The leader, as the cluster reports it through the public client.
pub async fn find_leader(client: &Client) -> Option<NodeId> {
    let status = client.cluster_status().await.ok()?;
    status.nodes.iter().find(|n| n.reachable && n.role == Role::Leader).and_then(|n| n.id).or(status.leader_id)
}

/// Picks a fault of one of `families`.
pub async fn pick(families: &[Family], nodes: &[NodeId], client: &Client, rng: &mut StdRng) -> Fault {
    let family = *families.choose(rng).expect("at least one family");
    let majority = nodes.len() / 2 + 1;
    let random_node = *nodes.choose(rng).expect("nodes");
    match family {
        Family::Kill => match rng.random_range(0..4) {
            0 => Fault::Kill { label: "kill-random", nodes: vec![random_node] },
            1 => {
                let leader = find_leader(client).await.unwrap_or(random_node);
                Fault::Kill { label: "kill-leader", nodes: vec![leader] }
            }
            2 => Fault::Kill { label: "kill-majority", nodes: nodes.choose_multiple(rng, majority).copied().collect() },
            _ => Fault::Kill { label: "kill-all", nodes: nodes.to_vec() },
        },
        Family::Pause => match rng.random_range(0..2) {
            0 => Fault::Pause { label: "pause-random", nodes: vec![random_node] },
            _ => {
                let leader = find_leader(client).await.unwrap_or(random_node);
                Fault::Pause { label: "pause-leader", nodes: vec![leader] }
            }
        },
        Family::Partition => match rng.random_range(0..5) {
            0 => Fault::Partition { label: "isolate-random", grudge: split(nodes, &[random_node].into()) },
            1 => {
                let leader = find_leader(client).await.unwrap_or(random_node);
                Fault::Partition { label: "isolate-leader", grudge: split(nodes, &[leader].into()) }
            }
            2 => {
                let minority: BTreeSet<NodeId> = nodes.choose_multiple(rng, nodes.len() - majority).copied().collect();
                Fault::Partition { label: "halves", grudge: split(nodes, &minority) }
            }
            3 => Fault::Partition { label: "bridge", grudge: bridge(nodes, rng) },
            _ => Fault::Partition { label: "ring", grudge: ring(nodes, rng) },
        },
        Family::Restart => Fault::RollingRestart,
        Family::KillAll => Fault::Kill { label: "kill-all", nodes: nodes.to_vec() },
        Family::Membership => {
            let leader = find_leader(client).await;
            let (label, change, node) = membership::choose(nodes, leader, rng);
            Fault::Membership { label, change, node }
        }
    }
}

pub(crate) type SharedDb = Arc<Mutex<Box<dyn Db>>>;

pub(crate) async fn with_db<R: Send + 'static>(
    db: &SharedDb,
    f: impl FnOnce(&mut dyn Db) -> std::io::Result<R> + Send + 'static,
) -> std::io::Result<R> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = db.blocking_lock();
        f(guard.as_mut())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Starts a fault. Rolling restarts run to completion here, and so do
/// replacements and leadership transfers (membership changes go through
/// `client`; their failures are recorded, not returned).
pub async fn start(db: &SharedDb, fault: &Fault, client: &Client, history: &Recorder) -> std::io::Result<()> {
    let inv = history.invoke("nemesis", "start", fault.describe(), None);
    if let Fault::Membership { change, node, .. } = *fault {
        let mut log = membership::Log::default();
        let result = membership::start(db, client, change, node, &mut log).await;
        let mut value = fault.describe();
        value["steps"] = json!(log.steps());
        let kind = if matches!(result, Err(membership::Failure::Skipped(_))) { OpType::Fail } else { OpType::Info };
        inv.complete(kind, value, None, result.err().map(|e| e.to_string()));
        return Ok(());
    }
    let result = match fault.clone() {
        Fault::Kill { nodes, .. } => with_db(db, move |db| nodes.iter().try_for_each(|&id| db.kill(id))).await,
        Fault::Pause { nodes, .. } => with_db(db, move |db| nodes.iter().try_for_each(|&id| db.pause(id))).await,
        Fault::Partition { grudge, .. } => with_db(db, move |db| db.partition(&grudge)).await,
        Fault::Membership { .. } => Ok(()),
        Fault::RollingRestart => {
            let ids = with_db(db, |db| Ok(db.nodes())).await?;
            let mut result = Ok(());
            for id in ids {
                result = with_db(db, move |db| {
                    db.stop(id)?;
                    db.start(id)
                })
                .await;
                if result.is_err() {
                    break;
                }
                // Give the node time to rejoin before the next goes down.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            result
        }
    };
    let error = result.as_ref().err().map(|e| e.to_string());
    inv.complete(OpType::Info, fault.describe(), None, error);
    result
}

/// Ends a fault: restart killed nodes, resume paused ones, heal partitions,
/// make every node a running voter again.
pub async fn stop(db: &SharedDb, fault: &Fault, client: &Client, history: &Recorder) -> std::io::Result<()> {
    let value = json!({ "fault": fault.label() });
    let inv = history.invoke("nemesis", "stop", value.clone(), None);
    if let Fault::Membership { change, .. } = *fault {
        let mut log = membership::Log::default();
        let result = membership::stop(db, client, change, &mut log).await;
        let mut done = value.clone();
        done["steps"] = json!(log.steps());
        inv.complete(OpType::Info, done, None, result.err());
        return Ok(());
    }
    let result = match fault.clone() {
        Fault::Kill { nodes, .. } => with_db(db, move |db| nodes.iter().try_for_each(|&id| db.start(id))).await,
        Fault::Pause { nodes, .. } => with_db(db, move |db| nodes.iter().try_for_each(|&id| db.resume(id))).await,
        Fault::Partition { .. } => with_db(db, |db| db.heal()).await,
        Fault::RollingRestart | Fault::Membership { .. } => Ok(()),
    };
    inv.complete(OpType::Info, value, None, result.as_ref().err().map(|e| e.to_string()));
    result
}

/// Undoes every fault: heal partitions, resume paused and start stopped
/// nodes.
pub async fn heal_all(db: &SharedDb) -> std::io::Result<()> {
    with_db(db, |db| {
        if db.supports_partitions() {
            db.heal()?;
        }
        for id in db.nodes() {
            db.resume(id)?;
            if !db.is_running(id) {
                db.start(id)?;
            }
        }
        Ok(())
    })
    .await
}

/// Timing of the schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub families: Vec<Family>,
    /// Quiet time between faults (random in this range).
    pub interval: (Duration, Duration),
    /// How long each fault lasts (random in this range).
    pub duration: (Duration, Duration),
}

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo { lo } else { Duration::from_millis(rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64)) }
}

/// Runs faults until `until`, then ends the last one.
pub async fn run(
    db: SharedDb,
    schedule: Schedule,
    client: Client,
    history: Recorder,
    seed: u64,
    until: tokio::time::Instant,
) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e656d65736973);
    let nodes = db.lock().await.nodes();
    loop {
        let quiet = between(&mut rng, schedule.interval);
        if tokio::time::Instant::now() + quiet >= until {
            tokio::time::sleep_until(until).await;
            return Ok(());
        }
        tokio::time::sleep(quiet).await;
        let fault = pick(&schedule.families, &nodes, &client, &mut rng).await;
        start(&db, &fault, &client, &history).await?;
        let hold = between(&mut rng, schedule.duration);
        tokio::time::sleep_until((tokio::time::Instant::now() + hold).min(until)).await;
        stop(&db, &fault, &client, &history).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family parses from its name, `membership` included, and the
    /// error lists them all.
    #[test]
    fn families_parse_by_name() {
        for family in
            [Family::Kill, Family::Pause, Family::Partition, Family::Restart, Family::KillAll, Family::Membership]
        {
            assert_eq!(Family::parse(family.name()), Ok(family));
        }
        assert_eq!(Family::parse(" membership "), Ok(Family::Membership));
        let error = Family::parse("members").unwrap_err();
        assert!(error.contains("membership"), "{error}");
    }

    /// A mixed schedule picks membership faults among the others, each
    /// described in the history with its target node.
    #[tokio::test]
    async fn mixed_schedule_includes_membership_faults() {
        // No node listens here: the leader is unknown, as during an election.
        let client = Client::new(quorumq_client::ClientConfig::new(vec!["127.0.0.1:9".to_string()])).unwrap();
        let nodes = [1, 2, 3, 4, 5];
        let mut rng = StdRng::seed_from_u64(11);
        let mut labels = BTreeSet::new();
        for _ in 0..60 {
            let fault = pick(&[Family::Kill, Family::Membership], &nodes, &client, &mut rng).await;
            labels.insert(fault.label());
            if let Fault::Membership { node, .. } = fault {
                assert!(nodes.contains(&node));
                let described = fault.describe();
                assert_eq!(described["fault"], fault.label());
                assert_eq!(described["nodes"], json!([node]));
            }
        }
        assert!(labels.contains("kill-random"), "{labels:?}");
        for label in ["replace-random", "replace-leader", "shrink-grow", "transfer-leader"] {
            assert!(labels.contains(label), "no {label} in {labels:?}");
        }
    }

    /// Splits cut exactly the links across the cut, both ways.
    #[test]
    fn split_is_symmetric() {
        let g = split(&[1, 2, 3, 4, 5], &[1, 2].into());
        assert_eq!(g[&1], [3, 4, 5].into());
        assert_eq!(g[&3], [1, 2].into());
        for (a, dropped) in &g {
            for b in dropped {
                assert!(g[b].contains(a), "{a} drops {b} but not the reverse");
            }
        }
    }

    /// A five-node ring leaves each node its two neighbours; a bridge keeps
    /// one node connected to both sides.
    #[test]
    fn ring_and_bridge() {
        let mut rng = StdRng::seed_from_u64(7);
        let g = ring(&[1, 2, 3, 4, 5], &mut rng);
        for a in 1..=5u64 {
            assert_eq!(g[&a].len(), 2, "node {a} drops two of four");
        }
        let g = bridge(&[1, 2, 3, 4, 5], &mut rng);
        let middle: Vec<NodeId> = (1..=5).filter(|n| !g.contains_key(n)).collect();
        assert_eq!(middle.len(), 1);
        assert!(g.values().all(|d| !d.contains(&middle[0])));
    }
}
