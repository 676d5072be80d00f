//! libFuzzer entry for the `debezium_json` harness (see `fuzz/src/lib.rs`; run with `scripts/fuzz debezium_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| freshet_fuzz::debezium_json(data));
