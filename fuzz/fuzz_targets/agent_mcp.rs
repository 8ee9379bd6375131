//! Fuzz target: see `ztag::fuzzing::mcp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztag::fuzzing::mcp(data));
