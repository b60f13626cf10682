//! The JSON "RealTime API" protocol (`/realtime`): plain WebSocket text frames, each a
//! JSON object with a `type`.
//!
//! The client authenticates in band (`authrequest`), may ask for its count
//! (`get_unread_count`) and may `ping`. Every request may carry an `id`, a JSON string or
//! number that the reply echoes exactly as the client wrote it (the raw JSON text,
//! escapes and number spelling included). Server frames are built here as strings, key
//! order fixed: `type` first, `id` last.
//!
//! Decoding trusts nothing: every input is a [`ClientFrame`] or a [`FrameError`], never
//! a panic, and the error keeps the request's `id` whenever one could be read, so the
//! error reply can echo it.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::push_u64;
use crate::stream::{Epoch, Position};

/// A request's `id`: the raw JSON text of a string or a number, echoed verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// `json` as an id if it is exactly one JSON string or number (surrounding
    /// whitespace is dropped); anything else (`null`, booleans, objects, arrays, invalid
    /// JSON) is `None`.
    pub fn parse(json: &str) -> Option<Self> {
        let raw: &RawValue = serde_json::from_str(json).ok()?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Option<Self> {
        let text = raw.get();
        // The text is valid JSON, so its first byte says what it is.
        match text.as_bytes().first()? {
            b'"' | b'-' | b'0'..=b'9' => Some(Self(text.to_owned())),
            _ => None,
        }
    }

    /// The id as the client wrote it, ready to be put into a frame.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// A request a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"authrequest","token":"<jwt>","partner":"<code>"}`.
    AuthRequest {
        token: String,
        partner: String,
        id: Option<RequestId>,
    },
    /// `{"type":"get_unread_count"}`.
    GetUnreadCount { id: Option<RequestId> },
    /// `{"type":"ping"}`.
    Ping { id: Option<RequestId> },
    /// `{"type":"subscribe_events"}`: the user's event stream from now on; with
    /// `"since":{"epoch":"E-T","offset":N}`, from just after that position.
    SubscribeEvents {
        id: Option<RequestId>,
        since: Option<Position>,
    },
}

impl ClientFrame {
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Self::AuthRequest { id, .. }
            | Self::GetUnreadCount { id }
            | Self::Ping { id }
            | Self::SubscribeEvents { id, .. } => id.as_ref(),
        }
    }
}

/// Why a client frame is not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub kind: FrameErrorKind,
    /// The request's `id`, if it could be read, for the error reply.
    pub id: Option<RequestId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameErrorKind {
    /// Not JSON (or not UTF-8).
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// The same known key (`type`, `id`, `token`, `partner`) twice.
    DuplicateKey,
    /// An `id` that is not a string or a number.
    InvalidId,
    /// No `type`, or one that is not a string.
    MissingType,
    /// A string `type` fanout does not know.
    UnknownType,
    /// A field the request needs is absent (`null` counts as absent).
    MissingField(&'static str),
    /// A field the request needs has the wrong JSON type.
    InvalidField(&'static str),
}

impl FrameErrorKind {
    /// A short, bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::DuplicateKey => "duplicate_key",
            Self::InvalidId => "invalid_id",
            Self::MissingType => "missing_type",
            Self::UnknownType => "unknown_type",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField(_) => "invalid_field",
        }
    }

    /// The `error` the client is told.
    pub fn reply_code(self) -> ErrorCode {
        match self {
            Self::UnknownType => ErrorCode::UnknownType,
            _ => ErrorCode::Malformed,
        }
    }
}

/// The `error` of an `{"type":"error"}` reply: why a request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A request other than `authrequest` or `ping` before a successful auth.
    NotAuthenticated,
    /// An `authrequest` on a connection already authenticated.
    AlreadyAuthenticated,
    /// Not JSON, not an object, or a field missing or of the wrong type.
    Malformed,
    /// A `type` fanout does not know.
    UnknownType,
    /// A `subscribe_events` on a connection whose events are already subscribed.
    AlreadySubscribed,
    /// `since` is a position of another stream (another user's, or another partner's).
    ForeignPosition,
    /// `since` is past the last event of the stream.
    FutureOffset,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAuthenticated => "not_authenticated",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown_type",
            Self::AlreadySubscribed => "already_subscribed",
            Self::ForeignPosition => "foreign_position",
            Self::FutureOffset => "future_offset",
        }
    }
}

/// The `error` of a failed `authresponse`. The set is part of the protocol: codes are
/// added, never renamed or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorCode {
    /// The token is empty.
    MissingToken,
    /// The partner is empty or not configured.
    UnknownPartner,
    /// The token is not a well-formed JWT.
    MalformedToken,
    /// The token's algorithm is not HS256.
    UnsupportedAlgorithm,
    /// The token's `kid` names no secret of the partner.
    UnknownKey,
    /// The signature does not verify with the partner's secrets.
    InvalidSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// A required claim (`uniqueId`, `jti`, `iat`, `exp`) is missing, empty, too long
    /// or of the wrong type.
    InvalidClaims,
    /// The token's `jti` was already used on this edge node.
    Replayed,
    /// The token's `partner` claim names another partner than the request.
    PartnerMismatch,
    /// `iat` is in the future (beyond the clock-skew leeway).
    IssuedInFuture,
    /// `exp` is further away than the edge accepts (`edge.max_token_lifetime_seconds`).
    LifetimeTooLong,
    /// The token is longer than `edge.max_token_bytes`.
    TokenTooLarge,
    /// The page's `Origin` is not on the partner's allow-list.
    OriginNotAllowed,
    /// The token is for the other use: a stream subscription's (`"scope":"stream"`)
    /// presented for a connection, or a connection's presented for a subscription.
    WrongScope,
    /// The partner's or the node's connection limit is reached, or the node cannot
    /// remember another token id right now; retry later (the connection closes with
    /// 1013).
    TryAgainLater,
    /// The user is served by another shard of edges: this edge does not read the
    /// user's partition (the connection closes with 4421).
    WrongShard,
}

impl AuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::UnknownPartner => "unknown_partner",
            Self::MalformedToken => "malformed_token",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::InvalidSignature => "invalid_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidClaims => "invalid_claims",
            Self::Replayed => "replayed",
            Self::PartnerMismatch => "partner_mismatch",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::TokenTooLarge => "token_too_large",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::WrongScope => "wrong_scope",
            Self::TryAgainLater => "try_again_later",
            Self::WrongShard => "wrong_shard",
        }
    }
}

/// The keys fanout reads; any other key is ignored.
#[derive(Clone, Copy, Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Type,
    Id,
    Token,
    Partner,
    Since,
    #[serde(other)]
    Other,
}

/// The known keys' raw values, as written.
#[derive(Default)]
struct RawFields<'a> {
    frame_type: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    token: Option<&'a RawValue>,
    partner: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    /// A known key seen twice: which value counts would be a guess, so neither does.
    duplicate: Option<Key>,
}

struct RawFieldsVisitor;

impl<'de> Visitor<'de> for RawFieldsVisitor {
    type Value = RawFields<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields<'de>, A::Error> {
        let mut fields = RawFields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Type => &mut fields.frame_type,
                Key::Id => &mut fields.id,
                Key::Token => &mut fields.token,
                Key::Partner => &mut fields.partner,
                Key::Since => &mut fields.since,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value: &'de RawValue = map.next_value()?;
            if slot.replace(value).is_some() && fields.duplicate.is_none() {
                fields.duplicate = Some(key);
            }
        }
        Ok(fields)
    }
}

fn read_fields(frame: &[u8]) -> Result<RawFields<'_>, FrameErrorKind> {
    // JSON is UTF-8 throughout; checked first because serde_json does not look inside
    // strings it skips.
    let frame = std::str::from_utf8(frame).map_err(|_| FrameErrorKind::NotJson)?;
    let mut deserializer = serde_json::Deserializer::from_str(frame);
    let fields = de::Deserializer::deserialize_map(&mut deserializer, RawFieldsVisitor)
        .and_then(|fields| deserializer.end().map(|()| fields));
    fields.map_err(|_| {
        if serde_json::from_str::<IgnoredAny>(frame).is_ok() {
            FrameErrorKind::NotObject
        } else {
            FrameErrorKind::NotJson
        }
    })
}

/// A required string field; `null` counts as absent.
fn string_field(raw: Option<&RawValue>, name: &'static str) -> Result<String, FrameErrorKind> {
    let raw = raw
        .filter(|value| value.get() != "null")
        .ok_or(FrameErrorKind::MissingField(name))?;
    serde_json::from_str::<String>(raw.get()).map_err(|_| FrameErrorKind::InvalidField(name))
}

/// An optional position field, `{"epoch":"E-T","offset":N}`; `null` counts as absent.
fn position_field(
    raw: Option<&RawValue>,
    name: &'static str,
) -> Result<Option<Position>, FrameErrorKind> {
    #[derive(Deserialize)]
    struct Raw {
        epoch: String,
        offset: u64,
    }
    let Some(raw) = raw.filter(|value| value.get() != "null") else {
        return Ok(None);
    };
    let raw: Raw =
        serde_json::from_str(raw.get()).map_err(|_| FrameErrorKind::InvalidField(name))?;
    let epoch = Epoch::parse(&raw.epoch).ok_or(FrameErrorKind::InvalidField(name))?;
    Ok(Some(Position {
        epoch,
        offset: raw.offset,
    }))
}

/// Decodes one client text frame. Never panics, whatever the bytes.
pub fn decode(frame: &[u8]) -> Result<ClientFrame, FrameError> {
    let fields = read_fields(frame).map_err(|kind| FrameError { kind, id: None })?;
    let id = match (fields.id, fields.duplicate) {
        // With two ids, echoing either would be a guess.
        (_, Some(Key::Id)) => {
            return Err(FrameError {
                kind: FrameErrorKind::DuplicateKey,
                id: None,
            });
        }
        (None, _) => None,
        (Some(raw), _) => Some(RequestId::from_raw(raw).ok_or(FrameError {
            kind: FrameErrorKind::InvalidId,
            id: None,
        })?),
    };
    let fail = |kind: FrameErrorKind| FrameError {
        kind,
        id: id.clone(),
    };
    if fields.duplicate.is_some() {
        return Err(fail(FrameErrorKind::DuplicateKey));
    }
    let frame_type = fields
        .frame_type
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .ok_or_else(|| fail(FrameErrorKind::MissingType))?;
    match frame_type.as_str() {
        "authrequest" => {
            let token = string_field(fields.token, "token").map_err(fail)?;
            let partner = string_field(fields.partner, "partner").map_err(fail)?;
            Ok(ClientFrame::AuthRequest { token, partner, id })
        }
        "get_unread_count" => Ok(ClientFrame::GetUnreadCount { id }),
        "ping" => Ok(ClientFrame::Ping { id }),
        "subscribe_events" => {
            let since = position_field(fields.since, "since").map_err(fail)?;
            Ok(ClientFrame::SubscribeEvents { id, since })
        }
        _ => Err(fail(FrameErrorKind::UnknownType)),
    }
}

/// Starts a frame: `{"type":"<frame_type>"`, with room for what follows.
fn start(frame_type: &str, id: Option<&RequestId>, rest: usize) -> String {
    let id_len = id.map_or(0, |id| id.as_json().len() + 6);
    let mut frame = String::with_capacity(frame_type.len() + 11 + rest + id_len);
    frame.push_str(r#"{"type":""#);
    frame.push_str(frame_type);
    frame.push('"');
    frame
}

/// Ends a frame: `,"id":<id>` if there is one, then `}`.
fn finish(mut frame: String, id: Option<&RequestId>) -> String {
    if let Some(id) = id {
        frame.push_str(r#","id":"#);
        frame.push_str(id.as_json());
    }
    frame.push('}');
    frame
}

/// `{"type":"authresponse","success":true,"id":..}`.
pub fn auth_success(id: Option<&RequestId>) -> String {
    let mut frame = start("authresponse", id, 15);
    frame.push_str(r#","success":true"#);
    finish(frame, id)
}

/// `{"type":"authresponse","success":false,"error":"<code>","id":..}`.
pub fn auth_failure(code: AuthErrorCode, id: Option<&RequestId>) -> String {
    let code = code.as_str();
    let mut frame = start("authresponse", id, 28 + code.len());
    frame.push_str(r#","success":false,"error":""#);
    frame.push_str(code);
    frame.push('"');
    finish(frame, id)
}

/// `{"type":"unread_count","count":N}`: a push without `id`, the reply to
/// `get_unread_count` with it.
pub fn unread_count(count: u64, id: Option<&RequestId>) -> String {
    let mut frame = start("unread_count", id, 29);
    frame.push_str(r#","count":"#);
    push_u64(&mut frame, count);
    finish(frame, id)
}

/// How a `subscribe_events` with `since` was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The `missed` events after the position follow, then live ones.
    Resumed { missed: u64 },
    /// The missed events cannot be sent (none are): the client must fetch its state
    /// afresh. Live events follow.
    Reset(ResetReason),
}

/// Why a stream could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The position is older than what the edge keeps (`edge.history`).
    BeyondWindow,
    /// The user's stream started over (a new epoch) since the position.
    EpochChanged,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeyondWindow => "beyond_window",
            Self::EpochChanged => "epoch_changed",
        }
    }
}

/// `{"type":"subscribed","id":..}`: the reply to `subscribe_events`; `event` pushes
/// follow. With a `since`: `"recovery":"resumed","missed":N`, or
/// `"recovery":"reset","reason":..`.
pub fn subscribed(id: Option<&RequestId>, recovery: Option<Recovery>) -> String {
    let mut frame = start("subscribed", id, 48);
    match recovery {
        None => {}
        Some(Recovery::Resumed { missed }) => {
            frame.push_str(r#","recovery":"resumed","missed":"#);
            push_u64(&mut frame, missed);
        }
        Some(Recovery::Reset(reason)) => {
            frame.push_str(r#","recovery":"reset","reason":""#);
            frame.push_str(reason.as_str());
            frame.push('"');
        }
    }
    finish(frame, id)
}

/// `{"type":"event","event":NAME,"data":..,...,"epoch":"E","offset":N}`: a stream event,
/// its fields those of `body` (an [`crate::stream::event_body`]).
pub fn event(body: &str) -> String {
    let fields = body.strip_prefix('{').unwrap_or(body);
    let mut frame = String::with_capacity(fields.len() + 16);
    frame.push_str(r#"{"type":"event","#);
    frame.push_str(fields);
    frame
}

/// Why the server ended a stream subscription (the connection stays open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsEnd {
    /// The client read more slowly than its events came: more were waiting than the
    /// edge holds per connection (`edge.max_stream_queue`). Subscribe again.
    Overflow,
}

impl EventsEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
        }
    }
}

/// `{"type":"events_ended","reason":"<reason>"}`: no more `event` pushes until the
/// client subscribes again.
pub fn events_ended(reason: EventsEnd) -> String {
    let reason = reason.as_str();
    let mut frame = start("events_ended", None, 12 + reason.len());
    frame.push_str(r#","reason":""#);
    frame.push_str(reason);
    frame.push('"');
    finish(frame, None)
}

/// `{"type":"pong","id":..}`.
pub fn pong(id: Option<&RequestId>) -> String {
    finish(start("pong", id, 1), id)
}

/// `{"type":"error","error":"<code>","id":..}`.
pub fn error(code: ErrorCode, id: Option<&RequestId>) -> String {
    let code = code.as_str();
    let mut frame = start("error", id, 12 + code.len());
    frame.push_str(r#","error":""#);
    frame.push_str(code);
    frame.push('"');
    finish(frame, id)
}
