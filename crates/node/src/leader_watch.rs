//! Drops the lease of a leader whose process is provably gone, so that a
//! killed leader costs one election timeout instead of two.
//!
//! A follower grants no vote while the lease of the leader it last heard
//! from runs (openraft sets the lease to the maximum election timeout), and
//! stands for election only a random election timeout after the lease ran
//! out. A leader that went silent costs both; that is right while it may be
//! alive behind a slow or cut network, but a leader whose process died on a
//! host that is still up can be told apart: its port refuses connections.
//!
//! So a follower keeps one idle TCP connection to its leader's address (it
//! sends nothing on it). When that connection closes, it connects again; if
//! the connection is refused, nothing listens there any more and the
//! follower drops the lease, as openraft does when a leader hands over.
//! The usual election then starts at the election timeout counted from the
//! last heartbeat, with pre-vote (the other follower grants it once it has
//! seen the same, or once its own lease has run out). A leader that is
//! merely silent (network cut, host down, process paused) keeps its lease:
//! only a refused connection counts as proof. Reads confirm leadership with
//! a quorum round (ReadIndex), never by lease, so nothing relies on the
//! lease of a dead leader.

use std::io;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::types::*;

/// How long a connection attempt to the leader may take; one that times out
/// proves nothing.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Least time between two connections to the leader, so that a leader that
/// closes idle connections at once costs a connection per interval, not a
/// busy loop.
const RECONNECT_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// The leader this follower follows: id, address and the vote it leads in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Followed {
    id: NodeId,
    addr: String,
    vote: Vote,
}

fn followed(raft: &Raft, self_id: NodeId) -> Option<Followed> {
    let m = raft.server_metrics().borrow_watched().clone();
    if m.state != ServerState::Follower || !m.vote.is_committed() {
        return None;
    }
    let id = m.current_leader.filter(|&l| l != self_id)?;
    let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
    Some(Followed { id, addr, vote: m.vote })
}

fn refused(result: &Result<io::Result<TcpStream>, tokio::time::error::Elapsed>) -> bool {
    matches!(result, Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Runs until Raft stops.
pub async fn run(raft: Raft, self_id: NodeId) {
    let mut changes = raft.server_metrics();
    let mut last_connect = Instant::now() - RECONNECT_INTERVAL_MIN;
    loop {
        let Some(leader) = followed(&raft, self_id) else {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::time::sleep_until(last_connect + RECONNECT_INTERVAL_MIN).await;
        last_connect = Instant::now();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&leader.addr)).await;
        let gone = match attempt {
            Ok(Ok(mut stream)) => {
                // Wait for the connection to close, or for another leader.
                let mut buf = [0u8; 256];
                let closed = loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(0) | Err(_) => break true,
                            Ok(_) => {}
                        },
                        changed = changes.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if followed(&raft, self_id).as_ref() != Some(&leader) {
                                break false;
                            }
                        }
                    }
                };
                drop(stream);
                // Closed: is anything still listening there?
                closed && refused(&tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&leader.addr)).await)
            }
            ref other => refused(other),
        };
        if gone && followed(&raft, self_id).as_ref() == Some(&leader) {
            tracing::info!(
                leader = leader.id,
                addr = %leader.addr,
                "the leader's port refuses connections: its process is gone; dropping its lease so that an \
                 election starts at the election timeout"
            );
            // A transfer "to" the dead leader itself only drops this
            // node's lease on it (openraft checks that the vote is still
            // the leader's); nobody is made to stand for election.
            let request = TransferLeaderRequest::new(leader.vote, leader.id, None);
            if let Err(e) = raft.handle_transfer_leader(request).await {
                tracing::debug!(%e, "could not drop the dead leader's lease");
                return;
            }
            // Nothing more to learn about this leader: wait for a new one
            // (or look again in a while).
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await {
                return;
            }
        }
    }
}
