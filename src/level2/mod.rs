//! Second-level (stacking) model, the last stage of the first-place iMet
//! 2019 recipe: a binary classifier on (image, class) pairs, "does this
//! class belong to this image", fitted on the first-level members'
//! out-of-fold (OOF) probabilities. Plain data in, plain data out: it reads
//! member and blend probability matrices, multi-hot labels and folds held
//! in memory, and returns dense OOF and test probability matrices in the
//! same row order, ready for the ensemble's threshold strategies.
//!
//! Steps of [`fit_predict`]:
//! 1. [`candidates`]: each image keeps its `top_k` classes by the blend
//!    (120 M pairs at full scale become `rows x top_k`); others get 0.
//! 2. [`features`]: per pair, member and blend probabilities, ranks,
//!    image-level summaries, the class's training frequency and group, and
//!    a co-occurrence score; label statistics of an OOF row come from the
//!    other folds only.
//! 3. Cross-fitting on the members' folds: fold `k`'s model ([`learner`],
//!    LightGBM) trains on the pairs of the other folds and predicts fold
//!    `k`'s pairs, so the OOF output is as honest as the members'; the test
//!    output averages the fold models.

pub mod candidates;
pub mod config;
pub mod features;
pub mod job;
pub mod learner;
pub mod metrics;

pub use candidates::{Candidates, Recall};
pub use config::Level2Config;
pub use job::{Level2Job, Level2Outcome, MEMBER};

use crate::data::metric::LabelSets;
use crate::ids::{Group, ImageId};
use crate::error::{Error, Result};
use features::{FeatureSettings, FoldStats, Split};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// One first-level model's probabilities, `[rows, classes]` row-major, with
/// the image of each row.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    pub name: &'a str,
    pub ids: &'a [ImageId],
    pub probs: &'a [f32],
}

/// Everything the second-level model learns from and predicts.
#[derive(Clone, Debug)]
pub struct Level2Input<'a> {
    /// Class count (1,103 in the competition).
    pub classes: usize,
    /// Group of each class.
    pub groups: &'a [Group],
    /// Training images in row order: `labels`, `folds`, `blend` and every
    /// member's rows follow it.
    pub ids: &'a [ImageId],
    pub labels: &'a LabelSets,
    /// The fold of each training image (the members' OOF folds).
    pub folds: &'a [u8],
    /// Members' OOF probabilities.
    pub members: Vec<Member<'a>>,
    /// The first-level blend of the OOF rows, `[rows, classes]`.
    pub blend: &'a [f32],
    /// Test images in row order, the same members' test probabilities (same
    /// names, same order) and their blend.
    pub test_ids: &'a [ImageId],
    pub test_members: Vec<Member<'a>>,
    pub test_blend: &'a [f32],
}

/// Held-out scores of one fold's model on its fold's candidate pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FoldReport {
    pub fold: u8,
    pub train_pairs: usize,
    pub valid_pairs: usize,
    pub auc: f64,
    pub logloss: f64,
    pub trees: usize,
    pub seconds: f64,
}

/// Wall-clock seconds of each phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    pub candidates: f64,
    pub features: f64,
    /// Training and predicting all fold models (folds run in parallel).
    pub folds: f64,
}

/// What [`fit_predict`] returns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Level2Output {
    /// `[rows, classes]`: each row scored by the model of its own fold, 0
    /// outside its candidates.
    #[serde(skip)]
    pub oof: Vec<f32>,
    /// `[test_rows, classes]`: the mean of the fold models, 0 outside the
    /// candidates.
    #[serde(skip)]
    pub test: Vec<f32>,
    /// Share of the OOF labels among the candidates (the recall ceiling).
    pub candidate_recall: Recall,
    /// AUC and log-loss of all OOF candidate pairs together.
    pub oof_auc: f64,
    pub oof_logloss: f64,
    /// The same for the blend's probabilities on the same pairs.
    pub blend_auc: f64,
    pub blend_logloss: f64,
    pub folds: Vec<FoldReport>,
    /// Total split gain of each feature summed over the fold models, largest first.
    pub importances: Vec<(String, f64)>,
    pub timings: Timings,
    /// Each fitted fold model in LightGBM's text format, by fold (what
    /// test-time inference loads: [`predict_test`]).
    #[serde(skip)]
    pub models: Vec<(u8, String)>,
}

/// What one fold model produced.
struct FoldFit {
    fold: u8,
    /// Probabilities of the fold's own pairs, in its image order.
    held: Vec<f32>,
    /// Probabilities of every test pair.
    test: Vec<f32>,
    gain: Vec<f64>,
    report: FoldReport,
    text: String,
}

fn named<'a>(ms: &[Member<'a>]) -> Vec<(String, &'a [f32])> {
    ms.iter().map(|m| (m.name.to_string(), m.probs)).collect()
}

fn bad(msg: String) -> Error {
    Error::Level2(msg)
}

fn check_members(what: &str, members: &[Member<'_>], ids: &[ImageId], classes: usize) -> Result<()> {
    if members.is_empty() {
        return Err(bad(format!("{what} member list is empty: give at least one first-level model's probabilities")));
    }
    let want = ids.len() * classes;
    for m in members {
        if m.ids.len() != ids.len() {
            return Err(bad(format!(
                "{what} member `{}` has {} rows but there are {} images: every member needs one row per image",
                m.name,
                m.ids.len(),
                ids.len()
            )));
        }
        if let Some(r) = (0..ids.len()).find(|&r| m.ids[r] != ids[r]) {
            return Err(bad(format!(
                "{what} member `{}` row {r} is image `{}` where the input has `{}`: put every member in the input's row order",
                m.name, m.ids[r], ids[r]
            )));
        }
        if m.probs.len() != want {
            return Err(bad(format!(
                "{what} member `{}` has {} probabilities, expected {} rows x {classes} classes = {want}",
                m.name,
                m.probs.len(),
                ids.len()
            )));
        }
        check_probs(&format!("{what} member `{}`", m.name), m.probs, classes)?;
    }
    Ok(())
}

fn check_probs(what: &str, probs: &[f32], classes: usize) -> Result<()> {
    if let Some(i) = probs.par_iter().position_first(|p| !(0.0..=1.0).contains(p)) {
        return Err(bad(format!(
            "{what} row {} class {} is {}: probabilities must lie in [0, 1]",
            i / classes,
            i % classes,
            probs[i]
        )));
    }
    Ok(())
}

/// Checks shapes, row orders and values of `input` and the ranges of `cfg`.
///
/// # Errors
/// [`Error::Level2`] naming the member, row, class or field at fault.
pub fn validate(input: &Level2Input<'_>, cfg: &Level2Config) -> Result<()> {
    let c = input.classes;
    cfg.validate(Some(c)).map_err(|m| bad(m.join("; ")))?;
    let n = input.ids.len();
    if n == 0 {
        return Err(bad("no training images: the second-level model needs OOF rows".into()));
    }
    if input.groups.len() != c {
        return Err(bad(format!("{} class groups for {c} classes: give one group per class", input.groups.len())));
    }
    if input.labels.len() != n || input.labels.class_count() != c {
        return Err(bad(format!(
            "labels cover {} images x {} classes, the input {n} images x {c} classes",
            input.labels.len(),
            input.labels.class_count()
        )));
    }
    if input.folds.len() != n {
        return Err(bad(format!("{} fold entries for {n} images: give one fold per image", input.folds.len())));
    }
    let k = input.folds.iter().copied().max().map_or(0, |m| m as usize + 1);
    let used = (0..k).filter(|&f| input.folds.iter().any(|&x| x as usize == f)).count();
    if used < 2 {
        return Err(bad(format!("the images span {used} fold(s); cross-fitting needs at least 2")));
    }
    check_members("OOF", &input.members, input.ids, c)?;
    if input.blend.len() != n * c {
        return Err(bad(format!("the OOF blend has {} probabilities, expected {n} x {c} = {}", input.blend.len(), n * c)));
    }
    check_probs("the OOF blend", input.blend, c)?;
    check_members("test", &input.test_members, input.test_ids, c)?;
    let (a, b): (Vec<&str>, Vec<&str>) = (input.members.iter().map(|m| m.name).collect(), input.test_members.iter().map(|m| m.name).collect());
    if a != b {
        return Err(bad(format!("test members {b:?} differ from OOF members {a:?}: give the same models in the same order")));
    }
    let nt = input.test_ids.len();
    if input.test_blend.len() != nt * c {
        return Err(bad(format!("the test blend has {} probabilities, expected {nt} x {c} = {}", input.test_blend.len(), nt * c)));
    }
    check_probs("the test blend", input.test_blend, c)?;
    Ok(())
}

/// Builds features, cross-fits one model per fold and returns dense OOF and
/// test probabilities. Deterministic for a given input and `cfg.seed`.
///
/// # Errors
/// [`Error::Level2`] for inconsistent input (see [`validate`]) or a
/// LightGBM failure.
pub fn fit_predict(input: &Level2Input<'_>, cfg: &Level2Config) -> Result<Level2Output> {
    fit_folds(input, cfg, None)
}

/// [`fit_predict`] for one fold's model alone (a level-2 job per fold):
/// the OOF output holds that fold's rows (0 elsewhere), the test output
/// that model's predictions; the pair scores are those of the fold's rows.
///
/// # Errors
/// As [`fit_predict`].
pub fn fit_fold(input: &Level2Input<'_>, cfg: &Level2Config, fold: u8) -> Result<Level2Output> {
    fit_folds(input, cfg, Some(fold))
}

fn fit_folds(input: &Level2Input<'_>, cfg: &Level2Config, only: Option<u8>) -> Result<Level2Output> {
    validate(input, cfg)?;
    let c = input.classes;
    let (n, nt) = (input.ids.len(), input.test_ids.len());
    let t0 = Instant::now();
    let cand = Candidates::top_k(input.blend, c, cfg.top_k);
    let test_cand = Candidates::top_k(input.test_blend, c, cfg.top_k);
    let candidate_recall = cand.recall(input.labels);
    let t_cand = t0.elapsed().as_secs_f64();
    tracing::info!(top_k = cfg.top_k, recall = candidate_recall.fraction, seconds = t_cand, "level2 candidates");

    let t1 = Instant::now();
    let settings = FeatureSettings { count_cutoffs: cfg.count_cutoffs.clone(), cooc_top_m: cfg.cooc_top_m };
    let stats = FoldStats::new(input.labels, input.folds);
    let (oof_members, test_members) = (named(&input.members), named(&input.test_members));
    let oof_split = Split { members: &oof_members, blend: input.blend, rows: n, classes: c };
    let test_split = Split { members: &test_members, blend: input.test_blend, rows: nt, classes: c };
    let table = features::build(oof_split, &cand, input.groups, |i| &stats.without[input.folds[i] as usize], &settings);
    let test_table = features::build(test_split, &test_cand, input.groups, |_| &stats.all, &settings);
    let target: Vec<f32> = features::targets(&cand, input.labels).into_iter().map(f32::from).collect();
    let t_feat = t1.elapsed().as_secs_f64();
    tracing::info!(pairs = table.pairs(), features = table.features(), seconds = t_feat, "level2 features");

    let t2 = Instant::now();
    let k = stats.without.len();
    let fold_images: Vec<Vec<u32>> = (0..k).map(|f| (0..n as u32).filter(|&i| input.folds[i as usize] as usize == f).collect()).collect();
    let threads = if cfg.parallel_folds == 0 { rayon::current_num_threads() } else { cfg.parallel_folds };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| bad(format!("cannot start {threads} fold threads: {e}")))?;
    let nf = table.features();
    let kk = cfg.top_k;
    let fits: Vec<FoldFit> = pool.install(|| {
        (0..k)
            .into_par_iter()
            .filter(|&f| !fold_images[f].is_empty() && only.is_none_or(|o| o as usize == f))
            .map(|f| -> Result<_> {
                let tf = Instant::now();
                let train_imgs: Vec<u32> = (0..n as u32).filter(|&i| input.folds[i as usize] as usize != f).collect();
                let x = table.select_images(&train_imgs);
                let y: Vec<f32> = train_imgs.iter().flat_map(|&i| target[i as usize * kk..(i as usize + 1) * kk].iter().copied()).collect();
                let model = learner::train(&x, &y, nf, cfg)?;
                drop(x);
                let held = table.select_images(&fold_images[f]);
                let p_held = model.predict(&held)?;
                let test_p = model.predict(&test_table.values)?;
                let y_held: Vec<f32> = fold_images[f].iter().flat_map(|&i| target[i as usize * kk..(i as usize + 1) * kk].iter().copied()).collect();
                let report = FoldReport {
                    fold: f as u8,
                    train_pairs: y.len(),
                    valid_pairs: y_held.len(),
                    auc: metrics::auc(&p_held, &y_held),
                    logloss: metrics::logloss(&p_held, &y_held),
                    trees: model.trees(),
                    seconds: tf.elapsed().as_secs_f64(),
                };
                tracing::info!(fold = f, auc = report.auc, logloss = report.logloss, seconds = report.seconds, "level2 fold model");
                Ok(FoldFit { fold: f as u8, held: p_held, test: test_p, gain: model.gain()?, report, text: model.to_text()? })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let t_folds = t2.elapsed().as_secs_f64();

    let mut oof_pairs = vec![0f32; n * kk];
    let mut test_pairs = vec![0f64; nt * kk];
    let mut gain = vec![0f64; nf];
    let mut reports = Vec::new();
    let mut texts = Vec::new();
    for fit in fits {
        texts.push((fit.fold, fit.text));
        for (j, &i) in fold_images[fit.fold as usize].iter().enumerate() {
            oof_pairs[i as usize * kk..(i as usize + 1) * kk].copy_from_slice(&fit.held[j * kk..(j + 1) * kk]);
        }
        test_pairs.iter_mut().zip(&fit.test).for_each(|(a, &b)| *a += b as f64);
        gain.iter_mut().zip(&fit.gain).for_each(|(a, b)| *a += b);
        reports.push(fit.report);
    }
    let models = reports.len().max(1) as f64;
    let test_pairs: Vec<f32> = test_pairs.into_iter().map(|v| (v / models) as f32).collect();
    let blend_pairs: Vec<f32> = (0..n).flat_map(|i| cand.row(i).iter().map(move |&cl| input.blend[i * c + cl as usize])).collect();
    let mut importances: Vec<(String, f64)> = table.names.iter().cloned().zip(gain).collect();
    importances.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // Pair scores over the rows whose model was fitted.
    let scored: Vec<usize> = match only {
        None => (0..n * kk).collect(),
        Some(o) => fold_images[o as usize].iter().flat_map(|&i| i as usize * kk..(i as usize + 1) * kk).collect(),
    };
    let pick = |v: &[f32]| -> Vec<f32> { scored.iter().map(|&j| v[j]).collect() };
    let (oof_s, blend_s, target_s) = (pick(&oof_pairs), pick(&blend_pairs), pick(&target));
    Ok(Level2Output {
        oof: cand.scatter(&oof_pairs, c),
        test: test_cand.scatter(&test_pairs, c),
        candidate_recall,
        oof_auc: metrics::auc(&oof_s, &target_s),
        oof_logloss: metrics::logloss(&oof_s, &target_s),
        blend_auc: metrics::auc(&blend_s, &target_s),
        blend_logloss: metrics::logloss(&blend_s, &target_s),
        folds: reports,
        importances,
        timings: Timings { candidates: t_cand, features: t_feat, folds: t_folds },
        models: texts,
    })
}

/// What test-time inference of one fold model reads: the test images'
/// member probabilities and their blend, and the training labels (their
/// statistics are features, as in [`fit_predict`]'s test rows).
#[derive(Clone, Debug)]
pub struct TestInput<'a> {
    pub classes: usize,
    pub groups: &'a [Group],
    /// Every training image's labels.
    pub labels: &'a LabelSets,
    pub test_ids: &'a [ImageId],
    /// The members' test probabilities, in the fitting run's member order.
    pub members: Vec<Member<'a>>,
    /// Their blend (the members' plain mean).
    pub blend: &'a [f32],
}

/// The test probabilities of one saved fold model (`model` in LightGBM's
/// text format, as [`fit_fold`] fitted it): the same candidates, features
/// and scores as the fitting run's test output for the same inputs.
///
/// # Errors
/// [`Error::Level2`] for inconsistent input, a model with another feature
/// count, or a LightGBM failure.
pub fn predict_test(input: &TestInput<'_>, cfg: &Level2Config, model: &str) -> Result<Vec<f32>> {
    let c = input.classes;
    cfg.validate(Some(c)).map_err(|m| bad(m.join("; ")))?;
    check_members("test", &input.members, input.test_ids, c)?;
    let nt = input.test_ids.len();
    if input.blend.len() != nt * c || input.groups.len() != c || input.labels.class_count() != c {
        return Err(bad(format!("test input of {nt} images x {c} classes has a blend of {} values, {} groups and labels over {} classes", input.blend.len(), input.groups.len(), input.labels.class_count())));
    }
    let cand = Candidates::top_k(input.blend, c, cfg.top_k);
    let settings = FeatureSettings { count_cutoffs: cfg.count_cutoffs.clone(), cooc_top_m: cfg.cooc_top_m };
    let all = features::LabelStats::of_rows(input.labels, 0..input.labels.len());
    let members = named(&input.members);
    let split = Split { members: &members, blend: input.blend, rows: nt, classes: c };
    let table = features::build(split, &cand, input.groups, |_| &all, &settings);
    let model = learner::Model::from_text(model)?;
    if model.features() != table.features() {
        return Err(bad(format!("the saved model takes {} features per pair but these inputs give {}: it was fitted with other members or settings", model.features(), table.features())));
    }
    let p = model.predict(&table.values)?;
    if p.len() != nt * cfg.top_k {
        return Err(bad(format!("the saved model scored {} pairs of {}: it was fitted with other features ({})", p.len(), nt * cfg.top_k, table.features())));
    }
    // As the fitting run's test output of one model: sum in f64, divided by 1.
    let pairs: Vec<f32> = p.into_iter().map(|v| (v as f64 / 1.0) as f32).collect();
    Ok(cand.scatter(&pairs, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A small problem: `rows` training and 30 test images over 20 classes
    /// (8 culture, 12 tag), two members correlated with the labels, 4 folds.
    struct Toy {
        ids: Vec<ImageId>,
        test_ids: Vec<ImageId>,
        labels: LabelSets,
        folds: Vec<u8>,
        groups: Vec<Group>,
        members: Vec<Vec<f32>>,
        test_members: Vec<Vec<f32>>,
        blend: Vec<f32>,
        test_blend: Vec<f32>,
    }

    const C: usize = 20;

    fn id(i: usize) -> ImageId {
        ImageId::new(&format!("{i:012x}")).unwrap()
    }

    fn toy(rows: usize, random_probs: bool) -> Toy {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let lab = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<u16> {
            let mut l: Vec<u16> = (0..C as u16).filter(|&c| rng.random::<f32>() < 0.4 / (1.0 + c as f32 * 0.2)).collect();
            if l.is_empty() {
                l.push(rng.random_range(0..C as u16));
            }
            l
        };
        let train: Vec<Vec<u16>> = (0..rows).map(|_| lab(&mut rng)).collect();
        let test: Vec<Vec<u16>> = (0..30).map(|_| lab(&mut rng)).collect();
        let probs = |ls: &[Vec<u16>], rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f32> {
            let mut p = vec![0f32; ls.len() * C];
            for (i, l) in ls.iter().enumerate() {
                for c in 0..C {
                    let pos = l.contains(&(c as u16));
                    let z = if random_probs { 0.0 } else if pos { 1.0 } else { -1.5 };
                    p[i * C + c] = 1.0 / (1.0 + (-(z + 1.5 * (rng.random::<f32>() - 0.5) * 2.0)).exp());
                }
            }
            p
        };
        let members = vec![probs(&train, &mut rng), probs(&train, &mut rng)];
        let test_members = vec![probs(&test, &mut rng), probs(&test, &mut rng)];
        let mean = |ms: &[Vec<f32>]| (0..ms[0].len()).map(|j| (ms[0][j] + ms[1][j]) / 2.0).collect::<Vec<f32>>();
        Toy {
            ids: (0..rows).map(id).collect(),
            test_ids: (0..30).map(|i| id(1_000_000 + i)).collect(),
            labels: LabelSets::from_rows(C, train),
            folds: (0..rows).map(|i| (i % 4) as u8).collect(),
            groups: (0..C).map(|c| if c < 8 { Group::Culture } else { Group::Tag }).collect(),
            blend: mean(&members),
            test_blend: mean(&test_members),
            members,
            test_members,
        }
    }

    impl Toy {
        fn input(&self) -> Level2Input<'_> {
            Level2Input {
                classes: C,
                groups: &self.groups,
                ids: &self.ids,
                labels: &self.labels,
                folds: &self.folds,
                members: vec![
                    Member { name: "a", ids: &self.ids, probs: &self.members[0] },
                    Member { name: "b", ids: &self.ids, probs: &self.members[1] },
                ],
                blend: &self.blend,
                test_ids: &self.test_ids,
                test_members: vec![
                    Member { name: "a", ids: &self.test_ids, probs: &self.test_members[0] },
                    Member { name: "b", ids: &self.test_ids, probs: &self.test_members[1] },
                ],
                test_blend: &self.test_blend,
            }
        }
    }

    fn small() -> Level2Config {
        Level2Config { top_k: 8, rounds: 40, num_leaves: 8, min_data_in_leaf: 10, bagging_fraction: 0.8, ..Level2Config::default() }
    }

    #[test]
    fn outputs_are_dense_zero_outside_candidates_and_better_than_chance() {
        let t = toy(400, false);
        let out = fit_predict(&t.input(), &small()).unwrap();
        assert_eq!(out.oof.len(), 400 * C);
        assert_eq!(out.test.len(), 30 * C);
        let cand = Candidates::top_k(&t.blend, C, 8);
        for i in 0..400 {
            let nonzero = (0..C).filter(|&c| out.oof[i * C + c] > 0.0).count();
            assert!(nonzero <= 8);
            for c in 0..C {
                if !cand.row(i).contains(&(c as u16)) {
                    assert_eq!(out.oof[i * C + c], 0.0);
                }
            }
        }
        assert_eq!(out.folds.len(), 4);
        assert!(out.oof_auc > 0.8, "AUC {}", out.oof_auc);
        assert!(out.test.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(out.importances.len(), t.input().members.len() + 1 + 1 + 6 + 4 + 4);
    }

    #[test]
    fn the_same_seed_gives_identical_outputs() {
        let t = toy(300, false);
        let a = fit_predict(&t.input(), &small()).unwrap();
        let b = fit_predict(&t.input(), &Level2Config { parallel_folds: 1, ..small() }).unwrap();
        assert_eq!(a.oof, b.oof);
        assert_eq!(a.test, b.test);
        let c = fit_predict(&t.input(), &Level2Config { seed: 99, ..small() }).unwrap();
        assert_ne!(a.oof, c.oof, "bagging with another seed gives other models");
    }

    #[test]
    fn a_folds_predictions_come_from_a_model_that_never_saw_its_rows() {
        // Probabilities carry no information about the labels, but every
        // pair's features are distinct, so a model that saw a row could
        // memorise it: trained on all rows it scores those rows far above
        // chance, while honest cross-fitting stays near 0.5.
        let t = toy(400, true);
        let cfg = Level2Config { top_k: 8, rounds: 200, num_leaves: 64, min_data_in_leaf: 1, learning_rate: 0.3, ..Level2Config::default() };
        let out = fit_predict(&t.input(), &cfg).unwrap();
        assert!(out.oof_auc < 0.6, "cross-fitted AUC {} on labels the features cannot predict", out.oof_auc);

        let cand = Candidates::top_k(&t.blend, C, 8);
        let stats = FoldStats::new(&t.labels, &t.folds);
        let members: Vec<(String, &[f32])> = vec![("a".into(), &t.members[0][..]), ("b".into(), &t.members[1][..])];
        let split = Split { members: &members, blend: &t.blend, rows: 400, classes: C };
        let settings = FeatureSettings { count_cutoffs: cfg.count_cutoffs.clone(), cooc_top_m: cfg.cooc_top_m };
        let table = features::build(split, &cand, &t.groups, |i| &stats.without[t.folds[i] as usize], &settings);
        let y: Vec<f32> = features::targets(&cand, &t.labels).into_iter().map(f32::from).collect();
        let m = learner::train(&table.values, &y, table.features(), &cfg).unwrap();
        let seen = metrics::auc(&m.predict(&table.values).unwrap(), &y);
        assert!(seen > 0.9, "a model scoring rows it saw reaches AUC {seen}, so the honest check above can fail");
    }

    #[test]
    fn a_saved_fold_model_scores_the_test_images_as_the_fitting_run_did() {
        let t = toy(300, false);
        let out = fit_fold(&t.input(), &small(), 2).unwrap();
        let (fold, text) = &out.models[0];
        assert_eq!((*fold, out.models.len()), (2, 1));
        let input = TestInput { classes: C, groups: &t.groups, labels: &t.labels, test_ids: &t.test_ids, members: t.input().test_members, blend: &t.test_blend };
        assert_eq!(predict_test(&input, &small(), text).unwrap(), out.test, "the same bits as the fitting run's test output");
        let one_member = TestInput { members: t.input().test_members[..1].to_vec(), ..input.clone() };
        let err = predict_test(&one_member, &small(), text).unwrap_err().to_string();
        assert!(err.contains("features per pair"), "{err}");
    }

    #[test]
    fn bad_inputs_are_refused_naming_what_is_wrong() {
        let t = toy(100, false);
        let err = |input: Level2Input<'_>, cfg: &Level2Config| fit_predict(&input, cfg).unwrap_err().to_string();

        let mut i = t.input();
        i.members.clear();
        assert!(err(i, &small()).contains("OOF member list is empty"));

        let mut i = t.input();
        i.members[1].probs = &t.members[1][..99 * C];
        i.members[1].ids = &t.ids[..99];
        let e = err(i, &small());
        assert!(e.contains("member `b` has 99 rows but there are 100 images"), "{e}");

        let mut swapped = t.ids.clone();
        swapped.swap(3, 4);
        let mut i = t.input();
        i.members[1].ids = &swapped;
        let e = err(i, &small());
        assert!(e.contains("member `b` row 3 is image `000000000004`"), "{e}");

        let e = err(t.input(), &Level2Config { top_k: 21, ..small() });
        assert!(e.contains("level2.top_k") && e.contains("only 20 classes"), "{e}");

        let mut i = t.input();
        i.test_members.swap(0, 1);
        let e = err(i, &small());
        assert!(e.contains("test members [\"b\", \"a\"] differ from OOF members [\"a\", \"b\"]"), "{e}");

        let mut nan = t.members[0].clone();
        nan[5 * C + 7] = f32::NAN;
        let mut i = t.input();
        i.members[0].probs = &nan;
        let e = err(i, &small());
        assert!(e.contains("member `a` row 5 class 7 is NaN"), "{e}");

        let one_fold = vec![0u8; 100];
        let mut i = t.input();
        i.folds = &one_fold;
        assert!(err(i, &small()).contains("span 1 fold(s)"));
    }
}
