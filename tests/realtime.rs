//! The JSON `/realtime` protocol end to end: message events on Kafka → ingest → router →
//! edge → a real WebSocket client that authenticates in band.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::*;

fn count(count: u64) -> String {
    format!(r#"{{"type":"unread_count","count":{count}}}"#)
}

const AUTH_OK_1: &str = r#"{"type":"authresponse","success":true,"id":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_then_the_current_count_then_changes_and_replies_with_echoed_ids() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(2, std::slice::from_ref(&alpha));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let producer = cluster.producer();

    produce_event(
        &producer,
        config,
        &event::created("alpha", "c1", 1, "sam", &["u1"]),
    )
    .await;
    wait_until("the first count to reach the edge", || {
        edge.node.table.get("alpha/u1").map(|value| value.count) == Some(1)
    })
    .await;

    let mut client = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        client
            .authenticate("alpha", &alpha.token("u1"), r#""auth-1""#)
            .await,
        r#"{"type":"authresponse","success":true,"id":"auth-1"}"#
    );
    assert_eq!(client.next_text().await, count(1));

    produce_event(
        &producer,
        config,
        &event::created("alpha", "c1", 2, "sam", &["u1"]),
    )
    .await;
    assert_eq!(client.next_text().await, count(2));

    client
        .send_text(r#"{"type":"get_unread_count","id":"req-7"}"#)
        .await;
    assert_eq!(
        client.next_text().await,
        r#"{"type":"unread_count","count":2,"id":"req-7"}"#
    );
    client
        .send_text(r#"{"type":"get_unread_count","id":42}"#)
        .await;
    assert_eq!(
        client.next_text().await,
        r#"{"type":"unread_count","count":2,"id":42}"#
    );
    client.send_text(r#"{"type":"ping","id":"p1"}"#).await;
    assert_eq!(client.next_text().await, r#"{"type":"pong","id":"p1"}"#);
    client.send_text(r#"{"type":"ping","id":3}"#).await;
    assert_eq!(client.next_text().await, r#"{"type":"pong","id":3}"#);
    assert_eq!(edge.node.metrics.open_connections("realtime"), 1);

    drop(client);
    wait_until("the connection to be closed", || {
        edge.node.metrics.open_connections("realtime") == 0
    })
    .await;
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_before_auth() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    produce_event(
        &cluster.producer(),
        config,
        &event::created("alpha", "c1", 1, "sam", &["u1"]),
    )
    .await;
    wait_until("the count to reach the edge", || {
        edge.node.table.get("alpha/u1").is_some()
    })
    .await;

    let mut client = RealtimeClient::connect(edge.address).await;
    client
        .send_text(r#"{"type":"get_unread_count","id":"early"}"#)
        .await;
    assert_eq!(
        client.next_text().await,
        r#"{"type":"error","error":"not_authenticated","id":"early"}"#
    );
    client.send_text(r#"{"type":"ping","id":"p"}"#).await;
    // The next frame is the pong: no count was sent in between.
    assert_eq!(client.next_text().await, r#"{"type":"pong","id":"p"}"#);
    client.send_text("not json").await;
    assert_eq!(
        client.next_text().await,
        r#"{"type":"error","error":"malformed"}"#
    );
    // Once authenticated, the count comes.
    assert_eq!(
        client.authenticate("alpha", &alpha.token("u1"), "1").await,
        AUTH_OK_1
    );
    assert_eq!(client.next_text().await, count(1));
    assert_eq!(
        edge.node
            .metrics
            .ignored_frame_count("realtime", "not_authenticated"),
        1
    );
    pipeline.stop().await;
}

fn expired_token(partner: &TestPartner, user: &str) -> String {
    TokenBuilder::new(user)
        .claim("jti", "j1")
        .claim_from_now("iat", -7200)
        .claim_from_now("exp", -3600)
        .sign(&partner.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_their_code_and_the_third_closes_with_4401() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let edge = start_edge(&cluster.config).await;
    // alpha's code, another secret.
    let impostor = TestPartner::new("alpha");

    let mut client = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        client
            .authenticate("alpha", &impostor.token("u1"), "1")
            .await,
        r#"{"type":"authresponse","success":false,"error":"invalid_signature","id":1}"#
    );
    assert_eq!(
        client
            .authenticate("alpha", &expired_token(&alpha, "u1"), r#""two""#)
            .await,
        r#"{"type":"authresponse","success":false,"error":"expired","id":"two"}"#
    );
    // A valid token of a partner the edge does not know.
    assert_eq!(
        client
            .authenticate("initech", &alpha.token("u1"), "3")
            .await,
        r#"{"type":"authresponse","success":false,"error":"unknown_partner","id":3}"#
    );
    assert_eq!(
        client.next_close().await,
        (4401, "authentication failed".to_owned())
    );
    let metrics = &edge.node.metrics;
    assert_eq!(metrics.auth_failure_count("invalid_signature"), 1);
    assert_eq!(metrics.auth_failure_count("expired"), 1);
    assert_eq!(metrics.auth_failure_count("unknown_partner"), 1);
    assert_eq!(metrics.handshake_count("unauthorized"), 1);

    // The limit is per connection: a new one may try again, and a good token works.
    let mut client = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        client.authenticate("alpha", &alpha.token("u1"), "1").await,
        AUTH_OK_1
    );
    assert_eq!(client.next_text().await, count(0));
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_within_the_timeout_closes_with_4408() {
    let alpha = TestPartner::new("alpha");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    cluster.config.edge.auth_timeout_ms = 300;
    let edge = start_edge(&cluster.config).await;

    let mut client = RealtimeClient::connect(edge.address).await;
    // Requests before auth do not keep the connection open.
    client.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(client.next_text().await, r#"{"type":"pong"}"#);
    assert_eq!(client.next_close().await, (4408, "auth timeout".to_owned()));
    assert_eq!(edge.node.metrics.handshake_count("auth_timeout"), 1);

    // A client that authenticates in time stays past the timeout.
    let mut client = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        client.authenticate("alpha", &alpha.token("u1"), "1").await,
        AUTH_OK_1
    );
    assert_eq!(client.next_text().await, count(0));
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.send_text(r#"{"type":"ping","id":2}"#).await;
    assert_eq!(client.next_text().await, r#"{"type":"pong","id":2}"#);
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_unique_id_under_two_partners_never_shares_a_count() {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let cluster = TestCluster::start(2, &[alpha.clone(), beta.clone()]);
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let producer = cluster.producer();

    let mut alpha_client = RealtimeClient::connect(edge.address).await;
    let mut beta_client = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        alpha_client
            .authenticate("alpha", &alpha.token("u1"), "1")
            .await,
        AUTH_OK_1
    );
    assert_eq!(alpha_client.next_text().await, count(0));
    assert_eq!(
        beta_client
            .authenticate("beta", &beta.token("u1"), "1")
            .await,
        AUTH_OK_1
    );
    assert_eq!(beta_client.next_text().await, count(0));

    for seq in 1..=2 {
        produce_event(
            &producer,
            config,
            &event::created("alpha", "c1", seq, "sam", &["u1"]),
        )
        .await;
        assert_eq!(alpha_client.next_text().await, count(seq));
    }
    produce_event(
        &producer,
        config,
        &event::created("beta", "c1", 1, "sam", &["u1"]),
    )
    .await;
    // beta's first frame since auth is its own count: none of alpha's reached it.
    assert_eq!(beta_client.next_text().await, count(1));
    beta_client
        .send_text(r#"{"type":"get_unread_count","id":"b"}"#)
        .await;
    assert_eq!(
        beta_client.next_text().await,
        r#"{"type":"unread_count","count":1,"id":"b"}"#
    );
    alpha_client
        .send_text(r#"{"type":"get_unread_count","id":"a"}"#)
        .await;
    assert_eq!(
        alpha_client.next_text().await,
        r#"{"type":"unread_count","count":2,"id":"a"}"#
    );
    // A token for beta's u1 is no good for alpha.
    let mut crossing = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        crossing.authenticate("alpha", &beta.token("u1"), "1").await,
        r#"{"type":"authresponse","success":false,"error":"invalid_signature","id":1}"#
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_shutdown_closes_with_1012_before_and_after_auth() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let edge = start_edge(&cluster.config).await;

    let mut authenticated = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        authenticated
            .authenticate("alpha", &alpha.token("u1"), "1")
            .await,
        AUTH_OK_1
    );
    assert_eq!(authenticated.next_text().await, count(0));
    let mut waiting = RealtimeClient::connect(edge.address).await;
    waiting.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(waiting.next_text().await, r#"{"type":"pong"}"#);

    let stopping = tokio::spawn(edge.running.stop());
    assert_eq!(
        authenticated.next_close().await,
        (1012, "server restart".to_owned())
    );
    assert_eq!(
        waiting.next_close().await,
        (1012, "server restart".to_owned())
    );
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the edge stopped")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let alpha = TestPartner::new("alpha");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    cluster.config.edge.max_frame_bytes = 1024;
    let edge = start_edge(&cluster.config).await;

    let mut client = RealtimeClient::connect(edge.address).await;
    let padding = "x".repeat(2048);
    client
        .send_text(&format!(r#"{{"type":"ping","pad":"{padding}"}}"#))
        .await;
    assert_eq!(
        client.next_close().await,
        (1009, "frame too large".to_owned())
    );
    assert_eq!(edge.node.metrics.limited_count("frame_size"), 1);
    edge.running.stop().await;
}
