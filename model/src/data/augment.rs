//! Turning a rendered ink canvas into a plausible scanned or photographed line.
//!
//! `strength` in `[0, 1]` scales both how often each distortion is applied and how strong it
//! is; at 0 the result is the clean render (black ink on white, margins only). Order follows
//! the physical process: stroke width (pen), geometry (how the paper lies), paper and ink
//! tones, then optics (blur) and sensor noise.

use image::{GrayImage, Luma};
use rand::Rng;

use super::render::{gaussian, Canvas};

/// Add random margins, distort and colour a rendered line; `px` is the font size it was
/// rendered at (distortions are proportional to it).
pub fn augment<R: Rng>(ink: Canvas, px: f32, strength: f32, rng: &mut R) -> GrayImage {
    let s = strength.clamp(0.0, 1.0);
    let mut ink = with_margins(ink, px, rng);
    if rng.gen_bool(f64::from(0.35 * s)) {
        ink = morph(&ink, true, rng.gen_range(0.4..1.0));
    } else if px > 28.0 && rng.gen_bool(f64::from(0.2 * s)) {
        // Thin only larger renders: at small sizes erosion wipes out hairlines.
        ink = morph(&ink, false, rng.gen_range(0.3..0.7));
    }
    let ink = warp(&ink, px, s, rng);
    let mut page = paint(&ink, s, rng);
    if rng.gen_bool(f64::from(0.5 * s)) {
        let sigma = rng.gen_range(0.3..0.4 + 1.0 * s);
        page = blur(&page, sigma);
    }
    if rng.gen_bool(f64::from(0.7 * s)) {
        let sigma = rng.gen_range(0.0..0.08 * s);
        for v in page.data.iter_mut() {
            *v += sigma * gaussian(rng);
        }
    }
    to_image(&page)
}

/// Distort a stored line image (a scan, a flagged line) the way [`augment`] distorts renders.
/// The image becomes ink coverage first, taking the darker side as ink whatever the polarity;
/// the font size distortions scale with is estimated from the line height.
pub fn augment_image<R: Rng>(image: &GrayImage, strength: f32, rng: &mut R) -> GrayImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mean = image.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / (w * h).max(1) as f64;
    let dark_ink = mean >= 127.5;
    let data = image
        .pixels()
        .map(|p| {
            let v = f32::from(p.0[0]) / 255.0;
            if dark_ink {
                1.0 - v
            } else {
                v
            }
        })
        .collect();
    let ink = Canvas {
        width: w,
        height: h,
        data,
    };
    // Glyphs fill roughly two thirds of a tightly cropped line's height.
    let px = (h as f32 * 0.65).max(8.0);
    augment(ink, px, strength, rng)
}

/// Pad the tight crop: the network must cope with lines cropped loosely or tightly.
fn with_margins<R: Rng>(ink: Canvas, px: f32, rng: &mut R) -> Canvas {
    let mut m = || -> [usize; 4] {
        [
            (rng.gen_range(0.02..0.6) * px) as usize,
            (rng.gen_range(0.02..0.25) * px) as usize,
            (rng.gen_range(0.02..0.6) * px) as usize,
            (rng.gen_range(0.02..0.25) * px) as usize,
        ]
    };
    let [left, top, right, bottom] = m();
    let mut out = Canvas::new(ink.width + left + right, ink.height + top + bottom);
    for y in 0..ink.height {
        let dst = (y + top) * out.width + left;
        out.data[dst..dst + ink.width]
            .copy_from_slice(&ink.data[y * ink.width..(y + 1) * ink.width]);
    }
    out
}

/// Grey-level dilation (`thicken`) or erosion over a 3x3 cross, blended by `amount` so the
/// stroke width changes by a fraction of a pixel as often as by a whole one.
fn morph(c: &Canvas, thicken: bool, amount: f32) -> Canvas {
    let mut out = cross_filter(c, thicken);
    for (target, v) in out.data.iter_mut().zip(&c.data) {
        *target = v + amount * (*target - v);
    }
    out
}

/// Every pixel's maximum (`thicken`) or minimum over itself and its four neighbours: a
/// one-pixel grey-level dilation or erosion.
pub(super) fn cross_filter(c: &Canvas, thicken: bool) -> Canvas {
    let mut out = c.clone();
    for y in 0..c.height as isize {
        for x in 0..c.width as isize {
            let n = [
                c.at(x, y),
                c.at(x - 1, y),
                c.at(x + 1, y),
                c.at(x, y - 1),
                c.at(x, y + 1),
            ];
            out.data[y as usize * c.width + x as usize] = if thicken {
                n.iter().copied().fold(0.0, f32::max)
            } else {
                n.iter().copied().fold(1.0, f32::min)
            };
        }
    }
    out
}

/// Rotation, slant, horizontal stretch and a smooth elastic displacement, in one resampling
/// pass (bilinear). The output canvas grows to hold the whole transformed line.
fn warp<R: Rng>(c: &Canvas, px: f32, s: f32, rng: &mut R) -> Canvas {
    if s <= 0.0 {
        return c.clone();
    }
    let angle = (rng.gen_range(-3.0f32..3.0) * s).to_radians();
    let shear = if rng.gen_bool(f64::from(0.6 * s)) {
        rng.gen_range(-0.35..0.35) * s
    } else {
        0.0
    };
    let stretch = (rng.gen_range(-0.25f32..0.25) * s).exp();
    let elastic = rng.gen_bool(f64::from(0.5 * s));
    let amp = if elastic {
        rng.gen_range(0.0..0.05 * px * s)
    } else {
        0.0
    };
    let waves: Vec<[f32; 4]> = (0..2)
        .map(|_| {
            let period = rng.gen_range(0.6..2.5) * px;
            [
                std::f32::consts::TAU / period,
                rng.gen_range(0.0..std::f32::consts::TAU),
                amp,
                rng.gen(),
            ]
        })
        .collect();
    // Forward map: x' = a*x + b*y, y' = c*x + d*y (stretch, then shear, then rotate).
    let (sin, cos) = angle.sin_cos();
    let (m00, m01) = (stretch, shear);
    let (a, b, cc, d) = (cos * m00, cos * m01 - sin, sin * m00, sin * m01 + cos);
    let corners = [
        (0.0, 0.0),
        (c.width as f32, 0.0),
        (0.0, c.height as f32),
        (c.width as f32, c.height as f32),
    ];
    let xs = corners.map(|(x, y)| a * x + b * y);
    let ys = corners.map(|(x, y)| cc * x + d * y);
    let pad = amp.ceil() + 1.0;
    let min_x = xs.iter().copied().fold(f32::MAX, f32::min) - pad;
    let min_y = ys.iter().copied().fold(f32::MAX, f32::min) - pad;
    let max_x = xs.iter().copied().fold(f32::MIN, f32::max) + pad;
    let max_y = ys.iter().copied().fold(f32::MIN, f32::max) + pad;
    let (w, h) = (
        (max_x - min_x).ceil() as usize,
        (max_y - min_y).ceil() as usize,
    );
    let det = a * d - b * cc;
    let (ia, ib, ic, id) = (d / det, -b / det, -cc / det, a / det);
    let mut out = Canvas::new(w.max(1), h.max(1));
    for oy in 0..h {
        for ox in 0..w {
            let (mut x, mut y) = (ox as f32 + min_x, oy as f32 + min_y);
            if elastic {
                for [k, phase, amp, dir] in &waves {
                    // dir picks whether this wave bends lines (dy from x) or columns (dx from y).
                    if *dir < 0.5 {
                        y += amp * (k * x + phase).sin();
                    } else {
                        x += amp * (k * y + phase).sin();
                    }
                }
            }
            let sx = ia * x + ib * y;
            let sy = ic * x + id * y;
            out.data[oy * w + ox] = bilinear(c, sx - 0.5, sy - 0.5);
        }
    }
    out
}

#[inline]
fn bilinear(c: &Canvas, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (xi, yi) = (x0 as isize, y0 as isize);
    let top = c.at(xi, yi) * (1.0 - fx) + c.at(xi + 1, yi) * fx;
    let bottom = c.at(xi, yi + 1) * (1.0 - fx) + c.at(xi + 1, yi + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Gray page (1 = white): paper level, gradient and texture, ink tone and uneven pressure.
fn paint<R: Rng>(ink: &Canvas, s: f32, rng: &mut R) -> Canvas {
    let (w, h) = (ink.width, ink.height);
    let paper = 1.0 - rng.gen_range(0.0..=0.3 * s);
    let ink_tone = (rng.gen_range(0.0..=0.55 * s)).min(paper - 0.35);
    let (gx, gy) = if rng.gen_bool(f64::from(0.5 * s)) {
        let g = rng.gen_range(-0.2..0.2) * s;
        let dir: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        (g * dir.cos() / w as f32, g * dir.sin() / h as f32)
    } else {
        (0.0, 0.0)
    };
    let texture = rng.gen_bool(f64::from(0.6 * s)).then(|| {
        let cell = rng.gen_range(3.0..14.0f32);
        ValueNoise::new(w, h, cell, rng.gen_range(0.0..0.12) * s, rng)
    });
    let pressure = rng.gen_bool(f64::from(0.4 * s)).then(|| {
        let cell = rng.gen_range(8.0..40.0f32);
        ValueNoise::new(w, h, cell, rng.gen_range(0.0..0.5) * s, rng)
    });
    let mut out = Canvas::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let mut bg =
                paper + gx * (x as f32 - w as f32 / 2.0) + gy * (y as f32 - h as f32 / 2.0);
            if let Some(t) = &texture {
                bg += t.at(x, y);
            }
            let mut cov = ink.data[y * w + x];
            if let Some(p) = &pressure {
                cov *= 1.0 - p.at(x, y).abs();
            }
            out.data[y * w + x] = bg + (ink_tone - bg) * cov;
        }
    }
    out
}

/// Smooth random field: random values on a coarse grid, bilinearly interpolated, centred on
/// zero with the given amplitude.
pub(super) struct ValueNoise {
    grid: Vec<f32>,
    gw: usize,
    cell: f32,
}

impl ValueNoise {
    pub(super) fn new<R: Rng>(w: usize, h: usize, cell: f32, amp: f32, rng: &mut R) -> Self {
        let gw = (w as f32 / cell) as usize + 2;
        let gh = (h as f32 / cell) as usize + 2;
        let grid = (0..gw * gh)
            .map(|_| amp * rng.gen_range(-1.0..1.0))
            .collect();
        Self { grid, gw, cell }
    }

    #[inline]
    pub(super) fn at(&self, x: usize, y: usize) -> f32 {
        let (fx, fy) = (x as f32 / self.cell, y as f32 / self.cell);
        let (x0, y0) = (fx as usize, fy as usize);
        let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
        let g = |i: usize, j: usize| self.grid[j * self.gw + i];
        let top = g(x0, y0) * (1.0 - tx) + g(x0 + 1, y0) * tx;
        let bottom = g(x0, y0 + 1) * (1.0 - tx) + g(x0 + 1, y0 + 1) * tx;
        top * (1.0 - ty) + bottom * ty
    }
}

/// Separable Gaussian blur with edge clamping.
fn blur(c: &Canvas, sigma: f32) -> Canvas {
    let r = (2.5 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let (w, h) = (c.width as isize, c.height as isize);
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, i) in kernel.iter().zip(-r..=r) {
                    let (sx, sy) = if horizontal {
                        ((x + i).clamp(0, w - 1), y)
                    } else {
                        (x, (y + i).clamp(0, h - 1))
                    };
                    acc += k * src[(sy * w + sx) as usize];
                }
                out[(y * w + x) as usize] = acc;
            }
        }
        out
    };
    let data = pass(&pass(&c.data, true), false);
    Canvas {
        width: c.width,
        height: c.height,
        data,
    }
}

fn to_image(page: &Canvas) -> GrayImage {
    GrayImage::from_fn(page.width as u32, page.height as u32, |x, y| {
        let v = page.data[y as usize * page.width + x as usize];
        Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn bar() -> Canvas {
        let mut c = Canvas::new(60, 20);
        for y in 5..15 {
            for x in 10..50 {
                c.data[y * 60 + x] = 1.0;
            }
        }
        c
    }

    #[test]
    fn zero_strength_is_a_clean_render_with_margins() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let img = augment(bar(), 30.0, 0.0, &mut rng);
        assert!(img.width() >= 60 && img.height() >= 20);
        let values: std::collections::BTreeSet<u8> = img.pixels().map(|p| p.0[0]).collect();
        assert_eq!(values.into_iter().collect::<Vec<_>>(), vec![0, 255]);
    }

    #[test]
    fn stored_images_of_either_polarity_come_out_dark_on_light() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let light_on_dark = GrayImage::from_fn(60, 20, |x, y| {
            Luma([if (8..12).contains(&y) && x % 7 < 4 {
                240
            } else {
                10
            }])
        });
        let mut dark_on_light = light_on_dark.clone();
        image::imageops::invert(&mut dark_on_light);
        for img in [light_on_dark, dark_on_light] {
            let out = augment_image(&img, 0.0, &mut rng);
            let mean =
                out.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / out.pixels().len() as f64;
            assert!(mean > 150.0, "paper must be light: {mean}");
            assert!(out.pixels().any(|p| p.0[0] < 60), "the ink must survive");
            assert!(out.width() >= 60 && out.height() >= 20, "margins only grow");
        }
    }

    #[test]
    fn strong_augmentation_keeps_dark_ink_on_light_paper() {
        for seed in 0..30 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let img = augment(bar(), 30.0, 1.0, &mut rng);
            let mut v: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
            v.sort_unstable();
            let (dark, median) = (v[v.len() / 100], v[v.len() / 2]);
            assert!(
                median as i32 - dark as i32 > 40,
                "seed {seed}: dark {dark} median {median}"
            );
        }
    }

    #[test]
    fn blur_preserves_mean_and_morph_changes_ink() {
        let c = bar();
        let b = blur(&c, 1.0);
        let mean = |c: &Canvas| c.data.iter().sum::<f32>() / c.data.len() as f32;
        assert!((mean(&b) - mean(&c)).abs() < 1e-3);
        assert!(mean(&morph(&c, true, 1.0)) > mean(&c));
        assert!(mean(&morph(&c, false, 1.0)) < mean(&c));
    }
}
