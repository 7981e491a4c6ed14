//! One guest run driven to its end on an executor: the run, its deadline and its cancellation
//! raced, whichever comes first ending it.

use std::sync::Arc;

use anyhow::Result;

use super::{call, outcome};

/// Runs a guest on the sandbox's threads. At its deadline or cancellation the guest is dropped,
/// wherever it is: one that computes yields every `engine::YIELD_FUEL` units of fuel, one
/// blocked in a host call (e.g. `time.sleep`) is waiting on a future. The result is sent before
/// the spent store is dropped, so the caller does not wait for its memory to be reset.
pub(super) fn spawn_guest(
    executor: &tokio::runtime::Handle,
    prepared: Arc<call::Prepared>,
    engine: wasmtime::Engine,
    run: call::GuestRun,
) -> tokio::sync::oneshot::Receiver<Result<outcome::Ran>> {
    let deadline = tokio::time::Instant::from_std(run.deadline);
    let cancel = run.cancel.clone();
    let (result, receiver) = tokio::sync::oneshot::channel();
    executor.spawn(async move {
        let interrupted = |ending| Ok(outcome::Ran { ending, fuel_used: None, written: None });
        tokio::select! {
            ran = call::run(&prepared, &engine, run) => match ran {
                Ok((ran, store)) => {
                    let _ = result.send(Ok(ran));
                    drop(store);
                }
                Err(e) => {
                    let _ = result.send(Err(e));
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let _ = result.send(interrupted(outcome::Ending::Timeout));
            }
            () = cancel.cancelled() => {
                let _ = result.send(interrupted(outcome::Ending::Cancelled));
            }
        }
    });
    receiver
}
