//! Fuzz target: see `ztag::fuzzing::fleet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::fleet(data));
