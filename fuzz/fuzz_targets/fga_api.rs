//! Fuzz target: see `ztag::fuzzing::fga_api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::fga_api(data));
