//! Headless Chromium driven through chromedriver (W3C WebDriver, by `fantoccini`), for the tests
//! of the pages people use: the worker's demo page and the operator's dashboard (which includes
//! this file by path, so both start the browser the same way).
//!
//! Without chromium/chromedriver [`launch`] prints a note and returns `None`, so the test passes,
//! unless `TEXTREC_REQUIRE_BROWSER=1` (scripts/test.sh sets it), where it fails saying what is
//! missing. `TEXTREC_CHROMIUM` and `TEXTREC_CHROMEDRIVER` override the binaries' locations.

#![allow(dead_code)] // each test uses its own share of the helpers

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// A browser session; chromedriver (and with it the browser) is killed when it drops, however
/// the test ends.
pub struct Browser {
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Start chromedriver and a headless Chromium session with `extra_args` on its command line;
/// `None` (after a note saying why) when either binary is missing and the browser is not
/// required. `what` names the test in that note.
pub async fn launch(what: &str, extra_args: &[&str]) -> Option<Browser> {
    let require = std::env::var("TEXTREC_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find_binary(
        "TEXTREC_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let driver_bin = find_binary("TEXTREC_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(driver_bin)) = (chromium.clone(), driver_bin.clone()) else {
        let msg = format!(
            "{what} needs chromium and chromedriver (found chromium: {chromium:?}, chromedriver: {driver_bin:?}); \
             install Debian's `chromium chromium-driver` or set TEXTREC_CHROMIUM / TEXTREC_CHROMEDRIVER"
        );
        assert!(!require, "{msg}");
        eprintln!("SKIPPED: {msg} (set TEXTREC_REQUIRE_BROWSER=1 to make this a failure)");
        return None;
    };

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(caps);
    // chromedriver takes a moment to listen; until then connecting is refused.
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let client = loop {
        match builder.connect(&url).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no WebDriver session from chromedriver at {url}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    Some(Browser {
        client,
        _driver: driver,
        _profile: profile,
    })
}

impl Browser {
    /// Run `js` in the page and return what it returns.
    pub async fn script(&self, js: &str) -> Value {
        self.client
            .execute(js, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {js:?}: {e}"))
    }

    /// The element `css` selects; the test fails naming the selector when there is none.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// The rendered text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Type `text` into the element `css` selects (for a file input: choose that file).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.unwrap();
    }

    /// Click the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Run `js` every 100 ms until it returns something other than `false` or `null`, and return
    /// that; `None` after `timeout`.
    pub async fn poll(&self, js: &str, timeout: Duration) -> Option<Value> {
        let start = Instant::now();
        loop {
            let v = self.script(js).await;
            if v.as_bool() != Some(false) && !v.is_null() {
                return Some(v);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// End the session (the browser closes its window and profile).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
