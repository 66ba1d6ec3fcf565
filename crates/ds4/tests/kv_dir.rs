//! The cache directory under faults (issue 8 "Faults", "Quota"): truncated, flipped, empty,
//! random and other-model files are removed with one notice each and never loaded; files of
//! another precision or a larger context are skipped and kept; leftovers of killed writers are
//! cleaned; an unusable directory is an error, never a panic; the quota always holds.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use ds4::backend::CpuBackend;
use ds4::gguf::GgufFile;
use ds4::kvstore::{
    model_stamp, DirOptions, KeyKind, KvDir, NoticeKind, SaveReason, StoreOutcome, StoreRequest,
};
use ds4::model::{Model, Precision};
use ds4::session::Snapshot;
use ds4::tiny::{generate, TinySpec};

const CTX: usize = 512;

fn tiny(layers: usize, seed: u64) -> Model {
    let spec = TinySpec {
        layers,
        seed,
        ..TinySpec::default()
    };
    let mut b = Vec::new();
    generate(&spec).unwrap().write_to(&mut b).unwrap();
    Model::from_file(Arc::new(GgufFile::from_bytes(b).unwrap())).unwrap()
}

fn snap(m: &Model, n: usize, salt: u32) -> Snapshot {
    let be = CpuBackend::new(m.file.clone());
    let mut s = m.new_session(&be, CTX).unwrap();
    let toks: Vec<u32> = (0..n as u32).map(|i| (i * 31 + salt) % 500).collect();
    m.forward_last(&be, &mut s, &toks, Precision::Default)
        .unwrap();
    s.snapshot(&be).unwrap()
}

fn opts(budget: u64) -> DirOptions {
    DirOptions {
        budget_bytes: budget,
        min_tokens: 4,
        reject_different_quant: false,
        max_tool_entries: 64,
    }
}

fn open(dir: &Path, m: &Model, prec: Precision, budget: u64) -> (KvDir, Vec<ds4::kvstore::Notice>) {
    KvDir::open(dir, model_stamp(m, prec), &m.config, CTX, opts(budget)).expect("opens")
}

fn store(kv: &mut KvDir, text: &str, s: &Snapshot) -> StoreOutcome {
    kv.store(&StoreRequest {
        text,
        key_kind: KeyKind::Tokens,
        reason: SaveReason::Evict,
        snapshot: s,
        tools: &[],
    })
    .expect("stores")
    .0
}

fn written(o: StoreOutcome) -> String {
    match o {
        StoreOutcome::Written { name, .. } => name,
        o => panic!("not written: {o:?}"),
    }
}

fn kinds(n: &[ds4::kvstore::Notice]) -> Vec<NoticeKind> {
    n.iter().map(|n| n.kind.clone()).collect()
}

#[test]
fn damaged_files_are_removed_with_one_notice_and_never_loaded() {
    let m = tiny(3, 1);
    let s = snap(&m, 40, 0);
    let dir = tempfile::tempdir().unwrap();
    let (mut kv, _) = open(dir.path(), &m, Precision::Default, 1 << 30);
    let good = written(store(&mut kv, "prompt A", &s));
    let bytes = fs::read(dir.path().join(&good)).unwrap();
    let len = bytes.len();
    // (name, contents, found at open (header) or only at load (sections))
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("truncated", bytes[..len - 1].to_vec(), true),
        ("truncated header", bytes[..100].to_vec(), true),
        ("zero length", Vec::new(), true),
        (
            "random bytes",
            (0..len).map(|i| (i * 7 + 3) as u8).collect(),
            true,
        ),
        ("flipped header byte", flip(&bytes, 33), true),
        ("flipped key text byte", flip(&bytes, 150), false),
        ("flipped payload byte", flip(&bytes, len - 5), false),
    ];
    for (what, content, at_open) in cases {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(&good);
        fs::write(&path, &content).unwrap();
        let (mut kv, notices) = open(d.path(), &m, Precision::Default, 1 << 30);
        if at_open {
            assert_eq!(
                kinds(&notices),
                [NoticeKind::Removed],
                "{what}: {notices:?}"
            );
        } else {
            assert!(notices.is_empty(), "{what}: {notices:?}");
            let (hit, notices) = kv.lookup("prompt A and more");
            assert!(hit.is_none(), "{what} was loaded");
            assert_eq!(
                kinds(&notices),
                [NoticeKind::Removed],
                "{what}: {notices:?}"
            );
        }
        assert!(!path.exists(), "{what}: not removed");
        // Gone for good: the next scan says nothing.
        assert!(kv.lookup("prompt A and more").1.is_empty(), "{what}");
    }
}

fn flip(b: &[u8], i: usize) -> Vec<u8> {
    let mut b = b.to_vec();
    b[i] ^= 0x10;
    b
}

#[test]
fn other_models_are_removed_other_settings_skipped_and_kept() {
    let m = tiny(3, 1);
    let other = tiny(4, 1); // different dimensions
    let reseeded = tiny(3, 2); // same dimensions, other weights
    let s = snap(&m, 40, 0);
    for foreign in [&other, &reseeded] {
        let dir = tempfile::tempdir().unwrap();
        let (mut kv, _) = open(dir.path(), &m, Precision::Default, 1 << 30);
        let name = written(store(&mut kv, "prompt A", &s));
        let (mut kv2, notices) = open(dir.path(), foreign, Precision::Default, 1 << 30);
        assert_eq!(kinds(&notices), [NoticeKind::Removed], "{notices:?}");
        assert!(
            notices[0].reason.contains("another model"),
            "{}",
            notices[0]
        );
        assert!(!dir.path().join(&name).exists());
        assert!(kv2.lookup("prompt A").0.is_none());
    }
    // Another precision: not loaded, kept for the server it belongs to, reported once.
    let dir = tempfile::tempdir().unwrap();
    let (mut kv, _) = open(dir.path(), &m, Precision::Default, 1 << 30);
    let name = written(store(&mut kv, "prompt A", &s));
    let (mut precise, notices) = open(dir.path(), &m, Precision::Precise, 1 << 30);
    assert_eq!(kinds(&notices), [NoticeKind::Skipped], "{notices:?}");
    let (hit, notices) = precise.lookup("prompt A");
    assert!(hit.is_none() && notices.is_empty(), "{notices:?}");
    assert!(dir.path().join(&name).exists());
    // Too many tokens for this context: the same.
    let (mut small, notices) = KvDir::open(
        dir.path(),
        model_stamp(&m, Precision::Default),
        &m.config,
        30,
        opts(1 << 30),
    )
    .unwrap();
    assert_eq!(kinds(&notices), [NoticeKind::Skipped], "{notices:?}");
    assert!(small.lookup("prompt A").0.is_none());
    // And the right server still loads it.
    assert!(kv.lookup("prompt A").0.is_some());
}

#[test]
fn leftover_temporary_files_of_dead_writers_are_cleaned() {
    let m = tiny(3, 1);
    let dir = tempfile::tempdir().unwrap();
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let dead = dir.path().join(format!("{hash}.kv.tmp.{}.1", u32::MAX - 1));
    let live = dir.path().join(format!("{hash}.kv.tmp.1.1")); // pid 1 runs, file is fresh
    let ours = dir
        .path()
        .join(format!("{hash}.kv.tmp.{}.9", std::process::id()));
    let unrelated = dir.path().join("notes.txt");
    for p in [&dead, &live, &ours, &unrelated] {
        fs::write(p, b"partial").unwrap();
    }
    let (_kv, notices) = open(dir.path(), &m, Precision::Default, 1 << 30);
    assert_eq!(
        kinds(&notices),
        [NoticeKind::CleanedTmp, NoticeKind::CleanedTmp],
        "{notices:?}"
    );
    assert!(!dead.exists() && !ours.exists());
    assert!(live.exists() && unrelated.exists());
}

#[test]
fn an_unusable_directory_is_an_error_not_a_panic() {
    let m = tiny(3, 1);
    let s = snap(&m, 40, 0);
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let stamp = model_stamp(&m, Precision::Default);
    assert!(KvDir::open(&file, stamp, &m.config, CTX, opts(1 << 30)).is_err());
    assert!(KvDir::open(&file.join("sub"), stamp, &m.config, CTX, opts(1 << 30)).is_err());
    // A directory that disappears under the server: stores fail, lookups find nothing.
    let gone = base.path().join("gone");
    let (mut kv, _) = open(&gone, &m, Precision::Default, 1 << 30);
    fs::remove_dir(&gone).unwrap();
    let r = kv.store(&StoreRequest {
        text: "prompt A",
        key_kind: KeyKind::Tokens,
        reason: SaveReason::Cold,
        snapshot: &s,
        tools: &[],
    });
    assert!(r.is_err());
    let (hit, notices) = kv.lookup("prompt A");
    assert!(hit.is_none());
    assert_eq!(kinds(&notices), [NoticeKind::Unreadable]);
}

#[test]
fn the_directory_never_exceeds_its_budget() {
    let m = tiny(3, 1);
    let snaps: Vec<Snapshot> = (0..3).map(|i| snap(&m, 40 + 20 * i, i as u32)).collect();
    let one = {
        let d = tempfile::tempdir().unwrap();
        let (mut kv, _) = open(d.path(), &m, Precision::Default, 1 << 30);
        store(&mut kv, "x", &snaps[2]);
        kv.total_bytes()
    };
    let budget = one * 3; // room for about three files
    let dir = tempfile::tempdir().unwrap();
    let (mut kv, _) = open(dir.path(), &m, Precision::Default, budget);
    let du = |p: &Path| -> u64 {
        fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    for i in 0..20 {
        let s = &snaps[i % 3];
        let o = store(&mut kv, &format!("conversation {i}"), s);
        assert!(matches!(o, StoreOutcome::Written { .. }), "{o:?}");
        assert!(
            du(dir.path()) <= budget,
            "store {i}: {} > {budget}",
            du(dir.path())
        );
        assert_eq!(du(dir.path()), kv.total_bytes());
    }
    assert!(kv.evictions >= 15, "{}", kv.evictions);
    // The newest files survive (lowest score goes first; ties to the least recently used).
    assert!(kv.lookup("conversation 19").0.is_some());
    // A file larger than the whole budget is not written.
    let (mut tiny_kv, _) = open(
        tempfile::tempdir().unwrap().path(),
        &m,
        Precision::Default,
        one / 2,
    );
    assert!(matches!(
        store(&mut tiny_kv, "big", &snaps[2]),
        StoreOutcome::TooLarge { .. }
    ));
    // Reopening with a smaller budget evicts at once.
    drop(kv);
    let (kv, _) = open(dir.path(), &m, Precision::Default, one + one / 2);
    assert!(du(dir.path()) <= one + one / 2);
    assert_eq!(kv.entries().len(), 1);
}

#[test]
fn two_directories_on_one_path_see_each_others_files() {
    let m = tiny(3, 1);
    let (a_snap, b_snap) = (snap(&m, 40, 0), snap(&m, 50, 1));
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = open(dir.path(), &m, Precision::Default, 1 << 30);
    let (mut b, _) = open(dir.path(), &m, Precision::Default, 1 << 30);
    written(store(&mut a, "from A", &a_snap));
    assert_eq!(b.lookup("from A, continued").0.unwrap().snapshot, a_snap);
    written(store(&mut b, "from B", &b_snap));
    assert!(a.lookup("from B").0.is_some());
    // Hits are counted in the file, for both.
    let name = written(store(&mut b, "from B again", &b_snap));
    a.lookup("from B again").0.unwrap();
    b.lookup("from B again").0.unwrap();
    b.rescan().unwrap();
    assert_eq!(b.entries()[&name].header.hits, 2);
    // Storing the same checkpoint twice writes once.
    assert!(matches!(
        store(&mut a, "from A", &a_snap),
        StoreOutcome::Unchanged { .. }
    ));
}

#[test]
fn prompts_find_the_longest_stored_prefix() {
    let m = tiny(3, 1);
    let s = [snap(&m, 40, 0), snap(&m, 60, 0), snap(&m, 80, 0)];
    let dir = tempfile::tempdir().unwrap();
    let (mut kv, _) = open(dir.path(), &m, Precision::Default, 1 << 30);
    store(&mut kv, "system", &s[0]);
    store(&mut kv, "system user 1", &s[1]);
    store(&mut kv, "system user 2", &s[2]);
    let hit = kv.lookup("system user 1 assistant 1").0.unwrap();
    assert_eq!((hit.text_bytes, hit.snapshot.tokens.len()), (13, 60));
    let hit = kv.lookup("system user 3").0.unwrap();
    assert_eq!((hit.text_bytes, hit.snapshot.tokens.len()), (6, 40));
    assert!(kv.lookup("syst").0.is_none());
    assert!(kv.lookup("other").0.is_none());
}
