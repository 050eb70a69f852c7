//! An in-memory fake of the Kubernetes API for controller tests and the benchmark: a tower
//! service behind a real `kube::Client` that records every request and answers like an API
//! server would for the calls the operator makes (server-side apply, status patches, events).

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

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn not_found(path: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
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
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let mut st = state.lock().unwrap();
    let rec = Recorded {
        method: method.clone(),
        path: path.clone(),
        query,
        body: if st.quiet { Value::Null } else { body.clone() },
    };
    st.log.push(rec);
    match method.as_str() {
        "GET" => match st.objects.get(&path) {
            Some(v) => respond(StatusCode::OK, v),
            None => not_found(&path),
        },
        "POST" => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or("generated")
                .to_string();
            let key = format!("{path}/{name}");
            if !path.contains("/events") {
                st.objects.insert(key, body.clone());
            }
            respond(StatusCode::CREATED, &body)
        }
        "PUT" => {
            st.objects.insert(path.clone(), body.clone());
            respond(StatusCode::OK, &body)
        }
        "PATCH" => {
            if let Some(main) = path.strip_suffix("/status") {
                let Some(obj) = st.objects.get_mut(main) else {
                    return not_found(main);
                };
                obj["status"] = body["status"].clone();
                let out = obj.clone();
                respond(StatusCode::OK, &out)
            } else {
                let entry = st
                    .objects
                    .entry(path.clone())
                    .or_insert(Value::Object(Default::default()));
                merge(entry, &body);
                let out = entry.clone();
                respond(StatusCode::OK, &out)
            }
        }
        _ => not_found(&path),
    }
}
