//! librdkafka client configuration from the runtime config's `[kafka]` section: the
//! properties freshet owns, the user's properties, secrets read from the environment (and
//! scrubbed from every log line and error message), and the client context that routes
//! librdkafka's logs to `tracing` and reads the brokers' high watermarks from its statistics.

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use super::KafkaSourceError;
use crate::config::{KafkaConfig, StartFrom};
use crate::source::SourceProgress;

/// Replaces secret values with `***` in text bound for logs or errors.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Scrub every secret from `text`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if !s.is_empty() && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// The client configuration for `group_id` (the live group, or none for read-only
/// clients), with secrets resolved from the environment.
pub fn client_config(cfg: &KafkaConfig, group_id: Option<&str>) -> Result<(ClientConfig, Redactor), KafkaSourceError> {
    let mut c = ClientConfig::new();
    let mut redactor = Redactor::default();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    // A group id is needed to commit and read committed offsets; partitions are assigned
    // by freshet (`assign`), never by the group protocol.
    c.set("group.id", group_id.unwrap_or("freshet-read-only"));
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.set("enable.partition.eof", "false");
    c.set(
        "auto.offset.reset",
        match cfg.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        },
    );
    c.set("queued.max.messages.kbytes", cfg.max_prefetch_kbytes.to_string());
    c.set("client.id", "freshet");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    for (property, var) in &cfg.secret_properties {
        let value = std::env::var(var)
            .map_err(|_| KafkaSourceError::MissingSecret { property: property.clone(), variable: var.clone() })?;
        redactor.secrets.push(value.clone());
        c.set(property, value);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    Ok((c, redactor))
}

/// Client context: librdkafka logs and errors to `tracing` (secrets scrubbed), the
/// brokers' high watermarks (from statistics) to [`SourceProgress`].
pub struct FreshetContext {
    /// Scrubs secrets.
    pub redactor: Redactor,
    /// Where high watermarks are recorded.
    pub progress: Option<Arc<SourceProgress>>,
}

impl ClientContext for FreshetContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = self.redactor.redact(log_message);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // The brokers' high watermarks, for the backlog (no extra requests).
        let Some(progress) = &self.progress else { return };
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 {
                    tracing::debug!(
                        topic = %topic,
                        partition,
                        fetch_state = %p.fetch_state,
                        fetchq_cnt = p.fetchq_cnt,
                        next_offset = p.next_offset,
                        app_offset = p.app_offset,
                        hi_offset = p.hi_offset,
                        "partition statistics"
                    );
                }
                if partition >= 0 && p.hi_offset >= 0 {
                    progress.update_partition(topic, partition, |pp| {
                        pp.high_watermark = pp.high_watermark.max(p.hi_offset)
                    });
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries on its own (brokers down, timeouts); these are reports.
        tracing::warn!(target: "librdkafka", error = %self.redactor.redact(&error.to_string()), reason = %self.redactor.redact(reason), "kafka client error");
    }
}

// Commit results are handled by the reader's committer thread (synchronous commits), so
// the consumer context keeps librdkafka's defaults.
impl ConsumerContext for FreshetContext {}
