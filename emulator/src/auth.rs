//! The API-key check (`--api-key-env`): every request must carry the key in the `api-key`
//! metadata (what qdrant-client sends) or as `authorization: Bearer <key>`, else it is
//! refused with `Unauthenticated`, with Qdrant's messages.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A tonic interceptor that admits requests carrying the configured key (or all requests
/// when no key is configured).
#[derive(Clone)]
pub struct ApiKeyCheck {
    expected: Option<Arc<str>>,
}

impl std::fmt::Debug for ApiKeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCheck").field("enabled", &self.expected.is_some()).finish()
    }
}

impl ApiKeyCheck {
    /// Require `key` on every request (`None`: no check).
    pub fn new(key: Option<String>) -> Self {
        Self { expected: key.map(Arc::from) }
    }
}

impl Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let metadata = request.metadata();
        let given = metadata.get("api-key").and_then(|v| v.to_str().ok()).or_else(|| {
            metadata.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
        });
        match given {
            Some(key) if key == &**expected => Ok(request),
            Some(_) => Err(Status::unauthenticated("Invalid API key or JWT")),
            None => Err(Status::unauthenticated("Must provide an API key or an Authorization bearer token")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(key: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(key) = key {
            r.metadata_mut().insert("api-key", key.parse().unwrap());
        }
        r
    }

    #[test]
    fn requests_need_the_configured_key() {
        let mut check = ApiKeyCheck::new(Some("s3cret".into()));
        assert!(check.call(request(Some("s3cret"))).is_ok());
        assert_eq!(check.call(request(Some("wrong"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(check.call(request(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(ApiKeyCheck::new(None).call(request(None)).is_ok());
    }
}
