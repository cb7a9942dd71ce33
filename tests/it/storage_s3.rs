//! Storage against a real S3-compatible server process (s3s-fs on
//! 127.0.0.1): every data product round-trips, listing, conditional
//! manifest commits under concurrency, and transfers across a server
//! restart or outage.

use crate::common;

use bytes::Bytes;
use common::s3::{Backend, S3Server};
use imet::ids::{Fold, ImageId};
use imet::storage::manifest::{CommitOutcome, JobId, Manifest, OutputEntry};
use imet::storage::parquet::{self as pq, EpochRecord, FoldsMeta, PredictionKind, PredictionMeta, Predictions};
use imet::storage::{keys, RetryPolicy};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn quick_retry() -> RetryPolicy {
    RetryPolicy { retries: 10, initial_backoff_ms: 100, max_backoff_ms: 1000 }
}

fn ids(n: usize) -> Vec<ImageId> {
    (0..n).map(|i| ImageId::new(&format!("{:014x}", 0x5eed_0000u64 + i as u64)).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_product_round_trips_through_s3s_fs() {
    let server = S3Server::start("imet");
    round_trip_every_data_product(&server).await;
    // The prefix is honoured: the objects sit under team/a/ in the bucket.
    assert!(server.root.path().join("imet/team/a").join(keys::oof("exp", "seresnext50", Fold(4))).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_product_round_trips_through_moto() {
    let server = S3Server::start_with(Backend::Moto, "imet");
    round_trip_every_data_product(&server).await;
}

async fn round_trip_every_data_product(server: &S3Server) {
    let store = server.store("imet", "team/a", quick_retry());
    let real = common::real_data_dir();
    for (key, file) in [(keys::LABELS, "labels.csv"), (keys::SAMPLE_SUBMISSION, "sample_submission.csv")] {
        let bytes = Bytes::from(std::fs::read(real.join(file)).unwrap());
        store.put(key, bytes.clone()).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), bytes);
    }

    let (n, c) = (3000, 1103);
    let preds = Predictions {
        ids: ids(n),
        probs: (0..n * c).map(|i| ((i * 31) % 1009) as f32 / 1009.0).collect(),
        meta: PredictionMeta {
            experiment: "exp".into(),
            model: "seresnext50".into(),
            fold: Some(Fold(4)),
            kind: PredictionKind::Oof,
            tta: 1,
            spec_hash: "h".into(),
            class_count: c,
            vocabulary_hash: "v".into(),
        },
    };
    let key = keys::oof("exp", "seresnext50", Fold(4));
    let entry = pq::write_predictions(&store, &key, &preds).await.unwrap();
    assert_eq!(pq::read_predictions(&store, &key).await.unwrap(), preds);

    let folds: Vec<Fold> = (0..n).map(|i| Fold((i % 5) as u8)).collect();
    let fm = FoldsMeta { k: 5, seed: 3, method: "iterative-stratification".into() };
    pq::write_folds(&store, &keys::folds("exp"), &preds.ids, &folds, &fm).await.unwrap();
    assert_eq!(pq::read_folds(&store, &keys::folds("exp")).await.unwrap(), (preds.ids.clone(), folds, fm));

    let hist = vec![EpochRecord {
        epoch: 0,
        phase: "head".into(),
        train_loss: 0.7,
        valid_loss: 0.6,
        valid_f2: 0.2,
        valid_threshold: 0.1, valid_f2_culture: 0.25, valid_f2_tag: 0.5,
        lr: 0.005,
        train_images_per_sec: 100.0,
        seconds: 60.0,
    }];
    let hkey = keys::history("exp", "seresnext50", Fold(4));
    pq::write_history(&store, &hkey, &hist, "exp", "seresnext50", Fold(4), "h").await.unwrap();
    assert_eq!(pq::read_history(&store, &hkey).await.unwrap(), hist);

    let job = JobId { kind: "predict".into(), experiment: "exp".into(), model: Some("seresnext50".into()), fold: Some(4) };
    let m = Manifest::new(job, "h", vec![entry]);
    let skey = keys::success("exp", "seresnext50", Fold(4));
    assert_eq!(m.commit(&store, &skey).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(Manifest::committed(&store, &skey, "h").await.unwrap(), Some(m.clone()));
    let mut again = m.clone();
    again.created_at = "a rerun".into();
    assert_eq!(again.commit(&store, &skey).await.unwrap(), CommitOutcome::AlreadyCommitted(m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_returns_keys_relative_to_the_prefix() {
    let server = S3Server::start("imet");
    let store = server.store("imet", "p", quick_retry());
    let other = server.store("imet", "q", quick_retry());
    for k in ["runs/e/models/m/fold=1/oof.parquet", "runs/e/models/m/fold=0/oof.parquet", "runs/e/folds.parquet"] {
        store.put(k, "x").await.unwrap();
    }
    other.put("runs/e/folds.parquet", "other team").await.unwrap();
    let listed: Vec<String> = store.list("runs/e/models").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(listed, vec!["runs/e/models/m/fold=0/oof.parquet", "runs/e/models/m/fold=1/oof.parquet"]);
    assert_eq!(store.list("runs/e").await.unwrap().len(), 3);
    assert!(store.list("runs/none").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_manifest_writers_exactly_one_wins() {
    // moto: s3s-fs checks If-None-Match and then writes, so it can let two
    // simultaneous creators through; S3 and moto decide atomically.
    let server = S3Server::start_with(Backend::Moto, "imet");
    let store = server.store("imet", "", quick_retry());
    let key = keys::success("exp", "m", Fold(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let job = JobId { kind: "train".into(), experiment: "exp".into(), model: Some("m".into()), fold: Some(0) };
            let mut m = Manifest::new(job, "h", vec![OutputEntry::of_bytes(&format!("out-{w}"), b"x")]);
            m.created_at = format!("writer {w}");
            (m.clone(), m.commit(&store, &key).await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (m, outcome) = t.await.unwrap();
        match outcome {
            CommitOutcome::Committed => winners.push(m),
            CommitOutcome::AlreadyCommitted(existing) => assert_ne!(existing, m),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(Manifest::load(&store, &key).await.unwrap(), Some(winners.remove(0)));
}

/// Writes 48 MiB in 1 MiB chunks with short pauses, counting attempts.
async fn slow_upload(store: &imet::storage::Store, key: &str, attempts: Arc<AtomicUsize>) -> imet::Result<u64> {
    store
        .put_streamed(key, |mut w| {
            let attempts = attempts.clone();
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                let chunk = vec![0xA5u8; 1 << 20];
                for _ in 0..48 {
                    if let Err(e) = w.write_all(&chunk).await {
                        let _ = w.abort().await;
                        return Err(imet::Error::Store {
                            op: "put_streamed",
                            key: "test".into(),
                            attempts: 1,
                            source: object_store::Error::Generic { store: "S3", source: Box::new(e) },
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                Ok((w, 48u64 << 20))
            }
        })
        .await
}

type Upload = tokio::task::JoinHandle<imet::Result<u64>>;

/// Starts [`slow_upload`] of `runs/e/big.bin` in the background.
fn start_slow_upload(store: &imet::storage::Store) -> (Arc<AtomicUsize>, Upload) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let store = store.clone();
    let counter = attempts.clone();
    (attempts, tokio::spawn(async move { slow_upload(&store, "runs/e/big.bin", counter).await }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_completes_by_retry_across_a_server_restart() {
    let mut server = S3Server::start("imet");
    let store = server.store("imet", "", RetryPolicy { retries: 10, initial_backoff_ms: 300, max_backoff_ms: 2000 });
    let (attempts, upload) = start_slow_upload(&store);
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.stop();
    assert!(!upload.is_finished(), "upload finished before the server stopped; the test proves nothing");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    let n = upload.await.unwrap().unwrap();
    assert_eq!(n, 48 << 20);
    assert!(attempts.load(Ordering::SeqCst) >= 2, "the upload never restarted");
    let back = store.get("runs/e/big.bin").await.unwrap();
    assert_eq!(back.len(), 48 << 20);
    assert!(back.iter().all(|&b| b == 0xA5));

    // A whole-object write issued while the server is down lands once it is back.
    server.stop();
    let put = {
        let store = store.clone();
        tokio::spawn(async move { store.put("runs/e/small.json", "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.restart();
    put.await.unwrap().unwrap();
    assert_eq!(store.get("runs/e/small.json").await.unwrap(), Bytes::from("{}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_budget_fails_clearly_and_leaves_nothing_visible() {
    let mut server = S3Server::start("imet");
    let store = server.store("imet", "", RetryPolicy { retries: 2, initial_backoff_ms: 100, max_backoff_ms: 200 });
    let (attempts, upload) = start_slow_upload(&store);
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.stop();
    let err = upload.await.unwrap().unwrap_err();
    assert!(attempts.load(Ordering::SeqCst) >= 2, "gave up without retrying");
    let msg = format!("{err:#}");
    assert!(msg.contains("put_streamed") || msg.contains("runs/e/big.bin"), "{msg}");
    server.restart();
    assert!(!store.exists("runs/e/big.bin").await.unwrap(), "a partial object became visible");
    assert!(store.list("runs/e").await.unwrap().is_empty());
}
