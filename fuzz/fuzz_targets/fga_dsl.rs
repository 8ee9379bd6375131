//! Fuzz target: see `ztag::fuzzing::fga_dsl`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::fga_dsl(data));
