//! The dashboard in headless Chromium through chromedriver (W3C WebDriver, started as the
//! worker's demo-page test starts it: `worker/tests/browser_support/mod.rs`), served the way
//! `local run` serves it: each page loads, every chart's polylines are the fixtures'
//! `metrics.jsonl` values mapped through the chart's axes, the log-scale link switches the
//! axes, and each page is screenshotted.
//!
//! Screenshots go to a temporary folder, or to `docs/images/ui-{runs,run,deployment}.png` with
//! `TEXTREC_UI_SCREENSHOTS=1` (how the README's images are made).
//!
//! Without chromium/chromedriver the test prints a note and passes, unless
//! `TEXTREC_REQUIRE_BROWSER=1` (scripts/test.sh sets it), where it fails saying what is missing.
//! `TEXTREC_CHROMIUM` and `TEXTREC_CHROMEDRIVER` override the binaries' locations.

mod support {
    pub mod ui_fixtures;
    // One way to start the browser for every page test of the project.
    #[path = "../../../worker/tests/browser_support/mod.rs"]
    pub mod browser;
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::browser::{self, Browser};
use support::ui_fixtures as fx;
use textrec_operator::crd::{ModelDeployment, TrainingRun};
use textrec_operator::local::runner::serve_ui;
use textrec_operator::ui::data::{SharedObjects, Snapshot};

/// A screenshot of the whole page (the window grown to the page's height) as PNG.
async fn screenshot(b: &Browser, to: &Path) {
    b.client.set_window_size(1440, 500).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The content's height, plus whatever the window has around the viewport.
    let h = b
        .script(
            "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) \
             + (window.outerHeight - window.innerHeight)",
        )
        .await
        .as_f64()
        .unwrap();
    b.client
        .set_window_size(1440, h.min(4000.0) as u32)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = b.client.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    std::fs::write(to, png).unwrap();
}

/// Every chart of the page: its `data-*` attributes, and each series' trial, points, and the
/// rendered length of its line.
const CHARTS_JS: &str = r#"
return Array.from(document.querySelectorAll('svg.chart')).map(s => ({
  id: s.id,
  data: Object.assign({}, s.dataset),
  series: Array.from(s.querySelectorAll('g.series')).map(g => ({
    trial: g.dataset.trial,
    points: g.querySelector('polyline').getAttribute('points'),
    length: g.querySelector('polyline').getTotalLength(),
    stroke: getComputedStyle(g.querySelector('polyline')).stroke
  }))
}));
"#;

async fn check_charts(s: &Browser, log: bool) {
    let charts = s.script(CHARTS_JS).await;
    let charts = charts.as_array().unwrap();
    let ids: Vec<&str> = charts.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cer-step", "loss-step", "cer-time", "loss-time"]);
    let trials = ["quickstart-t0", "quickstart-t1"];
    let curves: BTreeMap<&str, _> = trials.iter().map(|t| (*t, fx::curves(t))).collect();
    let origin = curves
        .values()
        .flat_map(|(c, l)| [c[0].1, l[0].1])
        .fold(f64::INFINITY, f64::min);
    for c in charts {
        let id = c["id"].as_str().unwrap();
        let data = &c["data"];
        let frame = fx::Frame::from_attrs(|k| data[k].as_str().unwrap_or_default().to_string());
        assert_eq!(frame.log, log, "{id} scale");
        let series = c["series"].as_array().unwrap();
        assert_eq!(series.len(), 2, "{id}: one line per trial");
        let mut strokes = Vec::new();
        for sr in series {
            let trial = sr["trial"].as_str().unwrap();
            let (cer, loss) = &curves[trial];
            let samples = if id.starts_with("cer") { cer } else { loss };
            let want: Vec<(f64, f64)> = samples
                .iter()
                .map(|s| {
                    let x = if id.ends_with("time") {
                        s.1 - origin
                    } else {
                        s.0
                    };
                    (x, s.2)
                })
                .collect();
            let drawn = fx::parse_points(sr["points"].as_str().unwrap());
            fx::assert_points(&format!("{id} {trial}"), &frame, &drawn, &want);
            assert!(
                sr["length"].as_f64().unwrap() > 10.0,
                "{id} {trial} is drawn"
            );
            strokes.push(sr["stroke"].as_str().unwrap().to_string());
        }
        assert_ne!(strokes[0], strokes[1], "{id}: trials have distinct colors");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_render_the_metrics_in_headless_chromium() {
    let Some(s) = browser::launch(
        "the dashboard's browser test",
        &["--window-size=1440,1000", "--hide-scrollbars"],
    )
    .await
    else {
        return;
    };

    // The dashboard as `local run` serves it, over the quickstart's fixtures.
    let run: TrainingRun = serde_json::from_value(fx::run("default")).unwrap();
    let md: ModelDeployment = serde_json::from_value(fx::deployment("default")).unwrap();
    let objects = Arc::new(SharedObjects::default());
    objects.set(Snapshot {
        runs: vec![Arc::new(run)],
        deployments: vec![Arc::new(md)],
        demo: [(
            "quickstart".to_string(),
            "http://127.0.0.1:8080/".to_string(),
        )]
        .into(),
    });
    let url = serve_ui("127.0.0.1:0".parse().unwrap(), objects)
        .await
        .unwrap();
    let base = url.trim_end_matches("/ui").to_string();

    let shots_dir = tempfile::tempdir().unwrap();
    let shots = if std::env::var("TEXTREC_UI_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/images")
    } else {
        shots_dir.path().to_path_buf()
    };
    std::fs::create_dir_all(&shots).unwrap();

    // The list.
    s.client.goto(&url).await.unwrap();
    let title = s.script("return document.title").await;
    assert_eq!(title, "Runs · textrec");
    let row = s
        .script("return document.querySelector('#runs tr[data-run=\"quickstart\"]').innerText")
        .await;
    let row = row.as_str().unwrap();
    assert!(row.contains("Succeeded") && row.contains("2/2"), "{row}");
    assert!(
        row.contains("cer 0.0912") && row.contains("ace2123f6ff2"),
        "{row}"
    );
    screenshot(&s, &shots.join("ui-runs.png")).await;

    // The run, reached by its link: charts hold the metrics.jsonl values.
    s.click("#runs a[href=\"/ui/runs/default/quickstart\"]")
        .await;
    let loaded = "return document.querySelectorAll('svg.chart').length === 4";
    assert!(
        s.poll(loaded, Duration::from_secs(20)).await.is_some(),
        "run page did not load"
    );
    check_charts(&s, false).await;
    let legend = s
        .script("return document.getElementById('legend').innerText")
        .await;
    assert!(
        legend.as_str().unwrap().contains("quickstart-t1 (best)"),
        "{legend}"
    );
    screenshot(&s, &shots.join("ui-run.png")).await;
    // The log-scale link.
    s.click("#log").await;
    let switched = "return location.search === '?log=1'";
    assert!(
        s.poll(switched, Duration::from_secs(20)).await.is_some(),
        "log link"
    );
    check_charts(&s, true).await;

    // The deployment.
    s.client
        .goto(&format!("{base}/ui/deployments/default/quickstart"))
        .await
        .unwrap();
    let demo = s
        .script("return document.getElementById('demo').getAttribute('href')")
        .await;
    assert_eq!(demo, "http://127.0.0.1:8080/");
    let history = s
        .script("return document.getElementById('history').innerText")
        .await;
    let history = history.as_str().unwrap();
    assert!(
        history.contains("1 (current)") && history.contains("ace2123f6ff2"),
        "{history}"
    );
    screenshot(&s, &shots.join("ui-deployment.png")).await;

    s.close().await;
}
