//! freshet keeps a vector index exactly in sync with a changing source of truth.
//!
//! Layout (dependencies point one way): `runtime → {source, embed, sink, telemetry} →
//! dataflow → model`. See README.md for the tour.

pub mod config;
pub mod dataflow;
pub mod embed;
pub mod model;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod workload;
