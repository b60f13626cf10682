//! ActionCable's JSON protocol (`actioncable-v1-json`), as Rails' server speaks it.
//!
//! Server frames are built here byte for byte as Rails builds them (key order and
//! ActiveSupport's escaping included). Client commands are decoded without trusting
//! anything: every malformed input is a [`CommandError`], never a panic.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json::{push_string, push_u64};
use crate::stream::{Epoch, Position};

/// The subprotocol fanout speaks on `/cable`; the official client closes for good if
/// the server does not echo it.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";

/// AnyCable's extended protocol: as [`SUBPROTOCOL`], plus stream positions on
/// broadcasts, `history` with `confirm_history` / `reject_history`, and session
/// restore by `sid`. Spoken to a client that offers it.
pub const EXT_SUBPROTOCOL: &str = "actioncable-v1-ext-json";

/// Why the server disconnects a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    Unauthorized,
    InvalidRequest,
    ServerRestart,
    RemoteDisconnect,
    /// The user is served by another shard of edges (fanout's own reason).
    WrongShard,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::InvalidRequest => "invalid_request",
            Self::ServerRestart => "server_restart",
            Self::RemoteDisconnect => "remote",
            Self::WrongShard => "wrong_shard",
        }
    }
}

/// `{"type":"welcome"}`, sent once the connection is authenticated.
pub fn welcome() -> String {
    r#"{"type":"welcome"}"#.to_owned()
}

/// `{"type":"ping","message":<unix seconds>}`, sent every 3 seconds.
pub fn ping(unix_seconds: u64) -> String {
    format!(r#"{{"type":"ping","message":{unix_seconds}}}"#)
}

/// `{"type":"disconnect","reason":..,"reconnect":..}`.
pub fn disconnect(reason: DisconnectReason, reconnect: bool) -> String {
    format!(
        r#"{{"type":"disconnect","reason":"{}","reconnect":{reconnect}}}"#,
        reason.as_str()
    )
}

/// The extended protocol's `welcome`: `{"type":"welcome","sid":..}`, and, for a
/// restored session, `"restored":true,"restored_ids":[..]`.
pub fn welcome_ext(sid: &str, restored_ids: Option<&[&str]>) -> String {
    let mut frame = String::with_capacity(64);
    frame.push_str(r#"{"type":"welcome","sid":"#);
    push_string(&mut frame, sid);
    if let Some(identifiers) = restored_ids {
        frame.push_str(r#","restored":true,"restored_ids":["#);
        for (n, identifier) in identifiers.iter().enumerate() {
            if n > 0 {
                frame.push(',');
            }
            push_string(&mut frame, identifier);
        }
        frame.push(']');
    }
    frame.push('}');
    frame
}

/// `{"identifier":..,"type":"confirm_history"}`: every missed event was sent.
pub fn confirm_history(identifier: &str) -> String {
    subscription_reply(identifier, "confirm_history")
}

/// `{"identifier":..,"type":"reject_history","reason":..}`: the missed events cannot be
/// sent (none were); the client must fetch its state afresh. `reason` is fanout's
/// addition (a client may ignore it).
pub fn reject_history(identifier: &str, reason: &str) -> String {
    let mut frame = subscription_reply(identifier, "reject_history");
    frame.pop();
    frame.push_str(r#","reason":"#);
    push_string(&mut frame, reason);
    frame.push('}');
    frame
}

/// `{"identifier":..,"message":BODY,"stream_id":..,"epoch":..,"offset":N}`: a stream
/// event as the extended protocol broadcasts it, its position beside the message.
pub fn stream_message_ext(identifier: &str, body: &str, epoch: Epoch, offset: u64) -> String {
    let mut frame = String::with_capacity(escaped_capacity(identifier) + body.len() + 128);
    push_stream_message(&mut frame, identifier, body);
    frame.pop();
    frame.push_str(r#","stream_id":""#);
    frame.push_str(&crate::stream::stream_id(epoch.tag));
    frame.push_str(r#"","epoch":""#);
    frame.push_str(&epoch.to_string());
    frame.push_str(r#"","offset":"#);
    push_u64(&mut frame, offset);
    frame.push('}');
    frame
}

/// `{"identifier":..,"type":"confirm_subscription"}`.
pub fn confirm_subscription(identifier: &str) -> String {
    subscription_reply(identifier, "confirm_subscription")
}

/// `{"identifier":..,"type":"reject_subscription"}`.
pub fn reject_subscription(identifier: &str) -> String {
    subscription_reply(identifier, "reject_subscription")
}

fn subscription_reply(identifier: &str, reply_type: &str) -> String {
    let mut frame = String::with_capacity(escaped_capacity(identifier) + 48);
    frame.push_str(r#"{"identifier":"#);
    push_string(&mut frame, identifier);
    frame.push_str(r#","type":""#);
    frame.push_str(reply_type);
    frame.push_str(r#""}"#);
    frame
}

/// `{"identifier":..,"message":BODY}`: a stream event (an [`crate::stream::event_body`])
/// as a channel message, as Chatwoot's RoomChannel broadcasts.
pub fn stream_message(identifier: &str, body: &str) -> String {
    let mut frame = String::with_capacity(escaped_capacity(identifier) + body.len() + 32);
    push_stream_message(&mut frame, identifier, body);
    frame
}

fn push_stream_message(frame: &mut String, identifier: &str, body: &str) {
    frame.push_str(r#"{"identifier":"#);
    push_string(frame, identifier);
    frame.push_str(r#","message":"#);
    frame.push_str(body);
    frame.push('}');
}

/// Room for `identifier` as a JSON string: an identifier is JSON itself, so its quotes
/// are escaped, each taking two bytes.
fn escaped_capacity(identifier: &str) -> usize {
    2 * identifier.len() + 2
}

/// `{"identifier":..,"message":{"type":"unread_count","count":N}}`, a channel message.
pub fn unread_count(identifier: &str, count: u64) -> String {
    let mut frame = String::with_capacity(escaped_capacity(identifier) + 80);
    frame.push_str(r#"{"identifier":"#);
    push_string(&mut frame, identifier);
    frame.push_str(r#","message":{"type":"unread_count","count":"#);
    push_u64(&mut frame, count);
    frame.push_str("}}");
    frame
}

/// A history request (the extended protocol's `history` field): the positions the
/// client has, by stream, and, for streams it has none of, the time since when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Unix seconds.
    pub since: Option<u64>,
    /// `stream_id` and the position presented for it (`None`: its epoch is not one
    /// fanout wrote).
    pub streams: Vec<(String, Option<Position>)>,
}

/// A command a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        identifier: String,
        /// The extended protocol's history request made with the subscribe.
        history: Option<HistoryRequest>,
    },
    /// The extended protocol's `history`: the events missed since the positions given.
    History {
        identifier: String,
        history: HistoryRequest,
    },
    /// The extended protocol's answer to a ping; nothing to do.
    Pong,
    Unsubscribe {
        identifier: String,
    },
    /// `perform` from the client: `data` is the JSON string of the action's payload.
    Message {
        identifier: String,
        data: String,
    },
}

impl Command {
    pub fn identifier(&self) -> &str {
        match self {
            Self::Subscribe { identifier, .. }
            | Self::History { identifier, .. }
            | Self::Unsubscribe { identifier }
            | Self::Message { identifier, .. } => identifier,
            Self::Pong => "",
        }
    }
}

/// Why a client frame is not a command; each is ignored (and counted), never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// Not a JSON object.
    Malformed,
    /// No `command`, or one fanout does not know.
    UnknownCommand,
    /// `identifier` missing or not a string.
    BadIdentifier,
    /// A `message` command without a string `data`.
    BadData,
    /// A `history` that is not `{"since":N,"streams":{ID:{"epoch":..,"offset":N}}}`.
    BadHistory,
}

impl CommandError {
    /// A short, bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownCommand => "unknown_command",
            Self::BadIdentifier => "bad_identifier",
            Self::BadData => "bad_data",
            Self::BadHistory => "bad_history",
        }
    }
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, default)]
    command: Option<&'a RawValue>,
    #[serde(borrow, default)]
    identifier: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
}

/// Reads a `history` field; `Err` when it is not the shape the protocol defines.
fn history_request(raw: &RawValue) -> Result<HistoryRequest, CommandError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        streams: Option<std::collections::BTreeMap<String, RawPosition>>,
    }
    #[derive(Deserialize)]
    struct RawPosition {
        epoch: String,
        offset: u64,
    }
    // serde would also read the struct from an array.
    if !raw.get().starts_with('{') {
        return Err(CommandError::BadHistory);
    }
    let raw: Raw = serde_json::from_str(raw.get()).map_err(|_| CommandError::BadHistory)?;
    Ok(HistoryRequest {
        since: raw.since,
        streams: raw
            .streams
            .unwrap_or_default()
            .into_iter()
            .map(|(stream, position)| {
                let parsed = Epoch::parse(&position.epoch).map(|epoch| Position {
                    epoch,
                    offset: position.offset,
                });
                (stream, parsed)
            })
            .collect(),
    })
}

fn raw_string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|value| serde_json::from_str::<String>(value.get()).ok())
}

/// Decodes one client text frame.
pub fn decode_command(frame: &[u8]) -> Result<Command, CommandError> {
    // JSON text is UTF-8, but serde_json skips the bytes of fields it ignores without
    // checking them, so check the whole frame first.
    let text = std::str::from_utf8(frame).map_err(|_| CommandError::Malformed)?;
    // serde would also read a struct from a JSON array; a command is only ever an object.
    let starts_as_object = frame
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|byte| *byte == b'{');
    if !starts_as_object {
        return Err(CommandError::Malformed);
    }
    let raw: RawCommand<'_> = serde_json::from_str(text).map_err(|_| CommandError::Malformed)?;
    let command = raw_string(raw.command).ok_or(CommandError::UnknownCommand)?;
    if command == "pong" {
        return Ok(Command::Pong);
    }
    if !matches!(
        command.as_str(),
        "subscribe" | "unsubscribe" | "message" | "history"
    ) {
        return Err(CommandError::UnknownCommand);
    }
    let identifier = raw_string(raw.identifier).ok_or(CommandError::BadIdentifier)?;
    let history = raw
        .history
        .filter(|raw| raw.get() != "null")
        .map(history_request)
        .transpose()?;
    match command.as_str() {
        "subscribe" => Ok(Command::Subscribe {
            identifier,
            history,
        }),
        "history" => Ok(Command::History {
            identifier,
            history: history.ok_or(CommandError::BadHistory)?,
        }),
        "unsubscribe" => Ok(Command::Unsubscribe { identifier }),
        _ => {
            let data = raw_string(raw.data).ok_or(CommandError::BadData)?;
            Ok(Command::Message { identifier, data })
        }
    }
}

/// The parsed `identifier` of a subscription: a JSON object naming the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelIdentifier {
    pub channel: String,
    /// RoomChannel's token, as Chatwoot's widget sends it.
    pub pubsub_token: Option<String>,
    /// The partner, for a connection that named none in its query (else the token's
    /// `partner` claim names it).
    pub partner: Option<String>,
}

/// Parses an identifier string (itself JSON, e.g. `{"channel":"PartnerChannel"}`).
/// `None` when it is not a JSON object with a string `channel`.
pub fn parse_identifier(identifier: &str) -> Option<ChannelIdentifier> {
    #[derive(Deserialize)]
    struct Identifier {
        channel: String,
        pubsub_token: Option<String>,
        partner: Option<String>,
    }
    serde_json::from_str::<Identifier>(identifier)
        .ok()
        .map(|parsed| ChannelIdentifier {
            channel: parsed.channel,
            pubsub_token: parsed.pubsub_token,
            partner: parsed.partner,
        })
}

/// The subprotocols a Rails ActionCable server lists (`ActionCable::INTERNAL[:protocols]`):
/// the one it speaks, and the marker the official client also offers so that a server
/// that does not speak its version still completes the handshake and the client can
/// tell (it then closes for good).
pub const SERVER_SUBPROTOCOLS: [&str; 3] =
    [SUBPROTOCOL, EXT_SUBPROTOCOL, "actioncable-unsupported"];

/// Picks the subprotocol to echo from the client's `Sec-WebSocket-Protocol` offers
/// (comma-separated, possibly over several headers) as Rails does (websocket-driver:
/// the client's offers intersected with the server's list, in the client's order,
/// first one wins). `None` when the client offers nothing in the list: then, like
/// Rails, no `Sec-WebSocket-Protocol` is sent and the connection proceeds.
pub fn negotiate_subprotocol<'a>(
    offers: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    offers
        .into_iter()
        .flat_map(|header| header.split(','))
        .map(str::trim)
        .find_map(|offer| {
            SERVER_SUBPROTOCOLS
                .iter()
                .find(|supported| **supported == offer)
                .copied()
        })
}
