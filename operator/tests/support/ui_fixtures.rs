//! Fixtures of the dashboard tests: the quickstart's finished 2-trial grid (its TrainingRun and
//! ModelDeployment as `local run` left them, and each trial's `metrics.jsonl` and
//! `progress.json`) under `tests/fixtures/ui/`, and a ModelDeployment whose history holds a
//! promotion, a rollback and a refused candidate.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{json, Value};

/// The fixture folder.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ui")
}

/// The storage root holding `quickstart/quickstart-t{0,1}/metrics.jsonl`.
pub fn storage_url() -> String {
    format!("file://{}", dir().join("storage").display())
}

/// The quickstart TrainingRun in namespace `ns`, its storage pointed at the fixtures.
pub fn run(ns: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("trainingrun.json")).unwrap())
            .unwrap();
    v["metadata"]["namespace"] = json!(ns);
    v["metadata"]["resourceVersion"] = json!("1");
    v["spec"]["storage"]["url"] = json!(storage_url());
    v
}

/// The quickstart ModelDeployment in namespace `ns`.
pub fn deployment(ns: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("modeldeployment.json")).unwrap())
            .unwrap();
    v["metadata"]["namespace"] = json!(ns);
    v["metadata"]["resourceVersion"] = json!("1");
    v
}

/// A ModelDeployment whose history holds each kind of change: `spec.model`, an automatic
/// promotion, a rollback, and a refused candidate.
pub fn busy_deployment(ns: &str) -> Value {
    let model = |sha: char, metric: f64, run: &str| {
        json!({"url": format!("s3://models/{run}/model"), "sha256": sha.to_string().repeat(64),
               "metric": metric, "metricName": "cer", "trainingRun": run})
    };
    json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "ocr-auto", "namespace": ns, "resourceVersion": "1",
                     "creationTimestamp": "2026-11-29T08:00:00Z"},
        "spec": {"model": {"fromTrainingRun": "quickstart"}, "image": "w:1",
                 "promotion": {"policy": "Automatic", "minImprovement": 0.01}},
        "status": {
            "phase": "Available", "currentRevision": 3, "readyReplicas": 2,
            "model": model('a', 0.0912, "quickstart"),
            "history": [
                {"revision": 1, "model": model('a', 0.0912, "quickstart"), "deployedAt": "2026-11-29T09:00:00Z", "reason": "spec.model"},
                {"revision": 2, "model": model('b', 0.0874, "quickstart-b"), "deployedAt": "2026-11-29T12:00:00Z",
                 "reason": "automatic promotion of TrainingRun quickstart-b: cer 0.0874 beats 0.0912"},
                {"revision": 3, "model": model('a', 0.0912, "quickstart"), "deployedAt": "2026-11-29T13:00:00Z",
                 "reason": "rollback to revision 1 (spec.rollbackTo)"}
            ],
            "declined": [
                {"trainingRun": "quickstart-c", "metric": 0.0905, "at": "2026-11-29T14:00:00Z",
                 "reason": "cer 0.0905 does not beat the deployed 0.0912 by at least 0.01"}
            ]
        }
    })
}

/// One series point of a `metrics.jsonl`: step, seconds since the Unix epoch, value.
pub type Sample = (f64, f64, f64);

/// The validation CER (eval records) and training loss (train records) of a fixture trial.
pub fn curves(trial: &str) -> (Vec<Sample>, Vec<Sample>) {
    let text = std::fs::read_to_string(
        dir()
            .join("storage/quickstart")
            .join(trial)
            .join("metrics.jsonl"),
    )
    .unwrap();
    let (mut cer, mut loss) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
        let secs = t.timestamp_micros() as f64 / 1e6;
        let step = v["step"].as_f64().unwrap();
        match v["kind"].as_str().unwrap() {
            "eval" => cer.push((step, secs, v["cer"].as_f64().unwrap())),
            _ => loss.push((step, secs, v["loss"].as_f64().unwrap())),
        }
    }
    (cer, loss)
}

/// A chart's mapping from values to pixels, from its `data-*` attributes.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub x0: f64,
    pub x1: f64,
    pub y0: f64,
    pub y1: f64,
    pub log: bool,
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Frame {
    /// From the attribute values by name.
    pub fn from_attrs(get: impl Fn(&str) -> String) -> Self {
        let f = |k: &str| get(k).parse::<f64>().unwrap_or_else(|_| panic!("data-{k}"));
        Frame {
            x0: f("x0"),
            x1: f("x1"),
            y0: f("y0"),
            y1: f("y1"),
            log: get("log") == "1",
            left: f("left"),
            top: f("top"),
            width: f("width"),
            height: f("height"),
        }
    }

    /// The pixel of value `(x, y)`.
    pub fn pixel(&self, x: f64, y: f64) -> (f64, f64) {
        let t = if self.log { y.log10() } else { y };
        (
            self.left + (x - self.x0) / (self.x1 - self.x0) * self.width,
            self.top + self.height - (t - self.y0) / (self.y1 - self.y0) * self.height,
        )
    }
}

/// A polyline's `points` attribute as pixels.
pub fn parse_points(points: &str) -> Vec<(f64, f64)> {
    points
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// Assert that `drawn` pixels are `expected` values mapped through `frame` (to the 0.1 px the
/// page rounds to).
pub fn assert_points(what: &str, frame: &Frame, drawn: &[(f64, f64)], expected: &[(f64, f64)]) {
    assert_eq!(
        drawn.len(),
        expected.len(),
        "{what}: {} points drawn, {} in metrics.jsonl",
        drawn.len(),
        expected.len()
    );
    for (i, ((px, py), (x, y))) in drawn.iter().zip(expected).enumerate() {
        let (ex, ey) = frame.pixel(*x, *y);
        assert!(
            (px - ex).abs() <= 0.051 && (py - ey).abs() <= 0.051,
            "{what} point {i}: drawn ({px}, {py}), metrics.jsonl ({x}, {y}) maps to ({ex:.2}, {ey:.2})"
        );
    }
}
