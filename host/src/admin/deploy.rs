//! The deploy endpoints: list versions, upload a plugin, roll back.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use crate::deploy::{DeployError, Deployed, Deployer, Source};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Checks the bearer token in constant time; `Err` is the response to send.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &state.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "deploys over HTTP are disabled: set admin.token or SANDPIPER_ADMIN_TOKEN",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Err(response)
    }
}

fn deployer<'a>(state: &'a AdminState, name: &str) -> Result<&'a Arc<Deployer>, Response> {
    state
        .deployers
        .get(name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no pipeline named {name}")))
}

fn refused(e: &DeployError) -> Response {
    let status = match e {
        DeployError::Invalid(_) => StatusCode::BAD_REQUEST,
        DeployError::Canary { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::NoPrevious(_) => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

/// After a local change, tell the fleet (when there is one).
async fn publish(state: &AdminState, deployer: &Deployer, done: &Deployed) -> Result<(), Response> {
    let (Some(control), false) = (&state.control, done.unchanged) else {
        return Ok(());
    };
    let Some(bytes) = deployer.current_bytes() else {
        return Ok(());
    };
    let name = deployer.current().id().name().to_owned();
    control
        .publish(deployer.pipeline(), &name, &bytes)
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                format!("deployed on this host, but not published to the fleet: {e:#}"),
            )
        })
}

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    /// The plugin's name in its identity; defaults to the running one's.
    name: Option<String>,
}

/// The checks every write shares: the token, then the pipeline.
fn writable(
    state: &AdminState,
    headers: &HeaderMap,
    pipeline: &str,
) -> Result<Arc<Deployer>, Response> {
    authorize(state, headers)?;
    deployer(state, pipeline).cloned()
}

/// The response to a deploy or rollback, published to the fleet when it changed something.
async fn answer(
    state: &AdminState,
    deployer: &Deployer,
    result: Result<Deployed, DeployError>,
) -> Response {
    match result {
        Ok(done) => match publish(state, deployer, &done).await {
            Ok(()) => (StatusCode::OK, Json(done)).into_response(),
            Err(response) => response,
        },
        Err(e) => refused(&e),
    }
}

pub async fn put_plugin(
    State(state): State<AdminState>,
    Path(pipeline): Path<String>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let deployer = match writable(&state, &headers, &pipeline) {
        Ok(d) => d,
        Err(response) => return response,
    };
    let name = query
        .name
        .unwrap_or_else(|| deployer.current().id().name().to_owned());
    let result = deployer
        .deploy(&name, Arc::from(body.as_ref()), Source::Api)
        .await;
    answer(&state, &deployer, result).await
}

pub async fn rollback(
    State(state): State<AdminState>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
) -> Response {
    let deployer = match writable(&state, &headers, &pipeline) {
        Ok(d) => d,
        Err(response) => return response,
    };
    let result = deployer.rollback(Source::Rollback).await;
    answer(&state, &deployer, result).await
}

pub async fn list(State(state): State<AdminState>) -> impl IntoResponse {
    let mut pipelines: Vec<_> = state
        .deployers
        .values()
        .map(|d| {
            let current = d.current();
            let history = d.history();
            json!({
                "name": d.pipeline(),
                "plugin": current.id().to_string(),
                "plugin_name": current.id().name(),
                "sha256": current.id().digest_hex(),
                "loaded_at": history.last().map(|v| v.loaded_at),
                "counts": d.stats.get(current.id()),
                "deploys_refused": d.refused(),
                "history": history,
            })
        })
        .collect();
    pipelines.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(json!({ "pipelines": pipelines }))
}
