//! The organisation's own tools: one folder each under the tools dir, with `tool.toml` (see
//! `manifest`) and `main.py`. A call runs `main.py` in a fresh sandbox with the validated
//! arguments as JSON on stdin; what it prints on stdout is its JSON result, checked against
//! its output schema. A folder that cannot be loaded is reported and skipped.

pub mod manifest;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Failure, FailureKind, Hints, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, check};
use crate::sandbox::{Call, Limits, Outcome, ReadOnlyRoot, Status};
use manifest::{MANIFEST, Manifest, SCRIPT, WorkspaceAccess};

/// Where a tool's own folder is mounted in the guest, read-only.
pub const TOOL_MOUNT: &str = "tool";
/// Runs the tool's script as `__main__`, with its folder importable.
const DRIVER: &str = include_str!("../../../guest-runtimes/python/org_tool.py");
/// The most of a tool's stderr a failure quotes.
const STDERR_TAIL: usize = 4096;
/// The most of a tool's stdout a "not JSON" failure quotes.
const EXCERPT: usize = 200;

/// A tool folder that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault (the manifest, the script) or the folder.
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// What a tools dir holds: the tools that load, the folders that do not, and the tools left
/// out because a resource root they need is not configured.
#[derive(Default)]
pub struct Loaded {
    pub tools: Vec<OrgTool>,
    pub problems: Vec<Problem>,
    pub unavailable: Vec<Problem>,
}

/// Loads every tool folder under `dir` (a missing dir holds none). Folders whose names start
/// with `.` or `_` are ignored.
pub fn load_dir(dir: &Path, ceiling: &Limits, roots: &[String]) -> Loaded {
    let mut loaded = Loaded::default();
    let Ok(entries) = std::fs::read_dir(dir) else { return loaded };
    // `is_dir` follows links: a Kubernetes ConfigMap volume links each folder into `..data`.
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(['.', '_'])))
        .collect();
    folders.sort();
    for folder in folders {
        match OrgTool::load(&folder, ceiling) {
            Ok(tool) => match tool.roots.iter().find(|r| !roots.contains(r)) {
                Some(missing) => loaded.unavailable.push(Problem {
                    path: folder.join(MANIFEST),
                    reason: format!(
                        "needs the resource root {missing:?}, which is not configured; \
                         start with --root {missing}=/path/to/folder (or [[resources.roots]] in toolhost.toml)"
                    ),
                }),
                None => loaded.tools.push(tool),
            },
            Err(problem) => loaded.problems.push(problem),
        }
    }
    loaded
}

/// One org tool, ready to be called.
pub struct OrgTool {
    definition: ToolDefinition,
    folder: PathBuf,
    limits: Limits,
    roots: Vec<String>,
    workspace: WorkspaceAccess,
    code_mode: bool,
    output: Option<jsonschema::Validator>,
}

impl OrgTool {
    /// Reads and checks one tool folder.
    pub fn load(folder: &Path, ceiling: &Limits) -> Result<OrgTool, Problem> {
        let at_manifest = |reason: String| Problem { path: folder.join(MANIFEST), reason };
        let manifest = Manifest::read(folder).map_err(at_manifest)?;
        let name = manifest.name(folder).map_err(at_manifest)?;
        if manifest.description.trim().is_empty() {
            return Err(at_manifest("description is empty: say what the tool does, for a model".into()));
        }
        manifest::object_schema("input_schema", &manifest.input_schema).map_err(at_manifest)?;
        let output = match &manifest.output_schema {
            Some(schema) => Some(manifest::object_schema("output_schema", schema).map_err(at_manifest)?),
            None => None,
        };
        let limits = manifest.limits(ceiling).map_err(at_manifest)?;
        let script = folder.join(SCRIPT);
        if !script.is_file() {
            return Err(Problem { path: script, reason: format!("missing {SCRIPT}: the code the tool runs") });
        }
        let read_only = manifest.workspace == WorkspaceAccess::ReadOnly;
        let a = &manifest.annotations;
        Ok(OrgTool {
            definition: ToolDefinition {
                title: manifest.title.clone().unwrap_or_else(|| name.clone()),
                name,
                description: manifest.description.trim().to_string(),
                input_schema: manifest.input_schema,
                output_schema: manifest.output_schema,
                hints: Hints {
                    read_only: a.read_only_hint.unwrap_or(read_only),
                    destructive: a.destructive_hint,
                    idempotent: a.idempotent_hint,
                    open_world: a.open_world_hint,
                },
                workspace: if read_only { super::Access::Read } else { super::Access::Write },
            },
            folder: folder.canonicalize().unwrap_or_else(|_| folder.to_path_buf()),
            limits,
            roots: manifest.roots,
            workspace: manifest.workspace,
            code_mode: manifest.code_mode,
            output,
        })
    }

    /// What the tool printed, as its result; or why it is not one.
    fn result(&self, outcome: &Outcome) -> Result<ToolOutput, ToolError> {
        let name = &self.definition.name;
        let printed = outcome.stdout.trim();
        if printed.is_empty() {
            return Err(failure(
                format!("{name} printed nothing: a tool prints its result as JSON on stdout"),
                stderr_tail(outcome),
            ));
        }
        let value: Value = serde_json::from_str(printed).map_err(|e| {
            failure(
                format!(
                    "{name} printed something that is not one JSON value ({e}), starting with {:?}; a tool prints \
                     only its result on stdout (json.dumps) and its diagnostics on stderr",
                    excerpt(printed)
                ),
                stderr_tail(outcome),
            )
        })?;
        if let Some(validator) = &self.output
            && let Err(problems) = check(validator, &value)
        {
            return Err(failure(
                format!("{name} returned a result that does not match its output_schema: {problems}"),
                None,
            ));
        }
        let text = match &value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        Ok(ToolOutput {
            text,
            structured: Some(value),
            changed_workspace: !outcome.files.is_empty(),
            ..Default::default()
        })
    }

    /// Why the run failed, for the caller: the tool's own message when it exited with one
    /// (`sys.exit("...")`), else what happened, with its stderr as detail.
    fn failed(&self, outcome: &Outcome) -> ToolError {
        let name = &self.definition.name;
        let raised = outcome.error.as_ref().map_or("an error", |e| e.kind.as_str());
        let message = match outcome.status {
            Status::Timeout => return timed_out(name, Duration::from_secs_f64(outcome.duration_ms / 1000.0)),
            Status::OutOfMemory => format!("{name} ran out of memory"),
            Status::OutOfFuel => format!("{name} ran out of fuel (instructions)"),
            Status::Error if raised == "SystemExit" => {
                let said = stderr_tail(outcome).unwrap_or_default();
                let code = outcome.exit_code.unwrap_or(1);
                let message = if said.trim().is_empty() {
                    format!("{name} exited with status {code}")
                } else {
                    said.trim().into()
                };
                return failure(message, None);
            }
            Status::Ok | Status::Error => format!("{name} failed: its code raised {raised}"),
        };
        failure(message, stderr_tail(outcome))
    }
}

#[async_trait]
impl Tool for OrgTool {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    fn callable_from_code(&self) -> bool {
        self.code_mode
    }

    async fn call(&self, args: Map<String, Value>, ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let sandbox = ctx.services.sandbox().await?;
        let mut limits = self.limits;
        // The stdout is the result: never cut into head and tail.
        limits.result_output_bytes = limits.output_bytes;
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(&self.definition.name, Duration::ZERO));
            }
            limits.timeout = limits.timeout.min(left);
        }
        let workspace = ctx.workspace()?.files();
        let mut roots = vec![ReadOnlyRoot { name: TOOL_MOUNT.into(), host: self.folder.clone() }];
        roots.extend(ctx.services.roots.iter().filter(|r| self.roots.contains(&r.name)).cloned());
        let stdin = serde_json::to_vec(&Value::Object(args)).map_err(anyhow::Error::from)?;
        let outcome = sandbox
            .run(Call {
                stdin,
                workspace_read_only: self.workspace == WorkspaceAccess::ReadOnly,
                roots,
                cancel: ctx.cancel.clone(),
                nested: ctx.deadline.is_some(),
                share: ctx.session.principal().to_string(),
                ..Call::new(DRIVER.to_string(), workspace, limits)
            })
            .await?;
        if outcome.status == Status::Ok { self.result(&outcome) } else { Err(self.failed(&outcome)) }
    }
}

fn failure(message: String, detail: Option<String>) -> ToolError {
    ToolError::Failed(Failure { kind: FailureKind::Error, message, detail })
}

/// The tool hit its time limit, after running for `ran`.
fn timed_out(name: &str, ran: Duration) -> ToolError {
    ToolError::Failed(Failure {
        kind: FailureKind::Timeout,
        message: format!("{name} did not finish within its time limit (stopped after {:.1} s)", ran.as_secs_f64()),
        detail: None,
    })
}

/// The end of what the tool wrote to stderr, if anything.
fn stderr_tail(outcome: &Outcome) -> Option<String> {
    let stderr = outcome.stderr.trim_end();
    if stderr.is_empty() {
        return None;
    }
    let mut start = stderr.len().saturating_sub(STDERR_TAIL);
    while !stderr.is_char_boundary(start) {
        start += 1;
    }
    Some(stderr[start..].to_string())
}

fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT).collect()
}
