//! Token verification: HS256 JWTs signed with one of the partner's live secrets.

use std::collections::HashMap;

use fanout_protocol::realtime::AuthErrorCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::PartnerConfig;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    MissingToken,
    #[error("no partner, or one that is not configured")]
    UnknownPartner,
    #[error("the token is not a well-formed JWT")]
    Malformed,
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
    #[error("a required claim is missing or has the wrong type")]
    InvalidClaims,
}

impl AuthError {
    /// The code clients see. Every variant maps to one, so a new variant does not
    /// compile until it has a (documented) code.
    pub fn code(self) -> AuthErrorCode {
        match self {
            Self::MissingToken => AuthErrorCode::MissingToken,
            Self::UnknownPartner => AuthErrorCode::UnknownPartner,
            Self::Malformed => AuthErrorCode::MalformedToken,
            Self::InvalidAlgorithm => AuthErrorCode::UnsupportedAlgorithm,
            Self::UnknownKeyId => AuthErrorCode::UnknownKey,
            Self::InvalidSignature => AuthErrorCode::InvalidSignature,
            Self::Expired => AuthErrorCode::Expired,
            Self::NotYetValid => AuthErrorCode::NotYetValid,
            Self::InvalidClaims => AuthErrorCode::InvalidClaims,
        }
    }

    /// The metric label: the same string as the code clients see.
    pub fn reason(self) -> &'static str {
        self.code().as_str()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "uniqueId")]
    unique_id: String,
}

struct PartnerKeys {
    keys: Vec<(Option<String>, DecodingKey)>,
}

/// Verifies tokens for the configured partners.
pub struct Authenticator {
    partners: HashMap<String, PartnerKeys>,
    validation: Validation,
}

impl Authenticator {
    pub fn new<'a>(
        partners: impl IntoIterator<Item = (&'a String, &'a PartnerConfig)>,
        leeway_seconds: u64,
    ) -> Self {
        let partners = partners
            .into_iter()
            .map(|(code, partner)| {
                let keys = partner
                    .secrets
                    .iter()
                    .map(|secret| {
                        (
                            secret.kid.clone(),
                            DecodingKey::from_secret(secret.secret.as_bytes()),
                        )
                    })
                    .collect();
                (code.clone(), PartnerKeys { keys })
            })
            .collect();
        // The algorithm is pinned: a token that names any other is refused before its
        // signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            partners,
            validation,
        }
    }

    /// Verifies `token` for `partner`.
    pub fn authenticate(
        &self,
        partner: Option<&str>,
        token: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let partner = partner
            .filter(|code| !code.is_empty())
            .ok_or(AuthError::UnknownPartner)?;
        let keys = self
            .partners
            .get(partner)
            .ok_or(AuthError::UnknownPartner)?;
        let token = token
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::MissingToken)?;
        // The algorithm is checked on the raw header first, so that names the JWT
        // library has no variant for (`none`) are refused as algorithms, not as JSON.
        if header_algorithm(token)? != "HS256" {
            return Err(AuthError::InvalidAlgorithm);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(|(key_id, _)| key_id.as_deref() == Some(kid.as_str()))
                .map(|(_, key)| key)
                .collect(),
            None => keys.keys.iter().map(|(_, key)| key).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::UnknownKeyId);
        }
        let mut last_error = AuthError::InvalidSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    if data.claims.unique_id.is_empty() {
                        return Err(AuthError::InvalidClaims);
                    }
                    return Ok(Identity {
                        partner: partner.to_owned(),
                        user: data.claims.unique_id,
                    });
                }
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
    use crate::config::SecretConfig;
    use jsonwebtoken::{EncodingKey, Header};
    use std::collections::BTreeMap;

    fn now() -> i64 {
        crate::server::unix_millis() / 1000
    }

    fn partners() -> BTreeMap<String, PartnerConfig> {
        let mut partners = BTreeMap::new();
        partners.insert(
            "acme".to_owned(),
            PartnerConfig {
                secrets: vec![
                    SecretConfig {
                        kid: Some("k1".into()),
                        secret: "acme-old".into(),
                    },
                    SecretConfig {
                        kid: Some("k2".into()),
                        secret: "acme-new".into(),
                    },
                ],
            },
        );
        partners.insert(
            "globex".to_owned(),
            PartnerConfig {
                secrets: vec![SecretConfig {
                    kid: None,
                    secret: "globex-secret".into(),
                }],
            },
        );
        partners
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

    #[test]
    fn valid_tokens_verify_with_any_live_secret() {
        let partners = partners();
        let auth = Authenticator::new(&partners, 5);
        let claims = serde_json::json!({"uniqueId": "bob", "exp": now() + 60});
        for (kid, secret) in [("k1", "acme-old"), ("k2", "acme-new")] {
            let identity = auth
                .authenticate(
                    Some("acme"),
                    Some(&token(with_kid(kid), claims.clone(), secret)),
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
        let no_kid = token(Header::new(Algorithm::HS256), claims, "globex-secret");
        assert_eq!(
            auth.authenticate(Some("globex"), Some(&no_kid))
                .unwrap()
                .user,
            "bob"
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let partners = partners();
        let auth = Authenticator::new(&partners, 5);
        let good = serde_json::json!({"uniqueId": "bob", "exp": now() + 60});
        let cases: Vec<(Option<&str>, String, AuthError)> = vec![
            (Some("acme"), String::new(), AuthError::MissingToken),
            (
                None,
                token(with_kid("k1"), good.clone(), "acme-old"),
                AuthError::UnknownPartner,
            ),
            (
                Some("initech"),
                token(with_kid("k1"), good.clone(), "acme-old"),
                AuthError::UnknownPartner,
            ),
            (Some("acme"), "not.a.jwt".into(), AuthError::Malformed),
            (
                Some("acme"),
                token(with_kid("k1"), good.clone(), "wrong"),
                AuthError::InvalidSignature,
            ),
            (
                Some("acme"),
                token(with_kid("k9"), good.clone(), "acme-old"),
                AuthError::UnknownKeyId,
            ),
            // The other partner's valid token does not open this partner.
            (
                Some("acme"),
                token(Header::new(Algorithm::HS256), good.clone(), "globex-secret"),
                AuthError::InvalidSignature,
            ),
            (
                Some("acme"),
                token(
                    Header {
                        kid: Some("k1".into()),
                        ..Header::new(Algorithm::HS512)
                    },
                    good.clone(),
                    "acme-old",
                ),
                AuthError::InvalidAlgorithm,
            ),
            (
                Some("acme"),
                token(
                    with_kid("k1"),
                    serde_json::json!({"uniqueId": "bob", "exp": now() - 600}),
                    "acme-old",
                ),
                AuthError::Expired,
            ),
            (
                Some("acme"),
                token(
                    with_kid("k1"),
                    serde_json::json!({"uniqueId": "bob"}),
                    "acme-old",
                ),
                AuthError::InvalidClaims,
            ),
            (
                Some("acme"),
                token(
                    with_kid("k1"),
                    serde_json::json!({"exp": now() + 60}),
                    "acme-old",
                ),
                AuthError::InvalidClaims,
            ),
            (
                Some("acme"),
                token(
                    with_kid("k1"),
                    serde_json::json!({"uniqueId": 42, "exp": now() + 60}),
                    "acme-old",
                ),
                AuthError::InvalidClaims,
            ),
            (
                Some("acme"),
                token(
                    with_kid("k1"),
                    serde_json::json!({"uniqueId": "bob", "exp": now() + 600, "nbf": now() + 300}),
                    "acme-old",
                ),
                AuthError::NotYetValid,
            ),
        ];
        for (partner, token, expected) in cases {
            assert_eq!(
                auth.authenticate(partner, Some(&token)),
                Err(expected),
                "{partner:?} {token}"
            );
        }
        assert_eq!(
            auth.authenticate(Some("acme"), None),
            Err(AuthError::MissingToken)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let partners = partners();
        let auth = Authenticator::new(&partners, 5);
        // {"alg":"none","typ":"JWT"} . {"uniqueId":"bob","exp":9999999999} . (empty)
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1bmlxdWVJZCI6ImJvYiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(
            auth.authenticate(Some("acme"), Some(unsigned)),
            Err(AuthError::InvalidAlgorithm)
        );
    }
}
