//! Fuzz target: see `ztag::fuzzing::codecs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::codecs(data));
