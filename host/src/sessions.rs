//! Sessions: one per MCP connection. Each has its own workspace folder, made on first use and
//! removed a while after the session ends (the `linger`), so a client that reconnects soon
//! finds nothing half-gone, and a server that runs for months does not fill its disk.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::principal::Principal;
use crate::workspace::{Ledger, Quota, Workspace, WorkspaceError};

/// Every session's folder lives under `root`, named by the session id.
pub struct Sessions {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    quota: Quota,
    /// Bytes one principal's workspaces may hold together, lingering ones included.
    principal_bytes: u64,
    linger: Duration,
    live: AtomicUsize,
    /// Each principal's ledger, the parent of its workspaces'.
    principals: Mutex<HashMap<Principal, Arc<Ledger>>>,
    /// Folders of ended sessions, with the moment they may go and what they hold.
    ended: Mutex<Vec<(PathBuf, Instant, Arc<Ledger>)>>,
}

impl Sessions {
    /// Sessions under `root`. Folders left there by an earlier run are removed: sessions do not
    /// outlive the process that served them.
    pub fn new(
        root: impl Into<PathBuf>,
        quota: Quota,
        principal_bytes: u64,
        linger: Duration,
    ) -> std::io::Result<Sessions> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() && is_session_id(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Sessions {
            shared: Arc::new(Shared {
                root,
                quota,
                principal_bytes,
                linger,
                live: AtomicUsize::new(0),
                principals: Mutex::default(),
                ended: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A new session with its own (not yet created) workspace folder.
    pub fn open(&self, inline_images: bool) -> Arc<Session> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.shared.root.join(&id);
        self.session(id, dir, inline_images, false)
    }

    /// A session on a folder the user chose (`toolhost stdio --workspace DIR`): never removed.
    pub fn open_at(&self, dir: impl Into<PathBuf>, inline_images: bool) -> Arc<Session> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.session(id, dir.into(), inline_images, true)
    }

    fn session(&self, id: String, dir: PathBuf, inline_images: bool, keep: bool) -> Arc<Session> {
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("toolhost_sessions_active").set(self.shared.live.load(Ordering::Relaxed) as f64);
        Arc::new(Session {
            id,
            dir,
            keep,
            inline_images,
            workspace: OnceLock::new(),
            principal: OnceLock::new(),
            subscriptions: Mutex::new(BTreeSet::new()),
            shared: self.shared.clone(),
        })
    }

    /// Sessions open now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Removes the folders of sessions that ended more than `linger` ago; returns how many.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let due: Vec<(PathBuf, Arc<Ledger>)> = {
            let mut ended = lock(&self.shared.ended);
            let (due, waiting): (Vec<_>, Vec<_>) = ended.drain(..).partition(|(_, at, _)| *at <= now);
            *ended = waiting;
            due.into_iter().map(|(dir, _, ledger)| (dir, ledger)).collect()
        };
        for (dir, ledger) in &due {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("cannot remove the workspace {}: {e}", dir.display());
                }
                _ => ledger.release(),
            }
        }
        due.len()
    }

    /// Removes every ended session's folder now (at shutdown).
    pub fn reap_all(&self) -> usize {
        for (_, at, _) in lock(&self.shared.ended).iter_mut() {
            *at = Instant::now();
        }
        self.reap()
    }

    /// Runs `reap` every few seconds until the process ends.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                match sessions.upgrade() {
                    Some(sessions) => {
                        sessions.reap();
                    }
                    None => break,
                }
            }
        });
    }
}

/// One client's session.
pub struct Session {
    pub id: String,
    dir: PathBuf,
    keep: bool,
    /// The client connected with `?images=inline`.
    pub inline_images: bool,
    workspace: OnceLock<Workspace>,
    /// Whom the session acts for, from its first request that names one.
    principal: OnceLock<Principal>,
    /// Resource URIs the client subscribed to.
    subscriptions: Mutex<BTreeSet<String>>,
    shared: Arc<Shared>,
}

impl Session {
    /// The session's workspace, made on first use.
    pub fn workspace(&self) -> Result<&Workspace, WorkspaceError> {
        if let Some(workspace) = self.workspace.get() {
            return Ok(workspace);
        }
        // A folder the user chose is theirs; a session's counts against its principal's bytes.
        let parent = (!self.keep).then(|| self.shared.principal_ledger(&self.principal()));
        let opened = Workspace::open_under(&self.dir, self.shared.quota, parent)
            .map_err(|source| WorkspaceError::Io { path: self.dir.display().to_string(), source })?;
        Ok(self.workspace.get_or_init(|| opened))
    }

    /// How logs name the session: a short hash of its id, which is a credential of sorts (whoever
    /// knows it may name the session) and so never logged above debug.
    pub fn log_tag(&self) -> String {
        crate::runtime::verify::sha256_bytes(self.id.as_bytes())[..8].to_string()
    }

    /// Binds the session to the principal it acts for (once: the transports refuse another
    /// principal's requests before they get here).
    pub fn bind(&self, principal: Principal) {
        let _ = self.principal.set(principal);
    }

    /// Whom the session acts for.
    pub fn principal(&self) -> Principal {
        self.principal.get().cloned().unwrap_or_else(Principal::anonymous)
    }

    /// The workspace folder on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn subscribe(&self, uri: String) {
        lock(&self.subscriptions).insert(uri);
    }

    pub fn unsubscribe(&self, uri: &str) {
        lock(&self.subscriptions).remove(uri);
    }

    pub fn subscriptions(&self) -> Vec<String> {
        lock(&self.subscriptions).iter().cloned().collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let live = self.shared.live.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("toolhost_sessions_active").set(live as f64);
        if !self.keep
            && let Some(workspace) = self.workspace.get()
        {
            let ledger = workspace.ledger().clone();
            lock(&self.shared.ended).push((self.dir.clone(), Instant::now() + self.shared.linger, ledger));
        }
        tracing::debug!(session = %self.id, "session ended");
    }
}

impl Shared {
    fn principal_ledger(&self, principal: &Principal) -> Arc<Ledger> {
        lock(&self.principals)
            .entry(principal.clone())
            .or_insert_with(|| Ledger::principal(self.principal_bytes))
            .clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_session_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> Quota {
        Quota { bytes: 1 << 20, files: 100 }
    }

    #[test]
    fn a_workspace_is_made_on_first_use_and_removed_after_the_linger() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sessions = Sessions::new(tmp.path(), quota(), 1 << 30, Duration::ZERO).expect("sessions");
        let session = sessions.open(false);
        let dir = session.dir().to_path_buf();
        assert!(!dir.exists(), "nothing is made before it is used");
        session.workspace().expect("workspace").write("a.txt", b"x").expect("write");
        assert!(dir.join("a.txt").exists());
        assert_eq!(sessions.live(), 1);
        drop(session);
        assert_eq!(sessions.live(), 0);
        assert_eq!(sessions.reap(), 1);
        assert!(!dir.exists());
    }

    #[test]
    fn two_sessions_never_share_a_folder_and_old_folders_are_swept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let stale = tmp.path().join("0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(&stale).expect("stale");
        let unrelated = tmp.path().join("keep-me");
        std::fs::create_dir_all(&unrelated).expect("unrelated");
        let sessions = Sessions::new(tmp.path(), quota(), 1 << 30, Duration::from_secs(600)).expect("sessions");
        assert!(!stale.exists() && unrelated.exists());
        let (a, b) = (sessions.open(false), sessions.open(false));
        assert_ne!(a.dir(), b.dir());
        a.workspace().expect("a").write("secret.txt", b"a's").expect("write");
        assert!(b.workspace().expect("b").read("secret.txt", 0, None).is_err());
    }

    #[test]
    fn a_chosen_folder_is_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sessions = Sessions::new(tmp.path().join("sessions"), quota(), 1 << 30, Duration::ZERO).expect("sessions");
        let session = sessions.open_at(tmp.path().join("mine"), false);
        session.workspace().expect("workspace").write("a.txt", b"x").expect("write");
        drop(session);
        sessions.reap_all();
        assert!(tmp.path().join("mine/a.txt").exists());
    }
}
