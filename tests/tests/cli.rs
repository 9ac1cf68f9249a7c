//! The `quorumq` command line against a real cluster: its output contract
//! (JSON lines, exit codes) and how it reports bad input.

use std::path::PathBuf;
use std::time::Duration;

use quorumq_tests::CliOutput;
use quorumq_tests::FIRST_LEADER_TIMEOUT;
use quorumq_tests::HARNESS_DEADLINE;
use quorumq_tests::TestCluster;
use quorumq_tests::create_queue;
use quorumq_tests::node_binary;
use serde_json::Value;

/// Longest a CLI run may take: its own `--timeout` plus process start-up.
const CLI_RUN_MAX: Duration = Duration::from_secs(20);

/// Runs `quorumq --cluster <cluster> --timeout 5s <args>`.
fn cli(cluster: &TestCluster, args: &[&str]) -> CliOutput {
    cli_with_stdin(cluster, args, None)
}

fn cli_with_stdin(cluster: &TestCluster, args: &[&str], stdin: Option<Vec<u8>>) -> CliOutput {
    let cluster_arg = cluster.cluster_arg();
    let mut all = vec!["--cluster", cluster_arg.as_str(), "--timeout", "5s"];
    all.extend_from_slice(args);
    quorumq_tests::run_cli(&node_binary!(), &all, stdin, CLI_RUN_MAX)
}

/// Checks that a run succeeded and returns its stdout.
fn ok(out: CliOutput, what: &str) -> String {
    assert_eq!(out.code, Some(0), "{what} failed: {out:?}");
    out.stdout
}

/// Checks that a run failed the way the CLI promises: exit `code`, and
/// stderr exactly one line starting with `error: `, with no panic.
fn assert_one_line_error(out: &CliOutput, code: i32, what: &str) -> String {
    assert_eq!(out.code, Some(code), "{what}: {out:?}");
    assert_no_panic(out, what);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: stderr is not one line: {:?}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{what}: stderr does not start with `error: `: {:?}", out.stderr);
    lines[0].to_string()
}

fn assert_no_panic(out: &CliOutput, what: &str) {
    for text in [&out.stdout, &out.stderr] {
        let lower = text.to_lowercase();
        assert!(!lower.contains("panicked") && !lower.contains("backtrace"), "{what}: the CLI panicked: {out:?}");
    }
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}")))
        .collect()
}

fn stats(cluster: &TestCluster, queue: &str) -> Value {
    let stdout = ok(cli(cluster, &["queue", "stats", queue, "--json"]), "queue stats");
    let mut lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "queue stats printed {stdout:?}");
    lines.pop().unwrap()
}

async fn started(name: &str) -> TestCluster {
    let mut cluster = TestCluster::start(node_binary!(), name, 3);
    cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_what_its_contract_says() {
    // Proves: queue create, send, queue stats --json, recv --json --ack and cluster status --json print the documented fields and exit 0, and recv on an empty queue prints nothing.
    let mut cluster = started("the_cli_contract").await;

    ok(cli(&cluster, &["queue", "create", "jobs"]), "queue create");
    let stdout = ok(cli(&cluster, &["send", "jobs", "a", "b", "c"]), "send");
    assert_eq!(stdout.trim(), "sent 3 messages");

    let before = stats(&cluster, "jobs");
    assert_eq!(before["name"], "jobs");
    assert_eq!(before["ready"], 3, "{before}");
    assert_eq!(before["in_flight"], 0, "{before}");

    // With a long-poll wait: a leader that has just taken over answers an
    // immediate receive with nothing until it has applied the sends.
    let stdout = ok(cli(&cluster, &["recv", "jobs", "--max", "10", "--wait", "5s", "--json", "--ack"]), "recv --ack");
    let messages = json_lines(&stdout);
    assert_eq!(messages.len(), 3, "recv printed {stdout:?}");
    let mut bodies: Vec<&str> = messages.iter().map(|m| m["body"].as_str().expect("a text body")).collect();
    bodies.sort();
    assert_eq!(bodies, ["a", "b", "c"]);
    for m in &messages {
        assert!(m["id"].as_str().is_some_and(|id| !id.is_empty()), "{m}");
        assert!(m["receipt"].as_str().is_some_and(|r| !r.is_empty()), "{m}");
        assert_eq!(m["receive_count"], 1, "{m}");
    }
    let after = stats(&cluster, "jobs");
    assert_eq!((after["ready"].as_u64(), after["in_flight"].as_u64()), (Some(0), Some(0)), "{after}");
    assert_eq!(after["acked_total"], 3, "{after}");

    // The sends needed only a majority: a node the leader could not reach at
    // start-up (it was still binding its port) is replicated to after a
    // retry, and until then calls itself a learner with nothing applied.
    // Wait until every node has what the leader committed.
    let leader_now = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
    let committed = cluster.node_status(leader_now).await.expect("the leader's status").committed_index;
    for id in cluster.ids() {
        cluster.wait_for_applied(id, committed, FIRST_LEADER_TIMEOUT).await;
    }

    let stdout = ok(cli(&cluster, &["cluster", "status", "--json"]), "cluster status");
    let status = json_lines(&stdout).pop().expect("cluster status printed nothing");
    let leader = status["leader"].as_u64().unwrap_or_else(|| panic!("no leader in {status}"));
    assert!(status["term"].as_u64().is_some_and(|t| t > 0), "{status}");
    let nodes = status["nodes"].as_array().expect("a node list");
    assert_eq!(nodes.len(), 3, "{status}");
    let mut ids: Vec<u64> = nodes.iter().map(|n| n["id"].as_u64().expect("a node id")).collect();
    ids.sort();
    assert_eq!(ids, cluster.ids());
    assert!(cluster.ids().contains(&leader), "{status}");
    for n in nodes {
        let id = n["id"].as_u64().unwrap();
        assert_eq!(n["address"].as_str(), Some(cluster.addr(id).as_str()), "{n}");
        // A loaded machine may see a spurious election: any Raft role will do.
        let role = n["role"].as_str().unwrap_or("");
        assert!(["leader", "follower", "candidate"].contains(&role), "{n}");
        assert!(n["last_log_index"].as_u64().is_some(), "{n}");
        assert!(n["applied_index"].as_u64().is_some_and(|a| a <= n["last_log_index"].as_u64().unwrap()), "{n}");
        assert_eq!(n["reachable"], true, "{n}");
    }

    let out = cli(&cluster, &["recv", "jobs"]);
    assert_eq!(out.code, Some(0), "recv on an empty queue: {out:?}");
    assert_eq!(out.stdout, "", "recv on an empty queue printed something");
    assert_eq!(out.stderr, "", "recv on an empty queue complained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_bad_input_in_one_line() {
    // Proves: an unknown queue, an invalid duration, an invalid queue name and an oversized message each end the CLI with a non-zero exit and a one-line error, never a panic, and leave the queue as it was.
    let cluster = started("the_cli_reports_bad_input").await;
    create_queue(&cluster.client(HARNESS_DEADLINE), "jobs").await;

    let out = cli(&cluster, &["recv", "no-such-queue"]);
    let line = assert_one_line_error(&out, 1, "recv on an unknown queue");
    assert!(line.contains("no-such-queue"), "the error does not name the queue: {line:?}");

    let out = cli(&cluster, &["recv", "jobs", "--wait", "soon"]);
    assert_ne!(out.code, Some(0), "--wait soon was accepted: {out:?}");
    assert!(out.code.is_some(), "the CLI died of a signal: {out:?}");
    assert_no_panic(&out, "--wait soon");
    assert!(out.stderr.contains("soon"), "the error does not name the bad value: {:?}", out.stderr);

    let out = cli(&cluster, &["queue", "create", "bad name!"]);
    let line = assert_one_line_error(&out, 1, "queue create with an invalid name");
    assert!(line.contains("bad name!") && line.contains("name"), "unclear error: {line:?}");

    ok(cli(&cluster, &["send", "jobs", "first", "second"]), "send");
    let mut big = vec![b'x'; 1024 * 1024 + 1];
    big.push(b'\n');
    let out = cli_with_stdin(&cluster, &["send", "jobs", "--stdin"], Some(big));
    assert_ne!(out.code, Some(0), "a message over 1 MiB was accepted: {out:?}");
    assert!(out.code.is_some(), "the CLI died of a signal: {out:?}");
    assert_no_panic(&out, "oversized message");
    assert!(out.stderr.starts_with("error: "), "{:?}", out.stderr);
    let after = stats(&cluster, "jobs");
    assert_eq!(after["ready"], 2, "the queue lost or gained messages: {after}");
}

#[test]
fn a_server_whose_id_is_not_in_its_peers_refuses_to_start() {
    // Proves: `quorumq server` with an id missing from --peers exits 2 with a one-line error, before touching its data directory.
    let dir = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = dir.path().join("node9");
    let out = quorumq_tests::run_cli(
        &node_binary!(),
        &[
            "server",
            "--id",
            "9",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--peers",
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        ],
        None,
        CLI_RUN_MAX,
    );
    let line = assert_one_line_error(&out, 2, "server with an id not in --peers");
    assert!(line.contains('9') && line.contains("--peers"), "unclear error: {line:?}");
    assert!(!data_dir.exists(), "the refused server created its data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_stops_quietly_when_its_reader_goes_away() {
    // Proves: `quorumq cluster status | head -1` style use (stdout closed before the CLI writes) ends the CLI without a panic or backtrace.
    let cluster = started("the_cli_stops_quietly").await;
    create_queue(&cluster.client(HARNESS_DEADLINE), "listed").await;
    let cluster_arg = cluster.cluster_arg();
    for args in [vec!["cluster", "status"], vec!["queue", "list"]] {
        let mut all = vec!["--cluster", cluster_arg.as_str(), "--timeout", "5s"];
        all.extend(args.iter().copied());
        let out = quorumq_tests::run_cli_stdout_closed(&node_binary!(), &all, CLI_RUN_MAX);
        let what = format!("`quorumq {}` with stdout closed", args.join(" "));
        assert_no_panic(&out, &what);
        // 101 is the exit code of a Rust panic.
        assert_ne!(out.code, Some(101), "{what}: {out:?}");
    }
}

/// Node processes started as `quorumq server --config FILE` and nothing
/// else; killed on drop, with their logs printed when the test fails.
struct ConfigFileNodes {
    dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
}

impl ConfigFileNodes {
    fn log(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default();
        quorumq_tests::strip_ansi(&text)
    }
}

impl Drop for ConfigFileNodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for id in 1..=self.children.len() as u64 {
                eprintln!("---- node {id} log:\n{}", self.log(id));
            }
        }
    }
}

/// Spawns `quorumq server` with `args`, its output appended to `log`, and
/// no QUORUMQ_* variable of the test's environment but those in `env`.
fn spawn_server(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut command = std::process::Command::new(node_binary!());
    command.arg("server").args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("QUORUMQ_") {
            command.env_remove(key);
        }
    }
    command
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_starts_from_config_files() {
    // Proves: three `quorumq server --config FILE` processes, with every setting (id, listen, data_dir, peers as a TOML table, timings) in their files, form a cluster that serves a send and a receive; a file with a bad value is refused with exit 2; the file can be named by QUORUMQ_CONFIG; an environment variable and a flag each override a file value.
    let dir = tempfile::tempdir().unwrap();
    let ports = quorumq::local_cluster::free_ports(3).unwrap();
    let peers_table: String =
        ports.iter().enumerate().map(|(i, p)| format!("{} = \"127.0.0.1:{p}\"\n", i + 1)).collect();
    let mut nodes = ConfigFileNodes { dir, children: Vec::new() };
    let path = |name: String| nodes.dir.path().join(name);
    for (i, port) in ports.iter().enumerate() {
        let id = i + 1;
        // Node 3's file is wrong twice on purpose: an invalid snapshot
        // interval, and an address nobody listens at.
        let (listen, snapshot_every) = if id == 3 {
            ("127.0.0.1:1".to_string(), "\"not-a-number\"")
        } else {
            (format!("127.0.0.1:{port}"), "1000")
        };
        let toml = format!(
            "# node {id}\nid = {id}\nlisten = \"{listen}\"\ndata_dir = {:?}\nheartbeat_interval = \"50ms\"\n\
             election_timeout = \"300ms..600ms\"\nsnapshot-every = {snapshot_every}\n[peers]\n{peers_table}",
            path(format!("node{id}"))
        );
        std::fs::write(path(format!("node{id}.toml")), toml).unwrap();
    }
    for id in 1..=3 {
        let file = path(format!("node{id}.toml"));
        nodes.children.push(spawn_server(
            &["--config".as_ref(), file.as_os_str()],
            &[],
            &path(format!("node{id}.log")),
        ));
    }
    // Node 3 refuses its file: exit 2, naming the key and the value.
    let node3 = quorumq_tests::wait_for("node 3 to refuse its file", Duration::from_secs(10), || {
        let status = nodes.children[2].try_wait().unwrap();
        async move { status }
    })
    .await;
    assert_eq!(node3.code(), Some(2), "node 3: {}", nodes.log(3));
    let log3 = nodes.log(3);
    assert!(log3.contains("snapshot-every: invalid value \"not-a-number\""), "{log3}");
    // Started again with the file in QUORUMQ_CONFIG, the right address in
    // QUORUMQ_LISTEN and the right interval on the command line, it runs.
    let listen3 = format!("127.0.0.1:{}", ports[2]);
    nodes.children[2] = spawn_server(
        &["--snapshot-every".as_ref(), "1000".as_ref()],
        &[("QUORUMQ_CONFIG", path("node3.toml".into()).as_os_str()), ("QUORUMQ_LISTEN", listen3.as_ref())],
        &path("node3.log".into()),
    );

    let cluster_arg = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let run = |args: &[&str]| {
        let mut all = vec!["--cluster", cluster_arg.as_str(), "--timeout", "5s"];
        all.extend_from_slice(args);
        quorumq_tests::run_cli(&node_binary!(), &all, None, CLI_RUN_MAX)
    };
    quorumq_tests::wait_until("a leader and three reachable nodes", FIRST_LEADER_TIMEOUT, || async {
        let status: Option<Value> = json_lines(&run(&["cluster", "status", "--json"]).stdout).pop();
        status.is_some_and(|s| {
            s["leader"].as_u64().is_some()
                && s["nodes"].as_array().is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["reachable"] == true))
        })
    })
    .await;
    for id in 1..=3 {
        assert!(nodes.children[id - 1].try_wait().unwrap().is_none(), "node {id} exited: {}", nodes.log(id as u64));
        assert!(
            nodes.log(id as u64).contains("settings read from the config file"),
            "node {id}: {}",
            nodes.log(id as u64)
        );
    }
    let out = run(&["queue", "create", "jobs"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run(&["send", "jobs", "from-a-config-file"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run(&["recv", "jobs", "--wait", "5s", "--ack", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let messages = json_lines(&out.stdout);
    assert_eq!(messages.len(), 1, "{out:?}");
    assert_eq!(messages[0]["body"], "from-a-config-file");
}

#[test]
fn a_server_with_a_bad_config_file_refuses_to_start() {
    // Proves: `quorumq server --config FILE` with an unknown key, a value of the wrong type, a missing required setting or a missing file exits 2 with a one-line error naming the problem, before touching its data directory.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let base = format!("id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = {data_dir:?}\npeers = \"1=127.0.0.1:7001\"\n");
    let cases = [
        (format!("{base}heartbeat = \"50ms\"\n"), "heartbeat: unknown key"),
        (format!("{base}max_message_bytes = \"lots\"\n"), "max_message_bytes: invalid value \"lots\""),
        (format!("{base}join = 1\n"), "join: expected true or false"),
        (base.replace("peers", "# peers"), "--peers is required"),
        ("id = \n".to_string(), "line 1"),
    ];
    for (toml, expected) in cases {
        let file = dir.path().join("quorumq.toml");
        std::fs::write(&file, &toml).unwrap();
        let out =
            quorumq_tests::run_cli(&node_binary!(), &["server", "--config", file.to_str().unwrap()], None, CLI_RUN_MAX);
        let line = assert_one_line_error(&out, 2, &format!("server with config {toml:?}"));
        assert!(line.contains(expected), "expected {expected:?} in {line:?}");
        assert!(!data_dir.exists(), "the refused server created its data directory");
    }
    let out =
        quorumq_tests::run_cli(&node_binary!(), &["server", "--config", "/nonexistent/q.toml"], None, CLI_RUN_MAX);
    let line = assert_one_line_error(&out, 2, "server with a missing config file");
    assert!(line.contains("/nonexistent/q.toml"), "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_dead_letters_limits_delays_and_push_consumers() {
    // Proves: queue create with a dead-letter queue and a length limit, send with --priority/--attr/--delay,
    // the reject-publish limit (exit 1, RESOURCE_EXHAUSTED in one line), nack --dead-letter, queue redrive,
    // consume --count --ack and queue set work from the command line as issue 4 says.
    let cluster = started("the_cli_drives_queue_semantics").await;
    ok(cli(&cluster, &["queue", "create", "jobs-dlq"]), "create the dead-letter queue");
    ok(
        cli(
            &cluster,
            &[
                "queue",
                "create",
                "jobs",
                "--dead-letter",
                "jobs-dlq",
                "--max-receives",
                "3",
                "--max-length",
                "3",
                "--overflow",
                "reject-publish",
            ],
        ),
        "create jobs",
    );
    ok(cli(&cluster, &["send", "jobs", "low"]), "send low");
    ok(cli(&cluster, &["send", "jobs", "high", "--priority", "9", "--attr", "tenant=acme"]), "send high");
    ok(cli(&cluster, &["send", "jobs", "third"]), "send third");
    let refused = cli(&cluster, &["send", "jobs", "fourth"]);
    let line = assert_one_line_error(&refused, 1, "send beyond --max-length");
    assert!(line.to_lowercase().contains("full") || line.contains("exhausted") || line.contains("limit"), "{line}");
    assert_eq!(stats(&cluster, "jobs")["ready"], 3);

    // Priority 9 first, with its attribute; reject it to the dead-letter queue.
    let stdout = ok(cli(&cluster, &["recv", "jobs", "--max", "1", "--wait", "5s", "--json"]), "recv");
    let first = json_lines(&stdout).pop().expect("one message");
    assert_eq!((first["body"].as_str(), first["priority"].as_u64()), (Some("high"), Some(9)), "{first}");
    assert_eq!(first["attributes"]["tenant"], "acme", "{first}");
    ok(cli(&cluster, &["nack", "jobs", first["receipt"].as_str().unwrap(), "--dead-letter"]), "nack --dead-letter");
    let dlq = stats(&cluster, "jobs-dlq");
    assert_eq!(dlq["ready"], 1, "{dlq}");
    assert_eq!(stats(&cluster, "jobs")["dead_lettered_total"], 1);
    let stdout = ok(cli(&cluster, &["recv", "jobs-dlq", "--max", "1", "--visibility", "0s", "--json"]), "recv dlq");
    let dead = json_lines(&stdout).pop().expect("the dead-lettered message");
    assert_eq!(dead["dead_letter_reason"], "rejected", "{dead}");

    // Redrive it back.
    let stdout = ok(cli(&cluster, &["queue", "redrive", "jobs-dlq", "--json"]), "queue redrive");
    let result = json_lines(&stdout).pop().expect("a redrive result");
    assert_eq!((result["moved"].as_u64(), result["remaining"].as_u64()), (Some(1), Some(0)), "{result}");
    assert_eq!(stats(&cluster, "jobs")["ready"], 3);

    // A delayed message is counted as delayed, not ready.
    ok(cli(&cluster, &["queue", "set", "jobs", "--max-length", "0"]), "queue set --max-length 0");
    ok(cli(&cluster, &["send", "jobs", "later", "--delay", "10m"]), "send --delay");
    let s = stats(&cluster, "jobs");
    assert_eq!((s["ready"].as_u64(), s["delayed"].as_u64()), (Some(3), Some(1)), "{s}");

    // A push consumer takes the three ready ones and acks them.
    let stdout = ok(cli(&cluster, &["consume", "jobs", "--count", "3", "--ack", "--json"]), "consume");
    let mut bodies: Vec<String> =
        json_lines(&stdout).iter().map(|m| m["body"].as_str().unwrap_or_default().to_string()).collect();
    bodies.sort();
    assert_eq!(bodies, ["high", "low", "third"]);
    let s = stats(&cluster, "jobs");
    assert_eq!((s["ready"].as_u64(), s["in_flight"].as_u64(), s["delayed"].as_u64()), (Some(0), Some(0), Some(1)));
}

/// `quorumq bench-failover` kills the leader of its own local cluster twice
/// and reports, as one JSON object, how long writes stopped in each trial.
#[test]
fn bench_failover_measures_two_trials() {
    let args = ["--json", "bench-failover", "--trials", "2", "--settle", "300ms", "--max-time", "80s"];
    let out = quorumq_tests::run_cli(&node_binary!(), &args, None, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "bench-failover failed: {out:?}");
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!(report["mode"], "kill");
    let trials = report["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 2, "{report}");
    for trial in trials {
        let resume = trial["resume_ms"].as_f64().expect("writes resumed");
        assert!(resume > 0.0 && resume < 10_000.0, "{trial}");
        assert_ne!(trial["leader"], trial["new_leader"], "{trial}");
    }
    assert_eq!(report["resume"]["count"], 2);
    assert!(report["resume"]["p50_ms"].as_f64().is_some(), "{report}");
}
