//! The `quorumq` command line: run a node, a local cluster or the demo;
//! manage queues; send, receive and acknowledge messages.
//!
//! Exit codes: 0 success; 1 the operation failed (the error is one line on
//! stderr); 2 the command line or configuration is invalid.

mod bench;
mod bench_failover;
mod client_cmds;
mod config_file;
mod consume;
mod dev;
mod server;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::parse_duration;
use clap::CommandFactory;
use clap::FromArgMatches;
use clap::Parser;
use clap::Subcommand;

#[derive(Parser, Debug)]
#[command(name = "quorumq", version, about = "A replicated quorum queue cluster", propagate_version = true)]
struct Cli {
    /// Cluster nodes to talk to (any subset; the leader is found).
    #[arg(long, global = true, env = "QUORUMQ_CLUSTER", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    cluster: Vec<String>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// How long an operation may take, retries included.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one node.
    Server(server::ServerArgs),
    /// Run a local cluster on loopback until Ctrl-C.
    Dev(dev::DevArgs),
    /// Start a local 3-node cluster, kill its leader while sending, and check
    /// that nothing acknowledged was lost.
    Demo(dev::DemoArgs),
    /// Create, change, delete, list, inspect, purge and redrive queues.
    #[command(subcommand)]
    Queue(client_cmds::QueueCmd),
    /// Send messages (exit 0 only when every one was acknowledged).
    Send(client_cmds::SendArgs),
    /// Receive messages.
    Recv(client_cmds::RecvArgs),
    /// Receive messages as the leader pushes them, until Ctrl-C or --count
    /// (a push consumer that follows the leader).
    Consume(consume::ConsumeArgs),
    /// Acknowledge (delete) delivered messages by receipt.
    Ack(client_cmds::ReceiptArgs),
    /// Give delivered messages back: visible again now (or after --delay),
    /// or rejected to the dead-letter queue (--dead-letter).
    Nack(client_cmds::NackArgs),
    /// Change the visibility timeout of delivered messages.
    Visibility(client_cmds::VisibilityArgs),
    /// Cluster status and membership: status, node, add, remove, transfer-leader.
    #[command(subcommand)]
    Cluster(client_cmds::ClusterCmd),
    /// Measure send (and receive) throughput and latency.
    Bench(bench::BenchArgs),
    /// Kill (or cut off) the leader of a local cluster again and again while
    /// sending, and measure how long confirmed writes stop.
    BenchFailover(bench_failover::BenchFailoverArgs),
}

/// An error that ends the command: printed as one line; exit code 1, or 2
/// for an invalid command line or configuration.
pub struct Failure {
    pub message: String,
    pub exit: u8,
}

impl Failure {
    pub fn usage(message: impl std::fmt::Display) -> Failure {
        Failure { message: message.to_string(), exit: 2 }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure { message: e.to_string(), exit: 1 }
    }
}

/// Parses this process's command line (clap prints help, version and
/// command-line errors and exits itself), with the settings of
/// `quorumq server --config FILE` merged in.
fn parse_command_line() -> Result<Cli, Failure> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command().try_get_matches_from(&argv).unwrap_or_else(|e| e.exit());
    let matches = config_file::merge(Cli::command(), argv, matches)?;
    Cli::from_arg_matches(&matches).map_err(|e| Failure::usage(config_file::one_line(&e)))
}

/// Runs the command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(Failure { message, exit }) => {
            eprintln!("error: {message}");
            return ExitCode::from(exit);
        }
    };
    if !matches!(cli.command, Cmd::Server(_)) {
        // Like other Unix tools, end quietly when the reader of our output
        // goes away (`quorumq cluster status | head -1`) instead of
        // panicking on a failed print. The server keeps ignoring SIGPIPE: it
        // writes to sockets that peers may close.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(feature = "mimalloc")]
    builder.on_thread_park(release_freed_memory);
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Server(args) => server::run(args).await,
            Cmd::Dev(args) => dev::run_dev(args).await,
            Cmd::Demo(args) => dev::run_demo(args).await,
            Cmd::Bench(args) => {
                bench::run(&cli.cluster, cli.timeout, client_cmds::Output { json: cli.json }, args).await
            }
            Cmd::BenchFailover(args) => bench_failover::run(client_cmds::Output { json: cli.json }, args).await,
            command => {
                let client = client_cmds::connect(&cli.cluster, cli.timeout)?;
                let out = client_cmds::Output { json: cli.json };
                match command {
                    Cmd::Queue(cmd) => client_cmds::queue(&client, out, cmd).await,
                    Cmd::Send(args) => client_cmds::send(&client, out, args).await,
                    Cmd::Recv(args) => client_cmds::recv(&client, out, args).await,
                    Cmd::Consume(args) => consume::consume(&client, out, args).await,
                    Cmd::Ack(args) => client_cmds::ack(&client, out, args).await,
                    Cmd::Nack(args) => client_cmds::nack(&client, out, args).await,
                    Cmd::Visibility(args) => client_cmds::visibility(&client, out, args).await,
                    Cmd::Cluster(cmd) => client_cmds::cluster(&client, out, cmd).await,
                    Cmd::Server(_) | Cmd::Dev(_) | Cmd::Demo(_) | Cmd::Bench(_) | Cmd::BenchFailover(_) => {
                        unreachable!("handled above")
                    }
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { message, exit }) => {
            eprintln!("error: {message}");
            ExitCode::from(exit)
        }
    }
}

/// Called by each runtime thread as it goes idle: at most once a second,
/// lets mimalloc hand back to the OS what this thread has freed. mimalloc
/// returns a thread's freed pages only when that thread allocates again
/// after a delay, so a node that went idle after a burst (a restart's
/// replay of its log) kept the burst's memory; measured in BENCHMARKS.md.
/// A node's Raft timers wake its threads several times a second, so each
/// gets here often enough.
#[cfg(feature = "mimalloc")]
fn release_freed_memory() {
    use std::cell::Cell;
    use std::time::Duration;
    use std::time::Instant;
    const EVERY: Duration = Duration::from_secs(1);
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_none_or(|at| now.duration_since(at) >= EVERY) {
            last.set(Some(now));
            // SAFETY: mi_collect only walks and frees this thread's own
            // mimalloc structures; it takes no pointers from us.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}
