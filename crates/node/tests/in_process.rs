//! Three nodes in one process on loopback: the cluster forms by itself, and a
//! message goes through send, receive and ack on the leader, with followers
//! answering NOT_LEADER with the leader's address.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use quorumq_node::config::Config;
use quorumq_node::server::RunningNode;
use quorumq_node::server::start;
use quorumq_proto::client as pb;
use quorumq_proto::client::queues_client::QueuesClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_cluster(dir: &std::path::Path, n: u64) -> Vec<RunningNode> {
    let peers: BTreeMap<u64, String> = (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let mut nodes = Vec::new();
    for (id, addr) in &peers {
        let config = Config::new(*id, addr.parse().unwrap(), dir.join(format!("n{id}")), peers.clone());
        nodes.push(start(config).await.expect("node starts"));
    }
    nodes
}

async fn wait_for_leader(nodes: &[RunningNode], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        // A new leader accepts writes once a quorum has acknowledged it
        // (openraft's CheckQuorum lease).
        if let Some(i) = nodes.iter().position(|n| {
            let m = n.raft.metrics().borrow_watched().clone();
            n.raft.is_leader() && m.last_quorum_acked.is_some()
        }) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader elected within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_serve_a_queue() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3).await;
    let leader = wait_for_leader(&nodes, Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;

    let mut client = QueuesClient::connect(format!("http://{}", nodes[leader].local_addr)).await.unwrap();
    let created =
        client.create_queue(pb::CreateQueueRequest { name: "jobs".into(), config: None }).await.unwrap().into_inner();
    assert!(created.created);

    // A follower refuses writes and names the leader.
    let mut to_follower = QueuesClient::connect(format!("http://{}", nodes[follower].local_addr)).await.unwrap();
    let status = to_follower
        .send(pb::SendRequest {
            queue: "jobs".into(),
            messages: vec![pb::OutgoingMessage { body: "x".into(), id: String::new(), ..Default::default() }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.metadata().get("quorumq-error").unwrap(), "not-leader");
    assert_eq!(
        status.metadata().get("quorumq-leader-addr").unwrap().to_str().unwrap(),
        nodes[leader].local_addr.to_string()
    );

    let sent = client
        .send(pb::SendRequest {
            queue: "jobs".into(),
            messages: vec![
                pb::OutgoingMessage { body: "hello".into(), id: "m1".into(), ..Default::default() },
                pb::OutgoingMessage { body: "world".into(), id: String::new(), ..Default::default() },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.results.len(), 2);
    assert_eq!(sent.results[0].id, "m1");
    assert!(sent.results.iter().all(|r| r.error.is_none()));

    let received = client
        .receive(pb::ReceiveRequest { queue: "jobs".into(), max_messages: 10, visibility_timeout_ms: None, wait_ms: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(received.messages.len(), 2);
    assert_eq!(&received.messages[0].body[..], b"hello");
    assert_eq!(received.messages[0].receive_count, 1);

    let acked = client
        .ack(pb::AckRequest {
            queue: "jobs".into(),
            receipts: received.messages.iter().map(|m| m.receipt.clone()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(acked.results.iter().all(|r| r.error.is_none()));

    // A long poll wakes as soon as a message is applied.
    let mut poller = client.clone();
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let r = poller
            .receive(pb::ReceiveRequest {
                queue: "jobs".into(),
                max_messages: 1,
                visibility_timeout_ms: None,
                wait_ms: 10_000,
            })
            .await
            .unwrap()
            .into_inner();
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .send(pb::SendRequest {
            queue: "jobs".into(),
            messages: vec![pb::OutgoingMessage { body: "late".into(), id: String::new(), ..Default::default() }],
        })
        .await
        .unwrap();
    let (r, waited) = poll.await.unwrap();
    assert_eq!(r.messages.len(), 1);
    assert!(waited < Duration::from_secs(5), "long poll waited {waited:?}");

    let stats = client.get_queue(pb::GetQueueRequest { name: "jobs".into() }).await.unwrap().into_inner();
    let stats = stats.queue.unwrap().stats.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (0, 1));

    for node in nodes {
        node.shutdown().await;
    }
}
