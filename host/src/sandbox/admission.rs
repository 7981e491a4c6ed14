//! Admission: at most `max_concurrency` guests run at once; up to `queue_depth` more wait, and
//! one more is refused as `Busy`, as is a call past its principal's cap of calls running and
//! waiting (`max_calls_per_principal`). Waiting calls are served fairly among their shares (the
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
    per_share: usize,
    stats: watch::Sender<SandboxStats>,
}

/// The free slots and who waits for one, by share.
struct Slots {
    free: usize,
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Slot>>>,
    /// Shares with someone waiting, in the order they are served.
    turn: VecDeque<Arc<str>>,
    /// Calls waiting, counted here (not from the stats) so the queue's bound is exact.
    queued: usize,
    /// Calls running or waiting, by share.
    calls: HashMap<Arc<str>, usize>,
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// A slot held: given back (or handed to the next waiter in turn) when dropped.
pub(super) struct Slot {
    /// `None` once handed on.
    slots: Option<Arc<Mutex<Slots>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(owner) = self.slots.take() else { return };
        let mut slots = lock(&owner);
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

/// A call let in: holds its slot (unless nested), counts as running and against its share's
/// cap until dropped.
pub(super) struct Admitted<'a> {
    _slot: Option<Slot>,
    _running: Counted<'a>,
    _share: Option<ShareCall>,
}

/// One call of a share, running or waiting, counted against the share's cap until dropped.
struct ShareCall {
    slots: Arc<Mutex<Slots>>,
    share: Arc<str>,
}

impl Drop for ShareCall {
    fn drop(&mut self) {
        let mut slots = lock(&self.slots);
        if let Some(n) = slots.calls.get_mut(&self.share) {
            *n -= 1;
            if *n == 0 {
                slots.calls.remove(&self.share);
            }
        }
    }
}

/// A call waiting, counted against the queue's bound until dropped (served or given up).
struct Queued(Arc<Mutex<Slots>>);

impl Drop for Queued {
    fn drop(&mut self) {
        lock(&self.0).queued -= 1;
    }
}

impl Admission {
    pub(super) fn new(max_concurrency: usize, queue_depth: usize, per_share: usize) -> Admission {
        let slots = Slots {
            free: max_concurrency.max(1),
            waiting: HashMap::new(),
            turn: VecDeque::new(),
            queued: 0,
            calls: HashMap::new(),
        };
        Admission {
            slots: Arc::new(Mutex::new(slots)),
            queue_depth,
            per_share: per_share.max(1),
            stats: watch::Sender::new(SandboxStats::default()),
        }
    }

    fn busy(&self, per_principal: Option<usize>) -> Busy {
        let stats = self.stats();
        Busy { running: stats.running, waiting: stats.waiting, per_principal }
    }

    pub(super) fn stats(&self) -> SandboxStats {
        *self.stats.borrow()
    }

    pub(super) fn watch(&self) -> watch::Receiver<SandboxStats> {
        self.stats.subscribe()
    }

    /// Waits for a slot in `share`'s turn (none for a `nested` call, which also does not count
    /// against the cap), or refuses when the queue is full or the share at its cap.
    pub(super) async fn admit(&self, nested: bool, share: &str) -> Result<Admitted<'_>, Busy> {
        if nested {
            return Ok(Admitted { _slot: None, _running: Counted::new(&self.stats, |s| &mut s.running), _share: None });
        }
        let share: Arc<str> = share.into();
        let (counted, waiting) = {
            let mut slots = lock(&self.slots);
            let calls = slots.calls.get(&share).copied().unwrap_or(0);
            if calls >= self.per_share {
                return Err(self.busy(Some(self.per_share)));
            }
            let free_now = slots.free > 0 && slots.turn.is_empty();
            if !free_now && slots.queued >= self.queue_depth {
                return Err(self.busy(None));
            }
            *slots.calls.entry(share.clone()).or_default() += 1;
            let counted = ShareCall { slots: self.slots.clone(), share: share.clone() };
            if free_now {
                slots.free -= 1;
                (counted, None)
            } else {
                let (sender, receiver) = oneshot::channel();
                let slots = &mut *slots;
                slots.queued += 1;
                let queue = slots.waiting.entry(share.clone()).or_default();
                if queue.is_empty() {
                    slots.turn.push_back(share);
                }
                queue.push_back(sender);
                (counted, Some((receiver, Queued(self.slots.clone()))))
            }
        };
        let slot = match waiting {
            None => Slot { slots: Some(self.slots.clone()) },
            Some((receiver, queued)) => {
                let _waiting = Counted::new(&self.stats, |s| &mut s.waiting);
                let served = receiver.await;
                drop(queued);
                match served {
                    Ok(slot) => slot,
                    // Only a sandbox going away drops a waiter unserved.
                    Err(_) => return Err(self.busy(None)),
                }
            }
        };
        Ok(Admitted {
            _slot: Some(slot),
            _running: Counted::new(&self.stats, |s| &mut s.running),
            _share: Some(counted),
        })
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

    /// Asks for a slot as `share`, from a task of its own.
    fn queue(admission: &Arc<Admission>, share: &'static str) -> tokio::task::JoinHandle<Result<(), Busy>> {
        let admission = admission.clone();
        tokio::spawn(async move { admission.admit(false, share).await.map(|_| ()) })
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_share_in_turn() {
        let admission = Arc::new(Admission::new(1, 16, 16));
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
        let admission = Arc::new(Admission::new(1, 16, 16));
        let first = admission.admit(false, "a").await.expect("a free slot");
        let quitter = queue(&admission, "q");
        let mut stats = admission.watch();
        let _ = stats.wait_for(|s| s.waiting == 1).await;
        let patient = queue(&admission, "p");
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

    #[tokio::test]
    async fn a_share_past_its_cap_is_refused_and_others_are_not() {
        let admission = Arc::new(Admission::new(1, 16, 2));
        let running = admission.admit(false, "a").await.expect("a free slot");
        let waiter = queue(&admission, "a");
        let mut stats = admission.watch();
        let _ = stats.wait_for(|s| s.waiting == 1).await;
        let refused = admission.admit(false, "a").await.map(|_| ()).expect_err("a third call of a");
        assert_eq!(refused.per_principal, Some(2));
        assert!(refused.to_string().contains("2 calls"), "{refused}");
        let other = queue(&admission, "b");
        let _ = stats.wait_for(|s| s.waiting == 2).await;
        let _nested = admission.admit(true, "a").await.expect("a nested call uses its caller's slot");
        drop(running);
        waiter.await.expect("task").expect("served");
        other.await.expect("task").expect("served");
        let _again = admission.admit(false, "a").await.expect("room under the cap again");
    }

    #[tokio::test]
    async fn the_queue_bound_is_exact() {
        let admission = Arc::new(Admission::new(1, 2, 16));
        let _running = admission.admit(false, "a").await.expect("a free slot");
        let mut waiters = Vec::new();
        for share in ["b", "c"] {
            waiters.push(queue(&admission, share));
        }
        let mut stats = admission.watch();
        let _ = stats.wait_for(|s| s.waiting == 2).await;
        let refused = admission.admit(false, "d").await.map(|_| ()).expect_err("the queue is full");
        assert_eq!(refused.per_principal, None);
        for waiter in waiters {
            waiter.abort();
        }
    }
}
