//! The total-queue checker and the report, on hand-made histories that
//! plant one anomaly each.

use quorumq_jepsen::checker::Results;
use quorumq_jepsen::checker::check;
use quorumq_jepsen::history::Op;
use quorumq_jepsen::history::OpType;
use quorumq_jepsen::report::write_report;
use serde_json::Value;
use serde_json::json;

/// Builds a history; each operation is 10 ms after the previous one unless
/// placed with `at`.
#[derive(Default)]
struct History {
    ops: Vec<Op>,
    now_ms: u64,
}

impl History {
    fn at(&mut self, ms: u64) -> &mut Self {
        self.now_ms = ms;
        self
    }

    fn op(&mut self, process: &str, kind: OpType, f: &str, value: Value) -> &mut Self {
        let latency_ms = (kind != OpType::Invoke).then_some(5.0);
        self.ops.push(Op {
            index: self.ops.len() as u64,
            time_ns: self.now_ms * 1_000_000,
            process: process.to_string(),
            kind,
            f: f.to_string(),
            value,
            node: None,
            latency_ms,
            error: None,
        });
        self.now_ms += 10;
        self
    }

    /// A send of `value` by `producer` completing with `kind` (`None`: no completion).
    fn send(&mut self, producer: &str, value: &str, kind: Option<OpType>) -> &mut Self {
        self.op(producer, OpType::Invoke, "send", json!(value));
        if let Some(kind) = kind {
            self.op(producer, kind, "send", json!(value));
        }
        self
    }

    fn receive(&mut self, consumer: &str, values: &[&str]) -> &mut Self {
        let delivered: Vec<Value> = values.iter().map(|v| json!({"value": v, "receive_count": 1})).collect();
        self.op(consumer, OpType::Invoke, "receive", Value::Null).op(consumer, OpType::Ok, "receive", json!(delivered))
    }

    fn ack(&mut self, consumer: &str, values: &[&str]) -> &mut Self {
        self.op(consumer, OpType::Invoke, "ack", json!(values)).op(consumer, OpType::Ok, "ack", json!(values))
    }

    fn check(&self) -> Results {
        check(&self.ops)
    }
}

/// Three acked values, each received and acked once.
fn clean() -> History {
    let mut h = History::default();
    h.send("producer-0", "p0-0", Some(OpType::Ok))
        .send("producer-0", "p0-1", Some(OpType::Ok))
        .send("producer-1", "p1-0", Some(OpType::Ok))
        .receive("consumer-0", &["p0-0", "p0-1"])
        .ack("consumer-0", &["p0-0", "p0-1"])
        .receive("drain", &["p1-0"])
        .ack("drain", &["p1-0"]);
    h
}

#[test]
fn clean_history_is_valid() {
    // A history where every acked send is received once, in order, is valid with nothing to report.
    let r = clean().check();
    assert!(r.valid, "{r:#?}");
    assert_eq!((r.counts.attempted, r.counts.acked, r.counts.failed, r.counts.indeterminate), (3, 3, 0, 0));
    assert_eq!((r.counts.received, r.counts.receive_ok, r.counts.ack_ok), (3, 2, 2));
    assert_eq!(r.lost.count + r.unexpected.count + r.failed_but_received.count, 0);
    assert_eq!((r.duplicated.count, r.duplicated.max_times), (0, 1));
    assert_eq!((r.recovered.count, r.not_consumed.count, r.order.inversions), (0, 0, 0));
    assert_eq!(r.order.pairs_checked, 1);
    assert!(r.summary_line().starts_with("VALID"), "{}", r.summary_line());
}

#[test]
fn lost_acked_send_is_invalid() {
    // An acknowledged send whose value is never received makes the history invalid and is named.
    let mut h = clean();
    h.send("producer-1", "p1-1", Some(OpType::Ok));
    let r = h.check();
    assert!(!r.valid);
    assert_eq!(r.lost.count, 1);
    assert_eq!(r.lost.examples, vec!["p1-1".to_string()]);
    assert_eq!(r.not_consumed.count, 1);
    let line = r.summary_line();
    assert!(line.starts_with("INVALID") && line.contains("p1-1"), "{line}");
}

#[test]
fn unexpected_value_is_invalid() {
    // A received value that no send ever carried makes the history invalid.
    let mut h = clean();
    h.receive("consumer-1", &["ghost"]);
    let r = h.check();
    assert!(!r.valid);
    assert_eq!(r.unexpected.count, 1);
    assert_eq!(r.unexpected.examples, vec!["ghost".to_string()]);
    assert_eq!(r.lost.count, 0);
}

#[test]
fn duplicate_delivery_is_counted_but_valid() {
    // A value received in two receives is a duplicate (at-least-once), not an anomaly.
    let mut h = clean();
    h.receive("consumer-1", &["p0-0"]).receive("drain", &["p0-0"]);
    let r = h.check();
    assert!(r.valid, "{r:#?}");
    assert_eq!(r.duplicated.count, 1);
    assert_eq!(r.duplicated.max_times, 3);
    assert_eq!(r.duplicated.examples[0].value, "p0-0");
    assert_eq!(r.counts.received, 3);
    assert_eq!(r.counts.deliveries, 5);
}

#[test]
fn indeterminate_send_that_shows_up_is_recovered() {
    // A send with an unknown outcome (info, or no completion) whose value is received counts as recovered and stays valid.
    let mut h = clean();
    h.send("producer-2", "p2-0", Some(OpType::Info))
        .send("producer-3", "p3-0", None)
        .send("producer-4", "p4-0", Some(OpType::Info))
        .receive("drain", &["p2-0", "p3-0"]);
    let r = h.check();
    assert!(r.valid, "{r:#?}");
    assert_eq!(r.counts.indeterminate, 3);
    assert_eq!((r.counts.send_info, r.counts.send_unfinished), (2, 1));
    assert_eq!(r.recovered.count, 2);
    assert_eq!(r.recovered.examples, vec!["p2-0".to_string(), "p3-0".to_string()]);
}

#[test]
fn failed_send_that_shows_up_is_invalid() {
    // A send that completed fail (certainly not enqueued) but whose value is received makes the history invalid.
    let mut h = clean();
    h.send("producer-2", "p2-0", Some(OpType::Fail))
        .send("producer-2", "p2-1", Some(OpType::Fail))
        .receive("consumer-0", &["p2-0"]);
    let r = h.check();
    assert!(!r.valid);
    assert_eq!(r.counts.failed, 2);
    assert_eq!(r.failed_but_received.count, 1);
    assert_eq!(r.failed_but_received.examples, vec!["p2-0".to_string()]);
    assert!(r.summary_line().contains("failed-but-received"));
}

#[test]
fn failed_then_acked_retry_is_acked() {
    // A value sent twice, failing once then acked, is acked: neither failed nor failed-but-received.
    let mut h = History::default();
    h.send("producer-0", "v", Some(OpType::Fail)).send("producer-0", "v", Some(OpType::Ok)).receive("drain", &["v"]);
    let r = h.check();
    assert!(r.valid, "{r:#?}");
    assert_eq!((r.counts.attempted, r.counts.acked, r.counts.failed, r.counts.send_invocations), (1, 1, 0, 2));
}

#[test]
fn order_inversion_is_counted() {
    // Two acked values of one producer received in the opposite order count as one inversion; the history stays valid.
    let mut h = History::default();
    h.send("producer-0", "a", Some(OpType::Ok))
        .send("producer-0", "b", Some(OpType::Ok))
        .send("producer-0", "c", Some(OpType::Ok))
        .send("producer-1", "x", Some(OpType::Ok))
        .send("producer-1", "y", Some(OpType::Ok))
        // b before a inside one receive; c after both; x then y in later receives.
        .receive("consumer-0", &["b", "a", "x"])
        .receive("consumer-1", &["c"])
        .receive("consumer-0", &["y"])
        // A redelivery of a later: the first receipt counts.
        .receive("consumer-1", &["a"]);
    let r = h.check();
    assert!(r.valid, "{r:#?}");
    assert_eq!(r.order.producers, 2);
    assert_eq!(r.order.pairs_checked, 3);
    assert_eq!(r.order.inversions, 1);
    let inv = &r.order.examples[0];
    assert_eq!((inv.producer.as_str(), inv.sent_first.as_str(), inv.sent_second.as_str()), ("producer-0", "a", "b"));
}

#[test]
fn availability_gap_around_a_fault() {
    // The longest send gap overlapping a fault, the time to the first ok send after it, and the overall longest gap are computed from the ok send completions.
    let mut h = History::default();
    // ok sends complete at 1.0 s, 2.0 s, 3.0 s.
    for (i, t) in [990, 1990, 2990].into_iter().enumerate() {
        h.at(t).send("producer-0", &format!("v{i}"), Some(OpType::Ok));
    }
    // A partition from 3.5 s (start invoked) to 6.0 s (stop completed).
    h.at(3500).op("nemesis", OpType::Invoke, "start", json!({"fault": "partition", "nodes": ["n1"]}));
    h.op("nemesis", OpType::Info, "start", json!({"fault": "partition", "nodes": ["n1"], "cut": "n1|n2,n3"}));
    h.at(4000).send("producer-0", "v3", Some(OpType::Info));
    h.at(5000).send("producer-0", "v4", Some(OpType::Fail));
    h.at(5990).op("nemesis", OpType::Invoke, "stop", json!({"fault": "partition"}));
    h.op("nemesis", OpType::Info, "stop", json!({"fault": "partition"}));
    // Sends succeed again at 8.0 s and 9.0 s.
    h.at(7990).send("producer-0", "v5", Some(OpType::Ok));
    h.at(8990).send("producer-0", "v6", Some(OpType::Ok));
    h.receive("drain", &["v0", "v1", "v2", "v5", "v6"]);
    let r = h.check();
    assert!(r.valid, "{r:#?}");
    assert_eq!(r.counts.faults, 1);
    let w = &r.availability.faults[0];
    assert_eq!(w.fault, "partition");
    assert!(w.stopped);
    assert!((w.start_s - 3.5).abs() < 1e-9 && (w.end_s - 6.0).abs() < 1e-9, "{w:?}");
    let gap = w.longest_send_gap.as_ref().expect("a gap");
    assert!(
        (gap.ms - 5000.0).abs() < 1e-6 && (gap.from_s - 3.0).abs() < 1e-9 && (gap.to_s - 8.0).abs() < 1e-9,
        "{gap:?}"
    );
    assert!((w.time_to_first_ok_send_ms.expect("recovered") - 4500.0).abs() < 1e-6, "{w:?}");
    assert_eq!((w.sends_ok, w.sends_not_ok), (0, 2));
    assert_eq!(w.detail["cut"], "n1|n2,n3");
    let overall = r.availability.longest_send_gap.as_ref().expect("a gap");
    assert!((overall.ms - 5000.0).abs() < 1e-6, "{overall:?}");
}

#[test]
fn fault_without_recovery_has_no_first_ok() {
    // A fault after which no send succeeds reports no time to recovery, and the gap runs to the last send attempt.
    let mut h = History::default();
    h.at(990).send("producer-0", "v0", Some(OpType::Ok));
    h.at(2000).op("nemesis", OpType::Invoke, "start", json!({"fault": "kill"}));
    h.op("nemesis", OpType::Info, "start", json!({"fault": "kill"}));
    h.at(3000).send("producer-0", "v1", Some(OpType::Info));
    h.at(4000).send("producer-0", "v2", None);
    let r = h.check();
    let w = &r.availability.faults[0];
    assert!(!w.stopped);
    assert_eq!(w.time_to_first_ok_send_ms, None);
    let gap = w.longest_send_gap.as_ref().expect("a gap");
    assert!((gap.from_s - 1.0).abs() < 1e-9 && (gap.to_s - 4.0).abs() < 1e-9, "{gap:?}");
}

#[test]
fn empty_history_is_valid() {
    // An empty history is trivially valid and its report still renders.
    let r = check(&[]);
    assert!(r.valid);
    assert_eq!(r.availability.longest_send_gap, None);
    let dir = tempfile::tempdir().expect("tempdir");
    write_report(dir.path(), "empty", &[], &r, &Value::Null).expect("report");
    let html = std::fs::read_to_string(dir.path().join("index.html")).expect("index.html");
    assert!(html.contains("<svg"));
}

#[test]
fn report_has_plots_verdict_and_json() {
    // write_report writes an index.html with inline SVG plots and the verdict, and a results.json that parses.
    let mut h = clean();
    h.at(2000).op("nemesis", OpType::Invoke, "start", json!({"fault": "pause", "nodes": ["n2"]}));
    h.op("nemesis", OpType::Info, "start", json!({"fault": "pause", "nodes": ["n2"]}));
    h.send("producer-0", "p0-2", Some(OpType::Info)).send("producer-0", "p0-3", Some(OpType::Fail));
    h.at(3000).op("nemesis", OpType::Invoke, "stop", json!({"fault": "pause"}));
    h.op("nemesis", OpType::Info, "stop", json!({"fault": "pause"}));
    h.send("producer-0", "p0-4", Some(OpType::Ok)); // never received: lost
    let r = h.check();
    assert!(!r.valid);
    let meta = json!({"command": "quorumq-jepsen test --nemesis pause", "seed": 42, "nodes": ["n1", "n2", "n3"], "note": "<b>"});
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    write_report(&out, "queue-pause", &h.ops, &r, &meta).expect("report");

    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    assert_eq!(html.matches("<svg").count(), 2, "two plots");
    assert!(html.contains(">INVALID</div>"));
    assert!(html.contains("p0-4"));
    assert!(html.contains("pause"));
    assert!(html.contains("--nemesis pause"));
    assert!(html.contains("&lt;b&gt;") && !html.contains("<b>"), "meta is escaped");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json"))
        .expect("results.json parses");
    assert_eq!(json["test"], "queue-pause");
    assert_eq!(json["results"]["valid"], false);
    assert_eq!(json["results"]["lost"]["examples"][0], "p0-4");
    assert_eq!(json["meta"]["seed"], 42);
    let back: Results = serde_json::from_value(json["results"].clone()).expect("Results round-trips");
    assert_eq!(back, r);
}

#[test]
fn report_thins_large_histories() {
    // A history with more completions than the latency plot draws still renders, keeping every non-ok point.
    let mut h = History::default();
    for i in 0..45_000 {
        let kind = if i % 1000 == 0 { OpType::Info } else { OpType::Ok };
        h.at(i).send("producer-0", &format!("v{i}"), Some(kind));
    }
    let r = h.check();
    let html = quorumq_jepsen::report::render_html("big", &h.ops, &r, &json!({}));
    assert!(html.contains("of 45000 points shown"), "ok points are thinned");
    assert!(html.contains("send info (45)"), "every info point is kept");
}
