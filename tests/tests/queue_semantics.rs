//! Queue semantics on a real three-node cluster: redelivery after the
//! visibility timeout, stale receipts, deduplication of retried sends,
//! dead-lettering and redrive across leader failovers, and a push consumer
//! that follows the leader.

use std::time::Duration;
use std::time::Instant;

use quorumq_client::AttributeValue;
use quorumq_client::Client;
use quorumq_client::DeadLetterReason;
use quorumq_client::Error;
use quorumq_client::Message;
use quorumq_client::NackOptions;
use quorumq_client::OutgoingMessage;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use quorumq_client::RedriveOptions;
use quorumq_client::SubscribeOptions;
use quorumq_tests::FIRST_LEADER_TIMEOUT;
use quorumq_tests::HARNESS_DEADLINE;
use quorumq_tests::TestCluster;
use quorumq_tests::create_queue;
use quorumq_tests::node_binary;
use quorumq_tests::wait_for;
use quorumq_tests::wait_until;

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

/// Receives every message of `queue` (visibility `visibility`), retrying
/// until `count` distinct ids were seen or `timeout` passes; returns them.
async fn receive_all(
    client: &Client,
    queue: &str,
    count: usize,
    visibility: Duration,
    timeout: Duration,
) -> Vec<Message> {
    let deadline = Instant::now() + timeout;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < count {
        assert!(Instant::now() < deadline, "received {} of {count} messages of {queue} in {timeout:?}", seen.len());
        let options =
            ReceiveOptions { max_messages: 100, wait: Duration::from_secs(1), visibility_timeout: Some(visibility) };
        match client.receive(queue, options).await {
            Ok(messages) => {
                for m in messages {
                    seen.insert(m.id.clone(), m);
                }
            }
            // A leader change in the middle: the deliveries of a lost
            // answer come back after their visibility timeout.
            Err(Error::Unavailable(_)) | Err(Error::DeadlineExceeded(_)) => {}
            Err(e) => panic!("receive from {queue}: {e}"),
        }
    }
    seen.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_and_redrive_across_leader_failovers_lose_and_duplicate_nothing() {
    // Proves: messages rejected by nack or received more than max_receives times move to the dead-letter queue
    // exactly once, keeping id, body and attributes and gaining the reason, source queue and receive count; a
    // redrive moves them back; the leader is SIGKILLed between each step and no message is lost or duplicated.
    let (mut cluster, client) = started("dead_lettering_and_redrive").await;
    client.create_queue("jobs-dlq", QueueOptions::default()).await.unwrap();
    client.create_queue("jobs", QueueOptions::default().with_dead_letter("jobs-dlq", 1)).await.unwrap();

    const COUNT: usize = 200;
    let mut sent = quorumq_tests::Sent::default();
    for chunk in 0..COUNT / 50 {
        let messages = (0..50)
            .map(|i| {
                let body = format!("job-{}", chunk * 50 + i);
                sent.acked.insert(body.clone());
                let mut m = OutgoingMessage::new(body);
                m.attributes.insert("kind".into(), AttributeValue::String("test".into()));
                m
            })
            .collect();
        for result in client.send_batch("jobs", messages).await.unwrap() {
            result.unwrap();
        }
    }

    // Receive every message once: half are rejected at once, the other
    // half are left to time out and exceed max_receives (1).
    let delivered = receive_all(&client, "jobs", COUNT, Duration::from_secs(2), Duration::from_secs(30)).await;
    let rejected = &delivered[..COUNT / 2];
    for result in client
        .nack_batch_with(
            "jobs",
            rejected.iter().map(|m| m.receipt.clone()),
            NackOptions { dead_letter: true, ..Default::default() },
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    cluster.kill(leader);

    // The new leader moves the abandoned ones once their visibility
    // timeout has passed (by a receive or by the leader's tick).
    wait_until("every message to be dead-lettered", Duration::from_secs(60), || async {
        let _ = client
            .receive("jobs", ReceiveOptions { max_messages: 10, wait: Duration::ZERO, visibility_timeout: None })
            .await;
        match (client.get_queue("jobs").await, client.get_queue("jobs-dlq").await) {
            (Ok(jobs), Ok(dlq)) => jobs.stats.ready + jobs.stats.in_flight == 0 && dlq.stats.ready == COUNT as u64,
            _ => false,
        }
    })
    .await;
    cluster.restart(leader);
    let jobs = client.get_queue("jobs").await.unwrap().stats;
    assert_eq!(jobs.dead_lettered_total, COUNT as u64, "{jobs:?}");

    // In the dead-letter queue: same ids, bodies and attributes, plus why.
    let dead = receive_all(&client, "jobs-dlq", COUNT, Duration::from_secs(1), Duration::from_secs(30)).await;
    let rejected_ids: std::collections::BTreeSet<&str> = rejected.iter().map(|m| m.id.as_str()).collect();
    let originals: std::collections::BTreeMap<&str, &Message> = delivered.iter().map(|m| (m.id.as_str(), m)).collect();
    for m in &dead {
        let original = originals.get(m.id.as_str()).unwrap_or_else(|| panic!("unknown id {} in the DLQ", m.id));
        assert_eq!(m.body, original.body);
        assert_eq!(m.attributes.get("kind"), Some(&AttributeValue::String("test".into())));
        let info = m.dead_letter.as_ref().unwrap_or_else(|| panic!("{} carries no dead-letter info", m.id));
        assert_eq!(info.source_queue, "jobs");
        let expected = if rejected_ids.contains(m.id.as_str()) {
            DeadLetterReason::Rejected
        } else {
            DeadLetterReason::MaxReceives
        };
        assert_eq!(info.reason, expected, "{}", m.id);
        assert!(info.receive_count >= 1, "{info:?}");
    }
    // Those deliveries time out (1 s); then redrive in steps of 50 with
    // the leader killed in the middle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut moved = 0;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "redrive did not finish: moved {moved}");
        match client.redrive("jobs-dlq", RedriveOptions { to: None, max_messages: 50 }).await {
            Ok(result) => {
                moved += result.moved;
                assert_eq!(result.skipped, 0);
                if result.remaining == 0 && client.get_queue("jobs-dlq").await.unwrap().stats.in_flight == 0 {
                    break;
                }
            }
            Err(Error::Unavailable(_)) | Err(Error::DeadlineExceeded(_)) => {}
            Err(e) => panic!("redrive: {e}"),
        }
        if !killed {
            let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
            cluster.kill(leader);
            killed = true;
        }
    }
    // An answer lost in the failover may hide moves from `moved`; the
    // queues' contents are the proof.
    assert!(moved <= COUNT as u64);
    let dlq = client.get_queue("jobs-dlq").await.unwrap().stats;
    assert_eq!((dlq.ready, dlq.in_flight), (0, 0), "{dlq:?}");

    let received = quorumq_tests::drain(&client, "jobs", Duration::from_secs(60)).await;
    quorumq_tests::check_no_loss(&sent, &received);
    assert_eq!(received.len(), COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_consumer_follows_the_leader_and_loses_nothing() {
    // Proves: a subscription keeps consuming across a SIGKILL of the leader: it reconnects by itself, the
    // deliveries it held come back, and every message is acked in the end, none left behind.
    let (mut cluster, client) = started("a_push_consumer_follows_the_leader").await;
    create_queue(&client, "push").await;
    const COUNT: usize = 300;
    let mut sent = std::collections::BTreeSet::new();
    for chunk in 0..COUNT / 100 {
        let messages = (0..100)
            .map(|i| {
                let body = format!("m-{}", chunk * 100 + i);
                sent.insert(body.clone());
                OutgoingMessage::new(body)
            })
            .collect();
        for result in client.send_batch("push", messages).await.unwrap() {
            result.unwrap();
        }
    }

    let options = SubscribeOptions { prefetch: 20, consumer_timeout: Some(Duration::from_secs(3)) };
    let mut subscription = client.subscribe("push", options);
    let mut acked = std::collections::BTreeSet::new();
    let mut deliveries = 0usize;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < COUNT {
        assert!(Instant::now() < deadline, "acked {} of {COUNT} through the subscription", acked.len());
        let message = match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Ok(message)) => message,
            Ok(Err(Error::Unavailable(_))) | Ok(Err(Error::DeadlineExceeded(_))) | Err(_) => continue,
            Ok(Err(e)) => panic!("next: {e}"),
        };
        deliveries += 1;
        let body = String::from_utf8(message.body.to_vec()).unwrap();
        assert!(sent.contains(&body), "unexpected body {body}");
        if !killed && acked.len() >= COUNT / 3 {
            // Kill the leader while this delivery (and up to the prefetch
            // window) is held, unacked.
            let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
            cluster.kill(leader);
            killed = true;
            continue;
        }
        match subscription.ack(&message.receipt).await {
            Ok(()) => {
                acked.insert(body);
            }
            // The delivery was given back (stream broken) or redelivered:
            // it comes again.
            Err(Error::FailedPrecondition(_)) | Err(Error::Unavailable(_)) | Err(Error::DeadlineExceeded(_)) => {}
            Err(e) => panic!("ack: {e}"),
        }
    }
    assert!(killed);
    assert!(subscription.streams_opened() >= 2, "the subscription never reconnected");
    assert!(deliveries >= COUNT, "{deliveries} deliveries");
    subscription.close().await;
    let stats = client.get_queue("push").await.unwrap().stats;
    assert_eq!((stats.ready, stats.in_flight), (0, 0), "{stats:?}");
}
