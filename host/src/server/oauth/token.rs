//! Checks one JWT access token: an accepted algorithm (asymmetric only: never `none`, never an
//! HMAC keyed with a public key), the signature, exact `iss` and `aud`, `exp`/`nbf` within a
//! small leeway, a `sub`, and the required scopes. Each refusal says which check failed.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::keys::{ACCEPTED, Key};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: u64 = 30;

/// What a token must say.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub scopes: &'a [String],
}

/// Who a valid token speaks for.
#[derive(Debug, PartialEq)]
pub struct Subject {
    pub issuer: String,
    pub subject: String,
}

/// Why a token is refused; `Display` is the `error_description` sent back.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the bearer token is not a JWT access token ({0})")]
    Malformed(String),
    #[error("the token is signed with {0}, which is not accepted (accepted: RS*, PS*, ES256, ES384, EdDSA)")]
    Algorithm(String),
    #[error("the token is signed with a key the issuer does not publish (kid {0:?})")]
    UnknownKey(String),
    #[error("the token names no key (kid) and the issuer publishes several")]
    Unnamed,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired: get a new one")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued by another issuer (iss)")]
    Issuer,
    #[error("the token is for another audience (aud); this server accepts {0:?}")]
    Audience(String),
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    #[error("the token lacks the scopes {}", .0.join(" "))]
    Scope(Vec<String>),
    #[error("the issuer's keys cannot be read now ({0}); try again shortly")]
    Unavailable(String),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default)]
    scope: Option<Value>,
    /// Some issuers (Okta, Entra ID) send `scp`, as a list or a string.
    #[serde(default)]
    scp: Option<Value>,
}

/// The header, if the token is a JWT with an accepted algorithm.
pub fn header(token: &str) -> Result<Header, Rejection> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        // `none`, `HS*` spelled oddly, anything the crate does not know.
        ErrorKind::Json(_) => Rejection::Algorithm(raw_alg(token).unwrap_or_else(|| "an unknown algorithm".into())),
        _ => Rejection::Malformed(e.to_string()),
    })?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(Rejection::Algorithm(format!("{:?}", header.alg)));
    }
    Ok(header)
}

/// Verifies the token with `key` and checks its claims.
pub fn verify(token: &str, header: &Header, key: &Key, expect: &Expect) -> Result<Subject, Rejection> {
    if key.alg.is_some_and(|alg| alg != header.alg) {
        return Err(Rejection::Algorithm(format!("{:?} with a key published for {:?}", header.alg, key.alg)));
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_S;
    validation.validate_nbf = true;
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map_err(|e| match e.into_kind() {
            ErrorKind::InvalidSignature => Rejection::Signature,
            ErrorKind::ExpiredSignature => Rejection::Expired,
            ErrorKind::ImmatureSignature => Rejection::NotYetValid,
            ErrorKind::InvalidIssuer => Rejection::Issuer,
            ErrorKind::InvalidAudience => Rejection::Audience(expect.audience.to_string()),
            ErrorKind::MissingRequiredClaim(claim) => Rejection::MissingClaim(claim),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                Rejection::Algorithm(format!("{:?}", header.alg))
            }
            other => Rejection::Malformed(jsonwebtoken::errors::Error::from(other).to_string()),
        })?
        .claims;
    let granted: Vec<&str> = [&claims.scope, &claims.scp].into_iter().flatten().flat_map(scopes).collect();
    let missing: Vec<String> = expect.scopes.iter().filter(|s| !granted.contains(&s.as_str())).cloned().collect();
    if !missing.is_empty() {
        return Err(Rejection::Scope(missing));
    }
    Ok(Subject { issuer: claims.iss, subject: claims.sub })
}

/// `"a b"` or `["a", "b"]`.
fn scopes(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => s.split_whitespace().collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The `alg` a header names, read leniently for the refusal message.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let first = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first.trim_end_matches('=')).ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    let alg = header.get("alg")?.as_str()?;
    Some(alg.chars().take(20).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn unsigned_and_symmetric_tokens_are_refused_by_their_header() {
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"x"}"#));
        assert_eq!(header(&none).expect_err("none"), Rejection::Algorithm("none".into()));
        let hmac = format!("{}.{}.c2ln", b64(r#"{"alg":"HS256","kid":"k"}"#), b64(r#"{"sub":"x"}"#));
        assert_eq!(header(&hmac).expect_err("hmac"), Rejection::Algorithm("HS256".into()));
        assert!(matches!(header("not-a-jwt").expect_err("garbage"), Rejection::Malformed(_)));
        let rsa = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256","kid":"k"}"#), b64("{}"));
        assert_eq!(header(&rsa).expect("accepted").kid.as_deref(), Some("k"));
    }

    #[test]
    fn scopes_come_as_a_string_or_a_list() {
        assert_eq!(scopes(&serde_json::json!("a  b")), ["a", "b"]);
        assert_eq!(scopes(&serde_json::json!(["a", "b", 3])), ["a", "b"]);
        assert!(scopes(&serde_json::json!(7)).is_empty());
    }
}
