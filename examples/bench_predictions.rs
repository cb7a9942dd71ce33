//! Writes and reads a competition-sized predictions file (109,237 x 1,103
//! by default) through a local store and reports time and size; also dumps
//! the matrix as raw little-endian f32 so `ci/bench/predictions_pyarrow.py`
//! can write and read the same numbers with pyarrow.
//!
//! cargo run --release --example bench_predictions -- OUT_DIR [ROWS]

use imet::ids::{Fold, ImageId};
use imet::storage::parquet::{read_predictions, write_predictions_owned, PredictionKind, PredictionMeta, Predictions};
use imet::storage::Store;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[tokio::main]
async fn main() -> imet::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().expect("usage: bench_predictions OUT_DIR [ROWS]"));
    let rows: usize = args.next().map(|s| s.parse().expect("ROWS is a number")).unwrap_or(109_237);
    let c = 1103;
    std::fs::create_dir_all(&out).map_err(|source| imet::Error::Io { path: out.clone(), source })?;

    // Sigmoid outputs of a trained-looking model: mostly small, a few large.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let prior: Vec<f32> = (0..c).map(|_| rng.random_range(-9.0f32..-3.0)).collect();
    let mut probs = vec![0f32; rows * c];
    for r in 0..rows {
        for k in 0..c {
            let mut z = prior[k] + rng.random_range(-1.5f32..1.5);
            if rng.random_bool(0.003) {
                z += rng.random_range(4.0f32..10.0);
            }
            probs[r * c + k] = 1.0 / (1.0 + (-z).exp());
        }
    }
    let ids: Vec<ImageId> = (0..rows).map(|i| ImageId::new(&format!("{:016x}", 0x1000_0000_0000u64 + i as u64 * 7919)).expect("hex id")).collect();
    let raw: Vec<u8> = probs.iter().flat_map(|p| p.to_le_bytes()).collect();
    std::fs::write(out.join("probs.f32"), &raw).map_err(|source| imet::Error::Io { path: out.join("probs.f32"), source })?;
    let id_text: String = ids.iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(out.join("ids.txt"), id_text).map_err(|source| imet::Error::Io { path: out.join("ids.txt"), source })?;

    let store = if std::env::var("BENCH_MEMORY").is_ok() { Store::memory() } else { Store::open(&format!("file://{}", out.display()))? };
    let preds = Predictions {
        ids,
        probs,
        meta: PredictionMeta {
            experiment: "bench".into(),
            model: "m".into(),
            fold: Some(Fold(0)),
            kind: PredictionKind::Oof,
            tta: 1,
            spec_hash: "bench".into(),
            class_count: c,
            vocabulary_hash: "bench".into(),
        },
    };
    let (t, cpu) = (Instant::now(), cpu_times());
    let preds = std::sync::Arc::new(preds);
    let entry = write_predictions_owned(&store, "imet.parquet", preds.clone()).await?;
    let write_s = t.elapsed().as_secs_f64();
    let write_cpu = cpu_times().since(cpu);
    let (t, cpu) = (Instant::now(), cpu_times());
    let back = read_predictions(&store, "imet.parquet").await?;
    let read_s = t.elapsed().as_secs_f64();
    let read_cpu = cpu_times().since(cpu);
    assert_eq!(back.probs.len(), preds.probs.len());
    assert!(back.probs == preds.probs, "read-back differs");
    println!(
        "{}",
        serde_json::json!({"tool": "imet", "rows": rows, "classes": c, "write_s": write_s, "read_s": read_s,
            "write_user_s": write_cpu.0, "write_sys_s": write_cpu.1, "read_user_s": read_cpu.0, "read_sys_s": read_cpu.1,
            "write_page_faults": write_cpu.2, "read_page_faults": read_cpu.2,
            "bytes": entry.size})
    );
    Ok(())
}

/// User and system CPU seconds and minor page faults of this process, all
/// threads (getrusage).
#[derive(Clone, Copy)]
struct CpuTimes(f64, f64, i64);

impl CpuTimes {
    fn since(self, start: CpuTimes) -> (f64, f64, i64) {
        (self.0 - start.0, self.1 - start.1, self.2 - start.2)
    }
}

fn cpu_times() -> CpuTimes {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    CpuTimes(s(u.ru_utime), s(u.ru_stime), u.ru_minflt)
}
