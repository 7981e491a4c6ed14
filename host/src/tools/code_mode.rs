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
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{FailureKind, Registry, Services, ToolContext, ToolError};
use crate::sandbox::{Frame, HostTools, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
use crate::sessions::Session;
use crate::workspaces::Space;

/// The protocol version spoken.
const VERSION: u64 = 1;
/// The longest error message a guest gets.
const MAX_MESSAGE: usize = 4096;
/// A tool called from code must answer this long before the calling guest's deadline, so the
/// guest can still report it.
const MARGIN: Duration = Duration::from_millis(250);

/// The host tools one run of guest code may call.
pub struct CodeMode {
    services: Arc<Services>,
    session: Arc<Session>,
    /// The run's workspace: a tool call naming none works in it.
    space: Arc<Space>,
    registry: Arc<Registry>,
    /// Cancelled with the run.
    cancel: CancellationToken,
    max_calls: u32,
    frames: AtomicU32,
}

impl CodeMode {
    /// The door for one run of `session`'s code, or `None` when code may call no tool.
    pub fn for_run(
        services: &Arc<Services>,
        session: &Arc<Session>,
        space: &Arc<Space>,
        cancel: &CancellationToken,
    ) -> Option<Arc<CodeMode>> {
        let registry = services.catalog.current();
        if registry.callable_from_code().is_empty() {
            return None;
        }
        Some(Arc::new(CodeMode {
            services: services.clone(),
            session: session.clone(),
            space: space.clone(),
            registry,
            cancel: cancel.clone(),
            max_calls: services.code_mode_max_calls,
            frames: AtomicU32::new(0),
        }))
    }

    fn descriptors(&self) -> Vec<Value> {
        let allowed = self.registry.callable_from_code();
        self.registry
            .definitions()
            .filter(|d| allowed.contains(&d.name))
            .map(|d| {
                let hints: Map<String, Value> = d
                    .hints
                    .annotations()
                    .into_iter()
                    .filter(|(_, set)| *set)
                    .map(|(key, set)| (key.to_string(), Value::Bool(set)))
                    .collect();
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
                Refusal::new(Kind::Denied, format!("code may not call {name}; this run offers: {offered}"))
            } else {
                Refusal::new(Kind::UnknownTool, format!("no tool named {name}; this run offers: {offered}"))
            });
        }
        let timed_out = || Refusal::new(Kind::Timeout, format!("{name} timed out at the run's deadline"));
        let Some(deadline) = deadline.checked_sub(MARGIN).filter(|d| *d > Instant::now()) else {
            return Err(timed_out());
        };
        let ctx = ToolContext {
            services: &self.services,
            session: &self.session,
            cancel: self.cancel.child_token(),
            progress: None,
            inline_images: false,
            deadline: Some(deadline),
            caller: Some(self.space.clone()),
            space: None,
        };
        let call = self.registry.call(name, Some(args), &ctx);
        let result = match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Some(result)) => result,
            Ok(None) => return Err(Refusal::new(Kind::UnknownTool, format!("no tool named {name}"))),
            Err(_) => return Err(timed_out()),
        };
        match result {
            Ok(output) if !output.is_error => Ok(output.structured.unwrap_or(Value::String(output.text))),
            Ok(output) => Err(Refusal::new(Kind::ToolError, output.text)),
            Err(ToolError::InvalidArguments(problems)) => {
                Err(Refusal::new(Kind::InvalidArguments, format!("{name}: invalid arguments: {problems}")))
            }
            Err(ToolError::Failed(failure)) => {
                if let Some(detail) = &failure.detail {
                    tracing::info!(tool = name, detail = %detail, "a tool called from code failed");
                }
                let kind = match failure.kind {
                    FailureKind::Timeout => Kind::Timeout,
                    FailureKind::Error => Kind::ToolError,
                };
                Err(Refusal::new(kind, failure.message))
            }
            Err(ToolError::Internal(error)) => {
                tracing::error!(tool = name, "a tool called from code failed: {error:#}");
                Err(Refusal::new(Kind::ToolError, format!("{name} failed (internal error)")))
            }
            Err(
                other @ (ToolError::Workspace(_) | ToolError::Busy(_) | ToolError::NotReady(_) | ToolError::Handle(_)),
            ) => Err(Refusal::new(Kind::ToolError, other.to_string())),
        }
    }

    /// The answer to one frame.
    async fn respond(&self, frame: Frame, deadline: Instant) -> Answer {
        let bytes = match frame {
            Frame::Bytes(bytes) => bytes,
            Frame::TooLong(len) => {
                let message = format!("the request is {len} bytes, over the {MAX_REQUEST_BYTES}-byte limit");
                return Answer::refused(Value::Null, None, Refusal::new(Kind::TooLarge, message));
            }
        };
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(envelope) => envelope,
            Err(_) => {
                let refused = Refusal::new(Kind::Protocol, "the request is not a JSON object".into());
                return Answer::refused(Value::Null, None, refused);
            }
        };
        let id = envelope.id;
        if envelope.v != Some(VERSION) {
            let refused = Refusal::new(Kind::Protocol, format!("this host speaks version {VERSION} of the protocol"));
            return Answer::refused(id, None, refused);
        }
        if self.frames.fetch_add(1, Ordering::Relaxed) >= self.max_calls {
            let message = format!("this run may make at most {} tool requests", self.max_calls);
            return Answer::refused(id, None, Refusal::new(Kind::BudgetExceeded, message));
        }
        let request = match serde_json::from_value::<Request>(Value::Object(envelope.rest)) {
            Ok(request) => request,
            Err(e) => {
                let refused = Refusal::new(Kind::Protocol, format!("this host serves list and call: {e}"));
                return Answer::refused(id, None, refused);
            }
        };
        match request {
            Request::List => Answer {
                body: json!({"v": VERSION, "id": id, "ok": true, "tools": self.descriptors()}),
                tool: None,
                kind: None,
            },
            Request::Call { tool, args } => {
                let args = match args {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(args)) => args,
                    Some(_) => {
                        let message = format!("{tool}: the arguments must be an object");
                        return Answer::refused(id, Some(tool), Refusal::new(Kind::InvalidArguments, message));
                    }
                };
                match self.call(&tool, args, deadline).await {
                    Ok(value) => Answer {
                        body: json!({"v": VERSION, "id": id, "ok": true, "value": value}),
                        tool: Some(tool),
                        kind: None,
                    },
                    Err(refused) => Answer::refused(id, Some(tool), refused),
                }
            }
        }
    }
}

/// A frame's envelope: the protocol version and the request id, whatever the request.
#[derive(Deserialize)]
struct Envelope {
    v: Option<u64>,
    #[serde(default)]
    id: Value,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// What a guest may ask.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    List,
    Call { tool: String, args: Option<Value> },
}

/// The answer to one frame, with what metrics count of it.
struct Answer {
    body: Value,
    /// The tool a call named, if any.
    tool: Option<String>,
    /// Why it got no value, if it did not.
    kind: Option<Kind>,
}

impl Answer {
    fn refused(id: Value, tool: Option<String>, refused: Refusal) -> Answer {
        let body = json!({"v": VERSION, "id": id, "ok": false, "error": {"kind": refused.kind.as_str(), "message": refused.message}});
        Answer { body, tool, kind: Some(refused.kind) }
    }
}

#[async_trait]
impl HostTools for CodeMode {
    async fn answer(&self, frame: Frame, deadline: Instant) -> Vec<u8> {
        let answer = self.respond(frame, deadline).await;
        if let Some(tool) = answer.tool {
            let outcome = answer.kind.map_or("ok", Kind::as_str);
            metrics::counter!("toolhost_code_mode_calls_total", "tool" => tool, "outcome" => outcome).increment(1);
        }
        let bytes = serde_json::to_vec(&answer.body).unwrap_or_default();
        if bytes.len() <= MAX_ANSWER_BYTES {
            return bytes;
        }
        let message = format!("the answer is {} bytes, over the {MAX_ANSWER_BYTES}-byte limit", bytes.len());
        let id = answer.body.get("id").cloned().unwrap_or(Value::Null);
        serde_json::to_vec(&Answer::refused(id, None, Refusal::new(Kind::TooLarge, message)).body).unwrap_or_default()
    }
}

/// Why a request got no value.
#[derive(Debug)]
struct Refusal {
    kind: Kind,
    message: String,
}

/// The kinds of refusal the guest library knows (`ToolError.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Denied,
    UnknownTool,
    InvalidArguments,
    ToolError,
    Timeout,
    BudgetExceeded,
    TooLarge,
    Protocol,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Denied => "denied",
            Kind::UnknownTool => "unknown_tool",
            Kind::InvalidArguments => "invalid_arguments",
            Kind::ToolError => "tool_error",
            Kind::Timeout => "timeout",
            Kind::BudgetExceeded => "budget_exceeded",
            Kind::TooLarge => "too_large",
            Kind::Protocol => "protocol",
        }
    }
}

impl Refusal {
    fn new(kind: Kind, message: String) -> Self {
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
