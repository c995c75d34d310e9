//! The node's HTTP endpoint (off unless `http = "HOST:PORT"` is configured for the node or
//! `dml node --http` is given): KServe v2 inference, health, metadata, `GET /metrics`.
//!
//! It runs on a tokio runtime of its own thread (two workers), not on the actix arbiter:
//! parsing a 20 MB JSON tensor or base64-decoding a batch of images would otherwise run
//! on the thread that answers pings. Requests reach the cluster through the ServeActor's
//! address, which is safe to use from any thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dml_models::Network;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::jobs::coordinator_actor::CoordinatorActor;
use crate::net::body::Body;
use crate::net::transport::Transport;
use crate::serve::jobs_http;
use crate::serve::kserve;
use crate::serve::serve_actor::{Infer, ServeActor, ServeError};
use crate::types::NodeAddr;

/// What the endpoint needs from its node.
#[derive(Clone)]
pub struct HttpContext {
    pub node: NodeAddr,
    pub serve: Addr<ServeActor>,
    /// This node's job client (job endpoints).
    pub coordinator: Addr<CoordinatorActor>,
    pub transport: Transport<Body>,
    /// Set once the node is in the cluster (`/v2/health/ready`).
    pub ready: Arc<AtomicBool>,
    /// The bearer token every endpoint but health and metrics requires; `None`: no token.
    pub token: Option<Arc<String>>,
    /// Largest request body accepted (413 beyond).
    pub max_body: usize,
    /// The longest a request waits for its answer (504 beyond).
    pub timeout: Duration,
    /// (certificate chain, key) PEM files: HTTPS only.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Binds `addr` (an error stops the node) and serves on a thread of its own.
pub fn spawn(addr: SocketAddr, ctx: HttpContext) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} (http): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let tls = match &ctx.tls {
        Some((cert, key)) => Some(crate::serve::tls::server_config(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dml-http")
        .enable_all()
        .build()
        .map_err(|e| format!("http runtime: {e}"))?;
    std::thread::Builder::new()
        .name("dml-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return warn!("http endpoint stopped: {e}"),
                };
                let served = match tls {
                    None => axum::serve(listener, router(ctx)).await,
                    Some(config) => match crate::serve::tls::TlsListener::start(listener, config) {
                        Ok(l) => axum::serve(l, router(ctx)).await,
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = served {
                    warn!("http endpoint stopped: {e}");
                }
            })
        })
        .map_err(|e| format!("http thread: {e}"))?;
    info!(http = %local, scheme, "http endpoint listening (KServe v2, /metrics)");
    Ok(local)
}

/// The routes.
pub fn router(ctx: HttpContext) -> Router {
    let max_body = ctx.max_body;
    let guarded = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v1/jobs", post(jobs_http::submit).get(jobs_http::status))
        .route("/v1/jobs/{job}/results", get(jobs_http::results))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(guarded)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(ctx)
}

/// The protocol's error document.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

async fn require_token(State(ctx): State<HttpContext>, req: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                if given.is_some() {
                    "the bearer token is not valid"
                } else {
                    "this endpoint needs `Authorization: Bearer <token>`"
                },
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready(State(ctx): State<HttpContext>) -> Response {
    if ctx.ready.load(Ordering::Relaxed) {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

async fn metrics(State(ctx): State<HttpContext>) -> Response {
    match crate::metrics::render(Some(ctx.transport.stats())) {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics are not recorded in this process",
        ),
    }
}

async fn server_metadata() -> Json<Value> {
    Json(kserve::server_metadata())
}

fn network(name: &str) -> Result<Network, Box<Response>> {
    match Network::ALL.into_iter().find(|n| n.name() == name) {
        Some(n) => Ok(n),
        None => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("unknown model `{name}`; this server has resnet50 and inception_v3"),
        ))),
    }
}

async fn model_metadata(Path(name): Path<String>) -> Response {
    match network(&name) {
        Ok(n) => Json(kserve::model_metadata(n)).into_response(),
        Err(r) => *r,
    }
}

async fn model_ready(State(ctx): State<HttpContext>, Path(name): Path<String>) -> Response {
    match network(&name) {
        Ok(_) => ready(State(ctx)).await,
        Err(r) => *r,
    }
}

async fn infer(
    State(ctx): State<HttpContext>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let net = match network(&name) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                e.status(),
                format!("{} (at most {} bytes)", e.body_text(), ctx.max_body),
            )
        }
    };
    let header_len = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Inference-Header-Content-Length is not a number",
                )
            }
        },
    };
    // Parsing a large body is CPU work: off the runtime's workers.
    let parsed = tokio::task::spawn_blocking(move || kserve::parse(&body, header_len, net)).await;
    let req = match parsed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            crate::metrics::serve_failure(net.name());
            return error(StatusCode::BAD_REQUEST, e.0);
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be parsed",
            )
        }
    };
    let (tx, rx) = oneshot::channel();
    ctx.serve.do_send(Infer {
        model: net.name().to_string(),
        items: req.items,
        reply: tx,
    });
    let answer = match tokio::time::timeout(ctx.timeout, rx).await {
        Ok(Ok(Ok(a))) => a,
        Ok(Ok(Err(e))) => {
            let status = match e {
                ServeError::BadInput(_) => StatusCode::BAD_REQUEST,
                ServeError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                ServeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            };
            return error(status, e.to_string());
        }
        Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer within {} s", ctx.timeout.as_secs()),
            )
        }
    };
    let extra = json!({"node": answer.node.to_string(), "synthetic": answer.synthetic});
    let outputs = req.outputs;
    let id = req.id;
    let doc = tokio::task::spawn_blocking(move || {
        kserve::response(net.name(), &id, &outputs, &answer.logits, extra)
    })
    .await;
    match doc {
        Ok(d) => Json(d).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the response could not be built",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
