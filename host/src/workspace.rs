//! A session's files: the folder the guest sees as `/workspace` and the file tools work on.
//! Every path from outside is resolved here, relative to the workspace, and every access goes
//! through a cap-std `Dir`, so `..`, absolute paths and symlinks (even ones guest code made)
//! cannot reach a file outside it. Writes are atomic and held to the byte and file quotas by
//! the workspace's ledger, which the guest's own writes draw on too.

mod ledger;
pub use ledger::{InUse, Ledger, Refused};

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("path {path:?} is not allowed: {reason}")]
    PathEscapes { path: String, reason: &'static str },
    #[error("{path:?} does not exist in the workspace")]
    NotFound { path: String },
    #[error("{path:?} is a folder, not a file")]
    IsAFolder { path: String },
    #[error("{path:?} is not a folder")]
    NotAFolder { path: String },
    #[error("the workspace quota would be exceeded: {what} (limit {limit}); delete files first")]
    QuotaExceeded { what: String, limit: String },
    #[error("{path:?} is in a read-only folder")]
    ReadOnly { path: String },
    #[error("{path:?}: {source}")]
    Io { path: String, source: io::Error },
}

impl WorkspaceError {
    fn io(path: &str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::NotFound => WorkspaceError::NotFound { path: path.to_string() },
            // cap-std answers a path that leads outside the folder (through `..` or a link)
            // with PermissionDenied.
            io::ErrorKind::PermissionDenied => WorkspaceError::PathEscapes {
                path: path.to_string(),
                reason: "it leads outside the workspace (through a link?)",
            },
            _ => WorkspaceError::Io { path: path.to_string(), source },
        }
    }
}

/// The two quotas of a workspace.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub bytes: u64,
    pub files: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    /// As tools and listings name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }
}

/// One entry of the workspace, by its path relative to the workspace root (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub modified: SystemTime,
}

/// Every entry of the workspace at one moment.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub entries: BTreeMap<String, Entry>,
}

impl Index {
    /// Bytes held by files.
    pub fn bytes(&self) -> u64 {
        self.entries.values().filter(|e| e.kind == Kind::File).map(|e| e.size).sum()
    }

    /// Entries of every kind (files, folders, links).
    pub fn count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The files created or changed (size or modification time) since `before`.
    pub fn changed_since<'a>(&'a self, before: &Index) -> Vec<(&'a str, &'a Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.kind == Kind::File)
            .filter(|(path, e)| before.entries.get(*path) != Some(e))
            .map(|(path, e)| (path.as_str(), e))
            .collect()
    }
}

/// An opened workspace folder.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    dir: Dir,
    ledger: Arc<Ledger>,
    read_only: bool,
}

impl Workspace {
    /// Opens (creating if needed) the workspace folder at `root` on the host, measuring what it
    /// holds.
    pub fn open(root: impl Into<PathBuf>, quota: Quota) -> io::Result<Workspace> {
        Workspace::open_under(root, quota, None)
    }

    /// Like `open`, its holdings also counted in `parent` (its principal's ledger).
    pub fn open_under(root: impl Into<PathBuf>, quota: Quota, parent: Option<Arc<Ledger>>) -> io::Result<Workspace> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let dir = Dir::open_ambient_dir(&root, ambient_authority())?;
        let index = walk(&dir)?;
        let ledger = Ledger::under(quota, index.bytes(), index.count(), parent);
        Ok(Workspace { root, dir, ledger, read_only: false })
    }

    /// Opens an existing folder that is only listed and read (a configured resource root).
    pub fn open_read_only(root: impl Into<PathBuf>) -> io::Result<Workspace> {
        let root = root.into();
        let dir = Dir::open_ambient_dir(&root, ambient_authority())?;
        let ledger = Ledger::new(Quota { bytes: 0, files: 0 }, 0, 0);
        Ok(Workspace { root, dir, ledger, read_only: true })
    }

    /// What the workspace holds against its quota; every write draws on it.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The host folder, to preopen as `/workspace`.
    pub fn host_path(&self) -> &Path {
        &self.root
    }

    /// Walks the workspace without following links.
    pub fn index(&self) -> io::Result<Index> {
        walk(&self.dir)
    }

    /// Reads a file, or the part of it from `offset`, at most `length` bytes.
    pub fn read(&self, path: &str, offset: u64, length: Option<u64>) -> Result<(Vec<u8>, u64), WorkspaceError> {
        let rel = resolve(path)?;
        let shown = display(&rel);
        let mut file = self.dir.open(&rel).map_err(|e| WorkspaceError::io(&shown, e))?;
        let meta = file.metadata().map_err(|e| WorkspaceError::io(&shown, e))?;
        if meta.is_dir() {
            return Err(WorkspaceError::IsAFolder { path: shown });
        }
        let total = meta.len();
        file.seek(SeekFrom::Start(offset)).map_err(|e| WorkspaceError::io(&shown, e))?;
        let want = length.unwrap_or(total).min(total.saturating_sub(offset));
        let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        file.take(want).read_to_end(&mut bytes).map_err(|e| WorkspaceError::io(&shown, e))?;
        Ok((bytes, total))
    }

    /// Writes a whole file atomically (a temp file beside it, then a rename), making its
    /// folders, within the quotas. Returns its size.
    pub fn write(&self, path: &str, bytes: &[u8]) -> Result<u64, WorkspaceError> {
        let rel = resolve(path)?;
        let shown = display(&rel);
        if self.read_only {
            return Err(WorkspaceError::ReadOnly { path: shown });
        }
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Err(WorkspaceError::PathEscapes { path: path.into(), reason: "it names no file" });
        };
        let _in_use = self.ledger.enter(None);
        let existing = self.dir.symlink_metadata(&rel).ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(WorkspaceError::IsAFolder { path: shown });
        }
        let old = existing.as_ref().filter(|m| m.is_file()).map_or(0, |m| m.len());
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        let new_entries = u64::from(existing.is_none()) + parent.map_or(0, |p| self.missing_folders(p));
        let new = bytes.len() as u64;
        self.ledger.take(new.saturating_sub(old), new_entries).map_err(|refused| WorkspaceError::QuotaExceeded {
            what: format!("{} after writing {shown}", refused.what),
            limit: refused.limit,
        })?;
        let written = self.replace(parent, &name, bytes);
        match &written {
            Ok(()) => self.ledger.give(old.saturating_sub(new), 0),
            Err(_) => self.ledger.give(new.saturating_sub(old), new_entries),
        }
        written.map(|()| new).map_err(|e| WorkspaceError::io(&shown, e))
    }

    /// The folders of `parent` (relative) that do not exist yet.
    fn missing_folders(&self, parent: &Path) -> u64 {
        let mut missing = 0;
        let mut prefix = PathBuf::new();
        for part in parent.components() {
            prefix.push(part);
            if missing > 0 || self.dir.symlink_metadata(&prefix).is_err() {
                missing += 1;
            }
        }
        missing
    }

    /// Puts `bytes` at `rel` through a temp file beside it and a rename.
    fn replace(&self, parent: Option<&Path>, name: &str, bytes: &[u8]) -> io::Result<()> {
        let folder = match parent {
            Some(p) => {
                self.dir.create_dir_all(p)?;
                self.dir.open_dir(p)?
            }
            None => self.dir.try_clone()?,
        };
        // Unique per write: two writes of one path at once must not share (or delete) a temp file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".{name}{IN_FLIGHT}{}-{n}.tmp", std::process::id());
        let written = (|| {
            let mut file = folder.open_with(&tmp, OpenOptions::new().write(true).create_new(true))?;
            file.write_all(bytes)?;
            file.sync_all()?;
            folder.rename(&tmp, &folder, name)
        })();
        if written.is_err() {
            let _ = folder.remove_file(&tmp);
        }
        written
    }

    /// Deletes a file, a link, or an empty folder.
    pub fn delete(&self, path: &str) -> Result<Kind, WorkspaceError> {
        let rel = resolve(path)?;
        let shown = display(&rel);
        if self.read_only {
            return Err(WorkspaceError::ReadOnly { path: shown });
        }
        if rel.as_os_str().is_empty() {
            return Err(WorkspaceError::PathEscapes {
                path: path.into(),
                reason: "the workspace itself cannot be deleted",
            });
        }
        let meta = self.dir.symlink_metadata(&rel).map_err(|e| WorkspaceError::io(&shown, e))?;
        let _in_use = self.ledger.enter(None);
        if meta.is_dir() {
            self.dir.remove_dir(&rel).map_err(|e| WorkspaceError::io(&shown, e))?;
            self.ledger.give(0, 1);
            Ok(Kind::Dir)
        } else {
            self.dir.remove_file(&rel).map_err(|e| WorkspaceError::io(&shown, e))?;
            self.ledger.give(if meta.is_file() { meta.len() } else { 0 }, 1);
            Ok(if meta.file_type().is_symlink() { Kind::Symlink } else { Kind::File })
        }
    }

    /// The entries directly inside a folder.
    pub fn list(&self, path: &str) -> Result<Vec<(String, Entry)>, WorkspaceError> {
        let rel = resolve(path)?;
        let shown = display(&rel);
        let dir = if rel.as_os_str().is_empty() {
            self.dir.try_clone().map_err(|e| WorkspaceError::io(&shown, e))?
        } else {
            let meta = self.dir.metadata(&rel).map_err(|e| WorkspaceError::io(&shown, e))?;
            if !meta.is_dir() {
                return Err(WorkspaceError::NotAFolder { path: shown });
            }
            self.dir.open_dir(&rel).map_err(|e| WorkspaceError::io(&shown, e))?
        };
        let mut found = Vec::new();
        for entry in dir.entries().map_err(|e| WorkspaceError::io(&shown, e))? {
            let entry = entry.map_err(|e| WorkspaceError::io(&shown, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_in_flight(&name) {
                continue;
            }
            let path = if shown.is_empty() { name } else { format!("{shown}/{name}") };
            if let Ok(e) = entry_of(&entry) {
                found.push((path, e));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }
}

/// Resolves a path from outside (a tool argument, a resource URI's path) to one relative to
/// the workspace. Accepts `a/b`, `./a/b` and `/workspace/a/b`; refuses `..`, other absolute
/// paths and NUL bytes. The empty path is the workspace itself.
pub fn resolve(path: &str) -> Result<PathBuf, WorkspaceError> {
    let refuse = |reason| Err(WorkspaceError::PathEscapes { path: path.to_string(), reason });
    if path.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    let inside = if path == "/workspace" {
        ""
    } else if let Some(rest) = path.strip_prefix("/workspace/") {
        rest
    } else if path.starts_with('/') {
        return refuse("absolute paths must be inside /workspace");
    } else {
        path
    };
    let mut rel = PathBuf::new();
    for component in Path::new(inside).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return refuse("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => return refuse("absolute paths must be inside /workspace"),
        }
    }
    Ok(rel)
}

/// The `/`-separated form of a relative path, as results show it.
pub fn display(rel: &Path) -> String {
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// The `file:///workspace/...` URI of a workspace path.
pub fn uri(path: &str) -> String {
    uri_under("workspace", path)
}

/// `file:///<prefix>/<path>`, each path segment percent-encoded.
pub fn uri_under(prefix: &str, path: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    let encoded: Vec<String> =
        path.split('/').map(|segment| percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()).collect();
    format!("file:///{prefix}/{}", encoded.join("/"))
}

fn entry_of(entry: &cap_std::fs::DirEntry) -> io::Result<Entry> {
    let kind = entry.file_type()?;
    let meta = entry.metadata()?;
    let kind = if kind.is_symlink() {
        Kind::Symlink
    } else if kind.is_dir() {
        Kind::Dir
    } else {
        Kind::File
    };
    let modified = meta.modified().map(|t| t.into_std()).unwrap_or(SystemTime::UNIX_EPOCH);
    let size = if kind == Kind::File { meta.len() } else { 0 };
    Ok(Entry { kind, size, modified })
}

/// What names a temp file of a write in progress: `.<name>.toolhost-<pid>-<n>.tmp`.
const IN_FLIGHT: &str = ".toolhost-";

/// Whether `name` is another write's temp file, left out of listings (still counted in the
/// index, so that no name hides bytes from the quota).
fn is_in_flight(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else { return false };
    let Some((_, numbers)) = rest.rsplit_once(IN_FLIGHT) else { return false };
    let mut parts = numbers.split('-');
    let numeric = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
}

/// Every entry under `root`, at any depth, without following links (a loop, not recursion: a
/// tree made from outside may be deeper than any stack).
fn walk(root: &Dir) -> io::Result<Index> {
    let mut index = Index::default();
    let mut folders = vec![(root.try_clone()?, String::new())];
    while let Some((dir, prefix)) = folders.pop() {
        for entry in dir.entries()? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let Ok(found) = entry_of(&entry) else { continue };
            let is_dir = found.kind == Kind::Dir;
            index.entries.insert(path.clone(), found);
            if is_dir && let Ok(sub) = dir.open_dir(&name) {
                folders.push((sub, path));
            }
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writes_of_one_path_never_collide_and_listings_hide_their_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::open(dir.path().join("ws"), Quota { bytes: 1 << 20, files: 100 }).expect("open");
        std::thread::scope(|scope| {
            for n in 0..8 {
                let ws = &ws;
                scope.spawn(move || {
                    ws.write("same.txt", format!("writer {n}").as_bytes()).expect("every write succeeds")
                });
            }
        });
        assert!(ws.read("same.txt", 0, None).expect("read").0.starts_with(b"writer "));
        std::fs::write(dir.path().join("ws/.same.txt.toolhost-1-2.tmp"), b"in flight").expect("temp");
        let names: Vec<String> = ws.list("").expect("list").into_iter().map(|(path, _)| path).collect();
        assert_eq!(names, ["same.txt"]);
        assert!(is_in_flight(".a.toolhost-12-3.tmp") && !is_in_flight(".a.toolhost-x.tmp") && !is_in_flight("a.tmp"));
    }

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::open(tmp.path().join("ws"), Quota { bytes: 1000, files: 5 }).expect("open");
        (tmp, ws)
    }

    #[test]
    fn paths_resolve_inside_the_workspace_or_are_refused() {
        assert_eq!(resolve("a/b.txt").expect("ok"), PathBuf::from("a/b.txt"));
        assert_eq!(resolve("./a/./b.txt").expect("ok"), PathBuf::from("a/b.txt"));
        assert_eq!(resolve("/workspace/a").expect("ok"), PathBuf::from("a"));
        assert_eq!(resolve("/workspace").expect("ok"), PathBuf::new());
        assert_eq!(resolve("").expect("ok"), PathBuf::new());
        for bad in ["../x", "a/../../x", "a/..", "/etc/passwd", "/workspacex/a", "a\0b"] {
            assert!(matches!(resolve(bad), Err(WorkspaceError::PathEscapes { .. })), "{bad}");
        }
    }

    #[test]
    fn uris_encode_each_segment() {
        assert_eq!(uri("data/my file#1.csv"), "file:///workspace/data/my%20file%231.csv");
        assert_eq!(uri_under("logs", "app.log"), "file:///logs/app.log");
    }

    #[test]
    fn writes_are_whole_and_reads_can_take_a_range() {
        let (_tmp, ws) = workspace();
        assert_eq!(ws.write("d/e/f.txt", b"hello world").expect("write"), 11);
        let (bytes, total) = ws.read("/workspace/d/e/f.txt", 6, Some(3)).expect("read");
        assert_eq!((bytes.as_slice(), total), (&b"wor"[..], 11));
        ws.write("d/e/f.txt", b"bye").expect("rewrite");
        assert_eq!(ws.read("d/e/f.txt", 0, None).expect("read").0, b"bye");
        let names: Vec<_> = ws.list("d/e").expect("list").into_iter().map(|(p, _)| p).collect();
        assert_eq!(names, ["d/e/f.txt"], "no temp file is left behind");
    }

    #[test]
    fn quotas_refuse_a_write_and_keep_the_old_file() {
        let (_tmp, ws) = workspace();
        ws.write("a.txt", &[b'a'; 600]).expect("write");
        let err = ws.write("b.txt", &[b'b'; 600]).expect_err("over the byte quota");
        assert!(matches!(err, WorkspaceError::QuotaExceeded { .. }), "{err}");
        ws.write("a.txt", &[b'c'; 900]).expect("replacing a file counts its old size once");
        for i in 0..4 {
            ws.write(&format!("f{i}"), b"x").expect("within the file quota");
        }
        let err = ws.write("one-too-many", b"x").expect_err("over the file quota");
        assert!(err.to_string().contains("files"), "{err}");
        assert_eq!(ws.read("a.txt", 0, None).expect("read").0.len(), 900);
    }

    #[test]
    fn a_link_out_of_the_workspace_is_not_followed() {
        let (tmp, ws) = workspace();
        std::fs::write(tmp.path().join("secret"), b"host file").expect("secret");
        std::os::unix::fs::symlink(tmp.path().join("secret"), ws.host_path().join("link")).expect("symlink");
        std::os::unix::fs::symlink("../secret", ws.host_path().join("rel")).expect("symlink");
        for path in ["link", "rel"] {
            let err = ws.read(path, 0, None).expect_err("escape");
            assert!(matches!(err, WorkspaceError::PathEscapes { .. }), "{path}: {err}");
            assert!(ws.write(&format!("{path}/x"), b"x").is_err());
        }
        assert_eq!(ws.delete("link").expect("the link itself can be removed"), Kind::Symlink);
        assert!(tmp.path().join("secret").exists());
    }

    #[test]
    fn the_index_reports_what_changed() {
        let (_tmp, ws) = workspace();
        ws.write("keep.txt", b"1").expect("write");
        ws.write("change.txt", b"1").expect("write");
        let before = ws.index().expect("index");
        ws.write("change.txt", b"22").expect("write");
        ws.write("new/file.txt", b"3").expect("write");
        let after = ws.index().expect("index");
        let changed: Vec<_> = after.changed_since(&before).into_iter().map(|(p, _)| p).collect();
        assert_eq!(changed, ["change.txt", "new/file.txt"]);
        assert_eq!(after.bytes(), 4);
    }
}
