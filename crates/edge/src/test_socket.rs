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
