//! `quorumq bench`: producers (and optionally consumers) against a cluster,
//! with confirm-latency histograms. `--local N` starts a local cluster of N
//! nodes for the run, so that a figure can be reproduced with one command.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use quorumq_client::Client;
use quorumq_client::ClientConfig;
use quorumq_client::OutgoingMessage;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use serde_json::json;
use tokio::sync::Mutex;

use super::Failure;
use super::client_cmds::Output;
use crate::local_cluster::ClusterOptions;
use crate::local_cluster::LocalCluster;
use crate::parse_duration;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Start a local cluster of this many nodes for the run (ignores --cluster).
    #[arg(long)]
    local: Option<usize>,
    /// Queue to use (created if missing, purged first).
    #[arg(long, default_value = "bench")]
    queue: String,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Sends each producer keeps in flight (each waits for its confirm).
    #[arg(long, default_value_t = 1)]
    inflight: u32,
    /// Messages per Send call.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Stop after this many messages have been confirmed...
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// ...or after this long, whichever comes first.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Concurrent consumers receiving and acking while producers run (then
    /// draining what is left).
    #[arg(long, default_value_t = 0)]
    consumers: u32,
    /// Messages per Receive (and per Ack) for consumers.
    #[arg(long, default_value_t = 100)]
    consume_batch: u32,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros_summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// CPU time (user + system) this process has used.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a rusage into the pointer we give it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: rc == 0, so the struct was initialised.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

pub async fn run(cluster_seeds: &[String], timeout: Duration, out: Output, args: BenchArgs) -> Result<(), Failure> {
    if args.producers == 0 || args.inflight == 0 || args.batch == 0 || args.batch > 1000 {
        return Err(Failure::usage("--producers and --inflight must be positive, --batch 1 to 1000"));
    }
    let mut local = None;
    let seeds = match args.local {
        Some(n) => {
            let binary = std::env::current_exe()?;
            let mut options = ClusterOptions::new(binary, n);
            options.default_log = "warn".to_string();
            let mut cluster = LocalCluster::new(options)?;
            cluster.start_all()?;
            let seeds = cluster.addresses();
            local = Some(cluster);
            seeds
        }
        None => cluster_seeds.to_vec(),
    };
    let mut config = ClientConfig::new(seeds.clone());
    config.deadline = timeout.max(Duration::from_secs(30));
    let client = Client::new(config).map_err(|e| Failure::from(e.message()))?;
    client.create_queue(&args.queue, QueueOptions::default()).await.map_err(|e| Failure::from(e.message()))?;
    client.purge_queue(&args.queue).await.map_err(|e| Failure::from(e.message()))?;

    let body = Bytes::from(vec![b'x'; args.size]);
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    let confirm_latency = Arc::new(Mutex::new(histogram()));
    let e2e_latency = Arc::new(Mutex::new(histogram()));
    let progress = if out.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(args.messages) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} confirmed ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let cpu_before = process_cpu();
    let started = Instant::now();
    let end = started + args.duration;

    let mut senders = Vec::new();
    for _ in 0..args.producers * args.inflight {
        let client = client.clone();
        let (queue, body) = (args.queue.clone(), body.clone());
        let (confirmed, failed, latency, progress) =
            (confirmed.clone(), failed.clone(), confirm_latency.clone(), progress.clone());
        let (limit, batch) = (args.messages, args.batch as u64);
        senders.push(tokio::spawn(async move {
            let mut local = histogram();
            while Instant::now() < end && confirmed.load(Ordering::Relaxed) < limit {
                let t = Instant::now();
                // One message: `send`, which shares calls with the other
                // producers' sends in flight, as an application's would.
                let sent = if batch == 1 {
                    client.send(&queue, body.clone()).await.map(|receipt| vec![Ok(receipt)])
                } else {
                    let messages = (0..batch).map(|_| OutgoingMessage::new(body.clone())).collect();
                    client.send_batch(&queue, messages).await
                };
                match sent {
                    Ok(results) => {
                        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                        let _ = local.record(t.elapsed().as_micros() as u64);
                        confirmed.fetch_add(ok, Ordering::Relaxed);
                        failed.fetch_add(batch - ok, Ordering::Relaxed);
                        progress.inc(ok);
                    }
                    Err(_) => {
                        failed.fetch_add(batch, Ordering::Relaxed);
                    }
                }
            }
            latency.lock().await.add(&local).expect("same bounds");
        }));
    }
    let mut receivers = Vec::new();
    for _ in 0..args.consumers {
        let client = client.clone();
        let queue = args.queue.clone();
        let (consumed, producing, confirmed, latency) =
            (consumed.clone(), producing.clone(), confirmed.clone(), e2e_latency.clone());
        let batch = args.consume_batch;
        receivers.push(tokio::spawn(async move {
            let mut local = histogram();
            loop {
                let options =
                    ReceiveOptions { max_messages: batch, wait: Duration::from_millis(500), visibility_timeout: None };
                let Ok(messages) = client.receive(&queue, options).await else { continue };
                if messages.is_empty() {
                    if !producing.load(Ordering::Relaxed)
                        && consumed.load(Ordering::Relaxed) >= confirmed.load(Ordering::Relaxed)
                    {
                        break;
                    }
                    continue;
                }
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                for m in &messages {
                    let _ = local.record(now_ms.saturating_sub(m.sent_at_ms).max(1) * 1000);
                }
                if client.ack_batch(&queue, messages.iter().map(|m| m.receipt.clone())).await.is_ok() {
                    consumed.fetch_add(messages.len() as u64, Ordering::Relaxed);
                }
            }
            latency.lock().await.add(&local).expect("same bounds");
        }));
    }
    for s in senders {
        let _ = s.await;
    }
    let produce_elapsed = started.elapsed();
    producing.store(false, Ordering::Relaxed);
    progress.finish_and_clear();
    for r in receivers {
        let _ = r.await;
    }
    let total_elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    if let Some(mut cluster) = local {
        cluster.stop_all(Duration::from_secs(10))?;
    }

    let confirmed = confirmed.load(Ordering::Relaxed);
    let consumed = consumed.load(Ordering::Relaxed);
    let send_rate = confirmed as f64 / produce_elapsed.as_secs_f64();
    let confirm = confirm_latency.lock().await.clone();
    let e2e = e2e_latency.lock().await.clone();
    let report = json!({
        "nodes": args.local.map_or(seeds.len(), |n| n),
        "producers": args.producers,
        "inflight_per_producer": args.inflight,
        "batch": args.batch,
        "size_bytes": args.size,
        "confirmed": confirmed,
        "failed": failed.load(Ordering::Relaxed),
        "produce_seconds": produce_elapsed.as_secs_f64(),
        "send_msgs_per_sec": send_rate,
        "send_mib_per_sec": send_rate * args.size as f64 / (1024.0 * 1024.0),
        "confirm_latency": micros_summary(&confirm),
        "consumers": args.consumers,
        "consumed": consumed,
        "consume_msgs_per_sec": if args.consumers > 0 { consumed as f64 / total_elapsed.as_secs_f64() } else { 0.0 },
        "end_to_end_latency": if args.consumers > 0 { micros_summary(&e2e) } else { serde_json::Value::Null },
        "client_cpu_seconds": cpu.as_secs_f64(),
        "client_cpu_per_wall": cpu.as_secs_f64() / total_elapsed.as_secs_f64(),
    });
    if out.json {
        println!("{report}");
    } else {
        let c = &report["confirm_latency"];
        println!(
            "sent {confirmed} x {} B in {:.1} s: {:.0} msgs/s ({:.1} MiB/s); confirm latency p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            args.size,
            produce_elapsed.as_secs_f64(),
            send_rate,
            report["send_mib_per_sec"].as_f64().unwrap_or(0.0),
            c["p50_ms"],
            c["p99_ms"],
            c["p999_ms"],
            c["max_ms"]
        );
        if args.consumers > 0 {
            let e = &report["end_to_end_latency"];
            println!(
                "consumed {consumed}: {:.0} msgs/s; end-to-end p50 {} ms, p99 {} ms",
                report["consume_msgs_per_sec"].as_f64().unwrap_or(0.0),
                e["p50_ms"],
                e["p99_ms"]
            );
        }
        println!(
            "client CPU {:.1} s ({:.0}% of one core)",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / total_elapsed.as_secs_f64()
        );
    }
    if failed.load(Ordering::Relaxed) > 0 && !out.json {
        eprintln!("warning: {} sends failed", failed.load(Ordering::Relaxed));
    }
    Ok(())
}
