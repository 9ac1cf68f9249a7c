//! The push consumer (`Client::subscribe`): acks on the stream, and
//! reconnection to a new leader, against fake nodes on loopback.

mod common;

use std::time::Duration;

use common::{FakeNode, Mode, not_leader, wait_for};
use quorumq_client::{Client, ClientConfig, Error, NackOptions, SubscribeOptions};
use tonic::Status;

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

const WAIT: Duration = Duration::from_secs(5);

fn body(message: &quorumq_client::Message) -> String {
    String::from_utf8(message.body.to_vec()).unwrap()
}

#[tokio::test]
async fn acks_and_nacks_travel_on_the_stream() {
    // Proves: pushed messages arrive in order up to the prefetch, and acks
    // and nacks go on the stream (no unary call) and get their answers.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    for body in ["a", "b", "c"] {
        leader.state.add_message(body);
    }
    let client = Client::new(config(&[&leader.address])).unwrap();
    let mut subscription = client.subscribe("q", SubscribeOptions { prefetch: 2, consumer_timeout: None });

    let a = subscription.next().await.unwrap();
    assert_eq!(body(&a), "a");
    wait_for("the prefetch to fill", WAIT, || subscription.buffered() == 1).await;
    assert_eq!(leader.state.in_flight_count(), 2, "the node pushed more than the prefetch");
    subscription.ack(&a.receipt).await.unwrap();
    let b = subscription.next().await.unwrap();
    assert_eq!(body(&b), "b");
    subscription.nack(&b.receipt, NackOptions::default()).await.unwrap();
    let error = subscription.ack("stale").await.unwrap_err();
    assert_eq!(error, Error::FailedPrecondition("stale receipt".into()));

    let on_stream: Vec<_> =
        leader.state.calls().into_iter().filter(|c| c.method.starts_with("consume_")).map(|c| c.method).collect();
    assert_eq!(on_stream, ["consume_ack", "consume_nack", "consume_ack"]);
    assert!(leader.state.calls_of("ack").is_empty() && leader.state.calls_of("nack").is_empty());
    assert_eq!(leader.state.calls_of("consume").len(), 1);
    assert_eq!(subscription.unsettled(), 0);
}

#[tokio::test]
async fn reconnects_to_the_new_leader_and_nacks_what_it_held() {
    // Proves: when the stream ends with not-leader naming a new leader, the
    // next `next` nacks on the new leader (unary) both the delivery handed
    // out and not acked and the one buffered but not handed out, then
    // subscribes there and receives its messages; an ack after the
    // reconnect goes on the new stream.
    let old = FakeNode::start(1, Mode::Leader).await;
    let new = FakeNode::start(2, Mode::NotLeader(Some((1, old.address.clone())))).await;
    for node in [&old, &new] {
        node.state.add_queue("q");
    }
    old.state.add_message("old-1");
    old.state.add_message("old-2");
    let client = Client::new(config(&[&old.address, &new.address])).unwrap();
    let mut subscription = client.subscribe("q", SubscribeOptions { prefetch: 2, consumer_timeout: None });

    let held = subscription.next().await.unwrap();
    assert_eq!(body(&held), "old-1");
    wait_for("the second delivery to be buffered", WAIT, || subscription.buffered() == 1).await;
    assert_eq!(subscription.streams_opened(), 1);

    // The leader moves: the old node now names the new one and ends the
    // stream as a deposed node does.
    new.state.set_mode(Mode::Leader);
    old.state.set_mode(Mode::NotLeader(Some((2, new.address.clone()))));
    new.state.add_message("new-1");
    old.state.end_streams(not_leader(Some((2, new.address.clone()))));
    wait_for("the stream's end to be noticed", WAIT, || !subscription.connected()).await;

    let next = tokio::time::timeout(WAIT, subscription.next()).await.expect("no message after the leader moved");
    let next = next.unwrap();
    assert_eq!(body(&next), "new-1");
    assert_eq!(subscription.streams_opened(), 2);
    assert_eq!(client.leader_address(), Some(new.address.clone()));

    let nacks = new.state.calls_of("nack");
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    assert_eq!(nacks[0].receipts, [held.receipt.clone(), "r-2-1".to_string()]);
    assert!(old.state.calls_of("nack").is_empty());
    assert_eq!(new.state.stream_count(), 1);
    assert_eq!(old.state.stream_count(), 0);

    subscription.ack(&next.receipt).await.unwrap();
    assert_eq!(new.state.calls_of("consume_ack").len(), 1);
    assert_eq!(new.state.message_count(), 0);
    assert_eq!(subscription.unsettled(), 0);
}

#[tokio::test]
async fn reconnects_after_an_unavailable_node_and_a_plain_end() {
    // Proves: a stream that fails with UNAVAILABLE (no not-leader reason)
    // makes the client try the next node; a not-leader answer there is
    // followed back; the deliveries in hand are nacked first.
    let a = FakeNode::start(1, Mode::Leader).await;
    let b = FakeNode::start(2, Mode::NotLeader(Some((1, a.address.clone())))).await;
    for node in [&a, &b] {
        node.state.add_queue("q");
    }
    a.state.add_message("first");
    let client = Client::new(config(&[&a.address, &b.address])).unwrap();
    let mut subscription = client.subscribe("q", SubscribeOptions::default());
    let first = subscription.next().await.unwrap();

    a.state.end_streams(Status::unavailable("shutting down"));
    a.state.add_message("second");
    let second = tokio::time::timeout(WAIT, subscription.next()).await.expect("no reconnection").unwrap();
    // The nack made "first" visible again on `a`, so it comes first.
    assert_eq!(body(&second), "first");
    assert_eq!(second.receive_count, 2);
    assert_eq!(a.state.calls_of("nack")[0].receipts, [first.receipt]);
    assert_eq!(subscription.streams_opened(), 2);
    assert_eq!(body(&subscription.next().await.unwrap()), "second");
}

#[tokio::test]
async fn an_ack_the_old_stream_did_not_answer_is_sent_again() {
    // Proves: an ack sent on a stream that ends before answering it is sent
    // again through the unary call (to the new leader), its caller gets that
    // answer, and the acked delivery is not among those nacked on the
    // reconnect.
    let old = FakeNode::start(1, Mode::Leader).await;
    let new = FakeNode::start(2, Mode::NotLeader(Some((1, old.address.clone())))).await;
    for node in [&old, &new] {
        node.state.add_queue("q");
    }
    old.state.add_message("acked");
    old.state.add_message("held");
    let client = Client::new(config(&[&old.address])).unwrap();
    let mut subscription = client.subscribe("q", SubscribeOptions { prefetch: 2, consumer_timeout: None });
    let acked = subscription.next().await.unwrap();
    let held = subscription.next().await.unwrap();

    old.state.mute_streams();
    let acker = subscription.acker();
    let receipt = acked.receipt.clone();
    let ack = tokio::spawn(async move { acker.ack(receipt).await });
    wait_for("the ack to reach the old stream", WAIT, || !old.state.calls_of("consume_ack").is_empty()).await;
    new.state.set_mode(Mode::Leader);
    old.state.set_mode(Mode::NotLeader(Some((2, new.address.clone()))));
    old.state.end_streams(not_leader(Some((2, new.address.clone()))));

    tokio::time::timeout(WAIT, ack).await.expect("the ack was not answered").unwrap().unwrap();
    assert_eq!(new.state.calls_of("ack")[0].receipts, [acked.receipt]);
    new.state.add_message("after");
    let next = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap();
    assert_eq!(body(&next), "after");
    assert_eq!(new.state.calls_of("nack")[0].receipts, [held.receipt]);
}

#[tokio::test]
async fn other_stream_errors_are_reported_once_then_it_resubscribes() {
    // Proves: a stream ended by an error that is not about the leader (the
    // consumer timeout's DEADLINE_EXCEEDED) is returned by `next` once; the
    // call after it subscribes again.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.add_message("x");
    let client = Client::new(config(&[&leader.address])).unwrap();
    let mut subscription = client.subscribe("q", SubscribeOptions::default());
    let x = subscription.next().await.unwrap();

    leader.state.end_streams(Status::deadline_exceeded("consumer timeout"));
    let error = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap_err();
    assert!(matches!(error, Error::DeadlineExceeded(ref m) if m == "consumer timeout"), "{error:?}");

    let again = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap();
    assert_eq!(again.id, x.id);
    assert_eq!(subscription.streams_opened(), 2);
}

#[tokio::test]
async fn a_missing_queue_fails_next() {
    // Proves: the node's refusal of the start request is the call's error.
    let leader = FakeNode::start(1, Mode::Leader).await;
    let client = Client::new(config(&[&leader.address])).unwrap();
    let mut subscription = client.subscribe("nope", SubscribeOptions::default());
    let error = subscription.next().await.unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
}

#[tokio::test]
async fn close_releases_unsettled_deliveries() {
    // Proves: closing the subscription ends the stream, and the node gives
    // back what was delivered and not settled; an acker outlives it.
    let leader = FakeNode::start(1, Mode::Leader).await;
    leader.state.add_queue("q");
    leader.state.add_message("a");
    leader.state.add_message("b");
    let client = Client::new(config(&[&leader.address])).unwrap();
    let mut subscription = client.subscribe("q", SubscribeOptions::default());
    let acker = subscription.acker();
    let a = subscription.next().await.unwrap();
    wait_for("both deliveries", WAIT, || leader.state.in_flight_count() == 2).await;

    subscription.close().await;
    wait_for("the stream to close", WAIT, || leader.state.stream_count() == 0).await;
    wait_for("the deliveries to be released", WAIT, || leader.state.in_flight_count() == 0).await;
    acker.ack(&a.receipt).await.unwrap();
    assert_eq!(leader.state.calls_of("ack").len(), 1, "the acker used the unary call");
    assert_eq!(leader.state.message_count(), 1);
}
