//! `write_file`: writes a whole workspace file atomically, text or base64.

use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Hints, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, object_schema, parse};
use crate::workspace;

pub struct WriteFile {
    definition: ToolDefinition,
}

#[derive(Deserialize)]
struct Args {
    path: String,
    content: String,
    encoding: Option<String>,
}

impl WriteFile {
    pub fn new() -> Self {
        WriteFile {
            definition: ToolDefinition {
                name: "write_file".into(),
                title: "Write a workspace file".into(),
                description: "Write a file into the workspace (/workspace), replacing it if it exists \
                              and making its folders. The write is atomic: readers see the old file or the new \
                              one, never a part. Give binary content as base64 with encoding \"base64\". Code run \
                              by code_interpreter sees the file at /workspace/<path>."
                    .into(),
                input_schema: object_schema(
                    json!({
                        "path": {"type": "string", "description": "The file, relative to the workspace; /workspace/... also works."},
                        "content": {"type": "string", "description": "The whole content."},
                        "encoding": {"type": "string", "enum": ["utf-8", "base64"], "default": "utf-8", "description": "How content is encoded."},
                    }),
                    &["path", "content"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "size": {"type": "integer"}, "uri": {"type": "string"}},
                    "required": ["path", "size", "uri"],
                })),
                hints: Hints { read_only: false, destructive: true, idempotent: true, open_world: false },
                workspace: super::Access::Write,
            },
        }
    }
}

#[async_trait]
impl Tool for WriteFile {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let args: Args = parse(args)?;
        let bytes = match args.encoding.as_deref().unwrap_or("utf-8") {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(args.content.as_bytes())
                .map_err(|e| ToolError::InvalidArguments(format!("`content`: not valid base64 ({e})")))?,
            _ => args.content.into_bytes(),
        };
        let path = workspace::display(&workspace::resolve(&args.path)?);
        let size = ctx.workspace()?.files().write(&path, &bytes)?;
        let uri = ctx.uri(&path);
        Ok(ToolOutput {
            text: format!("wrote {size} bytes to {path} ({uri})"),
            structured: Some(json!({"path": path, "size": size, "uri": uri})),
            changed_workspace: true,
            ..ToolOutput::default()
        })
    }
}
