//! Tools: one file per tool behind the `Tool` trait, gathered in a `Registry` that validates
//! every call's arguments against the tool's JSON Schema (draft 2020-12) before it runs. Tools
//! speak in `ToolOutput` and `ToolError`; turning those into MCP results happens in `mcp` only.

mod calculate_sum;
mod code_interpreter;
mod delete_file;
mod list_files;
mod read_file;
mod write_file;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::sandbox::Limits;
use crate::sessions::Session;
use crate::workspace::WorkspaceError;

pub use code_interpreter::CodeInterpreter;

/// A tool's public description: what `tools/list` shows.
#[derive(Debug, Clone)]
pub struct ToolDefinition {
    pub name: String,
    pub title: String,
    /// Written for a model: what the tool does, what it sees, its limits.
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub hints: Hints,
}

/// MCP tool annotations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

/// An image a result may carry inline (only where the client accepts non-text content).
#[derive(Debug, Clone)]
pub struct Image {
    pub mime_type: String,
    pub bytes: Vec<u8>,
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
    #[error("{0}")]
    Busy(String),
    /// The runtime is still being prepared (first start).
    #[error("{0}")]
    NotReady(String),
    /// Our own fault: logged with its cause, shown to the client as an internal error.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Reports progress of a long call to the client that asked for it.
#[async_trait]
pub trait ProgressSink: Send + Sync {
    async fn progress(&self, progress: f64, total: Option<f64>, message: String);
}

/// What a tool call may use.
pub struct ToolContext<'a> {
    pub app: &'a App,
    pub session: &'a Session,
    /// Cancelled when the client cancels the request.
    pub cancel: CancellationToken,
    /// Set when the client asked for progress notifications.
    pub progress: Option<&'a dyn ProgressSink>,
    /// Whether the client accepts image content.
    pub inline_images: bool,
}

#[async_trait]
pub trait Tool: Send + Sync {
    fn definition(&self) -> &ToolDefinition;

    /// Runs the tool with arguments already validated against its input schema.
    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError>;
}

/// A tool with its compiled input validator.
struct Entry {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
}

/// Every tool the server offers, by name.
#[derive(Default)]
pub struct Registry {
    tools: BTreeMap<String, Entry>,
}

impl Registry {
    /// The built-in tools, described with the configured limits.
    pub fn builtin(limits: &Limits) -> Registry {
        let mut registry = Registry::default();
        let tools: Vec<Arc<dyn Tool>> = vec![
            Arc::new(CodeInterpreter::new(limits)),
            Arc::new(calculate_sum::CalculateSum::new()),
            Arc::new(list_files::ListFiles::new()),
            Arc::new(read_file::ReadFile::new()),
            Arc::new(write_file::WriteFile::new()),
            Arc::new(delete_file::DeleteFile::new()),
        ];
        for tool in tools {
            registry.add(tool).expect("built-in tool schemas compile");
        }
        registry
    }

    /// Adds a tool; its input schema must compile and its name must be new.
    pub fn add(&mut self, tool: Arc<dyn Tool>) -> anyhow::Result<()> {
        let definition = tool.definition();
        if self.tools.contains_key(&definition.name) {
            anyhow::bail!("a tool named {:?} already exists", definition.name);
        }
        let validator = jsonschema::draft202012::new(&definition.input_schema)
            .map_err(|e| anyhow::anyhow!("the input schema of {} does not compile: {e}", definition.name))?;
        self.tools.insert(definition.name.clone(), Entry { tool, validator });
        Ok(())
    }

    pub fn definitions(&self) -> impl Iterator<Item = &ToolDefinition> {
        self.tools.values().map(|e| e.tool.definition())
    }

    pub fn get(&self, name: &str) -> Option<&ToolDefinition> {
        self.tools.get(name).map(|e| e.tool.definition())
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
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
        let Value::Object(args) = instance else { unreachable!("built from a map") };
        Some(entry.tool.call(args, ctx).await)
    }
}

/// Every way `instance` fails `validator`, each naming the field (`/timeout_s`) or `arguments`
/// for the whole object, joined with "; ".
pub fn check(validator: &jsonschema::Validator, instance: &Value) -> Result<(), String> {
    let problems: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| {
            let path = error.instance_path().to_string();
            let field =
                if path.is_empty() { "arguments".to_string() } else { format!("`{}`", path.trim_start_matches('/')) };
            format!("{field}: {error}")
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
        assert!(message.contains("`a`: \"three\" is not of type \"number\""), "{message}");
        assert!(message.contains("arguments: \"b\" is a required property"), "{message}");
        let extra = check(&validator, &json!({"a": 1, "b": 2, "c": 3})).expect_err("extra");
        assert!(extra.contains("'c' was unexpected") || extra.contains("\"c\""), "{extra}");
    }
}
