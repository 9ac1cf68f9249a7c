//! The node's Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Nothing is kept twice: each scrape reads openraft's metrics, the applied
//! queue state, the log store's counters and histograms, the alarms and the
//! process's resources as they are at that moment ([`Scrape::gather`]), then
//! encodes them ([`render`]). The only state of this module is what cannot
//! be read later: the count of term changes and of times this node became
//! leader ([`RaftEvents`]).
//!
//! Every series is named `quorumq_…`; docs/operations-metrics.md lists them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeGaugeValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use quorumq_raft_state_machine::QueueInfo;

use crate::alarms::AlarmKind;
use crate::alarms::Alarms;
use crate::log_store::LogStats;
use crate::service::role_name;
use crate::sm_store::StateMachineStore;
use crate::types::*;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Raft events counted as they happen (openraft's metrics show only the
/// current state).
#[derive(Debug, Default)]
pub struct RaftEvents {
    /// Term changes seen, counted by how far the term moved.
    pub term_changes: AtomicU64,
    /// Times this node became leader.
    pub became_leader: AtomicU64,
}

/// Counts term changes and leaderships of this node until Raft stops.
pub async fn watch_raft(raft: Raft, events: Arc<RaftEvents>) {
    let mut rx = raft.server_metrics();
    let (mut term, mut leading) = {
        let m = rx.borrow_watched();
        (m.vote.leader_id().term, (m.state == ServerState::Leader).then_some(m.vote.leader_id().term))
    };
    if leading.is_some() {
        events.became_leader.fetch_add(1, Ordering::Relaxed);
    }
    while rx.changed().await.is_ok() {
        let (now_term, state) = {
            let m = rx.borrow_watched();
            (m.vote.leader_id().term, m.state)
        };
        if now_term > term {
            events.term_changes.fetch_add(now_term - term, Ordering::Relaxed);
            term = now_term;
        }
        if state == ServerState::Leader {
            if leading != Some(now_term) {
                events.became_leader.fetch_add(1, Ordering::Relaxed);
                leading = Some(now_term);
            }
        } else {
            leading = None;
        }
    }
}

/// Where a scrape reads from.
pub struct MetricsSource {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub log_stats: Arc<LogStats>,
    pub alarms: Arc<Alarms>,
    pub events: Arc<RaftEvents>,
    pub data_dir: PathBuf,
    pub batch_stats: Arc<crate::batcher::BatchStats>,
}

/// This node's Raft state as one scrape sees it.
#[derive(Clone, Debug, Default)]
pub struct RaftView {
    pub id: NodeId,
    pub term: u64,
    /// As the admin API spells it: "leader", "follower", …
    pub role: &'static str,
    pub leader_id: Option<NodeId>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub voters: u64,
    /// On the leader: the last log index each other member is known to
    /// hold (0 when not known yet).
    pub matched: BTreeMap<NodeId, u64>,
    /// On the leader: seconds since each other member last acknowledged a
    /// heartbeat or append (members that never did are left out).
    pub heartbeat_age_seconds: BTreeMap<NodeId, f64>,
    /// On the leader: seconds since a quorum last acknowledged it.
    pub quorum_ack_age_seconds: Option<f64>,
    pub term_changes_total: u64,
    pub became_leader_total: u64,
}

/// The alarms as one scrape sees them.
#[derive(Clone, Debug, Default)]
pub struct AlarmView {
    /// This node's alarms that are on.
    pub local: Vec<AlarmKind>,
    /// Other voters' alarms, by node, from their recent status answers.
    pub voters: BTreeMap<NodeId, Vec<AlarmKind>>,
    pub sends_blocked: bool,
    pub disk_free_min_bytes: u64,
    pub memory_max_bytes: Option<u64>,
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub raft: RaftView,
    /// Queue state as applied on this node, and the time to age it with.
    pub queues: Vec<QueueInfo>,
    pub now_ms: u64,
    pub snapshot_bytes: u64,
    pub body_store_bytes: u64,
    pub remembered_ids: u64,
    pub resident_memory_bytes: Option<u64>,
    pub data_dir_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub alarms: AlarmView,
    /// The group commit's histograms, when known.
    pub batch: Option<crate::batcher::BatchStats>,
    pub checkpoints_written: u64,
    /// Checkpoint captures on the apply path, when known.
    pub checkpoint_capture_seconds: Option<Histogram>,
}

impl Scrape {
    /// Reads everything now. Blocking: it walks the data directory.
    pub fn gather(source: &MetricsSource) -> Scrape {
        let m = source.raft.metrics().borrow_watched().clone();
        let self_id = source.id;
        let last_log_index = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let raft = RaftView {
            id: self_id,
            term: m.current_term,
            role: role_name(m.state),
            leader_id: m.current_leader,
            last_log_index,
            committed_index: m.local_committed.as_ref().map_or(0, |id| id.index()),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index()),
            snapshot_index: m.snapshot.as_ref().map_or(0, |id| id.index()),
            purged_index: m.purged.as_ref().map_or(0, |id| id.index()),
            voters: membership.voter_ids().count() as u64,
            matched: m
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self_id)
                .map(|(id, matched)| (*id, matched.as_ref().map_or(0, |l| l.index())))
                .collect(),
            heartbeat_age_seconds: m
                .heartbeat
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self_id)
                .filter_map(|(id, at)| Some((*id, openraft::Instant::elapsed(&**at.as_ref()?).as_secs_f64())))
                .collect(),
            quorum_ack_age_seconds: m
                .last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t).as_secs_f64()),
            term_changes_total: source.events.term_changes.load(Ordering::Relaxed),
            became_leader_total: source.events.became_leader.load(Ordering::Relaxed),
        };
        let now_ms = crate::service::now_ms();
        let (queues, state_now, remembered_ids) = source.sm.read(|a| {
            let now = now_ms.max(a.state.now_ms());
            (a.state.list_queues(now), now, a.state.remembered_ids())
        });
        let data_dir = &source.data_dir;
        let sample = crate::alarms::ResourceSample::take(data_dir);
        let limits = source.alarms.limits();
        let alarms = AlarmView {
            local: source.alarms.local().iter().map(|a| a.kind).collect(),
            voters: source
                .alarms
                .voter_alarms()
                .into_iter()
                .map(|(id, alarms)| (id, alarms.iter().filter_map(|a| AlarmKind::of_wire(a)).collect()))
                .collect(),
            sends_blocked: source.alarms.send_refusal().is_some(),
            disk_free_min_bytes: limits.disk_free_min_bytes,
            memory_max_bytes: limits.memory_max_bytes,
        };
        Scrape {
            raft,
            queues,
            now_ms: state_now,
            snapshot_bytes: source.sm.snapshot_bytes(),
            body_store_bytes: source.sm.body_bytes(),
            remembered_ids,
            resident_memory_bytes: sample.resident_memory_bytes,
            data_dir_bytes: crate::alarms::dir_disk_bytes(data_dir),
            disk_free_bytes: sample.disk_free_bytes,
            disk_total_bytes: sample.disk_total_bytes,
            alarms,
            batch: Some((*source.batch_stats).clone()),
            checkpoints_written: source.sm.checkpoints_written(),
            checkpoint_capture_seconds: Some(source.sm.checkpoint_capture_seconds()),
        }
    }
}

/// Encodes a scrape and the log store's histograms as OpenMetrics text.
pub fn render(scrape: Scrape, log_stats: Arc<LogStats>) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("quorumq");
    registry.register_collector(Box::new(ScrapeCollector { scrape, log_stats }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct ScrapeCollector {
    scrape: Scrape,
    log_stats: Arc<LogStats>,
}

fn gauge<N: EncodeGaugeValue>(e: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauges<L: EncodeLabelSet, N: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.scrape;
        let r = &s.raft;
        let e = &mut e;

        // Raft.
        gauge(e, "node_id", "This node's id.", r.id)?;
        gauge(e, "raft_term", "Current Raft term.", r.term)?;
        gauges(
            e,
            "raft_role",
            "1 for this node's current Raft role, 0 for the others.",
            ROLES.map(|role| ([("role", role)], i64::from(r.role == role))),
        )?;
        gauge(e, "is_leader", "1 while this node is the leader, else 0.", i64::from(r.role == "leader"))?;
        gauge(
            e,
            "raft_leader_id",
            "Id of the leader this node knows, 0 when it knows none.",
            r.leader_id.unwrap_or(0),
        )?;
        gauge(e, "raft_voters", "Voters in the membership this node knows.", r.voters)?;
        gauge(e, "raft_last_log_index", "Index of the last entry in this node's log.", r.last_log_index)?;
        gauge(e, "raft_committed_index", "Highest log index this node knows to be committed.", r.committed_index)?;
        gauge(e, "raft_applied_index", "Highest log index applied to this node's queues.", r.applied_index)?;
        gauge(e, "raft_snapshot_index", "Last log index covered by this node's latest snapshot.", r.snapshot_index)?;
        gauge(e, "raft_purged_index", "Highest log index purged from this node's log.", r.purged_index)?;
        gauges(
            e,
            "raft_replication_lag_entries",
            "On the leader: entries of the leader's log each other member is not known to hold \
             (leader's last log index minus the member's matched index).",
            r.matched
                .iter()
                .map(|(id, matched)| ([("peer", id.to_string())], r.last_log_index.saturating_sub(*matched))),
        )?;
        gauges(
            e,
            "raft_replication_matched_index",
            "On the leader: last log index each other member is known to hold.",
            r.matched.iter().map(|(id, matched)| ([("peer", id.to_string())], *matched)),
        )?;
        gauges(
            e,
            "raft_heartbeat_age_seconds",
            "On the leader: seconds since each other member last acknowledged a heartbeat or append.",
            r.heartbeat_age_seconds.iter().map(|(id, age)| ([("peer", id.to_string())], *age)),
        )?;
        if let Some(age) = r.quorum_ack_age_seconds {
            gauge(
                e,
                "raft_quorum_ack_age_seconds",
                "On the leader: seconds since a quorum last acknowledged it.",
                age,
            )?;
        }
        counter(
            e,
            "raft_term_changes",
            "Term changes this node has seen since it started, counted by how far the term moved: \
             each new term is one election (started by any node).",
            r.term_changes_total,
        )?;
        counter(e, "raft_became_leader", "Times this node became leader since it started.", r.became_leader_total)?;

        // Log store and snapshots.
        let log = &self.log_stats;
        counter(e, "log_appends", "Log appends (one storage write each).", log.appends.load(Ordering::Relaxed))?;
        counter(e, "log_entries_appended", "Log entries appended.", log.entries_appended.load(Ordering::Relaxed))?;
        counter(e, "log_flushes", "Flushes (fsyncs) of the log's appends.", log.flushes.load(Ordering::Relaxed))?;
        log.flush_seconds.encode(e.encode_descriptor(
            "log_flush_seconds",
            "Duration of each flush (fsync) that makes appended log entries durable.",
            None,
            MetricType::Histogram,
        )?)?;
        log.append_seconds.encode(e.encode_descriptor(
            "log_append_seconds",
            "Time from a log append to the flush that made it durable (write, wait for the flusher, fsync).",
            None,
            MetricType::Histogram,
        )?)?;
        log.flush_entries.encode(e.encode_descriptor(
            "log_flush_entries",
            "Log entries made durable by each flush (group commit).",
            None,
            MetricType::Histogram,
        )?)?;
        if let Some(batch) = &s.batch {
            batch.entry_commands.encode(e.encode_descriptor(
                "raft_entry_commands",
                "Client commands in each Raft entry this node proposed (group commit; 1: proposed alone).",
                None,
                MetricType::Histogram,
            )?)?;
            batch.wait_seconds.encode(e.encode_descriptor(
                "raft_entry_wait_seconds",
                "Seconds the oldest client command of each entry waited for one of the entries in flight to finish.",
                None,
                MetricType::Histogram,
            )?)?;
            batch.entry_seconds.encode(e.encode_descriptor(
                "raft_entry_seconds",
                "Seconds from proposing each entry to its outcome (committed by a majority and applied here).",
                None,
                MetricType::Histogram,
            )?)?;
        }
        gauge(
            e,
            "snapshot_bytes",
            "Size of this node's current snapshot file (last built, installed or loaded), 0 when none.",
            s.snapshot_bytes,
        )?;
        counter(
            e,
            "checkpoints_written",
            "Checkpoints (queue state and body index, no bodies) written since this node started.",
            s.checkpoints_written,
        )?;
        if let Some(capture) = &s.checkpoint_capture_seconds {
            capture.encode(e.encode_descriptor(
                "checkpoint_capture_seconds",
                "Seconds the state machine spent capturing each checkpoint (encoding the state, copying the body index); applies wait meanwhile.",
                None,
                MetricType::Histogram,
            )?)?;
        }
        gauge(
            e,
            "body_store_bytes",
            "Bytes of the message body segment files, retired ones waiting for a checkpoint included.",
            s.body_store_bytes,
        )?;
        gauge(
            e,
            "remembered_ids",
            "Message ids this node's state remembers for deduplication, across queues.",
            s.remembered_ids,
        )?;

        // Queues, as applied on this node.
        gauge(e, "queues", "Queues that exist.", s.queues.len() as u64)?;
        let per_queue = |f: fn(&QueueInfo) -> u64| {
            s.queues.iter().map(move |q| ([("queue", q.name.as_str())], f(q))).collect::<Vec<_>>()
        };
        gauges(e, "queue_ready", "Messages ready to be received.", per_queue(|q| q.stats.ready))?;
        gauges(
            e,
            "queue_in_flight",
            "Messages received and not yet acked, nacked or timed out.",
            per_queue(|q| q.stats.in_flight),
        )?;
        gauges(
            e,
            "queue_delayed",
            "Messages waiting for a delivery delay or redelivery backoff to end.",
            per_queue(|q| q.stats.delayed),
        )?;
        gauges(e, "queue_bytes", "Bytes of message bodies and attributes in the queue.", per_queue(|q| q.stats.bytes))?;
        gauges(
            e,
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (ready, in flight or delayed), 0 when empty.",
            s.queues.iter().map(|q| {
                let sent = q.stats.oldest_sent_at_ms;
                let age = if sent == 0 { 0.0 } else { s.now_ms.saturating_sub(sent) as f64 / 1000.0 };
                ([("queue", q.name.as_str())], age)
            }),
        )?;
        counters(e, "queue_sent", "Messages enqueued (duplicates excluded).", per_queue(|q| q.stats.sent_total))?;
        counters(
            e,
            "queue_received",
            "Deliveries (a redelivery counts again).",
            per_queue(|q| q.stats.received_total),
        )?;
        counters(e, "queue_acked", "Messages acked (deleted by their consumer).", per_queue(|q| q.stats.acked_total))?;
        counters(
            e,
            "queue_dead_lettered",
            "Messages this queue moved to its dead-letter queue.",
            per_queue(|q| q.stats.dead_lettered_total),
        )?;
        counters(
            e,
            "queue_expired",
            "Messages removed by retention or TTL expiry (dead-lettered or dropped).",
            per_queue(|q| q.stats.expired_total),
        )?;
        counters(
            e,
            "queue_dropped",
            "Messages dropped from the head of a full queue (overflow drop-head).",
            per_queue(|q| q.stats.dropped_total),
        )?;
        counters(
            e,
            "queue_rejected",
            "Sends refused because the queue was full (overflow reject-publish).",
            per_queue(|q| q.stats.rejected_total),
        )?;

        // Process and disk.
        if let Some(rss) = s.resident_memory_bytes {
            gauge(e, "process_resident_memory_bytes", "Resident memory of the node process.", rss)?;
        }
        if let Some(bytes) = s.data_dir_bytes {
            gauge(e, "data_dir_bytes", "Disk space used by the data directory (allocated blocks).", bytes)?;
        }
        if let Some(free) = s.disk_free_bytes {
            gauge(
                e,
                "disk_free_bytes",
                "Free space of the data directory's filesystem (for unprivileged users).",
                free,
            )?;
        }
        if let Some(total) = s.disk_total_bytes {
            gauge(e, "disk_total_bytes", "Size of the data directory's filesystem.", total)?;
        }

        // Alarms.
        let a = &s.alarms;
        gauges(
            e,
            "alarm",
            "1 while this node's resource alarm of this kind is on (disk: free space below --disk-free-min; \
             memory: resident memory above --memory-max).",
            AlarmKind::ALL.map(|k| ([("kind", k.as_str())], i64::from(a.local.contains(&k)))),
        )?;
        gauges(
            e,
            "voter_alarm",
            "1 while another voter reports a resource alarm of this kind (from its status in the last few seconds).",
            a.voters.iter().flat_map(|(id, kinds)| {
                AlarmKind::ALL.map(|k| {
                    ([("peer", id.to_string()), ("kind", k.as_str().to_string())], i64::from(kinds.contains(&k)))
                })
            }),
        )?;
        gauge(
            e,
            "sends_blocked",
            "1 while this node refuses sends because of an alarm on it or on a voter.",
            i64::from(a.sends_blocked),
        )?;
        gauge(e, "disk_free_min_bytes", "The disk alarm's limit (--disk-free-min).", a.disk_free_min_bytes)?;
        if let Some(max) = a.memory_max_bytes {
            gauge(e, "memory_max_bytes", "The memory alarm's limit (--memory-max).", max)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumq_raft_state_machine::QueueConfig;
    use quorumq_raft_state_machine::QueueId;
    use quorumq_raft_state_machine::QueueStats;

    fn sample_scrape() -> Scrape {
        let queue = |name: &str, ready, oldest| QueueInfo {
            name: name.to_string(),
            id: QueueId(1),
            config: QueueConfig::default(),
            created_at_ms: 0,
            stats: QueueStats {
                ready,
                in_flight: 2,
                sent_total: 9,
                acked_total: 4,
                oldest_sent_at_ms: oldest,
                ..Default::default()
            },
        };
        Scrape {
            raft: RaftView {
                id: 1,
                term: 7,
                role: "leader",
                leader_id: Some(1),
                last_log_index: 120,
                committed_index: 118,
                applied_index: 117,
                voters: 3,
                matched: BTreeMap::from([(2, 120), (3, 100)]),
                quorum_ack_age_seconds: Some(0.05),
                term_changes_total: 2,
                became_leader_total: 1,
                ..Default::default()
            },
            queues: vec![queue("orders", 5, 10_000), queue("empty", 0, 0)],
            now_ms: 12_500,
            snapshot_bytes: 4096,
            body_store_bytes: 8192,
            remembered_ids: 7,
            resident_memory_bytes: Some(30_000_000),
            data_dir_bytes: Some(1_000_000),
            disk_free_bytes: Some(40_000_000),
            disk_total_bytes: Some(100_000_000),
            alarms: AlarmView {
                local: vec![AlarmKind::Disk],
                voters: BTreeMap::from([(3, vec![AlarmKind::Memory])]),
                sends_blocked: true,
                disk_free_min_bytes: 50_000_000,
                memory_max_bytes: None,
            },
            batch: Some({
                let b = crate::batcher::BatchStats::default();
                b.entry_commands.observe(1.0);
                b.entry_commands.observe(300.0);
                b.entry_seconds.observe(0.002);
                b
            }),
            checkpoints_written: 3,
            checkpoint_capture_seconds: Some({
                let h = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16));
                h.observe(0.012);
                h
            }),
        }
    }

    /// The text has the series and values the scrape holds, in the
    /// OpenMetrics format Prometheus reads.
    #[test]
    fn render_shows_every_series() {
        let stats = Arc::new(LogStats::default());
        stats.flush_seconds.observe(0.002);
        stats.flush_entries.observe(3.0);
        stats.appends.store(4, Ordering::Relaxed);
        let text = render(sample_scrape(), stats).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "quorumq_node_id 1",
            "quorumq_raft_term 7",
            "quorumq_is_leader 1",
            "quorumq_raft_role{role=\"leader\"} 1",
            "quorumq_raft_role{role=\"follower\"} 0",
            "quorumq_raft_leader_id 1",
            "quorumq_raft_committed_index 118",
            "quorumq_raft_applied_index 117",
            "quorumq_raft_replication_lag_entries{peer=\"2\"} 0",
            "quorumq_raft_replication_lag_entries{peer=\"3\"} 20",
            "quorumq_raft_quorum_ack_age_seconds 0.05",
            "quorumq_raft_term_changes_total 2",
            "quorumq_raft_became_leader_total 1",
            "quorumq_log_appends_total 4",
            "quorumq_log_flush_seconds_count 1",
            "quorumq_log_flush_seconds_bucket{le=\"+Inf\"} 1",
            "quorumq_log_flush_entries_sum 3.0",
            "quorumq_snapshot_bytes 4096",
            "quorumq_body_store_bytes 8192",
            "quorumq_checkpoints_written_total 3",
            "quorumq_checkpoint_capture_seconds_count 1",
            "quorumq_checkpoint_capture_seconds_bucket{le=\"0.0128\"} 1",
            "quorumq_remembered_ids 7",
            "quorumq_raft_entry_commands_count 2",
            "quorumq_raft_entry_commands_sum 301.0",
            "quorumq_raft_entry_commands_bucket{le=\"1.0\"} 1",
            "quorumq_raft_entry_commands_bucket{le=\"512.0\"} 2",
            "quorumq_raft_entry_seconds_count 1",
            "quorumq_raft_entry_wait_seconds_count 0",
            "quorumq_queues 2",
            "quorumq_queue_ready{queue=\"orders\"} 5",
            "quorumq_queue_ready{queue=\"empty\"} 0",
            "quorumq_queue_in_flight{queue=\"orders\"} 2",
            "quorumq_queue_oldest_message_age_seconds{queue=\"orders\"} 2.5",
            "quorumq_queue_oldest_message_age_seconds{queue=\"empty\"} 0.0",
            "quorumq_queue_sent_total{queue=\"orders\"} 9",
            "quorumq_queue_acked_total{queue=\"orders\"} 4",
            "quorumq_process_resident_memory_bytes 30000000",
            "quorumq_disk_free_bytes 40000000",
            "quorumq_alarm{kind=\"disk\"} 1",
            "quorumq_alarm{kind=\"memory\"} 0",
            "quorumq_voter_alarm{peer=\"3\",kind=\"memory\"} 1",
            "quorumq_voter_alarm{peer=\"3\",kind=\"disk\"} 0",
            "quorumq_sends_blocked 1",
            "quorumq_disk_free_min_bytes 50000000",
            "# TYPE quorumq_log_flush_seconds histogram",
            "# TYPE quorumq_queue_sent counter",
            "# EOF",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in:\n{text}");
        }
        // The 2 ms flush is counted in the 2.5 ms bucket and above, not below.
        assert!(lines.contains(&"quorumq_log_flush_seconds_bucket{le=\"0.001\"} 0"), "{text}");
        assert!(lines.contains(&"quorumq_log_flush_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(!text.contains("quorumq_memory_max_bytes"), "no memory limit was set:\n{text}");
    }
}
