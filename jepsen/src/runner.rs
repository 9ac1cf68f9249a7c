//! One test run: set up the cluster, run the workload under the nemesis,
//! heal, drain, check, and write the store directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use quorumq_client::Client;
use quorumq_client::ClientConfig;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::checker;
use crate::db::Db;
use crate::history::Recorder;
use crate::membership;
use crate::nemesis;
use crate::nemesis::Family;
use crate::nemesis::Schedule;
use crate::report;
use crate::workload;

#[derive(Clone, Debug)]
pub struct TestOptions {
    pub name: String,
    pub nodes: u64,
    pub families: Vec<Family>,
    pub time_limit: Duration,
    /// Sends per second, over all producers.
    pub rate: f64,
    pub producers: u32,
    pub consumers: u32,
    pub seed: u64,
    pub fault_interval: (Duration, Duration),
    pub fault_duration: (Duration, Duration),
    /// Where `<name>/<time>/` goes.
    pub store: PathBuf,
    /// Recorded in the report.
    pub meta: serde_json::Value,
}

pub struct Outcome {
    pub dir: PathBuf,
    pub results: checker::Results,
}

/// `store/<name>/<UTC time>/`, created here so that two runs started in the
/// same second with the same store get different directories (the second
/// gets `<UTC time>-2`).
pub fn store_dir(store: &std::path::Path, name: &str) -> PathBuf {
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace(':', "");
    let base = store.join(name);
    let _ = std::fs::create_dir_all(&base);
    for n in 1..100 {
        let dir = if n == 1 { base.join(&time) } else { base.join(format!("{time}-{n}")) };
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // Any other error: `run` reports it when it creates the directory.
            _ => return dir,
        }
    }
    base.join(time)
}

fn make_client(db: &dyn Db, deadline: Duration) -> Result<Client, String> {
    let seeds: Vec<String> = db.nodes().into_iter().map(|id| db.client_addr(id)).collect();
    let mut config = ClientConfig::new(seeds);
    config.deadline = deadline;
    config.attempt_timeout = Duration::from_secs(1);
    Client::new(config).map_err(|e| e.to_string())
}

/// Runs one test against `db` (already created, not yet set up), writing
/// the history and report into `dir`.
pub async fn run(mut db: Box<dyn Db>, options: TestOptions, dir: PathBuf) -> Result<Outcome, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let history = Recorder::create(&dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    let setup = tokio::task::spawn_blocking(move || db.setup().map(|()| db))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cluster setup failed: {e}"))?;
    let db: Arc<Mutex<Box<dyn Db>>> = Arc::new(Mutex::new(setup));
    let result = run_phases(&db, &options, &history).await;
    let _ = history.flush();
    let teardown_db = db.clone();
    let _ = tokio::task::spawn_blocking(move || teardown_db.blocking_lock().teardown()).await;
    result?;

    let ops = history.ops();
    let results = checker::check(&ops);
    let mut meta = options.meta.clone();
    meta["seed"] = json!(options.seed);
    meta["nodes"] = json!(options.nodes);
    meta["nemesis"] = json!(options.families.iter().map(|f| f.name()).collect::<Vec<_>>());
    meta["time_limit_s"] = json!(options.time_limit.as_secs_f64());
    meta["rate"] = json!(options.rate);
    meta["producers"] = json!(options.producers);
    meta["consumers"] = json!(options.consumers);
    report::write_report(&dir, &options.name, &ops, &results, &meta).map_err(|e| format!("writing the report: {e}"))?;
    Ok(Outcome { dir, results })
}

async fn run_phases(db: &Arc<Mutex<Box<dyn Db>>>, options: &TestOptions, history: &Recorder) -> Result<(), String> {
    let client = {
        let guard = db.lock().await;
        make_client(guard.as_ref(), Duration::from_secs(5))?
    };
    let leader = workload::wait_for_leader(&client, Duration::from_secs(60)).await?;
    println!("jepsen: node {leader} leads; creating queue {}", workload::QUEUE);
    workload::create_queue(&client, Duration::from_secs(60)).await?;

    let start = Instant::now();
    let end = start + options.time_limit;
    let mut tasks = Vec::new();
    for id in 0..options.producers {
        let per_producer = options.rate / options.producers.max(1) as f64;
        tasks.push(tokio::spawn(workload::producer(id, client.clone(), history.clone(), per_producer, end)));
    }
    for id in 0..options.consumers {
        tasks.push(tokio::spawn(workload::consumer(id, client.clone(), history.clone(), options.seed, end)));
    }
    let nemesis = if options.families.is_empty() {
        None
    } else {
        let schedule = Schedule {
            families: options.families.clone(),
            interval: options.fault_interval,
            duration: options.fault_duration,
        };
        Some(tokio::spawn(nemesis::run(db.clone(), schedule, client.clone(), history.clone(), options.seed, end)))
    };
    println!("jepsen: running the workload for {:?}", options.time_limit);
    for task in tasks {
        let _ = task.await;
    }
    if let Some(nemesis) = nemesis {
        match nemesis.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("jepsen: nemesis error: {e}"),
            Err(e) => eprintln!("jepsen: nemesis task failed: {e}"),
        }
    }

    println!("jepsen: healing the cluster and draining the queue");
    nemesis::heal_all(db).await.map_err(|e| format!("healing: {e}"))?;
    let drain_client = {
        let guard = db.lock().await;
        make_client(guard.as_ref(), Duration::from_secs(10))?
    };
    workload::wait_for_leader(&drain_client, Duration::from_secs(60)).await?;
    if options.families.contains(&Family::Membership) {
        // Complete any replacement the last fault left half done.
        let mut log = membership::Log::default();
        let deadline = Instant::now() + membership::FINAL_HEAL_BUDGET;
        if let Err(e) = membership::heal(db, &drain_client, deadline, &mut log).await {
            return Err(format!("healing the membership: {e}; steps: {}", log.steps().join("; ")));
        }
        if !log.steps().is_empty() {
            println!("jepsen: membership healed: {}", log.steps().join("; "));
        }
    }
    workload::drain(&drain_client, history, Duration::from_secs(180)).await
}
