//! Tools: one file per built-in tool and the organisation's own (`org`), behind the `Tool`
//! trait, gathered in a `Registry` that validates every call's arguments against the tool's
//! JSON Schema (draft 2020-12) before it runs. Tools speak in `ToolOutput` and `ToolError`;
//! turning those into MCP results happens in `mcp`, into guest answers in `code_mode`.

mod calculate_sum;
pub mod catalog;
mod code_interpreter;
pub mod code_mode;
mod delete_file;
mod list_files;
pub mod org;
mod read_file;
mod write_file;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::sandbox::{self, Limits, ReadOnlyRoot, Readiness, Sandbox, SandboxError};
use crate::sessions::Session;
use crate::workspace::WorkspaceError;
use crate::workspaces::{HandleError, Space};

pub use catalog::Catalog;
pub use code_interpreter::CodeInterpreter;

/// A tool's public description: what `tools/list` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub title: String,
    /// Written for a model: what the tool does, what it sees, its limits.
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub hints: Hints,
    /// What the tool does with a workspace; one that uses one takes the `workspace` argument.
    pub workspace: Access,
}

/// What a tool does with a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: it takes no `workspace` argument.
    None,
    /// It reads files: it takes `workspace` and returns the handle it used.
    Read,
    /// It may write: the same, and it runs alone on its workspace (the writer's lock).
    Write,
}

/// MCP tool annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl Hints {
    /// The annotations as MCP names them, each with its value (code mode's `list`; `tools/list`
    /// gets them through rmcp's typed `ToolAnnotations`).
    pub fn annotations(&self) -> [(&'static str, bool); 4] {
        [
            ("readOnlyHint", self.read_only),
            ("destructiveHint", self.destructive),
            ("idempotentHint", self.idempotent),
            ("openWorldHint", self.open_world),
        ]
    }
}

/// An image a result may carry inline (only where the client accepts non-text content).
#[derive(Debug, Clone)]
pub struct Image {
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

/// Whether a file of this MIME type may be sent as image content (what MCP clients display).
pub fn is_inline_image(mime_type: &str) -> bool {
    matches!(mime_type, "image/png" | "image/jpeg" | "image/gif" | "image/webp")
}

/// What a tool returns when it ran (even if what it ran failed, e.g. the guest's exception).
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    /// The text the model reads.
    pub text: String,
    /// The machine-readable result, matching the tool's output schema.
    pub structured: Option<Value>,
    /// Images, sent only where rich content is enabled.
    pub images: Vec<Image>,
    /// The call failed (the guest raised, hit a limit, ...): `isError: true`.
    pub is_error: bool,
    /// How the guest's run ended, for tools that report a sandbox outcome.
    pub status: Option<sandbox::Status>,
    /// The call created, changed or deleted workspace files.
    pub changed_workspace: bool,
}

/// Why a tool did not run, or could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The arguments do not match the schema; the message names each field and what was
    /// expected.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// A path outside the workspace, a quota, a missing file: the model can correct itself.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The sandbox is at capacity; retrying later works.
    #[error(transparent)]
    Busy(#[from] sandbox::Busy),
    /// The runtime is still being prepared (first start), or could not be.
    #[error(transparent)]
    NotReady(#[from] sandbox::NotReady),
    /// The `workspace` handle cannot be used (malformed, unknown, expired, another's), the
    /// principal has too many, or another call is writing it.
    #[error(transparent)]
    Handle(HandleError),
    /// The tool ran and failed: its own error, a crash, a limit.
    #[error("{}", .0.message)]
    Failed(Failure),
    /// Our own fault: logged with its cause, shown to the client as an internal error.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<HandleError> for ToolError {
    fn from(error: HandleError) -> Self {
        match error {
            HandleError::Workspace(WorkspaceError::Io { path, source }) => {
                ToolError::Internal(anyhow::Error::new(source).context(format!("the workspace at {path}")))
            }
            other => ToolError::Handle(other),
        }
    }
}

impl From<SandboxError> for ToolError {
    fn from(error: SandboxError) -> Self {
        match error {
            SandboxError::Busy(busy) => ToolError::Busy(busy),
            other => ToolError::Internal(other.into()),
        }
    }
}

/// How a tool failed: a message for whoever called it, and detail (a traceback, the tool's
/// stderr) that MCP clients see but guest code never does.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The tool reported an error, crashed, or broke its contract.
    Error,
    /// The tool hit its deadline.
    Timeout,
}

/// Reports progress of a long call to the client that asked for it.
#[async_trait]
pub trait ProgressSink: Send + Sync {
    async fn progress(&self, progress: f64, total: Option<f64>, message: String);
}

/// What every tool call may use, whoever makes it: the sandbox once it is ready, the
/// configured read-only roots, the tools on offer (for code mode) and code mode's budget.
pub struct Services {
    pub sandbox: Readiness,
    pub roots: Vec<ReadOnlyRoot>,
    pub catalog: Arc<Catalog>,
    /// Tool requests one run of guest code may make.
    pub code_mode_max_calls: u32,
}

/// How long a call waits for a runtime that is still being prepared.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

impl Services {
    /// The sandbox, waiting up to a minute while a first start prepares it.
    pub async fn sandbox(&self) -> Result<Sandbox, ToolError> {
        Ok(self.sandbox.wait(PATIENCE).await?)
    }
}

/// What one tool call may use.
pub struct ToolContext<'a> {
    pub services: &'a Arc<Services>,
    pub session: &'a Arc<Session>,
    /// Cancelled when the client cancels the request.
    pub cancel: CancellationToken,
    /// Set when the client asked for progress notifications.
    pub progress: Option<&'a dyn ProgressSink>,
    /// Whether the client accepts image content.
    pub inline_images: bool,
    /// Set when another call waits for this one (code mode): the tool must be done by then.
    pub deadline: Option<Instant>,
    /// Code mode: the workspace of the run making this call, whose writer's lock that run holds;
    /// a call that names no workspace uses it.
    pub caller: Option<Arc<Space>>,
    /// The workspace this call works in: set by `Registry::call` for a tool that uses one.
    pub space: Option<Arc<Space>>,
}

impl ToolContext<'_> {
    /// The workspace this call works in.
    pub fn workspace(&self) -> Result<&Arc<Space>, ToolError> {
        self.space
            .as_ref()
            .ok_or_else(|| ToolError::Internal(anyhow::anyhow!("no workspace was resolved for this tool")))
    }

    /// The resource URI of a file of this call's workspace: `file:///workspace/<path>` in the
    /// session's default workspace, `file:///workspaces/<handle>/<path>` in any other.
    pub fn uri(&self, path: &str) -> String {
        match &self.space {
            Some(space) if !self.session.is_default(space) => {
                crate::workspace::uri_under(&format!("workspaces/{}", space.handle()), path)
            }
            _ => crate::workspace::uri(path),
        }
    }

    /// The workspace a call names (`workspace`), else its caller's (code mode), else the
    /// session's default.
    fn resolve(&self, named: Option<&str>) -> Result<Arc<Space>, HandleError> {
        match (named, &self.caller) {
            (None, Some(caller)) => Ok(caller.clone()),
            (named, _) => self.session.workspace(named),
        }
    }

    /// This context, working in `space`.
    fn working_in(&self, space: Arc<Space>) -> ToolContext<'_> {
        ToolContext {
            services: self.services,
            session: self.session,
            cancel: self.cancel.clone(),
            progress: self.progress,
            inline_images: self.inline_images,
            deadline: self.deadline,
            caller: self.caller.clone(),
            space: Some(space),
        }
    }
}

#[async_trait]
pub trait Tool: Send + Sync {
    fn definition(&self) -> &ToolDefinition;

    /// Runs the tool with arguments already validated against its input schema.
    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError>;

    /// Whether guest code may call this org tool by default (code mode; the built-ins but the
    /// interpreter always may); the configuration may say otherwise.
    fn callable_from_code(&self) -> bool {
        false
    }
}

/// A tool with its compiled input validator.
struct Entry {
    tool: Arc<dyn Tool>,
    /// As published: with the `workspace` argument and result field where the tool uses one.
    definition: ToolDefinition,
    validator: jsonschema::Validator,
}

/// Every tool the server offers, by name, and those guest code may call.
#[derive(Default)]
pub struct Registry {
    tools: BTreeMap<String, Entry>,
    callable_from_code: Vec<String>,
}

/// The built-in tool that runs code; never callable from code itself.
pub const CODE_INTERPRETER: &str = "code_interpreter";

impl Registry {
    /// The built-in tools, described with the configured limits, with the default code-mode
    /// tools.
    pub fn builtin(limits: &Limits) -> Registry {
        Registry::build(limits, Vec::new(), None, true)
    }

    /// The built-in tools and the organisation's (`org`; one whose name is taken is skipped
    /// with a warning). Guest code may call `code_mode` tools, or, when that is `None`, the
    /// built-ins that only touch the workspace and the org tools that say they are safe.
    pub fn build(
        limits: &Limits,
        org: Vec<Arc<dyn Tool>>,
        code_mode: Option<&[String]>,
        python_state: bool,
    ) -> Registry {
        let mut registry = Registry::default();
        let builtin: Vec<Arc<dyn Tool>> = vec![
            Arc::new(calculate_sum::CalculateSum::new()),
            Arc::new(list_files::ListFiles::new()),
            Arc::new(read_file::ReadFile::new()),
            Arc::new(write_file::WriteFile::new()),
            Arc::new(delete_file::DeleteFile::new()),
        ];
        // By default, code may call every built-in but the interpreter: they touch only the
        // caller's workspaces.
        let mut by_default: Vec<String> = builtin.iter().map(|t| t.definition().name.clone()).collect();
        for tool in builtin {
            registry.add(tool).expect("built-in tool schemas compile");
        }
        for tool in org {
            let name = tool.definition().name.clone();
            if name == CODE_INTERPRETER || registry.tools.contains_key(&name) {
                tracing::warn!(tool = %name, "skipping the org tool {name:?}: a built-in tool has that name");
                continue;
            }
            if let Err(e) = registry.add(tool) {
                tracing::warn!(tool = %name, "skipping the org tool {name:?}: {e:#}");
            }
        }
        registry.callable_from_code = match code_mode {
            Some(names) => {
                for unknown in names.iter().filter(|n| !registry.tools.contains_key(*n)) {
                    tracing::warn!("code mode names {unknown:?}, but no such tool is loaded");
                }
                names.iter().filter(|n| registry.tools.contains_key(*n)).cloned().collect()
            }
            None => {
                by_default.extend(
                    registry.tools.values().filter(|e| e.tool.callable_from_code()).map(|e| e.definition.name.clone()),
                );
                by_default.sort();
                by_default.dedup();
                by_default
            }
        };
        let interpreter = CodeInterpreter::new(limits, &registry.callable_from_code, python_state);
        registry.add(Arc::new(interpreter)).expect("the code interpreter's schema compiles");
        registry
    }

    /// Adds a tool; its input schema must compile and its name must be new.
    fn add(&mut self, tool: Arc<dyn Tool>) -> anyhow::Result<()> {
        let definition = tool.definition();
        if self.tools.contains_key(&definition.name) {
            anyhow::bail!("a tool named {:?} already exists", definition.name);
        }
        if definition.workspace != Access::None && definition.input_schema["properties"].get(WORKSPACE).is_some() {
            anyhow::bail!(
                "its input schema has a `{WORKSPACE}` property; that name is the workspace handle every file tool takes"
            );
        }
        let definition = with_workspace_fields(definition.clone());
        let validator = jsonschema::draft202012::new(&definition.input_schema)
            .map_err(|e| anyhow::anyhow!("the input schema of {} does not compile: {e}", definition.name))?;
        self.tools.insert(definition.name.clone(), Entry { tool, definition, validator });
        Ok(())
    }

    pub fn definitions(&self) -> impl Iterator<Item = &ToolDefinition> {
        self.tools.values().map(|e| &e.definition)
    }

    pub fn get(&self, name: &str) -> Option<&ToolDefinition> {
        self.tools.get(name).map(|e| &e.definition)
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    /// The tools guest code may call, by name.
    pub fn callable_from_code(&self) -> &[String] {
        &self.callable_from_code
    }

    /// Validates the arguments, then runs the tool. `None` when no tool has that name.
    pub async fn call(
        &self,
        name: &str,
        args: Option<Map<String, Value>>,
        ctx: &ToolContext<'_>,
    ) -> Option<Result<ToolOutput, ToolError>> {
        let entry = self.tools.get(name)?;
        let args = args.unwrap_or_default();
        let instance = Value::Object(args);
        if let Err(message) = check(&entry.validator, &instance) {
            return Some(Err(ToolError::InvalidArguments(message)));
        }
        let Value::Object(mut args) = instance else { unreachable!("built from a map") };
        let access = entry.definition.workspace;
        if access == Access::None {
            return Some(entry.tool.call(args, ctx).await);
        }
        let named = args.remove(WORKSPACE).and_then(|v| v.as_str().map(str::to_string));
        Some(in_workspace(entry.tool.as_ref(), access, named.as_deref(), args, ctx).await)
    }
}

/// The argument and result field that names a workspace.
pub const WORKSPACE: &str = "workspace";

/// Runs a tool that uses a workspace: resolves it, holds its writer's lock if the tool may write
/// (unless this call's caller holds it already), and names the handle in the result: the
/// `workspace` field of `structuredContent` and the text's last line.
async fn in_workspace(
    tool: &dyn Tool,
    access: Access,
    named: Option<&str>,
    args: Map<String, Value>,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutput, ToolError> {
    let space = ctx.resolve(named)?;
    let held_by_caller = ctx.caller.as_ref().is_some_and(|caller| caller.handle() == space.handle());
    let _writing = match access {
        Access::Write if !held_by_caller => Some(space.write_lock().await.map_err(HandleError::from)?),
        _ => None,
    };
    let handle = space.handle().to_string();
    let mut output = tool.call(args, &ctx.working_in(space)).await?;
    if let Some(Value::Object(structured)) = &mut output.structured {
        structured.insert(WORKSPACE.into(), Value::String(handle.clone()));
    }
    if !output.text.is_empty() && !output.text.ends_with('\n') {
        output.text.push('\n');
    }
    output.text.push_str(&format!("{WORKSPACE}: {handle}"));
    Ok(output)
}

/// A tool's schemas with the `workspace` argument and result field (for tools that use one).
fn with_workspace_fields(mut definition: ToolDefinition) -> ToolDefinition {
    if definition.workspace == Access::None {
        return definition;
    }
    let argument = serde_json::json!({
        "type": "string",
        "description": "The workspace to work in: a handle (ws_...) from an earlier result's `workspace`. \
                        Omit it for this session's workspace (or, without a session, a new one); pass it \
                        to continue with the same files in a later call, session or conversation.",
    });
    if let Some(Value::Object(properties)) = definition.input_schema.get_mut("properties") {
        properties.insert(WORKSPACE.into(), argument);
    }
    if let Some(Value::Object(properties)) = definition.output_schema.as_mut().and_then(|s| s.get_mut("properties")) {
        properties.insert(
            WORKSPACE.into(),
            serde_json::json!({"type": "string", "description": "The handle of the workspace the call used."}),
        );
    }
    definition
}

/// Every way `instance` fails `validator`, each naming the field (`a`, `rows/3/name`) or
/// `arguments` for the whole object, what was wrong with the value, and the schema rule it
/// broke, joined with "; ".
pub fn check(validator: &jsonschema::Validator, instance: &Value) -> Result<(), String> {
    let problems: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| {
            let path = error.instance_path().to_string();
            let field =
                if path.is_empty() { "arguments".to_string() } else { format!("`{}`", path.trim_start_matches('/')) };
            format!("{field}: {error} (schema {})", error.schema_path())
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Deserializes validated arguments into a tool's own type.
pub fn parse<T: serde::de::DeserializeOwned>(args: Map<String, Value>) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(args)).map_err(|e| ToolError::InvalidArguments(e.to_string()))
}

/// `{"type": "object", "properties": ..., "required": [...], "additionalProperties": false}`.
pub fn object_schema(properties: Value, required: &[&str]) -> Value {
    serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builtin_tool_is_registered_with_a_valid_schema() {
        let registry = Registry::builtin(&Limits::default());
        assert_eq!(
            registry.names(),
            ["calculate_sum", "code_interpreter", "delete_file", "list_files", "read_file", "write_file"]
        );
        for definition in registry.definitions() {
            assert!(definition.description.len() > 40, "{} needs a real description", definition.name);
            if let Some(output) = &definition.output_schema {
                jsonschema::draft202012::new(output).expect("output schema compiles");
            }
        }
    }

    #[test]
    fn argument_errors_name_the_field_and_what_was_expected() {
        let schema = object_schema(json!({"a": {"type": "number"}, "b": {"type": "number"}}), &["a", "b"]);
        let validator = jsonschema::draft202012::new(&schema).expect("schema");
        let message = check(&validator, &json!({"a": "three"})).expect_err("invalid");
        assert!(message.contains("`a`: \"three\" is not of type \"number\" (schema /properties/a/type)"), "{message}");
        assert!(message.contains("arguments: \"b\" is a required property"), "{message}");
        let extra = check(&validator, &json!({"a": 1, "b": 2, "c": 3})).expect_err("extra");
        assert!(extra.contains("'c' was unexpected") || extra.contains("\"c\""), "{extra}");
    }
}
