//! `code_interpreter`: runs Python in a fresh sandbox on a workspace (named, or the session's),
//! reporting progress while it runs, stopping when the client cancels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::code_mode::CodeMode;
use super::{Hints, Image, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, object_schema, parse};
use crate::sandbox::{Call, HostTools, Limits, Outcome, Status};

/// The most image bytes a result carries inline (base64 adds a third; every result stays
/// under 512 KiB).
const INLINE_IMAGE_BYTES: u64 = 256 << 10;
/// How often a running call reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub struct CodeInterpreter {
    definition: ToolDefinition,
}

#[derive(Deserialize)]
struct Args {
    code: String,
    timeout_s: Option<f64>,
    #[serde(default)]
    fresh: bool,
}

impl CodeInterpreter {
    /// Described with the limits and the tools its code may call.
    pub fn new(limits: &Limits, callable: &[String], python_state: bool) -> Self {
        let timeout = limits.timeout.as_secs_f64();
        let description = format!(
            "Run Python 3.15 code in a fresh, isolated sandbox and return its output.\n\n\
             Available: numpy, pandas, scipy, scikit-learn, statsmodels, matplotlib, seaborn, pillow, \
             lxml, openpyxl, xlsxwriter, xlrd, pypdf, reportlab, sympy, networkx, beautifulsoup4, \
             pyyaml, jinja2, tabulate and the standard library. No network, no pip install, no \
             subprocesses or threads.\n\n\
             {persistence} Files persist too: /workspace is the workspace and the current directory, \
             shared with list_files, read_file, write_file and delete_file. The result's last line names \
             the workspace (ws_...): pass it as `workspace` to keep working on the same variables and \
             files in later calls.\n\n\
             The value of a final expression is printed, like a notebook cell. matplotlib: plt.show() \
             saves each figure as /workspace/outputs/figure-N.png (figures left open are saved too). \
             On this 32-bit platform numpy's default integer is 32-bit: use dtype=np.int64 for large \
             integer sums.\n\n\
             Limits per call: {timeout:.0} s wall clock (timeout_s may ask for less), {memory} MiB of \
             memory, {output} KiB of stdout and of stderr in the result (longer output keeps its head \
             and tail, and is saved whole under /workspace/.toolhost/).",
            memory = limits.memory_bytes >> 20,
            output = limits.result_output_bytes >> 10,
            persistence = if python_state {
                "Variables, imports and objects persist between calls on the same workspace, like \
                 notebook cells run one after another (fresh=true starts a clean interpreter; a call \
                 that times out or runs out of memory leaves them as they were before it). Open files \
                 are closed at the end of each call."
            } else {
                "Each call starts a new interpreter: variables and imports do NOT persist between calls."
            },
        ) + &code_mode_note(callable);
        let input_schema = object_schema(
            json!({
                "code": {"type": "string", "description": "Python source to run, like a notebook cell."},
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": timeout,
                    "description": format!("Wall-clock limit in seconds (at most {timeout:.0}, the default)."),
                },
                "fresh": {
                    "type": "boolean",
                    "description": "Start from a clean interpreter instead of the workspace's saved variables; \
                                    what this call leaves becomes the workspace's state.",
                },
            }),
            &["code"],
        );
        CodeInterpreter {
            definition: ToolDefinition {
                name: "code_interpreter".into(),
                title: "Python code interpreter".into(),
                description,
                input_schema,
                output_schema: Some(output_schema()),
                hints: Hints { read_only: false, destructive: false, idempotent: false, open_world: false },
                workspace: super::Access::Write,
            },
        }
    }
}

#[async_trait]
impl Tool for CodeInterpreter {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let args: Args = parse(args)?;
        let sandbox = ctx.services.sandbox().await?;
        let limits = sandbox.limits().narrowed(args.timeout_s.map(Duration::from_secs_f64));
        let space = ctx.workspace()?;
        let workspace = space.files();
        let run = sandbox.run(Call {
            roots: ctx.services.roots.clone(),
            cancel: ctx.cancel.clone(),
            share: ctx.session.principal().to_string(),
            host_tools: CodeMode::for_run(ctx.services, ctx.session, space, &ctx.cancel)
                .map(|door| door as Arc<dyn HostTools>),
            state: space.python_state(args.fresh),
            ..Call::new(args.code, workspace, limits)
        });
        let outcome = match ctx.progress {
            Some(sink) => with_progress(run, sink, limits.timeout).await,
            None => run.await,
        };
        let mut outcome = outcome?;
        for file in &mut outcome.files {
            file.uri = ctx.uri(&file.path);
        }
        let images = if ctx.inline_images { inline_images(&outcome, workspace) } else { Vec::new() };
        Ok(ToolOutput {
            text: render(&outcome),
            structured: Some(serde_json::to_value(&outcome).map_err(anyhow::Error::from)?),
            images,
            is_error: outcome.status != Status::Ok,
            status: Some(outcome.status),
            changed_workspace: !outcome.files.is_empty(),
        })
    }
}

/// The description's paragraph on the tools code may call, if any.
fn code_mode_note(callable: &[String]) -> String {
    let Some(example) = callable.first() else { return String::new() };
    format!(
        "\n\nYour code can call these tools directly, with keyword arguments, and get their results as \
         Python values: {}. `from host import tools`, then e.g. `tools.{example}(...)`; `help(tools.{example})` \
         shows its arguments. A failed call raises `ToolError` (`from host import tools, ToolError`). Prefer one program that calls several \
         tools over many separate calls.",
        callable.join(", ")
    )
}

/// Runs `call`, sending a progress notification every second until it ends.
async fn with_progress<F: std::future::Future>(
    call: F,
    sink: &dyn super::ProgressSink,
    timeout: Duration,
) -> F::Output {
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    tokio::pin!(call);
    loop {
        tokio::select! {
            done = &mut call => return done,
            _ = ticks.tick() => {
                let elapsed = started.elapsed().as_secs_f64();
                sink.progress(elapsed, Some(timeout.as_secs_f64()), format!("running for {elapsed:.0} s")).await;
            }
        }
    }
}

/// The text a model reads: stdout, then stderr, the error, and the files the call wrote.
pub fn render(outcome: &Outcome) -> String {
    let mut text = String::new();
    text.push_str(&outcome.stdout);
    if !outcome.stderr.is_empty() {
        section(&mut text, "stderr");
        text.push_str(&outcome.stderr);
    }
    if let Some(error) = &outcome.error {
        let heading = match outcome.status {
            Status::Timeout => "timeout",
            Status::OutOfFuel => "out of fuel",
            Status::OutOfMemory => "out of memory",
            Status::Ok | Status::Error => "error",
        };
        section(&mut text, heading);
        text.push_str(&format!("{}: {}\n", error.kind, error.message));
    }
    if let Some(note) = &outcome.state.note {
        section(&mut text, "python state");
        text.push_str(note);
        text.push('\n');
    }
    if !outcome.files.is_empty() {
        section(&mut text, "files created or changed");
        for file in &outcome.files {
            text.push_str(&format!("{} ({}, {} bytes): {}\n", file.path, file.mime_type, file.size, file.uri));
        }
    }
    if text.is_empty() {
        text.push_str("(no output)\n");
    }
    text
}

fn section(text: &mut String, name: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("--- {name} ---\n"));
}

/// The images the call wrote, while they fit the inline budget.
fn inline_images(outcome: &Outcome, workspace: &crate::workspace::Workspace) -> Vec<Image> {
    let mut budget = INLINE_IMAGE_BYTES;
    let mut images = Vec::new();
    for file in &outcome.files {
        if !super::is_inline_image(&file.mime_type) || file.size > budget {
            continue;
        }
        if let Ok((bytes, _)) = workspace.read(&file.path, 0, Some(file.size)) {
            budget -= bytes.len() as u64;
            images.push(Image { mime_type: file.mime_type.clone(), bytes });
        }
    }
    images
}

/// The outcome's JSON Schema: `code_interpreter`'s outputSchema.
fn output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "error", "timeout", "out_of_fuel", "out_of_memory"]},
            "exit_code": {"type": ["integer", "null"]},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "stdout_truncated": {"type": "boolean"},
            "stderr_truncated": {"type": "boolean"},
            "error": {
                "type": ["object", "null"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                "required": ["type", "message"],
            },
            "duration_ms": {"type": "number"},
            "fuel_used": {"type": ["integer", "null"]},
            "files": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "size": {"type": "integer"},
                        "mime_type": {"type": "string"},
                        "uri": {"type": "string"},
                    },
                    "required": ["path", "size", "mime_type", "uri"],
                },
            },
            "state": {
                "type": "object",
                "description": "What the call did with the workspace's Python state.",
                "properties": {
                    "restored": {"type": "boolean", "description": "the call started from the saved state"},
                    "saved": {"type": "boolean", "description": "the state after the call was saved for the next"},
                    "bytes": {"type": "integer", "description": "what the saved state takes on disk"},
                    "note": {"type": "string", "description": "why a saved state was dropped or not saved"},
                },
                "required": ["restored", "saved", "bytes"],
            },
        },
        "required": ["status", "exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "error", "duration_ms", "fuel_used", "files", "state"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{ErrorInfo, FileInfo};

    fn outcome() -> Outcome {
        Outcome {
            status: Status::Error,
            exit_code: Some(1),
            stdout: "partial".into(),
            stderr: "Traceback ...\nValueError: bad\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            error: Some(ErrorInfo { kind: "ValueError".into(), message: "bad".into() }),
            duration_ms: 3.0,
            fuel_used: Some(10),
            files: vec![FileInfo {
                path: "outputs/figure-1.png".into(),
                size: 10,
                mime_type: "image/png".into(),
                uri: "file:///workspace/outputs/figure-1.png".into(),
            }],
            state: Default::default(),
        }
    }

    #[test]
    fn the_text_has_output_error_and_files() {
        let text = render(&outcome());
        assert_eq!(
            text,
            "partial\n--- stderr ---\nTraceback ...\nValueError: bad\n--- error ---\nValueError: bad\n\
             --- files created or changed ---\noutputs/figure-1.png (image/png, 10 bytes): file:///workspace/outputs/figure-1.png\n"
        );
    }

    #[test]
    fn the_outcome_matches_the_output_schema() {
        let validator = jsonschema::draft202012::new(&output_schema()).expect("schema");
        let value = serde_json::to_value(outcome()).expect("json");
        assert!(validator.is_valid(&value), "{:?}", super::super::check(&validator, &value));
    }
}
