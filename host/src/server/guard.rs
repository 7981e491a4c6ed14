//! The guard in front of every MCP endpoint: the Host header must name this server (DNS
//! rebinding), a browser's Origin must be one we accept, the bearer token must be a static token
//! (compared in constant time) or a valid OAuth access token, and the body must fit the cap.
//! Each refusal says why and what to do.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::oauth::{Rejection, Resource};
use crate::config::ServerSettings;
use crate::principal::Principal;

/// Host names accepted on any port without configuration.
const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

#[derive(Clone)]
pub struct Policy(Arc<Rules>);

struct Rules {
    /// Accepted Host values: a bare name matches any port, `name:port` only that port.
    hosts: Vec<String>,
    /// The port we listen on: a loopback Origin must name it (another port is another site).
    port: u16,
    origins: Vec<String>,
    tokens: Vec<Vec<u8>>,
    /// OAuth, when an issuer is configured.
    oauth: Option<Arc<Resource>>,
    max_body_bytes: usize,
}

impl Policy {
    pub fn new(settings: &ServerSettings, oauth: Option<Arc<Resource>>) -> Policy {
        let mut hosts: Vec<String> = LOOPBACK_NAMES.iter().map(|h| h.to_string()).collect();
        hosts.extend(settings.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()));
        if !settings.listen.ip().is_unspecified() {
            hosts.push(settings.listen.ip().to_string());
        }
        Policy(Arc::new(Rules {
            hosts,
            port: settings.listen.port(),
            origins: settings.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
            tokens: settings.tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
            oauth,
            max_body_bytes: settings.max_body_bytes,
        }))
    }
}

/// Checks a request; one that passes carries its `Principal` in its extensions.
pub async fn check(State(policy): State<Policy>, mut request: Request, next: Next) -> Response {
    let rules = &policy.0;
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    if authority(&host).is_none() {
        return refuse(StatusCode::BAD_REQUEST, format!("the Host header {host:?} is malformed"));
    }
    if !host_allowed(&rules.hosts, &host) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("the Host header {host:?} is not allowed; start toolhost with --allowed-host {}", name_of(&host)),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
        if !origin_allowed(rules, &origin) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("the Origin {origin:?} is not allowed; start toolhost with --allowed-origin {origin}"),
            );
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|token| token.trim().to_string());
    let principal = match authenticate(rules, bearer.as_deref(), request.uri().path()).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal,
    };
    let headers = request.headers();
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|h| h.to_str().ok()).and_then(|h| h.parse::<usize>().ok());
    if let Some(length) = length
        && length > rules.max_body_bytes
    {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body has {length} bytes, more than the {} MiB limit (--max-body-mb); send large files in parts",
                rules.max_body_bytes >> 20
            ),
        );
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The principal the bearer token speaks for: a static token, else an OAuth access token.
async fn authenticate(rules: &Rules, bearer: Option<&str>, path: &str) -> Result<Principal, Response> {
    if rules.tokens.is_empty() && rules.oauth.is_none() {
        return Ok(Principal::anonymous());
    }
    let oauth = rules.oauth.as_deref();
    let Some(token) = bearer else {
        return Err(unauthorized(oauth, path, None, "missing bearer token: send `Authorization: Bearer <token>`"));
    };
    if token_matches(&rules.tokens, token.as_bytes()) {
        return Ok(Principal::token(token.as_bytes()));
    }
    let Some(resource) = oauth else {
        return Err(unauthorized(
            None,
            path,
            Some(&Rejection::Malformed("not a configured token".into())),
            "invalid bearer token",
        ));
    };
    match resource.authenticate(token).await {
        Ok(principal) => Ok(principal),
        Err(Rejection::Unavailable(why)) => {
            let mut response =
                refuse(StatusCode::SERVICE_UNAVAILABLE, format!("cannot check the access token now: {why}"));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(super::oauth::RETRY_AFTER_S));
            Err(response)
        }
        Err(rejection) => {
            let status =
                if matches!(rejection, Rejection::Scope(_)) { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
            let message = rejection.to_string();
            let mut response = refuse(status, message);
            set_challenge(&mut response, resource.challenge(path, Some(&rejection)));
            Err(response)
        }
    }
}

/// Compares against every token, each in constant time, without stopping at the first match.
fn token_matches(tokens: &[Vec<u8>], presented: &[u8]) -> bool {
    tokens.iter().fold(false, |found, token| found | bool::from(token.as_slice().ct_eq(presented)))
}

fn host_allowed(allowed: &[String], host: &str) -> bool {
    let Some((name, _)) = authority(host) else { return false };
    allowed.iter().any(|entry| entry == host || entry == name)
}

/// A `Host` value (or an Origin's authority) split into its name (IPv6 without brackets) and
/// port; `None` when it is malformed (`[::1]evil.example`, a bare IPv6 address, odd bytes).
fn authority(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        match after {
            "" => (name, None),
            _ => (name, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let valid_name = !name.is_empty()
        && (host.starts_with('[')
            || name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    let port = match port {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => Some(port.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    valid_name.then_some((name, port))
}

/// The host name of a `Host` value, for messages.
fn name_of(host: &str) -> &str {
    authority(host).map_or(host, |(name, _)| name)
}

/// An Origin is accepted when it is configured exactly, or is `http(s)://` an allowed host; a
/// loopback name counts only on our own port (another port on this machine is another site).
fn origin_allowed(rules: &Rules, origin: &str) -> bool {
    if rules.origins.iter().any(|o| o == origin) {
        return true;
    }
    let Some(("http" | "https", host)) = origin.split_once("://") else { return false };
    let Some((name, port)) = authority(host) else { return false };
    if LOOPBACK_NAMES.contains(&name) {
        return port == Some(rules.port);
    }
    host_allowed(&rules.hosts, host)
}

fn refuse(status: StatusCode, message: String) -> Response {
    tracing::info!(status = status.as_u16(), "refused: {message}");
    (status, message).into_response()
}

/// 401 with the challenge: OAuth's (where to find the resource metadata) or plain `Bearer`.
fn unauthorized(oauth: Option<&Resource>, path: &str, rejection: Option<&Rejection>, message: &str) -> Response {
    let challenge = match (oauth, rejection) {
        (Some(resource), _) => resource.challenge(path, rejection),
        (None, Some(_)) => "Bearer realm=\"toolhost\", error=\"invalid_token\"".to_string(),
        (None, None) => "Bearer realm=\"toolhost\"".to_string(),
    };
    let mut response = refuse(StatusCode::UNAUTHORIZED, message.to_string());
    set_challenge(&mut response, challenge);
    response
}

fn set_challenge(response: &mut Response, challenge: String) {
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(extra: &[&str]) -> Vec<String> {
        LOOPBACK_NAMES.iter().chain(extra).map(|h| h.to_string()).collect()
    }

    #[test]
    fn hosts_match_with_or_without_port() {
        let allowed = hosts(&["toolhost.internal", "proxy.example:8443"]);
        for ok in
            ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000", "toolhost.internal:80", "proxy.example:8443"]
        {
            assert!(host_allowed(&allowed, ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8000",
            "proxy.example:9000",
            "localhost.evil.example",
            "",
            "[::1]evil.example",
            "[::1]:80evil",
            "localhost:",
            "localhost:80:80",
            "::1",
            "local host",
        ] {
            assert!(!host_allowed(&allowed, refused), "{refused}");
        }
    }

    #[test]
    fn origins_follow_the_allowed_hosts_or_the_list() {
        let rules = Rules {
            hosts: hosts(&["toolhost.internal"]),
            port: 8000,
            origins: vec!["https://app.example".into()],
            tokens: vec![],
            oauth: None,
            max_body_bytes: 1,
        };
        assert!(origin_allowed(&rules, "http://localhost:8000"));
        assert!(origin_allowed(&rules, "http://[::1]:8000"));
        assert!(!origin_allowed(&rules, "http://localhost:6274"), "another port on this machine is another site");
        assert!(!origin_allowed(&rules, "http://localhost"), "no port is port 80, not ours");
        assert!(origin_allowed(&rules, "https://toolhost.internal"));
        assert!(origin_allowed(&rules, "https://app.example"));
        assert!(!origin_allowed(&rules, "https://app.example:444"));
        assert!(!origin_allowed(&rules, "https://evil.example"));
        assert!(!origin_allowed(&rules, "null"));
    }

    #[test]
    fn tokens_compare_whole() {
        let tokens = vec![b"alpha-token".to_vec(), b"beta".to_vec()];
        assert!(token_matches(&tokens, b"beta"));
        assert!(token_matches(&tokens, b"alpha-token"));
        assert!(!token_matches(&tokens, b"alpha"));
        assert!(!token_matches(&tokens, b""));
    }
}
