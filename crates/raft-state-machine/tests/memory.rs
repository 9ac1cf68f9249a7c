//! Memory of the state machine per queued message, measured with a counting
//! global allocator (issue 6: at most 64 bytes of RAM per queued message).
//!
//! Prints the heap bytes a `State` holds per live message in a few shapes of
//! backlog; asserts only generous upper bounds, so that a change that puts a
//! body, a string or a map entry per message back into the state fails here.
//!
//! ```text
//! cargo test --release -p quorumq-raft-state-machine --test memory -- --nocapture
//! QUORUMQ_MEMORY_MESSAGES=10000000 cargo test --release -p quorumq-raft-state-machine --test memory -- --nocapture
//! ```

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::alloc::System;
use std::sync::atomic::AtomicIsize;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use quorumq_raft_state_machine::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const T0: u64 = 1_800_000_000_000;
const BODY_BYTES: usize = 1024;

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    fifo: bool,
    /// Messages carry producer ids (as the client's generated ones), so
    /// each is remembered for the deduplication window.
    ids: bool,
    /// Priorities 0..=9 in turn instead of all 0.
    priorities: bool,
    /// Every tenth message has a delay.
    some_delayed: bool,
    /// Receive this share (in percent) of the messages after sending.
    received_percent: u64,
    /// Apply a Tick after the deduplication window, before measuring.
    after_dedup_window: bool,
}

const PLAIN: Shape = Shape {
    name: "",
    fifo: false,
    ids: false,
    priorities: false,
    some_delayed: false,
    received_percent: 0,
    after_dedup_window: false,
};

/// Builds a state with `n` messages in one queue of `shape`; returns the
/// heap bytes it holds per message.
fn bytes_per_message(shape: Shape, n: u64) -> f64 {
    let before = live();
    let mut state = State::new();
    let mut effects = Vec::new();
    let mut now = T0;
    let config = QueueConfig { fifo: shape.fifo, ..QueueConfig::default() };
    let create = Command::CreateQueue { name: "q".into(), config };
    state.apply(Request { now_ms: now, command: create }, &mut effects).unwrap();
    let mut sent = 0u64;
    while sent < n {
        let batch = (n - sent).min(100);
        let messages = (sent..sent + batch)
            .map(|i| NewMessage {
                id: shape.ids.then(|| format!("0192a1b2-c3d4-7e5f-8a9b-{i:012x}")),
                id_generated: shape.ids,
                // A fresh allocation per body: a state that kept bodies
                // would show a kilobyte per message.
                body: Bytes::from(vec![b'x'; BODY_BYTES]),
                group: shape.fifo.then(|| format!("group-{}", i % 100)),
                priority: if shape.priorities { (i % 10) as u8 } else { 0 },
                delay_ms: (shape.some_delayed && i % 10 == 0).then_some(60_000),
                ..NewMessage::default()
            })
            .collect();
        now += 1;
        let send = Command::Send { queue: "q".into(), messages };
        state.apply(Request { now_ms: now, command: send }, &mut effects).unwrap();
        effects.clear();
        sent += batch;
    }
    let mut to_receive = n * shape.received_percent / 100;
    while to_receive > 0 {
        let max = to_receive.min(1000) as u32;
        now += 1;
        let receive = Command::Receive { queue: "q".into(), max_messages: max, visibility_timeout_ms: Some(3_600_000) };
        let Ok(Outcome::Received { deliveries, .. }) =
            state.apply(Request { now_ms: now, command: receive }, &mut effects)
        else {
            panic!("receive failed")
        };
        effects.clear();
        assert!(!deliveries.is_empty());
        to_receive -= deliveries.len() as u64;
    }
    if shape.after_dedup_window {
        now += limits::DEDUP_WINDOW_MS_DEFAULT + 1;
        state.apply(Request { now_ms: now, command: Command::Tick }, &mut effects).unwrap();
        effects.clear();
    }
    effects.shrink_to_fit();
    assert_eq!(state.message_count(), n);
    let held = live() - before;
    drop(state);
    drop(effects);
    held as f64 / n as f64
}

#[test]
fn state_bytes_per_queued_message() {
    let n: u64 = std::env::var("QUORUMQ_MEMORY_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    println!("state machine heap per queued message ({n} messages of {BODY_BYTES} B in one queue):");
    let shapes = [
        (Shape { name: "standard, no ids", ..PLAIN }, 48.0),
        (Shape { name: "standard, client ids, within the dedup window", ids: true, ..PLAIN }, 160.0),
        (
            Shape {
                name: "standard, client ids, after the dedup window",
                ids: true,
                after_dedup_window: true,
                ..PLAIN
            },
            48.0,
        ),
        (Shape { name: "standard, priorities 0-9 interleaved", priorities: true, ..PLAIN }, 80.0),
        (Shape { name: "standard, every 10th delayed", some_delayed: true, ..PLAIN }, 64.0),
        (Shape { name: "standard, 10% received (in flight)", received_percent: 10, ..PLAIN }, 80.0),
        (Shape { name: "FIFO, 100 groups", fifo: true, ..PLAIN }, 96.0),
    ];
    let mut over = Vec::new();
    for (shape, bound) in shapes {
        let per = bytes_per_message(shape, n);
        println!("  {:<50} {per:>7.1} B", shape.name);
        if per > bound {
            over.push(format!("{}: {per:.1} B per message, bound {bound} B", shape.name));
        }
    }
    assert!(over.is_empty(), "over the bound: {over:#?}");
}
