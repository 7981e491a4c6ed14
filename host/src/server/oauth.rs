//! OAuth 2.1 protected resource (MCP authorization): the issuer's metadata and keys, read at
//! start and kept fresh; RFC 9728 resource metadata; the RFC 8414 mirror for clients that look
//! only at this server; and the check that turns a bearer JWT into a principal.

mod issuer;
mod keys;
mod token;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use token::Rejection;

use crate::config::OAuthSettings;
use crate::principal::Principal;

/// Seconds a client is told to wait (`Retry-After`) while the issuer cannot be read.
pub const RETRY_AFTER_S: u64 = 5;
/// How often the issuer's metadata is read again once loaded.
const METADATA_REFRESH: Duration = Duration::from_secs(3600);
/// The longest wait between two attempts while the issuer cannot be read.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The resource server: who issues the tokens we accept and what they must say.
pub struct Resource {
    issuer: String,
    audience: String,
    scopes: Vec<String>,
    /// The URL clients reach us at, without a trailing `/`.
    public_url: String,
    client: reqwest::Client,
    /// The issuer's metadata, or why it is missing.
    metadata: RwLock<Result<Arc<issuer::Metadata>, String>>,
    keys: keys::Keys,
}

impl Resource {
    /// Starts reading the issuer's metadata and keys in the background (until `stop`).
    pub fn start(settings: &OAuthSettings, public_url: &str, stop: CancellationToken) -> Arc<Resource> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("toolhost/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let resource = Arc::new(Resource {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone().unwrap_or_else(|| format!("{public_url}/mcp")),
            scopes: settings.scopes.clone(),
            public_url: public_url.to_string(),
            keys: keys::Keys::new(client.clone()),
            client,
            metadata: RwLock::new(Err("the OAuth issuer's metadata has not been read yet".into())),
        });
        tokio::spawn(resource.clone().keep_loaded(stop));
        resource
    }

    /// Reads the metadata and keys, retrying with backoff until they load, then refreshes them
    /// hourly. Failures are logged once per change of reason.
    async fn keep_loaded(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        let mut last_failure = String::new();
        let mut announced = false;
        loop {
            let wait = match self.load().await {
                Ok(keys) => {
                    if !announced || !last_failure.is_empty() {
                        tracing::info!(issuer = %self.issuer, keys, "OAuth issuer loaded; accepting its access tokens");
                    }
                    (announced, backoff) = (true, Duration::from_secs(1));
                    last_failure.clear();
                    METADATA_REFRESH
                }
                Err(why) => {
                    if why != last_failure {
                        tracing::warn!("{why}; retrying (see /readyz)");
                        last_failure = why.clone();
                    }
                    // A refresh that fails keeps what was loaded; only a first load is missing.
                    let mut metadata = self.metadata.write().unwrap_or_else(|p| p.into_inner());
                    if metadata.is_err() {
                        *metadata = Err(why);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn load(&self) -> Result<usize, String> {
        let metadata = issuer::discover(&self.client, &self.issuer).await?;
        let keys = self
            .keys
            .load(&metadata.jwks_uri)
            .await
            .map_err(|why| format!("cannot read the OAuth issuer's keys: {why}"))?;
        *self.metadata.write().unwrap_or_else(|p| p.into_inner()) = Ok(Arc::new(metadata));
        Ok(keys)
    }

    /// Why tokens cannot be checked yet, or `None` when they can.
    pub async fn unready(&self) -> Option<String> {
        if let Err(why) = &*self.metadata.read().unwrap_or_else(|p| p.into_inner()) {
            return Some(why.clone());
        }
        (!self.keys.loaded().await).then(|| "the OAuth issuer's keys have not been read yet".into())
    }

    /// The principal a bearer JWT speaks for, or why it is refused.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, Rejection> {
        let header = token::header(bearer)?;
        let key = self.keys.find(header.kid.as_deref()).await.map_err(|e| match e {
            keys::KeyError::Unknown(kid) => Rejection::UnknownKey(kid),
            keys::KeyError::Unnamed => Rejection::Unnamed,
            keys::KeyError::Unavailable(why) => Rejection::Unavailable(why),
        })?;
        let expect = token::Expect { issuer: &self.issuer, audience: &self.audience, scopes: &self.scopes };
        let subject = token::verify(bearer, &header, &key, &expect)?;
        Ok(Principal::oauth(&subject.issuer, &subject.subject))
    }

    /// The `WWW-Authenticate` value for a refusal at `path` (`/mcp`, `/sse`, `/messages`).
    pub fn challenge(&self, path: &str, refusal: Option<&Rejection>) -> String {
        let mut value = format!("Bearer resource_metadata=\"{}\"", self.metadata_url(path));
        if !self.scopes.is_empty() {
            value.push_str(&format!(", scope=\"{}\"", self.scopes.join(" ")));
        }
        if let Some(refusal) = refusal {
            let error = if matches!(refusal, Rejection::Scope(_)) { "insufficient_scope" } else { "invalid_token" };
            let description = quotable(&refusal.to_string());
            value.push_str(&format!(", error=\"{error}\", error_description=\"{description}\""));
        }
        value
    }

    /// The resource metadata URL for the endpoint at `path` (RFC 9728 path insertion).
    fn metadata_url(&self, path: &str) -> String {
        let endpoint = if path.starts_with("/mcp") { "/mcp" } else { "/sse" };
        format!("{}/.well-known/oauth-protected-resource{endpoint}", self.public_url)
    }

    /// The public documents: resource metadata (root, `/mcp`, `/sse`) and the issuer's mirror.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/oauth-protected-resource", get(|s: State<Arc<Resource>>| resource_metadata(s, "")))
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                get(|s: State<Arc<Resource>>| resource_metadata(s, "/mcp")),
            )
            .route(
                "/.well-known/oauth-protected-resource/sse",
                get(|s: State<Arc<Resource>>| resource_metadata(s, "/sse")),
            )
            .route("/.well-known/oauth-authorization-server", get(issuer_mirror))
            .with_state(self.clone())
    }
}

/// Text fit for a quoted header parameter: printable ASCII without `"` or `\\` (a refusal may
/// quote a token's `kid`, which anyone can write).
fn quotable(text: &str) -> String {
    text.chars().map(|c| if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' { c } else { '\'' }).collect()
}

/// RFC 9728: what this resource is and who issues its tokens.
async fn resource_metadata(State(resource): State<Arc<Resource>>, endpoint: &'static str) -> Response {
    let mut document = json!({
        "resource": format!("{}{endpoint}", resource.public_url),
        "authorization_servers": [resource.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "toolhost",
    });
    if !resource.scopes.is_empty() {
        document["scopes_supported"] = json!(resource.scopes);
    }
    public(axum::Json(document).into_response())
}

/// The issuer's own metadata, as it served it (for clients that read only this server's
/// `/.well-known/oauth-authorization-server`, such as the Mistral SDK).
async fn issuer_mirror(State(resource): State<Arc<Resource>>) -> Response {
    let metadata = resource.metadata.read().unwrap_or_else(|p| p.into_inner()).clone();
    let response = match metadata {
        Ok(metadata) => ([(header::CONTENT_TYPE, "application/json")], metadata.document.clone()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S))],
            axum::Json(json!({"error": "temporarily_unavailable", "error_description": why})),
        )
            .into_response(),
    };
    public(response)
}

/// Metadata is public: any page may read it (browser-based MCP clients do).
fn public(mut response: Response) -> Response {
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_quoted_in_a_header_cannot_break_out_of_it() {
        let text = quotable("kid \"a\\b\r\nSet-Cookie: x\u{e9}");
        assert_eq!(text, "kid 'a'b''Set-Cookie: x'");
        assert!(HeaderValue::from_str(&format!("Bearer error_description=\"{text}\"")).is_ok());
    }
}
