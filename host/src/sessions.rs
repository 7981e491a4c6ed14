//! Sessions: one per MCP connection of the older protocol eras and stdio, one per request of
//! 2026-07-28 (which has none). A session knows whom it acts for and its default workspace:
//! the one a call uses when it names none, made on first use. Workspaces outlive sessions
//! (`workspaces.rs`); a session's end removes nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::principal::Principal;
use crate::workspaces::{HandleError, Space, Workspaces};

/// Opens sessions over the workspace store.
pub struct Sessions {
    workspaces: Arc<Workspaces>,
    live: Arc<AtomicUsize>,
}

impl Sessions {
    pub fn new(workspaces: Arc<Workspaces>) -> Sessions {
        Sessions { workspaces, live: Arc::default() }
    }

    /// A new session; its default workspace is made when a call first needs it.
    pub fn open(&self, inline_images: bool) -> Arc<Session> {
        self.session(inline_images, None)
    }

    /// A session whose default workspace is a folder the user chose (`toolhost stdio
    /// --workspace DIR`): never expired.
    pub fn open_at(&self, dir: &Path, inline_images: bool) -> std::io::Result<Arc<Session>> {
        Ok(self.session(inline_images, Some(self.workspaces.chosen(dir)?)))
    }

    fn session(&self, inline_images: bool, default: Option<Arc<Space>>) -> Arc<Session> {
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("toolhost_sessions_active").set(live as f64);
        Arc::new(Session {
            id: uuid::Uuid::new_v4().simple().to_string(),
            inline_images,
            default: Mutex::new(default),
            principal: OnceLock::new(),
            subscriptions: Mutex::new(BTreeSet::new()),
            one_request: AtomicBool::new(false),
            workspaces: self.workspaces.clone(),
            live: self.live.clone(),
        })
    }

    /// Sessions open now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The workspace store.
    pub fn workspaces(&self) -> &Arc<Workspaces> {
        &self.workspaces
    }
}

/// One client's session.
pub struct Session {
    pub id: String,
    /// The client connected with `?images=inline`.
    pub inline_images: bool,
    /// The workspace a call that names none uses, once made.
    default: Mutex<Option<Arc<Space>>>,
    /// Whom the session acts for, from its first request that names one.
    principal: OnceLock<Principal>,
    /// Resource URIs the client subscribed to.
    subscriptions: Mutex<BTreeSet<String>>,
    /// The session of one session-less request (2026-07-28 over HTTP): its default workspace is
    /// that call's new one, which no later request can reach as `file:///workspace/...`.
    one_request: AtomicBool,
    workspaces: Arc<Workspaces>,
    live: Arc<AtomicUsize>,
}

impl Session {
    /// The workspace `handle` names (its owner must be whom the session acts for), or, with
    /// none, the session's default, made now if it does not exist yet; marked used.
    pub fn workspace(&self, handle: Option<&str>) -> Result<Arc<Space>, HandleError> {
        let mut default = held(&self.default);
        let space = match (handle, &*default) {
            (Some(handle), Some(space)) if space.handle() == handle => space.clone(),
            (Some(handle), _) => self.workspaces.open(handle, &self.principal())?,
            (None, Some(space)) => space.clone(),
            (None, None) => {
                let space = self.workspaces.create(&self.principal())?;
                *default = Some(space.clone());
                space
            }
        };
        space.touch();
        Ok(space)
    }

    /// The default workspace, if one was made.
    pub fn default_workspace(&self) -> Option<Arc<Space>> {
        held(&self.default).clone()
    }

    /// Whether `space` is this session's default workspace, the one `file:///workspace/...`
    /// names (never for a session-less request's).
    pub fn is_default(&self, space: &Space) -> bool {
        !self.one_request.load(Ordering::Relaxed)
            && held(&self.default).as_ref().is_some_and(|default| default.handle() == space.handle())
    }

    /// Marks the session as one session-less request's.
    pub fn serve_one_request(&self) {
        self.one_request.store(true, Ordering::Relaxed);
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

    pub fn subscribe(&self, uri: String) {
        held(&self.subscriptions).insert(uri);
    }

    pub fn unsubscribe(&self, uri: &str) {
        held(&self.subscriptions).remove(uri);
    }

    pub fn subscriptions(&self) -> Vec<String> {
        held(&self.subscriptions).iter().cloned().collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let live = self.live.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("toolhost_sessions_active").set(live as f64);
        tracing::debug!(session = %self.id, "session ended");
    }
}

fn held<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::workspace::Quota;
    use crate::workspaces::Settings;

    fn sessions(root: &Path) -> Sessions {
        let settings = Settings {
            root: root.to_path_buf(),
            quota: Quota { bytes: 1 << 20, files: 100 },
            principal_bytes: 1 << 30,
            ttl: Duration::from_secs(3600),
            max_per_principal: 10,
            lock_timeout: Duration::from_secs(1),
            python_state: None,
        };
        Sessions::new(Arc::new(Workspaces::new(settings).expect("store")))
    }

    #[test]
    fn a_default_workspace_is_made_on_first_use_and_outlives_the_session() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sessions = sessions(tmp.path());
        let session = sessions.open(false);
        assert!(session.default_workspace().is_none(), "nothing is made before it is used");
        let space = session.workspace(None).expect("workspace");
        space.files().write("a.txt", b"x").expect("write");
        let (handle, dir) = (space.handle().to_string(), space.files().host_path().to_path_buf());
        assert_eq!(session.workspace(None).expect("again").handle(), handle);
        assert_eq!(sessions.live(), 1);
        drop((space, session));
        assert_eq!(sessions.live(), 0);
        assert!(dir.join("a.txt").exists(), "a session's end removes nothing");
        // A later session of the same principal continues it by handle.
        let later = sessions.open(false);
        assert_eq!(
            later.workspace(Some(&handle)).expect("by handle").files().read("a.txt", 0, None).expect("read").0,
            b"x"
        );
    }

    #[test]
    fn two_sessions_never_share_a_default_and_principals_stay_apart() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sessions = sessions(tmp.path());
        let (a, b) = (sessions.open(false), sessions.open(false));
        a.bind(Principal::token(b"a"));
        b.bind(Principal::token(b"b"));
        let a_space = a.workspace(None).expect("a");
        assert_ne!(a_space.handle(), b.workspace(None).expect("b").handle());
        let refused = b.workspace(Some(a_space.handle())).err().expect("not b's");
        assert!(matches!(refused, HandleError::NotYours(_)), "{refused}");
    }

    #[test]
    fn a_chosen_folder_is_the_default_and_is_named_by_its_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sessions = sessions(&tmp.path().join("store"));
        let session = sessions.open_at(&tmp.path().join("mine"), false).expect("session");
        let space = session.workspace(None).expect("workspace");
        space.files().write("a.txt", b"x").expect("write");
        assert_eq!(session.workspace(Some(space.handle())).expect("by its name").handle(), space.handle());
        drop((space, session));
        assert!(tmp.path().join("mine/a.txt").exists());
    }
}
