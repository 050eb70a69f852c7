use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageEncoder, ImageFormat, Luma};

use super::decode::to_gray_on_white;
use super::*;

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
