//! Hostile inputs against the real `serve` binary at its default limits: every one is refused
//! with a specific status, the server keeps answering, and its peak resident memory stays
//! under 1 GiB. Before decoding was bounded, 32 such 16-megapixel PNGs in parallel took the
//! server from 126 MB to 4.2 GB.

mod serve_support;

use std::time::{Duration, Instant};

use serve_support as s;
use textrec_worker::serve::proto::textrec as pb;
use tonic::Code;

const MIB: u64 = 1024 * 1024;
/// The bound asked of the server under this suite.
const PEAK_RSS_LIMIT: u64 = 1024 * MIB;

fn req(image: &[u8], id: &str) -> pb::RecognizeRequest {
    pb::RecognizeRequest {
        image: image.to_vec().into(),
        request_id: id.into(),
    }
}

async fn post(http: &reqwest::Client, base: &str, body: Vec<u8>) -> (u16, String) {
    let r = http
        .post(format!("{base}/v1/recognize"))
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn item_error(item: &pb::RecognizeStreamItem) -> Option<(i32, &str)> {
    match &item.result {
        Some(pb::recognize_stream_item::Result::Error(e)) => Some((e.code, e.message.as_str())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_inputs_are_refused_and_memory_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 51);
    let server = s::ServerProcess::spawn(&dir, &[]).await;
    let base = server.http_base();
    let http = reqwest::Client::new();
    let grpc = server.recognizer().await;
    let line = s::line_png(200, 32);
    let (st, body) = post(&http, &base, line.clone()).await;
    assert_eq!(st, 200, "{body}");
    eprintln!(
        "server RSS after start and one request: {} MiB",
        server.memory("VmRSS") / MIB
    );

    // 32 valid 16-megapixel PNGs at once, over HTTP and gRPC: refused from their headers.
    let page = s::white_png(4000, 4000);
    eprintln!("16-megapixel PNG: {} KiB", page.len() / 1024);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (http, base, page, mut grpc) = (http.clone(), base.clone(), page.clone(), grpc.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let (st, body) = post(&http, &base, page).await;
                assert_eq!(st, 413, "{body}");
                assert!(body.contains("4000x4000 = 16000000 pixels"), "{body}");
            } else {
                let e = grpc.recognize(req(&page, "page")).await.unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
                assert!(e.message().contains("16000000 pixels"), "{e:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "32 concurrent 16-megapixel PNGs refused in {:?}",
        t.elapsed()
    );

    // A RecognizeBatch of many: each item refused on its own, the call answered.
    let mut c = grpc.clone();
    let batch = pb::RecognizeBatchRequest {
        images: (0..64).map(|i| req(&page, &format!("p{i}"))).collect(),
    };
    let out = c.recognize_batch(batch).await.unwrap().into_inner().results;
    assert_eq!(out.len(), 64);
    for item in &out {
        let (code, msg) = item_error(item).expect("an error item");
        assert_eq!(code, Code::InvalidArgument as i32, "{msg}");
        assert!(msg.contains("16000000 pixels"), "{msg}");
    }

    // Images at the size limit, but too many pixels for one call together: the whole call is
    // refused before any is decoded.
    let widest = s::rgba16_line_png(4096, 1024);
    let batch = pb::RecognizeBatchRequest {
        images: (0..24).map(|i| req(&widest, &format!("w{i}"))).collect(),
    };
    let e = c.recognize_batch(batch).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("--max-call-pixels"), "{e:?}");

    // A decompression bomb's header, a truncated PNG, random bytes, and absurd shapes.
    let (st, body) = post(&http, &base, s::bomb_png(100_000, 100_000)).await;
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("100000x100000"), "{body}");
    let mut cut = s::line_png(400, 40);
    cut.truncate(cut.len() * 2 / 3);
    let (st, body) = post(&http, &base, cut.clone()).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("truncated PNG"), "{body}");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..50_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let (st, body) = post(&http, &base, noise.clone()).await;
    assert_eq!(st, 400, "{body}");
    let (st, body) = post(&http, &base, s::bomb_png(16_000_000, 1)).await;
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("16000000x1"), "{body}");
    let (st, body) = post(&http, &base, s::bomb_png(400_000, 1)).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("wider than"), "{body}");
    let (st, body) = post(&http, &base, s::bomb_png(4, 1_000)).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("taller than"), "{body}");
    for (image, what) in [
        (s::bomb_png(100_000, 100_000), "bomb"),
        (cut, "truncated"),
        (noise, "noise"),
        (s::bomb_png(16_000_000, 1), "strip"),
    ] {
        let e = c.recognize(req(&image, what)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }

    // Accepted images in numbers: all answered, decoded within the pixel budget while the rest
    // wait. A debug build decodes a 4-megapixel line in seconds (the image crates' generic code
    // is compiled at this crate's opt-level), so the crowd is of smaller lines and only a pair
    // is at the size limit in the costliest layout to decode (16-bit RGBA).
    let gray_line = s::white_png(1024, 256);
    for (image, what) in [
        (&gray_line, "1024x256 8-bit gray"),
        (&widest, "4096x1024 16-bit RGBA"),
    ] {
        let t = Instant::now();
        let (st, body) = post(&http, &base, image.clone()).await;
        assert_eq!(st, 200, "{what}: {body}");
        eprintln!("one {what} PNG alone: {:?}", t.elapsed());
    }
    for (image, n, what) in [
        (&gray_line, 32, "1024x256 8-bit gray"),
        (&widest, 2, "4096x1024 16-bit RGBA"),
    ] {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (http, base, image) = (http.clone(), base.clone(), image.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = post(&http, &base, image).await;
                (r, t.elapsed())
            }));
        }
        let mut slowest = Duration::ZERO;
        for t in tasks {
            let ((st, body), took) = t.await.unwrap();
            assert_eq!(st, 200, "{what}: {body}");
            slowest = slowest.max(took);
        }
        eprintln!(
            "{n} concurrent {what} PNGs ({} KiB each) recognized in {:?} (slowest request \
             {slowest:?})",
            image.len() / 1024,
            t.elapsed()
        );
    }

    // The server still answers normally.
    let t = Instant::now();
    let r: serde_json::Value = http
        .post(format!("{base}/v1/recognize"))
        .body(line)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!("a normal request afterwards: {:?}", t.elapsed());
    assert_eq!(r["model_version"], version.as_str());

    let peak = server.memory("VmHWM");
    eprintln!(
        "server peak RSS (VmHWM) over the hostile suite: {} MiB (limit {} MiB)",
        peak / MIB,
        PEAK_RSS_LIMIT / MIB
    );
    assert!(
        peak <= PEAK_RSS_LIMIT,
        "peak RSS {} MiB is over {} MiB",
        peak / MIB,
        PEAK_RSS_LIMIT / MIB
    );
    server.stop().await;
}
