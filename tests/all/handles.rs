//! Workspaces as handles over MCP: a handle continues a workspace across sessions and a
//! restart; another principal, a malformed or an unknown handle gets a tool error saying which;
//! code run in a named workspace calls tools in it; calls writing one workspace take turns, and
//! one that waits too long is refused as busy.

use std::time::Duration;

use rmcp::model::{ReadResourceRequestParams, ResourceContents};
use serde_json::json;

use crate::mcp_client::{Client, call, connect, handle, is_error, structured, text};
use crate::support::start_server;

async fn read_resource(client: &Client, uri: &str) -> Result<String, String> {
    match client.read_resource(ReadResourceRequestParams::new(uri)).await {
        Ok(read) => match &read.contents[0] {
            ResourceContents::TextResourceContents { text, .. } => Ok(text.clone()),
            other => Err(format!("not text: {other:?}")),
        },
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_workspace_continues_by_handle_across_sessions_and_a_restart_and_is_its_owners_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = dir.path().join("workspaces");
    let tokens = |s: &mut toolhost::config::Settings| {
        s.server.tokens = vec!["alice".into(), "bob".into()];
        s.app.workspaces_dir = store.clone();
    };
    let server = start_server(tokens).await;
    let alice = connect(&server.url, Some("alice")).await;
    let written = call(&alice, "write_file", json!({"path": "notes.txt", "content": "kept"})).await;
    let ws = handle(&written);
    assert!(ws.starts_with("ws_") && ws.len() == 35, "{ws}");
    assert_eq!(structured(&written)["uri"], "file:///workspace/notes.txt", "the session's default workspace");
    let listed = call(&alice, "list_files", json!({})).await;
    assert_eq!(handle(&listed), ws, "a session keeps one default workspace");
    alice.cancel().await.expect("close");

    // A later session of the same principal continues it by handle; its own default is another.
    let later = connect(&server.url, Some("alice")).await;
    let read = call(&later, "read_file", json!({"path": "notes.txt", "workspace": ws})).await;
    assert_eq!(text(&read), "kept\n");
    let code = "open('out.txt', 'w').write(open('notes.txt').read().upper())";
    let ran = call(&later, "code_interpreter", json!({"code": code, "workspace": ws})).await;
    assert!(!is_error(&ran), "{}", text(&ran));
    assert_eq!(handle(&ran), ws);
    assert_eq!(structured(&ran)["files"][0]["uri"], format!("file:///workspaces/{ws}/out.txt"));
    assert_eq!(read_resource(&later, &format!("file:///workspaces/{ws}/out.txt")).await.as_deref(), Ok("KEPT"));
    let own = call(&later, "write_file", json!({"path": "mine.txt", "content": "x"})).await;
    assert_ne!(handle(&own), ws);

    // Another principal cannot use it, by tool or by resource; bad handles say what is wrong.
    let bob = connect(&server.url, Some("bob")).await;
    let refused = call(&bob, "read_file", json!({"path": "notes.txt", "workspace": ws})).await;
    assert!(is_error(&refused) && text(&refused).contains("belongs to another user"), "{}", text(&refused));
    let overwrite = call(&bob, "write_file", json!({"path": "notes.txt", "content": "bob", "workspace": ws})).await;
    assert!(is_error(&overwrite), "{}", text(&overwrite));
    let resource = read_resource(&bob, &format!("file:///workspaces/{ws}/notes.txt")).await;
    assert!(resource.as_ref().is_err_and(|e| e.contains("belongs to another user")), "{resource:?}");
    let malformed = call(&bob, "list_files", json!({"workspace": "../alice"})).await;
    assert!(is_error(&malformed) && text(&malformed).contains("is not a workspace handle"), "{}", text(&malformed));
    let unknown = call(&bob, "list_files", json!({"workspace": format!("ws_{}", "a".repeat(32))})).await;
    assert!(is_error(&unknown) && text(&unknown).contains("no workspace"), "{}", text(&unknown));
    later.cancel().await.expect("close");
    bob.cancel().await.expect("close");
    server.shutdown().await;

    // A new process on the same folder: everything is still there.
    let restarted = start_server(tokens).await;
    let again = connect(&restarted.url, Some("alice")).await;
    let read = call(&again, "read_file", json!({"path": "out.txt", "workspace": ws})).await;
    assert_eq!(text(&read), "KEPT\n");
}

#[tokio::test]
async fn code_run_in_a_named_workspace_calls_tools_in_it() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let other = handle(&call(&client, "write_file", json!({"path": "a.txt", "content": "first"})).await);
    // Another session's workspace, named explicitly: the code and its tool calls work there,
    // and the calls do not wait on the lock the run itself holds.
    let second = connect(&server.url, None).await;
    let code = "from host import tools\ntools.write_file(path='b.txt', content='from code')\n\
                print(tools.read_file(path='a.txt')['content'], tools.list_files()['workspace'] == WS)";
    let code = code.replace("WS", &format!("{other:?}"));
    let ran = call(&second, "code_interpreter", json!({"code": code, "workspace": other, "timeout_s": 20})).await;
    assert!(!is_error(&ran), "{}", text(&ran));
    assert!(text(&ran).starts_with("first True\n--- files created or changed ---\nb.txt"), "{}", text(&ran));
    let read = call(&client, "read_file", json!({"path": "b.txt"})).await;
    assert_eq!(text(&read), "from code\n");
}

#[tokio::test]
async fn calls_writing_one_workspace_take_turns_and_a_long_wait_is_refused() {
    let server = start_server(|s| s.app.workspace_lock_timeout = Duration::from_secs(1)).await;
    let client = connect(&server.url, None).await;
    call(&client, "write_file", json!({"path": "log.txt", "content": ""})).await;
    // Read, wait, write back: without turns, one of the two lines would be lost.
    let append = |line: &str| {
        let code = format!(
            "import time\nold = open('log.txt').read()\ntime.sleep(0.3)\nopen('log.txt', 'w').write(old + '{line}\\n')"
        );
        call(&client, "code_interpreter", json!({"code": code}))
    };
    let (a, b) = tokio::join!(append("a"), append("b"));
    assert!(!is_error(&a) && !is_error(&b), "{} {}", text(&a), text(&b));
    let log = call(&client, "read_file", json!({"path": "log.txt"})).await;
    let log = text(&log);
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a", "b"]);

    // A writer waiting longer than --workspace-lock-timeout is refused with the reason.
    let long = call(&client, "code_interpreter", json!({"code": "import time\ntime.sleep(3)", "timeout_s": 5}));
    let refused = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        call(&client, "write_file", json!({"path": "x.txt", "content": "x"})).await
    };
    let (long, refused) = tokio::join!(long, refused);
    assert!(!is_error(&long), "{}", text(&long));
    assert!(is_error(&refused) && text(&refused).contains("is busy"), "{}", text(&refused));
    // Reading does not wait for a writer.
    let listed = call(&client, "list_files", json!({})).await;
    assert!(!is_error(&listed));
}
