//! `/healthz` (the process answers), `/readyz` (the runtime is compiled and loaded, the OAuth
//! issuer's metadata and keys are read when OAuth is on, and we are not shutting down) and
//! `/metrics` (Prometheus text).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use super::oauth::Resource;
use crate::app::App;
use crate::sandbox::readiness::State as Readiness;

/// What the health endpoints look at.
#[derive(Clone)]
struct Health {
    app: Arc<App>,
    oauth: Option<Arc<Resource>>,
}

pub fn router(app: Arc<App>, oauth: Option<Arc<Resource>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Health { app, oauth })
}

async fn readyz(State(Health { app, oauth }): State<Health>) -> impl IntoResponse {
    if app.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "shutting_down"})));
    }
    if let Some(oauth) = oauth
        && let Some(why) = oauth.unready().await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "waiting_for_oauth_issuer", "error": why})),
        );
    }
    match app.services.sandbox.state() {
        Readiness::Ready(sandbox) if sandbox.workers_up() == Some(0) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"status": "no_worker", "error": "every worker process is restarting; calls wait for one"}),
            ),
        ),
        Readiness::Ready(_) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))),
        Readiness::Preparing => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "preparing"}))),
        Readiness::Failed(error) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "failed", "error": error})))
        }
    }
}

async fn metrics(State(Health { app, .. }): State<Health>) -> impl IntoResponse {
    let Some(handle) = METRICS.get() else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics are not enabled\n".to_string(),
        );
    };
    if let Ok(sandbox) = app.services.sandbox.get() {
        let stats = sandbox.stats();
        metrics::gauge!("toolhost_instances_in_flight").set(stats.running as f64);
        metrics::gauge!("toolhost_queue_depth").set(stats.waiting as f64);
        if let Some(up) = sandbox.workers_up() {
            metrics::gauge!("toolhost_worker_processes_up").set(up as f64);
        }
    }
    metrics::gauge!("toolhost_sessions_active").set(app.sessions.live() as f64);
    handle.run_upkeep();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls reuse it).
pub fn install_metrics() -> anyhow::Result<()> {
    // Two servers in one process (tests) may start at once: one installs, the other reuses.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if METRICS.get().is_some() {
        return Ok(());
    }
    let seconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    let fuel = [1e7, 1e8, 1e9, 1e10, 1e11, 1e12];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full("toolhost_fuel_used".into()), &fuel)?
        .install_recorder()?;
    let _ = METRICS.set(handle);
    Ok(())
}
