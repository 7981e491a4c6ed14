//! Who owns each session, on both HTTP transports: the principal that opened it. A request
//! naming a streamable HTTP session (`Mcp-Session-Id`) of another principal gets 404, as if
//! there were no such session, whatever its method (POST, the GET stream, DELETE); the legacy
//! transport checks its `sessionId` the same way (`server/sse.rs`). Opening a session is held
//! to two caps: sessions per principal and in all; one more gets 429 with `Retry-After`. When a
//! cap would refuse, sessions that have sent nothing since their handshake for `unused_timeout`
//! are closed first to make room, so openings that are never used cannot hold the caps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio_util::sync::CancellationToken;

use crate::principal::Principal;

const SESSION_HEADER: &str = "mcp-session-id";
/// What a refused client is told to wait before trying again.
const RETRY_AFTER_S: u64 = 30;

#[derive(Clone)]
pub struct Owners {
    inner: Arc<Inner>,
}

struct Inner {
    streamable: Mutex<HashMap<String, Owned>>,
    legacy: Mutex<HashMap<String, Owned>>,
    /// rmcp's sessions: an owner whose session ended there is forgotten.
    manager: Arc<LocalSessionManager>,
    max_sessions: usize,
    max_per_principal: usize,
    unused_timeout: Duration,
}

/// One open session's record.
struct Owned {
    principal: Principal,
    opened: Instant,
    /// Messages posted to it after it was opened.
    posts: u32,
    /// How many of those the handshake takes: `initialized` alone on streamable HTTP (where
    /// `initialize` opens the session), `initialize` and `initialized` on the legacy transport.
    handshake: u32,
    /// Ends a legacy session's stream.
    stop: Option<CancellationToken>,
}

impl Owned {
    fn new(principal: Principal, stop: Option<CancellationToken>) -> Owned {
        let handshake = if stop.is_some() { 2 } else { 1 };
        Owned { principal, opened: Instant::now(), posts: 0, handshake, stop }
    }

    /// Nothing sent since the handshake, for longer than `timeout`.
    fn unused(&self, timeout: Duration) -> bool {
        self.posts <= self.handshake && self.opened.elapsed() >= timeout
    }
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
    pub fn new(
        manager: Arc<LocalSessionManager>,
        max_sessions: usize,
        max_per_principal: usize,
        unused_timeout: Duration,
    ) -> Owners {
        Owners {
            inner: Arc::new(Inner {
                streamable: Mutex::default(),
                legacy: Mutex::default(),
                manager,
                max_sessions,
                max_per_principal,
                unused_timeout,
            }),
        }
    }

    /// Whether `principal` may open one more session, closing unused ones to make room.
    pub async fn admit(&self, principal: &Principal) -> Result<(), Refusal> {
        self.forget_closed().await;
        if self.count(principal).is_ok() {
            return Ok(());
        }
        self.close_unused().await;
        self.count(principal)
    }

    fn count(&self, principal: &Principal) -> Result<(), Refusal> {
        let streamable = lock(&self.inner.streamable);
        let legacy = lock(&self.inner.legacy);
        let all = streamable.len() + legacy.len();
        if all >= self.inner.max_sessions {
            return Err(Refusal::TooManyInAll(self.inner.max_sessions));
        }
        let mine = streamable.values().chain(legacy.values()).filter(|owned| owned.principal == *principal).count();
        if mine >= self.inner.max_per_principal {
            return Err(Refusal::TooManyForPrincipal(self.inner.max_per_principal));
        }
        Ok(())
    }

    /// Opens a legacy session's record, with what ends its stream; `forget_legacy` closes it.
    pub fn record_legacy(&self, id: &str, principal: Principal, stop: CancellationToken) {
        lock(&self.inner.legacy).insert(id.to_string(), Owned::new(principal, Some(stop)));
    }

    /// Whether `principal` opened the legacy session `id` (false for one that is closed); a
    /// message to it counts as use.
    pub fn post_to_legacy(&self, id: &str, principal: &Principal) -> bool {
        let mut legacy = lock(&self.inner.legacy);
        match legacy.get_mut(id) {
            Some(owned) if owned.principal == *principal => {
                owned.posts = owned.posts.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    pub fn forget_legacy(&self, id: &str) {
        lock(&self.inner.legacy).remove(id);
    }

    /// The owner of streamable session `id`; a POST to it counts as use.
    fn owner(&self, id: &str, post: bool) -> Option<Principal> {
        let mut streamable = lock(&self.inner.streamable);
        let owned = streamable.get_mut(id)?;
        if post {
            owned.posts = owned.posts.saturating_add(1);
        }
        Some(owned.principal.clone())
    }

    fn record(&self, id: String, principal: Principal) {
        lock(&self.inner.streamable).insert(id, Owned::new(principal, None));
    }

    /// Forgets the streamable sessions rmcp has dropped (closed, or idle past the timeout).
    async fn forget_closed(&self) {
        let live: std::collections::HashSet<String> =
            self.inner.manager.sessions.read().await.keys().map(|k| k.to_string()).collect();
        lock(&self.inner.streamable).retain(|id, _| live.contains(id));
    }

    /// Closes the sessions that have sent nothing since their handshake for the timeout. Each
    /// record is judged once: the one decision both forgets it and closes it.
    async fn close_unused(&self) {
        let timeout = self.inner.unused_timeout;
        let mut unused = Vec::new();
        lock(&self.inner.streamable).retain(|id, owned| {
            let keep = !owned.unused(timeout);
            if !keep {
                unused.push(id.clone());
            }
            keep
        });
        for id in &unused {
            let _ = self.inner.manager.close_session(&Arc::from(id.as_str())).await;
        }
        let mut closed = unused.len();
        lock(&self.inner.legacy).retain(|_, owned| {
            let keep = !owned.unused(timeout);
            if !keep {
                closed += 1;
                if let Some(stop) = &owned.stop {
                    stop.cancel();
                }
            }
            keep
        });
        if closed > 0 {
            tracing::info!("closed {closed} sessions that sent nothing after their handshake");
        }
    }
}

/// The middleware in front of `/mcp` (behind the guard, which sets the principal).
pub async fn bind(State(owners): State<Owners>, request: Request, next: Next) -> Response {
    let principal = request.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous);
    let named = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let post = request.method() == Method::POST;
    match &named {
        Some(id) if owners.owner(id, post).is_some_and(|owner| owner != principal) => {
            tracing::info!(principal = %principal, "refused: a request named another principal's session");
            return (StatusCode::NOT_FOUND, "no such session for this client; start a new one with initialize")
                .into_response();
        }
        // A POST without a session opens one (initialize).
        None if post => {
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
