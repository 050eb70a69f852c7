//! From a text-line image to the network's input, identically in training and serving.
//!
//! 1. Decode (bytes only): the header is read first and a source larger than
//!    `max_source_pixels` is rejected before any pixel is decoded. Transparent images are
//!    composited on white; colour is converted to gray.
//! 2. Resize to `height` keeping the aspect ratio (Catmull-Rom, which filters properly when
//!    shrinking); a line wider than `max_width` is squeezed horizontally to fit.
//! 3. Normalize polarity and contrast so that ink is 1.0 and background 0.0:
//!    the background level is the median gray value (a text line is mostly background: ink
//!    covers well under half of any sensibly cropped line, while a scanner's dark border or a
//!    bold font does not). If the median lies nearer the dark end (1st percentile) than the
//!    light end (99th percentile), the line is light-on-dark and is inverted. The ink level is
//!    the far 1st/99th percentile; values are mapped linearly from background (0) to ink (1)
//!    and clamped, with a minimum contrast so a blank image stays blank instead of turning
//!    its noise into ink.
//!
//! The settings ([`PreprocessConfig`]) are stored in the model manifest.
//!
//! Decoding is split so that nothing is decoded before it is known to be acceptable: an
//! [`ImageHeader`] is read once, [`check_source`] turns it into a [`CheckedSource`] (size and
//! shape), and only a [`CheckedSource`] can be decoded ([`decode_checked`]). Callers that hold
//! a decode budget (the server) charge it by [`CheckedSource::pixels`] between the two steps.

use anyhow::Result;
use image::{imageops::FilterType, GrayImage};
use tch::{Device, Tensor};
pub use textrec_contract::config::PreprocessConfig;

pub use decode::{
    check_source, decode_checked, decode_gray, inspect, CheckedSource, ImageHeader, SourceError,
    MAX_DECODE_BYTES_PER_PIXEL, MAX_TALL_ASPECT, MAX_WIDE_ASPECT,
};

mod decode;
use decode::shape_error;
#[cfg(test)]
mod tests;

/// Smallest background-to-ink distance (in 8-bit gray levels) used to stretch contrast.
const MIN_CONTRAST: f32 = 48.0;

/// A normalized line: `height` rows of `width` values, ink 1.0, background 0.0.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// Row-major pixels, `height * width` values in `[0, 1]`.
    pub data: Vec<f32>,
    /// Always the configured height.
    pub height: u32,
    /// Width after resizing (at most the configured `max_width`).
    pub width: u32,
}

/// Resize and normalize a decoded grayscale line (either polarity).
pub fn prepare(image: &GrayImage, cfg: &PreprocessConfig) -> Result<PreparedImage> {
    Ok(resize(image, cfg)?.prepare())
}

/// A line resized to the configured height but still 8-bit gray: a quarter of the memory of
/// its [`PreparedImage`]. For lines held in memory before they are read (a loader's queued
/// batches) or read many times (validation sets), normalized each time they are read, since
/// normalizing is cheap beside the network.
#[derive(Debug, Clone)]
pub struct ResizedLine(GrayImage);

impl ResizedLine {
    /// Exactly what [`prepare`] gives for the source this was resized from.
    pub fn prepare(&self) -> PreparedImage {
        let (width, height) = self.0.dimensions();
        PreparedImage {
            data: normalize(&self.0),
            height,
            width,
        }
    }
}

/// The first half of [`prepare`]: check a decoded line's shape and resize it, without
/// normalizing.
pub fn resize(image: &GrayImage, cfg: &PreprocessConfig) -> Result<ResizedLine> {
    resize_stretched(image, cfg, 1.0)
}

/// [`prepare`] with the line stretched horizontally by `factor` (height unchanged) in the same
/// resampling: for reading a line at several widths.
pub fn prepare_stretched(
    image: &GrayImage,
    cfg: &PreprocessConfig,
    factor: f32,
) -> Result<PreparedImage> {
    Ok(resize_stretched(image, cfg, factor)?.prepare())
}

/// [`resize`] with the line stretched horizontally by `factor` (height unchanged) in the same
/// resampling.
pub fn resize_stretched(
    image: &GrayImage,
    cfg: &PreprocessConfig,
    factor: f32,
) -> Result<ResizedLine> {
    let (w, h) = image.dimensions();
    if let Some(e) = shape_error(w, h, cfg.max_source_pixels) {
        return Err(e.into());
    }
    Ok(ResizedLine(resized(image, cfg, factor)))
}

/// Decode an encoded image (PNG, JPEG, TIFF, BMP) and [`prepare`] it.
pub fn prepare_bytes(encoded: &[u8], cfg: &PreprocessConfig) -> Result<PreparedImage> {
    let source = inspect(encoded, cfg.max_source_pixels)?;
    prepare_checked(encoded, &source, cfg)
}

/// Decode a checked source and resize and normalize it. The caller checked `source` against a
/// limit no larger than `cfg.max_source_pixels`.
pub fn prepare_checked(
    encoded: &[u8],
    source: &CheckedSource,
    cfg: &PreprocessConfig,
) -> Result<PreparedImage> {
    let gray = decode_checked(encoded, source)?;
    Ok(ResizedLine(resized(&gray, cfg, 1.0)).prepare())
}

/// `image` at the configured height, aspect ratio kept (times `stretch`), width capped at
/// `max_width`.
fn resized(image: &GrayImage, cfg: &PreprocessConfig, stretch: f32) -> GrayImage {
    let (w, h) = image.dimensions();
    let height = cfg.height.max(1);
    let stretch = f64::from(stretch) * cfg.stretch;
    let scaled = (f64::from(w) * f64::from(height) / f64::from(h) * stretch).round() as u32;
    let width = scaled.clamp(1, cfg.max_width.max(1));
    if (width, height) == (w, h) {
        image.clone()
    } else {
        image::imageops::resize(image, width, height, FilterType::CatmullRom)
    }
}

/// Polarity and contrast normalization (see the module docs for the rule).
fn normalize(gray: &GrayImage) -> Vec<f32> {
    let raw = gray.as_raw();
    let mut hist = [0u64; 256];
    for &v in raw {
        hist[v as usize] += 1;
    }
    let n = raw.len() as u64;
    let percentile = |q: f64| -> f32 {
        let target = ((n as f64 - 1.0) * q).round() as u64;
        let mut seen = 0;
        for (v, &count) in hist.iter().enumerate() {
            seen += count;
            if seen > target {
                return v as f32;
            }
        }
        255.0
    };
    let (dark, median, light) = (percentile(0.01), percentile(0.5), percentile(0.99));
    let light_on_dark = median - dark < light - median;
    let (ink, sign) = if light_on_dark {
        (light, 1.0)
    } else {
        (dark, -1.0)
    };
    let scale = 1.0 / (sign * (ink - median)).max(MIN_CONTRAST);
    raw.iter()
        .map(|&v| ((sign * (f32::from(v) - median)) * scale).clamp(0.0, 1.0))
        .collect()
}

/// Stack prepared lines into a batch: images `[B, 1, H, W]` (zero-padded on the right up to
/// the widest line, rounded up to `width_multiple`) and their true widths `[B]` (i64).
pub fn collate(
    images: &[PreparedImage],
    cfg: &PreprocessConfig,
    device: Device,
) -> (Tensor, Tensor) {
    collate_refs(&images.iter().collect::<Vec<_>>(), cfg, device)
}

/// [`collate`] of lines held elsewhere (a selection of a larger set), without copying them first.
pub fn collate_refs(
    images: &[&PreparedImage],
    cfg: &PreprocessConfig,
    device: Device,
) -> (Tensor, Tensor) {
    let h = cfg.height as usize;
    let multiple = cfg.width_multiple.max(1) as usize;
    let widest = images
        .iter()
        .map(|i| i.width as usize)
        .max()
        .unwrap_or(1)
        .max(1);
    let w = widest.div_ceil(multiple) * multiple;
    let mut buf = vec![0f32; images.len() * h * w];
    for (k, im) in images.iter().enumerate() {
        assert_eq!(
            im.height as usize, h,
            "collate: image {k} has height {} but the config says {h}",
            im.height
        );
        let iw = im.width as usize;
        for (r, row) in im.data.chunks_exact(iw).enumerate() {
            let start = (k * h + r) * w;
            buf[start..start + iw].copy_from_slice(row);
        }
    }
    let widths: Vec<i64> = images.iter().map(|i| i64::from(i.width)).collect();
    let images = Tensor::from_slice(&buf)
        .view([images.len() as i64, 1, h as i64, w as i64])
        .to_device(device);
    (images, Tensor::from_slice(&widths).to_device(device))
}
