//! Concurrent one-message sends share Send calls (`coalesce.rs`), against a
//! fake node on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{FakeNode, Mode, Reply};
use quorumq_client::{Client, ClientConfig, Error};

fn config(seed: &str) -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_secs(10),
        attempt_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..ClientConfig::new([seed])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_calls_and_each_gets_its_own_result() {
    // Proves: while the queue's call slots are busy (here: four calls the
    // node leaves unanswered until the client's attempt timeout, then
    // retries), other sends wait and go out together in few calls; every
    // send gets its own receipt, a bad message fails only its own send, and
    // every good message is stored exactly once.
    let node = FakeNode::start(1, Mode::Leader).await;
    node.state.add_queue("q");
    node.state.script([Reply::Hang, Reply::Hang, Reply::Hang, Reply::Hang]);
    let client = Client::new(config(&node.address)).unwrap();

    const SENDS: usize = 200;
    let tasks: Vec<_> = (0..SENDS)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = if i == 57 { "bad".to_string() } else { format!("m{i}") };
                client.send("q", body).await
            })
        })
        .collect();
    let mut seqs = HashSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(receipt) => {
                assert_ne!(i, 57, "the bad message was accepted");
                assert!(seqs.insert(receipt.seq), "two sends got seq {}", receipt.seq);
            }
            Err(e) => {
                assert_eq!(i, 57, "send {i} failed: {e}");
                assert!(matches!(e, Error::InvalidArgument(_)), "the bad message failed with {e:?}");
            }
        }
    }
    assert_eq!(seqs.len(), SENDS - 1);
    assert_eq!(node.state.message_count(), SENDS - 1, "a message was stored twice or not at all");
    let calls = node.state.calls_of("send");
    // 4 hung calls, their 4 retries, and the rest in batches of at most 256.
    assert!(calls.len() <= 12, "{} Send calls for {SENDS} concurrent sends", calls.len());
    let ids: HashSet<&String> = calls.iter().flat_map(|c| c.ids.iter()).collect();
    assert_eq!(ids.len(), SENDS, "every message has one id, kept across retries");
}

#[tokio::test]
async fn a_lone_send_goes_out_at_once_in_a_call_of_its_own() {
    // Proves: coalescing adds no wait for a producer with one send in
    // flight: each send is its own call, in order.
    let node = FakeNode::start(1, Mode::Leader).await;
    node.state.add_queue("q");
    let client = Client::new(config(&node.address)).unwrap();
    for i in 1..=5u64 {
        assert_eq!(client.send("q", format!("m{i}")).await.unwrap().seq, i);
    }
    let calls = node.state.calls_of("send");
    assert_eq!(calls.len(), 5);
    assert!(calls.iter().all(|c| c.ids.len() == 1));
    // A queue-wide error reaches the sender as the call's error.
    assert!(matches!(client.send("missing", "x").await, Err(Error::NotFound(_))));
    // An empty id is refused before anything is sent.
    assert!(matches!(client.send_with_id("q", "", "x").await, Err(Error::InvalidArgument(_))));
    assert_eq!(node.state.calls_of("send").len(), 6);
}
