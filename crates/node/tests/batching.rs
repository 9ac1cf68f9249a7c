//! Group commit: concurrent client commands share Raft entries, and every
//! caller still gets its own answer (ids, seqs, errors).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
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

fn last_log_index(node: &RunningNode) -> u64 {
    node.raft.metrics().borrow_watched().last_log_index.unwrap_or(0)
}

fn one(queue: &str, id: String, body: String) -> pb::SendRequest {
    pb::SendRequest {
        queue: queue.into(),
        messages: vec![pb::OutgoingMessage { body: body.into(), id, ..Default::default() }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_entries_and_get_their_own_results() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3).await;
    let leader = wait_for_leader(&nodes, Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let mut client = QueuesClient::connect(format!("http://{}", nodes[leader].local_addr)).await.unwrap();
    client.create_queue(pb::CreateQueueRequest { name: "jobs".into(), config: None }).await.unwrap();

    // 400 sends at once; every tenth names a queue that does not exist and
    // must fail alone, inside whatever entry it shares.
    const SENDS: usize = 400;
    let before = last_log_index(&nodes[leader]);
    let tasks: Vec<_> = (0..SENDS)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let queue = if i % 10 == 9 { "missing" } else { "jobs" };
                (i, client.send(one(queue, format!("m-{i}"), format!("body-{i}"))).await)
            })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i % 10 == 9 {
            let status = result.unwrap_err();
            assert_eq!(status.code(), tonic::Code::NotFound, "send {i}: {status:?}");
            continue;
        }
        let sent = result.unwrap_or_else(|e| panic!("send {i}: {e:?}")).into_inner();
        assert_eq!(sent.results.len(), 1);
        assert_eq!(sent.results[0].id, format!("m-{i}"), "each caller gets its own id");
        assert!(sent.results[0].error.is_none(), "send {i}: {:?}", sent.results[0].error);
        assert!(!sent.results[0].duplicate);
        assert!(seqs.insert(sent.results[0].seq), "seq {} handed out twice", sent.results[0].seq);
    }
    assert_eq!(seqs.len(), SENDS - SENDS / 10);
    let entries = last_log_index(&nodes[leader]) - before;
    eprintln!("{SENDS} concurrent sends took {entries} log entries");
    assert!(entries < SENDS as u64 / 2, "{SENDS} concurrent sends took {entries} log entries: no group commit");

    // Every message is stored under its own id with its own body.
    let mut bodies = BTreeMap::new();
    while bodies.len() < seqs.len() {
        let received = client
            .receive(pb::ReceiveRequest {
                queue: "jobs".into(),
                max_messages: 100,
                visibility_timeout_ms: None,
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!received.messages.is_empty(), "only {} of {} messages received", bodies.len(), seqs.len());
        for m in received.messages {
            bodies.insert(m.id.clone(), String::from_utf8(m.body.to_vec()).unwrap());
        }
    }
    for (id, body) in &bodies {
        assert_eq!(body, &format!("body-{}", id.trim_start_matches("m-")));
    }

    // A batch refused by Raft (this node is not the leader) refuses every
    // caller in it, each with the leader's address.
    let to_follower = QueuesClient::connect(format!("http://{}", nodes[follower].local_addr)).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut client = to_follower.clone();
            tokio::spawn(async move { client.send(one("jobs", format!("f-{i}"), "x".into())).await })
        })
        .collect();
    for task in tasks {
        let status = task.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get("quorumq-error").unwrap(), "not-leader");
        assert_eq!(
            status.metadata().get("quorumq-leader-addr").unwrap().to_str().unwrap(),
            nodes[leader].local_addr.to_string()
        );
    }

    for node in nodes {
        node.shutdown().await;
    }
}
