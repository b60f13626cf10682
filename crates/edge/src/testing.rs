//! A socket made of two channels, for driving a session without a network: what the test
//! sends in, what the session writes.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub(crate) struct ChannelSocket {
    pub(crate) incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
    pub(crate) outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for ChannelSocket {
    type Item = Result<Message, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.incoming).poll_next(cx)
    }
}

impl Sink<Message> for ChannelSocket {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        self.outgoing
            .unbounded_send(item)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing.close_channel();
        Poll::Ready(Ok(()))
    }
}

/// The test's end of a [`ChannelSocket`].
pub(crate) struct Peer {
    pub(crate) to_session: mpsc::UnboundedSender<Result<Message, WsError>>,
    pub(crate) from_session: mpsc::UnboundedReceiver<Message>,
}

impl ChannelSocket {
    /// A socket for the session and the test's end of it.
    pub(crate) fn pair() -> (Self, Peer) {
        let (to_session, incoming) = mpsc::unbounded();
        let (outgoing, from_session) = mpsc::unbounded();
        (
            Self { incoming, outgoing },
            Peer {
                to_session,
                from_session,
            },
        )
    }
}

impl Peer {
    /// Sends a text frame to the session.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn send(&self, frame: &str) {
        self.to_session
            .unbounded_send(Ok(Message::Text(frame.to_owned().into())))
            .unwrap();
    }

    /// The next frame the session wrote, which must be text.
    #[allow(clippy::unwrap_used)]
    pub(crate) async fn next(&mut self) -> String {
        match futures::StreamExt::next(&mut self.from_session)
            .await
            .unwrap()
        {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A node with one partner, `acme`, signing with [`SECRET`], and a session of one
/// protocol driven through a [`ChannelSocket`].
pub(crate) mod harness {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use futures::StreamExt;
    use tokio::sync::watch;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_util::sync::CancellationToken;

    use super::{ChannelSocket, Peer};
    use crate::config::{EdgeConfig, PartnerConfig, SecretConfig, SecretsFile};
    use crate::node::Node;
    use crate::session::{CloseReason, Credentials, Session};
    use crate::table::{CountTable, CountValue};
    use crate::telemetry::EdgeMetrics;

    pub(crate) const SECRET: &str = "acme-secret-0123456789";

    /// A token for `user` signed with `secret`, expiring in `expires_in_seconds`.
    pub(crate) fn token(secret: &str, user: &str, expires_in_seconds: i64) -> String {
        sign(secret, user, expires_in_seconds, None)
    }

    /// A stream subscription's token (`"scope":"stream"`) for `user`, signed with
    /// `secret`.
    pub(crate) fn stream_token(secret: &str, user: &str, expires_in_seconds: i64) -> String {
        sign(secret, user, expires_in_seconds, Some("stream"))
    }

    fn sign(secret: &str, user: &str, expires_in_seconds: i64, scope: Option<&str>) -> String {
        let now = fanout_schema::unix_millis() / 1000;
        let mut claims = serde_json::json!({
            "uniqueId": user,
            "exp": now + expires_in_seconds,
            "iat": now,
            "jti": crate::replay::tests_support::fresh_id(),
        });
        if let Some(scope) = scope {
            claims["scope"] = scope.into();
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    pub(crate) struct Harness {
        pub(crate) peer: Peer,
        pub(crate) node: Arc<Node>,
        pub(crate) ready: watch::Sender<bool>,
        pub(crate) shutdown: CancellationToken,
        pub(crate) session: tokio::task::JoinHandle<CloseReason>,
    }

    /// Starts a session of the protocol `make` builds, on a node whose table has
    /// caught up (`ready`) or not, configured by `configure`, with the `credentials`
    /// of the upgrade request. The page's origin is `https://app.acme.com`.
    pub(crate) fn start<P>(
        ready: bool,
        configure: impl FnOnce(&mut EdgeConfig),
        make: impl FnOnce(&EdgeConfig) -> P,
        credentials: Option<Credentials>,
    ) -> Harness
    where
        P: Session + Send + 'static,
    {
        let mut config = EdgeConfig::default();
        config.partners.insert(
            "acme".to_owned(),
            PartnerConfig {
                secrets: vec![SecretConfig {
                    kid: None,
                    secret: SECRET.to_owned(),
                }],
                ..PartnerConfig::default()
            },
        );
        configure(&mut config);
        let protocol = make(&config);
        let (ready_tx, ready_rx) = watch::channel(ready);
        let node = Arc::new(Node::new(
            config,
            &SecretsFile::new(),
            Arc::new(CountTable::new()),
            EdgeMetrics::new(&prometheus::Registry::new()).unwrap(),
            ready_rx,
        ));
        let mut harness = start_on(node, protocol, credentials);
        harness.ready = ready_tx;
        harness
    }

    /// Starts a session of `protocol` on `node` (another session of the same node: a
    /// reconnect), from the same origin.
    pub(crate) fn start_on<P>(
        node: Arc<Node>,
        protocol: P,
        credentials: Option<Credentials>,
    ) -> Harness
    where
        P: Session + Send + 'static,
    {
        let (mut socket, peer) = ChannelSocket::pair();
        let shutdown = CancellationToken::new();
        let session = {
            let node = node.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let origin = Some("https://app.acme.com".to_owned());
                crate::session::run(&mut socket, &node, protocol, origin, credentials, &shutdown)
                    .await
            })
        };
        Harness {
            peer,
            node,
            ready: watch::channel(true).0,
            shutdown,
            session,
        }
    }

    impl Harness {
        pub(crate) fn send(&self, frame: &str) {
            self.peer.send(frame);
        }

        pub(crate) async fn next(&mut self) -> String {
            self.peer.next().await
        }

        /// The close frame's code and reason (`None`: a close without a code); then the
        /// session ends.
        pub(crate) async fn next_close(&mut self) -> Option<(u16, String)> {
            let close = match self.peer.from_session.next().await.unwrap() {
                Message::Close(frame) => {
                    frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                }
                other => panic!("expected a close, got {other:?}"),
            };
            assert!(self.peer.from_session.next().await.is_none());
            close
        }

        /// The next close frame's code, skipping text frames before it.
        pub(crate) async fn close_code(&mut self) -> u16 {
            loop {
                match self.peer.from_session.next().await.unwrap() {
                    Message::Close(Some(frame)) => return u16::from(frame.code),
                    Message::Text(_) => {}
                    other => panic!("expected a close, got {other:?}"),
                }
            }
        }

        pub(crate) fn set_count(&self, count: u64, version: u64) {
            self.set_count_of("acme/bob", count, version);
        }

        pub(crate) fn set_count_of(&self, key: &str, count: u64, version: u64) {
            self.node.table.apply(
                key,
                CountValue {
                    count,
                    version,
                    occurred_at_ms: 0,
                    changes: 0,
                },
            );
        }
    }
}
