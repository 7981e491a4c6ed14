//! `toolhost stdio`: one MCP session over stdin/stdout, for a local agent that starts toolhost
//! itself. Only MCP messages go to stdout; logs go to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rmcp::ServiceExt;

use crate::config::Settings;
use crate::mcp::McpHandler;

pub fn run(settings: Settings, workspace: Option<PathBuf>) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (app, ready) = super::start_app(&settings)?;
        let session = match &workspace {
            Some(dir) => app
                .sessions
                .open_at(dir, settings.app.inline_images)
                .with_context(|| format!("cannot use {} as the workspace", dir.display()))?,
            None => app.sessions.open(settings.app.inline_images),
        };
        let shown = workspace.as_ref().map_or_else(
            || format!("a new one under {}", settings.app.workspaces_dir.display()),
            |dir| dir.display().to_string(),
        );
        tracing::info!("toolhost {} serving MCP on stdio; workspace {shown}", env!("CARGO_PKG_VERSION"));
        let handler = McpHandler::new(app.clone(), session);
        let running = handler.serve(rmcp::transport::stdio()).await.context("the MCP client did not initialize")?;
        let service = tokio::spawn(async move { running.waiting().await });
        tokio::select! {
            ended = service => {
                ended.context("the stdio session panicked")?.context("the stdio session failed")?;
            }
            Ok(Err(e)) = ready => {
                eprintln!("error: the Python runtime could not be prepared: {e:#}");
                return Ok(ExitCode::from(2));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
