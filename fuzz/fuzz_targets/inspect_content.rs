//! Fuzz target: see `ztag::fuzzing::content`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::content(data));
