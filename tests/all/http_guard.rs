//! What the HTTP layer refuses, and how: a missing or wrong token, a foreign Host, a foreign
//! Origin, an oversized body, malformed JSON-RPC, an unknown legacy session. After each, the
//! server is still up and other sessions are untouched. Also health, readiness and metrics.

use futures::StreamExt;
use serde_json::json;

use crate::mcp_client::{call, connect, text};
use crate::support::{TestServer, start_server};

const TOKEN: &str = "s3cret-token";

fn initialize() -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
}

fn post_mcp(server: &TestServer) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/mcp", server.url))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
}

/// `DELETE /mcp` of session `id`, as `token`'s holder.
async fn end_session(server: &TestServer, token: &str, id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .delete(format!("{}/mcp", server.url))
        .bearer_auth(token)
        .header("mcp-session-id", id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("sent")
}

async fn still_up(server: &TestServer) {
    let health = reqwest::get(format!("{}/healthz", server.url)).await.expect("healthz");
    assert_eq!(health.status(), 200);
    let client = connect(&server.url, Some(TOKEN)).await;
    let result = call(&client, "calculate_sum", json!({"a": 1, "b": 1})).await;
    assert_eq!(text(&result), "2");
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let server = start_server(|s| s.server.tokens = vec![TOKEN.into(), "other".into()]).await;
    let missing = post_mcp(&server).json(&initialize()).send().await.expect("sent");
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"toolhost\"");
    let wrong = post_mcp(&server).bearer_auth("s3cret-tokeX").json(&initialize()).send().await.expect("sent");
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers()["www-authenticate"].to_str().unwrap_or_default().contains("invalid_token"));
    let sse = reqwest::get(format!("{}/sse", server.url)).await.expect("sent");
    assert_eq!(sse.status(), 401, "the legacy transport is guarded too");
    let messages = reqwest::Client::new()
        .post(format!("{}/messages?sessionId=x", server.url))
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(messages.status(), 401);
    let right = post_mcp(&server).bearer_auth(TOKEN).json(&initialize()).send().await.expect("sent");
    assert_eq!(right.status(), 200);
    let health = reqwest::get(format!("{}/healthz", server.url)).await.expect("sent");
    assert_eq!(health.status(), 200, "health needs no token");
    still_up(&server).await;
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let server = start_server(|s| {
        s.server.tokens = vec![TOKEN.into()];
        s.server.allowed_hosts = vec!["toolhost.internal".into()];
    })
    .await;
    let evil_host = post_mcp(&server)
        .bearer_auth(TOKEN)
        .header("host", "evil.example")
        .json(&initialize())
        .send()
        .await
        .expect("sent");
    assert_eq!(evil_host.status(), 403);
    let body = evil_host.text().await.expect("body");
    assert!(body.contains("--allowed-host evil.example"), "{body}");
    let configured = post_mcp(&server)
        .bearer_auth(TOKEN)
        .header("host", "toolhost.internal:8000")
        .json(&initialize())
        .send()
        .await
        .expect("sent");
    assert_eq!(configured.status(), 200);
    let evil_origin = post_mcp(&server)
        .bearer_auth(TOKEN)
        .header("origin", "https://evil.example")
        .json(&initialize())
        .send()
        .await
        .expect("sent");
    assert_eq!(evil_origin.status(), 403);
    let port = server.url.rsplit(':').next().expect("a port").to_string();
    let origin =
        |origin: String| post_mcp(&server).bearer_auth(TOKEN).header("origin", origin).json(&initialize()).send();
    assert_eq!(origin(format!("http://localhost:{port}")).await.expect("sent").status(), 200, "our own origin");
    let other_port = origin("http://localhost:6274".into()).await.expect("sent");
    assert_eq!(other_port.status(), 403, "another port on this machine is another site");
    let malformed = post_mcp(&server)
        .bearer_auth(TOKEN)
        .header("host", "[::1]evil.example")
        .json(&initialize())
        .send()
        .await
        .expect("sent");
    assert_eq!(malformed.status(), 400);
    assert!(malformed.text().await.expect("body").contains("malformed"));
    let sse = reqwest::Client::new()
        .get(format!("{}/sse", server.url))
        .bearer_auth(TOKEN)
        .header("host", "evil.example")
        .send()
        .await
        .expect("sent");
    assert_eq!(sse.status(), 403);
    still_up(&server).await;
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_the_limit() {
    let server = start_server(|s| {
        s.server.tokens = vec![TOKEN.into()];
        s.server.max_body_bytes = 1 << 20;
    })
    .await;
    let huge = "x".repeat(2 << 20);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_file", "arguments": {"path": "big", "content": huge}}});
    let refused = post_mcp(&server).bearer_auth(TOKEN).json(&call).send().await.expect("sent");
    assert_eq!(refused.status(), 413);
    assert!(refused.text().await.expect("body").contains("1 MiB limit"));
    let legacy = reqwest::Client::new()
        .post(format!("{}/messages?sessionId=whatever", server.url))
        .bearer_auth(TOKEN)
        .body(serde_json::to_vec(&call).expect("json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(legacy.status(), 413);
    still_up(&server).await;
}

#[tokio::test]
async fn malformed_json_rpc_gets_a_clear_error() {
    let server = start_server(|s| s.server.tokens = vec![TOKEN.into()]).await;
    let garbage = post_mcp(&server).bearer_auth(TOKEN).body("{not json").send().await.expect("sent");
    assert!(garbage.status().is_client_error(), "{}", garbage.status());
    let not_rpc = post_mcp(&server).bearer_auth(TOKEN).body("{\"hello\": 1}").send().await.expect("sent");
    assert!(not_rpc.status().is_client_error(), "{}", not_rpc.status());

    // The legacy transport: open a stream, read its endpoint, then post garbage to it.
    let stream =
        reqwest::Client::new().get(format!("{}/sse", server.url)).bearer_auth(TOKEN).send().await.expect("sse");
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut body = stream.bytes_stream();
    let mut head = String::new();
    while !head.contains("\n\n") {
        let chunk = body.next().await.expect("an event").expect("bytes");
        head.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(head.starts_with("event: endpoint\ndata: /messages?sessionId="), "{head}");
    let endpoint = head.lines().nth(1).and_then(|l| l.strip_prefix("data: ")).expect("endpoint").to_string();
    let post = |body: &'static str| {
        reqwest::Client::new().post(format!("{}{endpoint}", server.url)).bearer_auth(TOKEN).body(body).send()
    };
    let parse_error = post("{not json").await.expect("sent");
    assert_eq!(parse_error.status(), 400);
    let parsed: serde_json::Value = parse_error.json().await.expect("json-rpc error");
    assert_eq!(parsed["error"]["code"], -32700);
    let invalid = post("{\"jsonrpc\": \"2.0\", \"nonsense\": true}").await.expect("sent");
    let parsed: serde_json::Value = invalid.json().await.expect("json-rpc error");
    assert_eq!(parsed["error"]["code"], -32600);
    let accepted = post("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2024-11-05\",\"capabilities\":{},\"clientInfo\":{\"name\":\"raw\",\"version\":\"0\"}}}")
        .await
        .expect("sent");
    assert_eq!(accepted.status(), 202);
    let mut reply = String::new();
    while !reply.contains("\"result\"") {
        let chunk = body.next().await.expect("an event").expect("bytes");
        reply.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(reply.contains("event: message") && reply.contains("\"name\":\"toolhost\""), "{reply}");

    let unknown = reqwest::Client::new()
        .post(format!("{}/messages?sessionId=0000", server.url))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.expect("body").contains("open a new stream with GET /sse"));
    still_up(&server).await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = start_server(|_| {}).await;
    let ready = reqwest::get(format!("{}/readyz", server.url)).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<serde_json::Value>().await.expect("json")["status"], "ready");
    let client = connect(&server.url, None).await;
    call(&client, "code_interpreter", json!({"code": "print(1)"})).await;
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.expect("metrics").text().await.expect("text");
    for name in [
        "toolhost_tool_calls_total",
        "toolhost_tool_call_duration_seconds_bucket",
        "toolhost_instances_in_flight",
        "toolhost_queue_depth",
        "toolhost_fuel_used",
        "toolhost_sessions_active",
        "toolhost_worker_resident_bytes{worker=",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    let workers = server.app.services.sandbox.get().expect("ready").worker_pids().len();
    assert!(workers > 0, "the server runs guests in worker processes");
    assert!(metrics.contains(&format!("toolhost_worker_processes_up {workers}")), "{metrics}");
    assert!(metrics.contains("tool=\"code_interpreter\""), "{metrics}");
}

#[tokio::test]
async fn shutdown_lets_a_running_call_finish() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    let app = server.app.clone();
    let running = call(&client, "code_interpreter", json!({"code": "import time\ntime.sleep(1.5)\nprint('finished')"}));
    let stop = async {
        let sandbox = app.services.sandbox.get().expect("ready");
        crate::support::wait_for_stats(&sandbox, |s| s.running > 0, "the call never started").await;
        server.shutdown().await;
    };
    let (result, ()) = tokio::join!(running, stop);
    assert_eq!(text(&result), "finished\n");
}

#[tokio::test]
async fn another_principal_cannot_act_in_a_session() {
    const OTHER: &str = "another-tenant";
    let server = start_server(|s| s.server.tokens = vec![TOKEN.into(), OTHER.into()]).await;

    // Streamable HTTP: the owner opens a session and writes a file in it.
    let opened = post_mcp(&server).bearer_auth(TOKEN).json(&initialize()).send().await.expect("sent");
    assert_eq!(opened.status(), 200);
    let id = opened.headers()["mcp-session-id"].to_str().expect("ascii").to_string();
    let in_session = |token: &str, body: serde_json::Value| {
        post_mcp(&server)
            .bearer_auth(token)
            .header("mcp-session-id", &id)
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(in_session(TOKEN, initialized).await.expect("sent").status(), 202);
    let write = |content: &str| {
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "write_file", "arguments": {"path": "owner.txt", "content": content}}})
    };
    let own = in_session(TOKEN, write("the owner's")).await.expect("sent");
    assert_eq!(own.status(), 200);
    assert!(own.text().await.expect("body").contains("owner.txt"), "the owner's call ran");

    // Another principal naming that session: as if it did not exist, whatever the method.
    let foreign = in_session(OTHER, write("overwritten")).await.expect("sent");
    assert_eq!(foreign.status(), 404);
    let stream = reqwest::Client::new()
        .get(format!("{}/mcp", server.url))
        .bearer_auth(OTHER)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id)
        .send()
        .await
        .expect("sent");
    assert_eq!(stream.status(), 404, "another principal cannot listen to the session");
    assert_eq!(end_session(&server, OTHER, &id).await.status(), 404, "another principal cannot end the session");
    // The owner's file is untouched, and its session still works.
    let read = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "read_file", "arguments": {"path": "owner.txt"}}});
    let back = in_session(TOKEN, read).await.expect("sent");
    assert_eq!(back.status(), 200);
    let body = back.text().await.expect("body");
    assert!(body.contains("the owner's") && !body.contains("overwritten"), "{body}");
    // Its own DELETE answers 200, as the spec's clients expect.
    assert_eq!(end_session(&server, TOKEN, &id).await.status(), 200);

    // Legacy SSE: another principal posting to the owner's endpoint gets 404; the owner 202.
    let stream =
        reqwest::Client::new().get(format!("{}/sse", server.url)).bearer_auth(TOKEN).send().await.expect("sse");
    let mut body = stream.bytes_stream();
    let mut head = String::new();
    while !head.contains("\n\n") {
        let chunk = body.next().await.expect("an event").expect("bytes");
        head.push_str(&String::from_utf8_lossy(&chunk));
    }
    let endpoint = head.lines().nth(1).and_then(|l| l.strip_prefix("data: ")).expect("endpoint").to_string();
    let hello = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2024-11-05\",\"capabilities\":{},\"clientInfo\":{\"name\":\"raw\",\"version\":\"0\"}}}";
    let post = |token: &'static str| {
        reqwest::Client::new().post(format!("{}{endpoint}", server.url)).bearer_auth(token).body(hello).send()
    };
    assert_eq!(post(OTHER).await.expect("sent").status(), 404);
    assert_eq!(post(TOKEN).await.expect("sent").status(), 202);
    still_up(&server).await;
}

#[tokio::test]
async fn sessions_are_capped_per_principal_and_in_all() {
    const OTHER: &str = "another-tenant";
    let server = start_server(|s| {
        s.server.tokens = vec![TOKEN.into(), OTHER.into()];
        s.server.max_sessions_per_principal = 2;
        s.server.max_sessions = 3;
    })
    .await;
    let open = |token: &'static str| post_mcp(&server).bearer_auth(token).json(&initialize()).send();
    let first = open(TOKEN).await.expect("sent");
    assert_eq!(first.status(), 200);
    let first_id = first.headers()["mcp-session-id"].to_str().expect("ascii").to_string();
    assert_eq!(open(TOKEN).await.expect("sent").status(), 200);
    let third = open(TOKEN).await.expect("sent");
    assert_eq!(third.status(), 429, "a principal's third session");
    assert_eq!(third.headers()["retry-after"], "30");
    assert!(third.text().await.expect("body").contains("--max-sessions-per-principal"));
    let legacy =
        reqwest::Client::new().get(format!("{}/sse", server.url)).bearer_auth(TOKEN).send().await.expect("sse");
    assert_eq!(legacy.status(), 429, "the legacy transport counts against the same cap");

    // Another principal still gets one, up to the total.
    assert_eq!(open(OTHER).await.expect("sent").status(), 200);
    let over = open(OTHER).await.expect("sent");
    assert_eq!(over.status(), 429, "the fourth session in all");
    assert!(over.text().await.expect("body").contains("--max-sessions"));

    // Closing a session makes room again.
    assert_eq!(end_session(&server, TOKEN, &first_id).await.status(), 200);
    assert_eq!(open(TOKEN).await.expect("sent").status(), 200, "room after a close");
}

#[tokio::test]
async fn sessions_silent_since_their_handshake_make_room_and_used_ones_stay() {
    let server = start_server(|s| {
        s.server.tokens = vec![TOKEN.into()];
        s.server.max_sessions_per_principal = 2;
        s.server.unused_session_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let used = connect(&server.url, Some(TOKEN)).await;
    assert_eq!(text(&call(&used, "calculate_sum", json!({"a": 1, "b": 2})).await), "3");
    let silent =
        reqwest::Client::new().get(format!("{}/sse", server.url)).bearer_auth(TOKEN).send().await.expect("sse");
    assert_eq!(silent.status(), 200);
    let open = || post_mcp(&server).bearer_auth(TOKEN).json(&initialize()).send();
    assert_eq!(open().await.expect("sent").status(), 429, "both sessions are young: the cap holds");

    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let third = open().await.expect("sent");
    assert_eq!(third.status(), 200, "the silent session was closed to make room");
    let mut events = silent.bytes_stream();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(chunk) = events.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent session's stream ends");
    assert_eq!(text(&call(&used, "calculate_sum", json!({"a": 2, "b": 2})).await), "4", "the used one stays");
}

#[tokio::test]
async fn a_principal_past_its_call_cap_is_refused_and_another_is_served() {
    const OTHER: &str = "another-tenant";
    let server = start_server(|s| {
        s.server.tokens = vec![TOKEN.into(), OTHER.into()];
        s.sandbox.max_calls_per_principal = 1;
    })
    .await;
    let (first, second) = (connect(&server.url, Some(TOKEN)).await, connect(&server.url, Some(TOKEN)).await);
    let other = connect(&server.url, Some(OTHER)).await;
    let sleeper = json!({"code": "import time\ntime.sleep(1.5)\nprint('slept')"});
    let running = tokio::spawn(async move { call(&first, "code_interpreter", sleeper).await });
    // The first call holds the principal's one place once it runs.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let refused = call(&second, "code_interpreter", json!({"code": "print('second')"})).await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    assert!(text(&refused).contains("max_calls_per_principal"), "{}", text(&refused));
    let served = call(&other, "code_interpreter", json!({"code": "print('other')"})).await;
    assert!(text(&served).contains("other"), "another principal is served: {}", text(&served));
    let done = running.await.expect("task");
    assert!(text(&done).contains("slept"), "{}", text(&done));
    let again = call(&second, "code_interpreter", json!({"code": "print('again')"})).await;
    assert!(text(&again).contains("again"), "room again once the first call ended: {}", text(&again));
}

#[tokio::test]
async fn one_principals_workspaces_together_stay_within_its_disk_quota() {
    const OTHER: &str = "another-tenant";
    const MIB: u64 = 1 << 20;
    let server = start_server(|s| {
        s.server.tokens = vec![TOKEN.into(), OTHER.into()];
        s.sandbox.limits.workspace_bytes = 4 * MIB;
        s.sandbox.limits.principal_disk_bytes = 5 * MIB;
    })
    .await;
    let fill = json!({"code": "open('data.bin', 'wb').write(b'x' * (3 << 20))\nprint('written')"});
    let first = connect(&server.url, Some(TOKEN)).await;
    assert!(text(&call(&first, "code_interpreter", fill.clone()).await).contains("written"));
    // A second session of the same principal: within its own 4 MiB, past the principal's 5 MiB.
    let second = connect(&server.url, Some(TOKEN)).await;
    let refused = call(&second, "code_interpreter", fill.clone()).await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    assert!(text(&refused).contains("your workspaces together"), "{}", text(&refused));
    let other = connect(&server.url, Some(OTHER)).await;
    assert!(text(&call(&other, "code_interpreter", fill).await).contains("written"), "another principal has its own");
}
