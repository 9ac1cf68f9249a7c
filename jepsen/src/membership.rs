//! The membership nemesis: replace a node (remove it, wipe its data, start
//! it empty with `--join` and add it back), shrink the cluster by one voter
//! and grow it back, and hand leadership to a follower.
//!
//! Every change goes through the public client's membership calls
//! (`remove_node`, `add_node`, `transfer_leader`), retried with backoff
//! within a time budget: a call can fail because another fault left no
//! leader for a while or because a change is still in progress. Failures are
//! noted in the fault's history entries (`steps`, `error`), never panics.
//!
//! Safety rules the nemesis keeps, so that the cluster's guarantees hold and
//! the total-queue checker must still find nothing lost:
//! - One node out at a time: a removal starts only when every node of the
//!   test is a voter (an earlier half-done replacement is completed first).
//! - A node's data is wiped only once its removal is known to be committed:
//!   the leader no longer lists it, and the same leader, in the same term,
//!   has committed past the end of the log it had then. A wiped voter would
//!   be a voter that forgot what it acknowledged.
//! - A wiped node starts with `--join` from then on, so it never forms a
//!   cluster of its own.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use quorumq_client::Client;
use quorumq_client::Error;
use quorumq_client::Member;
use quorumq_client::NodeStatus;
use quorumq_client::Role;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::time::Instant;

use crate::db::NodeId;
use crate::nemesis::SharedDb;
use crate::nemesis::find_leader;
use crate::nemesis::with_db;

/// How long taking a node out (removal and its confirmation) may take.
pub const REMOVE_BUDGET: Duration = Duration::from_secs(30);
/// How long bringing nodes back as voters (catch-up included) may take at
/// the start and at the end of a fault.
pub const ADD_BUDGET: Duration = Duration::from_secs(45);
/// How long a leadership transfer may take, retries included.
pub const TRANSFER_BUDGET: Duration = Duration::from_secs(15);
/// The heal after the workload, before the drain.
pub const FINAL_HEAL_BUDGET: Duration = Duration::from_secs(120);
/// The longest one membership call may wait on the server.
const CALL_WAIT: Duration = Duration::from_secs(15);

/// A membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Remove the node, stop it, wipe its data, start it with `--join` and
    /// add it back, all when the fault starts; the fault ends once it is a
    /// voter again.
    Replace,
    /// Remove the node and stop it: the cluster runs one voter short until
    /// the fault ends, which starts it again (wiped and with `--join`, or on
    /// its old data) and adds it back.
    ShrinkGrow { wipe: bool },
    /// Hand leadership to the node.
    Transfer,
}

/// Picks a membership fault: its label, change and target node. `leader`
/// is the current leader, when known. With fewer than three nodes only
/// leadership transfers are possible.
pub fn choose(nodes: &[NodeId], leader: Option<NodeId>, rng: &mut StdRng) -> (&'static str, Change, NodeId) {
    let random_node = *nodes.choose(rng).expect("nodes");
    let kind = if nodes.len() < 3 { 3 } else { rng.random_range(0..4) };
    match kind {
        0 => ("replace-random", Change::Replace, random_node),
        1 => ("replace-leader", Change::Replace, leader.unwrap_or(random_node)),
        2 => ("shrink-grow", Change::ShrinkGrow { wipe: rng.random_bool(0.5) }, random_node),
        _ => {
            let followers: Vec<NodeId> = nodes.iter().copied().filter(|&n| Some(n) != leader).collect();
            ("transfer-leader", Change::Transfer, followers.choose(rng).copied().unwrap_or(random_node))
        }
    }
}

/// What a membership fault did, step by step, with the time since it began.
pub struct Log {
    began: Instant,
    steps: Vec<String>,
}

impl Default for Log {
    fn default() -> Self {
        Log { began: Instant::now(), steps: Vec::new() }
    }
}

impl Log {
    fn note(&mut self, step: impl std::fmt::Display) {
        self.steps.push(format!("+{:.1}s {step}", self.began.elapsed().as_secs_f64()));
    }

    pub fn steps(&self) -> &[String] {
        &self.steps
    }
}

/// Why a membership fault did not do all it meant to.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was changed (the history records the start as `fail`).
    Skipped(String),
    /// Some of it happened; the fault's end completes it.
    Incomplete(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Skipped(e) => write!(f, "skipped: {e}"),
            Failure::Incomplete(e) => write!(f, "incomplete: {e}"),
        }
    }
}

async fn addresses(db: &SharedDb) -> BTreeMap<NodeId, String> {
    let db = db.lock().await;
    db.nodes().into_iter().map(|id| (id, db.client_addr(id))).collect()
}

fn voter_ids(members: &[Member]) -> BTreeSet<NodeId> {
    members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// Sleeps before the next attempt (200 ms doubling to 2 s); false when that
/// would pass `deadline`.
async fn backoff(attempt: &mut u32, deadline: Instant) -> bool {
    let pause = Duration::from_millis(200 << (*attempt).min(4)).min(Duration::from_secs(2));
    *attempt += 1;
    if Instant::now() + pause >= deadline {
        return false;
    }
    tokio::time::sleep(pause).await;
    true
}

fn wait_until(deadline: Instant) -> Duration {
    CALL_WAIT.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_secs(1))
}

/// The leader's own status (its view of the membership), asked directly.
async fn leader_status(client: &Client, addrs: &BTreeMap<NodeId, String>) -> Result<NodeStatus, String> {
    let leader = find_leader(client).await.ok_or("no leader")?;
    let addr = addrs.get(&leader).ok_or_else(|| format!("the leader, node {leader}, is not a node of this test"))?;
    let status = client.node_status(addr).await.map_err(|e| format!("status of the leader {leader}: {e}"))?;
    if status.role != Role::Leader {
        return Err(format!("node {leader} does not lead any more"));
    }
    Ok(status)
}

/// Removes `id` and waits until its removal is committed.
async fn remove(
    client: &Client,
    addrs: &BTreeMap<NodeId, String>,
    id: NodeId,
    deadline: Instant,
    log: &mut Log,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match client.remove_node(id, wait_until(deadline)).await {
            Ok(members) => {
                log.note(format_args!("remove_node({id}): ok, voters {:?}", voter_ids(&members)));
                break;
            }
            // Removed by an earlier attempt whose answer was lost: the
            // confirmation below tells whether that removal committed.
            Err(Error::NotFound(e)) => {
                log.note(format_args!("remove_node({id}): not a member: {e}"));
                break;
            }
            Err(e) => log.note(format_args!("remove_node({id}): {e}")),
        }
        if !backoff(&mut attempt, deadline).await {
            return Err(format!("node {id} was not removed within {REMOVE_BUDGET:?}"));
        }
    }
    confirm_removed(client, addrs, id, deadline, log).await
}

/// Waits until the removal of `id` is committed: the leader does not list
/// it, and that leader, still leading in the same term, has committed the
/// log it had when it answered (which holds the change).
async fn confirm_removed(
    client: &Client,
    addrs: &BTreeMap<NodeId, String>,
    id: NodeId,
    deadline: Instant,
    log: &mut Log,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match leader_status(client, addrs).await {
            Ok(status) if status.members.iter().any(|m| m.id == id) => {
                log.note(format_args!("leader {} still lists node {id}", status.id));
            }
            Ok(first) => {
                let end = first.last_log_index;
                let addr = &addrs[&first.id];
                loop {
                    match client.node_status(addr).await {
                        Ok(now)
                            if now.term == first.term
                                && now.role == Role::Leader
                                && !now.members.iter().any(|m| m.id == id) =>
                        {
                            if now.committed_index >= end {
                                log.note(format_args!(
                                    "removal of node {id} committed (leader {}, term {}, index {end})",
                                    now.id, now.term
                                ));
                                return Ok(());
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            log.note(format_args!("status of the leader {}: {e}", first.id));
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => log.note(e),
        }
        if !backoff(&mut attempt, deadline).await {
            return Err(format!("the removal of node {id} was not seen committed in time; its data is kept"));
        }
    }
}

/// Adds `id` (running) until the leader answers that it is a voter.
async fn add(
    client: &Client,
    addrs: &BTreeMap<NodeId, String>,
    id: NodeId,
    deadline: Instant,
    log: &mut Log,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match client.add_node(id, &addrs[&id], wait_until(deadline)).await {
            Ok(members) if voter_ids(&members).contains(&id) => {
                log.note(format_args!("add_node({id}): a voter; voters {:?}", voter_ids(&members)));
                return Ok(());
            }
            Ok(members) => log.note(format_args!("add_node({id}): not a voter yet: {members:?}")),
            Err(e) => log.note(format_args!("add_node({id}): {e}")),
        }
        if !backoff(&mut attempt, deadline).await {
            return Err(format!("node {id} did not become a voter in time"));
        }
    }
}

async fn transfer(client: &Client, to: NodeId, deadline: Instant, log: &mut Log) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match client.transfer_leader(to, wait_until(deadline).min(Duration::from_secs(10))).await {
            Ok(t) => {
                log.note(format_args!("transfer_leader({to}): node {} leads in term {}", t.leader_id, t.term));
                return Ok(());
            }
            Err(e) => log.note(format_args!("transfer_leader({to}): {e}")),
        }
        if !backoff(&mut attempt, deadline).await {
            return Err(format!("leadership did not move to node {to} in time"));
        }
    }
}

/// Runs a db action off the async threads, noting it.
async fn db_step(
    db: &SharedDb,
    log: &mut Log,
    what: String,
    f: impl FnOnce(&mut dyn crate::db::Db) -> std::io::Result<()> + Send + 'static,
) -> Result<(), String> {
    match with_db(db, f).await {
        Ok(()) => {
            log.note(&what);
            Ok(())
        }
        Err(e) => {
            log.note(format_args!("{what}: {e}"));
            Err(format!("{what}: {e}"))
        }
    }
}

/// Waits until every node has applied what the leader had committed when
/// the wait began. `add_node` returns once the leader counts a learner as
/// caught up, which openraft decides by a lag threshold (thousands of
/// entries): a node just added may still be far behind.
async fn wait_caught_up(
    client: &Client,
    addrs: &BTreeMap<NodeId, String>,
    deadline: Instant,
    log: &mut Log,
) -> Result<(), String> {
    let mut attempt = 0;
    let target = loop {
        match leader_status(client, addrs).await {
            Ok(status) => break status.committed_index,
            Err(e) => log.note(e),
        }
        if !backoff(&mut attempt, deadline).await {
            return Err("no leader to catch up with".to_string());
        }
    };
    let started = Instant::now();
    for (&id, addr) in addrs {
        loop {
            match client.node_status(addr).await {
                Ok(status) if status.applied_index >= target => break,
                Ok(_) => {}
                Err(e) => log.note(format_args!("status of node {id}: {e}")),
            }
            if Instant::now() >= deadline {
                return Err(format!("node {id} did not apply index {target} in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if started.elapsed() > Duration::from_millis(100) {
        log.note(format_args!("every node applied index {target} (waited {:.1}s)", started.elapsed().as_secs_f64()));
    }
    Ok(())
}

/// Starts every stopped node (a wiped one with `--join`), then adds every
/// node the leader does not count as a voter, until all are voters and
/// have applied what the leader had committed, or `deadline` passes.
pub async fn heal(db: &SharedDb, client: &Client, deadline: Instant, log: &mut Log) -> Result<(), String> {
    let addrs = addresses(db).await;
    let mut attempt = 0;
    loop {
        let down = with_db(db, |db| Ok(db.nodes().into_iter().filter(|&id| !db.is_running(id)).collect::<Vec<_>>()))
            .await
            .unwrap_or_default();
        for id in down {
            let _ = db_step(db, log, format!("start node {id}"), move |db| db.start(id)).await;
        }
        let missing: Result<Vec<NodeId>, String> = leader_status(client, &addrs).await.map(|status| {
            let voters = voter_ids(&status.members);
            addrs.keys().copied().filter(|id| !voters.contains(id)).collect()
        });
        match missing {
            Ok(missing) if missing.is_empty() => return wait_caught_up(client, &addrs, deadline, log).await,
            Ok(missing) => {
                log.note(format_args!("not voters: {missing:?}"));
                for id in missing {
                    add(client, &addrs, id, deadline, log).await?;
                }
            }
            Err(e) => log.note(e),
        }
        if !backoff(&mut attempt, deadline).await {
            return Err("not every node is a voter in time".to_string());
        }
    }
}

/// Starts a membership fault on `node`.
pub async fn start(db: &SharedDb, client: &Client, change: Change, node: NodeId, log: &mut Log) -> Result<(), Failure> {
    if change == Change::Transfer {
        // A transfer that timed out may still have happened: not `Skipped`.
        return transfer(client, node, Instant::now() + TRANSFER_BUDGET, log).await.map_err(Failure::Incomplete);
    }
    let addrs = addresses(db).await;
    // One node out at a time: finish any earlier replacement first.
    heal(db, client, Instant::now() + ADD_BUDGET, log)
        .await
        .map_err(|e| Failure::Skipped(format!("the cluster is not whole: {e}")))?;
    remove(client, &addrs, node, Instant::now() + REMOVE_BUDGET, log).await.map_err(Failure::Incomplete)?;
    db_step(db, log, format!("stop node {node}"), move |db| db.stop(node)).await.map_err(Failure::Incomplete)?;
    let wipe = match change {
        Change::Replace => true,
        Change::ShrinkGrow { wipe } => wipe,
        Change::Transfer => false,
    };
    if wipe {
        db_step(db, log, format!("wipe node {node}"), move |db| db.wipe(node)).await.map_err(Failure::Incomplete)?;
    }
    if change == Change::Replace {
        db_step(db, log, format!("start node {node} with --join"), move |db| db.start(node))
            .await
            .map_err(Failure::Incomplete)?;
        add(client, &addrs, node, Instant::now() + ADD_BUDGET, log).await.map_err(Failure::Incomplete)?;
    }
    Ok(())
}

/// Ends a membership fault: the removed node runs again and is a voter.
pub async fn stop(db: &SharedDb, client: &Client, change: Change, log: &mut Log) -> Result<(), String> {
    match change {
        Change::Transfer => Ok(()),
        Change::Replace | Change::ShrinkGrow { .. } => heal(db, client, Instant::now() + ADD_BUDGET, log).await,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn choices_cover_every_change_and_respect_the_leader() {
        let nodes = [1, 2, 3, 4, 5];
        let mut labels = BTreeSet::new();
        let mut wipes = BTreeSet::new();
        for seed in 0..400 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (label, change, node) = choose(&nodes, Some(3), &mut rng);
            assert!(nodes.contains(&node));
            labels.insert(label);
            match change {
                Change::Replace if label == "replace-leader" => assert_eq!(node, 3),
                Change::Replace => assert_eq!(label, "replace-random"),
                Change::ShrinkGrow { wipe } => {
                    assert_eq!(label, "shrink-grow");
                    wipes.insert(wipe);
                }
                Change::Transfer => {
                    assert_eq!(label, "transfer-leader");
                    assert_ne!(node, 3, "leadership goes to a follower");
                }
            }
        }
        assert_eq!(labels, ["replace-leader", "replace-random", "shrink-grow", "transfer-leader"].into());
        assert_eq!(wipes, [false, true].into());
    }

    #[test]
    fn choices_without_a_known_leader_or_with_too_few_nodes() {
        for seed in 0..100 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (_, _, node) = choose(&[1, 2, 3], None, &mut rng);
            assert!((1..=3).contains(&node));
            // One node: no removal is possible, only a (trivial) transfer.
            let (label, change, node) = choose(&[1], Some(1), &mut rng);
            assert_eq!((label, change, node), ("transfer-leader", Change::Transfer, 1));
        }
    }

    /// A cluster whose processes all run: the fake db of the heal test.
    struct Running(Vec<NodeId>);

    impl crate::db::Db for Running {
        fn nodes(&self) -> Vec<NodeId> {
            self.0.clone()
        }
        fn client_addr(&self, id: NodeId) -> String {
            // Nothing listens on the discard port.
            format!("127.0.0.{id}:9")
        }
        fn setup(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn start(&mut self, _: NodeId) -> std::io::Result<()> {
            Ok(())
        }
        fn kill(&mut self, _: NodeId) -> std::io::Result<()> {
            Ok(())
        }
        fn stop(&mut self, _: NodeId) -> std::io::Result<()> {
            Ok(())
        }
        fn pause(&mut self, _: NodeId) -> std::io::Result<()> {
            Ok(())
        }
        fn resume(&mut self, _: NodeId) -> std::io::Result<()> {
            Ok(())
        }
        fn is_running(&mut self, _: NodeId) -> bool {
            true
        }
        fn supports_partitions(&self) -> bool {
            false
        }
        fn partition(&mut self, _: &crate::db::Grudge) -> std::io::Result<()> {
            Ok(())
        }
        fn heal(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn teardown(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn wipe(&mut self, _: NodeId) -> std::io::Result<()> {
            panic!("nothing may be wiped without a confirmed removal")
        }
    }

    /// With no leader to be found, healing gives up at its deadline and
    /// says why, without panicking or wiping anything.
    #[tokio::test]
    async fn heal_without_a_leader_gives_up_in_time() {
        let db: SharedDb = std::sync::Arc::new(tokio::sync::Mutex::new(Box::new(Running(vec![1, 2, 3]))));
        let seeds: Vec<String> = (1..=3).map(|id| format!("127.0.0.{id}:9")).collect();
        let client = Client::new(quorumq_client::ClientConfig::new(seeds)).unwrap();
        let mut log = Log::default();
        let began = Instant::now();
        let result = heal(&db, &client, began + Duration::from_millis(1500), &mut log).await;
        assert_eq!(result, Err("not every node is a voter in time".to_string()));
        assert!(began.elapsed() < Duration::from_secs(10), "{:?}", began.elapsed());
        assert!(log.steps().iter().any(|s| s.ends_with("no leader")), "{:?}", log.steps());
    }

    #[test]
    fn failures_say_whether_anything_changed() {
        assert_eq!(Failure::Skipped("no leader".into()).to_string(), "skipped: no leader");
        assert_eq!(Failure::Incomplete("x".into()).to_string(), "incomplete: x");
    }
}
