//! Workspace and `/tmp` quotas hold while the guest writes: every way to grow a tree (append,
//! extend, truncate up, a sparse write, deep folders, many entries, links, moves between
//! trees) fails in the guest with an `OSError`, keeps what was there whole, and leaves the
//! tree within its quota. The file tools draw on the same ledger.

use std::process::Command;

use toolhost::sandbox::{Limits, Status};
use toolhost::workspace::{Quota, Workspace};

use crate::support::{PYTHON, assert_ok, run_with, sandbox, toolhost_bin};

const MIB: u64 = 1 << 20;

fn small(bytes: u64, files: u64) -> (tempfile::TempDir, Workspace, Limits) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = Workspace::open(dir.path().join("ws"), Quota { bytes, files }).expect("workspace");
    let limits = Limits { workspace_bytes: bytes, workspace_files: files, tmp_bytes: 4 * MIB, ..Limits::default() };
    (dir, ws, limits)
}

/// What the folder holds on disk, walked afresh.
fn on_disk(ws: &Workspace) -> (u64, u64) {
    let index = ws.index().expect("index");
    (index.bytes(), index.count())
}

/// A guest helper: runs each attempt, printing `name ok` or `name ERRNO`.
const ATTEMPT: &str = r#"
import os, errno
def attempt(name, fn):
    try:
        fn(); print(name, 'ok')
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
"#;

#[tokio::test]
async fn every_way_to_grow_the_workspace_stops_at_its_quota_with_enospc() {
    let (_dir, ws, limits) = small(4 * MIB, 40);
    ws.write("keep.txt", b"precious").expect("a file from before");
    let code = ATTEMPT.to_string()
        + r#"
open('/workspace/a.bin', 'wb').write(b'a' * (2 << 20))
def append():
    with open('/workspace/a.bin', 'ab') as f:
        for _ in range(8): f.write(b'b' * (1 << 19))
attempt('append', append)
def pwrite_past_end():
    fd = os.open('/workspace/a.bin', os.O_WRONLY); os.pwrite(fd, b'c', 64 << 20)
attempt('pwrite', pwrite_past_end)
def truncate_up():
    with open('/workspace/a.bin', 'r+b') as f: f.truncate(1 << 30)
attempt('truncate', truncate_up)
def sparse():
    with open('/workspace/s.bin', 'wb') as f: f.seek(1 << 30); f.write(b'1')
attempt('sparse', sparse)
def deep():
    os.makedirs('/workspace/' + '/'.join(['d'] * 70))
attempt('deep', deep)
def entries():
    for i in range(100): os.mkdir(f'/workspace/m{i}')
attempt('entries', entries)
def links():
    for i in range(100): os.symlink('keep.txt', f'/workspace/l{i}')
attempt('symlinks', links)
attempt('hardlink', lambda: os.link('/workspace/keep.txt', '/workspace/hard'))
def move_in():
    open('/tmp/t', 'wb').write(b't' * 1000); os.rename('/tmp/t', '/workspace/t')
attempt('move-in', move_in)
print('size', os.path.getsize('/workspace/a.bin'))
"#;
    let outcome = run_with(&code, PYTHON, &ws, limits).await;
    assert_ok(&outcome);
    let said: Vec<&str> = outcome.stdout.lines().collect();
    for refused in [
        "append ENOSPC",
        "pwrite ENOSPC",
        "truncate ENOSPC",
        "sparse ENOSPC",
        "deep ENOSPC",
        "entries ENOSPC",
        "symlinks ENOSPC",
        "hardlink ENOTSUP",
        "move-in EXDEV",
    ] {
        assert!(said.contains(&refused), "{refused} missing from {said:?}");
    }
    let (bytes, entries) = on_disk(&ws);
    assert!(bytes <= 4 * MIB && entries <= 40, "the workspace holds {bytes} bytes in {entries} entries");
    let size: u64 = said.last().and_then(|l| l.strip_prefix("size ")).and_then(|n| n.parse().ok()).expect("size");
    assert_eq!(size % (1 << 19), 0, "appends are whole or refused, never cut: {size}");
    assert_eq!(ws.read("keep.txt", 0, None).expect("read").0, b"precious", "what was there is kept");
    assert_eq!(ws.ledger().used(), (bytes, entries), "the ledger agrees with the disk");
}

#[tokio::test]
async fn an_uncaught_refusal_names_the_quota_and_freed_room_can_be_used_again() {
    let (_dir, ws, limits) = small(2 * MIB, 100);
    let fill = "open('/workspace/big.bin', 'wb').write(b'x' * (3 << 20))";
    let outcome = run_with(fill, PYTHON, &ws, limits).await;
    assert_eq!(outcome.status, Status::Error, "{outcome:?}");
    let error = outcome.error.expect("error");
    assert!(error.message.contains("workspace quota (2 MiB"), "{}", error.message);
    assert!(on_disk(&ws).0 <= 2 * MIB);

    ws.write("tool.bin", &vec![0u8; MIB as usize + MIB as usize / 2]).expect("the file tool writes within the quota");
    let refused = run_with("open('/workspace/g.bin', 'wb').write(b'g' * (1 << 20))", PYTHON, &ws, limits).await;
    assert_eq!(refused.status, Status::Error, "the guest sees what the file tool took: {refused:?}");
    ws.delete("tool.bin").expect("delete");
    let fits = run_with("open('/workspace/g.bin', 'wb').write(b'g' * (1 << 20))", PYTHON, &ws, limits).await;
    assert_ok(&fits);
    let err = ws.write("more.bin", &vec![0u8; MIB as usize + 1]).expect_err("the file tool sees the guest's file");
    assert!(err.to_string().contains("quota"), "{err}");
}

#[tokio::test]
async fn tmp_has_its_own_budget_per_call() {
    let (_dir, ws, limits) = small(64 * MIB, 100);
    let code = "import errno\nn = 0\ntry:\n    with open('/tmp/fill', 'wb') as f:\n        for _ in range(64):\n            f.write(b't' * (1 << 20)); n += 1\nexcept OSError as e:\n    print(n, errno.errorcode[e.errno])\n";
    for _ in 0..2 {
        let outcome = run_with(code, PYTHON, &ws, limits).await;
        assert_ok(&outcome);
        assert_eq!(outcome.stdout, "4 ENOSPC\n", "each call gets 4 MiB of /tmp afresh");
    }
}

#[tokio::test]
async fn concurrent_calls_in_one_workspace_never_take_it_over_quota() {
    let (_dir, ws, limits) = small(8 * MIB, 100);
    let code = |name: &str| {
        format!(
            "n = 0\ntry:\n    with open('/workspace/{name}', 'ab') as f:\n        for _ in range(16):\n            f.write(b'w' * (1 << 20)); f.flush(); n += 1\nexcept OSError:\n    pass\nprint(n)"
        )
    };
    let (code_a, code_b) = (code("a.bin"), code("b.bin"));
    let (a, b) = tokio::join!(run_with(&code_a, PYTHON, &ws, limits), run_with(&code_b, PYTHON, &ws, limits));
    let written: u64 = [a, b].iter().map(|o| o.stdout.trim().parse::<u64>().expect("count")).sum();
    assert_eq!(written, 8, "the two calls share 8 MiB between them");
    assert!(on_disk(&ws).0 <= 8 * MIB);
}

#[test]
fn toolhost_run_holds_the_workspace_quota_while_the_call_writes() {
    sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let code = "import os\nfor i in range(1000):\n    os.makedirs(f'/workspace/x/{i}')";
    let output = Command::new(toolhost_bin())
        .args(["run", "--workspace-files", "50", "--workspace", workspace.to_str().expect("utf8"), "-c", code])
        .env("TOOLHOST_LOG", "warn")
        .output()
        .expect("toolhost runs");
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(outcome["status"], "error", "{outcome}");
    assert!(outcome["error"]["message"].as_str().unwrap_or_default().contains("50 files and folders"), "{outcome}");
    let entries = walkdir_count(&workspace);
    assert!(entries <= 50, "{entries} entries");
}

fn walkdir_count(root: &std::path::Path) -> usize {
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            count += 1;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    count
}
