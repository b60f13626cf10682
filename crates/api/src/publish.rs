//! `POST /v1/events`: a body split into events, each checked exactly as ingest checks a
//! record (the very bytes the client sent, through ingest's own decoder and validator),
//! then produced to message-events and answered once Kafka acknowledged it.

use std::time::{Duration, Instant};

use fanout_ingest::{IngestLimits, Rejection, decode_event, validate};
use fanout_schema::v1::{self, message_event::Event};
use fanout_schema::{CONTENT_TYPE_JSON, KEY_SEPARATOR};
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::metrics::ApiMetrics;

/// The rejection code of an event whose partner is not the key's.
pub const PARTNER_MISMATCH: &str = "partner_mismatch";

/// Why a body holds no events to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not a JSON object (one event) or array (a batch of events): {0}")]
    InvalidJson(String),
    #[error("the batch holds no event")]
    EmptyBatch,
    #[error("the batch holds {count} events; at most {limit} are accepted at once")]
    BatchTooLarge { count: usize, limit: usize },
}

/// The events of a body: one object, or an array of them, each as the client wrote it.
pub fn split_body(body: &[u8], max_batch_events: usize) -> Result<Vec<&RawValue>, BodyError> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    let events: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_slice(body)
            .map_err(|error| BodyError::InvalidJson(error.to_string()))?,
        Some(b'{') => vec![
            serde_json::from_slice(body)
                .map_err(|error| BodyError::InvalidJson(error.to_string()))?,
        ],
        _ => {
            return Err(BodyError::InvalidJson(
                "expected '{' or '[' first".to_owned(),
            ));
        }
    };
    if events.is_empty() {
        return Err(BodyError::EmptyBatch);
    }
    if events.len() > max_batch_events {
        return Err(BodyError::BatchTooLarge {
            count: events.len(),
            limit: max_batch_events,
        });
    }
    Ok(events)
}

/// An event that passed every check: what is produced, as it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    pub event_id: String,
    /// The record key: `partner/conversation` (a conversation's events stay in order),
    /// or `partner/event_id` for a notification.
    pub key: String,
    /// The record value: the event exactly as the client sent it.
    pub value: &'a str,
}

/// Why an event was refused, with its machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub event_id: Option<String>,
    pub code: &'static str,
    pub message: String,
}

/// Checks one event for `partner` as ingest would check its record, and that the event
/// is `partner`'s.
pub fn check_event<'a>(
    raw: &'a RawValue,
    partner: &str,
    limits: &IngestLimits,
) -> Result<Checked<'a>, Refused> {
    let value = raw.get();
    let refused = |event_id: Option<String>, rejection: Rejection| Refused {
        event_id,
        code: rejection.reason(),
        message: rejection.to_string(),
    };
    let event = decode_event(value.as_bytes(), Some(CONTENT_TYPE_JSON.as_bytes()), limits)
        .map_err(|rejection| refused(None, rejection))?;
    let event_id = event.event_id.clone();
    let valid =
        validate(event, limits).map_err(|rejection| refused(Some(event_id.clone()), rejection))?;
    let event = valid.event();
    if event.partner != partner {
        return Err(Refused {
            event_id: Some(event_id),
            code: PARTNER_MISMATCH,
            message: format!(
                "the event is for partner {:?}; this key acts for {partner:?} only",
                event.partner
            ),
        });
    }
    Ok(Checked {
        key: record_key(event),
        event_id,
        value,
    })
}

fn record_key(event: &v1::MessageEvent) -> String {
    let scope = match &event.event {
        Some(Event::MessageCreated(created)) => &created.conversation_id,
        Some(Event::MessageRead(read)) => &read.conversation_id,
        Some(Event::ConversationRead(read)) => &read.conversation_id,
        Some(Event::MessageDeleted(deleted)) => &deleted.conversation_id,
        Some(Event::Notification(_)) | None => &event.event_id,
    };
    format!("{}{KEY_SEPARATOR}{scope}", event.partner)
}

/// What became of one event of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventOutcome {
    Accepted {
        event_id: String,
        partition: i32,
        offset: i64,
    },
    Rejected {
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        error: ErrorBody,
    },
    Unavailable {
        event_id: String,
        error: ErrorBody,
    },
}

/// An error's JSON form, alone (`{"error": ...}`) or in an event's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

/// The code of an event Kafka did not acknowledge.
pub const UNAVAILABLE: &str = "unavailable";

/// Produces the checked events (all at once; each answered once acknowledged) and
/// puts every outcome in request order. `checked` holds, per event, what
/// [`check_event`] said.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    checked: Vec<Result<Checked<'_>, Refused>>,
    timeout: Duration,
    metrics: &ApiMetrics,
) -> Vec<EventOutcome> {
    let started = Instant::now();
    let headers = OwnedHeaders::new().insert(Header {
        key: fanout_schema::CONTENT_TYPE_HEADER,
        value: Some(CONTENT_TYPE_JSON),
    });
    let sends = checked.into_iter().map(|checked| {
        let headers = headers.clone();
        async move {
            let event = match checked {
                Ok(event) => event,
                Err(refused) => {
                    metrics.rejected(refused.code);
                    return EventOutcome::Rejected {
                        event_id: refused.event_id,
                        error: ErrorBody {
                            code: refused.code,
                            message: refused.message,
                        },
                    };
                }
            };
            let record = FutureRecord::to(topic)
                .key(event.key.as_bytes())
                .payload(event.value.as_bytes())
                .headers(headers);
            // librdkafka gives up on the record after `message.timeout.ms` (the same
            // timeout); the outer one only guards against a delivery report never coming.
            let sent = tokio::time::timeout(
                timeout + Duration::from_secs(1),
                producer.send(record, timeout),
            )
            .await;
            match sent {
                Ok(Ok(delivery)) => {
                    metrics.published(started.elapsed());
                    EventOutcome::Accepted {
                        event_id: event.event_id,
                        partition: delivery.partition,
                        offset: delivery.offset,
                    }
                }
                Ok(Err((error, _))) => unavailable(event.event_id, &error.to_string(), metrics),
                Err(_) => unavailable(event.event_id, "no delivery report in time", metrics),
            }
        }
    });
    join_all(sends).await
}

fn unavailable(event_id: String, error: &str, metrics: &ApiMetrics) -> EventOutcome {
    metrics.unavailable(error);
    EventOutcome::Unavailable {
        event_id,
        error: ErrorBody {
            code: UNAVAILABLE,
            message: "Kafka did not acknowledge the event in time; it may or may not be published: retry it (publishing an event twice changes nothing)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CREATED: &str = r#"{"eventId":"e1","partner":"acme","occurredAtMs":"5","messageCreated":{"conversationId":"c1","seq":"1","messageId":"m1","sender":"ann","recipients":["bob"]}}"#;

    #[test]
    fn a_body_is_one_event_or_a_bounded_non_empty_batch() {
        assert_eq!(split_body(CREATED.as_bytes(), 10).unwrap().len(), 1);
        let batch = format!(" [{CREATED},{CREATED}]");
        let events = split_body(batch.as_bytes(), 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].get(),
            CREATED,
            "each event as the client wrote it"
        );
        assert_eq!(split_body(b"[]", 10).unwrap_err(), BodyError::EmptyBatch);
        assert_eq!(
            split_body(batch.as_bytes(), 1).unwrap_err(),
            BodyError::BatchTooLarge { count: 2, limit: 1 }
        );
        for bad in [&b"\"text\""[..], b"", b"{", b"[1,", b"nul"] {
            assert!(matches!(
                split_body(bad, 10),
                Err(BodyError::InvalidJson(_))
            ));
        }
    }

    #[test]
    fn events_are_checked_as_ingest_checks_them_and_must_be_the_keys_partner() {
        let limits = IngestLimits::default();
        let events = split_body(CREATED.as_bytes(), 10).unwrap();
        let checked = check_event(events[0], "acme", &limits).unwrap();
        assert_eq!(checked.key, "acme/c1");
        assert_eq!(checked.value, CREATED);

        let refused = check_event(events[0], "globex", &limits).unwrap_err();
        assert_eq!(refused.code, PARTNER_MISMATCH);
        assert_eq!(refused.event_id.as_deref(), Some("e1"));

        let no_recipient = CREATED.replace(r#"["bob"]"#, r#"["ann"]"#);
        let events = split_body(no_recipient.as_bytes(), 10).unwrap();
        let refused = check_event(events[0], "acme", &limits).unwrap_err();
        assert_eq!(refused.code, "no_recipients");

        let data_array = CREATED.replace(r#""eventId":"e1","#, r#""eventId":"e1","data":[1],"#);
        let events = split_body(data_array.as_bytes(), 10).unwrap();
        assert_eq!(
            check_event(events[0], "acme", &limits).unwrap_err().code,
            "data_not_object"
        );

        let events = split_body(br#"{"eventId":"e1","partner":"acme"}"#, 10).unwrap();
        assert_eq!(
            check_event(events[0], "acme", &limits).unwrap_err().code,
            "unknown_event"
        );
    }
}
