//! How a guest run ended, in the shape of `code_interpreter`'s structuredContent (DESIGN.md
//! section 5): the status, the streams cut to the result cap (head and tail around a marker),
//! the error named from the traceback, and the files the run created or changed.

use serde::{Deserialize, Serialize};

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
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// How the guest program stopped, before it is put into words.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    let is_name = !kind.is_empty()
        && kind.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        });
    is_name
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
