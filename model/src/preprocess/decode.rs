//! Step 1 of preprocessing: from encoded bytes to an 8-bit gray line, with the source's size
//! and shape checked from its header before any pixel is decoded (see the parent module).

use std::io::Cursor;

use anyhow::{anyhow, Result};
use image::{ColorType, DynamicImage, GrayImage, ImageBuffer, ImageFormat, ImageReader};

/// Widest accepted source shape (width / height): anything wider is not one text line.
pub const MAX_WIDE_ASPECT: f64 = 100.0;
/// Tallest accepted source shape (height / width): a single narrow character such as `l` or
/// `!` cropped tightly stays well below this.
pub const MAX_TALL_ASPECT: f64 = 25.0;
/// Bytes a decoder may allocate per source pixel: 16-bit RGBA, the widest sample layout of the
/// accepted formats. Anything needing more (32-bit float TIFF) is refused rather than decoded.
pub const MAX_DECODE_BYTES_PER_PIXEL: u64 = 8;

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

pub(super) fn shape_error(width: u32, height: u32, max_pixels: u64) -> Option<SourceError> {
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
pub(super) fn to_gray_on_white(image: DynamicImage) -> GrayImage {
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
