use std::time::{Duration, SystemTime};

use super::*;

fn settings(root: &Path) -> Settings {
    Settings {
        root: root.to_path_buf(),
        quota: Quota { bytes: 1 << 20, files: 100 },
        principal_bytes: 1 << 30,
        ttl: Duration::from_secs(4 * 3600),
        max_per_principal: 3,
        lock_timeout: Duration::from_millis(300),
        python_state: Some(1 << 20),
    }
}

fn alice() -> Principal {
    Principal::oauth("https://id.example", "alice")
}

fn bob() -> Principal {
    Principal::token(b"bob's token")
}

/// Closes a workspace, keeping its handle.
fn handle_of(space: Arc<Space>) -> String {
    space.handle().to_string()
}

/// Makes `handle` look unused for `hours`.
fn age_by(root: &Path, handle: &str, hours: u64) {
    let old = SystemTime::now() - Duration::from_secs(hours * 3600);
    fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(handle).join("used"))
        .and_then(|f| f.set_modified(old))
        .expect("age");
}

#[test]
fn handles_are_long_random_and_parsed_strictly() {
    let (a, b) = (mint(), mint());
    assert_ne!(a, b);
    assert!(a.starts_with("ws_") && a.len() == 3 + 32, "{a}");
    assert_eq!(parse(&a), Some(a.as_str()));
    for bad in [
        "",
        "ws_",
        "ws_../../etc",
        &a.to_uppercase(),
        &format!("{a}x"),
        &a[..a.len() - 1],
        "ws_0000000000000000000000000000000",
    ] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
}

#[test]
fn a_workspace_outlives_its_opener_and_only_its_owner_may_open_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let handle = {
        let store = Workspaces::new(settings(tmp.path())).expect("store");
        let space = store.create(&alice()).expect("create");
        space.files().write("notes.txt", b"kept").expect("write");
        handle_of(space)
    };
    // A new store on the same folder (a restart, another replica) finds it.
    let store = Workspaces::new(settings(tmp.path())).expect("store");
    let space = store.open(&handle, &alice()).expect("open");
    assert_eq!(space.files().read("notes.txt", 0, None).expect("read").0, b"kept");
    assert!(matches!(store.open(&handle, &bob()), Err(HandleError::NotYours(_))));
    assert!(matches!(store.open(&mint(), &alice()), Err(HandleError::Unknown(_))));
    assert!(matches!(store.open("../etc", &alice()), Err(HandleError::Malformed(_))));
    // Open in this process: still refused to another principal.
    assert!(matches!(store.open(&handle, &bob()), Err(HandleError::NotYours(_))));
}

#[test]
fn a_principal_may_own_only_so_many_workspaces() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Workspaces::new(settings(tmp.path())).expect("store");
    let made: Vec<_> = (0..3).map(|_| store.create(&alice()).expect("create")).collect();
    let refused = store.create(&alice()).err().expect("a fourth is refused");
    assert!(refused.to_string().contains("--max-workspaces-per-principal"), "{refused}");
    store.create(&bob()).expect("another principal has its own count");
    drop(made);
}

#[test]
fn unused_workspaces_expire_with_a_tombstone_and_used_ones_stay() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Workspaces::new(settings(tmp.path())).expect("store");
    let (old, fresh) = (handle_of(store.create(&alice()).expect("a")), handle_of(store.create(&alice()).expect("b")));
    let busy = store.create(&alice()).expect("c");
    let busy_handle = busy.handle().to_string();
    age_by(tmp.path(), &old, 5);
    age_by(tmp.path(), &busy_handle, 5);
    // `busy` is still open in this process: it stays, whatever its stamp says.
    assert_eq!(store.expire(), 1);
    assert!(!tmp.path().join(&old).exists());
    assert!(matches!(store.open(&old, &alice()), Err(HandleError::Expired(_))));
    store.open(&fresh, &alice()).expect("fresh stays");
    drop(busy);
    // Another process holds its writer's lock: it stays.
    let held = lock::try_exclusive(&tmp.path().join(&busy_handle).join("lock")).expect("lock");
    assert_eq!(store.expire(), 0);
    drop(held);
    assert_eq!(store.expire(), 1);
    // The expired ones left the principal's count: two more fit.
    store.create(&alice()).expect("room again");
    store.create(&alice()).expect("room again");
}

#[test]
fn nothing_at_start_removes_what_is_there() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Workspaces::new(settings(tmp.path())).expect("store");
    let space = store.create(&alice()).expect("create");
    space.files().write("a.txt", b"x").expect("write");
    let unrelated = tmp.path().join("keep-me");
    fs::create_dir_all(&unrelated).expect("unrelated");
    let _second = Workspaces::new(settings(tmp.path())).expect("a second store");
    assert!(space.files().host_path().join("a.txt").exists() && unrelated.exists());
}

#[tokio::test]
async fn writers_take_turns_and_a_long_wait_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Workspaces::new(settings(tmp.path())).expect("store");
    let space = store.create(&alice()).expect("create");
    let first = space.write_lock().await.expect("first");
    let refused = space.write_lock().await.expect_err("second waits, then gives up");
    assert!(refused.to_string().contains("is busy"), "{refused}");
    drop(first);
    let _second = space.write_lock().await.expect("free again");
    // Another process (another open file) holding the lock blocks this one too.
    drop(_second);
    let other = lock::try_exclusive(&tmp.path().join(space.handle()).join("lock")).expect("other process");
    assert!(space.write_lock().await.is_err());
    drop(other);
    space.write_lock().await.expect("free again");
}

#[test]
fn a_principals_bytes_count_across_its_workspaces_open_or_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut settings = settings(tmp.path());
    settings.principal_bytes = 10;
    let store = Workspaces::new(settings).expect("store");
    let a = store.create(&alice()).expect("a");
    a.files().write("a.txt", b"123456").expect("6 bytes");
    let a_handle = a.handle().to_string();
    drop(a);
    let b = store.create(&alice()).expect("b");
    let refused = b.files().write("b.txt", b"123456").expect_err("12 bytes in all");
    assert!(refused.to_string().contains("across all your workspaces"), "{refused}");
    // Reopening `a` counts it once, not twice.
    let a = store.open(&a_handle, &alice()).expect("a again");
    b.files().write("b.txt", b"1234").expect("10 bytes in all");
    drop(a);
}

#[test]
fn an_empty_workspace_goes_after_an_hour_and_one_with_files_keeps_its_ttl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Workspaces::new(settings(tmp.path())).expect("store");
    let empty = handle_of(store.create(&alice()).expect("empty"));
    let full = store.create(&alice()).expect("full");
    full.files().write("keep.txt", b"x").expect("write");
    let full = handle_of(full);
    age_by(tmp.path(), &empty, 2);
    age_by(tmp.path(), &full, 2);
    assert_eq!(store.expire(), 1);
    assert!(matches!(store.open(&empty, &alice()), Err(HandleError::Expired(_))));
    store.open(&full, &alice()).expect("two hours is within its TTL");
}
