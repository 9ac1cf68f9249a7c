//! Backup and restore as docs/operations.md describes them: a backup is a
//! copy of a stopped follower's data directory; a restore starts every node
//! of the cluster, with the same ids and addresses, on a copy of it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use quorumq_client::OutgoingMessage;
use quorumq_client::ReceiveOptions;
use quorumq_tests::FIRST_LEADER_TIMEOUT;
use quorumq_tests::HARNESS_DEADLINE;
use quorumq_tests::TestCluster;
use quorumq_tests::create_queue;
use quorumq_tests::drain;
use quorumq_tests::node_binary;
use quorumq_tests::wait_for;

/// Copies the directory `from` to `to` (which must not exist), recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&source, &target);
        } else {
            std::fs::copy(&source, &target).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
        }
    }
}

/// Sends `count` messages with bodies `{prefix}-{n}`, one at a time and one
/// message per send, and returns the bodies, all acknowledged. One send
/// waits for the one before it, so the batcher has nothing to merge and
/// each send is a log entry of its own: the test needs a log long enough
/// to be compacted.
async fn send_many(cluster: &TestCluster, queue: &str, prefix: &str, count: usize) -> BTreeSet<String> {
    let client = cluster.client(HARNESS_DEADLINE);
    let mut all = BTreeSet::new();
    for n in 0..count {
        let body = format!("{prefix}-{n}");
        let results = client
            .send_batch(queue, vec![OutgoingMessage::new(body.clone())])
            .await
            .unwrap_or_else(|e| panic!("send {body}: {e}"));
        results.into_iter().next().unwrap().unwrap_or_else(|e| panic!("send {body}: {e}"));
        all.insert(body);
    }
    assert_eq!(all.len(), count);
    all
}

/// Receives `count` messages of `queue` and acks them; returns their
/// bodies.
async fn receive_and_ack(cluster: &TestCluster, queue: &str, count: usize) -> BTreeSet<String> {
    let client = cluster.client(HARNESS_DEADLINE);
    let mut bodies = BTreeSet::new();
    while bodies.len() < count {
        let options = ReceiveOptions {
            max_messages: (count - bodies.len()) as u32,
            wait: Duration::from_secs(5),
            visibility_timeout: None,
        };
        let messages = client.receive(queue, options).await.unwrap_or_else(|e| panic!("receive: {e}"));
        assert!(!messages.is_empty(), "no message to receive in {queue} after {} of {count}", bodies.len());
        for result in client.ack_batch(queue, messages.iter().map(|m| m.receipt.clone())).await.unwrap() {
            result.unwrap_or_else(|e| panic!("ack: {e}"));
        }
        bodies.extend(messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_stopped_followers_data_dir_restores_the_cluster() {
    // Proves: a follower stopped after it applied everything acknowledged, copied (snapshot files and a compacted log included) and restarted, is a backup: while the cluster goes on, and then a fresh 3-node cluster (same ids and addresses) started with every data directory a copy of it holds exactly the messages that were in the queue at the backup — not those sent after it, and again those acked after it — and not a queue created after it.
    let mut cluster = TestCluster::start_with(
        node_binary!(),
        "a_copy_of_a_stopped_followers_data_dir_restores_the_cluster",
        3,
        &["--snapshot-every", "100"],
    );
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "jobs").await;

    // More entries than the 1000 a node keeps behind its latest snapshot,
    // so that the backup holds a snapshot file and a compacted log.
    let before = send_many(&cluster, "jobs", "before", 1200).await;
    let acked_before = receive_and_ack(&cluster, "jobs", 100).await;
    let in_backup: BTreeSet<String> = before.difference(&acked_before).cloned().collect();

    // The backup: a follower that has applied everything acknowledged,
    // stopped, copied, started again. The other two go on serving.
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let applied = cluster.node_status(leader).await.unwrap().applied_index;
    wait_for("the follower to apply, snapshot and compact", Duration::from_secs(60), || async {
        let status = cluster.node_status(follower).await.ok()?;
        (status.applied_index >= applied && status.snapshot_index > 0 && status.purged_index > 0).then_some(())
    })
    .await;
    cluster.stop(follower);
    let backup_root = tempfile::tempdir().unwrap();
    let backup = backup_root.path().join("backup");
    copy_dir(&cluster.data_dir(follower), &backup);
    cluster.restart(follower);
    assert!(backup.join("snapshots").is_dir(), "the backup has no snapshots directory");

    // After the backup: new messages, acks of old ones, a new queue.
    let after = send_many(&cluster, "jobs", "after", 50).await;
    let acked_after = receive_and_ack(&cluster, "jobs", 100).await;
    assert!(acked_after.is_subset(&in_backup), "FIFO: the acks after the backup took messages sent before it");
    create_queue(&client, "created-after-the-backup").await;
    assert_eq!(client.get_queue("jobs").await.unwrap().stats.ready, (in_backup.len() - 100 + after.len()) as u64);

    // The restore: every node stopped, its data directory replaced by a
    // copy of the backup, started again with the same id and address.
    for id in cluster.ids() {
        cluster.stop(id);
    }
    for id in cluster.ids() {
        let dir = cluster.data_dir(id);
        std::fs::remove_dir_all(&dir).unwrap();
        copy_dir(&backup, &dir);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    let queues: Vec<String> = client.list_queues().await.unwrap().into_iter().map(|q| q.name).collect();
    assert_eq!(queues, ["jobs"], "the queues of the restored cluster");

    let received: BTreeMap<String, u32> = drain(&client, "jobs", Duration::from_secs(60)).await;
    let restored: BTreeSet<String> = received.keys().cloned().collect();
    let missing: Vec<&String> = in_backup.difference(&restored).take(10).collect();
    let extra: Vec<&String> = restored.difference(&in_backup).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the restore is not the backup: missing {missing:?}, extra {extra:?}"
    );
    assert!(received.values().all(|&n| n == 1), "a message was restored twice");
    assert_eq!(restored.len(), 1100);
}
