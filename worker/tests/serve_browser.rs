//! The demo page driven in headless Chromium through chromedriver (W3C WebDriver over HTTP):
//! choose an image, see the text, flag it with a correction, find the pair in the flags folder.
//!
//! Without chromium/chromedriver the test prints a note and passes, unless
//! `TEXTREC_REQUIRE_BROWSER=1`, where it fails saying what is missing. `TEXTREC_CHROMIUM` and
//! `TEXTREC_CHROMEDRIVER` override the binaries' locations.

mod serve_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support as s;

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

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn text(&self, css: &str) -> String {
        let e = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
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

    async fn wait_until(&self, what: &str, js: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.script(js).await;
            if v.as_bool() != Some(false) && !v.is_null() {
                return v;
            }
            let err = self
                .script("return document.getElementById('error').textContent")
                .await;
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; page error: {err}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_recognizes_and_flags_in_headless_chromium() {
    let require = std::env::var("TEXTREC_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find_binary(
        "TEXTREC_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let driver_bin = find_binary("TEXTREC_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(driver_bin)) = (chromium.clone(), driver_bin.clone()) else {
        let msg = format!(
            "demo page browser test needs chromium and chromedriver (found chromium: {chromium:?}, chromedriver: {driver_bin:?}); \
             install Debian's `chromium chromium-driver` or set TEXTREC_CHROMIUM / TEXTREC_CHROMEDRIVER"
        );
        if require {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg} (set TEXTREC_REQUIRE_BROWSER=1 to make this a failure)");
        return;
    };

    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 51);
    let flags = tmp.path().join("flags");
    let mut a = s::args(&dir);
    a.flags = Some(flags.to_str().unwrap().into());
    let server = s::start(a).await;
    let img = s::line_png(160, 32);
    let img_path = tmp.path().join("upload.png");
    std::fs::write(&img_path, &img).unwrap();
    // What the API reads for this image, to compare with what the page shows.
    let http = reqwest::Client::new();
    let api: Value = http
        .post(format!("{}/v1/recognize", s::http_base(&server)))
        .body(img.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

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
                     "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.path().display())]
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

    s.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("{}/", s::http_base(&server))})),
    )
    .await;
    s.type_into("#file", img_path.to_str().unwrap()).await;
    s.wait_until(
        "the result",
        "return !document.getElementById('result').hidden",
    )
    .await;
    assert_eq!(s.text("#version").await, version);
    // The page names the model in service and where flags go (from GET /v1/model).
    assert_eq!(s.text("#serving-version").await, version);
    let where_ = s.text("#flag-where").await;
    assert!(
        where_.contains(flags.to_str().unwrap()) && where_.contains("newest 10000"),
        "{where_}"
    );
    let shown = s
        .script("return document.getElementById('text').textContent")
        .await;
    assert_eq!(shown, api["text"], "page text vs API text");
    assert!(s.text("#confidence").await.ends_with('%'));
    assert!(s.text("#latency").await.contains("ms"));

    // Correct the reading and flag it.
    s.script("document.getElementById('correction').value = ''; return true")
        .await;
    s.type_into("#correction", "a corrected line").await;
    let flag = s.element("#flag").await;
    s.call(
        reqwest::Method::POST,
        &format!("/element/{flag}/click"),
        Some(json!({})),
    )
    .await;
    let name = s
        .wait_until(
            "the flag",
            "return document.getElementById('flag-status').dataset.name || false",
        )
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert!(s.text("#flag-status").await.contains(&name));
    let flagged = serve_support::read_flag(&flags, &name);
    assert_eq!(flagged.png, img);
    assert_eq!(flagged.truth, "a corrected line\n");
    let rec = flagged.record;
    assert_eq!(rec["model_version"], version.as_str());
    assert_eq!(rec["prediction"], api["text"]);

    let _ = http.delete(s.base.clone()).send().await;
    s::stop(server).await;
}
