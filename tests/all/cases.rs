//! Data-driven cases: every `tests/cases/*.py` starts with a `# expect: {json}` line (fields
//! the outcome must have; strings under "stdout_contains"/"stderr_contains" must appear),
//! and may say `# runtime: NAME` and `# timeout: SECONDS`. One loop runs them all.

use std::path::Path;

use crate::support::{PYTHON, run_with, with_timeout, workspace};

struct Case {
    name: String,
    code: String,
    expect: serde_json::Map<String, serde_json::Value>,
    runtime: String,
    timeout: f64,
}

fn load(path: &Path) -> Case {
    let code = std::fs::read_to_string(path).expect("case file");
    let header = |key: &str| code.lines().find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string));
    let expect = header("expect").unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()));
    Case {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        expect: serde_json::from_str(&expect).unwrap_or_else(|e| panic!("{}: bad expect JSON: {e}", path.display())),
        runtime: header("runtime").unwrap_or_else(|| PYTHON.to_string()),
        timeout: header("timeout").map_or(30.0, |t| t.parse().expect("timeout")),
        code,
    }
}

#[tokio::test]
async fn every_case_behaves_as_it_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).expect("tests/cases").map(|e| e.expect("entry").path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "py"));
    paths.sort();
    assert!(paths.len() >= 10, "the cases folder holds the adversarial cases");
    let mut failures = Vec::new();
    for path in &paths {
        let case = load(path);
        let (_dir, ws) = workspace();
        let outcome = run_with(&case.code, &case.runtime, &ws, with_timeout(case.timeout)).await;
        let actual = serde_json::to_value(&outcome).expect("outcome json");
        for (key, want) in &case.expect {
            let ok = match key.as_str() {
                "stdout_contains" | "stderr_contains" => {
                    let stream = actual[key.trim_end_matches("_contains")].as_str().unwrap_or_default();
                    want.as_array()
                        .expect("a list of strings")
                        .iter()
                        .all(|s| stream.contains(s.as_str().unwrap_or_default()))
                }
                "stdout_excludes" => {
                    let stream = actual["stdout"].as_str().unwrap_or_default();
                    want.as_array()
                        .expect("a list of strings")
                        .iter()
                        .all(|s| !stream.contains(s.as_str().unwrap_or_default()))
                }
                "error_type" => actual["error"]["type"] == *want,
                _ => actual[key] == *want,
            };
            if !ok {
                failures.push(format!("{}: {key} should be {want}; outcome: {actual}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), paths.len(), failures.join("\n"));
}
