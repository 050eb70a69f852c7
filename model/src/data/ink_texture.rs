//! Ink that does not fill its strokes: hatched, hollow or worn glyphs.
//!
//! Every training font fills its strokes with solid ink, while display faces, stamps, stencils
//! and worn prints draw a letter's outline and hatch or leave out the inside, or lose ink in
//! patches. Applied to a render's coverage before the line is distorted and painted
//! ([`super::augment`]), so the texture is warped, blurred and inked like the strokes it sits
//! in.

use rand::Rng;

use super::augment::{cross_filter, ValueNoise};
use super::render::Canvas;

/// How the ink of one line is textured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InkTexture {
    /// The outline kept, `rim` pixels wide, the inside striped: parallel lines `period`
    /// pixels apart at `angle` (radians), `duty` of each period inked.
    Hatched {
        angle: f32,
        period: f32,
        duty: f32,
        rim: usize,
    },
    /// The outline alone, `rim` pixels wide (thin strokes stay solid).
    Hollow { rim: usize },
    /// Ink lost in patches: smooth noise of cell size `cell` pixels, the patches where it
    /// passes `threshold` left blank.
    Worn { cell: f32, threshold: f32 },
}

impl InkTexture {
    /// With probability `amount` a texture for a line rendered at `px` pixels per em, drawn at
    /// random; `None` otherwise. Draws nothing from `rng` when `amount` is 0, so a set without
    /// textures renders the same lines it always did.
    pub fn sample<R: Rng>(rng: &mut R, amount: f32, px: f32) -> Option<Self> {
        if amount <= 0.0 || !rng.gen_bool(f64::from(amount.min(1.0))) {
            return None;
        }
        // The rim is the outline's width: a hairline at small sizes, a pen stroke at large.
        let rim = ((px * rng.gen_range(0.035..0.07)).round() as usize).max(1);
        Some(match rng.gen_range(0..3) {
            0 => {
                let tilt = rng.gen_range(0.5..1.1f32);
                Self::Hatched {
                    angle: if rng.gen_bool(0.5) { tilt } else { -tilt },
                    period: (px * rng.gen_range(0.08..0.16)).max(2.2),
                    duty: rng.gen_range(0.35..0.6),
                    rim,
                }
            }
            1 => Self::Hollow { rim },
            _ => Self::Worn {
                cell: (px * rng.gen_range(0.06..0.15)).max(1.5),
                threshold: rng.gen_range(0.25..0.6),
            },
        })
    }

    /// The textured coverage of `ink`.
    pub fn apply<R: Rng>(&self, ink: &Canvas, rng: &mut R) -> Canvas {
        match *self {
            Self::Hatched {
                angle,
                period,
                duty,
                rim,
            } => {
                let outline = outline(ink, rim);
                let (sin, cos) = angle.sin_cos();
                let phase = rng.gen_range(0.0..period);
                map_pixels(ink, |x, y, v| {
                    let along = x as f32 * cos + y as f32 * sin + phase;
                    let stripe = if (along / period).fract() < duty {
                        1.0
                    } else {
                        0.0
                    };
                    (v * stripe).max(outline.data[y * ink.width + x])
                })
            }
            Self::Hollow { rim } => outline(ink, rim),
            Self::Worn { cell, threshold } => {
                let noise = ValueNoise::new(ink.width, ink.height, cell, 1.0, rng);
                map_pixels(ink, |x, y, v| {
                    // A soft edge over a tenth of the noise's range, so patches fade out.
                    let loss = ((noise.at(x, y) - threshold) * 10.0).clamp(0.0, 1.0);
                    v * (1.0 - loss)
                })
            }
        }
    }
}

/// A canvas of the same size, every value `f(x, y, coverage)`.
fn map_pixels(ink: &Canvas, f: impl Fn(usize, usize, f32) -> f32) -> Canvas {
    let mut out = Canvas::new(ink.width, ink.height);
    for y in 0..ink.height {
        for x in 0..ink.width {
            out.data[y * ink.width + x] = f(x, y, ink.data[y * ink.width + x]);
        }
    }
    out
}

/// The part of the coverage within `rim` pixels of the uninked paper: the coverage less its
/// grey-level erosion (`rim` passes of a 3×3 cross's minimum).
fn outline(ink: &Canvas, rim: usize) -> Canvas {
    let inner = (0..rim).fold(ink.clone(), |c, _| cross_filter(&c, false));
    map_pixels(ink, |x, y, v| v - inner.data[y * ink.width + x])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A solid 12-px-thick bar, the inside of a heavy stroke.
    fn bar() -> Canvas {
        let mut c = Canvas::new(40, 20);
        for y in 4..16 {
            for x in 4..36 {
                c.data[y * 40 + x] = 1.0;
            }
        }
        c
    }

    fn ink(c: &Canvas) -> f32 {
        c.data.iter().sum()
    }

    #[test]
    fn amount_zero_draws_nothing_from_the_random_stream() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let before = rng.clone();
        assert_eq!(InkTexture::sample(&mut rng, 0.0, 30.0), None);
        assert_eq!(rng, before);
    }

    #[test]
    fn hollow_keeps_the_rim_and_clears_the_inside() {
        let c = bar();
        let hollow = InkTexture::Hollow { rim: 2 }.apply(&c, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(hollow.data[10 * 40 + 20], 0.0, "the inside is blank");
        assert_eq!(hollow.data[4 * 40 + 20], 1.0, "the top edge is inked");
        assert_eq!(hollow.data[5 * 40 + 20], 1.0, "two pixels of rim");
        assert_eq!(hollow.data[6 * 40 + 20], 0.0);
        assert_eq!(hollow.data[2 * 40 + 20], 0.0, "no ink outside the glyph");
    }

    #[test]
    fn hatching_stripes_the_inside_and_keeps_the_outline() {
        let c = bar();
        let hatch = InkTexture::Hatched {
            angle: 0.8,
            period: 4.0,
            duty: 0.5,
            rim: 1,
        }
        .apply(&c, &mut ChaCha8Rng::seed_from_u64(0));
        let inside: Vec<f32> = (6..14)
            .flat_map(|y| (6..34).map(move |x| (x, y)))
            .map(|(x, y)| hatch.data[y * 40 + x])
            .collect();
        let inked = inside.iter().filter(|&&v| v == 1.0).count() as f32 / inside.len() as f32;
        assert!(
            (0.3..0.7).contains(&inked),
            "half the inside inked: {inked}"
        );
        assert!(
            (4..36).all(|x| hatch.data[4 * 40 + x] == 1.0),
            "the top edge is whole"
        );
        assert!(
            hatch.data.iter().zip(&c.data).all(|(h, c)| h <= c),
            "no ink added"
        );
    }

    #[test]
    fn wear_removes_ink_in_patches_and_never_adds_any() {
        let c = bar();
        let worn = InkTexture::Worn {
            cell: 3.0,
            threshold: 0.0,
        }
        .apply(&c, &mut ChaCha8Rng::seed_from_u64(5));
        assert!(ink(&worn) < 0.9 * ink(&c) && ink(&worn) > 0.1 * ink(&c));
        assert!(worn.data.iter().zip(&c.data).all(|(w, c)| w <= c));
    }

    #[test]
    fn sampled_textures_are_valid_and_all_kinds_occur() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut kinds = [false; 3];
        for _ in 0..200 {
            let px = rng.gen_range(22.0..46.0);
            let Some(t) = InkTexture::sample(&mut rng, 1.0, px) else {
                panic!("amount 1 always textures");
            };
            match t {
                InkTexture::Hatched { period, duty, .. } => {
                    assert!(period >= 2.2 && (0.35..0.6).contains(&duty));
                    kinds[0] = true;
                }
                InkTexture::Hollow { rim } => {
                    assert!((1..=4).contains(&rim));
                    kinds[1] = true;
                }
                InkTexture::Worn { cell, .. } => {
                    assert!(cell >= 1.5);
                    kinds[2] = true;
                }
            }
        }
        assert_eq!(kinds, [true; 3]);
    }
}
