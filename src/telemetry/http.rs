//! The HTTP endpoint: `/metrics` (Prometheus text). Binds where the config says
//! (127.0.0.1 by default).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use super::metrics::Metrics;

/// Serve `/metrics` on `addr` until the runtime shuts down. Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = Arc::clone(&metrics);
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    m.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(local)
}
