//! The client subcommands: queues (with redrive), send, recv, ack, nack,
//! visibility and cluster status, through the public `quorumq-client`.
//! `consume` is in `consume.rs`.

use std::io::BufRead;
use std::time::Duration;

use crate::parse_duration;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use clap::Subcommand;
use quorumq_client::AttributeValue;
use quorumq_client::Client;
use quorumq_client::ClientConfig;
use quorumq_client::DeadLetterPolicy;
use quorumq_client::EntryError;
use quorumq_client::Error;
use quorumq_client::Message;
use quorumq_client::NackOptions;
use quorumq_client::OutgoingMessage;
use quorumq_client::Overflow;
use quorumq_client::QueueInfo;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use quorumq_client::RedeliveryBackoff;
use quorumq_client::RedriveOptions;
use quorumq_client::RedriveResult;
use serde_json::json;

use super::Failure;

/// Messages per Send when reading `--stdin`.
const STDIN_BATCH_DEFAULT: usize = 100;

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub(super) fn print_json(self, value: serde_json::Value) {
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
pub(super) fn fail(e: Error) -> Failure {
    Failure::from(e.message())
}

/// Attributes that `queue create` and `queue set` share.
#[derive(Args, Debug, Default)]
pub struct QueueAttrArgs {
    /// How long a received message stays invisible (default 30s, at most 12h).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    visibility_timeout: Option<Duration>,
    /// How long a message is kept at most (60s to 14d; default 4d).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    retention: Option<Duration>,
    /// Time to live of every message; expired messages are dead-lettered (or
    /// dropped without a dead-letter queue). 0: none (the default).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    message_ttl: Option<Duration>,
    /// Delay before a new message becomes visible (0 to 15m; default 0).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    delay: Option<Duration>,
    /// Most messages the queue holds. 0: no limit (the default).
    #[arg(long, value_name = "N")]
    max_length: Option<u64>,
    /// Most body bytes the queue holds. 0: no limit (the default).
    #[arg(long, value_name = "N")]
    max_length_bytes: Option<u64>,
    /// What a send beyond a length limit does: refuse the message
    /// (reject-publish, the default) or make room by dead-lettering or
    /// dropping the oldest messages (drop-head).
    #[arg(long, value_enum, value_name = "POLICY")]
    overflow: Option<OverflowArg>,
    /// Dead-letter queue (it must exist): where messages go after
    /// --max-receives receives, on expiry, when rejected (`nack
    /// --dead-letter`) and when pushed out by drop-head.
    #[arg(long, value_name = "QUEUE")]
    dead_letter: Option<String>,
    /// Receives after which a message moves to the dead-letter queue instead
    /// of being delivered again (0: never for this reason; at most 1000).
    #[arg(long, value_name = "N")]
    max_receives: Option<u32>,
    /// Delay before a nacked or timed-out message is visible again:
    /// min(MAX, MIN * FACTOR^(receives - 1)); FACTOR defaults to 2
    /// (e.g. `--redelivery-backoff 1s,5m` or `1s,5m,1.5`).
    #[arg(long, value_parser = parse_backoff, value_name = "MIN,MAX[,FACTOR]")]
    redelivery_backoff: Option<RedeliveryBackoff>,
    /// How long a message id deduplicates sends (default 5m, at most 1h).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    dedup_window: Option<Duration>,
    /// Deduplicate messages sent without an explicit --id by their body
    /// (SHA-256), within the deduplication window.
    #[arg(long)]
    content_dedup: bool,
}

/// The overflow policies, as the command line spells them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowArg {
    RejectPublish,
    DropHead,
}

impl From<OverflowArg> for Overflow {
    fn from(arg: OverflowArg) -> Overflow {
        match arg {
            OverflowArg::RejectPublish => Overflow::RejectPublish,
            OverflowArg::DropHead => Overflow::DropHead,
        }
    }
}

/// Parses `MIN,MAX[,FACTOR]`: two durations and an optional growth factor
/// (1 to 10, up to three decimals).
fn parse_backoff(s: &str) -> Result<RedeliveryBackoff, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let (min, max, factor) = match parts.as_slice() {
        [min, max] => (min, max, None),
        [min, max, factor] => (min, max, Some(factor)),
        _ => return Err(format!("invalid backoff {s:?}: expected MIN,MAX[,FACTOR], e.g. 1s,5m or 1s,5m,1.5")),
    };
    let min = parse_duration(min)?;
    let max = parse_duration(max)?;
    if min.is_zero() || max < min {
        return Err(format!("invalid backoff {s:?}: it needs 0 < MIN <= MAX"));
    }
    let factor_milli = match factor {
        None => 0,
        Some(f) => {
            let value: f64 = f.parse().map_err(|_| format!("invalid backoff factor {f:?}: expected a number"))?;
            if !(1.0..=10.0).contains(&value) {
                return Err(format!("invalid backoff factor {f:?}: it must be from 1 to 10"));
            }
            (value * 1000.0).round() as u32
        }
    };
    Ok(RedeliveryBackoff { min, max, factor_milli })
}

impl QueueAttrArgs {
    /// The options these arguments give. `current` is the queue's
    /// dead-letter policy, when changing an existing queue: a new
    /// --dead-letter keeps its --max-receives, and --max-receives alone
    /// keeps its queue.
    fn options(&self, current: Option<&DeadLetterPolicy>) -> Result<QueueOptions, Failure> {
        let dead_letter = match (&self.dead_letter, self.max_receives) {
            (None, None) => None,
            (Some(queue), max_receives) => Some(DeadLetterPolicy {
                queue: queue.clone(),
                max_receives: max_receives.or(current.map(|p| p.max_receives)).unwrap_or(0),
            }),
            (None, Some(max_receives)) => match current {
                Some(policy) => Some(DeadLetterPolicy { queue: policy.queue.clone(), max_receives }),
                None => {
                    return Err(Failure::usage(
                        "--max-receives needs --dead-letter (the queue has no dead-letter queue)",
                    ));
                }
            },
        };
        Ok(QueueOptions {
            visibility_timeout: self.visibility_timeout,
            dedup_window: self.dedup_window,
            retention: self.retention,
            message_ttl: self.message_ttl,
            delay: self.delay,
            max_messages: self.max_length,
            max_bytes: self.max_length_bytes,
            overflow: self.overflow.map(Overflow::from),
            dead_letter,
            redelivery_backoff: self.redelivery_backoff,
            fifo: None,
            content_based_dedup: self.content_dedup.then_some(true),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Create a queue (succeeds if it exists with the same attributes).
    Create {
        name: String,
        /// A FIFO queue: messages of one group (`send --group`) are delivered
        /// in order, one at a time. Cannot be changed later.
        #[arg(long)]
        fifo: bool,
        #[command(flatten)]
        attrs: QueueAttrArgs,
    },
    /// Change attributes of a queue. Only the attributes given change.
    ///
    /// To remove a setting: --no-dead-letter, --no-redelivery-backoff,
    /// --message-ttl 0 (no TTL), --max-length 0 and --max-length-bytes 0 (no
    /// limit), --no-content-dedup. --max-receives alone keeps the current
    /// dead-letter queue; --dead-letter alone keeps the current
    /// --max-receives. Whether a queue is FIFO cannot change.
    Set {
        name: String,
        #[command(flatten)]
        attrs: QueueAttrArgs,
        /// Remove the dead-letter policy.
        #[arg(long, conflicts_with_all = ["dead_letter", "max_receives"])]
        no_dead_letter: bool,
        /// Remove the redelivery backoff (nacked and timed-out messages are
        /// visible again at once).
        #[arg(long, conflicts_with = "redelivery_backoff")]
        no_redelivery_backoff: bool,
        /// Stop deduplicating by body.
        #[arg(long, conflicts_with = "content_dedup")]
        no_content_dedup: bool,
    },
    /// Delete a queue and its messages.
    Delete { name: String },
    /// List queues.
    List,
    /// A queue's attributes and counters.
    Stats { name: String },
    /// Delete every message of a queue.
    Purge { name: String },
    /// Move messages out of a dead-letter queue: back to the queues they came
    /// from, or all to --to. Runs until the queue has nothing left to move
    /// (in-flight messages wait for their visibility timeout) or --max
    /// messages moved, in steps of at most 1000.
    Redrive {
        /// The dead-letter queue.
        name: String,
        /// Move every message to this queue instead of its source queue.
        #[arg(long, value_name = "QUEUE")]
        to: Option<String>,
        /// Move at most this many messages.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
    },
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

/// A limit or TTL that 0 turns off: `null` when off.
fn positive(v: Option<u64>) -> Option<u64> {
    v.filter(|&v| v > 0)
}

fn queue_json(q: &QueueInfo) -> serde_json::Value {
    let c = &q.config;
    json!({
        "name": q.name,
        "ready": q.stats.ready,
        "in_flight": q.stats.in_flight,
        "delayed": q.stats.delayed,
        "bytes": q.stats.bytes,
        "sent_total": q.stats.sent_total,
        "acked_total": q.stats.acked_total,
        "received_total": q.stats.received_total,
        "dead_lettered_total": q.stats.dead_lettered_total,
        "expired_total": q.stats.expired_total,
        "dropped_total": q.stats.dropped_total,
        "rejected_total": q.stats.rejected_total,
        "oldest_sent_at_ms": q.stats.oldest_sent_at_ms,
        "visibility_timeout_ms": millis(c.visibility_timeout),
        "dedup_window_ms": millis(c.dedup_window),
        "retention_ms": millis(c.retention),
        "message_ttl_ms": positive(millis(c.message_ttl)),
        "delay_ms": millis(c.delay),
        "max_messages": positive(c.max_messages),
        "max_bytes": positive(c.max_bytes),
        "overflow": c.overflow.map(Overflow::as_str),
        "dead_letter": c.dead_letter.as_ref().map(|p| json!({ "queue": p.queue, "max_receives": p.max_receives })),
        "redelivery_backoff": c.redelivery_backoff.map(|b| json!({
            "min_ms": b.min.as_millis() as u64,
            "max_ms": b.max.as_millis() as u64,
            "factor_milli": b.factor_milli,
        })),
        "fifo": c.fifo,
        "content_based_dedup": c.content_based_dedup,
        "created_at_ms": q.created_at_ms,
    })
}

fn queue_line(q: &QueueInfo) -> String {
    let mut line = format!(
        "{}: {} ready, {} in flight, {} delayed, {} bytes (sent {}, received {}, acked {})",
        q.name,
        q.stats.ready,
        q.stats.in_flight,
        q.stats.delayed,
        q.stats.bytes,
        q.stats.sent_total,
        q.stats.received_total,
        q.stats.acked_total
    );
    if q.config.fifo == Some(true) {
        line.push_str(" [fifo]");
    }
    line
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The attributes and the other counters, one per line, for `queue stats`.
fn queue_details(q: &QueueInfo) -> Vec<String> {
    let c = &q.config;
    let s = &q.stats;
    let mut lines = vec![format!(
        "  dead-lettered {}, expired {}, dropped {}, rejected {}",
        s.dead_lettered_total, s.expired_total, s.dropped_total, s.rejected_total
    )];
    let mut attrs: Vec<String> = Vec::new();
    let mut duration = |name: &str, d: Option<Duration>| {
        if let Some(d) = d.filter(|d| !d.is_zero()) {
            attrs.push(format!("{name} {}", human(d)));
        }
    };
    duration("visibility-timeout", c.visibility_timeout);
    duration("retention", c.retention);
    duration("message-ttl", c.message_ttl);
    duration("delay", c.delay);
    duration("dedup-window", c.dedup_window);
    if let Some(n) = positive(c.max_messages) {
        attrs.push(format!("max-length {n}"));
    }
    if let Some(n) = positive(c.max_bytes) {
        attrs.push(format!("max-length-bytes {n}"));
    }
    if let Some(o) = c.overflow {
        attrs.push(format!("overflow {}", o.as_str()));
    }
    if let Some(p) = &c.dead_letter {
        attrs.push(format!("dead-letter {} (max-receives {})", p.queue, p.max_receives));
    }
    if let Some(b) = c.redelivery_backoff {
        let factor = if b.factor_milli == 0 { 2.0 } else { f64::from(b.factor_milli) / 1000.0 };
        attrs.push(format!("redelivery-backoff {}..{} x{factor}", human(b.min), human(b.max)));
    }
    if c.fifo == Some(true) {
        attrs.push("fifo".into());
    }
    if c.content_based_dedup == Some(true) {
        attrs.push("content-dedup".into());
    }
    lines.push(format!("  {}", attrs.join(", ")));
    lines
}

pub async fn queue(client: &Client, out: Output, cmd: QueueCmd) -> Result<(), Failure> {
    match cmd {
        QueueCmd::Create { name, fifo, attrs } => {
            let options = QueueOptions { fifo: fifo.then_some(true), ..attrs.options(None)? };
            let created = client.create_queue(&name, options).await.map_err(fail)?;
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
        QueueCmd::Set { name, attrs, no_dead_letter, no_redelivery_backoff, no_content_dedup } => {
            // --dead-letter or --max-receives alone change one half of the
            // policy: the other half comes from the queue as it is.
            let current = if attrs.dead_letter.is_some() != attrs.max_receives.is_some() {
                client.get_queue(&name).await.map_err(fail)?.config.dead_letter
            } else {
                None
            };
            let mut options = attrs.options(current.as_ref())?;
            if no_dead_letter {
                options.dead_letter = Some(DeadLetterPolicy::none());
            }
            if no_redelivery_backoff {
                options.redelivery_backoff = Some(RedeliveryBackoff::off());
            }
            if no_content_dedup {
                options.content_based_dedup = Some(false);
            }
            if options == QueueOptions::default() {
                return Err(Failure::usage("nothing to change: give at least one attribute (see --help)"));
            }
            let q = client.set_queue(&name, options).await.map_err(fail)?;
            if out.json {
                out.print_json(queue_json(&q));
            } else {
                println!("updated queue {name}");
                for line in queue_details(&q).into_iter().skip(1) {
                    println!("{line}");
                }
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
                for line in queue_details(&q) {
                    println!("{line}");
                }
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
        QueueCmd::Redrive { name, to, max } => redrive(client, out, &name, to, max).await?,
    }
    Ok(())
}

/// Messages one Redrive call moves at most (the server allows 1000). Each
/// call is one Raft entry that copies every record it moves; smaller steps
/// keep each call well within the client's attempt timeout, so that a retry
/// after a lost answer (which moves another step, and is counted alone) is
/// rare and `--max` holds, and the progress bar moves.
const REDRIVE_STEP_MAX: u64 = 250;

async fn redrive(
    client: &Client,
    out: Output,
    name: &str,
    to: Option<String>,
    max: Option<u64>,
) -> Result<(), Failure> {
    if max == Some(0) {
        return Err(Failure::usage("--max must be at least 1"));
    }
    let limit = max.unwrap_or(u64::MAX);
    let progress = if out.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} moved ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut moved = 0u64;
    let last = loop {
        let step = (limit - moved).min(REDRIVE_STEP_MAX) as u32;
        let options = RedriveOptions { to: to.clone(), max_messages: step };
        let result: RedriveResult = match client.redrive(name, options).await {
            Ok(result) => result,
            Err(e) => {
                progress.abandon();
                if moved > 0 {
                    eprintln!("error: redrive stopped after moving {moved} messages");
                }
                return Err(fail(e));
            }
        };
        moved += result.moved;
        progress.set_length(moved + result.remaining.min(limit - moved));
        progress.set_position(moved);
        // No progress with messages left means they cannot move now (their
        // source queue is gone, or they are in flight): stop rather than
        // spin.
        if result.remaining == 0 || result.moved == 0 || moved >= limit {
            break result;
        }
    };
    progress.finish_and_clear();
    if out.json {
        out.print_json(json!({ "moved": moved, "remaining": last.remaining, "skipped": last.skipped }));
    } else {
        let mut line = format!("moved {moved} message{} out of {name}", if moved == 1 { "" } else { "s" });
        if last.remaining > 0 {
            line.push_str(&format!("; {} left", last.remaining));
        }
        if last.skipped > 0 {
            line.push_str(&format!("; {} skipped (no source queue to return to: give --to QUEUE)", last.skipped));
        }
        println!("{line}");
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
    /// Delay before the messages become visible (at most 15m; default: the
    /// queue's). Not for FIFO queues.
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    delay: Option<Duration>,
    /// Time to live of the messages (default: the queue's).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    ttl: Option<Duration>,
    /// Message group (required on FIFO queues: a group's messages are
    /// delivered in order, one at a time).
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Priority on standard queues: 0 (default) to 9, higher first.
    #[arg(long, value_name = "P")]
    priority: Option<u32>,
    /// A message attribute (repeatable, at most 10). The value is text;
    /// `KEY=base64:DATA` gives a binary value, and `KEY=text:VALUE` a text
    /// value that itself starts with `base64:` or `text:`.
    #[arg(long = "attr", value_parser = parse_attribute, value_name = "KEY=VALUE")]
    attributes: Vec<(String, AttributeValue)>,
}

/// Parses `KEY=VALUE`, `KEY=base64:DATA` (binary) or `KEY=text:VALUE`.
fn parse_attribute(s: &str) -> Result<(String, AttributeValue), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("invalid attribute {s:?}: expected KEY=VALUE"));
    };
    if key.is_empty() {
        return Err(format!("invalid attribute {s:?}: the key is empty"));
    }
    let value = if let Some(data) = value.strip_prefix("base64:") {
        let bytes =
            BASE64.decode(data).map_err(|e| format!("invalid attribute {key:?}: the value is not base64 ({e})"))?;
        AttributeValue::Binary(bytes.into())
    } else if let Some(text) = value.strip_prefix("text:") {
        AttributeValue::String(text.to_string())
    } else {
        AttributeValue::String(value.to_string())
    };
    Ok((key.to_string(), value))
}

impl SendArgs {
    /// A message with this body and the per-message options.
    fn message(&self, body: String) -> OutgoingMessage {
        let mut message = OutgoingMessage::new(body);
        message.id = self.id.clone();
        message.delay = self.delay;
        message.ttl = self.ttl;
        message.group = self.group.clone();
        message.priority = self.priority.unwrap_or(0);
        message.attributes = self.attributes.iter().cloned().collect();
        message
    }
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
            batch.push(args.message(line?));
            if batch.len() == args.batch {
                send_batch(std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            send_batch(batch).await?;
        }
    } else {
        let messages = args.bodies.iter().map(|body| args.message(body.clone())).collect::<Vec<_>>();
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

/// A received message as one JSON object (`recv --json`, `consume
/// --json`). Attribute values are text, or `{"base64": …}` for binary ones;
/// `group` and the `dead_letter_*` fields appear where they apply.
pub(super) fn message_json(m: &Message) -> serde_json::Value {
    let attributes: serde_json::Map<String, serde_json::Value> = m
        .attributes
        .iter()
        .map(|(k, v)| {
            let value = match v {
                AttributeValue::String(s) => json!(s),
                AttributeValue::Binary(b) => json!({ "base64": BASE64.encode(b) }),
            };
            (k.clone(), value)
        })
        .collect();
    let mut value = json!({
        "id": m.id,
        "receipt": m.receipt,
        "receive_count": m.receive_count,
        "seq": m.seq,
        "sent_at_ms": m.sent_at_ms,
        "sent_at": rfc3339_ms(m.sent_at_ms),
        "first_received_at_ms": m.first_received_at_ms,
        "priority": m.priority,
        "attributes": attributes,
    });
    match std::str::from_utf8(&m.body) {
        Ok(text) => value["body"] = json!(text),
        Err(_) => {
            value["body"] = serde_json::Value::Null;
            value["body_base64"] = json!(BASE64.encode(&m.body));
        }
    }
    if let Some(group) = &m.group {
        value["group"] = json!(group);
    }
    if let Some(dl) = &m.dead_letter {
        value["dead_letter_reason"] = json!(dl.reason.as_str());
        value["dead_letter_source_queue"] = json!(dl.source_queue);
        value["dead_letter_receive_count"] = json!(dl.receive_count);
    }
    value
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
fn rfc3339_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// A received message as one line of text: id, receive count, receipt and
/// body (binary bodies as `base64:…`), tab-separated.
pub(super) fn message_line(m: &Message) -> String {
    let body = match std::str::from_utf8(&m.body) {
        Ok(text) => text.to_string(),
        Err(_) => format!("base64:{}", BASE64.encode(&m.body)),
    };
    format!("{}\t{}\t{}\t{}", m.id, m.receive_count, m.receipt, body)
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
            println!("{}", message_line(m));
        }
    }
    if args.ack && !messages.is_empty() {
        let results = client.ack_batch(&args.queue, messages.iter().map(|m| m.receipt.clone())).await.map_err(fail)?;
        report_receipts(&messages.iter().map(|m| m.receipt.clone()).collect::<Vec<_>>(), results, "ack")?;
    }
    Ok(())
}

pub(super) fn report_receipts(
    receipts: &[String],
    results: Vec<Result<(), EntryError>>,
    what: &str,
) -> Result<(), Failure> {
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

#[derive(Args, Debug)]
pub struct NackArgs {
    queue: String,
    #[arg(required = true)]
    receipts: Vec<String>,
    /// Visible again after this long (at most 12h) instead of now (or after
    /// the queue's redelivery backoff).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    delay: Option<Duration>,
    /// Reject: move the messages to the queue's dead-letter queue (dropped
    /// when it has none) instead of delivering them again.
    #[arg(long, conflicts_with = "delay")]
    dead_letter: bool,
}

pub async fn nack(client: &Client, out: Output, args: NackArgs) -> Result<(), Failure> {
    let options = NackOptions { delay: args.delay.unwrap_or_default(), dead_letter: args.dead_letter };
    let results = client.nack_batch_with(&args.queue, args.receipts.clone(), options).await.map_err(fail)?;
    report_receipts(&args.receipts, results, "nack")?;
    if !out.json {
        let what = if args.dead_letter { "rejected" } else { "nacked" };
        println!("{what} {}", args.receipts.len());
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
    /// Add a node: it joins as a learner, copies the log, then becomes a
    /// voter. Start it first with `quorumq server --join`.
    Add {
        /// The new node's id (not used by any member).
        id: u64,
        /// HOST:PORT where the other nodes and clients reach it.
        addr: String,
        /// Leave it a learner (it receives the log but does not vote).
        #[arg(long)]
        learner: bool,
        /// How long to wait for it to catch up.
        #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "D")]
        timeout: Duration,
    },
    /// Remove a node (voter or learner). Removing the leader hands
    /// leadership over first. Stop the removed node afterwards.
    Remove {
        id: u64,
        /// How long to wait for the change to commit.
        #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "D")]
        timeout: Duration,
    },
    /// Hand leadership to another voter and wait until it has taken over.
    TransferLeader {
        id: u64,
        /// How long to wait for the new leader.
        #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "D")]
        timeout: Duration,
    },
}

fn print_members(out: Output, what: &str, members: &[quorumq_client::Member]) {
    if out.json {
        let members: Vec<_> =
            members.iter().map(|m| json!({ "id": m.id, "address": m.address, "voter": m.voter })).collect();
        out.print_json(json!({ "members": members }));
    } else {
        println!("{what}; members now:");
        for m in members {
            println!("  node {} at {} ({})", m.id, m.address, if m.voter { "voter" } else { "learner" });
        }
    }
}

pub async fn cluster(client: &Client, out: Output, cmd: ClusterCmd) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::Add { id, addr, learner, timeout } => {
            let members = if learner {
                client.add_learner(id, &addr, timeout).await.map_err(fail)?
            } else {
                client.add_node(id, &addr, timeout).await.map_err(fail)?
            };
            let what = if learner { "learner" } else { "voter" };
            print_members(out, &format!("node {id} at {addr} added as a {what}"), &members);
        }
        ClusterCmd::Remove { id, timeout } => {
            let members = client.remove_node(id, timeout).await.map_err(fail)?;
            print_members(out, &format!("node {id} removed"), &members);
        }
        ClusterCmd::TransferLeader { id, timeout } => {
            let t = client.transfer_leader(id, timeout).await.map_err(fail)?;
            if out.json {
                out.print_json(json!({ "leader": t.leader_id, "address": t.leader_address, "term": t.term }));
            } else {
                println!("node {} at {} leads now (term {})", t.leader_id, t.leader_address, t.term);
            }
        }
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
                    "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "initialized": s.initialized,
                    "alarms": s.alarms,
                }));
            } else {
                println!(
                    "node {} at {}: {} in term {}, leader {}, log {}, committed {}, applied {}, snapshot {}, purged {}",
                    s.id,
                    s.address,
                    s.role.as_str(),
                    s.term,
                    s.leader_id.map_or("unknown".to_string(), |l| l.to_string()),
                    s.last_log_index,
                    s.committed_index,
                    s.applied_index,
                    s.snapshot_index,
                    s.purged_index
                );
                for alarm in &s.alarms {
                    println!("alarm: {alarm}");
                }
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
                            "alarms": n.alarms,
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
                // Resource alarms block every send in the cluster (alarms.rs
                // of the node).
                let alarms: Vec<(String, &String)> = status
                    .nodes
                    .iter()
                    .flat_map(|n| n.alarms.iter().map(|a| (n.id.map_or("?".to_string(), |id| id.to_string()), a)))
                    .collect();
                for (id, alarm) in &alarms {
                    println!("alarm on node {id}: {alarm}");
                }
                if !alarms.is_empty() {
                    println!("sends are refused while an alarm is on; consumers can drain");
                }
            }
            if status.reachable_count() == 0 {
                return Err(Failure::from("no node answered"));
            }
        }
    }
    Ok(())
}
