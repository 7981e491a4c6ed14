//! Readiness: the sandbox once its runtime is prepared, or why it could not be. Set once by
//! whoever prepares it; read by every call, and awaited (with patience) while a first start
//! compiles.

use std::time::Duration;

use tokio::sync::watch;

use super::Sandbox;

/// Where the preparation stands.
#[derive(Clone)]
pub enum State {
    Preparing,
    Ready(Sandbox),
    Failed(String),
}

/// Why there is no sandbox to run a call in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error(
        "toolhost is still preparing its Python runtime (a first start downloads and compiles it, \
         about 2 minutes); retry shortly"
    )]
    Preparing,
    #[error("the Python runtime could not be prepared: {0}")]
    Failed(String),
}

/// The one owner of the sandbox's readiness.
pub struct Readiness {
    state: watch::Sender<State>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness { state: watch::Sender::new(State::Preparing) }
    }
}

impl Readiness {
    /// A cell that is ready at once (a sandbox started before the service).
    pub fn ready(sandbox: Sandbox) -> Readiness {
        Readiness { state: watch::Sender::new(State::Ready(sandbox)) }
    }

    pub fn set(&self, sandbox: Sandbox) {
        self.state.send_replace(State::Ready(sandbox));
    }

    pub fn fail(&self, why: String) {
        self.state.send_replace(State::Failed(why));
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// The sandbox now, or why there is none.
    pub fn get(&self) -> Result<Sandbox, NotReady> {
        match self.state() {
            State::Ready(sandbox) => Ok(sandbox),
            State::Preparing => Err(NotReady::Preparing),
            State::Failed(why) => Err(NotReady::Failed(why)),
        }
    }

    /// The sandbox, waiting up to `patience` while it is still being prepared (a warm start
    /// takes milliseconds; a first start compiles for minutes and answers "retry").
    pub async fn wait(&self, patience: Duration) -> Result<Sandbox, NotReady> {
        let mut state = self.state.subscribe();
        let settled = state.wait_for(|s| !matches!(s, State::Preparing));
        let _ = tokio::time::timeout(patience, settled).await;
        self.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failure_wakes_the_waiters_with_its_reason() {
        let readiness = std::sync::Arc::new(Readiness::default());
        assert!(matches!(readiness.get(), Err(NotReady::Preparing)));
        let waiting = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.wait(Duration::from_secs(60)).await }
        });
        readiness.fail("no disk".into());
        let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken").expect("task");
        match waited {
            Err(NotReady::Failed(why)) => assert_eq!(why, "no disk"),
            other => panic!("expected the failure, got {:?}", other.map(|_| "a sandbox")),
        }
    }

    #[tokio::test]
    async fn waiting_ends_with_preparing_after_the_patience() {
        let readiness = Readiness::default();
        let waited = readiness.wait(Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(NotReady::Preparing)));
    }
}
