//! A node's configuration, checked as a whole before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quorumq_raft_state_machine::limits as sm;

use crate::types::NodeId;

/// Default leader heartbeat interval: a third of the shortest election
/// timeout, and cheap (about 70 small messages a second per cluster).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 30;
/// Default election timeout range. A follower stands for election when it
/// has heard nothing from the leader for the leader's lease (openraft sets
/// it to the maximum) plus a random time in this range: 300–400 ms for a
/// silent leader (network cut, host down). A leader whose process died is
/// recognised by its refused port and its lease dropped
/// (`leader_watch.rs`), so writes resume about 0.2 s after it dies
/// (`quorumq bench-failover`). Shorter timeouts made a saturated 2-core
/// machine elect without need (a busy leader can go 150 ms without being
/// heard); raise them on networks or machines with longer pauses.
pub const ELECTION_TIMEOUT_MIN_MS_DEFAULT: u64 = 100;
pub const ELECTION_TIMEOUT_MAX_MS_DEFAULT: u64 = 200;

/// Default bound on sled's page cache: 64 MiB.
pub const STORAGE_CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Where this node listens for clients and peers.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Every voter of the initial cluster, this node included: id → the
    /// address the others reach it at.
    pub peers: BTreeMap<NodeId, String>,
    /// Largest message body a Send may carry (leader-side check).
    pub message_bytes_max: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Bound on sled's page cache (the `messages` and `sm` trees). sled's
    /// own default is 1 GiB, which a node with a large backlog fills with
    /// message bodies it rarely reads again.
    pub storage_cache_bytes: u64,
    /// If the lowest-id peer cannot be reached for this long while nobody
    /// has initialised the cluster, the lowest reachable node does it.
    pub bootstrap_fallback: Duration,
    /// A node that joins an existing cluster (`quorumq cluster add`): it
    /// never initialises a cluster itself and waits to be added.
    pub join: bool,
    /// Where to serve `/metrics`, `/health` and `/ready` over plain HTTP
    /// (`http.rs`); not served when `None`.
    pub http_listen: Option<SocketAddr>,
    /// Resource alarms (`alarms.rs`): sends are refused while the data
    /// directory's filesystem has less free space than the minimum, or the
    /// process's resident memory is above the maximum, on any voter.
    pub alarm_limits: crate::alarms::AlarmLimits,
    /// Deliberately broken durability for the fault-injection harness: the
    /// log reports appends persisted without flushing them. Never for real
    /// use; the server refuses it unless built with the `fault-injection`
    /// feature.
    pub unsafe_ack_before_fsync: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id {0} is not in --peers")]
    IdNotInPeers(NodeId),
    #[error("node ids start at 1 (got 0)")]
    ZeroId,
    #[error("--peers is empty")]
    NoPeers,
    #[error("--peers names {0} nodes; a cluster has at most 7")]
    TooManyPeers(usize),
    #[error("invalid --peers entry {entry:?}: {reason}")]
    BadPeer { entry: String, reason: String },
    #[error("the message size limit must be between 1 and {max} bytes (got {got})")]
    MessageLimit { got: usize, max: usize },
    #[error("timing: {0}")]
    Timing(String),
    #[error("--http {0} is the gRPC address too; give the HTTP endpoint its own port")]
    HttpSameAsListen(SocketAddr),
    #[error("--memory-max must be more than 0 bytes")]
    MemoryMaxZero,
}

impl Config {
    /// A configuration with default limits and timings.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf, peers: BTreeMap<NodeId, String>) -> Config {
        Config {
            id,
            listen,
            data_dir,
            peers,
            message_bytes_max: sm::MESSAGE_BYTES_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            election_timeout_min_ms: ELECTION_TIMEOUT_MIN_MS_DEFAULT,
            election_timeout_max_ms: ELECTION_TIMEOUT_MAX_MS_DEFAULT,
            snapshot_every_entries: 20_000,
            storage_cache_bytes: STORAGE_CACHE_BYTES_DEFAULT,
            bootstrap_fallback: Duration::from_secs(10),
            join: false,
            http_listen: None,
            alarm_limits: crate::alarms::AlarmLimits::default(),
            unsafe_ack_before_fsync: false,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.peers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        if self.peers.len() > 7 {
            return Err(ConfigError::TooManyPeers(self.peers.len()));
        }
        if !self.peers.contains_key(&self.id) {
            return Err(ConfigError::IdNotInPeers(self.id));
        }
        if self.message_bytes_max == 0 || self.message_bytes_max > sm::MESSAGE_BYTES_HARD_MAX {
            return Err(ConfigError::MessageLimit { got: self.message_bytes_max, max: sm::MESSAGE_BYTES_HARD_MAX });
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::Timing("the heartbeat interval must be positive".into()));
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_interval_ms {
            return Err(ConfigError::Timing(format!(
                "the election timeout ({} ms) must be at least 3 heartbeat intervals ({} ms)",
                self.election_timeout_min_ms,
                3 * self.heartbeat_interval_ms
            )));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigError::Timing("the election timeout range is empty".into()));
        }
        if self.snapshot_every_entries < 100 {
            return Err(ConfigError::Timing("snapshots must be at least 100 entries apart".into()));
        }
        if let Some(http) = self.http_listen
            && http.port() != 0
            && http == self.listen
        {
            return Err(ConfigError::HttpSameAsListen(http));
        }
        if self.alarm_limits.memory_max_bytes == Some(0) {
            return Err(ConfigError::MemoryMaxZero);
        }
        Ok(())
    }

    /// The address other nodes and clients reach this node at.
    pub fn advertised_addr(&self) -> &str {
        self.peers.get(&self.id).map(String::as_str).unwrap_or_default()
    }
}

/// Parses `1=host:port,2=host:port,…`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |reason: &str| ConfigError::BadPeer { entry: entry.to_string(), reason: reason.to_string() };
        let (id, addr) = entry.split_once('=').ok_or_else(|| bad("expected ID=HOST:PORT"))?;
        let id: NodeId = id.trim().parse().map_err(|_| bad("the id is not a number"))?;
        if id == 0 {
            return Err(bad("node ids start at 1"));
        }
        let addr = addr.trim();
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("the address has no port"))?;
        if host.is_empty() {
            return Err(bad("the address has no host"));
        }
        port.parse::<u16>().map_err(|_| bad("the port is not a number from 0 to 65535"))?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(bad("this id appears twice"));
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::NoPeers);
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peer lists parse, and each kind of malformed entry is refused with a
    /// reason.
    #[test]
    fn parse_peers_accepts_and_rejects() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=localhost:7002,3=[::1]:7003").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&3], "[::1]:7003");
        for bad in ["", "1", "x=1.2.3.4:5", "0=h:1", "1=h", "1=:5", "1=h:99999", "1=h:1,1=h:2"] {
            assert!(parse_peers(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// A configuration whose own id is missing from its peers, or whose
    /// limits or timings make no sense, is refused before start.
    #[test]
    fn validate_refuses_inconsistent_config() {
        let peers = parse_peers("1=h:1,2=h:2,3=h:3").unwrap();
        let ok = Config::new(1, "127.0.0.1:1".parse().unwrap(), "/tmp/x".into(), peers.clone());
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Config { id: 4, ..ok.clone() }.validate(), Err(ConfigError::IdNotInPeers(4)));
        assert!(Config { message_bytes_max: 0, ..ok.clone() }.validate().is_err());
        assert!(Config { message_bytes_max: sm::MESSAGE_BYTES_HARD_MAX + 1, ..ok.clone() }.validate().is_err());
        // Under 3 heartbeats, and an empty range.
        let slow_heartbeat = Config { heartbeat_interval_ms: 20, ..ok.clone() };
        assert!(Config { election_timeout_min_ms: 59, ..slow_heartbeat.clone() }.validate().is_err());
        assert_eq!(Config { election_timeout_min_ms: 60, ..slow_heartbeat }.validate(), Ok(()));
        assert!(Config { election_timeout_max_ms: ok.election_timeout_min_ms, ..ok.clone() }.validate().is_err());
        assert!(Config { heartbeat_interval_ms: 0, ..ok.clone() }.validate().is_err());
        let same = Config { http_listen: Some(ok.listen), ..ok.clone() };
        assert_eq!(same.validate(), Err(ConfigError::HttpSameAsListen(ok.listen)));
        assert_eq!(Config { http_listen: Some("127.0.0.1:2".parse().unwrap()), ..ok.clone() }.validate(), Ok(()));
        let no_memory = crate::alarms::AlarmLimits { memory_max_bytes: Some(0), ..Default::default() };
        assert_eq!(Config { alarm_limits: no_memory, ..ok.clone() }.validate(), Err(ConfigError::MemoryMaxZero));
    }
}
