//! `read_file`: a workspace file, or a range of it. Text comes back as text; anything that is
//! not UTF-8 as base64 with its MIME type (an image or blob block only where rich content is
//! enabled).

use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Hints, Image, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, object_schema, parse};
use crate::workspace;

/// The most bytes one call returns, so that every result stays well under 512 KiB.
pub const MAX_READ_BYTES: u64 = 128 << 10;

pub struct ReadFile {
    definition: ToolDefinition,
}

#[derive(Deserialize)]
struct Args {
    path: String,
    offset: Option<u64>,
    length: Option<u64>,
}

impl ReadFile {
    pub fn new() -> Self {
        ReadFile {
            definition: ToolDefinition {
                name: "read_file".into(),
                title: "Read a workspace file".into(),
                description: format!(
                    "Read a file from the workspace (/workspace). UTF-8 files come back as text; \
                     other files as base64 with their MIME type. At most {} KiB per call: use offset and \
                     length (in bytes) to read a large file in parts.",
                    MAX_READ_BYTES >> 10
                ),
                input_schema: object_schema(
                    json!({
                        "path": {"type": "string", "description": "The file, relative to the workspace; /workspace/... also works."},
                        "offset": {"type": "integer", "minimum": 0, "description": "The first byte to read (default 0)."},
                        "length": {"type": "integer", "minimum": 1, "description": format!("How many bytes to read (default and most: {} KiB).", MAX_READ_BYTES >> 10)},
                    }),
                    &["path"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "size": {"type": "integer", "description": "The whole file's size in bytes."},
                        "offset": {"type": "integer"},
                        "length": {"type": "integer", "description": "The bytes returned."},
                        "encoding": {"type": "string", "enum": ["utf-8", "base64"]},
                        "mime_type": {"type": "string"},
                        "content": {"type": "string"},
                        "truncated": {"type": "boolean", "description": "More of the file follows."},
                    },
                    "required": ["path", "size", "offset", "length", "encoding", "mime_type", "content", "truncated"],
                })),
                hints: Hints { read_only: true, destructive: false, idempotent: true, open_world: false },
                workspace: super::Access::Read,
            },
        }
    }
}

#[async_trait]
impl Tool for ReadFile {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let args: Args = parse(args)?;
        let path = workspace::display(&workspace::resolve(&args.path)?);
        let offset = args.offset.unwrap_or(0);
        let length = args.length.unwrap_or(MAX_READ_BYTES).min(MAX_READ_BYTES);
        let (mut bytes, size) = ctx.workspace()?.files().read(&path, offset, Some(length))?;
        let mime_type = mime_guess::from_path(&path).first_or_octet_stream().essence_str().to_string();
        let text = utf8_prefix(&mut bytes, offset + length < size);
        let end = offset + bytes.len() as u64;
        let truncated = end < size;
        let (encoding, content) = match text {
            Some(text) => ("utf-8", text),
            None => ("base64", base64::engine::general_purpose::STANDARD.encode(&bytes)),
        };
        let mut shown = match encoding {
            "utf-8" => content.clone(),
            _ => format!("[{path}: {mime_type}, {size} bytes, base64 below]\n{content}"),
        };
        if truncated {
            shown.push_str(&format!("\n[... bytes {offset}-{end} of {size} shown; read on with offset={end} ...]\n"));
        }
        let images = match mime_type.as_str() {
            image if super::is_inline_image(image) && ctx.inline_images && offset == 0 && !truncated => {
                vec![Image { mime_type: mime_type.clone(), bytes }]
            }
            _ => Vec::new(),
        };
        Ok(ToolOutput {
            text: shown,
            structured: Some(json!({
                "path": path, "size": size, "offset": offset, "length": end - offset, "encoding": encoding,
                "mime_type": mime_type, "content": content, "truncated": truncated,
            })),
            images,
            ..ToolOutput::default()
        })
    }
}

/// The bytes as text if they are UTF-8. When more of the file follows, a character cut at the
/// end of the range is left for the next read.
fn utf8_prefix(bytes: &mut Vec<u8>, more_follows: bool) -> Option<String> {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Some(text.to_string()),
        Ok(_) => None,
        Err(e) if more_follows && e.error_len().is_none() && e.valid_up_to() > 0 => {
            bytes.truncate(e.valid_up_to());
            String::from_utf8(bytes.clone()).ok()
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::utf8_prefix;

    #[test]
    fn a_character_cut_by_the_range_is_left_for_the_next_read() {
        let mut bytes = "aé".as_bytes()[..2].to_vec();
        assert_eq!(utf8_prefix(&mut bytes, true), Some("a".into()));
        assert_eq!(bytes, b"a");
        let mut binary = vec![0x89, b'P', b'N', b'G'];
        assert_eq!(utf8_prefix(&mut binary, false), None);
        let mut nul = b"a\0b".to_vec();
        assert_eq!(utf8_prefix(&mut nul, false), None);
    }
}
