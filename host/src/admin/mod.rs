//! The admin HTTP listener: `/healthz` and `/readyz` (metrics and deploys
//! come later). Loopback by default; never required for a pipeline to run.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Report};

fn respond(report: Report) -> impl IntoResponse {
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    respond(health.liveness())
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    respond(health.readiness())
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Binds `listen` and serves until `shutdown`. Returns the bound address
/// (useful with port 0) and the serving task.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the admin listener on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = router(health);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "The admin listener failed.");
        }
    });
    tracing::info!(%addr, "Admin listener started.");
    Ok((addr, task))
}
