//! Admission: at most `max_concurrency` guests run at once; up to `queue_depth` more wait, and
//! one more is refused as `Busy`. Waiting calls are served fairly among their shares (the
//! principal a call runs for): a freed slot goes to the next share in turn, first come first
//! served within a share, so one principal's queue cannot starve another's. A call made by a
//! running guest (code mode) uses its caller's slot instead, so nesting cannot deadlock. The
//! counts are a watch channel: metrics read them, and a test can await them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use super::{Busy, SandboxStats};

pub(super) struct Admission {
    slots: Arc<Mutex<Slots>>,
    queue_depth: usize,
    stats: watch::Sender<SandboxStats>,
}

/// The free slots and who waits for one, by share.
struct Slots {
    free: usize,
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Slot>>>,
    /// Shares with someone waiting, in the order they are served.
    turn: VecDeque<Arc<str>>,
}

/// A slot held: given back (or handed to the next waiter in turn) when dropped.
pub(super) struct Slot {
    /// `None` once handed on.
    slots: Option<Arc<Mutex<Slots>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(owner) = self.slots.take() else { return };
        let mut slots = owner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(share) = slots.turn.pop_front() {
            let queue = slots.waiting.get_mut(&share).expect("a share in turn has a queue");
            let next = queue.pop_front();
            if queue.is_empty() {
                slots.waiting.remove(&share);
            } else {
                slots.turn.push_back(share);
            }
            if let Some(next) = next {
                match next.send(Slot { slots: Some(owner.clone()) }) {
                    Ok(()) => return,
                    // That waiter gave up: try the next (the unsent slot must not hand itself on
                    // again, under this lock).
                    Err(mut unsent) => unsent.slots = None,
                }
            }
        }
        slots.free += 1;
    }
}

/// A call let in: holds its slot (unless nested) and counts as running until dropped.
pub(super) struct Admitted<'a> {
    _slot: Option<Slot>,
    _running: Counted<'a>,
}

impl Admission {
    pub(super) fn new(max_concurrency: usize, queue_depth: usize) -> Admission {
        let slots = Slots { free: max_concurrency.max(1), waiting: HashMap::new(), turn: VecDeque::new() };
        Admission {
            slots: Arc::new(Mutex::new(slots)),
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

    /// Waits for a slot in `share`'s turn (none for a `nested` call), or refuses when the
    /// queue is full.
    pub(super) async fn admit(&self, nested: bool, share: &str) -> Result<Admitted<'_>, Busy> {
        let slot = if nested {
            None
        } else {
            let waiting = {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                if slots.free > 0 && slots.turn.is_empty() {
                    slots.free -= 1;
                    None
                } else {
                    let stats = self.stats();
                    if stats.waiting >= self.queue_depth {
                        return Err(Busy { running: stats.running, waiting: stats.waiting });
                    }
                    let (sender, receiver) = oneshot::channel();
                    let share: Arc<str> = share.into();
                    let slots = &mut *slots;
                    let queue = slots.waiting.entry(share.clone()).or_default();
                    if queue.is_empty() {
                        slots.turn.push_back(share);
                    }
                    queue.push_back(sender);
                    Some(receiver)
                }
            };
            match waiting {
                None => Some(Slot { slots: Some(self.slots.clone()) }),
                Some(receiver) => {
                    let _waiting = Counted::new(&self.stats, |s| &mut s.waiting);
                    match receiver.await {
                        Ok(slot) => Some(slot),
                        // Only a sandbox going away drops a waiter unserved.
                        Err(_) => {
                            let stats = self.stats();
                            return Err(Busy { running: stats.running, waiting: stats.waiting });
                        }
                    }
                }
            }
        };
        Ok(Admitted { _slot: slot, _running: Counted::new(&self.stats, |s| &mut s.running) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_share_in_turn() {
        let admission = Arc::new(Admission::new(1, 16));
        let first = admission.admit(false, "a").await.expect("a free slot");
        let (order, mut served) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for (n, share) in ["a", "a", "a", "b"].into_iter().enumerate() {
            let (queued, order) = (admission.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let admission = queued;
                let _slot = admission.admit(false, share).await.expect("queued");
                let _ = order.send(format!("{share}{n}"));
            }));
            // Queued in this order: each waits before the next comes.
            let mut stats = admission.watch();
            let _ = stats.wait_for(|s| s.waiting == n + 1).await;
        }
        drop(first);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(served.recv().await.expect("served"));
        }
        // b waited behind three of a's, yet is served second: a, b, then a's others.
        assert_eq!(seen, ["a0", "b3", "a1", "a2"]);
        for waiter in waiters {
            waiter.await.expect("task");
        }
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_hands_its_slot_on() {
        let admission = Arc::new(Admission::new(1, 16));
        let first = admission.admit(false, "a").await.expect("a free slot");
        let quitter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(false, "q").await.map(|_| ()) })
        };
        let mut stats = admission.watch();
        let _ = stats.wait_for(|s| s.waiting == 1).await;
        let patient = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(false, "p").await.map(|_| ()) })
        };
        let _ = stats.wait_for(|s| s.waiting == 2).await;
        quitter.abort();
        let _ = stats.wait_for(|s| s.waiting == 1).await;
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), patient)
            .await
            .expect("the patient waiter is served")
            .expect("task")
            .expect("admitted");
        assert_eq!(admission.stats(), SandboxStats::default());
    }
}
