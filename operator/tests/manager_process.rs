//! `textrec-operator run` as a process, against the fake API server: with info logging off it
//! keeps running until SIGTERM, then exits 0. (The SIGTERM wait once sat inside an `info!`
//! macro, which evaluates nothing when its level is off, so the manager returned at once.)

mod support {
    pub mod fake_api;
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::fake_api::{serve_http, FakeState};

#[tokio::test]
async fn run_keeps_running_with_logging_at_warn_and_stops_cleanly_on_sigterm() {
    let state = Arc::new(Mutex::new(FakeState {
        watchable: true,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_http(state.clone(), listener));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]
users: [{{name: op, user: {{token: t}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: op, namespace: ml}}}}]
current-context: fake
"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_textrec-operator"))
        .args([
            "run",
            "--no-leader-election",
            "--no-ui",
            "--namespace",
            "ml",
        ])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Up and working, not winding down: alive, with its controllers' watches open (a
    // manager that was shutting down would have closed them).
    let open_watches = || {
        state
            .lock()
            .unwrap()
            .watches
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            panic!("the manager exited on its own with {status}: {err}");
        }
        if start.elapsed() > Duration::from_secs(2) && open_watches() >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} watches open after 30 s",
            open_watches()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits in time after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
