//! Code mode: guest code calls hosted tools with `from host import tools`. This is the host
//! side of the runtime's frame protocol (version 1): the guest sends `{"v":1,"id":N,"op":
//! "list"}` or `{"v":1,"id":N,"op":"call","tool":NAME,"args":{...}}` through `host.call` and
//! gets `{"v":1,"id":N,"ok":true,...}` or `{"v":1,"id":N,"ok":false,"error":{"kind","message"}}`.
//! Every call is validated like a client's, counted against the run's budget, held to its
//! deadline; how a tool failed inside stays in the host's log and result detail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{FailureKind, Registry, ToolContext, ToolError};
use crate::app::App;
use crate::sandbox::{Frame, HostTools, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
use crate::sessions::Session;

/// The protocol version spoken.
const VERSION: u64 = 1;
/// The longest error message a guest gets.
const MAX_MESSAGE: usize = 4096;
/// A tool called from code must answer this long before the calling guest's deadline, so the
/// guest can still report it.
const MARGIN: Duration = Duration::from_millis(250);

/// The host tools one run of guest code may call.
pub struct CodeMode {
    app: Arc<App>,
    session: Arc<Session>,
    registry: Arc<Registry>,
    /// Cancelled with the run.
    cancel: CancellationToken,
    max_calls: u32,
    frames: AtomicU32,
}

impl CodeMode {
    /// The door for one run of `session`'s code, or `None` when code may call no tool.
    pub fn for_run(app: &Arc<App>, session: &Arc<Session>, cancel: &CancellationToken) -> Option<Arc<CodeMode>> {
        let registry = app.registry();
        if registry.callable_from_code().is_empty() {
            return None;
        }
        Some(Arc::new(CodeMode {
            app: app.clone(),
            session: session.clone(),
            registry,
            cancel: cancel.clone(),
            max_calls: app.code_mode_max_calls(),
            frames: AtomicU32::new(0),
        }))
    }

    fn descriptors(&self) -> Vec<Value> {
        let allowed = self.registry.callable_from_code();
        self.registry
            .definitions()
            .filter(|d| allowed.contains(&d.name))
            .map(|d| {
                let mut hints = Map::new();
                for (key, set) in [
                    ("readOnlyHint", d.hints.read_only),
                    ("destructiveHint", d.hints.destructive),
                    ("idempotentHint", d.hints.idempotent),
                    ("openWorldHint", d.hints.open_world),
                ] {
                    if set {
                        hints.insert(key.into(), Value::Bool(true));
                    }
                }
                let mut descriptor = json!({
                    "name": d.name,
                    "description": d.description,
                    "inputSchema": d.input_schema,
                    "annotations": hints,
                });
                if let Some(output) = &d.output_schema {
                    descriptor["outputSchema"] = output.clone();
                }
                descriptor
            })
            .collect()
    }

    /// Runs one tool for the guest: its value, or the kind and message of its failure.
    async fn call(&self, name: &str, args: Map<String, Value>, deadline: Instant) -> Result<Value, Refusal> {
        let allowed = self.registry.callable_from_code();
        if !allowed.iter().any(|n| n == name) {
            let offered = allowed.join(", ");
            return Err(if self.registry.get(name).is_some() {
                Refusal::new("denied", format!("code may not call {name}; this run offers: {offered}"))
            } else {
                Refusal::new("unknown_tool", format!("no tool named {name}; this run offers: {offered}"))
            });
        }
        let Some(deadline) = deadline.checked_sub(MARGIN).filter(|d| *d > Instant::now()) else {
            return Err(Refusal::new("timeout", format!("{name} timed out at the run's deadline")));
        };
        let ctx = ToolContext {
            app: &self.app,
            session: &self.session,
            cancel: self.cancel.child_token(),
            progress: None,
            inline_images: false,
            deadline: Some(deadline),
        };
        let call = self.registry.call(name, Some(args), &ctx);
        let result = match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Some(result)) => result,
            Ok(None) => return Err(Refusal::new("unknown_tool", format!("no tool named {name}"))),
            Err(_) => return Err(Refusal::new("timeout", format!("{name} timed out at the run's deadline"))),
        };
        match result {
            Ok(output) if !output.is_error => Ok(output.structured.unwrap_or(Value::String(output.text))),
            Ok(output) => Err(Refusal::new("tool_error", output.text)),
            Err(ToolError::InvalidArguments(problems)) => {
                Err(Refusal::new("invalid_arguments", format!("{name}: invalid arguments: {problems}")))
            }
            Err(ToolError::Failed(failure)) => {
                if let Some(detail) = &failure.detail {
                    tracing::info!(tool = name, detail = %detail, "a tool called from code failed");
                }
                let kind = match failure.kind {
                    FailureKind::Timeout => "timeout",
                    FailureKind::Error => "tool_error",
                };
                Err(Refusal::new(kind, failure.message))
            }
            Err(ToolError::Internal(error)) => {
                tracing::error!(tool = name, "a tool called from code failed: {error:#}");
                Err(Refusal::new("tool_error", format!("{name} failed (internal error)")))
            }
            Err(other @ (ToolError::Workspace(_) | ToolError::Busy(_) | ToolError::NotReady(_))) => {
                Err(Refusal::new("tool_error", other.to_string()))
            }
        }
    }

    /// The answer to one frame, and the outcome label for metrics.
    async fn respond(&self, frame: Frame, deadline: Instant) -> (Value, &'static str, Option<String>) {
        let bytes = match frame {
            Frame::Bytes(bytes) => bytes,
            Frame::TooLong(len) => {
                let message = format!("the request is {len} bytes, over the {MAX_REQUEST_BYTES}-byte limit");
                return (refusal(Value::Null, &Refusal::new("too_large", message)), "too_large", None);
            }
        };
        let request: Map<String, Value> = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(request)) => request,
            _ => {
                let refused = Refusal::new("protocol", "the request is not a JSON object".into());
                return (refusal(Value::Null, &refused), "protocol", None);
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        if request.get("v").and_then(Value::as_u64) != Some(VERSION) {
            let refused = Refusal::new("protocol", format!("this host speaks version {VERSION} of the protocol"));
            return (refusal(id, &refused), "protocol", None);
        }
        if self.frames.fetch_add(1, Ordering::Relaxed) >= self.max_calls {
            let message = format!("this run may make at most {} tool requests", self.max_calls);
            return (refusal(id, &Refusal::new("budget_exceeded", message)), "budget_exceeded", None);
        }
        match request.get("op").and_then(Value::as_str) {
            Some("list") => (json!({"v": VERSION, "id": id, "ok": true, "tools": self.descriptors()}), "ok", None),
            Some("call") => {
                let Some(name) = request.get("tool").and_then(Value::as_str) else {
                    let refused = Refusal::new("protocol", "a call names its tool".into());
                    return (refusal(id, &refused), "protocol", None);
                };
                let args = match request.get("args") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(args)) => args.clone(),
                    Some(_) => {
                        let refused =
                            Refusal::new("invalid_arguments", format!("{name}: the arguments must be an object"));
                        return (refusal(id, &refused), "invalid_arguments", Some(name.to_string()));
                    }
                };
                match self.call(name, args, deadline).await {
                    Ok(value) => (json!({"v": VERSION, "id": id, "ok": true, "value": value}), "ok", Some(name.into())),
                    Err(refused) => (refusal(id, &refused), refused.kind, Some(name.into())),
                }
            }
            _ => {
                let refused = Refusal::new("protocol", "this host serves list and call".into());
                (refusal(id, &refused), "protocol", None)
            }
        }
    }
}

#[async_trait]
impl HostTools for CodeMode {
    async fn answer(&self, frame: Frame, deadline: Instant) -> Vec<u8> {
        let (answer, outcome, tool) = self.respond(frame, deadline).await;
        if let Some(tool) = tool {
            metrics::counter!("toolhost_code_mode_calls_total", "tool" => tool, "outcome" => outcome).increment(1);
        }
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        if bytes.len() <= MAX_ANSWER_BYTES {
            return bytes;
        }
        let message = format!("the answer is {} bytes, over the {MAX_ANSWER_BYTES}-byte limit", bytes.len());
        let id = answer.get("id").cloned().unwrap_or(Value::Null);
        serde_json::to_vec(&refusal(id, &Refusal::new("too_large", message))).unwrap_or_default()
    }
}

/// Why a request got no value.
#[derive(Debug)]
struct Refusal {
    kind: &'static str,
    message: String,
}

impl Refusal {
    fn new(kind: &'static str, message: String) -> Self {
        let message = if message.chars().count() > MAX_MESSAGE {
            let mut cut: String = message.chars().take(MAX_MESSAGE - 3).collect();
            cut.push_str("...");
            cut
        } else {
            message
        };
        Refusal { kind, message }
    }
}

fn refusal(id: Value, refused: &Refusal) -> Value {
    json!({"v": VERSION, "id": id, "ok": false, "error": {"kind": refused.kind, "message": refused.message}})
}
