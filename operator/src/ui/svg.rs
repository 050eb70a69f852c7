//! Line charts as inline SVG, rendered on the server: no script, no external files.
//!
//! Each chart is one `<svg class="chart">` whose `data-*` attributes give the mapping from
//! values to pixels (`data-x0`/`data-x1` and `data-y0`/`data-y1`: the axis ranges, the y range
//! in log10 units when `data-log="1"`; `data-left`/`data-top`/`data-width`/`data-height`: the
//! plot area), so a test or a reader can turn a polyline's `points` back into values. Each
//! series is a `<g class="series" data-trial="…">` with a `<title>` (the hover tooltip), one
//! `<polyline>`, and a dot per point when the series is short (evaluations are few).

use std::fmt::Write as _;

use super::downsample::Point;
use super::html::esc;

/// Width of a chart in pixels.
pub const WIDTH: f64 = 880.0;
/// Height of a chart in pixels.
pub const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 42.0;
/// Series with at most this many points also get a dot per point.
const DOTS_UP_TO: usize = 60;

/// One curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Name (the trial), shown as the tooltip and kept in `data-trial`.
    pub name: String,
    /// CSS color of the line.
    pub color: String,
    /// Points sorted by `x`.
    pub points: Vec<Point>,
    /// Drawn thicker (the best trial).
    pub emphasis: bool,
}

/// How the horizontal axis is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Plain numbers (steps).
    Number,
    /// Seconds, labelled as durations (`30m`, `2h`).
    Duration,
}

/// A chart: several series over shared axes.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Element id, for links and tests.
    pub id: String,
    /// Accessible name of the chart.
    pub title: String,
    /// Label under the horizontal axis.
    pub x_label: String,
    /// Label of the vertical axis.
    pub y_label: String,
    /// Horizontal axis kind.
    pub x_axis: XAxis,
    /// Logarithmic vertical axis (values ≤ 0 are left out).
    pub log_y: bool,
    /// The curves.
    pub series: Vec<Series>,
}

/// Color number `i` of a palette whose neighbours differ clearly (golden-angle hues).
pub fn color(i: usize) -> String {
    let hue = (i as f64 * 137.507_764) % 360.0;
    let light = if i.is_multiple_of(2) { 40 } else { 50 };
    format!("hsl({hue:.0},70%,{light}%)")
}

/// A "nice" tick spacing (1, 2 or 5 × 10^k) giving about `target` ticks over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

/// A tick spacing in seconds that reads well as a duration.
fn duration_step(range: f64, target: f64) -> f64 {
    const STEPS: [f64; 16] = [
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0,
        21600.0, 43200.0, 86400.0,
    ];
    let raw = range / target;
    STEPS
        .iter()
        .copied()
        .find(|s| *s >= raw)
        .unwrap_or_else(|| nice_step(range / 86400.0, target) * 86400.0)
}

fn fmt_number(v: f64, step: f64) -> String {
    if v.abs() >= 10_000.0 && step >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else if step >= 1.0 {
        format!("{}", v.round())
    } else {
        let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{v:.decimals$}")
    }
}

fn fmt_duration(s: f64) -> String {
    let s = s.round() as i64;
    if s == 0 {
        "0".into()
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn fmt_log_tick(v: f64) -> String {
    if (1e-3..1e5).contains(&v) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// The mapping from values to pixels of a chart.
#[derive(Debug, Clone, Copy)]
struct Frame {
    x0: f64,
    x1: f64,
    /// In log10 units when `log`.
    y0: f64,
    y1: f64,
    log: bool,
    w: f64,
    h: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * self.w
    }
    fn py(&self, y: f64) -> f64 {
        let t = if self.log { y.log10() } else { y };
        TOP + self.h - (t - self.y0) / (self.y1 - self.y0) * self.h
    }
}

fn frame(chart: &Chart) -> Option<Frame> {
    let pts = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.x.is_finite() && p.y.is_finite() && (!chart.log_y || p.y > 0.0));
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    let mut any = false;
    for p in pts {
        any = true;
        xmin = xmin.min(p.x);
        xmax = xmax.max(p.x);
        ymin = ymin.min(p.y);
        ymax = ymax.max(p.y);
    }
    if !any {
        return None;
    }
    let x0 = if xmin >= 0.0 { 0.0 } else { xmin };
    let x1 = if xmax > x0 { xmax } else { x0 + 1.0 };
    let (y0, y1) = if chart.log_y {
        let lo = ymin.log10().floor();
        let hi = ymax.log10().ceil();
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        let lo = if ymin >= 0.0 { 0.0 } else { ymin };
        let hi = if ymax > lo {
            ymax + (ymax - lo) * 0.05
        } else {
            lo + 1.0
        };
        (lo, hi)
    };
    Some(Frame {
        x0,
        x1,
        y0,
        y1,
        log: chart.log_y,
        w: WIDTH - LEFT - RIGHT,
        h: HEIGHT - TOP - BOTTOM,
    })
}

/// Render `chart` as an `<svg>` element.
pub fn render(chart: &Chart) -> String {
    let mut out = String::with_capacity(
        1024 + chart
            .series
            .iter()
            .map(|s| 96 + s.points.len() * 12)
            .sum::<usize>(),
    );
    let Some(f) = frame(chart) else {
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart empty" id="{id}" viewBox="0 0 {WIDTH} 80" width="{WIDTH}" height="80" role="img" aria-label="{t}"><text x="{x}" y="44" text-anchor="middle" class="note">{t}: no data yet</text></svg>"#,
            id = esc(&chart.id),
            t = esc(&chart.title),
            x = WIDTH / 2.0,
        );
        return out;
    };
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{id}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}" data-x0="{x0}" data-x1="{x1}" data-y0="{y0}" data-y1="{y1}" data-log="{log}" data-left="{LEFT}" data-top="{TOP}" data-width="{w}" data-height="{h}">"#,
        id = esc(&chart.id),
        t = esc(&chart.title),
        x0 = f.x0,
        x1 = f.x1,
        y0 = f.y0,
        y1 = f.y1,
        log = u8::from(f.log),
        w = f.w,
        h = f.h,
    );
    let _ = write!(
        out,
        r#"<rect class="plot" x="{LEFT}" y="{TOP}" width="{}" height="{}"/>"#,
        f.w, f.h
    );
    // Horizontal axis ticks and grid.
    let xstep = match chart.x_axis {
        XAxis::Number => nice_step(f.x1 - f.x0, 8.0),
        XAxis::Duration => duration_step(f.x1 - f.x0, 8.0),
    };
    let mut x = (f.x0 / xstep).ceil() * xstep;
    while x <= f.x1 + xstep * 1e-9 {
        let px = f.px(x);
        let label = match chart.x_axis {
            XAxis::Number => fmt_number(x, xstep),
            XAxis::Duration => fmt_duration(x),
        };
        let _ = write!(
            out,
            r#"<line class="grid" x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{b:.1}"/><text class="tick" x="{px:.1}" y="{ty:.1}" text-anchor="middle">{label}</text>"#,
            b = TOP + f.h,
            ty = TOP + f.h + 16.0,
        );
        x += xstep;
    }
    // Vertical axis ticks and grid.
    let yticks: Vec<(f64, String)> = if f.log {
        let decades = f.y1 - f.y0;
        let mults: &[f64] = if decades <= 2.0 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let mut v = Vec::new();
        let mut k = f.y0;
        while k <= f.y1 + 1e-9 {
            for m in mults {
                let val = m * 10f64.powf(k);
                if val.log10() <= f.y1 + 1e-9 {
                    v.push((val, fmt_log_tick(val)));
                }
            }
            k += 1.0;
        }
        v
    } else {
        let step = nice_step(f.y1 - f.y0, 6.0);
        let mut v = Vec::new();
        let mut y = (f.y0 / step).ceil() * step;
        while y <= f.y1 + step * 1e-9 {
            v.push((y, fmt_number(y, step)));
            y += step;
        }
        v
    };
    for (val, label) in yticks {
        let py = f.py(val);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" y1="{py:.1}" x2="{r:.1}" y2="{py:.1}"/><text class="tick" x="{tx:.1}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            r = LEFT + f.w,
            tx = LEFT - 6.0,
            ty = py + 4.0,
        );
    }
    let _ = write!(
        out,
        r#"<text class="axis" x="{x:.1}" y="{y:.1}" text-anchor="middle">{l}</text><text class="axis" transform="translate(14,{ym:.1}) rotate(-90)" text-anchor="middle">{yl}</text>"#,
        x = LEFT + f.w / 2.0,
        y = HEIGHT - 6.0,
        l = esc(&chart.x_label),
        ym = TOP + f.h / 2.0,
        yl = esc(&format!(
            "{}{}",
            chart.y_label,
            if f.log { " (log)" } else { "" }
        )),
    );
    // Best trial drawn last, on top.
    let mut order: Vec<&Series> = chart.series.iter().collect();
    order.sort_by_key(|s| s.emphasis);
    for s in order {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.x.is_finite() && p.y.is_finite() && (!f.log || p.y > 0.0))
            .map(|p| (f.px(p.x), f.py(p.y)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let name = esc(&s.name);
        let _ = write!(
            out,
            r#"<g class="series{e}" data-trial="{name}" stroke="{c}" fill="{c}"><title>{name}</title><polyline fill="none" stroke-width="{sw}" points=""#,
            e = if s.emphasis { " best" } else { "" },
            c = esc(&s.color),
            sw = if s.emphasis { 2.6 } else { 1.4 },
        );
        for (i, (x, y)) in pts.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{x:.1},{y:.1}");
        }
        out.push_str("\"/>");
        if pts.len() <= DOTS_UP_TO {
            for (x, y) in &pts {
                let _ = write!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" stroke="none"/>"#,
                    r = if s.emphasis { 3.2 } else { 2.4 }
                );
            }
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<Point>, log: bool) -> Chart {
        Chart {
            id: "c".into(),
            title: "CER".into(),
            x_label: "step".into(),
            y_label: "CER".into(),
            x_axis: XAxis::Number,
            log_y: log,
            series: vec![Series {
                name: "t<0>".into(),
                color: color(0),
                points,
                emphasis: false,
            }],
        }
    }

    fn polyline_points(svg: &str) -> &str {
        let start = svg.find("points=\"").unwrap() + 8;
        let end = start + svg[start..].find('"').unwrap();
        &svg[start..end]
    }

    #[test]
    fn polyline_holds_the_mapped_points() {
        // x 0..100 over the 800 px plot from 64; y 0..1.05 (5% headroom) over 244 px from 14.
        let pts = vec![
            Point { x: 0.0, y: 1.0 },
            Point { x: 50.0, y: 0.5 },
            Point { x: 100.0, y: 0.0 },
        ];
        let svg = render(&chart(pts, false));
        assert_eq!(
            polyline_points(&svg),
            "64.0,25.6 464.0,141.8 864.0,258.0",
            "{svg}"
        );
        assert!(svg.contains(r#"data-trial="t&lt;0&gt;""#), "{svg}");
        assert!(svg.contains("<title>t&lt;0&gt;</title>"));
        assert!(svg.contains(r#"data-x0="0" data-x1="100" data-y0="0" data-y1="1.05""#));
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn log_scale_maps_decades_evenly_and_drops_non_positive_values() {
        let pts = vec![
            Point { x: 0.0, y: 0.0 },
            Point { x: 1.0, y: 1.0 },
            Point { x: 2.0, y: 0.1 },
            Point { x: 4.0, y: 0.01 },
        ];
        let svg = render(&chart(pts, true));
        // y 1e-2..1e0: two decades over 244 px.
        assert_eq!(
            polyline_points(&svg),
            "264.0,14.0 464.0,136.0 864.0,258.0",
            "{svg}"
        );
        assert!(svg.contains(r#"data-log="1""#));
        assert!(svg.contains("CER (log)"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = render(&chart(vec![], false));
        assert!(svg.contains("no data yet"));
        assert!(!svg.contains("polyline"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(1000.0, 8.0), 200.0);
        assert_eq!(nice_step(0.7, 6.0), 0.2);
        assert_eq!(duration_step(7200.0, 8.0), 900.0);
        assert_eq!(fmt_duration(5400.0), "1h30m");
        assert_eq!(fmt_number(20000.0, 5000.0), "20k");
        assert_eq!(fmt_number(0.25, 0.05), "0.25");
    }
}
