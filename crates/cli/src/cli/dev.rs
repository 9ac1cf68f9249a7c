//! `quorumq dev` (a local cluster until Ctrl-C) and `quorumq demo` (the
//! failover demonstration).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::local_cluster::ClusterOptions;
use crate::local_cluster::LocalCluster;
use clap::Args;
use quorumq_client::Client;
use quorumq_client::ClientConfig;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use quorumq_client::Role;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;

use super::Failure;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Keep node data here (default: a temporary directory, removed on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Node i listens on 127.0.0.1:(base-port + i - 1).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 3000)]
    messages: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: u64,
    /// Keep the cluster's data directory (and node logs) after the demo.
    #[arg(long)]
    keep: bool,
}

fn binary() -> Result<PathBuf, Failure> {
    std::env::current_exe().map_err(|e| Failure::from(format!("cannot find the quorumq binary: {e}")))
}

fn client_for(cluster: &LocalCluster, deadline: Duration) -> Result<Client, Failure> {
    let mut config = ClientConfig::new(cluster.addresses());
    config.deadline = deadline;
    Client::new(config).map_err(|e| Failure::from(e.message()))
}

/// Waits until a node that answers says it leads. Reports early when a node
/// process exits (a port in use, a bad data directory).
async fn wait_for_leader(cluster: &mut LocalCluster, client: &Client, timeout: Duration) -> Result<u64, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((id, status)) = cluster.exited().into_iter().next() {
            return Err(Failure::from(format!(
                "node {id} exited ({status}); its log ends with:\n{}",
                cluster.log_tail(id, 5)
            )));
        }
        if let Ok(status) = client.cluster_status().await
            && let Some(leader) = status.nodes.iter().find(|n| n.reachable && n.role == Role::Leader)
            && let Some(id) = leader.id
        {
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err(Failure::from(format!("no leader elected within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run_dev(args: DevArgs) -> Result<(), Failure> {
    if ![1, 3, 5].contains(&args.nodes) {
        return Err(Failure::usage("--nodes must be 1, 3 or 5"));
    }
    let mut options = ClusterOptions::new(binary()?, args.nodes);
    options.data_dir = args.data_dir.clone();
    options.base_port = Some(args.base_port);
    let mut cluster = LocalCluster::new(options)?;
    cluster.start_all()?;
    let client = client_for(&cluster, Duration::from_secs(5))?;
    println!("quorumq dev: {} nodes, data and logs in {}", args.nodes, cluster.dir().display());
    println!("--cluster {}", cluster.cluster_arg());
    println!("export QUORUMQ_CLUSTER={}", cluster.cluster_arg());
    let leader = wait_for_leader(&mut cluster, &client, Duration::from_secs(30)).await?;
    println!("node {leader} is the leader. Ctrl-C stops the cluster.");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                for (id, status) in cluster.exited() {
                    eprintln!("node {id} exited ({status}); log: {}", cluster.node(id).log_path.display());
                }
            }
        }
    }
    println!("stopping…");
    cluster.stop_all(Duration::from_secs(10))?;
    if args.data_dir.is_none() {
        println!("stopped; temporary data removed");
    } else {
        println!("stopped; data kept in {}", cluster.dir().display());
    }
    Ok(())
}

/// What the demo's producers saw.
#[derive(Default)]
struct Sent {
    /// Bodies the cluster acknowledged.
    acked: Vec<String>,
    /// Bodies whose send failed or timed out: their fate is unknown.
    unknown: Vec<String>,
    /// When each acknowledgement arrived.
    acked_at: Vec<Instant>,
}

pub async fn run_demo(args: DemoArgs) -> Result<(), Failure> {
    if args.producers == 0 || args.messages < args.producers * 2 {
        return Err(Failure::usage("--messages must be at least twice --producers, and --producers positive"));
    }
    let mut cluster = LocalCluster::new(ClusterOptions::new(binary()?, 3))?;
    if args.keep {
        cluster.keep_data();
    }
    cluster.start_all()?;
    println!("demo: started 3 nodes at {} (logs in {})", cluster.cluster_arg(), cluster.dir().display());
    let client = client_for(&cluster, Duration::from_secs(30))?;
    let leader = wait_for_leader(&mut cluster, &client, Duration::from_secs(30)).await?;
    println!("demo: node {leader} is the leader");
    client.create_queue("demo", QueueOptions::default()).await.map_err(|e| Failure::from(e.message()))?;

    // Producers: each sends its share one message at a time; the client
    // retries through the failover with the same message id.
    let sent = Arc::new(Mutex::new(Sent::default()));
    let acked_count = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let (client, sent, acked_count) = (client.clone(), sent.clone(), acked_count.clone());
        let share = args.messages / args.producers + u64::from(p < args.messages % args.producers);
        producers.push(tokio::spawn(async move {
            for i in 0..share {
                let body = format!("p{p}-{i}");
                let result = client.send("demo", body.clone()).await;
                let mut sent = sent.lock().expect("sent lock");
                match result {
                    Ok(_) => {
                        sent.acked.push(body);
                        sent.acked_at.push(Instant::now());
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => sent.unknown.push(body),
                }
            }
        }));
    }

    // Midway, SIGKILL the leader and time how long the cluster has none.
    while acked_count.load(Ordering::Relaxed) < args.messages / 2 {
        if producers.iter().all(|p| p.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = client.cluster_status().await.map_err(|e| Failure::from(e.message()))?;
    let victim = status
        .nodes
        .iter()
        .find(|n| n.reachable && n.role == Role::Leader)
        .and_then(|n| n.id)
        .ok_or_else(|| Failure::from("no leader to kill"))?;
    let acked_before = acked_count.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    cluster.kill(victim)?;
    println!("demo: SIGKILLed the leader, node {victim}, after {acked_before} acknowledged sends");
    let survivors: Vec<String> =
        cluster.ids().into_iter().filter(|&id| id != victim).map(|id| cluster.node(id).addr.clone()).collect();
    let probe = Client::new(ClientConfig::new(survivors)).map_err(|e| Failure::from(e.message()))?;
    let (new_leader, leaderless) = loop {
        let mut found = None;
        for addr in probe.known_nodes() {
            if let Ok(s) = probe.node_status(&addr).await
                && s.role == Role::Leader
            {
                found = Some(s.id);
            }
        }
        if let Some(id) = found {
            break (id, killed_at.elapsed());
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            return Err(Failure::from("no new leader within 30 s of the kill"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("demo: node {new_leader} leads after {} ms without a leader", leaderless.as_millis());

    for p in producers {
        p.await.map_err(|e| Failure::from(format!("producer failed: {e}")))?;
    }
    let first_ack_after_kill = {
        let sent = sent.lock().expect("sent lock");
        sent.acked_at.iter().filter(|t| **t > killed_at).min().map(|t| t.duration_since(killed_at))
    };
    cluster.start(victim)?;
    println!("demo: restarted node {victim}");

    // Drain: receive and ack until every acknowledged message is back and
    // the queue is empty.
    let (acked, unknown) = {
        let sent = sent.lock().expect("sent lock");
        (sent.acked.clone(), sent.unknown.clone())
    };
    let mut received: HashMap<String, u32> = HashMap::new();
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let messages = client
            .receive(
                "demo",
                ReceiveOptions { max_messages: 100, wait: Duration::from_secs(1), visibility_timeout: None },
            )
            .await
            .map_err(|e| Failure::from(e.message()))?;
        if messages.is_empty() {
            let stats = client.get_queue("demo").await.map_err(|e| Failure::from(e.message()))?.stats;
            if stats.ready + stats.in_flight == 0 {
                break;
            }
        } else {
            for m in &messages {
                *received.entry(String::from_utf8_lossy(&m.body).into_owned()).or_default() += 1;
            }
            let results = client
                .ack_batch("demo", messages.iter().map(|m| m.receipt.clone()))
                .await
                .map_err(|e| Failure::from(e.message()))?;
            if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                return Err(Failure::from(format!("ack failed: {}", e.message)));
            }
        }
        if Instant::now() > drain_deadline {
            return Err(Failure::from("the queue did not drain within 120 s"));
        }
    }

    // Has the restarted node caught up?
    let victim_addr = cluster.node(victim).addr.clone();
    let caught_up = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader_commit = client.cluster_status().await.ok().and_then(|s| s.leader().map(|l| l.committed_index));
            let victim_applied = client.node_status(&victim_addr).await.ok().map(|s| s.applied_index);
            if let (Some(c), Some(a)) = (leader_commit, victim_applied)
                && a >= c
            {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    let missing = acked.iter().filter(|b| !received.contains_key(*b)).count();
    let sent_bodies: std::collections::HashSet<&String> = acked.iter().chain(unknown.iter()).collect();
    let unexpected = received.keys().filter(|b| !sent_bodies.contains(b)).count();
    let duplicated = received.values().filter(|&&n| n > 1).count();
    let received_total = received.len();
    cluster.stop_all(Duration::from_secs(10))?;
    let verdict = if missing == 0 && unexpected == 0 { "PASS" } else { "FAIL" };
    println!(
        "{verdict}: sent {}, acknowledged {}, received {received_total}, missing {missing}, duplicated {duplicated}, \
         unexpected {unexpected}; leader node {victim} killed, no leader for {} ms, writes resumed after {} ms; \
         node {victim} restarted and {}",
        args.messages,
        acked.len(),
        leaderless.as_millis(),
        first_ack_after_kill.map_or("?".to_string(), |d| d.as_millis().to_string()),
        if caught_up { "caught up" } else { "did NOT catch up within 20 s" },
    );
    if args.keep {
        println!("demo: data and logs kept in {}", cluster.dir().display());
    }
    if verdict == "FAIL" || !caught_up {
        return Err(Failure::from("the demo found a problem (see above)"));
    }
    Ok(())
}
