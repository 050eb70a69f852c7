//! The dashboard in headless Chromium through chromedriver (W3C WebDriver over HTTP, as the
//! worker's demo-page test drives it), served the way `local run` serves it: each page loads,
//! every chart's polylines are the fixtures' `metrics.jsonl` values mapped through the chart's
//! axes, the log-scale link switches the axes, and each page is screenshotted.
//!
//! Screenshots go to a temporary folder, or to `docs/images/ui-{runs,run,deployment}.png` with
//! `TEXTREC_UI_SCREENSHOTS=1` (how the README's images are made).
//!
//! Without chromium/chromedriver the test prints a note and passes, unless
//! `TEXTREC_REQUIRE_BROWSER=1` (scripts/test.sh sets it), where it fails saying what is missing.
//! `TEXTREC_CHROMIUM` and `TEXTREC_CHROMEDRIVER` override the binaries' locations.

mod support {
    pub mod ui_fixtures;
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::ui_fixtures as fx;
use textrec_operator::crd::{ModelDeployment, TrainingRun};
use textrec_operator::local::runner::serve_ui;
use textrec_operator::ui::data::{SharedObjects, Snapshot};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Kills chromedriver (and with it the browser) however the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Session {
    http: reqwest::Client,
    base: String,
}

impl Session {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("chromedriver answers");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    async fn click(&self, css: &str) {
        let e = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = e[ELEMENT].as_str().unwrap().to_string();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// A screenshot of the whole page (the window grown to the page's height) as PNG.
    async fn screenshot(&self, to: &Path) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1440, "height": 500})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The content's height, plus whatever the window has around the viewport.
        let h = self
            .script(
                "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) \
                 + (window.outerHeight - window.innerHeight)",
            )
            .await
            .as_f64()
            .unwrap();
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1440, "height": h.min(4000.0)})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b64 = self
            .call(reqwest::Method::GET, "/screenshot", None)
            .await
            .as_str()
            .unwrap()
            .to_string();
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        std::fs::write(to, png).unwrap();
    }
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

async fn check_charts(s: &Session, log: bool) {
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
    let require = std::env::var("TEXTREC_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find_binary(
        "TEXTREC_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let driver_bin = find_binary("TEXTREC_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(driver_bin)) = (chromium.clone(), driver_bin.clone()) else {
        let msg = format!(
            "dashboard browser test needs chromium and chromedriver (found chromium: {chromium:?}, chromedriver: {driver_bin:?}); \
             install Debian's `chromium chromium-driver` or set TEXTREC_CHROMIUM / TEXTREC_CHROMEDRIVER"
        );
        if require {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg} (set TEXTREC_REQUIRE_BROWSER=1 to make this a failure)");
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

    let http = reqwest::Client::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _driver = Driver(
        Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let driver_url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while http
        .get(format!("{driver_url}/status"))
        .send()
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1440,1000", "--hide-scrollbars",
                     format!("--user-data-dir={}", profile.path().display())]
        }
    }}});
    let resp: Value = http
        .post(format!("{driver_url}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = resp["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
        .to_string();
    let s = Session {
        http: http.clone(),
        base: format!("{driver_url}/session/{sid}"),
    };

    // The list.
    s.goto(&url).await;
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
    s.screenshot(&shots.join("ui-runs.png")).await;

    // The run, reached by its link: charts hold the metrics.jsonl values.
    s.click("#runs a[href=\"/ui/runs/default/quickstart\"]")
        .await;
    let start = Instant::now();
    while s
        .script("return document.querySelectorAll('svg.chart').length")
        .await
        != json!(4)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "run page did not load"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_charts(&s, false).await;
    let legend = s
        .script("return document.getElementById('legend').innerText")
        .await;
    assert!(
        legend.as_str().unwrap().contains("quickstart-t1 (best)"),
        "{legend}"
    );
    s.screenshot(&shots.join("ui-run.png")).await;
    // The log-scale link.
    s.click("#log").await;
    let start = Instant::now();
    while s.script("return location.search").await != json!("?log=1") {
        assert!(start.elapsed() < Duration::from_secs(20), "log link");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_charts(&s, true).await;

    // The deployment.
    s.goto(&format!("{base}/ui/deployments/default/quickstart"))
        .await;
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
    s.screenshot(&shots.join("ui-deployment.png")).await;

    let _ = http.delete(s.base.clone()).send().await;
}
