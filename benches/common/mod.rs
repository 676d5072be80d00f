//! Helpers shared by the benchmarks (each bench includes this module).

pub mod kafka;
