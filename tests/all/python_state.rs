//! Python state over MCP: variables persist per workspace while every call runs in a fresh
//! instance; a timeout and an out-of-memory call roll back, an exception keeps what it left,
//! `fresh` starts clean; random generators are renewed in calls restored from one state; files
//! left open are closed; the state follows the handle across sessions and a restart and is its
//! owner's alone; the budget and `--python-state off` hold; all of it with and without
//! write-protected guest memory.

use serde_json::{Value, json};

use crate::mcp_client::{Client, call, connect, handle, is_error, structured, text};
use crate::support::start_server;

/// Runs `code` (with `extra` arguments) and returns (stdout, state, status).
async fn run(client: &Client, code: &str, extra: Value) -> (String, Value, String) {
    let mut arguments = json!({"code": code});
    if let (Value::Object(arguments), Value::Object(extra)) = (&mut arguments, extra) {
        arguments.extend(extra);
    }
    let result = call(client, "code_interpreter", arguments).await;
    let content = structured(&result);
    (
        content["stdout"].as_str().unwrap_or_default().to_string(),
        content["state"].clone(),
        content["status"].to_string(),
    )
}

#[tokio::test]
async fn state_persists_rolls_back_on_limits_and_keeps_what_an_exception_left() {
    persists_and_rolls_back(true).await;
}

/// The same where guest memory is not write-protected (`--write-protect off`, or a host that
/// refuses userfaultfd): the pages a call changed are found by comparing.
#[tokio::test]
async fn without_write_protection_state_persists_and_rolls_back_the_same() {
    persists_and_rolls_back(false).await;
}

async fn persists_and_rolls_back(write_protect: bool) {
    let server = start_server(move |s| s.sandbox.write_protect = write_protect).await;
    let client = connect(&server.url, None).await;
    let (_, state, _) = run(&client, "x = 1\nimport numpy as np\nrows = np.arange(10)", json!({})).await;
    assert_eq!((state["restored"].as_bool(), state["saved"].as_bool()), (Some(false), Some(true)), "{state}");
    assert!(state["bytes"].as_u64().is_some_and(|b| b > 0), "{state}");
    let (out, state, _) = run(&client, "x += 1\nprint(x, rows.sum())", json!({})).await;
    assert_eq!(out, "2 45\n");
    assert_eq!(state["restored"], true);

    // A timeout leaves the state as it was before the call.
    let (_, state, status) = run(&client, "x = 100\nimport time\ntime.sleep(30)", json!({"timeout_s": 1})).await;
    assert_eq!(status, "\"timeout\"");
    assert_eq!(state["saved"], false, "{state}");
    assert!(state["note"].as_str().is_some_and(|n| n.contains("timed out")), "{state}");
    assert_eq!(run(&client, "print(x)", json!({})).await.0, "2\n");

    // So does running out of memory.
    let (_, state, status) = run(&client, "x = 200\nhog = bytearray(2000 * 1024 * 1024)", json!({})).await;
    assert_eq!(status, "\"out_of_memory\"");
    assert_eq!(state["saved"], false, "{state}");
    let ran = call(&client, "code_interpreter", json!({"code": "print(x)"})).await;
    assert_eq!(text(&ran), "2\n");

    // A Python exception keeps what the code did before it, as a notebook does.
    let failed = call(&client, "code_interpreter", json!({"code": "x = 3\nraise ValueError('boom')"})).await;
    assert!(is_error(&failed));
    assert_eq!(structured(&failed)["state"]["saved"], true);
    assert_eq!(run(&client, "print(x)", json!({})).await.0, "3\n");

    // fresh: a clean interpreter, whose state then replaces the saved one.
    let (out, state, _) = run(&client, "print('x' in globals())\ny = 'new'", json!({"fresh": true})).await;
    assert_eq!(out, "False\n");
    assert_eq!((state["restored"].as_bool(), state["saved"].as_bool()), (Some(false), Some(true)));
    assert_eq!(run(&client, "print('x' in globals(), y)", json!({})).await.0, "False new\n");
    // Another session's workspace, in the same worker's pool slots, holds none of it.
    let other = connect(&server.url, None).await;
    assert_eq!(run(&other, "print('y' in globals())", json!({})).await.0, "False\n");
}

#[tokio::test]
async fn calls_restored_from_one_state_draw_different_random_numbers_and_open_files_are_closed() {
    let server = start_server(|_| {}).await;
    let client = connect(&server.url, None).await;
    run(&client, "import random\nimport numpy as np", json!({})).await;
    // Both time out, so both start from the same saved state.
    let draw = "print(random.random(), np.random.rand(), flush=True)\nimport time\ntime.sleep(30)";
    let (first, _, _) = run(&client, draw, json!({"timeout_s": 1})).await;
    let (second, _, _) = run(&client, draw, json!({"timeout_s": 1})).await;
    assert!(!first.is_empty() && first != second, "{first:?} {second:?}");

    // A file left open is flushed and closed at the end of the call: its descriptor would name
    // another file in the next one.
    run(&client, "f = open('left-open.txt', 'w')\nf.write('kept')", json!({})).await;
    let (out, _, _) = run(&client, "print(f.closed, open('left-open.txt').read())", json!({})).await;
    assert_eq!(out, "True kept\n");
}

#[tokio::test]
async fn state_follows_its_handle_across_sessions_and_a_restart_and_is_its_owners_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = dir.path().join("workspaces");
    let configure = |s: &mut toolhost::config::Settings| {
        s.server.tokens = vec!["alice".into(), "bob".into()];
        s.app.workspaces_dir = store.clone();
    };
    let server = start_server(configure).await;
    let alice = connect(&server.url, Some("alice")).await;
    let set = call(&alice, "code_interpreter", json!({"code": "secret = 'alice'"})).await;
    let ws = handle(&set);
    // Another session of alice's has its own default workspace, and so its own state.
    let other = connect(&server.url, Some("alice")).await;
    assert_eq!(run(&other, "print('secret' in globals())", json!({})).await.0, "False\n");
    // Bob can neither read nor replace alice's state.
    let bob = connect(&server.url, Some("bob")).await;
    let refused = call(&bob, "code_interpreter", json!({"code": "print(secret)", "workspace": ws})).await;
    assert!(is_error(&refused) && text(&refused).contains("belongs to another user"), "{}", text(&refused));
    let refused =
        call(&bob, "code_interpreter", json!({"code": "secret = 'bob'", "workspace": ws, "fresh": true})).await;
    assert!(is_error(&refused), "{}", text(&refused));
    // Eight more saves: deltas are appended, then merged, so the layers do not pile up.
    for i in 0..8 {
        let (_, state, _) =
            run(&alice, &format!("steps = globals().get('steps', []) + [{i}]"), json!({"workspace": ws})).await;
        assert_eq!((state["restored"].as_bool(), state["saved"].as_bool()), (Some(true), Some(true)), "{state}");
    }
    let layer_files = |dir: &std::path::Path| {
        let names = std::fs::read_dir(dir).expect("state folder").flatten().map(|e| e.file_name());
        names.filter(|name| name.to_string_lossy().starts_with("layer-")).count()
    };
    let layers = layer_files(&store.join(&ws).join("state"));
    assert!((1..=5).contains(&layers), "a base and at most four deltas, not {layers} layers");
    for client in [alice, other, bob] {
        client.cancel().await.expect("close");
    }
    server.shutdown().await;

    // A new process on the same folder restores it from disk.
    let restarted = start_server(configure).await;
    let again = connect(&restarted.url, Some("alice")).await;
    let (out, state, _) = run(&again, "print(secret, steps)", json!({"workspace": ws})).await;
    assert_eq!(out, "alice [0, 1, 2, 3, 4, 5, 6, 7]\n");
    assert_eq!(state["restored"], true);

    // A damaged state is found, dropped and said so; the call runs fresh.
    let layers = store.join(&ws).join("state");
    for entry in std::fs::read_dir(&layers).expect("state folder").flatten() {
        if entry.file_name().to_string_lossy().starts_with("layer-") {
            let mut bytes = std::fs::read(entry.path()).expect("layer");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(entry.path(), bytes).expect("write");
        }
    }
    restarted.shutdown().await;
    let third = start_server(configure).await;
    let client = connect(&third.url, Some("alice")).await;
    let ran = call(&client, "code_interpreter", json!({"code": "print('secret' in globals())", "workspace": ws})).await;
    assert_eq!(structured(&ran)["stdout"], "False\n");
    assert!(text(&ran).contains("--- python state ---\nthe saved Python state is damaged"), "{}", text(&ran));
    // The call's state replaced the damaged one: the workspace keeps state again.
    let (_, state, _) = run(&client, "secret = 'again'", json!({"workspace": ws})).await;
    assert_eq!((state["restored"].as_bool(), state.get("note")), (Some(true), None), "{state}");
    assert_eq!(run(&client, "print(secret)", json!({"workspace": ws})).await.0, "again\n");
}

#[tokio::test]
async fn a_state_over_its_budget_is_not_saved_and_state_can_be_turned_off() {
    let server = start_server(|s| s.app.python_state = Some(4 << 20)).await;
    let client = connect(&server.url, None).await;
    run(&client, "small = 1", json!({})).await;
    let (_, state, status) = run(&client, "import os\nbig = os.urandom(8 << 20)", json!({})).await;
    assert_eq!(status, "\"ok\"");
    assert_eq!(state["saved"], false, "{state}");
    assert!(state["note"].as_str().is_some_and(|n| n.contains("--state-mb")), "{state}");
    assert_eq!(run(&client, "print(small, 'big' in globals())", json!({})).await.0, "1 False\n");

    let off = start_server(|s| s.app.python_state = None).await;
    let client = connect(&off.url, None).await;
    run(&client, "x = 1", json!({})).await;
    let (out, state, _) = run(&client, "print('x' in globals())", json!({})).await;
    assert_eq!(out, "False\n");
    assert_eq!(state, json!({"restored": false, "saved": false, "bytes": 0}));
}

/// A large state (a 24 MB array, past the size whose pages are protected again once restored):
/// what later calls write into it is kept, memory the program freed is not saved, memory it
/// reuses is; with and without write-protection, and from disk after a restart.
#[tokio::test]
async fn a_large_state_keeps_what_calls_write_into_it_and_leaves_out_what_was_freed() {
    for write_protect in [true, false] {
        let dir = tempfile::tempdir().expect("tmp");
        let store = dir.path().join("workspaces");
        let configure = |s: &mut toolhost::config::Settings| {
            s.sandbox.write_protect = write_protect;
            s.app.workspaces_dir = store.clone();
        };
        let server = start_server(configure).await;
        let client = connect(&server.url, None).await;
        // 24 MB of random floats built from another 24 MB array, which is freed: only one is saved.
        let setup = "import numpy as np\nbig = np.random.default_rng(1).random(3_000_000)\ncopy = big * 2\ndel big\n\
                     total = copy.sum()";
        let started = call(&client, "code_interpreter", json!({"code": setup})).await;
        let (ws, state) = (handle(&started), structured(&started)["state"].clone());
        let bytes = state["bytes"].as_u64().unwrap_or_default();
        assert!((24_000_000..36_000_000).contains(&bytes), "one 24 MB array and the heap, not {bytes} bytes: {state}");
        let on = json!({"workspace": ws});
        // A write into the restored array, then memory the freed array held, reused.
        let (_, state, _) = run(&client, "was = copy[1_500_000]\ncopy[1_500_000] = -1.0", on.clone()).await;
        assert_eq!((state["restored"].as_bool(), state["saved"].as_bool()), (Some(true), Some(true)), "{state}");
        run(&client, "again = np.full(3_000_000, 5.0)", on.clone()).await;
        let check = "print(copy[1_500_000], abs(copy.sum() - (total - was - 1)) < 1e-3, again.sum())";
        let expected = "-1.0 True 15000000.0\n";
        for _ in 0..5 {
            assert_eq!(run(&client, check, on.clone()).await.0, expected, "write-protect {write_protect}");
        }
        client.cancel().await.expect("close");
        server.shutdown().await;
        let restarted = start_server(configure).await;
        let client = connect(&restarted.url, None).await;
        let (out, state, _) = run(&client, check, on.clone()).await;
        assert_eq!((out.as_str(), state["restored"].as_bool()), (expected, Some(true)), "{state}");
    }
}
