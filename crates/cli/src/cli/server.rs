//! `quorumq server`: one node, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::parse_duration;
use clap::Args;
use quorumq_node::config::Config;
use quorumq_node::config::parse_peers;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;

use super::Failure;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This node's id (a positive integer, listed in --peers).
    #[arg(long, env = "QUORUMQ_ID")]
    id: u64,
    /// Address to listen on for clients and peers.
    #[arg(long, env = "QUORUMQ_LISTEN")]
    listen: SocketAddr,
    /// Where this node keeps its log, state and snapshots.
    #[arg(long, env = "QUORUMQ_DATA_DIR")]
    data_dir: PathBuf,
    /// Every node of the cluster, this one included: ID=HOST:PORT,...
    /// Nodes started with the same list form the cluster by themselves.
    #[arg(long, env = "QUORUMQ_PEERS")]
    peers: String,
    /// Largest message body accepted, in bytes (at most 8 MiB).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: usize,
    /// How often the leader sends heartbeats.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range
    /// (MIN..MAX) starts an election.
    #[arg(long, value_parser = parse_range, default_value = "300ms..600ms")]
    election_timeout: (Duration, Duration),
    /// Build a snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Fault-injection builds only: report log appends durable without
    /// flushing them. Loses acknowledged messages when every node dies at
    /// once; exists to prove that the test harness notices.
    #[arg(long, hide = true)]
    unsafe_ack_before_fsync: bool,
}

fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = s.split_once("..").ok_or_else(|| format!("expected MIN..MAX, got {s:?}"))?;
    Ok((parse_duration(min)?, parse_duration(max)?))
}

pub async fn run(args: ServerArgs) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    let peers = parse_peers(&args.peers).map_err(Failure::usage)?;
    let mut config = Config::new(args.id, args.listen, args.data_dir, peers);
    config.message_bytes_max = args.max_message_bytes;
    config.heartbeat_interval_ms = args.heartbeat_interval.as_millis() as u64;
    config.election_timeout_min_ms = args.election_timeout.0.as_millis() as u64;
    config.election_timeout_max_ms = args.election_timeout.1.as_millis() as u64;
    config.snapshot_every_entries = args.snapshot_every;
    config.unsafe_ack_before_fsync = args.unsafe_ack_before_fsync;
    config.validate().map_err(Failure::usage)?;
    let node = quorumq_node::server::start(config).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    node.shutdown().await;
    Ok(())
}
