//! Org tools (`tools/<name>/tool.toml` + `main.py`) and code mode (`from host import tools`):
//! loading and its refusals, argument and output validation, every way a tool can fail, hot
//! reload observed by a real client, and guest code calling tools within its budget and
//! deadline, refused the ones it may not call.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use toolhost::sandbox::Limits;
use toolhost::tools::org::{OrgTool, load_dir};
use toolhost::tools::{Registry, Tool};

use crate::mcp_client::{Counting, call, connect, handle, is_error, structured, text};
use crate::support::start_server;

const OBJECT: &str = "[input_schema]\ntype = \"object\"\n";

/// Writes `dir/<name>/tool.toml` and, unless `None`, `main.py`.
fn tool(dir: &Path, name: &str, manifest: &str, script: Option<&str>) {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::write(folder.join("tool.toml"), manifest).expect("manifest");
    if let Some(script) = script {
        std::fs::write(folder.join("main.py"), script).expect("script");
    }
}

/// A tool folder with a one-line description and the given extra manifest lines.
fn simple(dir: &Path, name: &str, extra: &str, script: &str) {
    tool(dir, name, &format!("description = \"The {name} test tool.\"\n{extra}\n{OBJECT}"), Some(script));
}

/// A folder of tools exercising every outcome.
fn test_tools() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    tool(
        d,
        "add",
        "description = \"Adds two integers.\"\ncode_mode = true\n\
         [input_schema]\ntype = \"object\"\nrequired = [\"a\", \"b\"]\nadditionalProperties = false\n\
         properties = { a = { type = \"integer\" }, b = { type = \"integer\" } }\n\
         [output_schema]\ntype = \"object\"\nrequired = [\"sum\"]\nproperties = { sum = { type = \"integer\" } }\n",
        Some("import json, sys\nargs = json.load(sys.stdin)\nprint(json.dumps({'sum': args['a'] + args['b']}))\n"),
    );
    tool(
        d,
        "liar",
        "description = \"Returns a result its schema forbids.\"\n[input_schema]\ntype = \"object\"\n\
         [output_schema]\ntype = \"object\"\nrequired = [\"count\"]\nproperties = { count = { type = \"integer\" } }\n",
        Some("print('{\"count\": \"seven\"}')\n"),
    );
    simple(
        d,
        "raiser",
        "",
        "import sys\nprint('about to fail', file=sys.stderr)\nraise ValueError('the secret detail')\n",
    );
    simple(d, "garbage", "", "print('hello, I am not JSON')\n");
    simple(d, "silent", "", "pass\n");
    simple(d, "refuser", "code_mode = true", "import sys\nsys.exit('the region \"mars\" does not exist')\n");
    simple(d, "spin", "code_mode = true\n[limits]\ntimeout_s = 1.5", "while True:\n    pass\n");
    simple(d, "greedy", "", "xs = []\nwhile True:\n    xs.append(bytearray(64 * 1024**2))\n");
    simple(d, "writer", "workspace = \"read-write\"", "open('made.txt', 'w').write('hi')\nprint('true')\n");
    simple(d, "reader", "", "open('/workspace/made-by-reader.txt', 'w').write('hi')\nprint('true')\n");
    simple(d, "hidden_from_code", "", "print('1')\n");
    dir
}

#[test]
fn loading_reports_every_bad_folder_with_its_file_and_reason_and_skips_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    simple(d, "good", "", "print('{}')");
    tool(d, "no_script", &format!("description = \"d\"\n{OBJECT}"), None);
    std::fs::create_dir_all(d.join("no_manifest")).expect("folder");
    std::fs::write(d.join("no_manifest/main.py"), "print(1)").expect("script");
    tool(d, "broken_toml", "description = \"unterminated\n", Some("print(1)"));
    tool(d, "unknown_key", &format!("description = \"d\"\ncolour = \"red\"\n{OBJECT}"), Some("print(1)"));
    tool(
        d,
        "bad_schema",
        "description = \"d\"\n[input_schema]\ntype = \"object\"\nproperties = { a = { type = \"nonsense\" } }\n",
        Some("print(1)"),
    );
    tool(d, "array_input", "description = \"d\"\n[input_schema]\ntype = \"array\"\n", Some("print(1)"));
    tool(d, "bad-name", &format!("description = \"d\"\n{OBJECT}"), Some("print(1)"));
    tool(d, "no_description", &format!("description = \" \"\n{OBJECT}"), Some("print(1)"));
    tool(d, "bad_limit", &format!("description = \"d\"\n{OBJECT}[limits]\nmemory_mb = 1\n"), Some("print(1)"));
    simple(d, "needs_logs", "roots = [\"logs\"]", "print(1)");
    simple(d, ".hidden", "", "print(1)");
    simple(d, "_shared", "", "print(1)");

    let loaded = load_dir(d, &Limits::default(), &[]);
    let names: Vec<&str> = loaded.tools.iter().map(|t| t.definition().name.as_str()).collect();
    assert_eq!(names, ["good"]);
    let reason_for = |folder: &str| -> String {
        let problem = loaded
            .problems
            .iter()
            .chain(&loaded.unavailable)
            .find(|p| p.path.starts_with(d.join(folder)))
            .unwrap_or_else(|| panic!("no problem reported for {folder}: {:?}", loaded.problems));
        problem.to_string()
    };
    for (folder, file, reason) in [
        ("no_script", "main.py", "missing main.py"),
        ("no_manifest", "tool.toml", "missing tool.toml"),
        ("broken_toml", "tool.toml", "invalid tool.toml"),
        ("unknown_key", "tool.toml", "unknown field `colour`"),
        ("bad_schema", "tool.toml", "input_schema does not compile"),
        ("array_input", "tool.toml", "input_schema must describe an object"),
        ("bad-name", "tool.toml", "must start with a letter"),
        ("no_description", "tool.toml", "description is empty"),
        ("bad_limit", "tool.toml", "limits.memory_mb must be at least 64"),
        ("needs_logs", "tool.toml", "--root logs="),
    ] {
        let message = reason_for(folder);
        assert!(message.contains(&format!("{folder}/{file}")), "{folder}: the file is named: {message}");
        assert!(message.contains(reason), "{folder}: {message}");
    }
    assert_eq!(loaded.problems.len() + loaded.unavailable.len(), 10, "hidden folders are ignored");
    let available = load_dir(d, &Limits::default(), &["logs".to_string()]);
    assert!(available.tools.iter().any(|t| t.definition().name == "needs_logs"), "offered once its root exists");
    assert!(load_dir(&d.join("missing"), &Limits::default(), &[]).tools.is_empty());
}

#[test]
fn a_tool_named_like_a_built_in_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    simple(dir.path(), "read_file", "title = \"Impostor\"", "print(1)");
    simple(dir.path(), "code_interpreter", "", "print(1)");
    let org: Vec<std::sync::Arc<dyn toolhost::tools::Tool>> = ["read_file", "code_interpreter"]
        .iter()
        .map(|n| std::sync::Arc::new(OrgTool::load(&dir.path().join(n), &Limits::default()).expect("loads")) as _)
        .collect();
    let registry = Registry::build(&Limits::default(), org, None, true);
    assert_ne!(registry.get("read_file").expect("read_file").title, "Impostor");
    assert_ne!(registry.get("code_interpreter").expect("interpreter").title, "code_interpreter");
    assert!(!registry.callable_from_code().contains(&"code_interpreter".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tools_validate_their_arguments_and_results() {
    let tools = test_tools();
    let server = start_server(|s| s.app.tools_dir = tools.path().to_path_buf()).await;
    let client = connect(&server.url, None).await;

    let listed = client.list_all_tools().await.expect("tools");
    let add = listed.iter().find(|t| t.name == "add").expect("add is offered");
    assert_eq!(add.description.as_deref(), Some("Adds two integers."));
    assert!(add.output_schema.is_some());
    assert_eq!(add.annotations.as_ref().and_then(|a| a.read_only_hint), Some(true), "a read-only workspace");

    let sum = call(&client, "add", json!({"a": 2, "b": 40})).await;
    assert!(!is_error(&sum), "{}", text(&sum));
    assert_eq!(structured(&sum), json!({"sum": 42, "workspace": handle(&sum)}));
    assert_eq!(text(&sum), "{\"sum\":42}\n");

    let wrong = call(&client, "add", json!({"a": "two", "b": 40, "c": 1})).await;
    assert!(is_error(&wrong));
    let message = text(&wrong);
    assert!(message.contains(r#"`a`: "two" is not of type "integer" (schema /properties/a/type)"#), "{message}");
    assert!(message.contains("schema /additionalProperties"), "{message}");

    let lie = call(&client, "liar", json!({})).await;
    assert!(is_error(&lie));
    let message = text(&lie);
    assert!(message.contains("does not match its output_schema"), "{message}");
    assert!(
        message.contains(r#"`count`: "seven" is not of type "integer" (schema /properties/count/type)"#),
        "{message}"
    );
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tool_returns_a_clear_error_and_the_server_carries_on() {
    let tools = test_tools();
    let server = start_server(|s| s.app.tools_dir = tools.path().to_path_buf()).await;
    let client = connect(&server.url, None).await;

    let raised = call(&client, "raiser", json!({})).await;
    assert!(is_error(&raised));
    let message = text(&raised);
    assert!(message.starts_with("raiser failed: its code raised ValueError"), "{message}");
    assert!(message.contains("about to fail") && message.contains("ValueError: the secret detail"), "{message}");

    let garbage = call(&client, "garbage", json!({})).await;
    let message = text(&garbage);
    assert!(is_error(&garbage) && message.contains("not one JSON value"), "{message}");
    assert!(message.contains("\"hello, I am not JSON\"") && message.contains("stderr"), "{message}");

    let silent = call(&client, "silent", json!({})).await;
    assert!(is_error(&silent) && text(&silent).contains("silent printed nothing"), "{}", text(&silent));

    let refused = call(&client, "refuser", json!({})).await;
    assert!(is_error(&refused));
    assert_eq!(text(&refused), "the region \"mars\" does not exist");

    let spun = call(&client, "spin", json!({})).await;
    assert!(is_error(&spun) && text(&spun).contains("spin did not finish within its time limit"), "{}", text(&spun));
    let took = stopped_after(&text(&spun));
    assert!((1.4..3.0).contains(&took), "its own 1.5 s limit: {}", text(&spun));

    let greedy = call(&client, "greedy", json!({})).await;
    assert!(is_error(&greedy) && text(&greedy).contains("greedy ran out of memory"), "{}", text(&greedy));

    let denied = call(&client, "reader", json!({})).await;
    assert!(is_error(&denied), "a read-only workspace refuses writes: {}", text(&denied));
    assert!(text(&denied).contains("raised"), "{}", text(&denied));
    let wrote = call(&client, "writer", json!({})).await;
    assert!(!is_error(&wrote), "{}", text(&wrote));
    assert_eq!(structured(&wrote), Value::Null, "true is not an object: text only");
    assert_eq!(text(&wrote), "true\n");
    let listed = call(&client, "list_files", json!({})).await;
    assert!(text(&listed).contains("made.txt") && !text(&listed).contains("made-by-reader"), "{}", text(&listed));

    let after = call(&client, "add", json!({"a": 1, "b": 1})).await;
    assert_eq!(structured(&after), json!({"sum": 2, "workspace": handle(&after)}), "the server carries on");
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_under_the_tools_dir_reload_the_tools_and_notify_clients() {
    let tools = tempfile::tempdir().expect("tempdir");
    simple(tools.path(), "first", "", "print('1')");
    let server = start_server(|s| s.app.tools_dir = tools.path().to_path_buf()).await;
    server.app.catalog().watch().expect("watch");
    let client = connect(&server.url, None).await;
    let counting: &Counting = client.service();
    let names = |tools: Vec<rmcp::model::Tool>| tools.into_iter().map(|t| t.name.to_string()).collect::<Vec<_>>();
    assert!(names(client.list_all_tools().await.expect("tools")).contains(&"first".to_string()));

    let notified = |n: usize| counting.tool_list_changed.reached(n, Duration::from_secs(10));
    simple(tools.path(), "second", "", "print('2')");
    notified(1).await;
    assert!(names(client.list_all_tools().await.expect("tools")).contains(&"second".to_string()));
    let second = call(&client, "second", json!({})).await;
    assert_eq!(text(&second), "2\n");

    std::fs::write(tools.path().join("second/tool.toml"), format!("description = \"Edited.\"\n{OBJECT}"))
        .expect("edit");
    notified(2).await;
    let listed = client.list_all_tools().await.expect("tools");
    let edited = listed.iter().find(|t| t.name == "second").expect("still there");
    assert_eq!(edited.description.as_deref(), Some("Edited."));

    std::fs::write(tools.path().join("second/tool.toml"), "description = ").expect("break it");
    notified(3).await;
    assert!(
        !names(client.list_all_tools().await.expect("tools")).contains(&"second".to_string()),
        "a broken tool goes"
    );

    std::fs::remove_dir_all(tools.path().join("first")).expect("remove");
    notified(4).await;
    let left = names(client.list_all_tools().await.expect("tools"));
    assert!(!left.contains(&"first".to_string()) && left.contains(&"code_interpreter".to_string()), "{left:?}");
    let gone = client
        .call_tool(rmcp::model::CallToolRequestParams::new("first"))
        .await
        .expect_err("a removed tool is unknown");
    assert!(gone.to_string().contains("unknown tool"), "{gone}");
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_code_calls_tools_in_a_loop_and_sees_only_what_it_may() {
    let tools = test_tools();
    let server = start_server(|s| s.app.tools_dir = tools.path().to_path_buf()).await;
    let client = connect(&server.url, None).await;

    let listed = client.list_all_tools().await.expect("tools");
    let interpreter = listed.iter().find(|t| t.name == "code_interpreter").expect("interpreter");
    let description = interpreter.description.as_deref().unwrap_or_default();
    assert!(description.contains("from host import tools"), "{description}");
    assert!(description.contains("add, calculate_sum") && !description.contains("raiser"), "{description}");

    let code = "from host import tools, ToolError\n\
                total = 0\n\
                for i in range(25):\n    total = tools.add(a=total, b=i)['sum']\n\
                print(total)\n\
                print(sorted(n for n in dir(tools) if not n.startswith('_')))\n\
                print(tools.calculate_sum(a=0.5, b=0.25))\n\
                tools.write_file(path='from-code.txt', content='hello')\n\
                print(tools.read_file(path='from-code.txt')['content'])\n\
                try:\n    tools.refuser()\nexcept ToolError as e:\n    print(e.kind, e)\n";
    let ran = call(&client, "code_interpreter", json!({"code": code})).await;
    assert!(!is_error(&ran), "{}", text(&ran));
    let lines: Vec<String> = structured(&ran)["stdout"].as_str().expect("stdout").lines().map(String::from).collect();
    assert_eq!(lines[0], "300", "25 calls of an org tool");
    assert_eq!(
        lines[1],
        "['add', 'calculate_sum', 'delete_file', 'list_files', 'read_file', 'refuser', 'spin', 'write_file']"
    );
    assert_eq!(lines[2], "{'sum': 0.75}");
    assert_eq!(lines[3], "hello", "the file tools share the session's workspace");
    assert_eq!(lines[4], "tool_error the region \"mars\" does not exist");

    // A guest that skips the library and speaks to the door itself is still refused.
    let door = "import _host, json\n\
                def ask(frame):\n    return json.loads(_host.call(json.dumps(frame).encode()))\n\
                print(ask({'v': 1, 'id': 1, 'op': 'call', 'tool': 'code_interpreter', 'args': {'code': '1'}})['error'])\n\
                print(ask({'v': 1, 'id': 2, 'op': 'call', 'tool': 'raiser', 'args': {}})['error'])\n\
                print(ask({'v': 1, 'id': 3, 'op': 'call', 'tool': 'nope'})['error']['kind'])\n\
                print(ask({'v': 1, 'id': 4, 'op': 'launch'})['error']['kind'])\n\
                print(ask({'v': 2, 'id': 5, 'op': 'list'})['error']['kind'])\n\
                print(ask({'v': 1, 'id': 6, 'op': 'call', 'tool': 'add', 'args': [1]})['error']['kind'])\n";
    let ran = call(&client, "code_interpreter", json!({"code": door})).await;
    assert!(!is_error(&ran), "{}", text(&ran));
    let out = structured(&ran)["stdout"].as_str().expect("stdout").to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("'kind': 'denied'") && lines[0].contains("code may not call code_interpreter"), "{out}");
    assert!(lines[1].contains("'kind': 'denied'"), "{out}");
    assert_eq!(&lines[2..], ["unknown_tool", "protocol", "protocol", "invalid_arguments"], "{out}");
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_from_code_keep_failure_detail_on_the_host_and_respect_budget_and_deadline() {
    let tools = test_tools();
    let server = start_server(|s| {
        s.app.tools_dir = tools.path().to_path_buf();
        s.app.code_mode_tools = Some(vec!["add".into(), "raiser".into(), "spin".into()]);
        s.app.code_mode_max_calls = 5;
    })
    .await;
    let client = connect(&server.url, None).await;

    let code = "from host import tools, ToolError\n\
                try:\n    tools.raiser()\nexcept ToolError as e:\n    print(type(e).__name__, e.kind, str(e))\n\
                for i in range(10):\n    try:\n        tools.add(a=i, b=i)\n    except ToolError as e:\n        \
                print(i, type(e).__name__, e.kind)\n        break\n";
    let ran = call(&client, "code_interpreter", json!({"code": code})).await;
    let out = structured(&ran)["stdout"].as_str().expect("stdout").to_string();
    assert!(out.contains("ToolError tool_error raiser failed: its code raised ValueError"), "{out}");
    assert!(!out.contains("secret detail") && !out.contains("about to fail"), "the detail stays on the host: {out}");
    // The list counts as a request; then raiser and three adds: the fourth add is the sixth request.
    assert!(out.contains("3 ToolBudgetExceeded budget_exceeded"), "{out}");

    let code = "from host import tools, ToolTimeout\n\
                try:\n    tools.spin()\nexcept ToolTimeout as e:\n    print('caught', e.kind)\n";
    let ran = call(&client, "code_interpreter", json!({"code": code, "timeout_s": 1.0})).await;
    assert!(!is_error(&ran), "the guest catches the tool's timeout before its own: {}", text(&ran));
    assert_eq!(structured(&ran)["stdout"], "caught timeout\n");
    // The guest's own 1 s deadline held: it finished, so the tool was stopped before 1.5 s.
    assert!(structured(&ran)["duration_ms"].as_f64().is_some_and(|ms| ms < 1000.0), "{}", structured(&ran));
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_mode_can_be_switched_off() {
    let server = start_server(|s| s.app.code_mode_tools = Some(Vec::new())).await;
    let client = connect(&server.url, None).await;
    let ran = call(&client, "code_interpreter", json!({"code": "from host import tools"})).await;
    assert!(is_error(&ran));
    assert!(text(&ran).contains("this run has no tools"), "{}", text(&ran));
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_tools_new_limits_even_when_its_description_is_unchanged() {
    let tools = tempfile::tempdir().expect("tempdir");
    simple(tools.path(), "spin", "[limits]\ntimeout_s = 1.5", "while True:\n    pass\n");
    let server = start_server(|s| s.app.tools_dir = tools.path().to_path_buf()).await;
    let client = connect(&server.url, None).await;
    let spun = call(&client, "spin", json!({})).await;
    assert!(is_error(&spun) && stopped_after(&text(&spun)) >= 1.4, "{}", text(&spun));

    simple(tools.path(), "spin", "[limits]\ntimeout_s = 0.3", "while True:\n    pass\n");
    assert!(!server.app.catalog().reload(), "the tool list itself did not change: no notification");
    let spun = call(&client, "spin", json!({})).await;
    let after = stopped_after(&text(&spun));
    assert!(is_error(&spun) && after < 1.0, "the new 0.3 s limit applies: {}", text(&spun));
    client.cancel().await.expect("close");
}

/// The seconds a timed-out org tool reports it ran ("... (stopped after 1.5 s)").
fn stopped_after(text: &str) -> f64 {
    text.split("stopped after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no running time in {text:?}"))
}
