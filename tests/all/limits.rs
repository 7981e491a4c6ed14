//! Every limit, each with a guest that tries to break it: time (CPU and blocked), fuel,
//! memory, output.

use std::time::Duration;

use toolhost::sandbox::{Limits, Status};

use crate::support::{PYTHON, run_with, with_timeout, workspace};

#[tokio::test]
async fn a_busy_loop_ends_as_timeout_near_its_deadline() {
    let (_dir, ws) = workspace();
    let outcome = run_with("while True: pass", PYTHON, &ws, with_timeout(1.0)).await;
    assert_eq!(outcome.status, Status::Timeout, "{outcome:?}");
    assert_eq!(outcome.error.as_ref().map(|e| e.kind.as_str()), Some("Timeout"));
    assert!(outcome.duration_ms >= 1000.0 && outcome.duration_ms < 1500.0, "{}", outcome.duration_ms);
    assert_eq!(outcome.exit_code, None);
}

#[tokio::test]
async fn a_guest_sleeping_in_a_host_call_is_stopped_at_its_deadline() {
    let (_dir, ws) = workspace();
    let outcome =
        run_with("import time\nprint('before', flush=True)\ntime.sleep(120)", PYTHON, &ws, with_timeout(1.0)).await;
    assert_eq!(outcome.status, Status::Timeout, "{outcome:?}");
    assert!(outcome.duration_ms < 1500.0, "{}", outcome.duration_ms);
    assert_eq!(outcome.stdout, "before\n", "output written before the deadline is kept");
}

#[tokio::test]
async fn fuel_exhaustion_ends_as_out_of_fuel() {
    let (_dir, ws) = workspace();
    let limits = Limits { fuel: 2_000_000_000, ..Limits::default() };
    let outcome = run_with("while True: pass", PYTHON, &ws, limits).await;
    assert_eq!(outcome.status, Status::OutOfFuel, "{outcome:?}");
    assert_eq!(outcome.fuel_used, Some(2_000_000_000));
}

#[tokio::test]
async fn fuel_used_is_reported() {
    let (_dir, ws) = workspace();
    let small = run_with("print(1+1)", PYTHON, &ws, Limits::default()).await;
    let big = run_with("sum(i*i for i in range(10**6))", PYTHON, &ws, Limits::default()).await;
    let (small, big) = (small.fuel_used.expect("fuel"), big.fuel_used.expect("fuel"));
    assert!(small > 0 && big > small * 10, "print: {small}, sum: {big}");
}

#[tokio::test]
async fn growing_past_the_memory_cap_is_out_of_memory() {
    let (_dir, ws) = workspace();
    let limits = Limits { memory_bytes: 256 << 20, ..Limits::default() };
    let code = "xs = []\nwhile True:\n    xs.append(bytearray(64 * 1024**2))";
    let outcome = run_with(code, PYTHON, &ws, limits).await;
    assert_eq!(outcome.status, Status::OutOfMemory, "{outcome:?}");
    assert_eq!(outcome.error.as_ref().map(|e| e.kind.as_str()), Some("MemoryError"));
}

#[tokio::test]
async fn code_may_catch_memory_error_and_go_on() {
    let (_dir, ws) = workspace();
    let limits = Limits { memory_bytes: 256 << 20, ..Limits::default() };
    let code = "try:\n    x = bytearray(512 * 1024**2)\nexcept MemoryError:\n    print('caught')\nprint('still here')";
    let outcome = run_with(code, PYTHON, &ws, limits).await;
    assert_eq!(outcome.status, Status::Ok, "{outcome:?}");
    assert_eq!(outcome.stdout, "caught\nstill here\n");
}

#[tokio::test]
async fn an_output_flood_is_cut_for_the_result_and_saved_whole() {
    let (_dir, ws) = workspace();
    let limits = Limits { output_bytes: 1 << 20, ..Limits::default() };
    let code = "import sys\nfor i in range(300_000):\n    print(f'line {i:06d}')\nsys.stderr.write('e' * 100_000)";
    let outcome = run_with(code, PYTHON, &ws, limits).await;
    assert_eq!(outcome.status, Status::Ok, "{:?}", outcome.error);
    assert!(outcome.stdout_truncated && outcome.stderr_truncated);
    assert!(outcome.stdout.len() < limits.result_output_bytes + 300, "{}", outcome.stdout.len());
    assert!(outcome.stdout.starts_with("line 000000\n"));
    assert!(outcome.stdout.contains("bytes were dropped: the guest may write at most 1048576 bytes"));
    let saved = outcome.files.iter().find(|f| f.path.ends_with(".stdout")).expect("the whole stdout is saved");
    assert!(outcome.stdout.contains(&format!("/workspace/{}", saved.path)));
    let (whole, _) = ws.read(&saved.path, 0, None).expect("saved stdout");
    assert!(whole.starts_with(b"line 000000\nline 000001\n"));
    assert!(whole.len() > 1 << 20, "all the guest may write is kept: {}", whole.len());
    let stderr_file = outcome.files.iter().find(|f| f.path.ends_with(".stderr")).expect("stderr saved");
    assert_eq!(stderr_file.size, 100_000);
}

#[tokio::test]
async fn a_call_may_not_ask_for_more_than_the_ceiling() {
    let ceiling = Limits::default();
    let asked = ceiling.narrowed(Some(Duration::from_secs(3600)));
    assert_eq!(asked.timeout, ceiling.timeout);
}

/// Guests that block in a host call where an interpreter cannot be interrupted: each must end
/// as `timeout` at its deadline (plus a small grace), and leave its slot and thread free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_blocking_host_call_outlives_its_deadline() {
    let data = tempfile::tempdir().expect("tempdir");
    let fifo = data.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let blockers = [
        // A relative timeout: wasi-libc's poll_oneoff with one relative clock.
        ("select", "import select\nselect.select([], [], [], 10**7)"),
        ("poll", "import select\np = select.poll()\np.poll(10**10)"),
        // A FIFO in a root: opening it blocks until a writer comes, which never does.
        ("fifo", "open('/data/fifo').read()"),
    ];
    let data = data.path().to_path_buf();
    let data = &data;
    for round in 0..2 {
        // As many at once as the sandbox has slots, so that a blocker that held its thread
        // would leave nothing for the next round.
        let runs = blockers.iter().map(|(name, code)| async move {
            let (_dir, ws) = workspace();
            let call = toolhost::sandbox::Call {
                runtime: Some(PYTHON),
                roots: vec![toolhost::sandbox::ReadOnlyRoot { name: "data".into(), host: data.clone() }],
                ..toolhost::sandbox::Call::new(code.to_string(), &ws, with_timeout(1.0))
            };
            let outcome = tokio::time::timeout(Duration::from_secs(20), crate::support::sandbox().run(call))
                .await
                .unwrap_or_else(|_| panic!("{name} (round {round}) held its call past the deadline"))
                .expect("the call runs");
            (name, outcome)
        });
        for (name, outcome) in futures::future::join_all(runs).await {
            assert_eq!(outcome.status, Status::Timeout, "{name}: {outcome:?}");
            assert!(outcome.duration_ms < 1300.0, "{name} ended {} ms after it started", outcome.duration_ms);
        }
    }
    let (_dir, ws) = workspace();
    let after =
        tokio::time::timeout(Duration::from_secs(20), run_with("print('free')", PYTHON, &ws, with_timeout(5.0)))
            .await
            .expect("the sandbox still runs calls");
    assert_eq!(after.stdout, "free\n");
}
