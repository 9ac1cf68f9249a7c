//! The client subcommands: queues, send, recv, ack, nack, visibility and
//! cluster status, through the public `quorumq-client`.

use std::io::BufRead;
use std::time::Duration;

use crate::parse_duration;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use clap::Subcommand;
use quorumq_client::Client;
use quorumq_client::ClientConfig;
use quorumq_client::EntryError;
use quorumq_client::Error;
use quorumq_client::Message;
use quorumq_client::OutgoingMessage;
use quorumq_client::QueueInfo;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use serde_json::json;

use super::Failure;

/// Messages per Send when reading `--stdin`.
const STDIN_BATCH_DEFAULT: usize = 100;

#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    fn print_json(self, value: serde_json::Value) {
        println!("{value}");
    }
}

pub fn connect(cluster: &[String], timeout: Duration) -> Result<Client, Failure> {
    let seeds: Vec<String> = cluster.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if seeds.is_empty() {
        return Err(Failure::usage("--cluster is empty"));
    }
    let mut config = ClientConfig::new(seeds);
    config.deadline = timeout;
    Client::new(config).map_err(|e| Failure::usage(e.message()))
}

/// One line for an error: the server's message without the code prefix.
fn fail(e: Error) -> Failure {
    Failure::from(e.message())
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Create a queue (succeeds if it exists with the same attributes).
    Create {
        name: String,
        /// How long a received message stays invisible (default 30s, at most 12h).
        #[arg(long, value_parser = parse_duration)]
        visibility_timeout: Option<Duration>,
        /// How long a message id deduplicates sends (default 5m, at most 1h).
        #[arg(long, value_parser = parse_duration)]
        dedup_window: Option<Duration>,
    },
    /// Delete a queue and its messages.
    Delete { name: String },
    /// List queues.
    List,
    /// A queue's attributes and counters.
    Stats { name: String },
    /// Delete every message of a queue.
    Purge { name: String },
}

fn queue_json(q: &QueueInfo) -> serde_json::Value {
    json!({
        "name": q.name,
        "ready": q.stats.ready,
        "in_flight": q.stats.in_flight,
        "bytes": q.stats.bytes,
        "sent_total": q.stats.sent_total,
        "acked_total": q.stats.acked_total,
        "received_total": q.stats.received_total,
        "oldest_sent_at_ms": q.stats.oldest_sent_at_ms,
        "visibility_timeout_ms": q.config.visibility_timeout.map(|d| d.as_millis() as u64),
        "dedup_window_ms": q.config.dedup_window.map(|d| d.as_millis() as u64),
        "created_at_ms": q.created_at_ms,
    })
}

fn queue_line(q: &QueueInfo) -> String {
    format!(
        "{}: {} ready, {} in flight, {} bytes (sent {}, received {}, acked {})",
        q.name,
        q.stats.ready,
        q.stats.in_flight,
        q.stats.bytes,
        q.stats.sent_total,
        q.stats.received_total,
        q.stats.acked_total
    )
}

pub async fn queue(client: &Client, out: Output, cmd: QueueCmd) -> Result<(), Failure> {
    match cmd {
        QueueCmd::Create { name, visibility_timeout, dedup_window } => {
            let created =
                client.create_queue(&name, QueueOptions { visibility_timeout, dedup_window }).await.map_err(fail)?;
            if out.json {
                let mut value = queue_json(&created.queue);
                value["created"] = json!(created.created);
                out.print_json(value);
            } else if created.created {
                println!("created queue {name}");
            } else {
                println!("queue {name} already exists with these attributes");
            }
        }
        QueueCmd::Delete { name } => {
            let deleted = client.delete_queue(&name).await.map_err(fail)?;
            if out.json {
                out.print_json(json!({ "name": name, "messages_deleted": deleted }));
            } else {
                println!("deleted queue {name} ({deleted} messages)");
            }
        }
        QueueCmd::List => {
            let queues = client.list_queues().await.map_err(fail)?;
            if out.json {
                out.print_json(serde_json::Value::Array(queues.iter().map(queue_json).collect()));
            } else {
                for q in &queues {
                    println!("{}", queue_line(q));
                }
            }
        }
        QueueCmd::Stats { name } => {
            let q = client.get_queue(&name).await.map_err(fail)?;
            if out.json {
                out.print_json(queue_json(&q));
            } else {
                println!("{}", queue_line(&q));
            }
        }
        QueueCmd::Purge { name } => {
            let purged = client.purge_queue(&name).await.map_err(fail)?;
            if out.json {
                out.print_json(json!({ "name": name, "messages_deleted": purged }));
            } else {
                println!("purged {purged} messages from {name}");
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct SendArgs {
    queue: String,
    /// Message bodies, one message each.
    bodies: Vec<String>,
    /// The message id (one body only): a resend with the same id within the
    /// queue's deduplication window enqueues nothing.
    #[arg(long)]
    id: Option<String>,
    /// Read messages from standard input, one per line, sent in batches.
    #[arg(long)]
    stdin: bool,
    /// Messages per batch with --stdin.
    #[arg(long, default_value_t = STDIN_BATCH_DEFAULT)]
    batch: usize,
}

pub async fn send(client: &Client, out: Output, args: SendArgs) -> Result<(), Failure> {
    if args.stdin && !args.bodies.is_empty() {
        return Err(Failure::usage("give bodies as arguments or --stdin, not both"));
    }
    if args.id.is_some() && (args.stdin || args.bodies.len() != 1) {
        return Err(Failure::usage("--id needs exactly one body"));
    }
    if !args.stdin && args.bodies.is_empty() {
        return Err(Failure::usage("nothing to send: give bodies or --stdin"));
    }
    if args.batch == 0 || args.batch > 1000 {
        return Err(Failure::usage("--batch must be between 1 and 1000"));
    }
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut send_batch = async |messages: Vec<OutgoingMessage>| -> Result<(), Failure> {
        let results = client.send_batch(&args.queue, messages).await.map_err(fail)?;
        for result in results {
            match result {
                Ok(receipt) => {
                    sent += 1;
                    if out.json {
                        out.print_json(json!({ "id": receipt.id, "seq": receipt.seq, "duplicate": receipt.duplicate }));
                    }
                }
                Err(EntryError { message, .. }) => {
                    failed += 1;
                    eprintln!("error: {message}");
                }
            }
        }
        Ok(())
    };
    if args.stdin {
        let stdin = std::io::stdin();
        let mut batch = Vec::with_capacity(args.batch);
        for line in stdin.lock().lines() {
            batch.push(OutgoingMessage::new(line?));
            if batch.len() == args.batch {
                send_batch(std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            send_batch(batch).await?;
        }
    } else {
        let messages = args
            .bodies
            .into_iter()
            .map(|body| {
                let message = OutgoingMessage::new(body);
                match &args.id {
                    Some(id) => message.with_id(id.clone()),
                    None => message,
                }
            })
            .collect::<Vec<_>>();
        for chunk in messages.chunks(args.batch) {
            send_batch(chunk.to_vec()).await?;
        }
    }
    if !out.json {
        println!("sent {sent} message{}", if sent == 1 { "" } else { "s" });
    }
    if failed > 0 {
        return Err(Failure::from(format!("{failed} message(s) were not sent")));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RecvArgs {
    queue: String,
    /// At most this many messages (1 to 1000).
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// Wait up to this long for a message (long polling, at most 20s).
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    wait: Duration,
    /// Visibility timeout for these deliveries (default: the queue's).
    #[arg(long, value_parser = parse_duration)]
    visibility: Option<Duration>,
    /// Acknowledge the printed messages before exiting.
    #[arg(long)]
    ack: bool,
}

fn message_json(m: &Message) -> serde_json::Value {
    let mut value = json!({
        "id": m.id,
        "receipt": m.receipt,
        "receive_count": m.receive_count,
        "seq": m.seq,
        "sent_at_ms": m.sent_at_ms,
        "first_received_at_ms": m.first_received_at_ms,
    });
    match std::str::from_utf8(&m.body) {
        Ok(text) => value["body"] = json!(text),
        Err(_) => {
            value["body"] = serde_json::Value::Null;
            value["body_base64"] = json!(BASE64.encode(&m.body));
        }
    }
    value
}

pub async fn recv(client: &Client, out: Output, args: RecvArgs) -> Result<(), Failure> {
    if args.max == 0 || args.max > 1000 {
        return Err(Failure::usage("--max must be between 1 and 1000"));
    }
    let options = ReceiveOptions { max_messages: args.max, wait: args.wait, visibility_timeout: args.visibility };
    let messages = client.receive(&args.queue, options).await.map_err(fail)?;
    for m in &messages {
        if out.json {
            out.print_json(message_json(m));
        } else {
            let body = match std::str::from_utf8(&m.body) {
                Ok(text) => text.to_string(),
                Err(_) => format!("base64:{}", BASE64.encode(&m.body)),
            };
            println!("{}\t{}\t{}\t{}", m.id, m.receive_count, m.receipt, body);
        }
    }
    if args.ack && !messages.is_empty() {
        let results = client.ack_batch(&args.queue, messages.iter().map(|m| m.receipt.clone())).await.map_err(fail)?;
        report_receipts(&messages.iter().map(|m| m.receipt.clone()).collect::<Vec<_>>(), results, "ack")?;
    }
    Ok(())
}

fn report_receipts(receipts: &[String], results: Vec<Result<(), EntryError>>, what: &str) -> Result<(), Failure> {
    let mut failed = 0;
    for (receipt, result) in receipts.iter().zip(results) {
        if let Err(e) = result {
            failed += 1;
            eprintln!("error: {what} {receipt}: {}", e.message);
        }
    }
    if failed > 0 {
        return Err(Failure::from(format!("{failed} of {} receipt(s) failed", receipts.len())));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReceiptArgs {
    queue: String,
    #[arg(required = true)]
    receipts: Vec<String>,
}

pub async fn ack(client: &Client, out: Output, args: ReceiptArgs) -> Result<(), Failure> {
    let results = client.ack_batch(&args.queue, args.receipts.clone()).await.map_err(fail)?;
    report_receipts(&args.receipts, results, "ack")?;
    if !out.json {
        println!("acked {}", args.receipts.len());
    }
    Ok(())
}

pub async fn nack(client: &Client, out: Output, args: ReceiptArgs) -> Result<(), Failure> {
    let results = client.nack_batch(&args.queue, args.receipts.clone()).await.map_err(fail)?;
    report_receipts(&args.receipts, results, "nack")?;
    if !out.json {
        println!("nacked {}", args.receipts.len());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct VisibilityArgs {
    queue: String,
    #[arg(required = true)]
    receipts: Vec<String>,
    /// New visibility timeout from now (0 makes them visible now).
    #[arg(long, value_parser = parse_duration)]
    timeout: Duration,
}

pub async fn visibility(client: &Client, out: Output, args: VisibilityArgs) -> Result<(), Failure> {
    let results =
        client.change_visibility_batch(&args.queue, args.receipts.clone(), args.timeout).await.map_err(fail)?;
    report_receipts(&args.receipts, results, "visibility")?;
    if !out.json {
        println!("changed visibility of {}", args.receipts.len());
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every node's role, term and log positions, and the leader.
    Status,
    /// One node's own status, asked directly (no leader following): exits 0
    /// when it answers. A container health check.
    Node {
        /// The node's address (default: the first --cluster address).
        addr: Option<String>,
        /// Also require that the node knows a leader (exit 1 otherwise).
        #[arg(long)]
        require_leader: bool,
    },
}

pub async fn cluster(client: &Client, out: Output, cmd: ClusterCmd) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::Node { addr, require_leader } => {
            let addr = match addr {
                Some(addr) => addr,
                None => client.known_nodes().into_iter().next().ok_or_else(|| Failure::usage("no address"))?,
            };
            let s = client.node_status(&addr).await.map_err(fail)?;
            if out.json {
                out.print_json(json!({
                    "id": s.id,
                    "address": s.address,
                    "role": s.role.as_str(),
                    "leader": s.leader_id,
                    "term": s.term,
                    "last_log_index": s.last_log_index,
                    "committed_index": s.committed_index,
                    "applied_index": s.applied_index,
                    "initialized": s.initialized,
                }));
            } else {
                println!(
                    "node {} at {}: {} in term {}, leader {}, log {}, committed {}, applied {}",
                    s.id,
                    s.address,
                    s.role.as_str(),
                    s.term,
                    s.leader_id.map_or("unknown".to_string(), |l| l.to_string()),
                    s.last_log_index,
                    s.committed_index,
                    s.applied_index
                );
            }
            if require_leader && s.leader_id.is_none() {
                return Err(Failure::from(format!("node {} knows no leader", s.id)));
            }
        }
        ClusterCmd::Status => {
            let status = client.cluster_status().await.map_err(fail)?;
            if out.json {
                let nodes: Vec<_> = status
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "id": n.id,
                            "address": n.address,
                            "role": n.role.as_str(),
                            "term": n.term,
                            "last_log_index": n.last_log_index,
                            "committed_index": n.committed_index,
                            "applied_index": n.applied_index,
                            "reachable": n.reachable,
                        })
                    })
                    .collect();
                out.print_json(json!({ "leader": status.leader_id, "term": status.term, "nodes": nodes }));
            } else {
                match status.leader_id {
                    Some(id) => println!("leader: node {id} (term {})", status.term),
                    None => println!("leader: none (term {})", status.term),
                }
                println!(
                    "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10} {:>10}  reachable",
                    "id", "address", "role", "term", "last log", "committed", "applied"
                );
                for n in &status.nodes {
                    println!(
                        "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10} {:>10}  {}",
                        n.id.map_or("?".to_string(), |id| id.to_string()),
                        n.address,
                        n.role.as_str(),
                        n.term,
                        n.last_log_index,
                        n.committed_index,
                        n.applied_index,
                        if n.reachable { "yes" } else { "no" }
                    );
                }
            }
            if status.reachable_count() == 0 {
                return Err(Failure::from("no node answered"));
            }
        }
    }
    Ok(())
}
