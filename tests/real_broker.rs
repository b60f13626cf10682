//! The cross-stage scenarios against a real Kafka-protocol broker in its own process
//! (tansu, installed on first use), not only the in-process mock.

use fanout_tests::{TestCluster, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_frames_across_partners_on_a_real_broker() {
    scenarios::exact_frames_across_partners(|partners| TestCluster::start_tansu(4, partners)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_router_crash_and_restart_on_a_real_broker() {
    scenarios::crash_and_restart(|partners| TestCluster::start_tansu(4, partners)).await;
}
