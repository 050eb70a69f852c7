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

use std::io::Cursor;

use anyhow::{anyhow, bail, Context, Result};
use image::{imageops::FilterType, DynamicImage, GrayImage, ImageFormat, ImageReader};
use tch::{Device, Tensor};
pub use textrec_contract::config::PreprocessConfig;

/// Widest accepted source shape (width / height): anything wider is not one text line.
pub const MAX_WIDE_ASPECT: f64 = 100.0;
/// Tallest accepted source shape (height / width): a single narrow character such as `l` or
/// `!` cropped tightly stays well below this.
pub const MAX_TALL_ASPECT: f64 = 25.0;
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
    let (w, h) = image.dimensions();
    check_shape(w, h, cfg)?;
    let height = cfg.height.max(1);
    let scaled = (f64::from(w) * f64::from(height) / f64::from(h)).round() as u32;
    let width = scaled.clamp(1, cfg.max_width.max(1));
    let resized = if (width, height) == (w, h) {
        image.clone()
    } else {
        image::imageops::resize(image, width, height, FilterType::CatmullRom)
    };
    Ok(PreparedImage {
        data: normalize(&resized),
        height,
        width,
    })
}

/// Decode an encoded image (PNG, JPEG, TIFF, BMP) and [`prepare`] it.
pub fn prepare_bytes(encoded: &[u8], cfg: &PreprocessConfig) -> Result<PreparedImage> {
    let gray = decode_gray(encoded, cfg.max_source_pixels)?;
    prepare(&gray, cfg)
}

/// Decode an encoded image to 8-bit gray, refusing sources of more than `max_source_pixels`
/// from their header alone. Errors say what is wrong with the data.
pub fn decode_gray(encoded: &[u8], max_source_pixels: u64) -> Result<GrayImage> {
    let (format, w, h) = read_dimensions(encoded)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_source_pixels {
        bail!(
            "image is {w}x{h} = {pixels} pixels, more than the limit of {max_source_pixels} \
             pixels (preprocess.max_source_pixels); send one cropped text line"
        );
    }
    if w == 0 || h == 0 {
        bail!("image has zero size ({w}x{h})");
    }
    let reader = ImageReader::with_format(Cursor::new(encoded), format);
    let decoded = reader
        .decode()
        .map_err(|e| describe_decode_error(format, &e))?;
    Ok(to_gray_on_white(decoded))
}

/// The format and dimensions of an encoded image, read from its header only.
pub fn read_dimensions(encoded: &[u8]) -> Result<(ImageFormat, u32, u32)> {
    if encoded.is_empty() {
        bail!("empty image data (0 bytes)");
    }
    let reader = ImageReader::new(Cursor::new(encoded))
        .with_guessed_format()
        .context("cannot read image data")?;
    let Some(format) = reader.format() else {
        let head: Vec<String> = encoded.iter().take(8).map(|b| format!("{b:02x}")).collect();
        bail!(
            "not a PNG/JPEG/TIFF/BMP image (unrecognised leading bytes {})",
            head.join(" ")
        );
    };
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Tiff | ImageFormat::Bmp
    ) {
        bail!("{format:?} images are not supported (use PNG, JPEG, TIFF or BMP)");
    }
    let (w, h) = reader.into_dimensions().map_err(|e| {
        let what = describe_decode_error(format, &e);
        anyhow!("cannot read the image header: {what}")
    })?;
    Ok((format, w, h))
}

/// Check a source's shape before resizing; the message names the problem and the size.
fn check_shape(w: u32, h: u32, cfg: &PreprocessConfig) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("image has zero size ({w}x{h})");
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > cfg.max_source_pixels {
        bail!(
            "image is {w}x{h} = {pixels} pixels, more than the limit of {} pixels \
             (preprocess.max_source_pixels); send one cropped text line",
            cfg.max_source_pixels
        );
    }
    let (wf, hf) = (f64::from(w), f64::from(h));
    if wf / hf > MAX_WIDE_ASPECT {
        bail!(
            "image is {w}x{h}: wider than {MAX_WIDE_ASPECT}:1 is not a text line (is it a \
             strip or several lines side by side?)"
        );
    }
    if hf / wf > MAX_TALL_ASPECT {
        bail!(
            "image is {w}x{h}: taller than 1:{MAX_TALL_ASPECT} is not a horizontal text line \
             (rotated or vertical text?)"
        );
    }
    Ok(())
}

fn describe_decode_error(format: ImageFormat, e: &image::ImageError) -> anyhow::Error {
    let name = format!("{format:?}").to_uppercase();
    if is_truncation(e) {
        return anyhow!("truncated {name} image: the data ends before the image does ({e})");
    }
    match e {
        image::ImageError::Limits(_) => anyhow!("{name} image exceeds decoding limits: {e}"),
        image::ImageError::Unsupported(_) => anyhow!("unsupported {name} variant: {e}"),
        _ => anyhow!("corrupt {name} image: {e}"),
    }
}

fn is_truncation(e: &image::ImageError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        let text = s.to_string().to_lowercase();
        if [
            "eof",
            "end of file",
            "unexpected end",
            "truncated",
            "not enough data",
        ]
        .iter()
        .any(|needle| text.contains(needle))
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Gray conversion that puts transparent pixels on white (black text on a transparent
/// background would otherwise turn into an all-black image).
fn to_gray_on_white(image: DynamicImage) -> GrayImage {
    if !image.color().has_alpha() {
        return image.into_luma8();
    }
    let la = image.into_luma_alpha8();
    GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        let (l, a) = (u32::from(l), u32::from(a));
        image::Luma([((l * a + 255 * (255 - a) + 127) / 255) as u8])
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Luma};

    fn cfg() -> PreprocessConfig {
        PreprocessConfig {
            height: 32,
            max_width: 256,
            width_multiple: 4,
            max_source_pixels: 1_000_000,
        }
    }

    /// A light page with a dark bar in the middle third (the "ink").
    fn line(w: u32, h: u32, bg: u8, ink: u8) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let inside = x > w / 3 && x < 2 * w / 3 && y > h / 3 && y < 2 * h / 3;
            Luma([if inside { ink } else { bg }])
        })
    }

    fn png(img: &GrayImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::L8,
            )
            .unwrap();
        out
    }

    fn at(p: &PreparedImage, x: u32, y: u32) -> f32 {
        p.data[(y * p.width + x) as usize]
    }

    #[test]
    fn resizes_to_height_keeping_aspect() {
        let p = prepare(&line(300, 60, 250, 10), &cfg()).unwrap();
        assert_eq!((p.height, p.width), (32, 160));
        assert_eq!(p.data.len(), 32 * 160);
        let p = prepare(&line(10, 16, 250, 10), &cfg()).unwrap();
        assert_eq!((p.height, p.width), (32, 20));
    }

    #[test]
    fn wide_lines_are_squeezed_to_max_width() {
        let p = prepare(&line(2000, 40, 250, 10), &cfg()).unwrap();
        assert_eq!((p.height, p.width), (32, 256));
    }

    #[test]
    fn both_polarities_give_bright_ink_on_zero_background() {
        for (bg, ink) in [(240u8, 20u8), (20, 240), (200, 120), (60, 160)] {
            let p = prepare(&line(96, 32, bg, ink), &cfg()).unwrap();
            assert_eq!(at(&p, 2, 2), 0.0, "background of bg={bg} ink={ink}");
            assert!(
                at(&p, 48, 16) > 0.99,
                "ink of bg={bg} ink={ink}: {}",
                at(&p, 48, 16)
            );
        }
    }

    #[test]
    fn blank_image_stays_blank() {
        let noisy = GrayImage::from_fn(64, 32, |x, y| Luma([250 - ((x * 7 + y * 3) % 5) as u8]));
        let p = prepare(&noisy, &cfg()).unwrap();
        assert!(
            p.data.iter().all(|&v| v < 0.1),
            "max {}",
            p.data.iter().cloned().fold(0.0, f32::max)
        );
    }

    #[test]
    fn transparent_background_counts_as_white() {
        let rgba = image::RgbaImage::from_fn(60, 20, |x, _| {
            if (20..40).contains(&x) {
                image::Rgba([0, 0, 0, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        });
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(rgba.as_raw(), 60, 20, image::ExtendedColorType::Rgba8)
            .unwrap();
        let p = prepare_bytes(&bytes, &cfg()).unwrap();
        assert_eq!(at(&p, 2, 10), 0.0);
        assert!(at(&p, 48, 10) > 0.99);
    }

    #[test]
    fn bytes_and_decoded_images_agree() {
        let img = line(120, 40, 230, 30);
        assert_eq!(
            prepare_bytes(&png(&img), &cfg()).unwrap(),
            prepare(&img, &cfg()).unwrap()
        );
    }

    #[test]
    fn oversized_source_is_rejected_from_the_header() {
        // A 2000x1000 PNG whose pixel data is cut off: only the header can be read, so the
        // size error proves the check ran before decoding.
        let mut bytes = png(&GrayImage::new(2000, 1000));
        bytes.truncate(100);
        let err = prepare_bytes(&bytes, &cfg()).unwrap_err().to_string();
        assert!(
            err.contains("2000x1000") && err.contains("2000000") && err.contains("1000000"),
            "{err}"
        );
        let err = prepare(&GrayImage::new(2000, 1000), &cfg())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_source_pixels"), "{err}");
    }

    #[test]
    fn absurd_shapes_are_rejected_with_reasons() {
        let err = prepare(&GrayImage::new(0, 10), &cfg())
            .unwrap_err()
            .to_string();
        assert!(err.contains("zero size"), "{err}");
        let err = prepare(&GrayImage::new(5000, 10), &cfg())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wider than") && err.contains("5000x10"),
            "{err}"
        );
        let err = prepare(&GrayImage::new(2, 200), &cfg())
            .unwrap_err()
            .to_string();
        assert!(err.contains("taller than"), "{err}");
        prepare(&GrayImage::new(4, 80), &cfg()).unwrap();
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let err = prepare_bytes(b"<html>hello</html>", &cfg())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a PNG/JPEG/TIFF/BMP image") && err.contains("3c 68"),
            "{err}"
        );
        let err = prepare_bytes(b"", &cfg()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");

        let full = png(&line(120, 40, 230, 30));
        let err = prepare_bytes(&full[..full.len() - 30], &cfg())
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated PNG"), "{err}");

        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .write_image(
                line(120, 40, 230, 30).as_raw(),
                120,
                40,
                image::ExtendedColorType::L8,
            )
            .unwrap();
        prepare_bytes(&jpeg, &cfg()).unwrap();
        let err = prepare_bytes(&jpeg[..jpeg.len() / 2], &cfg())
            .unwrap_err()
            .to_string();
        assert!(err.contains("JPEG"), "{err}");

        let mut corrupt = full.clone();
        for b in corrupt[60..90].iter_mut() {
            *b ^= 0x5a;
        }
        let err = prepare_bytes(&corrupt, &cfg()).unwrap_err().to_string();
        assert!(err.contains("PNG"), "{err}");
    }

    #[test]
    fn collate_pads_to_a_width_multiple() {
        let c = cfg();
        let a = PreparedImage {
            data: vec![1.0; 32 * 5],
            height: 32,
            width: 5,
        };
        let b = PreparedImage {
            data: vec![0.5; 32 * 9],
            height: 32,
            width: 9,
        };
        let (images, widths) = collate(&[a, b], &c, Device::Cpu);
        assert_eq!(images.size(), vec![2, 1, 32, 12]);
        assert_eq!(Vec::<i64>::try_from(&widths).unwrap(), vec![5, 9]);
        assert_eq!(images.double_value(&[0, 0, 3, 4]), 1.0);
        assert_eq!(images.double_value(&[0, 0, 3, 5]), 0.0);
        assert_eq!(images.double_value(&[1, 0, 31, 8]), 0.5);
        assert_eq!(images.double_value(&[1, 0, 31, 9]), 0.0);
        assert_eq!(images.kind(), tch::Kind::Float);
    }
}
