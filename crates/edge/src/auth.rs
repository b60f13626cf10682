//! Token verification: HS256 JWTs signed with one of the partner's live secrets, each
//! accepted once per node (`jti`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use fanout_protocol::realtime::AuthErrorCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{EdgeConfig, SecretConfig};
use crate::replay::{Refusal, ReplayCache};

/// Longest `uniqueId` accepted, in bytes: it becomes part of a key in every table.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest `jti` accepted, in bytes.
pub const MAX_JTI_BYTES: usize = 256;

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub partner: String,
    pub user: String,
}

impl Identity {
    /// The user's key in the count table and on the topics.
    pub fn key(&self) -> String {
        fanout_schema::user_key(&self.partner, &self.user)
    }
}

/// Why a token was refused. [`AuthError::code`] is the machine-readable error of the
/// JSON protocol and, as [`AuthError::reason`], the metric label; it never contains the
/// token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    MissingToken,
    #[error("no partner, or one that is not configured")]
    UnknownPartner,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is longer than the edge accepts")]
    TooLarge,
    #[error("the token's algorithm is not HS256")]
    InvalidAlgorithm,
    #[error("the token names a key id the partner does not have")]
    UnknownKeyId,
    #[error("the signature does not verify with the partner's secrets")]
    InvalidSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token's expiry is further away than the edge accepts")]
    LifetimeTooLong,
    #[error("a required claim is missing or has the wrong type")]
    InvalidClaims,
    #[error("the token's partner claim names another partner")]
    PartnerMismatch,
    #[error(
        "the token is for the other use: a stream subscription's (scope \"stream\") or a connection's"
    )]
    WrongScope,
    #[error("the token was used before")]
    Replayed,
    #[error("the node holds as many unexpired token ids as it may")]
    ReplayCacheFull,
}

impl AuthError {
    /// The code clients see. Every variant maps to one, so a new variant does not
    /// compile until it has a (documented) code.
    pub fn code(self) -> AuthErrorCode {
        match self {
            Self::MissingToken => AuthErrorCode::MissingToken,
            Self::UnknownPartner => AuthErrorCode::UnknownPartner,
            Self::Malformed => AuthErrorCode::MalformedToken,
            Self::TooLarge => AuthErrorCode::TokenTooLarge,
            Self::InvalidAlgorithm => AuthErrorCode::UnsupportedAlgorithm,
            Self::UnknownKeyId => AuthErrorCode::UnknownKey,
            Self::InvalidSignature => AuthErrorCode::InvalidSignature,
            Self::Expired => AuthErrorCode::Expired,
            Self::NotYetValid => AuthErrorCode::NotYetValid,
            Self::IssuedInFuture => AuthErrorCode::IssuedInFuture,
            Self::LifetimeTooLong => AuthErrorCode::LifetimeTooLong,
            Self::InvalidClaims => AuthErrorCode::InvalidClaims,
            Self::PartnerMismatch => AuthErrorCode::PartnerMismatch,
            Self::WrongScope => AuthErrorCode::WrongScope,
            Self::Replayed => AuthErrorCode::Replayed,
            Self::ReplayCacheFull => AuthErrorCode::TryAgainLater,
        }
    }

    /// The metric label: the code clients see, except that a full replay cache, which
    /// clients see as `try_again_later`, is told apart for operators.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ReplayCacheFull => "replay_cache_full",
            _ => self.code().as_str(),
        }
    }
}

/// The claims fanout reads, as raw JSON so that a wrong type is told apart from a
/// missing claim. `exp` and `nbf` are checked by the JWT library.
#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "uniqueId")]
    unique_id: Option<Value>,
    jti: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
    partner: Option<Value>,
    scope: Option<Value>,
}

/// The partners' keys, replaced as a whole when the secrets file changes.
type PartnerKeys = HashMap<String, Vec<(Option<String>, DecodingKey)>>;

/// Verifies tokens for the configured partners.
pub struct Authenticator {
    partners: RwLock<Arc<PartnerKeys>>,
    validation: Validation,
    leeway_seconds: i64,
    max_token_bytes: usize,
    max_lifetime_seconds: i64,
    replay: ReplayCache,
}

fn partner_keys(secrets: &BTreeMap<String, Vec<SecretConfig>>) -> PartnerKeys {
    secrets
        .iter()
        .map(|(code, secrets)| {
            let keys = secrets
                .iter()
                .map(|secret| {
                    (
                        secret.kid.clone(),
                        DecodingKey::from_secret(secret.secret.as_bytes()),
                    )
                })
                .collect();
            (code.clone(), keys)
        })
        .collect()
}

impl Authenticator {
    /// An authenticator for `secrets` (partner → live secrets) with `config`'s limits.
    pub fn new(config: &EdgeConfig, secrets: &BTreeMap<String, Vec<SecretConfig>>) -> Self {
        // The algorithm is pinned: a token that names any other is refused before its
        // signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.jwt_leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            partners: RwLock::new(Arc::new(partner_keys(secrets))),
            validation,
            leeway_seconds: i64::try_from(config.jwt_leeway_seconds).unwrap_or(i64::MAX),
            max_token_bytes: config.max_token_bytes,
            max_lifetime_seconds: i64::try_from(config.max_token_lifetime_seconds)
                .unwrap_or(i64::MAX),
            replay: ReplayCache::new(config.jti_cache_capacity),
        }
    }

    /// Replaces every partner's secrets (a changed secrets file). Connections already
    /// open stay open.
    pub fn replace_secrets(&self, secrets: &BTreeMap<String, Vec<SecretConfig>>) {
        let keys = Arc::new(partner_keys(secrets));
        *self
            .partners
            .write()
            .unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// Whether `partner` is configured (has secrets) now.
    pub fn knows_partner(&self, partner: &str) -> bool {
        self.partners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(partner)
    }

    /// Token ids remembered now.
    pub fn remembered_token_ids(&self) -> usize {
        self.replay.len()
    }

    /// Verifies `token` for `partner` and takes its `jti`: the same token is refused
    /// on this node from now until it expires.
    pub fn authenticate(
        &self,
        partner: Option<&str>,
        token: Option<&str>,
    ) -> Result<Identity, AuthError> {
        self.authenticate_at(
            partner,
            token,
            fanout_schema::unix_millis() / 1000,
            Use::Once,
        )
    }

    /// Verifies a stream subscription's token (a RoomChannel `pubsub_token`) for
    /// `partner`, or, without one, for the partner its `partner` claim names. Unlike
    /// [`Authenticator::authenticate`] it does not spend the token: as Chatwoot's
    /// pubsub_token, it is presented again on every reconnect (the official client
    /// resubscribes with the same identifier), until it expires.
    pub fn authenticate_subscription(
        &self,
        partner: Option<&str>,
        token: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let claimed;
        let partner = match partner.filter(|code| !code.is_empty()) {
            Some(partner) => Some(partner),
            None => {
                claimed = token.and_then(claimed_partner);
                claimed.as_deref()
            }
        };
        self.authenticate_at(
            partner,
            token,
            fanout_schema::unix_millis() / 1000,
            Use::Again,
        )
    }

    fn authenticate_at(
        &self,
        partner: Option<&str>,
        token: Option<&str>,
        now: i64,
        usage: Use,
    ) -> Result<Identity, AuthError> {
        let partner = partner
            .filter(|code| !code.is_empty())
            .ok_or(AuthError::UnknownPartner)?;
        let partners = self
            .partners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let keys = partners.get(partner).ok_or(AuthError::UnknownPartner)?;
        let token = token
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::MissingToken)?;
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        // The algorithm is checked on the raw header first, so that names the JWT
        // library has no variant for (`none`) are refused as algorithms, not as JSON.
        if header_algorithm(token)? != "HS256" {
            return Err(AuthError::InvalidAlgorithm);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => keys
                .iter()
                .filter(|(key_id, _)| key_id.as_deref() == Some(kid.as_str()))
                .map(|(_, key)| key)
                .collect(),
            None => keys.iter().map(|(_, key)| key).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::UnknownKeyId);
        }
        let mut last_error = AuthError::InvalidSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return self.accept(partner, data.claims, now, usage),
                Err(error) => {
                    last_error = map_error(error.kind());
                    // Any error but a bad signature is a property of the token itself,
                    // not of the key tried: no other key will change it.
                    if last_error != AuthError::InvalidSignature {
                        return Err(last_error);
                    }
                }
            }
        }
        Err(last_error)
    }

    /// The checks on a token whose signature, `exp` and `nbf` verified.
    fn accept(
        &self,
        partner: &str,
        claims: Claims,
        now: i64,
        usage: Use,
    ) -> Result<Identity, AuthError> {
        let user = bounded_string(claims.unique_id, MAX_USER_ID_BYTES)?;
        let jti = bounded_string(claims.jti, MAX_JTI_BYTES)?;
        let iat = claims
            .iat
            .as_ref()
            .and_then(Value::as_i64)
            .ok_or(AuthError::InvalidClaims)?;
        let exp = claims
            .exp
            .as_ref()
            .and_then(Value::as_i64)
            .ok_or(AuthError::InvalidClaims)?;
        if iat > now.saturating_add(self.leeway_seconds) {
            return Err(AuthError::IssuedInFuture);
        }
        if exp.saturating_sub(now)
            > self
                .max_lifetime_seconds
                .saturating_add(self.leeway_seconds)
        {
            return Err(AuthError::LifetimeTooLong);
        }
        match claims.partner {
            None => {}
            Some(Value::String(claimed)) if claimed == partner => {}
            Some(Value::String(_)) => return Err(AuthError::PartnerMismatch),
            Some(_) => return Err(AuthError::InvalidClaims),
        }
        // A stream subscription's token says so, and only it does: a connection's token,
        // single-use, cannot open a stream after it was spent, and a subscription's,
        // reusable, cannot open connections.
        let for_streams =
            matches!(&claims.scope, Some(Value::String(scope)) if scope == STREAM_SCOPE);
        if for_streams != (usage == Use::Again) {
            return Err(AuthError::WrongScope);
        }
        if usage == Use::Again {
            return Ok(Identity {
                partner: partner.to_owned(),
                user,
            });
        }
        // Remembered until the token can no longer pass `exp`, leeway included.
        let forget_at = exp.saturating_add(self.leeway_seconds);
        self.replay
            .take(partner, &jti, forget_at, now)
            .map_err(|refusal| match refusal {
                Refusal::Replayed => AuthError::Replayed,
                Refusal::Full => AuthError::ReplayCacheFull,
            })?;
        Ok(Identity {
            partner: partner.to_owned(),
            user,
        })
    }
}

/// A claim that must be a non-empty string of at most `max_bytes`.
fn bounded_string(claim: Option<Value>, max_bytes: usize) -> Result<String, AuthError> {
    match claim {
        Some(Value::String(text)) if !text.is_empty() && text.len() <= max_bytes => Ok(text),
        _ => Err(AuthError::InvalidClaims),
    }
}

/// The `scope` claim of a stream subscription's token (RoomChannel's `pubsub_token`).
pub const STREAM_SCOPE: &str = "stream";

/// Whether verifying a token spends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A connection's token: refused if presented again on this node.
    Once,
    /// A subscription's token: presented again on every reconnect.
    Again,
}

/// The `partner` claim of a token, read before verification only to pick the keys to
/// verify it with (verification then checks the claim against that partner).
fn claimed_partner(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct RawClaims {
        partner: Option<String>,
    }
    let encoded = token.split('.').nth(1)?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    serde_json::from_slice::<RawClaims>(&decoded).ok()?.partner
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn header_algorithm(token: &str) -> Result<String, AuthError> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
    }
    let encoded = token.split('.').next().ok_or(AuthError::Malformed)?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AuthError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&decoded).map_err(|_| AuthError::Malformed)?;
    Ok(header.alg)
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::InvalidAlgorithm
        }
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => AuthError::InvalidClaims,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::PartnerConfig;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn now() -> i64 {
        fanout_schema::unix_millis() / 1000
    }

    fn secret(kid: Option<&str>, secret: &str) -> SecretConfig {
        SecretConfig {
            kid: kid.map(str::to_owned),
            secret: secret.to_owned(),
        }
    }

    fn config() -> EdgeConfig {
        let mut config = EdgeConfig::default();
        config.partners.insert(
            "acme".to_owned(),
            PartnerConfig {
                secrets: vec![
                    secret(Some("k1"), "acme-old-0123456789"),
                    secret(Some("k2"), "acme-new-0123456789"),
                ],
                ..PartnerConfig::default()
            },
        );
        config.partners.insert(
            "globex".to_owned(),
            PartnerConfig {
                secrets: vec![secret(None, "globex-secret-0123456789")],
                ..PartnerConfig::default()
            },
        );
        config
    }

    fn authenticator() -> Authenticator {
        let config = config();
        Authenticator::new(&config, &config.merged_secrets(&Default::default()))
    }

    fn token(header: Header, claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn with_kid(kid: &str) -> Header {
        Header {
            kid: Some(kid.into()),
            ..Header::new(Algorithm::HS256)
        }
    }

    fn claims(user: &str) -> serde_json::Value {
        json!({"uniqueId": user, "exp": now() + 60, "iat": now(), "jti": crate::replay::tests_support::fresh_id()})
    }

    #[test]
    fn valid_tokens_verify_with_any_live_secret() {
        let auth = authenticator();
        for (kid, secret) in [("k1", "acme-old-0123456789"), ("k2", "acme-new-0123456789")] {
            let identity = auth
                .authenticate(
                    Some("acme"),
                    Some(&token(with_kid(kid), claims("bob"), secret)),
                )
                .unwrap();
            assert_eq!(
                identity,
                Identity {
                    partner: "acme".into(),
                    user: "bob".into()
                }
            );
            assert_eq!(identity.key(), "acme/bob");
        }
        let no_kid = token(
            Header::new(Algorithm::HS256),
            claims("bob"),
            "globex-secret-0123456789",
        );
        assert_eq!(
            auth.authenticate(Some("globex"), Some(&no_kid))
                .unwrap()
                .user,
            "bob"
        );
        assert_eq!(auth.remembered_token_ids(), 3);
    }

    #[test]
    fn claims_are_checked_after_the_signature() {
        let auth = authenticator();
        let now = now();
        let sign = |claims: serde_json::Value| token(with_kid("k1"), claims, "acme-old-0123456789");
        let cases = [
            (
                json!({"uniqueId": "bob", "exp": now + 60, "iat": now + 600, "jti": "a"}),
                AuthError::IssuedInFuture,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 60, "iat": "yesterday", "jti": "b"}),
                AuthError::InvalidClaims,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 60, "jti": "c"}),
                AuthError::InvalidClaims,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 60, "iat": now}),
                AuthError::InvalidClaims,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 60, "iat": now, "jti": 7}),
                AuthError::InvalidClaims,
            ),
            (
                json!({"uniqueId": "", "exp": now + 60, "iat": now, "jti": "d"}),
                AuthError::InvalidClaims,
            ),
            (
                json!({"uniqueId": "x".repeat(MAX_USER_ID_BYTES + 1), "exp": now + 60, "iat": now, "jti": "e"}),
                AuthError::InvalidClaims,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 90_000, "iat": now, "jti": "f"}),
                AuthError::LifetimeTooLong,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 60, "iat": now, "jti": "g", "partner": "globex"}),
                AuthError::PartnerMismatch,
            ),
            (
                json!({"uniqueId": "bob", "exp": now + 60, "iat": now, "jti": "h", "partner": 1}),
                AuthError::InvalidClaims,
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                auth.authenticate(Some("acme"), Some(&sign(claims.clone()))),
                Err(expected),
                "{claims}"
            );
        }
        // An agreeing partner claim and an iat within the leeway are fine.
        let agreeing = json!({"uniqueId": "bob", "exp": now + 60, "iat": now + 3, "jti": "i", "partner": "acme"});
        assert!(
            auth.authenticate(Some("acme"), Some(&sign(agreeing)))
                .is_ok()
        );
    }

    #[test]
    fn a_token_is_accepted_once() {
        let auth = authenticator();
        let once = token(with_kid("k1"), claims("bob"), "acme-old-0123456789");
        assert!(auth.authenticate(Some("acme"), Some(&once)).is_ok());
        assert_eq!(
            auth.authenticate(Some("acme"), Some(&once)),
            Err(AuthError::Replayed)
        );
        // A refused token does not take its id: the forged copy of a fresh token does
        // not burn the real one.
        let fresh = claims("bob");
        let forged = token(with_kid("k1"), fresh.clone(), "not-the-secret-at-all");
        assert_eq!(
            auth.authenticate(Some("acme"), Some(&forged)),
            Err(AuthError::InvalidSignature)
        );
        let real = token(with_kid("k1"), fresh, "acme-old-0123456789");
        assert!(auth.authenticate(Some("acme"), Some(&real)).is_ok());
    }

    #[test]
    fn a_full_replay_cache_refuses_instead_of_forgetting() {
        let mut config = config();
        config.jti_cache_capacity = 2;
        let auth = Authenticator::new(&config, &config.merged_secrets(&Default::default()));
        for _ in 0..2 {
            let fresh = token(with_kid("k1"), claims("bob"), "acme-old-0123456789");
            assert!(auth.authenticate(Some("acme"), Some(&fresh)).is_ok());
        }
        let third = token(with_kid("k1"), claims("bob"), "acme-old-0123456789");
        let refused = auth.authenticate(Some("acme"), Some(&third)).unwrap_err();
        assert_eq!(refused, AuthError::ReplayCacheFull);
        assert_eq!(refused.code(), AuthErrorCode::TryAgainLater);
        assert_eq!(refused.reason(), "replay_cache_full");
    }

    #[test]
    fn replaced_secrets_take_effect_for_new_tokens() {
        let auth = authenticator();
        let rotated = token(with_kid("k3"), claims("bob"), "acme-rotated-0123456789");
        assert_eq!(
            auth.authenticate(Some("acme"), Some(&rotated)),
            Err(AuthError::UnknownKeyId)
        );
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "acme".to_owned(),
            vec![secret(Some("k3"), "acme-rotated-0123456789")],
        );
        auth.replace_secrets(&secrets);
        assert!(auth.authenticate(Some("acme"), Some(&rotated)).is_ok());
        let old = token(with_kid("k1"), claims("bob"), "acme-old-0123456789");
        assert_eq!(
            auth.authenticate(Some("acme"), Some(&old)),
            Err(AuthError::UnknownKeyId)
        );
        assert!(!auth.knows_partner("globex"));
    }

    #[test]
    fn structural_refusals() {
        let auth = authenticator();
        let good = token(with_kid("k1"), claims("bob"), "acme-old-0123456789");
        assert_eq!(
            auth.authenticate(Some("acme"), Some("")),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            auth.authenticate(Some("acme"), None),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            auth.authenticate(None, Some(&good)),
            Err(AuthError::UnknownPartner)
        );
        assert_eq!(
            auth.authenticate(Some("initech"), Some(&good)),
            Err(AuthError::UnknownPartner)
        );
        assert_eq!(
            auth.authenticate(Some("acme"), Some("not.a.jwt")),
            Err(AuthError::Malformed)
        );
        let huge = "a".repeat(5000);
        assert_eq!(
            auth.authenticate(Some("acme"), Some(&huge)),
            Err(AuthError::TooLarge)
        );
        // {"alg":"none","typ":"JWT"} . {"uniqueId":"bob","exp":9999999999} . (empty)
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1bmlxdWVJZCI6ImJvYiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(
            auth.authenticate(Some("acme"), Some(unsigned)),
            Err(AuthError::InvalidAlgorithm)
        );
    }
}
