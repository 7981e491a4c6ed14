//! Runtime files are verified: a tampered file is refused with an error that names it, the
//! expected and the actual sum; the lite runtime runs code too.

use toolhost::progress::Progress;
use toolhost::runtime::{self, Cache, FileRole, manifest};

use crate::support::{LITE, assert_ok, run_with, sandbox, settings, with_timeout, workspace};

/// A copy of the installed python-lite runtime in a cache of its own.
fn copied_lite_cache() -> (tempfile::TempDir, Cache, runtime::InstalledRuntime) {
    sandbox(); // makes sure the runtime is installed in the real cache
    let real = Cache::new(settings().cache_dir);
    let manifest = manifest::find(LITE).expect("lite manifest");
    let installed = runtime::ensure(&manifest, &real, &Progress::quiet()).expect("installed");
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Cache::new(tmp.path());
    let dest = cache.runtimes_dir().expect("runtimes dir").join(manifest.dir_name());
    std::fs::create_dir_all(&dest).expect("mkdir");
    for entry in std::fs::read_dir(&installed.dir).expect("ls") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dest.join(entry.file_name())).expect("copy");
    }
    let copied = runtime::ensure(&manifest, &cache, &Progress::quiet()).expect("the copy verifies");
    (tmp, cache, copied)
}

#[test]
fn a_tampered_runtime_file_is_refused_by_name_and_sums() {
    let (_tmp, cache, copied) = copied_lite_cache();
    let module = copied.path(FileRole::Module).expect("module");
    let mut bytes = std::fs::read(&module).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&module, bytes).expect("tamper");
    let manifest = manifest::find(LITE).expect("manifest");
    let pinned = copied.sha256(FileRole::Module).expect("sha").to_string();
    for result in
        [runtime::ensure(&manifest, &cache, &Progress::quiet()), runtime::verify(&manifest, &cache, &Progress::quiet())]
    {
        let error = format!("{:#}", result.expect_err("tampered file refused"));
        assert!(error.contains("sha256 mismatch"), "{error}");
        assert!(error.contains("python-3.12.0.wasm"), "{error}");
        assert!(error.contains(&format!("expected {pinned}")), "{error}");
        assert!(error.contains("toolhost runtime fetch"), "{error}");
    }
}

#[test]
fn a_tampered_file_with_its_old_stamp_is_still_caught_by_verify() {
    let (_tmp, cache, copied) = copied_lite_cache();
    let module = copied.path(FileRole::Module).expect("module");
    let meta = std::fs::metadata(&module).expect("meta");
    let mut bytes = std::fs::read(&module).expect("read");
    bytes[100] ^= 0x01;
    std::fs::write(&module, bytes).expect("tamper");
    // Put the modification time back: the stamp may still match, but a full check re-hashes.
    let file = std::fs::File::options().write(true).open(&module).expect("open");
    file.set_modified(meta.modified().expect("mtime")).expect("set mtime");
    let manifest = manifest::find(LITE).expect("manifest");
    assert!(runtime::verify(&manifest, &cache, &Progress::quiet()).is_err());
}

#[tokio::test]
async fn the_lite_runtime_runs_code_with_the_same_contract() {
    let (_dir, ws) = workspace();
    let outcome = run_with("import sys\nprint(sys.version_info[:2])\n6 * 7", LITE, &ws, with_timeout(30.0)).await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "(3, 12)\n42\n");
    let failed = run_with("def f():\n    raise ValueError('bad')\nf()", LITE, &ws, with_timeout(30.0)).await;
    let error = failed.error.expect("error");
    assert_eq!((error.kind.as_str(), error.message.as_str()), ("ValueError", "bad"));
    assert!(failed.stderr.contains("File \"<code>\", line 3"), "{}", failed.stderr);
    assert!(!failed.stderr.contains("toolhost"), "runner frames are hidden: {}", failed.stderr);
    let file = run_with("open('lite.txt', 'w').write('x')", LITE, &ws, with_timeout(30.0)).await;
    assert_eq!(file.files.len(), 1);
}

#[test]
fn prune_removes_only_what_the_settings_do_not_use() {
    sandbox(); // the runtimes are installed and compiled
    let cache = Cache::new(settings().cache_dir);
    let stale = cache.compiled_dir().expect("compiled").join("0000000000000000-wasmtime0.0.0-stale.cwasm");
    std::fs::write(&stale, b"not a module").expect("stale file");
    let output = std::process::Command::new(crate::support::toolhost_bin())
        .args(["runtime", "prune", "--dry-run"])
        .env("TOOLHOST_LOG", "warn")
        .output()
        .expect("toolhost runs");
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    std::fs::remove_file(&stale).expect("clean up");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(listed.contains("0000000000000000-wasmtime0.0.0-stale.cwasm"), "{listed}");
    let lite = manifest::find(LITE).expect("lite");
    let lite_sha = &lite.file(FileRole::Module).expect("module").sha256[..16];
    assert!(!listed.contains(lite_sha), "the lite runtime's compiled module is in use: {listed}");
    assert!(listed.contains("(dry run)"));
}
