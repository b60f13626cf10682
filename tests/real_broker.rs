//! The cross-stage scenarios against a real Kafka-protocol broker in its own process
//! (tansu, installed on first use), not only the in-process mock.

use fanout_tests::{TestCluster, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_frames_across_partners_on_a_real_broker() {
    scenarios::exact_frames_across_partners(|partners| TestCluster::start_tansu(4, partners)).await;
}

/// Known to fail about one run in four on tansu 0.6 (in-memory engine): a router
/// restoring after a restart did not see router-state records whose input offsets had
/// already been committed (they appear in the topic later), so it re-derived from an
/// older state and a few events were lost for a few users. The restore reads to a
/// fresh end of partition; the same scenario on the embedded cluster, and the SIGKILL
/// test there, are exact every run. Not diagnosed yet (tansu visibility, or fanout):
/// run it with `cargo test --test real_broker -- --ignored`; on failure it prints each
/// differing user's count and state records.
#[ignore = "fails about 1 run in 4 on tansu 0.6; under investigation (see the README)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_router_crash_and_restart_on_a_real_broker() {
    scenarios::crash_and_restart(|partners| TestCluster::start_tansu(4, partners)).await;
}
