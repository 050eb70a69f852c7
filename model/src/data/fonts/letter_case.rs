//! Whether a font draws lowercase letters as capitals, measured from its glyphs.

use ab_glyph::{Font, FontArc, GlyphId, PxScale};

/// Size of the square the letter shapes are compared in.
const SHAPE: usize = 20;

/// Whether a font draws lowercase letters as capitals, measured from its glyphs: every letter
/// of both cases is rasterized, cropped to its ink and stretched to the same square (so a
/// small capital compares equal to a capital), and each lowercase letter is matched to the
/// most similar capital (intersection over union). In a caps-only font nearly every
/// lowercase letter's nearest capital is its own; in ordinary fonts only the letters whose
/// two cases share a shape (c o s v w x z, sometimes k p u y) are, and the rest (a b d e f g
/// h i l n q r t ...) find another capital or none in particular.
///
/// A second, independent measure must agree: in a font with real lowercase the ascender
/// letters (b d h k l) stand much taller than the x-height letters (a c e m n o r s u v w x
/// z), by 1.3 to 1.6 times; when lowercase are drawn as capitals (or small capitals) they are
/// all about one height ([`ascender_ratio`] below [`CAPS_ONLY_MAX_ASCENDER_RATIO`]). Measured
/// on the training fonts: Humor Sans 23 letters and 0.98; all others at most 17 letters and
/// at least 1.32.
pub fn draws_lowercase_as_capitals(font: &FontArc) -> bool {
    own_capital_matches(font).len() >= CAPS_ONLY_MIN_LETTERS
        && ascender_ratio(font).is_some_and(|r| r < CAPS_ONLY_MAX_ASCENDER_RATIO)
}

/// Largest ascender ratio of a caps-only font.
pub const CAPS_ONLY_MAX_ASCENDER_RATIO: f32 = 1.15;

/// Median ink height of the ascender letters `bdhkl` over that of the x-height letters
/// `acemnorsuvwxz`.
pub fn ascender_ratio(font: &FontArc) -> Option<f32> {
    let median_height = |letters: &str| -> Option<f32> {
        let mut h: Vec<usize> = letters
            .chars()
            .filter_map(|c| {
                let id = font.glyph_id(c);
                (id != GlyphId(0))
                    .then(|| rasterize(font, id, 64.0))
                    .flatten()
                    .map(|(_, h, _)| h)
            })
            .collect();
        h.sort_unstable();
        h.get(h.len() / 2).map(|&v| v as f32)
    };
    Some(median_height("bdhkl")? / median_height("acemnorsuvwxz")?)
}

/// Lowercase letters (of 26) that must look most like their own capital for a font to count
/// as caps-only.
pub const CAPS_ONLY_MIN_LETTERS: usize = 20;

/// The lowercase letters whose most similar capital (by shape) is their own; a letter mapped
/// to the very glyph of its capital counts, a missing glyph does not.
pub fn own_capital_matches(font: &FontArc) -> Vec<char> {
    let capitals: Vec<Option<Vec<bool>>> = ('A'..='Z').map(|c| glyph_shape(font, c)).collect();
    ('a'..='z')
        .enumerate()
        .filter(|&(i, lc)| {
            let (gl, gu) = (font.glyph_id(lc), font.glyph_id(lc.to_ascii_uppercase()));
            if gl == GlyphId(0) || gu == GlyphId(0) {
                return false;
            }
            if gl == gu {
                return true;
            }
            let Some(shape) = glyph_shape(font, lc) else {
                return false;
            };
            let scores: Vec<f32> = capitals
                .iter()
                .map(|c| c.as_ref().map_or(0.0, |c| iou(&shape, c)))
                .collect();
            (0..26).all(|j| j == i || scores[j] < scores[i])
        })
        .map(|(_, lc)| lc)
        .collect()
}

fn iou(a: &[bool], b: &[bool]) -> f32 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        0.0
    } else {
        inter as f32 / union as f32
    }
}

fn glyph_shape(font: &FontArc, c: char) -> Option<Vec<bool>> {
    let id = font.glyph_id(c);
    if id == GlyphId(0) {
        None
    } else {
        shape(font, id)
    }
}

/// A glyph's ink, cropped and stretched to a `SHAPE`×`SHAPE` binary mask.
fn shape(font: &FontArc, id: GlyphId) -> Option<Vec<bool>> {
    let (w, h, cov) = rasterize(font, id, 64.0)?;
    let mut out = vec![false; SHAPE * SHAPE];
    for (i, o) in out.iter_mut().enumerate() {
        let (sx, sy) = (i % SHAPE, i / SHAPE);
        // Area-average the source cell that maps onto this target cell.
        let (x0, x1) = (
            sx * w / SHAPE,
            ((sx + 1) * w).div_ceil(SHAPE).max(sx * w / SHAPE + 1),
        );
        let (y0, y1) = (
            sy * h / SHAPE,
            ((sy + 1) * h).div_ceil(SHAPE).max(sy * h / SHAPE + 1),
        );
        let mut sum = 0.0;
        for y in y0..y1.min(h) {
            for x in x0..x1.min(w) {
                sum += cov[y * w + x];
            }
        }
        *o = sum / ((x1 - x0) * (y1 - y0)) as f32 > 0.35;
    }
    Some(out)
}

/// Coverage bitmap of one glyph at `px`, cropped to its outline bounds.
pub(crate) fn rasterize(font: &FontArc, id: GlyphId, px: f32) -> Option<(usize, usize, Vec<f32>)> {
    let glyph = id.with_scale_and_position(PxScale::from(px), ab_glyph::point(0.0, 0.0));
    let outlined = font.outline_glyph(glyph)?;
    let b = outlined.px_bounds();
    let (w, h) = (b.width() as usize, b.height() as usize);
    if w == 0 || h == 0 {
        return None;
    }
    let mut cov = vec![0f32; w * h];
    outlined.draw(|x, y, c| {
        if let Some(v) = cov.get_mut(y as usize * w + x as usize) {
            *v = c;
        }
    });
    Some((w, h, cov))
}
