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

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

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
    if bytes.len() >= 24 && bytes.starts_with(PNG_SIGNATURE) && &bytes[12..16] == b"IHDR" {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        return Ok((be(&bytes[16..20]), be(&bytes[20..24])));
    }
    reader(key, bytes)?.into_dimensions().map_err(|e| match jpeg_scan_bytes(bytes) {
        // A JPEG cut inside its headers is truncated, whatever the decoder says.
        Err((BadImageKind::Truncated, reason)) if bytes.starts_with(&[0xff, 0xd8]) => bad(key, BadImageKind::Truncated, reason),
        _ => classify(key, e),
    })
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
    check_complete(key, bytes, w, h)?;
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

/// Refuses, before anything is allocated for its pixels, an image whose
/// bytes cannot hold the `w` x `h` pixels its header claims, or (JPEG)
/// that ends before its end-of-image marker. The decoders would otherwise
/// size the whole image from the header, and the JPEG decoder fills what
/// a truncated file lacks with grey instead of failing.
fn check_complete(key: &str, bytes: &[u8], w: u32, h: u32) -> Result<()> {
    if bytes.starts_with(PNG_SIGNATURE) && bytes.len() >= 26 {
        // Deflate shrinks data at most 1032:1, so the scanlines (one filter
        // byte plus the packed samples per row) need this many bytes at least.
        let channels: u64 = match bytes[25] {
            0 | 3 => 1,
            4 => 2,
            2 => 3,
            6 => 4,
            _ => return Ok(()),
        };
        let raw = (w as u64 * channels * bytes[24] as u64).div_ceil(8).saturating_add(1).saturating_mul(h as u64);
        if (bytes.len() as u64).saturating_mul(1032) < raw {
            return Err(bad(key, BadImageKind::Truncated, format!("{} bytes cannot hold the {w} x {h} pixels of the header", bytes.len())));
        }
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        let scan_bytes = jpeg_scan_bytes(bytes).map_err(|(kind, reason)| bad(key, kind, reason))?;
        // Every 8 x 8 block of the full-resolution component costs at
        // least one bit of entropy-coded data (its DC code).
        let blocks = (w as u64).div_ceil(8) * (h as u64).div_ceil(8);
        if scan_bytes.saturating_mul(8) < blocks {
            return Err(bad(key, BadImageKind::Truncated, format!("{scan_bytes} bytes of image data cannot hold the {w} x {h} pixels of the header")));
        }
    }
    Ok(())
}

/// Walks a JPEG's segments from SOI to EOI and returns the number of
/// entropy-coded bytes; errors when the file ends before EOI.
fn jpeg_scan_bytes(b: &[u8]) -> std::result::Result<u64, (BadImageKind, String)> {
    let truncated = |at: usize| (BadImageKind::Truncated, format!("the JPEG data ends at byte {at} before its end-of-image marker"));
    let mut i = 2;
    let mut scan = 0u64;
    loop {
        if i >= b.len() {
            return Err(truncated(b.len()));
        }
        if b[i] != 0xff {
            return Err((BadImageKind::Corrupt, format!("no JPEG marker at byte {i}")));
        }
        while i < b.len() && b[i] == 0xff {
            i += 1; // fill bytes
        }
        let Some(&marker) = b.get(i) else { return Err(truncated(b.len())) };
        i += 1;
        match marker {
            0xd9 => return Ok(scan),
            0x01 | 0xd0..=0xd8 => continue, // markers without a length
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return Err(truncated(b.len())) };
        if len < 2 {
            return Err((BadImageKind::Corrupt, format!("JPEG segment at byte {} has length {len}", i - 2)));
        }
        if i + len > b.len() {
            return Err(truncated(b.len()));
        }
        i += len;
        if marker == 0xda {
            // Entropy-coded data runs to the next marker other than a
            // stuffed 0xff00 or a restart marker.
            let start = i;
            loop {
                let Some(off) = b[i..].iter().position(|&x| x == 0xff) else { return Err(truncated(b.len())) };
                i += off;
                match b.get(i + 1) {
                    None => return Err(truncated(b.len())),
                    Some(0x00 | 0xd0..=0xd7) => i += 2,
                    Some(_) => break,
                }
            }
            scan += (i - start) as u64;
        }
    }
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
    fn a_jpeg_cut_anywhere_before_its_end_marker_is_truncated_not_grey() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 24, |x, y| Rgb([(x * 6) as u8, (y * 9) as u8, 70u8])));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg).unwrap();
        assert!(decode("a.jpg", &out, 10_000).is_ok());
        for cut in [out.len() - 1, out.len() - 2, out.len() - 40, out.len() / 2] {
            let e = decode("a.jpg", &out[..cut], 10_000).unwrap_err();
            assert_eq!(kind(e), BadImageKind::Truncated, "cut at {cut} of {}", out.len());
        }
        // Bytes after the end marker are ignored, as other readers do.
        let mut trailing = out.clone();
        trailing.extend_from_slice(b"trailing bytes");
        assert!(decode("a.jpg", &trailing, 10_000).is_ok());
    }

    #[test]
    fn a_small_file_claiming_a_large_image_is_truncated() {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 8000, 8000);
            enc.set_color(png::ColorType::Rgba);
            let _ = enc.write_header().unwrap();
        }
        let e = decode("big.png", &out, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(e.to_string().contains("cannot hold"), "{e}");
        assert_eq!(kind(e), BadImageKind::Truncated);
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
