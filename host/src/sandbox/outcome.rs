//! How a guest run ended, in the shape of `code_interpreter`'s structuredContent (the
//! README's tools table): the status, the streams cut to the result cap (head and tail around a marker),
//! the error named from the traceback, and the files the run created or changed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::prefault::WriteSet;
use super::{Limits, guest, output};
use crate::workspace::{self, Workspace};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Error,
    Timeout,
    OutOfFuel,
    OutOfMemory,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::OutOfFuel => "out_of_fuel",
            Status::OutOfMemory => "out_of_memory",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub mime_type: String,
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub error: Option<ErrorInfo>,
    pub duration_ms: f64,
    pub fuel_used: Option<u64>,
    pub files: Vec<FileInfo>,
    /// What the call did with its workspace's Python state.
    #[serde(default)]
    pub state: super::StateReport,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// How the guest program stopped, before it is put into words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// The program finished with this exit status (a `turn` value or a `proc_exit` code).
    Exited(i32),
    Timeout,
    Cancelled,
    OutOfFuel,
    /// A trap the guest could not handle (stack overflow, unreachable, ...).
    Trapped(String),
}

/// The error a run's ending amounts to, and its status. `stderr` is read for the Python
/// exception that ended the program; `memory_denied` says the memory limit refused a growth.
pub fn classify(
    ending: &Ending,
    stderr: &str,
    memory_denied: bool,
    limits: &super::Limits,
) -> (Status, Option<ErrorInfo>) {
    let info = |kind: &str, message: String| Some(ErrorInfo { kind: kind.to_string(), message });
    match ending {
        Ending::Exited(0) => (Status::Ok, None),
        Ending::Exited(code) => {
            let error = python_exception(stderr).unwrap_or_else(|| ErrorInfo {
                kind: "SystemExit".into(),
                message: format!("the program exited with status {code}"),
            });
            let status = if error.kind == "MemoryError" { Status::OutOfMemory } else { Status::Error };
            (status, Some(error))
        }
        Ending::Timeout => (
            Status::Timeout,
            info(
                "Timeout",
                format!("the code ran past its {:.1} s deadline and was stopped", limits.timeout.as_secs_f64()),
            ),
        ),
        Ending::Cancelled => {
            (Status::Error, info("Cancelled", "the call was cancelled and the code was stopped".into()))
        }
        Ending::OutOfFuel => (
            Status::OutOfFuel,
            info(
                "OutOfFuel",
                format!("the code used its whole budget of {} instructions (fuel) and was stopped", limits.fuel),
            ),
        ),
        Ending::Trapped(message) if memory_denied => (
            Status::OutOfMemory,
            info(
                "MemoryError",
                format!("the code needed more than its {} MiB of memory ({message})", limits.memory_bytes >> 20),
            ),
        ),
        Ending::Trapped(message) => (Status::Error, info("Trap", format!("the WebAssembly guest trapped: {message}"))),
    }
}

/// The exception named by the last line of a Python traceback (`ValueError: bad value`), if
/// `stderr` ends with one.
pub fn python_exception(stderr: &str) -> Option<ErrorInfo> {
    if !stderr.contains("Traceback (most recent call last)") && !stderr.contains("Error:") {
        return None;
    }
    let last = stderr.lines().rev().find(|line| !line.trim().is_empty())?;
    if last.starts_with(' ') {
        return None;
    }
    let (kind, message) = match last.split_once(':') {
        Some((kind, message)) => (kind, message.trim()),
        None => (last, ""),
    };
    guest::is_dotted_name(kind)
        .then(|| ErrorInfo { kind: kind.rsplit('.').next().unwrap_or(kind).to_string(), message: message.to_string() })
}

/// A stream as it goes into a result: whole if it fits in `cap` bytes, else its head and tail
/// (on UTF-8 boundaries) around a marker saying how much was left out and where it all is.
pub fn cut(text: &str, cap: usize, saved_as: &str) -> (String, bool) {
    if text.len() <= cap {
        return (text.to_string(), false);
    }
    let half = cap / 2;
    let head_end = floor_boundary(text, half);
    let tail_start = ceil_boundary(text, text.len() - half);
    let omitted = tail_start - head_end;
    let marker = format!("\n[... {omitted} bytes omitted; the whole stream is in {saved_as} ...]\n");
    (format!("{}{marker}{}", &text[..head_end], &text[tail_start..]), true)
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// How a run ended and the fuel it burned (unknown after an interruption).
#[derive(Debug)]
pub(super) struct Ran {
    pub(super) ending: Ending,
    pub(super) fuel_used: Option<u64>,
    /// The pages the run wrote, when it was asked to learn them.
    pub(super) written: Option<WriteSet>,
}

/// A finished run, before it is put into an `Outcome`.
pub(super) struct Finished<'a> {
    pub(super) call_id: &'a str,
    pub(super) ran: Ran,
    pub(super) stdout: output::Captured,
    pub(super) stderr: output::Captured,
    pub(super) memory_denied: bool,
    pub(super) duration: Duration,
    pub(super) limits: Limits,
    /// Which quota refused a write during the run, in words, if one did.
    pub(super) refused: Option<String>,
}

impl Finished<'_> {
    pub(super) fn into_outcome(self, workspace: &Workspace, before: &workspace::Index) -> Outcome {
        let stderr_text = guest::tidy_traceback(&String::from_utf8_lossy(&self.stderr.data));
        let stdout_text = String::from_utf8_lossy(&self.stdout.data).into_owned();
        let (status, mut error) = classify(&self.ran.ending, &stderr_text, self.memory_denied, &self.limits);

        // A write the quotas refused failed in the guest (ENOSPC); say which quota it was.
        if let Some(error) = error.as_mut()
            && let Some(refused) = &self.refused
        {
            error.message.push_str(&format!("\n({refused})"));
        }
        let mut files = match workspace.index() {
            Ok(after) => {
                after.changed_since(before).into_iter().map(|(path, entry)| file_info(path, entry.size)).collect()
            }
            Err(e) => {
                tracing::warn!("cannot index the workspace after a call: {e}");
                Vec::new()
            }
        };

        let cap = self.limits.result_output_bytes;
        let (stdout, stdout_truncated) =
            self.stream("stdout", &stdout_text, self.stdout.dropped, cap, workspace, &mut files);
        let (stderr, stderr_truncated) =
            self.stream("stderr", &stderr_text, self.stderr.dropped, cap, workspace, &mut files);
        let exit_code = match self.ran.ending {
            Ending::Exited(code) => Some(code),
            _ => None,
        };
        Outcome {
            status,
            exit_code,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            error,
            duration_ms: (self.duration.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
            fuel_used: self.ran.fuel_used,
            files,
            state: super::StateReport::default(),
        }
    }

    /// A stream as the result carries it: cut to `cap` bytes (head and tail), and saved whole
    /// in the workspace when cut.
    fn stream(
        &self,
        name: &str,
        text: &str,
        dropped: u64,
        cap: usize,
        workspace: &Workspace,
        files: &mut Vec<FileInfo>,
    ) -> (String, bool) {
        let mut text = text.to_string();
        if dropped > 0 {
            text.push_str(&format!(
                "\n[... {dropped} more bytes were dropped: the guest may write at most {} bytes to {name} ...]\n",
                self.limits.output_bytes
            ));
        }
        if text.len() <= cap {
            return (text, dropped > 0);
        }
        let path = format!(".toolhost/{}.{name}", self.call_id);
        let saved_as = match workspace.write(&path, text.as_bytes()) {
            Ok(size) => {
                files.push(file_info(&path, size));
                format!("/workspace/{path}")
            }
            // The result says so; a full workspace is the user's to clear, not the operator's.
            Err(e) => {
                tracing::debug!("cannot save the whole {name} of {}: {e}", self.call_id);
                format!("(not saved: {e})")
            }
        };
        cut(&text, cap, &saved_as)
    }
}

fn file_info(path: &str, size: u64) -> FileInfo {
    FileInfo {
        path: path.to_string(),
        size,
        mime_type: mime_guess::from_path(path).first_or_octet_stream().essence_str().to_string(),
        uri: workspace::uri(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exception_is_read_from_the_traceback() {
        let tb = "Traceback (most recent call last):\n  File \"<code>\", line 1, in <module>\nZeroDivisionError: division by zero\n";
        assert_eq!(
            python_exception(tb),
            Some(ErrorInfo { kind: "ZeroDivisionError".into(), message: "division by zero".into() })
        );
        let dotted =
            "Traceback (most recent call last):\n  ...\njson.decoder.JSONDecodeError: Expecting value: line 1\n";
        assert_eq!(python_exception(dotted).expect("dotted").kind, "JSONDecodeError");
        assert_eq!(python_exception(dotted).expect("dotted").message, "Expecting value: line 1");
        let bare = "Traceback (most recent call last):\n  ...\nKeyboardInterrupt\n";
        assert_eq!(python_exception(bare).expect("bare").kind, "KeyboardInterrupt");
        assert_eq!(python_exception("just some warning text\n"), None);
    }

    #[test]
    fn long_streams_keep_head_and_tail_on_char_boundaries() {
        let text = "é".repeat(100);
        let (cut_text, truncated) = cut(&text, 21, "/workspace/.toolhost/x.stdout");
        assert!(truncated);
        assert!(cut_text.starts_with("éééé"));
        assert!(cut_text.ends_with("éééé"));
        assert!(cut_text.contains("bytes omitted; the whole stream is in /workspace/.toolhost/x.stdout"));
        assert_eq!(cut("short", 21, "x"), ("short".to_string(), false));
    }

    #[test]
    fn statuses_follow_the_ending() {
        let limits = super::super::Limits::default();
        assert_eq!(classify(&Ending::Exited(0), "", false, &limits).0, Status::Ok);
        let oom = "Traceback (most recent call last):\nMemoryError\n";
        assert_eq!(classify(&Ending::Exited(1), oom, true, &limits).0, Status::OutOfMemory);
        assert_eq!(classify(&Ending::Trapped("unreachable".into()), "", true, &limits).0, Status::OutOfMemory);
        assert_eq!(classify(&Ending::Trapped("unreachable".into()), "", false, &limits).0, Status::Error);
        assert_eq!(classify(&Ending::OutOfFuel, "", false, &limits).0, Status::OutOfFuel);
        let (status, error) = classify(&Ending::Timeout, "", false, &limits);
        assert_eq!(status, Status::Timeout);
        assert!(error.expect("error").message.contains("30.0 s"));
        let (status, error) = classify(&Ending::Exited(3), "", false, &limits);
        assert_eq!((status, error.expect("error").kind.as_str()), (Status::Error, "SystemExit"));
    }
}
