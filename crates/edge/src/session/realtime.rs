//! The JSON "RealTime API" session (`/realtime`) as a state machine.
//!
//! The client authenticates in band: until an `authrequest` succeeds it gets `pong`s
//! and errors, never data. After [`MAX_AUTH_FAILURES`] refused tokens the connection
//! closes with 4401; with no success within `auth_timeout_ms`, with 4408. Once
//! authenticated it gets its count right after the `authresponse` and every change
//! after it, and after a `subscribe_events` its user's events (`subscribed`, then
//! `event` pushes; `events_ended` if it falls `max_stream_queue` behind). On shutdown every client gets 1012 (service restart) and reconnects.
//! Limits close with their own codes: 1009 (frame size), 4429 (requests per second),
//! 4403 (origin not allowed for the token's partner), 1013 (connection limit).

use std::time::Duration;

use fanout_protocol::realtime::{
    self, AuthErrorCode, ClientFrame, ErrorCode, EventsEnd, FrameError, Recovery, RequestId,
};

use super::{
    AfterRefusal, CloseReason, Credentials, Opened, Outbox, Protocol, Session, StreamRequest,
};
use crate::auth::AuthError;
use crate::config::EdgeConfig;
use crate::frames::Shape;
use crate::streams::{NotResumable, Resume, Since, StreamFrame};
use crate::table::{CountSubscription, CountValue};
use crate::telemetry::{Ignored, StreamSubscribe};

/// Refused `authrequest`s one connection may make before it is closed with 4401: a
/// client with a stale token gets its answer, a token guesser gets little.
pub const MAX_AUTH_FAILURES: u32 = 3;

pub struct Realtime {
    /// The `id` of the request being answered (an `authrequest`, or a
    /// `subscribe_events`): one at a time, since each is answered before the next frame.
    answering: Option<RequestId>,
    failures: u32,
    auth_timeout_ms: u32,
}

impl Realtime {
    pub fn new(config: &EdgeConfig) -> Self {
        Self {
            answering: None,
            failures: 0,
            auth_timeout_ms: u32::try_from(config.auth_timeout_ms).unwrap_or(u32::MAX),
        }
    }
}

/// Answers a frame that is not a request: an `error` reply, its `id` echoed when it had
/// a readable one.
fn undecodable(error: FrameError, out: &mut Outbox) {
    let FrameError { kind, id } = error;
    out.ignored(Ignored::Request(kind));
    out.reply(realtime::error(kind.reply_code(), id.as_ref()));
}

/// Answers a request the session's state refuses.
fn refuse(code: ErrorCode, id: Option<&RequestId>, out: &mut Outbox) {
    out.ignored(Ignored::Refused(code));
    out.reply(realtime::error(code, id));
}

impl Session for Realtime {
    const PROTOCOL: Protocol = Protocol::Realtime;

    fn auth_timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(u64::from(self.auth_timeout_ms)))
    }

    fn before_auth(&mut self, frame: &[u8], out: &mut Outbox) -> Option<Credentials> {
        match realtime::decode(frame) {
            Ok(ClientFrame::Ping { id }) => out.reply(realtime::pong(id.as_ref())),
            Ok(ClientFrame::GetUnreadCount { id } | ClientFrame::SubscribeEvents { id, .. }) => {
                refuse(ErrorCode::NotAuthenticated, id.as_ref(), out);
            }
            Ok(ClientFrame::AuthRequest { token, partner, id }) => {
                self.answering = id;
                return Some(Credentials {
                    partner: Some(partner),
                    token: Some(token),
                    restore: None,
                });
            }
            Err(error) => undecodable(error, out),
        }
        None
    }

    fn token_refused(&mut self, error: AuthError, out: &mut Outbox) -> AfterRefusal {
        self.failures += 1;
        out.reply(realtime::auth_failure(
            error.code(),
            self.answering.as_ref(),
        ));
        if self.failures >= MAX_AUTH_FAILURES {
            AfterRefusal::Close
        } else {
            AfterRefusal::TryAgain
        }
    }

    fn admission_refused(&mut self, reason: CloseReason, out: &mut Outbox) {
        let code = match reason {
            CloseReason::OriginNotAllowed => AuthErrorCode::OriginNotAllowed,
            CloseReason::WrongShard => AuthErrorCode::WrongShard,
            _ => AuthErrorCode::TryAgainLater,
        };
        out.reply(realtime::auth_failure(code, self.answering.as_ref()));
    }

    fn open(&mut self, counts: Option<&mut CountSubscription>, out: &mut Outbox) {
        out.reply(realtime::auth_success(self.answering.take().as_ref()));
        // Always admitted with credentials, so always with a count.
        if let Some(counts) = counts {
            let (value, _) = counts.take();
            let frame = counts.frame(&value, Shape::Realtime, || {
                realtime::unread_count(value.count, None)
            });
            out.push(frame, None);
        }
    }

    fn on_text(&mut self, frame: &[u8], counts: Option<&mut CountSubscription>, out: &mut Outbox) {
        match realtime::decode(frame) {
            Ok(ClientFrame::Ping { id }) => out.reply(realtime::pong(id.as_ref())),
            Ok(ClientFrame::SubscribeEvents { id, since }) => {
                self.answering = id;
                out.open_stream(StreamRequest {
                    since: since.map_or(Since::Now, Since::After),
                    ..StreamRequest::default()
                });
            }
            Ok(ClientFrame::GetUnreadCount { id }) => {
                let Some(counts) = counts else {
                    refuse(ErrorCode::NotAuthenticated, id.as_ref(), out);
                    return;
                };
                // A change not yet pushed is delivered by this reply (it carries the
                // same count), so it is not pushed again.
                let unseen_change = counts.has_changed();
                let value = out.take_count(counts);
                let source_time = if unseen_change {
                    value.source_time()
                } else {
                    None
                };
                out.push(
                    realtime::unread_count(value.count, id.as_ref()),
                    source_time,
                );
            }
            Ok(ClientFrame::AuthRequest { id, .. }) => {
                refuse(ErrorCode::AlreadyAuthenticated, id.as_ref(), out);
            }
            Err(error) => undecodable(error, out),
        }
    }

    fn on_binary(&mut self, out: &mut Outbox) {
        out.ignored(Ignored::Binary);
        out.reply(realtime::error(ErrorCode::Malformed, None));
    }

    fn wants_counts(&self) -> bool {
        true
    }

    fn on_count(&mut self, counts: &CountSubscription, value: CountValue, out: &mut Outbox) {
        let frame = counts.frame(&value, Shape::Realtime, || {
            realtime::unread_count(value.count, None)
        });
        out.push(frame, value.source_time());
    }

    fn ping_interval(&self) -> Option<Duration> {
        None
    }

    fn on_ping(&mut self, _unix_seconds: u64, _out: &mut Outbox) {}

    fn stream_opened(&mut self, result: Result<Opened, StreamSubscribe>, out: &mut Outbox) {
        let id = self.answering.take();
        match result.map(|opened| opened.resume) {
            Ok(Ok(Resume::Live)) => out.reply(realtime::subscribed(id.as_ref(), None)),
            Ok(Ok(Resume::Resumed { missed, .. })) => out.reply(realtime::subscribed(
                id.as_ref(),
                Some(Recovery::Resumed { missed }),
            )),
            Ok(Ok(Resume::Reset(reason))) => {
                out.reply(realtime::subscribed(
                    id.as_ref(),
                    Some(Recovery::Reset(reason)),
                ));
            }
            // A position refused is not subscribed at all: the client asked for a
            // resume, and must not take live events for one.
            Ok(Err(refused)) => {
                out.close_stream();
                let code = match refused {
                    NotResumable::Foreign => ErrorCode::ForeignPosition,
                    NotResumable::Ahead => ErrorCode::FutureOffset,
                };
                refuse(code, id.as_ref(), out);
            }
            Err(StreamSubscribe::AlreadySubscribed) => {
                refuse(ErrorCode::AlreadySubscribed, id.as_ref(), out);
            }
            // The connection is authenticated and the request names no token: nothing
            // else can refuse it.
            Err(_) => refuse(ErrorCode::NotAuthenticated, id.as_ref(), out),
        }
    }

    fn on_event(&mut self, frame: &StreamFrame, out: &mut Outbox) {
        out.event(realtime::event(&frame.body), frame.source_time);
    }

    fn stream_overflowed(&mut self, out: &mut Outbox) {
        out.reply(realtime::events_ended(EventsEnd::Overflow));
    }
}
