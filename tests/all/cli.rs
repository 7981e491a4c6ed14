//! The `toolhost` binary as a user runs it: `run` prints the outcome as JSON with the right
//! exit status, a memory bomb leaves the host's RSS bounded, bad flags get clear errors.

use std::process::{Command, Output};

use crate::support::{sandbox, toolhost_bin};

fn toolhost(args: &[&str]) -> Output {
    sandbox(); // the runtimes are ready in the cache before the binary looks for them
    Command::new(toolhost_bin()).args(args).env("TOOLHOST_LOG", "warn").output().expect("toolhost runs")
}

fn outcome_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn run_prints_the_outcome_as_json() {
    let output = toolhost(&["run", "-c", "print(1+1)"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let outcome = outcome_of(&output);
    assert_eq!(outcome["status"], "ok");
    assert_eq!(outcome["stdout"], "2\n");
    for key in
        ["exit_code", "stderr", "stdout_truncated", "stderr_truncated", "error", "duration_ms", "fuel_used", "files"]
    {
        assert!(outcome.get(key).is_some(), "{key} missing: {outcome}");
    }
}

#[test]
fn run_echoes_a_pandas_sum() {
    let output = toolhost(&["run", "-c", "import pandas as pd; pd.DataFrame({\"a\":[1,2]}).a.sum()"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = outcome_of(&output)["stdout"].as_str().unwrap_or_default().to_string();
    assert!(stdout.trim_end().ends_with('3'), "{stdout}");
}

#[test]
fn a_failing_run_exits_non_zero_with_the_error() {
    let output = toolhost(&["run", "-c", "raise KeyError('missing')"]);
    assert_eq!(output.status.code(), Some(1));
    let outcome = outcome_of(&output);
    assert_eq!(outcome["status"], "error");
    assert_eq!(outcome["error"]["type"], "KeyError");
}

#[test]
fn run_reads_a_file_and_uses_the_given_workspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("script.py");
    std::fs::write(&script, "open('result.txt', 'w').write('from a file')\nprint('done')").expect("script");
    let workspace = dir.path().join("ws");
    let output = toolhost(&["run", script.to_str().expect("utf8"), "--workspace", workspace.to_str().expect("utf8")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read_to_string(workspace.join("result.txt")).expect("written"), "from a file");
}

#[test]
fn a_memory_bomb_leaves_the_host_rss_bounded() {
    let bomb = "xs = []\nwhile True:\n    xs.append(bytearray(64 * 1024**2))";
    // Another memory cap is another engine configuration: its first run compiles the runtime
    // for it (once per cache), which is not what this test measures.
    assert!(toolhost(&["run", "--memory-mb", "256", "-c", "pass"]).status.success());
    // The peak of the one bomb process, measured by a parent of its own.
    let measure = "import resource, subprocess, sys\n\
                   done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)\n\
                   sys.stdout.buffer.write(done.stdout)\n\
                   sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
                   sys.exit(done.returncode)";
    let output = Command::new("python3")
        .args(["-c", measure])
        .arg(toolhost_bin())
        .args(["run", "--memory-mb", "256", "-c", bomb])
        .env("TOOLHOST_LOG", "warn")
        .output()
        .expect("python3 runs");
    assert_eq!(output.status.code(), Some(1));
    let outcome = outcome_of(&output);
    assert_eq!(outcome["status"], "out_of_memory", "{outcome}");
    // ru_maxrss in KiB: the bomb's process stayed under its cap plus the runtime's own footprint.
    let peak_kib: i64 = String::from_utf8_lossy(&output.stderr).trim().parse().expect("the peak RSS");
    let peak_mib = peak_kib / 1024;
    assert!(peak_mib < 256 + 400, "the toolhost process peaked at {peak_mib} MiB");
}

#[test]
fn bad_flags_get_a_clear_error() {
    let output = toolhost(&["run", "--memory-mb", "1", "-c", "pass"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("memory must be between 64 and 4096 MiB"), "{stderr}");
    let output = toolhost(&["run", "--runtime", "cobol", "-c", "pass"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown runtime \"cobol\""));
}

#[test]
fn help_documents_every_command() {
    let output = toolhost(&["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["run", "runtime", "bench"] {
        assert!(help.contains(command), "{help}");
    }
    let output = toolhost(&["run", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in ["--timeout", "--memory-mb", "--fuel", "--workspace", "--runtime", "TOOLHOST_TIMEOUT"] {
        assert!(help.contains(flag), "{flag} missing from run --help");
    }
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme.split("## Test it").nth(1).expect("a '## Test it' section");
    let command = section
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .nth(1)
        .expect("a code block with the test command")
        .trim()
        .to_string();
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == command), ".ci/run must run `{command}`");
}

#[test]
fn logs_can_be_json_lines() {
    sandbox();
    let output = Command::new(toolhost_bin())
        .args(["--log-format", "json", "--log", "info", "run", "-c", "print(1)"])
        .output()
        .expect("toolhost runs");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "info logs were written");
    for line in lines {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed.get("level").is_some() && parsed.get("fields").is_some(), "{line}");
    }
}

#[test]
fn run_stops_a_guest_blocked_in_a_relative_wait_at_its_deadline() {
    let output = toolhost(&["run", "--timeout", "1", "-c", "import select\nselect.select([], [], [], 10**7)"]);
    assert_eq!(output.status.code(), Some(1));
    let outcome = outcome_of(&output);
    assert_eq!(outcome["status"], "timeout", "{outcome}");
    assert!(outcome["duration_ms"].as_f64().is_some_and(|ms| ms < 1300.0), "{outcome}");
}
