//! Produce → read receipt on the sender's socket: the sender connected on `/realtime`
//! and subscribed to its event stream (docs/realtime.md); its messages to a reader
//! published over HTTP; then, one at a time, the reader's `MessageRead` of each
//! naming the sender in `notify`, timed from the request sent to the `message.read`
//! event for that seq read on the sender's socket.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::Published;
use super::client::ApiClient;
use super::result::SocketReceipts;
use crate::report::LatencySummary;
use crate::worker::new_histogram;

/// Longest a receipt may take before it counts as missing.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who and where.
pub(super) struct SocketSetup<'a> {
    /// `ws://host:port` of the edge.
    pub(super) edge_url: &'a str,
    pub(super) partner: &'a str,
    pub(super) secret: &'a str,
    /// Ids of the run start with it.
    pub(super) prefix: &'a str,
    pub(super) receipts: u64,
}

/// A stream event as the sender's socket got it, and when.
struct Arrived {
    event: String,
    conversation_id: Option<String>,
    seq: Option<u64>,
    reader: Option<String>,
    at: Instant,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    reader: Option<String>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects `user` on `/realtime`, authenticated and subscribed to its events.
async fn subscribed_socket(setup: &SocketSetup<'_>, user: &str) -> anyhow::Result<Socket> {
    let token =
        fanout_app::tools::mint_token(setup.secret, user, Duration::from_secs(3600), None, None)?;
    let url = format!("{}/realtime", setup.edge_url.trim_end_matches('/'));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let auth = serde_json::json!({
        "type": "authrequest",
        "token": token,
        "partner": setup.partner,
        "id": 1,
    });
    socket.send(Message::Text(auth.to_string().into())).await?;
    let setting_up = async {
        while let Some(frame) = socket.next().await {
            let Message::Text(text) = frame? else {
                continue;
            };
            let frame: Frame = serde_json::from_str(text.as_str())
                .with_context(|| format!("a frame that does not parse: {text}"))?;
            match frame.kind.as_str() {
                "authresponse" => {
                    anyhow::ensure!(
                        frame.success == Some(true),
                        "authentication refused: {text}"
                    );
                    socket
                        .send(Message::Text(
                            r#"{"type":"subscribe_events","id":2}"#.into(),
                        ))
                        .await?;
                }
                "subscribed" => return Ok(()),
                "error" => anyhow::bail!("the edge refused: {text}"),
                _ => {}
            }
        }
        anyhow::bail!("the connection ended during setup")
    };
    tokio::time::timeout(Duration::from_secs(30), setting_up)
        .await
        .context("subscribing the sender timed out")??;
    Ok(socket)
}

/// Reads the socket's stream events into `arrived` until it ends.
fn read_events(mut socket: Socket, arrived: mpsc::UnboundedSender<Arrived>) {
    tokio::spawn(async move {
        while let Some(Ok(frame)) = socket.next().await {
            let at = Instant::now();
            let Message::Text(text) = frame else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                continue;
            };
            if frame.kind != "event" {
                continue;
            }
            let event = Arrived {
                event: frame.event.unwrap_or_default(),
                conversation_id: frame.conversation_id,
                seq: frame.seq,
                reader: frame.reader,
                at,
            };
            if arrived.send(event).is_err() {
                return;
            }
        }
    });
}

/// Waits for the next event `wanted` accepts, up to `deadline`.
async fn wait_for(
    arrived: &mut mpsc::UnboundedReceiver<Arrived>,
    deadline: tokio::time::Instant,
    wanted: impl Fn(&Arrived) -> bool,
) -> Option<Arrived> {
    loop {
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some(event)) if wanted(&event) => return Some(event),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the receipts: the sender's messages first (waited for on its socket: its own
/// copies), then each read, one at a time. Every event the api accepted goes into
/// `published`. Returns the figures (CPU not filled in) and the latency histogram.
pub(super) async fn receipts_on_socket(
    client: &ApiClient,
    setup: &SocketSetup<'_>,
    published: &mut Published,
) -> anyhow::Result<(SocketReceipts, Histogram<u64>)> {
    let sender = format!("{}sender", setup.prefix);
    let reader = format!("{}reader", setup.prefix);
    let conversation = format!("{}receipts", setup.prefix);
    let socket = subscribed_socket(setup, &sender).await?;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    read_events(socket, arrived_tx);

    let count = setup.receipts.max(1);
    let now_ms = || i64::try_from(fanout_schema::unix_micros() / 1000).unwrap_or(0);
    let mut seq = 0;
    while seq < count {
        let batch: Vec<u64> = (seq + 1..=(seq + 100).min(count)).collect();
        seq = *batch.last().unwrap_or(&count);
        let events: Vec<String> = batch
            .iter()
            .map(|seq| {
                format!(
                    r#"{{"eventId":"{conversation}-m{seq}","partner":"{}","occurredAtMs":"{}","messageCreated":{{"conversationId":"{conversation}","seq":"{seq}","messageId":"m{seq}","sender":"{sender}","recipients":["{reader}"]}}}}"#,
                    setup.partner,
                    now_ms()
                )
            })
            .collect();
        let ids: Vec<String> = batch
            .iter()
            .map(|seq| format!("{conversation}-m{seq}"))
            .collect();
        let answer = client
            .post_events(format!("[{}]", events.join(",")))
            .await?;
        let accepted = published.note(&answer, &ids)?;
        anyhow::ensure!(
            accepted.iter().all(|accepted| *accepted),
            "the sender's messages were not all accepted (status {})",
            answer.status
        );
    }
    // The sender's own copies: the messages went through.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut created = 0;
    while created < count {
        let copy = wait_for(&mut arrived, deadline, |event| {
            event.event == "message.created"
                && event.conversation_id.as_deref() == Some(conversation.as_str())
        })
        .await
        .with_context(|| {
            format!("the sender had {created} of its {count} messages on its socket after 60 s")
        })?;
        drop(copy);
        created += 1;
    }

    let mut latency: Histogram<u64> = new_histogram()?;
    let mut ack_latency: Histogram<u64> = new_histogram()?;
    let mut parts = SocketReceipts {
        requested: count,
        ..SocketReceipts::default()
    };
    for seq in 1..=count {
        let event_id = format!("{conversation}-r{seq}");
        let body = format!(
            r#"{{"eventId":"{event_id}","partner":"{}","occurredAtMs":"{}","messageRead":{{"conversationId":"{conversation}","seq":"{seq}","user":"{reader}","messageId":"m{seq}","notify":["{sender}"]}}}}"#,
            setup.partner,
            now_ms()
        );
        let sent = Instant::now();
        let answer = client.post_events(body).await?;
        let acknowledged = Instant::now();
        let accepted = published.note(&answer, std::slice::from_ref(&event_id))?;
        anyhow::ensure!(
            accepted == [true],
            "read {seq} was not accepted (status {})",
            answer.status
        );
        ack_latency.saturating_record(micros(acknowledged - sent).max(1));
        let deadline = tokio::time::Instant::from_std(sent) + RECEIPT_TIMEOUT;
        let receipt = wait_for(&mut arrived, deadline, |event| {
            event.event == "message.read"
                && event.conversation_id.as_deref() == Some(conversation.as_str())
                && event.seq == Some(seq)
                && event.reader.as_deref() == Some(reader.as_str())
        })
        .await;
        match receipt {
            Some(receipt) => {
                parts.received += 1;
                latency
                    .saturating_record(micros(receipt.at.saturating_duration_since(sent)).max(1));
                if receipt.at < acknowledged {
                    parts.before_ack += 1;
                }
            }
            None => parts.missing += 1,
        }
    }
    parts.latency = LatencySummary::of(&latency);
    parts.ack_latency = LatencySummary::of(&ack_latency);
    Ok((parts, latency))
}
