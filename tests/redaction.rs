//! Tokens never appear in logs, metrics or replies. This binary installs its own log
//! subscriber (at debug, for every crate) that keeps every line, drives good and bad
//! tokens through both protocols, and searches everything written for them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fanout_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_logs_metrics_or_replies() {
    let captured = CapturedLog::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let edge = start_edge(&cluster.config).await;
    let address = edge.address;

    let good_cable = alpha.token("u1");
    let good_realtime = alpha.token("u2");
    let forged = TestPartner::new("alpha").token("u1");
    let expired = TokenBuilder::new("u3")
        .claim("jti", "j3")
        .claim_from_now("iat", -900)
        .claim_from_now("exp", -600)
        .sign(&alpha.secret);
    let mut replies = Vec::new();

    let mut client = CableClient::connect(address, "alpha", &good_cable).await;
    replies.push(client.welcome_and_subscribe().await);
    for token in [&good_cable, &forged, &expired] {
        let mut refused = CableClient::connect(address, "alpha", token).await;
        while let Some(frame) = refused.next_frame().await {
            replies.push(frame);
        }
    }
    let mut realtime = RealtimeClient::connect(address).await;
    replies.push(realtime.authenticate("alpha", &good_realtime, "1").await);
    replies.push(realtime.next_text().await);
    for token in [&good_realtime, &forged, &expired] {
        let mut refused = RealtimeClient::connect(address).await;
        replies.push(refused.authenticate("alpha", token, "1").await);
    }
    let registry = edge.registry.clone();
    edge.running.stop().await;

    let logs = captured.text();
    let metrics = {
        use prometheus::Encoder as _;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    };
    // The capture works, and saw the upgrades: the access line with the value redacted,
    // and the refusals.
    assert!(logs.contains("jwt=[redacted]&partner=alpha"), "{logs}");
    assert!(logs.contains("connection refused: unauthorized"), "{logs}");
    assert!(
        metrics.contains("fanout_edge_auth_failures_total"),
        "{metrics}"
    );
    for token in [&good_cable, &good_realtime, &forged, &expired] {
        // Any long piece of a token would do as well as the token: its signature.
        let signature = token.rsplit('.').next().unwrap();
        for (place, text) in [("logs", &logs), ("metrics", &metrics)] {
            assert!(!text.contains(token.as_str()), "a token in the {place}");
            assert!(
                !text.contains(signature),
                "a token's signature in the {place}"
            );
        }
        for reply in &replies {
            assert!(!reply.contains(signature), "a token in a reply: {reply}");
        }
    }
    assert!(replies.len() >= 9, "{replies:?}");
}
