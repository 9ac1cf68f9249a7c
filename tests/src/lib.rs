//! Harness for the cluster tests: real `quorumq server` processes on
//! loopback (through [`quorumq::local_cluster::LocalCluster`]), clients with
//! chosen deadlines, waits for conditions with deadlines, and the node logs
//! printed when a test fails.
//!
//! The node binary is the package's `quorumq-node-under-test`, which cargo
//! builds together with the tests; only integration tests see its path, so
//! they pass it in with [`node_binary!`].
//!
//! Every wait here has a deadline: a test fails with a message saying what
//! it waited for, never hangs.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

pub use quorumq::local_cluster::ClusterOptions;
pub use quorumq::local_cluster::LocalCluster;
use quorumq_client::Client;
use quorumq_client::ClientConfig;
use quorumq_client::Error;
use quorumq_client::NodeStatus;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use quorumq_client::Role;

/// The path of the node binary cargo built for this package's tests.
#[macro_export]
macro_rules! node_binary {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_quorumq-node-under-test"))
    };
}

/// How long a cluster may take to elect its first leader. Generous: two
/// test threads may start clusters at the same time on a 2-core machine.
pub const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of the harness's own client operations (queue creation,
/// draining, status probes).
pub const HARNESS_DEADLINE: Duration = Duration::from_secs(15);

/// When set, a failed test keeps its nodes' data directories and logs.
pub const KEEP_ENV: &str = "QUORUMQ_TEST_KEEP";

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Pause between two looks at a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A local cluster of node processes for one test. Dropped while the test
/// thread panics, it prints the tail of every node's log (and keeps the data
/// directory when [`KEEP_ENV`] is set), so that the failure can be read.
pub struct TestCluster {
    cluster: LocalCluster,
    name: String,
}

impl TestCluster {
    /// Lays out and starts `nodes` nodes with default server options.
    pub fn start(binary: PathBuf, name: &str, nodes: usize) -> TestCluster {
        TestCluster::start_with(binary, name, nodes, &[])
    }

    /// Lays out and starts `nodes` nodes, each given `server_args` (for
    /// example `["--snapshot-every", "100"]`).
    pub fn start_with(binary: PathBuf, name: &str, nodes: usize, server_args: &[&str]) -> TestCluster {
        let mut options = ClusterOptions::new(binary, nodes);
        options.server_args = server_args.iter().map(|s| s.to_string()).collect();
        let cluster = LocalCluster::new(options).expect("lay out the local cluster");
        let mut test = TestCluster { cluster, name: name.to_string() };
        test.cluster.start_all().expect("start the node processes");
        test
    }

    /// Like [`TestCluster::start_with`], and every node also serves
    /// `/metrics`, `/health` and `/ready` on its own free port
    /// ([`TestCluster::http_addr`]).
    pub fn start_with_http(binary: PathBuf, name: &str, nodes: usize, server_args: &[&str]) -> TestCluster {
        let mut options = ClusterOptions::new(binary, nodes);
        options.server_args = server_args.iter().map(|s| s.to_string()).collect();
        options.http = true;
        let cluster = LocalCluster::new(options).expect("lay out the local cluster");
        let mut test = TestCluster { cluster, name: name.to_string() };
        test.cluster.start_all().expect("start the node processes");
        test
    }

    pub fn ids(&self) -> Vec<u64> {
        self.cluster.ids()
    }

    /// Node `id`'s `--http` address (clusters started with
    /// [`TestCluster::start_with_http`]).
    pub fn http_addr(&self, id: u64) -> String {
        self.cluster.node(id).http_addr.clone().unwrap_or_else(|| panic!("node {id} has no --http address"))
    }

    /// `GET path` on node `id`'s HTTP endpoint: the status code and body.
    pub async fn http_get(&self, id: u64, path: &str) -> Result<(u16, String), String> {
        http_get(&self.http_addr(id), path).await
    }

    pub fn addr(&self, id: u64) -> String {
        self.cluster.node(id).addr.clone()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.cluster.node(id).data_dir.clone()
    }

    /// The last `lines` lines of node `id`'s log, without terminal colours.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        strip_ansi(&self.cluster.log_tail(id, lines))
    }

    /// The whole log of node `id` (empty if it has none yet), without
    /// terminal colours.
    pub fn log(&self, id: u64) -> String {
        strip_ansi(&std::fs::read_to_string(&self.cluster.node(id).log_path).unwrap_or_default())
    }

    /// The size of node `id`'s log file, in bytes.
    pub fn log_bytes(&self, id: u64) -> u64 {
        std::fs::metadata(&self.cluster.node(id).log_path).map_or(0, |m| m.len())
    }

    /// CPU time node `id`'s process (all its threads) has used so far, user
    /// and system, from `/proc/<pid>/stat`; `None` when the node is not
    /// running or the kernel does not say.
    pub fn cpu_time(&self, id: u64) -> Option<Duration> {
        let pid = self.cluster.node(id).pid()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces, so split at
        // its closing parenthesis): state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on every Linux platform.
        Some(Duration::from_millis(ticks * 10))
    }

    /// The `--cluster` value for the CLI.
    pub fn cluster_arg(&self) -> String {
        self.cluster.cluster_arg()
    }

    /// A client seeded with every node.
    pub fn client(&self, deadline: Duration) -> Client {
        self.client_of(&self.ids(), deadline)
    }

    /// A client seeded only with the nodes `ids`.
    pub fn client_of(&self, ids: &[u64], deadline: Duration) -> Client {
        let seeds: Vec<String> = ids.iter().map(|&id| self.addr(id)).collect();
        let config = ClientConfig { deadline, ..ClientConfig::new(seeds) };
        Client::new(config).expect("a valid client configuration")
    }

    /// SIGKILL: the node dies at once.
    pub fn kill(&mut self, id: u64) {
        self.cluster.kill(id).unwrap_or_else(|e| panic!("kill node {id}: {e}"));
    }

    /// SIGTERM, with a grace period before SIGKILL.
    pub fn stop(&mut self, id: u64) {
        self.cluster.stop(id, Duration::from_secs(10)).unwrap_or_else(|e| panic!("stop node {id}: {e}"));
    }

    /// Lays out and starts a new node that waits to be added (`--join`);
    /// returns its id.
    pub fn start_joining_node(&mut self) -> u64 {
        let id = self.cluster.add_node().expect("lay out a new node");
        self.cluster.start(id).unwrap_or_else(|e| panic!("start node {id}: {e}"));
        id
    }

    /// Deletes the data of stopped node `id`; it restarts with `--join`.
    pub fn wipe(&mut self, id: u64) {
        self.cluster.wipe(id).unwrap_or_else(|e| panic!("wipe node {id}: {e}"));
    }

    /// Starts node `id` again on its data directory.
    pub fn restart(&mut self, id: u64) {
        self.cluster.start(id).unwrap_or_else(|e| panic!("start node {id}: {e}"));
    }

    /// Starts node `id` again with `args` added to the cluster's server
    /// arguments (replacing what an earlier `restart_with` added; `&[]`
    /// goes back to the cluster's arguments alone).
    pub fn restart_with(&mut self, id: u64, args: &[&str]) {
        let args = args.iter().map(|a| a.to_string()).collect();
        self.cluster.set_node_args(id, args).unwrap_or_else(|e| panic!("set the arguments of node {id}: {e}"));
        self.restart(id);
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        self.cluster.is_running(id)
    }

    /// Fails the test when a node process exited by itself (a crash, a port
    /// taken, a bad data directory).
    pub fn assert_none_exited(&mut self) {
        let exited = self.cluster.exited();
        if let Some((id, status)) = exited.first() {
            panic!("[{}] node {id} exited by itself ({status}); log ends with:\n{}", self.name, self.log_tail(*id, 20));
        }
    }

    /// Waits until a reachable node says it is the leader, and returns its
    /// id (the one of the highest term if several say so).
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> u64 {
        let ids = self.ids();
        self.wait_for_leader_among(&ids, timeout).await
    }

    /// Waits until one of the nodes `ids` says it is the leader, asking only
    /// those nodes (so that a node that was killed is not asked).
    pub async fn wait_for_leader_among(&mut self, ids: &[u64], timeout: Duration) -> u64 {
        let client = self.client_of(ids, Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_none_exited();
            if let Ok(status) = client.cluster_status().await
                && let Some(leader) = status
                    .nodes
                    .iter()
                    .filter(|n| n.reachable && n.role == Role::Leader)
                    .filter(|n| n.id.is_some_and(|id| ids.contains(&id)))
                    .max_by_key(|n| n.term)
                && let Some(id) = leader.id
            {
                return id;
            }
            assert!(Instant::now() < deadline, "[{}] no leader among nodes {ids:?} within {timeout:?}", self.name);
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The status node `id` reports about itself.
    pub async fn node_status(&self, id: u64) -> Result<NodeStatus, Error> {
        self.client_of(&[id], Duration::from_secs(2)).node_status(&self.addr(id)).await
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_for_applied(&self, id: u64, index: u64, timeout: Duration) -> NodeStatus {
        let what = format!("node {id} to apply index {index}");
        wait_for(&what, timeout, || async { self.node_status(id).await.ok().filter(|s| s.applied_index >= index) })
            .await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = if std::env::var_os(KEEP_ENV).is_some() {
            format!("node data and logs kept in {}", self.cluster.keep_data().display())
        } else {
            format!("set {KEEP_ENV}=1 to keep node data and logs")
        };
        let mut report = format!("\n==== [{}] the test failed; {kept}\n", self.name);
        for id in self.cluster.ids() {
            report.push_str(&format!("---- node {id} ({}), last {LOG_TAIL_LINES} log lines:\n", self.addr(id)));
            report.push_str(&self.log_tail(id, LOG_TAIL_LINES));
            report.push('\n');
        }
        eprintln!("{report}");
    }
}

/// How long [`http_get`] waits for a whole answer.
const HTTP_GET_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer [`http_get`] reads.
const HTTP_ANSWER_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A plain HTTP/1.1 `GET` of `path` on `addr` (`host:port`), one request
/// per connection: the status code and the body. An error when the node
/// cannot be reached or does not answer within a few seconds.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(HTTP_ANSWER_BYTES_MAX)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(HTTP_GET_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {HTTP_GET_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("GET {path}: no header end in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok((status, body))
}

/// Decodes a chunked HTTP body.
fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("chunked body: no chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|e| format!("chunked body: bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("chunked body: cut short")?;
        out.push_str(chunk);
        body = rest.get(size..).and_then(|r| r.strip_prefix("\r\n")).ok_or("chunked body: no CRLF after a chunk")?;
    }
}

/// The value of the sample `series` (a metric name with its labels, as
/// printed: `quorumq_queue_ready{queue="q"}`) in Prometheus text, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// Removes terminal colour sequences (`ESC [ … m`), which the nodes'
/// tracing output carries even into a log file.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Polls `condition` with short pauses until it returns `Some`, and returns
/// that value; fails the test, naming `what`, when `timeout` passes first.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `condition` with short pauses until it holds; fails the test,
/// naming `what`, when `timeout` passes first.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Creates `queue` with default options.
pub async fn create_queue(client: &Client, queue: &str) {
    client.create_queue(queue, QueueOptions::default()).await.unwrap_or_else(|e| panic!("create queue {queue}: {e}"));
}

/// Visibility timeout of the deliveries of [`drain`]: a delivery whose
/// answer was lost (a leader change during the drain) comes back this soon.
const DRAIN_VISIBILITY: Duration = Duration::from_secs(10);

/// Receives and acks every message of `queue` until it holds none (ready
/// or in flight), within `timeout`. Returns, for each body received, how
/// many distinct messages (ids) carried it: more than one means the body
/// was enqueued twice. A message delivered twice (a lost answer, then a
/// redelivery) counts once.
pub async fn drain(client: &Client, queue: &str, timeout: Duration) -> BTreeMap<String, u32> {
    let deadline = Instant::now() + timeout;
    let mut received: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    loop {
        assert!(Instant::now() < deadline, "queue {queue} did not drain within {timeout:?}");
        let options =
            ReceiveOptions { max_messages: 1000, wait: Duration::ZERO, visibility_timeout: Some(DRAIN_VISIBILITY) };
        let messages = client.receive(queue, options).await.unwrap_or_else(|e| panic!("drain: receive: {e}"));
        if messages.is_empty() {
            let stats = client.get_queue(queue).await.unwrap_or_else(|e| panic!("drain: stats: {e}")).stats;
            if stats.ready == 0 && stats.in_flight == 0 {
                return received.into_iter().map(|(body, ids)| (body, ids.len() as u32)).collect();
            }
            // Messages in flight from an earlier, lost receive come back
            // after their visibility timeout; a leader that has just taken
            // over answers nothing until it has applied its log. Wait.
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        }
        for m in &messages {
            received.entry(String::from_utf8_lossy(&m.body).into_owned()).or_default().insert(m.id.clone());
        }
        let results = client
            .ack_batch(queue, messages.iter().map(|m| m.receipt.clone()))
            .await
            .unwrap_or_else(|e| panic!("drain: ack: {e}"));
        for (m, result) in messages.iter().zip(results) {
            match result {
                Ok(()) => {}
                // Delivered again meanwhile: the later delivery is acked
                // when the drain receives it.
                Err(e) if matches!(Error::from(e.clone()), Error::FailedPrecondition(_)) => {}
                Err(e) => panic!("drain: ack of {} failed: {e}", m.id),
            }
        }
    }
}

/// What a set of producers saw: bodies the cluster acknowledged, and bodies
/// whose send failed (their fate is unknown: they may or may not be in the
/// queue).
#[derive(Default, Debug)]
pub struct Sent {
    pub acked: BTreeSet<String>,
    pub unknown: BTreeSet<String>,
    pub errors: Vec<Error>,
}

/// Producers that send unique bodies (`p{producer}-{n}`) one at a time
/// until stopped.
pub struct Producers {
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicU64>,
    sent: Arc<Mutex<Sent>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Producers {
    /// Starts `count` producers sending to `queue` through `client`.
    pub fn start(client: &Client, queue: &str, count: usize) -> Producers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_count = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(Mutex::new(Sent::default()));
        let tasks = (0..count)
            .map(|p| {
                let (client, queue) = (client.clone(), queue.to_string());
                let (stop, acked_count, sent) = (stop.clone(), acked_count.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let body = format!("p{p}-{n}");
                        n += 1;
                        let result = client.send(&queue, body.clone()).await;
                        let failed = result.is_err();
                        {
                            let mut sent = sent.lock().expect("sent lock");
                            match result {
                                Ok(_) => {
                                    sent.acked.insert(body);
                                    acked_count.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    sent.unknown.insert(body);
                                    sent.errors.push(e);
                                }
                            }
                        }
                        if failed {
                            // Do not spin while the cluster is down.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Producers { stop, acked_count, sent, tasks }
    }

    /// Sends acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// Waits until `count` more sends than now are acknowledged.
    pub async fn wait_for_more_acks(&self, count: u64, timeout: Duration) {
        let target = self.acked() + count;
        wait_until(&format!("{target} acknowledged sends"), timeout, || async { self.acked() >= target }).await;
    }

    /// Stops the producers (each finishes its current send, bounded by the
    /// client deadline) and returns what they saw.
    pub async fn stop(self, timeout: Duration) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        let all = futures::future::join_all(self.tasks);
        let results = tokio::time::timeout(timeout, all).await.expect("producers did not stop in time");
        for result in results {
            result.expect("a producer task panicked");
        }
        std::mem::take(&mut *self.sent.lock().expect("sent lock"))
    }
}

/// Checks a drain against what the producers saw: every acknowledged body
/// was received, nothing was received that was never sent, and nothing was
/// received twice.
pub fn check_no_loss(sent: &Sent, received: &BTreeMap<String, u32>) {
    let missing: Vec<&String> = sent.acked.iter().filter(|b| !received.contains_key(*b)).collect();
    let unexpected: Vec<&String> =
        received.keys().filter(|b| !sent.acked.contains(*b) && !sent.unknown.contains(*b)).collect();
    let duplicated: Vec<(&String, &u32)> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages were lost, e.g. {:?}",
        missing.len(),
        sent.acked.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(unexpected.is_empty(), "received messages nobody sent: {:?}", &unexpected[..unexpected.len().min(10)]);
    assert!(
        duplicated.is_empty(),
        "messages enqueued more than once despite the idempotent producer: {:?}",
        &duplicated[..duplicated.len().min(10)]
    );
}

/// What a run of the CLI printed, and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the node binary as the `quorumq` CLI with `args` (and `stdin` fed to
/// it, when given), killing it if it runs longer than `timeout`.
pub fn run_cli(binary: &Path, args: &[&str], stdin: Option<Vec<u8>>, timeout: Duration) -> CliOutput {
    run_cli_with(binary, args, stdin, false, timeout)
}

/// Runs the CLI as [`run_cli`] does, but with its standard output a pipe
/// whose reading end is closed at once, as `quorumq … | head -1` does once
/// `head` has its line. `stdout` of the result is empty.
pub fn run_cli_stdout_closed(binary: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    run_cli_with(binary, args, None, true, timeout)
}

fn run_cli_with(
    binary: &Path,
    args: &[&str],
    stdin: Option<Vec<u8>>,
    close_stdout: bool,
    timeout: Duration,
) -> CliOutput {
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("QUORUMQ_CLUSTER")
        .env_remove("RUST_BACKTRACE")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    if close_stdout {
        drop(child.stdout.take());
    }
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            use std::io::Write;
            // The CLI may exit before reading everything; that is its call.
            let _ = pipe.write_all(&input);
        })
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = child.stdout.take().map(|pipe| reader(Box::new(pipe)));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr pipe")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the CLI") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`quorumq {}` ran longer than {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    CliOutput {
        code: status.code(),
        stdout: stdout.map(|r| r.join().expect("stdout reader")).unwrap_or_default(),
        stderr: stderr.join().expect("stderr reader"),
    }
}
