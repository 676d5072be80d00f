//! The emulator's error type and how each error becomes a gRPC `Status`, with the status
//! codes and message texts that Qdrant itself answers with (so clients see the same errors
//! from the emulator as from a Qdrant server).

use qdrant_edge::OperationError;
use tonic::Status;

/// Everything a request to the emulator can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// No collection (or alias) of this name.
    #[error("Not found: Collection `{0}` doesn't exist!")]
    CollectionNotFound(String),
    /// `create` of a collection that exists, or an alias named like a collection.
    #[error("Wrong input: Collection `{0}` already exists!")]
    CollectionExists(String),
    /// `create` of a collection named like an existing alias.
    #[error("Wrong input: Can't create collection with name {0}. Alias with the same name already exists")]
    AliasNameTaken(String),
    /// A vector whose length is not the collection's dimension.
    #[error("Wrong input: Vector dimension error: expected dim: {expected}, got {got}")]
    WrongDimension {
        /// The collection's dimension.
        expected: usize,
        /// The length of the vector in the request.
        got: usize,
    },
    /// A malformed or contradictory request.
    #[error("Wrong input: {0}")]
    BadInput(String),
    /// Something the request names (a point, an alias) does not exist.
    #[error("Not found: {0}")]
    NotFound(String),
    /// A feature of Qdrant's API this emulator does not emulate (named/sparse vectors, ...).
    #[error("Wrong input: the freshet Qdrant emulator does not emulate {0}")]
    NotEmulated(String),
    /// The engine timed out.
    #[error("Timeout error: {0}")]
    Timeout(String),
    /// An internal failure (I/O, the engine, a panicked worker).
    #[error("Service internal error: {0}")]
    Internal(String),
}

impl EmulatorError {
    /// An internal error from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// Classify an error of the qdrant-edge engine the way Qdrant classifies it.
    pub fn engine(e: OperationError) -> Self {
        match e {
            OperationError::WrongVectorDimension { expected_dim, received_dim } => {
                Self::WrongDimension { expected: expected_dim, got: received_dim }
            }
            OperationError::PointIdError { missed_point_id } => {
                Self::NotFound(format!("No point with id {missed_point_id} found"))
            }
            OperationError::Timeout { description } => Self::Timeout(description),
            e @ (OperationError::VectorNameNotExists { .. }
            | OperationError::TypeError { .. }
            | OperationError::TypeInferenceError { .. }
            | OperationError::ValidationError { .. }
            | OperationError::WrongSparse
            | OperationError::WrongMulti
            | OperationError::MissingRangeIndexForOrderBy { .. }
            | OperationError::MissingMapIndexForFacet { .. }
            | OperationError::VariableTypeError { .. }
            | OperationError::NonFiniteNumber { .. }) => Self::BadInput(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<EmulatorError> for Status {
    fn from(e: EmulatorError) -> Self {
        let message = e.to_string();
        match e {
            EmulatorError::CollectionNotFound(_) | EmulatorError::NotFound(_) => Status::not_found(message),
            EmulatorError::CollectionExists(_) => Status::already_exists(message),
            EmulatorError::AliasNameTaken(_)
            | EmulatorError::WrongDimension { .. }
            | EmulatorError::BadInput(_)
            | EmulatorError::NotEmulated(_) => Status::invalid_argument(message),
            EmulatorError::Timeout(_) => Status::deadline_exceeded(message),
            EmulatorError::Internal(_) => Status::internal(message),
        }
    }
}

/// The answer to a gRPC method this emulator does not implement.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("the freshet Qdrant emulator does not emulate `{method}`"))
}
