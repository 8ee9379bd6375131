//! Fuzz target: see `ztag::fuzzing::detector`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::detector(data));
