//! Fuzz target: see `ztag::fuzzing::h1scan`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::h1scan(data));
