//! The history of a test: every operation as an invocation followed by its
//! completion (`ok`, `fail` or `info`), as Jepsen records it, one JSON object
//! per line in `history.jsonl`.
//!
//! Conventions the workload and the checker share:
//!
//! | process | f | invoke value | completion value |
//! |---|---|---|---|
//! | `producer-N` | `send` | the unique value sent (a string) | the same value |
//! | `consumer-N`, `drain` | `receive` | null | ok: array of `{"value", "receive_count"}` |
//! | `consumer-N`, `drain` | `ack` | array of values | the same array |
//! | `nemesis` | `start` | `{"fault", "nodes", …}` | `info`, same value plus what was done |
//! | `nemesis` | `stop` | `{"fault"}` | `info` |
//!
//! `ok` means the operation took effect; `fail` means it certainly did not
//! (the server refused it before acting); `info` means its outcome is unknown
//! (timeout, connection lost, no quorum, leader change after proposing).

use std::fs::File;
use std::io;
use std::io::BufRead;
use std::io::BufWriter;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: u64,
    /// Nanoseconds since the test started (monotonic clock).
    pub time_ns: u64,
    pub process: String,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: String,
    #[serde(default)]
    pub value: serde_json::Value,
    /// The node the operation went to (its address), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// On completions: milliseconds since the matching invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Inner {
    out: Option<BufWriter<File>>,
    ops: Vec<Op>,
}

/// Records operations in memory and to `history.jsonl` as they happen.
/// Cheap to clone; safe to share between tasks.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

/// A pending invocation: complete it with [`Invocation::complete`].
pub struct Invocation {
    recorder: Recorder,
    process: String,
    f: String,
    started: Instant,
}

impl Recorder {
    /// A recorder writing to `path` (truncated), with time zero now.
    pub fn create(path: &Path) -> io::Result<Recorder> {
        let out = BufWriter::new(File::create(path)?);
        Ok(Recorder { start: Instant::now(), inner: Arc::new(Mutex::new(Inner { out: Some(out), ops: Vec::new() })) })
    }

    /// A recorder that keeps the history in memory only (tests).
    pub fn in_memory() -> Recorder {
        Recorder { start: Instant::now(), inner: Arc::new(Mutex::new(Inner { out: None, ops: Vec::new() })) }
    }

    pub fn start_instant(&self) -> Instant {
        self.start
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn push(&self, mut op: Op) {
        let mut inner = self.inner.lock().expect("history lock");
        op.index = inner.ops.len() as u64;
        op.time_ns = self.elapsed_ns();
        if let Some(out) = inner.out.as_mut() {
            // A history line that cannot be written makes the run worthless;
            // say so loudly but keep the in-memory copy for the checker.
            if let Err(e) =
                serde_json::to_writer(&mut *out, &op).map_err(io::Error::from).and_then(|_| out.write_all(b"\n"))
            {
                eprintln!("warning: cannot write the history: {e}");
            }
        }
        inner.ops.push(op);
    }

    /// Records an invocation and returns the handle to complete it.
    pub fn invoke(&self, process: &str, f: &str, value: serde_json::Value, node: Option<String>) -> Invocation {
        self.push(Op {
            index: 0,
            time_ns: 0,
            process: process.to_string(),
            kind: OpType::Invoke,
            f: f.to_string(),
            value,
            node,
            latency_ms: None,
            error: None,
        });
        Invocation { recorder: self.clone(), process: process.to_string(), f: f.to_string(), started: Instant::now() }
    }

    /// Every operation recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().expect("history lock").ops.clone()
    }

    pub fn flush(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("history lock");
        match inner.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Invocation {
    pub fn complete(self, kind: OpType, value: serde_json::Value, node: Option<String>, error: Option<String>) {
        assert!(kind != OpType::Invoke, "a completion is ok, fail or info");
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.recorder.push(Op {
            index: 0,
            time_ns: 0,
            process: self.process,
            kind,
            f: self.f,
            value,
            node,
            latency_ms: Some(latency_ms),
            error,
        });
    }
}

/// Reads a `history.jsonl`.
pub fn load(path: &Path) -> io::Result<Vec<Op>> {
    let file = io::BufReader::new(File::open(path)?);
    let mut ops = Vec::new();
    for (n, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", n + 1)))?;
        ops.push(op);
    }
    Ok(ops)
}
