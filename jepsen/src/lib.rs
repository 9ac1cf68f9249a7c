//! quorumq-jepsen: a fault-injection harness for quorumq in the style of
//! Jepsen. It runs a cluster (local processes in network namespaces, or the
//! Docker Compose cluster of `deploy/`), drives producers and consumers
//! through the public client while a nemesis kills, pauses and partitions
//! nodes and changes the cluster's membership, records every operation in a
//! history, and checks that no acknowledged message was lost.

pub mod checker;
pub mod compose;
pub mod db;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod report;
pub mod runner;
pub mod workload;
