//! TensorBoard event files of a training history: the bytes of
//! `runs/{exp}/models/{model}/fold={k}/tensorboard/events.out.tfevents.*`,
//! one scalar event per epoch, so `tensorboard --logdir runs/{exp}/models`
//! draws every fold's learning curves. A pure function of the history (no
//! store, no clock): the train job rewrites the whole object after each
//! epoch through the store, which works the same on a local folder and on
//! S3 (TensorBoard reads `s3://` log folders when its S3 file system is
//! installed, e.g. with `pip install tensorflow-io`).
//!
//! # Format
//! A file is a sequence of TFRecord records, each framed as
//!
//! ```text
//! u64 little-endian   length of the data
//! u32 little-endian   masked CRC32C of the 8 length bytes
//! [u8; length]        data: one serialized `tensorflow.Event` protobuf
//! u32 little-endian   masked CRC32C of the data
//! ```
//!
//! where `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).
//! The first event holds only `file_version = "brain.Event:2"`; each
//! following one holds `step` = epoch (1-based), `wall_time` and a
//! `Summary` with one `simple_value` per tag in [`TAGS`].
//!
//! # Why hand-written
//! The Rust crates that write this format do not fit: `tensorboard-rs`
//! (last release 2022, its repository marked inactive) and `tfrecord`
//! append to a local file with the current time in every event and in the
//! file name, so neither writes through an object store nor gives the same
//! bytes twice; `tensorboard-rs` also pulls in `protobuf` 2 and an old
//! `image`. What is needed here is three protobuf messages (derived below
//! with `prost`, field numbers from TensorBoard's `event.proto` and
//! `summary.proto`) and the record framing above (`crc32c` crate for the
//! checksum): about a hundred lines, tested against TensorBoard's own
//! reader and writer in `tests/it/tensorboard.rs`.
//!
//! # Deterministic bytes
//! Nothing in the file comes from the clock or the host: the wall time of
//! epoch `e` is the sum of the `seconds` of epochs `1..=e` (seconds since
//! the job's first epoch began, counted from the Unix epoch), and the file
//! name carries timestamp `0000000000` and the run's label instead of the
//! host name (TensorBoard picks up any file whose name contains
//! `tfevents`). So the same history gives the same bytes, a resumed job
//! rewrites exactly what an uninterrupted one would, and the file for
//! epochs `1..=n` is a byte prefix of the file for `1..=n+1`: replacing the
//! object after each epoch looks to TensorBoard's Python reader (which
//! reopens the file by name at its last offset) like an append. Its fast
//! Rust loader keeps the file it first opened, so a live view needs
//! `tensorboard --detect_file_replacement` (or `--load_fast=false`); a
//! fresh start reads everything either way. TensorBoard's "relative" time
//! axis shows training time; its "wall" axis shows 1970-01-01 plus it.

use crate::error::{Error, Result};
use crate::storage::parquet::EpochRecord;
use prost::Message;

/// The scalar tags written per epoch, in order, with what each holds.
pub const TAGS: [(&str, &str); 9] = [
    ("loss/train", "mean training loss over the epoch's batches"),
    ("loss/valid", "mean validation loss on the held-out fold"),
    ("f2/valid", "F2 per image on the held-out fold at the best global threshold"),
    ("f2/valid_culture", "the same F2 over the culture attributes alone"),
    ("f2/valid_tag", "the same F2 over the tag attributes alone"),
    ("threshold/valid", "the global threshold that gave f2/valid"),
    ("lr", "learning rate at the end of the epoch"),
    ("speed/images_per_sec", "training images per second"),
    ("time/epoch_seconds", "wall seconds of the epoch, validation included"),
];

/// The `file_version` TensorBoard expects in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// The values of [`TAGS`] for one epoch, in the same order.
pub fn scalars(r: &EpochRecord) -> [f64; 9] {
    [r.train_loss, r.valid_loss, r.valid_f2, r.valid_f2_culture, r.valid_f2_tag, r.valid_threshold, r.lr, r.train_images_per_sec, r.seconds]
}

/// The name of the events file of a run: `events.out.tfevents.0000000000.{label}`
/// with `label` reduced to `[A-Za-z0-9._-]` (others become `_`).
pub fn file_name(run_label: &str) -> String {
    let label: String = run_label.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    format!("events.out.tfevents.0000000000.{label}")
}

/// The bytes of a TensorBoard events file holding `records`: the version
/// event, then one event per record with every tag of [`TAGS`]. Scalars
/// are stored as `f32`, as TensorBoard's `simple_value` is.
pub fn events_from_history(records: &[EpochRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + records.len() * 200);
    let version = Event { wall_time: 0.0, step: 0, what: Some(What::FileVersion(FILE_VERSION.to_string())) };
    frame(&mut out, &version.encode_to_vec());
    let mut wall = 0.0f64;
    for r in records {
        wall += if r.seconds.is_finite() && r.seconds > 0.0 { r.seconds } else { 0.0 };
        let value = TAGS
            .iter()
            .zip(scalars(r))
            .map(|((tag, _), v)| Value { tag: (*tag).to_string(), value: Some(ValueKind::SimpleValue(v as f32)) })
            .collect();
        let event = Event { wall_time: wall, step: i64::from(r.epoch), what: Some(What::Summary(Summary { value })) };
        frame(&mut out, &event.encode_to_vec());
    }
    out
}

/// One scalar event read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarEvent {
    pub step: i64,
    pub wall_time: f64,
    /// `(tag, value)` in file order.
    pub values: Vec<(String, f32)>,
}

/// Parses an events file: checks every record's framing and checksums and
/// the leading version event; returns the summary events with scalar values.
///
/// # Errors
/// [`Error::Format`] naming `key`, the record and byte offset at fault.
pub fn read_events(key: &str, bytes: &[u8]) -> Result<Vec<ScalarEvent>> {
    let fmt = |reason: String| Error::Format { key: key.to_string(), what: "TensorBoard events file", reason };
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut index = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return Err(fmt(format!("record {index} at byte {at}: {} trailing bytes, too few for a record header", rest.len())));
        }
        let len_bytes: [u8; 8] = rest[..8].try_into().expect("slice of 8 bytes");
        let len = u64::from_le_bytes(len_bytes);
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().expect("slice of 4 bytes"));
        if len_crc != masked_crc(&len_bytes) {
            return Err(fmt(format!("record {index} at byte {at}: length checksum mismatch (truncated or corrupted file)")));
        }
        let len = usize::try_from(len).ok().filter(|l| 12 + l + 4 <= rest.len()).ok_or_else(|| {
            fmt(format!("record {index} at byte {at}: length {len} runs past the end of the file ({} bytes left)", rest.len()))
        })?;
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("slice of 4 bytes"));
        if data_crc != masked_crc(data) {
            return Err(fmt(format!("record {index} at byte {at}: data checksum mismatch (corrupted file)")));
        }
        let event = Event::decode(data).map_err(|e| fmt(format!("record {index} at byte {at}: not an Event protobuf: {e}")))?;
        match (index, event.what) {
            (0, Some(What::FileVersion(v))) if v == FILE_VERSION => {}
            (0, other) => return Err(fmt(format!("the first event is {other:?}, expected file_version = {FILE_VERSION:?}"))),
            (_, Some(What::Summary(s))) => out.push(ScalarEvent {
                step: event.step,
                wall_time: event.wall_time,
                values: s
                    .value
                    .into_iter()
                    .filter_map(|v| match v.value {
                        Some(ValueKind::SimpleValue(x)) => Some((v.tag, x)),
                        None => None,
                    })
                    .collect(),
            }),
            (_, _) => {}
        }
        at += 16 + len;
        index += 1;
    }
    if index == 0 {
        return Err(fmt("the file is empty; it should start with a file_version event".into()));
    }
    Ok(out)
}

/// Appends one TFRecord record holding `data` to `out`.
fn frame(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// TFRecord's masked CRC32C (a checksum stored inside checksummed data
/// would otherwise be hard to verify).
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

// The messages, fields in tag order so the encoding matches protoc's.

/// `tensorflow.Event` (the fields used here).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

/// `Event.what` (the variants used here; unknown ones are skipped when decoding).
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorflow.Summary.Value` (tag and scalar only).
#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "ValueKind", tags = "2")]
    value: Option<ValueKind>,
}

/// `Summary.Value.value`: a oneof, so a value of `0.0` is still written.
#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u32, seconds: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            phase: "main".into(),
            train_loss: 0.5 / epoch as f64,
            valid_loss: 0.4,
            valid_f2: 0.1 * epoch as f64,
            valid_threshold: 0.0,
            valid_f2_culture: 0.3,
            valid_f2_tag: 0.4,
            lr: 1e-3,
            train_images_per_sec: 100.0,
            seconds,
        }
    }

    #[test]
    fn masked_crc_matches_the_tfrecord_reference_value() {
        // crc32c("123456789") = 0xE3069283 (RFC 3720 check value), masked by hand.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let crc: u32 = 0xE306_9283;
        assert_eq!(masked_crc(b"123456789"), ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn events_round_trip_with_steps_wall_times_and_zero_values() {
        let history = vec![record(1, 2.5), record(2, 3.0)];
        let bytes = events_from_history(&history);
        let events = read_events("e", &bytes).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].step, events[0].wall_time), (1, 2.5));
        assert_eq!((events[1].step, events[1].wall_time), (2, 5.5));
        let tags: Vec<&str> = events[1].values.iter().map(|v| v.0.as_str()).collect();
        assert_eq!(tags, TAGS.iter().map(|t| t.0).collect::<Vec<_>>());
        assert_eq!(events[1].values[0].1, 0.25f32);
        // A zero threshold is present, not dropped as a proto3 default.
        assert_eq!(events[1].values[5], ("threshold/valid".to_string(), 0.0));
    }

    #[test]
    fn a_longer_history_extends_the_shorter_ones_bytes() {
        let one = events_from_history(&[record(1, 2.0)]);
        let two = events_from_history(&[record(1, 2.0), record(2, 2.0)]);
        assert!(two.starts_with(&one) && two.len() > one.len());
        assert_eq!(events_from_history(&[record(1, 2.0), record(2, 2.0)]), two);
    }

    #[test]
    fn an_empty_history_is_a_valid_file_with_only_the_version_event() {
        let bytes = events_from_history(&[]);
        assert!(read_events("e", &bytes).unwrap().is_empty());
    }

    #[test]
    fn a_flipped_byte_or_a_cut_file_is_reported_with_its_offset() {
        let mut bytes = events_from_history(&[record(1, 2.0)]);
        let n = bytes.len();
        bytes[n - 6] ^= 0x40;
        let err = read_events("runs/e/x", &bytes).unwrap_err().to_string();
        assert!(err.contains("runs/e/x") && err.contains("checksum"), "{err}");
        let good = events_from_history(&[record(1, 2.0)]);
        let err = read_events("runs/e/x", &good[..good.len() - 3]).unwrap_err().to_string();
        assert!(err.contains("record 1"), "{err}");
    }

    #[test]
    fn file_names_keep_tfevents_and_replace_odd_characters() {
        assert_eq!(file_name("sample/r18/fold=0"), "events.out.tfevents.0000000000.sample_r18_fold_0");
    }
}
