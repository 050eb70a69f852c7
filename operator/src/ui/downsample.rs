//! Downsampling of curves before they are drawn: a chart a few hundred pixels wide shows no more
//! than a few points per pixel, and a run of 100 trials × 10k steps would otherwise send
//! millions of coordinates.
//!
//! [`min_max`] splits the points into equal-count buckets and keeps each bucket's lowest and
//! highest point (in their original order), plus the first and last point: spikes and the best
//! value survive, which an average or a stride would lose.

/// A point of a curve: `x` (step or seconds) and `y` (the metric).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Position on the horizontal axis.
    pub x: f64,
    /// Value.
    pub y: f64,
}

/// At most `max_points` of `points` (sorted by `x`): the first and the last, and the minimum and
/// maximum of each of `(max_points - 2) / 2` equal-count buckets of the rest, in order. With
/// `max_points` below 4 only the first and last (or fewer) are kept; a series that already fits
/// is returned unchanged.
pub fn min_max(points: &[Point], max_points: usize) -> Vec<Point> {
    min_max_by(points, max_points, |p| p.y)
}

/// [`min_max`] over any items, `value` giving the number whose extremes are kept.
pub fn min_max_by<T: Copy>(items: &[T], max_points: usize, value: impl Fn(&T) -> f64) -> Vec<T> {
    let n = items.len();
    if n <= max_points {
        return items.to_vec();
    }
    if max_points < 4 {
        let mut v = Vec::with_capacity(2);
        if max_points >= 1 {
            v.push(items[0]);
        }
        if max_points >= 2 {
            v.push(items[n - 1]);
        }
        return v;
    }
    let inner = &items[1..n - 1];
    let buckets = (max_points - 2) / 2;
    let mut out = Vec::with_capacity(max_points);
    out.push(items[0]);
    for b in 0..buckets {
        let lo = b * inner.len() / buckets;
        let hi = (b + 1) * inner.len() / buckets;
        let chunk = &inner[lo..hi];
        if chunk.is_empty() {
            continue;
        }
        let (mut imin, mut imax) = (0, 0);
        let (mut vmin, mut vmax) = (value(&chunk[0]), value(&chunk[0]));
        for (i, p) in chunk.iter().enumerate().skip(1) {
            let v = value(p);
            // NaN is never chosen over a number.
            if v < vmin || vmin.is_nan() {
                (imin, vmin) = (i, v);
            }
            if v > vmax || vmax.is_nan() {
                (imax, vmax) = (i, v);
            }
        }
        let (a, b) = (imin.min(imax), imin.max(imax));
        out.push(chunk[a]);
        if b != a {
            out.push(chunk[b]);
        }
    }
    out.push(items[n - 1]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                x: i as f64,
                y: ((i as f64) * 0.37).sin() + (i % 7) as f64 * 0.01,
            })
            .collect()
    }

    #[test]
    fn keeps_first_last_and_extremes_within_the_bound() {
        let mut pts = series(10_000);
        pts[1234].y = -50.0; // a dip
        pts[8765].y = 75.0; // a spike
        for max in [4, 5, 10, 101, 500] {
            let d = min_max(&pts, max);
            assert!(d.len() <= max, "{} > {max}", d.len());
            assert_eq!(d.first(), pts.first());
            assert_eq!(d.last(), pts.last());
            assert!(d.contains(&pts[1234]), "dip lost at {max}");
            assert!(d.contains(&pts[8765]), "spike lost at {max}");
            assert!(d.windows(2).all(|w| w[0].x < w[1].x), "order at {max}");
        }
    }

    #[test]
    fn extreme_of_every_bucket_survives() {
        let pts = series(1000);
        let d = min_max(&pts, 50);
        let min = pts.iter().map(|p| p.y).fold(f64::INFINITY, f64::min);
        let max = pts.iter().map(|p| p.y).fold(f64::NEG_INFINITY, f64::max);
        assert!(d.iter().any(|p| p.y == min));
        assert!(d.iter().any(|p| p.y == max));
    }

    #[test]
    fn small_series_and_tiny_budgets() {
        let pts = series(3);
        assert_eq!(min_max(&pts, 500), pts);
        assert!(min_max(&[], 10).is_empty());
        let pts = series(100);
        assert_eq!(min_max(&pts, 2), vec![pts[0], pts[99]]);
        assert_eq!(min_max(&pts, 1), vec![pts[0]]);
        assert!(min_max(&pts, 0).is_empty());
    }
}
