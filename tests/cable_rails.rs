//! ActionCable on the wire as Rails behaves, where the unit tests of the session cannot
//! reach: the handshake's subprotocol choice, and a drain spread over its window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::*;
use tokio::time::Instant;

const SERVER_RESTART: &str = r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_fallback_and_unsubscribe_as_rails() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    // The official client's offer: actioncable-v1-json is echoed.
    let client = CableClient::connect(edge.address, "acme", &partner.token("jane")).await;
    assert_eq!(client.protocol.as_deref(), Some("actioncable-v1-json"));
    // A client that offers only the marker gets the marker (it then gives up on its
    // own), and the server carries on as Rails does.
    let mut marker = CableClient::connect_offering(
        edge.address,
        "acme",
        &partner.token("jane"),
        Some("actioncable-unsupported"),
    )
    .await;
    assert_eq!(marker.protocol.as_deref(), Some("actioncable-unsupported"));
    assert_eq!(
        marker.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    // No offer at all: no header, and the connection proceeds.
    let mut bare =
        CableClient::connect_offering(edge.address, "acme", &partner.token("jane"), None).await;
    assert_eq!(bare.protocol, None);
    assert_eq!(bare.welcome_and_subscribe().await, count_frame(0));

    // Unsubscribe stops pushes: the change below reaches the table but not the client;
    // had it been pushed, it would arrive before the confirmation of the resubscribe.
    bare.send_text(r#"{"command":"unsubscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#)
        .await;
    let producer = cluster.producer();
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 1, "sam", &["jane"]),
    )
    .await;
    wait_until("the edge to hold the new count", || {
        edge.node.table.get("acme/jane").map(|value| value.count) == Some(1)
    })
    .await;
    bare.send_text(r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#)
        .await;
    assert_eq!(
        bare.next_frame().await.as_deref(),
        Some(r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#)
    );
    assert_eq!(bare.next_frame().await.unwrap(), count_frame(1));

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spreads_server_restart_over_the_window() {
    const CLIENTS: usize = 10;
    let window = Duration::from_millis(2000);
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let mut config = cluster.config.clone();
    config.edge.drain_window_ms = u64::try_from(window.as_millis()).unwrap();
    let edge = start_edge(&config).await;
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        let mut client =
            CableClient::connect(edge.address, "acme", &partner.token(&format!("u{index}"))).await;
        assert_eq!(client.welcome_and_subscribe().await, count_frame(0));
        clients.push(client);
    }

    let stopped = Instant::now();
    let stopping = tokio::spawn(edge.running.stop());
    let goodbyes = clients.into_iter().map(|mut client| async move {
        let frame = client.next_frame().await;
        let at = stopped.elapsed();
        // Then the server closes.
        assert_eq!(client.next_frame().await, None);
        (frame, at)
    });
    let goodbyes = futures::future::join_all(goodbyes).await;
    stopping.await.unwrap();

    for (frame, _) in &goodbyes {
        assert_eq!(frame.as_deref(), Some(SERVER_RESTART));
    }
    let first = goodbyes.iter().map(|(_, at)| *at).min().unwrap();
    let last = goodbyes.iter().map(|(_, at)| *at).max().unwrap();
    // Evenly spaced: the last is told 9/10 of the window after the first. No client
    // can hear before its turn, so this lower bound holds however slow the machine.
    assert!(
        last - first >= window * 8 / 10,
        "goodbyes from {first:?} to {last:?}, expected spread over {window:?}"
    );
}
