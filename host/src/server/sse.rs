//! The legacy HTTP+SSE transport (MCP 2024-11-05), which the Mistral SDK's `MCPClientSSE` and
//! older clients speak and rmcp no longer ships: `GET /sse` opens a session and streams an
//! `endpoint` event, then one `message` event per server message; `POST
//! /messages?sessionId=...` feeds one client message in. The session ends when its stream
//! drops (the client went away) or the server shuts down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use rmcp::ServiceExt;
use rmcp::model::ClientJsonRpcMessage;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, PollSender};

use super::owners::{Owners, Refusal};
use crate::app::App;
use crate::mcp::{McpHandler, asks_for_inline_images};
use crate::principal::Principal;

/// Messages buffered per direction per session.
const CHANNEL: usize = 64;

/// The open legacy sessions: each id with the sender that feeds its handler.
#[derive(Clone)]
pub struct Legacy {
    app: Arc<App>,
    open: Arc<Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>>,
    shutdown: CancellationToken,
    /// Who owns each session (only its owner may post to it), counted against the caps.
    owners: Owners,
}

impl Legacy {
    pub fn new(app: Arc<App>, shutdown: CancellationToken, owners: Owners) -> Legacy {
        Legacy { app, open: Arc::default(), shutdown, owners }
    }

    /// The sender of `principal`'s session `id`; `None` for another principal's, as for none.
    fn sender(&self, id: &str, principal: &Principal) -> Option<mpsc::Sender<ClientJsonRpcMessage>> {
        if !self.owners.post_to_legacy(id, principal) {
            return None;
        }
        self.open.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }
}

/// Removes its session from the open ones when the stream holding it is dropped, which ends
/// the handler's input and so the session.
struct Closer {
    id: String,
    open: Arc<Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>>,
    owners: Owners,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        self.owners.forget_legacy(&self.id);
        tracing::debug!(session = %self.id, "legacy SSE stream closed");
    }
}

/// `GET /sse`: a new session and its event stream.
pub async fn open(
    State(legacy): State<Legacy>,
    principal: Option<Extension<Principal>>,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    let owner = principal.map_or_else(Principal::anonymous, |Extension(p)| p);
    legacy.owners.admit(&owner).await.map_err(Refusal::into_response)?;
    let inline = uri.query().is_some_and(asks_for_inline_images);
    let session = legacy.app.sessions.open(inline);
    session.bind(owner.clone());
    let id = session.id.clone();
    let (to_server, from_client) = mpsc::channel::<ClientJsonRpcMessage>(CHANNEL);
    let (to_client, from_server) = mpsc::channel(CHANNEL);
    let stop = legacy.shutdown.child_token();
    legacy.owners.record_legacy(&id, owner, stop.clone());
    legacy.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), to_server);

    let handler = McpHandler::legacy(legacy.app.clone(), session);
    let session_id = id.clone();
    let stream_stop = stop.clone();
    tokio::spawn(async move {
        let transport = (PollSender::new(to_client), ReceiverStream::new(from_client));
        match handler.serve_with_ct(transport, stop).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => tracing::debug!(session = %session_id, "legacy SSE session ended before initialization: {e}"),
        }
    });

    let closer = Closer { id: id.clone(), open: legacy.open.clone(), owners: legacy.owners.clone() };
    let endpoint = Event::default().event("endpoint").data(format!("/messages?sessionId={id}"));
    let messages = ReceiverStream::new(from_server).map(move |message| {
        let _held_for_the_stream = &closer;
        let data = serde_json::to_string(&message).unwrap_or_else(|e| {
            tracing::error!("cannot serialize a server message: {e}");
            String::from("{}")
        });
        Ok(Event::default().event("message").data(data))
    });
    let stream =
        futures::stream::once(async move { Ok(endpoint) }).chain(messages).take_until(stream_stop.cancelled_owned());
    tracing::debug!(session = %id, "legacy SSE stream opened");
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(super::SSE_KEEP_ALIVE)))
}

/// `POST /messages?sessionId=...`: one JSON-RPC message for a session's handler. The answer
/// comes on the session's event stream; this only says whether the message was taken.
pub async fn message(
    State(legacy): State<Legacy>,
    principal: Option<Extension<Principal>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let principal = principal.map_or_else(Principal::anonymous, |Extension(p)| p);
    let Some(id) = query.get("sessionId") else {
        return (StatusCode::BAD_REQUEST, "missing the sessionId query parameter (from the stream's endpoint event)")
            .into_response();
    };
    let Some(sender) = legacy.sender(id, &principal) else {
        return (StatusCode::NOT_FOUND, "unknown or closed session; open a new stream with GET /sse").into_response();
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return json_rpc_error(-32700, format!("Parse error: the body is not JSON ({e})")),
    };
    let message: ClientJsonRpcMessage = match serde_json::from_value(value) {
        Ok(message) => message,
        Err(e) => return json_rpc_error(-32600, format!("Invalid Request: not a JSON-RPC 2.0 message of MCP ({e})")),
    };
    match sender.send(message).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => (StatusCode::GONE, "the session has ended; open a new stream with GET /sse").into_response(),
    }
}

fn json_rpc_error(code: i64, message: String) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
