//! Train stage: checkpoints. After every epoch one safetensors file holds
//! the model's variables (`model.{name}`, BatchNorm buffers included), the
//! optimiser's state (`optim.{slot}.{name}`) and, in its metadata, the
//! loop's position, grad-scaler state, best epoch and history, so a job
//! killed at any moment resumes from the latest complete file with the same
//! result. Files are written with one atomic put, the previous one is only
//! pruned after the new one is in place, and an unreadable newest file falls
//! back to the one before. With `train.checkpoints.every_steps` or
//! `every_minutes` the loop also checkpoints inside an epoch: the same file,
//! with [`InEpoch`] in its loop state (where in the epoch, and the epoch's
//! running totals), resumed from when it is ahead of the newest epoch's.
//! Reads and writes
//! `runs/{exp}/models/{model}/fold={k}/checkpoints/epoch={e}.safetensors` and
//! `.../checkpoints/in-epoch.safetensors`.

use crate::error::{Error, Result};
use crate::storage::parquet::EpochRecord;
use crate::storage::Store;
use safetensors::tensor::{Dtype, View};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use tch::{Kind, Tensor};
use tracing::warn;

/// Metadata key holding [`LoopState`] as JSON.
const STATE_KEY: &str = "imet_loop_state";

/// Name of the one-byte marker tensor every checkpoint holds.
const MARKER: &str = "imet.checkpoint";

/// Where the loop stands after a completed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Epochs completed (the next epoch to run, 0-based).
    pub epochs_done: u32,
    /// Phase of the last completed epoch.
    pub phase: usize,
    /// Optimiser updates done in that phase.
    pub optim_steps: u64,
    pub scaler_scale: f64,
    pub scaler_tracker: u32,
    /// Best validation F2 so far and the epoch (1-based count) it came at;
    /// minus infinity before the first epoch (`null` in JSON).
    #[serde(deserialize_with = "f64_or_neg_infinity")]
    pub best_f2: f64,
    pub best_epoch: u32,
    pub history: Vec<EpochRecord>,
    /// Training items the next epoch visits once more (hard negative
    /// mining).
    #[serde(default)]
    pub hard: Vec<usize>,
    /// Spec hash of the job that wrote it; another spec's checkpoint is
    /// never resumed.
    pub spec_hash: String,
    /// Set in a checkpoint written inside epoch `epochs_done` (0-based):
    /// how far into it the loop was. `phase`, `optim_steps` and the scaler
    /// then describe that moment, not the end of the previous epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_epoch: Option<InEpoch>,
}

/// `best_f2` from JSON: a number, or `null` for minus infinity (serde_json
/// writes every non-finite float as `null`; no F2 is NaN here).
fn f64_or_neg_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
}

/// Where inside an epoch a checkpoint was written, with the epoch's running
/// totals so far, so the resumed epoch ends with the record the whole epoch
/// would have had. Floats are kept as their bits: JSON must not round them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InEpoch {
    /// Batches of the epoch done: the next batch's position.
    pub batches: usize,
    /// Optimiser steps of the epoch done.
    pub steps: usize,
    /// Sum of the batches' mean loss times their images, as `f64` bits.
    pub loss_sum: u64,
    pub images: usize,
    /// Steps the grad scaler skipped.
    pub skipped_steps: usize,
    /// Learning rate of the last step, as `f64` bits.
    pub lr: u64,
    /// Training seconds spent in the epoch so far.
    pub seconds: f64,
    /// `(item, loss as f32 bits)` of every image trained on (hard negative
    /// mining only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_losses: Vec<(usize, u32)>,
}

impl LoopState {
    /// Before the first epoch of a job committed with `spec_hash`.
    pub fn fresh(spec_hash: &str) -> LoopState {
        LoopState {
            epochs_done: 0,
            phase: 0,
            optim_steps: 0,
            scaler_scale: 0.0,
            scaler_tracker: 0,
            best_f2: f64::NEG_INFINITY,
            best_epoch: 0,
            history: Vec::new(),
            hard: Vec::new(),
            spec_hash: spec_hash.to_string(),
            in_epoch: None,
        }
    }
}

/// A checkpoint in memory.
pub struct Checkpoint {
    pub state: LoopState,
    /// Model variables by name (without the `model.` prefix).
    pub model: HashMap<String, Tensor>,
    /// Optimiser state tensors, with their `optim.` names.
    pub optim: HashMap<String, Tensor>,
}

struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let kind = t.kind();
    let dtype = match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => return Err(Error::Checkpoint { key: name.to_string(), message: format!("cannot store a {other:?} tensor") }),
    };
    let numel = t.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(HostTensor { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
}

/// Serialises model variables, optimiser state and the loop state.
///
/// # Errors
/// [`Error::Checkpoint`] for an unsupported tensor type or a serialisation
/// failure; [`Error::Torch`] when a tensor cannot be copied to the host.
pub fn encode(state: &LoopState, model: &[(String, Tensor)], optim: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut named: Vec<(String, HostTensor)> = Vec::with_capacity(model.len() + optim.len());
    for (n, t) in model {
        named.push((format!("model.{n}"), host(n, t)?));
    }
    for (n, t) in optim {
        named.push((n.clone(), host(n, t)?));
    }
    // A marker tensor: a header without tensors does not parse back.
    named.push((MARKER.to_string(), HostTensor { dtype: Dtype::U8, shape: vec![1], data: vec![1] }));
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    safetensors::tensor::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), &Some(meta))
        .map_err(|e| Error::Checkpoint { key: "<memory>".into(), message: format!("cannot serialise: {e}") })
}

/// Parses a checkpoint written by [`encode`]; `key` names it in errors.
///
/// # Errors
/// [`Error::Checkpoint`] naming `key` for a truncated or foreign file.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |message: String| Error::Checkpoint { key: key.to_string(), message };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let state_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| bad(format!("no `{STATE_KEY}` metadata: not an imet checkpoint")))?;
    let state: LoopState = serde_json::from_str(state_json).map_err(|e| bad(format!("bad loop state: {e}")))?;
    let parsed = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut model = HashMap::new();
    let mut optim = HashMap::new();
    for (name, view) in parsed.tensors() {
        if name == MARKER {
            continue;
        }
        let t = Tensor::try_from(view).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        match name.strip_prefix("model.") {
            Some(n) => {
                model.insert(n.to_string(), t);
            }
            None => {
                optim.insert(name, t);
            }
        }
    }
    Ok(Checkpoint { state, model, optim })
}

/// Epoch numbers of the checkpoints under `prefix`, ascending.
///
/// # Errors
/// Store errors.
pub async fn list(store: &Store, prefix: &str) -> Result<Vec<u32>> {
    let mut epochs: Vec<u32> = store
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key.rsplit('/').next()?.strip_prefix("epoch=")?.strip_suffix(".safetensors")?.parse().ok())
        .collect();
    epochs.sort_unstable();
    Ok(epochs)
}

/// The newest readable checkpoint under `prefix` written for `spec_hash`,
/// with its key. An unreadable file (a foreign or damaged object) is skipped
/// with a warning and the one before is used.
///
/// # Errors
/// Store errors, and [`Error::SpecChanged`] when the newest checkpoint was
/// written for another spec (delete the fold's checkpoints to restart).
pub async fn latest(store: &Store, prefix: &str, key_of: impl Fn(u32) -> String, spec_hash: &str) -> Result<Option<(String, Checkpoint)>> {
    for epoch in list(store, prefix).await?.into_iter().rev() {
        let key = key_of(epoch);
        let Some(bytes) = store.get_opt(&key).await? else { continue };
        match decode(&key, &bytes) {
            Ok(ck) if ck.state.spec_hash == spec_hash => return Ok(Some((key, ck))),
            Ok(ck) => {
                return Err(Error::SpecChanged {
                    key,
                    found: ck.state.spec_hash,
                    expected: spec_hash.to_string(),
                })
            }
            Err(e) => warn!(key = %key, error = %e, "skipping an unreadable checkpoint"),
        }
    }
    Ok(None)
}

/// The checkpoint at `key` written inside epoch `epochs_done` (0-based) by
/// the job of `spec_hash`: what a rerun resumes from when the newest epoch
/// checkpoint has `epochs_done` epochs. `None` when there is none, when it
/// belongs to another epoch (left over by a stop between writing an epoch's
/// checkpoint and deleting it) or when it is unreadable (with a warning:
/// the epoch checkpoint is used).
///
/// # Errors
/// Store errors, and [`Error::SpecChanged`] for another spec's checkpoint.
pub async fn in_epoch(store: &Store, key: &str, spec_hash: &str, epochs_done: u32) -> Result<Option<Checkpoint>> {
    let Some(bytes) = store.get_opt(key).await? else { return Ok(None) };
    let ck = match decode(key, &bytes) {
        Ok(ck) => ck,
        Err(e) => {
            warn!(key = %key, error = %e, "skipping an unreadable in-epoch checkpoint");
            return Ok(None);
        }
    };
    if ck.state.spec_hash != spec_hash {
        return Err(Error::SpecChanged { key: key.to_string(), found: ck.state.spec_hash, expected: spec_hash.to_string() });
    }
    Ok((ck.state.in_epoch.is_some() && ck.state.epochs_done == epochs_done).then_some(ck))
}

/// Deletes the checkpoints under `prefix` except the epochs in `keep`.
///
/// # Errors
/// Store errors.
pub async fn prune(store: &Store, prefix: &str, key_of: impl Fn(u32) -> String, keep: &[u32]) -> Result<()> {
    for epoch in list(store, prefix).await? {
        if !keep.contains(&epoch) {
            store.delete(&key_of(epoch)).await?;
        }
    }
    Ok(())
}

/// Copies `tensors` into the same-named variables of `vars`.
///
/// # Errors
/// [`Error::Checkpoint`] naming `key` and the first missing or misshapen
/// variable.
pub fn copy_into(key: &str, vars: &[(String, Tensor)], tensors: &HashMap<String, Tensor>) -> Result<()> {
    let bad = |message: String| Error::Checkpoint { key: key.to_string(), message };
    tch::no_grad(|| {
        for (name, var) in vars {
            let src = tensors.get(name).ok_or_else(|| bad(format!("lacks `{name}`; it was written for another model")))?;
            if src.size() != var.size() {
                return Err(bad(format!("`{name}` is {:?} in the file, {:?} in the model", src.size(), var.size())));
            }
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src.to_device(var.device()).to_kind(var.kind()))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epochs_done: u32) -> LoopState {
        LoopState {
            epochs_done,
            phase: 1,
            optim_steps: 12,
            scaler_scale: 1024.0,
            scaler_tracker: 3,
            best_f2: 0.5,
            best_epoch: 1,
            history: vec![],
            hard: vec![3, 1],
            spec_hash: "h".into(),
            in_epoch: None,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_tensors_of_every_kind_and_the_loop_state() {
        let w = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
        let n = Tensor::from(7i64);
        let m = Tensor::randn([4], (Kind::Float, tch::Device::Cpu));
        let bytes = encode(&state(2), &[("fc.weight".into(), w.shallow_clone()), ("bn.num_batches_tracked".into(), n.shallow_clone())], &[("optim.exp_avg.fc.weight".into(), m.shallow_clone())]).unwrap();
        let ck = decode("k", &bytes).unwrap();
        assert_eq!(ck.state, state(2));
        assert_eq!(ck.model["fc.weight"], w);
        assert_eq!(ck.model["bn.num_batches_tracked"].int64_value(&[]), 7);
        assert_eq!(ck.optim["optim.exp_avg.fc.weight"], m);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused_by_key() {
        let bytes = encode(&state(1), &[("a".into(), Tensor::from(1.0f32))], &[]).unwrap();
        let err = decode("ck/epoch=1.safetensors", &bytes[..bytes.len() / 2]).err().unwrap().to_string();
        assert!(err.contains("ck/epoch=1.safetensors"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        Tensor::write_safetensors(&[("a", Tensor::from(1.0f32))], &p).unwrap();
        let err = decode("w", &std::fs::read(p).unwrap()).err().unwrap().to_string();
        assert!(err.contains("not an imet checkpoint"), "{err}");
    }

    #[tokio::test]
    async fn the_latest_readable_checkpoint_wins_and_pruning_keeps_what_is_asked() {
        let store = Store::memory();
        let key_of = |e: u32| format!("c/epoch={e}.safetensors");
        for e in [1, 2, 3] {
            store.put(&key_of(e), encode(&state(e), &[], &[]).unwrap()).await.unwrap();
        }
        store.put(&key_of(4), b"garbage".to_vec()).await.unwrap();
        assert_eq!(list(&store, "c").await.unwrap(), [1, 2, 3, 4]);
        let empty = decode("x", &encode(&state(1), &[], &[]).unwrap()).expect("an empty checkpoint decodes");
        assert!(empty.model.is_empty() && empty.optim.is_empty());
        let (key, ck) = latest(&store, "c", key_of, "h").await.unwrap().unwrap();
        assert_eq!((key.as_str(), ck.state.epochs_done), ("c/epoch=3.safetensors", 3));
        assert!(matches!(latest(&store, "c", key_of, "other").await, Err(Error::SpecChanged { .. })));
        prune(&store, "c", key_of, &[1, 3]).await.unwrap();
        assert_eq!(list(&store, "c").await.unwrap(), [1, 3]);
    }

    #[test]
    fn a_loop_state_before_the_first_epoch_and_with_nan_losses_round_trips() {
        // Inside epoch 1 nothing is best yet (-inf); a diverged validation
        // loss is NaN. JSON holds both as null.
        let record = EpochRecord {
            epoch: 1,
            phase: "main".into(),
            train_loss: 0.5,
            valid_loss: f64::NAN,
            valid_f2: 0.25,
            valid_threshold: 0.2,
            valid_f2_culture: f64::NAN,
            valid_f2_tag: 0.3,
            lr: 0.01,
            train_images_per_sec: 10.0,
            seconds: 1.0,
        };
        let st = LoopState { history: vec![record], ..LoopState::fresh("h") };
        let back = decode("k", &encode(&st, &[], &[]).unwrap()).expect("a fresh state with NaN losses decodes").state;
        assert_eq!(back.best_f2, f64::NEG_INFINITY);
        let r = &back.history[0];
        assert!(r.valid_loss.is_nan() && r.valid_f2_culture.is_nan());
        assert_eq!((r.train_loss, r.valid_f2, r.valid_f2_tag), (0.5, 0.25, 0.3));
    }

    #[tokio::test]
    async fn an_in_epoch_checkpoint_is_used_only_inside_the_epoch_after_the_newest_and_keeps_its_floats_exact() {
        let store = Store::memory();
        let key = "c/in-epoch.safetensors";
        assert!(in_epoch(&store, key, "h", 2).await.unwrap().is_none(), "none written");
        let at = InEpoch {
            batches: 7,
            steps: 3,
            loss_sum: (0.1f64 + 0.2).to_bits(),
            images: 56,
            skipped_steps: 1,
            lr: 3e-4f64.to_bits(),
            seconds: 1.5,
            item_losses: vec![(4, 0.3f32.to_bits())],
        };
        let st = LoopState { in_epoch: Some(at.clone()), ..state(2) };
        store.put(key, encode(&st, &[], &[]).unwrap()).await.unwrap();
        let ck = in_epoch(&store, key, "h", 2).await.unwrap().expect("inside epoch 2");
        assert_eq!(ck.state.in_epoch.as_ref(), Some(&at));
        assert_eq!(f64::from_bits(ck.state.in_epoch.unwrap().loss_sum), 0.1 + 0.2);
        assert!(in_epoch(&store, key, "h", 3).await.unwrap().is_none(), "left over from an earlier epoch");
        assert!(matches!(in_epoch(&store, key, "other", 2).await, Err(Error::SpecChanged { .. })));
        store.put(key, b"torn".to_vec()).await.unwrap();
        assert!(in_epoch(&store, key, "h", 2).await.unwrap().is_none(), "unreadable: the epoch checkpoint is used");
    }

    #[test]
    fn copy_into_names_a_missing_variable() {
        let var = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let src = HashMap::from([("a".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))]);
        copy_into("k", &[("a".into(), var.shallow_clone())], &src).unwrap();
        assert_eq!(var, Tensor::from_slice(&[1.0f32, 2.0]));
        let err = copy_into("k", &[("b".into(), var)], &src).unwrap_err().to_string();
        assert!(err.contains("`b`"), "{err}");
    }
}
