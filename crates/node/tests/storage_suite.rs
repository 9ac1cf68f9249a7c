//! Proves that the segment-file log store and the state machine store (bodies in segment files, metadata in sled)
//! meet openraft's storage contract, by running openraft's own conformance
//! suite on them.

use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use quorumq_node::log_store::LogStore;
use quorumq_node::sm_store::StateMachineStore;
use quorumq_node::types::QUEUES_GROUP;
use quorumq_node::types::TypeConfig;

struct StoreBuilderImpl;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for StoreBuilderImpl {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path().join("db")).open().expect("open sled");
        let log = LogStore::open(&dir.path().join("log"), QUEUES_GROUP).expect("open log store");
        let sm = StateMachineStore::open(db, QUEUES_GROUP, dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(StoreBuilderImpl).await?;
    Ok(())
}
