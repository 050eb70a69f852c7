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

use std::io::Cursor;

use anyhow::{anyhow, Result};
use image::{
    imageops::FilterType, ColorType, DynamicImage, GrayImage, ImageBuffer, ImageFormat, ImageReader,
};
use tch::{Device, Tensor};
pub use textrec_contract::config::PreprocessConfig;

/// Widest accepted source shape (width / height): anything wider is not one text line.
pub const MAX_WIDE_ASPECT: f64 = 100.0;
/// Tallest accepted source shape (height / width): a single narrow character such as `l` or
/// `!` cropped tightly stays well below this.
pub const MAX_TALL_ASPECT: f64 = 25.0;
/// Bytes a decoder may allocate per source pixel: 16-bit RGBA, the widest sample layout of the
/// accepted formats. Anything needing more (32-bit float TIFF) is refused rather than decoded.
pub const MAX_DECODE_BYTES_PER_PIXEL: u64 = 8;
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

/// What an encoded image says about itself, read without decoding any pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// PNG, JPEG, TIFF or BMP.
    pub format: ImageFormat,
    /// Width in pixels, as declared.
    pub width: u32,
    /// Height in pixels, as declared.
    pub height: u32,
}

impl ImageHeader {
    /// Read the format and dimensions of an encoded image from its header only.
    pub fn read(encoded: &[u8]) -> Result<Self, SourceError> {
        if encoded.is_empty() {
            return Err(SourceError::Empty);
        }
        let reader = ImageReader::new(Cursor::new(encoded))
            .with_guessed_format()
            .map_err(|e| SourceError::Header(e.to_string()))?;
        let Some(format) = reader.format() else {
            let head: Vec<String> = encoded.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(SourceError::UnknownFormat(head.join(" ")));
        };
        if !matches!(
            format,
            ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Tiff | ImageFormat::Bmp
        ) {
            return Err(SourceError::Unsupported(format!("{format:?}")));
        }
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| SourceError::Header(format!("{:#}", describe_decode_error(format, &e))))?;
        Ok(Self {
            format,
            width,
            height,
        })
    }

    /// Width × height.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Why a source image is refused before decoding. Each variant says what is wrong and names
/// the size where it matters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No bytes at all.
    #[error("empty image data (0 bytes)")]
    Empty,
    /// Not an image format we know; the leading bytes, in hex.
    #[error("not a PNG/JPEG/TIFF/BMP image (unrecognised leading bytes {0})")]
    UnknownFormat(String),
    /// An image format we recognise but do not decode.
    #[error("{0} images are not supported (use PNG, JPEG, TIFF or BMP)")]
    Unsupported(String),
    /// The header itself is unreadable.
    #[error("cannot read the image header: {0}")]
    Header(String),
    /// Width or height is zero.
    #[error("image has zero size ({width}x{height})")]
    ZeroSize {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// More pixels than allowed (a whole page, or a decompression bomb).
    #[error(
        "image is {width}x{height} = {pixels} pixels, more than the limit of {limit} pixels \
         (preprocess.max_source_pixels); send one cropped text line"
    )]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Width × height.
        pixels: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// Wider than [`MAX_WIDE_ASPECT`].
    #[error(
        "image is {width}x{height}: wider than {MAX_WIDE_ASPECT}:1 is not a text line (is it a \
         strip or several lines side by side?)"
    )]
    TooWide {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// Taller than [`MAX_TALL_ASPECT`].
    #[error(
        "image is {width}x{height}: taller than 1:{MAX_TALL_ASPECT} is not a horizontal text \
         line (rotated or vertical text?)"
    )]
    TooTall {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
}

/// A header that passed [`check_source`]. Decoding takes one, so no image is decoded whose size
/// and shape were not checked first, and nothing is checked twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedSource(ImageHeader);

impl CheckedSource {
    /// The checked header.
    pub fn header(&self) -> &ImageHeader {
        &self.0
    }

    /// Width × height: what decoding will hold in memory, per sample.
    pub fn pixels(&self) -> u64 {
        self.0.pixels()
    }
}

/// Check a source's declared shape: non-zero, at most `max_pixels`, and shaped like one
/// horizontal text line.
pub fn check_source(header: ImageHeader, max_pixels: u64) -> Result<CheckedSource, SourceError> {
    match shape_error(header.width, header.height, max_pixels) {
        Some(e) => Err(e),
        None => Ok(CheckedSource(header)),
    }
}

/// [`ImageHeader::read`] then [`check_source`].
pub fn inspect(encoded: &[u8], max_pixels: u64) -> Result<CheckedSource, SourceError> {
    check_source(ImageHeader::read(encoded)?, max_pixels)
}

fn shape_error(width: u32, height: u32, max_pixels: u64) -> Option<SourceError> {
    if width == 0 || height == 0 {
        return Some(SourceError::ZeroSize { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Some(SourceError::TooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let (wf, hf) = (f64::from(width), f64::from(height));
    if wf / hf > MAX_WIDE_ASPECT {
        return Some(SourceError::TooWide { width, height });
    }
    if hf / wf > MAX_TALL_ASPECT {
        return Some(SourceError::TooTall { width, height });
    }
    None
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

/// Decode an encoded image to 8-bit gray, refusing sources of more than `max_source_pixels`
/// or not shaped like a text line from their header alone. Errors say what is wrong with the
/// data.
pub fn decode_gray(encoded: &[u8], max_source_pixels: u64) -> Result<GrayImage> {
    let source = inspect(encoded, max_source_pixels)?;
    decode_checked(encoded, &source)
}

/// Decode a checked source to 8-bit gray (transparency composited on white).
///
/// The decoder may allocate at most [`MAX_DECODE_BYTES_PER_PIXEL`] bytes per declared pixel
/// and may not produce an image larger than the header declared. Non-interlaced PNGs (most
/// line images) are decoded row by row straight to gray, so the whole decode holds one byte
/// per pixel however wide the samples are.
pub fn decode_checked(encoded: &[u8], source: &CheckedSource) -> Result<GrayImage> {
    let header = *source.header();
    let max_alloc = header
        .pixels()
        .saturating_mul(MAX_DECODE_BYTES_PER_PIXEL)
        .saturating_add(1 << 20);
    if header.format == ImageFormat::Png {
        if let Some(gray) = decode_png_rows(encoded, &header, max_alloc)? {
            return Ok(gray);
        }
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(header.width);
    limits.max_image_height = Some(header.height);
    limits.max_alloc = Some(max_alloc);
    let mut reader = ImageReader::with_format(Cursor::new(encoded), header.format);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| describe_decode_error(header.format, &e))?;
    let gray = to_gray_on_white(decoded);
    if gray.dimensions() != (header.width, header.height) {
        return Err(anyhow!(
            "corrupt {} image: the header says {}x{} but {}x{} pixels were decoded",
            format_name(header.format),
            header.width,
            header.height,
            gray.width(),
            gray.height()
        ));
    }
    Ok(gray)
}

/// A non-interlaced PNG, decoded one row at a time into gray; `None` for an interlaced one
/// (its rows arrive in seven passes), which the caller decodes whole. Each row goes through
/// the same per-pixel conversion as a whole decoded image, with the same transformations
/// (`EXPAND`, as the `image` crate sets), so the result is identical.
fn decode_png_rows(
    encoded: &[u8],
    header: &ImageHeader,
    max_alloc: u64,
) -> Result<Option<GrayImage>> {
    let png_error = |e: png::DecodingError| describe_png_error(&e);
    let bytes = usize::try_from(max_alloc).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(encoded), png::Limits { bytes });
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let info = reader.info();
    if (info.width, info.height) != (header.width, header.height) {
        return Err(anyhow!(
            "corrupt PNG image: the header read twice gave two sizes ({}x{} and {}x{})",
            header.width,
            header.height,
            info.width,
            info.height
        ));
    }
    if info.interlaced {
        return Ok(None);
    }
    let color = match reader.output_color_type() {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => ColorType::L8,
        (png::ColorType::Grayscale, png::BitDepth::Sixteen) => ColorType::L16,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => ColorType::La8,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Sixteen) => ColorType::La16,
        (png::ColorType::Rgb, png::BitDepth::Eight) => ColorType::Rgb8,
        (png::ColorType::Rgb, png::BitDepth::Sixteen) => ColorType::Rgb16,
        (png::ColorType::Rgba, png::BitDepth::Eight) => ColorType::Rgba8,
        (png::ColorType::Rgba, png::BitDepth::Sixteen) => ColorType::Rgba16,
        (color, depth) => {
            return Err(anyhow!(
                "unsupported PNG variant: {color:?} at {depth:?} bits after expansion"
            ))
        }
    };
    let (w, h) = (header.width, header.height);
    let mut gray = Vec::with_capacity(w as usize * h as usize);
    while let Some(row) = reader.next_row().map_err(png_error)? {
        let data = row.data();
        if color == ColorType::L8 {
            gray.extend_from_slice(data);
        } else {
            let row = png_row_image(color, w, data)
                .ok_or_else(|| anyhow!("corrupt PNG image: a row of {} bytes", data.len()))?;
            gray.extend_from_slice(to_gray_on_white(row).as_raw());
        }
    }
    GrayImage::from_raw(w, h, gray)
        .map(Some)
        .ok_or_else(|| anyhow!("truncated PNG image: fewer rows than the header's {h}"))
}

/// One decoded PNG row as a `width`×1 image of its native sample type (16-bit samples are
/// big-endian in PNG).
fn png_row_image(color: ColorType, width: u32, data: &[u8]) -> Option<DynamicImage> {
    let wide = || -> Vec<u16> {
        data.chunks_exact(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .collect()
    };
    Some(match color {
        ColorType::L8 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(width, 1, data.to_vec())?),
        ColorType::La8 => {
            DynamicImage::ImageLumaA8(ImageBuffer::from_raw(width, 1, data.to_vec())?)
        }
        ColorType::Rgb8 => DynamicImage::ImageRgb8(ImageBuffer::from_raw(width, 1, data.to_vec())?),
        ColorType::Rgba8 => {
            DynamicImage::ImageRgba8(ImageBuffer::from_raw(width, 1, data.to_vec())?)
        }
        ColorType::L16 => DynamicImage::ImageLuma16(ImageBuffer::from_raw(width, 1, wide())?),
        ColorType::La16 => DynamicImage::ImageLumaA16(ImageBuffer::from_raw(width, 1, wide())?),
        ColorType::Rgb16 => DynamicImage::ImageRgb16(ImageBuffer::from_raw(width, 1, wide())?),
        ColorType::Rgba16 => DynamicImage::ImageRgba16(ImageBuffer::from_raw(width, 1, wide())?),
        _ => return None,
    })
}

fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

fn describe_decode_error(format: ImageFormat, e: &image::ImageError) -> anyhow::Error {
    let name = format_name(format);
    if is_truncation(e) {
        return anyhow!("truncated {name} image: the data ends before the image does ({e})");
    }
    match e {
        image::ImageError::Limits(_) => anyhow!("{name} image exceeds decoding limits: {e}"),
        image::ImageError::Unsupported(_) => anyhow!("unsupported {name} variant: {e}"),
        _ => anyhow!("corrupt {name} image: {e}"),
    }
}

fn describe_png_error(e: &png::DecodingError) -> anyhow::Error {
    if is_truncation(e) {
        return anyhow!("truncated PNG image: the data ends before the image does ({e})");
    }
    match e {
        png::DecodingError::LimitsExceeded => anyhow!("PNG image exceeds decoding limits: {e}"),
        _ => anyhow!("corrupt PNG image: {e}"),
    }
}

fn is_truncation(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        if let Some(png::DecodingError::IoError(io)) = s.downcast_ref::<png::DecodingError>() {
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
    let (w, h) = la.dimensions();
    let gray = la
        .as_raw()
        .chunks_exact(2)
        .map(|p| {
            let (l, a) = (u32::from(p[0]), u32::from(p[1]));
            ((l * a + 255 * (255 - a) + 127) / 255) as u8
        })
        .collect();
    GrayImage::from_raw(w, h, gray).expect("one gray value per pixel")
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
            stretch: 1.0,
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
    fn the_configured_stretch_widens_every_line_and_multiplies_a_reading_width() {
        let wide = PreprocessConfig {
            stretch: 1.25,
            ..cfg()
        };
        let p = prepare(&line(300, 60, 250, 10), &wide).unwrap();
        assert_eq!((p.height, p.width), (32, 200));
        let p = prepare_stretched(&line(300, 60, 250, 10), &wide, 1.2).unwrap();
        assert_eq!((p.height, p.width), (32, 240));
        // The width cap still holds.
        let p = prepare(&line(2000, 40, 250, 10), &wide).unwrap();
        assert_eq!(p.width, 256);
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

    /// A PNG whose header claims `w`×`h` pixels over an 8x8 image's data (CRC fixed up), so
    /// only the header can be read.
    fn header_only_png(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = png(&line(8, 8, 250, 10));
        bytes[16..20].copy_from_slice(&w.to_be_bytes());
        bytes[20..24].copy_from_slice(&h.to_be_bytes());
        let mut crc = 0xffff_ffffu32;
        for &b in &bytes[12..29] {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        bytes[29..33].copy_from_slice(&(!crc).to_be_bytes());
        bytes
    }

    #[test]
    fn shape_is_checked_from_the_header_before_decoding() {
        // Neither header is followed by pixel data for its size: the errors prove that the
        // checks ran on the header alone.
        let err = inspect(&header_only_png(16_000_000, 1), u64::MAX).unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::TooWide {
                    width: 16_000_000,
                    ..
                }
            ),
            "{err}"
        );
        let err = inspect(&header_only_png(16_000_000, 1), 4_000_000).unwrap_err();
        assert!(matches!(err, SourceError::TooManyPixels { .. }), "{err}");
        let err = inspect(&header_only_png(10, 400), u64::MAX).unwrap_err();
        assert!(err.to_string().contains("taller than"), "{err}");
        let err = decode_gray(&header_only_png(5_000, 10), u64::MAX).unwrap_err();
        assert!(err.to_string().contains("5000x10"), "{err}");
        let ok = inspect(&header_only_png(400, 40), 16_000).unwrap();
        assert_eq!(ok.pixels(), 16_000);
        assert_eq!(ok.header().format, ImageFormat::Png);
        assert!(matches!(
            ImageHeader::read(b"GIF89a\x01\x00\x01\x00"),
            Err(SourceError::Unsupported(_))
        ));
    }

    /// Every PNG layout decodes row by row to exactly what a whole decode gives.
    #[test]
    fn png_rows_decode_like_a_whole_image() {
        let (w, h) = (37u32, 11u32);
        let value = |x: u32, y: u32, k: u32| ((x * 53 + y * 31 + k * 97) % 256) as u8;
        let wide = |x: u32, y: u32, k: u32| (u16::from(value(x, y, k)) << 8) | (x * 7 + k) as u16;
        let images: Vec<DynamicImage> = vec![
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([value(x, y, 0)]))),
            DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
                image::LumaA([value(x, y, 0), value(x, y, 1)])
            })),
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgb([value(x, y, 0), value(x, y, 1), value(x, y, 2)])
            })),
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgba([
                    value(x, y, 0),
                    value(x, y, 1),
                    value(x, y, 2),
                    value(x, y, 3),
                ])
            })),
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([wide(x, y, 0)]))),
            DynamicImage::ImageLumaA16(ImageBuffer::from_fn(w, h, |x, y| {
                image::LumaA([wide(x, y, 0), wide(x, y, 1)])
            })),
            DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgb([wide(x, y, 0), wide(x, y, 1), wide(x, y, 2)])
            })),
            DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgba([wide(x, y, 0), wide(x, y, 1), wide(x, y, 2), wide(x, y, 3)])
            })),
        ];
        for img in images {
            let mut bytes = Vec::new();
            img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
                .unwrap();
            let whole = to_gray_on_white(image::load_from_memory(&bytes).unwrap());
            let rows = decode_gray(&bytes, u64::MAX).unwrap();
            assert_eq!(rows, whole, "{:?}", img.color());
        }
        // A palette image with transparency (tRNS), written by the png crate itself.
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, w, h);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![0, 0, 0, 255, 255, 255, 200, 10, 10]);
            enc.set_trns(vec![255, 0, 128]);
            let mut writer = enc.write_header().unwrap();
            let data: Vec<u8> = (0..w * h).map(|i| (i % 3) as u8).collect();
            writer.write_image_data(&data).unwrap();
        }
        let whole = to_gray_on_white(image::load_from_memory(&bytes).unwrap());
        assert_eq!(decode_gray(&bytes, u64::MAX).unwrap(), whole);
    }

    #[test]
    fn trailing_junk_after_a_png_is_ignored() {
        let img = line(120, 40, 230, 30);
        let mut bytes = png(&img);
        bytes.extend_from_slice(b"junk after IEND");
        assert_eq!(decode_gray(&bytes, u64::MAX).unwrap(), img);
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
