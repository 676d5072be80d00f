//! libFuzzer entry for the `upsert_json` harness (see `fuzz/src/lib.rs`; run with `scripts/fuzz upsert_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| freshet_fuzz::upsert_json(data));
