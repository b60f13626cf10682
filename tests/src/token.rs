//! The one way the tests make a JWT: a partner's good token (HS256; `uniqueId`, a fresh
//! `jti`, issued now, valid for an hour), any claim or header field of which a test can
//! set or remove. The header and claims are written as JSON and signed with HMAC over
//! exactly those bytes, so a test can also make what no JWT library would write: an
//! `alg` that does not match the signature, a lower-case `alg`, no signature at all.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The HMAC a token is signed with; [`TokenBuilder::hmac`] names it in the header too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hmac {
    Hs256,
    Hs384,
    Hs512,
}

impl Hmac {
    fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
        }
    }

    fn sign(self, secret: &str, input: &[u8]) -> Vec<u8> {
        fn mac<M: hmac::Mac + hmac::digest::KeyInit>(secret: &str, input: &[u8]) -> Vec<u8> {
            let mut mac = <M as hmac::Mac>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes a key of any length");
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Hs256 => mac::<hmac::Hmac<sha2::Sha256>>(secret, input),
            Self::Hs384 => mac::<hmac::Hmac<sha2::Sha384>>(secret, input),
            Self::Hs512 => mac::<hmac::Hmac<sha2::Sha512>>(secret, input),
        }
    }
}

/// Seconds since the Unix epoch, by the clock the edge checks tokens against.
pub fn unix_seconds() -> i64 {
    fanout_schema::unix_millis() / 1000
}

/// Unpadded base64url, as every part of a JWT is encoded.
pub fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT to be: its header, its claims and the HMAC it will be signed with.
#[derive(Debug, Clone)]
pub struct TokenBuilder {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    hmac: Hmac,
}

impl TokenBuilder {
    /// A good token for `user`, as a partner mints it (and `fanout token` does).
    pub fn new(user: &str) -> Self {
        let now = unix_seconds();
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let claims = json!({
            "uniqueId": user,
            "jti": fanout_app::tools::random_hex(16),
            "iat": now,
            "exp": now + 3600,
        });
        Self {
            header: object(header),
            claims: object(claims),
            hmac: Hmac::Hs256,
        }
    }

    /// Sets claim `name` to `value` (of any JSON type).
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    /// Sets the time claim `name` (`exp`, `iat`, `nbf`) to now plus `seconds`.
    pub fn claim_from_now(self, name: &str, seconds: i64) -> Self {
        self.claim(name, unix_seconds() + seconds)
    }

    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// The `scope` claim of a stream subscription's token.
    pub fn stream(self) -> Self {
        self.claim("scope", "stream")
    }

    /// The `partner` claim.
    pub fn partner(self, partner: &str) -> Self {
        self.claim("partner", partner)
    }

    /// Sets header field `name` to `value`; `alg` this way changes the header only, not
    /// the HMAC the token is signed with.
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.to_owned(), value.into());
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// The key id in the header.
    pub fn kid(self, kid: &str) -> Self {
        self.header("kid", kid)
    }

    /// Signs with `hmac` and names it as the header's `alg`.
    pub fn hmac(mut self, hmac: Hmac) -> Self {
        self.hmac = hmac;
        self.header("alg", hmac.name())
    }

    /// The encoded payload part.
    pub fn payload(&self) -> String {
        base64url(Value::Object(self.claims.clone()).to_string().as_bytes())
    }

    /// `header.payload`, what the signature covers.
    fn signing_input(&self) -> String {
        let header = base64url(Value::Object(self.header.clone()).to_string().as_bytes());
        format!("{header}.{}", self.payload())
    }

    /// The token, signed with `secret`.
    pub fn sign(&self, secret: &str) -> String {
        let input = self.signing_input();
        let signature = self.hmac.sign(secret, input.as_bytes());
        format!("{input}.{}", base64url(&signature))
    }

    /// The token with `signature` as its signature part, whatever the header says.
    pub fn signed_with(&self, signature: &[u8]) -> String {
        format!("{}.{}", self.signing_input(), base64url(signature))
    }

    /// The token with an empty signature part (as `alg: none` has it).
    pub fn unsigned(&self) -> String {
        self.signed_with(&[])
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("built from an object literal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edge's own verification accepts the default token and sees every change.
    #[test]
    fn a_built_token_verifies_at_the_edge_as_built() {
        let secret = "builder-secret-0123456789";
        let mut config = fanout_edge::EdgeConfig::default();
        config.partners.insert(
            "acme".to_owned(),
            fanout_edge::PartnerConfig {
                secrets: vec![fanout_edge::SecretConfig {
                    kid: Some("k1".to_owned()),
                    secret: secret.to_owned(),
                }],
                ..fanout_edge::PartnerConfig::default()
            },
        );
        let auth = fanout_edge::auth::Authenticator::new(
            &config,
            &config.merged_secrets(&fanout_edge::SecretsFile::new()),
        );
        let good = || TokenBuilder::new("jane").kid("k1").partner("acme");
        let user = auth.authenticate(Some("acme"), Some(&good().sign(secret)));
        assert_eq!(user.unwrap().user, "jane");
        for (token, reason) in [
            (
                good().hmac(Hmac::Hs512).sign(secret),
                "unsupported_algorithm",
            ),
            (good().claim_from_now("exp", -600).sign(secret), "expired"),
            (good().without_claim("jti").sign(secret), "invalid_claims"),
            (
                good().sign("another-secret-0123456789"),
                "invalid_signature",
            ),
        ] {
            let error = auth.authenticate(Some("acme"), Some(&token)).unwrap_err();
            assert_eq!(error.reason(), reason, "{token}");
        }
    }
}
