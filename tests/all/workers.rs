//! Worker processes: a worker that dies loses only the call it ran and is replaced, and holds
//! none of the server's environment; guests on threads (worker processes off) still run.

use std::time::Duration;

use toolhost::progress::Progress;
use toolhost::sandbox::{Call, Sandbox, SandboxError, Status};

use crate::support::{PYTHON, settings, with_timeout, workspace};

fn sandbox_with(max_concurrency: usize, worker_processes: bool) -> Sandbox {
    let mut settings = settings();
    settings.sandbox.max_concurrency = max_concurrency;
    settings.sandbox.worker_processes = worker_processes;
    toolhost::commands::start_sandbox(&settings, &[PYTHON.to_string()], &Progress::log()).expect("sandbox")
}

async fn eventually<T>(mut probe: impl FnMut() -> Option<T>, why: &str) -> T {
    for _ in 0..300 {
        if let Some(found) = probe() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{why}");
}

#[tokio::test]
async fn a_killed_worker_loses_only_its_call_and_is_replaced() {
    let sandbox = sandbox_with(2, true);
    let pids = sandbox.worker_pids();
    assert_eq!(pids.len(), 2, "one worker per slot: {pids:?}");
    assert!(pids.iter().all(|&pid| pid != 0 && pid != std::process::id()), "{pids:?}");
    // A worker inherits none of the server's environment beyond what it needs (this test
    // process has CARGO_* variables, for one).
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).expect("a worker's environment");
    let names: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry.split(|&b| b == b'=').next().unwrap_or_default()).into_owned())
        .collect();
    let allowed = ["PATH", "HOME", "TMPDIR", "LANG", "TOOLHOST_LOG", "TOOLHOST_LOG_FORMAT", "TOOLHOST_PYTHON"];
    assert!(names.iter().all(|name| allowed.contains(&name.as_str()) || name.starts_with("RUST_")), "{names:?}");
    assert!(std::env::vars().any(|(name, _)| name.starts_with("CARGO_")), "the test itself has CARGO_* variables");
    let (_a, doomed_ws) = workspace();
    let (_b, other_ws) = workspace();

    let doomed = sandbox.run(Call::new(
        "import time\nopen('started', 'w').close()\ntime.sleep(60)".into(),
        &doomed_ws,
        with_timeout(30.0),
    ));
    // The doomed guest starts first, alone, so it holds the first worker.
    let other = async {
        eventually(|| doomed_ws.host_path().join("started").exists().then_some(()), "the guest never started").await;
        let doomed_worker = sandbox.worker_pids()[0];
        let other = sandbox.run(Call::new(
            "import time\nopen('started', 'w').close()\ntime.sleep(1.5)\nprint('survived')".into(),
            &other_ws,
            with_timeout(30.0),
        ));
        (other.await, doomed_worker)
    };
    let killer = async {
        eventually(
            || {
                (doomed_ws.host_path().join("started").exists() && other_ws.host_path().join("started").exists())
                    .then_some(())
            },
            "the guests never started",
        )
        .await;
        let victim = sandbox.worker_pids()[0];
        let status = std::process::Command::new("kill").arg("-KILL").arg(victim.to_string()).status().expect("kill");
        assert!(status.success());
        victim
    };
    let (doomed, (other, doomed_worker), victim) = tokio::join!(doomed, other, killer);
    assert_eq!(doomed_worker, victim);

    let lost = match doomed {
        Err(SandboxError::Internal(e)) => format!("{e:#}"),
        other => panic!("the killed worker's call should fail, not {other:?}"),
    };
    assert!(lost.contains("worker process") && lost.contains("retry"), "{lost}");
    let other = other.expect("the other worker's call is untouched");
    assert_eq!(other.status, Status::Ok, "{other:?}");
    assert_eq!(other.stdout.trim(), "survived");

    let replaced = eventually(
        || {
            let pids = sandbox.worker_pids();
            (pids.iter().all(|&pid| pid != 0) && !pids.contains(&victim)).then_some(pids)
        },
        "the killed worker was not replaced",
    )
    .await;
    assert_eq!(replaced.len(), 2);
    let (_c, ws) = workspace();
    for _ in 0..3 {
        let after = sandbox.run(Call::new("print(6 * 7)".into(), &ws, with_timeout(30.0))).await.expect("runs");
        assert_eq!(after.stdout.trim(), "42", "{after:?}");
    }
}

#[tokio::test]
async fn guests_run_on_threads_when_worker_processes_are_off() {
    let sandbox = sandbox_with(1, false);
    assert!(sandbox.worker_pids().is_empty());
    let (_dir, ws) = workspace();
    let outcome = sandbox.run(Call::new("print('threads')".into(), &ws, with_timeout(30.0))).await.expect("runs");
    assert_eq!(outcome.stdout.trim(), "threads");
    let timed_out = sandbox.run(Call::new("while True: pass".into(), &ws, with_timeout(0.5))).await.expect("ends");
    assert_eq!(timed_out.status, Status::Timeout);
}
