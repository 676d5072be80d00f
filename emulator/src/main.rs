//! freshet's Qdrant emulator (test support; not a Qdrant server). Work in progress.
fn main() {}
