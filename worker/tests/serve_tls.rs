//! Transport security of `serve`: TLS on both ports (`--tls-cert`, `--tls-key`), mutual TLS
//! (`--client-ca`), bearer tokens (`--auth-token-file`), and `recognize --endpoint grpcs://`.
//! The certificates come from a CA made at test time (the openssl CLI).

mod serve_support;

use std::path::Path;
use std::time::Duration;

use serve_support as s;
use textrec_worker::serve::proto::textrec as pb;
use textrec_worker::serve::proto::textrec::recognizer_client::RecognizerClient;
use textrec_worker::serve::tls::{ServerTls, TlsFiles};
use textrec_worker::serve::{RunningServer, ServeArgs};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const TOKEN: &str = "t0ken-for-tests";

fn req(image: &[u8]) -> tonic::Request<pb::RecognizeRequest> {
    tonic::Request::new(pb::RecognizeRequest {
        image: image.to_vec().into(),
        request_id: "x".into(),
    })
}

fn with_token<T>(mut r: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Server arguments with TLS (and mTLS when `client_ca`) and the token file.
fn secure_args(model: &Path, dir: &Path, pki: &s::Pki, client_ca: bool) -> ServeArgs {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("\n  old-token  \n{TOKEN}\n")).unwrap();
    let mut a = s::args(model);
    a.tls_cert = Some(pki.server_cert.clone());
    a.tls_key = Some(pki.server_key.clone());
    a.client_ca = client_ca.then(|| pki.ca.clone());
    a.auth_token_file = Some(tokens);
    a
}

/// A TLS channel to the gRPC port trusting `pki`'s CA, with the client certificate if asked.
async fn tls_channel(
    server: &RunningServer,
    pki: &s::Pki,
    client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .domain_name("localhost");
    if client_cert {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&pki.client_cert).unwrap(),
            std::fs::read(&pki.client_key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// An HTTPS client trusting `pki`'s CA, with the client certificate if asked.
fn https_client(pki: &s::Pki, client_cert: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(30));
    if client_cert {
        let mut pem = std::fs::read(&pki.client_cert).unwrap();
        pem.extend(std::fs::read(&pki.client_key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_needs_the_bearer_token_but_health_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 1);
    let pki = s::pki(tmp.path(), "a");
    let server = s::start(secure_args(&dir, tmp.path(), &pki, false)).await;
    let channel = tls_channel(&server, &pki, false)
        .await
        .expect("a TLS handshake with the test CA");
    let mut c = RecognizerClient::new(channel.clone());
    let img = s::line_png(120, 32);

    let r = c
        .recognize(with_token(req(&img), TOKEN))
        .await
        .expect("the right token passes")
        .into_inner();
    assert_eq!(r.model_version, version);
    // Any line of the file is a token.
    c.recognize(with_token(req(&img), "old-token"))
        .await
        .expect("the file's other token passes");

    let wrong = c
        .recognize(with_token(req(&img), "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let none = c.recognize(req(&img)).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let other_scheme = {
        let mut r = req(&img);
        r.metadata_mut()
            .insert("authorization", format!("Basic {TOKEN}").parse().unwrap());
        c.recognize(r).await.unwrap_err()
    };
    assert_eq!(other_scheme.code(), Code::Unauthenticated);
    // Other services of the port are guarded too.
    let mut k = textrec_worker::serve::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel.clone());
    let e = k
        .server_live(textrec_worker::serve::proto::inference::ServerLiveRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Health is exempt: probes and load balancers carry no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a token")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Refusals are counted: one wrong token; no token twice and a Basic header once.
    let metrics = server.state.metrics.render();
    assert!(
        metrics.contains(r#"textrec_auth_refusals_total{protocol="grpc",reason="wrong"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"textrec_auth_refusals_total{protocol="grpc",reason="missing"} 3"#),
        "{metrics}"
    );

    // A plain-text client gets nowhere on the TLS port.
    let plain = Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let e = RecognizerClient::new(ch)
            .recognize(with_token(req(&img), TOKEN))
            .await
            .unwrap_err();
        assert_ne!(e.code(), Code::Ok);
    }
    // A client that does not trust the CA refuses the server.
    let other = s::pki(tmp.path(), "other");
    assert!(tls_channel(&server, &other, false).await.is_err());
    s::stop(server).await;
}

/// A gRPC client that finishes its TLS handshake and then sends nothing is closed after
/// `--header-read-timeout`, so it cannot hold one of the port's connection slots for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_silent_after_its_tls_handshake_is_closed() {
    use tokio::io::AsyncReadExt;

    let tmp = tempfile::tempdir().unwrap();
    let pki = s::pki(tmp.path(), "silent");
    let (model, _) = s::tiny_model(tmp.path(), "m", 7);
    let mut a = secure_args(&model, tmp.path(), &pki, false);
    a.header_read_timeout = Duration::from_secs(2);
    let server = s::start(a).await;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("the silent client is still connected after 10 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server spoke first: {read:?}"
    );
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_over_tls_needs_the_token_except_probes_metrics_and_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, version) = s::tiny_model(tmp.path(), "m", 1);
    let pki = s::pki(tmp.path(), "a");
    let server = s::start(secure_args(&dir, tmp.path(), &pki, false)).await;
    let http = https_client(&pki, false);
    let base = format!("https://{}", server.http_addr);
    let img = s::line_png(120, 32);

    let r = http
        .post(format!("{base}/v1/recognize"))
        .bearer_auth(TOKEN)
        .body(img.clone())
        .send()
        .await
        .expect("an HTTPS request");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["model_version"], version, "{body}");

    for token in [None, Some("nope")] {
        let mut rq = http.post(format!("{base}/v1/recognize")).body(img.clone());
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), 401, "token {token:?}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    let r = http.get(format!("{base}/v1/model")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    for path in ["/healthz", "/readyz", "/metrics", "/", "/demo.js"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} is exempt");
    }
    let metrics = s::metrics(&http, &base).await;
    assert!(
        metrics.contains(r#"textrec_auth_refusals_total{protocol="http",reason="missing"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"textrec_auth_refusals_total{protocol="http",reason="wrong"} 1"#),
        "{metrics}"
    );

    // Plain HTTP on the TLS port fails.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain
        .get(format!("http://{}/healthz", server.http_addr))
        .send()
        .await
        .is_err());
    s::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 1);
    let pki = s::pki(tmp.path(), "a");
    let server = s::start(secure_args(&dir, tmp.path(), &pki, true)).await;
    let img = s::line_png(120, 32);

    // gRPC: the handshake (or the first call) fails without a client certificate...
    let refused = match tls_channel(&server, &pki, false).await {
        Err(_) => true,
        Ok(ch) => RecognizerClient::new(ch)
            .recognize(with_token(req(&img), TOKEN))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // ... and with one signed by another CA.
    let other = s::pki(tmp.path(), "other");
    let foreign = s::Pki {
        ca: pki.ca.clone(),
        server_cert: other.server_cert.clone(),
        server_key: other.server_key.clone(),
        client_cert: other.client_cert.clone(),
        client_key: other.client_key.clone(),
    };
    let refused = match tls_channel(&server, &foreign, true).await {
        Err(_) => true,
        Ok(ch) => RecognizerClient::new(ch)
            .recognize(with_token(req(&img), TOKEN))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate of another CA was accepted");
    // With a certificate of the CA it works (the token is still needed).
    let ch = tls_channel(&server, &pki, true)
        .await
        .expect("mutual TLS handshake");
    let mut c = RecognizerClient::new(ch);
    c.recognize(with_token(req(&img), TOKEN))
        .await
        .expect("a client with a certificate of the CA is served");
    assert_eq!(
        c.recognize(req(&img)).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // HTTP: without a certificate only the probes answer (the kubelet's HTTPS probes).
    let base = format!("https://{}", server.http_addr);
    let anonymous = https_client(&pki, false);
    for path in ["/healthz", "/readyz"] {
        let r = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = anonymous
        .get(format!("{base}/v1/model"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = anonymous
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let with_cert = https_client(&pki, true);
    let r = with_cert
        .get(format!("{base}/v1/model"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A certificate of another CA fails the handshake.
    let foreign_http = https_client(&foreign, true);
    assert!(foreign_http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    s::stop(server).await;
}

#[test]
fn certificate_problems_are_configuration_errors_and_rotation_keeps_a_working_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let a = s::pki(tmp.path(), "a");
    let b = s::pki(tmp.path(), "b");
    let code = |files: &TlsFiles| {
        let e = files.load().err().expect("an error");
        (textrec_contract::exit::code_for(&e), format!("{e:#}"))
    };
    let (c, msg) = code(&TlsFiles {
        cert: a.server_cert.clone(),
        key: b.server_key.clone(),
        client_ca: None,
    });
    assert_eq!(c, textrec_contract::exit::CONFIG_ERROR);
    assert!(msg.contains("does not belong to the certificate"), "{msg}");
    let (c, msg) = code(&TlsFiles {
        cert: a.server_key.clone(),
        key: a.server_key.clone(),
        client_ca: None,
    });
    assert_eq!(c, textrec_contract::exit::CONFIG_ERROR);
    assert!(msg.contains("no PEM certificate"), "{msg}");
    let (c, msg) = code(&TlsFiles {
        cert: a.server_cert.clone(),
        key: tmp.path().join("missing.key"),
        client_ca: None,
    });
    assert_eq!(c, textrec_contract::exit::CONFIG_ERROR);
    assert!(
        msg.contains("--tls-key") && msg.contains("missing.key"),
        "{msg}"
    );

    // Rotation: the files in place change; a broken pair keeps the old configuration.
    let dir = tmp.path().join("live");
    std::fs::create_dir(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(&a.server_cert, &cert).unwrap();
    std::fs::copy(&a.server_key, &key).unwrap();
    let tls = ServerTls::load(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    })
    .unwrap();
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed");
    // A half-done rotation (new certificate, old key) is refused and the old pair stays.
    std::fs::copy(&b.server_cert, &cert).unwrap();
    assert!(tls.reload_if_changed().is_err());
    std::fs::copy(&b.server_key, &key).unwrap();
    assert!(tls.reload_if_changed().unwrap(), "the new pair is loaded");
}

/// The worker binary: a mismatched key exits with the configuration error code at start-up;
/// `recognize --endpoint grpcs://` speaks TLS with a private CA and a token file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_checks_its_files_and_recognize_speaks_grpcs() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = s::tiny_model(tmp.path(), "m", 1);
    let a = s::pki(tmp.path(), "a");
    let b = s::pki(tmp.path(), "b");
    let bin = env!("CARGO_BIN_EXE_textrec-worker");
    let out = std::process::Command::new(bin)
        .args(["serve", "--model", dir.to_str().unwrap()])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--tls-cert", a.server_cert.to_str().unwrap()])
        .args(["--tls-key", b.server_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(textrec_contract::exit::CONFIG_ERROR),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not belong to the certificate"));

    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let server = s::ServerProcess::spawn(
        &dir,
        &[
            "--tls-cert",
            a.server_cert.to_str().unwrap(),
            "--tls-key",
            a.server_key.to_str().unwrap(),
            "--client-ca",
            a.ca.to_str().unwrap(),
            "--auth-token-file",
            tokens.to_str().unwrap(),
        ],
    )
    .await;
    let png = tmp.path().join("line.png");
    std::fs::write(&png, s::line_png(120, 32)).unwrap();
    let endpoint = format!("grpcs://{}", server.grpc_addr);
    let recognize = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["recognize", "--endpoint", &endpoint])
            .args(["--ca-cert", a.ca.to_str().unwrap()])
            .args(extra)
            .arg(&png);
        async move { cmd.output().await.unwrap() }
    };
    let mtls = vec![
        "--client-cert".to_string(),
        a.client_cert.display().to_string(),
        "--client-key".to_string(),
        a.client_key.display().to_string(),
    ];
    let mut with_token = mtls.clone();
    with_token.extend(["--token-file".to_string(), tokens.display().to_string()]);
    let ok = recognize(with_token).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.starts_with(png.to_str().unwrap()), "{stdout}");
    let no_token = recognize(mtls).await;
    assert!(!no_token.status.success());
    let err = String::from_utf8_lossy(&no_token.stderr);
    assert!(err.contains("Unauthenticated"), "{err}");
    server.stop().await;
}
