//! Telemetry: tracing initialisation, the one place metrics are kept ([`metrics::Metrics`]),
//! and the HTTP endpoint serving them as Prometheus text on `/metrics`.

pub mod http;
pub mod metrics;

/// Initialise `tracing` (level from `RUST_LOG`, default `info`; JSON when `json`). Logs go
/// to stderr so stdout stays machine-readable.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,qdrant_edge=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
