//! Deny by default: nothing survives a call but workspace files, the guest sees no host
//! environment, no host file, no network.

use toolhost::sandbox::Status;

use crate::support::{PYTHON, assert_ok, run, run_with, with_timeout, workspace};

#[tokio::test]
async fn no_state_is_carried_between_calls() {
    let (_dir, ws) = workspace();
    let first =
        run_with("import sys\nx = 41\nsys.marker = 1\nimport json\njson.marker = 2", PYTHON, &ws, with_timeout(10.0))
            .await;
    assert_ok(&first);
    let second = run_with(
        "import sys, json\nprint(hasattr(sys, 'marker'), hasattr(json, 'marker'), 'x' in globals())",
        PYTHON,
        &ws,
        with_timeout(10.0),
    )
    .await;
    assert_ok(&second);
    assert_eq!(second.stdout, "False False False\n");
}

#[tokio::test]
async fn workspace_files_do_survive_between_calls() {
    let (_dir, ws) = workspace();
    assert_ok(&run_with("open('notes.txt', 'w').write('kept')", PYTHON, &ws, with_timeout(10.0)).await);
    let second = run_with("print(open('/workspace/notes.txt').read())", PYTHON, &ws, with_timeout(10.0)).await;
    assert_eq!(second.stdout, "kept\n");
}

#[tokio::test]
async fn the_guest_sees_no_host_environment() {
    let outcome = run("import os, json\nprint(json.dumps(dict(sorted(os.environ.items()))))").await;
    assert_ok(&outcome);
    let env: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(outcome.stdout.trim()).expect("json env");
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["HOME", "MPLBACKEND", "MPLCONFIGDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONTZPATH", "TMPDIR", "TOOLHOST_CALL_ID"]
    );
    for (name, value) in std::env::vars() {
        if name.len() > 3 && value.len() > 8 {
            assert!(!outcome.stdout.contains(&value), "the host's {name} leaked into the guest");
        }
    }
}

#[tokio::test]
async fn the_guest_sees_only_its_own_folders() {
    let host_only = ["etc", "root", "home", "proc", "sys", "dev", "var"];
    let code = format!(
        "import os\ntry:\n    print('root', sorted(os.listdir('/')))\nexcept OSError as e:\n    print('root', type(e).__name__)\n\
         print({{name: os.path.exists('/' + name) for name in {host_only:?} + ['workspace', 'tmp']}})"
    );
    let outcome = run(&code).await;
    assert_ok(&outcome);
    // The root itself is not a preopen: it cannot be listed, nor can anything of the host's.
    assert!(outcome.stdout.starts_with("root FileNotFoundError\n"), "{}", outcome.stdout);
    for name in host_only {
        assert!(outcome.stdout.contains(&format!("'{name}': False")), "{name} visible: {}", outcome.stdout);
    }
    assert!(outcome.stdout.contains("'workspace': True, 'tmp': True"), "{}", outcome.stdout);
}

#[tokio::test]
async fn the_guest_cannot_connect_anywhere() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n\
         except Exception as e:\n    print('refused', type(e).__name__)\n\
         import urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)\n    print('fetched')\n\
         except Exception as e:\n    print('refused', type(e).__name__)"
    );
    let outcome = run(&code).await;
    assert_ok(&outcome);
    assert!(!outcome.stdout.contains("connected") && !outcome.stdout.contains("fetched"), "{}", outcome.stdout);
    assert_eq!(outcome.stdout.matches("refused").count(), 2, "{}", outcome.stdout);
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "nothing reached the listener");
}

#[tokio::test]
async fn the_stdlib_is_read_only_and_the_workspace_is_confined() {
    let code = "\
import os
results = []
for path in ['/usr/local/lib/python315.zip', '/usr/local/lib/new.txt']:
    try:
        open(path, 'ab').write(b'x')
        results.append('wrote ' + path)
    except OSError as e:
        results.append(type(e).__name__)
for path in ['/workspace/../etc/passwd', '/tmp/../../etc/passwd', '/etc/passwd']:
    try:
        open(path).read()
        results.append('read ' + path)
    except OSError as e:
        results.append(type(e).__name__)
print(results)";
    let outcome = run(code).await;
    assert_ok(&outcome);
    assert!(!outcome.stdout.contains("wrote") && !outcome.stdout.contains("read "), "{}", outcome.stdout);
    // Each of the five attempts failed with an OSError of its own kind.
    assert_eq!(outcome.stdout.matches("Error'").count(), 5, "{}", outcome.stdout);
}

#[tokio::test]
async fn a_symlink_made_by_the_guest_does_not_lead_out() {
    let (dir, ws) = workspace();
    std::fs::write(dir.path().join("host-secret.txt"), "secret").expect("secret");
    let code = "\
import os
for target in ['/etc/passwd', '../host-secret.txt', '/workspace/../host-secret.txt']:
    name = 'link-' + str(abs(hash(target)))
    try:
        os.symlink(target, name)
    except OSError as e:
        print('symlink refused', type(e).__name__)
        continue
    try:
        print('READ', open(name).read())
    except OSError as e:
        print('open refused', type(e).__name__)";
    let outcome = run_with(code, PYTHON, &ws, with_timeout(10.0)).await;
    assert_ok(&outcome);
    assert!(!outcome.stdout.contains("READ"), "{}", outcome.stdout);
    assert_eq!(outcome.stdout.matches(" refused ").count(), 3, "each link was refused: {}", outcome.stdout);
    // Whatever the guest made, the host side refuses to follow it too.
    for entry in ws.list("").expect("list") {
        assert!(ws.read(&entry.0, 0, None).is_err(), "{} readable through a link", entry.0);
    }
}

#[tokio::test]
async fn exceptions_name_their_type_and_the_users_line() {
    let outcome = run("x = 1\ny = 0\nprint(x / y)").await;
    assert_eq!(outcome.status, Status::Error);
    let error = outcome.error.expect("error");
    assert_eq!((error.kind.as_str(), error.message.as_str()), ("ZeroDivisionError", "division by zero"));
    assert!(outcome.stderr.contains("File \"<code>\", line 3"), "{}", outcome.stderr);
    assert_eq!(outcome.exit_code, Some(1));
}

#[tokio::test]
async fn sys_exit_sets_the_exit_code() {
    let failed = run("import sys\nprint('bye')\nsys.exit(3)").await;
    assert_eq!((failed.status, failed.exit_code), (Status::Error, Some(3)));
    assert_eq!(failed.stdout, "bye\n");
    let clean = run("import sys\nsys.exit(0)").await;
    assert_eq!((clean.status, clean.exit_code), (Status::Ok, Some(0)));
}

#[tokio::test]
async fn memory_a_call_wrote_is_not_seen_by_the_next() {
    // Pool slots keep their pages between calls (reset by copying the image back), so check at
    // the memory level: np.empty hands out memory uninitialized.
    let (_dir, ws) = workspace();
    let writer = "import numpy as np\nkeep = [np.full(2**21, 0x7A3C5E91, dtype=np.uint32) for _ in range(4)]\nprint(sum(int(a.sum() > 0) for a in keep))";
    let reader = "import numpy as np\nseen = sum(int((np.empty(2**21, dtype=np.uint32) == 0x7A3C5E91).sum()) for _ in range(4))\nprint(seen)";
    for round in 0..5 {
        let wrote = run_with(writer, PYTHON, &ws, with_timeout(30.0)).await;
        assert_eq!(wrote.stdout, "4\n", "{wrote:?}");
        let read = run_with(reader, PYTHON, &ws, with_timeout(30.0)).await;
        assert_ok(&read);
        assert_eq!(read.stdout, "0\n", "round {round}: a fresh instance saw the previous call's memory");
    }
}
