//! Every writer's actual Arrow schema and metadata keys equal its contract in
//! `schemas/`, and the files are readable by pyarrow with the promised
//! encodings.

use crate::common;

use imet::ids::{Fold, ImageId};
use imet::storage::manifest::{JobId, Manifest, OutputEntry};
use imet::storage::parquet::{self as pq, EpochRecord, FoldsMeta, PredictionKind, PredictionMeta, Predictions};
use imet::storage::Store;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

fn contract_file(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn contract_part(v: &Value) -> Value {
    serde_json::json!({"fields": v["fields"], "metadata_keys": v["metadata_keys"]})
}

/// The contract of a file as actually written: its embedded Arrow schema
/// and its key-value metadata keys.
async fn written_contract(store: &Store, key: &str) -> Value {
    let bytes = store.get(key).await.unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let keys: Vec<String> = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| kv.key.clone())
        .filter(|k| k != "ARROW:schema")
        .collect();
    let keys: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    pq::contract(b.schema(), &keys)
}

fn ids(n: usize) -> Vec<ImageId> {
    (0..n).map(|i| ImageId::new(&format!("{:016x}", 0xabc000 + i)).unwrap()).collect()
}

fn predictions(n: usize, c: usize) -> Predictions {
    Predictions {
        ids: ids(n),
        probs: (0..n * c).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect(),
        meta: PredictionMeta {
            experiment: "exp".into(),
            model: "resnet34".into(),
            fold: Some(Fold(1)),
            kind: PredictionKind::Test,
            tta: 2,
            spec_hash: "0123456789abcdef".into(),
            class_count: c,
            vocabulary_hash: "v".repeat(64),
        },
    }
}

#[tokio::test]
async fn predictions_writer_matches_its_contract() {
    let store = Store::memory();
    pq::write_predictions(&store, "p.parquet", &predictions(10, 1103)).await.unwrap();
    let want = contract_part(&contract_file("predictions.parquet.json"));
    assert_eq!(pq::contract(&pq::predictions_schema(1103), &pq::PREDICTION_META_KEYS), want);
    assert_eq!(written_contract(&store, "p.parquet").await, want);
}

#[tokio::test]
async fn folds_writer_matches_its_contract() {
    let store = Store::memory();
    let folds: Vec<Fold> = (0..6).map(|i| Fold(i % 3)).collect();
    pq::write_folds(&store, "f.parquet", &ids(6), &folds, &FoldsMeta { k: 3, seed: 1, method: "x".into() }).await.unwrap();
    let want = contract_part(&contract_file("folds.parquet.json"));
    assert_eq!(pq::contract(&pq::folds_schema(), &pq::FOLDS_META_KEYS), want);
    assert_eq!(written_contract(&store, "f.parquet").await, want);
}

#[tokio::test]
async fn history_writer_matches_its_contract() {
    let store = Store::memory();
    let rec = EpochRecord {
        epoch: 1,
        phase: "main".into(),
        train_loss: 0.1,
        valid_loss: 0.2,
        valid_f2: 0.3,
        valid_threshold: 0.2, valid_f2_culture: 0.25, valid_f2_tag: 0.5,
        lr: 0.01,
        train_images_per_sec: 5.0,
        seconds: 2.0,
    };
    pq::write_history(&store, "h.parquet", &[rec], "e", "m", Fold(0), "s").await.unwrap();
    let want = contract_part(&contract_file("history.parquet.json"));
    assert_eq!(pq::contract(&pq::history_schema(), &pq::HISTORY_META_KEYS), want);
    assert_eq!(written_contract(&store, "h.parquet").await, want);
}

#[tokio::test]
async fn scored_ids_writer_matches_its_contract() {
    let store = Store::memory();
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("what".to_string(), "dropped".to_string());
    meta.insert("score".to_string(), "bce".to_string());
    let s = pq::ScoredIds { ids: ids(3), scores: vec![0.9, 0.5, 0.1], meta };
    pq::write_scored_ids(&store, "d.parquet", &s).await.unwrap();
    let want = contract_part(&contract_file("scored_ids.parquet.json"));
    assert_eq!(pq::contract(&pq::scored_ids_schema(), &pq::SCORED_IDS_META_KEYS), want);
    assert_eq!(written_contract(&store, "d.parquet").await, want);
    assert_eq!(pq::read_scored_ids(&store, "d.parquet").await.unwrap(), s);
}

const PYARROW_CHECK: &str = r#"
import sys, json
import numpy as np
import pyarrow.parquet as pq
path, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = pq.ParquetFile(path)
t = f.read()
meta = {k.decode(): v.decode() for k, v in f.metadata.metadata.items() if k != b"ARROW:schema"}
assert {k.decode(): v.decode() for k, v in t.schema.metadata.items()} == meta, "schema metadata differs from file metadata"
probs = np.asarray(t.column("probs").combine_chunks().flatten(), dtype=np.float32).reshape(n, c)
col = f.metadata.row_group(0).column(1)
print(json.dumps({
    "rows": t.num_rows,
    "type": str(t.schema.field("probs").type),
    "first_id": t.column("id")[0].as_py(),
    "sum": float(probs.astype(np.float64).sum()),
    "p_3_5": float(probs[3, 5]),
    "meta": meta,
    "encodings": sorted(col.encodings),
    "compression": col.compression,
    "row_groups": f.metadata.num_row_groups,
}))
"#;

#[tokio::test]
async fn pyarrow_reads_predictions_with_the_promised_encoding_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let (n, c) = (9000, 1103);
    let preds = predictions(n, c);
    pq::write_predictions(&store, "runs/exp/p.parquet", &preds).await.unwrap();
    let path = dir.path().join("runs/exp/p.parquet");
    let out = common::run_python(PYARROW_CHECK, &[path.to_str().unwrap(), &n.to_string(), &c.to_string()]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rows"], n);
    assert_eq!(v["type"], "fixed_size_list<item: float not null>[1103]");
    assert_eq!(v["first_id"], preds.ids[0].as_str());
    let sum: f64 = preds.probs.iter().map(|&p| p as f64).sum();
    assert!((v["sum"].as_f64().unwrap() - sum).abs() < 1e-3 * sum.abs().max(1.0));
    assert_eq!(v["p_3_5"].as_f64().unwrap() as f32, preds.row(3)[5]);
    assert_eq!(v["compression"], "ZSTD");
    assert!(v["encodings"].as_array().unwrap().iter().any(|e| e == "BYTE_STREAM_SPLIT"), "{v}");
    assert_eq!(v["row_groups"], 2);
    let meta = v["meta"].as_object().unwrap();
    let mut keys: Vec<&str> = meta.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, pq::PREDICTION_META_KEYS.to_vec());
    assert_eq!(meta["kind"], "test");
    assert_eq!(meta["fold"], "1");
    assert_eq!(meta["class_count"], "1103");
}

#[tokio::test]
async fn manifests_validate_against_their_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let job = JobId { kind: "predict".into(), experiment: "e".into(), model: Some("m".into()), fold: Some(3) };
    let m = Manifest::new(job, "0123456789abcdef", vec![OutputEntry::of_bytes("a", b"abc")]);
    m.commit(&store, "_SUCCESS.json").await.unwrap();
    common::assert_matches_json_schema("manifest.schema.json", &dir.path().join("_SUCCESS.json"));
}
