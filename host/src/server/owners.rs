//! Who owns each streamable HTTP session: the principal whose `initialize` opened it. A request
//! naming a session (`Mcp-Session-Id`) of another principal gets 404, as if there were no such
//! session, whatever its method (POST, the GET stream, DELETE).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::principal::Principal;

const SESSION_HEADER: &str = "mcp-session-id";

#[derive(Clone)]
pub struct Owners {
    owners: Arc<Mutex<HashMap<String, Principal>>>,
    /// rmcp's sessions: an owner whose session ended there is forgotten.
    manager: Arc<LocalSessionManager>,
}

impl Owners {
    pub fn new(manager: Arc<LocalSessionManager>) -> Owners {
        Owners { owners: Arc::default(), manager }
    }

    fn owner(&self, id: &str) -> Option<Principal> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Records a new session's owner, forgetting the sessions rmcp has dropped (closed or idle).
    async fn record(&self, id: String, principal: Principal) {
        let live: Vec<String> = self.manager.sessions.read().await.keys().map(|k| k.to_string()).collect();
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.retain(|known, _| live.contains(known));
        owners.insert(id, principal);
    }
}

/// The middleware in front of `/mcp` (behind the guard, which sets the principal).
pub async fn bind(State(owners): State<Owners>, request: Request, next: Next) -> Response {
    let principal = request.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous);
    let named = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(id) = &named
        && owners.owner(id).is_some_and(|owner| owner != principal)
    {
        tracing::info!(principal = %principal, "refused: a request named another principal's session");
        return (StatusCode::NOT_FOUND, "no such session for this client; start a new one with initialize")
            .into_response();
    }
    let response = next.run(request).await;
    if named.is_none()
        && let Some(id) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok())
    {
        owners.record(id.to_string(), principal).await;
    }
    response
}
