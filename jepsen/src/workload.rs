//! The workload: producers sending unique values, consumers receiving and
//! acking them, and the final drain — all through the public client, every
//! operation recorded in the history.

use std::time::Duration;

use quorumq_client::Client;
use quorumq_client::Error;
use quorumq_client::QueueOptions;
use quorumq_client::ReceiveOptions;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::time::Instant;

use crate::history::OpType;
use crate::history::Recorder;

pub const QUEUE: &str = "jepsen";

/// How long a delivery stays invisible: short, so that deliveries lost with a
/// killed consumer or a lost answer come back during the test.
pub const VISIBILITY: Duration = Duration::from_secs(3);

/// Errors that prove the operation did not take effect. Anything else
/// (unavailable after retries, deadline, internal) leaves it unknown.
pub fn completion_type(e: &Error) -> OpType {
    match e {
        Error::NotFound(_)
        | Error::AlreadyExists(_)
        | Error::InvalidArgument(_)
        | Error::FailedPrecondition(_)
        | Error::ResourceExhausted(_) => OpType::Fail,
        Error::Unavailable(_) | Error::DeadlineExceeded(_) | Error::Internal(_) => OpType::Info,
    }
}

/// Waits until some node reports being the leader.
pub async fn wait_for_leader(client: &Client, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(id) = crate::nemesis::find_leader(client).await {
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err(format!("no leader within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the test queue, retrying through elections.
pub async fn create_queue(client: &Client, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let options = QueueOptions { visibility_timeout: Some(VISIBILITY), ..QueueOptions::default() };
    loop {
        match client.create_queue(QUEUE, options.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("cannot create the queue: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Sends `p{id}-{n}` for n = 0, 1, … at `rate` per second until `end`.
pub async fn producer(id: u32, client: Client, history: Recorder, rate: f64, end: Instant) {
    let process = format!("producer-{id}");
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    // Spread the producers over the period, so that they do not send in
    // lockstep bursts.
    let offset = period.mul_f64(rand::random::<f64>());
    let mut next = Instant::now() + offset;
    tokio::time::sleep_until(next).await;
    let mut n = 0u64;
    while Instant::now() < end {
        let value = format!("p{id}-{n}");
        n += 1;
        let inv = history.invoke(&process, "send", json!(value), client.leader_address());
        match client.send(QUEUE, value.clone()).await {
            Ok(_) => inv.complete(OpType::Ok, json!(value), client.leader_address(), None),
            Err(e) => inv.complete(completion_type(&e), json!(value), client.leader_address(), Some(e.to_string())),
        }
        next += period;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep_until(next.min(end)).await;
        } else {
            // Behind schedule (the cluster was slow): do not burst to catch up.
            next = now;
        }
    }
}

/// Receives and acks until `end`. Now and then it "crashes" before acking
/// (drops the batch), so that redelivery after the visibility timeout is part
/// of every test.
pub async fn consumer(id: u32, client: Client, history: Recorder, seed: u64, end: Instant) {
    let process = format!("consumer-{id}");
    let mut rng = StdRng::seed_from_u64(seed ^ (0xc0ffee + id as u64));
    while Instant::now() < end {
        let options = ReceiveOptions { max_messages: 10, wait: Duration::from_millis(500), visibility_timeout: None };
        if !receive_and_ack(&process, &client, &history, options, rng.random_bool(0.05)).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One receive, then (unless `drop_batch`) one ack of what it returned.
/// Returns whether messages were received.
async fn receive_and_ack(
    process: &str,
    client: &Client,
    history: &Recorder,
    options: ReceiveOptions,
    drop_batch: bool,
) -> bool {
    let inv = history.invoke(process, "receive", serde_json::Value::Null, client.leader_address());
    let messages = match client.receive(QUEUE, options).await {
        Ok(messages) => messages,
        Err(e) => {
            inv.complete(completion_type(&e), serde_json::Value::Null, client.leader_address(), Some(e.to_string()));
            return false;
        }
    };
    let received: Vec<_> = messages
        .iter()
        .map(|m| json!({ "value": String::from_utf8_lossy(&m.body), "receive_count": m.receive_count }))
        .collect();
    inv.complete(OpType::Ok, json!(received), client.leader_address(), None);
    if messages.is_empty() || drop_batch {
        return !messages.is_empty();
    }
    let values: Vec<String> = messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    let inv = history.invoke(process, "ack", json!(values), client.leader_address());
    match client.ack_batch(QUEUE, messages.iter().map(|m| m.receipt.clone())).await {
        Ok(results) => {
            let errors: Vec<String> = results
                .iter()
                .zip(&values)
                .filter_map(|(r, v)| r.as_ref().err().map(|e| format!("{v}: {}", e.message)))
                .collect();
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            inv.complete(OpType::Ok, json!(values), client.leader_address(), error);
        }
        Err(e) => inv.complete(completion_type(&e), json!(values), client.leader_address(), Some(e.to_string())),
    }
    true
}

/// After the faults: receives and acks everything left, until the queue is
/// empty (messages in flight come back within the visibility timeout).
pub async fn drain(client: &Client, history: &Recorder, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut quiet_since = Instant::now();
    loop {
        let options = ReceiveOptions { max_messages: 100, wait: Duration::from_secs(1), visibility_timeout: None };
        if receive_and_ack("drain", client, history, options, false).await {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > VISIBILITY {
            match client.get_queue(QUEUE).await {
                Ok(q) if q.stats.ready + q.stats.in_flight == 0 => return Ok(()),
                Ok(_) | Err(_) => {}
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the queue did not drain within {timeout:?}"));
        }
    }
}
