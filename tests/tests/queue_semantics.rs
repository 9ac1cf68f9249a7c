//! Queue semantics on a real three-node cluster: redelivery after the
//! visibility timeout, stale receipts, and deduplication of retried sends.

use std::time::Duration;
use std::time::Instant;

use quorumq_client::Client;
use quorumq_client::Error;
use quorumq_client::Message;
use quorumq_client::ReceiveOptions;
use quorumq_tests::FIRST_LEADER_TIMEOUT;
use quorumq_tests::HARNESS_DEADLINE;
use quorumq_tests::TestCluster;
use quorumq_tests::create_queue;
use quorumq_tests::node_binary;
use quorumq_tests::wait_for;

/// The visibility timeout the tests give their deliveries.
const VISIBILITY: Duration = Duration::from_secs(1);

/// How early a redelivery may seem to come by the test's clock: the leader
/// stamps the delivery after the test reads its clock, so a redelivery can
/// only look late, never early; this covers clock granularity.
const EARLY_SLACK: Duration = Duration::from_millis(50);

/// Long-poll wait of a receive that expects a message: a leader that has
/// just taken over may not have applied the latest sends yet, and answers an
/// immediate receive with nothing.
const EXPECT_WAIT: Duration = Duration::from_secs(5);

/// Receives at most one message, waiting up to `wait` for one.
async fn receive_one(client: &Client, queue: &str, visibility: Duration, wait: Duration) -> Option<Message> {
    let options = ReceiveOptions { max_messages: 1, wait, visibility_timeout: Some(visibility) };
    let mut messages = client.receive(queue, options).await.expect("receive");
    assert!(messages.len() <= 1, "asked for one message, got {}", messages.len());
    messages.pop()
}

async fn started(name: &str) -> (TestCluster, Client) {
    let mut cluster = TestCluster::start(node_binary!(), name, 3);
    cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_comes_back_after_its_visibility_timeout() {
    // Proves: a received message that is not acked stays invisible for its visibility timeout, then is delivered again with receive_count 2.
    let (_cluster, client) = started("an_unacked_message_comes_back").await;
    create_queue(&client, "redeliver").await;
    let sent = client.send("redeliver", "work item").await.unwrap();

    let received_at = Instant::now();
    let first = receive_one(&client, "redeliver", VISIBILITY, EXPECT_WAIT).await.expect("the message is delivered");
    assert_eq!((first.id.as_str(), first.receive_count), (sent.id.as_str(), 1));
    let stats = client.get_queue("redeliver").await.unwrap().stats;
    assert_eq!((stats.ready, stats.in_flight), (0, 1));
    let again = receive_one(&client, "redeliver", VISIBILITY, Duration::ZERO).await;
    assert!(again.is_none(), "delivered again at once: {again:?}");

    let second = wait_for("the message to be delivered again", Duration::from_secs(10), || {
        receive_one(&client, "redeliver", Duration::from_secs(30), Duration::ZERO)
    })
    .await;
    let elapsed = received_at.elapsed();
    assert!(elapsed + EARLY_SLACK >= VISIBILITY, "delivered again after {elapsed:?}, before its visibility timeout");
    assert_eq!(second.id, first.id);
    assert_eq!(second.body, first.body);
    assert_eq!(second.receive_count, 2);
    assert_ne!(second.receipt, first.receipt);
    client.ack("redeliver", second.receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_receipt_cannot_ack_a_later_delivery() {
    // Proves: once a message is delivered again, the first delivery's receipt is stale (FailedPrecondition) and the second one acks it.
    let (_cluster, client) = started("a_stale_receipt").await;
    create_queue(&client, "stale").await;
    client.send("stale", "job").await.unwrap();

    let first = receive_one(&client, "stale", VISIBILITY, EXPECT_WAIT).await.expect("the message is delivered");
    let second = wait_for("the message to be delivered again", Duration::from_secs(10), || {
        receive_one(&client, "stale", Duration::from_secs(30), Duration::ZERO)
    })
    .await;
    assert_eq!(second.receive_count, 2);

    match client.ack("stale", first.receipt.clone()).await {
        Err(Error::FailedPrecondition(_)) => {}
        other => panic!("ack with a stale receipt gave {other:?}, expected FailedPrecondition"),
    }
    let stats = client.get_queue("stale").await.unwrap().stats;
    assert_eq!((stats.ready, stats.in_flight, stats.acked_total), (0, 1, 0), "the stale ack changed the queue");

    client.ack("stale", second.receipt.clone()).await.expect("ack with the current receipt");
    let stats = client.get_queue("stale").await.unwrap().stats;
    assert_eq!((stats.ready, stats.in_flight, stats.acked_total), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_with_the_same_id_is_enqueued_once() {
    // Proves: a second send with the same message id is reported as a duplicate of the first and enqueues nothing.
    let (_cluster, client) = started("a_send_retried_with_the_same_id").await;
    create_queue(&client, "dedup").await;
    let first = client.send_with_id("dedup", "order-17", "charge card").await.unwrap();
    assert!(!first.duplicate);
    let again = client.send_with_id("dedup", "order-17", "charge card").await.unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!((again.id.as_str(), again.seq), (first.id.as_str(), first.seq));
    assert_eq!(first.id, "order-17");

    let stats = client.get_queue("dedup").await.unwrap().stats;
    assert_eq!(stats.ready, 1);
    assert_eq!(stats.sent_total, 1);
    let message = receive_one(&client, "dedup", Duration::from_secs(30), EXPECT_WAIT).await.unwrap();
    assert_eq!((message.id.as_str(), &message.body[..]), ("order-17", &b"charge card"[..]));
}
