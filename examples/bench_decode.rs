//! Image pipeline throughput on the synthetic sample's PNGs, printed as
//! images/s so `ci/bench/decode_python.py` can be compared side by side:
//! decode only (the ceiling), and decode + RandomResizedCrop(320) + hflip +
//! normalise to CHW f32, on 1 thread and on all threads; then the loader end
//! to end (file store, batch 32, `workers` decode threads).
//!
//! ```text
//! imet sample --out /tmp/bench-sample --train 256 --test 1 --seed 7
//! cargo run --release --example bench_decode -- /tmp/bench-sample [WORKERS]
//! ```

use imet::ids::ImageId;
use imet::image::augment::{Prob, RandomResizedCrop, Transform};
use imet::image::{decode, Item, Loader, LoaderOptions, Normalize, Pipeline, Shuffle};
use imet::storage::keys::{self, Split};
use imet::storage::Store;
use rayon::prelude::*;
use std::sync::Arc;
use std::time::Instant;

fn pipeline() -> Pipeline {
    Pipeline(vec![
        Transform::RandomResizedCrop(RandomResizedCrop { size: 320, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }),
        Transform::Hflip(Prob { p: 0.5 }),
    ])
}

fn full(key: &str, bytes: &[u8], pipe: &Pipeline, norm: &Normalize, seed: u64) -> imet::Result<f32> {
    let img = pipe.apply(decode(key, bytes, u64::MAX)?, seed);
    let mut out = vec![0f32; 3 * 320 * 320];
    norm.write_chw(&img, &mut out);
    Ok(out[0])
}

#[tokio::main]
async fn main() -> imet::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = args.next().expect("usage: bench_decode SAMPLE_ROOT [WORKERS]");
    let workers: usize = args.next().map(|s| s.parse().expect("WORKERS is a number")).unwrap_or_else(rayon::current_num_threads);
    let store = Store::open(&imet::storage::root_to_url(&root)?)?;
    let inputs = imet::data::load_inputs(&store).await?;
    let ids: Vec<ImageId> = inputs.train.ids.clone();
    let mut files = Vec::new();
    for id in &ids {
        let key = keys::image(Split::Train, id);
        files.push((key.clone(), store.get(&key).await?));
    }
    let mb = files.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / 1e6;
    println!("{} images, {:.1} MB of PNG", files.len(), mb);
    let (pipe, norm) = (pipeline(), Normalize::default());
    let rounds = 3;

    let best = |name: &str, f: &dyn Fn() -> imet::Result<()>| -> imet::Result<()> {
        let mut rate: f64 = 0.0;
        for _ in 0..rounds {
            let t = Instant::now();
            f()?;
            rate = rate.max(files.len() as f64 / t.elapsed().as_secs_f64());
        }
        println!("{name:<44} {rate:>8.1} images/s");
        Ok(())
    };
    best("rust decode only, 1 thread", &|| files.iter().try_for_each(|(k, b)| decode(k, b, u64::MAX).map(|_| ())))?;
    best("rust decode+rrc320+flip+normalise, 1 thread", &|| files.iter().enumerate().try_for_each(|(i, (k, b))| full(k, b, &pipe, &norm, i as u64).map(|_| ())))?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build().expect("thread pool starts");
    let label_d = format!("rust decode only, {workers} threads");
    best(&label_d, &|| pool.install(|| files.par_iter().try_for_each(|(k, b)| decode(k, b, u64::MAX).map(|_| ()))))?;
    let label_f = format!("rust decode+rrc320+flip+normalise, {workers} threads");
    best(&label_f, &|| pool.install(|| files.par_iter().enumerate().try_for_each(|(i, (k, b))| full(k, b, &pipe, &norm, i as u64).map(|_| ()))))?;

    // Loader end to end: reads from the store, batches of 32.
    let items: Vec<Item> = ids.iter().zip(&inputs.train.labels).map(|(id, l)| Item::new(keys::image(Split::Train, id), id.clone(), l.clone())).collect();
    let opts = LoaderOptions { batch_size: 32, workers, ..Default::default() };
    let loader = Arc::new(Loader::new(store.clone(), items, pipe.clone(), opts, Arc::new(Shuffle { seed: 1 }))?);
    for epoch in 0..2 {
        let l = loader.clone();
        let (n, secs) = tokio::task::spawn_blocking(move || -> imet::Result<(usize, f64)> {
            let t = Instant::now();
            let mut n = 0;
            for b in l.epoch(epoch) {
                n += b?.ids.len();
            }
            Ok((n, t.elapsed().as_secs_f64()))
        })
        .await??;
        println!("{:<44} {:>8.1} images/s (epoch {epoch}, {n} images)", format!("rust loader, batch 32, {workers} workers"), n as f64 / secs);
    }
    Ok(())
}
