//! WebSocket close codes the edge sends, whatever the protocol: RFC 6455's where one
//! fits, the 4xxx private range (HTTP's status plus 4000) where none does.

/// Close code after too many failed `authrequest`s on one connection.
pub const CLOSE_AUTH_FAILED: u16 = 4401;
/// Close code when no `authrequest` succeeded in time.
pub const CLOSE_AUTH_TIMEOUT: u16 = 4408;
/// Close code on server shutdown (RFC 6455 "service restart"): reconnect.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Close code for a frame over the size limit (RFC 6455 "message too big").
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Close code when a limit on connections (the partner's or the node's) is reached, or
/// the node cannot take another token now (RFC 6455 "try again later").
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code when the page's `Origin` is not on the partner's allow-list.
pub const CLOSE_ORIGIN_NOT_ALLOWED: u16 = 4403;
/// Close code when a client sends more commands per second than the edge allows.
pub const CLOSE_RATE_LIMITED: u16 = 4429;
/// Close code when the token's user is served by another shard of edges (HTTP's 421
/// "misdirected request"): ask the backend for the user's shard URL.
pub const CLOSE_WRONG_SHARD: u16 = 4421;
