//! Where to send the next attempt: the known nodes, the last known leader and
//! one cached gRPC channel per address, shared by every clone of a client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::limits;

/// Routing state shared by the clones of one client. Locks are held for a
/// few map operations only, never across an await.
#[derive(Debug)]
pub(crate) struct Router {
    connect_timeout: Duration,
    nodes: Mutex<Nodes>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Bumped whenever a node answers as leader that was not the known
    /// leader: calls pausing for a leader wake up and go there at once.
    leader_found: watch::Sender<u64>,
    /// Held by the one call that looks for a new leader with short pauses
    /// ([`Router::try_probe`]); the others back off exponentially and wait
    /// for it (or any call) to find the leader.
    probing: AtomicBool,
}

#[derive(Debug)]
struct Nodes {
    /// Seeds first, then addresses learnt from hints and member lists; at
    /// most [`limits::KNOWN_NODES_MAX`], no duplicates.
    known: Vec<String>,
    /// Index into `known` of the node tried last by rotation.
    cursor: usize,
    /// The address that last answered as leader or was named leader.
    leader: Option<String>,
    /// The address that last answered as leader, until it fails.
    confirmed: Option<String>,
    /// When a node last failed (refused, reset, silent): such a node is
    /// tried last for [`limits::FAILED_NODE_AVOID`], and hints naming it
    /// are not followed without a pause. At most one entry per known node.
    failed_at: HashMap<String, Instant>,
}

impl Router {
    /// `seeds` must be non-empty, normalised and free of duplicates.
    pub(crate) fn new(seeds: Vec<String>, connect_timeout: Duration) -> Router {
        assert!(!seeds.is_empty(), "a router needs at least one seed");
        assert!(seeds.len() <= limits::KNOWN_NODES_MAX);
        // Start the rotation at a random seed, so that many clients with the
        // same seed list do not all open their first connection to one node.
        let cursor = rand::rng().random_range(0..seeds.len());
        Router {
            connect_timeout,
            nodes: Mutex::new(Nodes { known: seeds, cursor, leader: None, confirmed: None, failed_at: HashMap::new() }),
            channels: Mutex::new(HashMap::new()),
            leader_found: watch::Sender::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn nodes(&self) -> MutexGuard<'_, Nodes> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a single assignment or push.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node for the first attempt: the leader if known, else the next
    /// node in rotation.
    pub(crate) fn first_target(&self) -> String {
        let mut nodes = self.nodes();
        match &nodes.leader {
            Some(leader) => leader.clone(),
            None => nodes.rotate(None),
        }
    }

    /// The next node in rotation, other than `failed` when there is another,
    /// and preferably one that has not failed lately.
    pub(crate) fn next_after(&self, failed: &str) -> String {
        self.nodes().rotate(Some(failed))
    }

    /// Records that `address` failed (connection refused or broken, no
    /// answer): it is tried after the others for a while.
    pub(crate) fn mark_failed(&self, address: &str) {
        let mut nodes = self.nodes();
        if nodes.known.iter().any(|a| a == address) {
            nodes.failed_at.insert(address.to_string(), Instant::now());
        }
    }

    /// True when `address` failed within [`limits::FAILED_NODE_AVOID`].
    pub(crate) fn recently_failed(&self, address: &str) -> bool {
        self.nodes().recently_failed(address, Instant::now())
    }

    /// Remembers `address` as the leader after it answered as one, and
    /// wakes the calls waiting for a leader when it is a new one.
    pub(crate) fn confirm_leader(&self, address: &str) {
        let changed = {
            let mut nodes = self.nodes();
            nodes.failed_at.remove(address);
            nodes.learn(address);
            if nodes.leader.as_deref() != Some(address) {
                nodes.leader = Some(address.to_string());
            }
            let changed = nodes.confirmed.as_deref() != Some(address);
            if changed {
                tracing::debug!(leader = address, "a new leader answered");
                nodes.confirmed = Some(address.to_string());
            }
            changed
        };
        if changed {
            self.leader_found.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees the next [`Router::confirm_leader`] of a new
    /// leader (those before the call are marked seen).
    pub(crate) fn watch_leader(&self) -> watch::Receiver<u64> {
        self.leader_found.subscribe()
    }

    /// Makes the caller the one call that probes for a new leader with
    /// short pauses, unless another call is: `None` then. The role ends
    /// when the guard is dropped.
    pub(crate) fn try_probe(&self) -> Option<ProbeGuard<'_>> {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| ProbeGuard(&self.probing))
    }

    /// Remembers `address` as the leader and as a known node.
    pub(crate) fn set_leader(&self, address: &str) {
        let mut nodes = self.nodes();
        nodes.learn(address);
        if nodes.leader.as_deref() != Some(address) {
            tracing::debug!(leader = address, "following new leader");
            nodes.leader = Some(address.to_string());
        }
    }

    /// Forgets the leader if it is `address` (it failed or denied being it).
    pub(crate) fn forget_leader(&self, address: &str) {
        let mut nodes = self.nodes();
        if nodes.leader.as_deref() == Some(address) {
            nodes.leader = None;
        }
        if nodes.confirmed.as_deref() == Some(address) {
            nodes.confirmed = None;
        }
    }

    /// Adds an address to the known nodes (bounded).
    pub(crate) fn learn(&self, address: &str) {
        self.nodes().learn(address);
    }

    pub(crate) fn leader(&self) -> Option<String> {
        self.nodes().leader.clone()
    }

    pub(crate) fn known_len(&self) -> usize {
        self.nodes().known.len()
    }

    pub(crate) fn known(&self) -> Vec<String> {
        self.nodes().known.clone()
    }

    /// The cached channel to `address`, or a new lazily connecting one. The
    /// channel connects on its first request, so this never blocks.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, Error> {
        if let Some(channel) = self.channels().get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::InvalidArgument(format!("invalid node address {address:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(limits::HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(limits::HTTP2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let mut channels = self.channels();
        // Another task may have raced us; keep the first so that all share
        // one connection.
        if let Some(existing) = channels.get(address) {
            return Ok(existing.clone());
        }
        if channels.len() < limits::CHANNELS_MAX {
            channels.insert(address.to_string(), channel.clone());
        }
        Ok(channel)
    }

    /// Drops the cached channel after a transport error, so that the next
    /// attempt opens a fresh connection instead of reusing a broken one.
    pub(crate) fn drop_channel(&self, address: &str) {
        self.channels().remove(address);
    }
}

impl Nodes {
    fn learn(&mut self, address: &str) {
        if !self.known.iter().any(|a| a == address) && self.known.len() < limits::KNOWN_NODES_MAX {
            tracing::debug!(address, "learnt a new node address");
            self.known.push(address.to_string());
        }
    }

    fn recently_failed(&self, address: &str, now: Instant) -> bool {
        self.failed_at.get(address).is_some_and(|&at| now.saturating_duration_since(at) < limits::FAILED_NODE_AVOID)
    }

    fn rotate(&mut self, avoid: Option<&str>) -> String {
        debug_assert!(!self.known.is_empty());
        // Nodes that failed lately go last: a dead node behind a silent
        // network costs a whole connect timeout.
        let now = Instant::now();
        self.failed_at.retain(|_, at| now.saturating_duration_since(*at) < limits::FAILED_NODE_AVOID);
        for step in 1..=self.known.len() {
            let index = (self.cursor + step) % self.known.len();
            let candidate = &self.known[index];
            if Some(candidate.as_str()) != avoid && !self.recently_failed(candidate, now) {
                self.cursor = index;
                return candidate.clone();
            }
        }
        for _ in 0..self.known.len() {
            self.cursor = (self.cursor + 1) % self.known.len();
            let candidate = &self.known[self.cursor];
            if Some(candidate.as_str()) != avoid {
                return candidate.clone();
            }
        }
        // Only one known node, and it is the one to avoid: it is still the
        // best bet.
        self.known[self.cursor].clone()
    }
}

/// The probing role of one call ([`Router::try_probe`]), given up on drop.
#[derive(Debug)]
pub(crate) struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Exponential backoff with full jitter: pause `n` is drawn uniformly from
/// zero to `min(max, initial * 2^n)`, which spreads retrying clients apart.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    pauses: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        assert!(initial <= max, "backoff initial exceeds max");
        Backoff { initial, max, pauses: 0 }
    }

    /// The next pause.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let cap = self.initial.checked_mul(1u32 << self.pauses.min(20)).unwrap_or(self.max).min(self.max);
        self.pauses = self.pauses.saturating_add(1);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=cap_nanos))
    }

    /// A pause capped at the initial cap, however many came before: for the
    /// call that probes for a new leader, which an election names within a
    /// few hundred milliseconds.
    pub(crate) fn short_pause(&mut self) -> Duration {
        let cap_nanos = u64::try_from(self.initial.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=cap_nanos))
    }

    /// Starts over from the initial cap, after a success.
    pub(crate) fn reset(&mut self) {
        self.pauses = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_visits_every_node_and_avoids_the_failed_one() {
        let router = Router::new(vec!["a:1".into(), "b:2".into(), "c:3".into()], Duration::from_secs(1));
        let first = router.first_target();
        let second = router.next_after(&first);
        let third = router.next_after(&second);
        let mut seen = vec![first.clone(), second.clone(), third];
        seen.sort();
        assert_eq!(seen, vec!["a:1", "b:2", "c:3"]);
        assert_ne!(first, second);
    }

    #[test]
    fn a_single_node_is_retried() {
        let router = Router::new(vec!["a:1".into()], Duration::from_secs(1));
        assert_eq!(router.next_after("a:1"), "a:1");
    }

    #[test]
    fn leader_is_remembered_learnt_and_forgotten() {
        let router = Router::new(vec!["a:1".into()], Duration::from_secs(1));
        router.set_leader("z:9");
        assert_eq!(router.first_target(), "z:9");
        assert_eq!(router.known(), vec!["a:1", "z:9"]);
        router.forget_leader("a:1");
        assert_eq!(router.leader().as_deref(), Some("z:9"));
        router.forget_leader("z:9");
        assert_eq!(router.leader(), None);
    }

    #[test]
    fn nodes_that_failed_lately_are_tried_last() {
        let router = Router::new(vec!["a:1".into(), "b:2".into(), "c:3".into()], Duration::from_secs(1));
        router.mark_failed("b:2");
        assert!(router.recently_failed("b:2"));
        assert!(!router.recently_failed("a:1"));
        // Whatever the start of the rotation, b is skipped while a and c
        // are there.
        for _ in 0..6 {
            let next = router.next_after("a:1");
            assert_eq!(next, "c:3");
            assert_eq!(router.next_after(&next), "a:1");
        }
        // With every other node failed too, the rotation still gives a node.
        router.mark_failed("a:1");
        router.mark_failed("c:3");
        let next = router.next_after("a:1");
        assert_ne!(next, "a:1");
        // An address that is not a known node is not remembered.
        router.mark_failed("z:9");
        assert!(!router.recently_failed("z:9"));
    }

    #[test]
    fn an_answer_clears_the_failure() {
        let router = Router::new(vec!["a:1".into(), "b:2".into()], Duration::from_secs(1));
        router.mark_failed("a:1");
        router.confirm_leader("a:1");
        assert!(!router.recently_failed("a:1"));
        assert_eq!(router.first_target(), "a:1");
    }

    #[test]
    fn waiting_calls_are_woken_by_a_new_leader_only() {
        let router = Router::new(vec!["a:1".into(), "b:2".into()], Duration::from_secs(1));
        let mut found = router.watch_leader();
        // A hint is not proof: it does not wake anyone.
        router.set_leader("a:1");
        assert!(!found.has_changed().unwrap());
        router.confirm_leader("a:1");
        assert!(found.has_changed().unwrap());
        found.mark_unchanged();
        // The same leader answering again wakes nobody.
        router.confirm_leader("a:1");
        assert!(!found.has_changed().unwrap());
        // After it failed, its next answer (or another's) is news again.
        router.forget_leader("a:1");
        router.confirm_leader("b:2");
        assert!(found.has_changed().unwrap());
        assert_eq!(router.leader().as_deref(), Some("b:2"));
    }

    #[test]
    fn one_call_at_a_time_probes() {
        let router = Router::new(vec!["a:1".into()], Duration::from_secs(1));
        let first = router.try_probe();
        assert!(first.is_some());
        assert!(router.try_probe().is_none());
        drop(first);
        assert!(router.try_probe().is_some());
    }

    #[test]
    fn short_pauses_do_not_grow() {
        let initial = Duration::from_millis(20);
        let mut backoff = Backoff::new(initial, Duration::from_secs(1));
        for _ in 0..10 {
            backoff.next_pause();
        }
        for _ in 0..100 {
            assert!(backoff.short_pause() <= initial);
        }
    }

    #[test]
    fn known_nodes_are_bounded() {
        let router = Router::new(vec!["a:1".into()], Duration::from_secs(1));
        for port in 2..1000 {
            router.learn(&format!("a:{port}"));
        }
        assert_eq!(router.known().len(), limits::KNOWN_NODES_MAX);
    }

    #[test]
    fn backoff_pauses_stay_under_a_doubling_cap() {
        let initial = Duration::from_millis(20);
        let max = Duration::from_secs(1);
        let mut backoff = Backoff::new(initial, max);
        for n in 0..40u32 {
            let cap = initial.saturating_mul(1 << n.min(20)).min(max);
            assert!(backoff.next_pause() <= cap);
        }
        backoff.reset();
        assert!(backoff.next_pause() <= initial);
    }
}
