//! The MCP server end to end over streamable HTTP with rmcp's client: every tool, resources,
//! prompts, notifications, cancellation, isolation between sessions, and concurrency.

use std::time::Duration;

use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams, ResourceContents};
use serde_json::json;

use crate::mcp_client::{Counting, call, connect, is_error, structured, text};
use crate::support::start_server;
use crate::support::wait_for_stats;

#[tokio::test]
async fn every_tool_is_listed_with_schemas_and_hints() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("toolhost"));
    let tools = client.list_all_tools().await.expect("tools");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["calculate_sum", "code_interpreter", "delete_file", "list_files", "read_file", "write_file"]);
    for tool in &tools {
        assert!(tool.output_schema.is_some(), "{} has an outputSchema", tool.name);
        assert!(tool.annotations.is_some(), "{} has annotations", tool.name);
    }
    let read = tools.iter().find(|t| t.name == "read_file").expect("read_file");
    assert_eq!(read.annotations.as_ref().and_then(|a| a.read_only_hint), Some(true));
    let code = tools.iter().find(|t| t.name == "code_interpreter").expect("code_interpreter");
    assert!(code.description.as_deref().unwrap_or_default().contains("/workspace"));
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn code_runs_and_reports_its_outcome() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let ok = call(&client, "code_interpreter", json!({"code": "print(1+1)"})).await;
    assert!(!is_error(&ok));
    assert_eq!(text(&ok), "2\n");
    assert_eq!(structured(&ok)["status"], "ok");
    assert_eq!(structured(&ok)["stdout"], "2\n");
    let failed = call(&client, "code_interpreter", json!({"code": "import math\nmath.sqrt(-1)"})).await;
    assert!(is_error(&failed));
    assert_eq!(structured(&failed)["error"]["type"], "ValueError");
    assert!(text(&failed).contains("--- error ---\nValueError: "), "{}", text(&failed));
    let timed = call(&client, "code_interpreter", json!({"code": "while True: pass", "timeout_s": 0.5})).await;
    assert_eq!(structured(&timed)["status"], "timeout");
    let sum = call(&client, "calculate_sum", json!({"a": 0.1, "b": 0.2})).await;
    assert_eq!(text(&sum), "0.30000000000000004");
    assert_eq!(structured(&sum), json!({"sum": 0.30000000000000004}));
}

#[tokio::test]
async fn files_are_shared_by_the_tools_the_code_and_the_resources() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let written = call(&client, "write_file", json!({"path": "data/in.csv", "content": "a,b\n1,2\n3,4\n"})).await;
    assert_eq!(structured(&written)["size"], 12);
    let code = "import pandas as pd\ndf = pd.read_csv('data/in.csv')\ndf['c'] = df.a + df.b\ndf.to_csv('data/out.csv', index=False)\nprint(df.c.sum())";
    let ran = call(&client, "code_interpreter", json!({"code": code})).await;
    assert_eq!(text(&ran).lines().next(), Some("10"), "{}", text(&ran));
    assert_eq!(structured(&ran)["files"][0]["uri"], "file:///workspace/data/out.csv");
    let read = call(&client, "read_file", json!({"path": "/workspace/data/out.csv"})).await;
    assert_eq!(text(&read), "a,b,c\n1,2,3\n3,4,7\n");
    let partial = call(&client, "read_file", json!({"path": "data/out.csv", "offset": 6, "length": 5})).await;
    assert_eq!(structured(&partial)["content"], "1,2,3");
    assert_eq!(structured(&partial)["truncated"], true);
    let listed = call(&client, "list_files", json!({"path": "data"})).await;
    let entries: Vec<_> =
        structured(&listed)["entries"].as_array().expect("entries").iter().map(|e| e["path"].clone()).collect();
    assert_eq!(entries, [json!("data/in.csv"), json!("data/out.csv")]);

    let resources = client.list_all_resources().await.expect("resources");
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert!(uris.contains(&"file:///workspace/data/out.csv"), "{uris:?}");
    let contents =
        client.read_resource(ReadResourceRequestParams::new("file:///workspace/data/in.csv")).await.expect("read");
    match &contents.contents[0] {
        ResourceContents::TextResourceContents { text, mime_type, .. } => {
            assert_eq!(text, "a,b\n1,2\n3,4\n");
            assert_eq!(mime_type.as_deref(), Some("text/csv"));
        }
        other => panic!("expected text, got {other:?}"),
    }
    let templates = client.list_all_resource_templates().await.expect("templates");
    assert_eq!(templates[0].uri_template, "file:///workspace/{path}");

    let deleted = call(&client, "delete_file", json!({"path": "data/in.csv"})).await;
    assert_eq!(structured(&deleted)["deleted"], "file");
    let gone = call(&client, "read_file", json!({"path": "data/in.csv"})).await;
    assert!(is_error(&gone) && text(&gone).contains("does not exist"), "{}", text(&gone));
}

#[tokio::test]
async fn binary_files_come_back_as_base64_and_images_only_when_asked() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    call(&client, "write_file", json!({"path": "dot.png", "content": png, "encoding": "base64"})).await;
    let read = call(&client, "read_file", json!({"path": "dot.png"})).await;
    assert_eq!(structured(&read)["encoding"], "base64");
    assert_eq!(structured(&read)["mime_type"], "image/png");
    assert_eq!(structured(&read)["content"], png);
    assert_eq!(read.content.len(), 1, "text only by default");
    // A client that connects with ?images=inline gets image content.
    let client_inline = {
        use rmcp::ServiceExt;
        let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(format!(
            "{}/mcp?images=inline",
            server.url
        ));
        Counting::default()
            .serve(rmcp::transport::StreamableHttpClientTransport::from_config(config))
            .await
            .expect("connect")
    };
    call(&client_inline, "write_file", json!({"path": "dot.png", "content": png, "encoding": "base64"})).await;
    let read = call(&client_inline, "read_file", json!({"path": "dot.png"})).await;
    assert_eq!(read.content.len(), 2);
    assert!(read.content[1].as_image().is_some_and(|i| i.mime_type == "image/png"));
    let plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()";
    let ran = call(&client_inline, "code_interpreter", json!({"code": plot})).await;
    assert!(ran.content.iter().any(|c| c.as_image().is_some()), "the plot is inline");
}

#[tokio::test]
async fn prompts_are_listed_and_filled_in() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let prompts = client.list_all_prompts().await.expect("prompts");
    let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["analyze_data", "commit_message"]);
    let arguments = json!({"path": "sales.csv", "question": "which month sold most?"});
    let prompt = client
        .get_prompt(
            GetPromptRequestParams::new("analyze_data")
                .with_arguments(arguments.as_object().cloned().unwrap_or_default()),
        )
        .await
        .expect("prompt");
    let body = serde_json::to_string(&prompt.messages).expect("json");
    assert!(body.contains("/workspace/sales.csv") && body.contains("which month sold most?"), "{body}");
    let missing = client.get_prompt(GetPromptRequestParams::new("commit_message")).await;
    assert!(missing.is_err(), "diff is required");
}

#[tokio::test]
async fn bad_arguments_and_escapes_are_tool_errors_naming_the_problem() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let wrong_type = call(&client, "code_interpreter", json!({"code": 5})).await;
    assert!(is_error(&wrong_type));
    assert!(text(&wrong_type).contains("`code`: 5 is not of type \"string\""), "{}", text(&wrong_type));
    let missing = call(&client, "calculate_sum", json!({"a": 1})).await;
    assert!(text(&missing).contains("\"b\" is a required property"), "{}", text(&missing));
    let too_long = call(&client, "code_interpreter", json!({"code": "1", "timeout_s": 10_000})).await;
    assert!(text(&too_long).contains("`timeout_s`"), "{}", text(&too_long));
    let bad_base64 = call(&client, "write_file", json!({"path": "x", "content": "%%%", "encoding": "base64"})).await;
    assert!(text(&bad_base64).contains("`content`: not valid base64"), "{}", text(&bad_base64));
    for path in ["../secret", "/etc/passwd", "a/../../b", "/workspace/../etc"] {
        for tool in ["read_file", "write_file", "delete_file", "list_files"] {
            let arguments =
                if tool == "write_file" { json!({"path": path, "content": "x"}) } else { json!({"path": path}) };
            let result = call(&client, tool, arguments).await;
            assert!(is_error(&result), "{tool} {path}");
            assert!(text(&result).contains("is not allowed"), "{tool} {path}: {}", text(&result));
        }
    }
    // A link made by guest code does not lead the file tools out either.
    let made = call(
        &client,
        "code_interpreter",
        json!({"code": "import os\nos.symlink('..', 'up')\nos.symlink('../..', 'upup')"}),
    )
    .await;
    assert!(!is_error(&made), "{}", text(&made));
    for path in ["up/secret", "upup/etc/passwd"] {
        let result = call(&client, "read_file", json!({"path": path})).await;
        assert!(is_error(&result) && text(&result).contains("outside the workspace"), "{path}: {}", text(&result));
    }
    let unknown = client
        .call_tool(rmcp::model::CallToolRequestParams::new("rm_rf").with_arguments(serde_json::Map::new()))
        .await
        .expect_err("an unknown tool is a protocol error");
    assert!(unknown.to_string().contains("unknown tool \"rm_rf\""), "{unknown}");
    let after = call(&client, "code_interpreter", json!({"code": "print('still here')"})).await;
    assert_eq!(text(&after), "still here\n");
}

#[tokio::test]
async fn one_session_never_sees_another_sessions_files() {
    let server = start_server(|_| {}).await;
    let alice = connect(&server.url, None).await;
    let bob = connect(&server.url, None).await;
    call(&alice, "write_file", json!({"path": "secret.txt", "content": "alice's"})).await;
    let bobs_view = call(&bob, "read_file", json!({"path": "secret.txt"})).await;
    assert!(is_error(&bobs_view));
    let listed = call(&bob, "code_interpreter", json!({"code": "import os\nprint(os.listdir('/workspace'))"})).await;
    assert!(!text(&listed).contains("secret.txt"), "{}", text(&listed));
    let sneaky = call(&bob, "code_interpreter", json!({"code": "import os\nprint(os.listdir('..'))"})).await;
    assert!(!text(&sneaky).contains("secret.txt"), "{}", text(&sneaky));
    let resources = bob.list_all_resources().await.expect("resources");
    assert!(resources.iter().all(|r| !r.uri.contains("secret")));
    let still = call(&alice, "read_file", json!({"path": "secret.txt"})).await;
    assert_eq!(text(&still), "alice's\n");
}

#[tokio::test]
async fn long_calls_report_progress_and_changes_are_announced() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let handler = client.service().clone();
    #[allow(deprecated)]
    client
        .subscribe(rmcp::model::SubscribeRequestParams::new("file:///workspace/report.txt"))
        .await
        .expect("subscribe");
    let result = call(
        &client,
        "code_interpreter",
        json!({"code": "import time\ntime.sleep(2.5)\nopen('report.txt', 'w').write('done')"}),
    )
    .await;
    assert!(!is_error(&result), "{}", text(&result));
    assert_eq!(structured(&result)["status"], "ok");
    assert!(handler.progress.count() >= 2, "progress every second: {}", handler.progress.count());
    // Notifications travel on the session's own stream: wait for them, bounded.
    handler.resource_list_changed.reached(1, Duration::from_secs(10)).await;
    handler.resource_updated.reached(1, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_cancelled_request_stops_its_guest() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let request = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(
        rmcp::model::CallToolRequestParams::new("code_interpreter").with_arguments(
            json!({"code": "open('started', 'w').close()\nwhile True: pass"}).as_object().cloned().unwrap_or_default(),
        ),
    ));
    let handle =
        client.send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options()).await.expect("sent");
    let sandbox = server.app.services.sandbox.get().expect("ready");
    wait_for_stats(&sandbox, |s| s.running > 0, "the call never started").await;
    handle.cancel(Some("the user pressed stop".into())).await.expect("cancel sent");
    wait_for_stats(&sandbox, |s| s.running == 0, "the cancelled guest is still running").await;
    let after = call(&client, "code_interpreter", json!({"code": "print('next')"})).await;
    assert_eq!(text(&after), "next\n");
}

#[tokio::test]
async fn sixteen_sessions_at_once_each_get_their_own_answer() {
    let server = start_server(|_| {}).await;
    let mut sessions = Vec::new();
    for n in 0..16 {
        let url = server.url.clone();
        sessions.push(tokio::spawn(async move {
            let client = connect(&url, None).await;
            call(&client, "write_file", json!({"path": "n.txt", "content": n.to_string()})).await;
            let result =
                call(&client, "code_interpreter", json!({"code": "n = int(open('n.txt').read())\nprint(n * n)"})).await;
            (n, text(&result))
        }));
    }
    for session in sessions {
        let (n, answer) = session.await.expect("session");
        assert_eq!(answer, format!("{}\n", n * n), "session {n}");
    }
}

#[tokio::test]
async fn a_spinning_session_does_not_hold_up_another() {
    let server = start_server(|_| {}).await;
    let spinner = connect(&server.url, None).await;
    let printer = connect(&server.url, None).await;
    let spin = call(&spinner, "code_interpreter", json!({"code": "while True: pass", "timeout_s": 20}));
    let print = async {
        // Start once the spinner holds its slot.
        let sandbox = server.app.services.sandbox.get().expect("ready");
        wait_for_stats(&sandbox, |s| s.running > 0, "the spinner never started").await;
        call(&printer, "code_interpreter", json!({"code": "print('quick')"})).await
    };
    tokio::pin!(spin);
    tokio::select! {
        _ = &mut spin => panic!("the spinner finished first: the print waited behind it"),
        printed = print => assert_eq!(text(&printed), "quick\n"),
    }
}

#[tokio::test]
async fn configured_roots_are_resources_and_read_only_mounts() {
    let logs = tempfile::tempdir().expect("tempdir");
    std::fs::write(logs.path().join("app.log"), "INFO start\nERROR disk full\nINFO stop\n").expect("log");
    let root = toolhost::config::RootSetting { name: "logs".into(), path: logs.path().to_path_buf() };
    let server = start_server(move |s| s.app.roots = vec![root]).await;
    let client = connect(&server.url, None).await;
    let resources = client.list_all_resources().await.expect("resources");
    assert!(resources.iter().any(|r| r.uri == "file:///logs/app.log"), "{resources:?}");
    let templates = client.list_all_resource_templates().await.expect("templates");
    assert!(templates.iter().any(|t| t.uri_template == "file:///logs/{path}"));
    let read = client.read_resource(ReadResourceRequestParams::new("file:///logs/app.log")).await.expect("read");
    match &read.contents[0] {
        ResourceContents::TextResourceContents { text, .. } => assert!(text.contains("ERROR disk full")),
        other => panic!("expected text, got {other:?}"),
    }
    let escape = client.read_resource(ReadResourceRequestParams::new("file:///logs/../../etc/passwd")).await;
    assert!(escape.is_err(), "a root is confined too");
    let code = "print(sum('ERROR' in line for line in open('/logs/app.log')))\ntry:\n    open('/logs/new.txt', 'w')\nexcept OSError as e:\n    print(type(e).__name__)";
    let ran = call(&client, "code_interpreter", json!({"code": code})).await;
    assert_eq!(text(&ran), "1\nPermissionError\n", "readable, not writable");
    assert!(!logs.path().join("new.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principals_queue_does_not_starve_another() {
    let server = start_server(|s| s.server.tokens = vec!["greedy".into(), "modest".into()]).await;
    let sandbox = server.app.services.sandbox.get().expect("ready");
    // Six sessions, six workspaces: calls on one workspace would run one after another.
    let greedy = futures::future::join_all((0..6).map(|_| connect(&server.url, Some("greedy")))).await;
    let modest = connect(&server.url, Some("modest")).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Six 2-second loops from one principal on two slots: two run, four wait.
    let loops: Vec<_> = greedy
        .iter()
        .map(|greedy| {
            let done = done.clone();
            async move {
                let result =
                    call(greedy, "code_interpreter", json!({"code": "while True: pass", "timeout_s": 2})).await;
                assert_eq!(structured(&result)["status"], "timeout");
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .collect();
    let print = async {
        wait_for_stats(&sandbox, |s| s.running == 2 && s.waiting == 4, "the loops never queued").await;
        let printed = call(&modest, "code_interpreter", json!({"code": "print('served')"})).await;
        assert_eq!(text(&printed), "served\n");
        // Served by the second slot to free up, not behind the four queued loops.
        done.load(std::sync::atomic::Ordering::SeqCst)
    };
    let (_, loops_done_before) = tokio::join!(futures::future::join_all(loops), print);
    assert!(loops_done_before <= 3, "the print waited for {loops_done_before} of the other principal's loops");
}
