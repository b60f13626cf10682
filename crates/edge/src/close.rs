//! Why a session ended: the `reason` label of `fanout_edge_closes_total`.

/// Why a session ended.
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
    /// A WebSocket protocol or I/O error.
    Error,
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
            Self::Error => "error",
        }
    }
}
