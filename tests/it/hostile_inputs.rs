//! Property tests of every reader of untrusted bytes: the CSV readers
//! (`labels.csv`, `train.csv`, `sample_submission.csv`), the spec parser,
//! the Parquet readers (predictions, folds, history) and the image decoder.
//! Each is fed generated hostile inputs (wrong columns, non-UTF-8, path
//! tricks in names and ids, NaN and huge numbers, truncated and corrupted
//! files, wrong schemas, decompression bombs) and must answer with a typed
//! [`imet::Error`] naming the input, or a value that keeps the reader's
//! promises: never a panic, never wrong data, never an allocation out of
//! proportion to the input.
//!
//! Cases per property are small by default so the whole file runs in
//! seconds; `IMET_FUZZ_CASES=N` runs N cases for every property, and
//! `IMET_FUZZ_SEED=S` changes the (otherwise fixed) seed. Each test prints
//! how many inputs it tried and how the reader answered
//! (`cargo test --release --test it -- hostile_inputs --nocapture`).

use bytes::Bytes;
use imet::data::{Annotations, TestIds, Vocabulary};
use imet::ids::{Fold, ImageId};
use imet::image::decode::{self, DEFAULT_MAX_PIXELS};
use imet::error::BadImageKind;
use imet::storage::parquet::{self as pq, EpochRecord, FoldsMeta, PredictionKind, PredictionMeta, Predictions};
use imet::storage::{keys, Store};
use imet::{Error, JobSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------
// Harness: case counts, a fixed seed, outcome tallies, allocation tracking

/// Cases for one property: `IMET_FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("IMET_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    let seed = std::env::var("IMET_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x1e7);
    TestRunner::new(ProptestConfig {
        cases: cases(default_cases),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })
}

/// How a reader answered, by kind, for the report each test prints.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, usize>>);

impl Tally {
    fn add(&self, outcome: impl Into<String>) {
        *self.0.lock().unwrap().entry(outcome.into()).or_default() += 1;
    }

    fn print(&self, reader: &str) {
        let m = self.0.lock().unwrap();
        let total: usize = m.values().sum();
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("hostile_inputs: {reader}: {total} inputs: {}", parts.join(", "));
    }
}

/// Runs `test` on `strategy`'s values; panics naming `reader` and the
/// smallest failing input.
fn check<S: Strategy>(reader: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(default_cases).run(&strategy, test) {
        panic!("{reader}: {e}");
    }
}

/// Counts the largest single allocation, per thread and process-wide, so
/// tests can show a reader sized nothing from an untrusted header. The
/// allocator serves the whole `it` binary: it only wraps `System`, and
/// records sizes only while a measurement is under way.
struct Tracking;

/// Measurements under way; sizes are recorded only while it is above 0.
static MEASURING: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if MEASURING.load(Ordering::Relaxed) == 0 {
        return;
    }
    if size > LARGEST.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
    let _ = THREAD_LARGEST.try_with(|m| {
        if size > m.get() {
            m.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Holds [`MEASURING`] up while alive.
struct Measuring;

impl Measuring {
    fn start() -> Measuring {
        MEASURING.fetch_add(1, Ordering::SeqCst);
        Measuring
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        MEASURING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `f`'s result and the largest single allocation this thread made in it.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _on = Measuring::start();
    THREAD_LARGEST.with(|m| m.set(0));
    let out = f();
    (out, THREAD_LARGEST.with(|m| m.get()))
}

/// Tests that measure process-wide allocations (readers that use worker
/// threads) run one at a time, and only while no other test of this module
/// allocates large buffers.
static BIG_ALLOCATIONS: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    BIG_ALLOCATIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `f`'s result and the largest single allocation in the process while it
/// ran. Tests of other modules of this binary may run alongside, so a
/// measurement of `limit` or more is taken again (`f` must be repeatable):
/// only a reader that allocates that much every time reports it. Both
/// results are checked; the size returned is the smaller.
fn largest_allocation_anywhere<T>(limit: usize, mut f: impl FnMut() -> T) -> (T, usize) {
    let mut once = || {
        let _on = Measuring::start();
        LARGEST.store(0, Ordering::Relaxed);
        let out = f();
        (out, LARGEST.load(Ordering::Relaxed))
    };
    let (out, largest) = once();
    if largest < limit {
        return (out, largest);
    }
    let (again, largest_again) = once();
    (again, largest.min(largest_again))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

// ---------------------------------------------------------------------------
// Hostile text pieces

/// Ids and names that try to leave their folder or look like something else.
const PATH_TRICKS: &[&str] = &[
    "", " ", ".", "..", "../x", "../../etc/passwd", "a/b", "/abs", "a\\b", "..\\x", "%2e%2e", "%2e%2e%2fx", "..%2f..%2fetc",
    "%00", "a\0b", "\u{feff}", "\u{feff}1000483014d91860", "1000483014D91860", "1000483014d9186", "1000483014d918601",
    "1000483014d9 ", " 1000483014d9", "1000483014d9\t", "1000483014d9\r", "１０００４８３０１４ｄ９", "1000483014d9/..",
    "runs", "_SUCCESS.json", "fold=0", "a..b", "-", "CON", "x.png", "\u{202e}gnp.x", "ab\u{301}", "\u{10ffff}",
];

const HOSTILE_NUMBERS: &[&str] = &[
    "nan", "+nan", "-nan", "inf", "+inf", "-inf", "-0.0", "0", "-1", "1e308", "-1e308", "1e-320", "1.7976931348623157e309",
    "18446744073709551615", "18446744073709551616", "9223372036854775807", "-9223372036854775808", "4294967295", "4294967296", "65536",
    "65535", "256", "255", "1.5", "0x7fffffff", "0o777", "0b1", "1_000_000_000_000", "99999999999999999999999999999",
];

fn valid_id() -> impl Strategy<Value = String> {
    (12usize..=16, any::<u64>(), any::<u64>()).prop_map(|(n, a, b)| format!("{a:016x}{b:016x}")[..n].to_string())
}

/// Mostly valid ids, so that whole files of them get through and their
/// accepted values can be checked too.
fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => valid_id(),
        3 => prop::sample::select(PATH_TRICKS).prop_map(str::to_string),
        1 => proptest::collection::vec(prop::sample::select(b"0123456789abcdefABCDEF./%\\ \t-_\0".to_vec()), 0..24)
            .prop_map(|v| String::from_utf8_lossy(&v).into_owned()),
        1 => proptest::collection::vec(any::<char>(), 0..20).prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

/// Attribute-id fields: valid ids below `classes`, and everything else.
fn attribute_field(classes: usize) -> impl Strategy<Value = String> {
    let token = prop_oneof![
        60 => (0..classes).prop_map(|i| i.to_string()),
        1 => prop::sample::select(HOSTILE_NUMBERS).prop_map(str::to_string),
        1 => (classes..classes + 3).prop_map(|i| i.to_string()),
        1 => prop::sample::select(vec!["", "x", "\u{a0}1", "1;2", "\"1\"", "٣"]).prop_map(str::to_string),
    ];
    let sep = prop_oneof![20 => Just(" "), 2 => Just("  "), 2 => Just("\t"), 1 => Just(",")];
    (proptest::collection::vec(token, 0..6), sep).prop_map(|(t, sep)| t.join(sep))
}

/// Byte-level damage applied after a structured input is built.
#[derive(Clone, Debug)]
enum Damage {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    DuplicateLine(usize),
}

/// No damage half the time, else one or two edits.
fn some_damage() -> impl Strategy<Value = Vec<Damage>> {
    prop_oneof![Just(Vec::new()), proptest::collection::vec(damage(), 1..3)]
}

fn damage() -> impl Strategy<Value = Damage> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(vec![0xff, 0xfe, 0xc3, 0x80, b'"', b',', b'\n', b'\r', 0, b' '])];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Damage::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<usize>().prop_map(Damage::Delete),
        any::<usize>().prop_map(Damage::Truncate),
        any::<usize>().prop_map(Damage::DuplicateLine),
    ]
}

fn apply_damage(bytes: &mut Vec<u8>, damage: &[Damage]) {
    for d in damage {
        let n = bytes.len();
        match *d {
            Damage::Replace(i, b) if n > 0 => bytes[i % n] = b,
            Damage::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Damage::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Damage::Truncate(i) => bytes.truncate(i % (n + 1)),
            Damage::DuplicateLine(i) => {
                let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
                if !lines.is_empty() {
                    let pick = lines[i % lines.len()].to_vec();
                    bytes.extend_from_slice(&pick);
                }
            }
            _ => {}
        }
    }
}

fn line_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count() + 1
}

/// A typed input error naming `file` and a line inside it.
fn expect_input_error(err: &Error, file: &str, bytes: &[u8]) -> Result<String, TestCaseError> {
    match err {
        Error::Input { file: f, line, message } => {
            prop_assert_eq!(f, file);
            prop_assert!(*line >= 1 && *line <= line_count(bytes) + 1, "line {} of a {}-line input: {}", line, line_count(bytes), message);
            prop_assert!(!message.is_empty());
            // The kind of refusal, for the tally: the message up to its first quote or digit.
            let kind: String = message.chars().take_while(|c| !c.is_ascii_digit() && *c != '`' && *c != '"').collect();
            Ok(format!("refused ({})", kind.trim()))
        }
        other => Err(TestCaseError::fail(format!("not an input error naming {file}: {other:?}"))),
    }
}

/// Every key built from `id` stays inside its folder and is a clean object key.
fn assert_clean_image_key(id: &ImageId) -> Result<(), TestCaseError> {
    for split in [keys::Split::Train, keys::Split::Test] {
        let key = keys::image(split, id);
        prop_assert!(key.starts_with("data/train/") || key.starts_with("data/test/"), "{}", key);
        prop_assert_eq!(key.matches('/').count(), 2, "{}", key);
        prop_assert!(object_store::path::Path::parse(&key).is_ok(), "{}", key);
    }
    prop_assert!((12..=16).contains(&id.as_str().len()));
    prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    Ok(())
}

// ---------------------------------------------------------------------------
// labels.csv

fn labels_csv() -> impl Strategy<Value = (Vec<u8>, Vec<Damage>)> {
    let name = prop_oneof![
        30 => (
            prop::sample::select(vec!["culture::", "tag::"]),
            proptest::collection::vec(prop_oneof![20 => prop::sample::select("abcxyz -_:'()&/".chars().collect::<Vec<char>>()), 1 => any::<char>()], 0..12),
        )
            .prop_map(|(g, rest)| format!("{g}{}", rest.into_iter().collect::<String>())),
        2 => prop::sample::select(vec!["culture::american", "tag::men", "tag::a,b", "\"tag::a,b\"", "\"tag::a\nb\"", "\"tag::q\"\"uote\"", "tag::a\nb", "medium::oil", "", "Culture::x", " tag::pad ", "tag::"]).prop_map(str::to_string),
        1 => prop::sample::select(PATH_TRICKS).prop_map(|s| format!("tag::{s}")),
    ];
    let row = (
        prop_oneof![30 => Just(None), 1 => prop::sample::select(HOSTILE_NUMBERS).prop_map(Some)],
        name,
        prop_oneof![30 => Just(""), 1 => Just(",extra")],
    );
    let header = prop_oneof![
        8 => prop::sample::select(vec!["attribute_id,attribute_name", "\u{feff}attribute_id,attribute_name", " attribute_id , attribute_name "]),
        1 => prop::sample::select(vec!["attribute_id,attribute_name,x", "id,name", "", "attribute_id;attribute_name"]),
    ];
    let eol = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    (header, proptest::collection::vec(row, 0..12), eol, some_damage()).prop_map(|(header, rows, eol, damage)| {
        let mut text = format!("{header}{eol}");
        for (i, (id, name, extra)) in rows.iter().enumerate() {
            let id = id.map(str::to_string).unwrap_or_else(|| i.to_string());
            text.push_str(&format!("{id},{name}{extra}{eol}"));
        }
        (text.into_bytes(), damage)
    })
}

fn check_vocabulary(bytes: &[u8], tally: &Tally) -> Result<(), TestCaseError> {
    match Vocabulary::parse("labels.csv", bytes) {
        Ok(v) => {
            prop_assert!(!v.is_empty());
            prop_assert_eq!(v.names().len(), v.groups().len());
            for n in v.names() {
                prop_assert!(n.starts_with("culture::") || n.starts_with("tag::"), "{:?}", n);
            }
            // What it writes back reads as the same vocabulary (the hash depends on it).
            let again = Vocabulary::parse("again.csv", v.to_csv().as_bytes());
            prop_assert!(again.as_ref().is_ok_and(|a| *a == v), "to_csv does not round-trip {:?}: {:?}", v.names(), again);
            tally.add("accepted");
        }
        Err(e) => tally.add(expect_input_error(&e, "labels.csv", bytes)?),
    }
    Ok(())
}

#[test]
fn labels_csv_gives_a_vocabulary_or_an_error_naming_the_line() {
    let tally = Tally::default();
    check("Vocabulary::parse", 1500, labels_csv(), |(mut bytes, damage)| {
        apply_damage(&mut bytes, &damage);
        check_vocabulary(&bytes, &tally)
    });
    check("Vocabulary::parse (random bytes)", 300, proptest::collection::vec(any::<u8>(), 0..300), |bytes| check_vocabulary(&bytes, &tally));
    tally.print("Vocabulary::parse");
}

// ---------------------------------------------------------------------------
// train.csv and sample_submission.csv

fn vocab(classes: usize) -> Vocabulary {
    Vocabulary::from_names((0..classes).map(|i| if i < classes / 3 { format!("culture::c{i}") } else { format!("tag::t{i}") }).collect()).unwrap()
}

fn annotations_csv(classes: usize) -> impl Strategy<Value = (Vec<u8>, Vec<Damage>)> {
    let row = (hostile_id(), attribute_field(classes), prop_oneof![40 => Just(""), 1 => Just(",x"), 1 => Just(",")], prop::bool::weighted(0.1));
    let header = prop_oneof![
        8 => prop::sample::select(vec!["id,attribute_ids", "\u{feff}id,attribute_ids"]),
        1 => prop::sample::select(vec!["id,attribute_ids,", "id", "attribute_ids,id", ""]),
    ];
    let eol = prop::sample::select(vec!["\n", "\r\n"]);
    (header, proptest::collection::vec(row, 0..10), eol, some_damage()).prop_map(|(header, rows, eol, damage)| {
        let mut text = format!("{header}{eol}");
        for (id, attrs, extra, quoted) in rows {
            if quoted {
                text.push_str(&format!("\"{id}\",\"{attrs}\"{extra}{eol}"));
            } else {
                text.push_str(&format!("{id},{attrs}{extra}{eol}"));
            }
        }
        (text.into_bytes(), damage)
    })
}

#[test]
fn train_csv_gives_clean_ids_and_known_labels_or_an_error_naming_the_line() {
    const CLASSES: usize = 7;
    let v = vocab(CLASSES);
    let tally = Tally::default();
    let check_one = |bytes: &[u8]| -> Result<(), TestCaseError> {
        match Annotations::parse("train.csv", bytes, &v) {
            Ok(a) => {
                prop_assert!(!a.is_empty());
                prop_assert_eq!(a.ids.len(), a.labels.len());
                let unique: std::collections::HashSet<&ImageId> = a.ids.iter().collect();
                prop_assert_eq!(unique.len(), a.ids.len(), "duplicate ids accepted");
                for (id, row) in a.ids.iter().zip(&a.labels) {
                    assert_clean_image_key(id)?;
                    prop_assert!(!row.is_empty());
                    prop_assert!(row.windows(2).all(|w| w[0] < w[1]), "labels not sorted and unique: {:?}", row);
                    prop_assert!(row.iter().all(|a| (a.0 as usize) < CLASSES));
                }
                prop_assert!(Annotations::parse("again.csv", a.to_csv().as_bytes(), &v).is_ok_and(|b| b == a));
                tally.add("accepted");
            }
            Err(e) => tally.add(expect_input_error(&e, "train.csv", bytes)?),
        }
        Ok(())
    };
    check("Annotations::parse", 1500, annotations_csv(CLASSES), |(mut bytes, damage)| {
        apply_damage(&mut bytes, &damage);
        check_one(&bytes)
    });
    check("Annotations::parse (random bytes)", 200, proptest::collection::vec(any::<u8>(), 0..300), |bytes| check_one(&bytes));
    tally.print("Annotations::parse");
}

#[test]
fn sample_submission_gives_clean_unique_ids_or_an_error_naming_the_line() {
    let tally = Tally::default();
    check("TestIds::parse", 1500, annotations_csv(3), |(mut bytes, damage)| {
        apply_damage(&mut bytes, &damage);
        match TestIds::parse("sample_submission.csv", &bytes) {
            Ok(t) => {
                prop_assert!(!t.ids.is_empty());
                let unique: std::collections::HashSet<&ImageId> = t.ids.iter().collect();
                prop_assert_eq!(unique.len(), t.ids.len());
                for id in &t.ids {
                    assert_clean_image_key(id)?;
                }
                prop_assert!(TestIds::parse("again.csv", t.to_csv().as_bytes()).is_ok_and(|u| u == t));
                tally.add("accepted");
            }
            Err(e) => tally.add(expect_input_error(&e, "sample_submission.csv", &bytes)?),
        }
        Ok(())
    });
    tally.print("TestIds::parse");
}

#[test]
fn huge_lines_and_huge_files_are_read_in_bounded_time_and_memory() {
    let _big = serial();
    let v = vocab(5);
    // One 16 MiB line: a single field, an endless attribute list, an endless id.
    let long_attrs = format!("id,attribute_ids\n1000483014d91860,{}\n", "1 ".repeat(8 << 20));
    let long_id = format!("id,attribute_ids\n{},1\n", "a".repeat(16 << 20));
    let no_newline = "x".repeat(16 << 20);
    let t = std::time::Instant::now();
    let a = Annotations::parse("train.csv", long_attrs.as_bytes(), &v).unwrap();
    assert_eq!(a.labels[0].len(), 1, "8 Mi copies of one label collapse to one");
    for text in [&long_id, &no_newline] {
        let e = Annotations::parse("train.csv", text.as_bytes(), &v).unwrap_err();
        assert!(matches!(e, Error::Input { .. }), "{e}");
        assert!(e.to_string().len() < 4096, "the error quotes the whole line: {} bytes", e.to_string().len());
        let e = Vocabulary::parse("labels.csv", text.as_bytes()).unwrap_err();
        assert!(e.to_string().len() < 4096, "the error quotes the whole line: {} bytes", e.to_string().len());
        let e = TestIds::parse("sample_submission.csv", text.as_bytes()).unwrap_err();
        assert!(e.to_string().len() < 4096, "the error quotes the whole line: {} bytes", e.to_string().len());
    }
    // 200,000 rows of the same id: refused at the second.
    let dup = format!("id,attribute_ids\n{}", "1000483014d91860,1\n".repeat(200_000));
    let e = Annotations::parse("train.csv", dup.as_bytes(), &v).unwrap_err();
    assert!(e.to_string().starts_with("train.csv:3:"), "{e}");
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

#[test]
fn path_tricks_in_ids_are_refused_by_name() {
    let v = vocab(3);
    for trick in PATH_TRICKS {
        let text = format!("id,attribute_ids\n{trick},1\n");
        if let Ok(a) = Annotations::parse("train.csv", text.as_bytes(), &v) {
            // Only the BOM or padding around a valid id may be trimmed away.
            assert_clean_image_key(&a.ids[0]).unwrap();
            assert_eq!(a.ids[0].as_str(), trick.trim(), "{trick:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Specs

const SPECS: &[(&str, &str)] = &[
    ("sample.toml", include_str!("../../jobs/sample.toml")),
    ("r1-pnasnet.toml", include_str!("../../jobs/r1-pnasnet.toml")),
    ("r2-first-place.toml", include_str!("../../jobs/r2-first-place.toml")),
    ("r3-second-place.toml", include_str!("../../jobs/r3-second-place.toml")),
    ("r4-large-ensemble.toml", include_str!("../../jobs/r4-large-ensemble.toml")),
];

#[derive(Clone, Debug)]
enum SpecEdit {
    /// Replace the n-th number literal.
    Number(usize, &'static str),
    /// Replace the n-th string literal's contents.
    Text(usize, String),
    /// Append `key = value` with deep nesting.
    Nest(usize, bool),
    /// Bytes-level damage.
    Bytes(Damage),
}

fn spec_edit() -> impl Strategy<Value = SpecEdit> {
    prop_oneof![
        4 => (any::<usize>(), prop::sample::select(HOSTILE_NUMBERS)).prop_map(|(i, n)| SpecEdit::Number(i, n)),
        4 => (any::<usize>(), prop_oneof![
            3 => prop::sample::select(PATH_TRICKS).prop_map(str::to_string),
            1 => (1usize..200).prop_map(|n| "m".repeat(n)),
            1 => proptest::collection::vec(any::<char>(), 0..10).prop_map(|v| v.into_iter().collect::<String>()),
        ]).prop_map(|(i, s)| SpecEdit::Text(i, s)),
        1 => (1usize..3000, any::<bool>()).prop_map(|(d, arrays)| SpecEdit::Nest(d, arrays)),
        2 => damage().prop_map(SpecEdit::Bytes),
    ]
}

/// Byte ranges of TOML number literals (after `=`, `[`, `,` or `{`) and of string literal contents.
type Spans = Vec<(usize, usize)>;

fn literals(text: &str) -> (Spans, Spans) {
    let b = text.as_bytes();
    let (mut numbers, mut strings) = (Vec::new(), Vec::new());
    let mut i = 0;
    let mut prev = b'\n';
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                strings.push((start, i.min(b.len())));
            }
            c if (c.is_ascii_digit() || c == b'-' || c == b'+') && matches!(prev, b'=' | b'[' | b',' | b'{') => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"+-._".contains(&b[i])) {
                    i += 1;
                }
                numbers.push((start, i));
                prev = b'0';
                continue;
            }
            c if !c.is_ascii_whitespace() => prev = c,
            _ => {}
        }
        i += 1;
    }
    (numbers, strings)
}

fn toml_string(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn edit_spec(base: &str, edits: &[SpecEdit]) -> String {
    let mut text = base.to_string();
    for e in edits {
        let (numbers, strings) = literals(&text);
        match e {
            SpecEdit::Number(i, n) if !numbers.is_empty() => {
                let (a, b) = numbers[i % numbers.len()];
                text.replace_range(a..b, n);
            }
            SpecEdit::Text(i, s) if !strings.is_empty() => {
                let (a, b) = strings[i % strings.len()];
                text.replace_range(a..b, &toml_string(s));
            }
            SpecEdit::Nest(depth, arrays) => {
                let (open, close) = if *arrays { ("[", "]") } else { ("{ a = ", " }") };
                text = format!("deep = {}1{}\n{text}", open.repeat(*depth), close.repeat(*depth));
            }
            SpecEdit::Bytes(d) => {
                let mut bytes = text.into_bytes();
                apply_damage(&mut bytes, std::slice::from_ref(d));
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => {}
        }
    }
    text
}

/// Every object key a job derives from the spec's names stays under
/// `runs/{experiment}/` and is a clean object-store path.
fn assert_keys_inside_the_run(spec: &JobSpec) -> Result<(), TestCaseError> {
    let run = format!("runs/{}/", spec.experiment);
    let mut names: Vec<&str> = spec.models.iter().map(|m| m.name.as_str()).collect();
    if let Some(e) = &spec.ensemble {
        names.extend(e.members.iter().map(String::as_str));
    }
    let mut all = vec![keys::folds(&spec.experiment), keys::spec(&spec.experiment), keys::submission(&spec.experiment), keys::ensemble_file(&spec.experiment, "x.json")];
    for m in names {
        for f in [Fold(0), Fold(spec.folds.k.saturating_sub(1))] {
            all.extend([keys::oof(&spec.experiment, m, f), keys::checkpoint(&spec.experiment, m, f, 3), keys::success(&spec.experiment, m, f)]);
        }
    }
    for key in all {
        prop_assert!(key.starts_with(&run), "{} is outside {}", key, run);
        let parsed = object_store::path::Path::parse(&key);
        prop_assert!(parsed.is_ok(), "{:?} is not a clean object key: {:?}", key, parsed);
        prop_assert!(!key.split('/').any(|s| s == ".." || s == "." || s.is_empty()), "{}", key);
        prop_assert!(!key.contains('\\') && !key.contains('%') && !key.chars().any(char::is_control), "{:?}", key);
    }
    Ok(())
}

fn check_spec(origin: &str, text: &str, tally: &Tally) -> Result<(), TestCaseError> {
    match JobSpec::parse(origin, text) {
        Ok(spec) => {
            assert_keys_inside_the_run(&spec)?;
            // Serialising and hashing an accepted spec must work (they `expect`).
            let again = JobSpec::parse("again.toml", &spec.to_toml());
            prop_assert!(again.as_ref().is_ok_and(|a| *a == spec), "resolved spec does not round-trip: {:?}", again.err());
            let _ = (spec.hash(), spec.folds_hash());
            for m in &spec.models {
                let _ = spec.model_hash(m);
            }
            tally.add("accepted");
        }
        Err(Error::Spec { path, message }) => {
            prop_assert_eq!(path, origin);
            prop_assert!(!message.is_empty());
            let kind = if message.contains("not supported yet") {
                "refused (not supported yet)"
            } else if message.contains("unknown field") {
                "refused (unknown field)"
            } else if message.starts_with('`') {
                "refused (range check)"
            } else {
                "refused (TOML or type)"
            };
            tally.add(kind);
        }
        Err(other) => return Err(TestCaseError::fail(format!("not Error::Spec naming {origin}: {other:?}"))),
    }
    Ok(())
}

#[test]
fn specs_give_keys_inside_the_run_or_an_error_naming_the_file() {
    let tally = Tally::default();
    let strategy = (0..SPECS.len(), proptest::collection::vec(spec_edit(), 1..4));
    check("JobSpec::parse", 1000, strategy, |(which, edits)| {
        let (name, base) = SPECS[which];
        check_spec(name, &edit_spec(base, &edits), &tally)
    });
    check("JobSpec::parse (random text)", 200, proptest::collection::vec(any::<char>(), 0..400), |chars| {
        check_spec("random.toml", &chars.into_iter().collect::<String>(), &tally)
    });
    tally.print("JobSpec::parse");
}

#[test]
fn hostile_numbers_in_every_numeric_field_of_every_recipe_are_refused_or_round_trip() {
    let tally = Tally::default();
    let mut failures = Vec::new();
    for (name, base) in SPECS {
        for (a, b) in literals(base).0 {
            for n in ["nan", "-nan", "inf", "-inf", "1e308", "-1e308", "-1", "0", "4294967295", "9223372036854775807"] {
                let mut text = base.to_string();
                text.replace_range(a..b, n);
                if let Err(e) = check_spec(name, &text, &tally) {
                    let line = base[..a].matches('\n').count() + 1;
                    failures.push(format!("{name}:{line}: `{}` -> {n}: {e}", base.lines().nth(line - 1).unwrap_or("").trim()));
                }
            }
        }
    }
    tally.print("JobSpec::parse (every number of every recipe)");
    assert!(failures.is_empty(), "{} hostile numbers accepted without a round trip:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn sizes_that_would_exhaust_memory_later_are_refused_at_parse_time() {
    let base = SPECS[0].1;
    let model_tta = "tta = { hflip = true }";
    for (edit, field) in [
        (format!("[image]\nprefetch = {}\n", i64::MAX), "image.prefetch"),
        (format!("[image]\nfetch_concurrency = {}\n", i64::MAX), "image.fetch_concurrency"),
        (format!("[image]\nworkers = {}\n", i64::MAX), "image.workers"),
        ("[image]\ntta = { crops = 4294967295 }\n".to_string(), "image.tta"),
        ("[image]\ntta = { crops = 2, scale = [nan, 1.0] }\n".to_string(), "image.tta"),
    ] {
        let text = base.replacen("[folds]", &format!("{edit}[folds]"), 1);
        match JobSpec::parse("x.toml", &text) {
            Err(Error::Spec { message, .. }) => assert!(message.contains(field), "{edit}: {message}"),
            other => panic!("{edit}: {other:?}"),
        }
    }
    for (tta, field) in [("tta = { crops = 100000 }", "models[r18].tta"), ("tta = { crops = 1, scale = [0.5, inf] }", "models[r18].tta")] {
        let e = JobSpec::parse("x.toml", &base.replacen(model_tta, tta, 1)).unwrap_err().to_string();
        assert!(e.contains(field), "{tta}: {e}");
    }
    let e = JobSpec::parse("x.toml", &base.replacen("weight_decay = 0.01", "weight_decay = nan", 1)).unwrap_err().to_string();
    assert!(e.contains("optimizer"), "{e}");
}

#[test]
fn every_name_that_becomes_a_key_refuses_path_tricks() {
    let base = SPECS[0].1;
    let tally = Tally::default();
    for trick in PATH_TRICKS.iter().copied().chain(["A", "a".repeat(65).as_str(), "ok-name_1.2"]) {
        let s = toml_string(trick);
        for (origin, text) in [
            ("experiment.toml", base.replacen("experiment = \"sample\"", &format!("experiment = \"{s}\""), 1)),
            ("model.toml", base.replacen("name = \"r18\"", &format!("name = \"{s}\""), 1).replacen("members = [\"r18\"", &format!("members = [\"{s}\""), 1)),
            ("member.toml", base.replacen("members = [\"r18\", \"r34\"]", &format!("members = [\"{s}\"]"), 1)),
        ] {
            check_spec(origin, &text, &tally).unwrap();
        }
    }
    // Deep nesting is a TOML error, not a stack overflow.
    for depth in [100, 1_000, 100_000] {
        for arrays in [true, false] {
            check_spec("deep.toml", &edit_spec(base, &[SpecEdit::Nest(depth, arrays)]), &tally).unwrap();
        }
    }
    tally.print("JobSpec::parse (names, nesting)");
}

// ---------------------------------------------------------------------------
// Parquet

fn pred_meta(classes: usize) -> PredictionMeta {
    PredictionMeta {
        experiment: "e".into(),
        model: "m".into(),
        fold: Some(Fold(1)),
        kind: PredictionKind::Oof,
        tta: 1,
        spec_hash: "h".into(),
        class_count: classes,
        vocabulary_hash: "v".into(),
    }
}

fn predictions() -> impl Strategy<Value = Predictions> {
    (0usize..40, 1usize..12).prop_flat_map(|(rows, classes)| {
        (
            proptest::collection::btree_set(valid_id(), rows..=rows),
            proptest::collection::vec(0f32..=1.0, rows * classes..=rows * classes),
        )
            .prop_map(move |(ids, probs)| Predictions {
                ids: ids.into_iter().map(|i| ImageId::new(&i).unwrap()).collect(),
                probs,
                meta: pred_meta(classes),
            })
    })
}

async fn predictions_bytes(p: &Predictions) -> Bytes {
    let store = Store::memory();
    pq::write_predictions(&store, "p.parquet", p).await.unwrap();
    store.get("p.parquet").await.unwrap()
}

/// A predictions reader answer: the promises of an accepted file, or a
/// format error naming the key.
fn check_predictions_answer(got: imet::Result<Predictions>, original: Option<&Predictions>, tally: &Tally) -> Result<(), TestCaseError> {
    match got {
        Ok(p) => {
            let c = p.meta.class_count;
            prop_assert!(c >= 1, "class_count 0 accepted");
            prop_assert_eq!(p.probs.len(), p.ids.len() * c);
            if let Some(bad) = p.probs.iter().position(|v| !(0.0..=1.0).contains(v)) {
                return Err(TestCaseError::fail(format!("accepted probability {} at value {bad}", p.probs[bad])));
            }
            let unique: std::collections::HashSet<&ImageId> = p.ids.iter().collect();
            prop_assert_eq!(unique.len(), p.ids.len(), "duplicate ids accepted");
            for id in &p.ids {
                assert_clean_image_key(id)?;
            }
            if let Some(o) = original {
                // Damage that leaves a readable file may change values (Parquet
                // pages carry no checksum here); the shape must still hold.
                prop_assert_eq!(p.meta.class_count, o.meta.class_count);
            }
            tally.add("accepted");
        }
        Err(Error::Format { key, what, reason }) => {
            prop_assert_eq!(key, "p.parquet");
            prop_assert!(!reason.is_empty());
            tally.add(format!("refused ({what})"));
        }
        Err(other) => return Err(TestCaseError::fail(format!("not a format error naming the key: {other:?}"))),
    }
    Ok(())
}

async fn read_predictions_of(bytes: Vec<u8>) -> imet::Result<Predictions> {
    let store = Store::memory();
    store.put("p.parquet", bytes).await.unwrap();
    pq::read_predictions(&store, "p.parquet").await
}

#[test]
fn predictions_round_trip_and_damaged_files_are_refused_by_key() {
    let _big = serial();
    let rt = runtime();
    let tally = Tally::default();
    let strategy = (predictions(), proptest::collection::vec(damage(), 0..4));
    check("read_predictions", 300, strategy, |(p, damage)| {
        let bytes = rt.block_on(predictions_bytes(&p));
        if damage.is_empty() {
            let back = rt.block_on(read_predictions_of(bytes.to_vec()));
            prop_assert!(back.as_ref().is_ok_and(|b| *b == p), "{:?}", back.err());
            tally.add("round trip");
            return Ok(());
        }
        let mut hurt = bytes.to_vec();
        apply_damage(&mut hurt, &damage);
        let limit = (64 << 20).max(hurt.len() * 64);
        let (got, largest) = largest_allocation_anywhere(limit, || rt.block_on(read_predictions_of(hurt.clone())));
        prop_assert!(largest < limit, "a {}-byte file made a {largest}-byte allocation", hurt.len());
        check_predictions_answer(got, Some(&p), &tally)
    });
    tally.print("read_predictions (damaged files)");
}

#[test]
fn ensemble_member_files_damaged_anywhere_are_refused_by_key() {
    use imet::ensemble::members::{self, Expected, IdIndex};
    let _big = serial();
    let rt = runtime();
    let tally = Tally::default();
    check("members::stream", 300, (predictions(), proptest::collection::vec(damage(), 1..4)), |(mut p, damage)| {
        p.meta.kind = PredictionKind::Test;
        let mut bytes = rt.block_on(predictions_bytes(&p)).to_vec();
        apply_damage(&mut bytes, &damage);
        let c = p.meta.class_count;
        let exp = Expected { kind: PredictionKind::Test, model: "m", fold: Fold(1), classes: c, vocabulary_hash: "v" };
        let index = IdIndex::new(&p.ids, None);
        let mut seen = vec![false; p.ids.len()];
        // Violations are collected, not asserted: the reader catches panics.
        let mut wrong = Vec::new();
        let len = bytes.len();
        let limit = (64 << 20).max(len * 64);
        let bytes = Bytes::from(bytes);
        let (got, largest) = largest_allocation_anywhere(limit, || {
            seen.fill(false);
            wrong.clear();
            members::stream("m.parquet", bytes.clone(), &exp, &index, &mut seen, |row, probs| {
                if row >= p.ids.len() || probs.len() != c || !probs.iter().all(|v| (0.0..=1.0).contains(v)) {
                    wrong.push((row, probs.to_vec()));
                }
            })
        });
        prop_assert!(wrong.is_empty(), "rows delivered that break the promises: {:?}", wrong);
        prop_assert!(largest < limit, "a {len}-byte file made a {largest}-byte allocation");
        match got {
            Ok(_) => tally.add("accepted"),
            Err(Error::Member { key, message }) => {
                prop_assert_eq!(key, "m.parquet");
                tally.add(if message.contains("decoder failed") { "refused (decoder panic caught)" } else { "refused" });
            }
            Err(other) => return Err(TestCaseError::fail(format!("not a member error naming the key: {other:?}"))),
        }
        Ok(())
    });
    tally.print("members::stream (damaged files)");
}

/// Writes `columns` with the Parquet key-value metadata `meta` and no checks.
fn raw_parquet(columns: Vec<(&str, arrow::array::ArrayRef)>, meta: &[(&str, String)]) -> Vec<u8> {
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    let batch = arrow::array::RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(meta.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.clone())).collect()))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

/// How a hand-made predictions file departs from the schema.
#[derive(Clone, Debug)]
enum PredFault {
    /// A value that is no probability at (row, class).
    Value(usize, usize, f32),
    /// Row `a` repeats the id of row `b`.
    DuplicateId(usize, usize),
    /// The metadata's class count differs from the list length.
    ClassCount(&'static str),
    /// A metadata key is missing or garbage.
    Meta(usize, Option<&'static str>),
    /// `id` or `probs` has another type, nulls, or is missing.
    Schema(usize),
}

fn pred_fault() -> impl Strategy<Value = PredFault> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.5, 1.5, -f32::MIN_POSITIVE, 1.0000001, f32::MAX]))
            .prop_map(|(r, c, v)| PredFault::Value(r, c, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| PredFault::DuplicateId(a, b)),
        prop::sample::select(vec!["0", "1", "2", "1103", "-1", "", "nan", "18446744073709551616", "4294967297", " 3"]).prop_map(PredFault::ClassCount),
        (0usize..8, prop::option::of(prop::sample::select(vec!["", "x", "-1", "all", "oof", "255", "256", "1e3"]))).prop_map(|(k, v)| PredFault::Meta(k, v)),
        (0usize..9).prop_map(PredFault::Schema),
    ]
}

fn faulty_predictions(rows: usize, classes: usize, fault: &PredFault) -> Vec<u8> {
    use arrow::array::*;
    use arrow::datatypes::{DataType, Field};
    let ids: Vec<String> = (0..rows).map(|i| format!("{:016x}", 0xabc0_0000u64 + i as u64)).collect();
    let mut ids = ids;
    let mut probs: Vec<f32> = (0..rows * classes).map(|i| (i % 10) as f32 / 10.0).collect();
    let mut meta: Vec<(&str, String)> = vec![
        ("class_count", classes.to_string()),
        ("experiment", "e".into()),
        ("fold", "1".into()),
        ("kind", "oof".into()),
        ("model", "m".into()),
        ("spec_hash", "h".into()),
        ("tta", "1".into()),
        ("vocabulary_hash", "v".into()),
    ];
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = |probs: Vec<f32>| -> ArrayRef {
        Arc::new(FixedSizeListArray::try_new(item.clone(), classes as i32, Arc::new(Float32Array::from(probs)), None).unwrap())
    };
    let mut id_col: ArrayRef = Arc::new(StringArray::from(ids.clone()));
    let mut probs_col: ArrayRef = list(probs.clone());
    match *fault {
        PredFault::Value(r, c, v) => {
            probs[(r % rows) * classes + c % classes] = v;
            probs_col = list(probs);
        }
        PredFault::DuplicateId(a, b) => {
            let (a, b) = (a % rows, b % rows);
            let (a, b) = if a == b { (a, (a + 1) % rows) } else { (a, b) };
            ids[a] = ids[b].clone();
            id_col = Arc::new(StringArray::from(ids.clone()));
        }
        PredFault::ClassCount(c) => meta[0].1 = c.to_string(),
        PredFault::Meta(k, None) => {
            meta.remove(k);
        }
        PredFault::Meta(k, Some(v)) => meta[k].1 = v.to_string(),
        PredFault::Schema(s) => match s {
            0 => id_col = Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            1 => id_col = Arc::new(LargeStringArray::from(ids.clone())),
            2 => id_col = Arc::new(StringArray::from((0..rows).map(|i| (i != 0).then(|| ids[i].clone())).collect::<Vec<_>>())),
            3 => {
                let values = Float64Array::from(probs.iter().map(|&p| p as f64).collect::<Vec<_>>());
                probs_col = Arc::new(FixedSizeListArray::try_new(Arc::new(Field::new("item", DataType::Float64, false)), classes as i32, Arc::new(values), None).unwrap());
            }
            4 => {
                let offsets = arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(classes, rows));
                probs_col = Arc::new(ListArray::new(item.clone(), offsets, Arc::new(Float32Array::from(probs.clone())), None));
            }
            5 => {
                // Null items inside the lists.
                let values = Float32Array::from((0..rows * classes).map(|i| (i != 0).then_some(0.5)).collect::<Vec<_>>());
                let nullable = Arc::new(Field::new("item", DataType::Float32, true));
                probs_col = Arc::new(FixedSizeListArray::try_new(nullable, classes as i32, Arc::new(values), None).unwrap());
            }
            6 => {
                // A null row.
                let nulls = arrow::buffer::NullBuffer::from((0..rows).map(|i| i != 0).collect::<Vec<bool>>());
                probs_col = Arc::new(FixedSizeListArray::try_new(item.clone(), classes as i32, Arc::new(Float32Array::from(probs.clone())), Some(nulls)).unwrap());
            }
            7 => return raw_parquet(vec![("id", id_col)], &meta),
            _ => return raw_parquet(vec![("ids", id_col), ("probs", probs_col)], &meta),
        },
    }
    raw_parquet(vec![("id", id_col), ("probs", probs_col)], &meta)
}

#[test]
fn predictions_off_the_schema_are_refused_naming_key_row_and_value() {
    let rt = runtime();
    let tally = Tally::default();
    check("read_predictions (off-schema)", 300, (1usize..20, 1usize..6, pred_fault()), |(rows, classes, fault)| {
        let bytes = faulty_predictions(rows, classes, &fault);
        let got = rt.block_on(read_predictions_of(bytes));
        let benign = matches!(fault, PredFault::DuplicateId(..) if rows < 2)
            || matches!(fault, PredFault::ClassCount(c) if c.trim() == classes.to_string() && c == classes.to_string())
            || matches!(fault, PredFault::Meta(k, Some(v)) if ["e", "m", "h", "v"].contains(&v) || (k == 6 && v.parse::<u32>().is_ok()) || (k == 2 && (v == "all" || v.parse::<u8>().is_ok())) || (k == 3 && v == "oof") || [1, 4, 5, 7].contains(&k));
        if !benign {
            prop_assert!(got.is_err(), "{:?} accepted", fault);
        }
        check_predictions_answer(got, None, &tally)
    });
    tally.print("read_predictions (off-schema)");
}

#[test]
fn folds_and_history_files_damaged_anywhere_are_refused_by_key() {
    let _big = serial();
    let rt = runtime();
    let tally = Tally::default();
    let strategy = (1usize..50, 2u8..10, proptest::collection::vec(damage(), 1..4));
    check("read_folds / read_history", 150, strategy, |(n, k, damage)| {
        let store = Store::memory();
        let ids: Vec<ImageId> = (0..n).map(|i| ImageId::new(&format!("{:014x}", 0x77_0000 + i)).unwrap()).collect();
        let folds: Vec<Fold> = (0..n).map(|i| Fold((i % k as usize) as u8)).collect();
        let meta = FoldsMeta { k, seed: 1, method: "iterative-stratification".into() };
        let hist: Vec<EpochRecord> = (0..n as u32)
            .map(|e| EpochRecord { epoch: e, phase: "all".into(), train_loss: 0.5, valid_loss: 0.4, valid_f2: 0.3, valid_threshold: 0.2, valid_f2_culture: 0.25, valid_f2_tag: 0.35, lr: 1e-3, train_images_per_sec: 9.0, seconds: 1.0 })
            .collect();
        let (got_folds, got_hist) = rt.block_on(async {
            pq::write_folds(&store, "f.parquet", &ids, &folds, &meta).await.unwrap();
            pq::write_history(&store, "h.parquet", &hist, "e", "m", Fold(0), "s").await.unwrap();
            for key in ["f.parquet", "h.parquet"] {
                let mut b = store.get(key).await.unwrap().to_vec();
                apply_damage(&mut b, &damage);
                store.put(key, b).await.unwrap();
            }
            (pq::read_folds(&store, "f.parquet").await, pq::read_history(&store, "h.parquet").await)
        });
        match got_folds {
            Ok((ids, folds, meta)) => {
                prop_assert_eq!(ids.len(), folds.len());
                prop_assert!(folds.iter().all(|f| f.0 < meta.k));
                let unique: std::collections::HashSet<&ImageId> = ids.iter().collect();
                prop_assert_eq!(unique.len(), ids.len(), "duplicate ids accepted");
                tally.add("folds accepted");
            }
            Err(Error::Format { key, .. }) => {
                prop_assert_eq!(key, "f.parquet");
                tally.add("folds refused");
            }
            Err(other) => return Err(TestCaseError::fail(format!("folds: not a format error naming the key: {other:?}"))),
        }
        match got_hist {
            Ok(records) => {
                prop_assert!(records.len() <= 4 * n + 8);
                tally.add("history accepted");
            }
            Err(Error::Format { key, .. }) => {
                prop_assert_eq!(key, "h.parquet");
                tally.add("history refused");
            }
            Err(other) => return Err(TestCaseError::fail(format!("history: not a format error naming the key: {other:?}"))),
        }
        Ok(())
    });
    tally.print("read_folds / read_history (damaged files)");
}

/// The history file of `folds_and_history_files_damaged_anywhere_are_refused_by_key`.
async fn history_bytes(n: u32) -> Vec<u8> {
    let store = Store::memory();
    let hist: Vec<EpochRecord> = (0..n)
        .map(|e| EpochRecord { epoch: e, phase: "all".into(), train_loss: 0.5, valid_loss: 0.4, valid_f2: 0.3, valid_threshold: 0.2, valid_f2_culture: 0.25, valid_f2_tag: 0.35, lr: 1e-3, train_images_per_sec: 9.0, seconds: 1.0 })
        .collect();
    pq::write_history(&store, "h.parquet", &hist, "e", "m", Fold(0), "s").await.unwrap();
    store.get("h.parquet").await.unwrap().to_vec()
}

#[test]
fn a_byte_changed_at_any_offset_of_a_parquet_file_gives_a_format_error_not_a_panic() {
    // One byte set to 193 at some offsets of this file made the Parquet
    // decoder panic ("Decoder for dict should have been set"); every offset
    // is tried.
    let rt = runtime();
    let original = rt.block_on(history_bytes(20));
    let tally = Tally::default();
    for at in 0..original.len() {
        let mut bytes = original.clone();
        bytes[at] = 193;
        let store = Store::memory();
        let got = rt.block_on(async {
            store.put("h.parquet", bytes).await.unwrap();
            pq::read_history(&store, "h.parquet").await
        });
        match got {
            Ok(_) => tally.add("accepted"),
            Err(Error::Format { key, reason, .. }) => {
                assert_eq!(key, "h.parquet");
                tally.add(if reason.contains("decoder failed") { "refused (decoder panic caught)" } else { "refused" });
            }
            Err(other) => panic!("offset {at}: {other:?}"),
        }
    }
    tally.print("read_history (one byte at every offset)");
}

#[test]
fn folds_with_duplicate_ids_or_null_folds_are_refused() {
    use arrow::array::*;
    let rt = runtime();
    let meta = [("k", "5".to_string()), ("seed", "1".to_string()), ("method", "x".to_string())];
    let id = |s: &str| s.to_string();
    let dup = raw_parquet(
        vec![
            ("id", Arc::new(StringArray::from(vec![id("1000483014d91860"), id("1000483014d91860")])) as ArrayRef),
            ("fold", Arc::new(UInt8Array::from(vec![0u8, 1]))),
        ],
        &meta,
    );
    let null_fold = raw_parquet(
        vec![
            ("id", Arc::new(StringArray::from(vec![id("1000483014d91860"), id("1000fe2e667721fe")])) as ArrayRef),
            ("fold", Arc::new(UInt8Array::from(vec![Some(3u8), None]))),
        ],
        &meta,
    );
    for (what, bytes) in [("duplicate id", dup), ("null fold", null_fold)] {
        let store = Store::memory();
        let got = rt.block_on(async {
            store.put("f.parquet", bytes).await.unwrap();
            pq::read_folds(&store, "f.parquet").await
        });
        match got {
            Err(Error::Format { key, reason, .. }) => assert!(key == "f.parquet" && reason.contains("row"), "{what}: {reason}"),
            other => panic!("{what}: accepted or wrong error: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Images

/// PNG colour types and the bit depths each allows.
const PNG_LAYOUTS: &[(png::ColorType, &[png::BitDepth])] = {
    use png::BitDepth::*;
    use png::ColorType::*;
    &[
        (Grayscale, &[One, Two, Four, Eight, Sixteen]),
        (Rgb, &[Eight, Sixteen]),
        (Indexed, &[One, Two, Four, Eight]),
        (GrayscaleAlpha, &[Eight, Sixteen]),
        (Rgba, &[Eight, Sixteen]),
    ]
};

fn png_bytes(w: u32, h: u32, layout: usize, depth: usize, seed: u64) -> Vec<u8> {
    let (color, depths) = PNG_LAYOUTS[layout % PNG_LAYOUTS.len()];
    let depth = depths[depth % depths.len()];
    let channels = match color {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    let row = (w as usize * channels * depth as usize).div_ceil(8);
    let mut state = seed | 1;
    let data: Vec<u8> = (0..row * h as usize)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if color == png::ColorType::Indexed {
        enc.set_palette((0..(3usize << depth as usize)).map(|i| (i * 37) as u8).collect::<Vec<u8>>());
    }
    enc.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

fn jpeg_bytes(w: u32, h: u32, grey: bool, quality: u8, seed: u64) -> Vec<u8> {
    use ::image::{DynamicImage, ImageBuffer, Luma, Rgb};
    let img = if grey {
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([((x * 7 + y * 13) as u64 ^ seed) as u8])))
    } else {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 9) as u8, (y * 5) as u8, seed as u8])))
    };
    let mut out = Vec::new();
    let enc = ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    img.write_with_encoder(enc).unwrap();
    out
}

/// Offsets where the structure of the file changes: PNG chunk and JPEG
/// segment boundaries and the middle of each, with their neighbours.
fn boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut marks = vec![0, 1, 2, 4, 8];
    if bytes.starts_with(b"\x89PNG") {
        let mut at = 8;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
            marks.extend([at, at + 4, at + 8, at + 8 + len / 2, at + 8 + len, at + 12 + len]);
            at += 12 + len;
        }
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        let mut at = 2;
        while at + 4 <= bytes.len() && bytes[at] == 0xff {
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            marks.extend([at, at + 2, at + 2 + len / 2, at + 2 + len]);
            if bytes[at + 1] == 0xda {
                let scan = at + 2 + len;
                let end = bytes.len();
                marks.extend([scan + 1, (scan + end) / 2, end - 3, end - 2, end - 1]);
                break;
            }
            at += 2 + len;
        }
    }
    let mut out: Vec<usize> = marks.into_iter().flat_map(|m| [m.saturating_sub(1), m, m + 1]).filter(|&m| m < bytes.len()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// An image decoder answer: a `BadImage` naming the key, or pixels.
fn decode_outcome(key: &str, bytes: &[u8], max_pixels: u64) -> Result<(Option<::image::RgbImage>, String), TestCaseError> {
    match decode::decode(key, bytes, max_pixels) {
        Ok(img) => Ok((Some(img), "decoded".into())),
        Err(Error::BadImage { key: k, kind, reason }) => {
            prop_assert_eq!(k, key);
            prop_assert!(!reason.is_empty());
            Ok((None, format!("refused ({kind:?})")))
        }
        Err(other) => Err(TestCaseError::fail(format!("not a BadImage naming {key}: {other:?}"))),
    }
}

/// The largest allocation a decoder may make for `bytes` claiming `w` x `h`:
/// an RGB u8 result plus a 16-bit RGBA intermediate, plus slack.
fn allowed_allocation(w: u32, h: u32) -> usize {
    (w as usize * h as usize).saturating_mul(11).saturating_add(8 << 20)
}

#[test]
fn truncated_or_damaged_images_never_decode_to_wrong_pixels() {
    let tally = Tally::default();
    let image = (1u32..48, 1u32..48, 0usize..5, 0usize..5, any::<u64>(), any::<bool>(), 30u8..100);
    let strategy = (image, any::<usize>(), proptest::collection::vec(damage(), 0..3));
    check("decode (truncation, damage)", 120, strategy, |((w, h, layout, depth, seed, jpeg, q), cut, damage)| {
        let (key, full) = if jpeg { ("x.jpg", jpeg_bytes(w, h, layout % 2 == 0, q, seed)) } else { ("x.png", png_bytes(w, h, layout, depth, seed)) };
        let reference = decode::decode(key, &full, DEFAULT_MAX_PIXELS).map_err(|e| TestCaseError::fail(format!("the undamaged image fails: {e}")))?;
        prop_assert_eq!(reference.dimensions(), (w, h));
        // Every structural boundary, and one random offset.
        let mut cuts = boundaries(&full);
        cuts.push(cut % full.len());
        for at in cuts {
            let (got, outcome) = decode_outcome(key, &full[..at], DEFAULT_MAX_PIXELS)?;
            if let Some(img) = got {
                prop_assert!(img == reference, "{} cut at {}/{} decodes to different pixels", key, at, full.len());
            }
            tally.add(format!("cut: {outcome}"));
        }
        if !damage.is_empty() {
            let mut hurt = full.clone();
            apply_damage(&mut hurt, &damage);
            let (result, largest) = largest_allocation(|| decode_outcome(key, &hurt, DEFAULT_MAX_PIXELS));
            let (got, outcome) = result?;
            if let Ok((hw, hh)) = decode::dimensions(key, &hurt) {
                prop_assert!(largest <= allowed_allocation(hw, hh), "{largest} bytes allocated for {hw} x {hh}");
            }
            if let Some(img) = got {
                prop_assert_eq!(Some(img.dimensions()), decode::dimensions(key, &hurt).ok());
            }
            tally.add(format!("damaged: {outcome}"));
        }
        Ok(())
    });
    tally.print("decode (truncated at every boundary, damaged)");
}

#[test]
fn random_bytes_behind_an_image_signature_are_refused() {
    let tally = Tally::default();
    let prefix = prop::sample::select(vec![
        &b""[..],
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR",
        b"\xff\xd8",
        b"\xff\xd8\xff\xe0",
        b"\xff\xd8\xff\xc0\0\x11\x08",
        b"GIF89a",
        b"BM",
        b"RIFF\0\0\0\0WEBP",
        b"II*\0",
        b"\0\0\0\x0cjP  ",
    ]);
    check("decode (random bytes)", 400, (prefix, proptest::collection::vec(any::<u8>(), 0..200)), |(prefix, tail)| {
        let bytes = [prefix, &tail[..]].concat();
        let (result, largest) = largest_allocation(|| decode_outcome("k.png", &bytes, DEFAULT_MAX_PIXELS));
        let (got, outcome) = result?;
        if let Ok((w, h)) = decode::dimensions("k.png", &bytes) {
            prop_assert!(largest <= allowed_allocation(w, h), "{largest} bytes allocated for {w} x {h}");
        } else {
            prop_assert!(largest < 8 << 20, "{largest} bytes allocated for an image without a readable header");
        }
        prop_assert!(got.is_none() || !bytes.is_empty());
        tally.add(outcome);
        Ok(())
    });
    tally.print("decode (random bytes behind signatures)");
}

/// A PNG with only its signature and IHDR (and IEND) claiming `w` x `h`.
fn png_header_only(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    drop(enc.write_header().unwrap());
    out
}

/// `jpeg` with its frame header (SOF0) claiming `w` x `h`.
fn jpeg_claiming(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out.windows(2).position(|p| p == [0xff, 0xc0]).expect("a baseline JPEG has SOF0");
    out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    out
}

#[test]
fn decompression_bombs_are_refused_from_the_header_before_allocating() {
    let _big = serial();
    let small_jpeg = jpeg_bytes(16, 16, false, 80, 1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bomb.png", png_header_only(30_000, 30_000, png::ColorType::Rgba, png::BitDepth::Sixteen)),
        ("bomb-grey.png", png_header_only(30_000, 30_000, png::ColorType::Grayscale, png::BitDepth::One)),
        ("wide.png", png_header_only(u32::MAX >> 1, 2, png::ColorType::Rgb, png::BitDepth::Eight)),
        ("bomb.jpg", jpeg_claiming(&small_jpeg, 30_000, 30_000)),
        ("wide.jpg", jpeg_claiming(&small_jpeg, 65_535, 65_535)),
    ];
    for (key, bytes) in &cases {
        let (err, largest) = largest_allocation(|| decode::decode(key, bytes, DEFAULT_MAX_PIXELS).unwrap_err());
        match &err {
            Error::BadImage { kind: BadImageKind::TooLarge, key: k, .. } => assert_eq!(k, key),
            other => panic!("{key}: {other}"),
        }
        assert!(largest < 1 << 20, "{key}: a {largest}-byte allocation before refusing a {}-byte file", bytes.len());
    }
}

#[test]
fn tiny_files_claiming_huge_images_allocate_in_proportion_to_the_file() {
    let _big = serial();
    // Under the pixel limit (8,000 x 8,000 = 64 M pixels), but a few hundred
    // bytes cannot hold that many pixels: the decoder must not size a
    // 200-700 MB buffer from the header alone.
    let small_jpeg = jpeg_bytes(16, 16, false, 80, 1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("huge.png", png_header_only(8_000, 8_000, png::ColorType::Rgba, png::BitDepth::Sixteen)),
        ("huge-grey.png", png_header_only(8_000, 8_000, png::ColorType::Grayscale, png::BitDepth::Eight)),
        ("huge.jpg", jpeg_claiming(&small_jpeg, 8_000, 8_000)),
    ];
    for (key, bytes) in &cases {
        let (result, largest) = largest_allocation(|| decode::decode(key, bytes, DEFAULT_MAX_PIXELS));
        let err = result.expect_err("a few hundred bytes are not a 64-megapixel image");
        assert!(matches!(err, Error::BadImage { .. }), "{key}: {err}");
        assert!(largest < 64 << 20, "{key}: a {largest}-byte allocation for a {}-byte file ({err})", bytes.len());
    }
}

/// A 16 x 8 CMYK JPEG (Adobe APP14, inverted CMYK as Photoshop and Pillow
/// write it), made by Pillow: C = 16 x, M = 30 y, Y = 0, K = 40.
const CMYK_JPEG: &str = "ffd8ffee000e41646f626500640000000000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffc000140800080010044311004d11005911004b1100ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda000e0443004d0059004b00003f00faf7f692ff0097afc6bbbff8788ffd44ff00f1fafd53afba2bf2abf692ff0097afc68ff8788ffd44ff00f1fa28afffd9";

#[test]
fn odd_but_legal_layouts_decode_or_are_refused_as_unsupported() {
    // CMYK JPEG: Pillow's RGB for pixel (5, 3) is (148, 140, 215).
    let cmyk = hex::decode(CMYK_JPEG).unwrap();
    match decode::decode("cmyk.jpg", &cmyk, DEFAULT_MAX_PIXELS) {
        Ok(img) => {
            assert_eq!(img.dimensions(), (16, 8));
            let p = img.get_pixel(5, 3).0;
            let want = [148i32, 140, 215];
            assert!(p.iter().zip(want).all(|(&a, b)| (a as i32 - b).abs() <= 16), "CMYK pixel {p:?}, Pillow says {want:?}");
        }
        Err(Error::BadImage { kind, .. }) => assert_eq!(kind, BadImageKind::Unsupported),
        Err(other) => panic!("{other}"),
    }
    // 12-bit JPEG (SOF1, precision 12): refused, not misread as 8-bit.
    let mut twelve = jpeg_bytes(16, 16, true, 90, 3);
    let sof = twelve.windows(2).position(|p| p == [0xff, 0xc0]).unwrap();
    twelve[sof + 1] = 0xc1;
    twelve[sof + 4] = 12;
    let e = decode::decode("twelve.jpg", &twelve, DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(e, Error::BadImage { .. }), "{e}");
    // Zero-size images.
    for (w, h) in [(0, 10), (10, 0), (0, 0)] {
        let mut bytes = png_header_only(1, 1, png::ColorType::Rgb, png::BitDepth::Eight);
        bytes[16..20].copy_from_slice(&u32::to_be_bytes(w));
        bytes[20..24].copy_from_slice(&u32::to_be_bytes(h));
        assert!(matches!(decode::decode("zero.png", &bytes, DEFAULT_MAX_PIXELS), Err(Error::BadImage { .. })));
    }
    // A PNG named .jpg and a JPEG named .png decode by their contents.
    let png = png_bytes(5, 4, 1, 0, 9);
    assert_eq!(decode::decode("x.jpg", &png, DEFAULT_MAX_PIXELS).unwrap().dimensions(), (5, 4));
    let jpg = jpeg_bytes(5, 4, false, 90, 9);
    assert_eq!(decode::decode("x.png", &jpg, DEFAULT_MAX_PIXELS).unwrap().dimensions(), (5, 4));
}
