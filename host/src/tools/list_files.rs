//! `list_files`: the entries of a workspace folder.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Hints, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, object_schema, parse};
use crate::workspace::{self, Kind};

pub struct ListFiles {
    definition: ToolDefinition,
}

#[derive(Deserialize)]
struct Args {
    path: Option<String>,
}

impl ListFiles {
    pub fn new() -> Self {
        ListFiles {
            definition: ToolDefinition {
                name: "list_files".into(),
                title: "List workspace files".into(),
                description: "List the files and folders in the workspace (/workspace, the folder \
                              code_interpreter runs in), or in one of its folders. Each entry has its name, \
                              path, type (file or dir), size in bytes and modification time."
                    .into(),
                input_schema: object_schema(
                    json!({"path": {"type": "string", "description": "A folder relative to the workspace (default: the workspace itself); /workspace/... also works."}}),
                    &[],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "entries": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "path": {"type": "string"},
                                    "type": {"type": "string", "enum": ["file", "dir", "symlink"]},
                                    "size": {"type": "integer"},
                                    "modified": {"type": "string"},
                                },
                                "required": ["name", "path", "type", "size", "modified"],
                            },
                        },
                    },
                    "required": ["path", "entries"],
                })),
                hints: Hints { read_only: true, destructive: false, idempotent: true, open_world: false },
                workspace: super::Access::Read,
            },
        }
    }
}

#[async_trait]
impl Tool for ListFiles {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let args: Args = parse(args)?;
        let path = args.path.unwrap_or_default();
        let folder = workspace::display(&workspace::resolve(&path)?);
        let entries = ctx.workspace()?.files().list(&path)?;
        let mut text = format!("/workspace/{folder}: {} entries\n", entries.len());
        let mut listed = Vec::new();
        for (path, entry) in &entries {
            let name = path.rsplit('/').next().unwrap_or(path);
            let kind = entry.kind.as_str();
            let modified = humantime::format_rfc3339_seconds(entry.modified).to_string();
            text.push_str(&match entry.kind {
                Kind::Dir => format!("{path}/\n"),
                _ => format!("{path}  {} bytes  {modified}\n", entry.size),
            });
            listed.push(json!({"name": name, "path": path, "type": kind, "size": entry.size, "modified": modified}));
        }
        Ok(ToolOutput { text, structured: Some(json!({"path": folder, "entries": listed})), ..ToolOutput::default() })
    }
}
