//! Benchmark of the second-level (stacking) model on the real training
//! labels (`data/imet2019/train.csv`, 109,237 images x 1,103 classes) with
//! synthetic first-level predictions whose OOF quality resembles real ones
//! (blend F2 near 0.6, as in the competition). Measures candidate recall for
//! several `top_k`, then runs `imet::level2::fit_predict` and reports time,
//! AUC, log-loss and F2 (best global threshold, and the ensemble's group
//! strategies) against the blend. With `--export DIR` it also writes the OOF
//! pair table as Parquet (`pairs.parquet`, `images.parquet`) and the Rust
//! results (`rust.json`) for `ci/bench/level2_reference.py` (Python LightGBM
//! on the same table).
//!
//! ```sh
//! cargo run --release --example level2_bench -- [--data data/imet2019] [--rows N] [--members 3]
//!     [--folds 5] [--top-k 30] [--recall-k 10,20,30,50,100] [--rounds R] [--export DIR] [--no-fit]
//! ```
//!
//! Synthetic members: every image gets latent labels, its annotated labels
//! plus, for a fifth of the images, one unannotated class drawn by class
//! frequency (label noise: the members "see" attributes the annotators
//! missed). A member's logit of class `c` is `prior(c) + class_bias(m, c)`
//! plus image-shared and member-own noise for classes outside the latent
//! labels, and `skill(m) + difficulty(c) + class_bias(m, c)` plus noise for
//! those inside (per-class calibration noise shared by members and per
//! member). Test images (7,443, the competition's test size) borrow the
//! labels of random training images.

use imet::data::metric::LabelSets;
use imet::data::{Annotations, Vocabulary};
use imet::ids::{Fold, ImageId};
use imet::ensemble::blend::best_global_f2;
use imet::ensemble::threshold::{self, FitConfig, Matrix, StrategyKind};
use imet::level2::{self, features, Candidates, Level2Config, Level2Input, Member};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const TEST_ROWS: usize = 7443;

/// Roughly standard normal: a centred sum of four uniforms.
fn normal(rng: &mut impl Rng) -> f32 {
    let s: f32 = (0..4).map(|_| rng.random::<f32>()).sum();
    (s - 2.0) * 1.732
}

struct Synth {
    prior: Vec<f32>,
    difficulty: Vec<f32>,
    /// `[members, classes]`.
    bias: Vec<f32>,
    classes: usize,
}

impl Synth {
    fn new(freq: &[u32], n: usize, members: usize, seed: u64) -> Synth {
        let classes = freq.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let prior = freq
            .iter()
            .map(|&f| {
                let p = (f as f32 + 1.0) / (n as f32 + 2.0);
                (p / (1.0 - p)).ln() - 1.0
            })
            .collect();
        let difficulty = (0..classes).map(|_| 0.7 * normal(&mut rng)).collect();
        let bias = (0..members * classes).map(|_| 0.4 * normal(&mut rng)).collect();
        Synth { prior, difficulty, bias, classes }
    }

    /// One member's probabilities for an image with latent labels `latent`.
    fn row(&self, out: &mut [f32], latent: &[u16], member: usize, image_seed: u64, own_seed: u64) {
        let mut common = ChaCha8Rng::seed_from_u64(image_seed);
        let mut own = ChaCha8Rng::seed_from_u64(own_seed);
        let skill = -0.9 + 0.3 * member as f32;
        let bias = &self.bias[member * self.classes..(member + 1) * self.classes];
        for (k, p) in out.iter_mut().enumerate() {
            let z = self.prior[k] + bias[k] + 1.3 * normal(&mut common) + 0.8 * normal(&mut own);
            *p = 1.0 / (1.0 + (-z).exp());
        }
        for &c in latent {
            let c = c as usize;
            let z = skill + self.difficulty[c] + bias[c] + 1.3 * normal(&mut common) + 0.9 * normal(&mut own);
            out[c] = 1.0 / (1.0 + (-z).exp());
        }
    }
}

struct Args {
    data: PathBuf,
    rows: usize,
    members: usize,
    folds: u8,
    top_k: usize,
    recall_k: Vec<usize>,
    rounds: Option<usize>,
    export: Option<PathBuf>,
    fit: bool,
}

fn parse_args() -> imet::Result<Args> {
    let mut a = Args {
        data: PathBuf::from("data/imet2019"),
        rows: usize::MAX,
        members: 3,
        folds: 5,
        top_k: Level2Config::default().top_k,
        recall_k: vec![5, 10, 20, 30, 50, 100],
        rounds: None,
        export: None,
        fit: true,
    };
    let mut it = std::env::args().skip(1);
    let usage = |m: &str| imet::Error::Usage(format!("{m}; see the header of examples/level2_bench.rs"));
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: String| v.parse::<usize>().map_err(|_| usage(&format!("`{v}` is not a count")));
        match flag.as_str() {
            "--data" => a.data = PathBuf::from(val()?),
            "--rows" => a.rows = num(val()?)?,
            "--members" => a.members = num(val()?)?,
            "--folds" => a.folds = num(val()?)? as u8,
            "--top-k" => a.top_k = num(val()?)?,
            "--rounds" => a.rounds = Some(num(val()?)?),
            "--recall-k" => a.recall_k = val()?.split(',').map(|v| num(v.to_string())).collect::<imet::Result<_>>()?,
            "--export" => a.export = Some(PathBuf::from(val()?)),
            "--no-fit" => a.fit = false,
            other => return Err(usage(&format!("unknown flag {other}"))),
        }
    }
    Ok(a)
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> imet::Error + '_ {
    move |source| imet::Error::Io { path: path.to_path_buf(), source }
}

fn peak_rss_mib() -> f64 {
    imet::ensemble::peak_rss_mib()
}

fn main() -> imet::Result<()> {
    let args = parse_args()?;
    let t_all = Instant::now();
    let read = |name: &str| {
        let p = args.data.join(name);
        std::fs::read(&p).map_err(io(&p))
    };
    let vocab = Vocabulary::parse("labels.csv", &read("labels.csv")?)?;
    let mut train = Annotations::parse("train.csv", &read("train.csv")?, &vocab)?;
    train.ids.truncate(args.rows);
    train.labels.truncate(args.rows);
    let (n, c, m) = (train.len(), vocab.len(), args.members);
    let folds: Vec<u8> = imet::data::folds::assign(&train, c, args.folds, 2019)?.into_iter().map(|Fold(f)| f).collect();
    let labels = LabelSets::from_rows(c, train.labels.iter().map(|l| l.iter().map(|a| a.0).collect::<Vec<u16>>()));
    println!("{n} images x {c} classes, {m} members, {} folds, {:.2} labels per image", args.folds, labels.mean_count());

    // Synthetic members.
    let t0 = Instant::now();
    let freq = labels.class_counts();
    let synth = Synth::new(&freq, n, m, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let cum: Vec<u64> = freq.iter().scan(0u64, |s, &f| {
        *s += f as u64;
        Some(*s)
    }).collect();
    let total = *cum.last().unwrap_or(&1);
    let latent_of = |l: &[u16], rng: &mut ChaCha8Rng| {
        let mut v = l.to_vec();
        if rng.random::<f32>() < 0.2 {
            let x = rng.random_range(0..total);
            let extra = cum.partition_point(|&s| s <= x) as u16;
            if !v.contains(&extra) {
                v.push(extra);
            }
        }
        v
    };
    let latent: Vec<Vec<u16>> = (0..n).map(|i| latent_of(labels.row(i), &mut rng)).collect();
    let test_src: Vec<usize> = (0..TEST_ROWS).map(|_| rng.random_range(0..n)).collect();
    let test_latent: Vec<Vec<u16>> = test_src.iter().map(|&i| latent_of(labels.row(i), &mut rng)).collect();
    let mut oof: Vec<Vec<f32>> = Vec::new();
    let mut test: Vec<Vec<f32>> = Vec::new();
    for mi in 0..m {
        let mut p = vec![0f32; n * c];
        p.par_chunks_mut(c).enumerate().for_each(|(i, o)| synth.row(o, &latent[i], mi, i as u64, 1 << 62 | (mi as u64) << 40 | i as u64));
        oof.push(p);
        let mut t = vec![0f32; TEST_ROWS * c];
        t.par_chunks_mut(c).enumerate().for_each(|(i, o)| {
            synth.row(o, &test_latent[i], mi, 1 << 60 | i as u64, 1 << 61 | (mi as u64) << 40 | i as u64)
        });
        test.push(t);
    }
    let mean = |ms: &[Vec<f32>]| {
        let mut b = vec![0f32; ms[0].len()];
        b.par_iter_mut().enumerate().for_each(|(j, v)| *v = ms.iter().map(|x| x[j]).sum::<f32>() / ms.len() as f32);
        b
    };
    let (blend, test_blend) = (mean(&oof), mean(&test));
    println!("synthetic predictions: {:.1} s", t0.elapsed().as_secs_f64());
    for (mi, p) in oof.iter().enumerate() {
        println!("member{mi}: OOF F2 {:.4} (best global threshold)", best_global_f2(p, c, &labels, 100).1);
    }
    let (bt, bf2) = best_global_f2(&blend, c, &labels, 100);
    println!("blend: OOF F2 {bf2:.4} at threshold {bt:.2}");

    // Candidate recall.
    println!("\n| top_k | pairs | recall (labels kept) | images with every label kept | seconds |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &k in &args.recall_k {
        let t = Instant::now();
        let cand = Candidates::top_k(&blend, c, k.min(c));
        let r = cand.recall(&labels);
        println!("| {k} | {} | {:.4} | {:.4} | {:.2} |", cand.classes.len(), r.fraction, r.images_complete, t.elapsed().as_secs_f64());
    }
    if !args.fit {
        println!("peak RSS {:.0} MiB", peak_rss_mib());
        return Ok(());
    }

    let cfg = Level2Config { top_k: args.top_k, rounds: args.rounds.unwrap_or(Level2Config::default().rounds), ..Level2Config::default() };
    let ids: Vec<ImageId> = train.ids.clone();
    let test_ids: Vec<ImageId> = (0..TEST_ROWS).map(|i| ImageId::new(&format!("{:016x}", 0xf000_0000_0000u64 + i as u64)).expect("hex id")).collect();
    let names: Vec<String> = (0..m).map(|i| format!("model{i}")).collect();
    let input = Level2Input {
        classes: c,
        groups: vocab.groups(),
        ids: &ids,
        labels: &labels,
        folds: &folds,
        members: (0..m).map(|i| Member { name: &names[i], ids: &ids, probs: &oof[i] }).collect(),
        blend: &blend,
        test_ids: &test_ids,
        test_members: (0..m).map(|i| Member { name: &names[i], ids: &test_ids, probs: &test[i] }).collect(),
        test_blend: &test_blend,
    };
    let t1 = Instant::now();
    let out = level2::fit_predict(&input, &cfg)?;
    let fit_s = t1.elapsed().as_secs_f64();
    let (lt, lf2) = best_global_f2(&out.oof, c, &labels, 100);
    println!("\nlevel2 (top_k {}, {} rounds, {} leaves, lr {}): {fit_s:.1} s", cfg.top_k, cfg.rounds, cfg.num_leaves, cfg.learning_rate);
    println!("  candidates {:.1} s, features {:.1} s, fold models (train + predict) {:.1} s", out.timings.candidates, out.timings.features, out.timings.folds);
    println!("  candidate recall {:.4}", out.candidate_recall.fraction);
    println!("  pair AUC   level2 {:.5}  blend {:.5}", out.oof_auc, out.blend_auc);
    println!("  pair loss  level2 {:.5}  blend {:.5}", out.oof_logloss, out.blend_logloss);
    println!("  OOF F2     level2 {lf2:.4} (t {lt:.2})  blend {bf2:.4} (t {bt:.2})");
    for f in &out.folds {
        println!("  fold {}: train {} valid {} pairs, AUC {:.5}, loss {:.5}, {} trees, {:.1} s", f.fold, f.train_pairs, f.valid_pairs, f.auc, f.logloss, f.trees, f.seconds);
    }
    println!("  gain: {}", out.importances.iter().take(8).map(|(n, g)| format!("{n} {g:.3e}")).collect::<Vec<_>>().join(", "));

    // The ensemble's threshold strategies, consuming the dense output unchanged.
    let group = threshold::group_index(vocab.groups());
    let fit = FitConfig { kinds: vec![StrategyKind::Global, StrategyKind::Group, StrategyKind::GroupLimits], ..FitConfig::default() };
    let mut strategies = Vec::new();
    for (what, probs) in [("blend", &blend), ("level2", &out.oof)] {
        let ev = threshold::fit_all(Matrix { probs, classes: c, group: &group }, &labels, &folds, &fit);
        for e in &ev {
            println!("  {what:6} {:12} cv F2 {:.4}", e.strategy.name, e.cv_f2);
            strategies.push(serde_json::json!({"input": what, "strategy": e.strategy.name, "cv_f2": e.cv_f2}));
        }
    }
    println!("total {:.1} s, peak RSS {:.0} MiB", t_all.elapsed().as_secs_f64(), peak_rss_mib());

    if let Some(dir) = &args.export {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        export(dir, &input, &cfg)?;
        let result = serde_json::json!({
            "images": n, "classes": c, "members": m, "folds": args.folds,
            "config": cfg,
            "blend_f2": bf2, "blend_threshold": bt, "level2_f2": lf2, "level2_threshold": lt,
            "fit_seconds": fit_s, "output": out, "strategies": strategies,
        });
        let p = dir.join("rust.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&result)?).map_err(io(&p))?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}

/// Writes the OOF pair table (the same features `fit_predict` builds) and
/// the per-image truth counts as Parquet.
fn export(dir: &std::path::Path, input: &Level2Input<'_>, cfg: &Level2Config) -> imet::Result<()> {
    use arrow::array::{ArrayRef, Float32Array, UInt16Array, UInt32Array, UInt8Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    let c = input.classes;
    let n = input.ids.len();
    let cand = Candidates::top_k(input.blend, c, cfg.top_k);
    let stats = features::FoldStats::new(input.labels, input.folds);
    let members: Vec<(String, &[f32])> = input.members.iter().map(|m| (m.name.to_string(), m.probs)).collect();
    let split = features::Split { members: &members, blend: input.blend, rows: n, classes: c };
    let settings = features::FeatureSettings { count_cutoffs: cfg.count_cutoffs.clone(), cooc_top_m: cfg.cooc_top_m };
    let table = features::build(split, &cand, input.groups, |i| &stats.without[input.folds[i] as usize], &settings);
    let target = features::targets(&cand, input.labels);
    let k = cand.k;
    let mut fields = vec![
        Field::new("row", DataType::UInt32, false),
        Field::new("class", DataType::UInt16, false),
        Field::new("fold", DataType::UInt8, false),
        Field::new("target", DataType::UInt8, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values((0..n * k).map(|p| (p / k) as u32))),
        Arc::new(UInt16Array::from(cand.classes.clone())),
        Arc::new(UInt8Array::from_iter_values((0..n * k).map(|p| input.folds[p / k]))),
        Arc::new(UInt8Array::from(target)),
    ];
    for (f, name) in table.names.iter().enumerate() {
        fields.push(Field::new(name, DataType::Float32, false));
        cols.push(Arc::new(Float32Array::from(table.column(f))));
    }
    let write = |name: &str, fields: Vec<Field>, cols: Vec<ArrayRef>| -> imet::Result<()> {
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        let p = dir.join(name);
        let file = std::fs::File::create(&p).map_err(io(&p))?;
        let mut w = ArrowWriter::try_new(file, batch.schema(), None)?;
        w.write(&batch)?;
        w.close()?;
        Ok(())
    };
    write("pairs.parquet", fields, cols)?;
    write(
        "images.parquet",
        vec![Field::new("row", DataType::UInt32, false), Field::new("fold", DataType::UInt8, false), Field::new("n_true", DataType::UInt16, false)],
        vec![
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            Arc::new(UInt8Array::from(input.folds.to_vec())),
            Arc::new(UInt16Array::from_iter_values((0..n).map(|i| input.labels.row(i).len() as u16))),
        ],
    )?;
    Ok(())
}
