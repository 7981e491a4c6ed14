//! `toolhost serve`: the MCP server over HTTP until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::server::{Server, install_metrics, shutdown_signal};

pub fn run(settings: Settings) -> Result<ExitCode> {
    settings.server.check_exposure()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        install_metrics()?;
        let listener = TcpListener::bind(settings.server.listen).await.with_context(|| {
            format!("cannot listen on {}; is another server using it? (--listen)", settings.server.listen)
        })?;
        let (app, ready) = super::start_app(&settings)?;
        let address = listener.local_addr()?;
        let auth = match (&settings.server.oauth, settings.server.tokens.is_empty()) {
            (Some(oauth), true) => format!("OAuth access tokens from {} required", oauth.issuer),
            (Some(oauth), false) => format!("bearer tokens or OAuth access tokens from {} required", oauth.issuer),
            (None, false) => "bearer tokens required".to_string(),
            (None, true) => "no authentication".to_string(),
        };
        tracing::info!(
            "toolhost {} listening on http://{address}: streamable HTTP at /mcp, legacy SSE at /sse; {auth}",
            env!("CARGO_PKG_VERSION"),
        );
        let (failed_tx, failed) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            if let Ok(Err(e)) = ready.await {
                let _ = failed_tx.send(format!("{e:#}"));
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<String>>();
        tokio::spawn(async move {
            let why = tokio::select! {
                () = shutdown_signal() => None,
                Ok(error) = failed => Some(error),
            };
            let _ = stop_tx.send(why);
        });
        let (why_tx, why_rx) = tokio::sync::oneshot::channel::<Option<String>>();
        let stop = async move {
            let why = stop_rx.await.unwrap_or(None);
            let _ = why_tx.send(why);
        };
        Server::new(app, settings.server.clone()).serve(listener, stop).await?;
        match why_rx.await.unwrap_or(None) {
            None => {
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
            Some(error) => {
                eprintln!("error: the Python runtime could not be prepared: {error}");
                Ok(ExitCode::from(2))
            }
        }
    })
}
