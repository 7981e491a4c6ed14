//! An rmcp client for the tests: connects over streamable HTTP or to a `toolhost stdio` child,
//! and counts the notifications it receives.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;

pub type Client = RunningService<RoleClient, Counting>;

/// Counts notifications by kind; a test awaits a count instead of polling for it.
#[derive(Clone, Default)]
pub struct Counting {
    pub progress: Counter,
    pub resource_list_changed: Counter,
    pub resource_updated: Counter,
    pub tool_list_changed: Counter,
}

/// A count that can be awaited.
#[derive(Clone, Default)]
pub struct Counter(Arc<tokio::sync::watch::Sender<usize>>);

impl Counter {
    fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Waits until the count reaches `n`, failing the test after `within`.
    pub async fn reached(&self, n: usize, within: std::time::Duration) {
        let mut count = self.0.subscribe();
        let waited = tokio::time::timeout(within, count.wait_for(|c| *c >= n)).await;
        assert!(waited.is_ok(), "the count stayed at {} of {n} for {within:?}", self.count());
    }
}

impl ClientHandler for Counting {
    async fn on_progress(&self, _params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.progress.bump();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.resource_list_changed.bump();
    }

    async fn on_resource_updated(
        &self,
        _params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.resource_updated.bump();
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tool_list_changed.bump();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("toolhost-tests", "0.0.0"))
    }
}

/// A client session over streamable HTTP at `<base>/mcp`.
pub async fn connect(base: &str, token: Option<&str>) -> Client {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"));
    if let Some(token) = token {
        config = config.auth_header(token.to_string());
    }
    Counting::default().serve(StreamableHttpClientTransport::from_config(config)).await.expect("the client connects")
}

/// Calls a tool with JSON arguments.
pub async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else { panic!("arguments must be an object") };
    client
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{name} failed at the protocol level: {e}"))
}

/// The text of a result's first content block.
/// A tool that used a workspace names it as its text's last line, `workspace: <handle>` (checked
/// here against `structuredContent.workspace`); this is the text before that line.
pub fn text(result: &CallToolResult) -> String {
    let full = result.content.first().and_then(|c| c.as_text()).map(|t| t.text.clone()).unwrap_or_default();
    match result.structured_content.as_ref().and_then(|s| s.get("workspace")).and_then(Value::as_str) {
        Some(handle) => {
            let last = format!("workspace: {handle}");
            assert!(full.ends_with(&last), "the text's last line must name the workspace {handle}: {full:?}");
            full[..full.len() - last.len()].to_string()
        }
        None => match full.rsplit_once('\n') {
            Some((body, last)) if last.starts_with("workspace: ws_") => format!("{body}\n"),
            _ => full,
        },
    }
}

/// The workspace handle a result names.
pub fn handle(result: &CallToolResult) -> String {
    let handle = structured(result)["workspace"].as_str().map(str::to_string);
    handle.unwrap_or_else(|| panic!("no workspace in {result:?}"))
}

/// The structured content, or `null`.
pub fn structured(result: &CallToolResult) -> Value {
    result.structured_content.clone().unwrap_or(Value::Null)
}

pub fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}
