//! Fuzz entry point: any bytes as a token, through the edge's own token verification
//! (header and claims decoding before the signature, the key-id lookup, the signature,
//! the claims after it, the replay check). It panics only when a property below does
//! not hold. `fuzz/` at the repository root calls it from a cargo-fuzz target, and the
//! corpus replay test (`crates/fanout/tests/fuzz_corpus.rs`) calls it on every seed.

use std::collections::BTreeMap;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

use crate::auth::{AuthError, Authenticator};
use crate::{EdgeConfig, SecretConfig};

/// The secrets the fuzzed tokens are verified with: `acme` has two, by key id, `globex`
/// one without. Tokens the target signs itself use [`SIGNING_SECRET`] (acme's `k1`).
pub const SIGNING_SECRET: &str = "fuzz-acme-k1-0123456789";
const SECRETS: [(&str, Option<&str>, &str); 3] = [
    ("acme", Some("k1"), SIGNING_SECRET),
    ("acme", Some("k2"), "fuzz-acme-k2-0123456789"),
    ("globex", None, "fuzz-globex-0123456789"),
];

fn authenticator() -> Authenticator {
    let mut config = EdgeConfig {
        jti_cache_capacity: 16,
        ..EdgeConfig::default()
    };
    let mut secrets: BTreeMap<String, Vec<SecretConfig>> = BTreeMap::new();
    for (partner, kid, secret) in SECRETS {
        let secret = SecretConfig {
            kid: kid.map(str::to_owned),
            secret: secret.to_owned(),
        };
        secrets
            .entry(partner.to_owned())
            .or_default()
            .push(secret.clone());
        config
            .partners
            .entry(partner.to_owned())
            .or_default()
            .secrets
            .push(secret);
    }
    Authenticator::new(&config, &secrets)
}

/// The first byte picks the form of the rest:
/// - even: the rest is the token, as a client sends it (mostly refused unverified:
///   what is exercised is everything read before the signature is checked);
/// - 1 (mod 4): the rest is `HEADER\nCLAIMS`, any bytes each, made into a token signed
///   with [`SIGNING_SECRET`], so that the signature verifies and the claims checks run;
/// - 3 (mod 4): as 1, but when CLAIMS is a JSON object its integer `iat`, `nbf` and
///   `exp` are seconds from now (written again as serde_json writes them), so that a
///   fixed input reaches the checks after `exp` on any day.
///
/// Properties: nothing panics; a token accepted for a connection names a user that is
/// its `uniqueId` claim, is refused when presented again (`replayed`), and is refused
/// for a stream subscription (its scope is not `stream`).
pub fn jwt(input: &[u8]) {
    let Some((form, rest)) = input.split_first() else {
        return;
    };
    let token = if form % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        token.to_owned()
    } else {
        let split = rest.iter().position(|byte| *byte == b'\n');
        let (header, claims) = split.map_or((rest, &[][..]), |at| (&rest[..at], &rest[at + 1..]));
        if form % 4 == 3 {
            signed_token(header, &from_now(claims))
        } else {
            signed_token(header, claims)
        }
    };
    let auth = authenticator();

    // The stream form first: it does not spend the token.
    let for_stream = auth.authenticate_subscription(None, Some(&token));
    for partner in ["globex", "acme"] {
        let Ok(identity) = auth.authenticate(Some(partner), Some(&token)) else {
            continue;
        };
        assert_eq!(identity.partner, partner);
        let claims = claims_of(&token);
        assert_eq!(
            claims.get("uniqueId").and_then(Value::as_str),
            Some(identity.user.as_str())
        );
        assert_eq!(
            auth.authenticate(Some(partner), Some(&token)),
            Err(AuthError::Replayed)
        );
        assert_ne!(claims.get("scope").and_then(Value::as_str), Some("stream"));
        assert!(for_stream.is_err(), "{for_stream:?}");
    }
    if let Ok(identity) = for_stream {
        assert_eq!(
            claims_of(&token).get("uniqueId").and_then(Value::as_str),
            Some(identity.user.as_str())
        );
    }
}

/// `claims` with its integer `iat`, `nbf` and `exp` moved by the time now; as they are
/// when not a JSON object.
fn from_now(claims: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(claims) else {
        return claims.to_vec();
    };
    let now = fanout_schema::unix_millis() / 1000;
    for name in ["iat", "nbf", "exp"] {
        if let Some(value) = object.get_mut(name)
            && let Some(offset) = value.as_i64()
        {
            *value = Value::from(now.saturating_add(offset));
        }
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

/// `base64url(header).base64url(claims).signature` with [`SIGNING_SECRET`], HS256.
fn signed_token(header: &[u8], claims: &[u8]) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut token = engine.encode(header);
    token.push('.');
    token.push_str(&engine.encode(claims));
    let key = EncodingKey::from_secret(SIGNING_SECRET.as_bytes());
    // HMAC takes any key and message: signing cannot fail.
    let signature =
        jsonwebtoken::crypto::sign(token.as_bytes(), &key, Algorithm::HS256).unwrap_or_default();
    token.push('.');
    token.push_str(&signature);
    token
}

/// The claims of a token the edge accepted, read again here without the edge's code.
fn claims_of(token: &str) -> serde_json::Map<String, Value> {
    let claims = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}
