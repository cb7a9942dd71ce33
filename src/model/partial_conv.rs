//! Model stage: partial-convolution based padding (Liu et al. 2018,
//! arXiv:1811.11718), used by recipe R3. A zero-padded convolution sees
//! fewer real pixels near the border; partial padding rescales each output
//! by `window_size / pixels_inside`, so border outputs are not damped. The
//! weights are the ordinary convolution's, which keeps pretrained files
//! loadable. Reads and writes nothing.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

type Key = (i64, i64, [i64; 2], i64, [i64; 2], String);

fn cache() -> &'static Mutex<HashMap<Key, Tensor>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Tensor>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The partial-padding ratio for a `kernel` convolution with `stride` and
/// symmetric zero `padding` over an `h x w` input: `kh * kw` divided by the
/// number of window pixels inside the image, 0 where the window holds none
/// (NVIDIA's `PartialConv2d` with an all-ones mask, single channel).
/// Cached per geometry and device.
///
/// # Shapes
/// `-> [1, 1, out_h, out_w]`, float32 on `device`.
pub fn mask_ratio(h: i64, w: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2], device: Device) -> Tensor {
    let key = (h, w, kernel, stride, padding, format!("{device:?}"));
    let mut cache = match cache().lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(ratio) = cache.get(&key) {
        return ratio.shallow_clone();
    }
    let ratio = tch::no_grad(|| {
        let mask = Tensor::ones([1, 1, h, w], (Kind::Float, device));
        let ones = Tensor::ones([1, 1, kernel[0], kernel[1]], (Kind::Float, device));
        let inside = mask.conv2d::<&Tensor>(&ones, None, [stride, stride], padding, [1, 1], 1);
        let window = (kernel[0] * kernel[1]) as f64;
        let present = inside.clamp(0.0, 1.0);
        (inside + 1e-8).reciprocal() * window * present
    });
    cache.insert(key, ratio.shallow_clone());
    ratio
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{Conv2d, ConvOptions, ConvSpec};
    use tch::nn::{self, Module};

    #[test]
    fn ratio_is_one_inside_and_larger_at_borders() {
        let r = mask_ratio(5, 5, [3, 3], 1, [1, 1], Device::Cpu);
        assert_eq!(r.size(), [1, 1, 5, 5]);
        let at = |i: i64, j: i64| r.double_value(&[0, 0, i, j]);
        assert!((at(2, 2) - 1.0).abs() < 1e-6);
        assert!((at(0, 2) - 9.0 / 6.0).abs() < 1e-6);
        assert!((at(0, 0) - 9.0 / 4.0).abs() < 1e-6);
    }

    #[test]
    fn partial_padding_of_a_constant_image_gives_a_constant_output() {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ConvSpec::new(1, 1, 3, 1, 1).bias();
        let conv = Conv2d::new(&vs.root(), spec, ConvOptions { partial_padding: true });
        let plain = Conv2d::new(&(vs.root() / "plain"), spec, ConvOptions::default());
        tch::no_grad(|| {
            let _ = conv.weight.shallow_clone().fill_(1.0);
            let _ = plain.weight.shallow_clone().fill_(1.0);
            if let (Some(a), Some(b)) = (&conv.bias, &plain.bias) {
                let _ = a.shallow_clone().fill_(0.5);
                let _ = b.shallow_clone().fill_(0.5);
            }
        });
        let xs = Tensor::ones([1, 1, 6, 6], (Kind::Float, Device::Cpu));
        let ys = conv.forward(&xs);
        let spread = (ys.max() - ys.min()).double_value(&[]);
        assert!(spread < 1e-5, "partial padding output varies by {spread}");
        assert!((ys.double_value(&[0, 0, 0, 0]) - 9.5).abs() < 1e-5);
        let zs = plain.forward(&xs);
        assert!((zs.double_value(&[0, 0, 0, 0]) - 4.5).abs() < 1e-5);
    }
}
