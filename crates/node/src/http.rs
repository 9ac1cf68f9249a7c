//! The node's plain-HTTP endpoint (`--http HOST:PORT`): `/metrics`
//! (Prometheus), `/health` (liveness) and `/ready` (readiness). Separate
//! from the gRPC address so that it can stay inside a private network.
//!
//! `/health` answers 200 `ok` while the gRPC server runs and Raft has not
//! stopped, else 503 with the reason.
//!
//! `/ready` answers 200 `ready` when every rule of [`readiness`] holds, else
//! 503 with the first rule that does not, in one line.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::limits;
use crate::metrics::MetricsSource;
use crate::peer_status::PeerStatuses;
use crate::service::role_name;
use crate::types::*;

/// What the handlers read.
pub struct HttpState {
    pub metrics: Arc<MetricsSource>,
    pub peers: Arc<PeerStatuses>,
    /// True while the gRPC server runs.
    pub grpc_serving: Arc<AtomicBool>,
}

/// Serves the endpoint on `listener` until `stop` fires.
pub fn serve(listener: TcpListener, state: Arc<HttpState>, stop: oneshot::Receiver<()>) -> JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state);
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    })
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let source = state.metrics.clone();
    // Gathering walks the data directory: not on the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let scrape = crate::metrics::Scrape::gather(&source);
        crate::metrics::render(scrape, source.log_stats.clone())
    })
    .await;
    match rendered {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("gathering metrics: {e}\n")).into_response(),
    }
}

async fn health(State(state): State<Arc<HttpState>>) -> (StatusCode, String) {
    let m = state.metrics.raft.metrics().borrow_watched().clone();
    let problem = if !state.grpc_serving.load(Ordering::Relaxed) {
        Some("the gRPC server is not running".to_string())
    } else if let Err(e) = &m.running_state {
        Some(format!("raft has stopped: {e}"))
    } else if m.state == ServerState::Shutdown {
        Some("raft is shutting down".to_string())
    } else {
        None
    };
    match problem {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")),
    }
}

async fn ready(State(state): State<Arc<HttpState>>) -> (StatusCode, String) {
    let view = ReadyView::now(&state);
    match readiness(&view) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// What readiness is decided on.
#[derive(Clone, Debug)]
pub struct ReadyView {
    pub self_id: NodeId,
    /// Raft runs (not stopped by an error, not shutting down).
    pub running: bool,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// Voters other than this node.
    pub other_voters: usize,
    pub applied: u64,
    /// The highest commit index this node knows: its own, or the one its
    /// leader last sent.
    pub committed: u64,
    /// On the leader: time since a quorum last acknowledged it.
    pub quorum_ack_age: Option<Duration>,
    /// The leader's latest status answer (`crate::peer_status`), when the
    /// leader is another node: its age, role and term.
    pub leader_report: Option<(Duration, String, u64)>,
}

impl ReadyView {
    fn now(state: &HttpState) -> ReadyView {
        let m = state.metrics.raft.metrics().borrow_watched().clone();
        let self_id = state.metrics.id;
        let index = |id: &Option<LogId>| id.as_ref().map_or(0, |id| id.index());
        let leader_report = m
            .current_leader
            .filter(|l| *l != self_id)
            .and_then(|l| state.peers.get(l))
            .map(|r| (r.answered_at.elapsed(), r.status.role, r.status.term));
        ReadyView {
            self_id,
            running: m.running_state.is_ok() && m.state != ServerState::Shutdown,
            role: role_name(m.state),
            term: m.current_term,
            leader: m.current_leader,
            other_voters: m.membership_config.membership().voter_ids().filter(|id| *id != self_id).count(),
            applied: index(&m.last_applied),
            committed: index(&m.local_committed).max(index(&m.cluster_committed)),
            quorum_ack_age: m.last_quorum_acked.as_ref().map(|t| openraft::Instant::elapsed(&**t)),
            leader_report,
        }
    }
}

/// The readiness rules, in order; the first that fails is the reason:
/// 1. Raft runs.
/// 2. This node knows a leader.
/// 3. If it is the leader, a quorum acknowledged it within
///    [`limits::READY_LEADER_CONTACT_MAX`] (unless it is the only voter).
///    Otherwise the leader answered this node's status request (sent every
///    second) within that time, as leader of this node's term. (openraft
///    keeps naming the last leader on a follower cut off from it, so the
///    answer is what shows the leader is still there.)
/// 4. Its applied index is at most [`limits::READY_LAG_ENTRIES_MAX`] entries
///    behind the highest commit index it knows (its own, or the one the
///    leader last sent it).
pub fn readiness(v: &ReadyView) -> Result<(), String> {
    let contact_max = limits::READY_LEADER_CONTACT_MAX;
    if !v.running {
        return Err("raft has stopped".to_string());
    }
    let Some(leader) = v.leader else {
        return Err(format!("no leader known (this node is {} in term {})", v.role, v.term));
    };
    if leader == v.self_id {
        if v.role != "leader" {
            return Err(format!("this node is named leader but is {}", v.role));
        }
        if v.other_voters > 0 {
            match v.quorum_ack_age {
                None => return Err("this leader has not heard from a quorum yet".to_string()),
                Some(age) if age > contact_max => {
                    return Err(format!("this leader last heard from a quorum {:.1} s ago", age.as_secs_f64()));
                }
                Some(_) => {}
            }
        }
    } else {
        match &v.leader_report {
            None => return Err(format!("leader node {leader} has not answered a status request yet")),
            Some((age, _, _)) if *age > contact_max => {
                return Err(format!("leader node {leader} last answered {:.1} s ago", age.as_secs_f64()));
            }
            Some((_, role, term)) if role != "leader" || *term != v.term => {
                return Err(format!(
                    "node {leader} is no longer leader of term {} (it says: {role} in term {term})",
                    v.term
                ));
            }
            Some(_) => {}
        }
    }
    let lag = v.committed.saturating_sub(v.applied);
    if lag > limits::READY_LAG_ENTRIES_MAX {
        return Err(format!(
            "applied index {} is {lag} entries behind commit index {} (more than {})",
            v.applied,
            v.committed,
            limits::READY_LAG_ENTRIES_MAX
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower() -> ReadyView {
        ReadyView {
            self_id: 2,
            running: true,
            role: "follower",
            term: 4,
            leader: Some(1),
            other_voters: 2,
            applied: 100,
            committed: 100,
            quorum_ack_age: None,
            leader_report: Some((Duration::from_millis(800), "leader".to_string(), 4)),
        }
    }

    fn leader() -> ReadyView {
        ReadyView {
            self_id: 1,
            role: "leader",
            quorum_ack_age: Some(Duration::from_millis(40)),
            leader: Some(1),
            leader_report: None,
            ..follower()
        }
    }

    /// Each rule, broken alone, makes the node unready with a reason naming
    /// it; a caught-up follower of a live leader and a leader with a quorum
    /// are ready.
    #[test]
    fn readiness_rules() {
        assert_eq!(readiness(&follower()), Ok(()));
        assert_eq!(readiness(&leader()), Ok(()));
        assert_eq!(readiness(&ReadyView { other_voters: 0, quorum_ack_age: None, ..leader() }), Ok(()));
        assert_eq!(readiness(&ReadyView { applied: 0, committed: 1000, ..follower() }), Ok(()));

        let reason = |v: ReadyView| readiness(&v).expect_err("not ready");
        assert!(reason(ReadyView { running: false, ..follower() }).contains("stopped"));
        assert!(reason(ReadyView { leader: None, role: "candidate", ..follower() }).contains("no leader known"));
        assert!(reason(ReadyView { leader_report: None, ..follower() }).contains("has not answered"));
        let stale = Some((Duration::from_secs(4), "leader".to_string(), 4));
        assert!(reason(ReadyView { leader_report: stale, ..follower() }).contains("last answered 4.0 s ago"));
        let deposed = Some((Duration::from_millis(10), "follower".to_string(), 5));
        assert!(reason(ReadyView { leader_report: deposed, ..follower() }).contains("no longer leader"));
        let lagging = reason(ReadyView { applied: 10, committed: 1011, ..follower() });
        assert!(lagging.contains("1001 entries behind"), "{lagging}");
        assert!(reason(ReadyView { quorum_ack_age: None, ..leader() }).contains("quorum"));
        assert!(reason(ReadyView { quorum_ack_age: Some(Duration::from_secs(5)), ..leader() }).contains("5.0 s ago"));
        assert!(reason(ReadyView { role: "candidate", ..leader() }).contains("named leader"));
    }
}
