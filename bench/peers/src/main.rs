//! The workloads of `quorumq bench` against three peers with equivalent
//! clients, for `bench/peers.sh`:
//!
//! - `quorumq`: the project's own client (`quorumq-client`);
//! - `rabbitmq`: a quorum queue over AMQP 0-9-1 with publisher confirms (`lapin`);
//! - `nats`: a JetStream work-queue stream, publishes awaiting the stream's ack (`async-nats`).
//!
//! Workloads (one JSON line per run with `--json`):
//!
//! - `publish`: P producers (one connection each) x W publishes in flight
//!   per producer, each awaiting its confirm; confirm latency histogram and
//!   msgs/s; bounded by `--messages` and `--duration`.
//! - `consume`: pre-fill the queue with `--messages` (4 x 256 in flight),
//!   then one consumer with `--prefetch` unacknowledged deliveries receives
//!   and acks them all; msgs/s of the consume phase.
//! - `failover`: one producer, one publish in flight; after `--warmup`,
//!   SIGKILL `--kill-pid` (the leader) and measure the time from the kill to
//!   the first confirm of a publish sent after it.
//! - `nats-leader`: print the server name of a JetStream stream's leader.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

type Res<T> = Result<T, String>;

fn err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("{context}: {e}")
}

#[derive(Parser, Debug)]
#[command(about = "quorumq, RabbitMQ and NATS JetStream side by side (bench/peers.sh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// P producers x W unconfirmed publishes in flight.
    Publish(Common),
    /// Pre-fill the queue with --messages, then consume and ack them all.
    Consume(Common),
    /// One producer, one in flight; SIGKILL --kill-pid after --warmup and
    /// measure the time until publishes are confirmed again.
    Failover(Common),
    /// Print the server name of the NATS stream leader (for the kill).
    NatsLeader {
        #[command(flatten)]
        common: Common,
        /// Fail unless both followers are current.
        #[arg(long)]
        all_current: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Peer {
    Quorumq,
    Rabbitmq,
    Nats,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Quorumq => "quorumq",
            Peer::Rabbitmq => "rabbitmq",
            Peer::Nats => "nats",
        }
    }
}

#[derive(Args, Debug, Clone)]
struct Common {
    #[arg(long, value_enum)]
    peer: Peer,
    /// Comma-separated host:port of the nodes (AMQP ports, NATS client
    /// ports, or quorumq gRPC ports). Producer i connects to node i mod n
    /// first (quorumq's client then follows the leader itself).
    #[arg(long, value_delimiter = ',', required = true)]
    addrs: Vec<String>,
    /// Queue (RabbitMQ), stream and subject (NATS), or queue (quorumq).
    #[arg(long, default_value = "bench")]
    queue: String,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Publishes each producer keeps in flight, each awaiting its confirm.
    #[arg(long, default_value_t = 256)]
    inflight: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to publish (publish), to pre-fill and consume (consume).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Upper bound of a publish or consume phase, in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// consume: upper bound of the pre-fill, in seconds.
    #[arg(long, default_value_t = 600.0)]
    prefill_duration: f64,
    /// Unacknowledged deliveries the consumer may hold.
    #[arg(long, default_value_t = 256)]
    prefetch: u32,
    /// failover: the process to SIGKILL.
    #[arg(long)]
    kill_pid: Option<i32>,
    /// failover: publish this many seconds before the kill.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// failover: give up waiting for a confirm after the kill after this
    /// many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// CPU time (user + system) of this process.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: rc == 0, so the struct was initialised.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A connection able to publish with a confirm. Cloning shares the connection.
#[derive(Clone)]
enum Publisher {
    Quorumq { client: quorumq_client::Client, queue: String },
    Rabbit { _conn: Arc<lapin::Connection>, channel: lapin::Channel, queue: String },
    Nats { js: async_nats::jetstream::Context, subject: String },
}

fn amqp_uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// The addresses rotated so that `first` comes first.
fn rotated(addrs: &[String], first: usize) -> Vec<String> {
    let n = addrs.len();
    (0..n).map(|i| addrs[(first + i) % n].clone()).collect()
}

async fn rabbit_connect(addrs: &[String], first: usize) -> Res<(lapin::Connection, lapin::Channel)> {
    let mut last = String::from("no address");
    for addr in rotated(addrs, first) {
        let uri = amqp_uri(&addr);
        let connect = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default());
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(conn)) => {
                let channel = conn.create_channel().await.map_err(|e| err("channel")(&e))?;
                return Ok((conn, channel));
            }
            Ok(Err(e)) => last = format!("connect {addr}: {e}"),
            Err(_) => last = format!("connect {addr}: timed out"),
        }
    }
    Err(last)
}

async fn nats_connect(addrs: &[String], first: usize) -> Res<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = rotated(addrs, first)
        .iter()
        .map(|a| format!("nats://{a}").parse::<async_nats::ServerAddr>().map_err(|e| err("address")(&e)))
        .collect::<Res<_>>()?;
    let options = async_nats::ConnectOptions::new()
        .retain_servers_order()
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 20).min(500)));
    async_nats::connect_with_options(servers, options).await.map_err(|e| err("nats connect")(&e))
}

fn jetstream(client: async_nats::Client) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}

fn quorumq_client(addrs: &[String], first: usize) -> Res<quorumq_client::Client> {
    let mut config = quorumq_client::ClientConfig::new(rotated(addrs, first));
    config.deadline = Duration::from_secs(30);
    quorumq_client::Client::new(config).map_err(|e| err("quorumq client")(&e))
}

impl Publisher {
    async fn connect(c: &Common, index: usize) -> Res<Publisher> {
        Ok(match c.peer {
            Peer::Quorumq => Publisher::Quorumq { client: quorumq_client(&c.addrs, index)?, queue: c.queue.clone() },
            Peer::Rabbitmq => {
                let (conn, channel) = rabbit_connect(&c.addrs, index).await?;
                channel
                    .confirm_select(lapin::options::ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| err("confirm.select")(&e))?;
                Publisher::Rabbit { _conn: Arc::new(conn), channel, queue: c.queue.clone() }
            }
            Peer::Nats => {
                Publisher::Nats { js: jetstream(nats_connect(&c.addrs, index).await?), subject: c.queue.clone() }
            }
        })
    }

    /// Publishes one message and waits for its confirm.
    async fn publish(&self, body: &Bytes) -> Res<()> {
        match self {
            Publisher::Quorumq { client, queue } => {
                client.send(queue, body.clone()).await.map(|_| ()).map_err(|e| err("send")(&e))
            }
            Publisher::Rabbit { channel, queue, .. } => {
                let properties = lapin::BasicProperties::default().with_delivery_mode(2);
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        lapin::options::BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .map_err(|e| err("basic.publish")(&e))?
                    .await
                    .map_err(|e| err("confirm")(&e))?;
                if confirm.is_ack() { Ok(()) } else { Err("nacked".to_string()) }
            }
            Publisher::Nats { js, subject } => js
                .publish(subject.clone(), body.clone())
                .await
                .map_err(|e| err("publish")(&e))?
                .await
                .map(|_| ())
                .map_err(|e| err("publish ack")(&e)),
        }
    }
}

/// Creates the queue (or stream) if missing and empties it.
async fn setup(c: &Common) -> Res<()> {
    match c.peer {
        Peer::Quorumq => {
            let client = quorumq_client(&c.addrs, 0)?;
            client
                .create_queue(&c.queue, quorumq_client::QueueOptions::default())
                .await
                .map_err(|e| err("create queue")(&e))?;
            client.purge_queue(&c.queue).await.map_err(|e| err("purge")(&e))?;
        }
        Peer::Rabbitmq => {
            let (conn, channel) = rabbit_connect(&c.addrs, 0).await?;
            let mut arguments = lapin::types::FieldTable::default();
            arguments.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
            let options = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
            channel.queue_declare(c.queue.as_str().into(), options, arguments).await.map_err(|e| err("declare")(&e))?;
            channel
                .queue_purge(c.queue.as_str().into(), lapin::options::QueuePurgeOptions::default())
                .await
                .map_err(|e| err("purge")(&e))?;
            let _ = conn.close(200, "done".into()).await;
        }
        Peer::Nats => {
            use async_nats::jetstream::stream;
            let js = jetstream(nats_connect(&c.addrs, 0).await?);
            let config = stream::Config {
                name: c.queue.clone(),
                subjects: vec![c.queue.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: 3,
                ..Default::default()
            };
            let s = js.get_or_create_stream(config).await.map_err(|e| err("stream")(&e))?;
            // A work-queue stream allows one consumer per subject: drop the
            // one a previous run left.
            let _ = s.delete_consumer(CONSUMER).await;
            s.purge().await.map_err(|e| err("purge")(&e))?;
        }
    }
    Ok(())
}

const CONSUMER: &str = "bench-consumer";

struct PublishRun {
    confirmed: u64,
    failed: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// P producers x W in flight until `messages` are confirmed or `duration` passed.
async fn publish_phase(c: &Common, producers: u32, inflight: u32, messages: u64, limit: f64) -> Res<PublishRun> {
    let body = Bytes::from(vec![b'x'; c.size]);
    let issued = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let mut publishers = Vec::new();
    for p in 0..producers {
        publishers.push(Publisher::connect(c, p as usize).await?);
    }
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(limit);
    let mut tasks = Vec::new();
    for publisher in &publishers {
        for _ in 0..inflight {
            let publisher = publisher.clone();
            let (body, issued, confirmed, failed, latency) =
                (body.clone(), issued.clone(), confirmed.clone(), failed.clone(), latency.clone());
            tasks.push(tokio::spawn(async move {
                let mut local = histogram();
                while Instant::now() < end {
                    // A ticket per message, so that exactly `messages` are confirmed.
                    if issued.fetch_add(1, Ordering::Relaxed) >= messages {
                        break;
                    }
                    let t = Instant::now();
                    let remaining = end.saturating_duration_since(t);
                    match tokio::time::timeout(remaining, publisher.publish(&body)).await {
                        Ok(Ok(())) => {
                            let _ = local.record(t.elapsed().as_micros() as u64);
                            confirmed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(_)) | Err(_) => {
                            issued.fetch_sub(1, Ordering::Relaxed);
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                latency.lock().expect("not poisoned").add(&local).expect("same bounds");
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let latency = latency.lock().expect("not poisoned").clone();
    Ok(PublishRun {
        confirmed: confirmed.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed,
        latency,
    })
}

async fn publish(c: &Common) -> Res<serde_json::Value> {
    setup(c).await?;
    let cpu = process_cpu();
    let run = publish_phase(c, c.producers, c.inflight, c.messages, c.duration).await?;
    let cpu = process_cpu().saturating_sub(cpu).as_secs_f64();
    let rate = run.confirmed as f64 / run.elapsed.as_secs_f64();
    Ok(json!({
        "peer": c.peer.name(),
        "workload": "publish",
        "producers": c.producers,
        "inflight_per_producer": c.inflight,
        "size_bytes": c.size,
        "confirmed": run.confirmed,
        "failed": run.failed,
        "seconds": run.elapsed.as_secs_f64(),
        "msgs_per_sec": rate,
        "mib_per_sec": rate * c.size as f64 / 1048576.0,
        "confirm_latency": summary(&run.latency),
        "client_cpu_seconds": cpu,
    }))
}

/// One consumer, `prefetch` unacknowledged at most, until `count` are acked
/// or `limit` passed. Returns the number acked.
async fn consume_phase(c: &Common, count: u64, limit: Duration) -> Res<u64> {
    let end = Instant::now() + limit;
    let mut acked = 0u64;
    match c.peer {
        Peer::Quorumq => {
            let client = quorumq_client(&c.addrs, 0)?;
            let options = quorumq_client::SubscribeOptions { prefetch: c.prefetch, consumer_timeout: None };
            let mut subscription = client.subscribe(&c.queue, options);
            // Acks go out in batches of what is buffered, several batches
            // in flight, while the next deliveries are taken.
            let acker = subscription.acker();
            let in_flight = Arc::new(tokio::sync::Semaphore::new(8));
            let done = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            let mut taken = 0u64;
            while taken < count {
                let Ok(first) = tokio::time::timeout_at(end.into(), subscription.next()).await else { break };
                let mut receipts = vec![first.map_err(|e| err("next")(&e))?.receipt];
                while subscription.buffered() > 0 && receipts.len() < c.prefetch as usize {
                    receipts.push(subscription.next().await.map_err(|e| err("next")(&e))?.receipt);
                }
                taken += receipts.len() as u64;
                let permit = in_flight.clone().acquire_owned().await.expect("open");
                let (acker, done) = (acker.clone(), done.clone());
                tasks.spawn(async move {
                    let n = receipts.len() as u64;
                    if let Ok(results) = acker.ack_batch(receipts).await {
                        done.fetch_add(results.iter().filter(|r| r.is_ok()).count() as u64, Ordering::Relaxed);
                    } else {
                        let _ = n;
                    }
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
            acked = done.load(Ordering::Relaxed);
            subscription.close().await;
        }
        Peer::Rabbitmq => {
            use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
            let (conn, channel) = rabbit_connect(&c.addrs, 0).await?;
            let prefetch = u16::try_from(c.prefetch).map_err(|_| "prefetch too large".to_string())?;
            channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| err("basic.qos")(&e))?;
            let mut consumer = channel
                .basic_consume(
                    c.queue.as_str().into(),
                    CONSUMER.into(),
                    BasicConsumeOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .map_err(|e| err("basic.consume")(&e))?;
            while acked < count {
                let Ok(next) = tokio::time::timeout_at(end.into(), consumer.next()).await else { break };
                let Some(delivery) = next else { break };
                let delivery = delivery.map_err(|e| err("delivery")(&e))?;
                delivery.ack(BasicAckOptions::default()).await.map_err(|e| err("basic.ack")(&e))?;
                acked += 1;
            }
            let _ = conn.close(200, "done".into()).await;
        }
        Peer::Nats => {
            use async_nats::jetstream::consumer::{AckPolicy, pull};
            let client = nats_connect(&c.addrs, 0).await?;
            let js = jetstream(client.clone());
            let stream = js.get_stream(&c.queue).await.map_err(|e| err("stream")(&e))?;
            let consumer = stream
                .create_consumer(pull::Config {
                    durable_name: Some(CONSUMER.to_string()),
                    ack_policy: AckPolicy::Explicit,
                    max_ack_pending: i64::from(c.prefetch),
                    ..Default::default()
                })
                .await
                .map_err(|e| err("consumer")(&e))?;
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(c.prefetch as usize)
                .messages()
                .await
                .map_err(|e| err("messages")(&e))?;
            while acked < count {
                let Ok(next) = tokio::time::timeout_at(end.into(), messages.next()).await else { break };
                let Some(message) = next else { break };
                let message = message.map_err(|e| err("message")(&e))?;
                message.ack().await.map_err(|e| err("ack")(&e))?;
                acked += 1;
            }
            let _ = client.flush().await;
            drop(messages);
            let _ = stream.delete_consumer(CONSUMER).await;
        }
    }
    Ok(acked)
}

async fn consume(c: &Common) -> Res<serde_json::Value> {
    setup(c).await?;
    let fill = publish_phase(c, 4, 256, c.messages, c.prefill_duration).await?;
    if fill.confirmed < c.messages {
        return Err(format!("pre-fill confirmed only {} of {}", fill.confirmed, c.messages));
    }
    let cpu = process_cpu();
    let started = Instant::now();
    let acked = consume_phase(c, c.messages, Duration::from_secs_f64(c.duration)).await?;
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu).as_secs_f64();
    Ok(json!({
        "peer": c.peer.name(),
        "workload": "consume",
        "prefetch": c.prefetch,
        "size_bytes": c.size,
        "prefilled": fill.confirmed,
        "prefill_msgs_per_sec": fill.confirmed as f64 / fill.elapsed.as_secs_f64(),
        "acked": acked,
        "seconds": elapsed.as_secs_f64(),
        "msgs_per_sec": acked as f64 / elapsed.as_secs_f64(),
        "client_cpu_seconds": cpu,
    }))
}

async fn failover(c: &Common) -> Res<serde_json::Value> {
    let pid = c.kill_pid.ok_or("failover needs --kill-pid")?;
    setup(c).await?;
    let body = Bytes::from(vec![b'x'; c.size]);
    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let before = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let first = Publisher::connect(c, 0).await?;
    let producer = {
        let (c, kill_at, before, errors) = (c.clone(), kill_at.clone(), before.clone(), errors.clone());
        tokio::spawn(async move {
            let mut publisher = Some(first);
            let mut reconnect_from = 0usize;
            loop {
                let Some(p) = publisher.clone() else {
                    reconnect_from += 1;
                    publisher = Publisher::connect(&c, reconnect_from).await.ok();
                    if publisher.is_none() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                };
                let t = Instant::now();
                let killed = *kill_at.lock().expect("not poisoned");
                match tokio::time::timeout(Duration::from_secs(5), p.publish(&body)).await {
                    Ok(Ok(())) => match killed {
                        Some(k) if t >= k => return Instant::now(),
                        Some(_) => {}
                        None => {
                            let _ = before.lock().expect("not poisoned").record(t.elapsed().as_micros() as u64);
                        }
                    },
                    Ok(Err(_)) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        // quorumq's client follows the leader itself; the
                        // others get a fresh connection, to the next node.
                        if c.peer != Peer::Quorumq {
                            publisher = None;
                        }
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(c.warmup)).await;
    let k = Instant::now();
    *kill_at.lock().expect("not poisoned") = Some(k);
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        producer.abort();
        return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
    }
    let outcome = tokio::time::timeout(Duration::from_secs_f64(c.timeout), producer).await;
    let recovered_ms = match outcome {
        Ok(Ok(at)) => Some(at.duration_since(k).as_secs_f64() * 1000.0),
        _ => None,
    };
    Ok(json!({
        "peer": c.peer.name(),
        "workload": "failover",
        "killed_pid": pid,
        "recovered_ms": recovered_ms,
        "timeout_s": c.timeout,
        "errors": errors.load(Ordering::Relaxed),
        "latency_before_kill": summary(&before.lock().expect("not poisoned")),
    }))
}

/// The stream leader's server name; `none` when the stream does not exist
/// (the JetStream API answered, so the meta layer is up). With
/// `--all-current`, an error unless both followers are current.
async fn nats_leader(c: &Common, all_current: bool) -> Res<String> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    let js = jetstream(nats_connect(&c.addrs, 0).await?);
    let mut stream = match js.get_stream(&c.queue).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok("none".to_string());
        }
        Err(e) => return Err(err("stream")(&e)),
    };
    let info = stream.info().await.map_err(|e| err("stream info")(&e))?;
    let cluster = info.cluster.as_ref().ok_or("no cluster info")?;
    let leader = cluster.leader.clone().ok_or("no leader")?;
    if all_current && (cluster.replicas.len() != 2 || cluster.replicas.iter().any(|r| !r.current)) {
        return Err("followers not current".to_string());
    }
    Ok(leader)
}

fn print(c: &Common, report: &serde_json::Value) {
    if c.json {
        println!("{report}");
        return;
    }
    let r = report;
    match r["workload"].as_str() {
        Some("publish") => println!(
            "{}: {} producers x {} in flight: {} confirmed ({} failed) in {:.1} s: {:.0} msgs/s; confirm p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            r["peer"].as_str().unwrap_or(""),
            r["producers"],
            r["inflight_per_producer"],
            r["confirmed"],
            r["failed"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["msgs_per_sec"].as_f64().unwrap_or(0.0),
            r["confirm_latency"]["p50_ms"],
            r["confirm_latency"]["p99_ms"],
            r["confirm_latency"]["p999_ms"],
            r["confirm_latency"]["max_ms"],
        ),
        Some("consume") => println!(
            "{}: consumed and acked {} (prefetch {}) in {:.1} s: {:.0} msgs/s",
            r["peer"].as_str().unwrap_or(""),
            r["acked"],
            r["prefetch"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["msgs_per_sec"].as_f64().unwrap_or(0.0),
        ),
        _ => println!("{r}"),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match &cli.cmd {
        Cmd::Publish(c) => publish(c).await.map(|r| print(c, &r)),
        Cmd::Consume(c) => consume(c).await.map(|r| print(c, &r)),
        Cmd::Failover(c) => failover(c).await.map(|r| print(c, &r)),
        Cmd::NatsLeader { common, all_current } => nats_leader(common, *all_current).await.map(|l| println!("{l}")),
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
