//! Operating a cluster: the HTTP endpoint (`--http`: /metrics, /health,
//! /ready) and the resource alarms (`--disk-free-min`, `--memory-max`), with
//! real node processes on loopback.

use std::time::Duration;

use quorumq_client::Client;
use quorumq_client::Error;
use quorumq_client::OutgoingMessage;
use quorumq_client::ReceiveOptions;
use quorumq_tests::FIRST_LEADER_TIMEOUT;
use quorumq_tests::HARNESS_DEADLINE;
use quorumq_tests::TestCluster;
use quorumq_tests::create_queue;
use quorumq_tests::metric_value;
use quorumq_tests::node_binary;
use quorumq_tests::wait_for;
use quorumq_tests::wait_until;

/// How long a follower may take to be ready after the cluster formed, or to
/// turn unready once its leader is gone: the readiness rule allows 3 s
/// without contact, status polls run every second, and a loaded 2-core
/// machine adds its share.
const READY_CHANGE_MAX: Duration = Duration::from_secs(15);

/// How long a leader may take to learn of an alarm on a voter (resource
/// checks and status polls run every second), or of its end.
const ALARM_SPREAD_MAX: Duration = Duration::from_secs(15);

/// Longest a CLI run may take: its own `--timeout` plus process start-up.
const CLI_RUN_MAX: Duration = Duration::from_secs(20);

/// `GET path` on node `id`, failing the test when the node does not answer.
async fn get(cluster: &TestCluster, id: u64, path: &str) -> (u16, String) {
    cluster.http_get(id, path).await.unwrap_or_else(|e| panic!("node {id}: {e}"))
}

/// Waits until `GET path` on node `id` answers `status`; returns the body.
async fn wait_for_status(cluster: &TestCluster, id: u64, path: &str, status: u16, timeout: Duration) -> String {
    let what = format!("node {id} to answer {status} to GET {path}");
    wait_for(&what, timeout, || async {
        match cluster.http_get(id, path).await {
            Ok((code, body)) if code == status => Some(body),
            _ => None,
        }
    })
    .await
}

/// Waits until node `id`'s metrics show `series` with `value`.
async fn wait_for_metric(cluster: &TestCluster, id: u64, series: &str, value: f64, timeout: Duration) {
    let what = format!("node {id} to report {series} {value}");
    wait_until(&what, timeout, || async {
        let Ok((200, text)) = cluster.http_get(id, "/metrics").await else { return false };
        metric_value(&text, series) == Some(value)
    })
    .await
}

/// The first send refused because of an alarm, within `timeout`; sends that
/// succeed meanwhile (the alarm not known yet) are fine.
async fn wait_for_refused_send(client: &Client, queue: &str, timeout: Duration) -> String {
    wait_for("a send to be refused by a resource alarm", timeout, || async {
        match client.send(queue, "while the alarm spreads").await {
            Err(Error::ResourceExhausted(message)) => Some(message),
            Ok(_) => None,
            Err(e) => panic!("a send failed for another reason than an alarm: {e}"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_of_a_healthy_cluster() {
    // Proves: every node serves /health 200 and, once caught up, /ready 200; the leader's /metrics says it leads and shows queue depths, counters and the log latency histograms; followers report the same queue depths from their applied state.
    let mut cluster = TestCluster::start_with_http(node_binary!(), "metrics_health_and_readiness", 3, &[]);
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "metered").await;
    for n in 0..5 {
        client.send("metered", format!("m{n}")).await.unwrap();
    }
    let options = ReceiveOptions { max_messages: 2, wait: Duration::from_secs(5), ..ReceiveOptions::default() };
    let received = client.receive("metered", options).await.unwrap();
    assert_eq!(received.len(), 2);
    client.ack("metered", received[0].receipt.clone()).await.unwrap();

    for id in cluster.ids() {
        assert_eq!(get(&cluster, id, "/health").await, (200, "ok\n".to_string()), "node {id}");
        wait_for_status(&cluster, id, "/ready", 200, READY_CHANGE_MAX).await;
    }

    // The leader applied every acknowledged write before answering it.
    let (status, text) = get(&cluster, leader, "/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(value("quorumq_is_leader"), 1.0);
    assert_eq!(value("quorumq_node_id"), leader as f64);
    assert_eq!(value("quorumq_raft_role{role=\"leader\"}"), 1.0);
    assert_eq!(value("quorumq_raft_leader_id"), leader as f64);
    assert!(value("quorumq_raft_term") >= 1.0);
    assert!(value("quorumq_raft_became_leader_total") >= 1.0);
    assert!(value("quorumq_raft_applied_index") >= 8.0, "5 sends, a receive, an ack and the queue creation");
    assert_eq!(value("quorumq_queue_ready{queue=\"metered\"}"), 3.0);
    assert_eq!(value("quorumq_queue_in_flight{queue=\"metered\"}"), 1.0);
    assert_eq!(value("quorumq_queue_sent_total{queue=\"metered\"}"), 5.0);
    assert_eq!(value("quorumq_queue_received_total{queue=\"metered\"}"), 2.0);
    assert_eq!(value("quorumq_queue_acked_total{queue=\"metered\"}"), 1.0);
    assert!(value("quorumq_queue_oldest_message_age_seconds{queue=\"metered\"}") >= 0.0);
    assert!(value("quorumq_log_flush_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert!(value("quorumq_log_append_seconds_count") >= 8.0);
    assert!(value("quorumq_log_flush_entries_sum") >= 8.0);
    assert!(value("quorumq_process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("quorumq_data_dir_bytes") > 0.0);
    assert!(value("quorumq_disk_free_bytes") > 0.0);
    assert_eq!(value("quorumq_alarm{kind=\"disk\"}"), 0.0);
    assert_eq!(value("quorumq_alarm{kind=\"memory\"}"), 0.0);
    assert_eq!(value("quorumq_sends_blocked"), 0.0);
    for follower in cluster.ids().into_iter().filter(|&id| id != leader) {
        let series = format!("quorumq_raft_replication_lag_entries{{peer=\"{follower}\"}}");
        assert!(value(&series) >= 0.0);
        wait_for_metric(&cluster, follower, "quorumq_is_leader", 0.0, HARNESS_DEADLINE).await;
        wait_for_metric(&cluster, follower, "quorumq_queue_ready{queue=\"metered\"}", 3.0, HARNESS_DEADLINE).await;
    }
    assert_eq!(get(&cluster, leader, "/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_leader_is_gone_is_not_ready() {
    // Proves: when the leader and the other follower die, the surviving follower (which openraft still tells the old leader) answers /ready 503 within seconds, naming the leader, while /health stays 200.
    let mut cluster = TestCluster::start_with_http(node_binary!(), "a_follower_whose_leader_is_gone", 3, &[]);
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    let survivor = followers[0];
    wait_for_status(&cluster, survivor, "/ready", 200, READY_CHANGE_MAX).await;
    cluster.kill(followers[1]);
    cluster.kill(leader);
    let reason = wait_for_status(&cluster, survivor, "/ready", 503, READY_CHANGE_MAX).await;
    assert!(reason.starts_with("not ready: "), "{reason}");
    assert!(reason.contains("leader") && reason.lines().count() == 1, "{reason}");
    assert_eq!(get(&cluster, survivor, "/health").await, (200, "ok\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_quorum_is_not_ready() {
    // Proves: a leader whose followers are all gone answers /ready 503 within seconds (it has not heard from a quorum), while /health stays 200.
    let mut cluster = TestCluster::start_with_http(node_binary!(), "a_leader_without_a_quorum", 3, &[]);
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    wait_for_status(&cluster, leader, "/ready", 200, READY_CHANGE_MAX).await;
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        cluster.kill(id);
    }
    let reason = wait_for_status(&cluster, leader, "/ready", 503, READY_CHANGE_MAX).await;
    assert!(reason.starts_with("not ready: ") && reason.lines().count() == 1, "{reason}");
    assert_eq!(get(&cluster, leader, "/health").await, (200, "ok\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_on_one_follower_blocks_sends_cluster_wide() {
    // Proves: a follower restarted with --memory-max below its memory use raises a memory alarm; within seconds the leader refuses every send (single and batch) with RESOURCE_EXHAUSTED naming the alarm and the node, while receive, ack and nack keep working; cluster status (library, CLI text and JSON) and the metrics show the alarm; without the flag, sends work again.
    let mut cluster = TestCluster::start_with_http(node_binary!(), "a_memory_alarm_on_one_follower", 3, &[]);
    let leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "drain-me").await;
    for n in 0..3 {
        client.send("drain-me", format!("before {n}")).await.unwrap();
    }

    cluster.stop(follower);
    cluster.restart_with(follower, &["--memory-max", "1MB"]);
    let refusal = wait_for_refused_send(&client, "drain-me", ALARM_SPREAD_MAX).await;
    assert!(refusal.contains(&format!("memory alarm on node {follower}")), "{refusal}");
    assert!(refusal.contains("above --memory-max 1.0 MB"), "{refusal}");
    assert!(refusal.contains("producers are blocked, consumers can drain"), "{refusal}");
    let batch = vec![OutgoingMessage::new("b1"), OutgoingMessage::new("b2")];
    match client.send_batch("drain-me", batch).await {
        Err(Error::ResourceExhausted(message)) => assert!(message.contains("memory alarm"), "{message}"),
        other => panic!("a batch send during the alarm: {other:?}"),
    }

    // Consumers drain: receive, nack, receive again, ack.
    let options = ReceiveOptions { max_messages: 1, wait: Duration::from_secs(5), ..ReceiveOptions::default() };
    let first = client.receive("drain-me", options).await.unwrap();
    assert_eq!(first.len(), 1);
    client.nack("drain-me", first[0].receipt.clone()).await.unwrap();
    let options = ReceiveOptions { max_messages: 10, wait: Duration::from_secs(5), ..ReceiveOptions::default() };
    let all = client.receive("drain-me", options).await.unwrap();
    assert!(!all.is_empty());
    for message in &all {
        client.ack("drain-me", message.receipt.clone()).await.unwrap();
    }

    // Where the alarm shows.
    let status = client.cluster_status().await.unwrap();
    let alarmed = status.nodes.iter().find(|n| n.id == Some(follower)).expect("the follower is listed");
    assert!(alarmed.alarms.iter().any(|a| a.starts_with("memory: ")), "{status:?}");
    assert!(status.nodes.iter().filter(|n| n.id != Some(follower)).all(|n| n.alarms.is_empty()), "{status:?}");
    let node_status = cluster.node_status(follower).await.unwrap();
    assert!(node_status.alarms.iter().any(|a| a.starts_with("memory: resident memory ")), "{node_status:?}");
    let cluster_arg = cluster.cluster_arg();
    let text = quorumq_tests::run_cli(
        &node_binary!(),
        &["--cluster", &cluster_arg, "--timeout", "5s", "cluster", "status"],
        None,
        CLI_RUN_MAX,
    );
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(text.stdout.contains(&format!("alarm on node {follower}: memory: ")), "{}", text.stdout);
    let json = quorumq_tests::run_cli(
        &node_binary!(),
        &["--cluster", &cluster_arg, "--timeout", "5s", "--json", "cluster", "status"],
        None,
        CLI_RUN_MAX,
    );
    assert_eq!(json.code, Some(0), "{json:?}");
    let json: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON document");
    let node = json["nodes"].as_array().unwrap().iter().find(|n| n["id"] == follower).expect("the follower").clone();
    assert!(node["alarms"][0].as_str().unwrap().starts_with("memory: "), "{json}");
    wait_for_metric(&cluster, follower, "quorumq_alarm{kind=\"memory\"}", 1.0, HARNESS_DEADLINE).await;
    wait_for_metric(&cluster, leader, "quorumq_alarm{kind=\"memory\"}", 0.0, HARNESS_DEADLINE).await;
    wait_for_metric(&cluster, leader, "quorumq_sends_blocked", 1.0, HARNESS_DEADLINE).await;
    let series = format!("quorumq_voter_alarm{{peer=\"{follower}\",kind=\"memory\"}}");
    wait_for_metric(&cluster, leader, &series, 1.0, HARNESS_DEADLINE).await;

    // Without the limit the alarm clears, and sends work again.
    cluster.stop(follower);
    cluster.restart_with(follower, &[]);
    wait_until("sends to work again", ALARM_SPREAD_MAX, || async {
        match client.send("drain-me", "after the alarm").await {
            Ok(_) => true,
            Err(Error::ResourceExhausted(_)) => false,
            Err(e) => panic!("a send failed for another reason than an alarm: {e}"),
        }
    })
    .await;
    wait_for_metric(&cluster, leader, "quorumq_sends_blocked", 0.0, HARNESS_DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_alarm_refuses_sends() {
    // Proves: a node whose filesystem has less free space than --disk-free-min refuses sends with RESOURCE_EXHAUSTED naming the disk alarm and the limit, still serves queue creation and receives, and reports the alarm in its metrics.
    let mut cluster = TestCluster::start_with_http(
        node_binary!(),
        "a_disk_alarm_refuses_sends",
        1,
        &["--disk-free-min", "1000000TB"],
    );
    let node = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let client = cluster.client(HARNESS_DEADLINE);
    create_queue(&client, "full-disk").await;
    match client.send("full-disk", "no room").await {
        Err(Error::ResourceExhausted(message)) => {
            assert!(message.contains(&format!("disk alarm on node {node}: ")), "{message}");
            assert!(message.contains("below --disk-free-min 1.0 EB"), "{message}");
        }
        other => panic!("a send with the disk alarm on: {other:?}"),
    }
    let options = ReceiveOptions { max_messages: 1, wait: Duration::ZERO, ..ReceiveOptions::default() };
    assert!(client.receive("full-disk", options).await.unwrap().is_empty());
    wait_for_metric(&cluster, node, "quorumq_alarm{kind=\"disk\"}", 1.0, HARNESS_DEADLINE).await;
    wait_for_metric(&cluster, node, "quorumq_disk_free_min_bytes", 1e18, HARNESS_DEADLINE).await;
    // A single-node cluster is its own quorum: ready.
    wait_for_status(&cluster, node, "/ready", 200, READY_CHANGE_MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_alarm_sizes_and_a_taken_http_port_are_refused() {
    // Proves: a malformed --disk-free-min or --memory-max ends `quorumq server` with exit code 2 and a message naming the value; an --http port already in use ends it with exit code 1 and a clear message; none panics.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc_addr = grpc.local_addr().unwrap().to_string();
    drop(grpc);
    let peers = format!("1={grpc_addr}");
    let server = |extra: &[&str]| {
        let mut args = vec!["server", "--id", "1", "--listen", &grpc_addr, "--data-dir", data_dir, "--peers", &peers];
        args.extend_from_slice(extra);
        quorumq_tests::run_cli(&node_binary!(), &args, None, CLI_RUN_MAX)
    };
    for (flag, value) in [
        ("--disk-free-min", "lots"),
        ("--disk-free-min", "-5MB"),
        ("--disk-free-min", "1.5"),
        ("--memory-max", "12 parsecs"),
        ("--memory-max", "0"),
    ] {
        let out = server(&[&format!("{flag}={value}")]);
        assert_eq!(out.code, Some(2), "{flag} {value}: {out:?}");
        assert!(out.stderr.contains(value), "{flag} {value}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{out:?}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = server(&["--http", &taken_addr]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains(&format!("error: cannot serve HTTP (--http) on {taken_addr}")), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}
