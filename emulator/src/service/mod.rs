//! The emulated gRPC services: `qdrant.Qdrant` (health check), `qdrant.Collections` and
//! `qdrant.Points`, as implementations of qdrant-client's generated server traits.

pub mod collections;
pub mod health;
pub mod points;

pub use collections::CollectionsService;
pub use health::HealthService;
pub use points::PointsService;
