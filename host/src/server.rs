//! The HTTP server: one axum router with streamable HTTP at `/mcp` (rmcp's service), the legacy
//! HTTP+SSE transport at `/sse` + `/messages`, `/healthz`, `/readyz`, `/metrics` and, with OAuth,
//! the `/.well-known` metadata. The MCP endpoints sit behind one guard (Host, Origin, bearer
//! token or OAuth access token, body size). Shutdown stops
//! accepting, lets running calls finish within the grace period, then closes the sessions (their
//! workspaces stay, for their handles).

mod guard;
mod health;
mod oauth;
mod owners;
mod sse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use health::install_metrics;

use crate::app::App;
use crate::config::ServerSettings;
use crate::mcp::McpHandler;

/// Keep-alive comments on long-lived SSE streams.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The server's parts that live as long as it does.
#[derive(Clone)]
pub struct Server {
    app: Arc<App>,
    settings: ServerSettings,
    /// Cancelled to close every session (SSE streams, streamable HTTP sessions).
    sessions: CancellationToken,
}

impl Server {
    pub fn new(app: Arc<App>, settings: ServerSettings) -> Server {
        Server { app, settings, sessions: CancellationToken::new() }
    }

    /// The URL clients reach us at: configured, else our listen address.
    pub fn public_url(&self) -> String {
        self.settings.public_url.clone().unwrap_or_else(|| format!("http://{}", self.settings.listen))
    }

    /// The router: MCP endpoints behind the guard; health, metrics and OAuth metadata open.
    pub fn router(&self) -> Router {
        let app = self.app.clone();
        let oauth = self
            .settings
            .oauth
            .as_ref()
            .map(|settings| oauth::Resource::start(settings, &self.public_url(), self.sessions.child_token()));
        let mut session_manager = LocalSessionManager::default();
        session_manager.session_config.keep_alive = Some(self.settings.session_idle_timeout);
        let config = StreamableHttpServerConfig::default()
            .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
            // The guard below checks Host and Origin for every MCP endpoint, this one included.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(self.settings.max_body_bytes)
            .with_cancellation_token(self.sessions.child_token());
        let session_manager = Arc::new(session_manager);
        let owners = owners::Owners::new(
            session_manager.clone(),
            self.settings.max_sessions,
            self.settings.max_sessions_per_principal,
            self.settings.unused_session_timeout,
        );
        let streamable = StreamableHttpService::new(
            move || Ok(McpHandler::new(app.clone(), app.sessions.open(false))),
            session_manager,
            config,
        );
        let legacy = sse::Legacy::new(self.app.clone(), self.sessions.clone(), owners.clone());
        let streamable = Router::new()
            .route_service("/mcp", streamable)
            .layer(axum::middleware::from_fn(session_end_answers_ok))
            .layer(axum::middleware::from_fn_with_state(owners, owners::bind));
        let mcp = Router::new()
            .merge(streamable)
            .route("/sse", get(sse::open))
            .route("/messages", post(sse::message))
            .with_state(legacy)
            .layer(axum::middleware::from_fn_with_state(
                guard::Policy::new(&self.settings, oauth.clone()),
                guard::check,
            ));
        let metadata = oauth.as_ref().map(oauth::Resource::routes).unwrap_or_default();
        Router::new()
            .merge(mcp)
            .merge(metadata)
            .merge(health::router(self.app.clone(), oauth))
            .layer(axum::extract::DefaultBodyLimit::max(self.settings.max_body_bytes))
    }

    /// Serves on `listener` until `stop` completes, then shuts down gracefully.
    pub async fn serve(self, listener: TcpListener, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        // The port actually bound (`--listen 127.0.0.1:0` picks one): Origin checks name it.
        let mut bound = self.clone();
        bound.settings.listen = listener.local_addr().context("the listener has no address")?;
        let router = bound.router();
        let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
        let server = self.clone();
        tokio::spawn(async move {
            stop.await;
            server.app.set_shutting_down();
            let _ = stopping_tx.send(());
            server.drain().await;
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopping.await;
            })
            .await
            .context("the HTTP server failed")?;
        Ok(())
    }

    /// Waits for running calls to finish (at most the grace period), then closes the sessions.
    async fn drain(&self) {
        let grace = self.settings.shutdown_grace;
        let until = Instant::now() + grace;
        tracing::info!("shutting down: no new connections; running calls have {grace:?} to finish");
        while self.app.running_calls() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.app.running_calls();
        if left > 0 {
            tracing::warn!("{left} calls still running after the grace period; stopping them");
        }
        self.sessions.cancel();
    }
}

/// rmcp answers a session's `DELETE /mcp` with 202; the spec's clients expect 200 (the Python
/// SDK prints "Session termination failed: 202" otherwise).
async fn session_end_answers_ok(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let delete = request.method() == http::Method::DELETE;
    let mut response = next.run(request).await;
    if delete && response.status() == http::StatusCode::ACCEPTED {
        *response.status_mut() = http::StatusCode::OK;
    }
    response
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
