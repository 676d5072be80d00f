//! The HTTP endpoint (127.0.0.1 by default): `/metrics` (Prometheus text), `/status`
//! (JSON; `?window_s=N` for latency percentiles over the last N seconds), `/api/series` (the dashboard's samples, `?since=<ms>` for the newer ones only)
//! and the live dashboard at `/` (one self-contained page, no external assets).
//!
//! With a token set every route wants `Authorization: Bearer <token>`; the page and its
//! requests may carry it as `?token=` instead, since a browser cannot set the header when
//! it opens a URL.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::live::Live;

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// A query parameter's value (no percent-decoding: tokens and numbers need none).
fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Equal strings, compared in time independent of where they differ (bearer tokens here
/// and in `freshet embed-server`).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(token): State<Option<Arc<str>>>, req: Request, next: Next) -> Response {
    let Some(token) = token else { return next.run(req).await };
    let from_header =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let given = from_header.or_else(|| query_param(req.uri(), "token"));
    if given.is_some_and(|g| same(g, &token)) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required (Authorization: Bearer <token>, or ?token= for the dashboard)\n",
        )
            .into_response()
    }
}

/// Serve the routes on `addr` until the runtime shuts down. Returns the bound address.
pub async fn serve(addr: SocketAddr, live: Arc<Live>, token: Option<String>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    if token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(%local, "the HTTP endpoint is bound beyond localhost without a token (set http_token)");
    }
    let token: Option<Arc<str>> = token.map(Into::into);
    let app = Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD) }))
        .route(
            "/metrics",
            get(|State(live): State<Arc<Live>>| async move {
                // prometheus-client writes OpenMetrics (counters' `_total`, `# EOF`).
                (
                    [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    live.metrics().encode(),
                )
            }),
        )
        .route(
            "/status",
            get(|State(live): State<Arc<Live>>, uri: Uri| async move {
                // `?window_s=N`: the latency percentiles over the last N seconds (default 300).
                let window = query_param(&uri, "window_s").and_then(|s| s.parse().ok());
                Json(live.status_over(window.unwrap_or(super::live::STATUS_PERCENTILE_WINDOW_S)))
            }),
        )
        .route(
            "/ready",
            get(|State(live): State<Arc<Live>>| async move {
                if live.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting: opening the collection and rebuilding the state\n")
                }
            }),
        )
        .route(
            "/api/series",
            get(|State(live): State<Arc<Live>>, uri: Uri| async move {
                let since = query_param(&uri, "since").and_then(|s| s.parse().ok()).unwrap_or(0);
                Json(serde_json::json!({
                    "interval_ms": 1000,
                    "window_s": super::window::KEEP_S,
                    "now_ms": crate::source::now_ms(),
                    "samples": live.samples_since(since),
                }))
            }),
        )
        .with_state(live)
        .layer(middleware::from_fn_with_state(token, require_token))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /, /metrics, /status, /ready or /api/series\n") });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_and_token_comparison() {
        let uri: Uri = "/api/series?token=abc&since=12".parse().unwrap_or_default();
        assert_eq!(query_param(&uri, "since"), Some("12"));
        assert_eq!(query_param(&uri, "token"), Some("abc"));
        assert_eq!(query_param(&uri, "tok"), None);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
