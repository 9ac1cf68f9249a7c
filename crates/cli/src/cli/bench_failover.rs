//! `quorumq bench-failover`: how long confirmed writes stop when the leader
//! of a local cluster dies (SIGKILL) or is silently cut off (`--partition`:
//! firewall rules drop its packets, so nobody sees a connection reset).
//!
//! Producers send continuously while, trial after trial, the leader is
//! killed (or cut off), the time until writes are confirmed again is
//! measured, and the node is restarted (or reconnected) and waited for
//! until it has caught up.
//!
//! Per trial:
//! - `resume_ms`: from the fault until the first confirm that ends the
//!   longest silence between confirms around the fault ("writes resume");
//!   confirms of sends the old leader had committed just before it died do
//!   not count as resumed writes;
//! - `stall_ms`: that longest silence;
//! - `first_confirm_ms`: the first confirm received after the fault at all;
//! - `elected_ms`: when a surviving node first reported itself leader of a
//!   newer term (polled every few milliseconds), which splits `resume_ms`
//!   into detection plus election (`elected_ms`) and the client finding the
//!   new leader plus the new leader's first commit (the rest);
//! - `terms`: how many terms the election took (1 when the first one won).
//!
//! `--partition` needs root, `iptables` and a cgroup v2 hierarchy: every
//! node runs in its own cgroup, so that rules matching that cgroup drop
//! exactly the packets of the leader's sockets (loopback traffic cannot be
//! told apart by address). The rules are removed when the command ends,
//! by error or Ctrl-C as well; they carry the comment
//! `quorumq-bench-failover-PID`, so that leftovers of a run that was itself
//! killed can be found with `iptables -S | grep quorumq-bench-failover`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use quorumq_client::Client;
use quorumq_client::ClientConfig;
use quorumq_client::QueueOptions;
use quorumq_client::Role;
use serde_json::json;

use super::Failure;
use super::client_cmds::Output;
use crate::local_cluster::ClusterOptions;
use crate::local_cluster::LocalCluster;
use crate::parse_duration;

#[derive(Args, Debug)]
pub struct BenchFailoverArgs {
    /// How many times to kill (or cut off) the leader.
    #[arg(long, default_value_t = 20)]
    trials: u32,
    /// Nodes in the local cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent producers, each sending one message at a time.
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Sends each producer keeps in flight.
    #[arg(long, default_value_t = 1)]
    inflight: u32,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Cut the leader off with packet-dropping firewall rules (both
    /// directions, no connection reset) instead of killing it; needs root,
    /// iptables and cgroup v2.
    #[arg(long)]
    partition: bool,
    /// How long a trial waits for writes to resume before it counts as failed.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    trial_timeout: Duration,
    /// Steady sending before each fault, and after writes resume.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    settle: Duration,
    /// Stop after this long in all, however many trials ran.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    max_time: Duration,
    /// An extra argument for every node, repeatable:
    /// `--server-arg=--election-timeout=150ms..300ms`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// RUST_LOG of the nodes (their logs are in the data directory).
    #[arg(long, default_value = "info")]
    node_log: String,
    /// Keep the data directory and node logs, and print where they are.
    #[arg(long)]
    keep: bool,
    /// Node i listens on BASE_PORT + i - 1 (free ports when not given).
    #[arg(long)]
    base_port: Option<u16>,
}

/// One trial's figures, in milliseconds from the fault.
#[derive(Clone, Debug, Default)]
struct Trial {
    leader: u64,
    resume_ms: Option<f64>,
    stall_ms: Option<f64>,
    first_confirm_ms: Option<f64>,
    elected_ms: Option<f64>,
    new_leader: Option<u64>,
    terms: u64,
    send_errors: u64,
    recovery_ms: f64,
}

/// Confirm times of every producer, in microseconds since `origin`.
struct Timeline {
    origin: Instant,
    confirms: Mutex<Vec<u64>>,
}

impl Timeline {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    fn record(&self, at: Instant) {
        let t = self.micros(at);
        self.confirms.lock().unwrap_or_else(|e| e.into_inner()).push(t);
    }

    fn last(&self) -> Option<u64> {
        self.confirms.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().max()
    }

    /// Confirms at or after `from`, sorted (producers append concurrently,
    /// so the vector is only nearly sorted).
    fn since(&self, from: u64) -> Vec<u64> {
        let all = self.confirms.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<u64> = all.iter().copied().filter(|&t| t >= from).collect();
        out.sort_unstable();
        out
    }

    /// Forgets confirms before `before` (keeps memory flat over many trials).
    fn trim(&self, before: u64) {
        self.confirms.lock().unwrap_or_else(|e| e.into_inner()).retain(|&t| t >= before);
    }
}

/// The longest silence between consecutive confirms that ends after the
/// fault at `fault` (all in microseconds): `(start, end)`. `confirms` is
/// sorted and includes some confirms from before the fault.
fn longest_silence(confirms: &[u64], fault: u64) -> Option<(u64, u64)> {
    confirms
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|&(_, end)| end > fault)
        .max_by_key(|&(start, end)| (end - start, std::cmp::Reverse(end)))
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The value at quantile `q` (nearest rank) of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn summary(values: impl Iterator<Item = Option<f64>>) -> serde_json::Value {
    let mut sorted: Vec<f64> = values.flatten().collect();
    sorted.sort_by(f64::total_cmp);
    json!({
        "count": sorted.len(),
        "p50_ms": quantile(&sorted, 0.5),
        "p90_ms": quantile(&sorted, 0.9),
        "max_ms": sorted.last(),
    })
}

/// Firewall rules that cut one node off, and the cgroups that let them
/// match its sockets. Dropping it removes the rules and the cgroups.
struct NetCut {
    tag: String,
    cgroup_root: PathBuf,
    cgroups: Vec<PathBuf>,
    /// Rules in force, as `iptables` arguments after `-I`/`-D`.
    rules: Vec<Vec<String>>,
    _wrapper_dir: tempfile::TempDir,
    wrapper: PathBuf,
}

fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(target))
        })
        .next()
        .ok_or_else(|| io::Error::other("no cgroup v2 hierarchy is mounted"))
}

fn iptables(args: &[String]) -> io::Result<()> {
    let output = Command::new("iptables").args(["-w", "5"]).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl NetCut {
    /// Checks the tools and lays out one cgroup per node, and a wrapper
    /// that starts `binary` inside the cgroup of the node it runs.
    fn new(binary: &Path, nodes: usize) -> Result<NetCut, Failure> {
        let unusable = |why: String| {
            Failure::from(format!(
                "--partition cannot cut nodes off here: {why} (it needs root, iptables — `apt-get install iptables` \
                 — and a writable cgroup v2 hierarchy)"
            ))
        };
        match Command::new("iptables").args(["-w", "5", "-S", "OUTPUT"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Err(unusable(String::from_utf8_lossy(&out.stderr).trim().to_string())),
            Err(e) => return Err(unusable(format!("cannot run iptables: {e}"))),
        }
        let cgroup_root = cgroup2_root().map_err(|e| unusable(e.to_string()))?;
        let tag = format!("quorumq-bench-failover-{}", std::process::id());
        let binary = binary.to_str().filter(|b| !b.contains('\'')).ok_or_else(|| unusable("odd binary path".into()))?;
        let wrapper_dir = tempfile::Builder::new().prefix("quorumq-bench-failover-").tempdir()?;
        let wrapper = wrapper_dir.path().join("node-in-cgroup.sh");
        let root = cgroup_root.display().to_string();
        // `LocalCluster::start` runs `BINARY server --id N ...`.
        let script = format!(
            "#!/bin/sh\n\
             # Runs a quorumq node in its own cgroup, so that firewall rules can cut it off.\n\
             [ \"$2\" = \"--id\" ] || {{ echo \"expected: server --id N ...\" >&2; exit 98; }}\n\
             echo $$ > '{root}/{tag}-'\"$3\"/cgroup.procs || exit 97\n\
             exec '{binary}' \"$@\"\n"
        );
        std::fs::write(&wrapper, script)?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        let mut cut =
            NetCut { tag, cgroup_root, cgroups: Vec::new(), rules: Vec::new(), _wrapper_dir: wrapper_dir, wrapper };
        for id in 1..=nodes {
            let dir = cut.cgroup_dir(id as u64);
            std::fs::create_dir(&dir).map_err(|e| unusable(format!("cannot create cgroup {}: {e}", dir.display())))?;
            cut.cgroups.push(dir);
        }
        Ok(cut)
    }

    fn cgroup_dir(&self, id: u64) -> PathBuf {
        self.cgroup_root.join(format!("{}-{id}", self.tag))
    }

    /// Drops every packet the node's sockets send or receive, and every
    /// packet to its port (new connections): no RST, no ICMP, silence.
    fn cut(&mut self, id: u64, port: u16) -> io::Result<()> {
        let path = format!("/{}-{id}", self.tag);
        let comment = ["-m", "comment", "--comment", &self.tag, "-j", "DROP"].map(String::from);
        let by_cgroup = |chain: &str| {
            let mut rule: Vec<String> = [chain, "-m", "cgroup", "--path", &path].map(String::from).to_vec();
            rule.extend(comment.iter().cloned());
            rule
        };
        let mut to_port: Vec<String> =
            ["INPUT", "-p", "tcp", "--dport", &port.to_string()].map(|s| s.to_string()).to_vec();
        to_port.extend(comment.iter().cloned());
        for rule in [by_cgroup("OUTPUT"), by_cgroup("INPUT"), to_port] {
            let mut insert = vec!["-I".to_string()];
            insert.extend(rule.iter().cloned());
            iptables(&insert)?;
            self.rules.push(rule);
        }
        Ok(())
    }

    /// Removes every rule this run added.
    fn heal(&mut self) -> io::Result<()> {
        let mut first_error = None;
        while let Some(rule) = self.rules.pop() {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            if let Err(e) = iptables(&delete) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("warning: could not remove every firewall rule ({e}); look for `{}` in `iptables -S`", self.tag);
        }
        for dir in &self.cgroups {
            // Empty once the cluster (dropped before this) has killed its nodes.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Ends the run with an error on SIGINT (Ctrl-C) or SIGTERM (`timeout`),
/// so that the guards remove the rules and kill the nodes.
async fn interrupted() -> Failure {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(int), Ok(term)) => (int, term),
        (Err(e), _) | (_, Err(e)) => return Failure::from(format!("cannot wait for signals: {e}")),
    };
    tokio::select! {
        _ = int.recv() => Failure::from("interrupted (SIGINT)"),
        _ = term.recv() => Failure::from("terminated (SIGTERM)"),
    }
}

/// Fails when a node process has exited by itself (a port in use, a crash).
fn check_nodes(cluster: &mut LocalCluster) -> Result<(), Failure> {
    match cluster.exited().first() {
        None => Ok(()),
        Some((id, status)) => Err(Failure::from(format!(
            "node {id} exited by itself ({status}); its log: {}",
            cluster.node(*id).log_path.display()
        ))),
    }
}

pub async fn run(out: Output, args: BenchFailoverArgs) -> Result<(), Failure> {
    if args.trials == 0 || args.producers == 0 || args.inflight == 0 || args.nodes < 3 {
        return Err(Failure::usage("--trials, --producers and --inflight must be positive; --nodes at least 3"));
    }
    let binary = std::env::current_exe()?;
    // Declared before the cluster, so that it is dropped after the cluster
    // has killed its nodes.
    let mut netcut = if args.partition { Some(NetCut::new(&binary, args.nodes)?) } else { None };
    let node_binary = netcut.as_ref().map_or(binary.clone(), |c| c.wrapper.clone());
    let mut options = ClusterOptions::new(node_binary, args.nodes);
    options.default_log = args.node_log.clone();
    options.base_port = args.base_port;
    options.server_args = args.server_args.clone();
    let mut cluster = LocalCluster::new(options)?;
    // A node from an earlier run on the same port would serve in place of
    // ours, unaffected by the faults.
    for addr in cluster.addresses() {
        std::net::TcpListener::bind(&addr).map_err(|e| Failure::from(format!("cannot use {addr}: {e}")))?;
    }
    if args.keep {
        let dir = cluster.keep_data();
        eprintln!("data and node logs: {}", dir.display());
    }
    cluster.start_all()?;
    let result = tokio::select! {
        result = trials(&mut cluster, netcut.as_mut(), &args, out) => result,
        failure = interrupted() => Err(failure),
    };
    cluster.stop_all(Duration::from_secs(5))?;
    drop(cluster);
    drop(netcut);
    result
}

async fn trials(
    cluster: &mut LocalCluster,
    mut netcut: Option<&mut NetCut>,
    args: &BenchFailoverArgs,
    out: Output,
) -> Result<(), Failure> {
    let run_end = Instant::now() + args.max_time;
    let seeds = cluster.addresses();
    let mut config = ClientConfig::new(seeds.clone());
    config.deadline = Duration::from_secs(30);
    let client = Client::new(config).map_err(|e| Failure::from(e.message()))?;
    // A separate client for status polls, so that they never share a
    // connection (or its fate) with the producers.
    let mut status_config = ClientConfig::new(seeds.clone());
    status_config.deadline = Duration::from_millis(500);
    status_config.attempt_timeout = Duration::from_millis(300);
    status_config.connect_timeout = Duration::from_millis(300);
    let status_client = Client::new(status_config).map_err(|e| Failure::from(e.message()))?;
    let queue = "bench-failover";
    let created = tokio::time::timeout(Duration::from_secs(60), client.create_queue(queue, QueueOptions::default()))
        .await
        .map_err(|_| Failure::from("the cluster did not come up within 60 s"))?;
    created.map_err(|e| Failure::from(e.message()))?;
    client.purge_queue(queue).await.map_err(|e| Failure::from(e.message()))?;

    let timeline = Arc::new(Timeline { origin: Instant::now(), confirms: Mutex::new(Vec::new()) });
    let errors = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let body = Bytes::from(vec![b'x'; args.size]);
    let mut producers = Vec::new();
    for _ in 0..args.producers * args.inflight {
        let (client, body, timeline, errors, running) =
            (client.clone(), body.clone(), timeline.clone(), errors.clone(), running.clone());
        producers.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) && Instant::now() < run_end {
                match client.send(queue, body.clone()).await {
                    Ok(_) => timeline.record(Instant::now()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut results: Vec<Trial> = Vec::new();
    let mut failure = None;
    for n in 1..=args.trials {
        if Instant::now() + args.trial_timeout + args.settle * 2 > run_end {
            failure = Some(Failure::from(format!("--max-time reached after {} trials", n - 1)));
            break;
        }
        match trial(cluster, netcut.as_deref_mut(), args, &status_client, &timeline, &errors, run_end).await {
            Ok(t) => {
                if !out.json {
                    print_trial(n, &t);
                }
                results.push(t);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if let Err(e) = client.purge_queue(queue).await {
            tracing::debug!(%e, "purge between trials failed");
        }
    }
    running.store(false, Ordering::Relaxed);
    for p in producers {
        let _ = tokio::time::timeout(Duration::from_secs(35), p).await;
    }
    report(args, &results, out);
    match failure {
        Some(f) => Err(f),
        None if results.iter().any(|t| t.resume_ms.is_none()) => {
            Err(Failure::from("writes did not resume within --trial-timeout in some trials"))
        }
        None => Ok(()),
    }
}

fn print_trial(n: u32, t: &Trial) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "trial {n:>2}: leader {} -> {}: writes resumed after {} ms (longest silence {} ms, first confirm {} ms, \
         new leader elected at {} ms, {} term(s)); {} send errors; recovered in {:.0} ms",
        t.leader,
        t.new_leader.map_or("?".to_string(), |l| l.to_string()),
        f(t.resume_ms),
        f(t.stall_ms),
        f(t.first_confirm_ms),
        f(t.elected_ms),
        t.terms,
        t.send_errors,
        t.recovery_ms
    );
}

fn report(args: &BenchFailoverArgs, results: &[Trial], out: Output) {
    let resume = summary(results.iter().map(|t| t.resume_ms));
    let stall = summary(results.iter().map(|t| t.stall_ms));
    let elected = summary(results.iter().map(|t| t.elected_ms));
    if out.json {
        let trials: Vec<_> = results
            .iter()
            .map(|t| {
                json!({
                    "leader": t.leader,
                    "new_leader": t.new_leader,
                    "resume_ms": t.resume_ms,
                    "stall_ms": t.stall_ms,
                    "first_confirm_ms": t.first_confirm_ms,
                    "elected_ms": t.elected_ms,
                    "terms": t.terms,
                    "send_errors": t.send_errors,
                    "recovery_ms": t.recovery_ms,
                })
            })
            .collect();
        let report = json!({
            "mode": if args.partition { "partition" } else { "kill" },
            "nodes": args.nodes,
            "producers": args.producers,
            "inflight_per_producer": args.inflight,
            "size_bytes": args.size,
            "server_args": args.server_args,
            "trials": trials,
            "resume": resume,
            "stall": stall,
            "elected": elected,
            "failed_trials": results.iter().filter(|t| t.resume_ms.is_none()).count(),
        });
        println!("{report}");
        return;
    }
    let line = |name: &str, s: &serde_json::Value| {
        let f = |k: &str| s[k].as_f64().map_or("-".to_string(), |v| format!("{v:.0}"));
        println!("{name:<28} p50 {:>5} ms  p90 {:>5} ms  max {:>5} ms", f("p50_ms"), f("p90_ms"), f("max_ms"));
    };
    let mode = if args.partition { "leader cut off (partition)" } else { "leader killed (SIGKILL)" };
    println!(
        "{} trials, {mode}, {} producers x {} in flight, {} B:",
        results.len(),
        args.producers,
        args.inflight,
        args.size
    );
    line("writes resumed after", &resume);
    line("longest silence", &stall);
    line("new leader elected after", &elected);
}

/// The leader's id and term, once all nodes agree there is one.
async fn find_leader(status: &Client, cluster: &LocalCluster, until: Instant) -> Result<(u64, u64), Failure> {
    loop {
        if let Ok(s) = status.cluster_status().await
            && let Some(leader) = s.leader()
            && leader.role == Role::Leader
            && let Some(id) = leader.id
            && cluster.ids().contains(&id)
        {
            return Ok((id, leader.term));
        }
        if Instant::now() > until {
            return Err(Failure::from("no leader found"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node answers, one leads, and each has applied at
/// least what the leader had committed when the wait began.
async fn wait_caught_up(status: &Client, cluster: &LocalCluster, until: Instant) -> Result<(), Failure> {
    let mut target = None;
    loop {
        if let Ok(s) = status.cluster_status().await
            && s.reachable_count() == cluster.ids().len()
            && let Some(leader) = s.leader()
            && leader.role == Role::Leader
        {
            let target = *target.get_or_insert(leader.committed_index);
            if s.nodes.iter().all(|n| n.applied_index >= target && n.leader_id == s.leader_id) {
                return Ok(());
            }
        }
        if Instant::now() > until {
            return Err(Failure::from("a node did not catch up within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the survivors until one says it leads a term after `term`:
/// (elapsed since `fault`, its id, its term).
async fn wait_new_leader(
    status: &Client,
    survivors: &[(u64, String)],
    term: u64,
    fault: Instant,
    until: Instant,
) -> Option<(Duration, u64, u64)> {
    while Instant::now() < until {
        let polls = survivors.iter().map(|(id, addr)| async move { (*id, status.node_status(addr).await) });
        for (id, answer) in futures::future::join_all(polls).await {
            if let Ok(s) = answer
                && s.role == Role::Leader
                && s.term > term
            {
                return Some((fault.elapsed(), id, s.term));
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn trial(
    cluster: &mut LocalCluster,
    netcut: Option<&mut NetCut>,
    args: &BenchFailoverArgs,
    status: &Client,
    timeline: &Timeline,
    errors: &AtomicU64,
    run_end: Instant,
) -> Result<Trial, Failure> {
    let ready_by = (Instant::now() + Duration::from_secs(60)).min(run_end);
    check_nodes(cluster)?;
    wait_caught_up(status, cluster, ready_by).await?;
    check_nodes(cluster)?;
    // Writes must be flowing before the fault.
    tokio::time::sleep(args.settle).await;
    let steady = Instant::now() - Duration::from_millis(200);
    if timeline.last().is_none_or(|last| last < timeline.micros(steady)) {
        return Err(Failure::from("no write was confirmed in the 200 ms before the fault: the cluster is not serving"));
    }
    let (leader, term) = find_leader(status, cluster, ready_by).await?;
    let survivors: Vec<(u64, String)> =
        cluster.ids().into_iter().filter(|&id| id != leader).map(|id| (id, cluster.node(id).addr.clone())).collect();
    let port = cluster.node(leader).addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(0);
    let errors_before = errors.load(Ordering::Relaxed);

    let fault = Instant::now();
    match &netcut {
        Some(_) => {}
        None => cluster.kill(leader)?,
    }
    let mut netcut = netcut;
    if let Some(cut) = netcut.as_deref_mut() {
        cut.cut(leader, port)?;
    }
    let fault_us = timeline.micros(fault);
    let timeout_at = fault + args.trial_timeout;
    let elected = wait_new_leader(status, &survivors, term, fault, timeout_at).await;
    // Writes resumed once confirms arrive again: wait for the first one
    // after the election, then keep sending for `settle` so that the
    // longest silence is known.
    let mut resumed = false;
    while Instant::now() < timeout_at {
        let after = timeline.since(fault_us + 1000 * elected.map_or(0, |(d, _, _)| d.as_millis() as u64));
        if !after.is_empty() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if resumed {
        tokio::time::sleep(args.settle).await;
    }
    let confirms = timeline.since(fault_us.saturating_sub(2_000_000));
    let silence = if resumed { longest_silence(&confirms, fault_us) } else { None };
    let first_after = confirms.iter().copied().find(|&t| t > fault_us);
    let mut trial = Trial {
        leader,
        resume_ms: silence.map(|(_, end)| ms(end - fault_us)),
        stall_ms: silence.map(|(start, end)| ms(end - start)),
        first_confirm_ms: first_after.map(|t| ms(t - fault_us)),
        elected_ms: elected.map(|(d, _, _)| d.as_secs_f64() * 1000.0),
        new_leader: elected.map(|(_, id, _)| id),
        terms: elected.map_or(0, |(_, _, t)| t - term),
        send_errors: errors.load(Ordering::Relaxed) - errors_before,
        recovery_ms: 0.0,
    };
    timeline.trim(fault_us);

    // Bring the node back and wait until it has caught up.
    let recovery = Instant::now();
    match netcut {
        Some(cut) => cut.heal()?,
        None => cluster.start(leader)?,
    }
    let caught_up_by = (Instant::now() + Duration::from_secs(60)).min(run_end);
    wait_caught_up(status, cluster, caught_up_by).await?;
    trial.recovery_ms = recovery.elapsed().as_secs_f64() * 1000.0;
    Ok(trial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_silence_ending_after_the_fault_is_the_outage() {
        // Confirms every 1 ms until 100, a stale confirm at 101 (sent before
        // the fault at 100), then nothing until 350.
        let mut confirms: Vec<u64> = (90..=100).collect();
        confirms.extend([101, 350, 351, 352]);
        assert_eq!(longest_silence(&confirms, 100), Some((101, 350)));
        // A silence that ended before the fault does not count.
        let confirms = vec![0, 50, 99, 100, 120];
        assert_eq!(longest_silence(&confirms, 100), Some((100, 120)));
        assert_eq!(longest_silence(&[5], 1), None);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(quantile(&values, 0.5), Some(5.0));
        assert_eq!(quantile(&values, 0.9), Some(9.0));
        assert_eq!(quantile(&values, 1.0), Some(10.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
