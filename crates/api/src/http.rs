//! The api's HTTP routes. Every answer that is not a success is a JSON body
//! `{"error":{"code":..,"message":..}}` with a machine-readable code; docs/openapi.json
//! describes every route, status and schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fanout_edge::limits::CommandRate;
use fanout_ingest::IngestLimits;
use fanout_kafka::StageHealth;
use fanout_schema::user_key;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rdkafka::producer::FutureProducer;
use serde::Serialize;

use crate::config::ApiConfig;
use crate::feed::Tables;
use crate::keys::{Caller, KeyDigest, KeyRing};
use crate::metrics::{ApiMetrics, Limit, Route};
use crate::publish::{BodyError, ErrorBody, EventOutcome, check_event, publish, split_body};
use crate::shards::ShardMap;

/// The OpenAPI document of these routes, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// What every route shares.
pub struct ApiState {
    pub config: ApiConfig,
    pub limits: IngestLimits,
    pub keys: KeyRing,
    pub rates: Mutex<HashMap<KeyDigest, CommandRate>>,
    pub tables: Arc<Tables>,
    pub producer: FutureProducer,
    pub topic: String,
    pub metrics: ApiMetrics,
    /// Ready once the tables caught up; queries wait for it.
    pub health: StageHealth,
    /// `api.shards`, validated; `None` when edges are not sharded.
    pub shards: Option<ShardMap>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/users/{user}/unread_count", get(get_unread_count))
        .route("/v1/users/{user}/shard", get(get_shard))
        .route(
            "/v1/conversations/{conversation_id}/messages/{seq}/receipts",
            get(get_receipts),
        )
        .route("/v1/openapi.json", get(get_openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A refusal: its status, its code, what to tell the caller, and when to come back.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

#[derive(Serialize)]
struct ErrorResponse {
    error: ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorBody {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = json(self.status, &body);
        response.extensions_mut().insert(Refusal(self.code));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fanout\""),
            );
        }
        response
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The error code of a refused request's answer, for its log line.
#[derive(Debug, Clone, Copy)]
struct Refusal(&'static str);

/// Counts the answer under its route and status, and logs a refusal.
fn answered(state: &ApiState, route: Route, response: Response) -> Response {
    let status = response.status();
    let refusal = status
        .is_client_error()
        .then(|| {
            response
                .extensions()
                .get::<Refusal>()
                .map(|refusal| refusal.0)
        })
        .flatten();
    state.metrics.request(route, status.as_u16(), refusal);
    response
}

fn into_response<T: IntoResponse>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(ok) => ok.into_response(),
        Err(error) => error.into_response(),
    }
}

/// The key of an `Authorization: Bearer <key>` header value (scheme in any case).
pub fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// A path's message `seq`: decimal digits only, in `1..=max_seq`.
pub fn parse_seq(text: &str, max_seq: u64) -> Option<u64> {
    Some(text)
        .filter(|seq| seq.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|seq| seq.parse::<u64>().ok())
        .filter(|seq| (1..=max_seq).contains(seq))
}

/// The caller of an authenticated request, within its key's rate.
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_key)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send an API key as `Authorization: Bearer <key>`",
            )
        })?;
    let caller = state.keys.authenticate(presented).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not a live key of any partner",
        )
    })?;
    let now = tokio::time::Instant::now();
    let allowed = state
        .rates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(caller.key)
        .or_insert_with(|| CommandRate::new(state.config.requests_per_second, now))
        .allow(now);
    if !allowed {
        state.metrics.limited(Limit::Rate);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this key made more than {} requests in a second",
                state.config.requests_per_second
            ),
        )
        .retry_after(1));
    }
    Ok(caller)
}

fn require_ready(state: &ApiState) -> Result<(), ApiError> {
    if state.health.is_ready() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the api is still reading its tables from Kafka",
    )
    .retry_after(state.config.retry_after_seconds))
}

fn check_id(field: &str, value: &str, limits: &IngestLimits) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            format!("{field} is empty"),
        ));
    }
    if value.len() > limits.max_id_bytes {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "id_too_long",
            format!("{field} is longer than {} bytes", limits.max_id_bytes),
        ));
    }
    Ok(())
}

fn path_error(rejection: &PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_path",
        rejection.body_text(),
    )
}

#[derive(Serialize)]
struct PublishResponse {
    results: Vec<EventOutcome>,
}

async fn post_events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = into_response(publish_events(&state, &headers, body).await);
    answered(&state, Route::Publish, response)
}

async fn publish_events(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authorize(state, headers)?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    if media_type.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send events as `Content-Type: application/json`",
        ));
    }
    let max_body_bytes = state.config.max_body_bytes;
    let too_large = || {
        state.metrics.limited(Limit::BodySize);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {max_body_bytes} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Err(error) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the body could not be read: {error}"),
            ));
        }
    };
    let events = split_body(&bytes, state.config.max_batch_events).map_err(|error| {
        let code = match error {
            BodyError::InvalidJson(_) => "invalid_json",
            BodyError::EmptyBatch => "empty_batch",
            BodyError::BatchTooLarge { .. } => {
                state.metrics.limited(Limit::BatchSize);
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch_too_large",
                    error.to_string(),
                );
            }
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
    })?;
    let checked = events
        .into_iter()
        .map(|raw| check_event(raw, &caller.partner, &state.limits))
        .collect();
    let timeout = Duration::from_millis(state.config.publish_timeout_ms);
    let results = publish(
        &state.producer,
        &state.topic,
        checked,
        timeout,
        &state.metrics,
    )
    .await;
    let unavailable = results
        .iter()
        .any(|result| matches!(result, EventOutcome::Unavailable { .. }));
    let rejected = results
        .iter()
        .any(|result| matches!(result, EventOutcome::Rejected { .. }));
    let status = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else if rejected {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut response = json(status, &PublishResponse { results });
    if rejected && !unavailable {
        response.extensions_mut().insert(Refusal("events_rejected"));
    }
    if unavailable {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.config.retry_after_seconds),
        );
    }
    Ok(response)
}

#[derive(Serialize)]
struct UnreadCount<'a> {
    partner: &'a str,
    user: &'a str,
    count: u64,
}

async fn get_unread_count(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let caller = authorize(&state, &headers)?;
        let Path(user) = user.map_err(|rejection| path_error(&rejection))?;
        check_id("user", &user, &state.limits)?;
        require_ready(&state)?;
        let count = state
            .tables
            .counts
            .get(&user_key(&caller.partner, &user))
            .map_or(0, |value| value.count);
        Ok(json(
            StatusCode::OK,
            &UnreadCount {
                partner: &caller.partner,
                user: &user,
                count,
            },
        ))
    })();
    answered(&state, Route::UnreadCount, into_response(result))
}

#[derive(Serialize)]
struct ShardResponse<'a> {
    partner: &'a str,
    user: &'a str,
    #[serde(flatten)]
    shard: crate::shards::UserShard,
}

/// The shard whose edges serve the user: from `api.shards` and the user's key alone,
/// so it needs no table and answers before the api is ready.
async fn get_shard(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let caller = authorize(&state, &headers)?;
        let Path(user) = user.map_err(|rejection| path_error(&rejection))?;
        check_id("user", &user, &state.limits)?;
        let shards = state.shards.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_sharded",
                "api.shards is not configured: every edge serves every user",
            )
        })?;
        Ok(json(
            StatusCode::OK,
            &ShardResponse {
                partner: &caller.partner,
                user: &user,
                shard: shards.user_shard(&user_key(&caller.partner, &user)),
            },
        ))
    })();
    answered(&state, Route::Shard, into_response(result))
}

#[derive(Serialize)]
struct ReceiptsResponse<'a> {
    partner: &'a str,
    conversation_id: &'a str,
    seq: u64,
    readers: Vec<ReaderBody>,
}

#[derive(Serialize)]
struct ReaderBody {
    user: String,
    read_at_ms: i64,
    via: &'static str,
}

async fn get_receipts(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let result = (|| {
        let caller = authorize(&state, &headers)?;
        let Path((conversation_id, seq)) = path.map_err(|rejection| path_error(&rejection))?;
        check_id("conversation_id", &conversation_id, &state.limits)?;
        let seq = parse_seq(&seq, state.limits.max_seq).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_seq",
                format!("seq must be an integer in 1..={}", state.limits.max_seq),
            )
        })?;
        require_ready(&state)?;
        let readers = state
            .tables
            .receipts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .readers(&caller.partner, &conversation_id, seq)
            .into_iter()
            .map(|reader| ReaderBody {
                user: reader.user,
                read_at_ms: reader.read_at_ms,
                via: reader.via.as_str(),
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &ReceiptsResponse {
                partner: &caller.partner,
                conversation_id: &conversation_id,
                seq,
                readers,
            },
        ))
    })();
    answered(&state, Route::Receipts, into_response(result))
}

async fn get_openapi(State(state): State<Arc<ApiState>>) -> Response {
    let response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response();
    answered(&state, Route::OpenApi, response)
}

async fn not_found(State(state): State<Arc<ApiState>>) -> Response {
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /v1/openapi.json",
    );
    answered(&state, Route::Unmatched, error.into_response())
}

async fn method_not_allowed(State(state): State<Arc<ApiState>>) -> Response {
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the route does not take this method; see /v1/openapi.json",
    );
    answered(&state, Route::Unmatched, error.into_response())
}
