//! Durability semantics of the SDFS local store, on real temp directories.

use dml_actors::sdfs::store::{flip_byte, FIRST_DATA_OFFSET};
use dml_actors::sdfs::{Corruption, LocalStore, SdfsName, StoreConfig, StoreError, MAX_CHUNK};

fn name(s: &str) -> SdfsName {
    SdfsName::parse(s).unwrap()
}

fn open(dir: &std::path::Path, keep: usize) -> LocalStore {
    LocalStore::open(
        dir,
        StoreConfig {
            keep_versions: keep,
        },
    )
    .unwrap()
}

fn write(store: &LocalStore, n: &SdfsName, v: u64, chunks: &[&[u8]]) {
    let mut w = store.begin_write(n, v).unwrap();
    for c in chunks {
        w.append(c).unwrap();
    }
    w.commit().unwrap();
}

#[test]
fn chunks_round_trip_and_versions_are_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    let n = name("images/cat.jpg");
    write(&s, &n, 2, &[b"hello ", b"world"]);
    write(&s, &n, 1, &[b"old"]);
    write(&s, &n, 7, &[]);
    assert_eq!(s.versions(&n).unwrap(), vec![7, 2, 1]);
    assert_eq!(s.latest(&n).unwrap(), Some(7));
    assert_eq!(s.read_all(&n, 2).unwrap(), b"hello world");
    assert_eq!(s.read_all(&n, 7).unwrap(), b"");
    let mut r = s.open_read(&n, 2).unwrap();
    r.seek_chunk(1).unwrap();
    assert_eq!(r.next_chunk().unwrap().unwrap(), b"world");
    assert_eq!(r.next_chunk().unwrap(), None);
    assert!(matches!(
        s.open_read(&n, 3),
        Err(StoreError::NotFound { version: 3, .. })
    ));
    assert!(s.total_bytes().unwrap() > 14);
}

#[test]
fn uncommitted_versions_are_never_visible_and_temp_files_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    let n = name("a");
    write(&s, &n, 1, &[b"one"]);

    // Aborted by drop: nothing visible, no temp file.
    let mut w = s.begin_write(&n, 2).unwrap();
    w.append(b"partial").unwrap();
    drop(w);
    assert_eq!(s.versions(&n).unwrap(), vec![1]);
    assert!(s.temp_files().unwrap().is_empty());

    // A crash (no destructor runs): the temp file stays but is not a version, and the
    // next open removes it.
    let mut w = s.begin_write(&n, 3).unwrap();
    w.append(b"torn").unwrap();
    std::mem::forget(w);
    assert_eq!(s.versions(&n).unwrap(), vec![1]);
    assert_eq!(s.temp_files().unwrap().len(), 1);
    let s = open(dir.path(), 5);
    assert!(s.temp_files().unwrap().is_empty());
    assert_eq!(s.versions(&n).unwrap(), vec![1]);
    assert_eq!(s.read_all(&n, 1).unwrap(), b"one");
}

#[test]
fn flipped_byte_is_detected_and_names_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    let n = name("f");
    let c0 = vec![1u8; 100];
    let c1 = vec![2u8; 100];
    write(&s, &n, 1, &[&c0, &c1]);
    // A data byte of chunk 1: past chunk 0 (100 bytes) and chunk 1's 8-byte frame header.
    flip_byte(&s.version_path(&n, 1), FIRST_DATA_OFFSET + 100 + 8 + 5).unwrap();
    let mut r = s.open_read(&n, 1).unwrap();
    assert_eq!(r.next_chunk().unwrap().unwrap(), c0);
    match r.next_chunk() {
        Err(StoreError::Corrupt {
            chunk: 1,
            what: Corruption::Checksum { .. },
            ..
        }) => {}
        other => panic!("expected checksum error at chunk 1, got {other:?}"),
    }
    // A flipped byte in a length field is caught too, never a huge allocation.
    write(&s, &n, 2, &[&c0]);
    flip_byte(&s.version_path(&n, 2), FIRST_DATA_OFFSET - 5).unwrap();
    assert!(matches!(
        s.read_all(&n, 2),
        Err(StoreError::Corrupt { chunk: 0, .. })
    ));
}

#[test]
fn truncated_file_is_corrupt_not_short() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    let n = name("t");
    write(&s, &n, 1, &[b"abcdef", b"ghijkl"]);
    let p = s.version_path(&n, 1);
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 24).unwrap(); // drop the trailer: all chunks intact
    assert!(matches!(
        s.read_all(&n, 1),
        Err(StoreError::Corrupt {
            what: Corruption::Truncated,
            chunk: 2,
            ..
        })
    ));
}

#[test]
fn keeps_only_the_newest_k_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 3);
    let n = name("p");
    for v in 1..=6 {
        write(&s, &n, v, &[format!("v{v}").as_bytes()]);
    }
    assert_eq!(s.versions(&n).unwrap(), vec![6, 5, 4]);
    // A late copy of an old version is pruned on arrival.
    write(&s, &n, 2, &[b"late"]);
    assert_eq!(s.versions(&n).unwrap(), vec![6, 5, 4]);
}

#[test]
fn delete_leaves_a_tombstone_that_blocks_resurrection() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    let n = name("d");
    write(&s, &n, 1, &[b"1"]);
    write(&s, &n, 2, &[b"2"]);
    let late = s.begin_write(&n, 2).unwrap(); // a replica's write racing the delete
    s.delete(&n, 2).unwrap();
    assert!(s.versions(&n).unwrap().is_empty());
    assert!(s.names().unwrap().is_empty());
    assert!(matches!(
        late.commit(),
        Err(StoreError::Tombstoned { tombstone: 2, .. })
    ));
    assert!(matches!(
        s.begin_write(&n, 1),
        Err(StoreError::Tombstoned { .. })
    ));
    assert!(s.versions(&n).unwrap().is_empty());
    // The name can live again above the tombstone, and the tombstone survives a restart.
    write(&s, &n, 3, &[b"3"]);
    let s = open(dir.path(), 5);
    assert_eq!(s.versions(&n).unwrap(), vec![3]);
    assert_eq!(s.tombstone(&n).unwrap(), 2);
    assert!(s.begin_write(&n, 2).is_err());
}

#[test]
fn names_are_keys_and_nothing_leaves_the_data_dir() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("data");
    let s = open(&root, 5);
    for bad in ["../escape", "/abs", "a/../../b", "", "nul\0", "ctl\x07"] {
        assert!(SdfsName::parse(bad).is_err(), "{bad:?}");
    }
    let names = ["x/y/z.jpg", "x/y2", "..x", "weird name ~!@#$%^&*()", "x"];
    for n in names {
        write(&s, &name(n), 1, &[n.as_bytes()]);
    }
    // Everything created lies under the data dir; nothing else appeared beside it.
    let beside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().collect();
    assert_eq!(beside.len(), 1);
    let listed: Vec<String> = s.names().unwrap().iter().map(|n| n.to_string()).collect();
    let mut expect: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expect.sort();
    assert_eq!(listed, expect);
    let pre: Vec<String> = s
        .names_with_prefix("x/")
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(pre, vec!["x/y/z.jpg", "x/y2"]);
}

#[test]
fn rejects_oversized_chunks_and_version_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    let n = name("big");
    let mut w = s.begin_write(&n, 1).unwrap();
    assert!(matches!(
        w.append(&vec![0u8; MAX_CHUNK + 1]),
        Err(StoreError::ChunkTooLarge { .. })
    ));
    w.append(&vec![0u8; MAX_CHUNK]).unwrap();
    w.commit().unwrap();
    assert_eq!(s.read_all(&n, 1).unwrap().len(), MAX_CHUNK);
    assert!(matches!(s.begin_write(&n, 0), Err(StoreError::ZeroVersion)));
}

/// A 1 MiB tmpfs under a temp dir, unmounted (lazily) on drop; `None` when not root.
struct Tmpfs {
    path: std::path::PathBuf,
    /// Removed after the unmount in `drop`.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(Tmpfs {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn a_full_disk_is_disk_full_leaves_nothing_behind_and_delete_frees_it() {
    let Some(fs) = Tmpfs::mount() else { return };
    let s = open(&fs.path, 5);
    let chunk = vec![7u8; 200 * 1024];
    // Fill it with whole versions until one is refused.
    let mut stored = Vec::new();
    let err = (0..20)
        .find_map(|i| {
            let n = name(&format!("fill/{i}"));
            let r = s.begin_write(&n, 1).and_then(|mut w| {
                w.append(&chunk)?;
                w.commit()
            });
            match r {
                Ok(()) => {
                    stored.push(n);
                    None
                }
                Err(e) => Some(e),
            }
        })
        .expect("a 1 MiB disk cannot take 4 MiB");
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().starts_with("disk full"), "{err}");
    assert!(
        s.temp_files().unwrap().is_empty(),
        "a refused write leaves no temp file"
    );
    assert!(!stored.is_empty());
    // What it holds stays readable.
    for n in &stored {
        assert_eq!(s.read_all(n, 1).unwrap(), chunk);
    }
    // Not a page left: a delete needs room for its tombstone, and makes it.
    let mut filler = std::fs::File::create(fs.path.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[1u8; 4096]).is_ok() {}
    drop(filler);
    assert!(
        std::fs::write(fs.path.join("probe"), b"x").is_err(),
        "disk is full"
    );
    s.delete(&stored[0], 1).unwrap();
    assert!(s.versions(&stored[0]).unwrap().is_empty());
    assert_eq!(s.tombstone(&stored[0]).unwrap(), 1);
    assert!(matches!(
        s.begin_write(&stored[0], 1),
        Err(StoreError::Tombstoned { .. })
    ));
    // And the freed space takes a new version again.
    write(&s, &name("after/free"), 1, &[b"fits again"]);
    assert_eq!(s.read_all(&name("after/free"), 1).unwrap(), b"fits again");
}

#[test]
fn listing_pages_follow_the_cursor_and_see_names_written_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 5);
    for n in ["a/1", "a/2", "a/3", "b/1", "a0"] {
        write(&s, &name(n), 1, &[b"x"]);
    }
    let names = |p: &dml_actors::sdfs::Page| -> Vec<String> {
        p.items.iter().map(|h| h.name.to_string()).collect()
    };
    let p = s.page("a/", None, 2, true).unwrap();
    assert_eq!(
        (names(&p), p.more),
        (vec!["a/1".into(), "a/2".into()], true)
    );
    // Written after the index was built, by a clone (another thread's handle).
    write(&s.clone(), &name("a/25"), 1, &[b"x"]);
    let p = s.page("a/", Some("a/2"), 2, true).unwrap();
    assert_eq!(
        (names(&p), p.more),
        (vec!["a/25".into(), "a/3".into()], false)
    );
    // A cursor before the prefix starts at the prefix; one past it lists nothing.
    assert_eq!(names(&s.page("a/", Some("0"), 10, true).unwrap()).len(), 4);
    assert!(s
        .page("a/", Some("a/9"), 10, true)
        .unwrap()
        .items
        .is_empty());
    // Deleted names: left out of the live listing, listed with their tombstone else.
    s.delete(&name("a/3"), 1).unwrap();
    assert_eq!(
        names(&s.page("a/", None, 10, true).unwrap()),
        vec!["a/1", "a/2", "a/25"]
    );
    let all = s.page("", None, 10, false).unwrap();
    let gone = all.items.iter().find(|h| h.name.as_str() == "a/3").unwrap();
    assert_eq!((gone.versions.len(), gone.tombstone), (0, 1));
    assert_eq!(all.items.len(), 6);
    // A reopened store (a restarted node) lists the same.
    let again = open(dir.path(), 5);
    assert_eq!(again.page("", None, 10, false).unwrap(), all);
}
