//! The `Consume` stream of a real node, driven through raw gRPC: the
//! prefetch bounds what is unsettled, acks sent back to back (without
//! waiting for answers) are answered in request order, deliveries settled
//! outside the stream free room, FIFO groups keep their order while several
//! Receives are in flight, a delivery held past the consumer timeout ends
//! the stream, and a closed stream releases what it held.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use quorumq_node::config::Config;
use quorumq_node::server::RunningNode;
use quorumq_node::server::start;
use quorumq_proto::client as pb;
use quorumq_proto::client::consume_request::Request as Req;
use quorumq_proto::client::consume_response::Response as Resp;
use quorumq_proto::client::queues_client::QueuesClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A one-node cluster (its own majority), ready for writes.
async fn single_node(dir: &std::path::Path) -> (RunningNode, QueuesClient<Channel>) {
    let addr = format!("127.0.0.1:{}", free_port());
    let peers: BTreeMap<u64, String> = [(1, addr.clone())].into();
    let node = start(Config::new(1, addr.parse().unwrap(), dir.join("n1"), peers)).await.expect("node starts");
    let deadline = Instant::now() + WAIT;
    while !node.raft.is_leader() {
        assert!(Instant::now() < deadline, "the single node did not become leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = QueuesClient::connect(format!("http://{}", node.local_addr)).await.unwrap();
    (node, client)
}

async fn create(client: &mut QueuesClient<Channel>, name: &str, fifo: bool) {
    let config = pb::QueueConfig { fifo: Some(fifo), ..Default::default() };
    // Leadership may need a moment to be usable for writes.
    let deadline = Instant::now() + WAIT;
    loop {
        match client.create_queue(pb::CreateQueueRequest { name: name.into(), config: Some(config.clone()) }).await {
            Ok(_) => return,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("create {name}: {e}"),
        }
    }
}

async fn send(client: &mut QueuesClient<Channel>, queue: &str, bodies: &[String], group: &str) {
    for chunk in bodies.chunks(100) {
        let messages = chunk
            .iter()
            .map(|b| pb::OutgoingMessage {
                body: b.clone().into_bytes().into(),
                group: group.into(),
                ..Default::default()
            })
            .collect();
        let sent = client.send(pb::SendRequest { queue: queue.into(), messages }).await.unwrap().into_inner();
        assert!(sent.results.iter().all(|r| r.error.is_none()), "{sent:?}");
    }
}

async fn stats(client: &mut QueuesClient<Channel>, queue: &str) -> pb::QueueStats {
    let info = client.get_queue(pb::GetQueueRequest { name: queue.into() }).await.unwrap().into_inner();
    info.queue.and_then(|q| q.stats).expect("stats")
}

/// An open consume stream: requests go in through `tx`, responses come out
/// of `rx`.
struct Stream {
    tx: mpsc::Sender<pb::ConsumeRequest>,
    rx: tonic::Streaming<pb::ConsumeResponse>,
}

impl Stream {
    async fn open(client: &mut QueuesClient<Channel>, queue: &str, prefetch: u32, timeout_ms: Option<u64>) -> Stream {
        let (tx, input) = mpsc::channel(64);
        let start = pb::ConsumeStart { queue: queue.into(), prefetch, consumer_timeout_ms: timeout_ms };
        tx.send(pb::ConsumeRequest { request: Some(Req::Start(start)) }).await.unwrap();
        let rx = client.consume(tokio_stream::wrappers::ReceiverStream::new(input)).await.unwrap().into_inner();
        Stream { tx, rx }
    }

    async fn next(&mut self) -> Result<Resp, tonic::Status> {
        match tokio::time::timeout(WAIT, self.rx.message()).await.expect("a response in time") {
            Ok(Some(r)) => Ok(r.response.expect("a response")),
            Ok(None) => Err(tonic::Status::cancelled("stream ended")),
            Err(status) => Err(status),
        }
    }

    async fn message(&mut self) -> pb::Message {
        match self.next().await.unwrap() {
            Resp::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn messages(&mut self, n: usize) -> Vec<pb::Message> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.message().await);
        }
        out
    }

    async fn ack(&self, queue: &str, receipts: Vec<String>) {
        let ack = pb::AckRequest { queue: queue.into(), receipts };
        self.tx.send(pb::ConsumeRequest { request: Some(Req::Ack(ack)) }).await.unwrap();
    }

    /// Nothing arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("expected nothing, got {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_deliveries_and_pipelined_acks_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, mut client) = single_node(dir.path()).await;
    create(&mut client, "jobs", false).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    send(&mut client, "jobs", &bodies, "").await;

    let mut stream = Stream::open(&mut client, "jobs", 20, None).await;
    let first = stream.messages(20).await;
    stream.quiet_for(Duration::from_millis(300)).await;
    assert_eq!(stats(&mut client, "jobs").await.in_flight, 20, "the node delivered beyond the prefetch");

    // Four acks back to back, the last with a malformed receipt among good
    // ones; the answers come in request order, one per request.
    let receipts: Vec<String> = first.iter().map(|m| m.receipt.clone()).collect();
    let mut requests: Vec<Vec<String>> = receipts.chunks(5).map(|c| c.to_vec()).collect();
    requests[3].push("not-a-receipt".into());
    for r in &requests {
        stream.ack("jobs", r.clone()).await;
    }
    let mut answered = Vec::new();
    let mut delivered = Vec::new();
    while answered.len() < requests.len() {
        match stream.next().await.unwrap() {
            Resp::Results(r) => answered.push(r.results),
            Resp::Message(m) => delivered.push(m),
        }
    }
    for (request, results) in requests.iter().zip(&answered) {
        let got: Vec<&String> = results.iter().map(|r| &r.receipt).collect();
        assert_eq!(got, request.iter().collect::<Vec<_>>(), "answers out of request order");
    }
    let errors: Vec<_> = answered.iter().flatten().filter(|r| r.error.is_some()).map(|r| &r.receipt).collect();
    assert_eq!(errors, ["not-a-receipt"], "only the malformed receipt fails");

    // The 20 settled make room for the next 20, and no more.
    delivered.extend(stream.messages(20 - delivered.len()).await);
    stream.quiet_for(Duration::from_millis(300)).await;
    let s = stats(&mut client, "jobs").await;
    assert_eq!((s.in_flight, s.ready, s.acked_total), (20, 20, 20), "{s:?}");

    // Acked through the unary call (outside the stream): room again.
    let acked = client
        .ack(pb::AckRequest { queue: "jobs".into(), receipts: delivered.iter().map(|m| m.receipt.clone()).collect() })
        .await
        .unwrap()
        .into_inner();
    assert!(acked.results.iter().all(|r| r.error.is_none()));
    let last = stream.messages(20).await;
    let mut all: Vec<String> = first.iter().chain(&delivered).chain(&last).map(body).collect();
    all.sort_by_key(|b| b[1..].parse::<u32>().unwrap());
    assert_eq!(all, bodies, "every message delivered exactly once");

    // Closing the stream releases the 20 it held.
    drop(stream);
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stats(&mut client, "jobs").await;
        if (s.in_flight, s.ready) == (0, 20) {
            break;
        }
        assert!(Instant::now() < deadline, "a closed stream's deliveries were not released: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn body(m: &pb::Message) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_group_arrives_in_order_while_receives_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, mut client) = single_node(dir.path()).await;
    create(&mut client, "orders-fifo", true).await;
    let bodies: Vec<String> = (0..400).map(|i| format!("o{i}")).collect();
    send(&mut client, "orders-fifo", &bodies, "customer-1").await;

    // Small prefetch, acks in small pieces as messages come: many Receives,
    // overlapping with each other and with the acks.
    let mut stream = Stream::open(&mut client, "orders-fifo", 16, None).await;
    let mut got = Vec::new();
    let mut pending = Vec::new();
    while got.len() < bodies.len() {
        match stream.next().await.unwrap() {
            Resp::Message(m) => {
                got.push(body(&m));
                pending.push(m.receipt);
                if pending.len() == 4 {
                    stream.ack("orders-fifo", std::mem::take(&mut pending)).await;
                }
            }
            Resp::Results(r) => assert!(r.results.iter().all(|r| r.error.is_none()), "{r:?}"),
        }
    }
    assert_eq!(got, bodies, "the group's order was not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_held_past_the_consumer_timeout_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, mut client) = single_node(dir.path()).await;
    create(&mut client, "slow", false).await;
    send(&mut client, "slow", &["a".to_string()], "").await;

    let mut stream = Stream::open(&mut client, "slow", 5, Some(500)).await;
    let held = stream.message().await;
    let started = Instant::now();
    let status = match stream.next().await {
        Err(status) => status,
        Ok(other) => panic!("expected the stream to end, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "ended after {:?}", started.elapsed());
    // Released at once (not after the delivery's own, longer, timeout).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let received = client
            .receive(pb::ReceiveRequest {
                queue: "slow".into(),
                max_messages: 1,
                visibility_timeout_ms: None,
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(m) = received.messages.first() {
            assert_eq!((body(m), m.receive_count), (body(&held), 2));
            break;
        }
        assert!(Instant::now() < deadline, "the timed-out delivery was not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
