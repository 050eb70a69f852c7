//! gRPC API tests: a real tonic client against a real `serve` on 127.0.0.1, with a tiny
//! random-weight model: textrec.v1.Recognizer, KServe V2, health, reflection and errors.

mod serve_support;

use std::time::Duration;

use futures::StreamExt;
use serve_support as s;
use textrec_worker::serve::proto::inference as kpb;
use textrec_worker::serve::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use textrec_worker::serve::proto::textrec as pb;
use tonic::Code;

fn req(image: &[u8], id: &str) -> pb::RecognizeRequest {
    pb::RecognizeRequest {
        image: image.to_vec().into(),
        request_id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recognizer_single_batch_stream_and_model_info() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 1);
    let server = s::start(s::args(&dir)).await;
    let mut c = s::recognizer(&server).await;
    let img = s::line_png(120, 32);

    let r = c.recognize(req(&img, "one")).await.unwrap().into_inner();
    assert_eq!(r.model_version, version);
    assert_eq!(r.request_id, "one");
    assert!((0.0..=1.0).contains(&r.confidence), "{}", r.confidence);
    assert_eq!(r.char_confidences.len(), r.text.chars().count());
    assert!(
        r.text
            .chars()
            .all(|ch| textrec_contract::charset::IAM_CHARSET.contains(ch)),
        "{:?}",
        r.text
    );
    let t = r.timing.unwrap();
    assert!(
        t.total_ms >= t.inference_ms && t.inference_ms > 0.0,
        "{t:?}"
    );
    assert!(r.batch_size >= 1);
    // Same image, same answer: the forward pass is deterministic.
    let again = c.recognize(req(&img, "two")).await.unwrap().into_inner();
    assert_eq!(again.text, r.text);

    let batch = pb::RecognizeBatchRequest {
        images: vec![req(&img, "a"), req(b"not an image", "b"), req(&img, "c")],
    };
    let out = c.recognize_batch(batch).await.unwrap().into_inner().results;
    assert_eq!(out.len(), 3);
    let ids: Vec<_> = out.iter().map(|i| i.request_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    match &out[0].result {
        Some(pb::recognize_stream_item::Result::Response(x)) => assert_eq!(x.text, r.text),
        other => panic!("{other:?}"),
    }
    match &out[1].result {
        Some(pb::recognize_stream_item::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains("unknown format"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    let items: Vec<_> = (0..5).map(|i| req(&img, &format!("s{i}"))).collect();
    let stream = c
        .recognize_stream(futures::stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<pb::RecognizeStreamItem> = stream.map(|x| x.unwrap()).collect().await;
    let ids: Vec<_> = got.iter().map(|i| i.request_id.clone()).collect();
    assert_eq!(ids, ["s0", "s1", "s2", "s3", "s4"]);
    assert!(got.iter().all(|i| matches!(&i.result, Some(pb::recognize_stream_item::Result::Response(x)) if x.text == r.text)));

    let info = c
        .get_model(pb::GetModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, version);
    assert!(info.manifest_json.contains("textrec.model/v1"));
    assert!(info
        .source
        .contains(dir.file_name().unwrap().to_str().unwrap()));

    // The `recognize --endpoint` client.
    let file = tmp.path().join("line.png");
    std::fs::write(&file, &img).unwrap();
    let endpoint = format!("grpc://{}", server.grpc_addr);
    let remote =
        textrec_worker::serve::client::recognize_files(&endpoint, &[file.clone(), file.clone()])
            .await
            .unwrap();
    assert_eq!(remote.len(), 2);
    assert_eq!(remote[0].text, r.text);
    assert_eq!(remote[1].model_version, version);
    assert_eq!(remote[0].path, file);
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_rpcs_and_model_infer_with_bytes_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 2);
    let server = s::start(s::args(&dir)).await;
    let mut k = GrpcInferenceServiceClient::new(s::channel(&server).await);
    let mut c = s::recognizer(&server).await;
    let img = s::line_png(96, 32);
    let expected = c.recognize(req(&img, "")).await.unwrap().into_inner().text;

    assert!(
        k.server_live(kpb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        k.server_ready(kpb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, v: &str| kpb::ModelReadyRequest {
        name: name.into(),
        version: v.into(),
    };
    assert!(
        k.model_ready(ready("textrec", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        k.model_ready(ready("textrec", &version))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !k.model_ready(ready("textrec", "0000"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !k.model_ready(ready("other", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = k
        .server_metadata(kpb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "textrec");
    let mm = k
        .model_metadata(kpb::ModelMetadataRequest {
            name: "textrec".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mm.versions, vec![version.clone()]);
    assert_eq!(
        (mm.inputs[0].name.as_str(), mm.inputs[0].datatype.as_str()),
        ("IMAGE", "BYTES")
    );
    let outs: Vec<_> = mm
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype.as_str()))
        .collect();
    assert_eq!(outs, [("TEXT", "BYTES"), ("CONFIDENCE", "FP32")]);

    // Typed contents, as the KServe Python client sends them.
    let input = |contents, shape: Vec<i64>| kpb::model_infer_request::InferInputTensor {
        name: "IMAGE".into(),
        datatype: "BYTES".into(),
        shape,
        parameters: Default::default(),
        contents,
    };
    let typed = kpb::ModelInferRequest {
        model_name: "textrec".into(),
        id: "req-1".into(),
        inputs: vec![input(
            Some(kpb::InferTensorContents {
                bytes_contents: vec![img.clone(), img.clone()],
                ..Default::default()
            }),
            vec![2],
        )],
        ..Default::default()
    };
    let resp = k.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(
        (
            resp.id.as_str(),
            resp.model_name.as_str(),
            resp.model_version.as_str()
        ),
        ("req-1", "textrec", version.as_str())
    );
    let text = resp.outputs.iter().find(|o| o.name == "TEXT").unwrap();
    assert_eq!(text.datatype, "BYTES");
    assert_eq!(text.shape, vec![2]);
    let texts = &text.contents.as_ref().unwrap().bytes_contents;
    assert_eq!(texts, &vec![expected.as_bytes().to_vec(); 2]);
    let conf = resp
        .outputs
        .iter()
        .find(|o| o.name == "CONFIDENCE")
        .unwrap();
    assert_eq!(conf.contents.as_ref().unwrap().fp32_contents.len(), 2);

    // Raw contents, as tritonclient.grpc sends them: raw in, raw out; only the asked-for output.
    let raw = textrec_worker::serve::kserve::join_raw_bytes([img.as_slice()]);
    let raw_req = kpb::ModelInferRequest {
        model_name: "textrec".into(),
        inputs: vec![input(None, vec![1, 1])],
        outputs: vec![kpb::model_infer_request::InferRequestedOutputTensor {
            name: "TEXT".into(),
            parameters: Default::default(),
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    let resp = k.model_infer(raw_req).await.unwrap().into_inner();
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(resp.outputs[0].shape, vec![1, 1]);
    let decoded =
        textrec_worker::serve::kserve::split_raw_bytes(&resp.raw_output_contents[0]).unwrap();
    assert_eq!(decoded, vec![expected.as_bytes().to_vec()]);

    // Errors.
    let mut wrong_type = kpb::ModelInferRequest {
        model_name: "textrec".into(),
        ..Default::default()
    };
    wrong_type
        .inputs
        .push(kpb::model_infer_request::InferInputTensor {
            name: "IMAGE".into(),
            datatype: "FP32".into(),
            shape: vec![1],
            parameters: Default::default(),
            contents: Some(kpb::InferTensorContents {
                fp32_contents: vec![1.0],
                ..Default::default()
            }),
        });
    let e = k.model_infer(wrong_type).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("BYTES"), "{}", e.message());
    let unknown = kpb::ModelInferRequest {
        model_name: "resnet".into(),
        ..Default::default()
    };
    assert_eq!(
        k.model_infer(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let bad_image = kpb::ModelInferRequest {
        model_name: "textrec".into(),
        inputs: vec![input(
            Some(kpb::InferTensorContents {
                bytes_contents: vec![b"garbage".to_vec()],
                ..Default::default()
            }),
            vec![1],
        )],
        ..Default::default()
    };
    let e = k.model_infer(bad_image).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_list_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 3);
    let server = s::start(s::args(&dir)).await;
    let ch = s::channel(&server).await;
    let mut h = HealthClient::new(ch.clone());
    for service in [
        "",
        "textrec.v1.Recognizer",
        "inference.GRPCInferenceService",
    ] {
        let st = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            st.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let e = h
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut r = ServerReflectionClient::new(ch);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(futures::stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "textrec.v1.Recognizer",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // v1alpha too, for older clients.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(s::channel(&server).await);
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = r
            .server_reflection_info(futures::stream::iter(vec![ask]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("{msg:?}")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        for want in [
            "textrec.v1.Recognizer",
            "inference.GRPCInferenceService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.contains(&want),
                "{want} missing from v1alpha {names:?}"
            );
        }
    }
    // The descriptors are there too, so grpcurl can build requests.
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "textrec.v1.Recognizer".into(),
        )),
    };
    let mut resp = r
        .server_reflection_info(futures::stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    assert!(
        matches!(
            msg.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{msg:?}"
    );
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_are_specific() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 4);
    let mut a = s::args(&dir);
    a.max_request_bytes = 20_000;
    a.max_pixels = 200 * 100;
    a.max_batch = 1;
    let server = s::start(a).await;
    let mut c = s::recognizer(&server).await;

    let e = c.recognize(req(b"GIF89a nonsense", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("cannot decode image"),
        "{}",
        e.message()
    );

    let e = c
        .recognize(req(&s::line_png(400, 100), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("400x100 = 40000 pixels"),
        "{}",
        e.message()
    );

    let e = c.recognize(req(&vec![7u8; 30_000], "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("30000 bytes") && e.message().contains("--max-request-bytes"),
        "{}",
        e.message()
    );

    // A PNG whose header promises a huge image (a decompression bomb) is refused before decoding.
    let e = c
        .recognize(req(&s::bomb_png(100_000, 100_000), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("100000x100000"), "{}", e.message());

    // Deadline: a short grpc-timeout behind a queue of work answers DEADLINE_EXCEEDED.
    let img = s::line_png(180, 32);
    let mut busy = Vec::new();
    for _ in 0..12 {
        let mut c = c.clone();
        let img = img.clone();
        busy.push(tokio::spawn(
            async move { c.recognize(req(&img, "")).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut late = tonic::Request::new(req(&img, "late"));
    late.set_timeout(Duration::from_millis(5));
    let e = c.recognize(late).await.unwrap_err();
    // Whichever fires first: the batcher refusing queued work past its deadline
    // (DEADLINE_EXCEEDED), or tonic's server-side `grpc-timeout` guard, which answers
    // CANCELLED "Timeout expired". Either way the server, not the client, ended it.
    let by_server = e.code() == Code::DeadlineExceeded
        || (e.code() == Code::Cancelled && e.message().contains("Timeout expired"));
    assert!(by_server, "{e:?}");
    for b in busy {
        b.await.unwrap().unwrap();
    }
    s::stop(server).await;
}

/// A message that has begun to arrive holds its declared length of the body budget the HTTP
/// port uses too, until its last byte: a message that does not fit beside it is refused at once
/// with RESOURCE_EXHAUSTED naming the setting, and the room comes back when the holder leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_share_the_body_budget_while_they_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 5);
    let mut a = s::args(&dir);
    a.max_body_bytes_in_flight = 64 * 1024;
    let server = s::start(a).await;
    let mut c = s::recognizer(&server).await;
    let img = s::line_png(120, 32);
    c.recognize(req(&img, "before")).await.unwrap();

    // A raw HTTP/2 client sends a message header declaring 64 KiB and three bytes of it, then
    // stops sending.
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (h2c, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut h2c = h2c.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/textrec.v1.Recognizer/Recognize",
            server.grpc_addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut holder) = h2c.send_request(request, false).unwrap();
    let mut start = vec![0u8];
    start.extend_from_slice(&(64u32 * 1024).to_be_bytes());
    start.extend_from_slice(b"abc");
    holder.send_data(start.into(), false).unwrap();

    // Until the server has seen that header, a small request may still get through; on a
    // loaded 2-core machine (the whole suite running) that can take seconds.
    let mut refused = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match c.recognize(req(&img, "beside")).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a message beside the held budget was refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-body-bytes-in-flight"),
        "{}",
        e.message()
    );
    let http = reqwest::Client::new();
    let metrics = s::metrics(&http, &s::http_base(&server)).await;
    assert!(
        metrics.contains(r#"textrec_requests_total{api="grpc_upload",outcome="overloaded"} 1"#),
        "{metrics}"
    );

    // The holder goes away (its stream is reset); the budget comes back.
    drop((holder, answer, h2c));
    let mut ok = false;
    for _ in 0..50 {
        if c.recognize(req(&img, "after")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the body budget was not released");
    s::stop(server).await;
}

/// The gRPC port holds at most `--max-connections` connections: while silent clients hold
/// both slots, a caller is not served; the silent ones are closed after
/// `--header-read-timeout`, and then the caller is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_capped_and_silent_ones_closed() {
    use tokio::io::AsyncReadExt;

    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 6);
    let mut a = s::args(&dir);
    a.max_connections = 2;
    a.header_read_timeout = Duration::from_secs(2);
    let server = s::start(a).await;
    let img = s::line_png(120, 32);

    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            tokio::net::TcpStream::connect(server.grpc_addr)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = tokio::time::timeout(Duration::from_millis(800), async {
        s::recognizer(&server)
            .await
            .recognize(req(&img, "third"))
            .await
    })
    .await;
    assert!(served.is_err(), "a third connection was served: {served:?}");

    // The silent clients are closed by the server.
    for (i, mut c) in silent.into_iter().enumerate() {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("silent connection {i} is still open"));
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let mut c = s::recognizer(&server).await;
    c.recognize(req(&img, "after")).await.unwrap();
    s::stop(server).await;
}

/// `--grpc-max-connection-age`: an idle connection is closed once it is that old; a client
/// with a call in flight keeps its connection until the call is done, and a client whose
/// connection was retired reconnects without failing a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_retired_at_their_age_without_failing_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 6);
    let mut a = s::args(&dir);
    a.grpc_max_connection_age = Duration::from_secs(1);
    a.grpc_keepalive = Duration::ZERO;
    let server = s::start(a).await;
    let img = s::line_png(120, 32);

    // An HTTP/2 client that opens no stream: its connection ends when the server retires it.
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (_idle, connection) = h2::client::handshake(tcp).await.unwrap();
    let idle = tokio::spawn(connection);

    let mut c = s::recognizer(&server).await;
    c.recognize(req(&img, "before")).await.unwrap();
    // A stream that outlives the age: every answer comes.
    let answers: Vec<_> = c
        .recognize_stream(spaced(img.clone(), 4, Duration::from_millis(500)))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(answers.len(), 4);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");

    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("the idle connection is still open past its age")
        .unwrap()
        .expect("the server closed the idle connection without GOAWAY");

    // The same client, its connection retired meanwhile: the call succeeds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.recognize(req(&img, "after")).await.unwrap();
    s::stop(server).await;
}

/// `--grpc-keepalive`: a client that holds a connection and answers none of the server's PINGs
/// is closed; one that answers keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_that_answer_no_ping_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 6);
    let mut a = s::args(&dir);
    a.grpc_max_connection_age = Duration::ZERO;
    a.grpc_keepalive = Duration::from_millis(500);
    let server = s::start(a).await;
    let img = s::line_png(120, 32);

    // The HTTP/2 preface and an empty SETTINGS frame, then only listening.
    let mut mute = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut c = s::recognizer(&server).await;
    c.recognize(req(&img, "before")).await.unwrap();

    let frames = tokio::time::timeout(Duration::from_secs(10), async {
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match mute.read(&mut buf).await {
                Ok(0) | Err(_) => return frames,
                Ok(n) => frames.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("a client that answers no PING is still connected");
    assert!(
        frame_types(&frames).contains(&0x6),
        "the server sent no PING"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    c.recognize(req(&img, "after")).await.unwrap();
    s::stop(server).await;
}

/// The frame types in the server-to-client bytes of an HTTP/2 connection.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// A stream of `n` requests, one every `gap`, the first at once.
fn spaced(
    img: Vec<u8>,
    n: usize,
    gap: Duration,
) -> impl futures::Stream<Item = pb::RecognizeRequest> {
    futures::stream::iter(0..n).then(move |i| {
        let img = img.clone();
        async move {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            req(&img, &format!("s{i}"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_each_get_the_request_timeout_and_the_stream_its_grpc_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 5);
    let mut a = s::args(&dir);
    // A short --request-timeout so that a stream outlives it quickly.
    a.request_timeout = Duration::from_secs(2);
    let server = s::start(a).await;
    let mut c = s::recognizer(&server).await;
    let img = s::line_png(120, 32);
    c.recognize(req(&img, "warm-up")).await.unwrap();

    // Seven items half a second apart: the last arrives 3 s after the stream opened, past the
    // request timeout. With and without a long grpc-timeout, every item is answered.
    for timeout in [Some(Duration::from_secs(120)), None] {
        let mut request = tonic::Request::new(spaced(img.clone(), 7, Duration::from_millis(500)));
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let got: Vec<pb::RecognizeStreamItem> = c
            .recognize_stream(request)
            .await
            .unwrap()
            .into_inner()
            .map(|x| x.unwrap())
            .collect()
            .await;
        assert_eq!(got.len(), 7, "grpc-timeout {timeout:?}");
        for item in &got {
            assert!(
                matches!(
                    &item.result,
                    Some(pb::recognize_stream_item::Result::Response(_))
                ),
                "grpc-timeout {timeout:?}: {item:?}"
            );
        }
    }

    // The caller's grpc-timeout bounds the whole stream: once it has passed, the stream ends
    // with DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(spaced(img.clone(), 20, Duration::from_millis(500)));
    request.set_timeout(Duration::from_secs(3));
    let mut stream = c.recognize_stream(request).await.unwrap().into_inner();
    let mut answered = 0;
    let end = loop {
        match stream.next().await {
            Some(Ok(_)) => answered += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {answered} items"),
        }
    };
    assert!(answered < 20, "{answered}");
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    s::stop(server).await;
}
