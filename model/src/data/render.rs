//! Drawing a line of text with one font into an ink-coverage canvas.
//!
//! The canvas holds coverage in `[0, 1]` (1 = fully inked), not gray levels, so that
//! augmentation can thicken strokes and warp geometry before ink and paper colours are
//! chosen.

use ab_glyph::{
    point, Font, FontArc, Outline, OutlineCurve, OutlinedGlyph, Point, PxScale, Rect, ScaleFont,
};
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
    /// How far each glyph's outline is reshaped, from 0 (the font's own letterforms) to 1;
    /// see [`GlyphMorph`].
    pub morph: f32,
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
            morph: 0.0,
        }
    }
}

/// A random reshaping of one glyph's outline: its width, slant and tilt, and a smooth
/// displacement of its strokes (two sine waves, a fraction of an em long, bending the
/// outline's points across and along the line).
///
/// A font is one set of letterforms; a line whose every glyph is reshaped on its own is
/// drawn in letterforms no font file holds, the way no two handwritten letters are alike.
/// Training on such lines is meant to teach what makes an `n` an `n` across shapes rather
/// than how the training fonts draw it (`synthetic.glyph_morph`; off by default, see its
/// documentation for what it was measured to do).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlyphMorph {
    width: f32,
    height: f32,
    shear: f32,
    angle: f32,
    /// `[amplitude, wave number, phase]` of the horizontal and the vertical displacement,
    /// amplitude and wave number in font units.
    waves: [[f32; 3]; 2],
}

impl GlyphMorph {
    /// Draw a reshaping of strength `m` in `(0, 1]` for a font of `em` units per em.
    pub fn sample<R: Rng>(rng: &mut R, m: f32, em: f32) -> Self {
        let wave = |rng: &mut R| {
            let len = rng.gen_range(0.25..0.8) * em;
            [
                rng.gen_range(0.0..0.04) * m * em,
                std::f32::consts::TAU / len,
                rng.gen_range(0.0..std::f32::consts::TAU),
            ]
        };
        Self {
            width: (rng.gen_range(-0.25f32..0.25) * m).exp(),
            height: (rng.gen_range(-0.12f32..0.12) * m).exp(),
            shear: rng.gen_range(-0.3..0.3) * m,
            angle: rng.gen_range(-0.1..0.1) * m,
            waves: [wave(rng), wave(rng)],
        }
    }

    /// Where the outline point `p` (font units, relative to the glyph's origin) goes.
    fn map(&self, p: Point) -> Point {
        let [[ax, kx, phx], [ay, ky, phy]] = self.waves;
        let x = self.width * p.x + self.shear * p.y + ax * (ky * p.y + phx).sin();
        let y = self.height * p.y + ay * (kx * p.x + phy).sin();
        let (sin, cos) = self.angle.sin_cos();
        point(cos * x - sin * y, sin * x + cos * y)
    }

    /// The reshaped outline; its bounds hold every point, control points included, so they
    /// hold the curves.
    pub fn apply(&self, outline: &Outline) -> Outline {
        let curves: Vec<OutlineCurve> = outline
            .curves
            .iter()
            .map(|c| match *c {
                OutlineCurve::Line(a, b) => OutlineCurve::Line(self.map(a), self.map(b)),
                OutlineCurve::Quad(a, b, c) => {
                    OutlineCurve::Quad(self.map(a), self.map(b), self.map(c))
                }
                OutlineCurve::Cubic(a, b, c, d) => {
                    OutlineCurve::Cubic(self.map(a), self.map(b), self.map(c), self.map(d))
                }
            })
            .collect();
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        let mut grow = |p: &Point| {
            (x0, y0, x1, y1) = (x0.min(p.x), y0.min(p.y), x1.max(p.x), y1.max(p.y));
        };
        for c in &curves {
            match c {
                OutlineCurve::Line(a, b) => [a, b].into_iter().for_each(&mut grow),
                OutlineCurve::Quad(a, b, c) => [a, b, c].into_iter().for_each(&mut grow),
                OutlineCurve::Cubic(a, b, c, d) => [a, b, c, d].into_iter().for_each(&mut grow),
            }
        }
        // ab_glyph keeps font-unit bounds top-left to bottom-right: y runs up in font units,
        // so `min` holds the largest y.
        let bounds = if curves.is_empty() {
            outline.bounds
        } else {
            Rect {
                min: point(x0, y1),
                max: point(x1, y0),
            }
        };
        Outline { bounds, curves }
    }

    /// How much wider (or narrower) the glyph is drawn: its advance scales with it.
    pub fn width(&self) -> f32 {
        self.width
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
    let em = font.units_per_em().unwrap_or(1000.0);
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
        // Drawn only when asked for, so that renders without it keep their random stream.
        let morph = (params.morph > 0.0).then(|| GlyphMorph::sample(rng, params.morph, em));
        let width = morph.map_or(1.0, |m| m.width());
        caret += scaled.h_advance(id) * width + params.tracking * params.px + jitter(rng) * 0.5;
        if c == ' ' {
            caret += params.word_gap * params.px;
        }
        let outlined = match morph {
            Some(m) => font
                .outline(id)
                .map(|o| OutlinedGlyph::new(glyph, m.apply(&o), scaled.scale_factor())),
            None => font.outline_glyph(glyph),
        };
        if let Some(o) = outlined {
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
        morph: 0.0,
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
    use rand::{RngCore, SeedableRng};

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
            morph: 0.0,
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

    fn ink(c: &Canvas) -> f32 {
        c.data.iter().sum()
    }

    #[test]
    fn morphed_glyphs_are_reshaped_not_lost() {
        let f = font();
        let plain = LayoutParams {
            px: 32.0,
            tracking: 0.0,
            word_gap: 0.0,
            jitter: 0.0,
            morph: 0.0,
        };
        let morphed = LayoutParams {
            morph: 1.0,
            ..plain
        };
        let text = "minimum handwriting";
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = render_line(&f, text, &plain, &mut rng).unwrap();
        for seed in 0..8 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let b = render_line(&f, text, &morphed, &mut rng).unwrap();
            // The same strokes, bent and scaled: about as much ink, as tall, about as wide.
            // (Bounds that missed the reshaped points would clip glyphs or blank the line.)
            let ratio = ink(&b) / ink(&a);
            assert!(
                (0.6..1.6).contains(&ratio),
                "seed {seed}: ink ratio {ratio}"
            );
            let (wr, hr) = (
                b.width as f32 / a.width as f32,
                b.height as f32 / a.height as f32,
            );
            assert!((0.7..1.4).contains(&wr), "seed {seed}: width ratio {wr}");
            assert!((0.7..1.6).contains(&hr), "seed {seed}: height ratio {hr}");
            assert_ne!(a, b, "seed {seed}: morph 1 changed nothing");
        }
    }

    #[test]
    fn no_morph_draws_nothing_from_the_random_stream() {
        // Renders without glyph morphing must stay what they were before it existed: the
        // validation sets, the stored check sets and resumed runs depend on that stream.
        let f = font();
        let p = LayoutParams {
            px: 30.0,
            tracking: 0.02,
            word_gap: 0.1,
            jitter: 0.03,
            morph: 0.0,
        };
        let text = "Ab 12";
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let _ = render_line(&f, text, &p, &mut rng).unwrap();
        // Two normal draws per glyph (vertical and horizontal jitter), four `rng` words each
        // at most: the stream has moved exactly as far as the jitter alone moves it.
        let mut expect = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in text.chars() {
            let _ = gaussian(&mut expect);
            let _ = gaussian(&mut expect);
        }
        assert_eq!(rng.next_u64(), expect.next_u64());
    }
}
