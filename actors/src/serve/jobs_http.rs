//! Job endpoints of the HTTP server (issue 17, item 4): submit a job over an SDFS prefix,
//! read the jobs' status (C1 and C5), and stream a job's results as JSON Lines. Each is
//! the console command a `dml ctl` would send, executed by this node's job client, so
//! the coordinator sees nothing new; results come page by page (`C4Results`, as
//! `dml ctl results` reads them), so no answer holds a whole job in memory.

use std::time::Duration;

use actix::Addr;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::control::{Command, Outcome};
use crate::jobs::coordinator_actor::{CoordinatorActor, Exec};
use crate::serve::http::{error, HttpContext};

/// Rows per results page (as `dml ctl results`).
const PAGE: u32 = 5_000;
/// The longest one command may take.
const WITHIN: Duration = Duration::from_secs(30);

/// Runs one job command on this node's job client.
async fn exec(coord: &Addr<CoordinatorActor>, cmd: Command) -> Outcome {
    let (tx, rx) = oneshot::channel();
    coord.do_send(Exec { cmd, reply: tx });
    match tokio::time::timeout(WITHIN, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err("the node is shutting down".into()),
        Err(_) => Err(format!("no answer within {} s", WITHIN.as_secs())),
    }
}

fn json_of(outcome: Outcome) -> Result<Value, String> {
    let reply = outcome?;
    serde_json::from_str(&reply.json).map_err(|e| format!("bad answer from the node: {e}"))
}

/// `POST /v1/jobs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    model: String,
    /// SDFS prefix of the inputs.
    input: String,
}

pub async fn submit(
    State(ctx): State<HttpContext>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let s: Submit = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"model\": ..., \"input\": SDFS_PREFIX}}: {e}"),
            )
        }
    };
    let cmd = Command::C4 {
        model: s.model,
        input: s.input,
    };
    match json_of(exec(&ctx.coordinator, cmd).await) {
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

pub async fn status(State(ctx): State<HttpContext>) -> Response {
    let rates = json_of(exec(&ctx.coordinator, Command::C1).await);
    let assignment = json_of(exec(&ctx.coordinator, Command::C5).await);
    match (rates, assignment) {
        (Ok(r), Ok(a)) => Json(json!({"jobs": r, "assignment": a})).into_response(),
        (Err(e), _) | (_, Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// One page of results as JSON lines, and where the next starts.
async fn page(
    coord: &Addr<CoordinatorActor>,
    job: &str,
    from: u32,
) -> Result<(String, Option<u32>), String> {
    let v = json_of(
        exec(
            coord,
            Command::C4Results {
                job: job.to_string(),
                from,
                limit: PAGE,
            },
        )
        .await,
    )?;
    let mut out = String::new();
    for row in v["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push_str(&row.to_string());
        out.push('\n');
    }
    let next = v["next"].as_u64().and_then(|n| u32::try_from(n).ok());
    Ok((out, next))
}

/// `GET /v1/jobs/{job}/results`: JSON Lines, in query order, one page at a time. An
/// error before the first page is a JSON 4xx; one later ends the stream with a last line
/// `{"error": ...}` (the status has gone out already).
pub async fn results(State(ctx): State<HttpContext>, Path(job): Path<String>) -> Response {
    let first = match page(&ctx.coordinator, &job, 0).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    let coord = ctx.coordinator.clone();
    let stream = futures_util::stream::unfold(Some(first), move |state| {
        let coord = coord.clone();
        let job = job.clone();
        async move {
            let (text, next) = state?;
            let following = match next {
                None => None,
                Some(from) => Some(match page(&coord, &job, from).await {
                    Ok(p) => p,
                    Err(e) => (format!("{}\n", json!({"error": e})), None),
                }),
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(text)), following))
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}
