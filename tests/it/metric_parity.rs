//! `ensemble::metric` equals scikit-learn's `precision_recall_fscore_support`
//! (beta = 2; average samples, micro and macro; zero_division 0 and 1) on
//! random matrices and the edge cases: empty prediction rows, all-zero
//! truth, a single active class, perfect and empty predictions, one image,
//! and one group's columns.

use crate::common;

use imet::ids::Group;
use imet::ensemble::metric::{group_scores, scores, LabelSets};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SKLEARN: &str = r#"
import json, sys, warnings
import numpy as np
from sklearn.metrics import precision_recall_fscore_support
warnings.filterwarnings("ignore")
cases = json.load(open(sys.argv[1]))
out = []
for case in cases:
    y = np.array(case["truth"], dtype=np.int64).reshape(case["n"], case["c"])
    p = np.array(case["pred"], dtype=np.int64).reshape(case["n"], case["c"])
    if case.get("cols") is not None:
        y, p = y[:, case["cols"]], p[:, case["cols"]]
    res = {}
    for avg in ["samples", "micro", "macro"]:
        for z in [0.0, 1.0]:
            pr, rc, f, _ = precision_recall_fscore_support(y, p, beta=2, average=avg, zero_division=z)
            res[f"{avg}/{z}"] = [float(pr), float(rc), float(f)]
    out.append(res)
print(json.dumps(out))
"#;

fn random_dense(rng: &mut impl Rng, n: usize, c: usize, density: f64) -> Vec<u8> {
    (0..n * c).map(|_| (rng.random::<f64>() < density) as u8).collect()
}

struct Case {
    name: String,
    n: usize,
    c: usize,
    truth: Vec<u8>,
    pred: Vec<u8>,
    /// Score only these columns (a group), when set.
    group: Option<(Vec<Group>, Group)>,
}

fn cases() -> Vec<Case> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2019);
    let mut out = Vec::new();
    for (k, (n, c, d)) in [(40, 6, 0.3), (100, 25, 0.1), (7, 3, 0.5), (200, 60, 0.05)].into_iter().enumerate() {
        let truth = random_dense(&mut rng, n, c, d);
        let pred = random_dense(&mut rng, n, c, d * 1.5);
        out.push(Case { name: format!("random {k}"), n, c, truth, pred, group: None });
    }
    // Empty prediction rows.
    let (n, c) = (30, 8);
    let truth = random_dense(&mut rng, n, c, 0.3);
    let mut pred = random_dense(&mut rng, n, c, 0.3);
    for i in (0..n).step_by(3) {
        pred[i * c..(i + 1) * c].iter_mut().for_each(|v| *v = 0);
    }
    out.push(Case { name: "empty prediction rows".into(), n, c, truth: truth.clone(), pred, group: None });
    // All-zero truth.
    out.push(Case { name: "all-zero truth".into(), n, c, truth: vec![0; n * c], pred: random_dense(&mut rng, n, c, 0.2), group: None });
    // Some rows with no truth and no prediction.
    let mut t2 = truth.clone();
    let mut p2 = random_dense(&mut rng, n, c, 0.3);
    for i in (0..n).step_by(4) {
        t2[i * c..(i + 1) * c].iter_mut().for_each(|v| *v = 0);
        p2[i * c..(i + 1) * c].iter_mut().for_each(|v| *v = 0);
    }
    out.push(Case { name: "rows without truth or prediction".into(), n, c, truth: t2, pred: p2, group: None });
    // A single active class.
    let mut t3 = vec![0u8; n * c];
    let mut p3 = vec![0u8; n * c];
    for i in 0..n {
        t3[i * c + 2] = (i % 2) as u8;
        p3[i * c + 2] = (i % 3 == 0) as u8;
    }
    out.push(Case { name: "single active class".into(), n, c, truth: t3, pred: p3, group: None });
    out.push(Case { name: "perfect".into(), n, c, truth: truth.clone(), pred: truth.clone(), group: None });
    out.push(Case { name: "nothing predicted".into(), n, c, truth: truth.clone(), pred: vec![0; n * c], group: None });
    out.push(Case { name: "one image".into(), n: 1, c: 4, truth: vec![1, 0, 1, 0], pred: vec![1, 1, 0, 0], group: None });
    // One group's columns.
    let groups: Vec<Group> = (0..c).map(|k| if k < 3 { Group::Culture } else { Group::Tag }).collect();
    let pg = random_dense(&mut rng, n, c, 0.3);
    for g in Group::ALL {
        out.push(Case { name: format!("{} columns", g.as_str()), n, c, truth: truth.clone(), pred: pg.clone(), group: Some((groups.clone(), g)) });
    }
    out
}

#[test]
fn fbeta_precision_and_recall_equal_scikit_learn() {
    let cases = cases();
    let doc: Vec<Value> = cases
        .iter()
        .map(|k| {
            let cols: Option<Vec<usize>> = k.group.as_ref().map(|(gs, g)| (0..k.c).filter(|&i| gs[i] == *g).collect());
            json!({"n": k.n, "c": k.c, "truth": k.truth, "pred": k.pred, "cols": cols})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out: Vec<Value> = serde_json::from_str(common::run_python(SKLEARN, &[path.to_str().unwrap()]).trim()).unwrap();
    let mut checked = 0;
    for (k, want) in cases.iter().zip(&out) {
        let truth = LabelSets::from_dense(k.c, &k.truth);
        let pred = LabelSets::from_dense(k.c, &k.pred);
        for z in [0.0, 1.0] {
            let got = match &k.group {
                None => {
                    let s = scores(&truth, &pred, 2.0, z);
                    vec![("samples", s.samples), ("micro", s.micro), ("macro", s.macro_)]
                }
                Some((gs, g)) => {
                    if z != 0.0 {
                        continue;
                    }
                    let s = group_scores(&truth, &pred, gs, *g, 2.0);
                    vec![("samples", s.samples), ("micro", s.micro), ("macro", s.macro_)]
                }
            };
            for (avg, prf) in got {
                let w = &want[format!("{avg}/{z:.1}")];
                let w: Vec<f64> = w.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                for (what, a, b) in [("precision", prf.precision, w[0]), ("recall", prf.recall, w[1]), ("f2", prf.f, w[2])] {
                    assert!((a - b).abs() < 1e-12, "{}: {avg} {what} zero_division={z}: imet {a} vs scikit-learn {b}", k.name);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} comparisons");
}
