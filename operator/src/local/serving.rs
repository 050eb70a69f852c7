//! ModelDeployments as local `textrec-worker serve` processes.
//!
//! Each ModelDeployment gets one server watching a model pointer file, the local copy of the
//! cluster's HotReload ConfigMap (see [`crate::serving`]): the runner rewrites the pointer
//! atomically and sends SIGHUP; the server loads and verifies the new model and swaps it in
//! without dropping a request, and keeps the old one if the new one fails. Both rollout
//! strategies behave this way locally: with one process on fixed ports there is nothing to roll.
//!
//! Readiness and the model actually in service come from the server's `GET /v1/model`, and are
//! fed to [`crate::deployment_plan::plan_status`] as a synthetic Deployment, so the
//! phase (`Progressing` until the new model serves, then `Available`) is the cluster's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{json, Value};

use crate::crd::{Flagging, ModelDeployment, ModelDeploymentStatus, ServingPorts};
use crate::local::process::{self, SpawnError};
use crate::local::state::{write_atomic, DeploymentRecord, LocalPaths, ServerRecord};
use crate::serving::{POINTER_SHA_KEY, REVISION_ANNOTATION};

/// Which ports a local server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PortMode {
    /// `spec.ports` of the ModelDeployment (50051 and 8080 by default).
    Spec,
    /// Free ports picked at first start (kept across restarts while free).
    Auto,
}

/// How servers are started.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The worker binary.
    pub worker: PathBuf,
    /// Address the servers listen on.
    pub bind: IpAddr,
    /// Port choice.
    pub ports: PortMode,
    /// Local files.
    pub paths: LocalPaths,
    /// The storage root URL (flags go under it unless `spec.flagging.storage` says otherwise).
    pub storage_root: String,
}

struct Proc {
    child: tokio::process::Child,
    pointer: String,
}

/// The running servers, by ModelDeployment name.
#[derive(Default)]
pub struct Servers {
    procs: BTreeMap<String, Proc>,
    not_before: BTreeMap<String, Instant>,
    /// Deployments whose server cannot start until something changes (the worker binary is
    /// missing or not executable, ...), with the model URL it was asked to serve: a new model
    /// tries again.
    given_up: BTreeMap<String, String>,
}

/// What happened to a server during a tick, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Started (gRPC and HTTP addresses).
    Started(String, String),
    /// Its process ended; it is restarted after a pause.
    Exited(String),
    /// Told to load another model.
    Repointed(String),
    /// Could not start.
    Failed(String),
}

fn free_port(bind: IpAddr) -> Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(bind, 0))?
        .local_addr()?
        .port())
}

fn port_free(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| TcpListener::bind(a).is_ok())
}

/// The addresses a server of `ports` listens on.
fn addresses(
    settings: &ServeSettings,
    ports: ServingPorts,
    previous: Option<&ServerRecord>,
) -> Result<(String, String)> {
    if let Some(p) = previous {
        if port_free(&p.grpc) && port_free(&p.http) {
            return Ok((p.grpc.clone(), p.http.clone()));
        }
    }
    let addr = |port: u16| SocketAddr::new(settings.bind, port).to_string();
    let (g, h) = match settings.ports {
        PortMode::Spec => (ports.grpc as u16, ports.http as u16),
        PortMode::Auto => (free_port(settings.bind)?, free_port(settings.bind)?),
    };
    let (g, h) = (addr(g), addr(h));
    for a in [&g, &h] {
        anyhow::ensure!(
            port_free(a),
            "{a} is in use: change spec.ports or pass `--ports auto` to pick free ports"
        );
    }
    Ok((g, h))
}

impl Servers {
    /// Make `rec`'s server serve `status.model`: start it when missing (after a pause if it
    /// died), or point it at a new model.
    pub fn ensure(
        &mut self,
        name: &str,
        rec: &mut DeploymentRecord,
        settings: &ServeSettings,
    ) -> Vec<ServerEvent> {
        let mut events = Vec::new();
        let Some(model) = rec.deployment.status.as_ref().and_then(|s| s.model.clone()) else {
            return events;
        };
        // Reap a dead server.
        if let Some(p) = self.procs.get_mut(name) {
            if let Ok(Some(status)) = p.child.try_wait() {
                self.procs.remove(name);
                let server = rec.server.get_or_insert_with(|| ServerRecord {
                    pid: None,
                    grpc: String::new(),
                    http: String::new(),
                    serving: None,
                    restarts: 0,
                });
                server.pid = None;
                server.serving = None;
                server.restarts += 1;
                let pause = Duration::from_secs(1 << server.restarts.min(5));
                self.not_before.insert(name.into(), Instant::now() + pause);
                events.push(ServerEvent::Exited(format!(
                    "{status}; restarting in {} s (log: {})",
                    pause.as_secs(),
                    settings.paths.log(&format!("serve-{name}")).display()
                )));
            }
        }
        let pointer = settings.paths.pointer(name);
        match self.procs.get_mut(name) {
            Some(p) if p.pointer != model.url => {
                let write = write_atomic(&pointer, model.url.as_bytes()).and_then(|_| {
                    write_atomic(
                        &pointer.with_file_name(POINTER_SHA_KEY),
                        model.sha256.as_bytes(),
                    )
                });
                match write {
                    Ok(()) => {
                        p.pointer = model.url.clone();
                        if let Some(pid) = p.child.id() {
                            // The server also polls the pointer; SIGHUP makes the switch immediate.
                            process::signal(pid, process::SIGHUP);
                        }
                        events.push(ServerEvent::Repointed(model.url.clone()));
                    }
                    Err(e) => events.push(ServerEvent::Failed(format!("{e:#}"))),
                }
            }
            Some(_) => {}
            None => {
                if self
                    .not_before
                    .get(name)
                    .is_some_and(|t| Instant::now() < *t)
                    || self.given_up.get(name) == Some(&model.url)
                {
                    return events;
                }
                self.given_up.remove(name);
                match self.start(name, rec, settings, &model.url, &model.sha256, &pointer) {
                    Ok(e) => events.push(e),
                    Err(e)
                        if e.downcast_ref::<SpawnError>()
                            .is_some_and(SpawnError::is_permanent) =>
                    {
                        self.given_up.insert(name.into(), model.url.clone());
                        events.push(ServerEvent::Failed(format!(
                            "{e:#}; retrying cannot help: fix it and restart `local run` \
                             (a new model also tries again)"
                        )));
                    }
                    Err(e) => {
                        self.not_before
                            .insert(name.into(), Instant::now() + Duration::from_secs(10));
                        events.push(ServerEvent::Failed(format!("{e:#}")));
                    }
                }
            }
        }
        events
    }

    fn start(
        &mut self,
        name: &str,
        rec: &mut DeploymentRecord,
        settings: &ServeSettings,
        url: &str,
        sha: &str,
        pointer: &std::path::Path,
    ) -> Result<ServerEvent> {
        let (grpc, http) = addresses(settings, rec.deployment.spec.ports, rec.server.as_ref())?;
        write_atomic(pointer, url.as_bytes())?;
        write_atomic(&pointer.with_file_name(POINTER_SHA_KEY), sha.as_bytes())?;
        let args = serve_args(
            &rec.deployment,
            &settings.storage_root,
            pointer,
            &grpc,
            &http,
        );
        let child = process::spawn(
            &settings.worker,
            &args,
            &[],
            &settings.paths.log(&format!("serve-{name}")),
        )?;
        let restarts = rec.server.as_ref().map_or(0, |s| s.restarts);
        rec.server = Some(ServerRecord {
            pid: child.id(),
            grpc: grpc.clone(),
            http: http.clone(),
            serving: None,
            restarts,
        });
        self.procs.insert(
            name.into(),
            Proc {
                child,
                pointer: url.into(),
            },
        );
        Ok(ServerEvent::Started(grpc, http))
    }

    /// Whether a server process is running for `name`.
    pub fn running(&self, name: &str) -> bool {
        self.procs.contains_key(name)
    }

    /// Stop every server (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop_all(&mut self, grace: Duration) {
        for p in self.procs.values() {
            if let Some(pid) = p.child.id() {
                process::signal(pid, process::SIGTERM);
            }
        }
        for (_, mut p) in std::mem::take(&mut self.procs) {
            if tokio::time::timeout(grace, p.child.wait()).await.is_err() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
        }
    }
}

/// What a server says about itself: (ready, model version in service).
pub async fn probe(http: &str) -> Option<(bool, Option<String>)> {
    let v = http_get_json(http, "/v1/model", Duration::from_millis(800))
        .await
        .ok()?;
    Some((
        v.get("ready").and_then(Value::as_bool).unwrap_or(false),
        v.get("version").and_then(Value::as_str).map(str::to_string),
    ))
}

/// `GET path` on `addr` over plain HTTP and parse the JSON body.
pub async fn http_get_json(addr: &str, path: &str, timeout: Duration) -> Result<Value> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = match CLIENT.get() {
        Some(c) => c,
        None => {
            let c = reqwest::Client::builder()
                // The servers are local: an `HTTP_PROXY` of the environment must not reroute them.
                .no_proxy()
                // A server restarted on the same port would leave pooled connections dead.
                .pool_max_idle_per_host(0)
                .build()
                .context("cannot build an HTTP client")?;
            CLIENT.get_or_init(|| c)
        }
    };
    let resp = client
        .get(format!("http://{addr}{path}"))
        .timeout(timeout)
        .send()
        .await?
        .error_for_status()?;
    resp.json().await.context("the response is not JSON")
}

/// The Deployment a cluster would show for a local server: ready when it answers, up to date
/// (annotated with the revision) when the model it serves is the newest revision with that
/// model.
pub fn synth_deployment(
    name: &str,
    status: &ModelDeploymentStatus,
    probe: Option<(bool, Option<String>)>,
) -> Deployment {
    let (ready, version) = probe.unwrap_or((false, None));
    let revision = version.as_ref().and_then(|v| {
        status
            .history
            .iter()
            .filter(|r| &r.model.sha256 == v)
            .map(|r| r.revision)
            .max()
    });
    let current = revision.is_some() && revision == status.current_revision;
    let mut annotations = serde_json::Map::new();
    if let Some(r) = revision {
        annotations.insert(REVISION_ANNOTATION.into(), json!(r.to_string()));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "generation": 1, "annotations": annotations},
        "spec": {"selector": {}, "template": {}},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": i32::from(ready),
            "updatedReplicas": i32::from(ready && current),
        },
    }))
    .expect("synthetic Deployment is well-formed")
}

/// Where a local server stores flags: `spec.flagging.storage`, else the storage root +
/// `/flags/<namespace>/<name>/`; `None` when flagging is off.
pub fn flags_url(md: &ModelDeployment, storage_root: &str) -> Option<String> {
    let f = &md.spec.flagging;
    if !f.enabled {
        return None;
    }
    Some(f.storage.clone().unwrap_or_else(|| {
        Flagging::folder_under(
            storage_root,
            md.metadata.namespace.as_deref().unwrap_or("default"),
            md.metadata.name.as_deref().unwrap_or_default(),
        )
    }))
}

/// The `textrec-worker serve` arguments of `md`'s local server: its own addresses and pointer,
/// then what the spec asks for, as in the cluster.
fn serve_args(
    md: &ModelDeployment,
    storage_root: &str,
    pointer: &std::path::Path,
    grpc: &str,
    http: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--model-pointer".into(),
        pointer.display().to_string(),
        "--reload-interval".into(),
        "1s".into(),
        "--grpc-addr".into(),
        grpc.into(),
        "--http-addr".into(),
        http.into(),
    ];
    let flags = flags_url(md, storage_root);
    args.extend(crate::serving::spec_serve_args(&md.spec, flags.as_deref()));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeployedModel, Revision};
    use crate::local::now;

    fn status() -> ModelDeploymentStatus {
        let rev = |n: i64, sha: &str| Revision {
            revision: n,
            model: DeployedModel {
                url: format!("file:///m/{sha}"),
                sha256: sha.into(),
                metric: None,
                metric_name: None,
                training_run: None,
            },
            deployed_at: now(),
            reason: "x".into(),
        };
        ModelDeploymentStatus {
            current_revision: Some(3),
            history: vec![rev(1, "a"), rev(2, "b"), rev(3, "a")],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_server_that_cannot_start_is_not_retried_until_the_model_changes() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ServeSettings {
            worker: dir.path().join("no-such-worker"),
            bind: IpAddr::from([127, 0, 0, 1]),
            ports: PortMode::Auto,
            paths: LocalPaths {
                dir: dir.path().join("local"),
            },
            storage_root: "file:///data".into(),
        };
        let mut deployment: ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m"}, "spec": {"model": {"url": "file:///m/a"}}
        }))
        .unwrap();
        let mut st = status();
        st.model = Some(st.history[0].model.clone());
        deployment.status = Some(st);
        let mut rec = DeploymentRecord {
            deployment,
            server: None,
        };
        let mut servers = Servers::default();
        let events = servers.ensure("m", &mut rec, &settings);
        assert!(
            matches!(&events[..], [ServerEvent::Failed(why)] if why.contains("ENOENT") && why.contains("retrying cannot help")),
            "{events:?}"
        );
        assert!(servers.ensure("m", &mut rec, &settings).is_empty());
        let st = rec.deployment.status.as_mut().unwrap();
        st.model = Some(st.history[1].model.clone());
        assert_eq!(servers.ensure("m", &mut rec, &settings).len(), 1);
    }

    #[test]
    fn the_synthetic_deployment_is_current_only_with_the_newest_model() {
        let d = synth_deployment("m", &status(), Some((true, Some("a".into()))));
        let st = d.status.unwrap();
        assert_eq!((st.ready_replicas, st.updated_replicas), (Some(1), Some(1)));
        assert_eq!(
            d.metadata.annotations.unwrap()[REVISION_ANNOTATION],
            "3".to_string()
        );
        let d = synth_deployment("m", &status(), Some((true, Some("b".into()))));
        assert_eq!(d.status.unwrap().updated_replicas, Some(0));
        let d = synth_deployment("m", &status(), None);
        assert_eq!(d.status.unwrap().ready_replicas, Some(0));
    }

    /// Answer one request on a fresh port with `response`; returns the address.
    async fn serve_once(response: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(response).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn chunked_bodies_are_joined() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n").await;
        let v = http_get_json(&addr, "/", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(v, json!({"a": 1}));
    }

    #[tokio::test]
    async fn http_get_reads_json() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\r\n{\"ready\":true,\"version\":\"v\"}").await;
        assert_eq!(probe(&addr).await, Some((true, Some("v".into()))));
    }

    #[test]
    fn flags_default_under_the_storage_root_unless_set_or_off() {
        let mut md: ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "ocr", "namespace": "ml"},
            "spec": {"model": {"url": "file:///m"}}
        }))
        .unwrap();
        assert_eq!(
            flags_url(&md, "file:///data/").as_deref(),
            Some("file:///data/flags/ml/ocr/")
        );
        md.spec.flagging.storage = Some("s3://b/f/".into());
        assert_eq!(flags_url(&md, "file:///data").as_deref(), Some("s3://b/f/"));
        md.spec.flagging.enabled = false;
        assert_eq!(flags_url(&md, "file:///data"), None);
    }

    #[test]
    fn the_local_server_reads_at_the_widths_and_precision_the_spec_asks_for() {
        let md = |spec: Value| -> ModelDeployment {
            serde_json::from_value(json!({
                "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "ocr", "namespace": "ml"}, "spec": spec
            }))
            .unwrap()
        };
        let args = |m: &ModelDeployment| {
            serve_args(
                m,
                "file:///data",
                std::path::Path::new("/p"),
                "127.0.0.1:1",
                "127.0.0.1:2",
            )
        };
        let read = md(json!({"model": {"url": "file:///m"},
                             "reading": {"widths": [1, 1.3], "rereadBelow": 0.75},
                             "precision": "bf16"}));
        let a = args(&read);
        let at = a.iter().position(|x| x == "--widths").expect("--widths");
        assert_eq!(a[at + 1..at + 4], ["1,1.3", "--reread-below", "0.75"]);
        let at = a
            .iter()
            .position(|x| x == "--precision")
            .expect("--precision");
        assert_eq!(a[at + 1], "bf16");
        assert_eq!(a[..3], ["serve", "--model-pointer", "/p"]);
        let plain = args(&md(json!({"model": {"url": "file:///m"}})));
        assert!(
            !plain.iter().any(|x| x == "--widths" || x == "--precision"),
            "{plain:?}"
        );
    }
}
