//! The admin HTTP listener: health, the pipelines' versions, and deploys.
//! Loopback by default; never required for a pipeline to run.
//!
//! - `GET /healthz`, `GET /readyz`: 200 or 503, JSON `{ok, reasons}`.
//! - `GET /metrics`: Prometheus text format.
//! - `GET /`: a status page for a person; `GET /status`: its JSON.
//! - `GET /pipelines`: each pipeline's plugin, digest, load time, history.
//! - `PUT /pipelines/{name}/plugin`: deploy the body (wasm bytes).
//! - `POST /pipelines/{name}/rollback`: back to the previous version.
//!
//! The two write endpoints need `Authorization: Bearer <token>`; without a
//! configured token they are refused.

mod deploy;
mod status;

pub use status::StatusSource;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

use crate::deploy::Deployer;
use crate::health::{Health, Report};
use crate::kafka::control::ControlPublisher;
use crate::metrics::Metrics;
use crate::runtime::MAX_PLUGIN_BYTES;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// What the status page shows, per pipeline.
    pub status: Arc<Vec<StatusSource>>,
    pub deployers: Arc<HashMap<String, Arc<Deployer>>>,
    /// Bearer token for writes; `None` disables them.
    pub token: Option<Arc<str>>,
    /// Set when the fleet shares a control topic.
    pub control: Option<ControlPublisher>,
}

fn respond(report: Report) -> impl IntoResponse {
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    respond(state.health.liveness())
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    respond(state.health.readiness())
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/status", get(status::status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/pipelines", get(deploy::list))
        .route(
            "/pipelines/{name}/plugin",
            put(deploy::put_plugin).layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/pipelines/{name}/rollback", post(deploy::rollback))
        .with_state(state)
}

/// Binds `listen`; returns the bound address (useful with port 0) and the
/// future that serves until `shutdown`, for the caller to run as a watched
/// task (it ends early only if serving fails).
pub async fn serve(
    listen: &str,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the admin listener on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = router(state);
    let task = async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "The admin listener failed.");
        }
    };
    tracing::info!(%addr, "Admin listener started.");
    Ok((addr, task))
}
