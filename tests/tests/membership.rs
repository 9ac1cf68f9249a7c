//! Membership changes on a real cluster while producers run: grow 3 → 5,
//! shrink 5 → 3 (the leader included), replace a dead node, transfer
//! leadership, and the leader's hand-over on SIGTERM. Every test ends with
//! the total-queue check: nothing acknowledged is lost or enqueued twice.

use std::collections::BTreeSet;
use std::time::Duration;

use quorumq_client::Error;
use quorumq_client::Member;
use quorumq_client::Role;
use quorumq_tests::FIRST_LEADER_TIMEOUT;
use quorumq_tests::HARNESS_DEADLINE;
use quorumq_tests::Producers;
use quorumq_tests::TestCluster;
use quorumq_tests::check_no_loss;
use quorumq_tests::create_queue;
use quorumq_tests::drain;
use quorumq_tests::node_binary;
use quorumq_tests::run_cli;
use quorumq_tests::wait_until;

/// How long a membership change may take in these tests.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends acknowledged between two steps, so that each step runs under load.
const ACKS_PER_STEP: u64 = 100;

const ACKS_TIMEOUT: Duration = Duration::from_secs(60);

fn voters(members: &[Member]) -> BTreeSet<u64> {
    members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// The voters every running node in `ids` reports, once they all agree.
async fn wait_for_voters(cluster: &TestCluster, ids: &[u64], expected: &BTreeSet<u64>) {
    wait_until(&format!("nodes {ids:?} to see voters {expected:?}"), Duration::from_secs(30), || async {
        for &id in ids {
            match cluster.node_status(id).await {
                Ok(status) if voters(&status.members) == *expected => {}
                _ => return false,
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_under_load_loses_nothing() {
    // Proves: two nodes join a running 3-node cluster as voters (learner first, caught up, promoted), then two of
    // the original nodes (the leader first) are removed, all while producers run; every acknowledged send is
    // received exactly once and the survivors agree on the 3 voters.
    let mut cluster = TestCluster::start(node_binary!(), "grow_to_five_and_shrink_to_three", 3);
    cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "grow").await;
    let producers = Producers::start(&client, "grow", 3);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    for _ in 0..2 {
        let id = cluster.start_joining_node();
        let members = client.add_node(id, &cluster.addr(id), CHANGE_TIMEOUT).await.expect("add a node");
        assert!(members.iter().any(|m| m.id == id && m.voter), "node {id} is not a voter: {members:?}");
        producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;
    }
    let all: BTreeSet<u64> = (1..=5).collect();
    wait_for_voters(&cluster, &cluster.ids(), &all).await;
    // Adding a member again at the same address changes nothing.
    let again = client.add_node(4, &cluster.addr(4), CHANGE_TIMEOUT).await.expect("add node 4 again");
    assert_eq!(voters(&again), all);

    // Shrink: the leader first (it hands over), then another original node.
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let other = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    for id in [leader, other] {
        let members = client.remove_node(id, CHANGE_TIMEOUT).await.expect("remove a node");
        assert!(members.iter().all(|m| m.id != id), "node {id} still a member: {members:?}");
        cluster.stop(id);
        producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;
    }
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|id| ![leader, other].contains(id)).collect();
    wait_for_voters(&cluster, &survivors, &survivors.iter().copied().collect()).await;
    let new_leader = cluster.wait_for_leader_among(&survivors, FIRST_LEADER_TIMEOUT).await;
    assert!(survivors.contains(&new_leader));

    let sent = producers.stop(Duration::from_secs(30)).await;
    assert!(sent.acked.len() as u64 >= 5 * ACKS_PER_STEP);
    let client = cluster.client_of(&survivors, HARNESS_DEADLINE);
    let received = drain(&client, "grow", Duration::from_secs(60)).await;
    check_no_loss(&sent, &received);
}

/// Runs the CLI against `cluster` without blocking the other tasks.
fn cli(cluster: &TestCluster, args: &[&str]) -> quorumq_tests::CliOutput {
    let cluster_arg = cluster.cluster_arg();
    let mut all = vec!["--cluster", cluster_arg.as_str()];
    all.extend_from_slice(args);
    tokio::task::block_in_place(|| run_cli(&node_binary!(), &all, None, Duration::from_secs(120)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_under_load_through_the_cli() {
    // Proves: after a follower is SIGKILLed, `quorumq cluster remove` takes it out and `quorumq cluster add` brings
    // in a new node started with --join, under load; the new node applies the whole log, and nothing acknowledged
    // is lost. Then the dead node's id comes back on a wiped data directory.
    let mut cluster = TestCluster::start(node_binary!(), "a_dead_node_is_replaced", 3);
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "replace").await;
    let producers = Producers::start(&client, "replace", 3);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    let dead = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(dead);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    let out = cli(&cluster, &["cluster", "remove", &dead.to_string()]);
    assert_eq!(out.code, Some(0), "cluster remove: {out:?}");
    assert!(out.stdout.contains(&format!("node {dead} removed")), "{}", out.stdout);

    let new = cluster.start_joining_node();
    let out = cli(&cluster, &["cluster", "add", &new.to_string(), &cluster.addr(new), "--json"]);
    assert_eq!(out.code, Some(0), "cluster add: {out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("cluster add --json");
    let members = json["members"].as_array().expect("members");
    assert!(members.iter().any(|m| m["id"] == new && m["voter"] == true), "{json}");
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    // The dead node's id returns with a wiped data directory.
    cluster.wipe(dead);
    cluster.restart(dead);
    let members = client.add_node(dead, &cluster.addr(dead), CHANGE_TIMEOUT).await.expect("add the wiped node");
    assert_eq!(voters(&members).len(), 4);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    let sent = producers.stop(Duration::from_secs(30)).await;
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let committed = cluster.node_status(leader).await.unwrap();
    cluster.wait_for_applied(new, committed.committed_index, Duration::from_secs(30)).await;
    cluster.wait_for_applied(dead, committed.committed_index, Duration::from_secs(30)).await;
    let received = drain(&client, "replace", Duration::from_secs(60)).await;
    check_no_loss(&sent, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_on_request_and_on_sigterm() {
    // Proves: transfer-leader makes the chosen voter the leader; a SIGTERMed leader hands over before it exits
    // (its log says so and another node leads in a newer term); bad membership requests get the right errors.
    let mut cluster = TestCluster::start(node_binary!(), "leadership_moves", 3);
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "lead").await;
    let producers = Producers::start(&client, "lead", 2);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    let target = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let before = cluster.node_status(leader).await.unwrap().term;
    let moved = client.transfer_leader(target, Duration::from_secs(10)).await.expect("transfer leadership");
    assert_eq!(moved.leader_id, target);
    assert!(moved.term > before);
    assert_eq!(cluster.node_status(target).await.unwrap().role, Role::Leader);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;

    // Errors: unknown ids, a bad address, an id taken at another address.
    match client.transfer_leader(42, Duration::from_secs(5)).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("transfer to an unknown node gave {other:?}"),
    }
    match client.remove_node(42, Duration::from_secs(5)).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("removing an unknown node gave {other:?}"),
    }
    match client.add_node(9, "no-port", Duration::from_secs(5)).await {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("adding a node without a port gave {other:?}"),
    }
    match client.add_node(leader, "127.0.0.1:1", Duration::from_secs(5)).await {
        Err(Error::FailedPrecondition(_)) => {}
        other => panic!("adding a member at another address gave {other:?}"),
    }

    // SIGTERM the leader: it hands over before exiting.
    let term = cluster.node_status(target).await.unwrap().term;
    cluster.stop(target);
    assert!(
        cluster.log(target).contains("handed leadership over before stopping"),
        "no hand-over in the log of node {target}:\n{}",
        cluster.log_tail(target, 20)
    );
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != target).collect();
    let next = cluster.wait_for_leader_among(&rest, FIRST_LEADER_TIMEOUT).await;
    assert!(cluster.node_status(next).await.unwrap().term > term);
    producers.wait_for_more_acks(ACKS_PER_STEP, ACKS_TIMEOUT).await;
    cluster.restart(target);

    let sent = producers.stop(Duration::from_secs(30)).await;
    let received = drain(&client, "lead", Duration::from_secs(60)).await;
    check_no_loss(&sent, &received);
}
