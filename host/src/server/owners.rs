//! Who owns each session, on both HTTP transports: the principal that opened it. A request
//! naming a streamable HTTP session (`Mcp-Session-Id`) of another principal gets 404, as if
//! there were no such session, whatever its method (POST, the GET stream, DELETE); the legacy
//! transport checks its `sessionId` the same way (`server/sse.rs`). Opening a session is held
//! to two caps: sessions per principal and in all; one more gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::principal::Principal;

const SESSION_HEADER: &str = "mcp-session-id";
/// What a refused client is told to wait before trying again.
const RETRY_AFTER_S: u64 = 30;

#[derive(Clone)]
pub struct Owners {
    inner: Arc<Inner>,
}

struct Inner {
    streamable: Mutex<HashMap<String, Principal>>,
    legacy: Mutex<HashMap<String, Principal>>,
    /// rmcp's sessions: an owner whose session ended there is forgotten.
    manager: Arc<LocalSessionManager>,
    max_sessions: usize,
    max_per_principal: usize,
}

/// Why a session was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyInAll(usize),
    TooManyForPrincipal(usize),
}

impl Refusal {
    pub fn into_response(self) -> Response {
        let message = match self {
            Refusal::TooManyInAll(cap) => {
                format!("the server has {cap} sessions open, its limit (--max-sessions); retry later")
            }
            Refusal::TooManyForPrincipal(cap) => format!(
                "this client already has {cap} sessions open, its limit (--max-sessions-per-principal); \
                 close one (DELETE /mcp, or end its /sse stream) or retry later"
            ),
        };
        tracing::info!("refused a new session: {message}");
        let mut response = (StatusCode::TOO_MANY_REQUESTS, message).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER_S.into());
        response
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Owners {
    pub fn new(manager: Arc<LocalSessionManager>, max_sessions: usize, max_per_principal: usize) -> Owners {
        Owners {
            inner: Arc::new(Inner {
                streamable: Mutex::default(),
                legacy: Mutex::default(),
                manager,
                max_sessions,
                max_per_principal,
            }),
        }
    }

    /// Whether `principal` may open one more session.
    pub async fn admit(&self, principal: &Principal) -> Result<(), Refusal> {
        self.forget_closed().await;
        let streamable = lock(&self.inner.streamable);
        let legacy = lock(&self.inner.legacy);
        let all = streamable.len() + legacy.len();
        if all >= self.inner.max_sessions {
            return Err(Refusal::TooManyInAll(self.inner.max_sessions));
        }
        let mine = streamable.values().chain(legacy.values()).filter(|owner| *owner == principal).count();
        if mine >= self.inner.max_per_principal {
            return Err(Refusal::TooManyForPrincipal(self.inner.max_per_principal));
        }
        Ok(())
    }

    /// Opens a legacy session's record; `forget_legacy` closes it.
    pub fn record_legacy(&self, id: &str, principal: Principal) {
        lock(&self.inner.legacy).insert(id.to_string(), principal);
    }

    /// Whether `principal` opened the legacy session `id` (false for one that is closed).
    pub fn owns_legacy(&self, id: &str, principal: &Principal) -> bool {
        lock(&self.inner.legacy).get(id) == Some(principal)
    }

    pub fn forget_legacy(&self, id: &str) {
        lock(&self.inner.legacy).remove(id);
    }

    fn owner(&self, id: &str) -> Option<Principal> {
        lock(&self.inner.streamable).get(id).cloned()
    }

    fn record(&self, id: String, principal: Principal) {
        lock(&self.inner.streamable).insert(id, principal);
    }

    /// Forgets the streamable sessions rmcp has dropped (closed, or idle past the timeout).
    async fn forget_closed(&self) {
        let live: std::collections::HashSet<String> =
            self.inner.manager.sessions.read().await.keys().map(|k| k.to_string()).collect();
        lock(&self.inner.streamable).retain(|id, _| live.contains(id));
    }
}

/// The middleware in front of `/mcp` (behind the guard, which sets the principal).
pub async fn bind(State(owners): State<Owners>, request: Request, next: Next) -> Response {
    let principal = request.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous);
    let named = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    match &named {
        Some(id) if owners.owner(id).is_some_and(|owner| owner != principal) => {
            tracing::info!(principal = %principal, "refused: a request named another principal's session");
            return (StatusCode::NOT_FOUND, "no such session for this client; start a new one with initialize")
                .into_response();
        }
        // A POST without a session opens one (initialize).
        None if request.method() == Method::POST => {
            if let Err(refused) = owners.admit(&principal).await {
                return refused.into_response();
            }
        }
        _ => {}
    }
    let response = next.run(request).await;
    if named.is_none()
        && let Some(id) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok())
    {
        owners.record(id.to_string(), principal);
    }
    response
}
