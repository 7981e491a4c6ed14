//! The cache root and its private folders: `runtimes/<name>-<sha12>/` for unpacked runtimes and
//! `compiled/` for native code. Folders are 0700 and files 0600, written atomically (a temp file
//! in the same folder, then a rename), and a file is trusted only if this user owns it and no
//! one else can write it: a compiled module is native code we run.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The cache root: `$TOOLHOST_CACHE`, else `$XDG_CACHE_HOME/toolhost`, else `~/.cache/toolhost`.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOOLHOST_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("toolhost");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("toolhost")
}

/// The cache root, with its two private subfolders made on first use.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `runtimes/`, where each runtime is unpacked into a folder of its own.
    pub fn runtimes_dir(&self) -> Result<PathBuf> {
        private_dir(&self.root.join("runtimes"))
    }

    /// `compiled/`, where compiled modules are kept.
    pub fn compiled_dir(&self) -> Result<PathBuf> {
        private_dir(&self.root.join("compiled"))
    }
}

/// Makes `path` (and its parents) if missing, then checks it is a real folder this user owns
/// that no one else may write, tightening a folder we own to 0700.
pub fn private_dir(path: &Path) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create the cache folder {}", path.display()))?;
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot read the cache folder {}", path.display()))?;
    if !meta.is_dir() {
        bail!("the cache folder {} is not a folder (a link?); remove it", path.display());
    }
    if meta.uid() != current_uid() {
        bail!(
            "the cache folder {} belongs to uid {}, not to this user ({}); use a cache of your own (TOOLHOST_CACHE)",
            path.display(),
            meta.uid(),
            current_uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", path.display()))?;
    }
    Ok(path.to_path_buf())
}

/// True when `path` is a regular file (not a link) owned by this user that only this user can
/// read or write: the only kind of cached native code toolhost loads.
pub fn is_private_file(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(meta) => meta.is_file() && meta.uid() == current_uid() && meta.mode() & 0o077 == 0,
        Err(_) => false,
    }
}

/// Writes `bytes` to `dir/name` atomically: a 0600 temp file in `dir`, synced, then renamed
/// over `name`. A reader sees the old file or the whole new one, never a part.
pub fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let dest = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    tmp.persist(&dest).with_context(|| format!("cannot move the new file into place at {}", dest.display()))?;
    Ok(dest)
}

/// An exclusive lock on `dir/<name>.lock`, held until dropped: one process at a time fetches a
/// runtime or compiles a module, and the others then find its work done.
pub fn lock(dir: &Path, name: &str) -> Result<fs::File> {
    let path = dir.join(format!("{name}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replace_atomically() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = private_dir(&tmp.path().join("a/b")).expect("dir");
        assert_eq!(fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
        let path = write_private(&dir, "x.bin", b"one").expect("write");
        assert!(is_private_file(&path));
        assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
        write_private(&dir, "x.bin", b"two").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let leftovers: Vec<_> = fs::read_dir(&dir).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn a_file_others_can_write_or_a_link_is_not_trusted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = private_dir(tmp.path()).expect("dir");
        let path = write_private(&dir, "x.bin", b"one").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(!is_private_file(&path));
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(is_private_file(&path));
        assert!(!is_private_file(&link));
    }

    #[test]
    fn a_shared_cache_folder_is_made_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        private_dir(&dir).expect("dir");
        assert_eq!(fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
    }
}
