//! The idempotent producer, batches, receive, the consumer helper and
//! cluster status, against fake nodes on loopback.

mod common;

use std::time::Duration;

use common::{FakeNode, Mode, Reply, closed_address, wait_for};
use quorumq_client::{
    AttributeValue, Client, ClientConfig, ConsumerOptions, DeadLetterPolicy, EntryError, Error, NackOptions,
    OutgoingMessage, Overflow, QueueOptions, ReceiveOptions, RedriveOptions, RedriveResult, Role,
};
use tokio::time::Instant;

fn config(seeds: &[&str]) -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_secs(5),
        attempt_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..ClientConfig::new(seeds.iter().copied())
    }
}

#[tokio::test]
async fn every_retry_of_a_send_carries_the_same_generated_id() {
    // Proves: send generates one id before the first attempt and sends it on
    // every retry (after an applied-but-unknown attempt, a hung attempt, a
    // leader change and an unavailable node), so the server deduplicates the
    // retry and the message is enqueued once.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.script([
        Reply::ApplyThenDeadlineExceeded,
        Reply::Hang,
        Reply::NotLeader(Some((1, leader.address.clone()))),
        Reply::Unavailable,
    ]);
    let client = Client::new(config(&[&leader.address])).unwrap();

    let receipt = client.send("q", "payload").await.unwrap();

    let sends = leader.state.calls_of("send");
    assert_eq!(sends.len(), 5, "{sends:?}");
    let id = &sends[0].ids[0];
    assert!(id.starts_with("c-") && id.len() == 34, "{id}");
    assert!(sends.iter().all(|call| call.ids == [id.clone()]), "{sends:?}");
    assert_eq!(&receipt.id, id);
    assert!(receipt.duplicate, "the retry was deduplicated");
    assert_eq!(receipt.seq, 1);
    assert_eq!(leader.state.message_count(), 1);
}

#[tokio::test]
async fn batch_retries_keep_generated_and_given_ids() {
    // Proves: in a batch, messages without an id get distinct generated ids,
    // messages with one keep it, and a retry resends exactly the same ids.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.script([Reply::ApplyThenDeadlineExceeded]);
    let client = Client::new(config(&[&leader.address])).unwrap();

    let batch = vec![OutgoingMessage::new("a"), OutgoingMessage::new("b").with_id("mine"), OutgoingMessage::new("c")];
    let results = client.send_batch("q", batch).await.unwrap();

    let sends = leader.state.calls_of("send");
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].ids, sends[1].ids);
    assert_eq!(sends[0].ids[1], "mine");
    assert_ne!(sends[0].ids[0], sends[0].ids[2]);
    assert!(results.iter().all(|r| r.as_ref().unwrap().duplicate));
    assert_eq!(leader.state.message_count(), 3);
}

#[tokio::test]
async fn per_entry_errors_are_returned_per_entry() {
    // Proves: a batch answer with a failed entry yields that entry's error in
    // its place and the other entries' results in theirs, for sends and for
    // acks; a one-entry request's failure is the call's error.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    let client = Client::new(config(&[&leader.address])).unwrap();

    let batch = ["ok-1", "bad", "ok-2"].map(OutgoingMessage::new).to_vec();
    let results = client.send_batch("q", batch).await.unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().seq, 1);
    assert_eq!(results[1], Err(EntryError { code: tonic::Code::InvalidArgument, message: "bad body".into() }));
    assert_eq!(results[2].as_ref().unwrap().seq, 2);

    let error = client.send("q", "bad").await.unwrap_err();
    assert_eq!(error, Error::InvalidArgument("bad body".into()));

    let messages = client.receive("q", ReceiveOptions { max_messages: 10, ..Default::default() }).await.unwrap();
    assert_eq!(messages.len(), 2);
    let receipts = vec![messages[0].receipt.clone(), "stale".to_string(), messages[1].receipt.clone()];
    let results = client.ack_batch("q", receipts).await.unwrap();
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[1].clone().map_err(Error::from), Err(Error::FailedPrecondition("stale receipt".into())));
    assert_eq!(results[2], Ok(()));
    assert_eq!(leader.state.message_count(), 0);

    let error = client.ack("q", "stale").await.unwrap_err();
    assert_eq!(error, Error::FailedPrecondition("stale receipt".into()));
}

#[tokio::test]
async fn only_generated_ids_are_marked_generated() {
    // Proves: the wire's `id_generated` is true for the ids the client made
    // up and false for the producer's, on the first attempt and on retries.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.script([Reply::ApplyThenDeadlineExceeded]);
    let client = Client::new(config(&[&leader.address])).unwrap();

    let batch = vec![OutgoingMessage::new("a"), OutgoingMessage::new("b").with_id("mine")];
    client.send_batch("q", batch).await.unwrap();
    client.send_with_id("q", "also-mine", "c").await.unwrap();
    client.send("q", "d").await.unwrap();

    let sends = leader.state.calls_of("send");
    assert_eq!(sends.len(), 4, "{sends:?}");
    assert_eq!(sends[0].generated, [true, false]);
    assert_eq!(sends[1].generated, [true, false], "the retry");
    assert_eq!(sends[2].generated, [false]);
    assert_eq!(sends[3].generated, [true]);
}

#[tokio::test]
async fn message_fields_and_attributes_round_trip() {
    // Proves: a message's attributes (text and binary), group and priority
    // reach the server and come back on the received message.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    let client = Client::new(config(&[&leader.address])).unwrap();

    let message = OutgoingMessage::new("body")
        .with_group("g-1")
        .with_priority(7)
        .with_delay(Duration::from_millis(1500))
        .with_ttl(Duration::from_secs(60))
        .with_attribute("tenant", "acme")
        .with_attribute("blob", vec![0u8, 159, 255]);
    client.send_batch("q", vec![message.clone()]).await.unwrap();
    let received = client.receive("q", ReceiveOptions::default()).await.unwrap().pop().unwrap();

    assert_eq!(received.body, "body");
    assert_eq!(received.attributes, message.attributes);
    assert_eq!(received.attributes["tenant"], AttributeValue::String("acme".into()));
    assert_eq!(received.attributes["blob"].as_bytes(), &[0, 159, 255]);
    assert_eq!(received.group.as_deref(), Some("g-1"));
    assert_eq!(received.priority, 7);
    assert_eq!(received.dead_letter, None);

    // Nack options travel too (the fake ignores them, but not the call).
    client
        .nack_with("q", &received.receipt, NackOptions { delay: Duration::from_secs(3), dead_letter: true })
        .await
        .unwrap();
    assert_eq!(leader.state.calls_of("nack")[0].receipts, [received.receipt]);
}

#[tokio::test]
async fn set_queue_sends_only_the_fields_given_and_redrive_reports_counts() {
    // Proves: set_queue sends the attributes that are set and nothing else
    // (the fake merges them into what it had), removal values reach the
    // server as the contract says, and redrive converts its answer.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.add_queue("dlq");
    let client = Client::new(config(&[&leader.address])).unwrap();

    let options = QueueOptions {
        max_messages: Some(100),
        overflow: Some(Overflow::DropHead),
        message_ttl: Some(Duration::from_secs(600)),
        ..QueueOptions::default()
    }
    .with_dead_letter("dlq", 4)
    .with_redelivery_backoff(Duration::from_secs(1), Duration::from_secs(30));
    let info = client.set_queue("q", options).await.unwrap();
    assert_eq!(info.config.max_messages, Some(100));
    assert_eq!(info.config.overflow, Some(Overflow::DropHead));
    assert_eq!(info.config.message_ttl, Some(Duration::from_secs(600)));
    assert_eq!(info.config.dead_letter, Some(DeadLetterPolicy { queue: "dlq".into(), max_receives: 4 }));
    assert_eq!(info.config.redelivery_backoff.unwrap().max, Duration::from_secs(30));
    assert_eq!(info.config.fifo, None);
    assert_eq!(info.stats.delayed, 1);
    assert_eq!(info.stats.dead_lettered_total, 2);

    let only_ttl = QueueOptions { message_ttl: Some(Duration::ZERO), ..QueueOptions::default() };
    let info = client.set_queue("q", only_ttl).await.unwrap();
    assert_eq!(info.config.message_ttl, Some(Duration::ZERO));
    assert_eq!(info.config.max_messages, Some(100), "a field not given changed");

    let remove = QueueOptions { dead_letter: Some(DeadLetterPolicy::none()), ..QueueOptions::default() };
    let info = client.set_queue("q", remove).await.unwrap();
    assert_eq!(info.config.dead_letter, None);

    for body in ["1", "2", "3"] {
        client.send("dlq", body).await.unwrap();
    }
    let result = client.redrive("dlq", RedriveOptions { to: None, max_messages: 2 }).await.unwrap();
    assert_eq!(result, RedriveResult { moved: 2, remaining: 1, skipped: 0 });
}

#[tokio::test]
async fn empty_batches_and_empty_ids_are_refused_before_sending() {
    // Proves: the client checks what it can check without a round trip.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let client = Client::new(config(&[&leader.address])).unwrap();

    let error = client.send_batch("q", vec![]).await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)));
    let error = client.send_with_id("q", "", "x").await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)));
    let error = client.ack_batch("q", Vec::<String>::new()).await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)));
    assert!(leader.state.calls().is_empty());
}

#[tokio::test]
async fn a_delete_whose_first_attempt_was_applied_reports_success() {
    // Proves: when a delete's first attempt was applied but its answer lost,
    // the retry's NOT_FOUND is reported as success; after a definite answer
    // (none, or a plain not-leader), NOT_FOUND stays an error.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let client = Client::new(config(&[&leader.address])).unwrap();
    let created = client.create_queue("q", QueueOptions::default()).await.unwrap();
    assert!(created.created);
    assert_eq!(created.queue.name, "q");

    leader.state.script([Reply::ApplyThenDeadlineExceeded]);
    assert_eq!(client.delete_queue("q").await.unwrap(), 0);
    assert_eq!(leader.state.calls_of("delete_queue").len(), 2);

    let error = client.delete_queue("q").await.unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");

    // A not-leader answer proves the request was not proposed, so it does
    // not make a later NOT_FOUND look like success.
    leader.state.script([Reply::NotLeader(Some((1, leader.address.clone())))]);
    let error = client.delete_queue("q").await.unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
}

#[tokio::test]
async fn queue_admin_operations_convert_their_answers() {
    // Proves: list, get and purge reach the server and convert its answers.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let client = Client::new(config(&[&leader.address])).unwrap();
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.send("q", "1").await.unwrap();
    client.send("q", "2").await.unwrap();

    let queues = client.list_queues().await.unwrap();
    assert_eq!(queues.len(), 1);
    let info = client.get_queue("q").await.unwrap();
    assert_eq!(info.stats.ready, 2);
    assert_eq!(info.config.visibility_timeout, Some(Duration::from_secs(30)));
    assert_eq!(client.purge_queue("q").await.unwrap(), 2);
}

#[tokio::test]
async fn a_long_poll_may_outlast_the_deadline() {
    // Proves: the deadline counts from the end of a receive's wait: a
    // receive waiting longer than the deadline on an empty queue returns
    // empty after the wait, not DeadlineExceeded, and the server was asked
    // to wait the full time.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    let client = Client::new(config(&[&leader.address])).unwrap().with_deadline(Duration::from_millis(100));

    let wait = Duration::from_millis(400);
    let started = Instant::now();
    let messages = client.receive("q", ReceiveOptions { wait, ..Default::default() }).await.unwrap();
    assert!(messages.is_empty());
    assert!(started.elapsed() >= wait);
    let receives = leader.state.calls_of("receive");
    assert_eq!(receives.len(), 1, "{receives:?}");
    assert_eq!(receives[0].wait_ms, 400);
    assert!(receives[0].grpc_timeout.unwrap() > wait, "{receives:?}");
}

#[tokio::test]
async fn a_retried_long_poll_asks_only_for_the_wait_that_is_left() {
    // Proves: after a failed attempt, the retry's wait is what remains of
    // the original wait, so the long poll ends when the caller expected.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.script([Reply::Unavailable]);
    let client = Client::new(config(&[&leader.address])).unwrap();

    client.receive("q", ReceiveOptions { wait: Duration::from_millis(300), ..Default::default() }).await.unwrap();
    let receives = leader.state.calls_of("receive");
    assert_eq!(receives.len(), 2);
    assert_eq!(receives[0].wait_ms, 300);
    assert!(receives[1].wait_ms < 300, "{receives:?}");
}

#[tokio::test]
async fn the_consumer_delivers_in_order_and_acks() {
    // Proves: the consumer hands out buffered messages one at a time, wakes
    // from its long poll when a message arrives, and its deliveries ack.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    let client = Client::new(config(&[&leader.address])).unwrap();
    for body in ["a", "b", "c"] {
        client.send("q", body).await.unwrap();
    }
    let mut consumer =
        client.consumer("q", ConsumerOptions { batch: 2, wait: Duration::from_secs(2), visibility_timeout: None });

    let mut bodies = Vec::new();
    for _ in 0..3 {
        let delivery = consumer.next().await.unwrap();
        bodies.push(delivery.body().clone());
        assert_eq!(delivery.message().receive_count, 1);
        delivery.ack().await.unwrap();
    }
    assert_eq!(bodies, ["a", "b", "c"]);
    assert_eq!(leader.state.message_count(), 0);

    // A message sent while the consumer long-polls wakes it.
    let sender = client.clone();
    let next = tokio::spawn(async move { consumer.next().await });
    wait_for("the consumer's third receive", Duration::from_secs(5), || leader.state.calls_of("receive").len() >= 3)
        .await;
    sender.send("q", "late").await.unwrap();
    let delivery = next.await.unwrap().unwrap();
    assert_eq!(delivery.body(), "late");
    delivery.nack().await.unwrap();
}

#[tokio::test]
async fn the_consumer_does_not_spin_on_an_empty_queue() {
    // Proves: with a zero wait, empty answers make the consumer pause with
    // backoff instead of polling in a tight loop.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    let client = Client::new(config(&[&leader.address])).unwrap();
    let mut consumer =
        client.consumer("q", ConsumerOptions { batch: 1, wait: Duration::ZERO, visibility_timeout: None });

    // Sleeping is the point here: to show that something does not happen.
    let outcome = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(outcome.is_err(), "no message was there to deliver");
    let polls = leader.state.calls_of("receive").len();
    // A tight loop on loopback polls thousands of times in 300 ms; pauses
    // of up to 5, 10, 20, 40, 50, 50… ms allow a few dozen at most.
    assert!((1..100).contains(&polls), "{polls} polls");
}

#[tokio::test]
async fn the_consumer_returns_errors_and_backs_off_after_them() {
    // Proves: a failing receive (unknown queue) is returned from next(), and
    // calling next() again works and keeps failing the same way.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let client = Client::new(config(&[&leader.address])).unwrap();
    let mut consumer = client.consumer("missing", ConsumerOptions::default());

    for _ in 0..3 {
        let error = consumer.next().await.unwrap_err();
        assert!(matches!(error, Error::NotFound(_)), "{error:?}");
    }
    assert_eq!(leader.state.calls_of("receive").len(), 3);
}

#[tokio::test]
async fn cluster_status_asks_every_node_and_learns_members() {
    // Proves: cluster_status asks the seeds concurrently, then the members
    // they report, marks unreachable nodes, remembers the new members, and
    // picks the leader and the highest term.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let follower = FakeNode::start(2, Mode::Leader).await;
    follower.state.set_mode(Mode::NotLeader(Some((1, leader.address.clone()))));
    let down = closed_address().await;
    let members = vec![(1, leader.address.clone()), (2, follower.address.clone()), (3, down.clone())];
    leader.state.set_members(members.clone());
    follower.state.set_members(members);
    let client = Client::new(config(&[&follower.address])).unwrap();

    let status = client.cluster_status().await.unwrap();

    assert_eq!(status.leader_id, Some(1));
    assert_eq!(status.term, 7);
    assert_eq!(status.nodes.len(), 3, "{status:#?}");
    assert_eq!(status.reachable_count(), 2);
    let leader_entry = status.leader().unwrap();
    assert_eq!(leader_entry.role, Role::Leader);
    assert_eq!(leader_entry.address, leader.address);
    let down_entry = status.nodes.iter().find(|n| n.address == down).unwrap();
    assert!(!down_entry.reachable);
    assert_eq!(down_entry.id, Some(3));
    assert!(down_entry.error.is_some());
    assert!(client.known_nodes().contains(&leader.address));

    let node = client.node_status(&follower.address).await.unwrap();
    assert_eq!(node.role, Role::Follower);
    assert_eq!(node.leader_address, Some(leader.address.clone()));
    assert!(client.node_status(&down).await.is_err());
}

#[tokio::test]
async fn membership_calls_follow_the_leader_and_a_retried_remove_succeeds() {
    // Proves: add_node and transfer_leader sent to a follower reach the leader; a remove whose first attempt was
    // applied but answered DEADLINE_EXCEEDED succeeds on the retry that finds the node gone; removing a node that
    // was never a member is NotFound.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let follower = FakeNode::start(2, Mode::NotLeader(Some((1, leader.address.clone())))).await;
    leader.state.set_members(vec![(1, leader.address.clone()), (2, follower.address.clone())]);
    let client = Client::new(config(&[&follower.address])).unwrap();

    let members = client.add_node(3, "127.0.0.1:7003", Duration::from_secs(1)).await.unwrap();
    assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2, 3]);
    let moved = client.transfer_leader(2, Duration::from_secs(1)).await.unwrap();
    assert_eq!((moved.leader_id, moved.leader_address.as_str()), (2, follower.address.as_str()));

    leader.state.script([Reply::ApplyThenDeadlineExceeded]);
    let client = Client::new(config(&[&leader.address])).unwrap();
    let members = client.remove_node(3, Duration::from_secs(1)).await.expect("the retried remove succeeds");
    assert!(members.iter().all(|m| m.id != 3), "{members:?}");
    match client.remove_node(9, Duration::from_secs(1)).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("removing a non-member gave {other:?}"),
    }
}
