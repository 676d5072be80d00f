//! libFuzzer entry for the `config` harness (see `fuzz/src/lib.rs`; run with `scripts/fuzz config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| freshet_fuzz::config(data));
