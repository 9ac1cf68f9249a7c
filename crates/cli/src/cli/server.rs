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

/// The server's flags. Every one can also be set in the `--config` file
/// (config_file.rs), with no code for it there; --id (or
/// --id-from-hostname), --listen, --data-dir and --peers are required, from
/// the command line, the environment or the file, which `run` checks.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Read settings from this TOML file: keys are the long flag names
    /// (`data_dir = "/var/lib/quorumq"`). Flags and environment variables
    /// override it.
    #[arg(long, env = "QUORUMQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id (a positive integer, listed in --peers). Required,
    /// unless --id-from-hostname.
    #[arg(long, env = "QUORUMQ_ID")]
    id: Option<u64>,
    /// Take the node id from the host name's trailing number plus one
    /// (`quorumq-0` is node 1): for Kubernetes StatefulSet pods.
    #[arg(long, env = "QUORUMQ_ID_FROM_HOSTNAME", conflicts_with = "id")]
    id_from_hostname: bool,
    /// Address to listen on for clients and peers. Required.
    #[arg(long, env = "QUORUMQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where this node keeps its log, state and snapshots. Required.
    #[arg(long, env = "QUORUMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Every node of the cluster, this one included: ID=HOST:PORT,...
    /// Nodes started with the same list form the cluster by themselves.
    /// Required.
    #[arg(long, env = "QUORUMQ_PEERS")]
    peers: Option<String>,
    /// Largest message body accepted, in bytes (at most 8 MiB).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: usize,
    /// How often the leader sends heartbeats.
    #[arg(long, value_parser = parse_duration, default_value = "30ms")]
    heartbeat_interval: Duration,
    /// A follower that hears no leader for MAX (the leader's lease) plus a
    /// random time in MIN..MAX starts an election. MIN is at least 3
    /// heartbeat intervals.
    #[arg(long, value_parser = parse_range, default_value = "100ms..200ms")]
    election_timeout: (Duration, Duration),
    /// Build a snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Memory for sled's page cache (sled holds the node's metadata keys;
    /// message bodies are in segment files read through the OS page cache):
    /// bytes, or with a unit: 64MiB, 256MB.
    #[arg(long, env = "QUORUMQ_STORAGE_CACHE", value_name = "BYTES", value_parser = quorumq_node::alarms::parse_bytes, default_value = "64MiB")]
    storage_cache: u64,
    /// Serve /metrics (Prometheus), /health and /ready over plain HTTP on
    /// this address (HOST:PORT, not the --listen one).
    #[arg(long, env = "QUORUMQ_HTTP", value_name = "HOST:PORT")]
    http: Option<SocketAddr>,
    /// Disk alarm: refuse sends (cluster-wide) while the data directory's
    /// filesystem has less free space than this. Bytes, or with a unit:
    /// 50MB, 512MiB, 1GiB. 0 turns the alarm off.
    #[arg(long, env = "QUORUMQ_DISK_FREE_MIN", value_name = "BYTES", value_parser = quorumq_node::alarms::parse_bytes, default_value = "50MB")]
    disk_free_min: u64,
    /// Memory alarm: refuse sends (cluster-wide) while this node's resident
    /// memory is above this. Bytes, or with a unit: 2GB, 1536MiB. Off unless
    /// given.
    #[arg(long, env = "QUORUMQ_MEMORY_MAX", value_name = "BYTES", value_parser = parse_memory_max)]
    memory_max: Option<u64>,
    /// Join an existing cluster instead of forming one: the node waits
    /// until the leader adds it (`quorumq cluster add ID HOST:PORT`).
    /// --peers must list this node's own address.
    #[arg(long, env = "QUORUMQ_JOIN")]
    join: bool,
    /// Fault-injection builds only: report log appends durable without
    /// flushing them. Loses acknowledged messages when every node dies at
    /// once; exists to prove that the test harness notices.
    #[arg(long, hide = true)]
    unsafe_ack_before_fsync: bool,
}

/// A required setting that nothing gave.
fn missing(flag: &str, env: &str) -> Failure {
    let key = flag.replace('-', "_");
    Failure::usage(format!("--{flag} is required (on the command line, in {env}, or as `{key}` in the --config file)"))
}

/// The node id of a StatefulSet pod: the trailing number of the host name's
/// first label, plus one (`quorumq-0` → 1, `quorumq-2.quorumq-headless` → 3).
fn id_from_hostname(hostname: &str) -> Result<u64, String> {
    let label = hostname.split('.').next().unwrap_or_default();
    let digits = &label[label.trim_end_matches(|c: char| c.is_ascii_digit()).len()..];
    let bad = |why: &str| format!("--id-from-hostname: cannot take a node id from the host name {hostname:?}: {why}");
    if digits.is_empty() {
        return Err(bad("it does not end in a number (a StatefulSet pod is named like quorumq-0)"));
    }
    let ordinal: u64 = digits.parse().map_err(|_| bad("its number is too large"))?;
    ordinal.checked_add(1).ok_or_else(|| bad("its number is too large"))
}

/// This machine's host name (in a Kubernetes pod, the pod's name).
fn hostname() -> Result<String, Failure> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(Failure::usage(format!(
            "--id-from-hostname: cannot read the host name: {}",
            std::io::Error::last_os_error()
        )));
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn parse_memory_max(s: &str) -> Result<u64, String> {
    match quorumq_node::alarms::parse_bytes(s)? {
        0 => Err("the memory limit must be more than 0 bytes".to_string()),
        bytes => Ok(bytes),
    }
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
    let id = match args.id {
        Some(id) => id,
        None if args.id_from_hostname => id_from_hostname(&hostname()?).map_err(Failure::usage)?,
        None => return Err(missing("id", "QUORUMQ_ID")),
    };
    let listen = args.listen.ok_or_else(|| missing("listen", "QUORUMQ_LISTEN"))?;
    let data_dir = args.data_dir.ok_or_else(|| missing("data-dir", "QUORUMQ_DATA_DIR"))?;
    let peers = args.peers.ok_or_else(|| missing("peers", "QUORUMQ_PEERS"))?;
    if let Some(file) = &args.config {
        tracing::info!(config = %file.display(), id, "settings read from the config file (flags and environment override it)");
    }
    let peers = parse_peers(&peers).map_err(Failure::usage)?;
    let mut config = Config::new(id, listen, data_dir, peers);
    config.message_bytes_max = args.max_message_bytes;
    config.heartbeat_interval_ms = args.heartbeat_interval.as_millis() as u64;
    config.election_timeout_min_ms = args.election_timeout.0.as_millis() as u64;
    config.election_timeout_max_ms = args.election_timeout.1.as_millis() as u64;
    config.snapshot_every_entries = args.snapshot_every;
    config.storage_cache_bytes = args.storage_cache;
    config.http_listen = args.http;
    config.alarm_limits = quorumq_node::alarms::AlarmLimits {
        disk_free_min_bytes: args.disk_free_min,
        memory_max_bytes: args.memory_max,
    };
    config.join = args.join;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A StatefulSet pod's ordinal gives its id; a host name without one,
    /// or with one too large, is refused with a reason.
    #[test]
    fn timing_defaults_are_the_nodes_own() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            server: ServerArgs,
        }
        let args = Wrapper::parse_from(["quorumq"]).server;
        let config = Config::new(1, "127.0.0.1:1".parse().unwrap(), "/tmp/x".into(), parse_peers("1=h:1").unwrap());
        assert_eq!(args.heartbeat_interval.as_millis() as u64, config.heartbeat_interval_ms);
        assert_eq!(args.election_timeout.0.as_millis() as u64, config.election_timeout_min_ms);
        assert_eq!(args.election_timeout.1.as_millis() as u64, config.election_timeout_max_ms);
    }

    #[test]
    fn ids_from_host_names() {
        assert_eq!(id_from_hostname("quorumq-0"), Ok(1));
        assert_eq!(id_from_hostname("quorumq-2.quorumq-headless.ns.svc.cluster.local"), Ok(3));
        assert_eq!(id_from_hostname("node17"), Ok(18));
        for bad in ["quorumq", "", "quorumq-0x", "q-99999999999999999999", "q-18446744073709551615"] {
            let e = id_from_hostname(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
