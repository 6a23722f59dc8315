//! The chaos suite: a three-node JetStream cluster (R3 streams, fsync always), real brain and
//! hand processes, real sandboxes, and one fault of each kind while sessions are busy; then a
//! single server killed twice mid-load. The harness (`herd::testkit::chaos`) fails the run on
//! any lost or duplicated event, unfinished turn, or checker violation; the stall figures are
//! printed, not asserted.

mod common;

use common::*;
use herd::testkit::chaos::{Fault, Plan, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_each_fault_on_a_three_node_cluster_loses_nothing() {
    ensure_image("busybox");
    init_tracing();
    let report = run(Plan::short(env!("CARGO_BIN_EXE_herd").into()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", report.table());
    assert_eq!(report.violations, 0);
    assert_eq!(report.injected.len(), Fault::ALL.len());
    assert!(
        report.turns > report.sessions,
        "sessions kept working through the faults"
    );
    assert!(report.events_checked > 0 && report.tool_calls >= report.turns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_nats_server_killed_mid_load_loses_nothing() {
    ensure_image("busybox");
    init_tracing();
    let mut plan = Plan::short(env!("CARGO_BIN_EXE_herd").into());
    plan.nodes = 1;
    plan.faults = vec![Fault::KillLeader, Fault::KillLeader];
    let report = run(plan).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", report.table());
    assert_eq!(report.violations, 0);
    assert_eq!(report.injected.len(), 2);
    assert!(report.turns > report.sessions);
}
