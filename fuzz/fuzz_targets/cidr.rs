//! Fuzz target: see `ztag::fuzzing::cidr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::cidr(data));
