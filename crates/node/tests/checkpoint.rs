//! Checkpoints: a node restarted with a backlog loads the queue state from
//! its latest checkpoint and replays only the log after it, and nothing
//! acknowledged is lost or duplicated on the way.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use quorumq_node::config::Config;
use quorumq_node::server::RunningNode;
use quorumq_node::server::start;
use quorumq_proto::client as pb;
use quorumq_proto::client::queues_client::QueuesClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_all(configs: &[Config]) -> Vec<RunningNode> {
    let mut nodes = Vec::new();
    for config in configs {
        // A node just shut down in this process may still hold its files for
        // a moment (a background checkpoint finishing).
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            match start(config.clone()).await {
                Ok(node) => break node,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "node not startable yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("node {} does not start: {e}", config.id),
            }
        };
        // Every applied entry is worth a checkpoint.
        node.sm.set_checkpoint_every(1);
        nodes.push(node);
    }
    nodes
}

async fn leader_client(nodes: &[RunningNode]) -> QueuesClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(n) = nodes.iter().find(|n| n.raft.is_leader()) {
            let mut client = QueuesClient::connect(format!("http://{}", n.local_addr)).await.unwrap();
            // The new leader serves once it has committed an entry of its term.
            if client.list_queues(pb::ListQueuesRequest::default()).await.is_ok() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "no leader serving within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(client: &mut QueuesClient<tonic::transport::Channel>, from: usize, n: usize) {
    let messages = (from..from + n)
        .map(|i| pb::OutgoingMessage { body: format!("body-{i}").into(), id: format!("m{i}"), ..Default::default() })
        .collect();
    let sent = client.send(pb::SendRequest { queue: "jobs".into(), messages }).await.unwrap().into_inner();
    assert!(sent.results.iter().all(|r| r.error.is_none()), "{sent:?}");
}

/// Receives everything left (each body once) without acking.
async fn receive_all(client: &mut QueuesClient<tonic::transport::Channel>) -> Vec<pb::Message> {
    let mut all = Vec::new();
    loop {
        let r = client
            .receive(pb::ReceiveRequest {
                queue: "jobs".into(),
                max_messages: 100,
                visibility_timeout_ms: Some(60_000),
                wait_ms: 500,
            })
            .await
            .unwrap()
            .into_inner();
        if r.messages.is_empty() {
            return all;
        }
        all.extend(r.messages);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loads_the_checkpoint_and_replays_only_the_log_after_it() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let configs: Vec<Config> = peers
        .iter()
        .map(|(id, addr)| Config::new(*id, addr.parse().unwrap(), dir.path().join(format!("n{id}")), peers.clone()))
        .collect();

    let nodes = start_all(&configs).await;
    let mut client = leader_client(&nodes).await;
    client.create_queue(pb::CreateQueueRequest { name: "jobs".into(), config: None }).await.unwrap();
    for round in 0..20 {
        send(&mut client, round * 10, 10).await;
    }
    // Ack the first 50 (in one call), so the checkpoint holds acks too.
    let received = receive_all(&mut client).await;
    assert_eq!(received.len(), 200);
    let (acked, kept): (Vec<_>, Vec<_>) = received.into_iter().partition(|m| {
        let i: usize = m.id.trim_start_matches('m').parse().unwrap();
        i < 50
    });
    let ack = client
        .ack(pb::AckRequest { queue: "jobs".into(), receipts: acked.iter().map(|m| m.receipt.clone()).collect() })
        .await
        .unwrap()
        .into_inner();
    assert!(ack.results.iter().all(|r| r.error.is_none()));
    let nack = client
        .nack(pb::NackRequest {
            queue: "jobs".into(),
            receipts: kept.iter().map(|m| m.receipt.clone()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nack.results.iter().all(|r| r.error.is_none()));

    // Checkpoints are written in the background, one at a time: one more
    // entry once they are idle makes each node checkpoint its latest state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut client, 1000, 1).await;
    let last: Vec<u64> = nodes.iter().map(|n| n.sm.read(|a| a.last_applied.unwrap().index)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().zip(&last).any(|(n, last)| n.sm.last_checkpoint() < Some(*last)) {
        assert!(Instant::now() < deadline, "no checkpoint of the latest entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checkpoints: Vec<Option<u64>> = nodes.iter().map(|n| n.sm.last_checkpoint()).collect();
    drop(client);
    for node in nodes {
        node.shutdown().await;
    }

    let nodes = start_all(&configs).await;
    for (node, checkpoint) in nodes.iter().zip(&checkpoints) {
        // Shutting down may apply (and checkpoint) a little more.
        let loaded = node.sm.loaded_checkpoint();
        assert!(loaded >= *checkpoint, "node {} started from {loaded:?}, not its checkpoint {checkpoint:?}", node.id);
    }
    let mut client = leader_client(&nodes).await;
    send(&mut client, 200, 10).await;
    let mut bodies: Vec<String> = receive_all(&mut client)
        .await
        .into_iter()
        .map(|m| {
            let i: usize = m.id.trim_start_matches('m').parse().unwrap();
            assert_eq!(m.body, format!("body-{i}").into_bytes(), "body of {}", m.id);
            m.id
        })
        .collect();
    bodies.sort();
    let mut expected: Vec<String> = (50..210).chain([1000]).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected, "after the restart every unacked message, once");
    drop(client);
    for node in nodes {
        node.shutdown().await;
    }
}
