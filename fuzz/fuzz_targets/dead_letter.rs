//! libFuzzer entry for the `dead_letter` harness (see `fuzz/src/lib.rs`; run with `scripts/fuzz dead_letter`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| freshet_fuzz::dead_letter(data));
