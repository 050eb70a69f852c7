//! An in-memory fake of the Kubernetes API for controller tests and the benchmarks: a tower
//! service behind a real `kube::Client` that records every request and answers like an API
//! server would for the calls the operator makes (server-side apply, status patches, events).
//! Served over HTTP ([`serve_http`]) it also answers watches: every write gets a
//! resourceVersion and is streamed to the watches of its collection, and a watch from an older
//! resourceVersion first replays what it missed, so kube's watchers and reflectors run against
//! it as against an API server. A create completes `metadata.generateName` and, with
//! [`FakeState::admission`], refuses textrec.dev objects the API server would (422 Invalid with
//! the fields as `details.causes`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request the operator made.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// JSON body (Null when empty).
    pub body: Value,
}

/// Shared state of the fake.
#[derive(Default)]
pub struct FakeState {
    /// Objects by path (`/apis/textrec.dev/v1alpha1/namespaces/ns/trainingruns/r`).
    pub objects: HashMap<String, Value>,
    /// Requests, in order.
    pub log: Vec<Recorded>,
    /// Skip recording bodies (benchmark: keep memory flat).
    pub quiet: bool,
    /// The last resourceVersion handed out.
    pub resource_version: u64,
    /// Every write as a watch event, oldest first (only while [`FakeState::watchable`]).
    pub history: Vec<WatchEvent>,
    /// Keep [`FakeState::history`] and stream writes to watches ([`serve_http`] turns it on).
    pub watchable: bool,
    /// Open watches.
    pub watches: Vec<OpenWatch>,
    /// Watches opened so far.
    pub watches_opened: usize,
    /// Check created textrec.dev objects with the CRD schema and CEL rules, as the API server
    /// does (`textrec_operator::crd::admission::admit`).
    pub admission: bool,
    /// Names completed from `generateName` so far (the next suffix).
    pub generated: u64,
}

/// One write, as a watch delivers it.
pub struct WatchEvent {
    /// Its resourceVersion.
    pub resource_version: u64,
    /// Path of the object written.
    pub path: String,
    /// `{"type": "ADDED"|"MODIFIED", "object": ...}` as one JSON line.
    pub line: Vec<u8>,
}

/// A watch streaming to a client.
pub struct OpenWatch {
    /// The collection watched (namespaced or across namespaces).
    pub collection: String,
    /// Its query (label selector).
    pub query: String,
    /// Where its event lines go.
    pub tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

/// Whether the object at `object_path` belongs to `collection`, which is either its own
/// collection or the same collection across namespaces.
fn in_collection(collection: &str, object_path: &str) -> bool {
    let Some((parent, _)) = object_path.rsplit_once('/') else {
        return false;
    };
    if parent == collection {
        return true;
    }
    // `/apis/g/v/namespaces/ns/jobs` belongs to `/apis/g/v/jobs`.
    match parent.split_once("/namespaces/") {
        Some((head, rest)) => rest
            .split_once('/')
            .is_some_and(|(_, plural)| format!("{head}/{plural}") == collection),
        None => false,
    }
}

impl FakeState {
    /// Give the object at `path` the next resourceVersion and tell the watches.
    fn written(&mut self, path: &str, kind: &str) {
        if !self.watchable {
            return;
        }
        self.resource_version += 1;
        let rv = self.resource_version;
        let Some(obj) = self.objects.get_mut(path) else {
            return;
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
        line.push(b'\n');
        let obj = obj.clone();
        self.watches.retain(|w| {
            if !in_collection(&w.collection, path) || !selected(&obj, &w.query) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
        self.history.push(WatchEvent {
            resource_version: rv,
            path: path.to_string(),
            line,
        });
    }

    /// Open a watch on `collection`: replays the writes after the query's resourceVersion,
    /// then streams new ones.
    pub fn watch(
        &mut self,
        collection: &str,
        query: &str,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
        let since: u64 = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for ev in self.history.iter().filter(|e| e.resource_version > since) {
            let obj = &self.objects[&ev.path];
            if in_collection(collection, &ev.path) && selected(obj, query) {
                let _ = tx.send(ev.line.clone());
            }
        }
        self.watches.push(OpenWatch {
            collection: collection.to_string(),
            query: query.to_string(),
            tx,
        });
        self.watches_opened += 1;
        rx
    }
}

/// Whether a query asks for a watch.
pub fn is_watch(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
}

/// Serve the fake over HTTP on `listener` until the process ends; watches are answered when
/// the state is [`FakeState::watchable`].
pub async fn serve_http(state: Arc<Mutex<FakeState>>, listener: tokio::net::TcpListener) {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let state = state.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            if method == "GET" && is_watch(&query) {
                let rx = state.lock().unwrap().watch(&path, &query);
                let lines = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
                });
                return axum::response::Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from_stream(lines))
                    .unwrap();
            }
            let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap();
            let (code, body) = handle_raw(&state, &method, &path, &query, &bytes);
            axum::response::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap()
        }
    });
    axum::serve(listener, app).await.unwrap();
}

/// A client talking to a fresh fake, and the fake's state.
pub fn fake_client() -> (Client, Arc<Mutex<FakeState>>) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let s = state.clone();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let s = s.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&s, req).await) }
    });
    (Client::new(svc, "default"), state)
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

async fn handle(state: &Mutex<FakeState>, req: Request<Body>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let (code, body) = handle_raw(state, &method, &path, &query, &bytes);
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// Whether `labels` match an equality-based `labelSelector` (`a=b,c=d`, URL-encoded).
fn selected(obj: &Value, query: &str) -> bool {
    fields_selected(obj, query) && labels_selected(obj, query)
}

/// A `fieldSelector` of `a.b=c` terms, as the API server applies it to the fields it indexes.
fn fields_selected(obj: &Value, query: &str) -> bool {
    let Some(sel) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldSelector="))
    else {
        return true;
    };
    let sel = sel.replace("%3D", "=").replace("%2C", ",");
    sel.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want) = term.split_once('=').unwrap_or((term, ""));
        let got = path.split('.').fold(obj, |v, k| &v[k]);
        got.as_str() == Some(want)
    })
}

fn labels_selected(obj: &Value, query: &str) -> bool {
    let Some(sel) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
    else {
        return true;
    };
    let sel = sel
        .replace("%3D", "=")
        .replace("%2F", "/")
        .replace("%2C", ",");
    sel.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v.trim_start_matches('='))
    })
}

/// A `kB` field of this process's `/proc/self/status` (`VmRSS:`, `VmHWM:`); 0 if unreadable.
pub fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Counters and memory of the fake, for the benchmark (`GET /_fake/stats`).
fn stats(st: &FakeState) -> Value {
    let kib = proc_status_kib;
    json!({
        "objects": st.objects.len(),
        "requests": st.log.len(),
        "jobWrites": st.log.iter().filter(|r| r.path.contains("/jobs/")).count(),
        "statusWrites": st.log.iter().filter(|r| r.path.ends_with("/status")).count(),
        "watchesOpened": st.watches_opened,
        "watchesOpen": st.watches.iter().filter(|w| !w.tx.is_closed()).count(),
        "vmRssKiB": kib("VmRSS:"),
        "vmHwmKiB": kib("VmHWM:"),
    })
}

/// Answer one request as the API server would: (status, JSON body). Shared by the in-process
/// tower service and the benchmark's out-of-process HTTP server.
pub fn handle_raw(
    state: &Mutex<FakeState>,
    method: &str,
    path: &str,
    query: &str,
    bytes: &[u8],
) -> (StatusCode, Vec<u8>) {
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap()
    };
    let mut st = state.lock().unwrap();
    if path == "/_fake/stats" {
        return (StatusCode::OK, serde_json::to_vec(&stats(&st)).unwrap());
    }
    if path == "/version" {
        // What the manager asks first, to fail fast against a dead endpoint.
        let v = json!({"major": "1", "minor": "36", "gitVersion": "v1.36.0-fake",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
            "compiler": "", "platform": "linux/amd64"});
        return (StatusCode::OK, serde_json::to_vec(&v).unwrap());
    }
    let (code, v) = answer(&mut st, method, path, query, body);
    (code, serde_json::to_vec(&v).unwrap())
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}

fn answer(
    st: &mut FakeState,
    method: &str,
    path: &str,
    query: &str,
    body: Value,
) -> (StatusCode, Value) {
    let rec = Recorded {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        body: if st.quiet { Value::Null } else { body.clone() },
    };
    st.log.push(rec);
    match method {
        "GET" => match st.objects.get(path) {
            Some(v) => (StatusCode::OK, v.clone()),
            // A watch: no events (the watcher sees a broken stream and starts over).
            None if query.contains("watch=true") => (StatusCode::OK, Value::Null),
            None => {
                // A collection: list the objects directly under it, or in it across
                // namespaces (label selector honoured).
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, v)| in_collection(path, p) && selected(v, query))
                    .map(|(_, v)| v.clone())
                    .collect();
                // A GET without list parameters is of one object, which does not exist.
                let list = [
                    "labelSelector",
                    "fieldSelector",
                    "limit=",
                    "resourceVersion=",
                ]
                .iter()
                .any(|p| query.contains(p));
                if items.is_empty() && !list {
                    return not_found(path);
                }
                let rv = st.resource_version.max(1).to_string();
                (
                    StatusCode::OK,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
        },
        "POST" => {
            if path.contains("/events") {
                return (StatusCode::CREATED, body);
            }
            if st.admission && path.starts_with("/apis/textrec.dev/") {
                if let Err(refusal) = admit(&body) {
                    return refusal;
                }
            }
            let mut body = body;
            let name = created_name(st, &mut body);
            let key = format!("{path}/{name}");
            if let Some(ns) = path
                .split("/namespaces/")
                .nth(1)
                .and_then(|r| r.split('/').next())
            {
                if body["metadata"]["namespace"].is_null() {
                    body["metadata"]["namespace"] = json!(ns);
                }
            }
            st.objects.insert(key.clone(), body);
            st.written(&key, "ADDED");
            (StatusCode::CREATED, st.objects[&key].clone())
        }
        "PUT" => {
            let kind = if st.objects.contains_key(path) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            st.objects.insert(path.to_string(), body);
            st.written(path, kind);
            (StatusCode::OK, st.objects[path].clone())
        }
        "PATCH" => {
            if let Some(main) = path.strip_suffix("/status") {
                let Some(obj) = st.objects.get_mut(main) else {
                    return not_found(main);
                };
                obj["status"] = body["status"].clone();
                st.written(main, "MODIFIED");
                (StatusCode::OK, st.objects[main].clone())
            } else {
                let kind = if st.objects.contains_key(path) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                let entry = st
                    .objects
                    .entry(path.to_string())
                    .or_insert(Value::Object(Default::default()));
                merge(entry, &body);
                st.written(path, kind);
                (StatusCode::OK, st.objects[path].clone())
            }
        }
        "DELETE" => {
            if !st.objects.contains_key(path) {
                return not_found(path);
            }
            // Deleted at once (no finalizers); watches see the object as it was.
            st.written(path, "DELETED");
            let obj = st.objects.remove(path).unwrap_or_default();
            (StatusCode::OK, obj)
        }
        _ => not_found(path),
    }
}

/// The name a create gives the object: its `metadata.name`, or its `generateName` completed as
/// the API server does (with a counter instead of random characters), written into the body.
fn created_name(st: &mut FakeState, body: &mut Value) -> String {
    if let Some(name) = body["metadata"]["name"].as_str() {
        return name.to_string();
    }
    let Some(prefix) = body["metadata"]["generateName"].as_str() else {
        return "generated".into();
    };
    st.generated += 1;
    let name = format!("{prefix}{:05}", st.generated);
    body["metadata"]["name"] = json!(name);
    name
}

/// The API server's answer to a textrec.dev object its CRD refuses: 422 Invalid, one cause per
/// field.
fn admit(body: &Value) -> Result<(), (StatusCode, Value)> {
    let kind = body["kind"].as_str().unwrap_or_default();
    let violations = match textrec_operator::crd::admission::admit(kind, body) {
        Ok(()) => return Ok(()),
        Err(v) => v,
    };
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    let causes: Vec<Value> = violations
        .iter()
        .map(|v| json!({"reason": "FieldValueInvalid", "field": v.field, "message": format!("Invalid value: {}", v.message)}))
        .collect();
    let summary: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: Invalid value: {}", v.field, v.message))
        .collect();
    Err((
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
            "message": format!("{kind}.textrec.dev {name:?} is invalid: {}", summary.join(", ")),
            "details": {"name": name, "group": "textrec.dev", "kind": kind, "causes": causes}}),
    ))
}

/// Set in a benchmark binary re-executed by [`spawn_child`]: it serves the fake instead.
pub const CHILD_ENV: &str = "TEXTREC_BENCH_FAKE_API_CHILD";

/// The child side of [`spawn_child`]: serve the fake (quiet; with watches when `watchable`) on
/// 127.0.0.1, print `PORT n`, and exit when stdin closes.
pub fn serve_child(watchable: bool) {
    let state = Arc::new(Mutex::new(FakeState {
        quiet: true,
        watchable,
        ..Default::default()
    }));
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        serve_http(state, listener).await;
    });
}

/// Run the fake API in a child process (this binary, re-executed with [`CHILD_ENV`] set, must
/// call [`serve_child`]), so the parent's memory is the operator's alone. Returns the child
/// (closing its stdin stops it) and its port.
pub fn spawn_child() -> (std::process::Child, u16) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake API server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .expect("fake API server port");
    (child, port)
}
