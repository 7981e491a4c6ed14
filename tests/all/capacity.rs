//! The concurrency cap and its bounded queue, and cancellation of a running guest.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use toolhost::progress::Progress;
use toolhost::sandbox::{Busy, Call, Sandbox, SandboxError, Status};
use toolhost::workspace::Workspace;

use crate::support::{PYTHON, settings, wait_for_stats, with_timeout, workspace};

/// A sandbox that runs one guest at a time and lets none wait, with a lock its tests take so
/// that each sees only its own guests.
async fn single_slot_sandbox() -> (&'static Sandbox, tokio::sync::MutexGuard<'static, ()>) {
    static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = EXCLUSIVE.lock().await;
    (single_slot(), guard)
}

fn single_slot() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut settings = settings();
        settings.sandbox.max_concurrency = 1;
        settings.sandbox.queue_depth = 0;
        toolhost::commands::start_sandbox(&settings, &[PYTHON.to_string()], &Progress::log()).expect("sandbox")
    })
}

const WAITS_IN_A_HOST_CALL: &str = "import time\nopen('started', 'w').close()\ntime.sleep(60)";

fn call<'a>(code: &str, ws: &'a Workspace, cancel: CancellationToken) -> Call<'a> {
    Call { runtime: Some(PYTHON), cancel, ..Call::new(code.into(), ws, with_timeout(20.0)) }
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_a_cancelled_guest_stops_at_once() {
    let (sandbox, _exclusive) = single_slot_sandbox().await;
    let (_a, first_ws) = workspace();
    let (_b, second_ws) = workspace();
    let cancel = CancellationToken::new();
    let first = sandbox.run(call(WAITS_IN_A_HOST_CALL, &first_ws, cancel.clone()));
    let observer = async {
        wait_for_stats(sandbox, |s| s.running == 1, "the first guest never started").await;
        let refused = sandbox.run(call("print('second')", &second_ws, CancellationToken::new())).await;
        assert!(
            matches!(refused, Err(SandboxError::Busy(Busy { running: 1, waiting: 0, per_principal: None }))),
            "{refused:?}"
        );
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("retry"), "{message}");
        cancel.cancel();
        Instant::now()
    };
    let (outcome, cancelled_at) = tokio::join!(first, observer);
    let outcome = outcome.expect("the first call ends");
    assert_eq!(outcome.status, Status::Error);
    assert_eq!(outcome.error.as_ref().map(|e| e.kind.as_str()), Some("Cancelled"));
    assert!(cancelled_at.elapsed() < Duration::from_secs(2), "the guest stopped promptly");
    // The slot is free again.
    let after = sandbox.run(call("print('again')", &second_ws, CancellationToken::new())).await.expect("runs");
    assert_eq!(after.stdout, "again\n");
}

#[tokio::test]
async fn dropping_the_call_stops_the_guest_and_frees_its_slot() {
    let (sandbox, _exclusive) = single_slot_sandbox().await;
    let (_a, ws) = workspace();
    let spin = "open('started', 'w').close()\nwhile True: pass";
    let dropped = async {
        tokio::select! {
            _ = sandbox.run(call(spin, &ws, CancellationToken::new())) => panic!("the spin ended by itself"),
            () = wait_for_stats(sandbox, |s| s.running == 1, "the spin never started") => {}
        }
    };
    dropped.await;
    // The guest was stopped when its future was dropped: the single slot frees up.
    wait_for_stats(sandbox, |s| s.running == 0, "the dropped guest still holds its slot").await;
    let (_b, other) = workspace();
    let outcome = sandbox.run(call("print('next')", &other, CancellationToken::new())).await.expect("runs");
    assert_eq!(outcome.stdout, "next\n");
}
