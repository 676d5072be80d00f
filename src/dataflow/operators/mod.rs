//! The pipeline's operators, one per file, each a named extension trait on timely streams.

pub mod doc_state;
pub mod write_index;
