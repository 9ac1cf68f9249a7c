//! Leader following, failover to the next node, and the deadline, against
//! fake nodes on loopback.

mod common;

use std::time::Duration;

use common::{FakeNode, Mode, Reply, black_hole_address, closed_address};
use quorumq_client::{Client, ClientConfig, Error};
use tokio::time::Instant;

/// Scheduling noise allowed past a deadline: the client must return by the
/// deadline, and a loaded CI machine may take a little longer to run it.
const SLACK: Duration = Duration::from_millis(250);

fn config(seeds: &[&str], deadline: Duration) -> ClientConfig {
    ClientConfig {
        deadline,
        attempt_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..ClientConfig::new(seeds.iter().copied())
    }
}

#[tokio::test]
async fn follows_a_not_leader_hint_and_remembers_the_leader() {
    // Proves: a not-leader answer with a hint sends the retry to the named
    // leader, which is remembered (and learnt, though not a seed) so that
    // later calls go straight to it.
    let leader = FakeNode::start(2, Mode::Leader).await;
    leader.state.add_queue("q");
    let follower = FakeNode::start(1, Mode::NotLeader(Some((2, leader.address.clone())))).await;
    let client = Client::new(config(&[&follower.address], Duration::from_secs(5))).unwrap();

    let receipt = client.send("q", "one").await.unwrap();
    assert_eq!(receipt.seq, 1);
    assert_eq!(client.leader_address(), Some(leader.address.clone()));
    assert!(client.known_nodes().contains(&leader.address));
    assert_eq!(follower.state.calls_of("send").len(), 1);
    assert_eq!(leader.state.calls_of("send").len(), 1);

    // A clone shares what the first learnt.
    let clone = client.with_deadline(Duration::from_secs(2));
    clone.send("q", "two").await.unwrap();
    client.get_queue("q").await.unwrap();
    assert_eq!(follower.state.calls().len(), 1, "the follower was asked again");
    assert_eq!(leader.state.calls_of("send").len(), 2);
}

#[tokio::test]
async fn tries_the_next_seed_when_one_is_down() {
    // Proves: when the node in use goes down (its port closes), the next
    // operation fails over to the next seed and follows it from then on.
    let mut a = FakeNode::start(1, Mode::Leader).await;
    let mut b = FakeNode::start(2, Mode::Leader).await;
    a.state.add_queue("q");
    b.state.add_queue("q");
    let client = Client::new(config(&[&a.address, &b.address], Duration::from_secs(5))).unwrap();

    client.send("q", "first").await.unwrap();
    let first = client.leader_address().unwrap();
    let (down, up) = if first == a.address { (&mut a, &b) } else { (&mut b, &a) };
    down.stop().await;

    client.send("q", "second").await.unwrap();
    assert_eq!(client.leader_address(), Some(up.address.clone()));
    assert_eq!(up.state.calls_of("send").len(), 1);
}

#[tokio::test]
async fn a_seed_that_never_listened_is_skipped() {
    // Proves: with a closed port among the seeds, operations still succeed
    // on the live seed, whichever the client tries first.
    let live = FakeNode::start(1, Mode::Leader).await;
    live.state.add_queue("q");
    let closed = closed_address().await;
    for _ in 0..4 {
        let client = Client::new(config(&[&closed, &live.address], Duration::from_secs(5))).unwrap();
        client.send("q", "x").await.unwrap();
        assert_eq!(client.leader_address(), Some(live.address.clone()));
    }
}

#[tokio::test]
async fn gives_up_by_the_deadline_when_every_node_is_down() {
    // Proves: with every seed refusing connections, the call returns a
    // retryable error that summarises its attempts, within the deadline plus
    // slack. (Usually Unavailable carrying the refusal; DeadlineExceeded when
    // a loaded machine lets the deadline cut the last attempt short.)
    let seeds = [closed_address().await, closed_address().await];
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let deadline = Duration::from_millis(400);
    let client = Client::new(config(&seeds, deadline)).unwrap();

    let started = Instant::now();
    let error = client.send("q", "x").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < deadline + SLACK, "took {elapsed:?}");
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.message().contains("attempts"), "{error}");
}

#[tokio::test]
async fn gives_up_by_the_deadline_when_no_node_knows_a_leader() {
    // Proves: nodes that keep answering not-leader without a hint (an
    // election that never ends) are tried in turn with backoff until the
    // deadline, and the call then fails with a retryable error.
    let a = FakeNode::start(1, Mode::NotLeader(None)).await;
    let b = FakeNode::start(2, Mode::NotLeader(None)).await;
    let deadline = Duration::from_millis(400);
    let client = Client::new(config(&[&a.address, &b.address], deadline)).unwrap();

    let started = Instant::now();
    let error = client.list_queues().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < deadline + SLACK, "took {elapsed:?}");
    assert!(error.is_retryable(), "{error:?}");
    assert!(!a.state.calls().is_empty() && !b.state.calls().is_empty());
    assert_eq!(client.leader_address(), None);
}

#[tokio::test]
async fn gives_up_by_the_deadline_when_the_leader_hangs() {
    // Proves: a request the server never finishes ends at the grpc-timeout
    // the client sends (a little under the attempt timeout), is retried, and
    // the call ends with DeadlineExceeded at the deadline instead of hanging.
    let node = FakeNode::start(1, Mode::Leader).await;
    node.state.script(std::iter::repeat_n(Reply::Hang, 100));
    let deadline = Duration::from_millis(700);
    let client =
        Client::new(ClientConfig { attempt_timeout: Duration::from_millis(150), ..config(&[&node.address], deadline) })
            .unwrap();

    let started = Instant::now();
    let error = client.get_queue("q").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < deadline + SLACK, "took {elapsed:?}");
    assert!(matches!(error, Error::DeadlineExceeded(_)), "{error:?}");
    let calls = node.state.calls();
    assert!(calls.len() >= 2, "the hung attempt was not retried");
    let first_timeout = calls[0].grpc_timeout.expect("the client sends grpc-timeout");
    assert!(first_timeout < Duration::from_millis(150), "{first_timeout:?}");
}

#[tokio::test]
async fn gives_up_by_the_deadline_when_a_node_accepts_but_never_answers() {
    // Proves: against a node that accepts connections and then says nothing
    // (a frozen process), the client's own attempt timeout ends each attempt,
    // and the call fails with a retryable error by the deadline.
    let silent = black_hole_address().await;
    let deadline = Duration::from_millis(600);
    let client =
        Client::new(ClientConfig { attempt_timeout: Duration::from_millis(150), ..config(&[&silent], deadline) })
            .unwrap();

    let started = Instant::now();
    let error = client.send("q", "x").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < deadline + SLACK, "took {elapsed:?}");
    assert!(error.is_retryable(), "{error:?}");
}

#[tokio::test]
async fn a_hint_loop_backs_off_and_ends_at_the_deadline() {
    // Proves: two nodes that name each other as leader do not make the
    // client spin: it keeps to the deadline, and pauses between rounds of
    // redirects bound the number of calls.
    let a = FakeNode::start(1, Mode::Leader).await;
    let b = FakeNode::start(2, Mode::Leader).await;
    a.state.set_mode(Mode::NotLeader(Some((2, b.address.clone()))));
    b.state.set_mode(Mode::NotLeader(Some((1, a.address.clone()))));
    let deadline = Duration::from_millis(400);
    let client = Client::new(config(&[&a.address], deadline)).unwrap();

    let started = Instant::now();
    let error = client.list_queues().await.unwrap_err();
    assert!(started.elapsed() < deadline + SLACK);
    assert!(error.is_retryable(), "{error:?}");
    let calls = a.state.calls().len() + b.state.calls().len();
    // Without backoff a loopback ping-pong makes thousands of calls in
    // 400 ms; with at most 4 redirects per pause of up to 50 ms, a few
    // hundred at most.
    assert!(calls < 400, "{calls} calls: the client spun");
}

#[tokio::test]
async fn a_transient_unavailable_answer_is_retried() {
    // Proves: a plain UNAVAILABLE answer (node starting up) is retried and
    // the operation succeeds once the node serves.
    let node = FakeNode::start(1, Mode::Leader).await;
    node.state.add_queue("q");
    node.state.script([Reply::Unavailable, Reply::Unavailable]);
    let client = Client::new(config(&[&node.address], Duration::from_secs(5))).unwrap();

    let info = client.get_queue("q").await.unwrap();
    assert_eq!(info.name, "q");
    assert_eq!(node.state.calls_of("get_queue").len(), 3);
}

#[tokio::test]
async fn definite_errors_are_not_retried() {
    // Proves: an answer such as NOT_FOUND is returned at once, as the
    // matching variant, without a retry.
    let node = FakeNode::start(1, Mode::Leader).await;
    let client = Client::new(config(&[&node.address], Duration::from_secs(5))).unwrap();

    let error = client.get_queue("missing").await.unwrap_err();
    assert!(matches!(error, Error::NotFound(ref m) if m.contains("missing")), "{error:?}");
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert_eq!(node.state.calls().len(), 1);
}
