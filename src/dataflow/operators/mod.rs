//! The pipeline's operators, one per file, each a named extension trait on timely streams.

pub mod doc_state;
pub mod render_documents;
pub mod upsert_tables;
pub mod write_index;
