//! The `qdrant.Qdrant` gRPC service: the health check, which names this process as the
//! freshet emulator and reports the Qdrant version whose API it emulates.

use qdrant_client::qdrant::qdrant_server::Qdrant;
use qdrant_client::qdrant::{HealthCheckReply, HealthCheckRequest};
use tonic::{Request, Response, Status};

/// Title reported by the health check.
pub const TITLE: &str = "qdrant - vector search engine (freshet emulator)";
/// Qdrant version reported by the health check.
pub const VERSION: &str = "1.16.0";

/// The health-check service.
#[derive(Debug, Default)]
pub struct HealthService;

#[tonic::async_trait]
impl Qdrant for HealthService {
    async fn health_check(&self, _request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckReply>, Status> {
        Ok(Response::new(HealthCheckReply {
            title: TITLE.into(),
            version: VERSION.into(),
            commit: Some(format!("freshet-qdrant-emulator {}", env!("CARGO_PKG_VERSION"))),
        }))
    }
}
