//! Admission: at most `max_concurrency` guests run at once; up to `queue_depth` more wait for
//! a slot in arrival order, and one more is refused as `Busy`. A call made by a running guest
//! (code mode) uses its caller's slot instead, so nesting cannot deadlock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Busy, SandboxStats};

pub(super) struct Admission {
    permits: Arc<Semaphore>,
    queue_depth: usize,
    waiting: AtomicUsize,
    running: AtomicUsize,
}

/// A call let in: holds its slot (unless nested) and counts as running until dropped.
pub(super) struct Admitted<'a> {
    _permit: Option<OwnedSemaphorePermit>,
    _running: Counted<'a>,
}

impl Admission {
    pub(super) fn new(max_concurrency: usize, queue_depth: usize) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            queue_depth,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        }
    }

    pub(super) fn stats(&self) -> SandboxStats {
        SandboxStats { running: self.running.load(Ordering::Relaxed), waiting: self.waiting.load(Ordering::Relaxed) }
    }

    /// Waits for a slot (none for a `nested` call), or refuses when the queue is full.
    pub(super) async fn admit(&self, nested: bool) -> Result<Admitted<'_>, Busy> {
        let permit = if nested {
            None
        } else {
            if self.permits.available_permits() == 0 && self.waiting.load(Ordering::Relaxed) >= self.queue_depth {
                let stats = self.stats();
                return Err(Busy { running: stats.running, waiting: stats.waiting });
            }
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let _waiting = Counted(&self.waiting);
            // The semaphore is never closed.
            Some(self.permits.clone().acquire_owned().await.expect("the slots semaphore is never closed"))
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { _permit: permit, _running: Counted(&self.running) })
    }
}

/// Decrements a counter when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
