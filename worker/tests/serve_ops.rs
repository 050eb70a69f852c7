//! Operational tests of `serve`: hot reload under concurrent load with no failed request (and a
//! refused corrupt model), load shedding, and the real binary's SIGHUP and SIGTERM handling.

mod serve_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_support as s;
use textrec_worker::serve::proto::textrec as pb;
use tonic::Code;

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_under_load_drops_nothing_and_refuses_a_corrupt_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, va) = s::tiny_model(tmp.path(), "a", 21);
    let (dir_b, vb) = s::tiny_model(tmp.path(), "b", 22);
    let (dir_c, _) = s::tiny_model(tmp.path(), "c", 23);
    // Corrupt c: its weights no longer match the manifest's sha256.
    let w = dir_c.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();

    let pointer = tmp.path().join("current-model");
    std::fs::write(&pointer, format!("{}\n", dir_a.display())).unwrap();
    let mut a = s::args(&dir_a);
    a.model = None;
    a.model_pointer = Some(pointer.to_str().unwrap().into());
    a.reload_interval = Duration::from_millis(100);
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    assert_eq!(s::model_info(&http, &base).await["version"], va.as_str());

    // Load: gRPC and HTTP clients in closed loops until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let img = s::line_png(120, 32);
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, seen, failures, ok, img) = (
            stop.clone(),
            seen.clone(),
            failures.clone(),
            ok.clone(),
            img.clone(),
        );
        let mut grpc = s::recognizer(&server).await;
        let (http, base) = (http.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let result = if i % 2 == 0 {
                    grpc.recognize(pb::RecognizeRequest {
                        image: img.clone().into(),
                        request_id: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().model_version)
                    .map_err(|e| format!("grpc: {e:?}"))
                } else {
                    match http
                        .post(format!("{base}/v1/recognize"))
                        .body(img.clone())
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => Ok(r.json::<Value>().await.unwrap()
                            ["model_version"]
                            .as_str()
                            .unwrap()
                            .to_string()),
                        Ok(r) => Err(format!("http {}: {}", r.status(), r.text().await.unwrap())),
                        Err(e) => Err(format!("http: {e}")),
                    }
                };
                match result {
                    Ok(v) => {
                        seen.lock().unwrap().insert(v);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    // Waits on answers, not on time: a loaded machine may answer few requests per second.
    let answered_by = |v: String| {
        let seen = seen.clone();
        async move || seen.lock().unwrap().contains(&v)
    };
    wait_for(
        "answers from a",
        Duration::from_secs(60),
        answered_by(va.clone()),
    )
    .await;

    // Swap to b through the pointer.
    std::fs::write(&pointer, format!("{}\n", dir_b.display())).unwrap();
    wait_for("model b", Duration::from_secs(30), async || {
        s::model_info(&http, &base).await["version"] == vb.as_str()
    })
    .await;
    wait_for(
        "answers from b",
        Duration::from_secs(60),
        answered_by(vb.clone()),
    )
    .await;
    let before_c = ok.load(Ordering::SeqCst);

    // Point at the corrupt c: refused, b keeps serving, the failure is visible.
    std::fs::write(&pointer, format!("{}\n", dir_c.display())).unwrap();
    wait_for("refusal of c", Duration::from_secs(30), async || {
        s::model_info(&http, &base).await["last_reload"]["ok"] == false
    })
    .await;
    let after_refusal = ok.load(Ordering::SeqCst);
    wait_for(
        "answers after the refusal",
        Duration::from_secs(60),
        async || ok.load(Ordering::SeqCst) > after_refusal,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        BTreeSet::from([va.clone(), vb.clone()]),
        "versions answered"
    );
    assert!(
        ok.load(Ordering::SeqCst) > before_c,
        "requests kept succeeding after the refusal"
    );
    let m = s::model_info(&http, &base).await;
    assert_eq!(m["version"], vb.as_str());
    let err = m["last_reload"]["error"].as_str().unwrap();
    assert!(
        err.contains("sha256") || err.contains("model.safetensors"),
        "{err}"
    );
    assert!(m["last_reload"]["source"].as_str().unwrap().contains("/c"));
    let metrics = s::metrics(&http, &base).await;
    assert!(
        metrics.contains(r#"textrec_model_reloads_total{outcome="error"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"textrec_model_reloads_total{outcome="ok"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("textrec_model_last_reload_failed 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(r#"textrec_model_info{{version="{vb}"}} 1"#)),
        "{metrics}"
    );
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_shed_with_resource_exhausted_and_429_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 31);
    let mut a = s::args(&dir);
    a.max_queue = 3;
    a.max_batch = 1;
    let server = s::start(a).await;
    let base = s::http_base(&server);
    let http = reqwest::Client::new();
    let img = s::line_png(300, 32);
    let grpc = s::recognizer(&server).await;

    let mut tasks = Vec::new();
    for i in 0..48 {
        let (mut grpc, http, base, img) = (grpc.clone(), http.clone(), base.clone(), img.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                match grpc
                    .recognize(pb::RecognizeRequest {
                        image: img.into(),
                        request_id: String::new(),
                    })
                    .await
                {
                    Ok(_) => "ok".to_string(),
                    Err(e) if e.code() == Code::ResourceExhausted => "shed".to_string(),
                    Err(e) => format!("unexpected {e:?}"),
                }
            } else {
                let r = http
                    .post(format!("{base}/v1/recognize"))
                    .body(img)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => "ok".to_string(),
                    429 => "shed".to_string(),
                    other => format!("unexpected {other}"),
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let ok = outcomes.iter().filter(|o| *o == "ok").count();
    let shed = outcomes.iter().filter(|o| *o == "shed").count();
    assert_eq!(ok + shed, outcomes.len(), "{outcomes:?}");
    assert!(shed > 0 && ok > 0, "ok {ok}, shed {shed}");

    // Once the burst is over, requests are served again.
    let r = http
        .post(format!("{base}/v1/recognize"))
        .body(img)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = s::metrics(&http, &base).await;
    assert!(metrics.contains(r#"outcome="overloaded""#), "{metrics}");
    s::stop(server).await;
}

/// The real binary: starts, answers, reloads on SIGHUP, drains and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_reloads_on_sighup_and_shuts_down_gracefully_on_sigterm() {
    use tokio::io::AsyncBufReadExt;

    let tmp = tempfile::tempdir().unwrap();
    let (dir, va) = s::tiny_model(tmp.path(), "served", 41);
    let (other, vb) = s::tiny_model(tmp.path(), "next", 42);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_textrec-worker"))
        .args([
            "serve",
            "--model",
            dir.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(["--max-batch", "1", "--torch-threads", "1"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let http_addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(i) = line.find("http=") {
                return line[i + 5..].split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("the server exited before serving");
    })
    .await
    .expect("server announces its addresses");
    // Keep draining stderr so the child never blocks on a full pipe.
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            log2.lock().unwrap().push_str(&l);
            log2.lock().unwrap().push('\n');
        }
    });
    let base = format!("http://{http_addr}");
    let http = reqwest::Client::new();
    assert_eq!(s::model_info(&http, &base).await["version"], va.as_str());

    // Replace the folder's content (weights first, manifest last, as writers do), then SIGHUP.
    for f in ["model.safetensors", "manifest.json"] {
        std::fs::copy(other.join(f), dir.join(f)).unwrap();
    }
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for("SIGHUP reload", Duration::from_secs(30), async || {
        s::model_info(&http, &base).await["version"] == vb.as_str()
    })
    .await;

    // Requests in flight when SIGTERM arrives still get answers; then the process exits 0.
    let img = s::line_png(400, 32);
    let mut inflight = Vec::new();
    for _ in 0..6 {
        inflight.push(tokio::spawn(
            http.post(format!("{base}/v1/recognize"))
                .body(img.clone())
                .send(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    for r in inflight {
        let r = r.await.unwrap().expect("in-flight request answered");
        assert_eq!(r.status(), 200);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.lock().unwrap());
    assert!(
        log.lock().unwrap().contains("shut down"),
        "log:\n{}",
        log.lock().unwrap()
    );
}

/// With info logging off the server still waits for SIGTERM: the signal wait must not sit
/// inside a log macro, which evaluates nothing when its level is disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_serving_with_logging_at_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "quiet", 43);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let http = reqwest::Client::new();
    // A port found free can be taken again before the server binds it (by another test's
    // client connection); the server then exits with an error and is started on new ports.
    let mut child = 'found: {
        'attempts: for _attempt in 0..5 {
            let (grpc, http_port) = (free_port(), free_port());
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_textrec-worker"))
                .args(["serve", "--model", dir.to_str().unwrap()])
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(["--max-batch", "1", "--torch-threads", "1"])
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let url = format!("http://127.0.0.1:{http_port}/v1/model");
            for _ in 0..600 {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        !status.success(),
                        "the server exited on its own, successfully, before any signal"
                    );
                    continue 'attempts;
                }
                if let Ok(r) = http.get(&url).send().await {
                    if let Ok(v) = r.json::<Value>().await {
                        if v["version"] == version.as_str() {
                            break 'found child;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the server never answered");
        }
        panic!("no free ports after 5 attempts");
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "still serving");
    let pid = child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
