//! Admission: at most `max_concurrency` guests run at once; up to `queue_depth` more wait for
//! a slot in arrival order, and one more is refused as `Busy`. A call made by a running guest
//! (code mode) uses its caller's slot instead, so nesting cannot deadlock. The counts are a
//! watch channel: metrics read them, and a test can await them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{Busy, SandboxStats};

pub(super) struct Admission {
    permits: Arc<Semaphore>,
    queue_depth: usize,
    stats: watch::Sender<SandboxStats>,
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
            stats: watch::Sender::new(SandboxStats::default()),
        }
    }

    pub(super) fn stats(&self) -> SandboxStats {
        *self.stats.borrow()
    }

    pub(super) fn watch(&self) -> watch::Receiver<SandboxStats> {
        self.stats.subscribe()
    }

    /// Waits for a slot (none for a `nested` call), or refuses when the queue is full.
    pub(super) async fn admit(&self, nested: bool) -> Result<Admitted<'_>, Busy> {
        let permit = if nested {
            None
        } else {
            let stats = self.stats();
            if self.permits.available_permits() == 0 && stats.waiting >= self.queue_depth {
                return Err(Busy { running: stats.running, waiting: stats.waiting });
            }
            let _waiting = Counted::new(&self.stats, |s| &mut s.waiting);
            // The semaphore is never closed.
            Some(self.permits.clone().acquire_owned().await.expect("the slots semaphore is never closed"))
        };
        Ok(Admitted { _permit: permit, _running: Counted::new(&self.stats, |s| &mut s.running) })
    }
}

/// One count of `stats`, held until dropped.
struct Counted<'a> {
    stats: &'a watch::Sender<SandboxStats>,
    field: fn(&mut SandboxStats) -> &mut usize,
}

impl<'a> Counted<'a> {
    fn new(stats: &'a watch::Sender<SandboxStats>, field: fn(&mut SandboxStats) -> &mut usize) -> Self {
        stats.send_modify(|s| *field(s) += 1);
        Counted { stats, field }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let field = self.field;
        self.stats.send_modify(|s| *field(s) -= 1);
    }
}
