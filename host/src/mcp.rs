//! The MCP handler: rmcp's `ServerHandler` over the `App`. One handler per session, whatever
//! the transport. This is the one place where tool outcomes and errors become MCP results.

mod log;
mod prompts;
mod resources;
mod results;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, ServerNotification, SubscribeRequestParams, SubscriptionFilter, Tool,
    ToolAnnotations, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tracing::Instrument;

use crate::app::App;
use crate::sessions::Session;
use crate::tools::{ProgressSink, ToolContext, ToolDefinition};

/// What the server tells a client about itself in `initialize`.
const INSTRUCTIONS: &str = "toolhost runs Python in a fresh, isolated sandbox per call (code_interpreter) with \
numpy, pandas, matplotlib and more, on a workspace at /workspace that the file tools \
(list_files, read_file, write_file, delete_file) share. Variables do not persist between calls; files do. \
Every result names its workspace handle (ws_...): pass it as `workspace` to continue with the same files \
in a later call, session or conversation. Workspace files are also resources (file:///workspace/...).";

/// How often a session's tool-list watcher checks whether its session has ended.
const SESSION_CHECK: Duration = Duration::from_secs(10);

/// One session's MCP handler. Clones share the session.
#[derive(Clone)]
pub struct McpHandler {
    app: Arc<App>,
    session: Arc<Session>,
    /// What this client asked to hear (`logging/setLevel`): log messages at or above it; none
    /// until it asks.
    log: Arc<log::ClientLog>,
    /// The newest protocol offered: 2026-07-28, or 2025-11-25 on the legacy SSE transport,
    /// whose clients speak the session eras only (a discover probe there is refused at once).
    newest: ProtocolVersion,
}

impl McpHandler {
    pub fn new(app: Arc<App>, session: Arc<Session>) -> Self {
        McpHandler { app, session, log: Arc::default(), newest: ProtocolVersion::V_2026_07_28 }
    }

    /// A handler for the legacy HTTP+SSE transport: the session eras only.
    pub fn legacy(app: Arc<App>, session: Arc<Session>) -> Self {
        McpHandler { newest: ProtocolVersion::V_2025_11_25, ..McpHandler::new(app, session) }
    }

    /// Whether this request's client accepts image content: the operator enabled it, the
    /// session was opened with `?images=inline`, or this request's URL carries it.
    fn inline_images(&self, context: &RequestContext<RoleServer>) -> bool {
        self.app.inline_images
            || self.session.inline_images
            || context
                .extensions
                .get::<http::request::Parts>()
                .is_some_and(|parts| parts.uri.query().is_some_and(asks_for_inline_images))
    }

    /// Binds the session to the request's principal (set by the HTTP guard; none on stdio).
    fn bind(&self, context: &RequestContext<RoleServer>) {
        if let Some(principal) = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<crate::principal::Principal>())
        {
            self.session.bind(principal.clone());
        }
    }

    /// Runs one tool call: validated arguments, progress, cancellation, the result.
    async fn run_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, McpError> {
        let name = request.name.to_string();
        let started = Instant::now();
        self.bind(&context);
        let modern = context.protocol_version().is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
        // 2026-07-28 over HTTP: this handler serves this one request (stdio keeps its session).
        if modern && context.extensions.get::<http::request::Parts>().is_some() {
            self.session.serve_one_request();
        }
        let progress =
            context.meta.get_progress_token().map(|token| PeerProgress { peer: context.peer.clone(), token });
        let ctx = ToolContext {
            services: &self.app.services,
            session: &self.session,
            cancel: context.ct.clone(),
            progress: progress.as_ref().map(|p| p as &dyn ProgressSink),
            inline_images: self.inline_images(&context),
            deadline: None,
            caller: None,
            space: None,
        };
        let registry = self.app.catalog().current();
        let Some(result) = registry.call(&name, request.arguments, &ctx).await else {
            return Err(McpError::invalid_params(
                format!("unknown tool {name:?}; this server has: {}", registry.names().join(", ")),
                None,
            ));
        };
        // 2026-07-28 sends change notifications only on subscriptions/listen, never unasked.
        if !modern && result.as_ref().is_ok_and(|output| output.changed_workspace) {
            self.announce_workspace_change(&context.peer).await;
        }
        if let Some((level, message)) = log::notice(&name, results::CallStatus::of(&result)) {
            self.log.send(&context.peer, level, message).await;
        }
        results::to_call_tool_result(&name, result, started)
    }

    /// Tells this session's client the workspace changed: the resource list, and each
    /// subscribed resource. Sent before the tool's result, so that a client closing the session
    /// after the result never receives them mid-shutdown.
    async fn announce_workspace_change(&self, peer: &Peer<RoleServer>) {
        let _ = peer.notify_resource_list_changed().await;
        for uri in self.session.subscriptions() {
            let _ = peer.notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri)).await;
        }
    }
}

/// True when a URL query holds `images=inline`.
pub fn asks_for_inline_images(query: &str) -> bool {
    query.split('&').any(|pair| pair == "images=inline")
}

impl ServerHandler for McpHandler {
    #[allow(deprecated)] // MCP logging: rmcp marks it deprecated (SEP-2577); the 2025 protocols have it.
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_prompts()
            .enable_logging()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("toolhost", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    /// Every era up to `newest`: the session-less 2026-07-28 (workspaces by handle; a request is
    /// a session of its own) and the session eras before it.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&self.newest))
    }

    /// `subscriptions/listen` (2026-07-28): the tool list's changes. Resource changes belong to
    /// a workspace, which a session-less client names in each call, so they are not offered.
    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let tools = requested.tools_list_changed == Some(true);
        Some(if tools { SubscriptionFilter::builder().tools_list_changed().build() } else { SubscriptionFilter::new() })
    }

    /// Tells a listening client whenever the tool list changes, until it stops listening.
    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), McpError> {
        let mut changes = self.app.catalog().changes();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                () = subscription.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    let sent = subscription.sink().send(ServerNotification::ToolListChangedNotification(Default::default())).await;
                    if changed.is_err() || sent.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.app.catalog().current().definitions().map(to_mcp_tool).collect()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.app.catalog().current().get(name).map(to_mcp_tool)
    }

    /// From now until the session ends, tells the client whenever the tool list changes.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let catalog = self.app.catalog().clone();
        let mut changes = catalog.changes();
        changes.mark_unchanged();
        let peer = context.peer;
        let log = self.log.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() || peer.notify_tool_list_changed().await.is_err() {
                            return;
                        }
                        let tools = catalog.current().names().join(", ");
                        log.send(&peer, log::Level::Info, format!("the tools changed; now offered: {tools}")).await;
                    }
                    () = tokio::time::sleep(SESSION_CHECK) => {
                        if peer.is_transport_closed() {
                            return;
                        }
                    }
                }
            }
        });
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let span = tracing::info_span!("tool_call", tool = %request.name, session = %self.session.log_tag());
        self.run_tool(request, context).instrument(span).await.map(Into::into)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.bind(&context);
        resources::list(&self.app, &self.session, request.and_then(|r| r.cursor))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(resources::templates(&self.app))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.bind(&context);
        resources::read(&self.app, &self.session, &request.uri).map(Into::into)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        resources::check_subscription(&self.app, &request.uri)?;
        self.session.subscribe(request.uri);
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.session.unsubscribe(&request.uri);
        Ok(())
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.log.set(request.level);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(prompts::list()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        prompts::get(&request.name, request.arguments.as_ref()).map(Into::into)
    }
}

/// A tool's MCP description.
fn to_mcp_tool(definition: &ToolDefinition) -> Tool {
    let object = |value: &serde_json::Value| match value {
        serde_json::Value::Object(map) => Arc::new(map.clone()),
        _ => Arc::new(serde_json::Map::new()),
    };
    let mut tool = Tool::new(definition.name.clone(), definition.description.clone(), object(&definition.input_schema))
        .with_title(definition.title.clone())
        .with_annotations(
            ToolAnnotations::new()
                .read_only(definition.hints.read_only)
                .destructive(definition.hints.destructive)
                .idempotent(definition.hints.idempotent)
                .open_world(definition.hints.open_world),
        );
    if let Some(output) = &definition.output_schema {
        tool = tool.with_raw_output_schema(object(output));
    }
    tool
}

/// Progress notifications to the client that asked for them.
struct PeerProgress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
}

#[async_trait]
impl ProgressSink for PeerProgress {
    async fn progress(&self, progress: f64, total: Option<f64>, message: String) {
        let mut param = ProgressNotificationParam::new(self.token.clone(), progress).with_message(message);
        if let Some(total) = total {
            param = param.with_total(total);
        }
        let _ = self.peer.notify_progress(param).await;
    }
}
