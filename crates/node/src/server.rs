//! Starting and stopping a node: storage, Raft, the gRPC server, and the
//! one-time formation of the cluster.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::SnapshotPolicy;
use quorumq_proto::admin as admin_pb;
use quorumq_proto::client as client_pb;
use quorumq_proto::raft as raft_pb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::limits;
use crate::log_store::LogStats;
use crate::log_store::LogStore;
use crate::network::Channels;
use crate::network::Network;
use crate::raft_service::Group;
use crate::raft_service::RaftService;
use crate::raft_service::Router;
use crate::service::ClusterService;
use crate::service::NodeCtx;
use crate::service::QueueService;
use crate::sm_store::StateMachineStore;
use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot use data directory {dir}: {reason}")]
    DataDir { dir: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("cannot serve HTTP (--http) on {addr}: {reason}")]
    HttpListen { addr: SocketAddr, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// A running node.
pub struct RunningNode {
    pub id: NodeId,
    pub local_addr: SocketAddr,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub log_stats: Arc<LogStats>,
    /// Where `/metrics`, `/health` and `/ready` are served, with `--http`.
    pub http_addr: Option<SocketAddr>,
    pub alarms: Arc<crate::alarms::Alarms>,
    db: sled::Db,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    bootstrap: JoinHandle<()>,
    ticker: JoinHandle<()>,
    /// Resource checks, peer status polls, the Raft event counter.
    observers: Vec<JoinHandle<()>>,
    stop_http: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
}

fn raft_config(config: &Config) -> Result<openraft::Config, StartError> {
    let raft_config = openraft::Config {
        cluster_name: "quorumq".to_string(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        // A node returning from a partition must not depose a healthy leader.
        enable_pre_vote: Some(true),
        max_payload_entries: limits::RAFT_PAYLOAD_ENTRIES_MAX,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        // Followers further behind than this get a snapshot instead of log.
        replication_lag_threshold: config.snapshot_every_entries * 2,
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 30_000,
        ..Default::default()
    };
    raft_config.validate().map_err(|e| StartError::Raft(e.to_string()))
}

/// Opens storage, starts Raft and serves the node's gRPC services on
/// `config.listen`. Returns once the node is serving; cluster formation
/// continues in the background.
pub async fn start(config: Config) -> Result<RunningNode, StartError> {
    config.validate()?;
    if config.unsafe_ack_before_fsync && !cfg!(feature = "fault-injection") {
        return Err(StartError::Raft(
            "unsafe_ack_before_fsync needs a build with the fault-injection feature".to_string(),
        ));
    }
    // Bound before anything starts, so that a taken port fails the start
    // cleanly.
    let http_listener = match config.http_listen {
        None => None,
        Some(addr) => {
            let error = |e: std::io::Error| StartError::HttpListen { addr, reason: e.to_string() };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
            let local = listener.local_addr().map_err(error)?;
            Some((listener, local))
        }
    };
    let dir_error = |reason: String| StartError::DataDir { dir: config.data_dir.display().to_string(), reason };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| dir_error(e.to_string()))?;
    let db_path = config.data_dir.join("db");
    let cache_bytes = config.storage_cache_bytes;
    let db = tokio::task::spawn_blocking(move || sled::Config::new().path(db_path).cache_capacity(cache_bytes).open())
        .await
        .map_err(|e| dir_error(e.to_string()))?
        .map_err(|e| dir_error(format!("{e} (is another node using it?)")))?;

    let log_dir = config.data_dir.join("log");
    crate::log_store::refuse_old_sled_log(&db, &log_dir).map_err(|e| dir_error(e.to_string()))?;
    let log = LogStore::open_with(&log_dir, QUEUES_GROUP, config.unsafe_ack_before_fsync)
        .map_err(|e| dir_error(format!("opening the Raft log: {e}")))?;
    let log_stats = log.stats();
    let sm_dir = config.data_dir.clone();
    let sm_db = db.clone();
    let sm = tokio::task::spawn_blocking(move || StateMachineStore::open(sm_db, QUEUES_GROUP, &sm_dir))
        .await
        .map_err(|e| dir_error(e.to_string()))?
        .map_err(|e| dir_error(format!("opening the state machine: {e}")))?;

    let channels = Channels::default();
    let network = Network { self_id: config.id, group: QUEUES_GROUP, channels: channels.clone() };
    let raft = Raft::new(config.id, Arc::new(raft_config(&config)?), network, log, sm.clone())
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen { addr: config.listen, reason: e.to_string() })?;
    let local_addr =
        listener.local_addr().map_err(|e| StartError::Listen { addr: config.listen, reason: e.to_string() })?;

    let peer_statuses = Arc::new(crate::peer_status::PeerStatuses::default());
    let alarms = Arc::new(crate::alarms::Alarms::new(
        config.id,
        config.data_dir.clone(),
        config.alarm_limits.clone(),
        peer_statuses.clone(),
    ));
    // Check once before serving: a node that starts short of disk or memory
    // refuses sends from its first request.
    let first_check = alarms.clone();
    tokio::task::spawn_blocking(move || first_check.check()).await.map_err(|e| StartError::Raft(e.to_string()))?;

    let ctx = Arc::new(NodeCtx {
        id: config.id,
        addr: config.advertised_addr().to_string(),
        raft: raft.clone(),
        sm: sm.clone(),
        message_bytes_max: config.message_bytes_max,
        push_consumers: Arc::default(),
        alarms: alarms.clone(),
        batcher: crate::batcher::Batcher::start(raft.clone()),
    });
    let router = Router::new(config.id, HashMap::from([(QUEUES_GROUP, Group { raft: raft.clone(), sm: sm.clone() })]));
    let queues = client_pb::queues_server::QueuesServer::new(QueueService::new(ctx.clone()))
        .max_decoding_message_size(limits::CLIENT_FRAME_BYTES_MAX)
        .max_encoding_message_size(limits::CLIENT_FRAME_BYTES_MAX);
    let cluster = admin_pb::cluster_server::ClusterServer::new(ClusterService::new(ctx.clone()));
    let raft_rpc = raft_pb::raft_server::RaftServer::new(RaftService::new(router))
        .max_decoding_message_size(limits::RAFT_FRAME_BYTES_MAX)
        .max_encoding_message_size(limits::RAFT_FRAME_BYTES_MAX);

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let grpc_serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let serving = grpc_serving.clone();
    let server = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(limits::PEER_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(limits::PEER_KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(limits::CLIENT_CONCURRENT_STREAMS_MAX)
            .add_service(queues)
            .add_service(cluster)
            .add_service(raft_rpc)
            // Without TCP_NODELAY on accepted sockets, Nagle's algorithm and
            // delayed ACKs add ~40 ms to small replies.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stop_rx.await;
                },
            )
            .await;
        // `/health` answers 503 from now on.
        serving.store(false, std::sync::atomic::Ordering::Relaxed);
        result
    });

    let events = Arc::new(crate::metrics::RaftEvents::default());
    let observers = vec![
        tokio::spawn(crate::alarms::run_checks(alarms.clone())),
        tokio::spawn(crate::peer_status::poll(config.id, raft.clone(), channels.clone(), peer_statuses.clone())),
        tokio::spawn(crate::metrics::watch_raft(raft.clone(), events.clone())),
        tokio::spawn(crate::leader_watch::run(raft.clone(), config.id)),
    ];
    let (stop_http, http, http_addr) = match http_listener {
        None => (None, None, None),
        Some((listener, http_addr)) => {
            let state = Arc::new(crate::http::HttpState {
                metrics: Arc::new(crate::metrics::MetricsSource {
                    id: config.id,
                    raft: raft.clone(),
                    sm: sm.clone(),
                    log_stats: log_stats.clone(),
                    alarms: alarms.clone(),
                    events,
                    data_dir: config.data_dir.clone(),
                    batch_stats: ctx.batcher.stats(),
                }),
                peers: peer_statuses,
                grpc_serving,
            });
            let (stop, stopped) = oneshot::channel();
            tracing::info!(%http_addr, "serving /metrics, /health and /ready over HTTP");
            (Some(stop), Some(crate::http::serve(listener, state, stopped)), Some(http_addr))
        }
    };

    let bootstrap = tokio::spawn(form_cluster(raft.clone(), config.clone(), channels));
    let ticker = tokio::spawn(tick(raft.clone(), sm.clone()));
    tracing::info!(id = config.id, %local_addr, peers = ?config.peers, "node serving");
    Ok(RunningNode {
        id: config.id,
        local_addr,
        raft,
        sm,
        log_stats,
        http_addr,
        alarms,
        db,
        stop_server: Some(stop_tx),
        server,
        bootstrap,
        ticker,
        observers,
        stop_http,
        http,
    })
}

impl RunningNode {
    /// Stops serving, stops Raft and flushes storage.
    pub async fn shutdown(mut self) {
        self.bootstrap.abort();
        self.ticker.abort();
        // A leader hands over first: clients then see a leader change, not
        // an election timeout.
        crate::membership::step_down_before_shutdown(&self.raft, limits::SHUTDOWN_HANDOVER_TIMEOUT).await;
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        for task in self.observers.drain(..) {
            task.abort();
        }
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        if let Some(http) = self.http.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.server).await;
        let db = self.db.clone();
        let _ = tokio::task::spawn_blocking(move || db.flush()).await;
        tracing::info!(id = self.id, "node stopped");
    }
}

/// Forms the cluster the first time its nodes start: exactly one node calls
/// openraft's `initialize` with the full `--peers` membership. A `--join`
/// node forms nothing: it waits for the leader to add it.
///
/// The rule: a node whose log is empty initialises the cluster if no peer it
/// can reach already belongs to one, and it is the lowest id among the nodes
/// it can reach and either the lowest id of all or the lowest has been
/// unreachable for `bootstrap_fallback`. Initialising twice with the same
/// membership is harmless (openraft elects one leader either way), so the
/// fallback only costs an extra election.
async fn form_cluster(raft: Raft, config: Config, channels: Channels) {
    let started = Instant::now();
    let lowest = *config.peers.keys().next().expect("peers is not empty");
    if config.join {
        if !matches!(raft.is_initialized().await, Ok(true)) {
            tracing::info!(
                id = config.id,
                addr = config.advertised_addr(),
                "joining: waiting to be added (quorumq cluster add {} {})",
                config.id,
                config.advertised_addr()
            );
        }
        return;
    }
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return,
        }
        let mut reachable = vec![config.id];
        let mut someone_initialized = false;
        let probes = config.peers.iter().filter(|(id, _)| **id != config.id).map(|(id, addr)| {
            let channels = channels.clone();
            let (id, addr) = (*id, addr.clone());
            async move {
                let channel = channels.get(&addr).ok()?;
                let mut client = admin_pb::cluster_client::ClusterClient::new(channel);
                let status = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.node_status(admin_pb::NodeStatusRequest {}),
                )
                .await
                .ok()?
                .ok()?;
                Some((id, status.into_inner()))
            }
        });
        for (id, status) in futures::future::join_all(probes).await.into_iter().flatten() {
            if status.id != id {
                tracing::warn!(expected = id, found = status.id, "a peer address answers as another node");
                continue;
            }
            reachable.push(id);
            someone_initialized |= status.initialized;
        }
        if someone_initialized {
            tracing::info!("the cluster exists; waiting to be replicated to");
            return;
        }
        let lowest_reachable = *reachable.iter().min().expect("self is reachable");
        if lowest_reachable == config.id && (config.id == lowest || started.elapsed() >= config.bootstrap_fallback) {
            let members: BTreeMap<NodeId, Node> =
                config.peers.iter().map(|(id, addr)| (*id, Node { addr: addr.clone() })).collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(peers = ?config.peers, "initialised the cluster"),
                Err(e) => tracing::info!(error = %e, "cluster already initialised"),
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// On the leader: proposes a Tick whenever an expiry is due, so that expired
/// messages are dead-lettered (or dropped) and remembered ids past their
/// deduplication window are forgotten, even in a queue nobody uses.
async fn tick(raft: Raft, sm: StateMachineStore) {
    let mut interval = tokio::time::interval(limits::TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if !raft.is_leader() {
            continue;
        }
        let now = crate::service::now_ms();
        let due = sm.read(|a| [a.state.next_due_ms(), a.state.next_dedup_prune_ms()].into_iter().flatten().min());
        if due.is_none_or(|due| due > now) {
            continue;
        }
        let request =
            quorumq_raft_state_machine::Request { now_ms: now, command: quorumq_raft_state_machine::Command::Tick };
        if let Err(e) = tokio::time::timeout(limits::WRITE_TIMEOUT_DEFAULT, raft.client_write(request)).await {
            tracing::debug!(error = %e, "tick not committed");
        }
    }
}
