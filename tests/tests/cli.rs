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
    let cluster = started("the_cli_contract").await;

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
