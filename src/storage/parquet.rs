//! Parquet reading and writing of every tabular data product: folds,
//! predictions (OOF, test, ensemble) and training history. Schemas and
//! metadata keys are the contract in `schemas/`; a test compares them.
//! Writes stream through a multipart upload that becomes visible only when
//! complete, and restart from scratch on a transient fault.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use imet::ids::{Fold, ImageId};
//! use imet::storage::parquet::*;
//! use imet::storage::{keys, Store};
//! let store = Store::memory();
//! let preds = Predictions {
//!     ids: vec![ImageId::new("1000483014d91860").unwrap()],
//!     probs: vec![0.9, 0.1, 0.4],
//!     meta: PredictionMeta {
//!         experiment: "e".into(), model: "resnet50".into(), fold: Some(Fold(0)),
//!         kind: PredictionKind::Oof, tta: 2, spec_hash: "h".into(),
//!         class_count: 3, vocabulary_hash: "v".into(),
//!     },
//! };
//! let key = keys::oof("e", "resnet50", Fold(0));
//! let written = write_predictions(&store, &key, &preds).await.unwrap();
//! assert_eq!(Some(written.size), store.size(&key).await.unwrap());
//! assert_eq!(read_predictions(&store, &key).await.unwrap(), preds);
//! # });
//! ```

use super::manifest::OutputEntry;
use super::store::Store;
use crate::ids::{Fold, ImageId};
use crate::error::{Error, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, RecordBatch, StringArray, UInt32Array,
    UInt8Array,
};
use bytes::Bytes;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, SchemaRef, UInt32Type, UInt8Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowSchemaConverter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Rows per record batch / row group when writing predictions.
const PRED_ROWS_PER_GROUP: usize = 8192;

// ---------------------------------------------------------------------------
// Writing plumbing

/// A blocking [`std::io::Write`] that hands fixed-size chunks to the async
/// uploader through a bounded channel, so encoding (on blocking threads) and
/// uploading overlap while memory stays bounded.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

const CHANNEL_CHUNK: usize = 8 << 20;

/// Rows handed to the column writers at a time while encoding a row group.
const ENCODE_SLICE_ROWS: usize = 1024;

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHANNEL_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHANNEL_CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

/// Row groups of a file to write, built on demand so that only the row
/// groups being encoded exist as Arrow arrays at any time.
type BatchFactory = Arc<dyn Fn(usize) -> Result<RecordBatch> + Send + Sync>;

/// Encodes `groups` row groups (built by `make`) into `w`, encoding row
/// groups in parallel a window at a time and appending them in order.
fn encode<W: std::io::Write + Send>(w: W, schema: SchemaRef, props: WriterProperties, groups: usize, make: &BatchFactory) -> Result<()> {
    use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowWriter};
    use rayon::prelude::*;
    let writer = ArrowWriter::try_new(w, schema.clone(), Some(props))?;
    let (mut file, factory) = writer.into_serialized_writer()?;
    let window = rayon::current_num_threads().max(1) * 4;
    let mut index = 0usize;
    while index < groups {
        let end = (index + window).min(groups);
        let encoded: Vec<Vec<ArrowColumnChunk>> = (index..end)
            .into_par_iter()
            .map(|g| -> Result<Vec<ArrowColumnChunk>> {
                let batch = make(g)?.with_schema(schema.clone())?;
                let mut writers = factory.create_column_writers(g)?;
                // The row group goes to its column writers a slice at a time:
                // the levels and encoded values of a slice are a few MB that
                // the allocator reuses, where a whole row group's (tens of MB
                // each) were fresh memory every time, paid for in page faults.
                for start in (0..batch.num_rows()).step_by(ENCODE_SLICE_ROWS) {
                    let slice = batch.slice(start, ENCODE_SLICE_ROWS.min(batch.num_rows() - start));
                    let mut next = writers.iter_mut();
                    for (field, col) in schema.fields().iter().zip(slice.columns()) {
                        for leaf in compute_leaves(field, col)? {
                            next.next().expect("one column writer per leaf column").write(&leaf)?;
                        }
                    }
                }
                writers.into_iter().map(|w| w.close().map_err(Error::from)).collect()
            })
            .collect::<Result<_>>()?;
        for chunks in encoded {
            let mut rg = file.next_row_group()?;
            for c in chunks {
                c.append_to_row_group(&mut rg)?;
            }
            rg.close()?;
        }
        index = end;
    }
    file.finish()?;
    file.flush().map_err(|e| Error::Parquet(e.into()))?;
    std::io::Write::flush(file.inner_mut()).map_err(|e| Error::Parquet(e.into()))?;
    Ok(())
}

/// Streams `batches` into a Parquet object at `key` and describes it.
async fn write_batches(
    store: &Store,
    key: &str,
    schema: SchemaRef,
    props: WriterProperties,
    groups: usize,
    make: BatchFactory,
    meta: &BTreeMap<String, String>,
) -> Result<OutputEntry> {
    // The metadata goes both into the Parquet key-value metadata (props) and
    // into the embedded Arrow schema, where pyarrow's `schema.metadata` finds it.
    let schema = Arc::new(schema.as_ref().clone().with_metadata(meta.clone().into_iter().collect::<std::collections::HashMap<String, String>>()));
    let (size, sha) = store
        .put_streamed(key, |mut w| {
            let schema = schema.clone();
            let props = props.clone();
            let make = make.clone();
            async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
                let encoder = tokio::task::spawn_blocking(move || {
                    encode(ChannelWriter { buf: Vec::with_capacity(CHANNEL_CHUNK), tx }, schema, props, groups, &make)
                });
                // Hashing runs on its own thread, overlapping encoding and upload.
                let (htx, hrx) = std::sync::mpsc::sync_channel::<Bytes>(4);
                let hasher = std::thread::spawn(move || {
                    let mut h = Sha256::new();
                    let mut n = 0u64;
                    for chunk in hrx {
                        h.update(&chunk);
                        n += chunk.len() as u64;
                    }
                    (n, hex::encode(h.finalize()))
                });
                let mut first = true;
                while let Some(chunk) = rx.recv().await {
                    let chunk = Bytes::from(chunk);
                    let _ = htx.send(chunk.clone());
                    // `put` hands the chunk to the upload without copying it.
                    if let Err(e) = w.put(chunk).await {
                        drop(rx);
                        drop(htx);
                        let _ = encoder.await;
                        let _ = w.abort().await;
                        return Err(Error::Store {
                            op: "put_streamed",
                            key: key.to_string(),
                            attempts: 1,
                            source: e,
                        });
                    }
                    if std::mem::take(&mut first) {
                        crate::fault::point("parquet.upload");
                    }
                }
                drop(htx);
                if let Err(e) = encoder.await? {
                    let _ = w.abort().await;
                    return Err(e);
                }
                let (bytes, sha) = hasher.join().expect("the hashing thread does not panic");
                Ok((w, (bytes, sha)))
            }
        })
        .await?;
    Ok(OutputEntry { key: key.to_string(), size, sha256: sha })
}

fn one_batch(batch: RecordBatch) -> BatchFactory {
    Arc::new(move |_| Ok(batch.clone()))
}

fn kv(meta: &BTreeMap<String, String>) -> Option<Vec<KeyValue>> {
    Some(meta.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect())
}

/// Reads a whole Parquet object: its record batches (row groups decoded in
/// parallel, kept in order) and key-value metadata.
async fn read_all(store: &Store, key: &str, what: &'static str) -> Result<Decoded> {
    let bytes = store.get(key).await?;
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let fmt = |reason: String| Error::Format { key: key.clone(), what, reason };
        // The Parquet decoder panics on some damaged files (a negative column
        // offset, a dictionary-encoded page without its dictionary): that is
        // a damaged file, so it is reported as one, naming the key.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_all(&bytes, &fmt)))
            .unwrap_or_else(|panic| Err(fmt(format!("the Parquet decoder failed: {}", panic_message(panic.as_ref())))))
    })
    .await?
}

type Decoded = (SchemaRef, Vec<RecordBatch>, BTreeMap<String, String>);

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown reason".into())
}

/// Decodes every row group of `bytes` (in parallel, kept in order) and the
/// key-value metadata.
fn decode_all(bytes: &Bytes, fmt: &(dyn Fn(String) -> Error + Sync)) -> Result<Decoded> {
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    use rayon::prelude::*;
    let meta = ArrowReaderMetadata::load(bytes, ArrowReaderOptions::new()).map_err(|e| fmt(e.to_string()))?;
    let kv: BTreeMap<String, String> = meta
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter(|kv| kv.key != "ARROW:schema")
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let schema = meta.schema().clone();
    let groups = meta.metadata().num_row_groups();
    let parts: Vec<Vec<RecordBatch>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone())
                .with_row_groups(vec![g])
                .with_batch_size(PRED_ROWS_PER_GROUP)
                .build()
                .map_err(|e| fmt(e.to_string()))?;
            reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| fmt(e.to_string()))
        })
        .collect::<Result<_>>()?;
    Ok((schema, parts.into_iter().flatten().collect(), kv))
}

fn column<'a>(key: &str, what: &'static str, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::Format {
        key: key.to_string(),
        what,
        reason: format!("no column `{name}`; the file does not follow schemas/"),
    })
}

fn ids_from(key: &str, what: &'static str, col: &ArrayRef, out: &mut Vec<ImageId>) -> Result<()> {
    let ids = col.as_string_opt::<i32>().ok_or_else(|| Error::Format {
        key: key.to_string(),
        what,
        reason: format!("column `id` is {}, expected Utf8", col.data_type()),
    })?;
    for i in 0..ids.len() {
        let raw = if ids.is_null(i) { "" } else { ids.value(i) };
        let id = ImageId::new(raw).map_err(|m| Error::Format { key: key.to_string(), what, reason: format!("row {}: {m}", out.len()) })?;
        out.push(id);
    }
    Ok(())
}

/// Refuses a file whose `ids` repeat one, naming it and both rows.
fn check_unique_ids(key: &str, what: &'static str, ids: &[ImageId]) -> Result<()> {
    let mut first: std::collections::HashMap<&str, usize> = std::collections::HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(prev) = first.insert(id.as_str(), row) {
            return Err(Error::Format { key: key.to_string(), what, reason: format!("id `{id}` appears twice (rows {prev} and {row})") });
        }
    }
    Ok(())
}

/// Refuses a column with null values, naming the first null row.
fn check_no_nulls(key: &str, what: &'static str, name: &str, col: &dyn Array, first_row: usize) -> Result<()> {
    match (0..col.len()).find(|&i| col.is_null(i)) {
        None => Ok(()),
        Some(i) => Err(Error::Format { key: key.to_string(), what, reason: format!("row {}: column `{name}` is null", first_row + i) }),
    }
}

// ---------------------------------------------------------------------------
// Predictions

/// Whether predictions are out-of-fold (train images) or test-set ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictionKind {
    Oof,
    Test,
}

impl PredictionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionKind::Oof => "oof",
            PredictionKind::Test => "test",
        }
    }
}

/// Provenance carried in a predictions file's key-value metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PredictionMeta {
    pub experiment: String,
    /// Model name from the spec, or `ensemble`.
    pub model: String,
    /// The fold a fold-model was trained without; `None` for blends of all folds.
    pub fold: Option<Fold>,
    pub kind: PredictionKind,
    /// Number of test-time views averaged (1 = none).
    pub tta: u32,
    pub spec_hash: String,
    pub class_count: usize,
    pub vocabulary_hash: String,
}

/// The metadata keys every predictions file has, in `schemas/` order.
pub const PREDICTION_META_KEYS: [&str; 8] =
    ["class_count", "experiment", "fold", "kind", "model", "spec_hash", "tta", "vocabulary_hash"];

impl PredictionMeta {
    fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("experiment".into(), self.experiment.clone());
        m.insert("model".into(), self.model.clone());
        m.insert("fold".into(), self.fold.map(|f| f.0.to_string()).unwrap_or_else(|| "all".into()));
        m.insert("kind".into(), self.kind.as_str().into());
        m.insert("tta".into(), self.tta.to_string());
        m.insert("spec_hash".into(), self.spec_hash.clone());
        m.insert("class_count".into(), self.class_count.to_string());
        m.insert("vocabulary_hash".into(), self.vocabulary_hash.clone());
        m
    }

    fn from_map(key: &str, m: &BTreeMap<String, String>) -> Result<PredictionMeta> {
        let fmt = |reason: String| Error::Format { key: key.to_string(), what: "predictions file", reason };
        let get = |k: &str| m.get(k).cloned().ok_or_else(|| fmt(format!("metadata key `{k}` missing")));
        let fold = match get("fold")?.as_str() {
            "all" => None,
            s => Some(Fold(s.parse().map_err(|_| fmt(format!("metadata `fold` = `{s}` is not a fold number or `all`")))?)),
        };
        let kind = match get("kind")?.as_str() {
            "oof" => PredictionKind::Oof,
            "test" => PredictionKind::Test,
            s => return Err(fmt(format!("metadata `kind` = `{s}`, expected oof or test"))),
        };
        Ok(PredictionMeta {
            experiment: get("experiment")?,
            model: get("model")?,
            fold,
            kind,
            tta: get("tta")?.parse().map_err(|_| fmt("metadata `tta` is not a number".into()))?,
            spec_hash: get("spec_hash")?,
            class_count: get("class_count")?.parse().map_err(|_| fmt("metadata `class_count` is not a number".into()))?,
            vocabulary_hash: get("vocabulary_hash")?,
        })
    }
}

/// Probabilities for a set of images: row-major `[ids.len(), class_count]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    pub ids: Vec<ImageId>,
    pub probs: Vec<f32>,
    pub meta: PredictionMeta,
}

impl Predictions {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    pub fn classes(&self) -> usize {
        self.meta.class_count
    }

    /// The probabilities of row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        let c = self.meta.class_count;
        &self.probs[r * c..(r + 1) * c]
    }
}

/// The Arrow schema of a predictions file with `classes` columns.
pub fn predictions_schema(classes: usize) -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "probs",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), classes as i32),
            false,
        ),
    ])
}

fn predictions_props(schema: &Schema, meta: BTreeMap<String, String>) -> Result<WriterProperties> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(PRED_ROWS_PER_GROUP))
        .set_write_batch_size(1 << 16)
        .set_data_page_size_limit(4 << 20)
        .set_key_value_metadata(kv(&meta));
    // Byte-stream-split the float leaf: probabilities compress far better
    // split by byte plane than as raw floats or dictionaries.
    let descr = ArrowSchemaConverter::new().convert(schema)?;
    for col in descr.columns() {
        if col.physical_type() == parquet::basic::Type::FLOAT {
            let path = ColumnPath::new(col.path().parts().to_vec());
            b = b
                .set_column_encoding(path.clone(), Encoding::BYTE_STREAM_SPLIT)
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    Ok(b.build())
}

/// Writes predictions to `key` per `schemas/predictions.parquet.json`.
/// Copies the matrix once; [`write_predictions_owned`] does not.
///
/// # Errors
/// [`Error::Format`] when `probs` does not have `ids.len() * class_count`
/// values; storage errors after retries.
pub async fn write_predictions(store: &Store, key: &str, preds: &Predictions) -> Result<OutputEntry> {
    write_predictions_owned(store, key, Arc::new(preds.clone())).await
}

/// [`write_predictions`] for predictions the caller hands over (no copy of
/// the matrix: row groups are encoded in parallel straight from it).
pub async fn write_predictions_owned(store: &Store, key: &str, preds: Arc<Predictions>) -> Result<OutputEntry> {
    let c = preds.meta.class_count;
    if preds.probs.len() != preds.ids.len() * c {
        return Err(Error::Format {
            key: key.to_string(),
            what: "predictions",
            reason: format!("{} values for {} rows x {c} classes", preds.probs.len(), preds.ids.len()),
        });
    }
    let schema = Arc::new(predictions_schema(c));
    let meta = preds.meta.to_map();
    let props = predictions_props(&schema, meta.clone())?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let rows = preds.ids.len();
    let groups = rows.div_ceil(PRED_ROWS_PER_GROUP).max(1);
    // Each row group copies only its own rows, while it is being encoded.
    let shared = preds.clone();
    let batch_schema = schema.clone();
    let make: BatchFactory = Arc::new(move |g| {
        let start = g * PRED_ROWS_PER_GROUP;
        let end = (start + PRED_ROWS_PER_GROUP).min(rows);
        let ids = StringArray::from_iter_values(shared.ids[start..end].iter().map(|i| i.as_str()));
        let values = Float32Array::new(borrowed_f32(&shared, start * c..end * c), None);
        let probs = FixedSizeListArray::try_new(item.clone(), c as i32, Arc::new(values), None)?;
        Ok(RecordBatch::try_new(batch_schema.clone(), vec![Arc::new(ids), Arc::new(probs)])?)
    });
    write_batches(store, key, schema, props, groups, make, &meta).await
}

/// Rows `range` of `preds.probs` as an Arrow buffer that shares the memory
/// instead of copying it: a competition-sized matrix is 480 MB, and copying
/// each row group into fresh memory cost as much time in page faults as the
/// encoding itself.
fn borrowed_f32(preds: &Arc<Predictions>, range: std::ops::Range<usize>) -> arrow::buffer::ScalarBuffer<f32> {
    let slice = &preds.probs[range];
    let ptr = std::ptr::NonNull::from(slice).cast::<u8>();
    // SAFETY: `ptr` points at `slice.len()` initialised, f32-aligned values
    // inside `preds.probs`, which the buffer keeps alive through its owner
    // (an `Arc` of the same `Predictions`) and which nothing mutates while it
    // is shared (the `Arc` gives no mutable access).
    let buffer = unsafe { arrow::buffer::Buffer::from_custom_allocation(ptr, std::mem::size_of_val(slice), preds.clone()) };
    arrow::buffer::ScalarBuffer::new(buffer, 0, slice.len())
}

/// Reads a predictions file written by [`write_predictions`] (or any
/// writer following the schema).
///
/// # Errors
/// [`Error::Format`] naming `key` when a column, type or metadata key is
/// off, an id is malformed or repeated, or a probability is null, NaN or
/// outside [0, 1]; [`Error::NotFound`] when absent.
pub async fn read_predictions(store: &Store, key: &str) -> Result<Predictions> {
    const WHAT: &str = "predictions file";
    let (_schema, batches, meta) = read_all(store, key, WHAT).await?;
    let meta = PredictionMeta::from_map(key, &meta)?;
    let c = meta.class_count;
    if c == 0 {
        return Err(Error::Format { key: key.to_string(), what: WHAT, reason: "metadata `class_count` is 0".into() });
    }
    let mut ids = Vec::new();
    let mut probs: Vec<f32> = Vec::new();
    for b in &batches {
        ids_from(key, WHAT, column(key, WHAT, b, "id")?, &mut ids)?;
        let col = column(key, WHAT, b, "probs")?;
        let list = col.as_fixed_size_list_opt().ok_or_else(|| Error::Format {
            key: key.to_string(),
            what: WHAT,
            reason: format!("column `probs` is {}, expected FixedSizeList<Float32, {c}>", col.data_type()),
        })?;
        if list.value_length() as usize != c || list.null_count() > 0 {
            return Err(Error::Format {
                key: key.to_string(),
                what: WHAT,
                reason: format!("column `probs` has {} values per row (metadata says {c}) or null rows", list.value_length()),
            });
        }
        let values = list.values().as_primitive_opt::<Float32Type>().ok_or_else(|| Error::Format {
            key: key.to_string(),
            what: WHAT,
            reason: "probabilities are not Float32".into(),
        })?;
        let first_row = ids.len() - list.len();
        let values = values.slice(list.offset() * c, list.len() * c);
        check_no_nulls(key, WHAT, "probs", &values, 0).map_err(|_| Error::Format {
            key: key.to_string(),
            what: WHAT,
            reason: format!("null probabilities in rows {first_row}..{}", ids.len()),
        })?;
        let values = values.values();
        if let Some(i) = values.iter().position(|p| !(0.0..=1.0).contains(p)) {
            let row = first_row + i / c;
            return Err(Error::Format {
                key: key.to_string(),
                what: WHAT,
                reason: format!("row {row} (id `{}`): probability {} at class {} is not in [0, 1]; predict again", ids[row], values[i], i % c),
            });
        }
        probs.extend_from_slice(values);
    }
    check_unique_ids(key, WHAT, &ids)?;
    Ok(Predictions { ids, probs, meta })
}

// ---------------------------------------------------------------------------
// Scored ids (a stage's data edits: dropped images, pseudo-labelled images)

/// Image ids with one score each (an error, a confidence), and what they
/// are in the metadata: `schemas/scored_ids.parquet.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredIds {
    pub ids: Vec<ImageId>,
    pub scores: Vec<f32>,
    /// At least `what` (`dropped`, `pseudo_labels`) and `score` (what the
    /// score measures); anything else the writer records.
    pub meta: BTreeMap<String, String>,
}

/// The metadata keys every scored-ids file has.
pub const SCORED_IDS_META_KEYS: [&str; 2] = ["score", "what"];

pub fn scored_ids_schema() -> Schema {
    Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("score", DataType::Float32, false)])
}

/// Writes `ids` with their scores to `key`.
///
/// # Errors
/// [`Error::Format`] when the lengths differ or a metadata key is missing;
/// storage errors.
pub async fn write_scored_ids(store: &Store, key: &str, s: &ScoredIds) -> Result<OutputEntry> {
    let fmt = |reason: String| Error::Format { key: key.to_string(), what: "scored ids", reason };
    if s.ids.len() != s.scores.len() {
        return Err(fmt(format!("{} ids but {} scores", s.ids.len(), s.scores.len())));
    }
    if let Some(k) = SCORED_IDS_META_KEYS.iter().find(|k| !s.meta.contains_key(**k)) {
        return Err(fmt(format!("metadata key `{k}` missing")));
    }
    let schema = Arc::new(scored_ids_schema());
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?)).set_key_value_metadata(kv(&s.meta)).build();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(s.ids.iter().map(|i| i.as_str()))),
            Arc::new(Float32Array::from(s.scores.clone())),
        ],
    )?;
    write_batches(store, key, schema, props, 1, one_batch(batch), &s.meta).await
}

/// Reads a file written by [`write_scored_ids`].
///
/// # Errors
/// [`Error::Format`] naming `key` for a wrong column or missing metadata;
/// [`Error::NotFound`] when absent.
pub async fn read_scored_ids(store: &Store, key: &str) -> Result<ScoredIds> {
    const WHAT: &str = "scored ids file";
    let (_s, batches, meta) = read_all(store, key, WHAT).await?;
    let fmt = |reason: String| Error::Format { key: key.to_string(), what: WHAT, reason };
    if let Some(k) = SCORED_IDS_META_KEYS.iter().find(|k| !meta.contains_key(**k)) {
        return Err(fmt(format!("metadata key `{k}` missing")));
    }
    let (mut ids, mut scores) = (Vec::new(), Vec::new());
    for b in &batches {
        ids_from(key, WHAT, column(key, WHAT, b, "id")?, &mut ids)?;
        let c = column(key, WHAT, b, "score")?;
        let c = c.as_primitive_opt::<Float32Type>().ok_or_else(|| fmt(format!("column `score` is {}, expected Float32", c.data_type())))?;
        scores.extend_from_slice(c.values());
    }
    Ok(ScoredIds { ids, scores, meta })
}

// ---------------------------------------------------------------------------
// Folds

/// The metadata keys of `folds.parquet`.
pub const FOLDS_META_KEYS: [&str; 3] = ["k", "method", "seed"];

/// How folds were assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldsMeta {
    pub k: u8,
    pub seed: u64,
    /// e.g. `iterative-stratification`.
    pub method: String,
}

pub fn folds_schema() -> Schema {
    Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("fold", DataType::UInt8, false)])
}

/// Writes `folds.parquet`: one row per training image.
pub async fn write_folds(store: &Store, key: &str, ids: &[ImageId], folds: &[Fold], meta: &FoldsMeta) -> Result<OutputEntry> {
    if ids.len() != folds.len() {
        return Err(Error::Format { key: key.to_string(), what: "folds", reason: format!("{} ids but {} folds", ids.len(), folds.len()) });
    }
    let schema = Arc::new(folds_schema());
    let mut m = BTreeMap::new();
    m.insert("k".to_string(), meta.k.to_string());
    m.insert("seed".to_string(), meta.seed.to_string());
    m.insert("method".to_string(), meta.method.clone());
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_key_value_metadata(kv(&m))
        .build();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| i.as_str()))),
            Arc::new(UInt8Array::from_iter_values(folds.iter().map(|f| f.0))),
        ],
    )?;
    write_batches(store, key, schema, props, 1, one_batch(batch), &m).await
}

/// Reads `folds.parquet`.
pub async fn read_folds(store: &Store, key: &str) -> Result<(Vec<ImageId>, Vec<Fold>, FoldsMeta)> {
    const WHAT: &str = "folds file";
    let (_s, batches, meta) = read_all(store, key, WHAT).await?;
    let fmt = |reason: String| Error::Format { key: key.to_string(), what: WHAT, reason };
    let mut ids = Vec::new();
    let mut folds = Vec::new();
    for b in &batches {
        let first_row = ids.len();
        ids_from(key, WHAT, column(key, WHAT, b, "id")?, &mut ids)?;
        let f = column(key, WHAT, b, "fold")?;
        let f = f.as_primitive_opt::<UInt8Type>().ok_or_else(|| fmt(format!("column `fold` is {}, expected UInt8", f.data_type())))?;
        check_no_nulls(key, WHAT, "fold", f, first_row)?;
        folds.extend(f.values().iter().map(|&v| Fold(v)));
    }
    check_unique_ids(key, WHAT, &ids)?;
    let get = |k: &str| meta.get(k).cloned().ok_or_else(|| fmt(format!("metadata key `{k}` missing")));
    let meta = FoldsMeta {
        k: get("k")?.parse().map_err(|_| fmt("metadata `k` is not a number".into()))?,
        seed: get("seed")?.parse().map_err(|_| fmt("metadata `seed` is not a number".into()))?,
        method: get("method")?,
    };
    if let Some(bad) = folds.iter().position(|f| f.0 >= meta.k) {
        return Err(fmt(format!("row {bad} (id {}) has fold {} but k = {}", ids[bad], folds[bad], meta.k)));
    }
    Ok((ids, folds, meta))
}

// ---------------------------------------------------------------------------
// Training history

/// One epoch of a training job. In JSON (checkpoints' loop state) a float
/// that is not finite is written as `null` and read back as NaN.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: u32,
    /// Training phase name (e.g. `head`, `full`, `tags`); `main` when single-phase.
    pub phase: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub valid_loss: f64,
    /// F2 per image at the best global threshold on the validation fold.
    #[serde(deserialize_with = "f64_or_nan")]
    pub valid_f2: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub valid_threshold: f64,
    /// The same over the culture attributes alone, and over the tags alone
    /// (a phase that trains one group keeps the epoch best on it).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub valid_f2_culture: f64,
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub valid_f2_tag: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_images_per_sec: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// A float that JSON holds as a number or as `null` (how serde_json writes
/// NaN and the infinities), `null` read as NaN.
///
/// # Errors
/// Anything else than a number or `null`.
pub fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The metadata keys of `history.parquet`.
pub const HISTORY_META_KEYS: [&str; 4] = ["experiment", "fold", "model", "spec_hash"];

pub fn history_schema() -> Schema {
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("phase", DataType::Utf8, false),
        f("train_loss"),
        f("valid_loss"),
        f("valid_f2"),
        f("valid_threshold"),
        f("valid_f2_culture"),
        f("valid_f2_tag"),
        f("lr"),
        f("train_images_per_sec"),
        f("seconds"),
    ])
}

/// Writes `history.parquet`.
pub async fn write_history(
    store: &Store,
    key: &str,
    records: &[EpochRecord],
    experiment: &str,
    model: &str,
    fold: Fold,
    spec_hash: &str,
) -> Result<OutputEntry> {
    let schema = Arc::new(history_schema());
    let mut m = BTreeMap::new();
    m.insert("experiment".to_string(), experiment.to_string());
    m.insert("model".to_string(), model.to_string());
    m.insert("fold".to_string(), fold.0.to_string());
    m.insert("spec_hash".to_string(), spec_hash.to_string());
    let props = WriterProperties::builder().set_key_value_metadata(kv(&m)).build();
    let f64col = |g: fn(&EpochRecord) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(records.iter().map(g))) };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt32Array::from_iter_values(records.iter().map(|r| r.epoch))),
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.phase.as_str()))),
            f64col(|r| r.train_loss),
            f64col(|r| r.valid_loss),
            f64col(|r| r.valid_f2),
            f64col(|r| r.valid_threshold),
            f64col(|r| r.valid_f2_culture),
            f64col(|r| r.valid_f2_tag),
            f64col(|r| r.lr),
            f64col(|r| r.train_images_per_sec),
            f64col(|r| r.seconds),
        ],
    )?;
    write_batches(store, key, schema, props, 1, one_batch(batch), &m).await
}

/// Reads `history.parquet`.
pub async fn read_history(store: &Store, key: &str) -> Result<Vec<EpochRecord>> {
    const WHAT: &str = "history file";
    let (_s, batches, _meta) = read_all(store, key, WHAT).await?;
    let fmt = |reason: String| Error::Format { key: key.to_string(), what: WHAT, reason };
    let mut out = Vec::new();
    for b in &batches {
        for (name, col) in b.schema().fields().iter().zip(b.columns()) {
            check_no_nulls(key, WHAT, name.name(), col.as_ref(), out.len())?;
        }
        let f64s = |name: &str| -> Result<Vec<f64>> {
            let c = column(key, WHAT, b, name)?;
            Ok(c.as_primitive_opt::<Float64Type>().ok_or_else(|| fmt(format!("column `{name}` is not Float64")))?.values().to_vec())
        };
        let epoch = column(key, WHAT, b, "epoch")?;
        let epoch = epoch.as_primitive_opt::<UInt32Type>().ok_or_else(|| fmt("column `epoch` is not UInt32".into()))?;
        let phase = column(key, WHAT, b, "phase")?;
        let phase = phase.as_string_opt::<i32>().ok_or_else(|| fmt("column `phase` is not Utf8".into()))?;
        let (tl, vl, vf, vt, lr, ips, s) = (
            f64s("train_loss")?,
            f64s("valid_loss")?,
            f64s("valid_f2")?,
            f64s("valid_threshold")?,
            f64s("lr")?,
            f64s("train_images_per_sec")?,
            f64s("seconds")?,
        );
        // Histories written before the per-group columns read as NaN there.
        let group = |name: &str| if b.column_by_name(name).is_some() { f64s(name) } else { Ok(vec![f64::NAN; b.num_rows()]) };
        let (vc, vg) = (group("valid_f2_culture")?, group("valid_f2_tag")?);
        for i in 0..b.num_rows() {
            out.push(EpochRecord {
                epoch: epoch.value(i),
                phase: phase.value(i).to_string(),
                train_loss: tl[i],
                valid_loss: vl[i],
                valid_f2: vf[i],
                valid_threshold: vt[i],
                valid_f2_culture: vc[i],
                valid_f2_tag: vg[i],
                lr: lr[i],
                train_images_per_sec: ips[i],
                seconds: s[i],
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Contracts

/// The contract form of a schema, as stored in `schemas/*.json`: fields
/// (name, type, nullable) and the sorted metadata keys.
pub fn contract(schema: &Schema, meta_keys: &[&str]) -> serde_json::Value {
    fn ty(t: &DataType) -> String {
        match t {
            DataType::FixedSizeList(f, _) => format!("FixedSizeList<{}, C>", ty(f.data_type())),
            other => format!("{other}"),
        }
    }
    let fields: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": ty(f.data_type()), "nullable": f.is_nullable()}))
        .collect();
    let mut keys: Vec<&str> = meta_keys.to_vec();
    keys.sort_unstable();
    serde_json::json!({"fields": fields, "metadata_keys": keys})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(c: usize) -> PredictionMeta {
        PredictionMeta {
            experiment: "exp".into(),
            model: "resnet34".into(),
            fold: Some(Fold(2)),
            kind: PredictionKind::Oof,
            tta: 2,
            spec_hash: "abc".into(),
            class_count: c,
            vocabulary_hash: "v".into(),
        }
    }

    fn id(i: usize) -> ImageId {
        ImageId::new(&format!("{i:016x}")).unwrap()
    }

    #[tokio::test]
    async fn predictions_round_trip_across_row_groups() {
        let store = Store::memory();
        let n = PRED_ROWS_PER_GROUP + 17;
        let c = 5;
        let preds = Predictions {
            ids: (0..n).map(id).collect(),
            probs: (0..n * c).map(|i| (i % 97) as f32 / 97.0).collect(),
            meta: meta(c),
        };
        let entry = write_predictions(&store, "p.parquet", &preds).await.unwrap();
        assert_eq!(Some(entry.size), store.size("p.parquet").await.unwrap());
        assert_eq!(read_predictions(&store, "p.parquet").await.unwrap(), preds);
    }

    #[tokio::test]
    async fn folds_and_history_round_trip() {
        let store = Store::memory();
        let ids: Vec<ImageId> = (0..10).map(id).collect();
        let folds: Vec<Fold> = (0..10).map(|i| Fold((i % 3) as u8)).collect();
        let fm = FoldsMeta { k: 3, seed: 7, method: "iterative-stratification".into() };
        write_folds(&store, "f.parquet", &ids, &folds, &fm).await.unwrap();
        assert_eq!(read_folds(&store, "f.parquet").await.unwrap(), (ids, folds, fm));

        let recs = vec![EpochRecord {
            epoch: 0,
            phase: "main".into(),
            train_loss: 0.5,
            valid_loss: 0.4,
            valid_f2: 0.3,
            valid_threshold: 0.2, valid_f2_culture: 0.25, valid_f2_tag: 0.5,
            lr: 1e-3,
            train_images_per_sec: 10.0,
            seconds: 1.5,
        }];
        write_history(&store, "h.parquet", &recs, "e", "m", Fold(0), "s").await.unwrap();
        assert_eq!(read_history(&store, "h.parquet").await.unwrap(), recs);
    }

    #[tokio::test]
    async fn a_wrong_value_count_is_refused_before_writing() {
        let store = Store::memory();
        let preds = Predictions { ids: vec![id(1)], probs: vec![0.5; 3], meta: meta(5) };
        assert!(write_predictions(&store, "p.parquet", &preds).await.is_err());
        assert!(!store.exists("p.parquet").await.unwrap());
    }

    #[tokio::test]
    async fn a_file_that_is_not_parquet_names_its_key() {
        let store = Store::memory();
        store.put("bad.parquet", "not parquet").await.unwrap();
        let err = read_predictions(&store, "bad.parquet").await.unwrap_err();
        assert!(err.to_string().contains("bad.parquet"), "{err}");
    }
}


