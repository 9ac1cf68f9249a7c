//! `quorumq-jepsen`: run a fault-injection test, or re-check a history.
//!
//! ```text
//! quorumq-jepsen test --backend local --nodes 3 --nemesis kill,pause,partition --time-limit 60 --rate 200 --seed 7
//! quorumq-jepsen check store/<test>/<time>/history.jsonl
//! ```
//!
//! Exit codes: 0 the checker found the history valid (or, with
//! `--expect-loss`, found a loss); 1 it did not, or the run failed; 2 invalid
//! arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use quorumq_jepsen::checker;
use quorumq_jepsen::compose::ComposeDb;
use quorumq_jepsen::db::Db;
use quorumq_jepsen::db::LocalDb;
use quorumq_jepsen::db::Net;
use quorumq_jepsen::history;
use quorumq_jepsen::nemesis::Family;
use quorumq_jepsen::runner;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "quorumq-jepsen", about = "Fault-injection tests for quorumq")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a test: workload under a nemesis, then heal, drain and check.
    Test(TestArgs),
    /// Check a recorded history again and print the verdict.
    Check { history: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// Node processes on this machine.
    Local,
    /// The Docker Compose cluster of deploy/ (image quorumq:local).
    Compose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NetArg {
    /// One network namespace per node (needs root); partitions possible.
    Namespaces,
    /// Everything on 127.0.0.1; no partition nemesis.
    Loopback,
}

#[derive(clap::Args, Debug)]
struct TestArgs {
    #[arg(long, value_enum, default_value = "local")]
    backend: Backend,
    /// Local backend: how nodes are networked.
    #[arg(long, value_enum, default_value = "namespaces")]
    net: NetArg,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Comma-separated nemesis families: kill, pause, partition, restart,
    /// kill-all, membership (empty: no faults).
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Sends per second over all producers.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// Random seed of the nemesis schedule and the workload (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds between faults: MIN..MAX.
    #[arg(long, default_value = "3..8")]
    fault_interval: String,
    /// Seconds each fault lasts: MIN..MAX.
    #[arg(long, default_value = "3..8")]
    fault_duration: String,
    /// The quorumq binary (default: `quorumq` next to this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where results go: STORE/<test>/<time>/.
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// Run the nodes with deliberately broken durability
    /// (--unsafe-ack-before-fsync; needs a binary built with the
    /// fault-injection feature).
    #[arg(long)]
    broken_ack_before_fsync: bool,
    /// Succeed only if the checker finds a lost acknowledged message: the
    /// proof that the harness catches a broken build.
    #[arg(long)]
    expect_loss: bool,
    /// Compose backend: the compose file (default deploy/compose/docker-compose.N.yml).
    #[arg(long)]
    compose_file: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = s.split_once("..").ok_or_else(|| format!("expected MIN..MAX seconds, got {s:?}"))?;
    let lo: f64 = lo.trim().parse().map_err(|_| format!("bad number {lo:?}"))?;
    let hi: f64 = hi.trim().parse().map_err(|_| format!("bad number {hi:?}"))?;
    if lo < 0.0 || hi < lo {
        return Err(format!("bad range {s:?}"));
    }
    Ok((Duration::from_secs_f64(lo), Duration::from_secs_f64(hi)))
}

fn rerun_command(args: &TestArgs, seed: u64) -> String {
    let mut cmd = format!(
        "cargo run --release -p quorumq-jepsen -- test --backend {} --nodes {} --nemesis {} --time-limit {} --rate {} \
         --producers {} --consumers {} --fault-interval {} --fault-duration {} --seed {seed}",
        match args.backend {
            Backend::Local => "local",
            Backend::Compose => "compose",
        },
        args.nodes,
        if args.nemesis.is_empty() { "''".to_string() } else { args.nemesis.clone() },
        args.time_limit,
        args.rate,
        args.producers,
        args.consumers,
        args.fault_interval,
        args.fault_duration,
    );
    if args.backend == Backend::Local && args.net == NetArg::Loopback {
        cmd.push_str(" --net loopback");
    }
    if args.broken_ack_before_fsync {
        cmd.push_str(" --broken-ack-before-fsync");
    }
    if args.expect_loss {
        cmd.push_str(" --expect-loss");
    }
    if let Some(binary) = &args.binary {
        cmd.push_str(&format!(" --binary {}", binary.display()));
    }
    cmd
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { history } => match history::load(&history) {
            Ok(ops) => {
                let results = checker::check(&ops);
                println!("{}", results.summary_line());
                if results.valid { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", history.display());
                ExitCode::from(1)
            }
        },
        Cmd::Test(args) => test(args),
    }
}

fn test(args: TestArgs) -> ExitCode {
    if ![1, 3, 5, 7].contains(&args.nodes) {
        return usage("--nodes must be 1, 3, 5 or 7");
    }
    let families: Vec<Family> =
        match args.nemesis.split(',').filter(|s| !s.trim().is_empty()).map(Family::parse).collect::<Result<_, _>>() {
            Ok(f) => f,
            Err(e) => return usage(e),
        };
    let (fault_interval, fault_duration) = match (parse_range(&args.fault_interval), parse_range(&args.fault_duration))
    {
        (Ok(i), Ok(d)) => (i, d),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    if families.contains(&Family::Membership) && args.nodes < 3 {
        return usage("the membership nemesis needs --nodes 3 or more (it takes one voter out at a time)");
    }
    if args.rate <= 0.0 || args.producers == 0 {
        return usage("--rate and --producers must be positive");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let name = format!(
        "quorumq-{}-{}n-{}",
        match args.backend {
            Backend::Local => "local",
            Backend::Compose => "compose",
        },
        args.nodes,
        if families.is_empty() { "none".to_string() } else { args.nemesis.replace(',', "+") }
    );
    let dir = runner::store_dir(&args.store, &name);
    let mut server_args = Vec::new();
    if args.broken_ack_before_fsync {
        server_args.push("--unsafe-ack-before-fsync".to_string());
    }
    let db: Box<dyn Db> = match args.backend {
        Backend::Local => {
            let binary = match &args.binary {
                Some(b) => b.clone(),
                None => match std::env::current_exe() {
                    Ok(exe) => exe.with_file_name("quorumq"),
                    Err(e) => return usage(format!("cannot locate the quorumq binary: {e}")),
                },
            };
            if !binary.exists() {
                return usage(format!(
                    "no quorumq binary at {} (build it: cargo build --release -p quorumq, or pass --binary)",
                    binary.display()
                ));
            }
            let net = match args.net {
                NetArg::Namespaces => Net::Namespaces,
                NetArg::Loopback => Net::Loopback,
            };
            if net == Net::Loopback && families.contains(&Family::Partition) {
                return usage("the partition nemesis needs --net namespaces");
            }
            match LocalDb::new(binary, args.nodes, &dir, net, server_args) {
                Ok(db) => {
                    if let Some(slot) = db.net_slot() {
                        println!("jepsen: network slot {slot}: bridge qqj{slot}-br, nodes on 10.77.{slot}.0/24");
                    }
                    Box::new(db)
                }
                Err(e) => return usage(format!("cannot lay out the cluster: {e}")),
            }
        }
        Backend::Compose => {
            if args.broken_ack_before_fsync {
                return usage("--broken-ack-before-fsync is for the local backend");
            }
            let file = args
                .compose_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("deploy/compose/docker-compose.{}.yml", args.nodes)));
            match ComposeDb::new(file, args.nodes, &dir) {
                Ok(db) => Box::new(db),
                Err(e) => return usage(format!("compose backend: {e}")),
            }
        }
    };
    let rerun = rerun_command(&args, seed);
    println!("jepsen: seed {seed}");
    println!("jepsen: rerun with: {rerun}");
    let options = runner::TestOptions {
        name,
        nodes: args.nodes,
        families,
        time_limit: Duration::from_secs(args.time_limit),
        rate: args.rate,
        producers: args.producers,
        consumers: args.consumers,
        seed,
        fault_interval,
        fault_duration,
        store: args.store.clone(),
        meta: json!({
            "command": rerun,
            "backend": format!("{:?}", args.backend).to_lowercase(),
            "broken_ack_before_fsync": args.broken_ack_before_fsync,
            "git_commit": std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        }),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return usage(format!("cannot start the runtime: {e}")),
    };
    let outcome = runtime.block_on(runner::run(db, options, dir.clone()));
    match outcome {
        Err(e) => {
            eprintln!("error: {e} (logs in {})", dir.display());
            println!("jepsen: seed {seed}; rerun with: {rerun}");
            ExitCode::from(1)
        }
        Ok(outcome) => {
            println!("{}", outcome.results.summary_line());
            println!("jepsen: report {}", outcome.dir.join("index.html").display());
            println!("jepsen: seed {seed}; rerun with: {rerun}");
            let lost = outcome.results.lost.count > 0;
            if args.expect_loss {
                if lost {
                    println!(
                        "jepsen: the broken build lost acknowledged messages, as expected: the harness catches it"
                    );
                    ExitCode::SUCCESS
                } else {
                    println!("jepsen: expected a loss from the broken build and found none");
                    ExitCode::from(1)
                }
            } else if outcome.results.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
