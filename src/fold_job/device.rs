//! The device a fold job runs on and how batches reach it: CUDA unless
//! `IMET_DEVICE=cpu`, fp16 autocast, channels-last, device-side
//! normalisation, and the prediction loop train's validation and predict
//! share. Works on tensors and the loader; touches no store.

use crate::error::Result;
use crate::image::augment::Normalize;
use crate::image::loader::{normalize_on_device, Epoch, Output};
use crate::model::Network;
use crate::telemetry::Progress;
use tch::{Device, Kind, Reduction, Tensor};

/// The device jobs run on: CUDA when available, unless `IMET_DEVICE=cpu`.
pub fn device() -> Device {
    if crate::storage::provenance::cpu_forced() {
        Device::Cpu
    } else {
        Device::cuda_if_available()
    }
}

/// Numeric precision of a job's forward (and backward) passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

/// How batches are prepared and run on the device.
pub struct DeviceSetup {
    pub device: Device,
    /// fp16 autocast (CUDA only).
    pub autocast: bool,
    /// NHWC layout (CUDA only).
    pub channels_last: bool,
    /// Batches arrive as u8 and are normalised on the device.
    pub normalize: Option<Normalize>,
}

impl DeviceSetup {
    /// Device, precision and layout of a job on `device`: fp16 autocast
    /// (`auto` or `fp16`), NHWC and device-side normalisation on CUDA only.
    pub fn new(device: Device, precision: Precision, channels_last: bool) -> DeviceSetup {
        let cuda = device.is_cuda();
        DeviceSetup {
            device,
            autocast: cuda && matches!(precision, Precision::Auto | Precision::Fp16),
            channels_last: cuda && channels_last,
            normalize: cuda.then(Normalize::default),
        }
    }

    /// What the loader should hand out: u8 when batches are normalised on
    /// the device, normalised f32 otherwise.
    pub fn loader_output(&self) -> Output {
        match &self.normalize {
            Some(_) => Output::U8,
            None => Output::Normalized(Normalize::default()),
        }
    }

    /// Gives every 4-D variable of `vs` NHWC strides when the setup uses
    /// channels-last (values unchanged).
    pub fn place_weights(&self, vs: &tch::nn::VarStore) {
        if !self.channels_last {
            return;
        }
        tch::no_grad(|| {
            for (_, v) in vs.variables() {
                if v.dim() == 4 {
                    v.shallow_clone().set_data(&to_channels_last(&v));
                }
            }
        });
    }

    /// Moves a loader batch to the device as normalised f32 NCHW.
    pub fn images(&self, images: &Tensor) -> Tensor {
        let xs = images.to_device(self.device);
        let xs = match &self.normalize {
            Some(n) => normalize_on_device(&xs, n),
            None => xs,
        };
        if self.channels_last {
            to_channels_last(&xs)
        } else {
            xs
        }
    }

    /// Forward pass under autocast when enabled; logits as f32.
    ///
    /// # Errors
    /// As [`Network::forward_t`].
    pub fn forward(&self, net: &mut Network, xs: &Tensor, train: bool) -> Result<Tensor> {
        let logits = if self.autocast { tch::autocast(true, || net.forward_t(xs, train))? } else { net.forward_t(xs, train)? };
        Ok(logits.to_kind(Kind::Float))
    }
}

/// Same values with NHWC strides (PyTorch's `channels_last`).
pub fn to_channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Probabilities of every image of `batches` (sequential), with the mean
/// BCE when targets are known; each batch advances `progress` (images).
///
/// # Errors
/// Loader and forward errors.
pub fn predict_probs(net: &mut Network, dev: &DeviceSetup, batches: Epoch, progress: &Progress) -> Result<(Vec<f32>, f64)> {
    let _guard = tch::no_grad_guard();
    let mut probs = Vec::new();
    let (mut bce, mut count) = (0.0f64, 0usize);
    for batch in batches {
        let batch = batch?;
        let xs = dev.images(&batch.images);
        let logits = dev.forward(net, &xs, false)?;
        let ys = batch.targets.to_device(dev.device);
        bce += logits.binary_cross_entropy_with_logits::<Tensor>(&ys, None, None, Reduction::Sum).double_value(&[]);
        count += ys.numel();
        let p = logits.sigmoid().to_device(Device::Cpu).contiguous().view([-1]);
        probs.extend(Vec::<f32>::try_from(&p)?);
        progress.inc(batch.ids.len() as u64);
    }
    Ok((probs, bce / count.max(1) as f64))
}

/// Probabilities of every image of `batches` (sequential, from a loader
/// with one or more views), averaged over the views: for each image the
/// views' probabilities are added in view order, then divided by their
/// number (the same arithmetic as one pass per view summed in view order).
/// `rows` is the number of images the loader holds; an image the loader
/// skipped keeps zeros. `progress` counts image views.
///
/// # Errors
/// Loader and forward errors.
pub fn predict_views(net: &mut Network, dev: &DeviceSetup, batches: Epoch, rows: usize, classes: usize, progress: &Progress) -> Result<(Vec<f32>, usize)> {
    let _guard = tch::no_grad_guard();
    let mut sum = vec![0f32; rows * classes];
    let mut views = 0usize;
    for batch in batches {
        let batch = batch?;
        views = 1 + batch.views.len();
        for images in std::iter::once(&batch.images).chain(&batch.views) {
            let xs = dev.images(images);
            let p = dev.forward(net, &xs, false)?.sigmoid().to_device(Device::Cpu).contiguous().view([-1]);
            let p = Vec::<f32>::try_from(&p)?;
            for (r, &i) in batch.indices.iter().enumerate() {
                for (s, v) in sum[i * classes..(i + 1) * classes].iter_mut().zip(&p[r * classes..(r + 1) * classes]) {
                    *s += v;
                }
            }
        }
        progress.inc((batch.ids.len() * views) as u64);
    }
    let n = views.max(1) as f32;
    sum.iter_mut().for_each(|s| *s /= n);
    Ok((sum, views))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_keeps_values_and_changes_strides() {
        let xs = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let cl = to_channels_last(&xs);
        assert_eq!(cl, xs);
        assert_eq!(cl.stride(), [60, 1, 15, 3]);
    }
}
