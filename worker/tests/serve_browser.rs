//! The demo page driven in headless Chromium through chromedriver (W3C WebDriver): choose an
//! image, see the text, flag it with a correction, find the pair in the flags folder.
//!
//! Without chromium/chromedriver the test prints a note and passes, unless
//! `TEXTREC_REQUIRE_BROWSER=1`, where it fails saying what is missing (see
//! `browser_support/mod.rs`).

mod browser_support;
mod serve_support;

use std::time::Duration;

use serde_json::Value;
use serve_support as s;

/// Wait for the page to show `what` (`js` returns something other than `false` or `null`), and
/// return what `js` returned; on timeout, fail with the page's own error line.
async fn wait_for(b: &browser_support::Browser, what: &str, js: &str) -> Value {
    match b.poll(js, Duration::from_secs(30)).await {
        Some(v) => v,
        None => {
            let err = b
                .script("return document.getElementById('error').textContent")
                .await;
            panic!("timed out waiting for {what}; page error: {err}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_recognizes_and_flags_in_headless_chromium() {
    let Some(b) = browser_support::launch("the demo page's browser test", &[]).await else {
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
    let api: Value = reqwest::Client::new()
        .post(format!("{}/v1/recognize", s::http_base(&server)))
        .body(img.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    b.client
        .goto(&format!("{}/", s::http_base(&server)))
        .await
        .unwrap();
    b.type_into("#file", img_path.to_str().unwrap()).await;
    wait_for(
        &b,
        "the result",
        "return !document.getElementById('result').hidden",
    )
    .await;
    assert_eq!(b.text("#version").await, version);
    // The page names the model in service and where flags go (from GET /v1/model).
    assert_eq!(b.text("#serving-version").await, version);
    let where_ = b.text("#flag-where").await;
    assert!(
        where_.contains(flags.to_str().unwrap()) && where_.contains("newest 10000"),
        "{where_}"
    );
    let shown = b
        .script("return document.getElementById('text').textContent")
        .await;
    assert_eq!(shown, api["text"], "page text vs API text");
    assert!(b.text("#confidence").await.ends_with('%'));
    assert!(b.text("#latency").await.contains("ms"));

    // Correct the reading and flag it.
    b.script("document.getElementById('correction').value = ''; return true")
        .await;
    b.type_into("#correction", "a corrected line").await;
    b.click("#flag").await;
    let name = wait_for(
        &b,
        "the flag",
        "return document.getElementById('flag-status').dataset.name || false",
    )
    .await
    .as_str()
    .unwrap()
    .to_string();
    assert!(b.text("#flag-status").await.contains(&name));
    let flagged = serve_support::read_flag(&flags, &name);
    assert_eq!(flagged.png, img);
    assert_eq!(flagged.truth, "a corrected line\n");
    let rec = flagged.record;
    assert_eq!(rec["model_version"], version.as_str());
    assert_eq!(rec["prediction"], api["text"]);

    b.close().await;
    s::stop(server).await;
}
