//! `imet eval`: scores any predictions file against a `train.csv`-style
//! truth, at a given or the best global threshold, with culture/tag scores
//! when `labels.csv` is given. Reads the files by path or URL; writes nothing.

use super::metric::{self, LabelSets};
use super::threshold::{self, Matrix, Range};
use super::{blend, submission};
use crate::data;
use crate::error::{Error, Result};
use crate::ids::Group;
use crate::storage::open_file;
use crate::storage::parquet as pq;
use std::collections::HashMap;

/// Scores the predictions file `pred` (any `schemas/predictions.parquet.json`
/// file) against `truth` (`id,attribute_ids` CSV, e.g. `train.csv`): at
/// `threshold`, or at the best global threshold when `None`, with at least
/// one label per image. Group scores need `labels` (`labels.csv`).
///
/// # Errors
/// [`Error::Member`] when an id of `pred` is not in `truth`; read errors.
pub async fn eval(pred: &str, truth: &str, labels: Option<&str>, threshold: Option<f32>) -> Result<serde_json::Value> {
    let (ps, pk) = open_file(pred)?;
    let preds = pq::read_predictions(&ps, &pk).await?;
    let c = preds.classes();
    let (ts, tk) = open_file(truth)?;
    let text = ts.get(&tk).await?;
    let text = String::from_utf8_lossy(&text);
    let (tids, tsets) = submission::parse(truth, &text, c)?;
    let pos: HashMap<&str, usize> = tids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut aligned = LabelSets::new(c);
    for id in &preds.ids {
        let &i = pos.get(id.as_str()).ok_or_else(|| Error::Member { key: pred.to_string(), message: format!("id `{id}` is not in {truth}") })?;
        aligned.push_sorted(tsets.row(i));
    }
    let vocab = match labels {
        Some(l) => {
            let (ls, lk) = open_file(l)?;
            Some(data::Vocabulary::parse(l, &ls.get(&lk).await?)?)
        }
        None => None,
    };
    let group: Vec<u8> = match &vocab {
        Some(v) if v.len() == c => threshold::group_index(v.groups()),
        Some(v) => return Err(Error::Usage(format!("{} has {} classes but the predictions have {c}", labels.unwrap_or(""), v.len()))),
        None => vec![1; c],
    };
    let (best_t, best_f2) = blend::best_global_f2(&preds.probs, c, &aligned, 100);
    let t = threshold.unwrap_or(best_t);
    let strategy = threshold::Strategy {
        name: "global".into(),
        rule: threshold::Rule::Global { threshold: t },
        limits: threshold::Limits::total(Range { min: 1, max: None }),
    };
    let m = Matrix { probs: &preds.probs, classes: c, group: &group };
    let p = threshold::apply(&strategy, m, None);
    let s = metric::scores(&aligned, &p, 2.0, 0.0);
    let mut out = serde_json::json!({
        "predictions": pred,
        "truth": truth,
        "images": preds.rows(),
        "classes": c,
        "threshold": t,
        "best_global_threshold": best_t,
        "best_global_f2": best_f2,
        "f2": s.samples.f,
        "samples": s.samples,
        "micro": s.micro,
        "macro": s.macro_,
        "mean_labels_predicted": p.mean_count(),
        "mean_labels_true": aligned.mean_count(),
    });
    if let Some(v) = &vocab {
        for g in Group::ALL {
            out[g.as_str()] = serde_json::to_value(metric::group_scores(&aligned, &p, v.groups(), g, 2.0))?;
        }
    }
    Ok(out)
}
