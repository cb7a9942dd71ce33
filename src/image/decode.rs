//! Decoding (image stage): turns the bytes of one stored image (PNG or
//! JPEG; 8 or 16 bit; grey, grey+alpha, RGB, RGBA or palette) into an RGB
//! u8 image. Reads and writes nothing itself; the loader fetches the bytes.
//! Empty, truncated, corrupt, unsupported and oversized images (a pixel
//! limit guards against decompression bombs) give [`Error::BadImage`]
//! naming the object key; [`OnBadImage`] tells the caller what to do.

use crate::error::{Error, Result};
use ::image::{ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

pub use crate::error::BadImageKind;

/// The spec's `image.on_bad_image`: stop the job, or skip (count, log and
/// list) the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnBadImage {
    #[default]
    Fail,
    Skip,
}

/// Default pixel-count limit: far above the largest competition image
/// (300 x ~9,000), far below a decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

fn bad(key: &str, kind: BadImageKind, reason: impl Into<String>) -> Error {
    Error::BadImage { key: key.to_string(), kind, reason: reason.into() }
}

fn classify(key: &str, e: ImageError) -> Error {
    match &e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => bad(key, BadImageKind::Truncated, e.to_string()),
        ImageError::Limits(_) => bad(key, BadImageKind::TooLarge, e.to_string()),
        ImageError::Unsupported(_) => bad(key, BadImageKind::Unsupported, e.to_string()),
        _ => {
            let text = e.to_string();
            let lower = text.to_ascii_lowercase();
            if lower.contains("eof") || lower.contains("end of") || lower.contains("truncat") || lower.contains("no more data") {
                bad(key, BadImageKind::Truncated, text)
            } else {
                bad(key, BadImageKind::Corrupt, text)
            }
        }
    }
}

/// Width and height from the header alone.
///
/// # Errors
/// [`Error::BadImage`] naming `key`.
pub fn dimensions(key: &str, bytes: &[u8]) -> Result<(u32, u32)> {
    // PNG: read IHDR directly, so a bomb's size is known without its data.
    if bytes.len() >= 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR" {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        return Ok((be(&bytes[16..20]), be(&bytes[20..24])));
    }
    reader(key, bytes)?.into_dimensions().map_err(|e| classify(key, e))
}

fn reader<'a>(key: &str, bytes: &'a [u8]) -> Result<ImageReader<Cursor<&'a [u8]>>> {
    if bytes.is_empty() {
        return Err(bad(key, BadImageKind::Empty, "the object has no bytes"));
    }
    let format = ImageFormat::from_path(key).ok().filter(|f| matches!(f, ImageFormat::Png | ImageFormat::Jpeg));
    let sniffed = ::image::guess_format(bytes).ok();
    let format = match (sniffed, format) {
        (Some(f @ (ImageFormat::Png | ImageFormat::Jpeg)), _) => f,
        (Some(other), _) => return Err(bad(key, BadImageKind::Unsupported, format!("found {other:?} data"))),
        (None, _) => return Err(bad(key, BadImageKind::Corrupt, "no PNG or JPEG signature at the start of the object")),
    };
    let mut r = ImageReader::new(Cursor::new(bytes));
    r.set_format(format);
    Ok(r)
}

/// Decodes `bytes` (the object at `key`) into RGB u8, rejecting images of
/// more than `max_pixels` pixels before allocating them. 16-bit samples
/// are rounded to 8 bits, grey is replicated, alpha is dropped (as
/// Pillow's `convert("RGB")`), palettes are expanded.
///
/// # Errors
/// [`Error::BadImage`] naming `key` and the [`BadImageKind`].
pub fn decode(key: &str, bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let (w, h) = dimensions(key, bytes)?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(bad(key, BadImageKind::TooLarge, format!("{w} x {h} = {pixels} pixels exceeds the limit of {max_pixels} (image.max_pixels)")));
    }
    if pixels == 0 {
        return Err(bad(key, BadImageKind::Corrupt, format!("{w} x {h} has no pixels")));
    }
    let mut r = reader(key, bytes)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // 16-bit RGBA plus the RGB u8 result, with slack for decoder buffers.
    limits.max_alloc = Some(pixels.saturating_mul(8 + 3).saturating_add(64 << 20));
    r.limits(limits);
    let decoder = r.into_decoder().map_err(|e| classify(key, e))?;
    let (dw, dh) = decoder.dimensions();
    if (dw, dh) != (w, h) {
        return Err(bad(key, BadImageKind::Corrupt, format!("header says {w} x {h}, decoder {dw} x {dh}")));
    }
    let img = ::image::DynamicImage::from_decoder(decoder).map_err(|e| classify(key, e))?;
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    fn kind(e: Error) -> BadImageKind {
        match e {
            Error::BadImage { kind, .. } => kind,
            other => panic!("not a BadImage: {other}"),
        }
    }

    #[test]
    fn every_png_layout_becomes_the_same_rgb() {
        let rgb = ImageBuffer::from_fn(5, 3, |x, y| Rgb([(x * 40) as u8, (y * 80) as u8, 7u8]));
        let rgba = ImageBuffer::from_fn(5, 3, |x, y| Rgba([(x * 40) as u8, (y * 80) as u8, 7u8, 100]));
        let rgb16 = ImageBuffer::from_fn(5, 3, |x, y| Rgb([(x * 40) as u16 * 257, (y * 80) as u16 * 257, 7 * 257u16]));
        let rgba16 = ImageBuffer::from_fn(5, 3, |x, y| Rgba([(x * 40) as u16 * 257, (y * 80) as u16 * 257, 7 * 257u16, 9]));
        for img in [DynamicImage::ImageRgb8(rgb.clone()), DynamicImage::ImageRgba8(rgba), DynamicImage::ImageRgb16(rgb16), DynamicImage::ImageRgba16(rgba16)] {
            assert_eq!(decode("x.png", &png(&img), 1000).unwrap(), rgb);
        }
        let grey = ImageBuffer::from_fn(4, 2, |x, _| Luma([(x * 60) as u8]));
        let grey_alpha = ImageBuffer::from_fn(4, 2, |x, _| LumaA([(x * 60) as u8, 3]));
        let grey16 = ImageBuffer::from_fn(4, 2, |x, _| Luma([(x * 60) as u16 * 257]));
        let want = ImageBuffer::from_fn(4, 2, |x, _| Rgb([(x * 60) as u8; 3]));
        for img in [DynamicImage::ImageLuma8(grey), DynamicImage::ImageLumaA8(grey_alpha), DynamicImage::ImageLuma16(grey16)] {
            assert_eq!(decode("x.png", &png(&img), 1000).unwrap(), want);
        }
    }

    #[test]
    fn palette_pngs_are_expanded() {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 2, 1);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![255, 0, 0, 0, 0, 255]);
            enc.write_header().unwrap().write_image_data(&[1, 0]).unwrap();
        }
        let img = decode("p.png", &out, 100).unwrap();
        assert_eq!(img.as_raw(), &[0, 0, 255, 255, 0, 0]);
    }

    #[test]
    fn jpeg_decodes_to_rgb_of_the_right_size() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(33, 17, |x, _| Rgb([(x * 7) as u8, 100, 50])));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg).unwrap();
        let back = decode("a.jpg", &out, 10_000).unwrap();
        assert_eq!(back.dimensions(), (33, 17));
        assert!((back.get_pixel(10, 5)[1] as i32 - 100).abs() < 8);
    }

    #[test]
    fn bad_images_name_the_key_and_the_kind() {
        let good = png(&DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 64, |x, y| Rgb([(x * y) as u8, x as u8, y as u8]))));
        let e = decode("data/train/aa.png", &[], 1000).unwrap_err();
        assert!(e.to_string().contains("data/train/aa.png") && e.to_string().contains("on_bad_image"), "{e}");
        assert_eq!(kind(e), BadImageKind::Empty);
        assert_eq!(kind(decode("k.png", &good[..good.len() / 2], 1 << 20).unwrap_err()), BadImageKind::Truncated);
        let mut corrupt = good.clone();
        for b in &mut corrupt[60..200] {
            *b ^= 0x5a;
        }
        assert!(matches!(kind(decode("k.png", &corrupt, 1 << 20).unwrap_err()), BadImageKind::Corrupt | BadImageKind::Truncated));
        assert_eq!(kind(decode("k.png", b"hello, not an image", 1000).unwrap_err()), BadImageKind::Corrupt);
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(kind(decode("k.png", gif, 1000).unwrap_err()), BadImageKind::Unsupported);
        let e = decode("big.png", &good, 64 * 64 - 1).unwrap_err();
        assert!(e.to_string().contains("4096 pixels"), "{e}");
        assert_eq!(kind(e), BadImageKind::TooLarge);
    }

    #[test]
    fn a_huge_header_is_refused_before_allocation() {
        // A valid PNG header claiming 100,000 x 100,000 pixels with no data.
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 100_000, 100_000);
            enc.set_color(png::ColorType::Grayscale);
            let _ = enc.write_header().unwrap();
        }
        let e = decode("bomb.png", &out, DEFAULT_MAX_PIXELS).unwrap_err();
        let text = e.to_string();
        assert_eq!(kind(e), BadImageKind::TooLarge, "{text}");
    }
}
