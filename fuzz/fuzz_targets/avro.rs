//! libFuzzer entry for the `avro` harness (see `fuzz/src/lib.rs`; run with `scripts/fuzz avro`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| freshet_fuzz::avro(data));
