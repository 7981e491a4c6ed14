//! Tool outcomes and errors as MCP results: the guest's failure or a bad argument is a result
//! with `isError` the model reads; our own fault is an internal error, logged once with its
//! cause. Every result is counted, timed and held under 512 KiB.

use std::time::Instant;

use base64::Engine;
use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ContentBlock};

use crate::sandbox::Status;
use crate::tools::{Failure, FailureKind, ToolError, ToolOutput};
use crate::workspaces::HandleError;

/// No tool result may serialize to more than this; clients refuse large messages.
pub const MAX_RESULT_BYTES: usize = 512 << 10;

/// How a tool call ended, as metrics and logs label it: a closed set, whatever a tool returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Ran(Status),
    InvalidArguments,
    Refused,
    Busy,
    NotReady,
    InternalError,
}

impl CallStatus {
    pub fn of(result: &Result<ToolOutput, ToolError>) -> CallStatus {
        match result {
            Ok(output) => {
                CallStatus::Ran(output.status.unwrap_or(if output.is_error { Status::Error } else { Status::Ok }))
            }
            Err(ToolError::InvalidArguments(_)) => CallStatus::InvalidArguments,
            Err(ToolError::Workspace(_)) => CallStatus::Refused,
            Err(ToolError::Handle(HandleError::Busy(_))) => CallStatus::Busy,
            Err(ToolError::Handle(_)) => CallStatus::Refused,
            Err(ToolError::Busy(_)) => CallStatus::Busy,
            Err(ToolError::NotReady(_)) => CallStatus::NotReady,
            Err(ToolError::Failed(failure)) => CallStatus::Ran(match failure.kind {
                FailureKind::Timeout => Status::Timeout,
                FailureKind::Error => Status::Error,
            }),
            Err(ToolError::Internal(_)) => CallStatus::InternalError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ran(status) => status.as_str(),
            CallStatus::InvalidArguments => "invalid_arguments",
            CallStatus::Refused => "refused",
            CallStatus::Busy => "busy",
            CallStatus::NotReady => "not_ready",
            CallStatus::InternalError => "internal_error",
        }
    }
}

pub fn to_call_tool_result(
    tool: &str,
    result: Result<ToolOutput, ToolError>,
    started: Instant,
) -> Result<CallToolResult, McpError> {
    let status = CallStatus::of(&result).as_str();
    let converted = match result {
        Ok(output) => Ok(from_output(output)),
        Err(ToolError::Internal(error)) => {
            tracing::error!(tool, "tool failed: {error:#}");
            Err(McpError::internal_error(format!("internal error in {tool}; the server log has the cause"), None))
        }
        Err(error) => {
            let message = match &error {
                ToolError::InvalidArguments(_) => format!("{tool}: {error}"),
                ToolError::Failed(Failure { message, detail: Some(detail), .. }) => {
                    format!("{message}\n--- stderr ---\n{detail}")
                }
                _ => error.to_string(),
            };
            Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
        }
    };
    let elapsed = started.elapsed();
    metrics::counter!("toolhost_tool_calls_total", "tool" => tool.to_string(), "status" => status).increment(1);
    metrics::histogram!("toolhost_tool_call_duration_seconds", "tool" => tool.to_string())
        .record(elapsed.as_secs_f64());
    tracing::info!(status, duration_ms = elapsed.as_secs_f64() * 1000.0, "tool call");
    converted.map(within_size_limit)
}

fn from_output(output: ToolOutput) -> CallToolResult {
    let mut content = vec![ContentBlock::text(output.text)];
    for image in output.images {
        content
            .push(ContentBlock::image(base64::engine::general_purpose::STANDARD.encode(&image.bytes), image.mime_type));
    }
    let mut result = if output.is_error { CallToolResult::error(content) } else { CallToolResult::success(content) };
    // MCP carries only objects as structured content.
    result.structured_content = output.structured.filter(serde_json::Value::is_object);
    result
}

/// The result, or, if it would serialize past `MAX_RESULT_BYTES`, the result without its
/// images, or an error saying what to do.
fn within_size_limit(mut result: CallToolResult) -> CallToolResult {
    let size = |r: &CallToolResult| serde_json::to_vec(r).map_or(usize::MAX, |v| v.len());
    if size(&result) <= MAX_RESULT_BYTES {
        return result;
    }
    result.content.retain(|block| !matches!(block, ContentBlock::Image(_)));
    if size(&result) <= MAX_RESULT_BYTES {
        return result;
    }
    CallToolResult::error(vec![ContentBlock::text(format!(
        "the result would be larger than {} KiB; write large data to a workspace file and read it in parts",
        MAX_RESULT_BYTES >> 10
    ))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Image;

    #[test]
    fn guest_failures_are_results_and_our_faults_are_errors() {
        let failed = ToolOutput { text: "boom".into(), is_error: true, ..ToolOutput::default() };
        let result = to_call_tool_result("t", Ok(failed), Instant::now()).expect("a result");
        assert_eq!(result.is_error, Some(true));
        let invalid = to_call_tool_result("t", Err(ToolError::InvalidArguments("`a`: bad".into())), Instant::now());
        let text = serde_json::to_string(&invalid.expect("a result")).expect("json");
        assert!(text.contains("t: invalid arguments: `a`: bad") && text.contains("\"isError\":true"), "{text}");
        let internal =
            to_call_tool_result("t", Err(ToolError::Internal(anyhow::anyhow!("secret detail"))), Instant::now());
        let error = internal.expect_err("an internal error");
        assert!(!error.message.contains("secret detail"), "internals stay in the log");
    }

    #[test]
    fn oversized_results_lose_their_images_then_their_content() {
        let big_image = ToolOutput {
            text: "ok".into(),
            images: vec![Image { mime_type: "image/png".into(), bytes: vec![0; MAX_RESULT_BYTES] }],
            ..ToolOutput::default()
        };
        let result = to_call_tool_result("t", Ok(big_image), Instant::now()).expect("result");
        assert_eq!(result.content.len(), 1);
        assert_eq!(result.is_error, Some(false));
        let big_text = ToolOutput { text: "x".repeat(MAX_RESULT_BYTES + 1), ..ToolOutput::default() };
        let result = to_call_tool_result("t", Ok(big_text), Instant::now()).expect("result");
        assert_eq!(result.is_error, Some(true));
    }
}
