//! Obtaining a runtime: `python3 -m pip download --no-deps` of the pinned wheel, its SHA-256
//! checked, then only the pinned files unpacked (each checked as it is written) into a staging
//! folder that is renamed into place once everything matched. pip finds the package index
//! through its own configuration; no address appears here.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::manifest::{FileRole, Manifest};
use super::verify::{ChecksumMismatch, Stamp, Stamps, sha256_file};
use super::{Cache, InstalledRuntime, mpl_data};
use crate::progress::Progress;

/// The Python that runs pip: `$TOOLHOST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("TOOLHOST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Downloads, verifies and unpacks `manifest`'s runtime into the cache, replacing whatever was
/// there. Nothing is left in place unless every pinned file matched.
pub fn fetch(manifest: &Manifest, cache: &Cache, progress: &Progress) -> Result<InstalledRuntime> {
    let runtimes = cache.runtimes_dir()?;
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&runtimes)
        .context("cannot create a download folder in the cache")?;
    let wheel = pip_download(manifest, download.path(), progress)?;

    let step = progress.step(format!("verifying {}", manifest.source.wheel));
    let actual = sha256_file(&wheel).with_context(|| format!("cannot read {}", wheel.display()))?;
    if actual != manifest.source.wheel_sha256 {
        return Err(ChecksumMismatch {
            subject: format!("runtime {}", manifest.name),
            file: manifest.source.wheel.clone(),
            expected: manifest.source.wheel_sha256.clone(),
            actual,
            advice: "the package index served a different wheel than the one pinned in \
                     guest-runtimes/; nothing was unpacked"
                .into(),
        }
        .into());
    }
    step.finish(format!("{} matches its pinned sha256", manifest.source.wheel));

    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&runtimes)
        .context("cannot create a staging folder in the cache")?;
    let stamps = unpack(manifest, &wheel, staging.path(), progress)?;
    let stamps_json = serde_json::to_vec_pretty(&stamps)?;
    fs::write(Stamps::path(staging.path()), stamps_json)?;

    let dest = runtimes.join(manifest.dir_name());
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("cannot replace the old runtime at {}", dest.display()))?;
    }
    let staged = staging.keep();
    fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    fs::rename(&staged, &dest).with_context(|| format!("cannot move the runtime into {}", dest.display()))?;
    Ok(InstalledRuntime::at(manifest.clone(), dest))
}

/// Runs pip and returns the path of the pinned wheel it saved.
fn pip_download(manifest: &Manifest, dest: &Path, progress: &Progress) -> Result<PathBuf> {
    let requirement = manifest.requirement();
    progress.note(format!(
        "downloading {requirement} with `{} -m pip download` (about {} MB)",
        python(),
        approximate_mb(manifest)
    ));
    let mut cmd = Command::new(python());
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--dest"])
        .arg(dest)
        .arg(&requirement)
        .stdin(Stdio::null())
        // pip reports on stdout; in `toolhost stdio` stdout carries only MCP messages.
        .stdout(Stdio::from(io::stderr()));
    if !progress.is_interactive() {
        cmd.args(["--progress-bar", "off", "--quiet"]);
    }
    let status = cmd.status().with_context(|| {
        format!(
            "cannot start `{} -m pip`: toolhost needs Python 3 with pip to download its runtimes \
             (set TOOLHOST_PYTHON to use another interpreter)",
            python()
        )
    })?;
    if !status.success() {
        bail!(
            "`{} -m pip download {requirement}` failed ({status}); check that pip can reach its \
             package index (pip's own configuration, e.g. PIP_INDEX_URL or PIP_FIND_LINKS for \
             an offline wheel folder), then run `toolhost runtime fetch {}` again",
            python(),
            manifest.name
        );
    }
    let wheel = dest.join(&manifest.source.wheel);
    if !wheel.is_file() {
        let saved: Vec<String> =
            fs::read_dir(dest)?.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect();
        bail!(
            "pip saved {saved:?} but not the pinned wheel {}; the manifest pins {requirement}",
            manifest.source.wheel
        );
    }
    Ok(wheel)
}

fn approximate_mb(manifest: &Manifest) -> &'static str {
    if manifest.file(FileRole::Stdlib).is_some() { "100" } else { "12" }
}

/// Unpacks every pinned member of the wheel into `staging`, hashing as it writes; returns each
/// file's stamp. The stdlib goes into `lib/` (the folder the guest sees), matplotlib's data
/// into `mpl-data/`.
fn unpack(manifest: &Manifest, wheel: &Path, staging: &Path, progress: &Progress) -> Result<Stamps> {
    let mut archive = zip::ZipArchive::new(fs::File::open(wheel)?)
        .with_context(|| format!("{} is not a readable wheel (zip)", wheel.display()))?;
    let mut stamps = Stamps::default();
    for pinned in &manifest.files {
        let dest = InstalledRuntime::file_path(staging, pinned.role, &pinned.name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut member = archive
            .by_name(&pinned.member)
            .with_context(|| format!("the wheel {} has no member {}", manifest.source.wheel, pinned.member))?;
        let bar = progress.bytes(format!("unpacking {}", pinned.name), member.size());
        let actual = copy_hashing(&mut member, &dest, |n| bar.inc(n))?;
        bar.done();
        if actual != pinned.sha256 {
            return Err(ChecksumMismatch {
                subject: format!("runtime {}", manifest.name),
                file: pinned.name.clone(),
                expected: pinned.sha256.clone(),
                actual,
                advice: format!("the wheel's member {} differs from the pin", pinned.member),
            }
            .into());
        }
        stamps.files.insert(pinned.name.clone(), Stamp::of(&dest, &pinned.sha256)?);
    }
    if let (Some(member), Some(_)) =
        (manifest.layout.matplotlib_data_member.as_deref(), manifest.layout.matplotlib_data.as_deref())
    {
        let stdlib = manifest.file(FileRole::Stdlib).context("matplotlib data needs a stdlib")?;
        let zip_path = InstalledRuntime::file_path(staging, FileRole::Stdlib, &stdlib.name);
        let step = progress.step("extracting matplotlib's data from the verified stdlib zip");
        let digest = mpl_data::extract(&zip_path, member, &staging.join(mpl_data::DIR))?;
        stamps.mpl_data_sha256 = Some(digest);
        step.finish("matplotlib's data extracted");
    }
    Ok(stamps)
}

/// Copies `reader` into a new file at `dest`, returning the hex SHA-256 of what was written.
fn copy_hashing(reader: &mut impl Read, dest: &Path, mut on_bytes: impl FnMut(u64)) -> Result<String> {
    let mut out = fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("cannot read the wheel"),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        on_bytes(n as u64);
    }
    out.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
}
