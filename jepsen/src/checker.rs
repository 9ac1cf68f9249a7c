//! The "total queue" checker: reads a history (see [`crate::history`] for its
//! conventions) and decides whether every acknowledged message came out of
//! the queue, nothing came out that was never put in, and nothing that
//! certainly failed took effect anyway.
//!
//! What it computes, on *values* (the unique strings the producers send):
//!
//! - `attempted`: values of `send` invocations. A value's outcome is *acked*
//!   if any of its sends completed `ok`; otherwise *failed* if every one of
//!   its sends completed `fail`; otherwise *indeterminate* (a completion was
//!   `info`, or there was none).
//! - `received`: every value in any `receive` `ok` completion, by any process
//!   (the consumers and the final `drain`).
//! - Anomalies (each makes the history invalid): `lost` (acked, never
//!   received), `unexpected` (received, never attempted),
//!   `failed_but_received` (its sends all completed `fail`, yet it was
//!   received).
//! - Allowed, reported: `duplicated` (received in more than one receive;
//!   delivery is at-least-once), `recovered` (indeterminate and received),
//!   `not_consumed` (acked but never acked by a consumer), order inversions
//!   per producer (FIFO holds except around redelivery), and availability
//!   around each nemesis fault.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::Serialize;

use crate::history::Op;
use crate::history::OpType;

/// At most this many example values are reported per anomaly.
pub const MAX_EXAMPLES: usize = 20;

/// The checker's verdict and everything it counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// `lost`, `unexpected` and `failed_but_received` are all zero.
    pub valid: bool,
    pub counts: Counts,
    /// Acknowledged sends whose value was never received. Must be empty.
    pub lost: ValueSet,
    /// Received values that no send ever carried. Must be empty.
    pub unexpected: ValueSet,
    /// Values whose sends all completed `fail` (certainly not enqueued) and
    /// that were received anyway. Must be empty.
    pub failed_but_received: ValueSet,
    /// Values received by more than one receive (allowed: at-least-once).
    pub duplicated: Duplicated,
    /// Indeterminate sends whose value was received (allowed).
    pub recovered: ValueSet,
    /// Acknowledged sends whose value no consumer acked (informational).
    pub not_consumed: ValueSet,
    /// Per-producer FIFO inversions (informational).
    pub order: Order,
    /// Send availability overall and around each nemesis fault.
    pub availability: Availability,
}

/// What the checker counted in the history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Operations in the history.
    pub ops: usize,
    /// `send` invocations (a value sent twice counts twice).
    pub send_invocations: usize,
    /// Distinct values of `send` invocations.
    pub attempted: usize,
    /// Values with a send that completed `ok`.
    pub acked: usize,
    /// Values whose sends all completed `fail`.
    pub failed: usize,
    /// `attempted - acked - failed`: outcome unknown.
    pub indeterminate: usize,
    /// `send` completions by type.
    pub send_ok: usize,
    pub send_fail: usize,
    pub send_info: usize,
    /// `send` invocations that never completed.
    pub send_unfinished: usize,
    /// Distinct values received.
    pub received: usize,
    /// Values delivered, counting every delivery (>= `received`).
    pub deliveries: usize,
    /// Deliveries whose `receive_count` was above 1 (the server redelivered).
    pub redeliveries: usize,
    /// Highest `receive_count` seen.
    pub max_receive_count: u64,
    /// `receive` completions by type.
    pub receive_ok: usize,
    /// `receive` `ok` completions that delivered nothing.
    pub receive_empty: usize,
    pub receive_fail: usize,
    pub receive_info: usize,
    /// `ack` completions by type.
    pub ack_ok: usize,
    pub ack_fail: usize,
    pub ack_info: usize,
    /// Distinct values in `ack` operations that completed `ok`.
    pub consumer_acked: usize,
    /// Nemesis faults (start/stop intervals) found.
    pub faults: usize,
}

/// A set of values: how many, and the first [`MAX_EXAMPLES`] of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueSet {
    pub count: usize,
    pub examples: Vec<String>,
}

/// Values received more than once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Duplicated {
    /// Values received in more than one delivery.
    pub count: usize,
    /// The most deliveries of one value (0 when nothing was received).
    pub max_times: usize,
    pub examples: Vec<Duplicate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub value: String,
    pub times: usize,
}

/// FIFO order per producer: for consecutive acked values `a` then `b` of one
/// producer (both received), an inversion is `b` first received before `a`.
/// "First received" is ordered by (position of the `receive` `ok` op in the
/// history, position inside its array).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Producers (processes `producer-…`) with at least one acked value.
    pub producers: usize,
    /// Consecutive acked pairs where both values were received.
    pub pairs_checked: usize,
    pub inversions: usize,
    pub examples: Vec<Inversion>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inversion {
    pub producer: String,
    /// Sent (and acked) first, but first received after `sent_second`.
    pub sent_first: String,
    pub sent_second: String,
}

/// A stretch of time without a successful send completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// Seconds since the test started.
    pub from_s: f64,
    pub to_s: f64,
    pub ms: f64,
}

/// Send availability. Gaps are measured between consecutive `send` `ok`
/// completions; the stretch from the first send invocation to the first
/// `ok`, and from the last `ok` to the last send operation, count as gaps
/// too, so that a fault after which no send ever succeeds still shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// The longest gap of the whole test (`None` without send operations).
    pub longest_send_gap: Option<Gap>,
    /// One entry per nemesis fault, in the order they started.
    pub faults: Vec<FaultWindow>,
}

/// One nemesis fault: from its `start` invocation to the completion of the
/// matching `stop` (the first later `stop` with the same `value.fault`, or
/// any open fault when the stop names none). A `start` that completed
/// `fail` is not a fault. A fault never stopped lasts until the history ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// `value.fault` of the start (e.g. "kill", "partition").
    pub fault: String,
    /// Seconds since the test started.
    pub start_s: f64,
    pub end_s: f64,
    /// Whether a matching `stop` completed.
    pub stopped: bool,
    /// The longest send gap overlapping [start, end].
    pub longest_send_gap: Option<Gap>,
    /// From the fault's start to the first `send` `ok` completion at or
    /// after it; `None` if no send succeeded afterwards.
    pub time_to_first_ok_send_ms: Option<f64>,
    /// Send completions inside [start, end]: `ok`, and `fail` or `info`.
    pub sends_ok: usize,
    pub sends_not_ok: usize,
    /// The start's completion value (what the nemesis did), or its
    /// invocation value if it never completed.
    pub detail: serde_json::Value,
}

impl Results {
    /// One line for the terminal, starting with VALID or INVALID.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        let mut s = String::new();
        let _ = write!(
            s,
            "{}: {} sent ({} acked, {} failed, {} indeterminate, {} recovered); {} received; {} lost, {} unexpected, {} failed-but-received",
            if self.valid { "VALID" } else { "INVALID" },
            c.attempted,
            c.acked,
            c.failed,
            c.indeterminate,
            self.recovered.count,
            c.received,
            self.lost.count,
            self.unexpected.count,
            self.failed_but_received.count,
        );
        for (name, set) in
            [("lost", &self.lost), ("unexpected", &self.unexpected), ("failed-but-received", &self.failed_but_received)]
        {
            if set.count > 0 {
                let shown: Vec<&str> = set.examples.iter().take(3).map(String::as_str).collect();
                let _ = write!(s, " [{name} e.g. {}]", shown.join(", "));
            }
        }
        let _ = write!(
            s,
            "; {} duplicated (max {}x); {} not consumed; {} order inversions",
            self.duplicated.count, self.duplicated.max_times, self.not_consumed.count, self.order.inversions
        );
        if let Some(gap) = &self.availability.longest_send_gap {
            let _ = write!(s, "; longest send gap {:.1} s at {:.1} s", gap.ms / 1000.0, gap.from_s);
        }
        s
    }
}

impl ValueSet {
    fn collect<'a>(values: impl IntoIterator<Item = &'a str>) -> ValueSet {
        let mut set = ValueSet::default();
        for v in values {
            if set.examples.len() < MAX_EXAMPLES {
                set.examples.push(v.to_string());
            }
            set.count += 1;
        }
        set
    }
}

/// The key of a value: a string as is, anything else (not null) as JSON.
fn value_key(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The values of a `receive` `ok` completion: an array of
/// `{"value", "receive_count"}` (a bare string element is accepted too).
fn received_values(v: &serde_json::Value) -> Vec<(String, Option<u64>)> {
    let Some(items) = v.as_array() else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| match item {
            serde_json::Value::Object(m) => {
                let value = value_key(m.get("value")?)?;
                Some((value, m.get("receive_count").and_then(|c| c.as_u64())))
            }
            other => value_key(other).map(|v| (v, None)),
        })
        .collect()
}

/// The values of an `ack` operation: an array of values.
fn acked_values(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(items) => items.iter().filter_map(value_key).collect(),
        _ => Vec::new(),
    }
}

fn fault_label(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("fault").and_then(value_key),
        _ => None,
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e6
}

/// Pairs every completion with its invocation: a process has at most one
/// operation in flight, so a completion answers that process's pending
/// invocation. Returns, for each position, the position of the invocation a
/// completion answers (`None` for invocations and unmatched completions),
/// and which invocations completed.
fn pair(ops: &[Op]) -> (Vec<Option<usize>>, Vec<bool>) {
    let mut pending: HashMap<&str, usize> = HashMap::new();
    let mut invocation_of = vec![None; ops.len()];
    let mut completed = vec![false; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        if op.kind == OpType::Invoke {
            // An earlier invocation still pending stays without completion.
            pending.insert(op.process.as_str(), i);
        } else if let Some(inv) = pending.remove(op.process.as_str()) {
            invocation_of[i] = Some(inv);
            completed[inv] = true;
        }
    }
    (invocation_of, completed)
}

#[derive(Default)]
struct ValueState {
    ok: bool,
    fail: usize,
    unknown: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    Failed,
    Indeterminate,
}

impl ValueState {
    fn outcome(&self) -> Outcome {
        if self.ok {
            Outcome::Acked
        } else if self.unknown == 0 && self.fail > 0 {
            Outcome::Failed
        } else {
            Outcome::Indeterminate
        }
    }
}

struct OpenFault {
    fault: String,
    start_ns: u64,
    end_ns: Option<u64>,
    detail: serde_json::Value,
    start_failed: bool,
}

/// Checks a history; see the module documentation.
pub fn check(ops: &[Op]) -> Results {
    let (invocation_of, completed) = pair(ops);
    let mut counts = Counts { ops: ops.len(), ..Counts::default() };

    // Send values in the order of their first invocation.
    let mut attempt_order: Vec<String> = Vec::new();
    let mut states: HashMap<String, ValueState> = HashMap::new();
    // Per producer, its send values in invocation order.
    let mut producer_sends: Vec<(String, Vec<String>)> = Vec::new();
    let mut producer_index: HashMap<String, usize> = HashMap::new();
    let mut ok_send_times: Vec<u64> = Vec::new();
    let mut first_send_ns: Option<u64> = None;
    let mut last_send_ns: Option<u64> = None;

    // Receipts: count per value, first receipt position, order of first receipt.
    let mut receipts: HashMap<String, usize> = HashMap::new();
    let mut first_receipt: HashMap<String, (usize, usize)> = HashMap::new();
    let mut receipt_order: Vec<String> = Vec::new();
    let mut consumer_acked: HashSet<String> = HashSet::new();

    let mut faults: Vec<OpenFault> = Vec::new();
    // Nemesis start and stop invocations: the fault they open or close.
    let mut fault_of_invoke: HashMap<usize, usize> = HashMap::new();
    let end_ns = ops.iter().map(|op| op.time_ns).max().unwrap_or(0);

    for (i, op) in ops.iter().enumerate() {
        let inv = invocation_of[i].map(|j| &ops[j]);
        let f = inv.map_or(op.f.as_str(), |inv| inv.f.as_str());
        if op.process == "nemesis" {
            match (op.kind, f) {
                (OpType::Invoke, "start") => {
                    fault_of_invoke.insert(i, faults.len());
                    faults.push(OpenFault {
                        fault: fault_label(&op.value).unwrap_or_else(|| "fault".to_string()),
                        start_ns: op.time_ns,
                        end_ns: None,
                        detail: op.value.clone(),
                        start_failed: false,
                    });
                }
                (OpType::Invoke, "stop") => {
                    let label = fault_label(&op.value);
                    let open = faults.iter().position(|w| {
                        w.end_ns.is_none() && !w.start_failed && label.as_ref().is_none_or(|l| *l == w.fault)
                    });
                    if let Some(w) = open {
                        fault_of_invoke.insert(i, w);
                    }
                }
                (OpType::Invoke, _) => {}
                (kind, "start") => {
                    if let Some(w) = invocation_of[i].and_then(|j| fault_of_invoke.get(&j)) {
                        let w = &mut faults[*w];
                        if kind == OpType::Fail {
                            w.start_failed = true;
                        } else if !op.value.is_null() {
                            w.detail = op.value.clone();
                        }
                    }
                }
                // A stop that certainly failed did not end the fault.
                (OpType::Ok | OpType::Info, "stop") => {
                    if let Some(w) = invocation_of[i].and_then(|j| fault_of_invoke.get(&j)) {
                        faults[*w].end_ns = Some(op.time_ns);
                    }
                }
                _ => {}
            }
            continue;
        }
        match (f, op.kind) {
            ("send", kind) => {
                first_send_ns = Some(first_send_ns.map_or(op.time_ns, |t| t.min(op.time_ns)));
                last_send_ns = Some(last_send_ns.map_or(op.time_ns, |t| t.max(op.time_ns)));
                if kind == OpType::Invoke {
                    counts.send_invocations += 1;
                    let Some(value) = value_key(&op.value) else { continue };
                    let state = states.entry(value.clone()).or_insert_with(|| {
                        attempt_order.push(value.clone());
                        ValueState::default()
                    });
                    if !completed[i] {
                        counts.send_unfinished += 1;
                        state.unknown += 1;
                    }
                    if op.process.starts_with("producer") {
                        let p = *producer_index.entry(op.process.clone()).or_insert_with(|| {
                            producer_sends.push((op.process.clone(), Vec::new()));
                            producer_sends.len() - 1
                        });
                        producer_sends[p].1.push(value);
                    }
                    continue;
                }
                match kind {
                    OpType::Ok => {
                        counts.send_ok += 1;
                        ok_send_times.push(op.time_ns);
                    }
                    OpType::Fail => counts.send_fail += 1,
                    _ => counts.send_info += 1,
                }
                // The invocation names the value; the completion carries the
                // same one (used when the invocation is missing).
                let value = inv.map_or(&op.value, |inv| &inv.value);
                let Some(value) = value_key(value) else { continue };
                let state = states.entry(value.clone()).or_insert_with(|| {
                    attempt_order.push(value.clone());
                    ValueState::default()
                });
                match kind {
                    OpType::Ok => state.ok = true,
                    OpType::Fail => state.fail += 1,
                    _ => state.unknown += 1,
                }
            }
            ("receive", OpType::Ok) => {
                counts.receive_ok += 1;
                let values = received_values(&op.value);
                if values.is_empty() {
                    counts.receive_empty += 1;
                }
                for (k, (value, receive_count)) in values.into_iter().enumerate() {
                    counts.deliveries += 1;
                    if let Some(rc) = receive_count {
                        counts.max_receive_count = counts.max_receive_count.max(rc);
                        if rc > 1 {
                            counts.redeliveries += 1;
                        }
                    }
                    *receipts.entry(value.clone()).or_insert(0) += 1;
                    first_receipt.entry(value.clone()).or_insert_with(|| {
                        receipt_order.push(value);
                        (i, k)
                    });
                }
            }
            ("receive", OpType::Fail) => counts.receive_fail += 1,
            ("receive", OpType::Info) => counts.receive_info += 1,
            ("ack", OpType::Ok) => {
                counts.ack_ok += 1;
                let mut values = inv.map(|inv| acked_values(&inv.value)).unwrap_or_default();
                if values.is_empty() {
                    values = acked_values(&op.value);
                }
                consumer_acked.extend(values);
            }
            ("ack", OpType::Fail) => counts.ack_fail += 1,
            ("ack", OpType::Info) => counts.ack_info += 1,
            _ => {}
        }
    }

    let outcome = |v: &str| states.get(v).map(ValueState::outcome);
    let received = |v: &str| receipts.contains_key(v);

    counts.attempted = attempt_order.len();
    for v in &attempt_order {
        match outcome(v) {
            Some(Outcome::Acked) => counts.acked += 1,
            Some(Outcome::Failed) => counts.failed += 1,
            _ => counts.indeterminate += 1,
        }
    }
    counts.received = receipts.len();
    counts.consumer_acked = consumer_acked.len();

    let lost = ValueSet::collect(
        attempt_order.iter().filter(|v| outcome(v) == Some(Outcome::Acked) && !received(v)).map(String::as_str),
    );
    let unexpected =
        ValueSet::collect(receipt_order.iter().filter(|v| !states.contains_key(v.as_str())).map(String::as_str));
    let failed_but_received = ValueSet::collect(
        attempt_order.iter().filter(|v| outcome(v) == Some(Outcome::Failed) && received(v)).map(String::as_str),
    );
    let recovered = ValueSet::collect(
        attempt_order.iter().filter(|v| outcome(v) == Some(Outcome::Indeterminate) && received(v)).map(String::as_str),
    );
    let not_consumed = ValueSet::collect(
        attempt_order
            .iter()
            .filter(|v| outcome(v) == Some(Outcome::Acked) && !consumer_acked.contains(v.as_str()))
            .map(String::as_str),
    );

    let mut duplicated = Duplicated::default();
    for v in &receipt_order {
        let times = receipts[v];
        duplicated.max_times = duplicated.max_times.max(times);
        if times > 1 {
            duplicated.count += 1;
            if duplicated.examples.len() < MAX_EXAMPLES {
                duplicated.examples.push(Duplicate { value: v.clone(), times });
            }
        }
    }

    let mut order = Order::default();
    for (producer, sends) in &producer_sends {
        let mut seen = HashSet::new();
        let acked: Vec<&String> =
            sends.iter().filter(|v| outcome(v) == Some(Outcome::Acked) && seen.insert(v.as_str())).collect();
        if acked.is_empty() {
            continue;
        }
        order.producers += 1;
        for pair in acked.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (Some(ra), Some(rb)) = (first_receipt.get(a), first_receipt.get(b)) else { continue };
            order.pairs_checked += 1;
            if rb < ra {
                order.inversions += 1;
                if order.examples.len() < MAX_EXAMPLES {
                    order.examples.push(Inversion {
                        producer: producer.clone(),
                        sent_first: a.clone(),
                        sent_second: b.clone(),
                    });
                }
            }
        }
    }

    ok_send_times.sort_unstable();
    let gaps = send_gaps(&ok_send_times, first_send_ns, last_send_ns);
    // The longest gap overlapping [from, to] (the first one on ties).
    let longest = |from_ns: u64, to_ns: u64| {
        let mut best: Option<(u64, u64)> = None;
        for &(a, b) in &gaps {
            let overlaps = (a < to_ns && b > from_ns) || (a == b && a >= from_ns && a <= to_ns);
            if overlaps && best.is_none_or(|(x, y)| b - a > y - x) {
                best = Some((a, b));
            }
        }
        best.map(|(a, b)| Gap { from_s: secs(a), to_s: secs(b), ms: ms_between(a, b) })
    };
    let windows: Vec<FaultWindow> = faults
        .into_iter()
        .filter(|w| !w.start_failed)
        .map(|w| {
            let stop_ns = w.end_ns.unwrap_or(end_ns).max(w.start_ns);
            let first_ok = ok_send_times.iter().find(|&&t| t >= w.start_ns);
            let during = |t: u64| t >= w.start_ns && t <= stop_ns;
            let sends_ok = ok_send_times.iter().filter(|&&t| during(t)).count();
            let sends_not_ok = ops
                .iter()
                .enumerate()
                .filter(|(i, op)| {
                    matches!(op.kind, OpType::Fail | OpType::Info)
                        && op.process != "nemesis"
                        && invocation_of[*i].map_or(op.f.as_str(), |j| ops[j].f.as_str()) == "send"
                        && during(op.time_ns)
                })
                .count();
            FaultWindow {
                fault: w.fault,
                start_s: secs(w.start_ns),
                end_s: secs(stop_ns),
                stopped: w.end_ns.is_some(),
                longest_send_gap: longest(w.start_ns, stop_ns),
                time_to_first_ok_send_ms: first_ok.map(|&t| ms_between(w.start_ns, t)),
                sends_ok,
                sends_not_ok,
                detail: w.detail,
            }
        })
        .collect();
    counts.faults = windows.len();
    let availability = Availability { longest_send_gap: longest(0, u64::MAX), faults: windows };

    Results {
        valid: lost.count == 0 && unexpected.count == 0 && failed_but_received.count == 0,
        counts,
        lost,
        unexpected,
        failed_but_received,
        duplicated,
        recovered,
        not_consumed,
        order,
        availability,
    }
}

/// The gaps between successful send completions, as (from, to) in ns,
/// bounded by the first and last send operation.
fn send_gaps(ok_times: &[u64], first_send_ns: Option<u64>, last_send_ns: Option<u64>) -> Vec<(u64, u64)> {
    let (Some(first), Some(last)) = (first_send_ns, last_send_ns) else { return Vec::new() };
    let mut points = Vec::with_capacity(ok_times.len() + 2);
    points.push(first);
    points.extend_from_slice(ok_times);
    points.push(last.max(first));
    points.sort_unstable();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}
