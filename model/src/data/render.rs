//! Drawing a line of text with one font into an ink-coverage canvas.
//!
//! The canvas holds coverage in `[0, 1]` (1 = fully inked), not gray levels, so that
//! augmentation can thicken strokes and warp geometry before ink and paper colours are
//! chosen.

use ab_glyph::{point, Font, FontArc, PxScale, ScaleFont};
use rand::Rng;

/// Ink coverage, row-major, `width * height` values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Coverage values.
    pub data: Vec<f32>,
}

impl Canvas {
    /// An empty (un-inked) canvas.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }

    /// Coverage at integer coordinates, 0 outside.
    #[inline]
    pub fn at(&self, x: isize, y: isize) -> f32 {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            0.0
        } else {
            self.data[y as usize * self.width + x as usize]
        }
    }
}

/// How a line is laid out; drawn at random by [`LayoutParams::sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayoutParams {
    /// Font size in pixels (em height).
    pub px: f32,
    /// Extra space after each glyph, as a fraction of `px` (negative = tighter).
    pub tracking: f32,
    /// Extra width of each space, as a fraction of `px`.
    pub word_gap: f32,
    /// Standard deviation of each glyph's vertical offset and of its extra spacing, as a
    /// fraction of `px` (a hand does not keep to the baseline).
    pub jitter: f32,
}

impl LayoutParams {
    /// Random layout: the font size spans roughly 0.7x..1.4x the network's input height, so
    /// resizing to it both shrinks and enlarges; jitter grows with `strength`.
    pub fn sample<R: Rng>(rng: &mut R, strength: f32) -> Self {
        Self {
            px: rng.gen_range(22.0..46.0),
            tracking: rng.gen_range(-0.03..0.10),
            word_gap: rng.gen_range(-0.05..0.25),
            jitter: rng.gen_range(0.0..=0.02 + 0.03 * strength),
        }
    }
}

/// Render `text` with `font`, cropped tightly to the ink. `None` if nothing is inked
/// (empty or all-space text).
pub fn render_line<R: Rng>(
    font: &FontArc,
    text: &str,
    params: &LayoutParams,
    rng: &mut R,
) -> Option<Canvas> {
    let scale = PxScale::from(params.px);
    let scaled = font.as_scaled(scale);
    let mut caret = 0.0f32;
    let mut prev = None;
    let mut outlines = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let jitter = |rng: &mut R| params.jitter * params.px * gaussian(rng);
        let dy = jitter(rng);
        let glyph = id.with_scale_and_position(scale, point(caret, scaled.ascent() + dy));
        caret += scaled.h_advance(id) + params.tracking * params.px + jitter(rng) * 0.5;
        if c == ' ' {
            caret += params.word_gap * params.px;
        }
        if let Some(o) = font.outline_glyph(glyph) {
            outlines.push(o);
        }
        prev = Some(id);
    }
    if outlines.is_empty() {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for o in &outlines {
        let b = o.px_bounds();
        x0 = x0.min(b.min.x);
        y0 = y0.min(b.min.y);
        x1 = x1.max(b.max.x);
        y1 = y1.max(b.max.y);
    }
    let (w, h) = ((x1 - x0).ceil() as usize, (y1 - y0).ceil() as usize);
    if w == 0 || h == 0 {
        return None;
    }
    let mut canvas = Canvas::new(w, h);
    for o in &outlines {
        let b = o.px_bounds();
        let (ox, oy) = ((b.min.x - x0) as usize, (b.min.y - y0) as usize);
        o.draw(|x, y, c| {
            let (cx, cy) = (ox + x as usize, oy + y as usize);
            if cx < w && cy < h {
                let v = &mut canvas.data[cy * w + cx];
                // Overlapping glyphs (tight tracking, script joins) add up like ink does.
                *v = (*v + c).min(1.0);
            }
        });
    }
    Some(trim(canvas))
}

/// Plain black-on-white render with default spacing (for inspecting fonts).
pub fn render_plain(font: &FontArc, text: &str, px: f32) -> image::GrayImage {
    let params = LayoutParams {
        px,
        tracking: 0.0,
        word_gap: 0.0,
        jitter: 0.0,
    };
    let mut rng = rand::rngs::mock::StepRng::new(0, 0);
    let canvas = render_line(font, text, &params, &mut rng).unwrap_or_else(|| Canvas::new(1, 1));
    image::GrayImage::from_fn(canvas.width as u32, canvas.height as u32, |x, y| {
        let c = canvas.data[y as usize * canvas.width + x as usize];
        image::Luma([(255.0 * (1.0 - c)).round() as u8])
    })
}

/// Crop away rows/columns without visible ink (outline bounds include antialiasing slack).
fn trim(c: Canvas) -> Canvas {
    const VISIBLE: f32 = 0.02;
    let inked = |x: usize, y: usize| c.data[y * c.width + x] > VISIBLE;
    let rows: Vec<usize> = (0..c.height)
        .filter(|&y| (0..c.width).any(|x| inked(x, y)))
        .collect();
    let cols: Vec<usize> = (0..c.width)
        .filter(|&x| (0..c.height).any(|y| inked(x, y)))
        .collect();
    let (Some(&ya), Some(&yb), Some(&xa), Some(&xb)) =
        (rows.first(), rows.last(), cols.first(), cols.last())
    else {
        return c;
    };
    if (xa, ya, xb + 1, yb + 1) == (0, 0, c.width, c.height) {
        return c;
    }
    let mut out = Canvas::new(xb + 1 - xa, yb + 1 - ya);
    for y in ya..=yb {
        let src = &c.data[y * c.width + xa..y * c.width + xb + 1];
        out.data[(y - ya) * out.width..(y - ya + 1) * out.width].copy_from_slice(src);
    }
    out
}

/// A standard normal draw (Box-Muller; cheaper than building a distribution per call).
pub fn gaussian<R: Rng>(rng: &mut R) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn font() -> FontArc {
        let bytes = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .expect("fonts-dejavu-core is installed");
        FontArc::try_from_vec(bytes).unwrap()
    }

    #[test]
    fn render_is_tight_and_scales_with_text() {
        let f = font();
        let p = LayoutParams {
            px: 32.0,
            tracking: 0.0,
            word_gap: 0.0,
            jitter: 0.0,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let short = render_line(&f, "Hi", &p, &mut rng).unwrap();
        let long = render_line(&f, "Hi there, friend", &p, &mut rng).unwrap();
        assert!(
            long.width > 5 * short.width,
            "{} vs {}",
            long.width,
            short.width
        );
        // Tight: the first and last rows and columns carry ink.
        for c in [&short, &long] {
            let row = |y: usize| {
                (0..c.width)
                    .map(|x| c.data[y * c.width + x])
                    .fold(0.0, f32::max)
            };
            let col = |x: usize| {
                (0..c.height)
                    .map(|y| c.data[y * c.width + x])
                    .fold(0.0, f32::max)
            };
            assert!(row(0) > 0.02 && row(c.height - 1) > 0.02);
            assert!(col(0) > 0.02 && col(c.width - 1) > 0.02);
        }
        assert!(render_line(&f, "   ", &p, &mut rng).is_none());
        assert!(render_line(&f, "", &p, &mut rng).is_none());
    }

    #[test]
    fn same_rng_same_render() {
        let f = font();
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let pa = LayoutParams::sample(&mut a, 1.0);
        let pb = LayoutParams::sample(&mut b, 1.0);
        assert_eq!(
            render_line(&f, "same", &pa, &mut a),
            render_line(&f, "same", &pb, &mut b)
        );
    }
}
