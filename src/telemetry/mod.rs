//! Telemetry: tracing initialisation, the one place metrics are kept ([`metrics::Metrics`]),
//! the live view sampled from them ([`live::Live`]: `/status` and the dashboard's series),
//! and the HTTP endpoint serving `/metrics`, `/status`, `/api/series` and the dashboard.

pub mod http;
pub mod live;
pub mod metrics;
pub mod report;
pub mod window;

/// Initialise `tracing` (level from `RUST_LOG`, default `info`; JSON when `json`). Logs go
/// to stderr so stdout stays machine-readable. Spans (one per embedding batch and per sink
/// write, at debug level) are logged when they close, with their fields and duration.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,qdrant_edge=error"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_span_events(FmtSpan::CLOSE);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
