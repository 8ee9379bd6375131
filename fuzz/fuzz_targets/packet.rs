//! Fuzz target: see `ztag::fuzzing::packet` (the kernel program's parser,
//! compiled for userspace from the same source).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::packet(data));
