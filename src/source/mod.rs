//! Sources: readers that turn external records (a file of events now; Kafka and Postgres
//! logical replication later) into [`crate::model::SourceRecord`]s, and the decoders they
//! share (`decode/`).

pub mod decode;
pub mod file;
