//! The official Python MCP SDK (legacy SSE, streamable HTTP, stdio) and the agent frameworks
//! the README documents (Mistral, OpenAI Agents SDK, pydantic-ai), driven by pytest
//! (tests/python) against a real server with a bearer token.

use crate::support::{python_venv, settings, start_server, toolhost_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_clients_work_against_the_server() {
    let python = tokio::task::spawn_blocking(python_venv).await.expect("venv");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tests = repo.join("tests/python");
    let logs = tests.join("fixtures/logs");
    let server = start_server(|s| {
        s.server.tokens = vec!["python-test-token".into()];
        s.app.tools_dir = repo.join("tools");
        s.app.roots.push(toolhost::config::RootSetting { name: "logs".into(), path: logs.clone() });
    })
    .await;
    let output = tokio::process::Command::new(python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--tb=short"])
        .arg(&tests)
        .env("TOOLHOST_URL", &server.url)
        .env("TOOLHOST_TOKEN", "python-test-token")
        .env("TOOLHOST_BIN", toolhost_bin())
        .env("TOOLHOST_CACHE", settings().cache_dir)
        .env("TOOLHOST_TOOLS_DIR", repo.join("tools"))
        .env("TOOLHOST_LOGS_ROOT", &logs)
        .output()
        .await
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pytest failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // A skipped test is a feature not tested: none may skip (-rs lists why).
    assert!(!stdout.contains(" skipped"), "pytest skipped tests:\n{stdout}");
    assert!(stdout.contains(" passed"), "pytest ran no test:\n{stdout}");
}
