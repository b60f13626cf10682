//! A router stopped mid-stream, once by crashing and once gracefully, on the embedded
//! cluster: final counts equal an independent recount (see
//! [`fanout_tests::scenarios::crash_and_restart`]).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_a_router_crash_and_a_graceful_restart() {
    fanout_tests::scenarios::crash_and_restart(|partners| {
        fanout_tests::TestCluster::start(4, partners)
    })
    .await;
}
