//! matplotlib's data folder (fonts, style sheets, `matplotlibrc`). The stdlib zip carries it as
//! an inner archive; matplotlib reads it from the real folder its `__file__` implies, so it is
//! extracted once, from the already verified zip, and mounted read-only at that guest path.

use std::fs;
use std::io::{Cursor, Read};
use std::path::{Component, Path};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The folder's name inside a runtime's cache folder.
pub const DIR: &str = "mpl-data";

/// Extracts the inner archive `member` of the zip at `stdlib_zip` into `dest`, refusing any
/// entry that is a link or whose path is absolute or climbs with `..`. Returns the tree digest.
pub fn extract(stdlib_zip: &Path, member: &str, dest: &Path) -> Result<String> {
    let mut outer = zip::ZipArchive::new(fs::File::open(stdlib_zip)?)
        .with_context(|| format!("{} is not a readable zip", stdlib_zip.display()))?;
    let mut inner_bytes = Vec::new();
    outer.by_name(member).with_context(|| format!("the stdlib zip has no {member}"))?.read_to_end(&mut inner_bytes)?;
    let mut inner = zip::ZipArchive::new(Cursor::new(inner_bytes))
        .with_context(|| format!("{member} inside the stdlib zip is not a zip"))?;
    fs::create_dir_all(dest)?;
    for i in 0..inner.len() {
        let mut entry = inner.by_index(i)?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        let Some(relative) = entry.enclosed_name() else {
            bail!("{member} holds an entry that leaves its folder: {name:?}");
        };
        if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("{member} holds an entry with an unsafe path: {name:?}");
        }
        if entry.is_symlink() {
            bail!("{member} holds a link, which is refused: {name:?}");
        }
        let path = dest.join(&relative);
        if entry.is_dir() {
            fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut body = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry.read_to_end(&mut body)?;
        fs::write(&path, body)?;
    }
    tree_digest(dest)
}

/// A SHA-256 over every file of the tree: each relative path and content, in sorted order.
/// A link or anything but a folder or regular file makes it fail.
pub fn tree_digest(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(root, root, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for relative in files {
        let body = fs::read(root.join(&relative))?;
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update((body.len() as u64).to_le_bytes());
        hasher.update(&body);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            out.push(relative);
        } else {
            bail!("{} is neither a file nor a folder", path.display());
        }
    }
    Ok(())
}
