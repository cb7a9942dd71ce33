//! Reads and validates the ensemble's member files
//! (`runs/{exp}/models/{model}/fold={k}/oof.parquet` and `test.parquet`),
//! streaming each file record batch by record batch into a caller's matrix
//! so no member is ever held twice. Checks, for every file: the schema and
//! metadata (kind, model, fold, class count, vocabulary hash), that every id
//! belongs where it should (OOF ids in the fold's rows of `folds.parquet`,
//! once per model; test ids those of `sample_submission.csv`, once per
//! file) and that every probability is finite and in [0, 1]. Each failure
//! names the file and the first bad id.

use crate::ids::{Fold, ImageId};
use crate::error::{Error, Result};
use crate::storage::parquet::PredictionKind;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use std::collections::HashMap;

/// What a member file must contain.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    pub kind: PredictionKind,
    pub model: &'a str,
    pub fold: Fold,
    pub classes: usize,
    pub vocabulary_hash: &'a str,
}

/// Row positions of the ids a file may contain, and (for OOF files) the
/// fold of each row.
pub struct IdIndex<'a> {
    pub rows: HashMap<&'a str, u32>,
    pub ids: &'a [ImageId],
    /// Fold of each row (OOF only).
    pub fold: Option<&'a [u8]>,
}

impl<'a> IdIndex<'a> {
    pub fn new(ids: &'a [ImageId], fold: Option<&'a [u8]>) -> IdIndex<'a> {
        IdIndex { rows: ids.iter().enumerate().map(|(i, id)| (id.as_str(), i as u32)).collect(), ids, fold }
    }
}

fn bad(key: &str, message: String) -> Error {
    Error::Member { key: key.to_string(), message }
}

/// Checks the file's key-value metadata against `exp`.
fn check_meta(key: &str, meta: &HashMap<String, String>, exp: &Expected<'_>) -> Result<()> {
    let get = |k: &str| {
        meta.get(k).map(|s| s.as_str()).ok_or_else(|| bad(key, format!("metadata key `{k}` is missing; the file does not follow schemas/predictions.parquet.json")))
    };
    let kind = get("kind")?;
    if kind != exp.kind.as_str() {
        return Err(bad(key, format!("metadata says kind `{kind}`, expected `{}`", exp.kind.as_str())));
    }
    let model = get("model")?;
    if model != exp.model {
        return Err(bad(key, format!("metadata says model `{model}`, expected `{}`; was the file copied from another model?", exp.model)));
    }
    let fold = get("fold")?;
    if fold != exp.fold.0.to_string() {
        return Err(bad(key, format!("metadata says fold `{fold}`, expected {}", exp.fold)));
    }
    let classes = get("class_count")?;
    if classes != exp.classes.to_string() {
        return Err(bad(key, format!("has {classes} classes but labels.csv defines {}; predict again with this vocabulary", exp.classes)));
    }
    let vh = get("vocabulary_hash")?;
    if vh != exp.vocabulary_hash {
        return Err(bad(
            key,
            format!("vocabulary hash {vh} differs from labels.csv's {}; files from different vocabularies cannot be blended", exp.vocabulary_hash),
        ));
    }
    Ok(())
}

/// One decoded row group: row positions and the probabilities in file order.
type Decoded = (Vec<u32>, Vec<f32>);

/// Decodes row group `rg` of the file, mapping ids through `index`.
fn decode_group(key: &str, bytes: &Bytes, (rg, first_row, group_rows): (usize, usize, usize), index: &IdIndex<'_>, exp: &Expected<'_>) -> Result<Decoded> {
    let fmt = |e: String| bad(key, format!("unreadable Parquet: {e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .map_err(|e| fmt(e.to_string()))?
        .with_row_groups(vec![rg])
        .with_batch_size(1024)
        .build()
        .map_err(|e| fmt(e.to_string()))?;
    let c = exp.classes;
    // Exact capacity: no doubling copies of a row group's probabilities
    // (within reason: the row count is the file's claim).
    let reserve = group_rows.min(1 << 16);
    let (mut rows, mut probs) = (Vec::with_capacity(reserve), Vec::with_capacity(reserve.saturating_mul(c)));
    let mut file_row = first_row;
    for batch in reader {
        let batch = batch.map_err(|e| fmt(e.to_string()))?;
        let ids = batch.column_by_name("id").and_then(|a| a.as_string_opt::<i32>().cloned()).ok_or_else(|| bad(key, "no Utf8 column `id`".into()))?;
        let list = batch
            .column_by_name("probs")
            .and_then(|a| a.as_fixed_size_list_opt().cloned())
            .ok_or_else(|| bad(key, format!("no column `probs` of type FixedSizeList<Float32, {c}>")))?;
        if list.value_length() as usize != c || list.null_count() > 0 || ids.null_count() > 0 {
            return Err(bad(key, format!("`probs` has {} values per row (expected {c}) or null rows", list.value_length())));
        }
        let values = list.values().as_primitive_opt::<Float32Type>().ok_or_else(|| bad(key, "`probs` values are not Float32".into()))?;
        let off = list.offset() * c;
        let values = &values.values()[off..off + list.len() * c];
        for r in 0..ids.len() {
            let id = ids.value(r);
            let row = &values[r * c..(r + 1) * c];
            if let Some(k) = row.iter().position(|p| !(*p >= 0.0 && *p <= 1.0)) {
                return Err(bad(key, format!("row {} (id `{id}`): probability {} at class {k} is not in [0, 1]; predict this fold again", file_row + r, row[k])));
            }
            let Some(&pos) = index.rows.get(id) else {
                let place = if exp.kind == PredictionKind::Oof { "data/train.csv" } else { "data/sample_submission.csv" };
                return Err(bad(key, format!("row {} (id `{id}`): not an image of {place}", file_row + r)));
            };
            if let Some(fold) = index.fold {
                if fold[pos as usize] != exp.fold.0 {
                    return Err(bad(
                        key,
                        format!(
                            "row {} (id `{id}`): folds.parquet puts this image in fold {}, not {}; the model may have trained on it",
                            file_row + r,
                            fold[pos as usize],
                            exp.fold
                        ),
                    ));
                }
            }
            rows.push(pos);
        }
        probs.extend_from_slice(values);
        file_row += ids.len();
    }
    Ok((rows, probs))
}

/// Streams the member file at `key` (already fetched as `bytes`): checks
/// it against `exp` and `index`, then calls `sink(row, probs)` for each of
/// its rows, where `row` is the position in `index`. `seen` marks rows
/// already delivered (across a model's OOF files, or within one test file).
/// Row groups are decoded in parallel, a few at a time. Returns the file's
/// `tta` metadata.
///
/// # Errors
/// [`Error::Member`] naming `key` and the first bad id: metadata mismatch,
/// unknown id, id in the wrong fold, duplicate id, value outside [0, 1].
pub fn stream(key: &str, bytes: Bytes, exp: &Expected<'_>, index: &IdIndex<'_>, seen: &mut [bool], sink: impl FnMut(usize, &[f32])) -> Result<u32> {
    // The Parquet decoder panics on some damaged files: report a damaged file.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream_checked(key, bytes, exp, index, seen, sink))).unwrap_or_else(|panic| {
        Err(bad(key, format!("unreadable Parquet: the decoder failed: {}", crate::storage::parquet::panic_message(panic.as_ref()))))
    })
}

fn stream_checked(
    key: &str,
    bytes: Bytes,
    exp: &Expected<'_>,
    index: &IdIndex<'_>,
    seen: &mut [bool],
    mut sink: impl FnMut(usize, &[f32]),
) -> Result<u32> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(|e| bad(key, format!("unreadable Parquet: {e}")))?;
    let meta: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default())).collect())
        .unwrap_or_default();
    check_meta(key, &meta, exp)?;
    let tta: u32 = meta.get("tta").and_then(|t| t.parse().ok()).unwrap_or(1);
    let groups: Vec<(usize, usize, usize)> = {
        let md = builder.metadata();
        let mut first = 0usize;
        (0..md.num_row_groups())
            .map(|g| {
                let f = first;
                let rows = md.row_group(g).num_rows() as usize;
                first += rows;
                (g, f, rows)
            })
            .collect()
    };
    drop(builder);
    let c = exp.classes;
    let mut delivered = 0;
    let par = rayon::current_num_threads().max(1);
    for wave in groups.chunks(par) {
        let decoded: Vec<Result<Decoded>> = wave.par_iter().map(|&g| decode_group(key, &bytes, g, index, exp)).collect();
        for d in decoded {
            let (rows, probs) = d?;
            for (r, &pos) in rows.iter().enumerate() {
                if std::mem::replace(&mut seen[pos as usize], true) {
                    return Err(bad(key, format!("id `{}` appears twice for this member (again at row {})", index.ids[pos as usize], delivered + r)));
                }
                sink(pos as usize, &probs[r * c..(r + 1) * c]);
            }
            delivered += rows.len();
        }
    }
    Ok(tta)
}

/// The first row not in `seen`, as an error naming `what` and the id.
///
/// # Errors
/// [`Error::Member`] when some row was never delivered.
pub fn check_covered(what: &str, seen: &[bool], ids: &[ImageId], hint: &str) -> Result<()> {
    match seen.iter().position(|s| !s) {
        None => Ok(()),
        Some(i) => Err(Error::Member {
            key: what.to_string(),
            message: format!("id `{}` has no prediction ({} of {} missing); {hint}", ids[i], seen.iter().filter(|s| !**s).count(), ids.len()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::parquet::{write_predictions, PredictionMeta, Predictions};
    use crate::storage::Store;

    fn ids(n: usize) -> Vec<ImageId> {
        (0..n).map(|i| ImageId::new(&format!("{:016x}", 0xa000 + i)).unwrap()).collect()
    }

    async fn file(probs: Vec<f32>, ids: Vec<ImageId>, fold: u8) -> Bytes {
        let store = Store::memory();
        let meta = PredictionMeta {
            experiment: "e".into(),
            model: "m".into(),
            fold: Some(Fold(fold)),
            kind: PredictionKind::Oof,
            tta: 1,
            spec_hash: "s".into(),
            class_count: 2,
            vocabulary_hash: "v".into(),
        };
        write_predictions(&store, "f.parquet", &Predictions { ids, probs, meta }).await.unwrap();
        store.get("f.parquet").await.unwrap()
    }

    fn exp() -> Expected<'static> {
        Expected { kind: PredictionKind::Oof, model: "m", fold: Fold(0), classes: 2, vocabulary_hash: "v" }
    }

    #[tokio::test]
    async fn rows_land_at_their_index_positions() {
        let all = ids(3);
        let bytes = file(vec![0.1, 0.2, 0.3, 0.4], vec![all[2].clone(), all[0].clone()], 0).await;
        let folds = [0u8, 1, 0];
        let index = IdIndex::new(&all, Some(&folds));
        let mut seen = vec![false; 3];
        let mut got = vec![0f32; 6];
        stream("f.parquet", bytes, &exp(), &index, &mut seen, |r, p| got[r * 2..r * 2 + 2].copy_from_slice(p)).unwrap();
        assert_eq!(got, vec![0.3, 0.4, 0.0, 0.0, 0.1, 0.2]);
        let err = check_covered("model m", &seen, &all, "x").unwrap_err().to_string();
        assert!(err.contains(all[1].as_str()), "{err}");
    }

    #[tokio::test]
    async fn each_bad_input_names_the_file_and_the_first_bad_id() {
        let all = ids(3);
        let folds = [0u8, 1, 0];
        let index = IdIndex::new(&all, Some(&folds));
        let cases = [
            (vec![0.1, f32::NAN, 0.3, 0.4], vec![all[0].clone(), all[2].clone()], all[0].clone(), "not in [0, 1]"),
            (vec![0.1, 0.2, 0.3, 1.5], vec![all[0].clone(), all[2].clone()], all[2].clone(), "not in [0, 1]"),
            (vec![0.1, 0.2, 0.3, 0.4], vec![all[0].clone(), all[1].clone()], all[1].clone(), "fold 1"),
            (vec![0.1, 0.2, 0.3, 0.4], vec![all[2].clone(), all[2].clone()], all[2].clone(), "twice"),
            (vec![0.1, 0.2, 0.3, 0.4], vec![all[0].clone(), ids(9)[8].clone()], ids(9)[8].clone(), "train.csv"),
        ];
        for (probs, rows, bad_id, needle) in cases {
            let bytes = file(probs, rows, 0).await;
            let mut seen = vec![false; 3];
            let err = stream("runs/e/m/oof.parquet", bytes, &exp(), &index, &mut seen, |_, _| {}).unwrap_err().to_string();
            assert!(err.contains("runs/e/m/oof.parquet") && err.contains(bad_id.as_str()) && err.contains(needle), "{err}");
        }
    }

    #[tokio::test]
    async fn metadata_mismatches_are_refused() {
        let all = ids(2);
        let index = IdIndex::new(&all, None);
        let bytes = file(vec![0.1; 4], all.clone(), 1).await;
        let mut seen = vec![false; 2];
        let err = stream("k", bytes.clone(), &exp(), &index, &mut seen, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("fold"), "{err}");
        let e = Expected { fold: Fold(1), vocabulary_hash: "other", ..exp() };
        let err = stream("k", bytes, &e, &index, &mut seen, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("vocabulary hash"), "{err}");
    }
}
