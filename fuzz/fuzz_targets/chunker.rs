//! libFuzzer entry for the `chunker` harness (see `fuzz/src/lib.rs`; run with `scripts/fuzz chunker`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| freshet_fuzz::chunker(data));
