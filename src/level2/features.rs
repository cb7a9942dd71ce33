//! Features of the second-level model, one row per (image, candidate class)
//! pair, computed only from out-of-fold information. Reads probability
//! matrices and label statistics, writes nothing.
//!
//! For image `i` and candidate class `c` (`b` is the blend row of `i`):
//!
//! | name | value |
//! | --- | --- |
//! | `member_{name}` | each member's probability of `c` |
//! | `blend` | `b[c]` |
//! | `members_std` | standard deviation of the members' probabilities (2+ members) |
//! | `blend_over_max` | `b[c] / max(b)` |
//! | `rank` | rank of `c` in the image by the blend (0 = highest) |
//! | `group_rank` | rank of `c` among the image's classes of its group |
//! | `img_max`, `img_group_max` | the image's highest blend, overall and in `c`'s group |
//! | `img_sum` | sum of the image's blend (an expected label count) |
//! | `img_n_ge_{t}` | classes of the image with `b >= t`, per cut-off `t` |
//! | `class_freq` | share of training images labelled `c` |
//! | `group` | 0 for `culture::`, 1 for `tag::` |
//! | `cooc` | `sum_o b[o] P(c|o) / sum_o b[o]` over `O`, the image's `m` highest classes other than `c` (0 when that sum is 0) |
//! | `cooc_max` | `max_o P(c|o)` over the same `O` |
//!
//! with `P(c|o) = n(c, o) / (n(o) + 1)` from label counts (`n(o)` images
//! labelled `o`, `n(c, o)` labelled both; the +1 keeps rare classes from
//! claiming certainty). `class_freq` and `P(c|o)` of an OOF row of fold
//! `k` come from the training labels of the other folds only
//! ([`FoldStats::without`]), the same information the first-level OOF
//! probabilities of that row were made with. Test rows use the statistics
//! of all training labels ([`FoldStats::all`]): both statistics are ratios,
//! so they keep their scale while gaining a `1/K` share of data, just as
//! test probabilities come from fold models that each saw `(K-1)/K` of it.

use super::candidates::Candidates;
use crate::data::metric::LabelSets;
use crate::ids::Group;
use rayon::prelude::*;

/// Label counts of a set of training images: per class and per class pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelStats {
    classes: usize,
    images: u64,
    counts: Vec<u32>,
    /// `[classes, classes]`, symmetric; the diagonal equals `counts`.
    pairs: Vec<u32>,
}

impl LabelStats {
    /// Counts the label sets of `rows` of `labels`.
    pub fn of_rows(labels: &LabelSets, rows: impl Iterator<Item = usize>) -> LabelStats {
        let c = labels.class_count();
        let mut s = LabelStats { classes: c, images: 0, counts: vec![0; c], pairs: vec![0; c * c] };
        for i in rows {
            let l = labels.row(i);
            s.images += 1;
            for &a in l {
                s.counts[a as usize] += 1;
                for &b in l {
                    s.pairs[a as usize * c + b as usize] += 1;
                }
            }
        }
        s
    }

    /// These counts less `part`'s (a subset of the same images).
    fn minus(&self, part: &LabelStats) -> LabelStats {
        LabelStats {
            classes: self.classes,
            images: self.images - part.images,
            counts: self.counts.iter().zip(&part.counts).map(|(a, b)| a - b).collect(),
            pairs: self.pairs.iter().zip(&part.pairs).map(|(a, b)| a - b).collect(),
        }
    }

    pub fn images(&self) -> u64 {
        self.images
    }

    /// Share of the images labelled `c` (0 without images).
    pub fn frequency(&self, c: usize) -> f32 {
        if self.images == 0 {
            0.0
        } else {
            self.counts[c] as f32 / self.images as f32
        }
    }

    /// `P(c | o) = n(c, o) / (n(o) + 1)`.
    pub fn given(&self, c: usize, o: usize) -> f32 {
        self.pairs[o * self.classes + c] as f32 / (self.counts[o] as f32 + 1.0)
    }
}

/// Label statistics of all training images and of all but each fold.
#[derive(Clone, Debug)]
pub struct FoldStats {
    pub all: LabelStats,
    /// `without[k]`: every training image outside fold `k`.
    pub without: Vec<LabelStats>,
}

impl FoldStats {
    /// Counts `labels` (one set per row) with `folds[i]` the fold of row `i`
    /// (folds `0..=max(folds)`).
    ///
    /// # Panics
    /// When `folds` and `labels` differ in length (callers validate).
    pub fn new(labels: &LabelSets, folds: &[u8]) -> FoldStats {
        assert_eq!(labels.len(), folds.len(), "one fold per labelled row");
        let k = folds.iter().copied().max().map_or(0, |m| m as usize + 1);
        let all = LabelStats::of_rows(labels, 0..labels.len());
        let without = (0..k)
            .into_par_iter()
            .map(|f| all.minus(&LabelStats::of_rows(labels, (0..folds.len()).filter(|&i| folds[i] as usize == f))))
            .collect();
        FoldStats { all, without }
    }
}

/// What the feature builder needs besides the data.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSettings {
    pub count_cutoffs: Vec<f32>,
    pub cooc_top_m: usize,
}

/// Probability matrices of one split (OOF or test), all `[rows, classes]`
/// in the same row order.
#[derive(Clone, Copy, Debug)]
pub struct Split<'a> {
    pub members: &'a [(String, &'a [f32])],
    pub blend: &'a [f32],
    pub rows: usize,
    pub classes: usize,
}

/// Feature values of every candidate pair, with their names.
///
/// Values are stored pair-major (`[pairs, features]`): an image's pairs are
/// one contiguous block, so a fold's subset is a copy of whole blocks and
/// LightGBM reads it as a row-major matrix. [`FeatureTable::column`] gives
/// one feature's values.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureTable {
    pub names: Vec<String>,
    /// `[pairs, names.len()]`, pair `p` = image `p / k`, class `candidates.classes[p]`.
    pub values: Vec<f32>,
    /// Candidates per image.
    pub k: usize,
}

impl FeatureTable {
    pub fn features(&self) -> usize {
        self.names.len()
    }

    pub fn pairs(&self) -> usize {
        self.values.len() / self.features().max(1)
    }

    /// All values of feature `f`, in pair order.
    pub fn column(&self, f: usize) -> Vec<f32> {
        self.values.chunks(self.features()).map(|r| r[f]).collect()
    }

    /// The pairs of the listed images (in that order), pair-major.
    pub fn select_images(&self, images: &[u32]) -> Vec<f32> {
        let block = self.k * self.features();
        let mut out = Vec::with_capacity(images.len() * block);
        for &i in images {
            out.extend_from_slice(&self.values[i as usize * block..(i as usize + 1) * block]);
        }
        out
    }
}

/// The feature names, in column order, for these member names.
pub fn feature_names(members: &[&str], cfg: &FeatureSettings) -> Vec<String> {
    let mut names: Vec<String> = members.iter().map(|m| format!("member_{m}")).collect();
    names.push("blend".into());
    if members.len() >= 2 {
        names.push("members_std".into());
    }
    for n in ["blend_over_max", "rank", "group_rank", "img_max", "img_group_max", "img_sum"] {
        names.push(n.into());
    }
    for t in &cfg.count_cutoffs {
        names.push(format!("img_n_ge_{t}"));
    }
    for n in ["class_freq", "group", "cooc", "cooc_max"] {
        names.push(n.into());
    }
    names
}

/// Builds the features of every candidate pair of `split`; `stats(i)`
/// gives the label statistics row `i` may use.
///
/// # Panics
/// When shapes disagree (callers validate; see [`super::fit_predict`]).
pub fn build<'s>(
    split: Split<'_>,
    cand: &Candidates,
    groups: &[Group],
    stats: impl Fn(usize) -> &'s LabelStats + Sync,
    cfg: &FeatureSettings,
) -> FeatureTable {
    let c = split.classes;
    let names = feature_names(&split.members.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), cfg);
    let nf = names.len();
    let k = cand.k;
    assert_eq!(cand.rows(), split.rows, "candidates for every row");
    assert_eq!(groups.len(), c, "a group per class");
    let group: Vec<usize> = groups.iter().map(|g| (*g == Group::Tag) as usize).collect();
    let mut values = vec![0f32; split.rows * k * nf];
    let m = cfg.cooc_top_m.min(c.saturating_sub(1));
    values.par_chunks_mut(k * nf).enumerate().for_each_init(
        || (Vec::<u16>::with_capacity(c), Vec::<f32>::new()),
        |(order, member_p), (i, out)| {
            let b = &split.blend[i * c..(i + 1) * c];
            let st = stats(i);
            let (mut max, mut sum, mut gmax) = (0f32, 0f64, [0f32; 2]);
            for (j, &p) in b.iter().enumerate() {
                max = max.max(p);
                sum += p as f64;
                gmax[group[j]] = gmax[group[j]].max(p);
            }
            let counts: Vec<f32> = cfg.count_cutoffs.iter().map(|&t| b.iter().filter(|&&p| p >= t).count() as f32).collect();
            // The image's m + 1 highest classes: each candidate's "others" are the first m of them that are not itself.
            order.clear();
            order.extend(0..c as u16);
            let by = |a: &u16, x: &u16| b[*x as usize].total_cmp(&b[*a as usize]).then(a.cmp(x));
            let top = (m + 1).min(c);
            if top < c {
                order.select_nth_unstable_by(top - 1, by);
            }
            order[..top].sort_unstable_by(by);
            let mut seen_in_group = [0u32; 2];
            for (r, &cls) in cand.row(i).iter().enumerate() {
                let cu = cls as usize;
                let row = &mut out[r * nf..(r + 1) * nf];
                let mut f = 0;
                member_p.clear();
                for (_, probs) in split.members {
                    let p = probs[i * c + cu];
                    member_p.push(p);
                    row[f] = p;
                    f += 1;
                }
                row[f] = b[cu];
                f += 1;
                if split.members.len() >= 2 {
                    let n = member_p.len() as f32;
                    let mean = member_p.iter().sum::<f32>() / n;
                    row[f] = (member_p.iter().map(|p| (p - mean) * (p - mean)).sum::<f32>() / n).sqrt();
                    f += 1;
                }
                let g = group[cu];
                row[f] = if max > 0.0 { b[cu] / max } else { 0.0 };
                row[f + 1] = r as f32;
                row[f + 2] = seen_in_group[g] as f32;
                seen_in_group[g] += 1;
                row[f + 3] = max;
                row[f + 4] = gmax[g];
                row[f + 5] = sum as f32;
                f += 6;
                for &n in &counts {
                    row[f] = n;
                    f += 1;
                }
                row[f] = st.frequency(cu);
                row[f + 1] = g as f32;
                let (mut wsum, mut wp, mut pmax) = (0f32, 0f32, 0f32);
                for &o in order[..top].iter().filter(|&&o| o != cls).take(m) {
                    let po = st.given(cu, o as usize);
                    wsum += b[o as usize];
                    wp += b[o as usize] * po;
                    pmax = pmax.max(po);
                }
                row[f + 2] = if wsum > 0.0 { wp / wsum } else { 0.0 };
                row[f + 3] = pmax;
                debug_assert_eq!(f + 4, nf);
            }
        },
    );
    FeatureTable { names, values, k }
}

/// 1 where the candidate class is one of the image's labels, per pair.
pub fn targets(cand: &Candidates, labels: &LabelSets) -> Vec<u8> {
    let mut out = vec![0u8; cand.classes.len()];
    out.par_chunks_mut(cand.k).enumerate().for_each(|(i, t)| {
        let l = labels.row(i);
        for (v, c) in t.iter_mut().zip(cand.row(i)) {
            *v = l.binary_search(c).is_ok() as u8;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> FeatureSettings {
        FeatureSettings { count_cutoffs: vec![0.1, 0.5], cooc_top_m: 2 }
    }

    #[test]
    fn conditional_probabilities_and_frequencies_come_from_the_counted_rows() {
        let labels = LabelSets::from_rows(3, [vec![0u16, 1], vec![0], vec![1, 2], vec![0, 1]]);
        let s = LabelStats::of_rows(&labels, 0..4);
        assert_eq!(s.frequency(0), 0.75);
        // n(0) = 3, n(1, 0) = 2: P(1 | 0) = 2 / 4.
        assert_eq!(s.given(1, 0), 0.5);
        let folds = [0u8, 1, 0, 1];
        let fs = FoldStats::new(&labels, &folds);
        assert_eq!(fs.without[0], LabelStats::of_rows(&labels, [1usize, 3].into_iter()));
        assert_eq!(fs.without[1].images(), 2);
    }

    #[test]
    fn features_follow_their_definitions() {
        // One image, 4 classes (0, 1 culture; 2, 3 tag), two members.
        let a = [0.8f32, 0.1, 0.6, 0.2];
        let bm = [0.6f32, 0.3, 0.2, 0.2];
        let blend: Vec<f32> = a.iter().zip(&bm).map(|(x, y)| (x + y) / 2.0).collect(); // .7 .2 .4 .2
        let members = vec![("a".to_string(), &a[..]), ("b".to_string(), &bm[..])];
        let split = Split { members: &members, blend: &blend, rows: 1, classes: 4 };
        let cand = Candidates::top_k(&blend, 4, 3); // 0, 2, 1
        let groups = [Group::Culture, Group::Culture, Group::Tag, Group::Tag];
        let train = LabelSets::from_rows(4, [vec![0u16, 2], vec![0, 1], vec![2]]);
        let st = LabelStats::of_rows(&train, 0..3);
        let t = build(split, &cand, &groups, |_| &st, &settings());
        let col = |name: &str| t.column(t.names.iter().position(|n| n == name).unwrap());
        assert_eq!(t.pairs(), 3);
        assert_eq!(col("member_a"), vec![0.8, 0.6, 0.1]);
        assert_eq!(col("rank"), vec![0.0, 1.0, 2.0]);
        assert_eq!(col("group_rank"), vec![0.0, 0.0, 1.0]);
        let close = |got: Vec<f32>, want: [f32; 3]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6);
        assert!(close(col("img_max"), [0.7; 3]));
        assert!(close(col("img_group_max"), [0.7, 0.4, 0.7]));
        assert_eq!(col("img_n_ge_0.5"), vec![1.0; 3]);
        assert_eq!(col("img_n_ge_0.1"), vec![4.0; 3]);
        assert_eq!(col("group"), vec![0.0, 1.0, 0.0]);
        assert!((col("members_std")[0] - 0.1).abs() < 1e-6);
        assert!((col("class_freq")[0] - 2.0 / 3.0).abs() < 1e-6);
        // Class 2's others are the top 2 classes except itself: 0 (b .7) and 1 (b .2 wins the tie with 3 by index).
        // P(2|0) = 1 / 3, P(2|1) = 0 / 2.
        let cooc = col("cooc");
        assert!((cooc[1] - (0.7 * (1.0 / 3.0)) / 0.9).abs() < 1e-6, "{cooc:?}");
        assert!((col("cooc_max")[1] - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(targets(&cand, &LabelSets::from_rows(4, [vec![1u16, 3]])), vec![0, 0, 1]);
    }

    #[test]
    fn a_folds_features_do_not_depend_on_its_own_labels() {
        let (rows, classes) = (40usize, 6usize);
        let blend: Vec<f32> = (0..rows * classes).map(|v| ((v * 37 % 101) as f32) / 101.0).collect();
        let members = vec![("m".to_string(), &blend[..])];
        let split = Split { members: &members, blend: &blend, rows, classes };
        let folds: Vec<u8> = (0..rows).map(|i| (i % 4) as u8).collect();
        let groups = vec![Group::Tag; classes];
        let cand = Candidates::top_k(&blend, classes, 4);
        let labels = |flip: bool| {
            LabelSets::from_rows(
                classes,
                (0..rows).map(|i| {
                    if flip && folds[i] == 2 {
                        vec![5u16, 4]
                    } else {
                        vec![(i % classes) as u16, ((i * 7) % classes) as u16]
                    }
                }),
            )
        };
        let feats = |l: &LabelSets| {
            let fs = FoldStats::new(l, &folds);
            build(split, &cand, &groups, |i| &fs.without[folds[i] as usize], &settings())
        };
        let (before, after) = (feats(&labels(false)), feats(&labels(true)));
        let block = cand.k * before.features();
        let mut other_fold_changed = false;
        for (i, &fold) in folds.iter().enumerate() {
            let (x, y) = (&before.values[i * block..(i + 1) * block], &after.values[i * block..(i + 1) * block]);
            if fold == 2 {
                assert_eq!(x, y, "row {i} of fold 2 changed with fold 2's labels");
            } else {
                other_fold_changed |= x != y;
            }
        }
        assert!(other_fold_changed, "other folds' features use fold 2's labels, so the test can fail");
    }
}
