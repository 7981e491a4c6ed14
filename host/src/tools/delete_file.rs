//! `delete_file`: removes a workspace file, a link, or an empty folder.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Hints, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, object_schema, parse};
use crate::workspace;

pub struct DeleteFile {
    definition: ToolDefinition,
}

#[derive(Deserialize)]
struct Args {
    path: String,
}

impl DeleteFile {
    pub fn new() -> Self {
        DeleteFile {
            definition: ToolDefinition {
                name: "delete_file".into(),
                title: "Delete a workspace file".into(),
                description: "Delete a file, a link, or an empty folder from the workspace (/workspace).".into(),
                input_schema: object_schema(
                    json!({"path": {"type": "string", "description": "What to delete, relative to the workspace; /workspace/... also works."}}),
                    &["path"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "deleted": {"type": "string", "enum": ["file", "dir", "symlink"]}},
                    "required": ["path", "deleted"],
                })),
                hints: Hints { read_only: false, destructive: true, idempotent: false, open_world: false },
                workspace: super::Access::Write,
            },
        }
    }
}

#[async_trait]
impl Tool for DeleteFile {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let args: Args = parse(args)?;
        let path = workspace::display(&workspace::resolve(&args.path)?);
        let kind = ctx.workspace()?.files().delete(&path)?.as_str();
        Ok(ToolOutput {
            text: format!("deleted the {kind} {path}"),
            structured: Some(json!({"path": path, "deleted": kind})),
            changed_workspace: true,
            ..ToolOutput::default()
        })
    }
}
