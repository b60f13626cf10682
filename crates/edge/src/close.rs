//! Why a session ended, and what each protocol tells its client about it.

use fanout_protocol::cable::{self, DisconnectReason};
use fanout_protocol::close::{
    CLOSE_AUTH_FAILED, CLOSE_AUTH_TIMEOUT, CLOSE_MESSAGE_TOO_BIG, CLOSE_ORIGIN_NOT_ALLOWED,
    CLOSE_RATE_LIMITED, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER, CLOSE_WRONG_SHARD,
};

/// The protocols the edge speaks: the `protocol` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// ActionCable on `/cable`.
    Cable,
    /// The JSON protocol on `/realtime`.
    Realtime,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cable => "cable",
            Self::Realtime => "realtime",
        }
    }
}

/// Why a session ended: the `reason` label of `fanout_edge_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or the connection dropped.
    Client,
    /// The token was refused (ActionCable), or too many were (`/realtime` 4401).
    Unauthorized,
    /// No successful `authrequest` in time (`/realtime` 4408).
    AuthTimeout,
    /// A frame over `max_frame_bytes` (1009).
    FrameTooLarge,
    /// More commands per second than allowed (4429).
    RateLimited,
    /// The partner's or the node's connection limit (1013).
    ConnectionLimit,
    /// The partner does not allow the page's origin (4403).
    OriginNotAllowed,
    /// The edge is stopping (ActionCable `server_restart`, 1012).
    ServerRestart,
    /// The token's user is served by another shard (ActionCable `wrong_shard`, 4421).
    WrongShard,
    /// A WebSocket protocol or I/O error.
    Error,
}

/// What a client is told as its session ends: a last frame (ActionCable's
/// `disconnect`), then a close frame, with a code where the protocol gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    pub last_frame: Option<String>,
    pub close: Option<(u16, &'static str)>,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Unauthorized => "unauthorized",
            Self::AuthTimeout => "auth_timeout",
            Self::FrameTooLarge => "frame_too_large",
            Self::RateLimited => "rate_limited",
            Self::ConnectionLimit => "connection_limit",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::ServerRestart => "server_restart",
            Self::WrongShard => "wrong_shard",
            Self::Error => "error",
        }
    }

    /// What `protocol`'s client is told; `None` when the connection is already gone.
    pub fn goodbye(self, protocol: Protocol) -> Option<Goodbye> {
        let close = |code: u16, reason: &'static str| Goodbye {
            last_frame: None,
            close: Some((code, reason)),
        };
        let goodbye = match (protocol, self) {
            (_, Self::Client | Self::Error) => return None,
            (_, Self::FrameTooLarge) => close(CLOSE_MESSAGE_TOO_BIG, "frame too large"),
            (_, Self::ConnectionLimit) => close(CLOSE_TRY_AGAIN_LATER, "connection limit"),
            (_, Self::OriginNotAllowed) => close(CLOSE_ORIGIN_NOT_ALLOWED, "origin not allowed"),
            (_, Self::AuthTimeout) => close(CLOSE_AUTH_TIMEOUT, "auth timeout"),
            // ActionCable clients act on the disconnect frame's `reconnect`, not on close
            // codes: `false` stops the official client from retrying.
            (Protocol::Cable, Self::Unauthorized) => Goodbye {
                last_frame: Some(cable::disconnect(DisconnectReason::Unauthorized, false)),
                close: None,
            },
            (Protocol::Cable, Self::ServerRestart) => Goodbye {
                last_frame: Some(cable::disconnect(DisconnectReason::ServerRestart, true)),
                close: None,
            },
            // Like `unauthorized`: the official clients stop, and `@anycable/web`
            // hands the reason to the app.
            (Protocol::Cable, Self::WrongShard) => Goodbye {
                last_frame: Some(cable::disconnect(DisconnectReason::WrongShard, false)),
                close: Some((CLOSE_WRONG_SHARD, "wrong shard")),
            },
            (Protocol::Realtime, Self::WrongShard) => close(CLOSE_WRONG_SHARD, "wrong shard"),
            (Protocol::Cable, Self::RateLimited) => Goodbye {
                last_frame: Some(cable::disconnect(DisconnectReason::InvalidRequest, false)),
                close: Some((CLOSE_RATE_LIMITED, "too many commands")),
            },
            (Protocol::Realtime, Self::Unauthorized) => {
                close(CLOSE_AUTH_FAILED, "authentication failed")
            }
            (Protocol::Realtime, Self::ServerRestart) => {
                close(CLOSE_SERVICE_RESTART, "server restart")
            }
            (Protocol::Realtime, Self::RateLimited) => {
                close(CLOSE_RATE_LIMITED, "too many requests")
            }
        };
        Some(goodbye)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ALL: [CloseReason; 10] = [
        CloseReason::Client,
        CloseReason::Unauthorized,
        CloseReason::AuthTimeout,
        CloseReason::FrameTooLarge,
        CloseReason::RateLimited,
        CloseReason::ConnectionLimit,
        CloseReason::OriginNotAllowed,
        CloseReason::ServerRestart,
        CloseReason::WrongShard,
        CloseReason::Error,
    ];

    #[test]
    fn realtime_clients_get_a_close_code_for_every_reason_the_edge_closes_for() {
        for reason in ALL {
            let goodbye = reason.goodbye(Protocol::Realtime);
            match reason {
                CloseReason::Client | CloseReason::Error => assert_eq!(goodbye, None),
                _ => {
                    let goodbye = goodbye.unwrap();
                    assert_eq!(goodbye.last_frame, None, "{reason:?}");
                    assert!(goodbye.close.is_some(), "{reason:?}");
                }
            }
        }
        let code =
            |reason: CloseReason| reason.goodbye(Protocol::Realtime).unwrap().close.unwrap().0;
        assert_eq!(code(CloseReason::ServerRestart), 1012);
        assert_eq!(code(CloseReason::Unauthorized), 4401);
        assert_eq!(code(CloseReason::RateLimited), 4429);
        assert_eq!(code(CloseReason::WrongShard), 4421);
    }

    #[test]
    fn actioncable_clients_are_told_by_the_disconnect_frame_whether_to_reconnect() {
        let restart = CloseReason::ServerRestart.goodbye(Protocol::Cable).unwrap();
        assert_eq!(
            restart.last_frame.unwrap(),
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        let refused = CloseReason::Unauthorized.goodbye(Protocol::Cable).unwrap();
        assert_eq!(
            refused.last_frame.unwrap(),
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        let wrong_shard = CloseReason::WrongShard.goodbye(Protocol::Cable).unwrap();
        assert_eq!(
            wrong_shard.last_frame.unwrap(),
            r#"{"type":"disconnect","reason":"wrong_shard","reconnect":false}"#
        );
        let limited = CloseReason::RateLimited.goodbye(Protocol::Cable).unwrap();
        assert_eq!(limited.close, Some((4429, "too many commands")));
        assert!(limited.last_frame.unwrap().contains("invalid_request"));
    }
}
