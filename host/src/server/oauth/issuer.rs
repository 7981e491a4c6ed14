//! The identity provider's metadata: found at its well-known documents (OpenID Connect
//! discovery, then RFC 8414 with the path inserted, then appended), checked to name the issuer
//! exactly, and kept as served so `/.well-known/oauth-authorization-server` can mirror it.

use bytes::Bytes;
use serde::Deserialize;

/// Metadata documents larger than this are refused (they are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// What we use of the issuer's metadata, and the document itself.
#[derive(Debug)]
pub struct Metadata {
    /// The document, byte for byte as the issuer served it.
    pub document: Bytes,
    pub jwks_uri: String,
}

#[derive(Deserialize)]
struct Fields {
    issuer: String,
    jwks_uri: Option<String>,
}

/// Reads the issuer's metadata; the error says which URLs were tried and what went wrong.
pub async fn discover(client: &reqwest::Client, issuer: &str) -> Result<Metadata, String> {
    let mut failures = Vec::new();
    for url in candidates(issuer) {
        match fetch(client, &url).await {
            Ok(document) => return parse(issuer, &url, document),
            Err(why) => failures.push(format!("{url}: {why}")),
        }
    }
    Err(format!("cannot read the OAuth issuer's metadata ({})", failures.join("; ")))
}

/// Fetches a small JSON document (metadata or keys); the error is one line.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Bytes, String> {
    // `{:#}` names every cause ("error sending request: connection refused").
    let response = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return Err(format!("larger than {} KiB", MAX_DOCUMENT_BYTES >> 10));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("larger than {} KiB", MAX_DOCUMENT_BYTES >> 10));
    }
    Ok(body)
}

/// The well-known URLs for `issuer`, most common first.
fn candidates(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut urls = vec![format!("{trimmed}/.well-known/openid-configuration")];
    // RFC 8414: the well-known segment goes between the host and the issuer's path.
    if let Some((scheme, rest)) = trimmed.split_once("://")
        && let Some((host, path)) = rest.split_once('/')
    {
        urls.push(format!("{scheme}://{host}/.well-known/oauth-authorization-server/{path}"));
    }
    urls.push(format!("{trimmed}/.well-known/oauth-authorization-server"));
    urls
}

fn parse(issuer: &str, url: &str, document: Bytes) -> Result<Metadata, String> {
    let fields: Fields = serde_json::from_slice(&document).map_err(|e| format!("{url} is not issuer metadata: {e}"))?;
    if fields.issuer != issuer {
        return Err(format!(
            "{url} names the issuer {:?}, not {issuer:?}: set --oauth-issuer to exactly the `iss` its tokens carry",
            fields.issuer
        ));
    }
    let jwks_uri = fields.jwks_uri.ok_or_else(|| format!("{url} has no jwks_uri: the issuer publishes no keys"))?;
    secure_url(&jwks_uri).map_err(|why| format!("the issuer's jwks_uri {jwks_uri}: {why}"))?;
    Ok(Metadata { document, jwks_uri })
}

/// https, or http to this machine only: keys fetched in clear text could be replaced on the way.
pub fn secure_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let host = url.strip_prefix("http://").map(|rest| rest.split(['/', '?']).next().unwrap_or(rest));
    let loopback = host.is_some_and(|host| {
        let name = host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()));
        let name = name.map_or(host, |(name, _)| name);
        matches!(name, "localhost" | "127.0.0.1" | "[::1]")
    });
    if loopback { Ok(()) } else { Err("must be https (http is accepted only on this machine's loopback)".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_both_conventions() {
        assert_eq!(
            candidates("https://id.example/realms/acme"),
            [
                "https://id.example/realms/acme/.well-known/openid-configuration",
                "https://id.example/.well-known/oauth-authorization-server/realms/acme",
                "https://id.example/realms/acme/.well-known/oauth-authorization-server",
            ]
        );
        assert_eq!(
            candidates("https://tenant.auth0.example/"),
            [
                "https://tenant.auth0.example/.well-known/openid-configuration",
                "https://tenant.auth0.example/.well-known/oauth-authorization-server",
            ]
        );
    }

    #[test]
    fn metadata_must_name_the_issuer_exactly_and_publish_keys() {
        let doc = |body: &str| Bytes::from(body.to_string());
        let ok = parse(
            "https://id.example",
            "u",
            doc(r#"{"issuer":"https://id.example","jwks_uri":"https://id.example/k"}"#),
        );
        assert_eq!(ok.expect("metadata").jwks_uri, "https://id.example/k");
        let other = parse("https://id.example", "u", doc(r#"{"issuer":"https://id.example/","jwks_uri":"https://k"}"#));
        assert!(other.expect_err("trailing slash differs").contains("exactly"));
        let keyless = parse("https://id.example", "u", doc(r#"{"issuer":"https://id.example"}"#));
        assert!(keyless.expect_err("no keys").contains("jwks_uri"));
        let clear = parse(
            "https://id.example",
            "u",
            doc(r#"{"issuer":"https://id.example","jwks_uri":"http://id.example/k"}"#),
        );
        assert!(clear.expect_err("http").contains("https"));
    }

    #[test]
    fn clear_text_only_on_loopback() {
        for ok in ["https://id.example/k", "http://127.0.0.1:8080/k", "http://localhost/k", "http://[::1]:9/k"] {
            assert!(secure_url(ok).is_ok(), "{ok}");
        }
        for refused in ["http://id.example/k", "http://127.0.0.1.evil.example/k", "http://localhost.evil/k", "ftp://x"]
        {
            assert!(secure_url(refused).is_err(), "{refused}");
        }
    }
}
