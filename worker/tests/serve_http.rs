//! HTTP API tests against a real `serve` on 127.0.0.1 with a tiny random-weight model: every
//! endpoint and every error.

mod serve_support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use serve_support as s;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recognize_predict_model_probes_metrics_and_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 11);
    let server = s::start(s::args(&dir)).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    let img = s::line_png(120, 32);

    // Raw body.
    let r: Value = http
        .post(format!("{base}/v1/recognize"))
        .header("content-type", "image/png")
        .body(img.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["model_version"], version.as_str());
    let text = r["text"].as_str().unwrap().to_string();
    assert_eq!(
        r["char_confidences"].as_array().unwrap().len(),
        text.chars().count()
    );
    assert!(r["timing"]["total_ms"].as_f64().unwrap() > 0.0);
    assert!(r["batch_size"].as_u64().unwrap() >= 1);

    // JSON with base64 and with a data URL.
    for image in [b64(&img), format!("data:image/png;base64,{}", b64(&img))] {
        let r: Value = http
            .post(format!("{base}/v1/recognize"))
            .json(&json!({ "image": image }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["text"], text.as_str());
    }

    // The classic lambda shape.
    for path in ["/v1/predict", "/predict"] {
        let resp = http
            .post(format!("{base}{path}"))
            .json(&json!({ "image": format!("data:image/png;base64,{}", b64(&img)) }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let r: Value = resp.json().await.unwrap();
        assert_eq!(r, json!({ "pred": text }));
    }

    let m: Value = http
        .get(format!("{base}/v1/model"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["version"], version.as_str());
    assert_eq!(m["ready"], true);
    assert_eq!(m["manifest"]["format"], "textrec.model/v1");
    assert_eq!(m["last_reload"]["ok"], true);
    assert_eq!(m["batching"]["max_batch"], 16);

    let h = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let metrics = s::metrics(&http, &base).await;
    for want in [
        r#"textrec_requests_total{api="http_recognize",outcome="ok"} 3"#,
        r#"textrec_requests_total{api="http_predict",outcome="ok"} 2"#,
        "textrec_request_duration_seconds_bucket",
        "textrec_batch_size_count",
        "textrec_queue_depth",
        &format!(r#"textrec_model_info{{version="{version}"}} 1"#),
        r#"textrec_model_reloads_total{outcome="ok"} 1"#,
    ] {
        assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    }

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"id="file""#) && page.contains("demo.js"));
    let js = http.get(format!("{base}/demo.js")).send().await.unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(js.text().await.unwrap().contains("v1/recognize"));
    let css = http.get(format!("{base}/demo.css")).send().await.unwrap();
    assert_eq!(css.status(), 200);
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_have_specific_statuses_and_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 12);
    let mut a = s::args(&dir);
    a.max_request_bytes = 30_000;
    a.max_pixels = 300 * 64;
    a.max_batch = 1;
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| http.post(format!("{base}/v1/recognize")).body(body).send();

    let (st, msg) = error_of(post(b"hello, I am text".to_vec()).await.unwrap()).await;
    assert_eq!(st, 400);
    assert!(msg.contains("cannot decode image"), "{msg}");

    let (st, msg) = error_of(post(vec![]).await.unwrap()).await;
    assert_eq!(st, 400);
    assert!(msg.contains("empty image"), "{msg}");

    // A truncated PNG: the header reads, the pixels do not.
    let mut cut = s::line_png(200, 32);
    cut.truncate(cut.len() / 2);
    let (st, msg) = error_of(post(cut).await.unwrap()).await;
    assert_eq!(st, 400);
    assert!(msg.contains("cannot decode image"), "{msg}");

    let (st, msg) = error_of(post(vec![1u8; 35_000]).await.unwrap()).await;
    assert_eq!(st, 413);
    assert!(msg.contains("35000 bytes"), "{msg}");
    // Far beyond the body limit: refused while reading the body.
    let (st, msg) = error_of(post(vec![1u8; 200_000]).await.unwrap()).await;
    assert_eq!(st, 413);
    assert!(msg.contains("larger than"), "{msg}");

    let (st, msg) = error_of(post(s::line_png(400, 64)).await.unwrap()).await;
    assert_eq!(st, 413);
    assert!(
        msg.contains("400x64 = 25600 pixels") && msg.contains("19200"),
        "{msg}"
    );
    let (st, msg) = error_of(post(s::bomb_png(50_000, 50_000)).await.unwrap()).await;
    assert_eq!(st, 413);
    assert!(msg.contains("50000x50000"), "{msg}");

    let bad_json = http
        .post(format!("{base}/v1/recognize"))
        .header("content-type", "application/json")
        .body("{\"img\": 1}")
        .send()
        .await
        .unwrap();
    let (st, msg) = error_of(bad_json).await;
    assert_eq!(st, 400);
    assert!(msg.contains("bad JSON"), "{msg}");
    let bad_b64 = http
        .post(format!("{base}/v1/predict"))
        .json(&json!({"image": "@@@"}))
        .send()
        .await
        .unwrap();
    let (st, msg) = error_of(bad_b64).await;
    assert_eq!(st, 400);
    assert!(msg.contains("base64"), "{msg}");

    let (st, msg) = error_of(http.get(format!("{base}/v2/nothing")).send().await.unwrap()).await;
    assert_eq!(st, 404);
    assert!(msg.contains("/v2/nothing"), "{msg}");
    let wrong_method = http
        .get(format!("{base}/v1/recognize"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);

    // Flagging is off without --flags.
    let off = http
        .post(format!("{base}/v1/flag"))
        .json(&json!({"image": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 501);

    // Deadline: a 1 ms budget behind a queue of work.
    let img = s::line_png(250, 32);
    let mut busy = Vec::new();
    for _ in 0..12 {
        let req = http
            .post(format!("{base}/v1/recognize"))
            .body(img.clone())
            .send();
        busy.push(tokio::spawn(req));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = http
        .post(format!("{base}/v1/recognize"))
        .header("x-request-timeout-ms", "1")
        .body(img.clone())
        .send()
        .await
        .unwrap();
    let (st, msg) = error_of(late).await;
    assert_eq!(st, 504);
    assert!(msg.contains("deadline"), "{msg}");
    for b in busy {
        assert_eq!(b.await.unwrap().unwrap().status(), 200);
    }

    let metrics = s::metrics(&http, &base).await;
    for want in [
        "invalid_argument",
        "too_many_pixels",
        "too_large",
        "deadline_exceeded",
    ] {
        assert!(
            metrics.contains(&format!("outcome=\"{want}\"")),
            "no {want} in\n{metrics}"
        );
    }
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_endpoint_writes_a_tesstrain_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 13);
    let flags = tmp.path().join("flags");
    let mut a = s::args(&dir);
    a.flags = Some(flags.to_str().unwrap().into());
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    let img = s::line_png(64, 32);
    let resp = http
        .post(format!("{base}/v1/flag"))
        .json(&json!({"image": b64(&img), "prediction": "hallo", "corrected_text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let r: Value = resp.json().await.unwrap();
    let name = r["name"].as_str().unwrap();
    let flagged = s::read_flag(&flags, name);
    assert_eq!(flagged.png, img);
    assert_eq!(flagged.truth, "hello\n");
    let rec = flagged.record;
    assert_eq!(rec["model_version"], version.as_str());
    assert_eq!(rec["prediction"], "hallo");
    assert_eq!(rec["corrected_text"], "hello");
    let bad = http
        .post(format!("{base}/v1/flag"))
        .json(&json!({"image": b64(b"xx"), "prediction": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let metrics = s::metrics(&http, &base).await;
    assert!(
        metrics.contains(r#"textrec_flags_total{outcome="ok"} 1"#),
        "{metrics}"
    );
    s::stop(server).await;
}
