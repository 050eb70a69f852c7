//! HTTP API tests against a real `serve` on 127.0.0.1 with a tiny random-weight model: every
//! endpoint and every error.

mod serve_support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use serve_support as s;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    let m = s::model_info(&http, &base).await;
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

    let resp = post(vec![1u8; 35_000]).await.unwrap();
    // A refused upload ends its connection, so that no client pools it for another request.
    assert_eq!(resp.headers()["connection"], "close");
    let (st, msg) = error_of(resp).await;
    assert_eq!(st, 413);
    assert!(msg.contains("35000 bytes"), "{msg}");
    // Far beyond the body limit: refused while reading the body. The server answers and
    // closes without reading the rest, so the client, still sending, may see the connection
    // reset before it reads the answer; either way the server must not take the whole body.
    match post(vec![1u8; 200_000]).await {
        Ok(resp) => {
            let (st, msg) = error_of(resp).await;
            assert_eq!(st, 413);
            assert!(msg.contains("larger than"), "{msg}");
        }
        Err(e) => assert!(e.is_request(), "not a refused upload: {e:?}"),
    }

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
    // Stored as recognition decodes it: 8-bit gray PNG, the same pixels.
    assert_eq!(
        image::load_from_memory(&flagged.png).unwrap().into_luma8(),
        image::load_from_memory(&img).unwrap().into_luma8()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_checked_like_recognition_capped_admitted_and_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 14);
    let flags = tmp.path().join("flags");
    let mut a = s::args(&dir);
    a.flags = Some(flags.to_str().unwrap().into());
    a.flag_burst = 100;
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    let flag = |image: &[u8], version: String| {
        http.post(format!("{base}/v1/flag"))
            .json(&json!({"image": b64(image), "prediction": "a", "corrected_text": "b", "model_version": version}))
            .send()
    };
    let v = || "v1".to_string();

    // What /v1/recognize refuses, /v1/flag refuses too.
    let (st, msg) = error_of(flag(&s::bomb_png(16_000_000, 1), v()).await.unwrap()).await;
    assert_eq!(st, 413, "{msg}");
    let (st, msg) = error_of(flag(&s::bomb_png(200_000, 1), v()).await.unwrap()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("wider than"), "{msg}");
    let mut cut = s::line_png(200, 32);
    cut.truncate(cut.len() * 2 / 3);
    let (st, msg) = error_of(flag(&cut, v()).await.unwrap()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    // Capped fields.
    let (st, msg) = error_of(
        flag(&s::line_png(64, 32), "x".repeat(5_000_000))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("model_version"), "{msg}");
    let long = http
        .post(format!("{base}/v1/flag"))
        .json(&json!({"image": b64(&s::line_png(64, 32)), "prediction": "a", "corrected_text": "c".repeat(1025)}))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 400);
    assert_eq!(
        std::fs::read_dir(&flags).unwrap().count(),
        0,
        "nothing stored"
    );

    // Trailing junk is accepted, and not stored.
    let mut junk = s::line_png(64, 32);
    junk.extend_from_slice(&[0xAB; 4096]);
    let resp = flag(&junk, v()).await.unwrap();
    assert_eq!(resp.status(), 201);
    let name = resp.json::<Value>().await.unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = s::read_flag(&flags, &name).png;
    assert!(
        stored.len() < junk.len() - 4000,
        "{} bytes stored",
        stored.len()
    );
    image::load_from_memory(&stored).unwrap();

    // Flags count against admission: with every permit taken, a flag is shed like a
    // recognition.
    let held = server
        .state
        .admission
        .clone()
        .try_acquire_many_owned(server.state.max_in_flight as u32)
        .unwrap();
    let (st, msg) = error_of(flag(&s::line_png(64, 32), v()).await.unwrap()).await;
    assert_eq!(st, 429, "{msg}");
    assert!(msg.contains("--max-queue"), "{msg}");
    drop(held);
    s::stop(server).await;

    // Per client: a burst, then 429 with Retry-After.
    let mut a = s::args(&dir);
    a.flags = Some(flags.to_str().unwrap().into());
    a.flag_rate = 1;
    a.flag_burst = 2;
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let send = || {
        http.post(format!("{base}/v1/flag"))
            .json(&json!({"image": b64(&s::line_png(64, 32)), "prediction": "a"}))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 201);
    assert_eq!(send().await.unwrap().status(), 201);
    let limited = send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "Retry-After: {after}");
    let (_, msg) = error_of(limited).await;
    assert!(msg.contains("--flag-rate"), "{msg}");
    let metrics = s::metrics(&http, &base).await;
    assert!(
        metrics.contains(r#"textrec_flags_total{outcome="rate_limited"} 1"#),
        "{metrics}"
    );
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_disconnects_are_not_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 15);
    let mut a = s::args(&dir);
    a.header_read_timeout = Duration::from_millis(500);
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();

    // 64 connections that send part of a request line, then nothing.
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut c = tokio::net::TcpStream::connect(server.http_addr)
            .await
            .unwrap();
        c.write_all(b"POST /v1/recognize HT").await.unwrap();
        slow.push(c);
    }
    // Meanwhile a normal request is served.
    let r = http
        .post(format!("{base}/v1/recognize"))
        .body(s::line_png(120, 32))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The server closes every slow connection (hyper may say 408 first). The timeout only
    // keeps a regression from hanging the test.
    for (i, mut c) in slow.into_iter().enumerate() {
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut sink))
            .await
            .unwrap_or_else(|_| panic!("slow connection {i} is still open"));
        // EOF, or a reset: either way the server let go.
        let _ = closed;
    }

    // A client that goes away mid-upload is counted as incomplete, not as too large.
    let mut c = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    c.write_all(
        b"POST /v1/recognize HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    c.write_all(&[0u8; 1000]).await.unwrap();
    c.flush().await.unwrap();
    drop(c);
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = s::metrics(&http, &base).await;
        if metrics.contains(r#"outcome="incomplete""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(r#"outcome="incomplete""#), "{metrics}");
    assert!(!metrics.contains(r#"outcome="too_large""#), "{metrics}");
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_info_hides_credentials_in_urls() {
    use textrec_worker::serve::proto::textrec::GetModelRequest;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 16);
    // A presigned URL with credentials; the loader serves the local model for it.
    let source = "s3://key:hunter2@bucket/models/m/?X-Amz-Signature=hunter2#frag";
    let local = dir.to_str().unwrap().to_string();
    let loader: textrec_worker::serve::reload::Loader = std::sync::Arc::new(move |_url: String| {
        let local = local.clone();
        Box::pin(async move {
            textrec_worker::serve::engine::load_model(
                &local,
                tch::Device::Cpu,
                Default::default(),
                Default::default(),
            )
            .await
        })
    });
    let mut a = s::args(&dir);
    a.model = Some(source.into());
    let server = textrec_worker::serve::start_with_loader(a, loader)
        .await
        .unwrap();
    let base = s::http_base(&server);
    let m: Value = reqwest::get(format!("{base}/v1/model"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["version"], version.as_str());
    let text = m.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("frag"),
        "{text}"
    );
    assert_eq!(m["source"], "s3://bucket/models/m/");
    assert_eq!(m["last_reload"]["source"], "s3://bucket/models/m/");
    let info = s::recognizer(&server)
        .await
        .get_model(GetModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.source, "s3://bucket/models/m/");
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_bounded_before_they_are_read_and_connections_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 16);
    let mut a = s::args(&dir);
    a.max_connections = 2;
    a.max_body_bytes_in_flight = 64 * 1024;
    let server = s::start(a).await;
    let base = s::http_base(&server);

    // A declared length over the limit is refused from the headers alone: the server answers
    // without waiting for a single body byte.
    let mut c = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    c.write_all(
        b"POST /v1/recognize HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut head))
        .await
        .expect("answered before the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    drop(c);

    // An upload that holds the whole body budget (declared, then trickled) makes the next one
    // wait, and past its deadline be shed with a message naming the setting.
    let mut holder = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    holder
        .write_all(b"POST /v1/recognize HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 65536\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let shed = http
        .post(format!("{base}/v1/recognize"))
        .header("x-request-timeout-ms", "300")
        .body(s::line_png(120, 32))
        .send()
        .await
        .unwrap();
    let (st, msg) = error_of(shed).await;
    assert_eq!(st, 429, "{msg}");
    assert!(msg.contains("--max-body-bytes-in-flight"), "{msg}");
    drop(holder);
    // The budget comes back when the holder goes away.
    let mut ok = false;
    for _ in 0..50 {
        let r = http
            .post(format!("{base}/v1/recognize"))
            .body(s::line_png(120, 32))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the body budget was not released");

    // With both connection slots held by idle clients, a third client is not served until
    // one of them leaves.
    let idle1 = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let idle2 = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::spawn({
        let http = http.clone();
        let base = base.clone();
        async move { http.get(format!("{base}/healthz")).send().await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a connection beyond --max-connections was served"
    );
    drop(idle1);
    let r = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot was free")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(idle2);
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_flag_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 17);
    let flag_as = |http: &reqwest::Client, base: &str, client: &str| {
        http.post(format!("{base}/v1/flag"))
            .header("x-forwarded-for", client)
            .json(&json!({"image": b64(&s::line_png(120, 32)), "prediction": "a", "corrected_text": "b"}))
            .send()
    };
    for trusted in [false, true] {
        let mut a = s::args(&dir);
        a.flags = Some(
            tmp.path()
                .join(format!("flags-{trusted}"))
                .to_str()
                .unwrap()
                .into(),
        );
        a.flag_rate = 1;
        a.flag_burst = 1;
        if trusted {
            a.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        }
        let server = s::start(a).await;
        let base = s::http_base(&server);
        let http = reqwest::Client::new();
        let first = flag_as(&http, &base, "203.0.113.1").await.unwrap().status();
        let second = flag_as(&http, &base, "203.0.113.2").await.unwrap().status();
        assert_eq!(first, 201);
        if trusted {
            // Two clients behind the proxy: one flag each.
            assert_eq!(second, 201);
            let again = flag_as(&http, &base, "203.0.113.1").await.unwrap().status();
            assert_eq!(again, 429);
        } else {
            // The header is not believed: both share the peer's budget.
            assert_eq!(second, 429);
        }
        s::stop(server).await;
    }
}

/// Diagonal stripes of four widths, which the random model reads differently at different
/// widths.
fn stripes() -> Vec<image::GrayImage> {
    [120, 30, 64, 200]
        .iter()
        .map(|&w| {
            image::GrayImage::from_fn(w, 20, |x, y| {
                image::Luma([if (x / 3 + y / 4) % 3 == 0 { 20 } else { 235 }])
            })
        })
        .collect()
}

/// Start a server with `args`, read `GET /v1/model`, post each image once and stop it: each
/// line's confidence as served, and the model's description.
async fn confidences_served(
    args: textrec_worker::serve::ServeArgs,
    http: &reqwest::Client,
    images: &[image::GrayImage],
) -> (Vec<f32>, Value) {
    let server = s::start(args).await;
    let base = s::http_base(&server);
    let info = s::model_info(http, &base).await;
    let mut served = Vec::new();
    for image in images {
        let r = s::post_png(http, &base, s::png(image)).await;
        served.push(r["confidence"].as_f64().unwrap() as f32);
    }
    s::stop(server).await;
    (served, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reads_each_line_at_the_widths_it_was_started_with() {
    use textrec_model::widths::WidthReadings;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 11);
    let factors = vec![1.0f32, 0.7, 1.5];
    let mut a = s::args(&dir);
    a.widths.widths = factors.clone();
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    let images = stripes();
    let mut served = Vec::new();
    for image in &images {
        let r = s::post_png(&http, &base, s::png(image)).await;
        served.push((
            r["text"].as_str().unwrap().to_string(),
            r["confidence"].as_f64().unwrap() as f32,
        ));
    }
    // No threshold: every line was read again, and /metrics says so.
    let metrics = s::metrics(&http, &base).await;
    assert!(
        metrics.contains("textrec_lines_reread_total 4"),
        "{metrics}"
    );
    s::stop(server).await;

    // The same model in this process, read at the same widths and at the first alone.
    let mut model =
        textrec_model::LoadedModel::load_dir(&dir, tch::Device::Cpu).expect("model loads");
    let once = model.recognize(&images).unwrap();
    model.set_widths(WidthReadings::new(factors, None).unwrap());
    let kept = model.recognize(&images).unwrap();
    for (i, ((text, confidence), p)) in served.iter().zip(&kept).enumerate() {
        assert_eq!(text, &p.text, "line {i}");
        assert!((confidence - p.confidence).abs() < 1e-4, "line {i}");
    }
    assert!(
        once.iter()
            .zip(&kept)
            .any(|(a, b)| b.confidence > a.confidence + 1e-4),
        "some line must read better at another width for the test to tell"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reads_at_its_models_width_unless_started_with_others() {
    use textrec_model::widths::WidthReadings;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 11);
    // The trainer writes the width it chose into the manifest.
    let path = dir.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["reading"] = serde_json::json!({"widths": [1.5]});
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let images = stripes();
    let http = reqwest::Client::new();
    let serve = |widths: Vec<f32>| {
        let mut a = s::args(&dir);
        a.widths.widths = widths;
        let (http, images) = (http.clone(), images.clone());
        async move {
            let (served, info) = confidences_served(a, &http, &images).await;
            (served, info["reading"].clone())
        }
    };
    let mut model = textrec_model::LoadedModel::load_dir(&dir, tch::Device::Cpu).unwrap();
    let confidences = |m: &textrec_model::LoadedModel| -> Vec<f32> {
        m.recognize(&images)
            .unwrap()
            .iter()
            .map(|p| p.confidence)
            .collect()
    };
    let wide = confidences(&model);
    model.set_widths(WidthReadings::default());
    let drawn = confidences(&model);
    assert!(
        wide.iter().zip(&drawn).any(|(a, b)| (a - b).abs() > 1e-4),
        "the widths must read differently for the test to tell"
    );
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-4);
    // GET /v1/model says how the server reads, which --widths may have set over the manifest.
    let (by_manifest, reading) = serve(Vec::new()).await;
    assert!(close(&by_manifest, &wide), "{by_manifest:?} vs {wide:?}");
    assert_eq!(reading, json!({"widths": [1.5]}));
    let (as_drawn, reading) = serve(vec![1.0]).await;
    assert!(close(&as_drawn, &drawn), "{as_drawn:?} vs {drawn:?}");
    assert_eq!(reading, json!({"widths": [1.0]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_in_bf16_reads_as_the_model_does_in_bf16_and_says_so() {
    use textrec_model::precision::ReadingPrecision;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 11);
    let images = stripes();
    let http = reqwest::Client::new();
    let serve = |precision: ReadingPrecision| {
        let mut a = s::args(&dir);
        a.precision.precision = precision;
        let (http, images) = (http.clone(), images.clone());
        async move {
            let (served, info) = confidences_served(a, &http, &images).await;
            (served, info["precision"].clone())
        }
    };
    let confidences = |precision: ReadingPrecision| -> Vec<f32> {
        let mut m = textrec_model::LoadedModel::load_dir(&dir, tch::Device::Cpu).unwrap();
        m.set_precision(precision).unwrap();
        m.recognize(&images)
            .unwrap()
            .iter()
            .map(|p| p.confidence)
            .collect()
    };
    let (exact, half) = (
        confidences(ReadingPrecision::Fp32),
        confidences(ReadingPrecision::Bf16),
    );
    assert_ne!(
        exact, half,
        "bf16 must read differently for the test to tell"
    );
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-4);
    let (served, precision) = serve(ReadingPrecision::Bf16).await;
    assert!(close(&served, &half), "{served:?} vs {half:?}");
    assert_eq!(precision, json!("bf16"));
    let (served, precision) = serve(ReadingPrecision::Fp32).await;
    assert!(close(&served, &exact), "{served:?} vs {exact:?}");
    assert_eq!(precision, json!("fp32"));
}
