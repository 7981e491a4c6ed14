//! Workspaces by handle: each a folder under `--workspaces-dir` named `ws_` + 160 random bits
//! (base32), owned by the principal that made it, kept until `--workspace-ttl` passes without
//! use. Several processes may share the folder (a ReadWriteMany volume): everything here is
//! decided from what is on disk (the owner record, the last-use stamp, the lock), nothing at
//! start removes anything, and expiry takes the writer's lock before it removes a workspace.
//!
//! ```text
//! <root>/ws_…/owner          the principal, written once when the workspace is made
//! <root>/ws_…/used           its modification time is the last use (`Space::touch`)
//! <root>/ws_…/lock           held by a call that writes (workspaces/lock.rs)
//! <root>/ws_…/files/         what the guest sees as /workspace
//! <root>/ws_…/state/         its Python state (sandbox/state.rs)
//! <root>/.principals/<h>/ws_…  one empty file per workspace of a principal (the cap counts them)
//! <root>/.expired/ws_…       a removed workspace's tombstone, so its handle says "expired"
//! ```

mod expiry;
mod lock;

pub use lock::{Busy, Writing};

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use crate::principal::Principal;
use crate::sandbox::PythonState;
use crate::workspace::{Ledger, Quota, Workspace, WorkspaceError};

/// A handle's prefix; the rest is base32 (lowercase, no padding) of `HANDLE_BYTES` random bytes.
const PREFIX: &str = "ws_";
const HANDLE_BYTES: usize = 20;
const PRINCIPALS: &str = ".principals";
const EXPIRED: &str = ".expired";
const TRASH: &str = ".trash";

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub quota: Quota,
    /// Bytes one principal's workspaces may hold together (those this process has opened).
    pub principal_bytes: u64,
    /// A workspace unused this long is removed.
    pub ttl: Duration,
    /// Workspaces one principal may own at once.
    pub max_per_principal: usize,
    /// How long a writing call waits for another to finish with its workspace.
    pub lock_timeout: Duration,
    /// The most each workspace's Python state may take on disk; `None`: calls keep no state.
    pub python_state: Option<u64>,
}

/// Why a handle cannot be used. Each says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(
        "`workspace`: {0:?} is not a workspace handle (they look like ws_ followed by 32 letters and digits, as returned in a result's `workspace`)"
    )]
    Malformed(String),
    #[error(
        "`workspace`: no workspace {0} exists; use a handle a result returned, or omit `workspace` to start a new one"
    )]
    Unknown(String),
    #[error(
        "`workspace`: the workspace {0} expired after going unused for the configured time and its files are gone; omit `workspace` to start a new one"
    )]
    Expired(String),
    #[error(
        "`workspace`: the workspace {0} belongs to another user; use one of your own handles, or omit `workspace` to start a new one"
    )]
    NotYours(String),
    #[error(
        "you have {0} workspaces, the limit (--max-workspaces-per-principal); pass one of your handles as `workspace`, or wait for unused ones to expire"
    )]
    TooMany(usize),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
}

/// Every workspace under one folder.
pub struct Workspaces {
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    /// The workspaces this process has open now, so concurrent calls share one ledger.
    open: Mutex<HashMap<String, Weak<Space>>>,
    /// Each principal's ledger, the parent of its workspaces'.
    principals: Mutex<HashMap<Principal, Arc<Ledger>>>,
    /// The ledgers of workspaces opened and closed again, which still hold their bytes in their
    /// principal's; released when the workspace is opened again or expires.
    dormant: Mutex<HashMap<String, Arc<Ledger>>>,
}

/// One opened workspace. Dropped when its last user is done.
pub struct Space {
    handle: String,
    owner: Principal,
    files: Workspace,
    /// `<root>/ws_…`; `None` for a folder the user chose (`toolhost stdio --workspace DIR`).
    home: Option<PathBuf>,
    gate: Arc<tokio::sync::Mutex<()>>,
    lock_timeout: Duration,
    /// The budget of its Python state; `None`: it keeps none.
    python_state: Option<u64>,
    shared: Option<Arc<Shared>>,
}

impl Workspaces {
    /// The workspaces under `settings.root` (made if missing). Nothing there is removed: other
    /// processes may be using it.
    pub fn new(settings: Settings) -> io::Result<Workspaces> {
        for dir in ["", PRINCIPALS, EXPIRED, TRASH] {
            fs::create_dir_all(settings.root.join(dir))?;
        }
        let shared =
            Shared { settings, open: Mutex::default(), principals: Mutex::default(), dormant: Mutex::default() };
        Ok(Workspaces { shared: Arc::new(shared) })
    }

    /// A new workspace owned by `owner`.
    pub fn create(&self, owner: &Principal) -> Result<Arc<Space>, HandleError> {
        let settings = &self.shared.settings;
        let index = settings.root.join(PRINCIPALS).join(principal_key(owner));
        fs::create_dir_all(&index).map_err(|e| io_error(&index, e))?;
        // One maker at a time per principal, across processes, so the count is exact.
        let guard = lock::exclusive(&index.join(".lock")).map_err(|e| io_error(&index, e))?;
        let owned = fs::read_dir(&index).map_err(|e| io_error(&index, e))?.flatten();
        if owned.filter(|e| parse(&e.file_name().to_string_lossy()).is_some()).count() >= settings.max_per_principal {
            return Err(HandleError::TooMany(settings.max_per_principal));
        }
        let (handle, home) = loop {
            let handle = mint();
            let home = settings.root.join(&handle);
            match fs::create_dir(&home) {
                Ok(()) => break (handle, home),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&home, e)),
            }
        };
        let made = (|| {
            fs::create_dir(home.join("files"))?;
            fs::File::create_new(home.join("lock"))?;
            // Not synced: a record a crash left empty or cut names no principal, so it fails
            // closed (no one may open the workspace), and saves a disk flush per workspace.
            fs::File::create_new(home.join("owner"))?.write_all(owner.as_str().as_bytes())?;
            fs::File::create(index.join(&handle))?;
            Ok(())
        })();
        drop(guard);
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&home);
            return Err(io_error(&home, e));
        }
        tracing::debug!(workspace = %handle, "workspace created");
        self.open_owned(handle, home, owner.clone())
    }

    /// The workspace `handle`, when `principal` owns it.
    pub fn open(&self, handle: &str, principal: &Principal) -> Result<Arc<Space>, HandleError> {
        let Some(handle) = parse(handle) else {
            return Err(HandleError::Malformed(handle.chars().take(80).collect()));
        };
        if let Some(space) = held(&self.shared.open).get(handle).and_then(Weak::upgrade) {
            return if &space.owner == principal { Ok(space) } else { Err(HandleError::NotYours(handle.into())) };
        }
        let home = self.shared.settings.root.join(handle);
        let owner = match fs::read_to_string(home.join("owner")) {
            Ok(owner) => Principal::from_record(owner),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let expired = self.shared.settings.root.join(EXPIRED).join(handle).exists();
                return Err(if expired {
                    HandleError::Expired(handle.into())
                } else {
                    HandleError::Unknown(handle.into())
                });
            }
            Err(e) => return Err(io_error(&home, e)),
        };
        if &owner != principal {
            return Err(HandleError::NotYours(handle.into()));
        }
        self.open_owned(handle.to_string(), home, owner)
    }

    fn open_owned(&self, handle: String, home: PathBuf, owner: Principal) -> Result<Arc<Space>, HandleError> {
        let shared = &self.shared;
        let mut open = held(&shared.open);
        if let Some(space) = open.get(&handle).and_then(Weak::upgrade) {
            return Ok(space);
        }
        if let Some(dormant) = held(&shared.dormant).remove(&handle) {
            dormant.release();
        }
        let parent = shared.principal_ledger(&owner);
        let files = Workspace::open_under(home.join("files"), shared.settings.quota, Some(parent))
            .map_err(|e| io_error(&home, e))?;
        let space = Arc::new(Space {
            handle: handle.clone(),
            owner,
            files,
            home: Some(home),
            gate: Arc::default(),
            lock_timeout: shared.settings.lock_timeout,
            python_state: shared.settings.python_state,
            shared: Some(shared.clone()),
        });
        open.retain(|_, weak| weak.strong_count() > 0);
        open.insert(handle, Arc::downgrade(&space));
        Ok(space)
    }

    /// A folder the user chose, outside the store (`toolhost stdio --workspace DIR`): named by
    /// its path, never expired, not counted against a principal.
    pub fn chosen(&self, dir: &Path) -> io::Result<Arc<Space>> {
        let files = Workspace::open(dir, self.shared.settings.quota)?;
        Ok(Arc::new(Space {
            handle: dir.display().to_string(),
            owner: Principal::anonymous(),
            files,
            home: None,
            gate: Arc::default(),
            lock_timeout: self.shared.settings.lock_timeout,
            python_state: None,
            shared: None,
        }))
    }

    /// Removes the workspaces unused for longer than the TTL (see `expiry.rs`); returns how many.
    pub fn expire(&self) -> usize {
        expiry::sweep(&self.shared)
    }

    /// Runs `expire` every minute (and once now) until the store is dropped.
    pub fn spawn_expiry(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { break };
                let removed = tokio::task::spawn_blocking(move || store.expire()).await.unwrap_or(0);
                if removed > 0 {
                    tracing::info!("removed {removed} workspaces unused for longer than --workspace-ttl");
                }
            }
        });
    }
}

impl Space {
    /// The handle clients name it by.
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// Its files.
    pub fn files(&self) -> &Workspace {
        &self.files
    }

    /// Its Python state, for a call that may start `fresh`; `None` when it keeps none (state is
    /// off, or the folder was chosen by the user and has nowhere out of the guest's reach).
    pub fn python_state(&self, fresh: bool) -> Option<PythonState> {
        let (home, budget_bytes) = (self.home.as_ref()?, self.python_state?);
        Some(PythonState { dir: home.join("state"), budget_bytes, fresh })
    }

    /// Waits (up to the lock timeout) until no other call, in this process or another, writes
    /// this workspace; the returned guard keeps it so.
    pub async fn write_lock(&self) -> Result<Writing, Busy> {
        let path = self.home.as_ref().map(|home| home.join("lock"));
        lock::acquire(&self.handle, &self.gate, path.as_deref(), self.lock_timeout).await
    }

    /// Marks the workspace used now, so expiry leaves it alone (until this stamp is made, a new
    /// workspace's folder's own time stands for it).
    pub fn touch(&self) {
        if let Some(home) = &self.home {
            let _ = stamp(&home.join("used"));
        }
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            held(&shared.dormant).insert(self.handle.clone(), self.files.ledger().clone());
        }
    }
}

impl Shared {
    fn principal_ledger(&self, principal: &Principal) -> Arc<Ledger> {
        held(&self.principals)
            .entry(principal.clone())
            .or_insert_with(|| Ledger::principal(self.settings.principal_bytes))
            .clone()
    }
}

/// A new handle: `ws_` + base32 of 160 random bits.
fn mint() -> String {
    let mut bytes = [0u8; HANDLE_BYTES];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
}

/// The handle in `text` if it is one (strictly: it becomes a path).
pub fn parse(text: &str) -> Option<&str> {
    let body = text.strip_prefix(PREFIX)?;
    let valid = body.len() == HANDLE_BYTES * 8 / 5 && body.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'));
    valid.then_some(text)
}

/// The name of a principal's index folder: a hash (principals hold `:`, `@`, `/`).
fn principal_key(principal: &Principal) -> String {
    crate::runtime::verify::sha256_bytes(principal.as_str().as_bytes())[..32].to_string()
}

/// Sets `path`'s modification time to now, making it if missing.
fn stamp(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?.set_modified(SystemTime::now())
}

fn io_error(path: &Path, source: io::Error) -> HandleError {
    HandleError::Workspace(WorkspaceError::Io { path: path.display().to_string(), source })
}

fn held<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
