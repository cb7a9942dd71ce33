//! Shard sets against real parts: built from and read back through an
//! S3-compatible server (s3s-fs on 127.0.0.1), opened by Python's
//! `tarfile` (what WebDataset uses) and GNU `tar`, and refused when the
//! server's copy is truncated or the CSVs changed.

use crate::common;

use common::s3::S3Server;
use imet::ids::ImageId;
use imet::shards::{build, BuildOptions, EpochOptions, ShardError, ShardSet};
use imet::data::sample::SampleSection;
use imet::storage::keys::{self, Split};
use imet::storage::{RetryPolicy, Store};
use std::collections::{HashMap, HashSet};

fn quick_retry() -> RetryPolicy {
    RetryPolicy { retries: 2, initial_backoff_ms: 10, max_backoff_ms: 50 }
}

async fn sample_on(store: &Store, train: usize) -> (Vec<ImageId>, HashMap<ImageId, bytes::Bytes>) {
    imet::data::sample::generate(store, &SampleSection { train, test: 4, classes: 30, seed: 3, noise: 0.0 }).await.unwrap();
    let inputs = imet::data::load_inputs(store).await.unwrap();
    let mut blobs = HashMap::new();
    for id in &inputs.train.ids {
        blobs.insert(id.clone(), store.get(&keys::image(Split::Train, id)).await.unwrap());
    }
    (inputs.train.ids, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_set_on_s3_reads_back_every_image_once_and_opens_with_tar_tools() {
    let server = S3Server::start("imet");
    let store = server.store("imet", "exp", quick_retry());
    let (ids, blobs) = sample_on(&store, 48).await;
    let total: u64 = blobs.values().map(|b| b.len() as u64).sum();
    // About five shards, so several are in flight.
    let opts = BuildOptions { shard_bytes: total / 5 + 4096, fetch_concurrency: 8, ..Default::default() };
    let index = build(&store, Split::Train, &ids, &opts).await.unwrap();
    assert!(index.shards.len() >= 4, "{} shards", index.shards.len());
    let set = ShardSet::open(&store, &index.key()).await.unwrap();
    set.verify_shards().await.unwrap();

    // Two epochs: every image once, identical bytes, different orders.
    let mut orders = Vec::new();
    for epoch in 0..2 {
        let o = EpochOptions { seed: 11, epoch, shuffle_buffer: 16, shards_in_flight: 3, chunk_bytes: 1 << 20, ..Default::default() };
        let mut r = set.epoch(None, &o, 0).unwrap();
        let mut order = Vec::new();
        while let Some(s) = r.next().await {
            let s = s.unwrap();
            assert_eq!(s.bytes, blobs[&s.id], "bytes of {}", s.id);
            order.push(s.id);
        }
        assert_eq!(order.iter().collect::<HashSet<_>>().len(), ids.len());
        assert_eq!(order.len(), ids.len());
        orders.push(order);
    }
    assert_ne!(orders[0], orders[1]);

    // Random access by id over S3 ranged reads.
    let picks: Vec<ImageId> = ids.iter().step_by(5).cloned().collect();
    for (id, b) in picks.iter().zip(set.fetch_many(&picks).await.unwrap()) {
        assert_eq!(b, blobs[id]);
    }

    // The shards are plain tar files: Python's tarfile (WebDataset's reader)
    // and GNU tar list `{id}.png` members whose bytes are the originals.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("shard.tar");
    std::fs::write(&local, store.get(&index.shards[0].key).await.unwrap()).unwrap();
    let listed = common::run_python(
        "import sys, tarfile, hashlib\nfor m in tarfile.open(sys.argv[1]):\n    d = tarfile.open(sys.argv[1]).extractfile(m).read()\n    print(m.name, len(d), hashlib.sha256(d).hexdigest())",
        &[local.to_str().unwrap()],
    );
    let want: Vec<String> = index.shards[0]
        .ids
        .iter()
        .map(|id| {
            let b = &blobs[id];
            format!("{id}.png {} {}", b.len(), hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)))
        })
        .collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), want);
    let gnu = std::process::Command::new("tar").arg("tf").arg(&local).output().unwrap();
    assert!(gnu.status.success(), "{}", String::from_utf8_lossy(&gnu.stderr));
    let names: Vec<String> = index.shards[0].ids.iter().map(|id| format!("{id}.png")).collect();
    assert_eq!(String::from_utf8(gnu.stdout).unwrap().lines().collect::<Vec<_>>(), names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_shard_on_s3_and_changed_csvs_are_refused_naming_them() {
    let server = S3Server::start("imet");
    let store = server.store("imet", "exp", quick_retry());
    let (ids, blobs) = sample_on(&store, 20).await;
    let total: u64 = blobs.values().map(|b| b.len() as u64).sum();
    let index = build(&store, Split::Train, &ids, &BuildOptions { shard_bytes: total / 3 + 4096, ..Default::default() }).await.unwrap();
    let victim = index.shards[1].clone();
    let bytes = store.get(&victim.key).await.unwrap();
    store.put(&victim.key, bytes.slice(..(victim.range(1).end - 10) as usize)).await.unwrap();
    let set = ShardSet::open(&store, &index.key()).await.unwrap();
    let mut r = set.epoch(None, &EpochOptions::sequential(), 0).unwrap();
    let err = loop {
        match r.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("a truncated shard read to the end"),
        }
    };
    match &err {
        imet::Error::Shard(ShardError::Truncated { shard, id, .. }) => {
            assert_eq!(shard, &victim.key);
            assert_eq!(id, &victim.ids[1].to_string());
        }
        other => panic!("not a truncation: {other}"),
    }
    assert!(err.to_string().contains(&victim.key), "{err}");
    let e = set.fetch(&victim.ids[1]).await.unwrap_err();
    assert!(matches!(e, imet::Error::Shard(ShardError::Truncated { .. })), "{e}");

    // Another train.csv in the store: the set is refused, naming the file.
    let csv = String::from_utf8(store.get(keys::TRAIN).await.unwrap().to_vec()).unwrap();
    let last = csv.trim_end().rsplit_once('\n').unwrap().0.to_string() + "\n";
    store.put(keys::TRAIN, last).await.unwrap();
    let e = ShardSet::open(&store, &index.key()).await.err().unwrap();
    assert!(matches!(e, imet::Error::Shard(ShardError::OtherData { .. })), "{e}");
    assert!(e.to_string().contains("data/train.csv"), "{e}");
}
